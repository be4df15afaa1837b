import math

import pytest
import torch
from harness import OptimizerSuite, scalar_run

from gatelab.optim.dadapt_adam import DAdaptAdam


class TestDAdaptAdam(OptimizerSuite):
    opt_cls = DAdaptAdam
    name = "dadapt_adam"
    configs = [dict(), dict(weight_decay=0.1, decouple=True, use_bias_correction=True,
                            growth_rate=1.5)]
    quadratic = (dict(), 500, 1e-8)
    rosenbrock = (dict(), 3000, 1e-3)
    invalid = [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=-1.0), dict(d0=0.0),
               dict(growth_rate=0.5), dict(weight_decay=-1.0)]


def test_first_two_steps():
    """1 coordinate, f = θ²/2 (g = θ), θ0 = 1, lr 1, d0 1e-6 (official rule, no bias corr.)."""
    b1, b2, eps, d = 0.9, 0.999, 1e-8, 1e-6
    sb2 = math.sqrt(b2)
    got = []
    for steps in (1, 2):
        xs, opt, _ = scalar_run(DAdaptAdam, {}, steps, shape=(1,))
        got.append((xs[-1], opt.param_groups[0]["d"].item()))
    th, m, v, s, r = 1.0, 0.0, 0.0, 0.0, 0.0
    expected = []
    for _ in range(2):
        g, dlr = th, d * 1.0
        num = dlr * g * s / (math.sqrt(v) + eps)  # uses s, v before this step's update
        m = b1 * m + (1 - b1) * dlr * g
        v = b2 * v + (1 - b2) * g * g
        s = sb2 * s + (1 - sb2) * dlr * g
        r = sb2 * r + (1 - sb2) * num
        d_hat = r / ((1 - sb2) * abs(s))
        th = th - m / (math.sqrt(v) + eps)  # dlr (old d) is already inside m
        d = max(d, d_hat)
        expected.append((th, d))
    # step 1: r = 0 so d stays 1e-6 and θ1 = 1 - 1e-7/√0.001 ≈ 1 - 3.16e-6
    assert expected[0][0] == pytest.approx(1 - 1e-7 / math.sqrt(1e-3), rel=1e-7)
    assert expected[0][1] == 1e-6
    assert expected[1][1] > 1e-6  # d grows at step 2
    for (gt, gd), (et, ed) in zip(got, expected):
        assert gt == pytest.approx(et, abs=1e-14)
        assert gd == pytest.approx(ed, rel=1e-12)


def test_d_is_a_device_tensor_shared_by_groups_and_grows():
    a = torch.randn(10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = DAdaptAdam([{"params": [a]}, {"params": [b]}])
    d_prev = opt.param_groups[0]["d"].item()
    for _ in range(30):
        opt.zero_grad()
        (a.square().sum() + b.square().sum()).backward()
        opt.step()
    d = opt.param_groups[0]["d"]
    assert isinstance(d, torch.Tensor) and d.dim() == 0 and d.device == a.device
    assert opt.param_groups[1]["d"] is d
    assert d.item() > 100 * d_prev  # from 1e-6 towards the distance to the solution (~1)


def test_zero_lr_group_is_frozen():
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    b = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = DAdaptAdam([{"params": [a]}, {"params": [b], "lr": 0.0}])
    for _ in range(3):
        a.grad, b.grad = a.detach().clone(), b.detach().clone()
        opt.step()
    assert torch.equal(b.detach(), torch.ones(3, dtype=torch.float64))
    assert not torch.equal(a.detach(), torch.ones(3, dtype=torch.float64))
