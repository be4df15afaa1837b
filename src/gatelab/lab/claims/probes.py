"""Measurements on a finished run's checkpoint that its training summary does not hold.

A probe returns flat summary entries; the runner merges them into the run's record (under
their own names, so they never shadow the training summary) and caches them in
``claim_probe.json`` next to the run, keyed by the run's finish time.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ...config import load_config
from ...core.errors import CheckpointError
from ...train import Trainer, list_checkpoints
from ...train.checkpoint import load_weights
from ..analysis import run_analysis


def eval_stats(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Every scalar auxiliary statistic averaged over the run's fixed eval batches, as
    ``eval/<name>`` (e.g. ``eval/layer0/ffn/max_vio``), from `gatelab.lab.analysis`."""
    analysis = run_analysis(run_dir)
    if analysis is None:
        raise CheckpointError(f"run {str(run_dir)!r} has no checkpoint to measure")
    return {f"eval/{k}": v for k, v in analysis["stats"].items() if isinstance(v, (int, float))}


@contextmanager
def trained(run_dir: Path) -> Iterator[Trainer]:
    """A Trainer holding the run's newest checkpoint, the caller's RNG state left untouched."""
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if not ckpts:
        raise CheckpointError(f"run {str(run_dir)!r} has no checkpoint to measure")
    with torch.random.fork_rng(devices=[]):
        trainer = Trainer(load_config(str(run_dir / "config.yaml")), run_dir)
        load_weights(ckpts[-1], trainer.model)
        trainer.model.eval()
        yield trainer
