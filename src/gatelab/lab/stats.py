"""Statistics for comparing runs over seeds.

The habits this follows: report mean +/- sample std over seeds with n stated, compare two
variants with a one-sided Welch t-test (modded-nanogpt records), and compare variants each at
its own best learning rate ("best over lr", zoology). Distributions come from `scipy.stats`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from gatelab.core.errors import ConfigError

_ALTERNATIVES = ("less", "greater", "two-sided")


def _floats(xs: Iterable[float], what: str = "values") -> np.ndarray:
    arr = np.asarray(list(xs), dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"no {what} given; pass at least one number")
    return arr


def mean_std(xs: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of `xs`; std is 0.0 for a single value."""
    arr = _floats(xs)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def confidence_interval(xs: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t confidence interval for the mean of `xs` at `level`.

    With a single value the interval is unbounded, (-inf, inf): one seed says nothing about spread.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level} must be in (0, 1), e.g. 0.95")
    arr = _floats(xs)
    mean = float(arr.mean())
    if arr.size < 2:
        return -math.inf, math.inf
    sem = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    if sem == 0.0:
        return mean, mean
    lo, hi = sps.t.interval(level, df=arr.size - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def welch_test(
    a: Iterable[float], b: Iterable[float], alternative: str = "less"
) -> tuple[float, float]:
    """Welch's unequal-variance t-test of mean(a) against mean(b): (t, p).

    `alternative="less"` gives the p-value for the hypothesis mean(a) < mean(b) (e.g. a's loss
    is lower); "greater" and "two-sided" as in `scipy.stats.ttest_ind`. (nan, nan) when either
    sample has fewer than two values, or when both have zero variance.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative {alternative!r} unknown; use one of {', '.join(_ALTERNATIVES)}")
    xa, xb = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        return math.nan, math.nan
    if xa.std(ddof=1) == 0.0 and xb.std(ddof=1) == 0.0:
        return math.nan, math.nan
    res = sps.ttest_ind(xa, xb, equal_var=False, alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def one_sample_test(xs: Iterable[float], mu: float, alternative: str = "less") -> tuple[float, float]:
    """One-sample t-test of mean(xs) against `mu`: (t, p); `alternative="less"` tests mean < mu.
    (nan, nan) with fewer than two values or zero variance."""
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative {alternative!r} unknown; use one of {', '.join(_ALTERNATIVES)}")
    arr = np.asarray(list(xs), dtype=np.float64)
    if arr.size < 2 or arr.std(ddof=1) == 0.0:
        return math.nan, math.nan
    res = sps.ttest_1samp(arr, mu, alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def _lookup(record: Mapping[str, Any], key: str) -> Any:
    """A record's value for `key`: top-level ("variant", "seed") or a dotted key in "params"."""
    if key in record and key not in ("params", "summary"):
        return record[key]
    params = record.get("params") or {}
    if key in params:
        return params[key]
    raise ConfigError(
        f"record {record.get('run_id', '?')!r} has no key {key!r}; "
        f"use 'variant', 'seed' or a dotted key of its params ({', '.join(sorted(params)) or 'none'})"
    )


_ROW_KEYS = ("best", "n", "mean", "std", "values", "seeds", "settings")


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def best_over(
    records: Sequence[Mapping[str, Any]],
    group_keys: Sequence[str],
    over_keys: Sequence[str],
    metric: str = "val_loss",
) -> list[dict[str, Any]]:
    """Per group, the setting of `over_keys` with the lowest mean `metric` over seeds.

    Each record is a run.json dict with "variant", "seed", "params" (dotted key -> value) and
    "summary" ({metric: value}); keys are looked up at top level first, then in "params". Records
    without a finite `metric` (failed or diverged runs) are skipped; a setting whose every seed
    diverged therefore never wins. Returns one row per group, in first-seen order, holding the
    group's values under their own keys plus::

        {"best": {over_key: value}, "n": int, "mean": float, "std": float,
         "values": [per-seed metric, in seed order], "seeds": [...],
         "settings": int (how many settings were compared)}
    """
    clash = sorted(set(group_keys) & set(_ROW_KEYS))
    if clash:
        raise ConfigError(f"group key(s) {clash} clash with best_over's row fields; rename them")
    cells: dict[tuple, dict[tuple, list[tuple[Any, float]]]] = {}
    group_vals: dict[tuple, dict[str, Any]] = {}
    over_vals: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        value = (rec.get("summary") or {}).get(metric)
        if value is None or not math.isfinite(float(value)):
            continue
        g = {k: _lookup(rec, k) for k in group_keys}
        o = {k: _lookup(rec, k) for k in over_keys}
        gk = tuple(_hashable(v) for v in g.values())
        ok = tuple(_hashable(v) for v in o.values())
        group_vals.setdefault(gk, g)
        over_vals[ok] = o
        cells.setdefault(gk, {}).setdefault(ok, []).append((rec.get("seed"), float(value)))
    rows = []
    for gk, settings in cells.items():
        best_ok = min(settings, key=lambda ok: float(np.mean([v for _, v in settings[ok]])))
        pairs = sorted(settings[best_ok], key=lambda sv: (sv[0] is None, sv[0]))
        values = [v for _, v in pairs]
        mean, std = mean_std(values)
        rows.append(
            {
                **group_vals[gk],
                "best": dict(over_vals[best_ok]),
                "n": len(values),
                "mean": mean,
                "std": std,
                "values": values,
                "seeds": [s for s, _ in pairs],
                "settings": len(settings),
            }
        )
    return rows
