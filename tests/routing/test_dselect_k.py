"""DSelect-k gate: smooth step, binary-code selectors against a per-expert reference loop,
weights summing to 1, convergence to at most k experts under the entropy regulariser,
and the non-power-of-two reachability term."""
import itertools

import pytest
import torch

from gatelab.core.aux import AuxOutputs, ForwardContext
from gatelab.moe import MoEConfig, MoELayer, dispatch_dropless, dispatch_reference
from gatelab.routing.dselect_k import DSelectKRouter, smooth_step

D = 6


def make(n_experts=8, k=2, seed=0, **options):
    torch.manual_seed(seed)
    return DSelectKRouter(D, n_experts, k, DSelectKRouter.Config(**options))


def reference_q(router, x_TD):
    """q_TE from the paper's formula, one token, selector and expert at a time (float64)."""
    gamma, k, m, E = router.cfg.gamma, router.k, router.n_bits, router.n_experts
    x = x_TD.double()
    with torch.no_grad():
        z_TKM = (x @ router.z_weight.double().t() + router.z_bias.double()).view(-1, k, m)
        alpha_TK = torch.softmax(x @ router.w_weight.double().t() + router.w_bias.double(), -1)
    q = torch.zeros(x.shape[0], E, dtype=torch.float64)
    for t, i, e in itertools.product(range(x.shape[0]), range(k), range(E)):
        r = 1.0
        for j, bit in enumerate(format(e, f"0{m}b")):
            lo, hi = -gamma / 2, gamma / 2
            zz = float(z_TKM[t, i, j])
            s = 0.0 if zz <= lo else 1.0 if zz >= hi else -2 * zz**3 / gamma**3 + 3 * zz / (2 * gamma) + 0.5
            r *= s if bit == "1" else 1 - s
        q[t, e] += float(alpha_TK[t, i]) * r
    return q


def test_smooth_step_values_saturation_and_smooth_derivative():
    gamma = 2.0
    t = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0], dtype=torch.float64, requires_grad=True)
    s = smooth_step(t, gamma)
    cubic = lambda u: -2 * u**3 / gamma**3 + 3 * u / (2 * gamma) + 0.5  # noqa: E731
    expected = [0.0, 0.0, cubic(-0.5), 0.5, cubic(0.5), 1.0, 1.0]
    assert expected[2] == pytest.approx(0.15625) and expected[4] == pytest.approx(0.84375)
    assert s.tolist() == pytest.approx(expected)
    (g,) = torch.autograd.grad(s.sum(), t)
    assert g[[0, 1, 5, 6]].abs().max() == 0  # C^1: the cubic's slope is 0 at +-gamma/2
    assert g[3].item() == pytest.approx(3 / (2 * gamma))


