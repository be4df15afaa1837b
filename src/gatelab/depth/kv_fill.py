"""KV-cache helpers for depth methods that run a block on some batch rows only while decoding.

* `CacheRows`: a view of some rows of a layer's `KVCache`, so a block run on those rows
  alone reads and writes their keys/values in the shared cache.
* `PackedCache`: a layer's cache in which each row holds only the tokens that ran the
  block, packed left (Mixture-of-Depths: a routed block's attention sees the kept tokens
  at positions 0..k−1), with each row's count of kept tokens.
* `fill_kv`: state propagation (CALM, Schuster et al., 2022): for tokens that skip a
  block, write the keys/values the block's attention computes from their (frozen) hidden
  state, so later tokens can attend to them. It runs the block's first norm and the fused
  qkv projection (the query columns are computed and dropped), nothing else.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..attention.kv_cache import KVCache
from ..attention.rope import apply_rope
from ..attention.softmax import CausalSelfAttention
from ..core.aux import ForwardContext
from .base import BlockLike


class CacheRows:
    """Rows `rows_N` of a `KVCache`: ``update`` writes those rows and returns their keys/values."""

    def __init__(self, cache: KVCache, rows_N: Tensor):
        self.cache, self.rows_N = cache, rows_N

    def update(self, k_NGTK: Tensor, v_NGTK: Tensor, pos: int) -> tuple[Tensor, Tensor]:
        end = pos + k_NGTK.shape[2]
        if end > self.cache.max_len:
            raise ValueError(f"KV cache holds {self.cache.max_len} positions; got a chunk ending at {end}")
        self.cache.k_BHLK[self.rows_N, :, pos:end] = k_NGTK
        self.cache.v_BHLK[self.rows_N, :, pos:end] = v_NGTK
        return self.cache.k_BHLK[self.rows_N, :, :end], self.cache.v_BHLK[self.rows_N, :, :end]


class PackedCache:
    """A `KVCache` whose row b holds the `lengths[b]` tokens that ran the block so far, packed."""

    def __init__(self, cache: KVCache):
        self.kv, self.lengths = cache, [0] * cache.k_BHLK.shape[0]

    def row_context(self, ctx: ForwardContext, row: int) -> ForwardContext:
        """`ctx` for running the block on the kept tokens of row `row`: its cache row, at its packed position."""
        rows_N = torch.tensor([row], device=self.kv.k_BHLK.device)
        return replace(ctx, cache=CacheRows(self.kv, rows_N), pos=self.lengths[row])


def rows_context(ctx: ForwardContext, rows_N: Tensor) -> ForwardContext:
    """`ctx` for a block run on batch rows `rows_N` only (its cache narrowed to those rows)."""
    return replace(ctx, cache=CacheRows(ctx.cache, rows_N))


def check_fillable(block: BlockLike) -> None:
    """Clear error for a block whose mixer `fill_kv` cannot propagate into."""
    mixer = block.mixer
    if not isinstance(mixer, CausalSelfAttention) or (mixer.gate != "none" and mixer.gate_position == "value"):
        raise ValueError(f"KV filling for skipped tokens supports softmax attention without a value gate, "
                         f"not {type(mixer).__name__}; decode without caches (generate(..., use_cache=False))")


def fill_kv(block: BlockLike, x_NTD: Tensor, ctx: ForwardContext) -> None:
    """Write block's keys/values of `x_NTD` (tokens that skip it) at ctx.pos into ctx.cache."""
    mixer: CausalSelfAttention = block.mixer
    N, T, D = x_NTD.shape
    H, G, K = mixer.n_head, mixer.n_kv_head, mixer.head_dim
    _, k_NTX, v_NTX, _ = mixer.qkv(block.norm1(x_NTD)).split([H * K, G * K, G * K, mixer.gate_dim], dim=-1)
    cos_TK, sin_TK = mixer.rope.cos_sin(ctx.pos, T, x_NTD.device, k_NTX.dtype)
    k_NGTK = apply_rope(k_NTX.view(N, T, G, K).transpose(1, 2), cos_TK, sin_TK)
    ctx.cache.update(k_NGTK, v_NTX.view(N, T, G, K).transpose(1, 2), ctx.pos)
    ctx.meter.add("norms", 0, N * T * sum(p.numel() for p in block.norm1.parameters()))
    ctx.meter.add_linear("kv_fill", N * T, D, mixer.qkv_dim + mixer.gate_dim)
