"""The trainer: loss goes down, exact resume, metrics, non-finite handling, bad input."""
import json
import math

import pytest
import torch

from gatelab.core.errors import CheckpointError, ConfigError, NonFiniteLossError
from gatelab.train import Trainer, list_checkpoints, read_metrics


def test_tiny_run_learns_and_logs(tmp_path, tiny_cfg):
    cfg = tiny_cfg([("train.steps", "40"), ("train.ckpt_every", "0"), ("optim.lr", "1e-2")])
    result = Trainer(cfg, tmp_path).fit()
    assert result.step == 40 and len(result.losses) == 40
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs if "loss" in r] == list(range(2, 41, 2))
    final = recs[-1]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_ms", "flops_per_token",
                "active_params", "train_tflops", "val_loss", "val_bits_per_token"):
        assert key in final and final[key] is not None, key
    assert final["mfu"] is None  # no peak given: never guessed
    assert any(k.startswith("val_loss/") for k in final)  # per-domain validation loss
    assert (tmp_path / "config.yaml").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt-0000040"]


def test_mfu_reported_when_peak_given(tmp_path, tiny_cfg):
    cfg = tiny_cfg([("train.steps", "2"), ("train.peak_flops", "1e12")])
    final = Trainer(cfg, tmp_path).fit().final
    assert final["mfu"] == pytest.approx(final["train_tflops"] * 1e12 / 1e12)


def _crash_at(step):
    def on_log(record):
        if record["step"] >= step:
            raise KeyboardInterrupt(f"killed at step {record['step']}")
    return on_log


def test_resume_is_exact(tmp_path, tiny_cfg):
    """A run killed at step 10 (last checkpoint: step 8) and resumed in a new trainer
    produces the same losses as one that never stopped."""
    full = Trainer(tiny_cfg(), tmp_path / "full").fit().losses
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(), tmp_path / "split").fit(on_log=_crash_at(10))
    resumed = Trainer(tiny_cfg(), tmp_path / "split").fit(resume=True)
    assert resumed.step == 12 and len(resumed.losses) == 4
    assert max(abs(a - b) for a, b in zip(full[8:], resumed.losses)) <= 1e-6
    steps = [r["step"] for r in read_metrics(tmp_path / "split") if "loss" in r]
    assert steps == list(range(2, 13, 2))  # records after the checkpoint were replaced, not duplicated


@pytest.mark.parametrize("optim", [
    [("optim.name", "sgd"), ("optim.lr", "0.05"), ("optim.momentum", "0.9")],
    # d-estimate tensors shared by all param groups: stored once, shared again on load
    [("optim.name", "dadapt_adam"), ("optim.lr", "1.0")],
    [("optim.name", "prodigy"), ("optim.lr", "1.0")],
], ids=["sgd", "dadapt_adam", "prodigy"])
def test_resume_with_grad_accum_and_other_optimizer(tmp_path, tiny_cfg, optim):
    over = [("train.grad_accum", "2"), *optim, ("schedule.name", "wsd")]
    full = Trainer(tiny_cfg(over), tmp_path / "a").fit().losses
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(over), tmp_path / "b").fit(on_log=_crash_at(6))
    rest = Trainer(tiny_cfg(over), tmp_path / "b").fit(resume=True).losses
    assert full[4:] == pytest.approx(rest, abs=1e-6)


def test_resume_with_incompatible_config_is_rejected(tmp_path, tiny_cfg):
    Trainer(tiny_cfg([("train.steps", "4")]), tmp_path).fit()
    with pytest.raises(CheckpointError, match=r"different model config \(model.d_model: 32 -> 48"):
        Trainer(tiny_cfg([("model.d_model", "48")]), tmp_path).fit(resume=True)


def test_nonfinite_loss_stops_with_step_and_checkpoint(tmp_path, tiny_cfg):
    trainer = Trainer(tiny_cfg([("train.steps", "12")]), tmp_path)
    calls = {"n": 0}
    real_forward = trainer.model.forward

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real_forward(*a, **k)
        if calls["n"] == 6:  # sixth training forward: step 6
            out.logits = out.logits * float("nan")
        return out

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match=r"at step 6; the last good checkpoint is .*ckpt-0000004"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt-0000004"]


def test_nonfinite_skip_mode_skips_update(tmp_path, tiny_cfg):
    trainer = Trainer(tiny_cfg([("train.steps", "3"), ("train.on_nonfinite", "skip")]), tmp_path)
    real_forward = trainer.model.forward
    state = {"n": 0}

    def poisoned(*a, **k):
        state["n"] += 1
        out = real_forward(*a, **k)
        if state["n"] == 2 and trainer.model.training:
            out.logits = out.logits * float("inf")
        return out

    trainer.model.forward = poisoned
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    after_one = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss, _, _ = trainer.train_step()  # poisoned: skipped, weights unchanged
    assert not math.isfinite(loss) and trainer.skipped == 1
    assert all(torch.equal(after_one[k], v) for k, v in trainer.model.state_dict().items())
    assert any(not torch.equal(before[k], after_one[k]) for k in before)


def test_vocab_smaller_than_tokenizer_is_rejected(tmp_path, tiny_cfg):
    with pytest.raises(ConfigError, match="vocab_size=100 is smaller than the tokenizer"):
        Trainer(tiny_cfg([("model.vocab_size", "100")]), tmp_path)


def test_aux_losses_reach_the_loss_and_stats_are_logged(tmp_path, tiny_cfg):
    """A channel mixer that adds an aux loss: it is added to the training loss and logged."""
    from dataclasses import dataclass

    from torch import nn

    from gatelab.core.registry import _REGISTRIES, register
    from gatelab.models.layers import SwiGLU

    @dataclass
    class Cfg:
        coef: float = 1.0

    class WithAux(SwiGLU):
        Config = Cfg

        def __init__(self, d_model, cfg=None):
            super().__init__(d_model, SwiGLU.Config())
            self.coef = (cfg or Cfg()).coef

        def forward(self, x, ctx=None):
            y = super().forward(x, ctx)
            ctx.aux.add_loss("penalty", self.coef * y.pow(2).mean())
            ctx.aux.add_stat("y_rms", y.pow(2).mean().sqrt())
            return y

    register("channel_mixer", "_test_aux")(WithAux)
    try:
        cfg = tiny_cfg([("model.block.ffn.name", "_test_aux"), ("model.block.ffn.coef", "1000"),
                        ("train.steps", "2"), ("train.ckpt_every", "0")])
        Trainer(cfg, tmp_path).fit()
        last = read_metrics(tmp_path)[-1]
        assert "layer1/ffn/penalty" in last and "layer0/ffn/y_rms" in last
        assert last["loss"] > last["layer0/ffn/penalty"] + last["layer1/ffn/penalty"]
    finally:
        _REGISTRIES["channel_mixer"].pop("_test_aux")


def test_compiled_blocks_train_like_eager(tmp_path, tiny_cfg):
    """train.compile=true (torch.compile per block, inductor on CPU) gives the eager losses."""
    over = [("train.steps", "3"), ("train.ckpt_every", "0")]
    eager = Trainer(tiny_cfg(over), tmp_path / "e").fit().losses
    compiled = Trainer(tiny_cfg(over + [("train.compile", "true")]), tmp_path / "c").fit().losses
    assert compiled == pytest.approx(eager, abs=1e-4)
