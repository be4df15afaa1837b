"""`gatelab claims`: run the claims, print and write the table (``claims.md``, ``claims.json``).

Each claim's sweep trains under ``OUT/<claim>/`` (finished runs are skipped, so a second
call resumes), its probe measures each finished run once (cached), and its `evaluate`
turns the records into findings. The report is rewritten after every claim, so an
interrupted suite leaves the claims done so far on disk.
"""
from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError
from ...core.files import atomic_write_text
from ...core.registry import get, names
from ..provenance import machine_description
from ..runs import RUN_FILE, read_run
from ..sweep import SweepSpec, expand, load_sweep, run_sweep
from ..table import markdown_table
from . import budget
from .base import Claim, ClaimResult, Finding

PROBE_FILE = "claim_probe.json"
DEFAULT_SEEDS = 3


def _order(number: str) -> float:
    return float(number.lstrip("§").split("/")[0])


def available() -> list[Claim]:
    """Every registered claim, in METHODS.md order."""
    return sorted((get("claim", n) for n in names("claim")), key=lambda c: _order(c.number))


def select(requested: Sequence[str] | None) -> list[Claim]:
    """The claims named (all when none); an unknown name is a ConfigError listing the choices."""
    if not requested:
        return available()
    return [get("claim", n) for n in dict.fromkeys(requested)]


def spec_for(c: Claim, seeds: int) -> SweepSpec:
    """The claim's sweep with seeds 0..seeds-1, validated (`gatelab.lab.sweep.load_sweep`)."""
    if c.sweep is None:
        raise ConfigError(f"claim {c.name!r} is not runnable: {c.missing}")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be >= 1 (3 or more to judge the seed spread)")
    return load_sweep({**c.sweep, "seeds": list(range(seeds))})


def run_claim(c: Claim, out_dir: Path, *, seeds: int = DEFAULT_SEEDS, workers: int = 1,
              overrides: Sequence[tuple[str, str]] = (), train: bool = True,
              echo: Callable[[str], Any] = print) -> ClaimResult:
    """Train (or reuse) the claim's runs, probe them, evaluate; never raises for failed runs.
    With `train` False nothing trains: the runs already finished under `out_dir` are evaluated
    and the others counted as not run."""
    result = ClaimResult(c.name, c.number, c.title, c.published, c.setting, [])
    if c.sweep is None:
        result.findings = [Finding(f.check, f"not runnable: {c.missing}", "not runnable") for f in c.evaluate([])]
        return result
    spec = spec_for(c, seeds)
    if train:
        records = run_sweep(spec, out_dir / c.name, workers=workers, overrides=overrides, echo=echo)
    else:
        records = [_existing(out_dir / c.name / "runs" / r.run_id, r.run_id) for r in expand(spec, overrides)]
    result.runs = sum(r.get("status") != "not run" for r in records)
    result.not_run = len(records) - result.runs
    result.failed = [f"{r['run_id']}: {r.get('error')}" for r in records
                     if r.get("status") not in ("finished", "not run")]
    if c.probe is not None:
        records = [_probed(c, r, out_dir / c.name / "runs" / r["run_id"], result.failed) for r in records]
    result.findings = c.evaluate(records)
    result.wall_s = sum(float(r.get("wall_s") or 0.0) for r in records)
    return result


def _existing(run_dir: Path, run_id: str) -> dict[str, Any]:
    """The run's record if it finished or failed, else a "not run" placeholder (never started,
    or still running in another process)."""
    record = read_run(run_dir) if (run_dir / RUN_FILE).is_file() else {}
    return record if record.get("status") in ("finished", "failed") else {"run_id": run_id, "status": "not run"}


def _probed(c: Claim, record: dict[str, Any], run_dir: Path, failed: list[str]) -> dict[str, Any]:
    """`record` with the probe's figures merged into its summary (cached in ``claim_probe.json``)."""
    if record.get("status") != "finished":
        return record
    cache = run_dir / PROBE_FILE
    key = f"{c.name}@{record.get('finished')}"
    extra = None
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        extra = data.get("figures") if data.get("key") == key else None
    if extra is None:
        try:
            extra = c.probe(record, run_dir)
        except Exception as e:  # a probe failure drops this run from the findings, reported with them
            (run_dir / "probe_error.log").write_text(traceback.format_exc(), encoding="utf-8")
            failed.append(f"{record['run_id']}: probe failed: {type(e).__name__}: {e}")
            return {**record, "status": "probe failed"}
        cache.write_text(json.dumps({"key": key, "figures": extra}, indent=1), encoding="utf-8")
    return {**record, "summary": {**record["summary"], **extra}}


