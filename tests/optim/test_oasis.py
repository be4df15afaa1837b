import math

import pytest
import torch
from harness import (
    check_converges,
    check_invalid,
    check_loop_vs_foreach,
    check_state_dict_roundtrip,
    make_params,
    run_steps,
)

from gatelab.core.registry import get
from gatelab.optim.oasis import OASIS

# the closures backprop with create_graph=True (Hessian-vector products): torch warns
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Using backward\(\) with create_graph=True:UserWarning")

CONFIGS = [dict(lr=0.5), dict(lr=0.3, beta2=0.9, alpha=1.0), dict(lr=0.2, adaptive_lr=False)]


def test_registered():
    assert get("optimizer", "oasis") is OASIS


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(OASIS, kwargs, steps=8, closure=True, create_graph=True)


def test_state_dict_roundtrip():
    check_state_dict_roundtrip(OASIS, dict(lr=0.5), closure=True, create_graph=True)


def test_maximize():
    # maximize on -f equals minimize on f (g and Hz both change sign)
    pa, pb = make_params(), make_params()
    oa = OASIS(pa, lr=0.5)
    ob = OASIS(pb, lr=0.5, maximize=True)
    run_steps(oa, pa, 7, closure=True, create_graph=True)
    run_steps(ob, pb, 7, closure=True, create_graph=True, sign=-1.0)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def _run(fn, w0, steps, **kw):
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = OASIS([w], **kw)

    def closure():
        opt.zero_grad()
        loss = fn(w)
        loss.backward(create_graph=True)
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(w.detach().clone().tolist())
    return out, opt


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_quartic(foreach):
    # f = w^4 / 4 (scalar): g = w^3, H = 3 w^2 and z*Hz = H exactly. lr = 0.5, beta2 = 0.5.
    # step 0: D0 = 3, w1 = 1 - 0.5 * 1/3 = 5/6
    # step 1: v = 3 (5/6)^2 = 75/36, D1 = 0.5*3 + 0.5*75/36, dw = -1/6, dg = (5/6)^3 - 1;
    #   eta1 = min(sqrt(1 + inf) * 0.5, |dw| sqrt(D1) / (2 |dg| / sqrt(D1))) = |dw| D1 / (2 |dg|)
    #   w2 = w1 - eta1 * w1^3 / D1
    w1 = 1 - 0.5 / 3
    d1 = 0.5 * 3 + 0.5 * 3 * w1**2
    eta1 = (1 / 6) * d1 / (2 * abs(w1**3 - 1))
    w2 = w1 - eta1 * w1**3 / d1
    got, opt = _run(lambda w: (w**4).sum() / 4, [1.0], 2, lr=0.5, beta2=0.5, foreach=foreach)
    assert got[0][0] == pytest.approx(w1, abs=1e-15)
    assert got[1][0] == pytest.approx(w2, abs=1e-14)
    anchor = opt.state[opt.param_groups[0]["params"][0]]
    assert anchor["eta"].item() == pytest.approx(eta1, abs=1e-14)
    assert anchor["theta"].item() == pytest.approx(eta1 / 0.5, abs=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_quadratic_halves_and_truncation(foreach):
    # On f = 0.5 sum h w^2 the Lipschitz estimate is exactly 1/2: each step halves w (lr = 0.5
    # makes the first step do the same). With h = 1e-8 < alpha = 1e-3, D^ = alpha: that
    # coordinate moves by eta * h w / alpha instead of a Newton step.
    h = torch.tensor([1.0, 4.0, 1e-8], dtype=torch.float64)
    got, _ = _run(lambda w: 0.5 * (h * w * w).sum(), [2.0, 1.0, 1.0], 3, lr=0.5, alpha=1e-3,
                  foreach=foreach)
    assert got[2][:2] == pytest.approx([0.25, 0.125], abs=1e-14)
    assert got[0][2] == pytest.approx(1 - 0.5 * 1e-8 / 1e-3, abs=1e-15)


def test_needs_create_graph_closure():
    w = torch.ones(2, requires_grad=True)
    opt = OASIS([w])
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()

    def closure():
        opt.zero_grad()
        loss = (w**4).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step(closure)


def test_converges_quadratic():
    check_converges(OASIS, dict(), "quadratic", steps=60, tol=1e-12, autograd=True)


def test_converges_rosenbrock():
    check_converges(OASIS, dict(lr=0.1, alpha=1e-2), "rosenbrock", steps=2000, tol=1e-4,
                    autograd=True)


def test_invalid():
    check_invalid(OASIS, [dict(lr=-1.0), dict(beta2=1.0), dict(beta2=-0.5), dict(alpha=0.0),
                          dict(alpha=math.inf)])


@pytest.mark.parametrize("foreach", [False, True])
def test_first_param_joins_late(foreach):
    # eta/theta live in the first param's state; that param may get its first gradient later.
    a = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = OASIS([a, b], lr=0.5, foreach=foreach)
    for use_a in (False, True, True):
        def closure():
            opt.zero_grad()
            loss = (b**2).sum() + ((a**2).sum() if use_a else 0.0)
            loss.backward(create_graph=True)
            return loss
        opt.step(closure)
    # b: Newton-like halving with eta = 1/2 on a quadratic; a joined at step 2 (D0 = 2)
    assert b.item() == pytest.approx(0.125, abs=1e-14)
    assert "hess_diag" in opt.state[a] and a.item() < 1.0
