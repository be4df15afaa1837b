"""gatelab.routing: routers that map token states x_TD to a `RoutingDecision` (issue 4).

Registered routers (kind ``router``): topk, expert_choice, top_p, sinkhorn, dense_to_sparse,
dselect_k, hash, random.
Each is constructed as ``cls(d_model, n_experts, k, cfg)`` and called as
``router(x_TD, ctx) -> RoutingDecision``.
"""
from . import baselines, dense_to_sparse, dselect_k, expert_choice, sinkhorn, top_p, topk  # noqa: F401  (register routers)
from .balancing import load_balance_loss, router_entropy, z_loss
from .decision import RoutingDecision, apply_capacity, capacity, from_topk
from .stats import routing_stats

__all__ = ["RoutingDecision", "apply_capacity", "capacity", "from_topk", "load_balance_loss", "router_entropy",
           "routing_stats", "z_loss"]
