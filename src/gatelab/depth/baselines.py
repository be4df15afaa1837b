"""Mandatory baselines for adaptive depth (METHODS.md §4.9).

* ``random_skip``: Mixture-of-Depths routing with random scores and output weight 1 —
  the same realised budget (capacity, routed blocks) with an input-independent router.
* ``layer_drop``: static skip of fixed blocks at inference (the model trains dense);
  dropping the middle blocks is the static skip-middle baseline. Compare both with a
  shallower dense model of equal FLOPs (``depth: none`` with fewer layers).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import BlockLike, DepthMethod
from .mod import RoutedLayersConfig, block_update
from .routed import capacity_tokens, keep_mask, record_by_domain, run_selected, topk_tokens


@register("depth", "random_skip")
class RandomSkip(DepthMethod):
    """Routed blocks process a uniformly random ⌈C·T⌉ tokens of each sequence."""

    supports_cache = False
    Config = RoutedLayersConfig

    def __init__(self, n_layer: int, d_model: int, cfg: RoutedLayersConfig | None = None):
        super().__init__(n_layer, d_model)
        self.cfg = cfg or self.Config()

    def forward(self, layer: int, block: BlockLike, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        if not self.cfg.routed(layer):
            return block(x_BTD, ctx)
        B, T, _ = x_BTD.shape
        scores_BT = torch.rand(B, T, device=x_BTD.device)
        idx_BK = topk_tokens(scores_BT, capacity_tokens(T, self.cfg.capacity))
        record_by_domain(ctx, "processed", keep_mask(idx_BK, T))
        return run_selected(block_update(block, ctx), x_BTD, idx_BK, x_BTD.new_ones(B, T, 1))


@register("depth", "layer_drop")
class StaticLayerDrop(DepthMethod):
    """Blocks listed in `layers` run in training and are skipped entirely in eval."""

    @dataclass
    class Config:
        layers: list[int] = field(default_factory=list)

        def check_layers(self, n_layer: int, path: str) -> None:
            for i, layer in enumerate(self.layers):
                check(0 <= layer < n_layer, f"{path}.layers[{i}]", layer, f"must be a block index in [0, {n_layer})")

    def __init__(self, n_layer: int, d_model: int, cfg: Config | None = None):
        super().__init__(n_layer, d_model)
        self.dropped = set((cfg or self.Config()).layers)

    def forward(self, layer: int, block: BlockLike, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        if self.training or layer not in self.dropped:
            return block(x_BTD, ctx)
        ctx.aux.add_stat("processed", 0.0)
        return x_BTD
