"""The fixed tiny budget every claim trains under (sized for a 2-core CPU, METHODS.md §8).

One base run config, so that claims differ only in what they test. Byte-level synthetic
multi-domain corpus, 4-layer d_model 64 decoder, 64-token windows, batch 16, 300 AdamW
steps; evaluation once at the end on 8 fixed batches. MoE claims use 2 layers (the
dispatch dominates CPU time at this size) and say so in their setting.
"""
from __future__ import annotations

import copy
from typing import Any

from ...core.config import deep_merge

STEPS = 300
BASE: dict[str, Any] = {
    "data": {"corpus": {"name": "synthetic"}, "tokenizer": {"name": "byte"}, "seq_len": 64, "batch_size": 16},
    "model": {
        "d_model": 64,
        "n_layer": 4,
        "block": {"mixer": {"name": "attention", "n_head": 4}, "ffn": {"name": "swiglu"}},
    },
    "optim": {"name": "adamw", "lr": 3.0e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
    "schedule": {"name": "cosine", "warmup_steps": 30},
    "train": {"steps": STEPS, "keep_last": 1},
    "eval": {"every": 0, "batches": 8},
    "log": {"every": 50, "progress": False},
}
DESCRIPTION = (f"synthetic multi-domain bytes, d_model 64, 4 layers, 4 heads, T 64, batch 16, "
               f"{STEPS} AdamW steps (lr 3e-3, cosine, warm-up 30), val loss on 8 fixed batches")


def base(**changes: Any) -> dict[str, Any]:
    """A copy of the budget with `changes` (a partial run config per section) merged in."""
    return deep_merge(copy.deepcopy(BASE), changes)


def sweep(name: str, variants: dict[str, dict[str, Any]], *, base_cfg: dict[str, Any] | None = None,
          grid: dict[str, list[Any]] | None = None, best_over: list[str] | None = None) -> dict[str, Any]:
    """A sweep-file dict on the budget (seeds are set by the claims runner)."""
    spec: dict[str, Any] = {"name": name, "base": base_cfg if base_cfg is not None else base(),
                            "variants": variants}
    if grid:
        spec["grid"] = grid
    if best_over:
        spec["best_over"] = best_over
    return spec


def ffn(**options: Any) -> dict[str, Any]:
    """Variant override setting the block's channel mixer (e.g. ``ffn(name="moe", k=2)``)."""
    return {"model": {"block": {"ffn": options}}}
