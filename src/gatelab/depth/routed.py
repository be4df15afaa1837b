"""Routed execution: run a residual update on selected tokens only.

Fast path `run_selected`: one batched gather of the k kept tokens of every sequence
(static shape (B, k, D)), the update on them, one scatter-add back. Reference and
ragged path `run_selected_loop`: each sequence's kept tokens (any number) through the
update separately. Both compute ``x + w ⊙ f(x[kept])`` at the kept positions and leave
the others untouched; attention inside `f` sees only the kept tokens, in their order
(as in Mixture-of-Depths, Raposo et al., 2024), at compacted positions 0..k-1.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..core.aux import ForwardContext

Update = Callable[[Tensor], Tensor]  # (B', K, D) -> (B', K, D) residual update


def capacity_tokens(seq_len: int, capacity: float) -> int:
    """Tokens per sequence a block processes at `capacity` in (0, 1] (at least one)."""
    return max(1, min(seq_len, math.ceil(capacity * seq_len - 1e-9)))


def topk_tokens(scores_BT: Tensor, k: int) -> Tensor:
    """Indices (B, k) of the k highest scores per sequence, ascending (causal order kept)."""
    return torch.topk(scores_BT, k, dim=1, sorted=False).indices.sort(dim=1).values


def keep_mask(idx_BK: Tensor, seq_len: int) -> Tensor:
    """Boolean (B, T) mask of the positions in `idx_BK`."""
    mask_BT = torch.zeros(idx_BK.shape[0], seq_len, dtype=torch.bool, device=idx_BK.device)
    return mask_BT.scatter_(1, idx_BK, True)


def run_selected(f: Update, x_BTD: Tensor, idx_BK: Tensor, weight_BTW: Tensor) -> Tensor:
    """x + scatter(w ⊙ f(gather(x))) for the k tokens `idx_BK` of every sequence.

    weight_BTW: (B, T, 1) per-token or (B, T, D) per-channel output weight.
    """
    D = x_BTD.shape[-1]
    idx_BKD = idx_BK.unsqueeze(-1).expand(-1, -1, D)
    sel_BKD = x_BTD.gather(1, idx_BKD)
    w_BKW = weight_BTW.gather(1, idx_BK.unsqueeze(-1).expand(-1, -1, weight_BTW.shape[-1]))
    return x_BTD.scatter_add(1, idx_BKD, w_BKW * f(sel_BKD))


def run_selected_loop(f: Update, x_BTD: Tensor, keep_BT: Tensor, weight_BTW: Tensor) -> Tensor:
    """Reference / ragged path: each sequence's kept tokens (any number) through `f` alone."""
    rows = []
    for b in range(x_BTD.shape[0]):
        idx_K = keep_BT[b].nonzero().squeeze(1)
        if idx_K.numel() == 0:
            rows.append(x_BTD[b])
            continue
        upd_KD = weight_BTW[b, idx_K] * f(x_BTD[b:b + 1, idx_K])[0]
        rows.append(x_BTD[b].index_add(0, idx_K, upd_KD))
    return torch.stack(rows)


def record_by_domain(ctx: ForwardContext, name: str, value_BT: Tensor) -> None:
    """Statistics: the mean of a per-token value (e.g. processed or not), overall and per
    ground-truth domain label (``name/domain{d}``) when the batch carries labels."""
    value_N = value_BT.detach().flatten().float()
    ctx.aux.add_stat(name, value_N.mean())
    if ctx.domains is None:
        return
    dom_N = ctx.domains.flatten()
    n = int(dom_N.max()) + 1
    total_D = torch.bincount(dom_N, minlength=n)
    sum_D = torch.bincount(dom_N, weights=value_N, minlength=n)
    for d in total_D.nonzero().flatten().tolist():
        ctx.aux.add_stat(f"{name}/domain{d}", sum_D[d] / total_D[d])
