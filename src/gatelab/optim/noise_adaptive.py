"""Muon and noise-adaptive layerwise learning rates on top of it (LANTON).

Muon ("Muon: An optimizer for hidden layers in neural networks", Jordan et al., 2024): for a
2-D parameter, an EMA momentum of the gradient is orthogonalised with 5 quintic Newton-Schulz
steps (the LMO of the spectral-norm ball, `_newton_schulz`) and applied with decoupled weight
decay::

    m <- mu m + (1 - mu) g;  u = (1 - mu) g + mu m  (Nesterov) or m
    W <- (1 - lr wd) W - lr * s(m, n) * NS5(u)

``adjust_lr`` picks s: ``"match_rms"`` (default) ``0.2 sqrt(max(m, n))`` makes the update RMS
match AdamW's so that one lr serves both parts (Liu et al., "Muon is Scalable for LLM
Training", 2025); ``"spectral"`` is Keller Jordan's ``sqrt(max(1, m/n))``. Parameters that are
not 2-D (and empty ones) are updated by AdamW (``adamw_betas``, ``adamw_eps``, same lr and
weight decay); a param group may set ``use_muon=False`` to send its 2-D tensors (embeddings,
the output head) to AdamW too. Defaults as METHODS 5.3: lr 1e-3, wd 0.1, momentum 0.95.

LANTON ("Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware Optimization
for Deep Neural Network Training", Hao et al., 2025) keeps a running estimate of each layer's
gradient noise in the dual norm of the LMO's norm (nuclear norm for the spectral LMO) and
gives noisier layers smaller learning rates within their group (here: the Muon tensors of a
param group)::

    H_l <- beta H_l + (1 - beta) ||g_l - m_l||_*^2          (noise_estimator="momentum")
    sigma_l = sqrt(H_l / (1 - beta^n_l))                    (bias-corrected)
    lr_l = lr * (min_j sigma_j + eps) / (sigma_l + eps)     (j over the group's Muon layers)

so the least noisy layer keeps ``lr`` and every other layer is scaled down by its noise.
Details we had to choose (the paper's algorithm box was not available to us; this is our most
faithful reading of the abstract; a search of stored pages and code on 2026-11-23 found only
the abstract and summaries, and no official code): the noise sample is the distance of the
fresh gradient from the momentum before it absorbs that gradient (``"momentum"``, no extra
memory) or half the squared distance between consecutive gradients (``"difference"``, one extra buffer per
layer); the first sample is taken at a layer's second step; layers without a sample yet use
``lr``; the normalisation is by the group minimum; the layer lr also scales its weight decay.
``dual_norm="nuclear"`` is the exact dual of the spectral norm (computed from the eigenvalues
of the smaller Gram matrix of each layer, the dominant extra cost on CPU; about 5x cheaper than
``torch.linalg.matrix_norm(ord="nuc")``); ``"frobenius"`` is a cheap stand-in.

``foreach``: the multi-tensor path stacks equally shaped matrices and runs Newton-Schulz (and
the nuclear norms) as batched matmuls; the AdamW part uses ``torch.optim.adamw``'s functional
form. ``None`` = loop on CPU (`_get_foreach_default`). Measured (10.5M fp32 parameters of
transformer shapes, benchmarks/optim.py's set; CPU time, 1 thread, defaults, so the embedding is
a Muon matrix too): Muon loop 1570 ms, foreach 1577 ms; LANTON 1902 / 1868 ms. Newton-Schulz in
fp32 matmuls dominates (~5 x 2 m n min(m, n) flops per matrix); on CPU keep embeddings and the
head on AdamW (``use_muon=False``) and expect Muon to be GPU-bound work.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw as _adamw

from ..core.registry import register
from ._functional import _check_lr_betas_eps, _check_nonneg, _check_unit_interval, _step_tensor
from ._group_step import GroupStepOptimizer
from ._newton_schulz import NS_STEPS, zeropower_batched

__all__ = ["Muon", "NoiseAdaptiveMuon"]

_ADJUST = ("match_rms", "spectral", "none")
_ESTIMATORS = ("momentum", "difference")
_DUAL = ("nuclear", "frobenius")


def _lr_factor(shape: torch.Size, adjust_lr: str) -> float:
    rows, cols = shape
    if adjust_lr == "match_rms":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr == "spectral":
        return math.sqrt(max(1.0, rows / cols))
    return 1.0


def _by_shape(tensors: list[Tensor]) -> dict[torch.Size, list[int]]:
    idx: dict[torch.Size, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        idx[t.shape].append(i)
    return idx


def _orthogonalize(us: list[Tensor], ns_steps: int, foreach: bool) -> list[Tensor]:
    """NS5 of each matrix: one at a time (loop) or stacked by shape (foreach)."""
    if not foreach:
        return [zeropower_batched(u.unsqueeze(0), ns_steps).squeeze(0) for u in us]
    out: list[Tensor] = [None] * len(us)  # type: ignore[list-item]
    for idx in _by_shape(us).values():
        o = zeropower_batched(torch.stack([us[i] for i in idx]), ns_steps)
        for k, i in enumerate(idx):
            out[i] = o[k]
    return out


def _norms_sq_batched(D_KMN: Tensor, dual_norm: str) -> Tensor:
    """Squared nuclear (sum of singular values) or Frobenius norms of a (k, m, n) stack.

    The nuclear norm comes from the eigenvalues of the smaller Gram matrix (``D D^T`` or
    ``D^T D``, solved in float64): about 5x cheaper than an SVD on CPU. Singular values below
    ~1e-8 of the largest (float64 Gram) are lost, which is harmless for a noise level."""
    if dual_norm == "frobenius":
        return torch.linalg.matrix_norm(D_KMN).square()
    wide = D_KMN.shape[-2] <= D_KMN.shape[-1]
    gram = D_KMN @ D_KMN.mT if wide else D_KMN.mT @ D_KMN
    sv = torch.linalg.eigvalsh(gram.to(torch.float64)).clamp_min(0.0).sqrt()
    return sv.sum(dim=-1).square().to(D_KMN.dtype)


def _dual_norms_sq(ds: list[Tensor], dual_norm: str, foreach: bool) -> list[Tensor]:
    """||d||_*^2 per matrix; one matrix at a time (loop) or batched by shape (foreach)."""
    if not foreach:
        return [_norms_sq_batched(d.unsqueeze(0), dual_norm)[0] for d in ds]
    out: list[Tensor] = [None] * len(ds)  # type: ignore[list-item]
    for idx in _by_shape(ds).values():
        n = _norms_sq_batched(torch.stack([ds[i] for i in idx]), dual_norm)
        for k, i in enumerate(idx):
            out[i] = n[k]
    return out


@register("optimizer", "muon")
class Muon(GroupStepOptimizer):
    """Muon for 2-D parameters, AdamW for the rest (see the module docstring).

    Args:
        lr: learning rate (both parts). momentum: mu of the EMA momentum. nesterov: use the
            Nesterov-style blend. weight_decay: decoupled, both parts.
        ns_steps: Newton-Schulz iterations. adjust_lr: ``"match_rms"``, ``"spectral"``, ``"none"``.
        adamw_betas, adamw_eps: AdamW hyperparameters of the non-Muon tensors.
        use_muon: per group: ``None``/``True`` = Muon for its 2-D tensors, ``False`` = all AdamW.
        maximize: ascend. foreach: batched multi-tensor path (``None``: loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.1,
        ns_steps: int = NS_STEPS,
        adjust_lr: str = "match_rms",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        use_muon: bool | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, adamw_betas, adamw_eps, weight_decay)
        _check_unit_interval("momentum", momentum)
        if ns_steps < 1:
            raise ValueError(f"Invalid ns_steps: {ns_steps} (must be >= 1)")
        if adjust_lr not in _ADJUST:
            raise ValueError(f"Invalid adjust_lr: {adjust_lr!r} (choose from {', '.join(_ADJUST)})")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, adjust_lr=adjust_lr, adamw_betas=tuple(adamw_betas),
                        adamw_eps=adamw_eps, use_muon=use_muon, maximize=maximize, foreach=foreach)
        defaults.update(getattr(self, "_extra_defaults", {}))  # a subclass's own hyperparameters
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ hooks for LANTON
    def _layer_lrs(self, group: dict, ps: list[Tensor], gs: list[Tensor], bufs: list[Tensor],
                   foreach: bool) -> list[float | Tensor]:
        """Per-layer learning rates of the group's Muon tensors (Muon: the group lr)."""
        return [group["lr"]] * len(ps)

    # ------------------------------------------------------------------ step
    def _step_group(self, group: dict, params: list[Tensor], grads: list[Tensor],
                    foreach: bool) -> None:
        if group["maximize"]:
            grads = [-g for g in grads]
        muon_on = group["use_muon"] is not False
        mp, mg, ap, ag = [], [], [], []
        for p, g in zip(params, grads):
            if muon_on and p.ndim == 2 and p.numel() > 0:
                mp.append(p)
                mg.append(g)
            else:
                ap.append(p)
                ag.append(g)
        if mp:
            self._muon_update(group, mp, mg, foreach)
        if ap:
            self._adamw_update(group, ap, ag, foreach)

    def _muon_update(self, group: dict, ps: list[Tensor], gs: list[Tensor], foreach: bool) -> None:
        mu = group["momentum"]
        bufs = []
        for p in ps:
            state = self.state[p]
            if not state:
                state["step"] = _step_tensor()
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        steps = [self.state[p]["step"] for p in ps]
        lrs = self._layer_lrs(group, ps, gs, bufs, foreach)  # before m absorbs g
        wd = group["weight_decay"]
        factors = [_lr_factor(p.shape, group["adjust_lr"]) for p in ps]
        if foreach:
            torch._foreach_add_(steps, 1.0)
            torch._foreach_lerp_(bufs, gs, 1.0 - mu)
            us = torch._foreach_lerp(gs, bufs, mu) if group["nesterov"] else bufs
        else:
            us = []
            for s, b, g in zip(steps, bufs, gs):
                s += 1
                b.lerp_(g, 1.0 - mu)
                us.append(g.lerp(b, mu) if group["nesterov"] else b)
        os_ = _orthogonalize(list(us), group["ns_steps"], foreach)
        if foreach:
            if wd != 0.0:
                torch._foreach_mul_(ps, [1.0 - lr * wd for lr in lrs])
            scales = [-lr * f for lr, f in zip(lrs, factors)]
            torch._foreach_add_(ps, torch._foreach_mul(os_, scales))
        else:
            for p, o, lr, f in zip(ps, os_, lrs, factors):
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.add_(o.mul_(-lr * f))  # o is NS5's fresh output; lr may be a 0-d tensor

    def _adamw_update(self, group: dict, ps: list[Tensor], gs: list[Tensor], foreach: bool) -> None:
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in ps:
            state = self.state[p]
            if not state:
                state["step"] = _step_tensor()
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["adamw_betas"]
        _adamw(ps, gs, exp_avgs, exp_avg_sqs, [], steps, foreach=foreach, amsgrad=False,
               beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
               eps=group["adamw_eps"], maximize=False)


