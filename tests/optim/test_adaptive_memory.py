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
from gatelab.optim.adaptive_memory import AdaptiveMemoryAdamW, AdaptiveMemorySGD

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, beta_scope="tensor", lam=0.0, weight_decay=0.1),
    dict(lr=0.3, lam=0.2, beta_max=0.95),
]
ADAMW_CONFIGS = [
    dict(lr=0.05),
    dict(lr=0.05, beta_scope="global", lam=0.0, weight_decay=0.0),
    dict(lr=0.05, lam=0.3, weight_decay=0.1, betas=(0.8, 0.99)),
]


def test_registered():
    assert get("optimizer", "am_sgd") is AdaptiveMemorySGD
    assert get("optimizer", "am_adamw") is AdaptiveMemoryAdamW


@pytest.mark.parametrize("kwargs", SGD_CONFIGS)
def test_loop_vs_foreach_sgd(kwargs):
    check_loop_vs_foreach(AdaptiveMemorySGD, kwargs, steps=8)


@pytest.mark.parametrize("kwargs", ADAMW_CONFIGS)
def test_loop_vs_foreach_adamw(kwargs):
    check_loop_vs_foreach(AdaptiveMemoryAdamW, kwargs, steps=8)


@pytest.mark.parametrize("cls", [AdaptiveMemorySGD, AdaptiveMemoryAdamW])
def test_loop_vs_foreach_loss_gap(cls):
    check_loop_vs_foreach(cls, dict(lr=0.05, loss_gap="loss", beta_scope="global"), steps=8,
                          closure=True)


@pytest.mark.parametrize("cls,kwargs", [
    (AdaptiveMemorySGD, dict(lr=0.1)),
    (AdaptiveMemoryAdamW, dict(lr=0.05)),
    (AdaptiveMemorySGD, dict(lr=0.1, loss_gap="loss")),
])
def test_state_dict_roundtrip(cls, kwargs):
    check_state_dict_roundtrip(cls, kwargs, closure=kwargs.get("loss_gap") == "loss")


@pytest.mark.parametrize("cls", [AdaptiveMemorySGD, AdaptiveMemoryAdamW])
def test_maximize(cls):
    check_maximize(cls, dict(lr=0.05))


def _beta(opt):
    return opt.state[opt.param_groups[0]["params"][0]]["beta"].item()


