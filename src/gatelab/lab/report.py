"""`gatelab report RUNS...`: an HTML page and a Markdown page of tables and figures over runs.

A run is a directory with ``config.yaml`` and ``metrics.jsonl`` (what `gatelab train`,
`gatelab compare` and `gatelab sweep` write); RUNS may be run directories or directories
holding runs at any depth. Runs are grouped by variant (``run.json``'s variant and grid
point, else the config's `name`) and summarised over seeds as mean +/- sample std. Per-layer statistics
come from each run's newest checkpoint (`gatelab.lab.analysis`, cached in
``analysis.json``); runs without a checkpoint are reported from their metrics only.

The output directory holds ``report.html`` (self-contained: figures embedded as data
URIs), ``report.md`` with the same content referencing the ``*.png`` figures written
beside it, and ``summary.json`` (the results table as data). A figure with no data for
the given runs is left out.

    report = make_report(["runs/sweep1"], "reports/sweep1")
    report.html_path, report.figures   # Path, ["loss_curves", "pareto", ...]
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..core.errors import ConfigError, GatelabError
from . import plots
from ..train import read_metrics
from .analysis import per_layer, run_analysis, sink_per_layer
from .runs import RUN_FILE, read_run
from .stats import best_over, mean_std
from .table import markdown_table

RUN_FILES = ("config.yaml", "metrics.jsonl")


# ---------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One run directory: its resolved config, metric records, run.json (if any) and analysis."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] | None = None
    analysis_error: str | None = None

    @property
    def variant(self) -> str:
        return str(self.meta.get("variant") or self.config.get("name") or self.path.name)

    @property
    def params(self) -> dict[str, Any]:
        """The sweep grid point of the run (dotted key -> value; {} outside sweeps)."""
        return self.meta.get("params") or {}

    def group(self, ignore: Sequence[str] = ()) -> str:
        """The variant and its grid point without the `ignore` keys: ``moe/optim.lr=0.003``
        (a sweep's run id without the seed)."""
        return "/".join([self.variant, *(f"{k}={v}" for k, v in self.params.items() if k not in ignore)])

    @property
    def seed(self) -> Any:
        return self.meta.get("seed", (self.config.get("train") or {}).get("seed"))

    def section(self, name: str) -> dict[str, Any]:
        return self.config.get(name) or {}

    def last(self, key: str) -> float | None:
        """`key` in the newest record that has it (a finite number), else None."""
        for rec in reversed(self.records):
            v = rec.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v) if math.isfinite(v) else None
        return None

    def last_record_with(self, predicate: Callable[[str], bool]) -> dict[str, Any]:
        """The newest record having some key that satisfies `predicate` (or {})."""
        return next((r for r in reversed(self.records) if any(predicate(k) for k in r)), {})

    def series(self, key: str) -> tuple[list[float], list[float]]:
        pairs = [(r["step"], r[key]) for r in self.records
                 if isinstance(r.get(key), (int, float)) and "step" in r and math.isfinite(r[key])]
        return [float(s) for s, _ in pairs], [float(v) for _, v in pairs]

    def tokens_per_s(self) -> float | None:
        return _mean([r["tokens_per_s"] for r in self.records if isinstance(r.get("tokens_per_s"), (int, float))])


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Every run directory (config.yaml + metrics.jsonl) at or under `paths`, sorted, once each."""
    if not paths:
        raise ConfigError("no RUNS given; pass run directories or directories that contain them")
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"{str(p)!r} does not exist; pass run directories or directories that contain them")
        for root, dirs, files in os.walk(p):
            if all(f in files for f in RUN_FILES):
                found.setdefault(Path(root).resolve())
                dirs.clear()  # a run's own subdirectories (checkpoints) hold no runs
            else:
                dirs.sort()
    if not found:
        listed = ", ".join(repr(str(p)) for p in paths)
        raise ConfigError(f"no runs under {listed}: a run directory holds config.yaml and metrics.jsonl "
                          "(pass the --out of `gatelab train`, `gatelab compare` or `gatelab sweep`)")
    return sorted(found)


def load_run(path: str | Path) -> Run:
    """Read a run directory's config, metrics and run.json (no analysis)."""
    path = Path(path)
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        records = read_metrics(path)
        meta = read_run(path) if (path / RUN_FILE).is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"run {str(path)!r} cannot be read ({str(e).splitlines()[0]}); "
                          "remove it from RUNS or fix the file") from None
    return Run(path, config, records, meta)


