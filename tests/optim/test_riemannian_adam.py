import math

import pytest
import torch
from harness import (
    check_converges,
    check_invalid,
    check_loop_vs_foreach,
    check_maximize,
    check_state_dict_roundtrip,
    make_params,
)

from gatelab.core.registry import get
from gatelab.optim.riemannian_adam import RiemannianAdam, sphere_exp_transport


def sphere_params(dtype=torch.float64, seed=0):
    """The harness params without the 0-d one, every row (last dim) normalised to norm 1."""
    out = []
    for p in make_params(dtype=dtype, seed=seed)[1:]:
        q = torch.nn.functional.normalize(p.detach(), dim=-1) if p.numel() else p.detach()
        leaf = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype)
        leaf.copy_(q)
        out.append(leaf.requires_grad_())
    return out


def test_registered():
    assert get("optimizer", "riemannian_adam") is RiemannianAdam


@pytest.mark.parametrize("kwargs,fn", [
    (dict(lr=0.05), make_params),
    (dict(lr=0.05, weight_decay=0.1, betas=(0.8, 0.99)), make_params),
    (dict(lr=0.05, manifold="sphere"), sphere_params),
])
def test_loop_vs_foreach(kwargs, fn):
    check_loop_vs_foreach(RiemannianAdam, kwargs, steps=8, params_fn=fn)


def test_state_dict_roundtrip():
    check_state_dict_roundtrip(RiemannianAdam, dict(lr=0.05, manifold="sphere"),
                               params_fn=sphere_params)
    check_state_dict_roundtrip(RiemannianAdam, dict(lr=0.05))


def test_maximize():
    check_maximize(RiemannianAdam, dict(lr=0.05))


def test_euclidean_is_adam():
    torch.manual_seed(0)
    a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    oa = RiemannianAdam([a], lr=0.01, weight_decay=0.1)
    ob = torch.optim.AdamW([b], lr=0.01, weight_decay=0.1)
    for t in range(5):
        for p, o in ((a, oa), (b, ob)):
            o.zero_grad()
            ((p - t) ** 2).sum().backward()
            o.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_circle(foreach):
    # x on the unit circle, f(x) = -<x, (0, 1)> (max at (0, 1)), x0 = (1, 0); b1 = 0.9, b2 = 0.99,
    # lr = 0.1, eps = 0. Euclidean grad g = (0, -1) everywhere.
    b1, b2, lr = 0.9, 0.99, 0.1
    # step 1: g_R = (0, -1) (tangent at x0); m = 0.1 g_R, v = 0.01; m_hat = g_R, v_hat = 1
    #   u = -lr g_R = (0, 0.1): x1 = (cos 0.1, sin 0.1), a rotation by theta1 = 0.1
    th1 = 0.1
    c, s = math.cos(th1), math.sin(th1)
    # step 2: g_R = g - <g, x1> x1 = c (s, -c), ||g_R|| = c; m transported to x1 is
    #   0.1 (s, -c), so m = 0.9*0.1 (s, -c) + 0.1 c (s, -c) = 0.1 (0.9 + c) (s, -c)
    #   v = 0.99*0.01 + 0.01 c^2; the step is a further rotation by
    #   theta2 = lr * (m/(1-b1^2)) / sqrt(v/(1-b2^2)) along (-s, c)
    m_mag = 0.1 * (0.9 + c) / (1 - b1**2)
    v_hat = (b2 * 0.01 + 0.01 * c**2) / (1 - b2**2)
    th2 = lr * m_mag / math.sqrt(v_hat)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    opt = RiemannianAdam([x], lr=lr, betas=(b1, b2), eps=0.0, manifold="sphere", foreach=foreach)
    target = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    got = []
    for _ in range(2):
        opt.zero_grad()
        (-(x * target).sum()).backward()
        opt.step()
        got.append(x.detach()[0].tolist())
    assert got[0] == pytest.approx([c, s], abs=1e-15)
    assert got[1] == pytest.approx([math.cos(th1 + th2), math.sin(th1 + th2)], abs=1e-14)
    # the transported momentum is tangent at the new point
    m = opt.state[x]["exp_avg"]
    assert (m * x.detach()).sum().abs().item() < 1e-15


def test_parallel_transport_is_isometric_and_tangent():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 7, dtype=torch.float64), dim=-1)
    u = torch.randn(5, 7, dtype=torch.float64)
    u = 0.3 * (u - (u * x).sum(-1, keepdim=True) * x)
    m = torch.randn(5, 7, dtype=torch.float64)
    m = m - (m * x).sum(-1, keepdim=True) * x
    x2, m2 = sphere_exp_transport(x, u, m)
    torch.testing.assert_close(x2.norm(dim=-1), torch.ones(5, dtype=torch.float64))
    zero = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close((m2 * x2).sum(-1), zero, atol=1e-14, rtol=0)
    torch.testing.assert_close(m2.norm(dim=-1), m.norm(dim=-1), atol=1e-14, rtol=0)


def test_converges_leading_eigenvector():
    # max x^T A x on the sphere (min of -x^T A x): the leading eigenvector of A.
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(1.0, 3.0, 8, dtype=torch.float64)) @ Q.T
    x = torch.full((1, 8), 8**-0.5, dtype=torch.float64, requires_grad=True)
    opt = RiemannianAdam([x], lr=0.02, manifold="sphere")
    for _ in range(500):
        opt.zero_grad()
        (-(x @ A @ x.T).sum()).backward()
        opt.step()
    assert abs(x.norm().item() - 1.0) < 1e-12
    assert (x.detach() @ Q[:, -1]).abs().item() > 1 - 1e-6


def test_converges_quadratic():
    check_converges(RiemannianAdam, dict(lr=0.05), "quadratic", steps=500, tol=1e-4)


def test_invalid():
    check_invalid(RiemannianAdam, [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(eps=-1.0),
                                   dict(manifold="hyperbolic"), dict(weight_decay=-1.0)])
    with pytest.raises(ValueError):
        RiemannianAdam([torch.ones(3, requires_grad=True)], manifold="sphere", weight_decay=0.1)
    with pytest.raises(ValueError):
        RiemannianAdam([torch.tensor(1.0, requires_grad=True)], manifold="sphere")
