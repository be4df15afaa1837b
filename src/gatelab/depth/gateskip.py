"""GateSkip: learned residual gates that decide which tokens skip a branch.

"What Layers When: Learning to Skip Compute in LLMs with Residual Gates" (2025). Per
attention and FFN branch of every block::

    g = σ(W sg(h) + b) ∈ (0,1)^G;   h' = h + g ⊙ f(h);   W ~ N(0, 0.01), b = 5 (gate open)
    L = L_LM + λ · mean(g²)         (mean over every gate value of the model)

Inference (``model.eval()``) keeps, per sequence, the `keep` fraction of tokens with the
highest importance mean_d g (or, as the baseline, random ones) and runs the branch on them
only (gathered); the others ride the residual. Training runs every token softly gated, or,
with the paper's skip ramp (``ramp_to > 0``), already skips the lowest-importance fraction
s(t) = ramp_from + (ramp_to − ramp_from)·min(1, t / ramp_steps) of each sequence at
optimizer step t (paper: 0.5% → 10% over 5k steps), so the model learns to do without
the skipped tokens' updates. The step counter is a buffer advanced by the trainer's
`post_step` hook (saved in checkpoints).
Deviations from the paper: attention in a skipping branch sees the kept tokens only (no
KV copied from the previous layer); the quantile is per sequence (sequence top-k, not
causal), so generation recomputes the sequence (no KV cache) when keep < 1.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import BlockLike, DepthMethod
from .routed import capacity_tokens, keep_mask, record_by_domain, run_selected, topk_tokens


@register("depth", "gateskip")
class GateSkip(DepthMethod):
    """Sigmoid residual gates on every block's two branches (see the module docstring)."""

    @dataclass
    class Config:
        gate: Literal["vector", "scalar"] = "vector"  # g per channel (d outputs) or one per token
        bias_init: float = 5.0  # σ(5) ≈ 0.993: gates start open
        weight_std: float = 0.01
        sparsity: float = 0.01  # λ on mean(g²)
        keep: float = 1.0  # inference budget: fraction of tokens per sequence each branch runs on
        select: Literal["gate", "random"] = "gate"  # inference: skip the lowest-gate tokens, or random ones (baseline)
        ramp_to: float = 0.0  # training skip fraction at the end of the ramp (paper: 0.1); 0 = no ramp
        ramp_from: float = 0.005  # training skip fraction at step 0 (with a ramp)
        ramp_steps: int = 5000  # optimizer steps from ramp_from to ramp_to

        def validate(self) -> None:
            check(self.weight_std > 0, "weight_std", self.weight_std, "must be > 0")
            check(self.sparsity >= 0, "sparsity", self.sparsity, "must be >= 0")
            check(0 < self.keep <= 1, "keep", self.keep, "must be in (0, 1] (1 = run every token)")
            check(0 <= self.ramp_to < 1, "ramp_to", self.ramp_to, "must be in [0, 1) (0 = no training-time skipping)")
            check(0 <= self.ramp_from < 1, "ramp_from", self.ramp_from, "must be in [0, 1)")
            check(self.ramp_steps >= 1, "ramp_steps", self.ramp_steps, "must be >= 1")

    def __init__(self, n_layer: int, d_model: int, cfg: Config | None = None):
        super().__init__(n_layer, d_model)
        self.cfg = cfg = cfg or self.Config()
        self.gate_dim = d_model if cfg.gate == "vector" else 1
        # gates[2l] gates block l's token-mixing branch, gates[2l+1] its channel branch
        self.gates = nn.ModuleList(nn.Linear(d_model, self.gate_dim) for _ in range(2 * n_layer))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    @property
    def supports_cache(self) -> bool:  # the per-sequence top-k has no incremental form
        return self.cfg.keep >= 1

    def post_step(self) -> None:
        """Called by the trainer after each optimizer step: advances the skip ramp."""
        self.steps_done += 1

    def train_skip(self) -> float:
        """Fraction of each sequence's tokens a branch skips in training now (0 without a ramp)."""
        if self.cfg.ramp_to == 0:
            return 0.0
        done = min(1.0, int(self.steps_done) / self.cfg.ramp_steps)
        return self.cfg.ramp_from + (self.cfg.ramp_to - self.cfg.ramp_from) * done

    def init_weights(self, std: float) -> None:
        for gate in self.gates:
            nn.init.normal_(gate.weight, std=self.cfg.weight_std)
            nn.init.constant_(gate.bias, self.cfg.bias_init)

    def forward(self, layer: int, block: BlockLike, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        x_BTD = self._branch(2 * layer, block.mix, x_BTD, ctx, "mixer_gate")
        return self._branch(2 * layer + 1, block.channel, x_BTD, ctx, "ffn_gate")

    def _branch(self, j: int, branch: Callable[[Tensor, ForwardContext], Tensor], x_BTD: Tensor,
                ctx: ForwardContext, name: str) -> Tensor:
        B, T, D = x_BTD.shape
        g_BTG = torch.sigmoid(self.gates[j](x_BTD.detach()))
        gctx = ctx.scoped(name)
        gctx.meter.add_linear("linear", B * T, D, self.gate_dim, bias=True)
        keep = self.cfg.keep
        if self.training:
            record_by_domain(gctx, "importance", g_BTG.mean(-1))
            gctx.aux.add_loss("sparsity", self.cfg.sparsity * g_BTG.pow(2).mean() / len(self.gates))
            keep = 1.0 - self.train_skip()
            if keep >= 1:
                return x_BTD + g_BTG * branch(x_BTD, ctx)
        select_random = self.cfg.select == "random" and not self.training
        importance_BT = torch.rand_like(g_BTG[..., 0]) if select_random else g_BTG.mean(-1)
        idx_BK = topk_tokens(importance_BT, capacity_tokens(T, keep))
        record_by_domain(gctx, "processed", keep_mask(idx_BK, T))
        return run_selected(lambda sel_BKD: branch(sel_BKD, ctx), x_BTD, idx_BK, g_BTG)
