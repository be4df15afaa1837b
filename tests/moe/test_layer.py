"""The `moe` channel mixer: in the LM by config, losses/statistics/FLOPs, backends, experts."""
import pytest
import torch

from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.models import LM, ModelConfig
from gatelab.moe import MoEConfig, MoELayer
from gatelab.routing import from_topk

D = 16


def layer(**options):
    torch.manual_seed(0)
    return MoELayer(D, MoEConfig(**options))


def lm(ffn, n_layer=2, **over):
    torch.manual_seed(0)
    spec = {"vocab_size": 31, "d_model": D, "n_layer": n_layer,
            "block": {"mixer": {"name": "attention", "n_head": 2}, "ffn": ffn}, **over}
    return LM(parse(ModelConfig, spec))


def test_moe_in_lm_by_config_reports_losses_stats_and_meter_under_layer_names():
    model = lm({"name": "moe", "n_experts": 4, "k": 2}, variants={"dense": {"ffn": {"name": "swiglu"}}},
               pattern=["dense", "base"])
    x = torch.randint(0, 31, (2, 8))
    out = model(x, domains_BT=torch.randint(0, 3, (2, 8)))
    assert set(out.aux.losses) == {"layer1/ffn/lb_loss", "layer1/ffn/z_loss"}
    for name in ("load_cv", "max_vio", "router_entropy", "router_lse", "experts_per_token", "domain_mi"):
        assert f"layer1/ffn/{name}" in out.aux.stats
    assert out.aux.stats["layer1/ffn/tokens_per_expert"].sum() == 2 * 8 * 2
    flops = out.meter.breakdown()
    moe = model.blocks[1].ffn
    per = moe.experts.params_per_expert
    assert flops["layer1/ffn/experts"] == (2 * 16 * 2 * per, 16 * 2 * per)
    assert flops["layer1/ffn/router"][0] == 2 * 16 * D * 4
    # small router init: probabilities ~ uniform, so the Switch loss ~ 1 x lb_coef whatever the counts
    assert out.aux.scalar_stats()["layer1/ffn/lb_loss"] == pytest.approx(1e-2, rel=1e-3)


def test_moe_lm_trains_and_routes_differently_after_training():
    model = lm({"name": "moe", "n_experts": 4, "k": 2, "router": {"name": "topk", "bias_update": 1e-2}})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    x = torch.randint(0, 31, (2, 12))
    losses = []
    bias = model.blocks[0].ffn.router.bias_E
    for _ in range(12):
        out = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x[:, 1:].flatten()) + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        for m in model.modules():
            if hasattr(m, "post_step"):
                m.post_step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert bias.abs().sum() > 0  # aux-loss-free bias updated through the post_step hook
    assert model.blocks[0].ffn.router.weight.grad.abs().sum() > 0


