"""What a claim is, what it finds, and the rules that turn seed samples into a verdict.

A claim (METHODS.md §8) is a sweep spec plus an `evaluate(records)` that returns findings:
one table row per checked direction, each with the measurement (mean +/- sample std over
seeds, n stated), a verdict and a one-sided Welch p-value. Verdict rule, fixed before any
run: a gap no larger than the larger of the two seed standard deviations is "no effect";
otherwise the sign decides "yes" or "no". The p-value is reported beside it, never used to
flip a verdict, and claims are never tuned to agree.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...core.registry import register
from ..stats import mean_std, one_sample_test, welch_test

Verdict = Literal["yes", "no", "no effect", "not runnable", "no data"]
Records = Sequence[dict[str, Any]]


@dataclass
class Finding:
    """One checked direction of a claim: a row of the claims table."""

    check: str  # the published direction in words, e.g. "val loss: head-wise gate < base"
    measured: str  # e.g. "1.523 ± 0.004 vs 1.530 ± 0.006"
    verdict: Verdict
    p: float | None = None  # one-sided p-value for the published direction (None: no test)
    n: str = ""  # sample sizes, e.g. "3 vs 3"
    note: str = ""  # caveat printed under the table


@dataclass
class ClaimResult:
    name: str
    number: str
    title: str
    published: str
    setting: str
    findings: list[Finding]
    runs: int = 0  # runs trained or reused
    not_run: int = 0  # runs of the sweep not on disk (report-only mode)
    failed: list[str] = field(default_factory=list)  # run ids that failed
    wall_s: float = 0.0  # training wall time summed over the runs (their run.json)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: A probe measures something extra on a finished run (e.g. loss at several inference
#: budgets); it gets the run record and its directory and returns summary entries.
Probe = Callable[[dict[str, Any], Path], dict[str, Any]]


@dataclass(frozen=True)
class Claim:
    """A small-scale reproduction of one published claim (METHODS.md §8 row `number`)."""

    name: str
    number: str
    title: str
    published: str
    setting: str
    sweep: dict[str, Any] | None  # sweep-file dict (its seeds are set by the runner); None: not runnable
    evaluate: Callable[[Records], list[Finding]]
    probe: Probe | None = None
    missing: str = ""  # why the claim cannot run (with sweep None)


def claim(c: Claim) -> Claim:
    """Register `c` under its name in the "claim" registry."""
    return register("claim", c.name)(c)


# ---------------------------------------------------------------------------- record access


def finished(records: Records) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "finished"]


def metric(record: dict[str, Any], name: str) -> float:
    """A summary value; ``layer*/...`` patterns (e.g. ``layer*/ffn/max_vio``) average over layers."""
    summary = record.get("summary") or {}
    if "*" not in name:
        v = summary.get(name)
        return float(v) if isinstance(v, (int, float)) else math.nan
    pattern = re.compile("^" + re.escape(name).replace(r"\*", r"\d+") + "$")
    vals = [float(v) for k, v in summary.items() if pattern.match(k) and isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else math.nan


def values(records: Records, variant: str, name: str) -> list[float]:
    """Finite per-seed values of `name` for `variant`'s finished runs, in seed order."""
    rows = sorted((r for r in finished(records) if r.get("variant") == variant), key=lambda r: r.get("seed", 0))
    return [v for v in (metric(r, name) for r in rows) if math.isfinite(v)]


# ---------------------------------------------------------------------------- verdicts


def fmt_ms(xs: Sequence[float], fmt: str = "{:.4f}") -> str:
    """'mean ± std' of `xs` with `fmt`; '-' when empty."""
    if not xs:
        return "-"
    m, s = mean_std(xs)
    return f"{fmt.format(m)} ± {fmt.format(s)}"


def _sign_verdict(gap: float, spread: float) -> Verdict:
    if abs(gap) <= spread:
        return "no effect"
    return "yes" if gap < 0 else "no"


def compare(check: str, a: Sequence[float], b: Sequence[float], expect: Literal["less", "greater", "parity"],
            fmt: str = "{:.4f}", note: str = "") -> Finding:
    """Finding for "mean(a) < mean(b)" (`less`), "mean(a) > mean(b)" (`greater`), or "a no worse
    than b", i.e. not greater (`parity`: yes when the gap is inside the seed spread or favours a).

    The p-value is the one-sided Welch test of the published direction: a < b for `less` and
    `parity` (for parity a small p says a is better, a large one is no evidence against parity),
    a > b for `greater`.
    """
    a, b = list(a), list(b)
    n = f"{len(a)} vs {len(b)}"
    measured = f"{fmt_ms(a, fmt)} vs {fmt_ms(b, fmt)}"
    if not a or not b:
        return Finding(check, measured, "no data", None, n, note)
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    gap, spread = ma - mb, max(sa, sb)
    if expect == "greater":
        verdict = _sign_verdict(-gap, spread)
        _, p = welch_test(a, b, "greater")
    else:
        verdict = _sign_verdict(gap, spread)
        if expect == "parity" and verdict == "no effect":
            verdict = "yes"
        _, p = welch_test(a, b, "less")
    return Finding(check, measured, verdict, p, n, note)


def threshold(check: str, xs: Sequence[float], bound: float, expect: Literal["less", "greater"],
              fmt: str = "{:.3f}", note: str = "") -> Finding:
    """Finding for "mean(xs) < bound" (or > bound): no effect when the bound lies within one
    seed std of the mean; p from the one-sided one-sample t-test."""
    xs = list(xs)
    measured = f"{fmt_ms(xs, fmt)} (bound {fmt.format(bound)})"
    if not xs:
        return Finding(check, measured, "no data", None, "0", note)
    m, s = mean_std(xs)
    gap = m - bound if expect == "less" else bound - m
    _, p = one_sample_test(xs, bound, expect)
    return Finding(check, measured, _sign_verdict(gap, s), p, str(len(xs)), note)
