"""Statistics helpers against values computed by hand or from textbook tables."""
import math

import numpy as np
import pytest

from gatelab.core.errors import ConfigError
from gatelab.lab.stats import best_over, confidence_interval, mean_std, one_sample_test, welch_test


def _t_cdf(t: float, df: float) -> float:
    """Student-t CDF by trapezoidal integration of its density (independent of scipy)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    xs = np.linspace(-60.0, t, 400_001)
    pdf = c * (1 + xs**2 / df) ** (-(df + 1) / 2)
    return float(((pdf[1:] + pdf[:-1]) / 2 * np.diff(xs)).sum())  # trapezoid rule (any numpy version)


def test_mean_std_sample_std_and_single_value():
    assert mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx((5.0, math.sqrt(32 / 7)))
    assert mean_std([3.5]) == (3.5, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_confidence_interval_matches_t_table():
    # n = 4, mean 2.5, s = sqrt(5/3); t_{0.975, 3} = 3.182446 (table)
    lo, hi = confidence_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * math.sqrt(5 / 3) / 2
    assert (lo, hi) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-8)
    # t_{0.95, 3} = 2.353363 for a 90% interval
    lo90, hi90 = confidence_interval([1.0, 2.0, 3.0, 4.0], level=0.90)
    assert hi90 - 2.5 == pytest.approx(2.353363435 * math.sqrt(5 / 3) / 2, abs=1e-8)
    assert confidence_interval([1.0]) == (-math.inf, math.inf)
    assert confidence_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="level"):
        confidence_interval([1.0, 2.0], level=95)


def test_welch_equal_sizes_matches_hand_computation():
    # means 3 and 5, variances 2.5 each, n 5 each: t = -2 / sqrt(0.5 + 0.5) = -2, df = 8
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0]
    t, p = welch_test(a, b, "less")
    assert t == pytest.approx(-2.0)
    assert p == pytest.approx(_t_cdf(-2.0, 8.0), abs=1e-7)
    assert p == pytest.approx(0.040258, abs=1e-5)  # t-table: between 0.025 (2.306) and 0.05 (1.860)
    t_g, p_g = welch_test(a, b, "greater")
    assert (t_g, p_g) == pytest.approx((-2.0, 1 - p))
    assert welch_test(a, b, "two-sided")[1] == pytest.approx(2 * p)


def test_welch_unequal_variances_uses_satterthwaite_df():
    # Wikipedia "Welch's t-test", example 1: t = -2.46, df = 24.99, two-sided p = 0.021
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t_hand = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t, p = welch_test(a, b, "less")
    assert t == pytest.approx(t_hand)
    assert p == pytest.approx(_t_cdf(t_hand, df), abs=1e-7)
    assert (t, df) == pytest.approx((-2.46, 24.99), abs=5e-3)
    assert welch_test(a, b, "two-sided")[1] == pytest.approx(0.021, abs=5e-4)


def test_welch_degenerate_inputs():
    assert all(math.isnan(v) for v in welch_test([1.0], [1.0, 2.0]))
    assert all(math.isnan(v) for v in welch_test([1.0, 1.0], [2.0, 2.0]))
    with pytest.raises(ValueError, match="alternative"):
        welch_test([1.0, 2.0], [1.0, 2.0], "lower")


def test_one_sample_test_matches_hand_computation():
    # mean 2.5, s = sqrt(5/3), n 4: t = (2.5 - 4) / (s / 2) = -2.3238, df 3
    xs = [1.0, 2.0, 3.0, 4.0]
    t, p = one_sample_test(xs, 4.0, "less")
    assert t == pytest.approx(-1.5 / (math.sqrt(5 / 3) / 2))
    # closed-form Student-t CDF for 3 degrees of freedom
    u = t / math.sqrt(3)
    assert p == pytest.approx(0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi, abs=1e-12)
    assert one_sample_test(xs, 4.0, "greater")[1] == pytest.approx(1 - p)
    assert all(math.isnan(v) for v in one_sample_test([1.0], 0.0))
    assert all(math.isnan(v) for v in one_sample_test([1.0, 1.0], 0.0))


def _rec(variant, lr, seed, loss, **extra):
    return {
        "run_id": f"{variant}-{lr}-{seed}",
        "variant": variant,
        "seed": seed,
        "params": {"optim.lr": lr, **extra},
        "summary": {"val_loss": loss},
    }


def test_best_over_picks_lowest_mean_per_group():
    records = [
        _rec("adamw", 1e-3, 1, 2.0), _rec("adamw", 1e-3, 0, 2.2),
        _rec("adamw", 3e-3, 0, 1.9), _rec("adamw", 3e-3, 1, 2.5),  # one good seed, worse mean
        _rec("lion", 1e-4, 0, 1.5), _rec("lion", 1e-4, 1, 1.7),
        _rec("lion", 3e-4, 0, math.nan), _rec("lion", 3e-4, 1, 1.0),  # diverged seed dropped
        {**_rec("lion", 1e-3, 0, 0.1), "summary": {}},  # failed run: no metric
    ]
    rows = best_over(records, ["variant"], ["optim.lr"])
    assert [r["variant"] for r in rows] == ["adamw", "lion"]
    adamw, lion = rows
    assert adamw["best"] == {"optim.lr": 1e-3}
    assert adamw["values"] == [2.2, 2.0] and adamw["seeds"] == [0, 1]
    assert (adamw["n"], adamw["mean"]) == (2, pytest.approx(2.1))
    assert adamw["std"] == pytest.approx(math.sqrt(0.02))
    assert adamw["settings"] == 2
    # lion at 3e-4 has one finite seed (1.0) and wins on mean; n reports what survived
    assert lion["best"] == {"optim.lr": 3e-4} and lion["n"] == 1 and lion["std"] == 0.0


def test_best_over_other_metric_and_multiple_keys():
    records = [
        _rec("moe", 1e-3, 0, 2.0, **{"model.k": 2}), _rec("moe", 1e-3, 0, 2.5, **{"model.k": 1}),
    ]
    records[1]["summary"]["train_loss"] = 0.5
    records[0]["summary"]["train_loss"] = 0.7
    rows = best_over(records, ["variant", "optim.lr"], ["model.k"], metric="train_loss")
    assert rows == [
        {"variant": "moe", "optim.lr": 1e-3, "best": {"model.k": 1}, "n": 1, "mean": 0.5,
         "std": 0.0, "values": [0.5], "seeds": [0], "settings": 2}
    ]


def test_best_over_unknown_key_is_a_config_error():
    with pytest.raises(ConfigError, match="no key 'optim.beta'"):
        best_over([_rec("a", 1e-3, 0, 1.0)], ["variant"], ["optim.beta"])
    with pytest.raises(ConfigError, match="clash"):
        best_over([_rec("a", 1e-3, 0, 1.0)], ["mean"], ["optim.lr"])
