"""Ternary (BitNet b1.58) MoE experts: every dispatch backend equals a per-expert loop of real
BitLinear layers, forward and backward; the swap, HGF's refusal, memory accounting, training."""
import math

import pytest
import torch

from gatelab.config import load_config
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.models import LM, ModelConfig
from gatelab.moe import Experts, dispatch_capacity, dispatch_dropless, dispatch_reference
from gatelab.quant import (BitLinear, BitLinearConfig, ExpertQuant, memory_report, packed_size, quantize_linears,
                           ternarize)
from gatelab.routing import apply_capacity, capacity, from_topk
from gatelab.train import Trainer

D, H, E, T = 8, 12, 4, 24


def _setup(dtype, activation="swiglu", act_bits=8, seed=0):
    torch.manual_seed(seed)
    experts = Experts(E, D, H, activation).to(dtype)
    experts.init_weights(0.3)
    experts.quant = BitLinear.for_experts(BitLinearConfig(act_bits=act_bits))
    x = torch.randn(T, D, dtype=dtype, requires_grad=True)
    g = torch.Generator().manual_seed(seed + 2)
    expert_TK = torch.rand(T, E, generator=g).topk(2, -1).indices
    decision = from_topk(expert_TK, torch.rand(T, 2, generator=g, dtype=dtype), E)
    return experts, x, decision


def _bitlinear(w_KN, act_bits):
    """A real BitLinear computing x @ w_KN (nn.Linear stores the transpose)."""
    layer = BitLinear(*w_KN.shape, bias=False, cfg=BitLinearConfig(act_bits=act_bits), dtype=w_KN.dtype)
    with torch.no_grad():
        layer.weight.copy_(w_KN.t())
    return layer


def _bitlinear_moe(x_TD, decision, experts, act_bits):
    """y_TD = sum_a w_a down_e(act(up_e(x_t))) with two BitLinear layers per expert;
    returns y and the [(up, down)] layers (their weight grads are the experts' transposed)."""
    layers = [(_bitlinear(experts.w_in[e].detach(), act_bits), _bitlinear(experts.w_out[e].detach(), act_bits))
              for e in range(experts.n)]
    y_TD = torch.zeros_like(x_TD)
    for a in range(decision.expert_idx_A.numel()):
        e, t = int(decision.expert_idx_A[a]), int(decision.token_idx_A[a])
        if e >= experts.n:
            continue
        up, down = layers[e]
        y_TD = y_TD.index_add(0, torch.tensor([t]), decision.weight_A[a] * down(experts.act(up(x_TD[t:t + 1]))))
    return y_TD, layers


