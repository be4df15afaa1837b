"""JEI-DNN-style learned exits: a small gate per layer, trained for expected loss plus compute.

"Jointly-Learned Exit and Inference for a Dynamic Neural Network: JEI-DNN" (2023),
METHODS.md §4.5. After block l < L−1 the shared head gives the exit prediction IM_l; a
gate reads its confidence features and gives an exit probability:

    φ_l = [p_top1, p_top1 − p_top2, 1 − H(p)/log V]   of softmax(head(h_l))
    g_l = σ(MLP_l(φ_l)),   P(exit = l) = g_l Π_{j<l} (1 − g_j),   g_{L−1} = 1

Training: the blocks and the head learn from CALM's weighted exit losses (`exit_loss`;
the trainer's LM loss at the last layer); the gates learn the expected exit loss plus
compute on the same batch,

    L_gate = gate_loss · mean_t Σ_l P(exit = l) · (sg(CE_l) + cost · (l+1)/L),

with the features and CE_l detached, so the gates choose exits given the current
predictors (JEI-DNN's bi-level split, here in one optimizer step rather than
alternating). Inference: a token exits at its first layer with g_l ≥ `threshold`; the
execution, KV filling and accounting are `EarlyExit`'s, with the gate MLPs metered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import Head
from .early_exit import EarlyExit

N_FEATURES = 3


def confidence_features(logits_NV: Tensor) -> Tensor:
    """(N, 3): top-1 probability, top-1 − top-2 margin, 1 − normalised entropy (detached, float32)."""
    p_NV = F.softmax(logits_NV.detach().float(), dim=-1)
    top2_N2 = p_NV.topk(2, dim=-1).values
    entropy_N = -(p_NV * p_NV.clamp_min(1e-30).log()).sum(-1) / math.log(p_NV.shape[-1])
    return torch.stack([top2_N2[:, 0], top2_N2[:, 0] - top2_N2[:, 1], 1 - entropy_N], dim=-1)


@register("depth", "learned_exit")
class LearnedExit(EarlyExit):
    """Per-layer exit gates on the exit head's confidence features (see the module docstring)."""

    @dataclass
    class Config:
        threshold: float = 0.5  # exit when g_l >= threshold (> 1: never exit)
        cost: float = 0.5  # λ: price of running every block, relative to one nat of CE
        gate_loss: float = 1.0  # coefficient of the gates' objective
        exit_loss: float = 1.0  # coefficient of CALM's exit losses for blocks and head (0: none)
        hidden: int = 16  # gate MLP width

        def validate(self) -> None:
            check(self.threshold > 0, "threshold", self.threshold, "must be > 0 (> 1 never exits)")
            check(self.cost >= 0, "cost", self.cost, "must be >= 0")
            check(self.gate_loss > 0, "gate_loss", self.gate_loss, "must be > 0")
            check(self.exit_loss >= 0, "exit_loss", self.exit_loss, "must be >= 0 (0 = no exit losses)")
            check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")

    def __init__(self, n_layer: int, d_model: int, cfg: Config | None = None):
        super().__init__(n_layer, d_model)
        self.cfg = cfg = cfg or self.Config()
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1))
            for _ in range(n_layer - 1))

    def init_weights(self, std: float) -> None:
        for gate in self.gates:  # gates start mostly shut: g ≈ σ(−2) ≈ 0.12
            nn.init.constant_(gate[-1].bias, -2.0)

    def gate_probs(self, layer: int, logits_NV: Tensor, ctx: ForwardContext) -> Tensor:
        """g_l (N,) for exit logits (N, V); the gate MLP's FLOPs go to ctx.meter."""
        gate = self.gates[layer]
        N = logits_NV.shape[0]
        ctx.meter.add_linear("exit_gate", N, N_FEATURES, self.cfg.hidden, bias=True)
        ctx.meter.add_linear("exit_gate", N, self.cfg.hidden, 1, bias=True)
        return torch.sigmoid(gate(confidence_features(logits_NV).to(gate[0].weight.dtype))).squeeze(-1)

    def decide(self, layer: int, h_ND: Tensor, prev_ND: Tensor, head: Head,
               ctx: ForwardContext) -> tuple[Tensor, Tensor | None]:
        head_ctx = ctx.scoped("exit")
        logits_NV = head(h_ND.unsqueeze(0), head_ctx)[0]
        exit_N = self.gate_probs(layer, logits_NV, head_ctx) >= self.cfg.threshold
        return exit_N, logits_NV[exit_N] if exit_N.any() else None

    def wants_exit_logits(self) -> bool:
        return True

    def exit_objective(self, ctx: ForwardContext, exits: list[tuple[Tensor, Tensor]], last_ce_BT: Tensor) -> None:
        L = len(exits) + 1
        survive_BT = torch.ones_like(last_ce_BT)
        objective_BT = torch.zeros_like(last_ce_BT)
        blocks_BT = torch.zeros_like(last_ce_BT)
        for i, (logits_BTV, ce_BT) in enumerate([*exits, (None, last_ce_BT)]):
            if logits_BTV is None:  # the last layer takes every token still running
                p_BT = survive_BT
            else:
                g_BT = self.gate_probs(i, logits_BTV.flatten(0, 1), ctx.for_layer(i).scoped("exit"))
                p_BT = survive_BT * g_BT.view_as(ce_BT).to(ce_BT.dtype)
                survive_BT = survive_BT - p_BT
            objective_BT = objective_BT + p_BT * (ce_BT.detach() + self.cfg.cost * (i + 1) / L)
            blocks_BT = blocks_BT + p_BT.detach() * (i + 1) / L
        ctx.aux.add_loss("exit_gate", self.cfg.gate_loss * objective_BT.mean())
        ctx.aux.add_stat("exit/expected_blocks_run", blocks_BT.mean())
