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
from gatelab.optim.adaptive_braking import AdaptiveBrakingSGD

CONFIGS = [dict(lr=0.05), dict(lr=0.05, rho=2.0, nesterov=True, weight_decay=0.1),
           dict(lr=0.05, rho=0.5, momentum=0.5)]


def test_registered():
    assert get("optimizer", "adaptive_braking") is AdaptiveBrakingSGD


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(AdaptiveBrakingSGD, kwargs, steps=8)


def test_state_dict_roundtrip():
    check_state_dict_roundtrip(AdaptiveBrakingSGD, dict(lr=0.05))


def test_maximize():
    check_maximize(AdaptiveBrakingSGD, dict(lr=0.05))


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed(foreach):
    # f = 0.5 (x^2 + 10 y^2) from (1, 1); lr = 0.1, mu = 0.9, rho = 1 (set explicitly).
    # step 1: v = 0 -> cos = 0, g~ = g = (1, 10), v = (1, 10), w1 = (1, 1) - 0.1 (1, 10) = (0.9, 0)
    # step 2: g = (0.9, 0); cos(g, v) = 0.9 / (0.9 sqrt(101)) = 1/sqrt(101);
    #   g~ = g (1 - 1/sqrt(101)); v = 0.9 (1, 10) + g~; w2 = w1 - 0.1 v
    c = 1 / math.sqrt(101)
    gt = 0.9 * (1 - c)
    v2 = (0.9 + gt, 9.0)
    w2 = (0.9 - 0.1 * v2[0], 0.0 - 0.1 * v2[1])
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([1.0, 10.0], dtype=torch.float64)
    opt = AdaptiveBrakingSGD([w], lr=0.1, momentum=0.9, rho=1.0, foreach=foreach)
    got = []
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (a * w * w).sum()).backward()
        opt.step()
        got.append(w.detach().tolist())
    assert got[0] == pytest.approx([0.9, 0.0], abs=1e-15)
    assert got[1] == pytest.approx(list(w2), abs=1e-14)


def test_rho_zero_is_sgd_momentum():
    torch.manual_seed(0)
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    oa = AdaptiveBrakingSGD([a], lr=0.05, rho=0.0, nesterov=True, weight_decay=0.01)
    ob = torch.optim.SGD([b], lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    for t in range(5):
        for p, o in ((a, oa), (b, ob)):
            o.zero_grad()
            ((p - t) ** 2).sum().backward()
            o.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_braking_stabilises_delayed_gradients():
    # 20-d quadratic (curvatures 0.1..4), gradients delayed by 8 steps, lr 0.01, mu 0.9:
    # momentum SGD diverges; AB with rho = 2 keeps the loss well below its start (10.5).
    a = torch.linspace(0.1, 4.0, 20, dtype=torch.float64)

    def run(rho, delay=8):
        x = torch.ones(20, dtype=torch.float64, requires_grad=True)
        opt = AdaptiveBrakingSGD([x], lr=0.01, momentum=0.9, rho=rho)
        hist = [x.detach().clone()] * delay
        for _ in range(500):
            hist.append(x.detach().clone())
            x.grad = a * hist.pop(0)  # gradient at the iterate of `delay` steps ago
            opt.step()
        return (0.5 * a * x.detach() ** 2).sum().item()

    assert run(0.0) > 1e6
    assert run(2.0) < 0.1
    assert run(1.0) > 10.0  # rho = 1 stalls: parallel gradients add nothing (see the docstring)


def test_converges_quadratic():
    check_converges(AdaptiveBrakingSGD, dict(lr=0.05), "quadratic", steps=500, tol=1e-6)


def test_converges_rosenbrock():
    check_converges(AdaptiveBrakingSGD, dict(lr=1e-3), "rosenbrock", steps=3000, tol=1e-3)


def test_invalid():
    check_invalid(AdaptiveBrakingSGD, [dict(lr=-1.0), dict(momentum=1.0), dict(rho=-0.1),
                                       dict(nesterov=True, momentum=0.0), dict(weight_decay=-1.0)])
