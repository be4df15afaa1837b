"""`gatelab sweep`: a base config x named variants x a grid over dotted keys x seeds.

A sweep file (YAML)::

    name: lr-moe                    # default: the file's stem
    base: {model: {n_layer: 2}, train: {steps: 200}}      # partial run config
    variants:                       # name -> partial config merged onto `base` (default {base: {}})
      dense: {}
      moe-top2:
        model: {block: {ffn: {name: moe, n_experts: 8, k: 2}}}
        grid: {optim.lr: [1.0e-3, 3.0e-3]}                # replaces the sweep-level grid here
    grid: {optim.lr: [1.0e-3, 3.0e-3, 1.0e-2]}           # dotted key -> values (cartesian product)
    seeds: [0, 1, 2]                # each sets train.seed (init, dropout) AND data.seed (batch order)
    best_over: [optim.lr]           # analysis: best mean val_loss over these keys, per variant

A `gatelab compare` experiment file (base + variants) is a sweep with no grid and seed 0.
Config precedence for one run: defaults <- base <- variant <- grid point <- CLI overrides <- seed.
Every run is validated before the first one trains.

Each run trains in ``OUT/runs/<run_id>/`` (run ids look like ``moe-top2/optim.lr=0.003/seed1``)
and records ``run.json`` (see `gatelab.lab.runs`). Re-running a sweep skips finished runs and
resumes running/failed ones from their newest checkpoint. A run that raises is recorded as
failed (error in run.json, traceback in ``error.log``) and the sweep goes on; `run_sweep`
returns every run's record and the caller decides (the CLI exits 1 when any run failed).
"""
from __future__ import annotations

import copy
import itertools
import os
import re
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import RunConfig, load_config
from ..core.config import deep_merge, load_yaml, nest, parse, to_dict
from ..core.errors import ConfigError
from ..train import Trainer
from .provenance import git_revision, library_versions, machine_description
from .runs import RUN_FILE, read_run, summarize, write_run

SWEEP_FILE = "sweep.yaml"
_TOP_KEYS = ("name", "base", "variants", "grid", "seeds", "best_over")
_SEED_KEYS = ("train.seed", "data.seed")
_SAFE = re.compile(r"[^A-Za-z0-9._,=+-]")


@dataclass
class SweepSpec:
    name: str
    base: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"base": {}})  # without their grids
    grid: dict[str, list[Any]] = field(default_factory=dict)
    variant_grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # per-variant replacements
    seeds: list[int] = field(default_factory=lambda: [0])
    best_over: list[str] = field(default_factory=list)

    def grid_for(self, variant: str) -> dict[str, list[Any]]:
        return self.variant_grids.get(variant, self.grid)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec in sweep-file form (what ``sweep.yaml`` holds)."""
        variants = {v: ({**over, "grid": self.variant_grids[v]} if v in self.variant_grids else over)
                    for v, over in self.variants.items()}
        return {"name": self.name, "base": self.base, "variants": variants, "grid": self.grid,
                "seeds": self.seeds, "best_over": self.best_over}


@dataclass
class RunSpec:
    run_id: str  # e.g. "moe-top2/optim.lr=0.003/seed1": the run's directory under OUT/runs
    variant: str
    params: dict[str, Any]  # dotted grid key -> value of this grid point (as resolved in the config)
    seed: int
    config: RunConfig


# ---------------------------------------------------------------------------- loading


def load_sweep(path_or_dict: str | Path | dict[str, Any], name: str | None = None) -> SweepSpec:
    """A sweep from a YAML file or a dict; `name` overrides the file's ``name`` (default: file stem)."""
    if isinstance(path_or_dict, dict):
        data, where, stem = copy.deepcopy(path_or_dict), "sweep", "sweep"
    else:
        data, where, stem = load_yaml(str(path_or_dict)), str(path_or_dict), Path(path_or_dict).stem
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"sweep {where}: unknown top-level keys {unknown}; allowed: {', '.join(_TOP_KEYS)}")
    sweep_name = str(name or data.get("name") or stem)
    if _SAFE.search(sweep_name) or sweep_name.startswith("."):
        raise ConfigError(f"sweep {where}: name {sweep_name!r} must use only letters, digits and . _ , = + -")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"sweep {where}: 'base' must be a mapping (a partial run config)")
    raw_variants = data.get("variants") or {"base": {}}
    if not isinstance(raw_variants, dict):
        raise ConfigError(f"sweep {where}: 'variants' must map names to partial configs")
    grid = _check_grid(data.get("grid"), f"sweep {where}: grid")
    variants, variant_grids = {}, {}
    for vname, over in raw_variants.items():
        vname, over = str(vname), dict(over or {})
        if not vname or _SAFE.search(vname) or vname.startswith("."):
            raise ConfigError(f"sweep {where}: variant name {vname!r} must use only letters, digits and . _ , = + -")
        if not isinstance(over, dict):
            raise ConfigError(f"sweep {where}: variant {vname!r} must be a mapping (a partial run config)")
        if "grid" in over:
            variant_grids[vname] = _check_grid(over.pop("grid"), f"sweep {where}: variant {vname!r} grid")
        variants[vname] = over
    seeds = data.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"sweep {where}: seeds={seeds!r} must be a non-empty list of distinct integers")
    best = data.get("best_over") or []
    if isinstance(best, str):
        best = [best]
    grid_keys = set(grid).union(*variant_grids.values())
    missing = [k for k in best if k not in grid_keys]
    if missing:
        raise ConfigError(f"sweep {where}: best_over keys {missing} are not grid keys "
                          f"({', '.join(sorted(grid_keys)) or 'no grid'}); add them to a grid")
    return SweepSpec(sweep_name, base, variants, grid, variant_grids, list(seeds), list(best))


