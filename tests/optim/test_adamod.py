import math

import pytest
from harness import OptimizerSuite, scalar_run

from gatelab.optim.adamod import AdaMod


class TestAdaMod(OptimizerSuite):
    opt_cls = AdaMod
    name = "adamod"
    has_fused = True
    configs = [dict(lr=1e-2), dict(lr=1e-2, beta3=0.9, weight_decay=0.1, maximize=True)]
    quadratic = (dict(lr=0.5, beta3=0.9), 500, 1e-6)
    rosenbrock = (dict(lr=5e-2, beta3=0.9), 2000, 1e-3)
    invalid = [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(beta3=1.0), dict(beta3=-0.5),
               dict(eps=-1.0), dict(weight_decay=-1.0)]


def test_first_two_steps():
    """f = θ²/2 (g = θ), θ0 = 1, η = 0.1, β3 = 0.999: step = min(η_t, s_t)·m_t."""
    b1, b2, b3, eps, lr = 0.9, 0.999, 0.999, 1e-8, 0.1
    got, opt, theta = scalar_run(AdaMod, dict(lr=lr))
    # step 1: g = 1
    m, v = (1 - b1) * 1.0, (1 - b2) * 1.0
    eta = lr * math.sqrt(1 - b2) / (1 - b1) / (math.sqrt(v) + eps)  # ≈ η/(1-β1) = 1
    s = (1 - b3) * eta  # the momental bound starts at (1-β3)η_1 ≈ 1e-3
    th1 = 1.0 - min(eta, s) * m  # ≈ 1 - 1e-3·0.1: 1000× damped vs Adam's 1 - η
    # step 2: g = θ1
    g = th1
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    eta = lr * math.sqrt(1 - b2**2) / (1 - b1**2) / (math.sqrt(v) + eps)
    s = b3 * s + (1 - b3) * eta
    th2 = th1 - min(eta, s) * m
    assert th1 == pytest.approx(1 - 1e-4, abs=1e-9)
    assert got == pytest.approx([th1, th2], abs=1e-13)
    assert opt.state[theta]["exp_avg_lr"].item() == pytest.approx(s, rel=1e-12)