@pytest.mark.parametrize("n_experts,k,gamma", [(8, 2, 1.0), (4, 3, 0.5), (5, 2, 1.0), (2, 1, 1.0)])
def test_gates_match_the_papers_formula(n_experts, k, gamma):
    router = make(n_experts, k, gamma=gamma).double()
    for p in router.parameters():
        torch.nn.init.uniform_(p, -0.6, 0.6)  # mix of saturated and smooth steps
    x = torch.randn(7, D, dtype=torch.float64)
    q_TE, _ = router.gates(x)
    torch.testing.assert_close(q_TE, reference_q(router, x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n_experts", [2, 8, 16])
def test_weights_are_a_distribution_when_experts_are_a_power_of_two(n_experts):
    router = make(n_experts, k=3)
    for p in router.parameters():
        torch.nn.init.normal_(p, std=1.0)
    d = router(torch.randn(30, D), ForwardContext())
    assert torch.allclose(d.probs_TE.sum(-1), torch.ones(30))
    per_token = torch.zeros(30).index_add_(0, d.token_idx_A, d.weight_A)
    assert torch.allclose(per_token, torch.ones(30))
    assert (d.weight_A > 0).all()


def test_initially_dense_then_converges_to_at_most_k_experts_with_the_entropy_regulariser():
    router = make(16, k=2, entropy_reg=1.0)
    x = torch.randn(64, D)
    assert int(router(x, ForwardContext()).experts_per_token().min()) == 16  # z ~ 0: every code has mass
    opt = torch.optim.Adam(router.parameters(), lr=0.1)
    for _ in range(100):
        aux = AuxOutputs()
        router(x, ForwardContext(aux=aux))
        opt.zero_grad()
        aux.total_loss().backward()
        opt.step()
    aux = AuxOutputs()
    d = router(x, ForwardContext(aux=aux))
    assert int(d.experts_per_token().max()) <= 2
    assert aux.losses["dselect_entropy"].item() == pytest.approx(0.0, abs=1e-9)
    per_token = torch.zeros(64).index_add_(0, d.token_idx_A, d.weight_A)
    assert torch.allclose(per_token, torch.ones(64))


def test_entropy_regulariser_value_and_off_by_default():
    router = make(4, k=2, entropy_reg=0.5)
    aux = AuxOutputs()
    x = torch.randn(3, D)
    router(x, ForwardContext(aux=aux))
    _, r_TKL = router.gates(x)
    expected = 0.5 * -(r_TKL * r_TKL.log()).sum(-1).sum(-1).mean()
    assert aux.losses["dselect_entropy"].item() == pytest.approx(expected.item())
    aux = AuxOutputs()
    make(4, k=2)(x, ForwardContext(aux=aux))
    assert aux.losses == {}


def test_unreachable_codes_are_penalised_when_experts_are_not_a_power_of_two():
    router = make(5, k=1)  # 3 bits: codes 5, 6, 7 unreachable
    with torch.no_grad():
        router.z_weight.zero_()
        router.z_bias.copy_(torch.tensor([5.0, 5.0, 5.0]))  # all mass on code 7
    aux = AuxOutputs()
    d = router(torch.randn(4, D), ForwardContext(aux=aux))
    assert d.weight_A.numel() == 0 and aux.losses["dselect_reach"].item() == pytest.approx(1e6)
    with torch.no_grad():
        router.z_bias.copy_(torch.tensor([5.0, -5.0, -5.0]))  # code 4 (binary 100)
    aux = AuxOutputs()
    d = router(torch.randn(4, D), ForwardContext(aux=aux))
    assert d.expert_idx_A.tolist() == [4] * 4 and aux.losses["dselect_reach"].item() == pytest.approx(1.0)


def test_dselect_k_in_the_moe_layer_dispatches_like_the_reference_and_trains_the_gate():
    moe = MoELayer(D, MoEConfig(n_experts=4, k=2, hidden=8, router={"name": "dselect_k", "entropy_reg": 1e-3}))
    moe.double()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    aux = AuxOutputs()
    y = moe(x, ForwardContext(aux=aux))
    decision = moe.router(x.reshape(-1, D), ForwardContext())
    y_ref = dispatch_reference(x.reshape(-1, D), decision, moe.experts)
    torch.testing.assert_close(dispatch_dropless(x.reshape(-1, D), decision, moe.experts), y_ref, atol=1e-12, rtol=0)
    (y.square().sum() + aux.total_loss()).backward()
    assert moe.router.z_weight.grad.abs().sum() > 0 and moe.router.w_weight.grad.abs().sum() > 0
    assert set(aux.losses) == {"lb_loss", "dselect_entropy"}


def test_dselect_k_router_flops_are_metered():
    """Its two gate projections (z: k*m outputs, w: k outputs, with biases) count as router work."""
    moe = MoELayer(D, MoEConfig(n_experts=4, k=2, hidden=8, router={"name": "dselect_k"}))
    ctx = ForwardContext()
    moe(torch.randn(2, 5, D), ctx)
    outputs = moe.router.z_weight.shape[0] + moe.router.w_weight.shape[0]
    assert outputs == 2 * 2 + 2
    flops, params = ctx.meter.breakdown()["router"]
    assert flops == 2 * 10 * D * outputs and params == 10 * (D * outputs + outputs)
