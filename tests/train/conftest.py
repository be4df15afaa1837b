import pytest

from gatelab.config import load_config

TINY = {
    "data": {"corpus": {"name": "synthetic"}, "seq_len": 32, "batch_size": 4},
    "model": {"d_model": 32, "n_layer": 2, "block": {"mixer": {"name": "attention", "n_head": 2}}},
    "optim": {"name": "adamw", "lr": 3e-3},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "train": {"steps": 12, "ckpt_every": 4, "keep_last": 3},
    "eval": {"every": 6, "batches": 2},
    "log": {"every": 2, "progress": False},
}


@pytest.fixture
def tiny_cfg():
    def make(overrides=()):
        return load_config(None, list(overrides), base=TINY)

    return make
