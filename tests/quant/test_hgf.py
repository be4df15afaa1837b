"""HGF: y = BitLinear(x) + g(x) ⊙ B(A x): the zero-gate and full-rank limits, gates, config errors."""
import math

import pytest
import torch

from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.models import ModelConfig
from gatelab.quant import BitLinear, GatedLowRank, HGFConfig, HGFLinear, ternarize


def hgf(d_in, d_out, **opts):
    return HGFLinear(d_in, d_out, bias=False, cfg=parse(HGFConfig, opts)).double()


@pytest.mark.parametrize("gate", ["token", "channel", "scalar"])
def test_zero_gate_equals_bitlinear(gate):
    torch.manual_seed(0)
    layer = hgf(8, 6, rank=3, gate=gate)
    with torch.no_grad():
        layer.correction.B.normal_()  # a live correction path ...
        layer.correction.gate_bias.fill_(-math.inf)  # ... closed by g = σ(-inf) = 0
    bit = BitLinear(8, 6, bias=False).double()
    bit.weight.data.copy_(layer.weight)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.equal(layer(x), bit(x))


def test_zero_init_starts_as_bitlinear():
    torch.manual_seed(0)
    layer = hgf(8, 6, rank=2)
    bit = BitLinear.from_linear(layer)
    x = torch.randn(4, 8, dtype=torch.float64)
    assert torch.equal(layer(x), bit(x)) and layer.correction.A.abs().sum() > 0


def full_rank_correction_of(layer: HGFLinear) -> None:
    """Set B A = W - γ W_q (A = I, full rank) and g = 1, so the layer computes x Wᵀ."""
    w_q, gamma = ternarize(layer.weight.detach())
    with torch.no_grad():
        layer.correction.A.copy_(torch.eye(layer.in_features, dtype=torch.float64))
        layer.correction.B.copy_(layer.weight - gamma * w_q)
        layer.correction.gate_bias.fill_(math.inf)  # σ(inf) = 1


def test_full_rank_gate_one_represents_the_fp_layer():
    torch.manual_seed(0)
    layer = hgf(6, 9, rank=6, gate="scalar", act_bits=0)
    full_rank_correction_of(layer)
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.weight.T, rtol=0, atol=1e-12)


def test_full_rank_with_8bit_activations_is_within_quantisation_error():
    torch.manual_seed(0)
    layer = hgf(6, 9, rank=6, gate="scalar")
    full_rank_correction_of(layer)
    x = torch.randn(3, 6, dtype=torch.float64)
    # the only error left is the activation rounding: |x - x̂| <= η/(2Q) per element, through γ W_q
    w_q, gamma = ternarize(layer.weight.detach())
    bound = (x.abs().amax(-1, keepdim=True) / 254) * (gamma * w_q).abs().sum(-1)
    assert ((layer(x) - x @ layer.weight.T).abs() <= bound + 1e-12).all()


def test_token_gate_values_and_stats():
    torch.manual_seed(0)
    corr = GatedLowRank(4, 3, rank=2, gate="token", gate_init=0.5).double()
    with torch.no_grad():
        corr.gate_weight.copy_(torch.tensor([1.0, 0, 0, 0]))
        corr.gate_bias.fill_(0.5)
        corr.B.normal_()
    x = torch.randn(5, 4, dtype=torch.float64)
    g = torch.sigmoid(x[:, :1] + 0.5)
    ctx = ForwardContext()
    torch.testing.assert_close(corr(x, ctx), g * (x @ corr.A.T @ corr.B.T), rtol=0, atol=1e-12)
    assert ctx.aux.stats["hgf_gate_mean"].item() == pytest.approx(g.mean().item())
    # rows x (2 r (d_in + d_out) + 2 d_in) = 5 x (28 + 8); params read: 5 x (2 x 7 + 4 + 1)
    assert ctx.meter.breakdown() == {"hgf": (180.0, 95.0)}


def test_gate_init_sets_the_starting_gate():
    corr = GatedLowRank(4, 3, rank=1, gate="channel", gate_init=0.1)
    torch.testing.assert_close(corr.gate_values(torch.randn(2, 4)), torch.full((3,), 0.1))


@pytest.mark.parametrize("spec, match", [
    ({"name": "hgf", "rank": 0}, "linear.rank=0"),
    ({"name": "hgf", "rank": -2}, "linear.rank=-2"),
    ({"name": "hgf", "gate": "tokn"}, "did you mean 'token'"),
    ({"name": "hgf", "gate_init": 1.0}, "gate_init"),
    ({"name": "bitlinaer"}, "did you mean 'bitlinear'"),
])
def test_model_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse(ModelConfig, {"linear": spec})


def test_rank_larger_than_layer_is_an_error():
    with pytest.raises(ValueError, match="rank=5 must be between 1 and min"):
        hgf(4, 8, rank=5)
    with pytest.raises(ValueError, match="unknown HGF gate"):
        GatedLowRank(4, 4, rank=1, gate="head", gate_init=0.5)
