"""Run records (``run.json``), the SQLite run index, and the per-variant comparison.

``run.json`` (one per run directory, written atomically) is the source of truth::

    {"run_id", "sweep", "variant", "params": {dotted key: value}, "seed",
     "status": "running" | "finished" | "failed", "error": str | null,
     "started": ISO time, "finished": ISO time | null, "wall_s",
     "git": {"commit", "dirty"}, "versions": {"gatelab", "torch", "python", "numpy"},
     "hardware": str, "summary": {"params", "active_params", "flops_per_token", "train_loss",
                                  "val_loss", "tokens_per_s", every key of the final metrics record}}

`RunIndex(root)` keeps ``root/index.sqlite`` in step with every run.json below `root` (files
re-read when their size, mtime or inode changed) and answers key=value queries from a
key/value table: top-level fields by name (``variant``, ``seed``, ``status``, ``git.dirty``),
params and summary keys by name or as ``params.KEY`` / ``summary.KEY``.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError, did_you_mean
from ..core.files import atomic_write_text
from ..train import read_metrics
from .stats import best_over, welch_test
from .table import markdown_table

RUN_FILE = "run.json"
TRAIN_LOSS_STEPS = 10  # summary train_loss = mean loss of the last this many steps
INDEX_FILE = "index.sqlite"
_SCHEMA_VERSION = 1
_OPS = ("<=", ">=", "!=", "=", "<", ">")
_FILTER = re.compile(r"^([^<>=!]+?)\s*(<=|>=|!=|=|<|>)\s*(.*)$")


def read_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{str(run_dir)!r} has no {RUN_FILE}; it is not a sweep run directory") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); delete it to re-run that run") from None


def write_run(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """Write ``run.json`` atomically (temporary file, fsync, rename): readers never see half a record."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_FILE, json.dumps(_jsonable(record), indent=2))


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# ---------------------------------------------------------------------------- the summary


def summarize(run_dir: str | Path, params: int, losses: Sequence[float] = ()) -> dict[str, Any]:
    """A finished run's summary from its ``metrics.jsonl``: every key of the final record, plus
    params, train_loss (mean loss of the last 10 steps) and tokens_per_s (mean over the logged
    windows).

    `losses` are the per-step losses this process trained; when a resumed run trained fewer
    than 10 steps after its checkpoint, train_loss comes from the step-weighted mean of the last
    logged windows instead (exact with ``log.every`` 1, a close approximation otherwise).
    """
    records = read_metrics(run_dir)
    if not records:
        raise ConfigError(f"run {str(run_dir)!r} has no metrics records; it never trained a step")
    final = dict(records[-1])
    timed = [r["tokens_per_s"] for r in records if isinstance(r.get("tokens_per_s"), (int, float))]
    n = min(TRAIN_LOSS_STEPS, int(final.get("step", 0)) or TRAIN_LOSS_STEPS)
    if len(losses) >= n:
        train_loss = sum(losses[-n:]) / n
    else:
        train_loss = _tail_mean(records, n)
    return {**final, "params": params, "active_params": final.get("active_params"),
            "flops_per_token": final.get("flops_per_token"), "train_loss": train_loss,
            "val_loss": final.get("val_loss"),
            "tokens_per_s": sum(timed) / len(timed) if timed else None}


def _tail_mean(records: list[dict[str, Any]], n: int) -> float | None:
    """Step-weighted mean of the logged window losses covering at least the last `n` steps."""
    total, steps = 0.0, 0
    for i in range(len(records) - 1, -1, -1):
        rec = records[i]
        if "loss" not in rec:
            continue
        prev_step = int(records[i - 1]["step"]) if i > 0 else 0
        width = int(rec["step"]) - prev_step
        loss = rec["loss"]
        if not isinstance(loss, (int, float)) or width < 1:
            return math.nan
        total += loss * width
        steps += width
        if steps >= n:
            break
    return total / steps if steps else None


# ---------------------------------------------------------------------------- the index


def parse_filters(tokens: Iterable[str]) -> dict[str, str]:
    """``["variant=moe", "val_loss<2"]`` -> ``{"variant": "moe", "val_loss<": "2"}`` (the form
    `RunIndex.query` takes: a plain key means equality, a key ending in an operator compares)."""
    out: dict[str, str] = {}
    for tok in tokens:
        m = _FILTER.match(tok)
        if m is None or not m.group(1).strip() or not m.group(3):
            raise ConfigError(f"filter {tok!r} is malformed; use KEY=VALUE, KEY!=VALUE or KEY<NUMBER "
                              f"(operators {', '.join(_OPS)}), e.g. variant=moe-top2 val_loss<2")
        key, op, value = m.group(1).strip(), m.group(2), m.group(3)
        out[key if op == "=" else key + op] = value
    return out


