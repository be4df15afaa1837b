"""Adaptive-depth claims: GateSkip [12], skip the middle layers [13], Mixture-of-Depths [14]
(METHODS.md §4). Compute saved is counted from executed FLOPs, never from gate means.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...depth import compute_saved
from . import budget
from .base import Claim, Finding, Records, claim, compare, finished, fmt_ms, metric, threshold, values
from .probes import trained

# ---------------------------------------------------------------------------- [12] GateSkip

KEEPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.5)
SELECTS = ("gate", "random")
MAX_LOSS_INCREASE = 0.10


def _key(keep: float, select: str, what: str) -> str:
    return f"skip/keep={keep:g}/{select}/{what}"


def probe_gateskip(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Val loss and eval compute saved of the trained GateSkip model at every inference budget
    in `KEEPS`, skipping the lowest-gate tokens or random ones (the baseline)."""
    out: dict[str, Any] = {}
    with trained(run_dir) as trainer:
        method, x_BT = trainer.model.depth, trainer.eval_set[0].x.to(trainer.device)
        for keep in KEEPS:
            for select in SELECTS:
                method.cfg.keep, method.cfg.select = keep, select
                out[_key(keep, select, "val_loss")] = trainer.evaluate()["val_loss"]
                out[_key(keep, select, "saved")], _ = compute_saved(trainer.model.eval(), x_BT)
    return out


def saved_within(record: dict[str, Any], max_increase: float = MAX_LOSS_INCREASE) -> float:
    """Largest eval compute saved (gate selection) whose val loss is within `max_increase`
    (relative) of the same model at keep 1."""
    full = metric(record, _key(1.0, "gate", "val_loss"))
    ok = [metric(record, _key(k, "gate", "saved")) for k in KEEPS
          if metric(record, _key(k, "gate", "val_loss")) <= (1 + max_increase) * full]
    return max(ok) if ok else math.nan


VARIANTS = {"gateskip_ramp": "with the paper's skip ramp", "gateskip": "without ramp"}


def _gateskip_rows(records: Records, variant: str, label: str) -> list[Finding]:
    runs = [r for r in finished(records) if r.get("variant") == variant]
    saved = [v for v in (saved_within(r) for r in runs) if math.isfinite(v)]
    curve = "; ".join(
        f"keep {k:g}: saved {fmt_ms(values(records, variant, _key(k, 'gate', 'saved')), '{:.1%}')}, "
        f"loss {fmt_ms(values(records, variant, _key(k, 'gate', 'val_loss')), '{:.3f}')} gate / "
        f"{fmt_ms(values(records, variant, _key(k, 'random', 'val_loss')), '{:.3f}')} random"
        for k in KEEPS)
    return [
        threshold(f"{label}: eval compute saved at <= {MAX_LOSS_INCREASE:.0%} val-loss increase >= 15%", saved,
                  0.15, "greater", "{:.3f}", note=f"curve (mean ± std over seeds): {curve}"),
        compare(f"{label}: val loss at keep 0.9, skip lowest-gate tokens < skip random tokens",
                values(records, variant, _key(0.9, "gate", "val_loss")),
                values(records, variant, _key(0.9, "random", "val_loss")), "less"),
    ]


def evaluate_gateskip(records: Records) -> list[Finding]:
    rows = [f for v, label in VARIANTS.items() for f in _gateskip_rows(records, v, label)]
    rows[0].note += ("; gatelab's GateSkip differs from the paper in that attention in a skipping branch sees "
                     "the kept tokens only (no KV copied from the previous layer, gatelab.depth.gateskip)")
    return rows


GATESKIP = claim(Claim(
    name="gateskip",
    number="12",
    title="GateSkip",
    published="up to 15% compute saved at >90% accuracy",
    setting=f"vector gates, lambda 0.01; training skip ramp 0.5% -> 10% over the {budget.STEPS} steps "
            f"(paper: over 5k) and without; eval keeps {', '.join(f'{k:g}' for k in KEEPS)} of tokens per "
            "branch (gate-ranked vs random)",
    sweep=budget.sweep("gateskip", {
        "gateskip_ramp": {"model": {"depth": {"name": "gateskip", "ramp_from": 0.005, "ramp_to": 0.1,
                                              "ramp_steps": budget.STEPS}}},
        "gateskip": {"model": {"depth": {"name": "gateskip"}}},
    }),
    evaluate=evaluate_gateskip,
    probe=probe_gateskip,
))


