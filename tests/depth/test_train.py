"""Depth methods through the trainer: aux losses in the loss, per-layer statistics in the metrics."""
import pytest

from gatelab.config import load_config
from gatelab.train import Trainer, read_metrics

TINY = {
    "data": {"corpus": {"name": "synthetic"}, "seq_len": 32, "batch_size": 4},
    "model": {"d_model": 32, "n_layer": 2, "block": {"mixer": {"name": "attention", "n_head": 2}}},
    "optim": {"name": "adamw", "lr": 3e-3},
    "train": {"steps": 4},
    "eval": {"every": 0, "batches": 1},
    "log": {"every": 2, "progress": False},
}


@pytest.mark.parametrize("depth, stat", [
    ("name=mod,capacity=0.25,sampling=topk", "layer1/processed"),
    ("name=gateskip,keep=0.5", "layer0/ffn_gate/importance"),
])
def test_trainer_runs_depth_methods(tmp_path, depth, stat):
    overrides = [(f"model.depth.{kv.split('=')[0]}", kv.split("=")[1]) for kv in depth.split(",")]
    cfg = load_config(None, overrides, base=TINY)
    result = Trainer(cfg, tmp_path).fit()
    rec = read_metrics(tmp_path)[-1]
    assert stat in rec and rec["val_loss"] == result.final["val_loss"]
    assert any(k.endswith("/domain0") for k in rec)  # the synthetic corpus carries domain labels
