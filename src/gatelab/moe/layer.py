"""The mixture-of-experts channel mixer: router + dispatcher + stacked experts
(+ always-on shared experts, DeepSeekMoE).

    y = sum_{(t, e, w) in decision} w * FFN_e(x_t) + FFN_shared(x_t)

Usable alone (``MoELayer(d_model, MoELayer.Config(n_experts=8, k=2))``) or by config as
the channel mixer ``moe`` (``--model.block.ffn.name moe --model.block.ffn.k 2``).

Expert width: the dense FFN width (``hidden``, or ``hidden_mult * d_model`` rounded up to
``multiple_of``) divided by ``granularity`` (fine-grained experts, DeepSeekMoE: m x more
experts of width F/m; raise k by m for equal active compute). ``n_shared`` shared experts
of the same width are fused into one always-on FFN.

Losses (added to ``ctx.aux``, already weighted): ``lb_loss`` = lb_coef x Switch load-balance
loss of this layer (1 x lb_coef at perfect balance); the model's total loss takes the *mean*
of ``lb_loss`` over its MoE layers (``mean_over="moe_lb"``, METHODS 2.4), so lb_coef means the
same at any depth (HF concatenates layers instead, MegaBlocks averages). ``z_loss`` = z_coef x
router z-loss and ``entropy_loss`` = entropy_coef x router entropy (top-p) are per layer and
summed over layers. Routers without probabilities (hash, random) add no balance loss. Under
gradient accumulation each micro-batch's loss is its own (f counted per micro-batch) and the
trainer's 1 / grad_accum averages them. Statistics: see `gatelab.routing.stats`, plus
``dropped_frac`` (capacity backend) and ``shared_share``. The compute meter counts the router
matmul, only the executed (real, kept) expert assignments, and shared experts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import ConfigBase, check, component
from ..core.registry import register
from ..routing.balancing import load_balance_loss, router_entropy, z_loss
from ..routing.decision import RoutingDecision
from ..routing.stats import routing_stats
from .dispatch import dispatch_capacity, dispatch_dropless, dispatch_reference
from .experts import Activation, Experts, GroupedImpl


@dataclass
class MoEConfig(ConfigBase):
    n_experts: int = 8
    k: int = 2
    router: Any = component("router", "topk")
    activation: Activation = "swiglu"
    hidden: int = 0  # dense FFN width; 0: hidden_mult * d_model rounded up to multiple_of
    hidden_mult: float = 8 / 3
    multiple_of: int = 16
    granularity: int = 1  # expert width = dense width / granularity
    n_shared: int = 0
    backend: Literal["dropless", "capacity", "reference"] = "dropless"
    grouped: GroupedImpl = "auto"
    capacity_factor: float = 1.25
    lb_coef: float = 1e-2
    z_coef: float = 1e-3
    entropy_coef: float = 0.0

    def validate(self) -> None:
        check(self.n_experts >= 1, "n_experts", self.n_experts, "must be >= 1")
        n_null = getattr(self.router.options, "n_null", 0)
        slots = f"n_experts ({self.n_experts})" + (f" + router.n_null ({n_null})" if n_null else "")
        check(1 <= self.k <= self.n_experts + n_null, "k", self.k, f"must be in [1, {slots}]")
        if self.router.name == "hash":
            check(self.k == 1, "k", self.k, "hash routing sends each token to one expert: set k=1")
        check(getattr(self.router.options, "second", "always") == "always" or self.k >= 2, "router.second",
              "random", f"needs k >= 2 (got k={self.k}); use router.second=always for k=1")
        check(self.hidden >= 0, "hidden", self.hidden, "must be >= 0 (0 = hidden_mult * d_model)")
        check(self.hidden_mult > 0, "hidden_mult", self.hidden_mult, "must be > 0")
        check(self.multiple_of >= 1, "multiple_of", self.multiple_of, "must be >= 1")
        check(self.granularity >= 1, "granularity", self.granularity, "must be >= 1")
        check(self.n_shared >= 0, "n_shared", self.n_shared, "must be >= 0")
        check(self.capacity_factor > 0, "capacity_factor", self.capacity_factor,
              "must be > 0 (use backend=dropless for no capacity limit)")
        for name in ("lb_coef", "z_coef", "entropy_coef"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")

    def dense_hidden(self, d_model: int) -> int:
        if self.hidden > 0:
            return self.hidden
        h = int(self.hidden_mult * d_model)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    def expert_hidden(self, d_model: int) -> int:
        return self.dense_hidden(d_model) // self.granularity

    def check_dims(self, d_model: int, path: str) -> None:
        dense = self.dense_hidden(d_model)
        check(dense % self.granularity == 0, f"{path}.granularity", self.granularity,
              f"must divide the dense FFN width {dense}")


@register("channel_mixer", "moe")
class MoELayer(nn.Module):
    """Mixture-of-experts FFN (B, T, D) -> (B, T, D); see the module docstring."""

    Config = MoEConfig

    def __init__(self, d_model: int, cfg: MoEConfig | None = None):
        super().__init__()
        cfg = cfg or MoEConfig()
        cfg.check_dims(d_model, "moe")
        self.cfg, self.d_model = cfg, d_model
        self.router = cfg.router.cls(d_model, cfg.n_experts, cfg.k, cfg.router.options)
        hidden = cfg.expert_hidden(d_model)
        self.experts = Experts(cfg.n_experts, d_model, hidden, cfg.activation)
        self.shared = Experts(1, d_model, cfg.n_shared * hidden, cfg.activation) if cfg.n_shared else None
        self.parallel: Any = None  # a gatelab.moe.expert_parallel.MoEParallel under torch.distributed

    def forward(self, x_BTD: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        ctx = ctx if ctx is not None else ForwardContext()
        x_TD = x_BTD.reshape(-1, self.d_model)
        decision = self.router(x_TD, ctx)
        y_TD, executed = self._dispatch(x_TD, decision, ctx)
        if self.shared is not None:
            shared_TD = self.shared.forward_one(0, x_TD)
            ctx.aux.add_stat("shared_share", shared_TD.detach().norm() / (
                shared_TD.detach().norm() + y_TD.detach().norm()).clamp_min(1e-30))
            y_TD = y_TD + shared_TD
        self._record(x_TD, decision, executed, ctx)
        return y_TD.reshape(x_BTD.shape)

    def _dispatch(self, x_TD: Tensor, decision: RoutingDecision, ctx: ForwardContext
                  ) -> tuple[Tensor, RoutingDecision]:
        """Output and the decision actually executed (real, kept assignments)."""
        cfg = self.cfg
        if self.parallel is not None and self.parallel.shard_experts:
            return self.parallel.dispatch(x_TD, decision, self.experts, cfg.backend, cfg.grouped), decision.real()
        if cfg.backend == "reference":
            return dispatch_reference(x_TD, decision, self.experts), decision.real()
        if cfg.backend == "dropless":
            return dispatch_dropless(x_TD, decision, self.experts, cfg.grouped), decision.real()
        y_TD, kept, dropped = dispatch_capacity(x_TD, decision, self.experts, cfg.capacity_factor, cfg.k,
                                                cfg.grouped)
        n_real = (decision.expert_idx_A < decision.n_experts).sum().clamp_min(1)
        ctx.aux.add_stat("dropped_frac", dropped.float() / n_real)
        return y_TD, kept

    def _record(self, x_TD: Tensor, decision: RoutingDecision, executed: RoutingDecision,
                ctx: ForwardContext) -> None:
        """Weighted losses, statistics and executed compute of one forward."""
        cfg = self.cfg
        if decision.probs_TE is not None:
            if cfg.lb_coef > 0:
                lb = load_balance_loss if self.parallel is None else self.parallel.load_balance_loss
                ctx.aux.add_loss("lb_loss", cfg.lb_coef * lb(decision), mean_over="moe_lb")
            if cfg.entropy_coef > 0:
                ctx.aux.add_loss("entropy_loss", cfg.entropy_coef * router_entropy(decision.probs_TE))
        if decision.logits_TE is not None and cfg.z_coef > 0:
            ctx.aux.add_loss("z_loss", cfg.z_coef * z_loss(decision.logits_TE))
        with torch.no_grad():
            stats = routing_stats(decision, ctx.domains)
            if self.parallel is not None:  # expert loads over all ranks
                stats.update(self.parallel.global_load_stats(decision))
            for name, value in stats.items():
                ctx.aux.add_stat(name, value)
        T, D = x_TD.shape
        router_w = getattr(self.router, "weight", None)
        if router_w is not None:
            ctx.meter.add_linear("router", T, D, router_w.shape[0])
        n_exec = executed.expert_idx_A.numel()
        per = self.experts.params_per_expert
        ctx.meter.add("experts", 2 * n_exec * per, n_exec * per)
        if self.shared is not None:
            ctx.meter.add("shared", 2 * T * self.shared.params_per_expert, T * self.shared.params_per_expert)
