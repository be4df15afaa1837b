import math

import pytest
import torch
from harness import OptimizerSuite, make_params

from gatelab.optim.subspace_momentum import SubspaceMomentumAdamW


class TestSubspaceMomentum(OptimizerSuite):
    opt_cls = SubspaceMomentumAdamW
    name = "subspace_momentum"
    # The harness params: (64, 48) and the 3-d (3, 4, 5) -> (3, 20) get right/left bases at
    # rank 2; the non-contiguous (24, 40) a left basis. gap 3 refreshes (and resets m) twice.
    configs = [
        dict(lr=0.01, rank=2, update_proj_gap=3),
        dict(lr=0.01, rank=4, update_proj_gap=4, subset=None, weight_decay=0.1),
        dict(lr=0.01, rank=3, update_proj_gap=5, subset="row", betas=(0.8, 0.99)),
    ]
    quadratic = (dict(lr=0.1), 300, 1e-6)  # a 1-d param: full momentum (Adam)
    rosenbrock = (dict(lr=1e-2), 5000, 1e-3)
    invalid = [dict(lr=-1e-3), dict(betas=(1.0, 0.999)), dict(eps=-1.0), dict(weight_decay=-1.0),
               dict(rank=0), dict(rank=2.5), dict(update_proj_gap=0), dict(subset="rows")]


def test_hand_computed_two_steps():
    """W (3 x 2), rank 1, Adam second moment. G1 = [[3, 0], [0, 1], [0, 0]] has right singular
    vector e1, so P keeps column 0 (momentum) and the complement is column 1 (raw gradient)."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    G1 = [[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    G2 = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    W = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    opt = SubspaceMomentumAdamW([W], lr=lr, betas=(b1, b2), eps=eps, rank=1, subset=None,
                                update_proj_gap=10)
    w = [[0.0, 0.0] for _ in range(3)]
    m = [0.0, 0.0, 0.0]  # the (3 x 1) momentum: coordinates along e1 (column 0)
    v = [[0.0, 0.0] for _ in range(3)]
    for t, G in enumerate((G1, G2), start=1):
        W.grad = torch.tensor(G, dtype=torch.float64)
        opt.step()
        for i in range(3):
            m[i] = b1 * m[i] + (1 - b1) * G[i][0]
            u = [m[i] / (1 - b1**t), G[i][1]]  # column 1 is the complement: the raw gradient
            for j in range(2):
                v[i][j] = b2 * v[i][j] + (1 - b2) * G[i][j] ** 2
                w[i][j] -= lr * u[j] / (math.sqrt(v[i][j] / (1 - b2**t)) + eps)
        torch.testing.assert_close(W.detach(), torch.tensor(w, dtype=torch.float64),
                                   rtol=0, atol=1e-13)
    assert opt.state[W]["exp_avg"].shape == (3, 1)
    proj = opt.state[W]["proj"]
    assert proj.shape == (1, 2) and abs(proj[0, 0].item()) == pytest.approx(1.0, abs=1e-15)


def test_refresh_resets_momentum_and_follows_new_gradient():
    """At step 1 + gap the basis is recomputed from that step's gradient and m restarts at 0."""
    W = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    opt = SubspaceMomentumAdamW([W], lr=0.1, rank=1, update_proj_gap=2, subset=None)
    grads = [torch.eye(4, 3, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5]),
             torch.ones(4, 3, dtype=torch.float64),
             torch.diag(torch.tensor([0.1, 2.0, 0.3], dtype=torch.float64)).repeat(2, 1)[:4]]
    for G in grads[:2]:
        W.grad = G
        opt.step()
    before = W.detach().clone()
    W.grad = grads[2]
    opt.step()  # step 3 = 1 + gap: refresh to the new top right singular vector, e2
    # one step after the reset the momentum is bias-corrected by 1 - b1^1: u = P*P g + (g - P*P g)
    # = g exactly, so the step is Adam's with the plain gradient
    v = sum(0.001 * 0.999 ** (2 - i) * G**2 for i, G in enumerate(grads))
    step = 0.1 * grads[2] / ((v / (1 - 0.999**3)).sqrt() + 1e-6)
    torch.testing.assert_close(W.detach(), before - step, rtol=0, atol=1e-13)
    proj = opt.state[W]["proj"]
    torch.testing.assert_close(proj.abs(), torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # m was reset, then took one step: (1 - b1) * P g = 0.1 * G e2 (up to the basis sign)
    expected = 0.1 * W.grad[:, 1:2]
    torch.testing.assert_close(opt.state[W]["exp_avg"].abs(), expected.abs(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_converges_on_matrix_least_squares(foreach):
    """0.5 ||A W - B||^2 with W (10 x 8) and rank-2 momentum: the projected path converges."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 10, generator=g, dtype=torch.float64) / math.sqrt(12)
    B = torch.randn(12, 8, generator=g, dtype=torch.float64)
    W = torch.zeros(10, 8, dtype=torch.float64, requires_grad=True)
    opt = SubspaceMomentumAdamW([W], lr=0.02, rank=2, update_proj_gap=20, foreach=foreach)
    best = torch.linalg.lstsq(A, B).solution
    f_star = 0.5 * ((A @ best - B) ** 2).sum().item()
    f0 = 0.5 * (B**2).sum().item()
    for _ in range(1500):
        opt.zero_grad()
        loss = 0.5 * ((A @ W - B) ** 2).sum()
        loss.backward()
        opt.step()
    assert "proj" in opt.state[W]
    assert loss.item() - f_star < 1e-3 * (f0 - f_star)


def test_state_is_smaller_than_adam():
    ps = make_params()
    opt = SubspaceMomentumAdamW(ps, rank=2)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    # (64, 48): m (64, 2), proj (2, 48), v one per row (keep_larger) -> far below Adam's 2*64*48
    st = opt.state[ps[2]]
    assert st["exp_avg"].shape == (64, 2) and st["proj"].shape == (2, 48)
    assert st["exp_avg_sq"].shape == (64, 1)
    assert opt.state_bytes() < 0.2 * opt.adam_state_bytes()
