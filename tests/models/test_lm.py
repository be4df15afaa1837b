"""The decoder LM: shapes, causality, KV-cache generation, FLOP/parameter accounting."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gatelab.core.config import parse
from gatelab.models import LM, ModelConfig


def tiny(**over):
    spec = {"vocab_size": 37, "d_model": 16, "n_layer": 2, "block": {"mixer": {"name": "attention", "n_head": 4}}}
    spec.update(over)
    return LM(parse(ModelConfig, spec))


@pytest.mark.parametrize("mixer", [{"n_head": 4}, {"n_head": 4, "n_kv_head": 2}, {"n_head": 4, "n_kv_head": 1}])
def test_forward_shapes_and_causality(mixer):
    torch.manual_seed(0)
    model = tiny(block={"mixer": {"name": "attention", **mixer}}).double()
    x = torch.randint(0, 37, (2, 12))
    out = model(x)
    assert out.logits.shape == (2, 12, 37)
    x2 = x.clone()
    x2[:, 7:] = torch.randint(0, 37, (2, 5))
    out2 = model(x2)
    torch.testing.assert_close(out.logits[:, :7], out2.logits[:, :7], rtol=0, atol=1e-12)
    assert not torch.allclose(out.logits[:, 7:], out2.logits[:, 7:])


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_incremental_decoding_equals_full_forward(n_kv_head):
    torch.manual_seed(0)
    model = tiny(block={"mixer": {"name": "attention", "n_head": 4, "n_kv_head": n_kv_head}}).double().eval()
    x = torch.randint(0, 37, (3, 11))
    full = model(x).logits
    caches = model.init_caches(3, 11)
    parts, pos = [], 0
    for chunk in (4, 1, 3, 1, 2):  # prefill, single tokens and multi-token chunks after a prefix
        parts.append(model(x[:, pos:pos + chunk], caches=caches, pos=pos).logits)
        pos += chunk
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-10)


def test_generate_with_cache_equals_without():
    torch.manual_seed(0)
    model = tiny().double().eval()
    prompt = torch.randint(0, 37, (2, 5))
    greedy_cached = model.generate(prompt, 12, temperature=0)
    greedy_full = model.generate(prompt, 12, temperature=0, use_cache=False)
    assert torch.equal(greedy_cached, greedy_full)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = model.generate(prompt, 12, temperature=1.0, top_k=5, generator=g1)
    s2 = model.generate(prompt, 12, temperature=1.0, top_k=5, use_cache=False, generator=g2)
    assert torch.equal(s1, s2) and s1.shape == (2, 17)
    assert torch.equal(s1[:, :5], prompt)


def test_top_k_restricts_support():
    from gatelab.models import sample_next

    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 2, g)) for _ in range(200)}
    assert draws == {1, 2}


def test_flops_and_params_hand_computed():
    """vocab 10, d 8, 1 layer, 2 heads of 4, SwiGLU hidden 16, tied embeddings, B=1, T=3."""
    model = LM(parse(ModelConfig, {"vocab_size": 10, "d_model": 8, "n_layer": 1,
                                   "block": {"mixer": {"name": "attention", "n_head": 2},
                                             "ffn": {"name": "swiglu", "hidden": 16}}}))
    # qkv 8x24 + out 8x8 + gate_up 8x32 + down 16x8 + 3 norms of 8
    assert model.num_params() == 192 + 64 + 256 + 128 + 24 == 664
    assert model.num_params(non_embedding=False) == 664 + 80
    out = model(torch.zeros(1, 3, dtype=torch.long))
    qkv, out_proj, gate_up, down, head = 2 * 3 * 8 * 24, 2 * 3 * 8 * 8, 2 * 3 * 8 * 32, 2 * 3 * 16 * 8, 2 * 3 * 8 * 10
    attn = 4 * 2 * 4 * (1 + 2 + 3)  # 4 * heads * head_dim * (sum over queries of visible keys)
    assert out.meter.total_flops() == qkv + out_proj + gate_up + down + head + attn == 4512
    assert out.meter.total_param_reads() / 3 == 664  # dense: every non-embedding parameter per token
    assert out.meter.breakdown()["layer0/mixer/sdpa"][0] == attn


def test_flops_match_torch_flop_counter():
    """Every matmul we count equals torch's FlopCounterMode on the executed graph. The
    counter does not see the fused CPU SDPA kernel (it charges it 0), so attention is
    left out here; its causal count is checked by hand in the test above."""
    torch.manual_seed(0)
    model = tiny(block={"mixer": {"name": "attention", "n_head": 4, "n_kv_head": 2},
                        "ffn": {"name": "gelu"}}, n_layer=3)
    B, T, H, K = 2, 9, 4, 4
    x = torch.randint(0, 37, (B, T))
    with FlopCounterMode(display=False) as fc:
        out = model(x)
    causal = 3 * 4 * B * H * K * T * (T + 1) // 2
    assert sum(v[0] for k, v in out.meter.breakdown().items() if k.endswith("sdpa")) == causal
    assert fc.get_total_flops() == out.meter.total_flops() - causal


def test_untied_head_counts_and_init():
    model = tiny(tie_embeddings=False)
    assert model.lm_head.weight is not model.embed.weight
    assert model.num_params(non_embedding=False) - model.num_params() == 2 * 37 * 16
    resid = model.blocks[0].mixer.out.weight.std().item()
    assert resid < 0.02 * 0.9  # residual projections scaled by 1/sqrt(2 n_layer)


def test_kv_cache_overflow_is_a_clear_error():
    model = tiny().eval()
    caches = model.init_caches(1, 4)
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long), caches=caches, pos=0)
