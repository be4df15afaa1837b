"""LARS and TVLARS: layer-wise adaptive rate scaling, and its time-varying variant.

LARS ("Large Batch Training of Convolutional Networks", You, Gitman & Ginsburg, 2017), as
written in METHODS 5.1, per parameter tensor (layer) l::

    lambda_l = eta * ||w_l|| / (||g_l|| + beta ||w_l||)          (trust ratio)
    v_l <- mu v_l + lr * lambda_l * (g_l + beta w_l);   w_l <- w_l - v_l

eta is ``trust_coefficient`` (1e-3 in the paper and pytorch-optimizer; torchlars uses 1e-2),
beta is ``weight_decay`` (coupled, inside the trust ratio), lr the global rate; the velocity
carries lr (a later lr change does not rescale it). When ``||w|| = 0`` or ``||g|| = 0`` the
ratio is 1 (a zero-initialised tensor would otherwise never move): the common implementation
choice. ``exclude_1d=True`` skips the ratio and the weight decay for 0-d/1-d tensors (biases,
norm gains), the SimCLR/BYOL practice; the paper adapts every layer (default False).

TVLARS ("Revisiting LARS for Large Batch Training Generalization of Neural Networks", Do et
al., 2023) replaces warm-up by a time-varying trust coefficient that starts high (exploration
away from sharp minimisers) and decays, sigmoid-like, to the LARS value::

    phi(t) = 1 / (alpha + exp(lmbda * (t - delay))) + gamma_min,     lambda_l = phi(t) ||w|| / (...)

t is the tensor's step count (0 on its first step). Our reading, since the paper's algorithm
box was not available to us: phi takes the place of eta, and its floor gamma_min is LARS's eta
(so TVLARS "gradually transitions to LARS"): here ``trust_coefficient`` is gamma_min. With the
defaults (alpha 1, lmbda 1e-3, delay 0) phi starts at 1/2 + eta and halves its excess every
~700 steps; ``delay`` holds phi near 1/alpha for about that many steps first.
Still unconfirmed: only the paper's abstract was reachable. The authors' research code
(github.com/KhoiDOO/tvlars, ``opt/tvlars.py``, versions read 2026-11-23) disagrees with this
reading and with itself: it multiplies eta by the factor, ratio = eta ||w|| / ||g + beta w|| /
(alpha + exp(lmbda (t + 1))) with alpha 0.1 hard-coded or absent, no gamma_min floor, and in
one version plain LARS during ``epoch_delay_cnt`` epochs before the factor starts.

Defaults: ``lr=1.0``, ``momentum=0.9``, ``trust_coefficient=1e-3``, ``weight_decay=0``.
``foreach=None``: loop on CPU, foreach on accelerators. Measured (10.5M fp32 parameters of
transformer shapes, benchmarks/optim.py's set; CPU time, 1 thread): loop 14.1 ms, foreach 16.1
ms.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import _check_lr_betas_eps, _check_nonneg, _check_unit_interval, _step_tensor
from ._group_step import GroupStepOptimizer

__all__ = ["LARS", "TVLARS", "tvlars_phi"]


def tvlars_phi(t: float, alpha: float, lmbda: float, delay: float, gamma_min: float) -> float:
    """TVLARS's trust coefficient at step t: 1 / (alpha + exp(lmbda (t - delay))) + gamma_min."""
    z = lmbda * (t - delay)
    return (0.0 if z > 700 else 1.0 / (alpha + math.exp(z))) + gamma_min