def attach_analysis(run: Run) -> None:
    """Compute (or read the cached) checkpoint analysis; a failure is recorded on the run, not raised."""
    try:
        run.analysis = run_analysis(run.path)
    except GatelabError as e:
        run.analysis_error = str(e)


@dataclass
class Variant:
    """Runs of one variant (its seeds); with best-over, the best of `tried` settings, `setting`."""

    label: str
    runs: list[Run]
    setting: str | None = None
    tried: int = 1

    def finals(self, key: str) -> list[float]:
        return [v for r in self.runs if (v := r.last(key)) is not None]

    def stat(self, key: str) -> tuple[float, float] | None:
        xs = self.finals(key)
        return mean_std(xs) if xs else None

    def mean(self, key: str) -> float | None:
        s = self.stat(key)
        return None if s is None else s[0]

    def tokens_per_s(self) -> float | None:
        """Mean over seeds of each run's mean training throughput."""
        return _mean([t for r in self.runs if (t := r.tokens_per_s()) is not None])

    def curve(self, key: str) -> plots.Curve | None:
        """Mean and std over seeds at each logged step (seeds missing a step are left out there)."""
        by_step: dict[float, list[float]] = {}
        for r in self.runs:
            for s, v in zip(*r.series(key)):
                by_step.setdefault(s, []).append(v)
        if not by_step:
            return None
        steps = sorted(by_step)
        stats = [mean_std(by_step[s]) for s in steps]
        return plots.Curve(steps, [m for m, _ in stats], [sd for _, sd in stats])

    def per_layer_mean(self, values: Callable[[Run], dict[Any, Any]]) -> dict[Any, Any]:
        """Mean over seeds of a per-layer mapping (scalars or equal-length vectors) per key."""
        collected: dict[Any, list[np.ndarray]] = {}
        for r in self.runs:
            for k, v in values(r).items():
                collected.setdefault(k, []).append(np.asarray(v, dtype=float))
        out = {}
        for k in sorted(collected):
            arrays = collected[k]
            if len({a.shape for a in arrays}) == 1:
                mean = np.mean(arrays, axis=0)
                out[k] = mean.tolist() if mean.ndim else float(mean)
        return out


def group_runs(runs: Sequence[Run], best_over: Sequence[str] = ()) -> list[Variant]:
    """Runs grouped by variant and sweep grid point (`Run.group`), in first-seen order; the
    seeds of a group are its runs. When runs come from several sweeps, a group is named
    ``sweep/group`` so equal variant names of different sweeps stay apart.

    With `best_over` grid keys (e.g. ``optim.lr``), groups that differ only in those keys
    are replaced by the one with the lowest mean validation loss ("best over lr")."""
    grid_keys = {k for r in runs for k in r.params}
    unknown = [k for k in best_over if k not in grid_keys]
    if unknown:
        raise ConfigError(f"best-over keys {unknown} are not grid keys of these runs "
                          f"({', '.join(sorted(grid_keys)) or 'they have no sweep grid'}); use a key the sweep varied")
    sweeps = {r.meta.get("sweep") for r in runs if r.meta.get("sweep")}

    def label(r: Run, ignore: Sequence[str] = ()) -> str:
        return f"{r.meta['sweep']}/{r.group(ignore)}" if len(sweeps) > 1 and r.meta.get("sweep") else r.group(ignore)

    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(label(r), []).append(r)
    variants = [Variant(name, sorted(rs, key=lambda r: (r.seed is None, str(r.seed)))) for name, rs in groups.items()]
    if not best_over:
        return variants
    buckets: dict[str, list[Variant]] = {}
    for v in variants:
        buckets.setdefault(label(v.runs[0], best_over), []).append(v)
    out = []
    for name, candidates in buckets.items():
        best = _by_val_loss(candidates)[0]
        setting = ", ".join(f"{k}={best.runs[0].params[k]}" for k in best_over if k in best.runs[0].params)
        out.append(Variant(name, best.runs, setting, len(candidates)))
    return out


