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
from gatelab.optim.subset_norm import SubsetNormAdamW

CONFIGS = [dict(lr=0.01), dict(lr=0.01, subset="column", weight_decay=0.1),
           dict(lr=0.01, subset="keep_larger", betas=(0.8, 0.99))]


def test_registered():
    assert get("optimizer", "subset_norm") is SubsetNormAdamW


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(SubsetNormAdamW, kwargs, steps=8)


def test_state_dict_roundtrip():
    check_state_dict_roundtrip(SubsetNormAdamW, dict(lr=0.01, weight_decay=0.1))


def test_maximize():
    check_maximize(SubsetNormAdamW, dict(lr=0.01))


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_rows(foreach):
    # W0 = [[1, 2], [3, 4]], f = 0.5 ||W||^2 (g = W), lr = 0.1, betas = (0.5, 0.75), eps = 0.
    lr, b1, b2 = 0.1, 0.5, 0.75
    W0 = [[1.0, 2.0], [3.0, 4.0]]
    # step 1, row r: m = 0.5 g, v_r = 0.25 * (g_r1^2 + g_r2^2) = 0.25 * (5, 25);
    #   m_hat = g, v_hat_r = ||g_r||^2 -> W1 = W0 - lr * g / ||g_r||  (row-normalised step)
    rn = [math.sqrt(5.0), 5.0]
    W1 = [[w - lr * w / rn[r] for w in row] for r, row in enumerate(W0)]
    # step 2: g = W1; m2 = 0.5 m1 + 0.5 g; v2_r = 0.75 v1_r + 0.25 ||g_r||^2
    #   W2 = W1 - lr * (m2 / (1 - 0.25)) / sqrt(v2_r / (1 - 0.5625))
    m1 = [[0.5 * w for w in row] for row in W0]
    v1 = [0.25 * 5.0, 0.25 * 25.0]
    m2 = [[0.5 * a + 0.5 * g for a, g in zip(ma, ga)] for ma, ga in zip(m1, W1)]
    v2 = [0.75 * v + 0.25 * sum(g * g for g in row) for v, row in zip(v1, W1)]
    W2 = [[w - lr * (m / 0.75) / math.sqrt(v2[r] / 0.4375) for w, m in zip(W1[r], m2[r])]
          for r in range(2)]
    W = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    opt = SubsetNormAdamW([W], lr=lr, betas=(b1, b2), eps=0.0, foreach=foreach)
    got = []
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (W * W).sum()).backward()
        opt.step()
        got.append(W.detach().clone())
    torch.testing.assert_close(got[0], torch.tensor(W1, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(got[1], torch.tensor(W2, dtype=torch.float64), rtol=0, atol=1e-14)
    assert opt.state[W]["exp_avg_sq"].shape == (2, 1)


def test_state_bytes_accounting():
    # float64 params of the harness: 0-d, (7,), (64, 48), (24, 40) non-contiguous, (0, 5), (3, 4, 5)
    ps = make_params()
    opt = SubsetNormAdamW(ps, lr=0.01)
    assert opt.state_bytes() == 0 and opt.adam_state_bytes() == 0
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    f8, step = 8, 4  # float64 entries; float32 0-d step counter
    want = {
        "0-d": (1 + 1) * f8 + step,            # per-coordinate: m, v
        "(7,)": (7 + 7) * f8 + step,
        "(64,48)": (64 * 48 + 64) * f8 + step,  # m full, v one per row
        "(24,40)": (24 * 40 + 24) * f8 + step,
        "(0,5)": (0 + 0) * f8 + step,           # zero rows: no v entries
        "(3,4,5)": (60 + 3) * f8 + step,       # rows of the (3, 20) view
    }
    assert opt.state_bytes() == sum(want.values())
    adam = sum(2 * p.numel() * f8 + step for p in ps)
    assert opt.adam_state_bytes() == adam
    ref = torch.optim.Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    ref.step()
    assert adam == sum(t.numel() * t.element_size() for s in ref.state.values() for t in s.values()
                       if torch.is_tensor(t))
    col = SubsetNormAdamW([torch.zeros(64, 48, requires_grad=True)], subset="column")
    col.param_groups[0]["params"][0].grad = torch.ones(64, 48)
    col.step()
    assert col.state_bytes() == (64 * 48 + 48) * 4 + step  # float32, one v per column


def _matrix_quadratic(**kw):
    g = torch.Generator().manual_seed(0)
    A = 0.5 + torch.rand(8, 6, generator=g, dtype=torch.float64)
    C = torch.randn(8, 6, generator=g, dtype=torch.float64)
    W = torch.zeros(8, 6, dtype=torch.float64, requires_grad=True)
    opt = SubsetNormAdamW([W], **kw)
    f = lambda: 0.5 * ((A * (W - C)) ** 2).sum()  # noqa: E731
    start = f().item()
    for _ in range(500):
        opt.zero_grad()
        f().backward()
        opt.step()
    return start, f().item()


@pytest.mark.parametrize("subset", ["row", "column"])
def test_converges_matrix_quadratic(subset):
    start, final = _matrix_quadratic(lr=0.05, subset=subset)
    assert final < 1e-6 * start


def test_converges_vector_problems():  # 1-d params take the per-coordinate path
    check_converges(SubsetNormAdamW, dict(lr=0.03), "quadratic", steps=400, tol=1e-4)
    check_converges(SubsetNormAdamW, dict(lr=2e-2), "rosenbrock", steps=3000, tol=1e-3)


def test_invalid():
    check_invalid(SubsetNormAdamW, [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)),
                                    dict(eps=-1.0), dict(subset="block"), dict(weight_decay=-1.0)])