@register("optimizer", "lars")
class LARS(GroupStepOptimizer):
    """LARS with momentum (module docstring).

    Args:
        lr: global learning rate. momentum: mu. trust_coefficient: eta.
        weight_decay: beta (coupled, in the trust ratio). exclude_1d: plain momentum SGD for
            0-d/1-d tensors. maximize: ascend. foreach: multi-tensor path (``None``: loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0.9,
        trust_coefficient: float = 1e-3,
        weight_decay: float = 0.0,
        exclude_1d: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, weight_decay=weight_decay)
        _check_unit_interval("momentum", momentum)
        _check_nonneg("trust_coefficient", trust_coefficient)
        defaults = dict(lr=lr, momentum=momentum, trust_coefficient=trust_coefficient,
                        weight_decay=weight_decay, exclude_1d=exclude_1d, maximize=maximize,
                        foreach=foreach)
        defaults.update(getattr(self, "_extra_defaults", {}))  # TVLARS's schedule
        super().__init__(params, defaults)

    def _trust(self, group: dict, step: float) -> float:
        """The coefficient multiplying ||w|| / (||g|| + beta ||w||) at a tensor's step count."""
        return group["trust_coefficient"]

    def _step_group(self, group: dict, params: list[Tensor], grads: list[Tensor],
                    foreach: bool) -> None:
        bufs, adapt, trusts, steps = [], [], [], []
        for p in params:
            st = self.state[p]
            if not st:
                st["step"] = _step_tensor()
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            trusts.append(self._trust(group, float(st["step"])))
            bufs.append(st["momentum_buffer"])
            steps.append(st["step"])
            adapt.append(not (group["exclude_1d"] and p.ndim <= 1))
        fn = _multi_tensor_lars if foreach else _single_tensor_lars
        fn(params, grads, bufs, steps, trusts, adapt, lr=group["lr"], momentum=group["momentum"],
           weight_decay=group["weight_decay"], maximize=group["maximize"])


@register("optimizer", "tvlars")
class TVLARS(LARS):
    """LARS with TVLARS's time-varying trust coefficient (module docstring).

    Extra args: alpha (>= 1 caps phi at 1/alpha + gamma_min), lmbda (decay rate per step),
    delay (steps before the decay's midpoint). ``trust_coefficient`` is gamma_min.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0.9,
        trust_coefficient: float = 1e-3,
        weight_decay: float = 0.0,
        alpha: float = 1.0,
        lmbda: float = 1e-3,
        delay: int = 0,
        exclude_1d: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        if not alpha > 0.0:
            raise ValueError(f"Invalid alpha: {alpha} (must be > 0)")
        _check_nonneg("lmbda", lmbda)
        _check_nonneg("delay", delay)
        self._extra_defaults = dict(alpha=alpha, lmbda=lmbda, delay=delay)
        super().__init__(params, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient,
                         weight_decay=weight_decay, exclude_1d=exclude_1d, maximize=maximize,
                         foreach=foreach)

    def _trust(self, group: dict, step: float) -> float:
        return tvlars_phi(step, group["alpha"], group["lmbda"], group["delay"],
                          group["trust_coefficient"])


def _ratio(w_norm: Tensor, g_norm: Tensor, trust: float, beta: float) -> Tensor:
    """trust * ||w|| / (||g|| + beta ||w||), or 1 if either norm is 0."""
    ok = (w_norm > 0) & (g_norm > 0)
    r = trust * w_norm / (g_norm + beta * w_norm).clamp_min(torch.finfo(w_norm.dtype).tiny)
    return torch.where(ok, r, torch.ones_like(r))


def _single_tensor_lars(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], steps: list[Tensor],
    trusts: list[float], adapt: list[bool], *, lr: float, momentum: float, weight_decay: float,
    maximize: bool,
) -> None:
    for p, g, v, s, trust, ad in zip(params, grads, bufs, steps, trusts, adapt):
        s += 1
        g = -g if maximize else g
        if ad:
            ratio = _ratio(p.norm(), g.norm(), trust, weight_decay)
            d = g.add(p, alpha=weight_decay) if weight_decay != 0.0 else g
            v.mul_(momentum).add_(d * (lr * ratio))
        else:
            v.mul_(momentum).add_(g, alpha=lr)
        p.sub_(v)


def _multi_tensor_lars(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], steps: list[Tensor],
    trusts: list[float], adapt: list[bool], *, lr: float, momentum: float, weight_decay: float,
    maximize: bool,
) -> None:
    torch._foreach_add_(steps, 1.0)
    if maximize:
        grads = torch._foreach_neg(grads)
    w_norms, g_norms = torch._foreach_norm(params), torch._foreach_norm(grads)
    scales = [lr * _ratio(wn, gn, t, weight_decay) if ad else torch.full_like(wn, lr)
              for wn, gn, t, ad in zip(w_norms, g_norms, trusts, adapt)]
    if weight_decay != 0.0:
        idx = [i for i, ad in enumerate(adapt) if ad]
        decayed = torch._foreach_add([grads[i] for i in idx], [params[i] for i in idx],
                                     alpha=weight_decay)
        grads = list(grads)
        for i, d in zip(idx, decayed):
            grads[i] = d
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, torch._foreach_mul(grads, scales))
    torch._foreach_sub_(params, bufs)