@register("optimizer", "lanton")
class NoiseAdaptiveMuon(Muon):
    """Muon with noise-adaptive layerwise learning rates (LANTON; module docstring).

    Extra args:
        noise_beta: EMA coefficient of the per-layer noise estimate H.
        noise_estimator: ``"momentum"`` (||g - m||_*^2) or ``"difference"``
            (||g_t - g_{t-1}||_*^2 / 2).
        dual_norm: ``"nuclear"`` (exact dual of the spectral norm) or ``"frobenius"``.
        noise_eps: added to both sigmas of the ratio (keeps lr finite for noise-free layers).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.1,
        ns_steps: int = NS_STEPS,
        adjust_lr: str = "match_rms",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        use_muon: bool | None = None,
        noise_beta: float = 0.99,
        noise_estimator: str = "momentum",
        dual_norm: str = "nuclear",
        noise_eps: float = 1e-8,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_unit_interval("noise_beta", noise_beta)
        _check_nonneg("noise_eps", noise_eps)
        if noise_estimator not in _ESTIMATORS:
            raise ValueError(f"Invalid noise_estimator: {noise_estimator!r} "
                             f"(choose from {', '.join(_ESTIMATORS)})")
        if dual_norm not in _DUAL:
            raise ValueError(f"Invalid dual_norm: {dual_norm!r} (choose from {', '.join(_DUAL)})")
        self._extra_defaults = dict(noise_beta=noise_beta, noise_estimator=noise_estimator,
                                    dual_norm=dual_norm, noise_eps=noise_eps)
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, ns_steps=ns_steps, adjust_lr=adjust_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, use_muon=use_muon,
                         maximize=maximize, foreach=foreach)

    def _layer_lrs(self, group, ps, gs, bufs, foreach):
        beta, est = group["noise_beta"], group["noise_estimator"]
        states = [self.state[p] for p in ps]
        for p, s in zip(ps, states):
            if "noise_sq" not in s:
                s["noise_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)
                s["noise_count"] = torch.zeros((), dtype=torch.float32)
        # a sample needs a reference: the momentum (after the first step) or the last grad
        has_ref = [float(s["step"]) > 0 and (est == "momentum" or "prev_grad" in s) for s in states]
        idx = [i for i, h in enumerate(has_ref) if h]
        if idx:
            refs = [bufs[i] if est == "momentum" else states[i]["prev_grad"] for i in idx]
            sub = [gs[i] for i in idx]
            diffs = torch._foreach_sub(sub, refs) if foreach else [g - r for g, r in zip(sub, refs)]
            samples = _dual_norms_sq(list(diffs), group["dual_norm"], foreach)
            if est == "difference":
                samples = [x * 0.5 for x in samples]  # Var(g_t - g_{t-1}) = 2 Var(g)
            for i, x in zip(idx, samples):
                s = states[i]
                s["noise_sq"].mul_(beta).add_(x, alpha=1.0 - beta)
                s["noise_count"] += 1
        if est == "difference":
            for g, s in zip(gs, states):
                if "prev_grad" in s:
                    s["prev_grad"].copy_(g)
                else:
                    s["prev_grad"] = g.clone(memory_format=torch.preserve_format)
        sig = {}
        for i, s in enumerate(states):
            n = float(s["noise_count"])
            if n > 0:
                sig[i] = (s["noise_sq"] / (1.0 - beta**n)).sqrt()
        if not sig:
            return [group["lr"]] * len(ps)
        eps = group["noise_eps"]
        smin = torch.stack(list(sig.values())).min()
        base = smin.new_tensor(group["lr"])  # all 0-d tensors: foreach needs one list type
        return [base * (smin + eps) / (sig[i] + eps) if i in sig else base for i in range(len(ps))]
