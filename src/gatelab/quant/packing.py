"""2-bit storage of ternary weights and the packed inference layers.

Codes: a trit t ∈ {−1, 0, 1} is stored as c = t + 1 ∈ {0, 1, 2} in 2 bits, four per byte,
the first trit in the lowest bits: byte = c0 | c1 << 2 | c2 << 4 | c3 << 6, over the
row-major flattened weight, the tail padded with 0-trits. 2 bits per weight (not the
log2 3 ≈ 1.585 bit optimum) keep unpacking a shift and a mask.

`PackedBitLinear` keeps only the packed codes, γ and the bias as state (its state_dict is
the export). Its fast path unpacks once into a dense γ·W_q matrix cached as a
non-persistent buffer, so a forward is activation quantisation plus one matmul instead of
re-ternarising the latent weight every call; the reference it must match is
`BitLinear.forward` in eval (tests/quant/test_packing.py).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bitlinear import BitLinear, fake_quant_activations
from .hgf import ContextBound, HGFLinear
from .swap import replace_modules

_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def packed_size(numel: int) -> int:
    """Bytes holding `numel` trits at 2 bits each."""
    return math.ceil(numel / 4)


def pack_ternary(w_q: Tensor) -> Tensor:
    """Ternary tensor (any shape, values in {−1, 0, 1}) -> uint8 codes of shape (ceil(numel/4),)."""
    flat = w_q.detach().reshape(-1)
    if not bool(((flat == -1) | (flat == 0) | (flat == 1)).all()):
        raise ValueError("pack_ternary needs values in {-1, 0, 1}; ternarize the weight first (quant.ternarize)")
    codes = (flat + 1).to(torch.uint8)
    pad = packed_size(codes.numel()) * 4 - codes.numel()
    codes_N4 = torch.cat([codes, codes.new_ones(pad)]).view(-1, 4)
    return (codes_N4 << _SHIFTS.to(codes.device)).sum(dim=1, dtype=torch.uint8)


def unpack_ternary(packed: Tensor, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.int8) -> Tensor:
    """Inverse of `pack_ternary`: the ternary tensor of `shape` in `dtype`."""
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_size(numel):
        raise ValueError(f"packed codes must be a 1-D uint8 tensor of {packed_size(numel)} bytes for shape "
                         f"{tuple(shape)}, got {packed.dtype} of shape {tuple(packed.shape)}")
    codes_N4 = (packed[:, None] >> _SHIFTS.to(packed.device)) & 3
    if bool((codes_N4 == 3).any()):
        raise ValueError("packed codes contain the unused code 3; the data is not a pack_ternary output")
    return (codes_N4.reshape(-1)[:numel].to(dtype) - 1).view(tuple(shape))


class PackedBitLinear(nn.Module):
    """Inference form of `BitLinear`: packed 2-bit codes + γ; a dense γ·W_q cache for the matmul."""

    def __init__(self, in_features: int, out_features: int, packed: Tensor, gamma: Tensor, bias: Tensor | None,
                 act_bits: int, eps: float):
        super().__init__()
        self.in_features, self.out_features, self.act_bits, self.eps = in_features, out_features, act_bits, eps
        self.register_buffer("packed", packed)
        self.register_buffer("gamma", gamma.reshape(1))
        self.register_buffer("bias", bias)
        self.register_buffer("dense_weight", self._unpack(), persistent=False)

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> PackedBitLinear:
        w_q, gamma = layer.ternary_weight()
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(layer.in_features, layer.out_features, pack_ternary(w_q), gamma, bias, layer.act_bits, layer.eps)

    def _unpack(self) -> Tensor:
        w_q = unpack_ternary(self.packed, (self.out_features, self.in_features), self.gamma.dtype)
        return w_q * self.gamma

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.dense_weight = self._unpack()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(fake_quant_activations(x, self.act_bits, self.eps), self.dense_weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act_bits={self.act_bits}, packed"


class PackedHGFLinear(ContextBound, PackedBitLinear):
    """Inference form of `HGFLinear`: the packed backbone plus the (full-precision) correction."""

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> PackedHGFLinear:
        if not isinstance(layer, HGFLinear):
            raise TypeError(f"PackedHGFLinear needs an HGFLinear, got {type(layer).__name__}")
        new = super().from_bitlinear(layer)
        new.correction = layer.correction
        return new

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.correction(x, self._ctx)


def pack_linears(model: nn.Module) -> int:
    """Replace every BitLinear / HGFLinear in `model` by its packed inference form; returns the count.

    Inference only: the packed layers have no latent weights to train."""
    def make(name: str, m: nn.Module) -> nn.Module | None:
        if isinstance(m, HGFLinear):
            return PackedHGFLinear.from_bitlinear(m)
        if isinstance(m, BitLinear):
            return PackedBitLinear.from_bitlinear(m)
        return None

    return len(replace_modules(model, make))
