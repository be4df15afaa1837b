"""`RoutingDecision`: the one type every router returns and every dispatcher consumes.

A decision is a flat list of A (token, expert, weight) assignments, so top-k, expert
choice, top-p (variable experts per token), null experts and Sinkhorn routing share
one dispatcher (the ScatterMoE / torchtitan shape). Expert ids >= `n_experts` are null
experts (AdaMoE): they have no weights and produce nothing, and dispatch skips them.
Capacity dropping (`apply_capacity`) is a transformation of a decision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class RoutingDecision:
    """Assignments of tokens to experts, plus what the balancing losses need.

    token_idx_A:  (A,) long, row of x_TD of each assignment.
    expert_idx_A: (A,) long, expert of each assignment; >= n_experts means a null expert.
    weight_A:     (A,) fp32 combine weight.
    n_tokens:     T.
    n_experts:    number of real experts E.
    n_null:       number of null experts (ids E .. E + n_null - 1).
    probs_TE:     (T, E + n_null) fp32 router probabilities (for losses, statistics), or None.
    logits_TE:    (T, E + n_null) fp32 router logits (z-loss), or None.
    """

    token_idx_A: Tensor
    expert_idx_A: Tensor
    weight_A: Tensor
    n_tokens: int
    n_experts: int
    n_null: int = 0
    probs_TE: Tensor | None = None
    logits_TE: Tensor | None = None

    @property
    def n_slots(self) -> int:
        """Experts a router scores: real plus null."""
        return self.n_experts + self.n_null

    def subset(self, keep_A: Tensor) -> RoutingDecision:
        """The decision with only the assignments where the (A,) mask `keep_A` is true."""
        return replace(self, token_idx_A=self.token_idx_A[keep_A], expert_idx_A=self.expert_idx_A[keep_A],
                       weight_A=self.weight_A[keep_A])

    def real(self) -> RoutingDecision:
        """The decision without its null-expert assignments (what dispatch computes)."""
        if self.n_null == 0:
            return self
        return self.subset(self.expert_idx_A < self.n_experts)

    def counts(self, n: int | None = None) -> Tensor:
        """(n,) assignments per expert id (default: all slots, nulls included); no host sync."""
        n = self.n_slots if n is None else n
        out = torch.zeros(n, dtype=torch.long, device=self.expert_idx_A.device)
        idx = self.expert_idx_A
        if n < self.n_slots:
            idx = idx[idx < n]
        return out.index_add_(0, idx, torch.ones_like(idx))

    def experts_per_token(self) -> Tensor:
        """(T,) number of real experts each token uses."""
        real = self.real()
        out = torch.zeros(self.n_tokens, dtype=torch.long, device=real.token_idx_A.device)
        return out.index_add_(0, real.token_idx_A, torch.ones_like(real.token_idx_A))


def from_topk(expert_TK: Tensor, weight_TK: Tensor, n_experts: int, n_null: int = 0,
              probs_TE: Tensor | None = None, logits_TE: Tensor | None = None) -> RoutingDecision:
    """A decision from dense (T, K) expert ids and weights (K experts for every token)."""
    T, K = expert_TK.shape
    token_TK = torch.arange(T, device=expert_TK.device).unsqueeze(1).expand(T, K)
    return RoutingDecision(token_TK.reshape(-1), expert_TK.reshape(-1), weight_TK.reshape(-1).to(torch.promote_types(weight_TK.dtype, torch.float32)), T,
                           n_experts, n_null, probs_TE, logits_TE)


def capacity(n_tokens: int, k: float, n_experts: int, capacity_factor: float, min_capacity: int = 0) -> int:
    """Slots per expert, C = ceil(CF * k * T / E) (Switch/GShard), at least `min_capacity`."""
    return max(min_capacity, math.ceil(capacity_factor * k * n_tokens / n_experts))


def apply_capacity(decision: RoutingDecision, cap: int) -> tuple[RoutingDecision, Tensor]:
    """Drop assignments beyond `cap` per real expert, by position (Switch/GShard).

    Within an expert, assignments keep their order in the decision: for top-k routers
    that is flattened (batch, time) order, so later tokens are dropped first, as in
    Switch. Whether a token is dropped depends on the tokens before it in that order,
    including earlier sequences of the batch: evaluate dropless or at a stated capacity.
    A dropped assignment contributes 0; the token rides the residual. Returns the kept decision and the number of dropped real assignments
    (a 0-d tensor, no host sync). Null assignments are removed.
    """
    if cap < 0:
        raise ValueError(f"capacity must be >= 0, got {cap}")
    real = decision.real()
    order_A = torch.argsort(real.expert_idx_A, stable=True)
    expert_sorted_A = real.expert_idx_A[order_A]
    counts_E = real.counts(real.n_experts)
    start_E = torch.cumsum(counts_E, 0) - counts_E
    pos_A = torch.arange(order_A.numel(), device=order_A.device) - start_E[expert_sorted_A]
    keep_A = torch.zeros_like(real.expert_idx_A, dtype=torch.bool)
    keep_A[order_A] = pos_A < cap
    return real.subset(keep_A), (~keep_A).sum()
