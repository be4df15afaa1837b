"""Learning-rate schedules as `torch.optim.lr_scheduler.LambdaLR` multipliers.

Every factory has the signature ``fn(optimizer, total_steps, *, warmup_steps=0, ...)`` and
returns a LambdaLR whose multiplier of each group's base lr at scheduler step t
(t = 0 for the first optimizer step; call ``scheduler.step()`` after each
``optimizer.step()``) is:

* warm-up, t < W: (t + 1)/W (the first step is not wasted at lr 0; full lr at t = W - 1);
* afterwards the schedule's shape, with p = (t - W)/(T - W) the post-warm-up progress.

Registered (kind "schedule"): constant, cosine, linear, wsd, sgdr, inverse_sqrt, refined.
Multipliers are picklable callables, so ``scheduler.state_dict()`` saves their settings.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from ..core.errors import ConfigError
from ..core.registry import register

__all__ = [
    "constant",
    "cosine",
    "linear",
    "wsd",
    "sgdr",
    "inverse_sqrt",
    "refined",
    "refined_multipliers",
]

_WSD_SHAPES = ("linear", "cosine", "1-sqrt")


class _Multiplier:
    """Base callable: warm-up, then `shape(t)`; attributes are saved by LambdaLR.state_dict."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise ConfigError(f"schedule total_steps must be an int >= 1, got {total_steps!r}")
        if not (isinstance(warmup_steps, int) and 0 <= warmup_steps <= total_steps):
            raise ConfigError(
                f"schedule warmup_steps must be an int in [0, total_steps={total_steps}], "
                f"got {warmup_steps!r}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        return self.shape(t)

    def progress(self, t: int) -> float:
        """(t - W)/(T - W), clipped to [0, 1]."""
        span = self.total_steps - self.warmup_steps
        return min(1.0, max(0.0, (t - self.warmup_steps) / span)) if span > 0 else 1.0

    def shape(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"schedule {name} must be in [0, 1], got {value!r}")


def _cosine(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * p))


class _Constant(_Multiplier):
    def shape(self, t: int) -> float:
        return 1.0


class _Cosine(_Multiplier):
    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
        super().__init__(total_steps, warmup_steps)
        _check_ratio("min_lr_ratio", min_lr_ratio)
        self.min_lr_ratio = min_lr_ratio

    def shape(self, t: int) -> float:
        r = self.min_lr_ratio
        return r + (1 - r) * _cosine(self.progress(t))


class _Linear(_Cosine):
    def shape(self, t: int) -> float:
        r = self.min_lr_ratio
        return r + (1 - r) * (1.0 - self.progress(t))


class _WSD(_Multiplier):
    def __init__(self, total_steps: int, warmup_steps: int, decay_fraction: float,
                 decay_shape: str, min_lr_ratio: float) -> None:
        super().__init__(total_steps, warmup_steps)
        _check_ratio("decay_fraction", decay_fraction)
        _check_ratio("min_lr_ratio", min_lr_ratio)
        if decay_shape not in _WSD_SHAPES:
            raise ConfigError(f"wsd decay_shape must be one of {_WSD_SHAPES}, got {decay_shape!r}")
        self.decay_steps = min(round(decay_fraction * total_steps), total_steps - warmup_steps)
        self.decay_shape = decay_shape
        self.min_lr_ratio = min_lr_ratio

    def shape(self, t: int) -> float:
        start = self.total_steps - self.decay_steps
        if t < start or self.decay_steps == 0:
            return 1.0
        p = min(1.0, (t - start) / self.decay_steps)
        if self.decay_shape == "linear":
            f = 1.0 - p
        elif self.decay_shape == "cosine":
            f = _cosine(p)
        else:
            f = 1.0 - math.sqrt(p)
        r = self.min_lr_ratio
        return r + (1 - r) * f


