"""AdaBelief: Adam whose second moment tracks the belief (g - m)^2 instead of g^2.

Paper: "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients"
(Zhuang et al., NeurIPS 2020).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import (
    _advance_steps,
    _BaseOptimizer,
    _check_foreach_fused,
    _check_lr_betas_eps,
    _decayed_grad,
    _foreach_decayed_grads,
    _run_fused,
    _run_single,
)

__all__ = ["AdaBelief"]


@register("optimizer", "adabelief")
class AdaBelief(_BaseOptimizer):
    r"""AdaBelief (Zhuang et al., 2020).

    Update for step t (per coordinate; m_0 = s_0 = 0)::

        m_t = β1 m_{t-1} + (1-β1) g_t
        s_t = β2 s_{t-1} + (1-β2) (g_t - m_t)^2 + ε          # ε added to s every step
        θ_t = θ_{t-1} - η (m_t / (1-β1^t)) / (sqrt(s_t / (1-β2^t)) + ε)

    With ``rectify=True`` (the official package's default) the RAdam rectification is
    applied: with ρ∞ = 2/(1-β2) - 1, ρ_t = ρ∞ - 2tβ2^t/(1-β2^t) and
    r_t = sqrt((ρ_t-4)(ρ_t-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρ_t)), steps with ρ_t >= 5 use
    θ_t = θ_{t-1} - η r_t sqrt(1-β2^t)/(1-β1^t) · m_t/(sqrt(s_t) + ε) and earlier steps
    (the first five for β2 = 0.999) are SGD-with-momentum steps θ_t = θ_{t-1} - η m_t/(1-β1^t)
    (``degenerated_to_sgd=True``; with False they are skipped).

    Weight decay: decoupled θ ← θ(1 - ηλ) before the step (official default,
    ``decoupled_weight_decay=True``), or L2 g ← g + λθ.

    Published defaults (official ``adabelief-pytorch`` 0.2): lr 1e-3, betas (0.9, 0.999),
    **eps 1e-16**, weight_decay 0, decoupled, rectify on.

    Where implementations differ (METHODS.md §5.1):
      * eps 1e-16 (official, pytorch_optimizer, optax) vs 1e-8 (torch-optimizer): a 10^8×
        difference; because ε is added to s every step its steady-state share is
        ε/(1-β2) = 1000ε, so ε = 1e-8 drifts toward SGD. Match ε_AdaBelief ≈ ε_Adam².
      * rectify on (official) vs off (pytorch_optimizer); decoupled (official) vs L2
        (torch-optimizer). Record eps and rectify with every result.
      * this implementation follows the official placement of ε and of √(1-β2^t).

    Args:
        params: parameters or param-group dicts.
        lr, betas, eps, weight_decay: as above.
        decoupled_weight_decay: AdamW-style decay (True) or L2 added to the gradient.
        rectify: RAdam rectification of the adaptive step.
        degenerated_to_sgd: take momentum-SGD steps while the rectification is undefined.
        maximize: maximise the objective.
        foreach: use the ``torch._foreach_*`` path; None picks the faster path for the
            device (the loop on CPU, see ``_functional._get_foreach_default``).
        fused: use the compiled single-tensor update (``torch.compile``; CPU or GPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
        rectify: bool = True,
        degenerated_to_sgd: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        _check_foreach_fused(foreach, fused)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, rectify=rectify,
                        degenerated_to_sgd=degenerated_to_sgd, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        steps, (exp_avgs, exp_avg_vars) = self._states(params, ("exp_avg", "exp_avg_var"))
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        # Per-parameter scalars (steps differ where grads were None on some steps).
        per_param = [_step_scalars(t, lr, beta1, beta2, group["rectify"],
                                   group["degenerated_to_sgd"]) for t in _advance_steps(steps)]
        step_sizes = [x[0] for x in per_param]
        denom_scales = [x[1] for x in per_param]
        adaptive = [x[2] for x in per_param]
        decays = [1.0 - lr * wd] * len(params)
        consts = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=wd,
                      decoupled=group["decoupled_weight_decay"], maximize=group["maximize"])
        path = self._use_path(group, params)
        if path == "foreach":
            _multi_tensor_adabelief(params, grads, exp_avgs, exp_avg_vars, step_sizes,
                                    denom_scales, decays, adaptive, **consts)
            return
        # Loop and fused paths run the same single-tensor update; the adaptive flag picks
        # one of two compiled graphs.
        run = _run_fused if path == "fused" else _run_single
        for flag in (True, False):
            idx = [i for i, a in enumerate(adaptive) if a == flag]
            if idx:
                pick = lambda lst: [lst[i] for i in idx]  # noqa: E731
                run(_single_tensor_adabelief,
                    [pick(x) for x in (params, grads, exp_avgs, exp_avg_vars)],
                    dict(step_size=pick(step_sizes), denom_scale=pick(denom_scales),
                         decay=pick(decays)),
                    adaptive=flag, **consts)


def _step_scalars(
    step: int, lr: float, beta1: float, beta2: float, rectify: bool, degenerate: bool
) -> tuple[float, float, bool]:
    """(step_size, denom_scale, adaptive) for one parameter at `step`.

    adaptive is True for the Adam-like step, False for the momentum-SGD step (step_size 0:
    no step, when the rectification is undefined and degenerated_to_sgd=False).
    """
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    if not rectify:
        return lr / bc1, math.sqrt(bc2), True
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bc2
    if rho_t >= 5.0:
        r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        return lr * r * math.sqrt(bc2) / bc1, 1.0, True
    return (lr / bc1 if degenerate else 0.0), 1.0, False


def _single_tensor_adabelief(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_var: Tensor,
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
    adaptive: bool,
) -> None:
    """One parameter's AdaBelief update, in place (the reference; compiled for fused=True).

    Per-step scalars (step_size, denom_scale, decay) may be Python floats (loop path) or
    0-d tensors (compiled path); they are only used as the `other` operand of mul/div.
    """
    grad = _decayed_grad(param, grad, decay=decay, weight_decay=weight_decay,
                         decoupled=decoupled, maximize=maximize)
    exp_avg.lerp_(grad, 1 - beta1)
    diff = grad - exp_avg
    exp_avg_var.mul_(beta2).addcmul_(diff, diff, value=1 - beta2).add_(eps)
    if adaptive:
        denom = exp_avg_var.sqrt().div_(denom_scale).add_(eps)
        param.addcdiv_(exp_avg, denom.div_(step_size), value=-1.0)
    else:
        param.sub_(exp_avg.mul(step_size))


def _multi_tensor_adabelief(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    step_sizes: list[float],
    denom_scales: list[float],
    decays: list[float],
    adaptive: list[bool],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
) -> None:
    """The same update with torch._foreach_* ops (op for op as `_single_tensor_adabelief`)."""
    grads = _foreach_decayed_grads(params, grads, decay=decays, weight_decay=weight_decay,
                                   decoupled=decoupled, maximize=maximize)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    diffs = torch._foreach_sub(grads, exp_avgs)
    torch._foreach_mul_(exp_avg_vars, beta2)
    torch._foreach_addcmul_(exp_avg_vars, diffs, diffs, value=1 - beta2)
    torch._foreach_add_(exp_avg_vars, eps)
    ad = [i for i, a in enumerate(adaptive) if a]
    if ad:
        denoms = torch._foreach_sqrt([exp_avg_vars[i] for i in ad])
        torch._foreach_div_(denoms, [denom_scales[i] for i in ad])
        torch._foreach_add_(denoms, eps)
        torch._foreach_div_(denoms, [step_sizes[i] for i in ad])
        torch._foreach_addcdiv_([params[i] for i in ad], [exp_avgs[i] for i in ad], denoms,
                                value=-1.0)
    sgd = [i for i, a in enumerate(adaptive) if not a]
    if sgd:
        updates = torch._foreach_mul([exp_avgs[i] for i in sgd], [step_sizes[i] for i in sgd])
        torch._foreach_sub_([params[i] for i in sgd], updates)
