"""Parameter-free routing baselines: hash routing and a random router.

* Hash (Roller et al. 2021, "Hash Layers For Large Sparse Models"): expert(t) = h(token id),
  a fixed random table per layer (a persistent buffer), weight 1, k = 1. Reads
  ``ctx.token_ids``. A uniform hash balances vocabulary ids, not tokens: on Zipfian text
  loads are skewed; read ``load_cv`` / ``max_vio``.
* Random: k distinct uniformly random experts per token, weight 1/k (training and eval).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .decision import RoutingDecision, from_topk


@register("router", "hash")
class HashRouter(nn.Module):
    """expert = table[token_id mod table_size]; k = 1, weight 1."""

    @dataclass
    class Config:
        table_size: int = 65536  # covers uint16 vocabularies; larger ids wrap

        def validate(self) -> None:
            check(self.table_size >= 1, "table_size", self.table_size, "must be >= 1")

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        super().__init__()
        if k != 1:
            raise ValueError(f"hash routing sends each token to one expert; got k={k}, set k=1")
        cfg = cfg or self.Config()
        self.n_experts, self.k = n_experts, 1
        self.register_buffer("table_V", torch.randint(n_experts, (cfg.table_size,)))

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        if ctx.token_ids is None:
            raise ValueError("hash routing needs ctx.token_ids (ForwardContext(token_ids=...)); "
                             "the gatelab LM passes them")
        ids_T = ctx.token_ids.reshape(-1)
        if ids_T.numel() != x_TD.shape[0]:
            raise ValueError(f"ctx.token_ids has {ids_T.numel()} tokens but x has {x_TD.shape[0]}")
        expert_T1 = self.table_V[ids_T % self.table_V.numel()].unsqueeze(1)
        return from_topk(expert_T1, torch.ones(expert_T1.shape, device=x_TD.device), self.n_experts)


@register("router", "random")
class RandomRouter(nn.Module):
    """k distinct uniformly random experts per token, weights 1/k."""

    @dataclass
    class Config:
        pass

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        super().__init__()
        self.n_experts, self.k = n_experts, k

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        T = x_TD.shape[0]
        expert_TK = torch.rand(T, self.n_experts, device=x_TD.device).topk(self.k, dim=-1).indices
        return from_topk(expert_TK, torch.full(expert_TK.shape, 1.0 / self.k, device=x_TD.device), self.n_experts)
