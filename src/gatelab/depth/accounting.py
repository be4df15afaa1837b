"""Compute saved by an adaptive-depth model, from executed work (METHODS.md §7).

    saved = 1 − Σ executed FLOPs (incl. gates, routers, predictors, exit heads, KV fills)
                / FLOPs with every block run for every token

The numerator is the meter of the forward that ran; the denominator is the same model's
forward with its depth method swapped for "none" (every block, every token, no gates).
Early exit saves compute only while decoding with a KV cache, so `decode_stepwise`
measures a sequence fed one token at a time (teacher forcing) through the cache.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .base import Dense


@contextmanager
def dense_depth(model: nn.Module) -> Iterator[nn.Module]:
    """`model` (a gatelab LM) with its depth method temporarily swapped for the dense one."""
    method = model.depth
    model.depth = Dense(method.n_layer, method.d_model)
    try:
        yield model
    finally:
        model.depth = method


@torch.no_grad()
def full_flops(model: nn.Module, idx_BT: Tensor) -> float:
    """Forward FLOPs of `model` (a gatelab LM) on `idx_BT` with every block run for every token."""
    with dense_depth(model):
        return model(idx_BT).meter.total_flops()


def compute_saved(model: nn.Module, idx_BT: Tensor, **forward_kwargs: Any) -> tuple[float, float]:
    """(saved fraction, executed FLOPs) of one forward of `model` in its current mode."""
    with torch.no_grad():
        executed = model(idx_BT, **forward_kwargs).meter.total_flops()
    return 1.0 - executed / full_flops(model, idx_BT), executed


@torch.no_grad()
def decode_stepwise(model: nn.Module, idx_BT: Tensor) -> tuple[Tensor, float, dict[str, float]]:
    """Feed `idx_BT` one token at a time through the model's KV cache (teacher-forced decoding).

    Returns the logits (B, T, V), the executed FLOPs summed over the steps and each
    scalar statistic averaged over the steps (e.g. ``exit/blocks_run``).
    """
    B, T = idx_BT.shape
    caches = model.init_caches(B, T)
    if caches is None:
        raise ValueError(f"{type(model.depth).__name__} (or a mixer) has no KV cache; decode_stepwise needs one")
    logits, flops, stats = [], 0.0, {}
    for t in range(T):
        out = model(idx_BT[:, t:t + 1], caches=caches, pos=t)
        logits.append(out.logits)
        flops += out.meter.total_flops()
        for k, v in out.aux.scalar_stats().items():
            stats[k] = stats.get(k, 0.0) + v / T
    return torch.cat(logits, dim=1), flops, stats


def decode_saved(model: nn.Module, idx_BT: Tensor) -> tuple[float, Tensor, dict[str, float]]:
    """(saved fraction, logits, statistics) of teacher-forced decoding vs the dense model's decoding."""
    logits_BTV, executed, stats = decode_stepwise(model, idx_BT)
    with dense_depth(model):
        _, dense, _ = decode_stepwise(model, idx_BT)
    return 1.0 - executed / dense, logits_BTV, stats
