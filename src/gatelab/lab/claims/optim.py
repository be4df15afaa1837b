"""Adaptive optimizers vs AdamW, each at its best learning rate [19, 21, 22] (METHODS.md §5).

Best-over-lr per optimizer (zoology's habit): every optimizer gets a 3-4 point lr grid around
its paper's default, the lr with the lowest mean val loss over seeds is kept, and the
comparison uses that lr's seeds. D-Adaptation runs at its prescribed lr 1.0 (no tuning: that
is the claim). Lion uses the paper's recipe beta (0.9, 0.99) and a 10x weight decay so that
lr x wd matches AdamW's; the others use AdamW's betas (0.9, 0.95) and decoupled wd 0.1.
2 layers to fit 33 runs in the budget.
"""
from __future__ import annotations

from typing import Any

from ..stats import best_over
from . import budget
from .base import Claim, Finding, Records, claim, compare, finished

ADAMW_LRS = [1.0e-3, 3.0e-3, 1.0e-2]
LION_LRS = [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]


def _optim(name: str, lrs: list[float], **options: Any) -> dict[str, Any]:
    return {"optim": {"name": name, **options}, "grid": {"optim.lr": lrs}}


def _best(records: Records) -> dict[str, dict[str, Any]]:
    return {row["variant"]: row for row in best_over(finished(records), ["variant"], ["optim.lr"])}


GRIDS = {"adamw": ADAMW_LRS, "adabelief": ADAMW_LRS, "lion": LION_LRS}


def _at(best: dict[str, dict[str, Any]], variant: str) -> tuple[list[float], str]:
    row = best.get(variant)
    if row is None:
        return [], f"{variant}: no finished run"
    lr, grid = row["best"]["optim.lr"], GRIDS.get(variant, [])
    at_edge = len(grid) > 1 and lr in (grid[0], grid[-1])
    edge = " (at the edge of its grid: its optimum may lie outside)" if at_edge else ""
    return row["values"], f"{variant} best lr {lr:g} of {row['settings']}{edge}"


def evaluate(records: Records) -> list[Finding]:
    best = _best(records)
    adamw, adamw_note = _at(best, "adamw")
    findings = []
    if "adamw" in best and "lion" in best:
        ratio = best["adamw"]["best"]["optim.lr"] / best["lion"]["best"]["optim.lr"]
        findings.append(Finding("best lr: Lion's 3-10x below AdamW's", f"AdamW / Lion best lr = {ratio:g}",
                                "yes" if 3 <= round(ratio, 9) <= 10 else "no", None, "grid",
                                note=f"lr grids: AdamW {ADAMW_LRS}, Lion {LION_LRS}"))
    for variant, check, expect in (
        ("lion", "val loss at tuned lr: Lion < AdamW", "less"),
        ("adabelief", "val loss at tuned lr: AdaBelief (eps 1e-16) ~ AdamW", "parity"),
        ("dadapt_adam", "val loss: D-Adaptation (lr 1, untuned) ~ tuned AdamW", "parity"),
    ):
        vals, note = _at(best, variant)
        findings.append(compare(check, vals, adamw, expect, note=f"{note}; {adamw_note}"))
    return findings


OPTIMIZERS = claim(Claim(
    name="optimizers",
    number="19/21/22",
    title="adaptive optimizers vs AdamW at tuned lr",
    published="AdaBelief ~ Adam (eps matters); Lion's best lr 3-10x below AdamW's; D-Adaptation ~ tuned lr",
    setting="2 layers; best over lr per optimizer: AdamW and AdaBelief {1e-3, 3e-3, 1e-2}, "
            "Lion {1e-4 .. 3e-3}; D-Adaptation Adam lr 1",
    sweep=budget.sweep("optimizers", {
        "adamw": _optim("adamw", ADAMW_LRS, betas=[0.9, 0.95], weight_decay=0.1),
        "adabelief": _optim("adabelief", ADAMW_LRS, betas=[0.9, 0.95], weight_decay=0.1),
        "lion": _optim("lion", LION_LRS, betas=[0.9, 0.99], weight_decay=1.0),
        "dadapt_adam": _optim("dadapt_adam", [1.0], betas=[0.9, 0.95], weight_decay=0.1, decouple=True),
    }, base_cfg=budget.base(model={"n_layer": 2}), best_over=["optim.lr"]),
    evaluate=evaluate,
))
