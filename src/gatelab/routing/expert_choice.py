"""Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing").

S = softmax(x W^T) over experts; each expert e takes its top-C tokens by S[:, e],
C = ceil(k * T / E) (k plays the role of the paper's capacity factor c), with weight
S[t, e]. A token gets 0..E experts; loads are balanced by construction, no aux loss.

Causality problem: which tokens an expert takes depends on the scores of *all* tokens in
the batch, including later positions of the same sequence, so training outputs leak
future information and autoregressive decoding (one token at a time) cannot reproduce
the training-time routing. Use it for encoders / analysis, or evaluate it with the
batch-level routing stated; do not compare its decoding loss with causal routers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.aux import ForwardContext
from ..core.registry import register
from .base import Router, RouterConfig
from .decision import RoutingDecision


@register("router", "expert_choice")
class ExpertChoiceRouter(Router):
    """Each expert picks its top-C tokens (non-causal; see module docstring)."""

    @dataclass
    class Config(RouterConfig):
        pass

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        super().__init__(d_model, n_experts, k, cfg or self.Config())

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        logits_TE = self.logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        T, E = probs_TE.shape
        cap = min(T, math.ceil(self.k * T / E))
        w_EC, token_EC = torch.topk(probs_TE.t(), cap, dim=-1)
        expert_EC = torch.arange(E, device=x_TD.device).unsqueeze(1).expand(E, cap)
        return RoutingDecision(token_EC.reshape(-1), expert_EC.reshape(-1), w_EC.reshape(-1), T, E, 0,
                               probs_TE, logits_TE)
