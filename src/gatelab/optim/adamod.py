"""AdaMod: Adam with a momental (exponentially averaged) upper bound on each step size.

Paper: "An Adaptive and Momental Bound Method for Stochastic Learning"
(Ding, Ren, Luo & Sun, 2019).
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
    _check_unit_interval,
    _decayed_grad,
    _foreach_adam_moments_,
    _foreach_decayed_grads,
)

__all__ = ["AdaMod"]


@register("optimizer", "adamod")
class AdaMod(_BaseOptimizer):
    r"""AdaMod (Ding et al., 2019).

    Update (m_0 = v_0 = s_0 = 0)::

        m_t = β1 m_{t-1} + (1-β1) g_t ;  v_t = β2 v_{t-1} + (1-β2) g_t^2
        η_t = η sqrt(1-β2^t)/(1-β1^t) / (sqrt(v_t) + ε)     # Adam's per-coordinate step
        s_t = β3 s_{t-1} + (1-β3) η_t                         # its momental average
        θ_t = θ_{t-1} - min(η_t, s_t) ⊙ m_t

    Because s_0 = 0 the first steps are strongly damped (s_1 = (1-β3)η_1), which removes
    Adam's extreme early step sizes: the paper trains Transformers without warm-up.
    Weight decay is decoupled (θ ← θ(1-ηλ) before the step), as in the official code.

    Defaults: lr 1e-3, betas (0.9, 0.999), beta3 0.999, eps 1e-8, weight_decay 0 (official,
    torch-optimizer). pytorch_optimizer packs them as betas (0.9, 0.99, 0.9999) — METHODS.md §5.1.
    This implementation uses the official ε placement (outside √v, bias correction folded
    into η).

    Args:
        params, lr, betas, beta3, eps, weight_decay: as above.
        maximize, foreach, fused: as in :class:`AdaBelief`.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        _check_unit_interval("beta3", beta3)
        _check_foreach_fused(foreach, fused)
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps,
                        weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        keys = ("exp_avg", "exp_avg_sq", "exp_avg_lr")
        steps, (exp_avgs, exp_avg_sqs, exp_avg_lrs) = self._states(params, keys)
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        ts = _advance_steps(steps)
        scalars = dict(step_size=[lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) for t in ts],
                       decay=[1.0 - lr * wd] * len(ts))
        consts = dict(beta1=beta1, beta2=beta2, beta3=group["beta3"], eps=group["eps"],
                      weight_decay=wd, maximize=group["maximize"])
        tensors = [params, grads, exp_avgs, exp_avg_sqs, exp_avg_lrs]
        self._apply(group, _single_tensor_adamod, _multi_tensor_adamod, tensors, scalars, **consts)


def _single_tensor_adamod(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    exp_avg_lr: Tensor,
    *,
    step_size: float | Tensor,
    decay: float | Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """One parameter's AdaMod update in place (reference; compiled for fused=True)."""
    grad = _decayed_grad(param, grad, decay=decay, weight_decay=weight_decay, decoupled=True,
                         maximize=maximize)
    _adam_moments_(exp_avg, exp_avg_sq, grad, beta1, beta2)
    eta = exp_avg_sq.sqrt().add_(eps).reciprocal_().mul_(step_size)  # η_t per coordinate
    exp_avg_lr.lerp_(eta, 1 - beta3)
    eta.clamp_(max=exp_avg_lr)  # min(η_t, s_t)
    param.sub_(eta.mul_(exp_avg))


def _multi_tensor_adamod(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_lrs: list[Tensor],
    *,
    step_size: list[float],
    decay: list[float],
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """The same update with torch._foreach_* ops."""
    grads = _foreach_decayed_grads(params, grads, decay=decay, weight_decay=weight_decay,
                                   decoupled=True, maximize=maximize)
    _foreach_adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
    etas = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(etas, eps)
    torch._foreach_reciprocal_(etas)
    torch._foreach_mul_(etas, step_size)
    torch._foreach_lerp_(exp_avg_lrs, etas, 1 - beta3)
    torch._foreach_minimum_(etas, exp_avg_lrs)
    torch._foreach_mul_(etas, exp_avgs)
    torch._foreach_sub_(params, etas)