class RunIndex:
    """SQLite index over the run.json files below `root` (the files stay the source of truth)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"runs root {str(root)!r} does not exist; run `gatelab sweep` first or pass --root")
        self.path = self.root / INDEX_FILE
        self._db = sqlite3.connect(self.path)
        if self._db.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
            self._db.executescript("DROP TABLE IF EXISTS runs; DROP TABLE IF EXISTS fields;")
        self._db.executescript(f"""
            CREATE TABLE IF NOT EXISTS runs (path TEXT PRIMARY KEY, run_id TEXT, sweep TEXT,
                                             stamp TEXT, record TEXT);
            CREATE TABLE IF NOT EXISTS fields (path TEXT, key TEXT, value, PRIMARY KEY (path, key));
            CREATE INDEX IF NOT EXISTS fields_key ON fields (key, value);
            PRAGMA user_version = {_SCHEMA_VERSION};
        """)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def refresh(self) -> int:
        """Re-read every run.json added, changed or removed since the last refresh; returns how many."""
        known = dict(self._db.execute("SELECT path, stamp FROM runs"))
        seen, changed = set(), 0
        with self._db:
            for file in self.root.rglob(RUN_FILE):
                rel = file.parent.relative_to(self.root).as_posix()
                st = file.stat()
                stamp = f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"
                seen.add(rel)
                if known.get(rel) == stamp:
                    continue
                try:
                    record = json.loads(file.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as e:
                    warnings.warn(f"skipping unreadable {file}: {e}", stacklevel=2)
                    continue
                self._db.execute("DELETE FROM fields WHERE path = ?", (rel,))
                self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                                 (rel, record.get("run_id"), record.get("sweep"), stamp, json.dumps(record)))
                self._db.executemany("INSERT INTO fields VALUES (?, ?, ?)",
                                     [(rel, k, v) for k, v in _flatten(record).items()])
                changed += 1
            for rel in set(known) - seen:
                self._db.execute("DELETE FROM runs WHERE path = ?", (rel,))
                self._db.execute("DELETE FROM fields WHERE path = ?", (rel,))
                changed += 1
        return changed

    def keys(self) -> list[str]:
        """Every key a filter may name (params and summary keys without their prefix)."""
        keys = {k.split(".", 1)[1] if k.startswith(("params.", "summary.")) else k
                for (k,) in self._db.execute("SELECT DISTINCT key FROM fields")}
        return sorted(keys)

    def query(self, filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """run.json records (plus "run_dir") matching every filter, ordered by run directory.

        Filters map a key to a value: ``{"variant": "moe", "seed": "1", "optim.lr": "0.003"}``
        (equality; numbers compare as numbers, ``null`` matches missing values); a key ending in
        ``!=``, ``<``, ``<=``, ``>`` or ``>=`` compares, e.g. ``{"val_loss<": "2"}``.
        """
        where, args = [], []
        for raw_key, value in (filters or {}).items():
            key, op = _split_op(raw_key)
            names = self._resolve_key(key)
            marks = ", ".join("?" * len(names))
            typed = _typed(value)
            if op in ("=", "!="):
                if typed is None:
                    cond, cargs = "value IS NULL", []
                else:
                    cond, cargs = "(value = ? OR value = ?)", [typed, value]
                neg = "NOT " if op == "!=" else ""
                where.append(f"path {neg}IN (SELECT path FROM fields WHERE key IN ({marks}) AND {cond})")
                args += [*names, *cargs]
            else:
                if isinstance(typed, bool) or not isinstance(typed, (int, float)):
                    raise ConfigError(f"filter {key}{op}{value} needs a number after {op!r}")
                where.append(f"path IN (SELECT path FROM fields WHERE key IN ({marks}) "
                             f"AND typeof(value) IN ('integer', 'real') AND value {op} ?)")
                args += [*names, typed]
        sql = "SELECT path, record FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path"
        return [{**json.loads(rec), "run_dir": str(self.root / path)} for path, rec in self._db.execute(sql, args)]

    def get(self, run_id: str) -> dict[str, Any]:
        """The record of `run_id`, or of ``SWEEP/RUN_ID`` when several sweeps under the root share the id."""
        rows = self._db.execute("SELECT path, record FROM runs WHERE run_id = ? ORDER BY path", (run_id,)).fetchall()
        if not rows and "/" in run_id:
            sweep, rest = run_id.split("/", 1)
            rows = self._db.execute("SELECT path, record FROM runs WHERE sweep = ? AND run_id = ? ORDER BY path",
                                    (sweep, rest)).fetchall()
        if not rows:
            ids = [r for (r,) in self._db.execute("SELECT run_id FROM runs")]
            raise ConfigError(f"no run {run_id!r} under {self.root}{did_you_mean(run_id, ids)}; "
                              "`gatelab runs list` shows the ids")
        if len(rows) > 1:
            names = [f"{json.loads(r)['sweep']}/{run_id}" for _, r in rows]
            raise ConfigError(f"run id {run_id!r} is in several sweeps; name one of: {', '.join(names)}")
        path, rec = rows[0]
        return {**json.loads(rec), "run_dir": str(self.root / path)}

    def _resolve_key(self, key: str) -> list[str]:
        names = [key] if key.startswith(("params.", "summary.")) else [key, f"params.{key}", f"summary.{key}"]
        marks = ", ".join("?" * len(names))
        if self._db.execute(f"SELECT 1 FROM fields WHERE key IN ({marks}) LIMIT 1", names).fetchone() is None:
            raise ConfigError(f"no indexed run has the key {key!r}{did_you_mean(key, self.keys())}; "
                              f"keys: {', '.join(self.keys())}")
        return names


def _split_op(key: str) -> tuple[str, str]:
    for op in _OPS:
        if key.endswith(op) and op != "=":
            return key[: -len(op)].strip(), op
    if not key or any(c in key for c in "<>=!"):
        raise ConfigError(f"filter key {key!r} is malformed; use a key, optionally ending in != < <= > >=")
    return key, "="


def _typed(value: str) -> Any:
    """A filter value as the type run.json stores: int, float, bool, None or the string itself."""
    try:
        loaded = yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        loaded = value
    if loaded is None:
        return None
    if isinstance(loaded, (bool, int, float)):
        return loaded
    try:
        return float(value)
    except ValueError:
        return value


def _flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """Queryable fields of a run.json: scalars by key, nested mappings as PARENT.KEY."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, Mapping):
            for sub, x in v.items():
                out[f"{k}.{sub}"] = _scalar(x)
        else:
            out[k] = _scalar(v)
    return out