# ---------------------------------------------------------------------------- statistics by layer


def _layer_stat(run: Run, name: str) -> dict[tuple[int, str], Any]:
    """Per-layer statistic from the checkpoint analysis, else from the newest metrics record
    that has it (scalars only there)."""
    if run.analysis is not None:
        return per_layer(run.analysis["stats"], name)
    return per_layer(run.last_record_with(lambda k: k.endswith("/" + name)), name)


def _by_layer(found: dict[tuple[int, str], Any]) -> dict[int, Any]:
    return {layer: v for (layer, _), v in found.items()}


def _sink(run: Run) -> dict[int, float]:
    if run.analysis is not None:
        return sink_per_layer(run.analysis["sink"])
    return sink_per_layer(run.last_record_with(lambda k: k.startswith("f_attn/layer")))


def _depth_name(run: Run) -> str:
    return str((run.section("model").get("depth") or {}).get("name", "none"))


def _processed(run: Run) -> dict[tuple[int, str], float]:
    """Fraction of tokens each layer (and gated branch) processed; blocks a routed depth
    method leaves alone process every token."""
    found = {k: float(v) for k, v in _layer_stat(run, "processed").items()}
    scopes = {scope for _, scope in found}
    n_layer = int(run.section("model").get("n_layer", 0))
    return {(i, s): found.get((i, s), 1.0) for s in scopes for i in range(n_layer)}


def _n_experts(run: Run) -> int | None:
    """Experts per MoE layer: from the analysed load vector, else the config's block ffn."""
    loads = _layer_stat(run, "tokens_per_expert")
    if loads:
        return len(next(iter(loads.values())))
    ffn = (run.section("model").get("block") or {}).get("ffn") or {}
    return int(ffn["n_experts"]) if ffn.get("name") == "moe" and "n_experts" in ffn else None


# ---------------------------------------------------------------------------- tables


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        cols = [(h, h, "{}") for h in self.headers]
        return markdown_table([{h: c.replace("|", "\\|") for h, c in zip(self.headers, r)} for r in self.rows], cols)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pm(stat: tuple[float, float] | None, fmt: str = "{:.4f}", n: int = 1) -> str:
    if stat is None:
        return "-"
    return fmt.format(stat[0]) if n < 2 else f"{fmt.format(stat[0])} ± {fmt.format(stat[1])}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _by_val_loss(variants: Sequence[Variant]) -> list[Variant]:
    return sorted(variants, key=lambda v: (v.mean("val_loss") is None, v.mean("val_loss") or 0.0))