class _SGDR(_Multiplier):
    def __init__(self, total_steps: int, warmup_steps: int, t_0: int, t_mult: int,
                 min_lr_ratio: float) -> None:
        super().__init__(total_steps, warmup_steps)
        _check_ratio("min_lr_ratio", min_lr_ratio)
        if not (isinstance(t_0, int) and t_0 >= 0):
            raise ConfigError(f"sgdr t_0 must be an int >= 0 (0: one cycle), got {t_0!r}")
        if not (isinstance(t_mult, int) and t_mult >= 1):
            raise ConfigError(f"sgdr t_mult must be an int >= 1, got {t_mult!r}")
        self.t_0 = t_0 or max(1, total_steps - warmup_steps)
        self.t_mult = t_mult
        self.min_lr_ratio = min_lr_ratio

    def shape(self, t: int) -> float:
        t_cur, t_i = t - self.warmup_steps, self.t_0
        while t_cur >= t_i:  # find the current cycle: T_i = T_0 * T_mult^i
            t_cur -= t_i
            t_i *= self.t_mult
        r = self.min_lr_ratio
        return r + (1 - r) * _cosine(t_cur / t_i)


class _InverseSqrt(_Multiplier):
    def __init__(self, total_steps: int, warmup_steps: int, timescale: int) -> None:
        super().__init__(total_steps, warmup_steps)
        if not (isinstance(timescale, int) and timescale >= 0):
            raise ConfigError(f"inverse_sqrt timescale must be an int >= 0, got {timescale!r}")
        self.timescale = timescale or max(1, warmup_steps)

    def shape(self, t: int) -> float:
        return math.sqrt(self.timescale / max(t + 1, self.timescale))


class _Table(_Multiplier):
    """Multipliers read from a table (the refined schedule), after warm-up."""

    def __init__(self, total_steps: int, warmup_steps: int, table: Sequence[float]) -> None:
        super().__init__(total_steps, warmup_steps)
        self.table = [float(x) for x in table]

    def __call__(self, t: int) -> float:
        value = self.table[min(t, len(self.table) - 1)]
        return value * (t + 1) / self.warmup_steps if t < self.warmup_steps else value


def _lambda(optimizer: torch.optim.Optimizer, mult: _Multiplier) -> LambdaLR:
    return LambdaLR(optimizer, lr_lambda=mult)


