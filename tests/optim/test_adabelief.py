import math

import pytest
import torch
from harness import OptimizerSuite, scalar_run

from gatelab.optim.adabelief import AdaBelief


class TestAdaBelief(OptimizerSuite):
    opt_cls = AdaBelief
    name = "adabelief"
    has_fused = True
    configs = [
        dict(lr=1e-2),  # rectified (default): 5 momentum-SGD steps, then adaptive
        dict(lr=1e-2, rectify=False, weight_decay=0.1),
        dict(lr=1e-2, decoupled_weight_decay=False, weight_decay=0.1, maximize=True),
        dict(lr=1e-2, degenerated_to_sgd=False, eps=1e-8),
    ]
    quadratic = (dict(lr=0.1), 300, 1e-6)
    rosenbrock = (dict(lr=1e-2), 5000, 1e-3)
    invalid = [dict(lr=-1e-3), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)),
               dict(eps=-1.0), dict(weight_decay=-0.1), dict(foreach=True, fused=True)]


def _two_steps(**kwargs):
    """θ on f(θ) = θ²/2 (gradient g = θ) from θ0 = 1: the iterates after steps 1 and 2."""
    return scalar_run(AdaBelief, dict(lr=0.1, **kwargs))[0]


def test_first_two_steps_unrectified():
    b1, b2, eps, lr = 0.9, 0.999, 1e-16, 0.1
    # step 1: g = 1
    m1 = (1 - b1) * 1.0  # 0.1
    s1 = (1 - b2) * (1.0 - m1) ** 2 + eps  # 0.001 * 0.81
    th1 = 1.0 - lr * (m1 / (1 - b1)) / (math.sqrt(s1 / (1 - b2)) + eps)  # 1 - 0.1/0.9
    # step 2: g = θ1
    g = th1
    m2 = b1 * m1 + (1 - b1) * g
    s2 = b2 * s1 + (1 - b2) * (g - m2) ** 2 + eps
    th2 = th1 - lr * (m2 / (1 - b1**2)) / (math.sqrt(s2 / (1 - b2**2)) + eps)
    assert th1 == pytest.approx(0.8888888888888888, abs=1e-12)
    assert th2 == pytest.approx(0.7727292, abs=1e-6)
    got = _two_steps(rectify=False)
    assert got == pytest.approx([th1, th2], abs=1e-12)


def test_first_two_steps_rectified_are_momentum_sgd():
    # ρ_1 = 1, ρ_2 ≈ 2 < 5: both steps are θ ← θ - η m_t/(1-β1^t).
    b1, lr = 0.9, 0.1
    m1 = (1 - b1) * 1.0
    th1 = 1.0 - lr * m1 / (1 - b1)  # 0.9
    m2 = b1 * m1 + (1 - b1) * th1  # 0.18
    th2 = th1 - lr * m2 / (1 - b1**2)  # 0.9 - 0.1*0.18/0.19
    assert _two_steps() == pytest.approx([th1, th2], abs=1e-12)
    assert th2 == pytest.approx(0.8052631578947368, abs=1e-12)
    # degenerated_to_sgd=False: no step at all while ρ_t < 5
    assert _two_steps(degenerated_to_sgd=False) == [1.0, 1.0]


def test_rectified_adaptive_phase_matches_formula():
    """12 steps on θ²/2: steps 6+ use η r_t √(1-β2^t)/(1-β1^t) · m/(√s + ε)."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-16, 0.05
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = AdaBelief([theta], lr=lr)
    th, m, s = 1.0, 0.0, 0.0
    rho_inf = 2 / (1 - b2) - 1
    adaptive_steps = 0
    for t in range(1, 13):
        theta.grad = theta.detach().clone()
        opt.step()
        g = th
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= 5:
            adaptive_steps += 1
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            th -= lr * r * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (math.sqrt(s) + eps)
        else:
            th -= lr * m / (1 - b1**t)
        assert theta.item() == pytest.approx(th, abs=1e-12), t
    assert adaptive_steps == 7


def test_decoupled_weight_decay_shrinks_before_step():
    # zero gradient: m = 0 so only the decay acts: θ ← θ(1 - ηλ)
    p = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    opt = AdaBelief([p], lr=0.1, weight_decay=0.5, rectify=False)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert p.item() == pytest.approx(2.0 * (1 - 0.1 * 0.5), abs=1e-15)
