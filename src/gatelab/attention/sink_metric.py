"""Attention-sink and massive-activation measurements on a fixed batch (METHODS §3.2).

- **F-Attn** (first-token attention): per softmax-attention layer, the attention mass on key 0
  averaged over batch, heads and queries i >= 1 (query 0 attends only to itself), plus the
  maximum over heads. Read out by attending over one-hot values inside the fused SDPA,
  so no T x T probability matrix is materialised.
  With ``sink: token`` key 0 is still the first *real* token; the learned sink token's own
  mass (same averaging) is reported separately as ``f_attn_sink_token``.
- **M-Act** (massive activations): per block, max |h| of the block output.

Both as in "Gated Attention for Large Language Models" (Qiu et al., 2025, Table 1 and §4.3);
the layer means are the paper's reported figures.

    stats = measure(model, batch_x_BT)   # {"f_attn": 0.41, "f_attn/layer0": ..., "m_act": 93.0, ...}
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .softmax import CausalSelfAttention


@contextmanager
def probe(attentions: list[CausalSelfAttention]) -> Iterator[list[dict[str, Tensor]]]:
    """Within the block, each attention module's forward at pos 0 records its first-token
    mass per head into the yielded dicts (one per module, in order)."""
    slots: list[dict[str, Tensor]] = [{} for _ in attentions]
    for m, slot in zip(attentions, slots):
        m.sink_probe = slot
    try:
        yield slots
    finally:
        for m in attentions:
            m.sink_probe = None


def _layers(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"measure() needs a model with a `blocks` list (a gatelab LM); got {type(model).__name__}")
    return list(blocks)


@torch.no_grad()
def measure(model: nn.Module, idx_BT: Tensor) -> dict[str, float]:
    """F-Attn per layer (head mean and head max) and M-Act per layer, with their layer means.

    Keys: ``f_attn``, ``f_attn_max_head`` (means over attention layers; absent without
    softmax attention), ``f_attn/layer{i}``, ``f_attn_max_head/layer{i}``, ``m_act``
    (mean over blocks of max |block output|), ``m_act/layer{i}``; with ``sink: token`` layers,
    also ``f_attn_sink_token`` (mean over those layers of the head-mean mass on the sink
    token) and ``f_attn_sink_token/layer{i}``.
    """
    blocks = _layers(model)
    attn_layers = [(i, m) for i, b in enumerate(blocks) for m in b.modules() if isinstance(m, CausalSelfAttention)]
    max_abs: dict[int, Tensor] = {}
    hooks = [b.register_forward_hook(lambda mod, inp, out, i=i: max_abs.__setitem__(i, out.detach().abs().amax()))
             for i, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    try:
        with probe([m for _, m in attn_layers]) as slots:
            model(idx_BT)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out: dict[str, float] = {}
    # a layer whose attention never saw token 0 with a later query (e.g. a depth method kept
    # one token of the sequence there) has no measurement
    mass = [(i, slot["first_token_mass_H"]) for (i, _), slot in zip(attn_layers, slots)
            if "first_token_mass_H" in slot]
    if mass and idx_BT.shape[1] > 1:
        out["f_attn"] = float(torch.stack([m_H.mean() for _, m_H in mass]).mean())
        out["f_attn_max_head"] = float(torch.stack([m_H.max() for _, m_H in mass]).mean())
        for i, m_H in mass:
            out[f"f_attn/layer{i}"] = float(m_H.mean())
            out[f"f_attn_max_head/layer{i}"] = float(m_H.max())
        sink = [(i, slot["sink_token_mass_H"]) for (i, _), slot in zip(attn_layers, slots)
                if "sink_token_mass_H" in slot]
        if sink:
            out["f_attn_sink_token"] = float(torch.stack([m_H.mean() for _, m_H in sink]).mean())
            out.update({f"f_attn_sink_token/layer{i}": float(m_H.mean()) for i, m_H in sink})
    acts = {i: float(a) for i, a in sorted(max_abs.items())}  # a depth method may bypass a block's forward
    if acts:
        out["m_act"] = sum(acts.values()) / len(acts)
        out.update({f"m_act/layer{i}": a for i, a in acts.items()})
    return out
