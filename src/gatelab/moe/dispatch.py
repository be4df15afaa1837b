"""Dispatch backends: compute y_TD = sum over assignments a of w_a * expert_{e_a}(x_{t_a}).

All consume only a `RoutingDecision`; null-expert assignments are skipped. The combine
accumulation runs in fp32 (METHODS 2.0) and the output is cast back to x's dtype; the
dropless path multiplies the weight into the expert's hidden activation in x's dtype.

* `dispatch_reference`: the obviously correct per-expert loop (boolean mask per expert).
* `dispatch_dropless`: sort assignments by expert once (one argsort, no host sync on
  CUDA), then per expert block gather rows (`index_select`), matmul, activation, matmul
  and weighted un-permute (`index_add_`), with a hand-written backward that saves little
  (`_DroplessExperts`); on CUDA one grouped matmul per projection (`gmm`) over all rows.
  Every assignment is computed whatever the imbalance (MegaBlocks / ScatterMoE).
* `dispatch_capacity`: Switch/GShard capacity C = ceil(CF k T / E): `apply_capacity`
  drops overflow assignments (their tokens ride the residual), then dropless dispatch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

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
    w_in, w_out = experts.weights()  # quantised experts: straight-through outside the custom backward
    return _DroplessExperts.apply(experts.inputs(x_TD), real.token_idx_A[order_A], real.weight_A[order_A],
                                  counts_E, w_in, w_out, experts, experts.resolve_impl(x_TD, impl))


class _DroplessExperts(torch.autograd.Function):
    """y_TD = sum_a w_a FFN_{e_a}(x_{t_a}) over assignments sorted by expert (ScatterMoE-style).

    The routing metadata (sorted token ids, counts) is computed once and reused in the
    backward. The combine weight is folded into the hidden activation,
    y_a = (w_a act(x_a W_in)) W_out, so d w_a = <act_a, g_a W_out^T> reuses the matmul the
    activation gradient needs anyway. Only x_TD and the pre-activations h_AF are saved
    (the gathered rows are re-gathered in the backward): activation memory about that of
    a dense FFN with the same active width, not k copies of x.

    ``grouped_mm`` runs each step once over all A rows. ``loop`` runs gather -> matmul ->
    activation -> matmul -> weighted `index_add` one expert at a time, so the per-assignment
    (rows, d_model) copies are one expert's block, which stays in cache, instead of A rows
    written and re-read from memory: on CPU this is what makes fine-grained experts
    (k = 8 copies of each token) cheap.

    Quantised experts: x_TD, w_in, w_out arrive already quantised (`Experts.inputs` /
    `weights`, straight-through outside this function) and `experts.down_input` quantises
    act(h) per row before W_out, in the forward and wherever the backward uses it (d W_out
    and d w_a use the quantised hidden); its gradient is the identity, so `act_backward` holds.
    """

    @staticmethod
    def forward(ctx, x_TD, token_A, weight_A, counts_E, w_in, w_out, experts, impl):
        acc = _acc_dtype(x_TD)
        y_TD = torch.zeros(x_TD.shape, dtype=acc, device=x_TD.device)
        h_parts = []
        for b in _blocks(token_A, weight_A.to(x_TD.dtype), counts_E, w_in, w_out, impl):
            h_NF = b.mm(x_TD.index_select(0, b.token_N), b.w_in)
            y_TD.index_add_(0, b.token_N, b.mm(experts.down_input(h_NF) * b.w_N1, b.w_out).to(acc))
            h_parts.append(h_NF)
        ctx.save_for_backward(x_TD, token_A, weight_A, counts_E, w_in, w_out, *h_parts)
        ctx.experts, ctx.impl = experts, impl
        return y_TD.to(x_TD.dtype)

    @staticmethod
    def backward(ctx, g_TD):
        x_TD, token_A, weight_A, counts_E, w_in, w_out, *h_parts = ctx.saved_tensors
        experts = ctx.experts
        g_TD = g_TD.to(x_TD.dtype)
        grad_x_TD = torch.zeros_like(x_TD)
        grad_w_in, grad_w_out = torch.zeros_like(w_in), torch.zeros_like(w_out)
        grad_weight_parts = []
        blocks = _blocks(token_A, weight_A.to(x_TD.dtype), counts_E, w_in, w_out, ctx.impl)
        for b, h_NF in zip(blocks, h_parts):
            g_ND = g_TD.index_select(0, b.token_N)
            a_NH = experts.down_input(h_NF)
            g_s_NH = b.mm(g_ND, b.w_out.transpose(-1, -2))
            grad_weight_parts.append((g_s_NH * a_NH).sum(1))
            g_h_NF = experts.act_backward(h_NF, g_s_NH * b.w_N1)
            grad_w_out[b.experts] = b.wgrad(a_NH * b.w_N1, g_ND)
            grad_w_in[b.experts] = b.wgrad(x_TD.index_select(0, b.token_N), g_h_NF)
            grad_x_TD.index_add_(0, b.token_N, b.mm(g_h_NF, b.w_in.transpose(-1, -2)))
        grad_weight_A = torch.cat(grad_weight_parts + [weight_A.new_zeros(0)]).to(weight_A.dtype)
        return grad_x_TD, None, grad_weight_A, None, grad_w_in, grad_w_out, None, None


class _Block(NamedTuple):
    """One step of the dropless kernel: rows `token_N` (combine weights w_N1) through
    W_in (D, F) and W_out (H, D) of one expert, or the (E, ...) stacks for grouped_mm."""

    token_N: Tensor
    w_N1: Tensor
    w_in: Tensor
    w_out: Tensor
    mm: Callable[[Tensor, Tensor], Tensor]  # rows @ weight
    wgrad: Callable[[Tensor, Tensor], Tensor]  # a^T b over the rows: the weight gradient
    experts: int | slice  # where that weight gradient goes in the (E, ...) stack


def _blocks(token_A: Tensor, weight_A: Tensor, counts_E: Tensor, w_in: Tensor, w_out: Tensor,
            impl: GroupedImpl) -> list[_Block]:
    """One block of all rows for ``grouped_mm``; one per non-empty expert for ``loop``."""
    w_A1 = weight_A.unsqueeze(1)
    if impl == "grouped_mm":
        return [_Block(token_A, w_A1, w_in, w_out, lambda a, b: gmm(a, b, counts_E),
                       lambda a, b: gmm_wgrad(a, b, counts_E), slice(None))]
    sizes = counts_E.tolist()
    return [_Block(tok_N, w_N1, w_in[e], w_out[e], torch.mm, lambda a, b: a.t() @ b, e)
            for e, (n, tok_N, w_N1) in enumerate(zip(sizes, token_A.split(sizes), w_A1.split(sizes))) if n > 0]


def dispatch_capacity(x_TD: Tensor, decision: RoutingDecision, experts: Experts, capacity_factor: float,
                      k: float, impl: GroupedImpl = "auto") -> tuple[Tensor, RoutingDecision, Tensor]:
    """Capacity-limited dispatch; returns (y_TD, kept decision, number of dropped assignments)."""
    cap = capacity(decision.n_tokens, k, decision.n_experts, capacity_factor)
    kept, dropped = apply_capacity(decision, cap)
    return dispatch_dropless(x_TD, kept, experts, impl), kept, dropped


def _acc_dtype(x: Tensor) -> torch.dtype:
    """Combine precision: fp32, or float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
