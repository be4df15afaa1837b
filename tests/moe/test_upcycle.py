"""Upcycling a dense SwiGLU LM into an MoE LM reproduces it at step 0 when configured to."""
import pytest
import torch

from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.models import LM, ModelConfig
from gatelab.moe import MoEConfig, MoELayer, upcycle_ffn, upcycle_model
from gatelab.models.layers import GeluMLP, SwiGLU
from gatelab.routing import from_topk
from gatelab.moe.dispatch import dispatch_dropless

D = 16


def lm(ffn):
    spec = {"vocab_size": 29, "d_model": D, "n_layer": 2,
            "block": {"mixer": {"name": "attention", "n_head": 2}, "ffn": ffn}}
    return LM(parse(ModelConfig, spec)).double()


@pytest.mark.parametrize("router", [{"name": "topk", "renorm": True}, {"name": "topk", "order": "topk_softmax"}])
def test_upcycled_lm_reproduces_dense_lm_at_step_zero(router):
    torch.manual_seed(0)
    dense = lm({"name": "swiglu"})
    moe = lm({"name": "moe", "n_experts": 4, "k": 2, "router": router})
    assert upcycle_model(dense, moe, router_noise=1e-2) == ["blocks.0.ffn", "blocks.1.ffn"]
    x = torch.randint(0, 29, (2, 10))
    torch.testing.assert_close(moe(x).logits, dense(x).logits, atol=1e-12, rtol=0)


def test_unrenormalised_upcycle_scales_output_by_chosen_probability_mass():
    torch.manual_seed(0)
    dense = SwiGLU(D).double()
    moe = MoELayer(D, MoEConfig(n_experts=4, k=2)).double()
    upcycle_ffn(moe, dense)
    x = torch.randn(5, D, dtype=torch.float64)
    ctx = ForwardContext()
    y = moe(x, ctx)
    mass_T1 = torch.softmax(moe.router.logits(x), -1).topk(2, -1).values.sum(-1, keepdim=True).double()
    torch.testing.assert_close(y, mass_T1 * dense(x), atol=1e-6, rtol=0)
    assert not torch.allclose(y, dense(x))


@pytest.mark.parametrize("dense_cls,activation", [(SwiGLU, "swiglu"), (GeluMLP, "gelu")])
def test_fine_grained_slices_partition_the_dense_ffn(dense_cls, activation):
    torch.manual_seed(0)
    dense = dense_cls(D, dense_cls.Config(hidden=32)).double()
    moe = MoELayer(D, MoEConfig(n_experts=8, k=4, hidden=32, granularity=4, activation=activation,
                                n_shared=4)).double()
    upcycle_ffn(moe, dense)
    x = torch.randn(6, D, dtype=torch.float64)
    all_slices = from_topk(torch.arange(4).repeat(6, 1), torch.ones(6, 4), 8)  # experts 0..3 = the 4 slices
    torch.testing.assert_close(dispatch_dropless(x, all_slices, moe.experts), dense(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(moe.shared.forward_one(0, x), dense(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(moe.experts.w_in[5], moe.experts.w_in[1])


def test_upcycle_rejects_mismatched_activation():
    with pytest.raises(ValueError, match="activation=gelu"):
        upcycle_ffn(MoELayer(D, MoEConfig(n_experts=2, k=1)), GeluMLP(D))


@pytest.mark.parametrize("router", [{"name": "topk"}, {"name": "topk", "score": "sigmoid", "renorm": True},
                                    {"name": "expert_choice"}])
def test_zero_routed_with_full_width_shared_expert_equals_dense_for_any_router(router):
    """Shared expert = all G slices of the dense FFN, routed outputs start at 0: y = FFN(x)."""
    torch.manual_seed(0)
    dense = lm({"name": "swiglu", "hidden": 32})
    moe = lm({"name": "moe", "n_experts": 8, "k": 2, "hidden": 32, "granularity": 4, "n_shared": 4, "router": router})
    upcycle_model(dense, moe, zero_routed=True, strict=True)
    assert not moe.blocks[0].ffn.experts.w_out.any() and moe.blocks[0].ffn.experts.w_in.any()
    x = torch.randint(0, 29, (2, 10))
    torch.testing.assert_close(moe(x).logits, dense(x).logits, atol=1e-12, rtol=0)


def test_zero_router_init_with_noise():
    torch.manual_seed(0)
    moe = MoELayer(D, MoEConfig(n_experts=4, k=2))
    upcycle_ffn(moe, SwiGLU(D), router_init="zero")
    assert not moe.router.weight.any()
    upcycle_ffn(moe, SwiGLU(D), router_init="zero", router_noise=1e-3)
    assert 0 < moe.router.weight.abs().max() < 1e-2
    with pytest.raises(ValueError, match="router_init"):
        upcycle_ffn(moe, SwiGLU(D), router_init="copy")


def test_strict_upcycle_rejects_a_mismatched_config():
    from gatelab.core.errors import ConfigError

    dense = lm({"name": "swiglu"})
    wide = LM(parse(ModelConfig, {"vocab_size": 29, "d_model": D, "n_layer": 2,
                                  "block": {"mixer": {"name": "attention", "n_head": 4}, "ffn": {"name": "swiglu"}}}))
    assert upcycle_model(dense, wide) == []  # same shapes: copied silently even though heads differ
    deeper = LM(parse(ModelConfig, {"vocab_size": 29, "d_model": D, "n_layer": 3,
                                    "block": {"mixer": {"name": "attention", "n_head": 2}, "ffn": {"name": "swiglu"}}}))
    with pytest.raises(ConfigError, match="blocks.2.*no match in the source"):
        upcycle_model(dense, deeper.double(), strict=True)
