"""OASIS: a Hutchinson diagonal preconditioner with an adaptive, curvature-estimated step size.

Paper: "Doubly Adaptive Scaled Algorithm for Machine Learning Using Second-Order
Information" (Jahani, Rusakov, Shi, Richtárik, Mahoney & Takáč, 2021). Algorithm (v_k is
Hutchinson's ``z * Hz``, one Hessian-vector product per step, `_hutchinson`)::

    D_0 = v_0;  w_1 = w_0 - lr D^_0^{-1} g_0;  theta_0 = +inf
    k >= 1:
      D_k  = beta2 D_{k-1} + (1 - beta2) v_k
      D^_k = max(|D_k|, alpha)                                    (elementwise truncation)
      eta_k = min( sqrt(1 + theta_{k-1}) eta_{k-1},
                   ||w_k - w_{k-1}||_{D^_k} / (2 ||g_k - g_{k-1}||*_{D^_k}) )
      w_{k+1} = w_k - eta_k D^_k^{-1} g_k;   theta_k = eta_k / eta_{k-1}

with ``||u||_D = sqrt(<u, D u>)`` and the dual ``||u||*_D = sqrt(<u, D^{-1} u>)``; the second
term of the min is a local inverse-Lipschitz estimate in the D^ metric (Malitsky & Mishchenko's
adaptive step, preconditioned). ``adaptive_lr=False`` gives the paper's fixed-lr variant
``w <- w - lr D^^{-1} g``.

Choices (the paper leaves them open or to the experiments): D_0 is a single Hutchinson sample
at w_0 (the paper warm-starts it from several samples); eta and theta are kept per param group
(norms over the group's tensors), so a single group reproduces the algorithm; when the
Lipschitz estimate is undefined (g_k = g_{k-1}) the first term alone is used, and when both are
infinite eta_{k-1} is kept; a tensor that had no gradient on the previous step is left out of
the estimate. Defaults: ``lr`` (eta_0) 1.0, the natural scale of a Newton-like step;
``beta2=0.99``, ``alpha=1e-5`` (within the ranges of the paper's experiments). No weight decay
(the paper puts regularisation in the objective). ``maximize`` negates g and Hz.

Calling it (``create_graph=True`` is required: the HVP differentiates the gradient)::

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=True)
        return loss
    opt.step(closure)

On CPU the HVP makes a step ~3.5x a plain backward (METHODS 5.1); attention must use the math
SDPA kernel (fused kernels lack double backward). ``foreach=None``: loop on CPU. Measured (10.5M
fp32 parameters of transformer shapes, benchmarks/optim.py's set; CPU time, 1 thread, step
including the HVP): loop 146 ms, foreach 225 ms.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..core.registry import register
from ._functional import (
    _check_lr_betas_eps, _check_unit_interval, _get_foreach_default, _params_with_grads,
    _step_tensor,
)
from ._group_step import eval_closure
from ._hutchinson import hutchinson_diag, rademacher

__all__ = ["OASIS"]


@register("optimizer", "oasis")
class OASIS(Optimizer):
    """OASIS (module docstring). Needs ``step(closure)`` with ``backward(create_graph=True)``.

    Args:
        lr: eta_0 (the first step; every step with ``adaptive_lr=False``).
        beta2: EMA coefficient of the Hessian diagonal. alpha: truncation ``D^ >= alpha``.
        adaptive_lr: use the adaptive step-size rule. seed: Rademacher draws.
        maximize: ascend. foreach: multi-tensor path (``None``: loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        beta2: float = 0.99,
        alpha: float = 1e-5,
        adaptive_lr: bool = True,
        seed: int = 0,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr)
        _check_unit_interval("beta2", beta2)
        if not (alpha > 0.0 and math.isfinite(alpha)):
            raise ValueError(f"Invalid alpha: {alpha} (the truncation must be > 0)")
        defaults = dict(lr=lr, beta2=beta2, alpha=alpha, adaptive_lr=adaptive_lr, seed=seed,
                        maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Any:
        """One step; ``closure`` must backprop with ``create_graph=True`` and return the loss."""
        if closure is None:
            raise RuntimeError("OASIS needs a closure that calls loss.backward(create_graph=True) "
                               "and returns the loss (Hessian-vector products)")
        loss = eval_closure(closure)
        work, allp, zs = [], [], []
        for gi, group in enumerate(self.param_groups):
            params, _ = _params_with_grads(group)
            if not params:
                continue
            pos = {id(q): k for k, q in enumerate(group["params"])}
            for p in params:
                st = self.state[p]
                t = int(st["step"]) if "step" in st else 0
                zs.append(rademacher(p, group["seed"], t, 1000 * gi + pos[id(p)]))
            allp += params
            work.append((group, params))
        if not work:
            return loss
        vs = iter(hutchinson_diag(allp, zs))
        for group, params in work:
            sign = -1.0 if group["maximize"] else 1.0
            grads = [sign * p.grad for p in params]
            hvs = [sign * next(vs) for _ in params]
            anchor = self.state[group["params"][0]]  # eta, theta of the group
            states = [self.state[p] for p in params]
            fresh = ["step" not in st for st in states]  # the anchor may hold eta/theta
            for p, st, v in zip(params, states, hvs):
                if "step" not in st:
                    st["step"] = _step_tensor()
                    st["hess_diag"] = v.clone()  # D_0 = v_0 (no EMA on the first sample)
                    if group["adaptive_lr"]:
                        st["prev_param"] = p.detach().clone(memory_format=torch.preserve_format)
                        st["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            foreach = _get_foreach_default(params, group["foreach"])
            fn = _multi_tensor_oasis if foreach else _single_tensor_oasis
            first = "eta" not in anchor
            if first:
                anchor["eta"] = torch.tensor(group["lr"], dtype=torch.float64)
                anchor["theta"] = torch.tensor(math.inf, dtype=torch.float64)
            fn(params, grads, hvs, states, fresh, anchor, lr=group["lr"], beta2=group["beta2"],
               alpha=group["alpha"], adaptive=group["adaptive_lr"] and not first)
        return loss


def _single_tensor_oasis(params, grads, hvs, states, fresh, anchor, *, lr, beta2, alpha, adaptive):
    dhats = []
    for g, v, st, f in zip(grads, hvs, states, fresh):
        st["step"] += 1
        d = st["hess_diag"]
        if not f:
            d.mul_(beta2).add_(v, alpha=1.0 - beta2)
        dhats.append(d.abs().clamp_min_(alpha))
    if adaptive:
        num = den = None
        for p, g, dh, st, f in zip(params, grads, dhats, states, fresh):
            if f:
                continue
            dw, dg = p - st["prev_param"], g - st["prev_grad"]
            a, b = (dh * dw * dw).sum(), (dg * dg / dh).sum()
            num = a if num is None else num + a
            den = b if den is None else den + b
        eta = _adaptive_eta(anchor, num, den)
    else:
        eta = torch.tensor(lr, dtype=torch.float64)
    _store_eta(anchor, eta, adaptive)
    for p, g, dh, st in zip(params, grads, dhats, states):
        if "prev_param" in st:
            st["prev_param"].copy_(p)
            st["prev_grad"].copy_(g)
        p.sub_(g / dh * eta.to(p.dtype))


def _multi_tensor_oasis(params, grads, hvs, states, fresh, anchor, *, lr, beta2, alpha, adaptive):
    torch._foreach_add_([st["step"] for st in states], 1.0)
    old = [i for i, f in enumerate(fresh) if not f]
    if old:
        ds = [states[i]["hess_diag"] for i in old]
        torch._foreach_mul_(ds, beta2)
        torch._foreach_add_(ds, [hvs[i] for i in old], alpha=1.0 - beta2)
    dhats = torch._foreach_abs([st["hess_diag"] for st in states])
    torch._foreach_clamp_min_(dhats, alpha)
    if adaptive:
        num = den = None
        if old:
            prev_w = [states[i]["prev_param"] for i in old]
            prev_g = [states[i]["prev_grad"] for i in old]
            dw = torch._foreach_sub([params[i] for i in old], prev_w)
            dg = torch._foreach_sub([grads[i] for i in old], prev_g)
            dh = [dhats[i] for i in old]
            a = torch._foreach_mul(torch._foreach_mul(dh, dw), dw)
            b = torch._foreach_div(torch._foreach_mul(dg, dg), dh)
            num = torch.stack([t.sum() for t in a]).sum()
            den = torch.stack([t.sum() for t in b]).sum()
        eta = _adaptive_eta(anchor, num, den)
    else:
        eta = torch.tensor(lr, dtype=torch.float64)
    _store_eta(anchor, eta, adaptive)
    keep = [i for i, st in enumerate(states) if "prev_param" in st]
    if keep:
        torch._foreach_copy_([states[i]["prev_param"] for i in keep], [params[i] for i in keep])
        torch._foreach_copy_([states[i]["prev_grad"] for i in keep], [grads[i] for i in keep])
    steps = torch._foreach_div(grads, dhats)
    torch._foreach_mul_(steps, [eta.to(p.dtype) for p in params])
    torch._foreach_sub_(params, steps)


def _adaptive_eta(anchor: dict, num: Tensor | None, den: Tensor | None) -> Tensor:
    """min(sqrt(1 + theta) eta_prev, ||dw||_D / (2 ||dg||*_D)), with the fallbacks of the doc."""
    eta_prev, theta = anchor["eta"], anchor["theta"]
    growth = torch.sqrt(1.0 + theta) * eta_prev
    if num is None or not den > 0:
        local = torch.tensor(math.inf, dtype=torch.float64)
    else:
        local = (num.sqrt() / (2.0 * den.sqrt())).to(torch.float64)
    eta = torch.minimum(growth, local)
    return eta if torch.isfinite(eta) else eta_prev.clone()


def _store_eta(anchor: dict, eta: Tensor, adaptive: bool) -> None:
    if adaptive:
        anchor["theta"] = eta / anchor["eta"]
    anchor["eta"] = eta.clone()
