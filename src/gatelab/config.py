"""The run configuration: model, data, optimizer, schedule, training, evaluation, logging.

Load with `load_config(yaml_path, overrides)`; every key is checked before any work
starts, and the fully resolved config is saved with each run (`dump_yaml`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .core.config import ConfigBase, apply_overrides, check, component, deep_merge, load_yaml, parse
from .core.errors import ConfigError
from .data.config import DataConfig
from .models.config import ModelConfig


@dataclass
class TrainConfig(ConfigBase):
    steps: int = 200  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False  # torch.compile each block
    seed: int = 0  # model init and dropout RNG
    on_nonfinite: Literal["stop", "skip"] = "stop"  # NaN/inf loss: stop with an error, or skip the step
    max_skips: int = 10  # with on_nonfinite=skip: stop after this many skipped steps
    ckpt_every: int = 0  # save every N steps (0: only at the end)
    keep_last: int = 2  # checkpoints kept on disk
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU (0: MFU not reported; never guessed)
    init_from: str = ""  # HF model dir / .gguf / gatelab run to start from; dense FFNs upcycle into MoE layers

    def validate(self) -> None:
        check(self.steps >= 1, "steps", self.steps, "must be >= 1")
        check(self.grad_accum >= 1, "grad_accum", self.grad_accum, "must be >= 1")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0 disables clipping)")
        check(self.max_skips >= 0, "max_skips", self.max_skips, "must be >= 0")
        check(self.ckpt_every >= 0, "ckpt_every", self.ckpt_every, "must be >= 0 (0 = only at the end)")
        check(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")
        check(self.peak_flops >= 0, "peak_flops", self.peak_flops, "must be >= 0 FLOP/s (0 = no MFU)")
        dev = self.device.split(":")[0]
        check(dev in ("auto", "cpu", "cuda", "mps"), "device", self.device, "one of auto, cpu, cuda, cuda:N, mps")


@dataclass
class EvalConfig(ConfigBase):
    every: int = 100  # evaluate every N steps (0: only at the end)
    batches: int = 8  # fixed validation batches per evaluation

    def validate(self) -> None:
        check(self.every >= 0, "every", self.every, "must be >= 0 (0 = only at the end)")
        check(self.batches >= 1, "batches", self.batches, "must be >= 1")


@dataclass
class LogConfig(ConfigBase):
    every: int = 10  # write a metrics record every N steps
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # also write TensorBoard events (needs gatelab[tb])

    def validate(self) -> None:
        check(self.every >= 1, "every", self.every, "must be >= 1")


@dataclass
class ParallelConfig(ConfigBase):
    """Scale-out under torchrun (`gatelab.train.distributed`); ignored in a single process."""

    data: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp when launched with >1 process
    expert: bool = False  # shard MoE experts over the ranks (expert parallelism, with ddp)
    global_balance: bool = True  # MoE load-balance loss on counts over all ranks (global batch)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU

    def validate(self) -> None:
        check(not (self.expert and self.data == "fsdp"), "expert", self.expert,
              "false with data=fsdp (expert parallelism composes with ddp; set parallel.data=ddp)")


@dataclass
class RunConfig(ConfigBase):
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: Any = component("optimizer", "adamw", lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    schedule: Any = component("schedule", "cosine", warmup_steps=0)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        _dry_run_optimizer(self)


def _dry_run_optimizer(cfg: RunConfig) -> None:
    """Build the optimizer and schedule on a dummy parameter so bad hyperparameters fail
    before any work (the optimizer's own checks are the source of truth)."""
    p = torch.zeros(1, requires_grad=True)
    try:
        opt = cfg.optim.cls([p], **cfg.optim.kwargs())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config optim ({cfg.optim.name}) rejected its options: {e}") from None
    try:
        cfg.schedule.cls(opt, total_steps=cfg.train.steps, **cfg.schedule.kwargs())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config schedule ({cfg.schedule.name}) rejected its options: {e}") from None


def load_config(path: str | None = None, overrides: list[tuple[str, str]] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """RunConfig from defaults <- `base` dict <- YAML file <- dotted overrides."""
    data = dict(base or {})
    if path:
        data = deep_merge(data, load_yaml(path))
    data = apply_overrides(data, overrides or [])
    return parse(RunConfig, data)
