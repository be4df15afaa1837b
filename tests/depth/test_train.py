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


def test_sink_metric_tolerates_layers_that_saw_no_first_token():
    """MoD's predictor may keep <= 1 token of a sequence in a layer: the sink metric skips
    that layer instead of failing (regression: KeyError 'first_token_mass_H')."""
    import torch

    from gatelab.attention.sink_metric import measure
    from gatelab.core.config import parse
    from gatelab.models import LM, ModelConfig

    torch.manual_seed(0)
    model = LM(parse(ModelConfig, {"vocab_size": 37, "d_model": 16, "n_layer": 2,
                                   "block": {"mixer": {"name": "attention", "n_head": 2}},
                                   "depth": {"name": "mod", "capacity": 0.125, "every": 1}}))
    assert len(model.depth.predictors) == 2
    for pred in model.depth.predictors.values():  # the predictor rejects every token
        last = [m for m in pred.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.constant_(last.bias, -10.0)
    out = measure(model, torch.randint(0, 37, (2, 8)))
    assert "f_attn" not in out  # no layer had a measurable first-token share


@pytest.mark.parametrize("depth, stat", [
    ("name=calm,exit_loss=0.5", "layer0/exit_ce"),
    ("name=learned_exit", "exit/expected_blocks_run"),
    ("name=skip_middle", "skip_middle/sparsity"),
    ("name=gateskip,ramp_to=0.5,ramp_steps=2", "layer1/ffn_gate/processed"),
])
def test_trainer_runs_exit_skip_middle_and_ramped_gateskip(tmp_path, depth, stat):
    overrides = [(f"model.depth.{kv.split('=')[0]}", kv.split("=")[1]) for kv in depth.split(",")]
    cfg = load_config(None, overrides, base=TINY)
    trainer = Trainer(cfg, tmp_path)
    trainer.fit()
    assert stat in read_metrics(tmp_path)[-1]
    if "ramp_to" in depth:
        assert int(trainer.model.depth.steps_done) == 4 and trainer.model.depth.train_skip() == 0.5
