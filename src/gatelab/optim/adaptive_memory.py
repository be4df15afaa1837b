"""Adaptive Memory momentum: SGD (AM-SGD) and AdamW (AM-AdamW) with a closed-form beta_t.

Paper: "Adaptive Memory Momentum via a Model-Based Framework for Deep Learning Optimization"
(Topollai & Choromanska, 2025). The next step minimises a two-plane model of f plus proximal
terms. With d the momentum direction, g the gradient and x = x_t - lr * P^{-1} d'::

    model(x) = max( f(x_t) + <g, x - x_t>,            # plane of the current gradient
                    f(x_{t-1}) + <d, x - x_t> )        # plane of the memory d
    d' = argmin model + (1/(2 lr)) ||x - x_t||_P^2 + (lam/2) ||d' - d||^2

Its dual is a 1-D concave problem in the plane weight beta in [0, 1]; with p = d - g,
M = P^{-1} (1 + lam P)^{-1} (elementwise) and delta = f(x_{t-1}) - f(x_t) the gap between the
planes at x_t, the maximiser is (clipped to [0, beta_max])::

    beta_t = (delta - sum_k lr_k <p, M (g + lam P d)>) / sum_k lr_k <p, M p>
    d' = (1 + lam P)^{-1} ((1 - beta_t) g + (lam P + beta_t) d)

* AM-SGD (``P = 1``): ``d' = ((beta + lam) d + (1 - beta) g) / (1 + lam)``, ``x <- x - lr d'``;
  beta_t = ((1+lam) delta/lr - <d - g, g + lam d>) / ||d - g||^2 for one group.
* AM-AdamW: d is Adam's first moment and ``P = (1 - beta_max prod_{i<t} beta_i)(sqrt(v_hat) + eps)``
  (bias correction with beta_max standing in for the not-yet-known beta_t), decoupled weight
  decay ``x <- (1 - lr wd) x - lr P^{-1} d'``. With lam = 0 and beta fixed this is AdamW.

The gap delta (``loss_gap``):

* ``"taylor"`` (default): the first-order estimate delta ~ <g_t, x_{t-1} - x_t>, computed from
  the stored step (no loss needed; this is the stochastic approximation for minibatches,
  where two consecutive losses come from different batches);
* ``"loss"``: the exact difference of the two loss values. Needs the loss every step: call
  ``opt.step(closure)`` with a closure that returns the loss, or ``opt.step(loss=loss)`` after
  ``loss.backward()``. Only with ``beta_scope="global"`` (one loss, one beta).

``beta_scope``: ``"global"`` computes one beta for all parameters (sums over every group, each
group then clips with its own beta_max); ``"tensor"`` one beta per parameter tensor (the
per-layer variant; each tensor is its own proximal problem).

First step: AM-SGD starts from d = g (the paper's d_0 = g_0); AM-AdamW takes beta = beta_max
(no previous iterate), which with lam = 0 is AdamW's first step. Parameters that get their
first gradient later start the same way and are left out of that step's beta. When
``||p||_M = 0`` (d equals g) beta is 0, where it has no effect on d' with lam = 0.

Defaults: ``lam=0.1`` and ``beta_max=0.9``, our reading of the paper's deep-learning setting
("no tuning"); ``lr`` 1e-2 (AM-SGD) and 1e-3 (AM-AdamW), ``betas[1]=0.999``, ``eps=1e-8``.
Confirmed: the AM-SGD update d' = ((beta+lam) d + (1-beta) g)/(1+lam), x <- x - lr d' (paper
summary at sciencestack.ai/paper/2510.04988, read 2026-11-23). Not confirmed (only abstracts
and summaries were reachable; no official code found): the closed form of beta_t above, its
clipping and the defaults.
Details we had to choose (the paper's text was not available to us beyond the update form):
the memory plane passes through f(x_{t-1}) at x_t; the Taylor gap uses the actual previous
displacement including decoupled weight decay (recovered from the stored lr and bias factor,
assuming weight_decay constant between two steps); AM-SGD's weight_decay is coupled L2 (part
of g), AM-AdamW's is decoupled.

``foreach=None``: loop on CPU, foreach on accelerators. Measured (10.5M fp32 parameters of
transformer shapes, benchmarks/optim.py's set; CPU time, 1 thread): AM-SGD loop 31 ms, foreach
41 ms; AM-AdamW loop 111 ms, foreach 225 ms (the beta partials and the recovered previous step
cost several passes; torch's fused AdamW: 6.7 ms). State: ``step``, ``exp_avg`` (d), and for the
Taylor gap ``prev_lr``; AM-AdamW adds ``exp_avg_sq``, ``beta_prod`` and ``prev_bc``. The last
beta of each tensor is kept as state ``"beta"`` (0-d) for logging.
"""
from __future__ import annotations

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