def _trajectory(cls, x0, steps, loss_kw=False, **kw):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = cls([x], **kw)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * x * x  # g = x
        loss.backward()
        opt.step(loss=loss) if loss_kw else opt.step()
        out.append(x.item())
    return out, opt


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_sgd_taylor(foreach):
    # f = x^2/2, x0 = 2, lr = 1.5, lam = 0: SGD alone overshoots to -1 and oscillates.
    # step 1: d = g = 2, x1 = 2 - 1.5*2 = -1.
    # step 2: g = -1, d = 2, Taylor gap delta = lr <g, d> = 1.5*(-2) = -3;
    #   beta = (delta/lr - <d - g, g>) / ||d - g||^2 = (-2 - 3*(-1)) / 9 = 1/9
    #   d' = (1/9)*2 + (8/9)*(-1) = -2/3;  x2 = -1 - 1.5*(-2/3) = 0 (the minimiser).
    xs, opt = _trajectory(AdaptiveMemorySGD, 2.0, 2, lr=1.5, lam=0.0, foreach=foreach)
    assert xs[0] == pytest.approx(-1.0, abs=1e-15)
    assert _beta(opt) == pytest.approx(1 / 9, abs=1e-15)
    assert xs[1] == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_sgd_loss_gap_and_lambda(foreach):
    # Same start, lam = 0.5, exact loss gap. step 1: x1 = -1 (d = g = 2).
    # step 2: delta = f(x0) - f(x1) = 2 - 0.5 = 1.5; g = -1, d = 2, d - g = 3, g + lam d = 0;
    #   beta = ((1 + lam) delta / lr - <d - g, g + lam d>) / ||d - g||^2 = (1.5*1.5/1.5 - 0)/9 = 1/6
    #   d' = ((1/6 + 1/2)*2 + (5/6)*(-1)) / 1.5 = (4/3 - 5/6)/1.5 = 1/3;  x2 = -1 - 1.5/3 = -1.5
    xs, opt = _trajectory(AdaptiveMemorySGD, 2.0, 2, loss_kw=True, lr=1.5, lam=0.5,
                          loss_gap="loss", foreach=foreach)
    assert _beta(opt) == pytest.approx(1 / 6, abs=1e-15)
    assert xs == pytest.approx([-1.0, -1.5], abs=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_adamw(foreach):
    # AM-AdamW on f = x^2/2, x0 = 2, lr = 3, betas = (0.9, 0.99), lam = 0, eps = 0, wd = 0.
    bm, b2, lr = 0.9, 0.99, 3.0
    # step 1 (beta = beta_max): v1 = 0.01*4 = 0.04, P1 = (1 - 0.9) * sqrt(0.04/0.01) = 0.2,
    #   d1 = 0.1*2 = 0.2, x1 = 2 - 3 * 0.2/0.2 = -1 (overshoot)
    v1, P1, d1, x1 = 0.04, 0.2, 0.2, -1.0
    # step 2: g = -1. Taylor gap with P1: delta = lr <g, d1/P1> = 3*(-1)*1 = -3
    #   v2 = 0.99*0.04 + 0.01*1 = 0.0496, P2 = (1 - 0.9*0.9) * sqrt(v2/(1 - 0.99^2)) = 0.29996...
    #   beta = (delta - lr <d1 - g, g/P2>) / (lr (d1 - g)^2 / P2)
    #        = (-3 + 3.6/P2) / (4.32/P2) = 0.625...
    g = -1.0
    delta = lr * g * d1 / P1
    v2 = b2 * v1 + (1 - b2) * g * g
    P2 = (1 - bm * bm) * math.sqrt(v2 / (1 - b2**2))
    beta = (delta - lr * (d1 - g) * g / P2) / (lr * (d1 - g) ** 2 / P2)
    assert 0 < beta < bm  # the unclipped branch
    d2 = beta * d1 + (1 - beta) * g
    x2 = x1 - lr * d2 / P2
    xs, opt = _trajectory(AdaptiveMemoryAdamW, 2.0, 2, lr=lr, betas=(bm, b2), lam=0.0, eps=0.0,
                          weight_decay=0.0, foreach=foreach)
    assert xs[0] == pytest.approx(x1, abs=1e-14)
    assert _beta(opt) == pytest.approx(beta, abs=1e-13)
    assert xs[1] == pytest.approx(x2, abs=1e-13)


def test_adamw_with_fixed_beta_is_adamw():
    # lam = 0 and beta_max = 0 pin beta1 = 0: the update is AdamW(betas=(0, b2)).
    torch.manual_seed(0)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    oa = AdaptiveMemoryAdamW([a], lr=0.01, betas=(0.0, 0.99), lam=0.0, weight_decay=0.1)
    ob = torch.optim.AdamW([b], lr=0.01, betas=(0.0, 0.99), weight_decay=0.1)
    for t in range(5):
        for p, o in ((a, oa), (b, ob)):
            o.zero_grad()
            ((p - t) ** 2).sum().backward()
            o.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_loss_gap_requires_loss():
    x = torch.tensor(1.0, requires_grad=True)
    opt = AdaptiveMemorySGD([x], loss_gap="loss")
    (x * x).backward()
    with pytest.raises(RuntimeError, match="needs the loss"):
        opt.step()


@pytest.mark.parametrize("cls,kw", [(AdaptiveMemorySGD, dict(lr=0.05)),
                                    (AdaptiveMemoryAdamW, dict(lr=0.1, weight_decay=0.0))])
def test_converges_quadratic(cls, kw):
    check_converges(cls, kw, "quadratic", steps=400, tol=1e-6)


def test_converges_quadratic_loss_gap():
    check_converges(AdaptiveMemorySGD, dict(lr=0.05, loss_gap="loss"), "quadratic", steps=400,
                    tol=1e-6)


@pytest.mark.parametrize("cls,kw", [(AdaptiveMemorySGD, dict(lr=3e-3)),
                                    (AdaptiveMemoryAdamW, dict(lr=2e-2, weight_decay=0.0))])
def test_converges_rosenbrock(cls, kw):
    check_converges(cls, kw, "rosenbrock", steps=3000, tol=1e-3)


def test_invalid():
    for cls in (AdaptiveMemorySGD, AdaptiveMemoryAdamW):
        check_invalid(cls, [dict(lr=-1.0), dict(lam=-0.1), dict(loss_gap="exact"),
                            dict(beta_scope="layer"), dict(loss_gap="loss", beta_scope="tensor"),
                            dict(weight_decay=-1.0)])
    check_invalid(AdaptiveMemorySGD, [dict(beta_max=1.0), dict(beta_max=-0.1)])
    check_invalid(AdaptiveMemoryAdamW, [dict(betas=(1.0, 0.9)), dict(betas=(0.9, 1.0)),
                                        dict(eps=-1.0)])
