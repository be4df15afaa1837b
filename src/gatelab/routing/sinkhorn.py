"""Balanced assignment by Sinkhorn (S-BASE, Clark et al. 2022, "Unified Scaling Laws for
Routed Language Models") and Selective Sinkhorn routing (2025).

Training: find the entropic transport plan Pi = diag(d0) exp(z) diag(d1) with rows
summing to 1/T and columns to 1/E (log-domain iterations until mean |delta log d1| < tol),
choose each token's top-k experts by Pi, and weight them by softmax(z) at the chosen
experts (optionally renormalised). Evaluation: plain top-k of softmax(z). No aux loss
is needed. ``sinkhorn_frac`` < 1 gives Selective Sinkhorn: only that fraction of training
forwards route on Pi, the rest use softmax top-k. (The Selective-Sinkhorn paper forms
gates from Pi; gatelab keeps softmax gates in both modes so the two differ only in
*which* experts are chosen.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import Router, RouterConfig, topk_decision
from .decision import RoutingDecision


@torch.no_grad()
def sinkhorn_log_plan(logits_TE: Tensor, n_iter: int = 50, tol: float = 1e-4) -> Tensor:
    """log Pi (T, E): exp(z) scaled so rows sum to 1/T and columns to 1/E."""
    T, E = logits_TE.shape
    z_TE = logits_TE.float()
    log_d1_E = torch.zeros(E, device=z_TE.device)
    for _ in range(n_iter):
        log_d0_T = -math.log(T) - torch.logsumexp(z_TE + log_d1_E, dim=1)
        new_d1_E = -math.log(E) - torch.logsumexp(z_TE + log_d0_T[:, None], dim=0)
        done = (new_d1_E - log_d1_E).abs().mean() < tol
        log_d1_E = new_d1_E
        if done:
            break
    log_d0_T = -math.log(T) - torch.logsumexp(z_TE + log_d1_E, dim=1)
    return z_TE + log_d0_T[:, None] + log_d1_E


@register("router", "sinkhorn")
class SinkhornRouter(Router):
    """Top-k of the balanced Sinkhorn plan in training, top-k of softmax at evaluation."""

    @dataclass
    class Config(RouterConfig):
        renorm: bool = False
        n_iter: int = 50
        tol: float = 1e-4
        sinkhorn_frac: float = 1.0  # < 1: Selective Sinkhorn

        def validate(self) -> None:
            super().validate()
            check(self.n_iter >= 1, "n_iter", self.n_iter, "must be >= 1")
            check(self.tol > 0, "tol", self.tol, "must be > 0")
            check(0 <= self.sinkhorn_frac <= 1, "sinkhorn_frac", self.sinkhorn_frac, "must be in [0, 1]")

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        cfg = cfg or self.Config()
        super().__init__(d_model, n_experts, k, cfg)
        self.cfg = cfg

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        logits_TE = self.logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        select_TE = probs_TE
        frac = self.cfg.sinkhorn_frac
        if self.training and (frac >= 1 or (frac > 0 and torch.rand(()).item() < frac)):
            select_TE = sinkhorn_log_plan(logits_TE, self.cfg.n_iter, self.cfg.tol)
        return topk_decision(probs_TE, select_TE, self.k, self.n_experts, renorm=self.cfg.renorm,
                             logits_TE=logits_TE)
