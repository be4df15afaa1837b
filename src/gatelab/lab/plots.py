"""Matplotlib figures for `gatelab report`, each from plain data (no run directories here).

Every function returns a `matplotlib.figure.Figure`, or None when its data is empty, so a
report draws only the figures its runs have data for. Figures are built without pyplot
(no global state, no display backend). `colors` maps each series label to one colour so a
variant looks the same in every figure.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, MaxNLocator, NullFormatter

DPI = 110


@dataclass
class Curve:
    """A mean curve over seeds: steps, mean, and std (zeros for one seed)."""

    steps: list[float]
    mean: list[float]
    std: list[float] = field(default_factory=list)


@dataclass
class Point:
    """One variant in a cost/quality plane: x = cost (mean), y = loss mean +/- std."""

    label: str
    x: float
    y: float
    y_std: float = 0.0


def palette(labels: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A distinct colour per label (tab10, or tab20 beyond ten labels)."""
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(ncols: int = 1, width: float = 7.5, height: float = 4.2) -> tuple[Figure, np.ndarray]:
    """A row of `ncols` plain axes (light grid, no top/right spines)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.ticklabel_format(axis="y", useOffset=False)
    return fig, axes


def _legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the figure, outside the plotting area on the right (labels de-duplicated)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", frameon=False, fontsize="small")


def loss_curves(train: dict[str, Curve], val: dict[str, Curve], colors: dict[str, tuple]) -> Figure | None:
    """Training and validation loss against step, one colour per variant, +/- std band over seeds.

    The y range leaves out the first 10% of training, where the loss falls from ln(vocab)
    and would flatten every later difference."""
    if not train and not val:
        return None
    fig, (ax_t, ax_v) = _figure(2, width=10.5)
    for ax, curves, title, marker in ((ax_t, train, "training loss", None), (ax_v, val, "validation loss", "o")):
        for label, c in curves.items():
            steps, mean = np.asarray(c.steps), np.asarray(c.mean)
            ax.plot(steps, mean, color=colors[label], label=label, marker=marker, markersize=3, linewidth=1.4)
            if c.std and max(c.std) > 0:
                std = np.asarray(c.std)
                ax.fill_between(steps, mean - std, mean + std, color=colors[label], alpha=0.2, linewidth=0)
        _focus_late(ax, curves)
        ax.set(title=title, xlabel="step", ylabel="loss (nats / token)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    _legend(fig, [ax_t, ax_v])
    return fig


def _focus_late(ax: Axes, curves: dict[str, Curve]) -> None:
    late = [m for c in curves.values() for s, m in zip(c.steps, c.mean)
            if s >= 0.1 * max(c.steps) and math.isfinite(m)]
    if len(late) > 1 and max(late) > min(late):
        pad = 0.08 * (max(late) - min(late))
        ax.set_ylim(min(late) - pad, max(late) + pad)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower or equal in both coordinates,
    lower in one), sorted by x: the best loss reachable at each cost."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(xo <= x and yo <= y and (xo < x or yo < y) for j, (xo, yo) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def pareto(panels: dict[str, list[Point]], colors: dict[str, tuple]) -> Figure | None:
    """Validation loss against a cost per panel (log x), each variant a point with its seed
    std as error bar, the Pareto front across variants as a dashed staircase. A panel needs
    at least two variants."""
    panels = {xlabel: pts for xlabel, pts in panels.items() if len(pts) >= 2}
    if not panels:
        return None
    fig, axes = _figure(len(panels), width=5.2 * len(panels) + 1.8)
    for ax, (xlabel, pts) in zip(axes, panels.items()):
        front = pareto_front([(p.x, p.y) for p in pts])
        fx, fy = [pts[i].x for i in front], [pts[i].y for i in front]
        ax.step(fx, fy, where="post", color="0.35", linestyle="--", linewidth=1.2, label="Pareto front", zorder=1)
        for i, p in enumerate(pts):
            on_front = i in front
            ax.errorbar(p.x, p.y, yerr=p.y_std or None, fmt="o", color=colors[p.label], label=p.label, capsize=3,
                        markersize=8 if on_front else 6, markeredgecolor="black" if on_front else colors[p.label],
                        zorder=3)
            ax.annotate(p.label, (p.x, p.y), xytext=(6, 4), textcoords="offset points", fontsize="x-small")
        _log_axis(ax, [p.x for p in pts])
        ax.set(xlabel=xlabel, ylabel="validation loss (nats / token)")
    _legend(fig, axes)
    return fig


def _log_axis(ax: Axes, xs: Sequence[float]) -> None:
    """Log x with round ticks in engineering notation (500k, 1M, 2M); widened by 1.4x each side."""
    lo, hi = min(xs) / 1.4, max(xs) * 1.4
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def log_ticks(lo: float, hi: float) -> list[float]:
    """Round values in [lo, hi] for a log axis: powers of ten if they give three or more,
    else 1-2-5 steps if they do, else finer steps."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8)):
        ticks = [m * 10.0 ** k for k in decades for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) >= 3:
            break
    min_gap = math.log10(hi / lo) / 7  # labels of neighbouring ticks must not collide
    kept = ticks[:1]
    for t in ticks[1:]:
        if math.log10(t / kept[-1]) >= min_gap:
            kept.append(t)
    return kept


