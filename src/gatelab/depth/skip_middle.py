"""Learned skip-middle gates: tokens skip a contiguous span of middle blocks.

"Learning to Skip the Middle Layers of Transformers" (2025), METHODS.md §4.7. For the
first half of the blocks, i < L/2, a router on the block input h_i accumulates

    m_i = m_{i−1} + ReLU(w_iᵀ h_i + b_i);   g_i = 1 − clamp(m_i, 0, 1)

and block L−1−i reuses g_i, so the gates shrink towards the middle and a token skips
the middle blocks symmetrically. Each branch of block i is gated:
x ← x + g·Attn(norm(x)), x ← x + g·FFN(norm(x)). A token with g = 0 is not computed
in that block (gathered execution, `routed.run_selected_loop`) and is not a key for the
others' attention — the paper's log g key mask at g = 0. Loss: λ·mean(g) over every
gated block and token, pushing gates shut (the router bias starts at 0, so ReLU passes
gradient for about half the tokens from the start).

Deviations from the paper: no post-norm on the branches (gatelab blocks are pre-norm);
the log g key bias for 0 < g < 1 is not applied (partly open tokens are full keys); a
fixed λ instead of the adaptive coefficients on gate mean and variance. The seeds
report that this does not beat a shallower dense model at equal FLOPs (METHODS.md §8
claim 13); `benchmarks/depth.py --skip-middle` runs that comparison.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import BlockLike, DepthMethod, Head, layer_context
from .routed import record_by_domain, run_selected_loop


def gated_block(block: BlockLike, x_BTD: Tensor, g_BT: Tensor, ctx: ForwardContext) -> Tensor:
    """x + g·mix(x), then + g·channel(x), on the tokens with g > 0 only (the others unchanged)."""
    w_BT1 = g_BT.unsqueeze(-1)
    keep_BT = g_BT > 0
    if bool(keep_BT.all()):
        x_BTD = x_BTD + w_BT1 * block.mix(x_BTD, ctx)
        return x_BTD + w_BT1 * block.channel(x_BTD, ctx)
    x_BTD = run_selected_loop(lambda sel: block.mix(sel, ctx), x_BTD, keep_BT, w_BT1)
    return run_selected_loop(lambda sel: block.channel(sel, ctx), x_BTD, keep_BT, w_BT1)


@register("depth", "skip_middle")
class SkipMiddle(DepthMethod):
    """Cumulative ReLU gates over the first half, mirrored onto the second (see the module docstring)."""

    supports_cache = False

    @dataclass
    class Config:
        sparsity: float = 0.01  # λ on the mean gate value
        bias_init: float = 0.0  # router bias b_i
        weight_std: float = 0.02  # router weight init

        def validate(self) -> None:
            check(self.sparsity >= 0, "sparsity", self.sparsity, "must be >= 0")
            check(self.weight_std >= 0, "weight_std", self.weight_std, "must be >= 0")

    def __init__(self, n_layer: int, d_model: int, cfg: Config | None = None):
        super().__init__(n_layer, d_model)
        self.cfg = cfg or self.Config()
        self.routers = nn.ModuleList(nn.Linear(d_model, 1) for _ in range((n_layer + 1) // 2))

    def init_weights(self, std: float) -> None:
        for router in self.routers:
            nn.init.normal_(router.weight, std=self.cfg.weight_std)
            nn.init.constant_(router.bias, self.cfg.bias_init)

    def run(self, blocks: Sequence[BlockLike], x_BTD: Tensor, ctx: ForwardContext, caches: list[Any] | None,
            head: Head) -> Tensor:
        self.check_caches(caches)
        L = len(blocks)
        B, T, D = x_BTD.shape
        m_BT = x_BTD.new_zeros(B, T)
        gates, gate_means = [], []
        for i, block in enumerate(blocks):
            lctx = layer_context(ctx, i, caches)
            if i < len(self.routers):
                m_BT = m_BT + F.relu(self.routers[i](x_BTD).squeeze(-1))
                lctx.meter.add_linear("router", B * T, D, 1, bias=True)
                gates.append(1 - m_BT.clamp(0, 1))
            g_BT = gates[min(i, L - 1 - i)]
            record_by_domain(lctx, "processed", g_BT > 0)
            gate_means.append(g_BT.mean())
            x_BTD = gated_block(block, x_BTD, g_BT, lctx)
        if self.training and self.cfg.sparsity > 0:
            ctx.aux.add_loss("skip_middle/sparsity", self.cfg.sparsity * torch.stack(gate_means).mean())
        return head(x_BTD, ctx)
