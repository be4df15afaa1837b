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
from gatelab.optim.lars import LARS, TVLARS, tvlars_phi

CONFIGS = [
    (LARS, dict(lr=0.5)),
    (LARS, dict(lr=0.5, weight_decay=0.01, exclude_1d=True, trust_coefficient=0.02)),
    (TVLARS, dict(lr=0.5, lmbda=0.3, delay=3)),
    (TVLARS, dict(lr=0.5, weight_decay=0.01, alpha=2.0)),
]


def test_registered():
    assert get("optimizer", "lars") is LARS
    assert get("optimizer", "tvlars") is TVLARS


@pytest.mark.parametrize("cls,kwargs", CONFIGS)
def test_loop_vs_foreach(cls, kwargs):
    check_loop_vs_foreach(cls, kwargs, steps=8)


@pytest.mark.parametrize("cls,kwargs", CONFIGS[1::2])
def test_state_dict_roundtrip(cls, kwargs):
    check_state_dict_roundtrip(cls, kwargs)


@pytest.mark.parametrize("cls", [LARS, TVLARS])
def test_maximize(cls):
    check_maximize(cls, dict(lr=0.5, weight_decay=0.01))


def _run(cls, w0, steps, **kw):
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = cls([w], **kw)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (w * w).sum()).backward()  # g = w
        opt.step()
        out.append(w.detach().tolist())
    return out


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_lars(foreach):
    # w0 = (3, 4) (||w|| = 5), g = w, lr = 1, eta = 0.1, beta = 0.1, mu = 0.9.
    # step 1: lambda = 0.1 * 5 / (5 + 0.5) = 1/11; v = (1/11) (g + 0.1 w) = (1/11) 1.1 w = 0.1 w
    #   w1 = 0.9 w0 = (2.7, 3.6)
    # step 2: ||w1|| = 4.5, lambda = 0.1 * 4.5 / (4.5 + 0.45) = 1/11; v = 0.9 * 0.1 w0 + 0.1 w1
    #   w2 = w1 - v = (2.7, 3.6) - (0.27 + 0.27, 0.36 + 0.36) = (2.16, 2.88)
    got = _run(LARS, [3.0, 4.0], 2, lr=1.0, trust_coefficient=0.1, weight_decay=0.1,
               foreach=foreach)
    assert got[0] == pytest.approx([2.7, 3.6], abs=1e-14)
    assert got[1] == pytest.approx([2.16, 2.88], abs=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_tvlars(foreach):
    # alpha = 1, lmbda = 0.5, delay = 2, gamma_min = 0.01; beta = 0, lr = 1, mu = 0.5, g = w:
    # phi(0) = 1/(1 + e^-1) + 0.01, phi(1) = 1/(1 + e^-0.5) + 0.01; lambda = phi ||w|| / ||g|| = phi
    # step 1: v = phi0 w0, w1 = (1 - phi0) w0; step 2: v = 0.5 phi0 w0 + phi1 w1, w2 = w1 - v
    phi0 = 1 / (1 + math.exp(-1)) + 0.01
    phi1 = 1 / (1 + math.exp(-0.5)) + 0.01
    assert tvlars_phi(0, 1.0, 0.5, 2, 0.01) == pytest.approx(phi0, abs=1e-15)
    w1 = (1 - phi0) * 2.0
    w2 = w1 - (0.5 * phi0 * 2.0 + phi1 * w1)
    got = _run(TVLARS, [2.0], 2, lr=1.0, momentum=0.5, trust_coefficient=0.01, alpha=1.0,
               lmbda=0.5, delay=2, foreach=foreach)
    assert got[0][0] == pytest.approx(w1, abs=1e-14)
    assert got[1][0] == pytest.approx(w2, abs=1e-14)


def test_tvlars_schedule_shape():
    # starts near 1/alpha + gamma_min after a long delay, ends at gamma_min (= LARS's eta)
    assert tvlars_phi(0, 1.0, 1e-2, 1000, 1e-3) == pytest.approx(1.0 + 1e-3, abs=1e-4)
    assert tvlars_phi(1000, 1.0, 1e-2, 1000, 1e-3) == pytest.approx(0.5 + 1e-3, abs=1e-12)
    assert tvlars_phi(1e6, 1.0, 1e-2, 1000, 1e-3) == pytest.approx(1e-3, abs=1e-12)
    # late in training TVLARS takes LARS's steps
    a = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = TVLARS([a], lr=1.0, lmbda=1.0, delay=0)
    opt.state[a]["step"] = torch.tensor(1e4)
    opt.state[a]["momentum_buffer"] = torch.zeros(2, dtype=torch.float64)
    b = a.detach().clone().requires_grad_()
    ref = LARS([b], lr=1.0)
    for p, o in ((a, opt), (b, ref)):
        o.zero_grad()
        (p * p).sum().backward()
        o.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_zero_norm_ratio_is_one():
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = LARS([w], lr=0.1)
    w.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert w.tolist() == pytest.approx([-0.1] * 3)


# Constant-lr LARS takes steps proportional to ||w||, so it stalls at a noise floor (~3e-6
# here); TVLARS must first decay its exploratory phase (lmbda sets how fast).
@pytest.mark.parametrize("cls,kwargs", [(LARS, dict(lr=1.0)), (TVLARS, dict(lr=1.0, lmbda=0.02))])
def test_converges_quadratic(cls, kwargs):
    check_converges(cls, kwargs, "quadratic", steps=500, tol=1e-5)


def test_converges_rosenbrock():
    check_converges(LARS, dict(lr=3.0), "rosenbrock", steps=4000, tol=2e-3)


def test_invalid():
    for cls in (LARS, TVLARS):
        check_invalid(cls, [dict(lr=-1.0), dict(momentum=1.0), dict(trust_coefficient=-1e-3),
                            dict(weight_decay=-0.1)])
    check_invalid(TVLARS, [dict(alpha=0.0), dict(lmbda=-1.0), dict(delay=-1)])
