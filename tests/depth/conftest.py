import pytest
import torch

from gatelab.core.config import parse
from gatelab.models import LM, ModelConfig

V = 37


def build(depth=None, n_layer=2, d_model=16, seed=0):
    torch.manual_seed(seed)
    spec = {"vocab_size": V, "d_model": d_model, "n_layer": n_layer,
            "block": {"mixer": {"name": "attention", "n_head": 4}}}
    if depth is not None:
        spec["depth"] = depth
    return LM(parse(ModelConfig, spec)).double()


@pytest.fixture
def lm():
    """`lm(depth_spec, **shape)`: a float64 LM and a dense twin with the same block weights."""

    def make(depth, **shape):
        model = build(depth, **shape)
        dense = build(None, **shape)
        missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
        assert not missing and all(k.startswith("depth.") for k in unexpected)
        return model, dense

    return make
