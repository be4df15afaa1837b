import math

import pytest
import torch
from harness import OptimizerSuite, scalar_run

from gatelab.optim.optimistic_amsgrad import OptimisticAMSGrad, extrapolation_coefficients


class TestOptimisticAMSGrad(OptimizerSuite):
    opt_cls = OptimisticAMSGrad
    name = "optimistic_amsgrad"
    configs = [dict(lr=1e-2), dict(lr=1e-2, r=3, reg=1e-2), dict(lr=1e-2, predictor="last")]
    quadratic = (dict(lr=0.1), 500, 1e-8)
    # The extrapolated point oscillates across Rosenbrock's valley: slower than AMSGrad.
    rosenbrock = (dict(lr=0.1), 4000, 5e-2)
    invalid = [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=-1.0), dict(r=1),
               dict(reg=-1.0), dict(predictor="nope")]


def test_first_two_steps_last_gradient_predictor():
    """f = θ²/2, θ0 = 1, η = 0.1, h_{t+1} = g_t:
    w_{t+1/2} = w_{t-1/2} - η m_t/(√v̂_t+ε);  w_{t+1} = w_{t+1/2} - η β1 h_{t+1}/(√v̂_t+ε)."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    got, opt, theta = scalar_run(OptimisticAMSGrad, dict(lr=lr, predictor="last"))
    w, half, m, v, vmax, exp = 1.0, 1.0, 0.0, 0.0, 0.0, []
    for _ in range(2):
        g = w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = max(vmax, v)
        denom = math.sqrt(vmax) + eps
        half = half - lr * m / denom
        w = half - lr * b1 * g / denom
        exp.append(w)
    # step 1: half = 1 - 0.1·0.1/0.0316 = 0.6838; w1 = half - 0.1·0.9·1/0.0316 = -2.162
    assert exp[0] == pytest.approx(1 - 0.01 / math.sqrt(1e-3) - 0.09 / math.sqrt(1e-3), abs=1e-6)
    assert got == pytest.approx(exp, abs=1e-12)
    assert opt.state[theta]["half"].item() == pytest.approx(half, abs=1e-12)


def test_rmpe_recovers_limit_of_linear_iteration():
    """x_{i+1} = x* + M(x_i - x*) with M = diag(0.5, -0.3): the minimal polynomial has degree
    2, so 4 points (3 differences) give Σ c_i x_i = x* exactly (up to the tiny reg)."""
    x_star = torch.tensor([1.0, -2.0], dtype=torch.float64)
    M = torch.tensor([0.5, -0.3], dtype=torch.float64)
    xs = [torch.tensor([4.0, 3.0], dtype=torch.float64)]
    for _ in range(3):
        xs.append(x_star + M * (xs[-1] - x_star))
    history = torch.stack(xs)
    c = extrapolation_coefficients(history, reg=1e-12)
    assert c.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(c @ history[:-1], x_star, atol=1e-6, rtol=0)


def test_rmpe_prediction_used_after_r_gradients():
    """With r = 3, step 3 predicts from g1..g3 via RMPE; constant gradients predict g."""
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = OptimisticAMSGrad([theta], lr=0.1, r=3)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    ref = theta.detach().clone().requires_grad_()
    opt_ref = OptimisticAMSGrad([ref], lr=0.1, r=3, predictor="last")
    for _ in range(5):
        theta.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    torch.testing.assert_close(theta.detach(), ref.detach(), atol=1e-12, rtol=0)