def _scalar(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v)


# ---------------------------------------------------------------------------- comparison


def sweep_best_over(records: Iterable[Mapping[str, Any]], root: str | Path | None = None) -> list[str]:
    """The union of the ``best_over`` keys of the sweeps the records come from (each run's
    sweep.yaml is found in the nearest parent directory of its run directory)."""
    keys: list[str] = []
    seen_dirs: set[Path] = set()
    for rec in records:
        run_dir = rec.get("run_dir")
        if not run_dir:
            continue
        for parent in Path(run_dir).parents:
            sweep_file = parent / "sweep.yaml"
            if sweep_file.is_file():
                if parent not in seen_dirs:
                    seen_dirs.add(parent)
                    data = yaml.safe_load(sweep_file.read_text(encoding="utf-8")) or {}
                    keys += [k for k in data.get("best_over") or [] if k not in keys]
                break
            if root is not None and parent == Path(root):
                break
    return keys


def compare_runs(records: Sequence[Mapping[str, Any]], *, by: str = "variant", metric: str = "val_loss",
                 over: Sequence[str] = (), baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per value of `by`: the setting of `over` keys with the lowest mean `metric`
    (lower is better) and mean +/- std over its seeds; with `baseline`, the one-sided Welch
    test that the row's metric is lower than the baseline's (``p``, NaN with fewer than 2 seeds).

    Only finished runs count; runs missing an `over` key count as one setting (None).
    """
    done = [{**r, "params": {**{k: None for k in over}, **(r.get("params") or {})}}
            for r in records if r.get("status") == "finished"]
    if not done:
        raise ConfigError("no finished runs match; `gatelab runs list` shows what is there")
    if not any(metric in (r.get("summary") or {}) for r in done):
        keys = sorted({k for r in done for k in r.get("summary") or {}})
        raise ConfigError(f"metric {metric!r} is in no run's summary{did_you_mean(metric, keys)}")
    rows = best_over(done, [by], list(over), metric=metric)
    if baseline is not None:
        base = next((r for r in rows if str(r[by]) == baseline), None)
        if base is None:
            raise ConfigError(f"baseline {baseline!r} is not among the {by} values: "
                              f"{', '.join(str(r[by]) for r in rows)}")
        for r in rows:
            if r is not base:
                r["delta"] = r["mean"] - base["mean"]
                r["p"] = welch_test(r["values"], base["values"], alternative="less")[1]
    return rows


def compare_table(rows: Sequence[Mapping[str, Any]], *, by: str = "variant", metric: str = "val_loss",
                  baseline: str | None = None) -> str:
    """Markdown table of `compare_runs` rows."""
    cells = []
    for r in rows:
        best = ", ".join(f"{k}={v}" for k, v in r["best"].items() if v is not None)
        cells.append({by: str(r[by]), "n": r["n"], "mean_std": f"{r['mean']:.4f} ± {r['std']:.4f}",
                      "best": best or None, "settings": r["settings"] if r["best"] else None,
                      "delta": r.get("delta"), "p": r.get("p")})
    cols = [(by, by, "{}"), ("n", "n seeds", "{}"), ("mean_std", f"{metric} mean ± std", "{}"),
            ("best", "best setting", "{}"), ("settings", "settings tried", "{}")]
    if baseline is not None:
        cols += [("delta", f"Δ vs {baseline}", "{:+.4f}"), ("p", "p (one-sided Welch, lower)", "{:.3g}")]
    return markdown_table(cells, cols)