def _check_grid(grid: Any, where: str) -> dict[str, list[Any]]:
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where} must map dotted config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"{where}: key {key!r} must be a dotted config key like optim.lr")
        if key == "name" or key in _SEED_KEYS:
            raise ConfigError(f"{where}: {key} cannot be a grid key; the sweep sets it (use `seeds:` for seeds)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {key} must be a non-empty list of values, got {values!r}")
        for v in values:
            if not _is_grid_value(v):
                raise ConfigError(f"{where}: {key} value {v!r} must be a number, string, bool, null or a list "
                                  "of those; put structured alternatives in `variants`")
    return {k: list(v) for k, v in grid.items()}


def _is_grid_value(v: Any) -> bool:
    if isinstance(v, list):
        return all(_is_grid_value(x) and not isinstance(x, list) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


# ---------------------------------------------------------------------------- expansion


def expand(spec: SweepSpec, overrides: Sequence[tuple[str, str]] = ()) -> list[RunSpec]:
    """Every run of the sweep (variant x grid point x seed, in that nesting), each config
    validated; raises ConfigError naming the run before anything trains."""
    overrides = list(overrides)
    for key, _ in overrides:
        if key in _SEED_KEYS:
            raise ConfigError(f"override {key} conflicts with the sweep's seeds; set `seeds:` in the sweep file")
    runs: list[RunSpec] = []
    for variant, over in spec.variants.items():
        grid = spec.grid_for(variant)
        clash = sorted(k for k, _ in overrides if k in grid)
        if clash:
            raise ConfigError(f"override(s) {clash} would overwrite grid keys of variant {variant!r}; "
                              "change the grid in the sweep file instead")
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            for seed in spec.seeds:
                runs.append(_resolve(spec, variant, over, point, seed, overrides))
    seen: dict[str, RunSpec] = {}
    for r in runs:
        if r.run_id in seen:
            raise ConfigError(f"sweep {spec.name}: two runs share the id {r.run_id!r} (grid values that print "
                              "alike); make the grid values distinct")
        seen[r.run_id] = r
    return runs


def _resolve(spec: SweepSpec, variant: str, over: dict[str, Any], point: dict[str, Any], seed: int,
             overrides: list[tuple[str, str]]) -> RunSpec:
    data = deep_merge(spec.base, over)
    for key, value in point.items():
        data = deep_merge(data, nest(key.split("."), value))
    label = "/".join([variant, *(f"{k}={v!r}" for k, v in point.items()), f"seed{seed}"])
    seed_overrides = [(k, str(seed)) for k in _SEED_KEYS]
    try:
        cfg = load_config(None, overrides + seed_overrides, base=data)
    except ConfigError as e:
        raise ConfigError(f"sweep {spec.name} run {label}: {e}") from None
    resolved = to_dict(cfg)
    params = {k: _lookup(resolved, k, v) for k, v in point.items()}
    run_id = "/".join([variant, *(f"{k}={_fmt(v)}" for k, v in params.items()), f"seed{seed}"])
    cfg.name = run_id
    return RunSpec(run_id, variant, params, seed, cfg)


def _lookup(tree: dict[str, Any], dotted: str, default: Any) -> Any:
    """The resolved (typed) value at `dotted`, e.g. YAML's string '3e-3' as the float 0.003."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _fmt(v: Any) -> str:
    """A grid value as a filesystem-safe run-id fragment."""
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)
    return _SAFE.sub("_", str(v))


# ---------------------------------------------------------------------------- running


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, workers: int = 1,
              overrides: Sequence[tuple[str, str]] = (), echo: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Train every run of `spec` under ``out_dir/runs/<run_id>/``; return their run.json records
    in expansion order (failed runs included, with status "failed" and their error).

    Finished runs are skipped, running/failed ones resume from their newest checkpoint. With
    `workers` > 1 the runs go to a pool of spawned processes, each using cores // workers threads.
    """
    if workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    out_dir = Path(out_dir)
    runs = expand(spec, overrides)
    for run in runs:
        _check_existing(run, out_dir / "runs" / run.run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = {**spec.to_dict(), "overrides": [list(o) for o in overrides]}
    (out_dir / SWEEP_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    provenance = {"git": git_revision(), "versions": library_versions()}
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    records: dict[str, dict[str, Any]] = {}
    todo: list[_Job] = []
    for run in runs:
        run_dir = out_dir / "runs" / run.run_id
        prev = read_run(run_dir) if (run_dir / RUN_FILE).is_file() else None
        if prev is not None and prev.get("status") == "finished":
            records[run.run_id] = prev
            echo(f"[{len(records)}/{len(runs)}] {run.run_id}: finished earlier, skipped")
        else:
            todo.append(_Job(run.run_id, run.variant, run.params, run.seed, to_dict(run.config), str(run_dir),
                             spec.name, provenance, threads))

    def done(job: _Job, rec: dict[str, Any]) -> None:
        records[job.run_id] = rec
        echo(f"[{len(records)}/{len(runs)}] {job.run_id}: {_outcome(rec)}")

    if workers == 1:
        for job in todo:
            done(job, job())
    elif todo:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(job): job for job in todo}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    rec = fut.result()
                except Exception as e:  # the worker process itself died (killed, out of memory)
                    rec = _mark_failed(Path(job.run_dir), f"worker process failed: {type(e).__name__}: {e}")
                done(job, rec)
    return [records[r.run_id] for r in runs]


def _outcome(rec: dict[str, Any]) -> str:
    if rec["status"] != "finished":
        return f"FAILED ({rec.get('error')})"
    val = rec["summary"].get("val_loss")
    return f"val_loss {val:.4f} ({rec['wall_s']:.1f} s)" if isinstance(val, float) else f"{rec['wall_s']:.1f} s"


def _check_existing(run: RunSpec, run_dir: Path) -> None:
    """A run directory left by an earlier sweep must hold the same config, or skipping/resuming
    it would silently mix two experiments."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return
    saved = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    now = to_dict(run.config)
    if now["model"]["vocab_size"] == 0 and isinstance(saved.get("model"), dict):
        saved["model"]["vocab_size"] = 0  # the trainer fills it in from the tokenizer
    diffs = _diff(saved, now, "")
    if diffs:
        raise ConfigError(f"run {run.run_id} in {run_dir} was trained with a different config "
                          f"({'; '.join(diffs[:3])}); use another --out or delete that run")


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


@dataclass
class _Job:
    """One run to train, picklable for a spawned worker (the config travels as a plain dict)."""

    run_id: str
    variant: str
    params: dict[str, Any]
    seed: int
    config: dict[str, Any]
    run_dir: str
    sweep: str
    provenance: dict[str, Any]
    threads: int | None

    def __call__(self) -> dict[str, Any]:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        run_dir = Path(self.run_dir)
        prev = read_run(run_dir) if (run_dir / RUN_FILE).is_file() else {}
        record = {"run_id": self.run_id, "sweep": self.sweep, "variant": self.variant, "params": self.params,
                  "seed": self.seed, "status": "running", "error": None,
                  "started": prev.get("started") or _now(), "finished": None,
                  "wall_s": float(prev.get("wall_s") or 0.0), **self.provenance,
                  "hardware": machine_description(), "summary": {}}
        write_run(run_dir, record)
        t0 = time.perf_counter()
        try:
            trainer = Trainer(parse(RunConfig, self.config), run_dir)
            result = trainer.fit(resume=True)
            summary = summarize(run_dir, trainer.model.num_params(non_embedding=False), result.losses)
        except Exception as e:
            (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            record.update(status="failed", error=_one_line(e), wall_s=record["wall_s"] + time.perf_counter() - t0)
            write_run(run_dir, record)
            return record
        record.update(status="finished", finished=_now(), wall_s=record["wall_s"] + time.perf_counter() - t0,
                      summary=summary)
        write_run(run_dir, record)
        return record


def _mark_failed(run_dir: Path, error: str) -> dict[str, Any]:
    record = read_run(run_dir)
    record.update(status="failed", error=error)
    write_run(run_dir, record)
    return record


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
