"""Routing statistics: cheap device tensors, no host synchronisation.

Names (logged by the trainer as ``layer{i}/ffn/{name}``):
tokens_per_expert (E,), load_cv (std/mean of real-expert loads), max_vio
(max load / mean load - 1, DeepSeek "MaxVio"), experts_per_token (mean real experts per
token), experts_per_token_hist (fraction of tokens using 0..E real experts), null_frac
(fraction of assignments to null experts), router_entropy, router_lse (mean logsumexp of
the logits, logged even when the z-loss is off), domain_mi (mutual information in nats
between the chosen expert and the token's domain label, over assignments).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .balancing import router_entropy
from .decision import RoutingDecision

#: domain labels >= this are pooled into the last bin of the mutual-information table
MAX_DOMAINS = 64


def routing_stats(decision: RoutingDecision, domains_T: Tensor | None = None) -> dict[str, Tensor]:
    """Statistics of one decision (before any capacity dropping)."""
    E = decision.n_experts
    load_E = decision.counts(E).float()
    mean = load_E.mean().clamp_min(1e-9)
    per_token_T = decision.experts_per_token()
    hist = torch.zeros(E + 1, device=per_token_T.device).index_add_(
        0, per_token_T.clamp_max(E), torch.ones_like(per_token_T, dtype=torch.float))
    out = {
        "tokens_per_expert": load_E,
        "load_cv": load_E.std(unbiased=False) / mean,
        "max_vio": load_E.max() / mean - 1,
        "experts_per_token": per_token_T.float().mean(),
        "experts_per_token_hist": hist / max(decision.n_tokens, 1),
    }
    if decision.n_null:
        n_assign = max(decision.expert_idx_A.numel(), 1)
        out["null_frac"] = (decision.expert_idx_A >= E).sum().float() / n_assign
    if decision.probs_TE is not None:
        out["router_entropy"] = router_entropy(decision.probs_TE)
    if decision.logits_TE is not None:
        out["router_lse"] = torch.logsumexp(decision.logits_TE.float(), -1).mean()
    if domains_T is not None:
        out["domain_mi"] = expert_domain_mi(decision, domains_T)
    return out


def expert_domain_mi(decision: RoutingDecision, domains_T: Tensor) -> Tensor:
    """I(expert; domain) in nats over real assignments: sum p(e,d) log p(e,d) / (p(e) p(d))."""
    real = decision.real()
    E, M = real.n_experts, MAX_DOMAINS
    dom_A = domains_T.reshape(-1)[real.token_idx_A].long().clamp(0, M - 1)
    joint = torch.zeros(E * M, device=dom_A.device).index_add_(
        0, real.expert_idx_A * M + dom_A, torch.ones_like(dom_A, dtype=torch.float))
    p_EM = (joint / joint.sum().clamp_min(1)).view(E, M)
    outer_EM = p_EM.sum(1, keepdim=True) * p_EM.sum(0, keepdim=True)
    ratio_EM = torch.where(p_EM > 0, p_EM / outer_EM.clamp_min(1e-30), torch.ones_like(p_EM))
    return (p_EM * torch.log(ratio_EM)).sum()
