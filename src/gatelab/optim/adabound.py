"""AdaBound and AMSBound: Adam/AMSGrad with step sizes clipped into bounds that tighten to SGD.

Paper: "Adaptive Gradient Methods with Dynamic Bound of Learning Rate"
(Luo, Xiong, Liu & Sun, ICLR 2019).
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
    _check_nonneg,
    _decayed_grad,
    _foreach_adam_moments_,
    _foreach_decayed_grads,
)

__all__ = ["AdaBound", "AMSBound"]


@register("optimizer", "adabound")
class AdaBound(_BaseOptimizer):
    r"""AdaBound / AMSBound (Luo et al., 2019).

    Update (m_0 = v_0 = 0; AMSBound replaces v_t by v̂_t = max(v̂_{t-1}, v_t))::

        m_t = β1 m_{t-1} + (1-β1) g_t ;  v_t = β2 v_{t-1} + (1-β2) g_t^2
        η*  = final_lr · lr / base_lr              # base_lr: the group's lr at construction
        η̂_t = clip(η sqrt(1-β2^t)/((1-β1^t)(sqrt(v_t) + ε)),
                   η*(1 - 1/(γt + 1)),  η*(1 + 1/(γt)))
        θ_t = θ_{t-1} - η̂_t ⊙ m_t

    The bounds converge to η* so the method turns into SGD with lr η*; an outer lr
    scheduler scales η* too (through lr/base_lr), as in the official code.

    Defaults (official): lr 1e-3, betas (0.9, 0.999), final_lr 0.1, gamma 1e-3, eps 1e-8,
    weight_decay 0 as **L2** (g ← g + λθ; the original); pytorch_optimizer decouples it
    (``decoupled_weight_decay=True`` here: θ ← θ(1-ηλ)). Reported worse than Adam on LMs.

    Args:
        params, lr, betas, final_lr, gamma, eps, weight_decay: as above.
        amsbound: use the AMSGrad max of v (AMSBound); None means False here and True
            for the :class:`AMSBound` subclass (registered as "amsbound").
        decoupled_weight_decay, maximize, foreach, fused: as in :class:`AdaBelief`.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsbound: bool | None = None,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        _check_nonneg("final learning rate", final_lr)
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"Invalid gamma parameter: {gamma} (must be in (0, 1))")
        _check_foreach_fused(foreach, fused)
        if amsbound is None:
            amsbound = self._amsbound_default
        defaults = dict(lr=lr, betas=tuple(betas), final_lr=final_lr, gamma=gamma, eps=eps,
                        weight_decay=weight_decay, amsbound=amsbound,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    _amsbound_default = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # base_lr is saved with the group, so a resumed run keeps the same η*.
        self.param_groups[-1].setdefault("base_lr", self.param_groups[-1]["lr"])

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        amsbound = group["amsbound"]
        keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsbound else ())
        steps, state_lists = self._states(params, keys)
        beta1, beta2 = group["betas"]
        lr, wd, gamma = group["lr"], group["weight_decay"], group["gamma"]
        final_lr = group["final_lr"] * lr / group["base_lr"] if group["base_lr"] > 0 else 0.0
        ts = _advance_steps(steps)
        scalars = dict(
            step_size=[lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) for t in ts],
            lower=[final_lr * (1 - 1 / (gamma * t + 1)) for t in ts],
            upper=[final_lr * (1 + 1 / (gamma * t)) for t in ts],
            decay=[1.0 - lr * wd] * len(ts),
        )
        consts = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=wd,
                      decoupled=group["decoupled_weight_decay"], maximize=group["maximize"],
                      amsbound=amsbound)
        tensors = [params, grads, *state_lists]
        self._apply(group, _single_tensor_adabound, _multi_tensor_adabound, tensors, scalars, **consts)


@register("optimizer", "amsbound")
class AMSBound(AdaBound):
    """AMSBound: :class:`AdaBound` whose ``amsbound`` option defaults to True."""

    _amsbound_default = True


def _single_tensor_adabound(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None = None,
    *,
    step_size: float | Tensor,
    lower: float | Tensor,
    upper: float | Tensor,
    decay: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    amsbound: bool,
) -> None:
    """One parameter's AdaBound/AMSBound update in place (reference; compiled for fused)."""
    grad = _decayed_grad(param, grad, decay=decay, weight_decay=weight_decay,
                         decoupled=decoupled, maximize=maximize)
    _adam_moments_(exp_avg, exp_avg_sq, grad, beta1, beta2)
    if amsbound:
        assert max_exp_avg_sq is not None
        max_exp_avg_sq.clamp_(min=exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    eta = second.sqrt().add_(eps).reciprocal_().mul_(step_size)
    eta.clamp_(min=lower, max=upper)
    param.sub_(eta.mul_(exp_avg))


def _multi_tensor_adabound(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None = None,
    *,
    step_size: list[float],
    lower: list[float],
    upper: list[float],
    decay: list[float],
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    amsbound: bool,
) -> None:
    """The same update with torch._foreach_* ops."""
    grads = _foreach_decayed_grads(params, grads, decay=decay, weight_decay=weight_decay,
                                   decoupled=decoupled, maximize=maximize)
    _foreach_adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
    second = exp_avg_sqs
    if amsbound:
        assert max_exp_avg_sqs is not None
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second = max_exp_avg_sqs
    etas = torch._foreach_sqrt(second)
    torch._foreach_add_(etas, eps)
    torch._foreach_reciprocal_(etas)
    torch._foreach_mul_(etas, step_size)
    torch._foreach_clamp_min_(etas, lower)
    torch._foreach_clamp_max_(etas, upper)
    torch._foreach_mul_(etas, exp_avgs)
    torch._foreach_sub_(params, etas)
