"""Post-hoc analysis of a run's newest checkpoint: the per-layer statistics a report plots.

`metrics.jsonl` holds scalars only; the statistics that are vectors (tokens per expert
(E,), the experts-per-token histogram (E+1,)) or are worth measuring on the fixed eval
batches rather than on one training batch (expert/domain mutual information, tokens a
depth method processed per layer, F-Attn per layer) are computed here: the model is
rebuilt from the run's ``config.yaml``, loaded from its newest checkpoint and run in eval
mode over the run's eval batches; every auxiliary statistic is averaged over the batches.

The result is cached as ``analysis.json`` in the run directory and recomputed when the
newest checkpoint changes. Runs without a checkpoint have no analysis (None).

    a = run_analysis("runs/moe")            # {"stats": {"layer0/ffn/tokens_per_expert": [...], ...}, ...}
    per_layer(a["stats"], "tokens_per_expert")  # {(0, "ffn"): [...], (1, "ffn"): [...]}
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..attention import sink_metric
from ..config import load_config
from ..core.errors import CheckpointError
from ..core.files import atomic_write_text
from ..train import Trainer, list_checkpoints
from ..train.checkpoint import load_weights
from ..train.trainer import autocast_dtype

ANALYSIS_FILE = "analysis.json"
FORMAT = "gatelab-analysis-1"
_LAYER_KEY = re.compile(r"^layer(\d+)/(?:(.+)/)?([^/]+)$")


def run_analysis(run_dir: str | Path, refresh: bool = False) -> dict[str, Any] | None:
    """The analysis of the run's newest checkpoint (cached in ``analysis.json``), or None
    when the run has no checkpoint. `refresh` recomputes even when the cache is current."""
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if not ckpts:
        return None
    newest = ckpts[-1]
    cache = run_dir / ANALYSIS_FILE
    if not refresh and _cache_current(cache, newest):
        return json.loads(cache.read_text(encoding="utf-8"))
    result = analyze_checkpoint(run_dir, newest)
    atomic_write_text(cache, json.dumps(result, indent=1))
    return result


def _cache_current(cache: Path, ckpt: Path) -> bool:
    """The cache names this checkpoint and is not older than its weights."""
    if not cache.is_file():
        return False
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    weights = ckpt / "model.safetensors"
    return (data.get("format") == FORMAT and data.get("checkpoint") == ckpt.name
            and weights.is_file() and cache.stat().st_mtime >= weights.stat().st_mtime)


@torch.no_grad()
def analyze_checkpoint(run_dir: str | Path, ckpt: str | Path) -> dict[str, Any]:
    """Average every auxiliary statistic and the sink measurement over the run's eval batches.

    Returns ``{"format", "checkpoint", "step", "n_layer", "batches", "tokens_per_batch",
    "stats": {name: float | list}, "sink": {"f_attn/layer0": ..., ...}}``; vector statistics
    are per-batch means (so ``sum(tokens_per_expert) == tokens_per_batch * k`` for top-k).
    """
    run_dir, ckpt = Path(run_dir), Path(ckpt)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} has a checkpoint but no config.yaml; it is not a complete run directory")
    cfg = load_config(str(cfg_path))
    # wherever this runs (a GPU run is often reported on a laptop): best device here, its default precision
    cfg = replace(cfg, train=replace(cfg.train, device="auto", precision="auto", compile=False))
    with torch.random.fork_rng(devices=[]):  # the Trainer seeds the global RNG; leave the caller's alone
        trainer = Trainer(cfg, run_dir)
        load_weights(ckpt, trainer.model)
        model = trainer.model.eval()
        amp = autocast_dtype(cfg.train.precision, trainer.device)
        stats, sink = _MeanAccumulator(), _MeanAccumulator()
        for batch in trainer.eval_set:
            batch = batch.to(trainer.device)
            with torch.autocast(trainer.device.type, dtype=amp, enabled=amp is not None):
                out = model(batch.x, domains_BT=batch.domains)
                sink.add(sink_metric.measure(model, batch.x))
            stats.add(out.aux.stats)
    first = trainer.eval_set[0].x
    return {"format": FORMAT, "checkpoint": ckpt.name, "step": _step_of(ckpt), "n_layer": cfg.model.n_layer,
            "batches": len(trainer.eval_set), "tokens_per_batch": first.shape[0] * first.shape[1],
            "stats": stats.means(), "sink": sink.means()}


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-", 1)[1])


class _MeanAccumulator:
    """Per-name mean over the batches in which the name appeared (scalars or fixed-shape tensors)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, Tensor | float]) -> None:
        for k, v in values.items():
            t = v.detach().double().cpu() if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64)
            self.sums[k] = self.sums[k] + t if k in self.sums else t
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float | list]:
        return {k: (s / self.counts[k]).tolist() for k, s in sorted(self.sums.items())}


def per_layer(stats: dict[str, Any], name: str) -> dict[tuple[int, str], Any]:
    """Values of statistic `name` by (layer, scope): ``layer3/ffn/router_entropy`` ->
    ``{(3, "ffn"): value}``; ``layer1/processed`` -> ``{(1, ""): value}``."""
    out = {}
    for key, value in stats.items():
        m = _LAYER_KEY.match(key)
        if m and m.group(3) == name:
            out[(int(m.group(1)), m.group(2) or "")] = value
    return out


def sink_per_layer(sink: dict[str, Any]) -> dict[int, float]:
    """F-Attn (head mean) by layer from `sink_metric.measure` keys (``f_attn/layer{i}``)."""
    prefix = "f_attn/layer"
    return {int(k[len(prefix):]): float(v) for k, v in sink.items() if k.startswith(prefix)}
