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
from gatelab.optim.sania import SANIA

# the closures backprop with create_graph=True (Hessian-vector products): torch warns
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Using backward\(\) with create_graph=True:UserWarning")

# The harness loss (quadratic minus noise) goes negative: f_star must bound it from below.
BASE = dict(lr=0.05, f_star=-1e4)
CONFIGS = [
    dict(BASE),
    dict(BASE, preconditioner="adam_sqr", beta2=0.9),
    dict(BASE, preconditioner="identity", max_step=0.5),
    dict(BASE, preconditioner="hutchinson", beta2=0.9, alpha=0.1, eps=1e-3),
]


def test_registered():
    assert get("optimizer", "sania") is SANIA


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(SANIA, kwargs, steps=8, closure=True,
                          create_graph=kwargs.get("preconditioner") == "hutchinson")


@pytest.mark.parametrize("kwargs", CONFIGS[::3])
def test_state_dict_roundtrip(kwargs):
    hutch = kwargs.get("preconditioner") == "hutchinson"
    check_state_dict_roundtrip(SANIA, kwargs, closure=True, create_graph=hutch)


def test_maximize():
    check_maximize(SANIA, dict(lr=0.05, f_star=-1e4), closure=True)


def _run(steps, w0, scales, **kw):
    """f = 0.5 sum scales * w^2 (min 0), returns the iterates."""
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(scales, dtype=torch.float64)
    opt = SANIA([w], **kw)
    create = kw.get("preconditioner") == "hutchinson"

    def closure():
        opt.zero_grad()
        loss = 0.5 * (a * w * w).sum()
        loss.backward(create_graph=create)
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(w.detach().clone().tolist())
    return out


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_adagrad_sqr(foreach):
    # f = 0.5 (x^2 + 4 y^2) from (2, 1).
    # step 1: g = (2, 4), f = 4, B = g^2 = (4, 16), B^-1 g = (0.5, 0.25), <g, B^-1 g> = 2;
    #   Polyak ratio 4 / 2 = 2 -> (x, y) = (2, 1) - 2 (0.5, 0.25) = (1, 0.5)
    # step 2: g = (1, 2), f = 1, B = (5, 20), B^-1 g = (0.2, 0.1), <g, B^-1 g> = 0.4;
    #   ratio 2.5 -> (1, 0.5) - 2.5 (0.2, 0.1) = (0.5, 0.25)
    got = _run(2, [2.0, 1.0], [1.0, 4.0], foreach=foreach)
    assert got == [pytest.approx([1.0, 0.5], abs=1e-15), pytest.approx([0.5, 0.25], abs=1e-15)]


@pytest.mark.parametrize("foreach", [False, True])
def test_scale_invariance(foreach):
    # Rescaling the coordinates (x -> 10 x) leaves the adagrad_sqr iterates (in original units)
    # unchanged: the point of the square-free preconditioner. SPS (identity) is not invariant.
    base = _run(3, [2.0, 1.0], [1.0, 4.0], foreach=foreach)
    scaled = _run(3, [2.0, 10.0], [1.0, 0.04], foreach=foreach)  # y' = 10 y, f unchanged
    for b, s in zip(base, scaled):
        assert s == pytest.approx([b[0], 10 * b[1]], abs=1e-13)
    sps = _run(3, [2.0, 1.0], [1.0, 4.0], preconditioner="identity", foreach=foreach)
    sps_scaled = _run(3, [2.0, 10.0], [1.0, 0.04], preconditioner="identity", foreach=foreach)
    assert sps_scaled[0] != pytest.approx([sps[0][0], 10 * sps[0][1]], abs=1e-6)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_hutchinson_and_sps(foreach):
    # Diagonal Hessian h = (1, 4): z*Hz = h exactly (z^2 = 1); bias-corrected EMA = h, so
    # B^-1 g = w and <g, B^-1 g> = sum h w^2 = 2 f: the ratio is 1/2 and every step halves w.
    got = _run(2, [2.0, 1.0], [1.0, 4.0], preconditioner="hutchinson", beta2=0.5, foreach=foreach)
    assert got == [pytest.approx([1.0, 0.5], abs=1e-15), pytest.approx([0.5, 0.25], abs=1e-15)]
    # SPS on f = 0.5 x^2: ratio 0.5 x^2 / x^2 = 0.5: x -> x - 0.5 x
    sps = _run(2, [2.0], [1.0], preconditioner="identity", foreach=foreach)
    assert sps == [pytest.approx([1.0], abs=1e-15), pytest.approx([0.5], abs=1e-15)]


