"""Router losses (all computed in fp32 from a `RoutingDecision`).

* Switch load-balance loss (Fedus et al. 2021, eq. 4-6), gatelab convention (METHODS 2.4):
  L = N * sum_i f_i P_i, f_i = assignments to slot i / all assignments (no gradient),
  P_i = mean_t p_{t,i}, N = scored slots (real + null experts). Perfect balance gives
  exactly 1 for any k (with k fixed, f_i = count_i / (k T) as in Switch/DeepSeek). The
  MoE layer multiplies by its coefficient, and the model's total takes the mean over MoE
  layers, so a balanced model adds 1 x alpha whatever its depth (`gatelab.moe.layer`).
  f is counted per forward (micro-batch); under gradient accumulation the trainer's
  1 / grad_accum makes the step's loss the mean over micro-batches.
* Null experts (AdaMoE, Zeng et al. 2024) are pooled: the null copies enter as one group,
  N * (F_null P_null / n_null) with F_null, P_null the summed null fractions and
  probabilities, i.e. every null copy replaced by the copies' mean. The loss then sets
  the share of null use (minimum 1 when each real expert and the average null copy get
  1/N) but not how it is split among identical null copies; with uniform null use it
  equals the unpooled loss. (The released AdaMoE code marks a "modified" null term that
  computes the same per-copy fractions as before, i.e. no pooling.)
* Router z-loss (Zoph et al. 2022, ST-MoE eq. 5): mean_t (logsumexp_j z_{t,j})^2.
* Router entropy: mean_t -sum_i p_{t,i} log p_{t,i} (top-p regulariser, Huang et al. 2024).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .decision import RoutingDecision


def load_balance_loss(decision: RoutingDecision) -> Tensor:
    """Switch loss N * sum_i f_i P_i (1 at perfect balance), null slots pooled into one group;
    gradient flows through P only."""
    if decision.probs_TE is None:
        raise ValueError("load_balance_loss needs router probabilities; this router has none (hash/random)")
    E = decision.n_experts
    counts_N = decision.counts().float()
    f_N = counts_N / counts_N.sum().clamp_min(1)
    P_N = decision.probs_TE.float().mean(0)
    loss = (f_N[:E] * P_N[:E]).sum()
    if decision.n_null:
        loss = loss + f_N[E:].sum() * P_N[E:].sum() / decision.n_null
    return decision.n_slots * loss


def z_loss(logits_TE: Tensor) -> Tensor:
    """ST-MoE router z-loss mean_t logsumexp(z_t)^2."""
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()


def router_entropy(probs_TE: Tensor) -> Tensor:
    """Mean per-token entropy of the router distribution (nats)."""
    p_TE = probs_TE.float()
    return -(p_TE * torch.log(p_TE.clamp_min(1e-30))).sum(-1).mean()