def results_rows(variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """One summary row per variant, best validation loss first (also written as summary.json)."""
    rows = []
    for v in _by_val_loss(variants):
        val = v.stat("val_loss") or (None, None)
        rows.append({"variant": v.label, "setting": v.setting, "tried": v.tried, "n": len(v.runs),
                     "seeds": [r.seed for r in v.runs],
                     "val_loss_mean": val[0], "val_loss_std": val[1], "val_loss_n": len(v.finals("val_loss")),
                     "train_loss": v.mean("loss"), "flops_per_token": v.mean("flops_per_token"),
                     "active_params": v.mean("active_params"),
                     "tokens_per_s": v.tokens_per_s(),
                     "steps": v.mean("step"), "runs": [str(r.path) for r in v.runs]})
    return rows


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def results_table(rows: Sequence[dict[str, Any]]) -> Table:
    headers = ["variant", "n", "val loss (mean ± std)", "train loss", "fwd FLOPs/token", "active params/token",
               "tokens/s", "steps"]
    body = [[r["variant"] + (f" ({r['setting']}, best of {r['tried']})" if r["setting"] else ""), str(r["n"]),
             _pm(None if r["val_loss_mean"] is None else (r["val_loss_mean"], r["val_loss_std"]), n=r["val_loss_n"]),
             _num(r["train_loss"], "{:.4f}"), _num(r["flops_per_token"], "{:,.0f}"),
             _num(r["active_params"], "{:,.0f}"), _num(r["tokens_per_s"], "{:,.0f}"), _num(r["steps"], "{:.0f}")]
            for r in rows]
    return Table(headers, body)


def optimizer_table(variants: Sequence[Variant]) -> Table | None:
    """Per optimizer, its best variant by mean validation loss ("best over lr"), when the
    runs use more than one optimizer."""
    runs = [r for v in variants for r in v.runs]
    names = {str(r.section("optim").get("name")) for r in runs}
    if len(names) < 2:
        return None
    label_of = {id(r): v.label for v in variants for r in v.runs}
    records = [{"seed": r.seed, "params": {"optimizer": str(r.section("optim").get("name")), "variant": label_of[id(r)]},
                "summary": {"val_loss": r.last("val_loss")}} for r in runs]
    rows = sorted(best_over(records, ["optimizer"], ["variant"]), key=lambda row: row["mean"])
    if not rows:
        return None
    lr_of = {v.label: v.runs[0].section("optim").get("lr") for v in variants}
    speed = {v.label: v.tokens_per_s() for v in variants}
    body = [[row["optimizer"], row["best"]["variant"], _num(lr_of.get(row["best"]["variant"]), "{:.3g}"),
             str(row["settings"]), str(row["n"]), _pm((row["mean"], row["std"]), n=row["n"]),
             _num(speed.get(row["best"]["variant"]), "{:,.0f}")] for row in rows]
    return Table(["optimizer", "best variant", "lr", "variants tried", "n", "val loss (mean ± std)", "tokens/s"], body)


def runs_table(variants: Sequence[Variant], base: Path) -> Table:
    def where(p: Path) -> str:
        try:
            return os.path.relpath(p, base)
        except ValueError:  # another drive (Windows)
            return str(p)

    rows = []
    for v in variants:
        for r in v.runs:
            if r.analysis is not None:
                checkpoint = f"{r.analysis['checkpoint']} (analysed)"
            else:
                checkpoint = f"analysis failed: {r.analysis_error}" if r.analysis_error else "-"
            rows.append([v.label, str(r.seed), str(r.meta.get("status", "-")), _num(r.last("step"), "{:.0f}"),
                         checkpoint, where(r.path)])
    return Table(["variant", "seed", "status", "steps", "checkpoint", "run directory"], rows)


# ---------------------------------------------------------------------------- figures


@dataclass
class FigureSpec:
    name: str  # file stem: <name>.png
    title: str
    caption: str
    figure: Any  # matplotlib Figure


def build_figures(variants: Sequence[Variant]) -> list[FigureSpec]:
    """Every figure the runs have data for, in report order."""
    labels = [v.label for v in variants]
    colors = plots.palette(labels)
    out: list[FigureSpec] = []

    def add(name: str, title: str, caption: str, fig: Any) -> None:
        if fig is not None:
            out.append(FigureSpec(name, title, caption, fig))

    train = {v.label: c for v in variants if (c := v.curve("loss")) is not None}
    val = {v.label: c for v in variants if (c := v.curve("val_loss")) is not None}
    add("loss_curves", "Loss curves",
        "Training loss (mean of each logging window) and validation loss against step; bands are ± std over seeds.",
        plots.loss_curves(train, val, colors))

    def points(key: str) -> list[plots.Point]:
        pts = []
        for v in variants:
            val_s, x = v.stat("val_loss"), v.mean(key)
            if val_s is not None and x is not None and x > 0:
                pts.append(plots.Point(v.label, x, val_s[0], val_s[1]))
        return pts

    add("pareto", "Validation loss against compute and active parameters",
        "Each point is a variant (mean over seeds, error bar ± std) at its executed forward FLOPs per token and "
        "its active parameters per token; the dashed staircase is the Pareto front (lowest loss at each cost). "
        "Outlined points are on the front.",
        plots.pareto({"executed forward FLOPs / token": points("flops_per_token"),
                      "active parameters / token": points("active_params")}, colors))

    loads = {}
    for v in variants:
        by_layer = v.per_layer_mean(lambda r: _by_layer(_layer_stat(r, "tokens_per_expert")))
        if by_layer:
            layers = sorted(by_layer)
            loads[v.label] = (layers, np.array([by_layer[i] for i in layers]))
    add("expert_load", "Expert load",
        "Tokens routed to each expert relative to the layer's mean load, on the eval batches at the newest "
        "checkpoint (1 = balanced; red = overloaded, blue = starved).",
        plots.expert_load(loads))

    hists = {}
    for v in variants:
        by_layer = v.per_layer_mean(lambda r: _by_layer(_layer_stat(r, "experts_per_token_hist")))
        if by_layer:
            hists[v.label] = np.mean([by_layer[i] for i in by_layer], axis=0).tolist()
    add("experts_per_token", "Experts per token",
        "Fraction of tokens processed by 0, 1, 2, ... real experts (mean over MoE layers, eval batches). "
        "Fixed top-k puts all mass at k; adaptive routers (top-p, null experts, expert choice) spread it.",
        plots.experts_per_token(hists, colors))

    entropy, n_exp = {}, {}
    for v in variants:
        mean_over_layers = _layer_mean_curve(v, "router_entropy")
        if mean_over_layers is not None:
            entropy[v.label] = mean_over_layers
            e = next((n for r in v.runs if (n := _n_experts(r)) is not None), None)
            if e is not None:
                n_exp[v.label] = e
    add("router_entropy", "Router entropy during training",
        "Mean entropy of the router's probabilities over MoE layers, from the training log (mean over seeds). "
        "Falling entropy means routers commit to fewer experts per token.",
        plots.router_entropy(entropy, n_exp, colors))

    mi = {v.label: v.per_layer_mean(lambda r: _by_layer(_layer_stat(r, "domain_mi"))) for v in variants}
    add("domain_mi", "Expert/domain mutual information",
        "I(expert; domain) in nats per MoE layer: how much the chosen expert tells about the token's source "
        "domain (0 = experts are domain-blind).",
        plots.per_layer_bars(mi, colors, "mutual information (nats)"))

    sink = {v.label: v.per_layer_mean(_sink) for v in variants}
    add("sink_share", "Attention-sink share (F-Attn)",
        "Attention mass on the first token per softmax-attention layer (mean over heads and queries); "
        "an attention sink shows as a large share (Qiu et al., 2025).",
        plots.per_layer_bars(sink, colors, "attention on first token (F-Attn)"))

    depth_series, depth_colors = {}, {}
    for v in variants:
        if any(_depth_name(r) != "none" for r in v.runs):
            by_scope: dict[str, dict[int, float]] = {}
            for (layer, scope), frac in v.per_layer_mean(_processed).items():
                by_scope.setdefault(scope, {})[layer] = frac
            for j, (scope, vals) in enumerate(sorted(by_scope.items())):
                label = f"{v.label} ({scope.replace('_gate', '')})" if scope else v.label
                depth_series[label] = vals
                depth_colors[label] = plots.lighter(colors[v.label]) if j % 2 else colors[v.label]
    add("depth_processed", "Tokens processed per layer",
        "Fraction of tokens each block (or gated branch) processed in eval mode at the newest checkpoint; "
        "blocks a depth method does not route process every token.",
        plots.per_layer_bars(depth_series, depth_colors, "fraction of tokens processed", ylim=(0, 1.05)))
    return out


def _layer_mean_curve(v: Variant, name: str) -> plots.Curve | None:
    """Mean over layers and seeds of a per-layer scalar logged during training, by step."""
    by_step: dict[float, list[float]] = {}
    for r in v.runs:
        for rec in r.records:
            vals = [float(x) for x in per_layer(rec, name).values() if isinstance(x, (int, float))]
            if vals and "step" in rec:
                by_step.setdefault(float(rec["step"]), []).append(sum(vals) / len(vals))
    if not by_step:
        return None
    steps = sorted(by_step)
    return plots.Curve(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps])


