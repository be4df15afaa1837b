"""BitNet b1.58 ternary linear layer (Ma et al., 2024, "The Era of 1-bit LLMs: All Large
Language Models are in 1.58 Bits"; METHODS.md §6.1).

    weights:      γ = mean|W| (one per tensor);  W_q = RoundClip(W / (γ + ε), −1, 1) ∈ {−1, 0, 1}
    activations:  η = max|x| per token (≥ ε);   x_q = clamp(round(x·Q/η), −Q−1, Q),  Q = 2^{b−1} − 1
    output:       y = (x_q W_qᵀ)·γ·η/Q + bias

Training keeps fp32 latent weights and uses the identity straight-through estimator of the
paper's code: W_st = W + sg(γW_q − W) and x_st = x + sg(x_q·η/Q − x), so the forward value
is the quantised product and the gradient reaches W and x unchanged. The matmul runs on
the dequantised values in floating point (no integer kernel); `gatelab.quant.packing`
holds the 2-bit storage form.

Recorded choices (METHODS.md §6.1 pitfalls): γ is per tensor; ε is added to γ in the
weight division and bounds η from below; the STE is the identity (not clipped). Unlike
BitNet's SubLN, the layer does not normalise its input: in a gatelab block the inputs of
`qkv` / `gate_up` are already pre-normed, those of `out` / `down` are not (per-token
absmax quantisation is scale-equivariant, so it needs no normalisation to be exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.config import check
from ..core.registry import register


def ternarize(w: Tensor, eps: float = 1e-5, per_matrix: bool = False) -> tuple[Tensor, Tensor]:
    """Absmean ternary quantisation: (W_q ∈ {−1, 0, 1} in w's dtype, γ = mean|W| as a 0-d tensor).

    `per_matrix`: one γ per matrix of a stack (..., d_in, d_out), shape (..., 1, 1) (MoE experts)."""
    gamma = w.abs().mean((-2, -1), keepdim=True) if per_matrix else w.abs().mean()
    return (w / (gamma + eps)).round().clamp(-1, 1), gamma


def quantize_activations(x: Tensor, bits: int, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-token absmax quantisation: (integer-valued x_q in x's dtype, η of shape (..., 1))."""
    q = 2 ** (bits - 1) - 1
    eta = x.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    return (x * (q / eta)).round().clamp(-q - 1, q), eta


def fake_quant_weight(w: Tensor, eps: float = 1e-5, per_matrix: bool = False) -> Tensor:
    """γ·W_q in the forward, identity gradient to the latent W (straight-through; without
    autograd the dequantised weight itself). `per_matrix`: see `ternarize`."""
    w_q, gamma = ternarize(w.detach(), eps, per_matrix)
    w_deq = gamma * w_q
    return w + (w_deq - w).detach() if torch.is_grad_enabled() and w.requires_grad else w_deq


def fake_quant_activations(x: Tensor, bits: int, eps: float = 1e-5) -> Tensor:
    """x_q·η/Q in the forward, identity gradient to x; `bits` = 0 returns x unchanged."""
    if bits == 0:
        return x
    x_q, eta = quantize_activations(x.detach(), bits, eps)
    x_deq = x_q * (eta / (2 ** (bits - 1) - 1))
    return x + (x_deq - x).detach() if torch.is_grad_enabled() and x.requires_grad else x_deq


@dataclass(frozen=True)
class ExpertQuant:
    """BitLinear's quantisers for stacked MoE experts (`gatelab.moe.Experts.quant`).

    `weight`: absmean ternary with one γ per expert matrix, straight-through; applied to the
    (E, d_in, d_out) stacks before dispatch (the identity STE commutes with the dispatch).
    `act`: per-row absmax `act_bits` quantisation, straight-through; the experts apply it to
    their input and to the hidden activation before the down projection, as the two
    BitLinear layers of an expert would.
    """

    act_bits: int = 8
    eps: float = 1e-5

    def weight(self, w: Tensor) -> Tensor:
        return fake_quant_weight(w, self.eps, per_matrix=True)

    def act(self, x_ND: Tensor) -> Tensor:
        return fake_quant_activations(x_ND, self.act_bits, self.eps)


@dataclass
class BitLinearConfig:
    act_bits: int = 8  # per-token absmax activation bits; 0 keeps activations in full precision (W1.58A16)
    eps: float = 1e-5
    exclude: list[str] = field(default_factory=lambda: ["router"])  # linears whose name contains one stay FP

    def validate(self) -> None:
        check(self.act_bits == 0 or 2 <= self.act_bits <= 16, "act_bits", self.act_bits,
              "must be 0 (no activation quantisation) or between 2 and 16")
        check(self.eps > 0, "eps", self.eps, "must be > 0")


@register("linear", "none")
class FullPrecision:
    """The `model.linear: none` choice: every nn.Linear stays as it is."""

    @dataclass
    class Config:
        pass

    @classmethod
    def from_linear(cls, linear: nn.Linear, cfg: Any = None) -> nn.Linear:
        return linear

    @classmethod
    def for_experts(cls, cfg: Any = None) -> None:
        """MoE experts stay in full precision (no transform)."""
        return None


@register("linear", "bitlinear")
class BitLinear(nn.Linear):
    """Drop-in nn.Linear with ternary weights and 8-bit activations (BitNet b1.58).

    `weight` is the fp32 latent; `forward` quantises it on every call (training path).
    """

    Config = BitLinearConfig

    def __init__(self, in_features: int, out_features: int, bias: bool = True, cfg: BitLinearConfig | None = None,
                 device: Any = None, dtype: Any = None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        cfg = cfg or BitLinearConfig()
        cfg.validate()
        self.act_bits, self.eps = cfg.act_bits, cfg.eps

    @classmethod
    def from_linear(cls, linear: nn.Linear, cfg: BitLinearConfig | None = None) -> BitLinear:
        """A copy of `linear` (weights, bias, `is_residual_out` flag) as this layer; draws no random numbers."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, cfg, device="meta",
                  dtype=linear.weight.dtype).to_empty(device=linear.weight.device)
        new.init_from(linear)
        return new

    @classmethod
    def for_experts(cls, cfg: BitLinearConfig | None = None) -> ExpertQuant:
        """The same quantisation for stacked MoE experts (set as `Experts.quant` by the swap)."""
        cfg = cfg or BitLinearConfig()
        cfg.validate()
        return ExpertQuant(cfg.act_bits, cfg.eps)

    def init_from(self, linear: nn.Linear) -> None:
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if self.bias is not None:
                self.bias.copy_(linear.bias)
        if getattr(linear, "is_residual_out", False):
            self.is_residual_out = True

    def ternary_weight(self) -> tuple[Tensor, Tensor]:
        """The current (W_q, γ) of the latent weight, without gradient."""
        return ternarize(self.weight.detach(), self.eps)

    def forward(self, x: Tensor) -> Tensor:
        x_st = fake_quant_activations(x, self.act_bits, self.eps)
        return F.linear(x_st, fake_quant_weight(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act_bits={self.act_bits}"
