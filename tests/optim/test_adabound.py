import math

import pytest
import torch
from harness import OptimizerSuite, scalar_run

from gatelab.optim.adabound import AdaBound, AMSBound


class TestAdaBound(OptimizerSuite):
    opt_cls = AdaBound
    name = "adabound"
    has_fused = True
    configs = [dict(lr=1e-2), dict(lr=1e-2, gamma=0.3, weight_decay=0.1),
               dict(lr=1e-2, amsbound=True, decoupled_weight_decay=True, weight_decay=0.1)]
    quadratic = (dict(lr=0.1, final_lr=0.1), 500, 1e-6)
    rosenbrock = (dict(lr=3e-2, final_lr=1e-2), 2000, 1e-3)
    invalid = [dict(lr=-1.0), dict(final_lr=-0.1), dict(gamma=0.0), dict(gamma=1.0),
               dict(betas=(0.9, 1.0)), dict(eps=-1.0), dict(weight_decay=-1.0)]


class TestAMSBound(OptimizerSuite):
    opt_cls = AMSBound
    name = "amsbound"
    has_fused = True
    configs = [dict(lr=1e-2, gamma=0.3)]
    quadratic = (dict(lr=0.1), 500, 1e-6)


def _two_steps(cls=AdaBound, **kwargs):
    return scalar_run(cls, kwargs)[0]


def _reference(lr, final_lr, gamma, amsbound, steps=2, b1=0.9, b2=0.999, eps=1e-8):
    """η̂_t = clip(η√(1-β2^t)/((1-β1^t)(√v_t+ε)), η*(1-1/(γt+1)), η*(1+1/(γt))), θ -= η̂ m."""
    th, m, v, vmax, out = 1.0, 0.0, 0.0, 0.0, []
    for t in range(1, steps + 1):
        g = th
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = max(vmax, v)
        eta = lr * math.sqrt(1 - b2**t) / (1 - b1**t) / (math.sqrt(vmax if amsbound else v) + eps)
        lower = final_lr * (1 - 1 / (gamma * t + 1))
        upper = final_lr * (1 + 1 / (gamma * t))
        th -= min(max(eta, lower), upper) * m
        out.append(th)
    return out


def test_first_two_steps_inside_bounds():
    # t=1: η̂ = η√(1-β2)/((1-β1)(√v1+ε)) ≈ η/(1-β1) = 0.1 (multiplies the raw m1 = 0.1),
    # inside the bounds [1e-4, 100] for γ = 1e-3: θ1 ≈ 1 - 0.1·0.1 = 0.99 (Adam's step η).
    exp = _reference(0.01, 0.1, 1e-3, False)
    assert exp[0] == pytest.approx(0.99, abs=1e-8)
    assert _two_steps(lr=0.01) == pytest.approx(exp, abs=1e-13)


def test_first_two_steps_clipped_to_upper_bound():
    # final_lr 0.01, γ = 0.5: upper bound η*(1 + 1/(0.5·1)) = 0.03 < η̂ ≈ 0.1 at t=1,
    # so θ1 = 1 - 0.03·m1 = 0.997; t=2: upper 0.01·(1 + 1/1) = 0.02.
    exp = _reference(0.01, 0.01, 0.5, False)
    assert exp[0] == pytest.approx(1 - 0.03 * 0.1, abs=1e-12)
    assert _two_steps(lr=0.01, final_lr=0.01, gamma=0.5) == pytest.approx(exp, abs=1e-13)


def test_first_two_steps_clipped_to_lower_bound():
    # final_lr 10, γ = 0.5: lower bound 10·(1 - 1/1.5) = 3.33 > η̂ ≈ 0.1 at t=1.
    exp = _reference(0.01, 10.0, 0.5, False)
    assert exp[0] == pytest.approx(1 - (10 / 3) * 0.1, abs=1e-12)
    assert _two_steps(lr=0.01, final_lr=10.0, gamma=0.5) == pytest.approx(exp, abs=1e-13)


def test_amsbound_two_steps():
    assert _two_steps(AMSBound, lr=0.01, final_lr=0.01, gamma=0.5) == pytest.approx(
        _reference(0.01, 0.01, 0.5, True), abs=1e-13)


def test_final_lr_follows_lr_schedule():
    """η* = final_lr·lr/base_lr: halving lr after construction halves the bounds."""
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([theta], lr=0.01, final_lr=0.01, gamma=0.5)
    opt.param_groups[0]["lr"] = 0.005  # η* = 0.005, upper bound 0.015 at t=1
    theta.grad = torch.tensor(1.0, dtype=torch.float64)
    opt.step()
    assert theta.item() == pytest.approx(1 - 0.015 * 0.1, abs=1e-12)
    assert opt.state_dict()["param_groups"][0]["base_lr"] == 0.01
