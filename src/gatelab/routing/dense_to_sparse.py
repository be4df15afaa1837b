"""EvoMoE dense-to-sparse gate (Nie et al. 2021, "EvoMoE: An Evolutional Mixture-of-Experts
Training Framework via Dense-To-Sparse Gate", section 3.2).

G = softmax((z + g) / tau), g ~ Gumbel(0, 1) in training; tau is annealed linearly from
``tau_start`` (~2: nearly dense) to ``tau_end`` (~0.3: nearly top-1) over ``anneal_steps``
optimizer steps (counted by `post_step`, stored in a checkpointed buffer), and experts
whose weight is below ``threshold`` are not computed. Each token keeps at least its
best expert, so the count per token is data- and schedule-dependent (dense early: the
compute meter counts the dense early phase). k is not used. Evaluation drops the noise.
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


@register("router", "dense_to_sparse")
class DenseToSparseRouter(Router):
    """Gumbel-softmax gate with annealed temperature and a weight threshold (EvoMoE DTS)."""

    @dataclass
    class Config(RouterConfig):
        tau_start: float = 2.0
        tau_end: float = 0.3
        anneal_steps: int = 1000
        threshold: float = 1e-3
        gumbel: bool = True

        def validate(self) -> None:
            super().validate()
            check(self.tau_start > 0, "tau_start", self.tau_start, "must be > 0")
            check(self.tau_end > 0, "tau_end", self.tau_end, "must be > 0")
            check(self.anneal_steps >= 1, "anneal_steps", self.anneal_steps, "must be >= 1")
            check(0 <= self.threshold < 1, "threshold", self.threshold, "must be in [0, 1)")

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        cfg = cfg or self.Config()
        super().__init__(d_model, n_experts, k, cfg)
        self.cfg = cfg
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def temperature(self) -> Tensor:
        frac = (self.step.float() / self.cfg.anneal_steps).clamp(max=1.0)
        return self.cfg.tau_start + frac * (self.cfg.tau_end - self.cfg.tau_start)

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        logits_TE = self.logits(x_TD)
        z_TE = logits_TE
        if self.training and self.cfg.gumbel:
            u_TE = torch.rand_like(z_TE).clamp(1e-9, 1 - 1e-9)
            z_TE = z_TE - torch.log(-torch.log(u_TE))
        gate_TE = torch.softmax(z_TE / self.temperature().to(z_TE.dtype), dim=-1)
        keep_TE = gate_TE >= self.cfg.threshold
        keep_TE |= gate_TE == gate_TE.max(-1, keepdim=True).values
        token_A, expert_A = keep_TE.nonzero(as_tuple=True)
        return RoutingDecision(token_A, expert_A, gate_TE[token_A, expert_A], x_TD.shape[0], self.n_experts, 0,
                               torch.softmax(logits_TE, dim=-1), logits_TE)

    @torch.no_grad()
    def post_step(self) -> None:
        self.step += 1
