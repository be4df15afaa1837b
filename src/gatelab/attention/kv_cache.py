"""Preallocated key/value cache for incremental decoding with softmax attention."""
from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of shape (B, H_kv, max_len, K), filled left to right."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype):
        self.k_BHLK = torch.zeros(batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v_BHLK = torch.zeros_like(self.k_BHLK)
        self.max_len = max_len

    def update(self, k_BHTK: Tensor, v_BHTK: Tensor, pos: int) -> tuple[Tensor, Tensor]:
        """Write the chunk at positions [pos, pos+T) and return keys/values [0, pos+T)."""
        end = pos + k_BHTK.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; got a chunk ending at {end}")
        self.k_BHLK[:, :, pos:end] = k_BHTK
        self.v_BHLK[:, :, pos:end] = v_BHTK
        return self.k_BHLK[:, :, :end], self.v_BHLK[:, :, :end]
