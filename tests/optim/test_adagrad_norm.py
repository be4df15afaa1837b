import math

import pytest
import torch
from harness import (
    check_converges,
    check_invalid,
    check_loop_vs_foreach,
    check_maximize,
    check_state_dict_roundtrip,
)

from gatelab.core.registry import get
from gatelab.optim.adagrad_norm import AdaGradNorm

CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, include_current=False, b0=2.0, weight_decay=0.05),
    dict(lr=0.1, scope="group"),
    dict(lr=0.1, scope="group", include_current=False, b0=3.0),
]


def test_registered():
    assert get("optimizer", "adagrad_norm") is AdaGradNorm


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(AdaGradNorm, kwargs, steps=8)


@pytest.mark.parametrize("kwargs", CONFIGS[::2])
def test_state_dict_roundtrip(kwargs):
    check_state_dict_roundtrip(AdaGradNorm, kwargs)


def test_maximize():
    check_maximize(AdaGradNorm, dict(lr=0.1, scope="group"))


def _run(x0s, steps, **kw):
    xs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in x0s]
    opt = AdaGradNorm(xs, **kw)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        sum(0.5 * x * x for x in xs).backward()  # f = 0.5 sum x^2, g = x
        opt.step()
        out.append([x.item() for x in xs])
    return out


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_paper_form(foreach):
    # x0 = 2, lr = 0.5, b0 = 1; g_t = x_t.
    # step 1: b^2 = 1 + 2^2 = 5;            x1 = 2 - 0.5*2/sqrt(5)  = 1.5527864045...
    # step 2: b^2 = 5 + x1^2 = 7.41114...;  x2 = x1 - 0.5*x1/sqrt(7.41114...)
    x1 = 2 - 0.5 * 2 / math.sqrt(5)
    x2 = x1 - 0.5 * x1 / math.sqrt(5 + x1**2)
    got = _run([2.0], 2, lr=0.5, b0=1.0, foreach=foreach)
    assert got[0][0] == pytest.approx(x1, abs=1e-14)
    assert got[1][0] == pytest.approx(x2, abs=1e-14)
    assert x1 == pytest.approx(1.5527864045, abs=1e-10)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_without_current_gradient(foreach):
    # include_current=False: step 1 uses b0 only: x1 = 2 - 0.5*2/1 = 1, then b^2 = 1 + 4 = 5;
    # step 2: x2 = 1 - 0.5*1/sqrt(5), then b^2 = 5 + 1 = 6.
    got = _run([2.0], 2, lr=0.5, b0=1.0, include_current=False, foreach=foreach)
    assert got[0][0] == pytest.approx(1.0, abs=1e-15)
    assert got[1][0] == pytest.approx(1 - 0.5 / math.sqrt(5), abs=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_group_scope(foreach):
    # Two scalars (2, 1) share one b: ||g||^2 = 4 + 1 = 5, b^2 = 1 + 5 = 6.
    # x1 = 2 - 0.5*2/sqrt(6), y1 = 1 - 0.5*1/sqrt(6); step 2: b^2 = 6 + x1^2 + y1^2.
    x1, y1 = 2 - 1 / math.sqrt(6), 1 - 0.5 / math.sqrt(6)
    b2 = 6 + x1**2 + y1**2
    x2, y2 = x1 - 0.5 * x1 / math.sqrt(b2), y1 - 0.5 * y1 / math.sqrt(b2)
    got = _run([2.0, 1.0], 2, lr=0.5, b0=1.0, scope="group", foreach=foreach)
    assert got[0] == pytest.approx([x1, y1], abs=1e-14)
    assert got[1] == pytest.approx([x2, y2], abs=1e-14)
    # tensor scope gives a different trajectory (each scalar its own b), so scope matters
    per_tensor = _run([2.0, 1.0], 1, lr=0.5, b0=1.0, foreach=foreach)
    assert per_tensor[0][1] == pytest.approx(1 - 0.5 / math.sqrt(2), abs=1e-14)


def test_converges_quadratic():
    check_converges(AdaGradNorm, dict(lr=5.0), "quadratic", steps=300, tol=1e-6)


def test_converges_rosenbrock():
    # AdaGrad-Norm's step decays like 1/sqrt(t): slow in the valley, hence the loose tolerance.
    check_converges(AdaGradNorm, dict(lr=1.0), "rosenbrock", steps=5000, tol=5e-3)


def test_invalid():
    check_invalid(AdaGradNorm, [
        dict(lr=-1.0), dict(b0=-0.1), dict(b0=0.0, include_current=False),
        dict(scope="layer"), dict(weight_decay=-1.0),
    ])


@pytest.mark.parametrize("foreach", [False, True])
def test_group_scope_first_param_joins_late(foreach):
    # The group accumulator lives in the first param's state; that param may get its first
    # gradient after the others. a = 2 (no grad at step 1), c = 1; g = x; lr 0.5, b0 = 1.
    # step 1: b^2 = 1 + 1 = 2, c1 = 1 - 0.5/sqrt(2); step 2: b^2 = 2 + 4 + c1^2,
    #   a2 = 2 - 0.5*2/sqrt(b^2), c2 = c1 - 0.5*c1/sqrt(b^2)
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = AdaGradNorm([a, c], lr=0.5, b0=1.0, scope="group", foreach=foreach)
    c.grad = c.detach().clone()
    opt.step()
    c1 = 1 - 0.5 / math.sqrt(2)
    assert c.item() == pytest.approx(c1, abs=1e-15) and a.item() == 2.0
    a.grad, c.grad = a.detach().clone(), c.detach().clone()
    opt.step()
    b2 = 2 + 4 + c1**2
    assert a.item() == pytest.approx(2 - 1 / math.sqrt(b2), abs=1e-14)
    assert c.item() == pytest.approx(c1 - 0.5 * c1 / math.sqrt(b2), abs=1e-14)