def test_needs_loss_and_graph():
    w = torch.ones(3, requires_grad=True)
    opt = SANIA([w])
    (w * w).sum().backward()
    with pytest.raises(RuntimeError, match="needs the loss"):
        opt.step()
    opt.step(loss=(w * w).sum())  # the loss= form works without a closure
    h = SANIA([w], preconditioner="hutchinson")

    def closure():
        h.zero_grad()
        loss = (w * w).sum()
        loss.backward()  # no create_graph
        return loss

    with pytest.raises(RuntimeError, match="create_graph=True"):
        h.step(closure)


@pytest.mark.parametrize("pre", ["adagrad_sqr", "adam_sqr", "identity"])
def test_converges_quadratic(pre):
    check_converges(SANIA, dict(preconditioner=pre), "quadratic", steps=300, tol=1e-8)


def test_converges_quadratic_hutchinson():
    check_converges(SANIA, dict(preconditioner="hutchinson"), "quadratic", steps=100, tol=1e-10,
                    autograd=True)


def test_converges_rosenbrock():
    check_converges(SANIA, dict(preconditioner="adam_sqr", beta2=0.99), "rosenbrock", steps=3000,
                    tol=1e-3)


def test_invalid():
    check_invalid(SANIA, [dict(lr=-1.0), dict(preconditioner="newton"), dict(beta2=1.0),
                          dict(preconditioner="hutchinson", alpha=0.0), dict(eps=-1.0),
                          dict(max_step=0.0), dict(f_star=float("nan"))])


NEWTON = dict(BASE, preconditioner="newton_cg", cg_iters=5)


@pytest.mark.parametrize("kwargs", [NEWTON, dict(NEWTON, cg_iters=2, cg_tol=1e-3)])
def test_newton_cg_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(SANIA, kwargs, steps=8, closure=True, create_graph=True)


def test_newton_cg_state_dict_roundtrip_and_maximize():
    check_state_dict_roundtrip(SANIA, NEWTON, closure=True, create_graph=True)
    check_maximize(SANIA, NEWTON, closure=True, create_graph=True)


def _run_matrix(steps, w0, A, **kw):
    """f = 0.5 w^T A w (non-diagonal A), returns the iterates."""
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    A = torch.tensor(A, dtype=torch.float64)
    opt = SANIA([w], preconditioner="newton_cg", **kw)

    def closure():
        opt.zero_grad()
        loss = 0.5 * w @ A @ w
        loss.backward(create_graph=True)
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(w.detach().clone())
    return out


@pytest.mark.parametrize("foreach", [False, True])
def test_newton_cg_halves_any_quadratic(foreach):
    # f = 0.5 w^T A w, f* = 0: H^-1 g = w and <g, H^-1 g> = w^T A w = 2 f, so the Polyak ratio
    # is 1/2 and every step halves w whatever A (affine invariance); 2 CG steps are exact in 2-d.
    for A in ([[2.0, 0.9], [0.9, 1.0]], [[100.0, -3.0], [-3.0, 0.2]]):
        got = _run_matrix(3, [1.0, -2.0], A, cg_iters=2, foreach=foreach)
        for t, w in enumerate(got, start=1):
            torch.testing.assert_close(w, torch.tensor([1.0, -2.0], dtype=torch.float64) / 2**t,
                                       rtol=0, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_newton_cg_negative_curvature_falls_back_to_sps(foreach):
    # A indefinite and g^T A g < 0 at w0 = (0, 1): the first CG direction has negative
    # curvature, so d = g and the step is SPS's: w - (f - f*) / ||g||^2 g with f* = -10.
    A = [[1.0, 0.0], [0.0, -1.0]]
    w0 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    g = torch.tensor(A, dtype=torch.float64) @ w0
    f = -0.5
    expected = w0 - (f + 10.0) / (g @ g) * g
    got = _run_matrix(1, w0.tolist(), A, f_star=-10.0, foreach=foreach)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-14)


def test_newton_cg_needs_graph_and_converges():
    w = torch.ones(3, requires_grad=True)
    opt = SANIA([w], preconditioner="newton_cg")

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()  # no create_graph
        return loss

    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step(closure)
    check_converges(SANIA, dict(preconditioner="newton_cg"), "quadratic", steps=60, tol=1e-12,
                    autograd=True)
    check_converges(SANIA, dict(preconditioner="newton_cg", max_step=1.0), "rosenbrock",
                    steps=300, tol=1e-3, autograd=True)


def test_newton_cg_invalid():
    check_invalid(SANIA, [dict(preconditioner="newton_cg", cg_iters=0),
                          dict(preconditioner="newton_cg", cg_iters=1.5),
                          dict(preconditioner="newton_cg", cg_tol=-1.0)])
