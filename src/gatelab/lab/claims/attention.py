"""Claim 1: G1 gated attention lowers the loss and removes the attention sink.

"Gated Attention for Large Language Models" (Qiu et al., 2025; METHODS.md §3.1): a sigmoid
gate after SDPA, head-wise or element-wise; the non-sparse NS-sigmoid gate is the control
that should recover at most about half the gain.
"""
from __future__ import annotations

from . import budget
from .base import Claim, Finding, Records, claim, compare, values


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
