"""Top-k gating in all three orderings, noisy / jittered selection, null experts and
aux-loss-free bias balancing.

* ``order=softmax_topk``: p = softmax(z); weights p_i at TopK(p) (Switch, DeepSeekMoE),
  or renormalised over the chosen (``renorm=true``: GShard, Mixtral, Qwen).
* ``order=topk_softmax``: weights softmax(z_K) over the chosen logits (Shazeer 2017);
  the same function as softmax -> top-k -> renorm (METHODS 2.1; tested).
* ``score=sigmoid``: s = sigmoid(z), weights s_i / sum_K s_j (renorm) x ``scale``
  (DeepSeek-V3, scale 2.5); balancing losses use s normalised over experts.
* ``noise=noisy``: H = z + eps * softplus(W_n x), eps ~ N(0, 1) (Shazeer et al. 2017, eq. 3-5),
  training only. ``noise=jitter``: x scaled by U(1 - jitter, 1 + jitter) (Switch), training only.
* ``n_null``: AdaMoE null experts (Zeng et al. 2024): extra zero-compute slots in the top-k;
  weights renormalise over the chosen real experts only.
* ``second=random``: GShard's random routing (Lepikhin et al. 2020, Algorithm 1): in training
  every expert after the first is dispatched only with probability min(1, w / second_threshold),
  w its combine weight (after renormalisation when on); with top-2 renormalised weights and the
  default threshold 0.5 that is GShard's "2 g2 > U(0, 1)" (lucidrains' port uses 0.2,
  METHODS 2.3). Draws use torch's global generator (seed it). A skipped expert is not computed and its weight is not given to the first (GShard).
  Evaluation keeps all k experts (deterministic).
* ``bias_update`` > 0: aux-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert
  bias b is added to the *selection* score only; after each optimizer step
  b <- b + u * sign(mean load - load), then centred (torchtitan).

Caveat: with k = 1 and renormalisation the weight is identically 1, so no task gradient
reaches the router (METHODS 2.1); Switch keeps the raw probability.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import Router, RouterConfig, renorm_real
from .decision import RoutingDecision, from_topk


@register("router", "topk")
class TopKRouter(Router):
    """Top-k router (Switch k=1, GShard/Mixtral k=2, DeepSeek/Qwen fine-grained k=6-8)."""

    @dataclass
    class Config(RouterConfig):
        order: Literal["softmax_topk", "topk_softmax"] = "softmax_topk"
        renorm: bool = False
        score: Literal["softmax", "sigmoid"] = "softmax"
        scale: float = 1.0
        noise: Literal["none", "jitter", "noisy"] = "none"
        jitter: float = 1e-2
        n_null: int = 0
        bias_update: float = 0.0
        second: Literal["always", "random"] = "always"
        second_threshold: float = 0.5

        def validate(self) -> None:
            super().validate()
            check(self.n_null >= 0, "n_null", self.n_null, "must be >= 0")
            check(self.bias_update >= 0, "bias_update", self.bias_update, "must be >= 0 (0 = off)")
            check(0 <= self.jitter < 1, "jitter", self.jitter, "must be in [0, 1)")
            check(self.scale > 0, "scale", self.scale, "must be > 0")
            check(0 < self.second_threshold <= 1, "second_threshold", self.second_threshold, "must be in (0, 1]")
            check(not (self.order == "topk_softmax" and self.score == "sigmoid"), "order", self.order,
                  "topk_softmax needs score=softmax; use score=sigmoid with renorm=true instead")

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        cfg = cfg or self.Config()
        check(cfg.second == "always" or k >= 2, "router.second", cfg.second,
              f"needs k >= 2 (got k={k}); use second=always for k=1")
        super().__init__(d_model, n_experts, k, cfg, n_null=cfg.n_null)
        self.cfg = cfg
        self.w_noise = nn.Parameter(torch.zeros(self.n_slots, d_model)) if cfg.noise == "noisy" else None
        if cfg.bias_update > 0:
            self.register_buffer("bias_E", torch.zeros(self.n_slots))
            self.register_buffer("load_E", torch.zeros(self.n_slots))
        else:
            self.bias_E = None

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        cfg = self.cfg
        if self.training and cfg.noise == "jitter" and cfg.jitter > 0:
            x_TD = x_TD * torch.empty_like(x_TD).uniform_(1 - cfg.jitter, 1 + cfg.jitter)
        logits_TE = self.logits(x_TD)
        select_TE = logits_TE
        if self.training and self.w_noise is not None:
            noise_std_TE = F.softplus(F.linear(x_TD.to(logits_TE.dtype), self.w_noise.to(logits_TE.dtype)))
            select_TE = logits_TE + torch.randn_like(logits_TE) * noise_std_TE
        if cfg.score == "sigmoid":
            scores_TE = torch.sigmoid(select_TE)
            probs_TE = scores_TE / scores_TE.sum(-1, keepdim=True)
        else:
            scores_TE = probs_TE = torch.softmax(select_TE, dim=-1)
        choose_TE = scores_TE if self.bias_E is None else scores_TE + self.bias_E
        expert_TK = torch.topk(choose_TE, self.k, dim=-1).indices
        if cfg.order == "topk_softmax":
            z_TK = select_TE.gather(1, expert_TK)
            w_TK = renorm_real(torch.exp(z_TK - z_TK.max(-1, keepdim=True).values), expert_TK, self.n_experts)
        else:
            w_TK = scores_TE.gather(1, expert_TK)
            if cfg.renorm or cfg.n_null > 0:
                w_TK = renorm_real(w_TK, expert_TK, self.n_experts)
        decision = from_topk(expert_TK, w_TK * cfg.scale, self.n_experts, self.n_null, probs_TE, logits_TE)
        if self.training and cfg.second == "random":
            decision = decision.subset(self._random_second(w_TK.detach()).reshape(-1))
        if self.bias_E is not None and self.training:
            with torch.no_grad():
                self.load_E += decision.counts()
        return decision

    def _random_second(self, w_TK: Tensor) -> Tensor:
        """(T, k) keep mask: the first expert always, each later one w.p. min(1, w / threshold)."""
        keep_TK = torch.rand_like(w_TK) < w_TK / self.cfg.second_threshold
        keep_TK[:, 0] = True
        return keep_TK

    @torch.no_grad()
    def post_step(self) -> None:
        """Aux-loss-free bias update once per optimizer step (DeepSeek-V3):
        b += u * sign(mean(load) - load), centred; loads counted since the last step."""
        if self.bias_E is None:
            return
        delta_E = self.cfg.bias_update * torch.sign(self.load_E.mean() - self.load_E)
        self.bias_E += delta_E - delta_E.mean()
        self.load_E.zero_()
