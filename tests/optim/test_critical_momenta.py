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
from gatelab.optim.critical_momenta import AdamCM

CONFIGS = [dict(lr=0.01), dict(lr=0.01, priority_scope="tensor", buffer_size=2, weight_decay=0.1),
           dict(lr=0.01, buffer_size=0)]


def test_registered():
    assert get("optimizer", "adam_cm") is AdamCM


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_loop_vs_foreach(kwargs):
    check_loop_vs_foreach(AdamCM, kwargs, steps=9)  # > buffer_size: replacements happen


def test_state_dict_roundtrip():
    check_state_dict_roundtrip(AdamCM, dict(lr=0.01, buffer_size=3))


def test_maximize():
    check_maximize(AdamCM, dict(lr=0.01))


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_computed(foreach):
    # scalar x, gradients fed as 1, 3, 0.1; lr 0.1, betas (0.5, 0.5), eps 0, C = 1, decay 0.5.
    # step 1: m = 0.5; buffer empty -> m~ = 0.5; store m (priority |g| = 1 -> decayed 0.5)
    #   v = 0.5 * 0.25 = 0.125; x1 = x0 - (0.1/0.5) * 0.5 / sqrt(0.125/0.5) = x0 - 0.2
    # step 2: m = 0.25 + 1.5 = 1.75; m~ = 1.75 + 0.5 = 2.25; priority 3 > 0.5: replace (-> 1.5)
    #   v = 0.0625 + 0.5 * 2.25^2 = 2.59375; x2 = x1 - (0.1/0.75) * 2.25 / sqrt(2.59375/0.75)
    # step 3: g = 0.1: priority 0.1 < 1.5: the buffer keeps 1.75 (priority -> 0.75)
    x = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = AdamCM([x], lr=0.1, betas=(0.5, 0.5), eps=0.0, buffer_size=1, decay=0.5, foreach=foreach)
    got = []
    for g in (1.0, 3.0, 0.1):
        x.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        got.append(x.item())
    x1 = 1.0 - 0.2
    x2 = x1 - (0.1 / 0.75) * 2.25 / math.sqrt(2.59375 / 0.75)
    assert got[0] == pytest.approx(x1, abs=1e-15)
    assert got[1] == pytest.approx(x2, abs=1e-14)
    st = opt.state[x]
    assert st["critical_momenta"].tolist() == pytest.approx([1.75], abs=1e-15)
    assert st["priorities"].tolist() == pytest.approx([0.75], abs=1e-15)
    assert st["num_critical"] == 1


def test_group_priority_keeps_snapshots_together():
    # priority_scope="group": one tensor with a tiny gradient is still stored because the
    # group's norm is large; with "tensor" scope its own small norm loses the slot.
    def run(scope):
        a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = AdamCM([a, b], buffer_size=1, decay=0.9, priority_scope=scope)
        for ga, gb in ((1.0, 1.0), (0.01, 5.0)):
            a.grad = torch.full((2,), ga, dtype=torch.float64)
            b.grad = torch.full((2,), gb, dtype=torch.float64)
            opt.step()
        return opt.state[a]["critical_momenta"][0, 0].item()

    m_first, m_second = 0.1, 0.9 * 0.1 + 0.1 * 0.01  # a's momenta after steps 1 and 2
    assert run("group") == pytest.approx(m_second, abs=1e-15)
    assert run("tensor") == pytest.approx(m_first, abs=1e-15)


def test_converges_quadratic():
    check_converges(AdamCM, dict(lr=0.05), "quadratic", steps=500, tol=1e-4)


def test_converges_rosenbrock():
    # The buffer makes Adam overshoot narrow basins (the method's point): in Rosenbrock's
    # curved valley it needs a smaller lr than Adam and gets a looser tolerance.
    check_converges(AdamCM, dict(lr=2e-3), "rosenbrock", steps=6000, tol=1e-2)


def test_invalid():
    check_invalid(AdamCM, [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(decay=1.0),
                           dict(buffer_size=-1), dict(priority_scope="model"), dict(eps=-1.0)])
