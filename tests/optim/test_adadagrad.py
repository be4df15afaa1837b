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
from gatelab.optim.adadagrad import (
    AdAdaGrad,
    AdAdaGradNorm,
    BatchSizeController,
    batch_statistics,
    per_example_grads,
)
from gatelab.optim.adagrad_norm import AdaGradNorm


def test_registered():
    assert get("optimizer", "adadagrad") is AdAdaGrad
    assert get("optimizer", "adadagrad_norm") is AdAdaGradNorm


@pytest.mark.parametrize("kwargs", [dict(lr=0.1), dict(lr=0.1, weight_decay=0.1, b0=0.5)])
def test_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(AdAdaGrad, kwargs, steps=8)


def test_loop_vs_foreach_norm():
    check_loop_vs_foreach(AdAdaGradNorm, dict(lr=0.1), steps=8)


def test_state_dict_roundtrip():
    check_state_dict_roundtrip(AdAdaGrad, dict(lr=0.1))
    check_state_dict_roundtrip(AdAdaGradNorm, dict(lr=0.1))


def test_maximize():
    check_maximize(AdAdaGrad, dict(lr=0.1))


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed_adagrad(foreach):
    # f = 0.5*(x^2 + 4 y^2) from (x, y) = (2, 1): g = (x, 4y) = (2, 4); lr = 0.5, b0 = 1.
    # step 1: s = (1 + 4, 1 + 16) = (5, 17); (x1, y1) = (2 - 0.5*2/sqrt(5), 1 - 0.5*4/sqrt(17))
    # step 2: g = (x1, 4 y1); s += g^2; (x2, y2) = (x1, y1) - 0.5 * g / sqrt(s)
    x1, y1 = 2 - 1 / math.sqrt(5), 1 - 2 / math.sqrt(17)
    x2 = x1 - 0.5 * x1 / math.sqrt(5 + x1**2)
    y2 = y1 - 0.5 * 4 * y1 / math.sqrt(17 + 16 * y1**2)
    w = torch.tensor([2.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = AdAdaGrad([w], lr=0.5, b0=1.0, foreach=foreach)
    scale = torch.tensor([1.0, 4.0], dtype=torch.float64)
    got = []
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (scale * w * w).sum()).backward()
        opt.step()
        got.append(w.detach().clone())
    want = torch.tensor([[x1, y1], [x2, y2]], dtype=torch.float64)
    torch.testing.assert_close(torch.stack(got), want, rtol=0, atol=1e-14)


def test_adadagrad_norm_is_group_scope_adagrad_norm():
    a = [torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True),
         torch.tensor(3.0, dtype=torch.float64, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    oa, ob = AdAdaGradNorm(a, lr=0.3), AdaGradNorm(b, lr=0.3, scope="group")
    for _ in range(3):
        for ps, o in ((a, oa), (b, ob)):
            o.zero_grad()
            sum((p**2).sum() for p in ps).backward()
            o.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_converges_quadratic():
    check_converges(AdAdaGrad, dict(lr=2.0), "quadratic", steps=300, tol=1e-6)


def test_converges_rosenbrock():
    check_converges(AdAdaGrad, dict(lr=0.5), "rosenbrock", steps=4000, tol=1e-2)


def test_invalid():
    check_invalid(AdAdaGrad, [dict(lr=-1.0), dict(b0=-1.0), dict(weight_decay=-0.1)])
    check_invalid(AdAdaGradNorm, [dict(scope="model"), dict(lr=-0.1)])
    for bad in [dict(batch_size=1), dict(batch_size=4, test="variance"),
                dict(batch_size=4, eta=0.0), dict(batch_size=8, max_batch_size=4)]:
        with pytest.raises(ValueError):
            BatchSizeController(**bad)


# --------------------------------------------------------------------------- batch-size tests
# Per-example gradients of one 2-vector parameter for a batch of 3:
#   g1 = (1, 0), g2 = (0, 1), g3 = (2, 2)  ->  g_B = (1, 1), ||g_B||^2 = 2
#   per-coordinate sample variance: coord 0 values (1, 0, 2), mean 1: (0 + 1 + 1) / 2 = 1;
#   coord 1 values (0, 1, 2): likewise 1  ->  sum_j Var = 2
#   <g_i, g_B> = (1, 1, 4), mean 2: Var = (1 + 1 + 4) / 2 = 3
#   coordinate ratios Var_j / g_Bj^2 = (1, 1)  ->  max 1
G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)


def test_statistics_by_hand():
    s = batch_statistics([G])
    assert s["grad_norm_sq"].item() == pytest.approx(2.0, abs=1e-15)
    assert s["variance"].item() == pytest.approx(2.0, abs=1e-15)
    assert s["ip_variance"].item() == pytest.approx(3.0, abs=1e-15)
    assert s["coord_ratio"].item() == pytest.approx(1.0, abs=1e-15)
    # split into two tensors (a scalar parameter per coordinate): the sums run over both
    s2 = batch_statistics([G[:, 0], G[:, 1:]])
    for k in s:
        assert s2[k].item() == pytest.approx(s[k].item(), abs=1e-15)


@pytest.mark.parametrize("test,expected", [
    # eta = 0.5, b = 3:
    ("norm", 4),            # 2 / (0.25 * 2) = 4 > 3: grow to 4
    ("inner_product", 3),   # 3 / (0.25 * 2^2) = 3 <= 3: the test holds, keep 3
    ("coordinate", 4),      # 1 / 0.25 = 4: grow to 4
])
def test_next_batch_size_by_hand(test, expected):
    ctrl = BatchSizeController(3, test=test, eta=0.5)
    assert ctrl.next_batch_size([G]) == expected


def test_batch_never_shrinks_and_is_capped():
    ctrl = BatchSizeController(64, test="norm", eta=0.5)
    assert ctrl.next_batch_size([G]) == 64  # test needs only 4
    capped = BatchSizeController(3, test="norm", eta=0.01, max_batch_size=100)
    assert capped.next_batch_size([G]) == 100  # needs 2 / (1e-4 * 2) = 10000
    # a coordinate with zero mean and nonzero variance needs an infinite batch
    zero_mean = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    inf_ctrl = BatchSizeController(2, test="coordinate", eta=0.5, max_batch_size=50)
    assert inf_ctrl.next_batch_size([zero_mean]) == 50
    st = inf_ctrl.state_dict()
    other = BatchSizeController(2)
    other.load_state_dict(st)
    assert other.batch_size == 50 and other.test == "coordinate"


def test_per_example_grads_match_autograd():
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    pe = per_example_grads(model, torch.nn.functional.mse_loss, x, y)
    for i in range(5):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(pe[name][i], p.grad, rtol=0, atol=1e-13)


def test_controller_grows_batch_on_noisy_least_squares():
    # The documented example: batch grows as the gradient shrinks relative to its noise.
    torch.manual_seed(0)
    X = torch.randn(2048, 4)
    Y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.5 * torch.randn(2048, 1)
    model = torch.nn.Linear(4, 1)
    opt = AdAdaGradNorm(model.parameters(), lr=0.5)
    ctrl = BatchSizeController(batch_size=8, test="norm", eta=0.9, max_batch_size=512)
    sizes = []
    for _ in range(60):
        idx = torch.randint(0, len(X), (ctrl.batch_size,))
        x, y = X[idx], Y[idx]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sizes.append(ctrl.step(model, torch.nn.functional.mse_loss, x, y))
    assert sizes == sorted(sizes)  # never shrinks
    assert sizes[-1] > 8 * 4  # grew near the noise floor
    final = torch.nn.functional.mse_loss(model(X), Y).item()
    assert final < 0.5  # noise variance 0.25
