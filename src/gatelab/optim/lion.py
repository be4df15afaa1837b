"""Lion: sign momentum ("EvoLved Sign Momentum") found by program search.

Paper: "Symbolic Discovery of Optimization Algorithms" (Chen et al., NeurIPS 2023).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import (
    _BaseOptimizer,
    _check_foreach_fused,
    _check_lr_betas_eps,
    _decayed_grad,
    _foreach_decayed_grads,
)

__all__ = ["Lion"]


@register("optimizer", "lion")
class Lion(_BaseOptimizer):
    r"""Lion (Chen et al., 2023), Program 1.

    Update::

        u_t = sign(β1 m_{t-1} + (1-β1) g_t)
        θ_t = θ_{t-1} - η (u_t + λ θ_{t-1})      # decay applied first: θ ← θ(1 - ηλ)
        m_t = β2 m_{t-1} + (1-β2) g_t

    Every coordinate moves by exactly η per step, so η should be 3–10× smaller than
    AdamW's and λ 3–10× larger (the decay is η·λ: changing η changes the decay).

    Defaults (official, pytorch_optimizer, optax): lr 1e-4, betas (0.9, 0.99),
    weight_decay 0. No step counter or bias correction; one state tensor (m).

    Args:
        params, lr, betas, weight_decay: as above.
        maximize, foreach, fused: as in :class:`AdaBelief`.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        _check_lr_betas_eps(lr, betas, None, weight_decay)
        _check_foreach_fused(foreach, fused)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        steps, (exp_avgs,) = self._states(params, ("exp_avg",))
        for step_t in steps:  # kept for logging / schedules; Lion itself has no t
            step_t += 1
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        scalars = dict(lr=[lr] * len(params), decay=[1.0 - lr * wd] * len(params))
        consts = dict(beta1=beta1, beta2=beta2, weight_decay=wd, maximize=group["maximize"])
        tensors = [params, grads, exp_avgs]
        self._apply(group, _single_tensor_lion, _multi_tensor_lion, tensors, scalars, **consts)


def _single_tensor_lion(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    *,
    lr: float | Tensor,
    decay: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """One parameter's Lion update in place (reference; compiled for fused=True)."""
    grad = _decayed_grad(param, grad, decay=decay, weight_decay=weight_decay, decoupled=True,
                         maximize=maximize)
    update = exp_avg.lerp(grad, 1 - beta1).sign_()
    param.sub_(update.mul_(lr))
    exp_avg.lerp_(grad, 1 - beta2)


def _multi_tensor_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: list[float],
    decay: list[float],
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """The same update with torch._foreach_* ops."""
    grads = _foreach_decayed_grads(params, grads, decay=decay, weight_decay=weight_decay,
                                   decoupled=True, maximize=maximize)
    updates = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
    torch._foreach_sign_(updates)
    torch._foreach_mul_(updates, lr)
    torch._foreach_sub_(params, updates)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)