def run_claims(requested: Sequence[str] | None = None, out_dir: str | Path = "reports/claims", *,
               seeds: int = DEFAULT_SEEDS, workers: int = 1, overrides: Sequence[tuple[str, str]] = (),
               train: bool = True, echo: Callable[[str], Any] = print) -> list[ClaimResult]:
    """Run the claims named in `requested` (all when empty), writing the report after each;
    with `train` False, report on the runs already under `out_dir` without training any."""
    claims = select(requested)
    for c in claims:  # every config checked before the first run trains
        if c.sweep is not None:
            expand(spec_for(c, seeds), overrides)
    out_dir = Path(out_dir)
    # claims run earlier into the same directory stay in the report (re-evaluated, not retrained)
    chosen = {c.name for c in claims}
    earlier = [run_claim(c, out_dir, seeds=seeds, overrides=overrides, train=False, echo=lambda _: None)
               for c in available() if c.name not in chosen and c.sweep is not None and (out_dir / c.name).is_dir()]
    results: list[ClaimResult] = []
    for i, c in enumerate(claims, 1):
        echo(f"== claim {i}/{len(claims)}: [{c.number}] {c.title}")
        results.append(run_claim(c, out_dir, seeds=seeds, workers=workers, overrides=overrides, train=train,
                                 echo=echo))
        shown = sorted(results + earlier, key=lambda r: _order(r.number))
        write_report(shown, out_dir, seeds=seeds, overrides=overrides, pending=[p.name for p in claims[i:]])
    return results


# ---------------------------------------------------------------------------- report

COLUMNS = [
    ("claim", "claim", "{}"),
    ("published", "published figure", "{}"),
    ("setting", "our setting", "{}"),
    ("check", "direction checked", "{}"),
    ("measured", "our measurement (mean ± std)", "{}"),
    ("verdict", "direction holds", "{}"),
    ("p", "p (one-sided Welch)", "{}"),
    ("n", "n", "{}"),
]


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    if math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def table_rows(results: Sequence[ClaimResult]) -> list[dict[str, str]]:
    rows = []
    for r in results:
        for j, f in enumerate(r.findings):
            first = j == 0
            rows.append({"claim": f"[{r.number}] {r.title}" if first else "", "check": f.check,
                         "published": r.published if first else "", "setting": r.setting if first else "",
                         "measured": f.measured, "verdict": f.verdict, "p": _fmt_p(f.p), "n": f.n})
    return rows


def results_table(results: Sequence[ClaimResult]) -> str:
    return markdown_table(table_rows(results), COLUMNS)


def _budget_line(seeds: int, overrides: Sequence[tuple[str, str]]) -> str:
    line = f"Budget per run: {budget.DESCRIPTION} (a claim's setting says where it differs); seeds 0..{seeds - 1}."
    if overrides:
        line += " Overrides on every run (NOT the claims budget): " + ", ".join(f"{k}={v}" for k, v in overrides) + "."
    return line


def write_report(results: Sequence[ClaimResult], out_dir: Path, *, seeds: int,
                 overrides: Sequence[tuple[str, str]] = (), pending: Sequence[str] = ()) -> None:
    """``claims.md`` (table, notes, failures) and ``claims.json`` (everything) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    payload = {"written": stamp, "machine": machine, "omp_num_threads": threads, "seeds": seeds,
               "budget": budget.DESCRIPTION, "overrides": [list(o) for o in overrides], "pending": list(pending),
               "results": [r.to_dict() for r in results]}
    atomic_write_text(out_dir / "claims.json", json.dumps(payload, indent=1))
    lines = ["# gatelab claims", "", f"Written {stamp} on {machine}, OMP_NUM_THREADS={threads}.", "",
             _budget_line(seeds, overrides), "",
             "Verdict rule: a gap no larger than the larger seed standard deviation is \"no effect\"; otherwise "
             "the sign decides. p is the one-sided Welch test of the published direction (one-sample t-test "
             "against a bound); it is reported, never used to flip a verdict. Nothing was tuned to agree.", "",
             results_table(results), ""]
    notes = [f"- [{r.number}] {r.title}, {f.check}: {f.note}" for r in results for f in r.findings if f.note]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    incomplete = [f"- [{r.number}] {r.title}: {r.runs} of {r.runs + r.not_run} runs done" for r in results
                  if r.not_run]
    if incomplete:
        lines += ["## Incomplete claims (findings above use the finished runs only)", "", *incomplete, ""]
    walls = [f"- [{r.number}] {r.title}: {r.runs} runs, {r.wall_s:.0f} s" for r in results if r.runs]
    if walls:
        lines += ["## Runs and training wall time summed over them (provisional: depends on machine load)", "",
                  *walls, ""]
    failed = [f"- [{r.number}] {r.title}: {f}" for r in results for f in r.failed]
    if failed:
        lines += ["## Failed runs (left out of the findings above)", "", *failed, ""]
    if pending:
        lines += ["## Not run yet", "", "- " + ", ".join(pending), ""]
    atomic_write_text(out_dir / "claims.md", "\n".join(lines))
