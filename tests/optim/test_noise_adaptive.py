import math

import pytest
import torch
from harness import (
    check_converges,
    check_invalid,
    check_loop_vs_foreach,
    check_maximize,
    check_state_dict_roundtrip,
    clone_params,
    make_params,
    run_steps,
)

from gatelab.core.registry import get
from gatelab.optim._newton_schulz import NS_COEFFS, zeropower, zeropower_batched
from gatelab.optim.noise_adaptive import Muon, NoiseAdaptiveMuon


def _params_with_matrices(dtype=torch.float64, seed=0):
    """The harness params plus two more 64x48 matrices: batched NS sees a stack of three."""
    ps = make_params(dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    extra = [torch.randn(64, 48, generator=g, dtype=dtype).requires_grad_() for _ in range(2)]
    return ps[:-1] + extra + ps[-1:]  # keep the frozen 3-d param last


CONFIGS = [
    (Muon, dict(lr=0.02)),
    (Muon, dict(lr=0.02, nesterov=False, adjust_lr="spectral", weight_decay=0.0)),
    (NoiseAdaptiveMuon, dict(lr=0.02)),
    (NoiseAdaptiveMuon, dict(lr=0.02, noise_estimator="difference", dual_norm="frobenius")),
]


def test_registered():
    assert get("optimizer", "muon") is Muon
    assert get("optimizer", "lanton") is NoiseAdaptiveMuon


@pytest.mark.parametrize("cls,kwargs", CONFIGS[:2])
def test_loop_vs_foreach(cls, kwargs):
    check_loop_vs_foreach(cls, kwargs, steps=7, params_fn=_params_with_matrices)


@pytest.mark.parametrize("kwargs", [c[1] for c in CONFIGS[2:]])
def test_loop_vs_foreach_lanton(kwargs):
    # As check_loop_vs_foreach, but the noise state H (a squared nuclear norm, ~2e4 here) is
    # compared relatively: 1e-12 absolute is below one float64 ulp at that size. Params and
    # momenta are held to 1e-12 absolute.
    pa = _params_with_matrices()
    pb = clone_params(pa)
    opts = []
    for ps, fe in ((pa, False), (pb, True)):
        groups = [{"params": ps[0::2]}, {"params": ps[1::2], "lr": 0.5 * kwargs["lr"]}]
        opts.append(NoiseAdaptiveMuon(groups, **kwargs, foreach=fe))
    for o, ps in zip(opts, (pa, pb)):
        run_steps(o, ps, 7)  # grads None mid-run for one param, one param frozen
    assert any(s.get("noise_count", 0) > 0 for s in opts[0].state.values())
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
        sa, sb = opts[0].state.get(p, {}), opts[1].state.get(q, {})
        assert sa.keys() == sb.keys()
        for k in sa:
            rel = 1e-13 if k == "noise_sq" else 0.0
            torch.testing.assert_close(sa[k], sb[k], rtol=rel, atol=1e-12, msg=k)


@pytest.mark.parametrize("cls,kwargs", CONFIGS[::2])
def test_state_dict_roundtrip(cls, kwargs):
    check_state_dict_roundtrip(cls, kwargs, params_fn=_params_with_matrices)


def test_maximize():
    check_maximize(NoiseAdaptiveMuon, dict(lr=0.02))


# --------------------------------------------------------------------------- Newton-Schulz
def _ns_scalar(s: float, steps: int = 5) -> float:
    """NS5 on one singular value: s -> a s + b s^3 + c s^5, five times."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def test_newton_schulz_acts_on_singular_values():
    # G = U diag(3, 4, 0) V^T: X = G/||G||_F has singular values (0.6, 0.8, 0); NS5 maps each
    # through the quintic; U, V are preserved. Tall, wide and batched inputs agree.
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(5, 3, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4, 3, dtype=torch.float64))
    G = U @ torch.diag(torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)) @ V.T  # 5x4, rank 2
    norm = 5.0  # ||G||_F = sqrt(9 + 16)
    sv = [_ns_scalar(3 / (norm + 1e-7)), _ns_scalar(4 / (norm + 1e-7)), 0.0]
    want = U @ torch.diag(torch.tensor(sv, dtype=torch.float64)) @ V.T
    torch.testing.assert_close(zeropower(G), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(zeropower(G.T), want.T, rtol=0, atol=1e-12)
    batch = zeropower_batched(torch.stack([G, 2 * G]))
    torch.testing.assert_close(batch[0], want, rtol=0, atol=1e-12)
    torch.testing.assert_close(batch[1], want, rtol=0, atol=1e-7)  # scale-free up to the 1e-7 eps
    assert 0.6 < _ns_scalar(0.6) < 1.25 and 0.6 < _ns_scalar(0.8) < 1.25  # roughly orthogonal


# --------------------------------------------------------------------------- hand-computed steps
def _diag_run(cls, diag_w0, diag_t, steps, **kw):
    """Diagonal 2x2 layers, f = 0.5 sum ||W - T||^2: gradients and iterates stay diagonal, so
    every step is a per-singular-value computation we can write out by hand."""
    ws = [torch.diag(torch.tensor(w, dtype=torch.float64)).requires_grad_() for w in diag_w0]
    ts = [torch.diag(torch.tensor(t, dtype=torch.float64)) for t in diag_t]
    opt = cls(ws, **kw)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        sum(0.5 * ((w - t) ** 2).sum() for w, t in zip(ws, ts)).backward()
        opt.step()
        out.append([torch.diagonal(w.detach()).tolist() for w in ws])
    return out, opt


def _ns_diag(vals):
    """NS5 of a diagonal matrix with entries `vals` (>= 0): diag of the quintic per entry."""
    n = math.sqrt(sum(v * v for v in vals))
    return [_ns_scalar(v / (n + 1e-7)) for v in vals]


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_muon(foreach):
    # W0 = diag(2, 3), T = 0, lr = 0.1, mu = 0.5, wd = 0.1, match_rms factor 0.2*sqrt(2).
    lr, mu, wd, f = 0.1, 0.5, 0.1, 0.2 * math.sqrt(2)
    # step 1: g1 = W0 = (2, 3); m1 = (1-mu) g1 = (1, 1.5); u = (1-mu) g1 + mu m1 = 0.75 g1;
    #   NS5 is scale-free: O1 = NS5(diag(2, 3)); W1 = (1 - lr wd) W0 - lr f O1
    g1 = [2.0, 3.0]
    m1 = [(1 - mu) * g for g in g1]
    o1 = _ns_diag([(1 - mu) * g + mu * m for g, m in zip(g1, m1)])
    w1 = [(1 - lr * wd) * w - lr * f * o for w, o in zip(g1, o1)]
    # step 2: g2 = W1; m2 = mu m1 + (1-mu) g2; u2 = (1-mu) g2 + mu m2;
    #   W2 = (1 - lr wd) W1 - lr f NS5(u2)
    g2 = w1
    m2 = [mu * m + (1 - mu) * g for m, g in zip(m1, g2)]
    o2 = _ns_diag([(1 - mu) * g + mu * m for g, m in zip(g2, m2)])
    w2 = [(1 - lr * wd) * w - lr * f * o for w, o in zip(w1, o2)]
    got, _ = _diag_run(Muon, [[2.0, 3.0]], [[0.0, 0.0]], 2, lr=lr, momentum=mu, weight_decay=wd,
                       foreach=foreach)
    assert got[0][0] == pytest.approx(w1, abs=1e-12)
    assert got[1][0] == pytest.approx(w2, abs=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_lanton(foreach):
    # Two diagonal layers A0 = diag(2, 3), B0 = diag(1, 1), T = 0; mu = 0.5, wd = 0, beta = 0.9,
    # "spectral" factor 1 (square). Step 1 is Muon (no noise sample yet): X1 = X0 - lr NS5(X0).
    lr, mu, beta = 0.1, 0.5, 0.9
    # (the Nesterov blend u1 = (1 - mu) g1 + mu m1 = 0.75 g1 is what NS5 normalises)
    a1 = [w - lr * o for w, o in zip([2.0, 3.0], _ns_diag([1.5, 2.25]))]
    b1 = [w - lr * o for w, o in zip([1.0, 1.0], _ns_diag([0.75, 0.75]))]
    # step 2: sample = ||g2 - m1||_*^2 (nuclear norm of a diagonal = sum |d_ii|), m1 = (1-mu) X0;
    #   sigma = sqrt(H / (1 - beta)) = ||g2 - m1||_* after one sample
    sa = sum(abs(g - (1 - mu) * x) for g, x in zip(a1, [2.0, 3.0]))
    sb = sum(abs(g - (1 - mu) * x) for g, x in zip(b1, [1.0, 1.0]))
    smin = min(sa, sb)
    lr_a, lr_b = lr * (smin + 1e-8) / (sa + 1e-8), lr * (smin + 1e-8) / (sb + 1e-8)
    assert lr_a < lr_b == pytest.approx(lr)  # the noisier layer A is slowed down

    def muon2(x0, x1, lr_l):
        m1 = [(1 - mu) * x for x in x0]
        m2 = [mu * m + (1 - mu) * g for m, g in zip(m1, x1)]
        o = _ns_diag([(1 - mu) * g + mu * m for g, m in zip(x1, m2)])
        return [w - lr_l * oo for w, oo in zip(x1, o)]

    a2, b2 = muon2([2.0, 3.0], a1, lr_a), muon2([1.0, 1.0], b1, lr_b)
    got, _ = _diag_run(NoiseAdaptiveMuon, [[2.0, 3.0], [1.0, 1.0]], [[0, 0], [0, 0]], 2, lr=lr,
                       momentum=mu, weight_decay=0.0, noise_beta=beta, adjust_lr="spectral",
                       foreach=foreach)
    assert got[0][0] == pytest.approx(a1, abs=1e-12) and got[0][1] == pytest.approx(b1, abs=1e-12)
    assert got[1][0] == pytest.approx(a2, abs=1e-12)
    assert got[1][1] == pytest.approx(b2, abs=1e-12)


def test_non_matrix_params_use_adamw():
    torch.manual_seed(0)
    v = torch.randn(7, dtype=torch.float64, requires_grad=True)
    m = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v2 = v.detach().clone().requires_grad_()
    opt = Muon([{"params": [v]}, {"params": [m], "use_muon": False}], lr=0.01, weight_decay=0.1)
    ref = torch.optim.AdamW([v2], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    m2 = m.detach().clone().requires_grad_()
    ref_m = torch.optim.AdamW([m2], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    for t in range(3):
        for ps, o in (([v, m], opt), ([v2], ref), ([m2], ref_m)):
            o.zero_grad()
            sum(((p - t) ** 2).sum() for p in ps).backward()
            o.step()
    torch.testing.assert_close(v, v2, rtol=0, atol=1e-14)
    torch.testing.assert_close(m, m2, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- convergence
def _matrix_quadratic_converges(cls, steps=300, **kw):
    """0.5 ||A * (W - C)||^2 for an 8x6 W. Muon's steps have fixed size, so lr decays 2%/step."""
    g = torch.Generator().manual_seed(0)
    A = 0.5 + torch.rand(8, 6, generator=g, dtype=torch.float64)
    C = torch.randn(8, 6, generator=g, dtype=torch.float64)
    W = torch.zeros(8, 6, dtype=torch.float64, requires_grad=True)
    opt = cls([W], **kw)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)
    f = lambda: 0.5 * ((A * (W - C)) ** 2).sum()  # noqa: E731
    start = f().item()
    for _ in range(steps):
        opt.zero_grad()
        f().backward()
        opt.step()
        sched.step()
    return start, f().item()


@pytest.mark.parametrize("cls", [Muon, NoiseAdaptiveMuon])
def test_converges_matrix_quadratic(cls):
    start, final = _matrix_quadratic_converges(cls, lr=0.3, weight_decay=0.0, adjust_lr="spectral")
    assert final < 1e-4 * start


def test_adamw_part_converges_quadratic():
    # the 1-D problem goes to the AdamW part (constant-lr Adam stalls near 1e-5 here)
    check_converges(Muon, dict(lr=0.03, weight_decay=0.0), "quadratic", steps=400, tol=1e-4)


def test_invalid():
    for cls in (Muon, NoiseAdaptiveMuon):
        check_invalid(cls, [dict(lr=-1.0), dict(momentum=1.0), dict(ns_steps=0),
                            dict(adjust_lr="rms"), dict(adamw_betas=(0.9, 1.0)),
                            dict(weight_decay=-0.1)])
    check_invalid(NoiseAdaptiveMuon, [dict(noise_beta=1.0), dict(noise_estimator="ema"),
                                      dict(dual_norm="spectral"), dict(noise_eps=-1.0)])
    with pytest.raises(TypeError):
        Muon(make_params(), momentun=0.9)  # misspelt hyperparameters are not swallowed