def _check_against_bitlinear(fast_fn, experts, x, decision, act_bits, atol):
    """fast_fn(x, decision) vs the BitLinear loop: outputs and grads wrt x, experts and routing weights."""
    weight_A = decision.weight_A.detach().to(x.dtype).requires_grad_()
    dec = type(decision)(**{**decision.__dict__, "weight_A": weight_A})
    y_ref, layers = _bitlinear_moe(x, dec, experts, act_bits)
    y_fast = fast_fn(x, dec)
    torch.testing.assert_close(y_fast, y_ref, atol=atol, rtol=0)
    g = torch.randn(y_ref.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    ref_params = [m.weight for pair in layers for m in pair]
    gx_ref, gw_ref, *g_layers = torch.autograd.grad(y_ref, [x, weight_A, *ref_params], g, allow_unused=True)
    gx, gw, g_in, g_out = torch.autograd.grad(y_fast, [x, weight_A, experts.w_in, experts.w_out], g)
    torch.testing.assert_close(gx, gx_ref, atol=atol, rtol=0)
    torch.testing.assert_close(gw, gw_ref, atol=atol, rtol=0)
    zero = lambda w: torch.zeros_like(w.t())  # noqa: E731  (an unused expert gets zero gradient)
    for e in range(experts.n):
        (up, down), g_up, g_down = layers[e], g_layers[2 * e], g_layers[2 * e + 1]
        torch.testing.assert_close(g_in[e], zero(up.weight) if g_up is None else g_up.t(), atol=atol, rtol=0)
        torch.testing.assert_close(g_out[e], zero(down.weight) if g_down is None else g_down.t(), atol=atol, rtol=0)
    return y_fast


BACKENDS = {
    "reference": dispatch_reference,
    "dropless": lambda x, d, ex: dispatch_dropless(x, d, ex, "loop"),
    "capacity_no_drop": lambda x, d, ex: dispatch_capacity(x, d, ex, 1e6, 2, "loop")[0],
}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("act_bits", [8, 0])
def test_quantized_experts_equal_bitlinear_loop_float64(backend, activation, act_bits):
    experts, x, decision = _setup(torch.float64, activation, act_bits)
    fn = BACKENDS[backend]
    y = _check_against_bitlinear(lambda x_, d: fn(x_, d, experts), experts, x, decision, act_bits, atol=1e-12)
    experts.quant = None  # the quantisation is really applied: full precision differs
    assert (fn(x, decision, experts) - y).abs().max() > 1e-3


def test_capacity_with_drops_equals_bitlinear_loop_on_kept_assignments():
    experts, x, decision = _setup(torch.float64)
    kept, dropped = apply_capacity(decision, capacity(T, 2, E, 0.6))
    assert int(dropped) > 0
    y, kept2, _ = dispatch_capacity(x, decision, experts, 0.6, 2, "loop")
    assert torch.equal(kept2.expert_idx_A, kept.expert_idx_A)
    y_ref, layers = _bitlinear_moe(x, kept, experts, 8)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    gx, g_in, g_out = torch.autograd.grad(y, [x, experts.w_in, experts.w_out], g)
    gx_ref, *g_layers = torch.autograd.grad(y_ref, [x, *(m.weight for pair in layers for m in pair)], g)
    torch.testing.assert_close(gx, gx_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_in, torch.stack([gw.t() for gw in g_layers[0::2]]), atol=1e-12, rtol=0)
    torch.testing.assert_close(g_out, torch.stack([gw.t() for gw in g_layers[1::2]]), atol=1e-12, rtol=0)


def test_grouped_mm_quantized_experts_match_bitlinear_loop_fp32():
    experts, x, decision = _setup(torch.float32)
    if not experts.grouped_mm_ok(x):
        pytest.skip("torch.nn.functional.grouped_mm unavailable")
    # fp32 matmul orders differ, so a value on a rounding boundary may flip one 8-bit step
    _check_against_bitlinear(lambda x_, d: dispatch_dropless(x_, d, experts, "grouped_mm"), experts, x, decision, 8,
                             atol=1e-4)


def test_shared_expert_forward_one_equals_two_bitlinears():
    experts, x, _ = _setup(torch.float64)
    up, down = _bitlinear(experts.w_in[1].detach(), 8), _bitlinear(experts.w_out[1].detach(), 8)
    y = experts.forward_one(1, x)
    y_ref = down(experts.act(up(x)))
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    g_in, = torch.autograd.grad(y.sum(), [experts.w_in])
    torch.testing.assert_close(g_in[1], torch.autograd.grad(y_ref.sum(), [up.weight])[0].t(), atol=1e-12, rtol=0)
    assert (g_in[0] == 0).all()


def test_per_matrix_scale_is_each_experts_absmean():
    w = torch.randn(E, D, H, dtype=torch.float64) * torch.arange(1, E + 1, dtype=torch.float64).view(E, 1, 1)
    w_q, gamma = ternarize(w, per_matrix=True)
    assert gamma.shape == (E, 1, 1)
    for e in range(E):
        q_e, g_e = ternarize(w[e])
        assert torch.equal(w_q[e], q_e) and gamma[e, 0, 0] == g_e
    torch.testing.assert_close(ExpertQuant().weight(w), gamma * w_q)


def _moe_lm(linear, **ffn):
    torch.manual_seed(0)
    block = {"ffn": {"name": "moe", "n_experts": 4, "k": 2, "n_shared": 1, **ffn}}
    return LM(parse(ModelConfig, {"vocab_size": 37, "d_model": 16, "n_layer": 2, "linear": linear, "block": block}))


def test_bitlinear_swap_quantizes_routed_and_shared_experts_not_the_router():
    model = _moe_lm("bitlinear")
    for i in range(2):
        moe = model.blocks[i].ffn
        assert moe.experts.quant == ExpertQuant() and moe.shared.quant == ExpertQuant()
        assert not any(isinstance(m, BitLinear) for m in moe.router.modules())
    assert quantize_linears(model.blocks, model.cfg.linear) == []  # idempotent
    fp = _moe_lm("none")
    assert fp.blocks[0].ffn.experts.quant is None
    names = quantize_linears(fp.blocks, model.cfg.linear)
    assert {"0.ffn.experts", "0.ffn.shared", "1.ffn.experts", "1.ffn.shared"} <= set(names)
    kept = _moe_lm({"name": "bitlinear", "exclude": ["router", "shared"]}).blocks[0].ffn
    assert kept.experts.quant is not None and kept.shared.quant is None


def test_lm_output_uses_quantized_experts():
    x = torch.randint(0, 37, (2, 6))
    model = _moe_lm("bitlinear")
    out_q = model(x).logits
    for m in model.modules():
        if isinstance(m, Experts):
            m.quant = None
    assert (model(x).logits - out_q).abs().max() > 1e-4


def test_hgf_refuses_experts_unless_excluded():
    with pytest.raises(ConfigError, match="hgf does not support MoE experts.*exclude"):
        _moe_lm({"name": "hgf", "rank": 2})
    model = _moe_lm({"name": "hgf", "rank": 2, "exclude": ["router", "experts", "shared"]})
    assert model.blocks[0].ffn.experts.quant is None


def test_memory_report_counts_packed_expert_matrices():
    model = _moe_lm("bitlinear")
    rep = memory_report(model)
    moe = model.blocks[0].ffn
    names = [layer.name for layer in rep.layers if ".ffn.experts." in layer.name and layer.name.startswith("blocks.0")]
    assert len(names) == 2 * E and "blocks.0.ffn.experts.w_in[3]" in names
    per_expert = packed_size(16 * moe.experts.w_in.shape[2]) + packed_size(moe.experts.w_out.shape[1] * 16) + 8
    by_name = {layer.name: layer for layer in rep.layers}
    assert sum(by_name[f"blocks.0.ffn.experts.{w}[{e}]"].backbone_bytes for w in ("w_in", "w_out")
               for e in range(E)) == E * per_expert
    fp = memory_report(_moe_lm("none"))
    expert_params = sum(p.numel() for m in model.modules() if isinstance(m, Experts) for p in m.parameters())
    quantized_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear))
    assert rep.other_fp16_bytes == fp.other_fp16_bytes - 2 * expert_params - 2 * quantized_linear
    assert rep.fp16_bytes == 2 * (expert_params + quantized_linear)


TRAIN = {
    "data": {"corpus": {"name": "synthetic"}, "seq_len": 32, "batch_size": 4},
    "model": {"d_model": 32, "n_layer": 2, "linear": {"name": "bitlinear"},
              "block": {"mixer": {"name": "attention", "n_head": 2},
                        "ffn": {"name": "moe", "n_experts": 4, "k": 2, "n_shared": 1}}},
    "optim": {"name": "adamw", "lr": 1e-2},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "train": {"steps": 30, "ckpt_every": 0},
    "eval": {"every": 0, "batches": 1},
    "log": {"every": 1, "progress": False},
}


def test_bitlinear_moe_lm_trains_through_trainer(tmp_path):
    trainer = Trainer(load_config(None, [], base=TRAIN), tmp_path)
    assert all(m.quant is not None for m in trainer.model.modules() if isinstance(m, Experts))
    losses = trainer.fit().losses
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.3, (first, last)