__all__ = ["AdaptiveMemorySGD", "AdaptiveMemoryAdamW"]

_GAPS = ("taylor", "loss")
_SCOPES = ("global", "tensor")


def _check_common(lr: float, lam: float, beta_max: float, loss_gap: str, beta_scope: str,
                  weight_decay: float) -> None:
    _check_lr_betas_eps(lr, weight_decay=weight_decay)
    _check_nonneg("lam", lam)
    _check_unit_interval("beta_max", beta_max)
    if loss_gap not in _GAPS:
        raise ValueError(f"Invalid loss_gap: {loss_gap!r} (choose from {', '.join(_GAPS)})")
    if beta_scope not in _SCOPES:
        raise ValueError(f"Invalid beta_scope: {beta_scope!r} (choose from {', '.join(_SCOPES)})")
    if loss_gap == "loss" and beta_scope != "global":
        raise ValueError("loss_gap='loss' needs beta_scope='global' (one loss gives one beta)")


class _AdaptiveMemoryBase(Optimizer):
    """Two passes per step. `_prepare` computes, for every tensor that already has a memory d,
    the partial sums of beta's numerator (``gap + num``) and denominator (``den``); beta is
    then formed globally or per tensor, clipped, and `_apply` updates d and x."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             loss: Tensor | float | None = None) -> Any:
        """One step. ``closure`` re-evaluates and returns the loss; alternatively pass ``loss=``
        (the loss whose gradients are in ``.grad``). ``loss_gap="loss"`` needs one of them."""
        if closure is not None:
            loss = eval_closure(closure)
        work = []
        for group in self.param_groups:
            params, grads = _params_with_grads(group)
            if params:
                foreach = _get_foreach_default(params, group["foreach"])
                states = [self.state[p] for p in params]
                ctx = self._prepare(group, params, grads, states, foreach)
                work.append((group, params, states, ctx, foreach))
        if not work:
            return loss
        beta_glob = self._global_beta(work, loss)
        for group, params, states, ctx, foreach in work:
            betas = []
            for k, old in enumerate(ctx["old"]):
                if group["beta_scope"] == "global":
                    b = beta_glob
                else:
                    b = safe_div(ctx["gaps"][k] + ctx["nums"][k], ctx["dens"][k])
                b = ctx["first_beta"] if b is None else b.clamp(0.0, group["beta_max"])
                betas.append(b)
            self._apply(group, params, states, ctx, betas, foreach)
        return loss

    def _global_beta(self, work: list, loss: Tensor | float | None) -> Tensor | None:
        """One beta from the partials of every group with beta_scope="global" (None if none)."""
        groups = [w for w in work if w[0]["beta_scope"] == "global" and w[3]["old"]]
        uses_loss = any(w[0]["loss_gap"] == "loss" for w in work)
        home = self.state[self.param_groups[0]["params"][0]]  # model-wide scalars live here
        if uses_loss:
            if loss is None:
                raise RuntimeError(
                    "loss_gap='loss' needs the loss: call opt.step(closure) with a closure that "
                    "returns it, or opt.step(loss=loss) after loss.backward()")
            prev, home["prev_loss"] = home.get("prev_loss"), float(loss)
        if not groups:
            return None
        num = torch.stack([t for w in groups for t in w[3]["nums"]]).sum()
        den = torch.stack([t for w in groups for t in w[3]["dens"]]).sum()
        if uses_loss:
            if prev is None:  # no previous loss yet: no gap, take the first-step beta
                return None
            gap = prev - float(loss)
        else:
            gap = torch.stack([t for w in groups for t in w[3]["gaps"]]).sum()
        return safe_div(gap + num, den)

    def _grads(self, group: dict, params: list[Tensor], grads: list[Tensor], foreach: bool,
               coupled_wd: bool) -> list[Tensor]:
        wd = group["weight_decay"] if coupled_wd else 0.0
        if foreach:
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            if wd != 0.0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            return list(grads)
        out = []
        for p, g in zip(params, grads):
            g = -g if group["maximize"] else g
            out.append(g.add(p, alpha=wd) if wd != 0.0 else g)
        return out


# --------------------------------------------------------------------------- AM-SGD
@register("optimizer", "am_sgd")
class AdaptiveMemorySGD(_AdaptiveMemoryBase):
    """AM-SGD: heavy-ball momentum whose beta_t comes from the two-plane model (module doc).

    Args:
        lr: learning rate. lam: proximal weight on the change of d (0 = pure two-plane model).
        beta_max: upper clip of beta_t. loss_gap: ``"taylor"`` or ``"loss"``.
        beta_scope: ``"global"`` (one beta, default) or ``"tensor"``.
        weight_decay: coupled L2 (part of g, so also of beta's planes).
        maximize: ascend. foreach: multi-tensor path (``None``: loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        lam: float = 0.1,
        beta_max: float = 0.9,
        loss_gap: str = "taylor",
        beta_scope: str = "global",
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_common(lr, lam, beta_max, loss_gap, beta_scope, weight_decay)
        defaults = dict(lr=lr, lam=lam, beta_max=beta_max, loss_gap=loss_gap, beta_scope=beta_scope,
                        weight_decay=weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _prepare(self, group, params, grads, states, foreach):
        """gap = prev_lr <g, d>, num = -c <d - g, g + lam d>, den = c ||d - g||^2,
        c = lr / (1 + lam)."""
        gs = self._grads(group, params, grads, foreach, coupled_wd=True)
        lam, c = group["lam"], group["lr"] / (1.0 + group["lam"])
        old = [i for i, s in enumerate(states) if "exp_avg" in s]
        g_old, d_old = [gs[i] for i in old], [states[i]["exp_avg"] for i in old]
        prev_lrs = [states[i]["prev_lr"] for i in old]
        if foreach and old:
            diff = torch._foreach_sub(d_old, g_old)
            w = torch._foreach_add(g_old, d_old, alpha=lam)
            nums = [-c * t.sum() for t in torch._foreach_mul(diff, w)]
            dens = [c * t.sum() for t in torch._foreach_mul(diff, diff)]
            gaps = [lr * t.sum() for lr, t in zip(prev_lrs, torch._foreach_mul(g_old, d_old))]
        else:
            nums, dens, gaps = [], [], []
            for g, d, lr in zip(g_old, d_old, prev_lrs):
                diff = d - g
                nums.append(-c * (diff * (g + lam * d)).sum())
                dens.append(c * (diff * diff).sum())
                gaps.append(lr * (g * d).sum())
        return dict(g=gs, old=old, gaps=gaps, nums=nums, dens=dens, first_beta=None)

    def _apply(self, group, params, states, ctx, betas, foreach):
        lam, lr, gs = group["lam"], group["lr"], ctx["g"]
        for i, s in enumerate(states):
            if "exp_avg" not in s:  # d_0 = g_0
                s["step"] = _step_tensor()
                s["exp_avg"] = gs[i].clone(memory_format=torch.preserve_format)
                s["beta"] = torch.zeros((), dtype=params[i].dtype, device=params[i].device)
            s["prev_lr"] = lr
        for i, b in zip(ctx["old"], betas):
            states[i]["beta"] = b.to(dtype=params[i].dtype, device=params[i].device)
        old_b = [states[i]["beta"] for i in ctx["old"]]
        d_old, g_old = [states[i]["exp_avg"] for i in ctx["old"]], [gs[i] for i in ctx["old"]]
        ds, steps = [s["exp_avg"] for s in states], [s["step"] for s in states]
        if foreach:
            torch._foreach_add_(steps, 1.0)
            if d_old:  # d <- ((beta + lam) d + (1 - beta) g) / (1 + lam)
                a_d = torch._foreach_div(torch._foreach_add(old_b, lam), 1.0 + lam)
                torch._foreach_mul_(d_old, a_d)
                a_g = torch._foreach_neg(old_b)
                torch._foreach_add_(a_g, 1.0)
                torch._foreach_div_(a_g, 1.0 + lam)
                torch._foreach_add_(d_old, torch._foreach_mul(g_old, a_g))
            torch._foreach_add_(params, ds, alpha=-lr)
        else:
            for s in steps:
                s += 1
            for d, g, b in zip(d_old, g_old, old_b):
                d.mul_((b + lam) / (1.0 + lam)).add_(g * ((1.0 - b) / (1.0 + lam)))
            for p, d in zip(params, ds):
                p.add_(d, alpha=-lr)


# --------------------------------------------------------------------------- AM-AdamW
@register("optimizer", "am_adamw")
class AdaptiveMemoryAdamW(_AdaptiveMemoryBase):
    """AM-AdamW: AdamW whose first-moment coefficient beta1_t comes from the two-plane model.

    Args:
        lr: learning rate. betas: ``(beta_max, beta2)``: beta1_t is clipped to [0, beta_max].
        lam: proximal weight on the change of d. eps: Adam's epsilon (outside the sqrt).
        weight_decay: decoupled (torch AdamW's default 1e-2). loss_gap, beta_scope: module doc
        (default one beta per tensor). maximize, foreach: as usual (``None``: loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        lam: float = 0.1,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        loss_gap: str = "taylor",
        beta_scope: str = "tensor",
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        _check_common(lr, lam, betas[0], loss_gap, beta_scope, weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), lam=lam, eps=eps, weight_decay=weight_decay,
                        loss_gap=loss_gap, beta_scope=beta_scope, maximize=maximize,
                        foreach=foreach, beta_max=betas[0])
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        if "betas" in param_group:
            param_group["beta_max"] = param_group["betas"][0]
        super().add_param_group(param_group)

    def _prepare(self, group, params, grads, states, foreach):
        """Before v is updated: the Taylor gap <g, x_{t-1} - x_t> with the previous
        preconditioner P'; then v_t, P_t and beta's numerator/denominator, M = 1/(P(1+lam P))."""
        gs = self._grads(group, params, grads, foreach, coupled_wd=False)
        beta_max, beta2 = group["betas"]
        lam, lr, eps, wd = group["lam"], group["lr"], group["eps"], group["weight_decay"]
        for p, s in zip(params, states):
            if "exp_avg" not in s:  # fresh: zeros; excluded from beta, takes beta_max
                s["step"] = _step_tensor()
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["beta_prod"] = torch.ones((), dtype=p.dtype, device=p.device)
                s["fresh"] = True
        old = [i for i, s in enumerate(states) if not s.get("fresh", False)]
        for s in states:
            s.pop("fresh", None)
        steps = [float(s["step"]) for s in states]
        bc2_new = [1.0 - beta2 ** (t + 1) for t in steps]
        ds, vs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        bc1 = [1.0 - beta_max * s["beta_prod"] for s in states]
        if foreach:
            v_new = torch._foreach_mul(vs, beta2)
            torch._foreach_addcmul_(v_new, gs, gs, value=1.0 - beta2)
            prec = torch._foreach_div(v_new, bc2_new)
            torch._foreach_sqrt_(prec)
            torch._foreach_add_(prec, eps)
            torch._foreach_mul_(prec, bc1)
        else:
            v_new = [v * beta2 + (1.0 - beta2) * g * g for v, g in zip(vs, gs)]
            prec = [(v / bc2).sqrt().add_(eps).mul_(b1) for v, bc2, b1 in zip(v_new, bc2_new, bc1)]
        gaps, nums, dens = [], [], []
        if old:
            o_g, o_d, o_p = [gs[i] for i in old], [ds[i] for i in old], [params[i] for i in old]
            o_v, o_prec = [vs[i] for i in old], [prec[i] for i in old]
            prev_lr = [states[i]["prev_lr"] for i in old]
            prev_bc = [states[i]["prev_bc"] for i in old]
            bc2_prev = [1.0 - beta2 ** steps[i] for i in old]
            shrink = [1.0 - lr_ * wd for lr_ in prev_lr]
            if foreach:
                p_prev = torch._foreach_div(o_v, bc2_prev)
                torch._foreach_sqrt_(p_prev)
                torch._foreach_add_(p_prev, eps)
                torch._foreach_mul_(p_prev, prev_bc)
                step_dir = torch._foreach_div(o_d, p_prev)  # P'^{-1} d
                x_prev = torch._foreach_add(o_p, torch._foreach_mul(step_dir, prev_lr))
                torch._foreach_div_(x_prev, shrink)
                disp = torch._foreach_add(step_dir, x_prev, alpha=wd)
                gaps = [lr_ * t.sum() for lr_, t in zip(prev_lr, torch._foreach_mul(o_g, disp))]
                m = torch._foreach_mul(o_prec, lam)
                torch._foreach_add_(m, 1.0)
                torch._foreach_mul_(m, o_prec)
                torch._foreach_reciprocal_(m)
                diff = torch._foreach_sub(o_d, o_g)
                w = torch._foreach_add(o_g, torch._foreach_mul(o_prec, o_d), alpha=lam)
                dm = torch._foreach_mul(diff, m)
                nums = [-lr * t.sum() for t in torch._foreach_mul(dm, w)]
                dens = [lr * t.sum() for t in torch._foreach_mul(dm, diff)]
            else:
                for g, d, p, v, pr, lr_, pbc, bc2, sh in zip(o_g, o_d, o_p, o_v, o_prec, prev_lr,
                                                             prev_bc, bc2_prev, shrink):
                    step_dir = d / (v / bc2).sqrt().add_(eps).mul_(pbc)
                    x_prev = (p + step_dir * lr_) / sh
                    gaps.append(lr_ * (g * (step_dir + wd * x_prev)).sum())
                    m = ((pr * lam + 1.0) * pr).reciprocal_()
                    diff = d - g
                    dm = diff * m
                    nums.append(-lr * (dm * (g + lam * (pr * d))).sum())
                    dens.append(lr * (dm * diff).sum())
        return dict(g=gs, old=old, gaps=gaps, nums=nums, dens=dens, v_new=v_new, prec=prec, bc1=bc1,
                    first_beta=torch.tensor(beta_max, dtype=torch.float64))

    def _apply(self, group, params, states, ctx, betas, foreach):
        beta_max = group["betas"][0]
        lam, lr, wd = group["lam"], group["lr"], group["weight_decay"]
        gs, prec, bc1 = ctx["g"], ctx["prec"], ctx["bc1"]
        full = [torch.tensor(beta_max, dtype=torch.float64)] * len(states)  # fresh: beta_max
        for i, b in zip(ctx["old"], betas):
            full[i] = b
        beta = [b.to(dtype=p.dtype, device=p.device) for b, p in zip(full, params)]
        ds = [s["exp_avg"] for s in states]
        for s, b, b1, v in zip(states, beta, bc1, ctx["v_new"]):
            s["exp_avg_sq"].copy_(v)
            s["beta"] = b
            s["prev_bc"] = b1
            s["beta_prod"] = s["beta_prod"] * b
            s["prev_lr"] = lr
        if foreach:
            torch._foreach_add_([s["step"] for s in states], 1.0)
            # d <- ((1 - beta) g + (lam P + beta) d) / (1 + lam P)
            lp = torch._foreach_mul(prec, lam)
            torch._foreach_mul_(ds, torch._foreach_add(lp, beta))
            one_minus = torch._foreach_neg(beta)
            torch._foreach_add_(one_minus, 1.0)
            torch._foreach_add_(ds, torch._foreach_mul(gs, one_minus))
            torch._foreach_add_(lp, 1.0)
            torch._foreach_div_(ds, lp)
            if wd != 0.0:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_addcdiv_(params, ds, prec, value=-lr)
        else:
            for p, g, d, pr, b, s in zip(params, gs, ds, prec, beta, states):
                s["step"] += 1
                d.mul_(pr * lam + b).add_(g * (1.0 - b)).div_(pr * lam + 1.0)
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.addcdiv_(d, pr, value=-lr)
