"""Rotary position embedding (Su et al., 2021, "RoFormer"), rotate-half convention (as in
Llama / Hugging Face), computed for the absolute positions of the current chunk."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self._cos: Tensor | None = None  # table for positions 0 .. len-1, built on first use
        self._sin: Tensor | None = None

    def cos_sin(self, pos: int, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(cos_TK, sin_TK) for positions pos .. pos+length-1, K = head_dim: slices of a table
        that is rebuilt only when a longer span, another device or dtype is asked for."""
        end = pos + length
        table = self._cos
        if table is None or table.shape[0] < end or table.device != device or table.dtype != dtype:
            self._cos, self._sin = self._table(1 << max(end - 1, 1).bit_length(), device, dtype)
        return self._cos[pos:end], self._sin[pos:end]

    def _table(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        t = torch.arange(n, device=device, dtype=torch.float32)
        freqs_TK2 = torch.outer(t, self.inv_freq.to(device))
        emb_TK = torch.cat([freqs_TK2, freqs_TK2], dim=-1)
        return emb_TK.cos().to(dtype), emb_TK.sin().to(dtype)


def apply_rope(x_BHTK: Tensor, cos_TK: Tensor, sin_TK: Tensor) -> Tensor:
    x1, x2 = x_BHTK.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x_BHTK * cos_TK + rotated * sin_TK
