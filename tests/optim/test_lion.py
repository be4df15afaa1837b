import pytest
import torch
from harness import OptimizerSuite, scalar_run

from gatelab.optim.lion import Lion


class TestLion(OptimizerSuite):
    opt_cls = Lion
    name = "lion"
    has_fused = True
    configs = [dict(lr=1e-2), dict(lr=1e-2, betas=(0.95, 0.98), weight_decay=0.5)]
    quadratic = (dict(lr=3e-3), 2000, 1e-3)  # every coordinate moves ±η: floor ~ ½Σa·η²
    rosenbrock = (dict(lr=1e-3), 4000, 2e-3)  # constant-lr Lion hovers at ~lr scale
    invalid = [dict(lr=-1.0), dict(betas=(1.0, 0.99)), dict(betas=(0.9, 1.5)),
               dict(weight_decay=-1.0)]


def test_first_two_steps():
    """f = θ²/2 (g = θ), θ0 = 1, η = 0.1, λ = 0.5, β = (0.9, 0.99)."""
    got, opt, theta = scalar_run(Lion, dict(lr=0.1, weight_decay=0.5))
    # step 1: u = sign(0.9·0 + 0.1·1) = +1; θ1 = 1·(1 - 0.1·0.5) - 0.1 = 0.85; m1 = 0.01
    # step 2: u = sign(0.9·0.01 + 0.1·0.85) = +1; θ2 = 0.85·0.95 - 0.1 = 0.7075
    assert got == pytest.approx([0.85, 0.7075], abs=1e-15)
    # m2 = 0.99·0.01 + 0.01·0.85 = 0.0184
    assert opt.state[theta]["exp_avg"].item() == pytest.approx(0.0184, abs=1e-15)


def test_update_is_sign_of_interpolation_not_of_momentum():
    """m and g disagree: u = sign(β1 m + (1-β1) g) follows m when |β1 m| > |(1-β1) g|."""
    theta = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = Lion([theta], lr=0.1)
    opt.state[theta]["exp_avg"] = torch.tensor(1.0, dtype=torch.float64)
    opt.state[theta]["step"] = torch.tensor(0.0)
    theta.grad = torch.tensor(-5.0, dtype=torch.float64)  # 0.9·1 + 0.1·(-5) = 0.4 > 0
    opt.step()
    assert theta.item() == pytest.approx(-0.1, abs=1e-15)
