"""`gatelab compare`: train several variants of one base config and tabulate them.

An experiment file holds a `base` run config and named `variants` (partial configs
merged onto the base). Every variant is validated before the first one trains. Each
run gets its own directory; the report directory holds ``results.json``,
``report.md`` (the table) and ``loss_curves.png``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, load_config
from ..core.config import deep_merge, load_yaml
from ..core.errors import ConfigError
from ..train import Trainer, read_metrics
from .provenance import machine_description
from .runs import summarize
from .table import markdown_table

DEFAULT_EXPERIMENT = "compare.yaml"


@dataclass
class Experiment:
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]


def load_experiment(path: str | None) -> Experiment:
    """An experiment file, or the built-in default comparison when `path` is None."""
    if path is None:
        text = resources.files("gatelab.lab.presets").joinpath(DEFAULT_EXPERIMENT).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        where = f"built-in {DEFAULT_EXPERIMENT}"
    else:
        data, where = load_yaml(path), path
    unknown = set(data) - {"base", "variants"}
    if unknown:
        raise ConfigError(f"experiment {where}: unknown top-level keys {sorted(unknown)}; allowed: base, variants")
    variants = data.get("variants") or {}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"experiment {where}: 'variants' must map names to partial configs (at least one)")
    return Experiment(data.get("base") or {}, variants)


def resolve_variants(exp: Experiment, overrides: list[tuple[str, str]]) -> dict[str, RunConfig]:
    """Validated RunConfig of every variant (overrides apply to all); fails before any training."""
    out = {}
    for name, over in exp.variants.items():
        try:
            cfg = load_config(None, overrides, base=deep_merge(exp.base, {**(over or {}), "name": name}))
        except ConfigError as e:
            raise ConfigError(f"variant {name!r}: {e}") from None
        out[name] = cfg
    return out


def run_compare(exp: Experiment, out_dir: str | Path, overrides: list[tuple[str, str]] | None = None,
                echo: Any = print) -> list[dict[str, Any]]:
    """Train every variant, write the report directory, return one result row per variant."""
    out_dir = Path(out_dir)
    configs = resolve_variants(exp, overrides or [])
    rows = []
    for name, cfg in configs.items():
        echo(f"[{len(rows) + 1}/{len(configs)}] training {name} ...")
        t0 = time.perf_counter()
        trainer = Trainer(cfg, out_dir / "runs" / name)
        result = trainer.fit()
        wall = time.perf_counter() - t0
        summary = summarize(result.out_dir, trainer.model.num_params(non_embedding=False), result.losses)
        rows.append({
            "variant": name,
            **{key: summary.get(key) for key, _, _ in TABLE_COLUMNS[1:-1]},
            "wall_s": wall,
            "run_dir": str(result.out_dir),
            "val_by_domain": {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("val_loss/")},
        })
        echo(f"    val_loss {rows[-1]['val_loss']:.4f}  ({wall:.0f} s)")
    write_report(rows, out_dir)
    return rows


TABLE_COLUMNS = [
    ("variant", "variant", "{}"),
    ("params", "params", "{:,}"),
    ("active_params", "active params/token", "{:,.0f}"),
    ("flops_per_token", "fwd FLOPs/token", "{:,.0f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("val_loss", "val loss", "{:.4f}"),
    ("f_attn", "sink share (F-Attn)", "{:.3f}"),
    ("m_act", "max abs act (M-Act)", "{:.1f}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
    ("wall_s", "wall s", "{:.1f}"),
]


def results_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(rows, TABLE_COLUMNS)


def write_report(rows: list[dict[str, Any]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    (out_dir / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2), encoding="utf-8")
    domains = sorted({d for r in rows for d in r["val_by_domain"]})
    lines = ["# gatelab compare", "", f"Machine: {machine}", "", results_table(rows), ""]
    if domains:
        dom_rows = [{"variant": r["variant"], **r["val_by_domain"]} for r in rows]
        cols = [("variant", "variant", "{}")] + [(d, d, "{:.3f}") for d in domains]
        lines += ["## Validation loss by domain", "", markdown_table(dom_rows, cols), ""]
    _plot_losses(rows, out_dir / "loss_curves.png")
    lines += ["![loss curves](loss_curves.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _plot_losses(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        recs = read_metrics(r["run_dir"])
        tr = [(m["step"], m["loss"]) for m in recs if "loss" in m]
        va = [(m["step"], m["val_loss"]) for m in recs if "val_loss" in m]
        if tr:
            ax_t.plot(*zip(*tr), label=r["variant"])
        if va:
            ax_v.plot(*zip(*va), marker="o", label=r["variant"])
    for ax, title in ((ax_t, "training loss"), (ax_v, "validation loss")):
        ax.set_xlabel("step")
        ax.set_ylabel("nats / token")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
