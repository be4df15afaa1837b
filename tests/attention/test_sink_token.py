"""`sink: token`: a learned sink key and value per KV head prepended to every query's keys,
checked against a slow per-query loop (explicit softmax over [sink, keys]) in float64."""
import math

import pytest
import torch

from gatelab.attention import AttentionConfig, CausalSelfAttention, apply_rope, sink_metric
from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.models import LM, ModelConfig

VARIANTS = [{}, {"n_kv_head": 2}, {"n_kv_head": 1, "gate": "headwise"}]


def make(d=16, random_sink=True, **opts):
    torch.manual_seed(0)
    m = CausalSelfAttention(d, parse(AttentionConfig, {"n_head": 4, "sink": "token", **opts})).double()
    if random_sink:
        torch.nn.init.normal_(m.sink_key_GK)
        torch.nn.init.normal_(m.sink_value_GK)
    return m


def reference_loop(m: CausalSelfAttention, x_BTD):
    """Per batch, head and query: softmax over [sink key, keys 0..t] (sink key without RoPE);
    returns (y, mass on real token 0 (B, H, T), mass on the sink token (B, H, T))."""
    B, T, _ = x_BTD.shape
    H, G, K = m.n_head, m.n_kv_head, m.head_dim
    q, k, v, z = (x_BTD @ m.qkv.weight.T).split([H * K, G * K, G * K, m.gate_dim], -1)
    q, k, v = (t.view(B, T, -1, K).transpose(1, 2) for t in (q, k, v))
    cos, sin = m.rope.cos_sin(0, T, x_BTD.device, x_BTD.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    rows, first, sink = [], torch.zeros(B, H, T, dtype=x_BTD.dtype), torch.zeros(B, H, T, dtype=x_BTD.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            keys = torch.cat([m.sink_key_GK[g:g + 1], k[b, g]])  # (1 + T, K)
            values = torch.cat([m.sink_value_GK[g:g + 1], v[b, g]])
            for t in range(T):
                p = torch.softmax(keys[:t + 2] @ q[b, h, t] / math.sqrt(K), dim=0)
                rows.append(p @ values[:t + 2])
                first[b, h, t], sink[b, h, t] = p[1].detach(), p[0].detach()
    y = torch.stack(rows).view(B, H, T, K)
    if m.gate != "none":
        y = y * torch.sigmoid(z.view(B, T, H, m.gate_width).transpose(1, 2))
    return m.out(y.transpose(1, 2).reshape(B, T, H * K)), first, sink


@pytest.mark.parametrize("opts", VARIANTS)
def test_matches_reference_loop_forward_and_backward(opts):
    m = make(**opts)
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y_ref, _, _ = reference_loop(m, x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    params = [x, *m.parameters()]
    grads = torch.autograd.grad(y, params, g)
    grads_ref = torch.autograd.grad(y_ref, params, g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    named = dict(zip([n for n, _ in m.named_parameters()], grads[1:]))
    assert named["sink_key_GK"].abs().max() > 1e-6 and named["sink_value_GK"].abs().max() > 1e-6


@pytest.mark.parametrize("n_kv_head", [0, 2])
def test_zero_sink_token_equals_off_by_one_exactly(n_kv_head):
    """exp(0 . q) = 1 joins the denominator and the value is 0: the off-by-one softmax."""
    token = make(random_sink=False, n_kv_head=n_kv_head)
    torch.manual_seed(0)
    obo = CausalSelfAttention(16, parse(AttentionConfig, {"n_head": 4, "n_kv_head": n_kv_head,
                                                          "sink": "off_by_one"})).double()
    obo.load_state_dict({k: v for k, v in token.state_dict().items() if not k.startswith("sink_")})
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    torch.testing.assert_close(token(x), obo(x), rtol=0, atol=1e-13)
    assert not torch.equal(make(n_kv_head=n_kv_head)(x), obo(x))  # a trained sink differs


def test_parameters_shapes_and_flops():
    m = make(n_kv_head=2)
    assert m.sink_key_GK.shape == m.sink_value_GK.shape == (2, 4)
    fresh = CausalSelfAttention(16, parse(AttentionConfig, {"n_head": 4, "sink": "token"}))
    assert fresh.sink_key_GK.abs().sum() == 0 and fresh.sink_value_GK.abs().sum() == 0
    ctx, ctx0 = ForwardContext(), ForwardContext()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    m(x, ctx)
    m0 = CausalSelfAttention(16, parse(AttentionConfig, {"n_head": 4, "n_kv_head": 2})).double()
    m0(x, ctx0)
    assert ctx.meter.breakdown()["sdpa"][0] - ctx0.meter.breakdown()["sdpa"][0] == 4 * 2 * 4 * 4 * 5


def test_config_errors():
    with pytest.raises(ConfigError, match="sink"):
        parse(AttentionConfig, {"sink": "tokens"})
    assert parse(AttentionConfig, {"sink": "token"}).sink == "token"


def test_sink_metric_reports_first_real_token_and_sink_token_separately():
    torch.manual_seed(0)
    model = LM(parse(ModelConfig, {"vocab_size": 23, "d_model": 16, "n_layer": 2, "block": {
        "mixer": {"name": "attention", "n_head": 4, "n_kv_head": 2, "sink": "token"}}})).double()
    for blk in model.blocks:  # large weights: non-uniform attention, so the two shares differ
        torch.nn.init.normal_(blk.mixer.qkv.weight)
        torch.nn.init.normal_(blk.mixer.sink_key_GK)
        torch.nn.init.normal_(blk.mixer.sink_value_GK)
    x = torch.randint(0, 23, (3, 10))
    stats = sink_metric.measure(model, x)
    h, firsts, sinks = model.embed(x), [], []
    for i, blk in enumerate(model.blocks):
        _, first_BHT, sink_BHT = reference_loop(blk.mixer, blk.norm1(h))
        m_H, s_H = first_BHT[:, :, 1:].mean(dim=(0, 2)), sink_BHT[:, :, 1:].mean(dim=(0, 2))
        assert stats[f"f_attn/layer{i}"] == pytest.approx(m_H.mean().item(), abs=1e-6)
        assert stats[f"f_attn_max_head/layer{i}"] == pytest.approx(m_H.max().item(), abs=1e-6)
        assert stats[f"f_attn_sink_token/layer{i}"] == pytest.approx(s_H.mean().item(), abs=1e-6)
        firsts.append(m_H.mean().item())
        sinks.append(s_H.mean().item())
        h = blk(h, ForwardContext())
    assert stats["f_attn"] == pytest.approx(sum(firsts) / 2, abs=1e-6)
    assert stats["f_attn_sink_token"] == pytest.approx(sum(sinks) / 2, abs=1e-6)
    assert abs(stats["f_attn"] - stats["f_attn_sink_token"]) > 0.05  # two different statistics
    assert "f_attn_sink_token" not in sink_metric.measure(
        LM(parse(ModelConfig, {"vocab_size": 23, "d_model": 16, "n_layer": 1})), x)
