import math

import pytest
import torch
from harness import OptimizerSuite, clone_params, make_params, run_steps, scalar_run

from gatelab.optim.amsgrad import AMSGrad


class TestAMSGrad(OptimizerSuite):
    opt_cls = AMSGrad
    name = "amsgrad"
    has_fused = True
    configs = [
        dict(lr=1e-2),
        dict(lr=1e-2, weight_decay=0.1, bias_correction=True),
        dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=False, maximize=True),
    ]
    quadratic = (dict(lr=0.1), 500, 1e-6)
    rosenbrock = (dict(lr=3e-2, bias_correction=True), 2000, 1e-3)
    invalid = [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(eps=-1e-8), dict(weight_decay=-1.0)]


def _steps(grads=None, **kwargs):
    out, opt, theta = scalar_run(AMSGrad, dict(lr=0.1, **kwargs), 2, grads)
    return out, opt.state[theta]


def test_first_two_steps_original_no_bias_correction():
    """f = θ²/2 (g = θ), θ0 = 1: θ_t = θ_{t-1} - η m_t/(√v̂_t + ε), no bias correction."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    m1, v1 = 0.1, 0.001  # (1-β1)·1, (1-β2)·1
    th1 = 1.0 - lr * m1 / (math.sqrt(v1) + eps)  # 1 - 0.01/0.0316228 = 0.68377234
    m2 = b1 * m1 + (1 - b1) * th1
    v2 = b2 * v1 + (1 - b2) * th1**2
    th2 = th1 - lr * m2 / (math.sqrt(max(v1, v2)) + eps)
    assert th1 == pytest.approx(0.68377234, abs=1e-8)
    got, _ = _steps()
    assert got == pytest.approx([th1, th2], abs=1e-12)


def test_max_of_second_moment_is_used():
    """g = 1 then 0.01: v_2 = 0.000999 + 1e-7 < v_1, so v̂_2 = v_1 = 0.001."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    m1, v1 = 0.1, 0.001
    th1 = 1.0 - lr * m1 / (math.sqrt(v1) + eps)
    m2 = b1 * m1 + (1 - b1) * 0.01
    v2 = b2 * v1 + (1 - b2) * 0.01**2
    assert v2 < v1
    th2 = th1 - lr * m2 / (math.sqrt(v1) + eps)
    got, state = _steps([1.0, 0.01])
    assert got == pytest.approx([th1, th2], abs=1e-12)
    assert state["max_exp_avg_sq"].item() == pytest.approx(v1, abs=1e-15)
    assert state["exp_avg_sq"].item() == pytest.approx(v2, abs=1e-15)


def test_bias_corrected_variant_equals_torch_adam_amsgrad():
    p = make_params()
    q = clone_params(p)
    ours = AMSGrad(p, lr=1e-2, bias_correction=True, decoupled_weight_decay=False,
                   weight_decay=0.1)
    ref = torch.optim.Adam(q, lr=1e-2, amsgrad=True, weight_decay=0.1, foreach=False)
    run_steps(ours, p, 10)
    run_steps(ref, q, 10)
    for a, b in zip(p, q):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    for a, b in zip(p, q):
        if a in ours.state:
            torch.testing.assert_close(ours.state[a]["max_exp_avg_sq"],
                                       ref.state[b]["max_exp_avg_sq"], atol=1e-15, rtol=0)
