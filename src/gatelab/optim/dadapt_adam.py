"""D-Adaptation Adam: Adam whose step size d is estimated online (lr is a multiplier).

Paper: "Learning-Rate-Free Learning by D-Adaptation" (Defazio & Mishchenko, ICML 2023).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import (
    _BaseOptimizer,
    _check_lr_betas_eps,
    _foreach_decayed_grads,
    _params_with_grads,
)

__all__ = ["DAdaptAdam"]


def _scalar(value: float, like: Tensor) -> Tensor:
    """0-d tensor on `like`'s device: float64, or float32 where float64 is missing (mps)."""
    dtype = torch.float32 if like.device.type == "mps" else torch.float64
    return torch.tensor(value, dtype=dtype, device=like.device)


class _DAdaptBase(_BaseOptimizer):
    """Two-phase step of the D-Adaptation family (D-Adapt Adam, Prodigy): a d estimate
    shared by all groups, kept on device in every group (``group["d"]``); subclasses give
    `_accumulate`, `_update_d` and `_apply_update`."""

    def _accumulate(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    dlr: Tensor, foreach: bool) -> tuple[list[Tensor], list[Tensor]]:
        raise NotImplementedError  # pragma: no cover

    def _update_d(self, head: dict[str, Any], numerator: Tensor, l1: Tensor) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def _apply_update(self, group: dict[str, Any], params: list[Tensor], dlr: Tensor,
                      d: Tensor, foreach: bool) -> None:
        raise NotImplementedError  # pragma: no cover

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step; `closure` re-evaluates the model and returns the loss.

        Two phases over all groups: moments and the d-estimate sums (`_accumulate`), the
        new d (`_update_d`), then the parameter update with the old d (`_apply_update`).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        head = self.param_groups[0]
        beta1, beta2 = head["betas"]
        k, d = head["k"], head["d"]
        bias = 1.0
        if head["use_bias_correction"]:
            bias = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
        active = []
        numerators: list[Tensor] = []
        l1_norms: list[Tensor] = []
        for group in self.param_groups:
            params, grads = _params_with_grads(group)
            if not params or group["lr"] == 0:
                continue
            l2 = 0.0 if group["decouple"] else group["weight_decay"]
            grads = _foreach_decayed_grads(params, grads, decay=(), weight_decay=l2,
                                           decoupled=False, maximize=group["maximize"])
            dlr = d * (group["lr"] * bias)
            foreach = self._use_path(group, params) == "foreach"
            num, l1 = self._accumulate(group, params, grads, dlr, foreach)
            numerators += num
            l1_norms += l1
            active.append((group, params, dlr, foreach))
        if not active:
            return loss
        new = self._update_d(head, torch.stack(numerators).sum(), torch.stack(l1_norms).sum())
        for group, params, dlr, foreach in active:
            self._apply_update(group, params, dlr, d, foreach)
        for group in self.param_groups:
            group.update(new, k=k + 1)
        return loss