# ---------------------------------------------------------------------------- pages


@dataclass
class Report:
    out_dir: Path
    html_path: Path
    md_path: Path
    figures: list[str]  # figure names, each written as <name>.png
    variants: list[Variant]
    warnings: list[str]


def make_report(paths: Sequence[str | Path], out_dir: str | Path, analyse: bool = True,
                best_over: Sequence[str] = (), title: str = "gatelab report") -> Report:
    """Find the runs under `paths`, analyse their checkpoints (unless `analyse` is False) and
    write report.html, report.md, the figure PNGs and summary.json into `out_dir`. With
    `best_over` grid keys, each variant is shown at its best setting of those keys."""
    out_dir = Path(out_dir)
    runs = [load_run(p) for p in find_runs(paths)]
    variants = group_runs(runs, best_over)  # a bad key fails before the analysis starts
    runs = [r for v in variants for r in v.runs]
    warnings = []
    if analyse:
        for r in runs:
            attach_analysis(r)
            if r.analysis_error:
                warnings.append(f"{r.path}: checkpoint analysis failed ({r.analysis_error}); reported from metrics only")
    rows = results_rows(variants)
    figures = build_figures(variants)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for f in figures:
        pngs[f.name] = plots.to_png(f.figure)
        (out_dir / f"{f.name}.png").write_bytes(pngs[f.name])
    tables = [("Results", "Variants by mean final validation loss over seeds (n = seeds; ± is the sample std).",
               results_table(rows))]
    opt = optimizer_table(variants)
    if opt is not None:
        tables.append(("Optimizers", "Each optimizer at its best variant by mean validation loss "
                                     "(\"best over lr\" when its variants differ by learning rate).", opt))
    runs_tab = ("Runs", "Every run in this report.", runs_table(variants, out_dir.resolve()))
    n_runs, n_var = len(runs), len(variants)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"{n_runs} run{'s' * (n_runs != 1)} in {n_var} variant{'s' * (n_var != 1)} from "
             f"{', '.join(str(p) for p in paths)}; written {stamp}.")
    if best_over:
        intro += f" Each variant at its best {', '.join(best_over)} by mean validation loss (other settings left out)."
    (out_dir / "report.md").write_text(_markdown(title, intro, tables, figures, runs_tab, warnings), encoding="utf-8")
    (out_dir / "report.html").write_text(_html(title, intro, tables, figures, pngs, runs_tab, warnings),
                                         encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps({"rows": rows}, indent=2), encoding="utf-8")
    return Report(out_dir, out_dir / "report.html", out_dir / "report.md", [f.name for f in figures], variants,
                  warnings)


