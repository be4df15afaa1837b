"""GLA and Gated DeltaNet: chunked == recurrent (forward and backward, float64), decoding with
the recurrent state == full forward, hybrid layouts, accounting and errors."""
import pytest
import torch
import torch.nn.functional as F

from gatelab.attention import (
    GatedDeltaNet, GatedLinearAttention, gated_delta_chunk, gated_delta_recurrent, gla_chunk, gla_recurrent,
)
from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.models import LM, ModelConfig


def inputs(T, with_beta, dtype=torch.float64, B=2, H=2, K=8, V=6, decay_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, K, generator=g, dtype=dtype)
    k = torch.randn(B, H, T, K, generator=g, dtype=dtype)
    v = torch.randn(B, H, T, V, generator=g, dtype=dtype)
    S0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    if with_beta:  # GDN: unit keys, scalar decay per head, β in (0, 2)
        k = F.normalize(k, dim=-1)
        decay = F.logsigmoid(torch.randn(B, H, T, generator=g, dtype=dtype)) * decay_scale
        beta = 2 * torch.rand(B, H, T, generator=g, dtype=dtype)
        return [q, k, v, decay, beta, S0]
    decay = F.logsigmoid(torch.randn(B, H, T, K, generator=g, dtype=dtype)) * decay_scale
    return [q, k, v, decay, S0]


KERNELS = {"gla": (gla_recurrent, gla_chunk, False), "gdn": (gated_delta_recurrent, gated_delta_chunk, True)}


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("T,chunk", [(37, 4), (37, 16), (70, 32), (70, 64), (64, 64), (1, 16), (50, 5)])
def test_chunk_equals_recurrent_forward_and_backward(name, T, chunk):
    recurrent, chunked, with_beta = KERNELS[name]
    if name == "gla" and chunk == 5:
        chunk = 48  # GLA chunks are <= 16 or multiples of 16
    args = [t.requires_grad_() for t in inputs(T, with_beta)]
    o_ref, S_ref = recurrent(*args)
    o, S = chunked(*args, chunk_size=chunk)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-12)
    go, gS = torch.randn_like(o), torch.randn_like(S)
    grads_ref = torch.autograd.grad((o_ref * go).sum() + (S_ref * gS).sum(), args)
    grads = torch.autograd.grad((o * go).sum() + (S * gS).sum(), args)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", KERNELS)
def test_chunk_is_stable_under_strong_decay_in_fp32(name):
    """Per-step log decay down to about -40: a chunk of 64 spans exponents far beyond fp32's
    range, which the naive factorisation Q e^B (K e^{-B})ᵀ would overflow."""
    recurrent, chunked, with_beta = KERNELS[name]
    args = inputs(64, with_beta, dtype=torch.float32, decay_scale=40.0)
    o_ref, S_ref = recurrent(*args)
    o, S = chunked(*args, chunk_size=64)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4)


def test_delta_rule_overwrites_a_key():
    """With α = 1 and β = 1 a second write to the same unit key replaces the first value."""
    k = F.normalize(torch.randn(1, 1, 1, 4, dtype=torch.float64), dim=-1).expand(1, 1, 2, 4)
    v = torch.randn(1, 1, 2, 3, dtype=torch.float64)
    o, S = gated_delta_recurrent(k, k, v, torch.zeros(1, 1, 2, dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64))
    torch.testing.assert_close(o[0, 0, 1], v[0, 0, 1])


MIXERS = {"gla": GatedLinearAttention, "gated_deltanet": GatedDeltaNet}


def lm(mixer, **over):
    torch.manual_seed(0)
    spec = {"vocab_size": 29, "d_model": 16, "n_layer": 2,
            "block": {"mixer": {"name": mixer, "n_head": 2, "chunk_size": 4}}}
    spec.update(over)
    return LM(parse(ModelConfig, spec)).double()


