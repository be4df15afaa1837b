"""Mixture-of-Depths: expert-choice routing of the top-C tokens of each sequence through a block.

"Mixture-of-Depths: Dynamically allocating compute in transformer-based language models"
(Raposo et al., 2024). In every `every`-th block a router scores each token, r_i = wᵀx_i;
the k = ⌈C·T⌉ highest-scoring tokens of the sequence go through the block, the rest ride
the residual::

    x_i' = x_i + σ(r_i) · (Block(X̃)_i − x̃_i)   for the top-k tokens X̃ (gathered), else x_i

σ(r) is the output weight (the paper multiplies by r itself; the sigmoid keeps the start
at 0.5 instead of 0) and gives the router its gradient. Sequence top-k is not causal, so
for sampling a small predictor MLP on sg(x) is trained with BCE to predict top-k
membership (the paper's auxiliary predictor); in eval with ``sampling: predictor`` a
token runs the block iff the predictor says so (causal; sequences keep different counts
and run one by one). ``sampling: topk`` evaluates with the training rule.

Decoding with a KV cache (eval, predictor sampling): a routed block's cache holds, per
sequence, only the tokens that ran it, packed (`kv_fill.PackedCache`), so a new kept
token attends to the earlier kept ones at the same packed positions as in the full
forward; a skipped token adds nothing to it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import BlockLike, DepthMethod
from .kv_fill import PackedCache
from .routed import capacity_tokens, keep_mask, record_by_domain, run_selected, run_selected_loop, topk_tokens


@dataclass
class RoutedLayersConfig:
    """Which blocks are routed and at what capacity (shared by MoD and its random baseline)."""

    capacity: float = 0.125  # fraction of each sequence's tokens a routed block processes
    every: int = 2  # route blocks every-1, 2·every-1, ... (1 = every block; MoD: every other)

    def validate(self) -> None:
        check(0 < self.capacity <= 1, "capacity", self.capacity, "must be in (0, 1] (1 = every token)")
        check(self.every >= 1, "every", self.every, "must be >= 1 (1 = route every block)")

    def check_layers(self, n_layer: int, path: str) -> None:
        check(self.every <= n_layer, f"{path}.every", self.every,
              f"must be <= n_layer={n_layer}, or no block is routed")

    def routed(self, layer: int) -> bool:
        return layer % self.every == self.every - 1


def block_update(block: BlockLike, ctx: ForwardContext) -> Callable[[Tensor], Tensor]:
    """The block's residual update Block(x) − x as a function of the gathered tokens."""
    return lambda sel_BKD: block(sel_BKD, ctx) - sel_BKD


@register("depth", "mod")
class MixtureOfDepths(DepthMethod):
    """Expert-choice token routing around every `every`-th block (see the module docstring)."""

    @dataclass
    class Config(RoutedLayersConfig):
        sampling: Literal["predictor", "topk"] = "predictor"  # eval routing: causal predictor or sequence top-k
        predictor_coef: float = 0.01  # weight of the predictor's BCE loss (its input is detached)

        def validate(self) -> None:
            super().validate()
            check(self.predictor_coef > 0, "predictor_coef", self.predictor_coef, "must be > 0")

    def __init__(self, n_layer: int, d_model: int, cfg: Config | None = None):
        super().__init__(n_layer, d_model)
        self.cfg = cfg = cfg or self.Config()
        layers = [str(i) for i in range(n_layer) if cfg.routed(i)]
        self.routers = nn.ModuleDict({i: nn.Linear(d_model, 1, bias=False) for i in layers})
        self.hidden = max(1, d_model // 4)
        self.predictors = nn.ModuleDict({
            i: nn.Sequential(nn.Linear(d_model, self.hidden), nn.GELU(), nn.Linear(self.hidden, 1))
            for i in layers} if cfg.sampling == "predictor" else {})

    @property
    def supports_cache(self) -> bool:  # only the causal predictor decides token by token
        return self.cfg.sampling == "predictor" and not self.training

    def wrap_caches(self, caches: list[Any]) -> list[Any]:
        return [PackedCache(c) if str(i) in self.routers else c for i, c in enumerate(caches)]

    def forward(self, layer: int, block: BlockLike, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        if str(layer) not in self.routers:
            return block(x_BTD, ctx)
        B, T, D = x_BTD.shape
        r_BT = self.routers[str(layer)](x_BTD).squeeze(-1)
        ctx.meter.add_linear("router", B * T, D, 1)
        w_BT1 = torch.sigmoid(r_BT).unsqueeze(-1)
        if self.training or self.cfg.sampling == "topk":
            idx_BK = topk_tokens(r_BT, capacity_tokens(T, self.cfg.capacity))
            keep_BT = keep_mask(idx_BK, T)
            if self.training and self.predictors:
                logit_BT = self._predict(layer, x_BTD, ctx)
                bce = F.binary_cross_entropy_with_logits(logit_BT, keep_BT.to(logit_BT.dtype))
                ctx.aux.add_loss("predictor_bce", self.cfg.predictor_coef * bce)
                ctx.aux.add_stat("predictor_acc", ((logit_BT > 0) == keep_BT).float().mean())
            out_BTD = run_selected(block_update(block, ctx), x_BTD, idx_BK, w_BT1)
        elif ctx.cache is None:
            keep_BT = self._predict(layer, x_BTD, ctx) > 0
            out_BTD = run_selected_loop(block_update(block, ctx), x_BTD, keep_BT, w_BT1)
        else:
            keep_BT = self._predict(layer, x_BTD, ctx) > 0
            out_BTD = self._decode(block, x_BTD, keep_BT, w_BT1, ctx)
        record_by_domain(ctx, "processed", keep_BT)
        return out_BTD

    @staticmethod
    def _decode(block: BlockLike, x_BTD: Tensor, keep_BT: Tensor, w_BT1: Tensor, ctx: ForwardContext) -> Tensor:
        """`run_selected_loop` with each sequence's kept tokens appended to its packed cache row."""
        cache: PackedCache = ctx.cache
        rows = []
        for b in range(x_BTD.shape[0]):
            rows.append(run_selected_loop(block_update(block, cache.row_context(ctx, b)), x_BTD[b:b + 1],
                                          keep_BT[b:b + 1], w_BT1[b:b + 1]))
            cache.lengths[b] += int(keep_BT[b].sum())
        return torch.cat(rows)

    def _predict(self, layer: int, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        """Causal top-k membership logits (B, T) from sg(x)."""
        rows, D = x_BTD.shape[0] * x_BTD.shape[1], x_BTD.shape[-1]
        ctx.meter.add_linear("predictor", rows, D, self.hidden, bias=True)
        ctx.meter.add_linear("predictor", rows, self.hidden, 1, bias=True)
        return self.predictors[str(layer)](x_BTD.detach()).squeeze(-1)
