import math

import pytest
import torch
from harness import OptimizerSuite, scalar_run

from gatelab.optim.prodigy import Prodigy


class TestProdigy(OptimizerSuite):
    opt_cls = Prodigy
    name = "prodigy"
    configs = [dict(), dict(weight_decay=0.1, decouple=False, use_bias_correction=True,
                            safeguard_warmup=True, growth_rate=1.5, beta3=0.9, d_coef=0.5)]
    quadratic = (dict(), 500, 1e-8)
    rosenbrock = (dict(), 3000, 1e-3)
    invalid = [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(beta3=1.0), dict(eps=-1.0),
               dict(d0=0.0), dict(d_coef=0.0), dict(growth_rate=0.9)]


def test_first_two_steps_match_paper_algorithm():
    """1 coordinate, f = θ²/2, θ0 = 1, γ = lr = 1, d0 = 1e-6, β3 = √β2 (paper, Adam version)."""
    b1, b2, eps, d0 = 0.9, 0.999, 1e-8, 1e-6
    b3 = math.sqrt(b2)
    got = []
    for steps in (1, 2):
        xs, opt, _ = scalar_run(Prodigy, {}, steps, shape=(1,))
        got.append((xs[-1], opt.param_groups[0]["d"].item()))
    x0, x, d, m, v, r, s = 1.0, 1.0, d0, 0.0, 0.0, 0.0, 0.0
    expected = []
    for _ in range(2):
        g = x
        m = b1 * m + (1 - b1) * d * g
        v = b2 * v + (1 - b2) * d * d * g * g
        r = b3 * r + d * d * g * (x0 - x)  # γ_k = 1
        s = b3 * s + d * d * g
        d_hat = r / abs(s)
        x = x - d * m / (math.sqrt(v) + d * eps)
        d = max(d, d_hat)
        expected.append((x, d))
    # step 1: x = x0 so r = 0, d stays d0; x1 = 1 - d0·(0.1·d0)/(√0.001·d0 + d0·1e-8)
    assert expected[0][0] == pytest.approx(1 - 0.1 * d0 / (math.sqrt(1e-3) + 1e-8), rel=1e-12)
    assert expected[0][1] == d0 and expected[1][1] > d0
    for (gx, gd), (ex, ed) in zip(got, expected):
        assert gx == pytest.approx(ex, abs=1e-14)
        assert gd == pytest.approx(ed, rel=1e-10)


def test_d_estimates_distance_to_solution():
    """On a quadratic with the solution at distance ~3 per coordinate, d grows from 1e-6
    to the right order of magnitude (Prodigy's point: no lr tuning)."""
    x = torch.full((10,), 3.0, dtype=torch.float64, requires_grad=True)
    opt = Prodigy([x])
    for _ in range(200):
        x.grad = x.detach() * torch.linspace(1, 10, 10, dtype=torch.float64)
        opt.step()
    d = opt.param_groups[0]["d"].item()
    assert 0.05 < d < 30
