"""SANIA: a Polyak step size with a diagonal preconditioner (no learning rate to tune).

Paper: "SANIA: Polyak-type Optimization Framework Leads to Scale Invariant Stochastic
Algorithms" (Abdukhakimov, Xiang, Kamzolov, Gower & Takáč, 2023). With f_i the minibatch loss
and f* a lower bound of it (0 for non-negative losses)::

    x <- x - lr * (f_i(x) - f*)_+ / ||g||^2_{B^-1} * B^{-1} g,     ||g||^2_{B^-1} = <g, B^{-1} g>

the step solves ``min ||x' - x||_B  s.t.  f_i(x) + <g, x' - x> = f*`` (the Polyak step in
the metric B). ``preconditioner`` chooses the diagonal B:

* ``"adagrad_sqr"`` (default): ``B_t = sum_{s<=t} g_s^2``: AdaGrad without the square root,
  which makes the method invariant to a diagonal rescaling of the parameters;
* ``"adam_sqr"``: ``B_t = EMA_beta2(g^2) / (1 - beta2^t)`` (Adam's bias-corrected second moment,
  again without the square root);
* ``"hutchinson"``: ``B_t = max(|D_t|, alpha)``, ``D_t`` the bias-corrected EMA of Hutchinson's
  ``z * Hz`` (one Hessian-vector product per step, `_hutchinson`);
* ``"identity"``: ``B = I``, the stochastic Polyak step (SPS) of Loizou et al. (2021);
* ``"newton_cg"``: ``B = H``, the minibatch Hessian (the paper's Newton variant, its "SANIA
  PCG"): ``H^{-1} g`` is solved by conjugate gradients on Hessian-vector products through the
  closure's graph (``cg_iters`` HVPs at most, stopping when ``||r|| <= cg_tol ||g||``), jointly
  over every parameter of the ``"newton_cg"`` groups (their block of H). Then
  ``<g, H^{-1} g>`` is the Newton decrement and on a quadratic with f* its minimum the step is
  exactly affine invariant. Our choices (not from the paper, whose CG settings we could not
  read): plain (unpreconditioned) CG from 0, and on non-positive curvature ``p^T H p <= 0``
  (non-convex f) CG stops at its last iterate, or returns g itself (the SPS direction) when
  that happens on the first direction.

The step size is one scalar for the whole model: ``||g||_{B^-1}`` sums over every
param group; a group's ``lr`` (default 1, the paper's) multiplies it, ``max_step`` (default
inf) caps ``(f - f*)_+ / ||g||^2_{B^-1}`` before that. Where ``B = 0`` on a coordinate (only
possible where every gradient so far was 0), ``B^{-1} g`` is taken as 0; ``eps`` (default 0)
is added to B for users who want a damped metric.

Calling it (the loss value is needed every step)::

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()                    # backward(create_graph=True) for "hutchinson"
        return loss
    opt.step(closure)

or, without a closure, ``loss.backward(); opt.step(loss=loss)`` (not for "hutchinson", whose
Hessian-vector product needs the closure's graph). ``maximize=True`` applies the method to -f
(then f* bounds -f from below). ``foreach=None``: loop on CPU, foreach on accelerators. Measured
(10.5M fp32 parameters of transformer shapes, benchmarks/optim.py's set; CPU time, 1 thread,
step only): loop 54 ms, foreach 56 ms.
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
    _check_lr_betas_eps, _check_nonneg, _check_unit_interval, _get_foreach_default,
    _params_with_grads, _step_tensor,
)
from ._group_step import eval_closure, safe_div
from ._hutchinson import hutchinson_diag, rademacher

__all__ = ["SANIA"]

_PRECONDITIONERS = ("adagrad_sqr", "adam_sqr", "hutchinson", "identity", "newton_cg")


@register("optimizer", "sania")
class SANIA(Optimizer):
    """Polyak step size in a diagonal metric B (module docstring).

    Args:
        lr: multiplier of the Polyak step (1 = the paper's method).
        preconditioner: ``"adagrad_sqr"``, ``"adam_sqr"``, ``"hutchinson"``, ``"identity"``
            or ``"newton_cg"``.
        beta2: EMA coefficient for ``"adam_sqr"`` and ``"hutchinson"``.
        alpha: truncation of the Hutchinson diagonal (``B >= alpha``).
        eps: added to B (0 = none). f_star: lower bound of the loss.
        max_step: cap on the Polyak ratio. seed: Hutchinson's Rademacher draws.
        cg_iters, cg_tol: ``"newton_cg"``'s iteration cap and relative residual tolerance.
        maximize: apply the method to -f. foreach: multi-tensor path (``None``: loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        preconditioner: str = "adagrad_sqr",
        beta2: float = 0.999,
        alpha: float = 1e-5,
        eps: float = 0.0,
        f_star: float = 0.0,
        max_step: float = math.inf,
        seed: int = 0,
        cg_iters: int = 10,
        cg_tol: float = 1e-6,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, eps=eps)
        _check_unit_interval("beta2", beta2)
        if preconditioner not in _PRECONDITIONERS:
            raise ValueError(f"Invalid preconditioner: {preconditioner!r} "
                             f"(choose from {', '.join(_PRECONDITIONERS)})")
        if preconditioner == "hutchinson" and not alpha > 0.0:
            raise ValueError(f"Invalid alpha: {alpha} (the Hutchinson metric needs alpha > 0)")
        _check_nonneg("alpha", alpha)
        if not max_step > 0.0:
            raise ValueError(f"Invalid max_step: {max_step} (must be > 0)")
        if not math.isfinite(f_star):
            raise ValueError(f"Invalid f_star: {f_star}")
        if isinstance(cg_iters, bool) or not isinstance(cg_iters, int) or cg_iters < 1:
            raise ValueError(f"Invalid cg_iters: {cg_iters!r} (must be an int >= 1)")
        _check_nonneg("cg_tol", cg_tol)
        defaults = dict(lr=lr, preconditioner=preconditioner, beta2=beta2, alpha=alpha, eps=eps,
                        f_star=f_star, max_step=max_step, seed=seed, cg_iters=cg_iters,
                        cg_tol=cg_tol, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             loss: Tensor | float | None = None) -> Any:
        """One step; needs the loss: a closure returning it, or ``loss=`` (module docstring)."""
        if closure is not None:
            loss = eval_closure(closure)
        if loss is None:
            raise RuntimeError("SANIA needs the loss value: call opt.step(closure) with a closure "
                               "that returns the loss, or opt.step(loss=loss)")
        work = []
        for gi, group in enumerate(self.param_groups):
            params, grads = _params_with_grads(group)
            if params:
                work.append((gi, group, params))
        if not work:
            return loss
        curv: dict[int, Tensor] = {}  # z*Hz (hutchinson) or H^-1 g (newton_cg) per param
        if any(g["preconditioner"] == "newton_cg" for _, g, _ in work):
            curv.update(_newton_cg_directions([(g, ps) for _, g, ps in work
                                               if g["preconditioner"] == "newton_cg"]))
        if any(g["preconditioner"] == "hutchinson" for _, g, _ in work):
            hp = []  # (group index, index of p in its group, p): stable seeds for z
            for gi, g, ps in work:
                if g["preconditioner"] == "hutchinson":
                    pos = {id(q): k for k, q in enumerate(g["params"])}
                    hp += [(gi, pos[id(p)], p) for p in ps]
            zs = []
            for gi, k, p in hp:
                st = self.state[p]
                t = int(st["step"]) if "step" in st else 0
                zs.append(rademacher(p, self.param_groups[gi]["seed"], t, 1000 * gi + k))
            for (gi, k, p), h in zip(hp, hutchinson_diag([p for *_, p in hp], zs)):
                curv[id(p)] = h
        # pass 1: update B, form d = B^{-1} g and the model-wide <g, d>
        prepared, gnorm = [], None
        for gi, group, params in work:
            grads = [p.grad for p in params]
            if group["maximize"]:
                grads = [-g for g in grads]
            metrics, steps = [], []
            for p in params:
                st = self.state[p]
                if not st:
                    st["step"] = _step_tensor()
                    if group["preconditioner"] not in ("identity", "newton_cg"):
                        st["metric"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                steps.append(st["step"])
                metrics.append(st.get("metric"))
            hvs = None
            if group["preconditioner"] == "hutchinson":
                hvs = [(-1.0 if group["maximize"] else 1.0) * curv[id(p)] for p in params]
            elif group["preconditioner"] == "newton_cg":  # already solved for -f if maximize
                hvs = [curv[id(p)] for p in params]
            foreach = _get_foreach_default(params, group["foreach"])
            fn = _multi_tensor_sania_direction if foreach else _single_tensor_sania_direction
            ds, dots = fn(grads, metrics, steps, hvs, preconditioner=group["preconditioner"],
                          beta2=group["beta2"], alpha=group["alpha"], eps=group["eps"])
            part = torch.stack(dots).sum()
            gnorm = part if gnorm is None else gnorm + part
            prepared.append((group, params, ds, foreach))
        f = float(loss)
        # pass 2: one Polyak ratio for the model, each group scales it by its lr
        for group, params, ds, foreach in prepared:
            gap = max((-f if group["maximize"] else f) - group["f_star"], 0.0)
            ratio = safe_div(gnorm.new_tensor(gap), gnorm).clamp(max=group["max_step"])
            scale = -group["lr"] * ratio
            if foreach:
                torch._foreach_add_(params, torch._foreach_mul(ds, scale))
            else:
                for p, d in zip(params, ds):
                    p.add_(d * scale)
        return loss


def _single_tensor_sania_direction(
    grads: list[Tensor], metrics: list[Tensor | None], steps: list[Tensor],
    hvs: list[Tensor] | None,
    *, preconditioner: str, beta2: float, alpha: float, eps: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """Update each metric with this step's g (or z*Hz); return B^{-1} g and <g, B^{-1} g>.
    For "newton_cg", `hvs` holds the CG solutions H^{-1} g themselves."""
    ds, dots = [], []
    for i, (g, m, step) in enumerate(zip(grads, metrics, steps)):
        step += 1
        t = float(step)
        if preconditioner == "identity":
            d = g.clone()
        elif preconditioner == "newton_cg":
            d = hvs[i]
        else:
            if preconditioner == "adagrad_sqr":
                m.addcmul_(g, g)
                b = m
            elif preconditioner == "adam_sqr":
                m.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                b = m / (1.0 - beta2**t)
            else:  # hutchinson
                m.mul_(beta2).add_(hvs[i], alpha=1.0 - beta2)
                b = (m / (1.0 - beta2**t)).abs_().clamp_min_(alpha)
            d = safe_div(g, b + eps if eps else b)
        ds.append(d)
        dots.append((g * d).sum())
    return ds, dots


def _multi_tensor_sania_direction(
    grads: list[Tensor], metrics: list[Tensor | None], steps: list[Tensor],
    hvs: list[Tensor] | None,
    *, preconditioner: str, beta2: float, alpha: float, eps: float,
) -> tuple[list[Tensor], list[Tensor]]:
    torch._foreach_add_(steps, 1.0)
    ts = [float(s) for s in steps]
    if preconditioner == "identity":
        ds = [g.clone() for g in grads]
    elif preconditioner == "newton_cg":
        ds = list(hvs)
    else:
        if preconditioner == "adagrad_sqr":
            torch._foreach_addcmul_(metrics, grads, grads)
            bs = list(metrics)
        elif preconditioner == "adam_sqr":
            torch._foreach_mul_(metrics, beta2)
            torch._foreach_addcmul_(metrics, grads, grads, value=1.0 - beta2)
            bs = torch._foreach_div(metrics, [1.0 - beta2**t for t in ts])
        else:
            torch._foreach_mul_(metrics, beta2)
            torch._foreach_add_(metrics, hvs, alpha=1.0 - beta2)
            bs = torch._foreach_div(metrics, [1.0 - beta2**t for t in ts])
            torch._foreach_abs_(bs)
            torch._foreach_clamp_min_(bs, alpha)
        if eps:
            bs = torch._foreach_add(bs, eps)
        ds = [safe_div(g, b) for g, b in zip(grads, bs)]
    dots = [t.sum() for t in torch._foreach_mul(grads, ds)]
    return ds, dots


def _newton_cg_directions(groups: list[tuple[dict, list[Tensor]]]) -> dict[int, Tensor]:
    """H^{-1} g by conjugate gradients for the params of the "newton_cg" groups, keyed by
    id(param); H and g of -f for groups with maximize. Detaches the params' .grad after.

    One CG runs over all of them (their joint Hessian block); its settings and path (foreach
    when every such group resolves to it) come from the first group.
    """
    params = [p for _, ps in groups for p in ps]
    signs = [-1.0 if g["maximize"] else 1.0 for g, ps in groups for _ in ps]
    raw = [p.grad for p in params]
    live = [i for i, g in enumerate(raw) if g.requires_grad]
    if not live:
        raise RuntimeError(
            "SANIA(preconditioner='newton_cg') needs Hessian-vector products: the closure must "
            "call loss.backward(create_graph=True) (see the SANIA docstring)")
    first = groups[0][0]
    foreach = all(_get_foreach_default(ps, g["foreach"]) for g, ps in groups)

    def hvp(vs: list[Tensor]) -> list[Tensor]:
        with torch.enable_grad():
            hv = torch.autograd.grad([raw[i] for i in live], params, [vs[i] for i in live],
                                     retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() * s
                for p, h, s in zip(params, hv, signs)]

    b = [g.detach() * s for g, s in zip(raw, signs)]
    solve = _multi_tensor_cg if foreach else _single_tensor_cg
    xs = solve(hvp, b, iters=first["cg_iters"], tol=first["cg_tol"])
    for p in params:
        p.grad = p.grad.detach()
    return {id(p): x for p, x in zip(params, xs)}


def _single_tensor_cg(hvp: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], *,
                      iters: int, tol: float) -> list[Tensor]:
    """Truncated CG for H x = b from x = 0, one tensor at a time (the reference).

    Stops after `iters` HVPs, when ||r|| <= tol ||b||, or at non-positive curvature (then
    returns the last iterate, or b itself if that was the first direction)."""

    def dot(u: list[Tensor], v: list[Tensor]) -> Tensor:
        return torch.stack([(a * c).sum() for a, c in zip(u, v)]).sum()

    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = dot(r, r)
    stop = tol**2 * float(rs)
    for k in range(iters):
        if float(rs) <= stop or float(rs) == 0.0:
            break
        hp = hvp(p)
        curv = dot(p, hp)
        if float(curv) <= 0.0:
            return [t.clone() for t in b] if k == 0 else x
        alpha = rs / curv
        for xi, ri, pi, hi in zip(x, r, p, hp):
            xi.add_(pi * alpha)
            ri.sub_(hi * alpha)
        rs_new = dot(r, r)
        beta = rs_new / rs
        p = [ri + pi * beta for ri, pi in zip(r, p)]
        rs = rs_new
    return x


def _multi_tensor_cg(hvp: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], *,
                     iters: int, tol: float) -> list[Tensor]:
    """`_single_tensor_cg` with torch._foreach_* ops."""

    def dot(u: list[Tensor], v: list[Tensor]) -> Tensor:
        return torch.stack([t.sum() for t in torch._foreach_mul(u, v)]).sum()

    x = torch._foreach_mul(b, 0.0)
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = dot(r, r)
    stop = tol**2 * float(rs)
    for k in range(iters):
        if float(rs) <= stop or float(rs) == 0.0:
            break
        hp = hvp(p)
        curv = dot(p, hp)
        if float(curv) <= 0.0:
            return [t.clone() for t in b] if k == 0 else x
        alpha = rs / curv
        torch._foreach_add_(x, torch._foreach_mul(p, alpha))
        torch._foreach_sub_(r, torch._foreach_mul(hp, alpha))
        rs_new = dot(r, r)
        beta = rs_new / rs
        p = torch._foreach_add(r, torch._foreach_mul(p, beta))
        rs = rs_new
    return x
