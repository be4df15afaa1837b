"""Dispatch backends: compute y_TD = sum over assignments a of w_a * expert_{e_a}(x_{t_a}).

All consume only a `RoutingDecision`; null-expert assignments are skipped. The combine
accumulation runs in fp32 (METHODS 2.0) and the output is cast back to x's dtype; the
dropless path multiplies the weight into the expert's hidden activation in x's dtype.

* `dispatch_reference`: the obviously correct per-expert loop (boolean mask per expert).
* `dispatch_dropless`: sort assignments by expert once, gather rows, one grouped matmul
  per projection (`gmm`), un-permute by `index_add`, with a hand-written backward that
  saves little (`_DroplessExperts`). Every assignment is computed whatever the
  imbalance (MegaBlocks / ScatterMoE).
* `dispatch_capacity`: Switch/GShard capacity C = ceil(CF k T / E): `apply_capacity`
  drops overflow assignments (their tokens ride the residual), then dropless dispatch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..routing.decision import RoutingDecision, apply_capacity, capacity
from .experts import Experts, GroupedImpl, gmm, gmm_wgrad


def dispatch_reference(x_TD: Tensor, decision: RoutingDecision, experts: Experts) -> Tensor:
    """Per-expert Python loop (slow, obviously correct)."""
    y_TD = torch.zeros(x_TD.shape, dtype=_acc_dtype(x_TD), device=x_TD.device)
    mine_EA = [decision.expert_idx_A == e for e in range(decision.n_experts)]
    outs = experts.forward_each([x_TD[decision.token_idx_A[mine_A]] for mine_A in mine_EA])
    for mine_A, y_ND in zip(mine_EA, outs):
        w_N1 = decision.weight_A[mine_A].to(y_TD.dtype).unsqueeze(1)
        y_TD.index_add_(0, decision.token_idx_A[mine_A], w_N1 * y_ND.to(y_TD.dtype))
    return y_TD.to(x_TD.dtype)


def dispatch_dropless(x_TD: Tensor, decision: RoutingDecision, experts: Experts,
                      impl: GroupedImpl = "auto") -> Tensor:
    """Sorted grouped matmul over all real assignments; nothing is dropped."""
    real = decision.real()
    order_A = torch.argsort(real.expert_idx_A, stable=True)
    counts_E = real.counts(real.n_experts)
    return _DroplessExperts.apply(x_TD, real.token_idx_A[order_A], real.weight_A[order_A], counts_E,
                                  experts.w_in, experts.w_out, experts, experts.resolve_impl(x_TD, impl))


class _DroplessExperts(torch.autograd.Function):
    """y_TD = sum_a w_a FFN_{e_a}(x_{t_a}) over assignments sorted by expert (ScatterMoE-style).

    The routing metadata (sorted token ids, counts) is computed once and reused in the
    backward. The combine weight is folded into the hidden activation,
    y_a = (w_a act(x_a W_in)) W_out, so d w_a = <act_a, g_a W_out^T> reuses the matmul the
    activation gradient needs anyway. Only x_TD and the pre-activations h_AF are saved
    (the gathered rows x_AD are re-gathered in the backward): activation memory about that
    of a dense FFN with the same active width, not k copies of x.
    """

    @staticmethod
    def forward(ctx, x_TD, token_A, weight_A, counts_E, w_in, w_out, experts, impl):
        x_AD = x_TD[token_A]
        h_AF = gmm(x_AD, w_in, counts_E, impl)
        w_A1 = weight_A.to(x_TD.dtype).unsqueeze(1)
        y_AD = gmm(experts.act(h_AF) * w_A1, w_out, counts_E, impl)
        ctx.save_for_backward(x_TD, token_A, weight_A, counts_E, w_in, w_out, h_AF)
        ctx.experts, ctx.impl = experts, impl
        acc = _acc_dtype(x_TD)
        return torch.zeros(x_TD.shape, dtype=acc, device=x_TD.device).index_add_(0, token_A, y_AD.to(acc)).to(x_TD.dtype)

    @staticmethod
    def backward(ctx, g_TD):
        x_TD, token_A, weight_A, counts_E, w_in, w_out, h_AF = ctx.saved_tensors
        experts, impl = ctx.experts, ctx.impl
        g_AD = g_TD.to(x_TD.dtype)[token_A]
        a_AH = experts.act(h_AF)
        w_A1 = weight_A.to(x_TD.dtype).unsqueeze(1)
        grad_w_out = gmm_wgrad(a_AH * w_A1, g_AD, counts_E, impl)
        g_s_AH = gmm(g_AD, w_out.transpose(1, 2), counts_E, impl)
        grad_weight_A = (g_s_AH * a_AH).sum(1).to(weight_A.dtype)
        g_h_AF = experts.act_backward(h_AF, g_s_AH * w_A1)
        grad_w_in = gmm_wgrad(x_TD[token_A], g_h_AF, counts_E, impl)
        g_x_AD = gmm(g_h_AF, w_in.transpose(1, 2), counts_E, impl)
        grad_x_TD = torch.zeros_like(x_TD).index_add_(0, token_A, g_x_AD)
        return grad_x_TD, None, grad_weight_A, None, grad_w_in, grad_w_out, None, None


def dispatch_capacity(x_TD: Tensor, decision: RoutingDecision, experts: Experts, capacity_factor: float,
                      k: float, impl: GroupedImpl = "auto") -> tuple[Tensor, RoutingDecision, Tensor]:
    """Capacity-limited dispatch; returns (y_TD, kept decision, number of dropped assignments)."""
    cap = capacity(decision.n_tokens, k, decision.n_experts, capacity_factor)
    kept, dropped = apply_capacity(decision, cap)
    return dispatch_dropless(x_TD, kept, experts, impl), kept, dropped


def _acc_dtype(x: Tensor) -> torch.dtype:
    """Combine precision: fp32, or float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
