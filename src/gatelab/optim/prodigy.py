"""Prodigy: D-Adaptation with a faster-growing distance estimate (Adam version).

Paper: "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"
(Mishchenko & Defazio, 2023; ICML 2024).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import _check_lr_betas_eps, _check_unit_interval
from .dadapt_adam import _DAdaptBase, _scalar

__all__ = ["Prodigy"]


@register("optimizer", "prodigy")
class Prodigy(_DAdaptBase):
    r"""Prodigy, Adam version (Mishchenko & Defazio, 2023; Algorithm "Prodigy (Adam version)").

    With γ_k = lr (a multiplier; leave at 1), x_0 the initial parameters, β3 = √β2 by
    default, and d_0 = 1e-6::

        m_{k+1} = β1 m_k + (1-β1) d_k g_k
        v_{k+1} = β2 v_k + (1-β2) d_k² g_k²
        r_{k+1} = β3 r_k + γ_k d_k² ⟨g_k, x_0 - x_k⟩
        s_{k+1} = β3 s_k + γ_k d_k² g_k
        d̂_{k+1} = d_coef · r_{k+1} / ‖s_{k+1}‖₁ ;  d_{k+1} = max(d_k, d̂_{k+1})
        x_{k+1} = x_k - γ_k d_k m_{k+1} / (√v_{k+1} + d_k ε)

    The paper's (1-β3) factors on r and s cancel in d̂ and are omitted (as in the official
    code); r and s are kept scaled by 1/d_0 for floating-point range (cancels too). With
    ``growth_rate`` finite, d_{k+1} = min(max_{i<=k+1} d̂_i ∨ d_0, d_k·growth_rate).

    ``d`` lives on device as a 0-d tensor shared by all groups:
    ``optimizer.param_groups[0]["d"]``. Memory: x_0 is stored (one extra copy of the
    parameters) besides m, v, s.

    Defaults (official ``prodigyopt``): lr 1.0, betas (0.9, 0.999), beta3 None (= √β2),
    eps 1e-8, weight_decay 0 decoupled (θ ← θ(1 - λ·d·lr); ``decouple=False`` for L2),
    use_bias_correction False, safeguard_warmup False, d0 1e-6, d_coef 1.0, growth_rate inf.

    Differences from the official code: the step's ε term uses d_k as in the paper (the
    official code uses the freshly updated d_{k+1}); no ``slice_p`` subsampling of x_0;
    reductions stay on device (no ``.item()``).

    Args:
        params, lr, betas, beta3, eps, weight_decay, decouple, d0, d_coef, growth_rate: as above.
        use_bias_correction: multiply d·lr by sqrt(1-β2^k)/(1-β1^k).
        safeguard_warmup: leave lr out of s (avoids overestimating d during lr warm-up).
        maximize: maximise the objective.
        foreach: ``torch._foreach_*`` path; None picks the faster one (loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = math.inf,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        if beta3 is not None:
            _check_unit_interval("beta3", beta3)
        if not d0 > 0:
            raise ValueError(f"Invalid d0: {d0} (must be > 0)")
        if not d_coef > 0:
            raise ValueError(f"Invalid d_coef: {d_coef} (must be > 0)")
        if not growth_rate >= 1.0:
            raise ValueError(f"Invalid growth_rate: {growth_rate} (must be >= 1)")
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps,
                        weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction,
                        safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                        growth_rate=growth_rate, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)
        first = self.param_groups[0]["params"][0]
        d, zero = _scalar(d0, first), _scalar(0.0, first)
        for group in self.param_groups:
            group.update(d=d, d_max=d, d_numerator=zero, k=0)

    def _init_extra_state(self, p: Tensor, state: dict[str, Any], group: Any) -> None:
        state["p0"] = p.detach().clone(memory_format=torch.preserve_format)

    def _accumulate(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    dlr: Tensor, foreach: bool) -> tuple[list[Tensor], list[Tensor]]:
        _, (exp_avgs, exp_avg_sqs, ss) = self._states(params, ("exp_avg", "exp_avg_sq", "s"))
        p0s = [self.state[p]["p0"] for p in params]
        beta1, beta2 = group["betas"]
        d, d0 = group["d"], group["d0"]
        s_coef = (d / d0) * (d if group["safeguard_warmup"] else dlr)
        fn = _multi_tensor_accumulate if foreach else _single_tensor_accumulate
        num, l1 = fn(params, grads, exp_avgs, exp_avg_sqs, ss, p0s, beta1=beta1, beta2=beta2,
                     beta3=_beta3(group), d=d, s_coef=s_coef)
        return [n * ((d / d0) * dlr) for n in num], l1

    def _update_d(self, head: dict[str, Any], numerator: Tensor, l1: Tensor) -> dict[str, Any]:
        d = head["d"]
        d_numerator = _beta3(head) * head["d_numerator"] + numerator
        d_hat = torch.where(l1 > 0, head["d_coef"] * d_numerator / l1, d)
        d_max = torch.maximum(head["d_max"], d_hat)
        return dict(d=torch.minimum(d_max, d * head["growth_rate"]), d_max=d_max,
                    d_numerator=d_numerator)

    def _apply_update(self, group: dict[str, Any], params: list[Tensor], dlr: Tensor,
                      d: Tensor, foreach: bool) -> None:
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        decay = group["weight_decay"] if group["decouple"] else 0.0
        fn = _multi_tensor_apply if foreach else _single_tensor_apply
        fn(params, exp_avgs, exp_avg_sqs, eps_d=d * group["eps"], decay=decay, dlr=dlr)


