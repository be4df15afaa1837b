"""Claims 1 and 2: G1 gated attention lowers the loss, removes the attention sink and
tolerates a larger learning rate.

"Gated Attention for Large Language Models" (Qiu et al., 2025; METHODS.md §3.1): a sigmoid
gate after SDPA, head-wise or element-wise; the non-sparse NS-sigmoid gate is the control
that should recover at most about half the gain. Their 1.7B baseline diverges at an lr where
the gated model reaches its best loss.
"""
from __future__ import annotations

import math

from ..stats import mean_std
from . import budget
from .base import Claim, Finding, Records, claim, compare, finished, values


def _mixer(**options: object) -> dict:
    return {"model": {"block": {"mixer": options}}}


SEQ_LEN = budget.BASE["data"]["seq_len"]


def uniform_first_token_share(seq_len: int) -> float:
    """F-Attn of uniform causal attention: mean over queries i >= 1 of 1/(i+1) (gatelab's F-Attn
    averages over i >= 1). A sink "forms" when the baseline's F-Attn is well above this."""
    return sum(1.0 / (i + 1) for i in range(1, seq_len)) / (seq_len - 1)


def evaluate(records: Records) -> list[Finding]:
    loss = {v: values(records, v, "val_loss") for v in ("base", "headwise", "elementwise", "ns_sigmoid")}
    fattn = {v: values(records, v, "f_attn") for v in ("base", "headwise", "elementwise")}
    uniform = uniform_first_token_share(SEQ_LEN)
    base_fattn = sum(fattn["base"]) / len(fattn["base"]) if fattn["base"] else 0.0
    sink_note = (f"uniform attention would give F-Attn {uniform:.3f} at T {SEQ_LEN}; "
                 + ("a sink formed in the baseline" if base_fattn > 2 * uniform
                    else "no sink formed in the baseline at this budget, so this row cannot test the claim"))
    return [
        compare("val loss: head-wise gate < no gate", loss["headwise"], loss["base"], "less"),
        compare("val loss: element-wise gate < no gate", loss["elementwise"], loss["base"], "less"),
        compare("F-Attn: head-wise gate < no gate", fattn["headwise"], fattn["base"], "less", "{:.3f}",
                note=sink_note),
        compare("F-Attn: element-wise gate < no gate", fattn["elementwise"], fattn["base"], "less", "{:.3f}"),
        compare("val loss: NS-sigmoid control > head-wise gate (control recovers less)",
                loss["ns_sigmoid"], loss["headwise"], "greater"),
    ]


GATED_ATTENTION = claim(Claim(
    name="gated_attention",
    number="1",
    title="G1 gated attention",
    published="PPL 6.026 -> 5.792 head-wise / 5.761 element-wise; F-Attn 0.467 -> 0.073 / 0.048; "
              "NS-sigmoid control 5.900",
    setting="no gate / head-wise / element-wise / head-wise NS-sigmoid, G1 position",
    sweep=budget.sweep("gated_attention", {
        "base": {},
        "headwise": _mixer(gate="headwise"),
        "elementwise": _mixer(gate="elementwise"),
        "ns_sigmoid": _mixer(gate="headwise", gate_fn="ns_sigmoid"),
    }),
    evaluate=evaluate,
))


LR_MULTIPLIERS = (1, 2, 4, 8)
LRS = [budget.BASE["optim"]["lr"] * m for m in LR_MULTIPLIERS]
#: fixed before any run: an lr is stable for a variant when every seed finished with a finite
#: val loss and the seed mean is within this many nats of the variant's best mean over the grid
STABLE_TOLERANCE = 0.05


def lr_cells(records: Records, variant: str) -> dict[float, list[dict]]:
    """`variant`'s records (finished or failed) by their ``optim.lr``."""
    cells: dict[float, list[dict]] = {}
    for r in records:
        lr = (r.get("params") or {}).get("optim.lr")
        if r.get("variant") == variant and lr is not None:
            cells.setdefault(float(lr), []).append(r)
    return cells


def _finite_mean(rows: list[dict]) -> float:
    """Mean val loss over the seeds; NaN when any seed failed or has no finite val loss."""
    vals = values(rows, rows[0]["variant"], "val_loss")
    return mean_std(vals)[0] if len(finished(rows)) == len(rows) == len(vals) else math.nan


def max_stable_lr(records: Records, variant: str) -> tuple[float | None, str]:
    """The largest lr at which `variant` is stable (see STABLE_TOLERANCE), and a note giving the
    mean val loss per lr ("diverged" where a seed failed or went non-finite)."""
    means = {lr: _finite_mean(rows) for lr, rows in sorted(lr_cells(records, variant).items())}
    finite = [m for m in means.values() if math.isfinite(m)]
    if not finite:
        return None, f"{variant}: no lr with every seed finished"
    best = min(finite)
    stable = [lr for lr, m in means.items() if math.isfinite(m) and m <= best + STABLE_TOLERANCE]
    per_lr = ", ".join(f"{lr:g}: {m:.4f}" if math.isfinite(m) else f"{lr:g}: diverged" for lr, m in means.items())
    return max(stable), f"{variant} {per_lr}"


def evaluate_lr(records: Records) -> list[Finding]:
    (gated, gated_note), (base, base_note) = max_stable_lr(records, "headwise"), max_stable_lr(records, "base")
    note = (f"stable = every seed finite and mean val loss <= the variant's best + {STABLE_TOLERANCE} nats; "
            f"{gated_note}; {base_note}")
    if gated is None or base is None:
        findings = [Finding("max stable lr: head-wise gate > no gate", "-", "no data", None, "grid", note)]
    else:
        verdict = "yes" if gated > base else "no effect" if gated == base else "no"
        if gated == base == LRS[-1]:
            note += "; both stable over the whole grid, so the grid never reached the baseline's limit"
        findings = [Finding("max stable lr: head-wise gate > no gate", f"{gated:g} vs {base:g}", verdict, None,
                            "grid", note)]
    gated_cells, base_cells = lr_cells(records, "headwise"), lr_cells(records, "base")
    for m, lr in zip(LR_MULTIPLIERS, LRS):
        findings.append(compare(f"val loss at lr x{m}: head-wise gate < no gate",
                                values(gated_cells.get(lr, []), "headwise", "val_loss"),
                                values(base_cells.get(lr, []), "base", "val_loss"), "less"))
    return findings


GATED_ATTENTION_LR = claim(Claim(
    name="gated_attention_lr",
    number="2",
    title="G1 gated attention tolerates a larger lr",
    published="1.7B/48-layer: the baseline diverges at lr 8e-3, where the gated model reaches its best PPL 7.078",
    setting=f"no gate vs head-wise G1 gate at lr x {{1, 2, 4, 8}} of the budget's 3e-3 (grad clip 1.0 as "
            f"in the budget); stable lr = every seed finite and mean val loss within {STABLE_TOLERANCE} nats "
            f"of the variant's best over the grid (fixed before running); verdict yes only when the gated "
            f"max stable lr is strictly larger",
    sweep=budget.sweep("gated_attention_lr", {
        "base": {},
        "headwise": _mixer(gate="headwise"),
    }, grid={"optim.lr": LRS}),
    evaluate=evaluate_lr,
))
