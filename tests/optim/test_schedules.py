import math

import pytest
import torch

from gatelab.core.errors import ConfigError
from gatelab.core.registry import _REGISTRIES
from gatelab.optim.schedules import refined_multipliers

NAMES = ["constant", "cosine", "linear", "wsd", "sgdr", "inverse_sqrt", "refined"]


def _opt(lr=1.0, groups=1):
    ps = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr * (k + 1)} for k in range(groups)]
    return torch.optim.SGD(ps, lr=lr)


def _lrs(name, total, steps=None, **kw):
    """lr of group 0 seen by the optimizer at steps t = 0..steps-1 (base lr 1)."""
    opt = _opt()
    sched = _REGISTRIES["schedule"][name](opt, total_steps=total, **kw)
    out = []
    for _ in range(steps or total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_all_registered_with_trainer_signature():
    import inspect

    for name in NAMES:
        fn = _REGISTRIES["schedule"][name]
        sig = inspect.signature(fn)
        assert list(sig.parameters)[:2] == ["optimizer", "total_steps"]
        assert sig.parameters["warmup_steps"].default == 0
        for p in list(sig.parameters.values())[2:]:
            assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, (name, p)


def test_warmup_is_linear_and_reaches_base_lr():
    lrs = _lrs("constant", 10, warmup_steps=4)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0] + [1.0] * 6)


def test_cosine_values():
    # T = 10, W = 2, r = 0.1: p = (t-2)/8; lr = 0.1 + 0.9·½(1+cos πp)
    lrs = _lrs("cosine", 10, 12, warmup_steps=2, min_lr_ratio=0.1)
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)  # clamped after T
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_linear_values():
    lrs = _lrs("linear", 10)
    assert lrs == pytest.approx([1 - t / 10 for t in range(10)])  # η(1 - t/T)
    lrs = _lrs("linear", 10, warmup_steps=5, min_lr_ratio=0.5)
    assert lrs[5:] == pytest.approx([0.5 + 0.5 * (1 - k / 5) for k in range(5)])


@pytest.mark.parametrize("shape,f", [("linear", lambda p: 1 - p),
                                     ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
                                     ("1-sqrt", lambda p: 1 - math.sqrt(p))])
def test_wsd_values(shape, f):
    # T = 20, W = 2, decay over the last 0.25·20 = 5 steps (t = 15..19), p = (t-15)/5
    lrs = _lrs("wsd", 20, warmup_steps=2, decay_fraction=0.25, decay_shape=shape)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2:15] == pytest.approx([1.0] * 13)
    assert lrs[15:] == pytest.approx([f(k / 5) for k in range(5)])
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_sgdr_restarts():
    # t_0 = 4, t_mult = 2: cycles [0,4), [4,12), [12,28); restarts to 1 at t = 4 and 12
    lrs = _lrs("sgdr", 30, t_0=4, t_mult=2, min_lr_ratio=0.0)
    assert lrs[0] == lrs[4] == lrs[12] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(0.5)  # T_cur/T_i = 2/4
    assert lrs[8] == pytest.approx(0.5)  # 4/8
    assert lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert lrs[20] == pytest.approx(0.5)  # 8/16
    assert _lrs("sgdr", 8) == pytest.approx(_lrs("cosine", 8))  # t_0 = 0: one cycle


def test_inverse_sqrt_values():
    lrs = _lrs("inverse_sqrt", 100, warmup_steps=4)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[15] == pytest.approx(math.sqrt(4 / 16))
    assert lrs[99] == pytest.approx(math.sqrt(4 / 100))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_refined_constant_norms_is_linear_decay():
    """w_t = Ĝ^-2 constant: η_t ∝ Σ_{p>t} w_p = (T-1-t)·w, i.e. linear decay."""
    m = refined_multipliers([2.0] * 10)
    assert m == pytest.approx([(9 - t) / 9 for t in range(10)])


def test_refined_small_early_norms_give_warmup_and_resampling():
    # norms large at the start (warm-up) and growing at the end (fast final decay)
    norms = [10.0] * 5 + [1.0] * 90 + [3.0] * 5
    m = refined_multipliers(norms, 200, smoothing=0.0)
    assert len(m) == 200 and max(m) == pytest.approx(1.0)
    assert m[0] < 0.1 and m[20] > 0.9  # warm-up emerges
    lrs = _lrs("refined", 200, grad_norms=tuple(norms), smoothing=0.0)
    assert lrs == pytest.approx(m)


def test_refined_median_filter_removes_spikes():
    norms = [1.0] * 50
    norms[20] = 100.0  # one spike
    assert refined_multipliers(norms, smoothing=0.1) == pytest.approx(
        refined_multipliers([1.0] * 50, smoothing=0.1))


@pytest.mark.parametrize("name,kw", [("cosine", dict(min_lr_ratio=0.1)), ("wsd", {}),
                                     ("sgdr", dict(t_0=5)), ("inverse_sqrt", {}),
                                     ("refined", dict(grad_norms=(1.0, 2.0, 1.5, 1.0)))])
def test_state_dict_roundtrip(name, kw):
    fn = _REGISTRIES["schedule"][name]
    opt = _opt(groups=2)
    sched = fn(opt, total_steps=30, warmup_steps=3, **kw)
    for _ in range(11):
        opt.step()
        sched.step()
    saved = sched.state_dict()
    opt2 = _opt(groups=2)
    opt2.load_state_dict(opt.state_dict())
    sched2 = fn(opt2, total_steps=30, warmup_steps=3, **kw)
    sched2.load_state_dict(saved)
    for _ in range(15):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
    assert opt.param_groups[1]["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])


@pytest.mark.parametrize("name,kw", [
    ("cosine", dict(min_lr_ratio=1.5)), ("wsd", dict(decay_shape="exp")),
    ("wsd", dict(decay_fraction=-0.1)), ("sgdr", dict(t_mult=0)), ("constant", dict(warmup_steps=20)),
    ("inverse_sqrt", dict(timescale=-1)), ("refined", {}), ("refined", dict(grad_norms=(1.0, -1.0))),
])
def test_invalid(name, kw):
    with pytest.raises(ConfigError):
        _REGISTRIES["schedule"][name](_opt(), total_steps=10, **kw)
