"""SWATS: start with Adam, switch to SGD with momentum when a projected SGD lr settles.

Paper: "Improving Generalization Performance by Switching from Adam to SGD"
(Keskar & Socher, 2017).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import _BaseOptimizer, _check_lr_betas_eps, _check_nonneg

__all__ = ["SWATS"]


@register("optimizer", "swats")
class SWATS(_BaseOptimizer):
    r"""SWATS (Keskar & Socher, 2017), Algorithm 1.

    Adam phase (k = 1, 2, ...; m_0 = a_0 = λ_0 = 0)::

        m_k = β1 m_{k-1} + (1-β1) g_k ;  a_k = β2 a_{k-1} + (1-β2) g_k²
        p_k = -η sqrt(1-β2^k)/(1-β1^k) · m_k / (sqrt(a_k) + ε)
        θ_k = θ_{k-1} + p_k
        if p_kᵀg_k != 0:
            γ_k = p_kᵀp_k / (-p_kᵀg_k)                 # the SGD lr whose step projects onto p_k
            λ_k = β2 λ_{k-1} + (1-β2) γ_k
            if k > 1 and |λ_k/(1-β2^k) - γ_k| < switch_eps:  switch, Λ = λ_k/(1-β2^k)

    SGD phase: v_k = β1 v_{k-1} + g_k ;  θ_k = θ_{k-1} - (1-β1) Λ v_k.

    The inner products run over **all parameters of a param group** (with one group, the
    whole model: the paper's global switch). Each group switches on its own; after the
    switch a later lr change (a schedule) scales Λ by lr/lr_at_switch. The switch state
    (``phase``, ``sgd_lr``, ``lambda``, ``k``) is stored in the param group, so it is saved in
    ``state_dict``. One host sync (``.item()``) per group per Adam-phase step decides the
    switch.

    Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-9 (the paper's ε for both the Adam
    denominator and the switch test), weight_decay 0 (L2, g ← g + λθ, as the paper's
    experiments; not defined by the algorithm).

    Args:
        params, lr, betas, eps, weight_decay: as above.
        switch_eps: tolerance of the switch test (paper: the same ε, 1e-9).
        maximize: maximise the objective.
        foreach: ``torch._foreach_*`` path; None picks the faster one (loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-9,
        weight_decay: float = 0.0,
        switch_eps: float = 1e-9,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        _check_nonneg("switch_eps", switch_eps)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        switch_eps=switch_eps, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.update(phase="adam", k=0, sgd_lr=0.0, switch_lr=0.0)
            group["lambda"] = 0.0

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        steps, (exp_avgs, exp_avg_sqs, bufs) = self._states(
            params, ("exp_avg", "exp_avg_sq", "momentum_buffer"))
        for step_t in steps:
            step_t += 1
        beta1, beta2 = group["betas"]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        if group["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        foreach = self._use_path(group, params) == "foreach"
        group["k"] += 1
        k = group["k"]
        if group["phase"] == "sgd":
            lr = group["sgd_lr"] * (group["lr"] / group["switch_lr"])
            fn = _multi_tensor_sgd if foreach else _single_tensor_sgd
            fn(params, grads, bufs, lr=lr, beta1=beta1)
            return
        step_size = group["lr"] * math.sqrt(1 - beta2**k) / (1 - beta1**k)
        fn = _multi_tensor_adam_phase if foreach else _single_tensor_adam_phase
        pp, pg = fn(params, grads, exp_avgs, exp_avg_sqs, step_size=step_size, beta1=beta1,
                    beta2=beta2, eps=group["eps"])
        pp, pg = pp.item(), pg.item()
        if pg != 0:
            gamma = pp / -pg
            group["lambda"] = beta2 * group["lambda"] + (1 - beta2) * gamma
            lam_hat = group["lambda"] / (1 - beta2**k)
            if k > 1 and abs(lam_hat - gamma) < group["switch_eps"] and lam_hat > 0:
                group.update(phase="sgd", sgd_lr=lam_hat, switch_lr=group["lr"])


def _single_tensor_adam_phase(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    *, step_size: float, beta1: float, beta2: float, eps: float,
) -> tuple[Tensor, Tensor]:
    """Adam step θ += p; returns (Σ pᵀp, Σ pᵀg) over the group."""
    pps, pgs = [], []
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step = m.div(v.sqrt().add_(eps)).mul_(-step_size)
        pps.append(step.mul(step).sum())
        pgs.append(step.mul(g).sum())
        p.add_(step)
    return torch.stack(pps).sum(), torch.stack(pgs).sum()


def _multi_tensor_adam_phase(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    *, step_size: float, beta1: float, beta2: float, eps: float,
) -> tuple[Tensor, Tensor]:
    """`_single_tensor_adam_phase` with torch._foreach_* ops."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    steps = torch._foreach_div(exp_avgs, denoms)
    torch._foreach_mul_(steps, -step_size)
    pps = [t.sum() for t in torch._foreach_mul(steps, steps)]
    pgs = [t.sum() for t in torch._foreach_mul(steps, grads)]
    torch._foreach_add_(params, steps)
    return torch.stack(pps).sum(), torch.stack(pgs).sum()


def _single_tensor_sgd(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], *, lr: float, beta1: float
) -> None:
    """v ← β1 v + g ; θ ← θ - (1-β1) Λ v."""
    for p, g, buf in zip(params, grads, bufs):
        buf.mul_(beta1).add_(g)
        p.add_(buf, alpha=-(1 - beta1) * lr)


def _multi_tensor_sgd(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], *, lr: float, beta1: float
) -> None:
    """`_single_tensor_sgd` with torch._foreach_* ops."""
    torch._foreach_mul_(bufs, beta1)
    torch._foreach_add_(bufs, grads)
    torch._foreach_add_(params, bufs, alpha=-(1 - beta1) * lr)
