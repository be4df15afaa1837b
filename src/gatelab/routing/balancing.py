"""Router losses (all computed in fp32 from a `RoutingDecision`).

* Switch load-balance loss (Fedus et al. 2021, eq. 4-6), gatelab convention (METHODS 2.4):
  L = N * sum_i f_i P_i, f_i = assignments to slot i / all assignments (no gradient),
  P_i = mean_t p_{t,i}, N = scored slots (real + null experts). Perfect balance gives
  exactly 1 for any k (with k fixed, f_i = count_i / (k T) as in Switch/DeepSeek); the
  MoE layer multiplies by its coefficient, so a balanced layer adds 1 x alpha.
* Router z-loss (Zoph et al. 2022, ST-MoE eq. 5): mean_t (logsumexp_j z_{t,j})^2.
* Router entropy: mean_t -sum_i p_{t,i} log p_{t,i} (top-p regulariser, Huang et al. 2024).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .decision import RoutingDecision


def load_balance_loss(decision: RoutingDecision) -> Tensor:
    """Switch loss N * sum_i f_i P_i (1 at perfect balance); gradient flows through P only."""
    if decision.probs_TE is None:
        raise ValueError("load_balance_loss needs router probabilities; this router has none (hash/random)")
    counts_N = decision.counts().float()
    f_N = counts_N / counts_N.sum().clamp_min(1)
    P_N = decision.probs_TE.float().mean(0)
    return decision.n_slots * (f_N * P_N).sum()


def z_loss(logits_TE: Tensor) -> Tensor:
    """ST-MoE router z-loss mean_t logsumexp(z_t)^2."""
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()


def router_entropy(probs_TE: Tensor) -> Tensor:
    """Mean per-token entropy of the router distribution (nats)."""
    p_TE = probs_TE.float()
    return -(p_TE * torch.log(p_TE.clamp_min(1e-30))).sum(-1).mean()
