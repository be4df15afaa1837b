"""Gated softmax attention (G1 output gate, G2 value gate), sink remedies and the sink metric,
checked against an eager reference that materialises the attention probabilities."""
import math

import pytest
import torch

from gatelab.attention import AttentionConfig, CausalSelfAttention, apply_rope, sink_metric
from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.models import LM, ModelConfig

VARIANTS = [
    {},
    {"gate": "headwise"},
    {"gate": "elementwise"},
    {"gate": "elementwise", "gate_position": "value", "n_kv_head": 2},
    {"gate": "headwise", "gate_position": "value"},
    {"gate": "headwise", "gate_fn": "ns_sigmoid"},
    {"sink": "off_by_one"},
    {"sink": "learned", "n_kv_head": 2},
    {"sink": "learned", "gate": "headwise", "n_kv_head": 1},
]


def reference(m: CausalSelfAttention, x_BTD):
    """Eager attention: explicit softmax over [sink logit, causal scores]; returns (y, probs)."""
    B, T, _ = x_BTD.shape
    H, G, K = m.n_head, m.n_kv_head, m.head_dim
    q, k, v, z = (x_BTD @ m.qkv.weight.T).split([H * K, G * K, G * K, m.gate_dim], -1)
    q = q.view(B, T, H, K).transpose(1, 2)
    k = k.view(B, T, G, K).transpose(1, 2)
    v = v.view(B, T, G, K).transpose(1, 2)

    def gate(n):
        g = torch.sigmoid(z.view(B, T, n, m.gate_width).transpose(1, 2))
        return 0.5 + 0.5 * g if m.gate_fn == "ns_sigmoid" else g

    if m.gate != "none" and m.gate_position == "value":
        v = v * gate(G)
    cos, sin = m.rope.cos_sin(0, T, x_BTD.device, x_BTD.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(K)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    if m.sink != "none":
        s = m.sink_logit_H if m.sink == "learned" else torch.zeros(H, dtype=x_BTD.dtype)
        scores = torch.cat([s.view(1, H, 1, 1).expand(B, H, T, 1), scores], -1)
    probs = scores.softmax(-1)[..., -T:]
    y = probs @ v
    if m.gate != "none" and m.gate_position == "output":
        y = y * gate(H)
    return m.out(y.transpose(1, 2).reshape(B, T, H * K)), probs


def make(d=16, **opts):
    torch.manual_seed(0)
    m = CausalSelfAttention(d, parse(AttentionConfig, {"n_head": 4, **opts})).double()
    if m.sink_logit_H is not None:
        torch.nn.init.normal_(m.sink_logit_H)
    for p in (getattr(m, "sink_key_GK", None), getattr(m, "sink_value_GK", None)):
        if p is not None:
            torch.nn.init.normal_(p)
    return m


@pytest.mark.parametrize("opts", VARIANTS)
def test_matches_eager_reference_forward_and_backward(opts):
    m = make(**opts)
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y_ref, _ = reference(m, x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *m.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *m.parameters()], g, allow_unused=True)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b if b is not None else torch.zeros_like(a), rtol=0, atol=1e-11)


@pytest.mark.parametrize("opts", VARIANTS + [{"sink": "token"}, {"sink": "token", "n_kv_head": 2},
                                              {"sink": "token", "n_kv_head": 1, "gate": "headwise"}])
def test_incremental_decoding_equals_full(opts):
    """Chunked cached decoding equals the full forward (a sink token is prepended at every step, never cached)."""
    m = make(**opts).eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full = m(x)
    cache = m.init_cache(2, 9, x.device, x.dtype)
    parts, pos = [], 0
    for n in (3, 1, 4, 1):
        parts.append(m(x[:, pos:pos + n], ForwardContext(cache=cache, pos=pos)))
        pos += n
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-12)


