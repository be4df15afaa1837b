"""Compute saved by an adaptive-depth model, from executed work (METHODS.md §7).

    saved = 1 − Σ executed FLOPs (incl. gates, routers, predictors) / FLOPs with every block run for every token

The numerator is the meter of the forward that ran; the denominator is the same model's
forward with its depth method swapped for "none" (every block, every token, no gates).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Dense


@torch.no_grad()
def full_flops(model: nn.Module, idx_BT: Tensor) -> float:
    """Forward FLOPs of `model` (a gatelab LM) on `idx_BT` with every block run for every token."""
    method = model.depth
    model.depth = Dense(method.n_layer, method.d_model)
    try:
        return model(idx_BT).meter.total_flops()
    finally:
        model.depth = method


def compute_saved(model: nn.Module, idx_BT: Tensor, **forward_kwargs: Any) -> tuple[float, float]:
    """(saved fraction, executed FLOPs) of one forward of `model` in its current mode."""
    with torch.no_grad():
        executed = model(idx_BT, **forward_kwargs).meter.total_flops()
    return 1.0 - executed / full_flops(model, idx_BT), executed