def _beta3(group: dict[str, Any]) -> float:
    return group["beta3"] if group["beta3"] is not None else math.sqrt(group["betas"][1])


def _single_tensor_accumulate(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], ss: list[Tensor], p0s: list[Tensor],
    *, beta1: float, beta2: float, beta3: float, d: Tensor, s_coef: Tensor,
) -> tuple[list[Tensor], list[Tensor]]:
    """Moment and s updates; returns per-tensor ⟨g, x0 - x⟩ and ‖s‖₁ (new s)."""
    nums, l1s = [], []
    for p, g, m, v, s, p0 in zip(params, grads, exp_avgs, exp_avg_sqs, ss, p0s):
        nums.append(p0.sub(p).mul_(g).sum())
        m.mul_(beta1).add_(g * (d * (1 - beta1)))
        v.mul_(beta2).add_(g.square().mul_(d * d * (1 - beta2)))
        s.mul_(beta3).add_(g * s_coef)
        l1s.append(s.abs().sum())
    return nums, l1s


def _multi_tensor_accumulate(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], ss: list[Tensor], p0s: list[Tensor],
    *, beta1: float, beta2: float, beta3: float, d: Tensor, s_coef: Tensor,
) -> tuple[list[Tensor], list[Tensor]]:
    """`_single_tensor_accumulate` with torch._foreach_* ops."""
    diffs = torch._foreach_sub(p0s, params)
    torch._foreach_mul_(diffs, grads)
    nums = [t.sum() for t in diffs]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, d * (1 - beta1)))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    sq = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(sq, d * d * (1 - beta2))
    torch._foreach_add_(exp_avg_sqs, sq)
    torch._foreach_mul_(ss, beta3)
    torch._foreach_add_(ss, torch._foreach_mul(grads, s_coef))
    l1s = [t.sum() for t in torch._foreach_abs(ss)]
    return nums, l1s


def _single_tensor_apply(
    params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    *, eps_d: Tensor, decay: float, dlr: Tensor,
) -> None:
    """θ ← θ(1 - λ·dlr) (decoupled decay), then θ ← θ - dlr · m/(√v + d·ε)."""
    for p, m, v in zip(params, exp_avgs, exp_avg_sqs):
        denom = v.sqrt().add_(eps_d)
        if decay != 0:
            p.mul_(1 - decay * dlr)
        p.sub_(m.div(denom).mul_(dlr))


def _multi_tensor_apply(
    params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    *, eps_d: Tensor, decay: float, dlr: Tensor,
) -> None:
    """`_single_tensor_apply` with torch._foreach_* ops."""
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps_d)
    if decay != 0:
        torch._foreach_mul_(params, 1 - decay * dlr)
    updates = torch._foreach_div(exp_avgs, denoms)
    torch._foreach_mul_(updates, dlr)
    torch._foreach_sub_(params, updates)
