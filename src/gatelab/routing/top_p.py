"""Top-p (dynamic) routing (Huang et al. 2024, "Harder Tasks Need More Experts: Dynamic
Routing in MoE Models").

Sort P = softmax(W x) descending and keep the smallest prefix whose sum reaches p (the
crossing expert is kept), so each token uses 1..E experts; weights are the raw P_i (no
renormalisation, as in the released code). Pair with the entropy regulariser
(``entropy_coef`` of the MoE layer, paper beta = 1e-4): without it k drifts toward E.
``max_k`` > 0 caps the experts per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import Router, RouterConfig
from .decision import RoutingDecision


@register("router", "top_p")
class TopPRouter(Router):
    """Experts added in probability order until their cumulative probability >= p."""

    @dataclass
    class Config(RouterConfig):
        p: float = 0.4
        max_k: int = 0  # 0: no cap

        def validate(self) -> None:
            super().validate()
            check(0 < self.p <= 1, "p", self.p, "must be in (0, 1]")
            check(self.max_k >= 0, "max_k", self.max_k, "must be >= 0 (0 = no cap)")

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        cfg = cfg or self.Config()
        super().__init__(d_model, n_experts, k, cfg)
        self.p, self.max_k = cfg.p, cfg.max_k

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        logits_TE = self.logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        sorted_TE, order_TE = torch.sort(probs_TE, dim=-1, descending=True)
        before_TE = torch.cumsum(sorted_TE, dim=-1) - sorted_TE  # mass of the better experts
        keep_TE = before_TE < self.p
        keep_TE[:, 0] = True
        if self.max_k > 0:
            keep_TE[:, self.max_k:] = False
        token_A, rank_A = keep_TE.nonzero(as_tuple=True)
        expert_A = order_TE[token_A, rank_A]
        return RoutingDecision(token_A, expert_A, sorted_TE[token_A, rank_A], probs_TE.shape[0],
                               self.n_experts, 0, probs_TE, logits_TE)
