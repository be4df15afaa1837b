"""AMSGrad as in the original paper (no bias correction), with torch's variant as an option.

Paper: "On the Convergence of Adam and Beyond" (Reddi, Kale & Kumar, ICLR 2018).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import (
    _adam_moments_,
    _advance_steps,
    _BaseOptimizer,
    _check_foreach_fused,
    _check_lr_betas_eps,
    _decayed_grad,
    _foreach_adam_moments_,
    _foreach_decayed_grads,
)

__all__ = ["AMSGrad"]


@register("optimizer", "amsgrad")
class AMSGrad(_BaseOptimizer):
    r"""AMSGrad (Reddi et al., 2018), Algorithm 2 with a constant step size.

    Update (m_0 = v_0 = v̂_0 = 0)::

        m_t = β1 m_{t-1} + (1-β1) g_t
        v_t = β2 v_{t-1} + (1-β2) g_t^2
        v̂_t = max(v̂_{t-1}, v_t)
        θ_t = θ_{t-1} - η m_t / (sqrt(v̂_t) + ε)

    The paper has **no bias correction** (``bias_correction=False``, the default here). Its
    analysis uses α_t = α/√t and a decaying β1t; the experiments and every library use a
    constant η and β1, as here (apply an lr schedule for the α/√t form, e.g. the registered
    ``inverse_sqrt`` schedule).

    ``bias_correction=True`` reproduces ``torch.optim.Adam(amsgrad=True)``: the max is taken
    over the *uncorrected* v, then θ_t = θ_{t-1} - η/(1-β1^t) · m_t / (sqrt(v̂_t)/sqrt(1-β2^t) + ε).
    The two differ most early on: at t = 1 the original's step is (1-β1)/sqrt(1-β2) ≈ 3.2×
    smaller per unit gradient for the defaults (0.1/0.0316 vs 1) — METHODS.md §5.0.

    Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8 (Adam's), weight_decay 0. Weight decay
    is decoupled (θ ← θ(1-ηλ), AdamW style) unless ``decoupled_weight_decay=False`` (L2,
    g ← g + λθ, as torch.optim.Adam).

    Args:
        params, lr, betas, eps, weight_decay: as above.
        bias_correction: torch.optim's bias-corrected variant (see above).
        decoupled_weight_decay, maximize, foreach, fused: as in :class:`AdaBelief`.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
        bias_correction: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        _check_foreach_fused(foreach, fused)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay,
                        bias_correction=bias_correction, maximize=maximize, foreach=foreach,
                        fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        steps, (exp_avgs, exp_avg_sqs, max_sqs) = self._states(params, keys)
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        ts = _advance_steps(steps)
        if group["bias_correction"]:
            step_sizes = [lr / (1 - beta1**t) for t in ts]
            denom_scales = [math.sqrt(1 - beta2**t) for t in ts]
        else:
            step_sizes = [lr] * len(ts)
            denom_scales = [1.0] * len(ts)
        scalars = dict(step_size=step_sizes, denom_scale=denom_scales,
                       decay=[1.0 - lr * wd] * len(ts))
        consts = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=wd,
                      decoupled=group["decoupled_weight_decay"], maximize=group["maximize"])
        tensors = [params, grads, exp_avgs, exp_avg_sqs, max_sqs]
        self._apply(group, _single_tensor_amsgrad, _multi_tensor_amsgrad, tensors, scalars, **consts)


def _single_tensor_amsgrad(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor,
    *,
    step_size: float | Tensor,
    denom_scale: float | Tensor,
    decay: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
) -> None:
    """One parameter's AMSGrad update in place (reference; compiled for fused=True)."""
    grad = _decayed_grad(param, grad, decay=decay, weight_decay=weight_decay,
                         decoupled=decoupled, maximize=maximize)
    _adam_moments_(exp_avg, exp_avg_sq, grad, beta1, beta2)
    max_exp_avg_sq.clamp_(min=exp_avg_sq)  # v̂ = max(v̂, v)
    denom = max_exp_avg_sq.sqrt().div_(denom_scale).add_(eps)
    param.addcdiv_(exp_avg, denom.div_(step_size), value=-1.0)


def _multi_tensor_amsgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    *,
    step_size: list[float],
    denom_scale: list[float],
    decay: list[float],
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
) -> None:
    """The same update with torch._foreach_* ops."""
    grads = _foreach_decayed_grads(params, grads, decay=decay, weight_decay=weight_decay,
                                   decoupled=decoupled, maximize=maximize)
    _foreach_adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
    torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
    denoms = torch._foreach_sqrt(max_exp_avg_sqs)
    torch._foreach_div_(denoms, denom_scale)
    torch._foreach_add_(denoms, eps)
    torch._foreach_div_(denoms, step_size)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-1.0)