Section = tuple[str, str, Table]


def _markdown(title: str, intro: str, tables: list[Section], figures: list[FigureSpec], runs_tab: Section,
              warnings: list[str]) -> str:
    lines = [f"# {title}", "", intro, ""]
    lines += [f"> warning: {w}" for w in warnings] + ([""] if warnings else [])
    for head, caption, table in tables:
        lines += [f"## {head}", "", caption, "", table.markdown(), ""]
    for f in figures:
        lines += [f"## {f.title}", "", f.caption, "", f"![{f.title}]({f.name}.png)", ""]
    head, caption, table = runs_tab
    lines += [f"## {head}", "", caption, "", table.markdown(), ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.92em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; height: auto; } .caption { color: #555; }
.warning { background: #fff4e0; border-left: 4px solid #e0a030; padding: 0.4em 0.8em; }
"""


def _html(title: str, intro: str, tables: list[Section], figures: list[FigureSpec], pngs: dict[str, bytes],
          runs_tab: Section, warnings: list[str]) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1><p>{esc(intro)}</p>"]
    parts += [f"<p class=\"warning\">{esc(w)}</p>" for w in warnings]
    toc = [head for head, _, _ in tables] + [f.title for f in figures] + [runs_tab[0]]
    parts.append("<nav><ul>" + "".join(f"<li><a href=\"#s{i}\">{esc(t)}</a></li>" for i, t in enumerate(toc))
                 + "</ul></nav>")
    i = 0
    for head, caption, table in tables:
        parts.append(f"<h2 id=\"s{i}\">{esc(head)}</h2><p class=\"caption\">{esc(caption)}</p>{table.html()}")
        i += 1
    for f in figures:
        data = base64.b64encode(pngs[f.name]).decode("ascii")
        parts.append(f"<h2 id=\"s{i}\">{esc(f.title)}</h2><p class=\"caption\">{esc(f.caption)}</p>"
                     f"<img src=\"data:image/png;base64,{data}\" alt=\"{esc(f.title)}\">")
        i += 1
    head, caption, table = runs_tab
    parts.append(f"<h2 id=\"s{i}\">{esc(head)}</h2><p class=\"caption\">{esc(caption)}</p>{table.html()}")
    parts.append("</body></html>\n")
    return "".join(parts)