@register("optimizer", "dadapt_adam")
class DAdaptAdam(_DAdaptBase):
    r"""D-Adaptation Adam (Defazio & Mishchenko, 2023), as the official ``dadaptation`` v3.

    Per step, with dlr = d·lr (·sqrt(1-β2^k)/(1-β1^k) if ``use_bias_correction``)::

        r ← √β2 r + (1-√β2) dlr ⟨g, s/(√v + ε)⟩          # s and v before this step's update
        m ← β1 m + (1-β1) dlr g ;  v ← β2 v + (1-β2) g²
        s ← √β2 s + (1-√β2) dlr g
        d̂ = r / ((1-√β2) ‖s‖₁) ;  d ← max(d, min(d̂, d·growth_rate))
        θ ← θ - m / (√v + ε)                               # dlr is already inside m

    ``d`` starts at d0 = 1e-6 (slow start while it grows) and never decreases; d̂ can go
    negative, which freezes d (dadaptation #42): log it. **d lives on the parameters'
    device as a 0-d tensor** (no host sync per step) and every group holds the same
    tensor: read it as ``optimizer.param_groups[0]["d"]``.

    Defaults (official): lr 1.0 (a multiplier: leave at 1), betas (0.9, 0.999), eps 1e-8,
    weight_decay 0 as L2 (``decouple=True``: θ ← θ(1 - λ·dlr)), no bias correction,
    d0 1e-6, growth_rate inf.

    Differences from the official code: the official allows groups with different lr
    only if they are 0; here each group's dlr is d·lr_group (the same when all lrs are
    equal), so lr schedules and per-group multipliers both work. Groups with lr 0 are
    skipped entirely (no state update). The numerator sums are reduced in a fixed order
    on device rather than accumulated with ``.item()``.

    Args:
        params, lr, betas, eps, weight_decay, decouple, use_bias_correction, d0,
        growth_rate: as above.
        maximize: maximise the objective.
        foreach: ``torch._foreach_*`` path; None picks the faster one (loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = math.inf,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        if not d0 > 0:
            raise ValueError(f"Invalid d0: {d0} (must be > 0)")
        if not growth_rate >= 1.0:
            raise ValueError(f"Invalid growth_rate: {growth_rate} (must be >= 1)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decouple=decouple, use_bias_correction=use_bias_correction, d0=d0,
                        growth_rate=growth_rate, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)
        first = self.param_groups[0]["params"][0]
        d = _scalar(d0, first)
        r = _scalar(0.0, first)
        for group in self.param_groups:
            group.update(d=d, numerator_weighted=r, k=0)

    def _accumulate(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    dlr: Tensor, foreach: bool) -> tuple[list[Tensor], list[Tensor]]:
        _, (exp_avgs, exp_avg_sqs, ss) = self._states(params, ("exp_avg", "exp_avg_sq", "s"))
        beta1, beta2 = group["betas"]
        fn = _multi_tensor_accumulate if foreach else _single_tensor_accumulate
        num, l1 = fn(grads, exp_avgs, exp_avg_sqs, ss, beta1=beta1, beta2=beta2,
                     eps=group["eps"], dlr=dlr)
        return [n * dlr for n in num], l1

    def _update_d(self, head: dict[str, Any], numerator: Tensor, l1: Tensor) -> dict[str, Any]:
        sqrt_beta2 = math.sqrt(head["betas"][1])
        d = head["d"]
        r = sqrt_beta2 * head["numerator_weighted"] + (1 - sqrt_beta2) * numerator
        d_hat = torch.where(l1 > 0, r / ((1 - sqrt_beta2) * l1), d)
        d_new = torch.maximum(d, torch.minimum(d_hat, d * head["growth_rate"]))
        return dict(d=d_new, numerator_weighted=r)

    def _apply_update(self, group: dict[str, Any], params: list[Tensor], dlr: Tensor,
                      d: Tensor, foreach: bool) -> None:
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        decay = group["weight_decay"] if group["decouple"] else 0.0
        fn = _multi_tensor_apply if foreach else _single_tensor_apply
        fn(params, exp_avgs, exp_avg_sqs, eps=group["eps"], decay=decay, dlr=dlr)


def _single_tensor_accumulate(
    grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], ss: list[Tensor],
    *, beta1: float, beta2: float, eps: float, dlr: Tensor,
) -> tuple[list[Tensor], list[Tensor]]:
    """Moment and s updates; returns per-tensor ⟨g, s/(√v+ε)⟩ (old s, v) and ‖s‖₁ (new s)."""
    sqrt_beta2 = math.sqrt(beta2)
    nums, l1s = [], []
    for g, m, v, s in zip(grads, exp_avgs, exp_avg_sqs, ss):
        denom = v.sqrt().add_(eps)
        nums.append(s.div(denom).mul_(g).sum())
        m.mul_(beta1).add_(g * (dlr * (1 - beta1)))
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        s.mul_(sqrt_beta2).add_(g * (dlr * (1 - sqrt_beta2)))
        l1s.append(s.abs().sum())
    return nums, l1s


def _multi_tensor_accumulate(
    grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], ss: list[Tensor],
    *, beta1: float, beta2: float, eps: float, dlr: Tensor,
) -> tuple[list[Tensor], list[Tensor]]:
    """`_single_tensor_accumulate` with torch._foreach_* ops."""
    sqrt_beta2 = math.sqrt(beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    ratios = torch._foreach_div(ss, denoms)
    torch._foreach_mul_(ratios, grads)
    nums = [t.sum() for t in ratios]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, dlr * (1 - beta1)))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    torch._foreach_mul_(ss, sqrt_beta2)
    torch._foreach_add_(ss, torch._foreach_mul(grads, dlr * (1 - sqrt_beta2)))
    l1s = [t.sum() for t in torch._foreach_abs(ss)]
    return nums, l1s


def _single_tensor_apply(
    params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    *, eps: float, decay: float, dlr: Tensor,
) -> None:
    """θ ← θ(1 - λ·dlr) (decoupled decay, if any), then θ ← θ - m/(√v + ε)."""
    for p, m, v in zip(params, exp_avgs, exp_avg_sqs):
        denom = v.sqrt().add_(eps)
        if decay != 0:
            p.mul_(1 - decay * dlr)
        p.addcdiv_(m, denom, value=-1.0)


def _multi_tensor_apply(
    params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    *, eps: float, decay: float, dlr: Tensor,
) -> None:
    """`_single_tensor_apply` with torch._foreach_* ops."""
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    if decay != 0:
        torch._foreach_mul_(params, 1 - decay * dlr)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-1.0)
