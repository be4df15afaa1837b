"""Shared router parts: fp32 gate projection, top-k selection into a `RoutingDecision`.

Every learned router scores experts with ``logits_TE = x_TD W^T`` computed in fp32
(float64 when the model runs in float64, for exact tests)
(METHODS 2.0: low-precision ties change top-k membership), whatever the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from .decision import RoutingDecision, from_topk


@dataclass
class RouterConfig:
    """Options common to learned routers."""

    init_scale: float = 0.1  # router init std = init_scale * model init std (Switch: 0.1)

    def validate(self) -> None:
        check(self.init_scale >= 0, "init_scale", self.init_scale, "must be >= 0")


class Router(nn.Module):
    """Base of learned routers: a bias-free (n_slots, d_model) gate applied in fp32.

    Subclasses implement `forward(x_TD, ctx) -> RoutingDecision`. `n_slots` is the
    number of scored experts (real plus null).
    """

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: RouterConfig, n_null: int = 0):
        super().__init__()
        self.n_experts, self.k, self.n_null = n_experts, k, n_null
        self.init_scale = cfg.init_scale
        self.weight = nn.Parameter(torch.empty(n_experts + n_null, d_model))
        nn.init.normal_(self.weight, std=0.02 * cfg.init_scale)

    @property
    def n_slots(self) -> int:
        return self.n_experts + self.n_null

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.weight, std=std * self.init_scale)

    def logits(self, x_TD: Tensor) -> Tensor:
        """(T, n_slots) router logits in fp32 (float64 for float64 inputs), autocast disabled."""
        dtype = torch.promote_types(x_TD.dtype, torch.float32)
        with torch.autocast(x_TD.device.type, enabled=False):
            return F.linear(x_TD.to(dtype), self.weight.to(dtype))

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:  # pragma: no cover - abstract
        raise NotImplementedError


def renorm_real(w_TK: Tensor, expert_TK: Tensor, n_experts: int, eps: float = 1e-20) -> Tensor:
    """Renormalise weights over the selected *real* experts (AdaMoE); null entries get 0.

    A token whose selection is all-null gets all-zero weights (0/eps), not NaN.
    """
    w_TK = w_TK * (expert_TK < n_experts)
    return w_TK / (w_TK.sum(-1, keepdim=True) + eps)


def topk_decision(probs_TE: Tensor, select_TE: Tensor, k: int, n_experts: int, *, renorm: bool,
                  logits_TE: Tensor | None, n_null: int = 0, scale: float = 1.0) -> RoutingDecision:
    """Top-k of `select_TE`; weights are `probs_TE` at the chosen experts (optionally renormalised
    over the chosen real experts), times `scale`."""
    expert_TK = torch.topk(select_TE, k, dim=-1).indices
    w_TK = probs_TE.gather(1, expert_TK)
    if renorm:
        w_TK = renorm_real(w_TK, expert_TK, n_experts)
    return from_topk(expert_TK, w_TK * scale, n_experts, n_null, probs_TE, logits_TE)