def test_gate_parameters_flops_and_stats():
    d, H, K, B, T = 16, 4, 4, 2, 5
    base = make()
    n0 = sum(p.numel() for p in base.parameters())
    for opts, extra in (({"gate": "headwise"}, d * H), ({"gate": "elementwise"}, d * H * K),
                        ({"gate": "headwise", "gate_position": "value", "n_kv_head": 2}, d * 2)):
        m = make(**opts)
        kv = m.n_kv_head * K * 2 * d
        assert sum(p.numel() for p in m.parameters()) - n0 == extra + kv - base.n_kv_head * K * 2 * d
        ctx = ForwardContext()
        m(torch.randn(B, T, d, dtype=torch.float64), ctx)
        assert ctx.meter.breakdown()["gate"] == (2 * B * T * extra, B * T * extra)
        stats = ctx.aux.scalar_stats()
        assert 0 < stats["gate_mean"] < 1 and stats["gate_frac_lt_1e-2"] == 0.0


def test_gate_starts_near_half_and_ns_sigmoid_is_bounded():
    m = make(gate="elementwise")
    ctx = ForwardContext()
    m(torch.randn(2, 5, 16, dtype=torch.float64), ctx)
    assert abs(ctx.aux.stats["gate_mean"] - 0.5) < 0.05
    m = make(gate="headwise", gate_fn="ns_sigmoid")
    m.qkv.weight.data[-4:] = -100.0  # saturate the gate logits low
    ctx = ForwardContext()
    m(torch.ones(1, 3, 16, dtype=torch.float64), ctx)
    assert ctx.aux.stats["gate_mean"] >= 0.5


def test_sink_absorbs_mass():
    """A large learned sink logit drains attention: outputs shrink towards 0."""
    m = make(sink="learned")
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    m.sink_logit_H.data.fill_(30.0)
    assert m(x).abs().max() < 1e-9


def test_config_errors():
    with pytest.raises(ConfigError, match="gate_fn"):
        parse(AttentionConfig, {"gate_fn": "ns_sigmoid"})
    with pytest.raises(ConfigError, match="gate"):
        parse(AttentionConfig, {"gate": "channelwise"})


def lm(**mixer):
    torch.manual_seed(0)
    return LM(parse(ModelConfig, {"vocab_size": 23, "d_model": 16, "n_layer": 2,
                                  "block": {"mixer": {"name": "attention", "n_head": 4, **mixer}}})).double()


@pytest.mark.parametrize("opts", [{}, {"sink": "learned", "n_kv_head": 2}])
def test_measure_matches_explicit_probabilities(opts):
    model = lm(**opts)
    x = torch.randint(0, 23, (3, 10))
    stats = sink_metric.measure(model, x)
    acts, mass = [], []
    h = model.embed(x)
    for blk in model.blocks:
        _, probs = reference(blk.mixer, blk.norm1(h))
        mass.append(probs[:, :, 1:, 0].mean(dim=(0, 2)))  # (H,), queries >= 1
        h = blk(h, ForwardContext())
        acts.append(h.abs().max().item())
    for i, m_H in enumerate(mass):
        assert stats[f"f_attn/layer{i}"] == pytest.approx(m_H.mean().item(), abs=1e-6)
        assert stats[f"f_attn_max_head/layer{i}"] == pytest.approx(m_H.max().item(), abs=1e-6)
        assert stats[f"m_act/layer{i}"] == pytest.approx(acts[i], rel=1e-9)
    assert stats["f_attn"] == pytest.approx(sum(m.mean().item() for m in mass) / 2, abs=1e-6)
    assert stats["m_act"] == pytest.approx(sum(acts) / 2)
    assert all(m.sink_probe is None for m in model.modules() if isinstance(m, CausalSelfAttention))


def test_measure_on_model_without_attention_and_bad_input():
    model = lm()
    with pytest.raises(TypeError, match="blocks"):
        sink_metric.measure(model.blocks[0], torch.zeros(1, 4, dtype=torch.long))
    stats = sink_metric.measure(model, torch.zeros(1, 1, dtype=torch.long))
    assert "f_attn" not in stats and "m_act/layer1" in stats
