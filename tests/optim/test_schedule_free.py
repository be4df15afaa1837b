import math

import pytest
import torch
from harness import OptimizerSuite

from gatelab.optim.schedule_free import ScheduleFreeAdamW


class TestScheduleFreeAdamW(OptimizerSuite):
    opt_cls = ScheduleFreeAdamW
    name = "schedule_free_adamw"
    configs = [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1, warmup_steps=3, r=0.5)]
    quadratic = (dict(lr=0.1), 500, 1e-4)
    rosenbrock = (dict(lr=0.03), 4000, 1e-3)
    invalid = [dict(lr=-1.0), dict(betas=(0.0, 0.999)), dict(betas=(0.9, 1.0)),
               dict(warmup_steps=-1), dict(weight_lr_power=-1.0)]


def test_first_two_steps_and_eval_point():
    """f = θ²/2, θ0 = y = z = x = 1, lr 0.1: Algorithm 1 of "The Road Less Scheduled"."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = ScheduleFreeAdamW([theta], lr=lr)
    y = z = x = 1.0
    v, wsum = 0.0, 0.0
    for t in (1, 2):
        theta.grad = theta.detach().clone()
        opt.step()
        g = y
        v = b2 * v + (1 - b2) * g * g
        gamma = lr * math.sqrt(1 - b2**t)
        wsum += gamma**2
        c = gamma**2 / wsum  # γ_t increasing, so max_i γ_i = γ_t
        z = z - gamma * g / (math.sqrt(v) + eps)
        x = (1 - c) * x + c * z
        y = (1 - b1) * z + b1 * x
        assert theta.item() == pytest.approx(y, abs=1e-13)
    # step 1: c = 1 so x1 = z1 = y1 = 1 - γ1·g/√v ≈ 1 - 0.1
    opt.eval()
    assert theta.item() == pytest.approx(x, abs=1e-13)
    assert opt.param_groups[0]["train_mode"] is False
    with pytest.raises(RuntimeError, match="eval mode"):
        theta.grad = torch.ones_like(theta)
        opt.step()
    opt.train()
    assert theta.item() == pytest.approx(y, abs=1e-13)


def test_eval_mode_survives_state_dict():
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = ScheduleFreeAdamW([p], lr=0.01)
    for _ in range(3):
        p.grad = p.detach().clone()
        opt.step()
    opt.eval()
    saved = opt.state_dict()
    q = p.detach().clone().requires_grad_()
    opt2 = ScheduleFreeAdamW([q], lr=0.01)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["train_mode"] is False
    opt.train()
    opt2.train()
    torch.testing.assert_close(p, q, atol=0, rtol=0)