@pytest.mark.parametrize("mixer", MIXERS)
def test_module_chunk_mode_equals_recurrent_mode_and_is_causal(mixer):
    cls = MIXERS[mixer]
    torch.manual_seed(0)
    m = cls(16, parse(cls.Config, {"n_head": 2, "chunk_size": 4, "expand_v": 1.5})).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    m.mode = "recurrent"
    y_ref = m(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    gx, = torch.autograd.grad(y.sum(), x)
    gx_ref, = torch.autograd.grad(y_ref.sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-11)
    x2 = x.detach().clone()
    x2[:, 6:] = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x2)[:, :6], y_ref[:, :6], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mixer", MIXERS)
def test_decoding_with_state_equals_full_forward(mixer):
    model = lm(mixer).eval()
    x = torch.randint(0, 29, (3, 13))
    full = model(x).logits
    caches = model.init_caches(3, 13)
    parts, pos = [], 0
    for n in (5, 1, 3, 1, 3):  # prefill (chunked, with a padded tail), single steps, chunks after a prefix
        parts.append(model(x[:, pos:pos + n], caches=caches, pos=pos).logits)
        pos += n
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-10)
    assert caches[0].S_BHKV.shape == (3, 2, 8, 8) and caches[0].pos == 13


def test_hybrid_three_linear_one_attention_generates():
    model = lm("gla", n_layer=4,
               variants={"attn": {"mixer": {"name": "attention", "n_head": 2, "gate": "headwise"}},
                         "gdn": {"mixer": {"name": "gated_deltanet", "n_head": 2}}},
               pattern=["base", "gdn", "base", "attn"]).eval()
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == ["GatedLinearAttention", "GatedDeltaNet", "GatedLinearAttention", "CausalSelfAttention"]
    prompt = torch.randint(0, 29, (2, 5))
    cached = model.generate(prompt, 4, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 4, temperature=0, use_cache=False))


@pytest.mark.parametrize("mixer", MIXERS)
def test_flops_meter(mixer):
    cls = MIXERS[mixer]
    m = cls(16, parse(cls.Config, {"n_head": 2, "chunk_size": 4}))
    B, T, H, K, V = 2, 9, 2, 8, 8
    ctx = ForwardContext()
    m(torch.randn(B, T, 16), ctx)
    table = ctx.meter.breakdown()
    assert table["in_proj"][0] == 2 * B * T * 16 * (2 * H * K + 2 * H * V + m.gate_in_dim)
    assert table["out"][0] == 2 * B * T * H * V * 16
    C, N = 4, 3
    expected = {"gla": B * H * N * (2 * C * C * (K + V) + 4 * C * K * V + 2 * K * V),
                "gated_deltanet": B * H * N * (4 * C * C * K + C * C * (K + V) + 2 * C * C * V + 6 * C * K * V)}
    assert table["state"][0] == expected[mixer]
    if mixer == "gla":  # the rank-16 decay projection W_2 (with bias)
        assert table["gate_up"] == (2 * B * T * 16 * H * K, B * T * (16 * H * K + H * K))


def test_errors():
    with pytest.raises(ConfigError, match="chunk_size"):
        parse(GatedLinearAttention.Config, {"chunk_size": 24})
    with pytest.raises(ConfigError, match="expand_v"):
        parse(ModelConfig, {"vocab_size": 5, "d_model": 12, "block": {"mixer": {"name": "gla", "n_head": 4,
                                                                             "expand_v": 0.5}}})
    model = lm("gla").eval()
    caches = model.init_caches(1, 8)
    model(torch.zeros(1, 3, dtype=torch.long), caches=caches, pos=0)
    with pytest.raises(ValueError, match="holds 3 tokens but this forward starts at pos 4"):
        model(torch.zeros(1, 1, dtype=torch.long), caches=caches, pos=4)
    with pytest.raises(ValueError, match="needs its recurrent state"):
        model(torch.zeros(1, 1, dtype=torch.long), pos=2)