def test_moe_lm_topk_is_causal_and_decodes_incrementally():
    model = lm({"name": "moe", "n_experts": 4, "k": 2}).double().eval()
    x = torch.randint(0, 31, (2, 9))
    full = model(x).logits
    caches = model.init_caches(2, 9)
    parts = [model(x[:, :5], caches=caches, pos=0).logits]
    for p in range(5, 9):
        parts.append(model(x[:, p:p + 1], caches=caches, pos=p).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("router", [{"name": "topk"}, {"name": "topk", "n_null": 2}, {"name": "top_p", "p": 0.7},
                                    {"name": "expert_choice"}])
@pytest.mark.parametrize("backend", ["dropless", "capacity"])
def test_layer_backends_match_reference_backend_float64(router, backend):
    ref = layer(n_experts=4, k=2, router=router, backend="reference", n_shared=1).double()
    fast = layer(n_experts=4, k=2, router=router, backend=backend, capacity_factor=100.0, n_shared=1).double()
    fast.load_state_dict(ref.state_dict())
    torch.nn.init.normal_(ref.router.weight, std=0.5)
    fast.router.weight.data.copy_(ref.router.weight.data)
    x = torch.randn(3, 5, D, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, D, dtype=torch.float64)
    outs = []
    for m in (ref, fast):
        y = m(x, ForwardContext())
        outs.append((y, *torch.autograd.grad(y, [x, *m.parameters()], g)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_null_experts_and_capacity_count_only_executed_assignments():
    m = layer(n_experts=4, k=2, router={"name": "topk", "n_null": 4})
    torch.nn.init.normal_(m.router.weight, std=1.0)
    ctx = ForwardContext()
    m(torch.randn(2, 10, D), ctx)
    real = int(ctx.aux.stats["tokens_per_expert"].sum())
    assert real < 2 * 20 and float(ctx.aux.stats["null_frac"]) > 0
    assert ctx.meter.breakdown()["experts"][1] == real * m.experts.params_per_expert
    m = layer(n_experts=4, k=2, backend="capacity", capacity_factor=0.5)
    torch.nn.init.normal_(m.router.weight, std=1.0)
    ctx = ForwardContext()
    m(torch.randn(2, 10, D), ctx)
    kept = 40 * (1 - float(ctx.aux.stats["dropped_frac"]))
    assert ctx.meter.breakdown()["experts"][1] == pytest.approx(kept * m.experts.params_per_expert)
    assert kept <= 4 * 5  # capacity ceil(0.5 * 2 * 20 / 4) = 5 per expert


def test_fine_grained_and_shared_expert_sizes_and_gelu():
    m = layer(n_experts=16, k=8, hidden=64, granularity=4, n_shared=2, activation="gelu")
    assert m.experts.hidden == 16 and m.shared.hidden == 32
    assert m.experts.w_in.shape == (16, D, 16)
    ctx = ForwardContext()
    y = m(torch.randn(1, 3, D), ctx)
    assert y.shape == (1, 3, D)
    assert 0 < float(ctx.aux.stats["shared_share"]) < 1
    assert ctx.meter.breakdown()["shared"][1] == 3 * m.shared.params_per_expert


def test_hash_and_random_routers_add_no_balance_loss():
    model = lm({"name": "moe", "n_experts": 4, "k": 1, "router": {"name": "hash"}})
    out = model(torch.randint(0, 31, (2, 6)))
    assert out.aux.losses == {} and "layer0/ffn/load_cv" in out.aux.stats


class FixedTop1Router(torch.nn.Module):
    """Stand-in router: top-1 experts set per call, probabilities softmax of a trainable (T, E) table."""

    def __init__(self, n_tokens, n_experts):
        super().__init__()
        self.logits_TE = torch.nn.Parameter(torch.zeros(n_tokens, n_experts))
        self.expert_T = None

    def forward(self, x_TD, ctx):
        probs_TE = torch.softmax(self.logits_TE, -1)
        expert_T1 = torch.as_tensor(self.expert_T).unsqueeze(1)
        return from_topk(expert_T1, probs_TE.gather(1, expert_T1), probs_TE.shape[1], probs_TE=probs_TE)


def test_lm_balance_loss_is_one_times_coef_whatever_the_number_of_moe_layers():
    for n_layer in (1, 3):
        model = lm({"name": "moe", "n_experts": 4, "k": 2, "z_coef": 0.0}, n_layer=n_layer)
        out = model(torch.randint(0, 31, (2, 8)))
        assert len(out.aux.losses) == n_layer
        assert out.aux_loss.item() == pytest.approx(1e-2, rel=1e-2)  # tiny router init: ~uniform probabilities


def test_balance_loss_mean_over_layers_under_gradient_accumulation_hand_computed():
    # 2 MoE layers, E = 2, T = 2 tokens, uniform P. Per token and layer, dL/dz_{t,0} = (E / T) * 0.25 * (f0 - f1)
    # = 0.25 (f0 - f1) and dL/dz_{t,1} = -dL/dz_{t,0}; L = 1 for any counts. Micro-batch A: layer0 [0, 0]
    # (f0 - f1 = 1), layer1 [0, 1] (0); micro-batch B: layer0 [0, 1] (0), layer1 [1, 1] (-1).
    # Step gradient = coef * mean over layers * mean over micro-batches (the trainer's loss / grad_accum).
    coef, accum = 0.1, 2
    layers = [layer(n_experts=2, k=1, hidden=4, lb_coef=coef, z_coef=0.0) for _ in range(2)]
    for moe in layers:
        moe.router = FixedTop1Router(2, 2)
    plan = [([0, 0], [0, 1]), ([0, 1], [1, 1])]
    step_loss = 0.0
    for experts_per_layer in plan:
        ctx = ForwardContext()
        x = torch.randn(1, 2, D)
        for i, (moe, expert_T) in enumerate(zip(layers, experts_per_layer)):
            moe.router.expert_T = expert_T
            x = x + moe(x, ctx.for_layer(i).scoped("ffn"))
        aux_loss = ctx.aux.total_loss()
        (aux_loss / accum).backward()
        step_loss += aux_loss.item() / accum
    assert step_loss == pytest.approx(coef * 1.0)  # not 2 x coef: the layers are averaged
    g = coef * 0.25 / (2 * accum)
    for moe, sign in zip(layers, (1.0, -1.0)):
        expected = torch.tensor([[sign * g, -sign * g]] * 2)
        torch.testing.assert_close(moe.router.logits_TE.grad, expected, atol=1e-7, rtol=0)
