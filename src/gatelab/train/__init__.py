"""gatelab.train: the trainer, atomic checkpoints and metric sinks."""
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .metrics import MetricsLogger, read_metrics
from .trainer import Trainer, TrainResult, build_optimizer, lm_loss

__all__ = ["Trainer", "TrainResult", "build_optimizer", "lm_loss", "MetricsLogger", "read_metrics",
           "list_checkpoints", "load_checkpoint", "save_checkpoint"]