def expert_load(loads: dict[str, tuple[list[int], np.ndarray]]) -> Figure | None:
    """Heatmap per variant of each expert's load relative to the layer mean (layer x expert;
    1 = perfectly balanced, white). `loads` maps a label to (layer indices, load_LE)."""
    if not loads:
        return None
    n = len(loads)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    max_e = max(a.shape[1] for _, a in loads.values())
    max_l = max(a.shape[0] for _, a in loads.values())
    fig = Figure(figsize=(min(4.0 + 0.35 * max_e, 7.5) * ncols, (1.4 + 0.45 * max_l) * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    rel = {label: load_LE / np.maximum(load_LE.mean(axis=1, keepdims=True), 1e-12) for label, (_, load_LE) in loads.items()}
    vmax = max(2.0, max(float(r.max()) for r in rel.values()))
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=vmax)
    image = None
    for ax, (label, (layers, _)) in zip(axes, loads.items()):
        r_LE = rel[label]
        image = ax.imshow(r_LE, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
        ax.set(title=label, xlabel="expert", ylabel="layer")
        ax.set_xticks(range(r_LE.shape[1]))
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
        if r_LE.size <= 256:
            for (li, e), v in np.ndenumerate(r_LE):
                ax.text(e, li, f"{v:.2f}", ha="center", va="center", fontsize=6 if r_LE.shape[1] > 8 else 7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes[:n].tolist(), label="load / mean load (1 = balanced)", shrink=0.9)
    return fig


def experts_per_token(hists: dict[str, list[float]], colors: dict[str, tuple]) -> Figure | None:
    """Fraction of tokens sent to 0, 1, 2, ... real experts (grouped bars per variant); the
    x axis ends one bin after the largest count any token used."""
    if not hists:
        return None
    fig, (ax,) = _figure()
    used = max((i for h in hists.values() for i, p in enumerate(h) if p > 0), default=0)
    n_bins = min(used + 2, max(len(h) for h in hists.values()))
    width = 0.8 / len(hists)
    for j, (label, h) in enumerate(hists.items()):
        ax.bar(np.arange(n_bins) - 0.4 + width * (j + 0.5), (list(h) + [0.0] * n_bins)[:n_bins], width,
               color=colors[label], label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_xlim(-0.6, n_bins - 0.4)
    ax.set(xlabel="experts used by a token", ylabel="fraction of tokens", ylim=(0, 1.05))
    _legend(fig, [ax])
    return fig


def router_entropy(curves: dict[str, Curve], n_experts: dict[str, int], colors: dict[str, tuple]) -> Figure | None:
    """Router entropy (mean over MoE layers) against step; dotted lines mark ln E, the
    entropy of a router that has not learned to prefer any expert."""
    if not curves:
        return None
    fig, (ax,) = _figure()
    for label, c in curves.items():
        ax.plot(c.steps, c.mean, color=colors[label], label=label, linewidth=1.4)
    for e in sorted(set(n_experts.values())):
        ax.axhline(math.log(e), color="0.5", linestyle=":", linewidth=1)
        ax.annotate(f"uniform over {e} experts", (0, math.log(e)), xycoords=("axes fraction", "data"),
                    xytext=(4, 3), textcoords="offset points", fontsize="x-small", color="0.35")
    top = max([math.log(e) for e in n_experts.values()] + [m for c in curves.values() for m in c.mean])
    ax.set(xlabel="step", ylabel="router entropy (nats)", ylim=(0, 1.08 * top))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    _legend(fig, [ax])
    return fig


def lighter(color: tuple, amount: float = 0.45) -> tuple[float, ...]:
    """`color` mixed with white (for a second series of the same variant)."""
    return tuple(c + (1 - c) * amount for c in color[:3])


def per_layer_bars(series: dict[str, dict[int, float]], colors: dict[str, tuple], ylabel: str,
                   ylim: tuple[float, float] | None = None) -> Figure | None:
    """Grouped bars: one non-negative value per layer for each series (e.g. a variant's F-Attn
    per layer), labelled with its value while there are few bars."""
    series = {label: vals for label, vals in series.items() if vals}
    if not series:
        return None
    layers = sorted({i for vals in series.values() for i in vals})
    fig, (ax,) = _figure(width=max(6.0, 1.2 + 0.6 * len(layers) * max(1, len(series) / 2)))
    width = 0.8 / len(series)
    pos = {layer: k for k, layer in enumerate(layers)}
    n_bars = sum(len(vals) for vals in series.values())
    for j, (label, vals) in enumerate(series.items()):
        xs = [pos[i] - 0.4 + width * (j + 0.5) for i in vals]
        bars = ax.bar(xs, list(vals.values()), width, color=colors[label], label=label)
        if len(series) <= 3 and n_bars <= 24:
            ax.bar_label(bars, fmt="%.2f", fontsize="x-small", padding=2)
    ax.set_xticks(range(len(layers)), [str(i) for i in layers])
    ax.set(xlabel="layer", ylabel=ylabel)
    top = max((v for vals in series.values() for v in vals.values()), default=0.0)
    ax.set_ylim(*(ylim or (0, 1.15 * top if top > 0 else 1)))
    _legend(fig, [ax])
    return fig