# ---------------------------------------------------------------------------- [13] skip-middle


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def evaluate_skip_middle(records: Records) -> list[Finding]:
    """Skip-middle against the deepest dense model whose FLOPs/token do not exceed its own
    (the shallower dense model at equal or lower compute)."""
    flops = {v: mean(values(records, v, "flops_per_token")) for v in ("dense_l4", "dense_l5", "skip_middle_l6")}
    loss = {v: mean(values(records, v, "val_loss")) for v in flops}
    skip = flops["skip_middle_l6"]
    cheaper = [v for v in ("dense_l5", "dense_l4") if flops[v] <= skip]
    ref = cheaper[0] if cheaper else "dense_l4"
    note = ("train fwd FLOPs/token (mean val loss): "
            + ", ".join(f"{v} {f:,.0f} ({loss[v]:.4f})" for v, f in flops.items())
            + f"; skip-middle is compared with {ref}"
            + ("" if cheaper else " (which costs more FLOPs than skip-middle: the comparison favours dense)"))
    return [compare(f"val loss: {ref.replace('_l', ' ')} layers <= skip-middle 6 layers (skip-middle not better)",
                    values(records, ref, "val_loss"), values(records, "skip_middle_l6", "val_loss"), "parity",
                    note=note)]


SKIP_MIDDLE = claim(Claim(
    name="skip_middle",
    number="13",
    title="skip the middle layers",
    published="no better CE-vs-FLOPs trade-off than dense models with fewer layers",
    setting="6-layer learned skip-middle gates (lambda 0.01) vs 4- and 5-layer dense",
    sweep=budget.sweep("skip_middle", {
        "dense_l4": {},
        "dense_l5": {"model": {"n_layer": 5}},
        "skip_middle_l6": {"model": {"n_layer": 6, "depth": {"name": "skip_middle", "sparsity": 0.01}}},
    }),
    evaluate=evaluate_skip_middle,
))


# ---------------------------------------------------------------------------- [14] MoD


def evaluate_mod(records: Records) -> list[Finding]:
    loss = {v: values(records, v, "val_loss") for v in ("dense_l4", "mod_l4", "dense_l2")}
    flops = {v: values(records, v, "flops_per_token") for v in ("dense_l4", "mod_l4", "dense_l2")}

    def ratio(v: str) -> str:
        if not flops[v] or not flops["mod_l4"]:
            return "-"
        return f"{sum(flops['mod_l4']) / len(flops['mod_l4']) / (sum(flops[v]) / len(flops[v])):.2f}"

    return [
        compare("val loss: MoD (4 layers) < dense 2 layers at ~equal FLOPs", loss["mod_l4"], loss["dense_l2"],
                "less", note=f"train fwd FLOPs/token MoD / dense-2-layer = {ratio('dense_l2')}"),
        compare("val loss: MoD (4 layers) ~ dense 4 layers, with fewer FLOPs", loss["mod_l4"], loss["dense_l4"],
                "parity", note=f"train fwd FLOPs/token MoD / dense-4-layer = {ratio('dense_l4')}"),
    ]


MOD = claim(Claim(
    name="mod",
    number="14",
    title="Mixture-of-Depths 12.5%",
    published="parity with the dense baseline at equal FLOPs, fewer FLOPs per forward",
    setting="every 2nd of 4 blocks at 12.5% capacity (predictor sampling at eval) vs dense 4 and 2 layers",
    sweep=budget.sweep("mod", {
        "dense_l4": {},
        "mod_l4": {"model": {"depth": {"name": "mod", "capacity": 0.125, "every": 2}}},
        "dense_l2": {"model": {"n_layer": 2}},
    }),
    evaluate=evaluate_mod,
))
