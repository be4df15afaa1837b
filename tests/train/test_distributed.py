"""Training on 2 gloo processes (DDP, FSDP2, DDP + expert parallel MoE) equals the
single-process run on the same global batch, and checkpoints move between world sizes.

One spawn of 2 processes runs every distributed case (the process start dominates);
the single-process references run in the test process and the tests compare values."""
import math
import shutil

import pytest
import torch

from gatelab.config import load_config
from gatelab.core.errors import ConfigError
from gatelab.train import Trainer, list_checkpoints, load_checkpoint
from gatelab.train.checkpoint import read_weights
from gatelab.train.distributed import spawn_local

STEPS = [("train.steps", "3"), ("train.grad_accum", "2"), ("train.ckpt_every", "0"), ("eval.every", "0"),
         ("train.grad_clip", "0.05")]  # a small clip so clipping is active (tests the global norm)
MOE = [("model.block.ffn.name", "moe"), ("model.block.ffn.n_experts", "4"), ("model.block.ffn.k", "2"),
       ("model.block.ffn.lb_coef", "0.1")]
RESUME = [("train.steps", "6"), ("train.ckpt_every", "3"), ("eval.every", "0")]
RESUME_1TO2 = {"ddp": [("parallel.data", "ddp")], "fsdp": [("parallel.data", "fsdp")],
               "ep": MOE + [("parallel.data", "ddp"), ("parallel.expert", "true")]}
CASES = {
    "ddp": STEPS + [("parallel.data", "ddp")],
    "fsdp": STEPS + [("parallel.data", "fsdp"), ("optim.name", "sgd"), ("optim.lr", "0.5"), ("optim.momentum", "0.9")],
    "ddp_ep": STEPS + MOE + [("parallel.data", "ddp"), ("parallel.expert", "true")],
    # MoE under FSDP (global balance without expert parallelism) with aux-loss-free router
    # biases, whose update must see the loads of all ranks
    "fsdp_moe_bias": STEPS + MOE + [("parallel.data", "fsdp"), ("model.block.ffn.router.bias_update", "0.1")],
}


# a tiny run (the spawned workers rebuild configs from this, so it lives here, not in a fixture)
BASE = {
    "data": {"corpus": {"name": "synthetic"}, "seq_len": 16, "batch_size": 4},
    "model": {"d_model": 32, "n_layer": 2, "block": {"mixer": {"name": "attention", "n_head": 2}}},
    "optim": {"name": "adamw", "lr": 3e-3},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "eval": {"batches": 2},
    "log": {"every": 1, "progress": False},
}


def _cfg(over):
    return load_config(None, list(over), base=BASE)


def _crash_after_checkpoint(record):
    if record["step"] >= 4:
        raise KeyboardInterrupt("stopped after the step-3 checkpoint")


def _worker(rank: int, root: str) -> None:
    out = {}
    for name, over in CASES.items():
        result = Trainer(_cfg(over), f"{root}/{name}").fit()
        out[name] = (result.losses, result.final)
    # 2 -> 1: train at world size 2 up to the step-3 checkpoint (FSDP and DDP + expert parallel)
    for name, extra in (("fsdp", [("parallel.data", "fsdp")]), ("ep", MOE + [("parallel.expert", "true")])):
        with pytest.raises(KeyboardInterrupt):
            Trainer(_cfg(RESUME + extra), f"{root}/resume2to1_{name}").fit(on_log=_crash_after_checkpoint)
    # 1 -> 2: the test process trained to step 3 at world size 1; continue at world size 2
    for name, extra in RESUME_1TO2.items():
        out[f"1to2_{name}"] = Trainer(_cfg(RESUME + extra), f"{root}/resume1to2_{name}").fit(resume=True).losses
    try:
        Trainer(_cfg(STEPS + [("data.batch_size", "3")]), f"{root}/bad")
    except ConfigError as e:
        out["bad_batch"] = str(e)
    if rank == 0:
        torch.save(out, f"{root}/results.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    for over, dirs in ((RESUME, ["ddp", "fsdp"]), (RESUME + MOE, ["ep"])):  # world-size-1 halves of 1 -> 2
        with pytest.raises(KeyboardInterrupt):
            Trainer(_cfg(over), root / f"resume1to2_{dirs[0]}").fit(on_log=_crash_after_checkpoint)
        for other in dirs[1:]:
            shutil.copytree(root / f"resume1to2_{dirs[0]}", root / f"resume1to2_{other}")
    spawn_local(_worker, 2, str(root))
    return root, torch.load(root / "results.pt")


@pytest.mark.parametrize("name", list(CASES))
def test_matches_single_process(runs, name, tmp_path):
    root, out = runs
    trainer = Trainer(_cfg(CASES[name]), tmp_path)  # same config, one process: parallel.* is ignored
    ref = trainer.fit()
    losses, final = out[name]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert max(abs(a - b) for a, b in zip(losses, ref.losses)) <= 1e-6, (losses, ref.losses)
    assert final["grad_norm"] == pytest.approx(ref.final["grad_norm"], rel=1e-5)
    assert final["val_loss"] == pytest.approx(ref.final["val_loss"], abs=1e-6)
    # the rank-0 checkpoint holds the gathered full weights and optimizer state
    ckpt = list_checkpoints(root / name / "checkpoints")[-1]
    weights = read_weights(ckpt)
    for key, value in trainer.model.state_dict().items():
        if key in weights:
            torch.testing.assert_close(weights[key], value, rtol=0, atol=2e-6, msg=key)
    saved_opt = load_checkpoint(ckpt)["optimizer"]
    ref_opt = trainer.optimizer.state_dict()
    assert saved_opt["param_groups"] == ref_opt["param_groups"]
    for i, state in ref_opt["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(saved_opt["state"][i][key], value, rtol=0, atol=1e-6, msg=f"{i}.{key}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return {name: Trainer(_cfg(RESUME + extra), tmp_path_factory.mktemp(name)).fit().losses
            for name, extra in (("dense", []), ("moe", MOE))}


@pytest.mark.parametrize("name", ["fsdp", "ep"])
def test_checkpoint_from_world_2_resumes_at_world_1(runs, uninterrupted, name):
    root, _ = runs
    extra = MOE if name == "ep" else []
    resumed = Trainer(_cfg(RESUME + extra), root / f"resume2to1_{name}").fit(resume=True)
    ref = uninterrupted["moe" if name == "ep" else "dense"]
    assert resumed.step == 6 and len(resumed.losses) == 3
    assert max(abs(a - b) for a, b in zip(ref[3:], resumed.losses)) <= 1e-6, (ref, resumed.losses)


@pytest.mark.parametrize("name", list(RESUME_1TO2))
def test_checkpoint_from_world_1_resumes_at_world_2(runs, uninterrupted, name):
    _, out = runs
    losses, ref = out[f"1to2_{name}"], uninterrupted["moe" if name == "ep" else "dense"]
    assert len(losses) == 3
    assert max(abs(a - b) for a, b in zip(ref[3:], losses)) <= 1e-6, (ref, losses)


def test_errors(runs):
    _, out = runs
    assert "data.batch_size=3 is not divisible by the 2 ranks" in out["bad_batch"]
    with pytest.raises(ConfigError, match="parallel.expert"):
        _cfg([("parallel.data", "fsdp"), ("parallel.expert", "true")])