@register("schedule", "constant")
def constant(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up, then the base lr."""
    return _lambda(optimizer, _Constant(total_steps, warmup_steps))


@register("schedule", "cosine")
def cosine(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0,
           min_lr_ratio: float = 0.0) -> LambdaLR:
    """Warm-up, then r + (1-r)·½(1 + cos(πp)) down to r = min_lr_ratio at t = T."""
    return _lambda(optimizer, _Cosine(total_steps, warmup_steps, min_lr_ratio))


@register("schedule", "linear")
def linear(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0,
           min_lr_ratio: float = 0.0) -> LambdaLR:
    """Warm-up, then r + (1-r)(1 - p): η_t = η(1 - t/T), the worst-case-optimal last-iterate
    schedule of "When, Why and How Much? Adaptive Learning Rate Scheduling by Refinement"
    (Defazio et al., 2023), which reports linear >= cosine on 10 problems and LLMs."""
    return _lambda(optimizer, _Linear(total_steps, warmup_steps, min_lr_ratio))


@register("schedule", "wsd")
def wsd(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0,
        decay_fraction: float = 0.2, decay_shape: str = "1-sqrt",
        min_lr_ratio: float = 0.0) -> LambdaLR:
    """Warmup-stable-decay: warm-up, constant, then decay over the last
    D = round(decay_fraction·T) steps with shape "linear" (1-p), "cosine" or "1-sqrt"
    (1-√p), p = (t - (T-D))/D. No published defaults (METHODS.md §5.2): record W, D, shape.
    The stable phase can branch into several decay lengths from one checkpoint."""
    return _lambda(optimizer, _WSD(total_steps, warmup_steps, decay_fraction, decay_shape,
                                   min_lr_ratio))


@register("schedule", "sgdr")
def sgdr(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0,
         t_0: int = 0, t_mult: int = 2, min_lr_ratio: float = 0.0) -> LambdaLR:
    """SGDR warm restarts ("SGDR: Stochastic Gradient Descent with Warm Restarts", 2016):
    η = η_min + ½(η_max - η_min)(1 + cos(π T_cur/T_i)), T_i = t_0·t_mult^i, restarting at
    the end of each cycle; η_min = min_lr_ratio·η_max. t_0 = 0 means one cycle over the
    run (plain cosine). Counted after warm-up."""
    return _lambda(optimizer, _SGDR(total_steps, warmup_steps, t_0, t_mult, min_lr_ratio))


@register("schedule", "inverse_sqrt")
def inverse_sqrt(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0,
                 timescale: int = 0) -> LambdaLR:
    """Warm-up, then sqrt(τ/(t+1)) (capped at 1), τ = timescale or warmup_steps (or 1)."""
    return _lambda(optimizer, _InverseSqrt(total_steps, warmup_steps, timescale))


def refined_multipliers(
    grad_norms: Sequence[float], total_steps: int | None = None, *, power: float = 2.0,
    smoothing: float = 0.05,
) -> list[float]:
    """The refined schedule of Defazio et al. (2023) from a pilot run's gradient norms.

    Ĝ = median filter of the norms (width max(1, smoothing·T), edge padding);
    w_t = Ĝ_t^{-power}; η_t ∝ w_t · Σ_{p>t} w_p, normalised to max 1. Use power 2 with
    ℓ2 gradient norms for SGD-type methods and power 1 with ℓ1 norms for Adam-type ones
    (the paper's two variants). With constant norms this is exactly linear decay
    (T - t)/T; rising norms late in training give the fast final decay, small early norms
    a warm-up. The pilot run is resampled (linear interpolation) to `total_steps`.
    Not confirmed against the paper's algorithm box (a search of stored pages on 2026-11-23
    reached only the abstract of arXiv 2310.07831): the median-filter width is our choice.
    """
    g = np.asarray(list(grad_norms), dtype=np.float64)
    if g.ndim != 1 or g.size < 2 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ConfigError("refined schedule needs >= 2 positive, finite gradient norms")
    if power <= 0 or not 0 <= smoothing <= 1:
        raise ConfigError(f"refined schedule: power must be > 0 and smoothing in [0, 1], "
                          f"got power={power}, smoothing={smoothing}")
    n = total_steps or g.size
    if n != g.size:
        g = np.interp(np.linspace(0, g.size - 1, n), np.arange(g.size), g)
    width = max(1, int(round(smoothing * n)))
    if width > 1:
        left, right = (width - 1) // 2, width // 2
        padded = np.pad(g, (left, right), mode="edge")
        g = np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)
    w = g**-power
    tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # Σ_{p>t} w_p
    eta = w * tail
    if eta.max() <= 0:  # a single step
        return [1.0] * n
    return (eta / eta.max()).tolist()


@register("schedule", "refined")
def refined(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_steps: int = 0,
            grad_norms: tuple[float, ...] = (), power: float = 2.0,
            smoothing: float = 0.05) -> LambdaLR:
    """Schedule refinement: multipliers from `refined_multipliers(grad_norms, total_steps)`
    (record the norms of a pilot run with any schedule, e.g. linear). Optional extra
    warm-up multiplies the first steps by (t+1)/W."""
    if not grad_norms:
        raise ConfigError("refined schedule needs grad_norms from a pilot run "
                          "(see gatelab.optim.schedules.refined_multipliers)")
    table = refined_multipliers(grad_norms, total_steps, power=power, smoothing=smoothing)
    return _lambda(optimizer, _Table(total_steps, warmup_steps, table))

