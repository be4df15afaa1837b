import math

import pytest
import torch
from harness import OptimizerSuite

from gatelab.optim.swats import SWATS


class TestSWATS(OptimizerSuite):
    opt_cls = SWATS
    name = "swats"
    configs = [dict(lr=1e-2), dict(lr=1e-2, switch_eps=1e9, weight_decay=0.1)]  # 2nd: SGD at k=2
    quadratic = (dict(lr=0.1), 500, 1e-8)
    rosenbrock = (dict(lr=0.03), 2000, 1e-3)
    invalid = [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(eps=-1.0), dict(switch_eps=-1.0)]


def test_adam_phase_first_two_steps_and_projection():
    """f = θ²/2, θ0 = 1: p_k = -η√(1-β2^k)/(1-β1^k)·m/(√a+ε), γ_k = p²/(-p g), λ_k EMA of γ."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-9, 0.1
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = SWATS([theta], lr=lr)
    th, m, a, lam = 1.0, 0.0, 0.0, 0.0
    for k in (1, 2):
        theta.grad = theta.detach().clone()
        opt.step()
        g = th
        m = b1 * m + (1 - b1) * g
        a = b2 * a + (1 - b2) * g * g
        p = -lr * math.sqrt(1 - b2**k) / (1 - b1**k) * m / (math.sqrt(a) + eps)
        th += p
        gamma = p * p / (-p * g)
        lam = b2 * lam + (1 - b2) * gamma
        assert theta.item() == pytest.approx(th, abs=1e-13)
        assert opt.param_groups[0]["lambda"] == pytest.approx(lam, rel=1e-12)
    # step 1: p = -η (Adam's first step is η·sign(g)); γ_1 = η/g = 0.1
    assert opt.param_groups[0]["phase"] == "adam"


def test_switch_then_sgd_momentum_rule():
    """With a loose switch test the group switches at k = 2 with Λ = λ_2/(1-β2²), then
    v ← β1 v + g, θ ← θ - (1-β1) Λ v."""
    b1 = 0.9
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = SWATS([theta], lr=0.1, switch_eps=1e9)
    for _ in range(2):
        theta.grad = theta.detach().clone()
        opt.step()
    group = opt.param_groups[0]
    assert group["phase"] == "sgd"
    lam_hat = group["lambda"] / (1 - 0.999**2)
    assert group["sgd_lr"] == pytest.approx(lam_hat, rel=1e-12)
    th, v = theta.item(), 0.0
    for _ in range(3):
        theta.grad = theta.detach().clone()
        opt.step()
        v = b1 * v + th
        th = th - (1 - b1) * lam_hat * v
        assert theta.item() == pytest.approx(th, abs=1e-13)


def test_switches_by_itself_on_a_quadratic():
    """Deterministic quadratic: the projected lr settles and SWATS switches by itself."""
    x = torch.full((10,), 3.0, dtype=torch.float64, requires_grad=True)
    opt = SWATS([x], lr=0.1, switch_eps=1e-3)
    a = torch.linspace(1, 10, 10, dtype=torch.float64)
    for _ in range(300):
        x.grad = a * x.detach()
        opt.step()
    assert opt.param_groups[0]["phase"] == "sgd"
    assert opt.param_groups[0]["sgd_lr"] > 0
