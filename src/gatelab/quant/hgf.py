"""Hybrid Gated Flow (HGF; Trejo Pizzo, 2026, "Stabilizing 1.58-bit LLMs via Selective
Low-Rank Correction"): a ternary backbone plus a gated low-rank full-precision correction,
in gatelab's reference form (METHODS.md §6.2; the paper's abstract gives no formula):

    y = BitLinear(x) + g(x) ⊙ B(A x),   A ∈ R^{r×d_in},  B ∈ R^{d_out×r} zero-initialised

so training starts from the pure ternary layer. Gate types:

    token:    g = σ(w_gᵀx + b_g), one scalar per token          (d_in + 1 gate parameters)
    channel:  g = σ(b_g), one static value per output channel   (d_out gate parameters)
    scalar:   g = σ(b_g), one static value for the projection   (1 gate parameter; the paper's
              reported form, per secondary summaries)

b_g starts at logit(gate_init). A is initialised like LoRA's (Hu et al., 2021):
U(−1/√d_in, 1/√d_in).
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.errors import ConfigError
from ..core.registry import register
from .bitlinear import BitLinear, BitLinearConfig

GateType = Literal["token", "channel", "scalar"]


class ContextBound:
    """A layer called as ``linear(x)`` that still records into the block's `ForwardContext`:
    `quantize_linears` binds the context for the duration of each mixer / FFN forward."""

    _ctx: ForwardContext | None = None

    def bind_context(self, ctx: ForwardContext | None) -> None:
        self._ctx = ctx


class GatedLowRank(nn.Module):
    """The HGF correction g(x) ⊙ B(A x); records its own FLOPs and gate mean when given a context."""

    def __init__(self, d_in: int, d_out: int, rank: int, gate: GateType, gate_init: float,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        if not 1 <= rank <= min(d_in, d_out):
            raise ValueError(f"HGF rank={rank} must be between 1 and min(d_in, d_out) = {min(d_in, d_out)} "
                             f"for a {d_in} -> {d_out} layer; lower model.linear.rank")
        if gate not in typing.get_args(GateType):
            raise ValueError(f"unknown HGF gate {gate!r}; choose one of {', '.join(typing.get_args(GateType))}")
        kw = {"device": device, "dtype": dtype}
        self.d_in, self.d_out, self.rank, self.gate, self.gate_init = d_in, d_out, rank, gate, gate_init
        self.A = nn.Parameter(torch.empty(rank, d_in, **kw))
        self.B = nn.Parameter(torch.empty(d_out, rank, **kw))
        self.gate_weight = nn.Parameter(torch.empty(d_in, **kw)) if gate == "token" else None
        self.gate_bias = nn.Parameter(torch.empty(d_out if gate == "channel" else 1, **kw))
        if self.A.device.type != "meta":  # meta: `from_linear` initialises after materialising
            self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.d_in)
        with torch.no_grad():
            self.A.uniform_(-bound, bound)
            self.B.zero_()
            if self.gate_weight is not None:
                self.gate_weight.zero_()
            self.gate_bias.fill_(math.log(self.gate_init / (1 - self.gate_init)))

    @property
    def gate_params(self) -> int:
        return self.gate_bias.numel() + (self.gate_weight.numel() if self.gate_weight is not None else 0)

    @property
    def num_params(self) -> int:
        return self.rank * (self.d_in + self.d_out) + self.gate_params

    def flops_per_row(self) -> int:
        """A and B matmuls, plus the token gate's dot product (elementwise work not counted)."""
        return 2 * self.rank * (self.d_in + self.d_out) + (2 * self.d_in if self.gate == "token" else 0)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, gate={self.gate}"

    def gate_values(self, x: Tensor) -> Tensor:
        """g: (..., 1) for token gates, (d_out,) for channel gates, (1,) for a scalar gate."""
        if self.gate_weight is not None:
            return torch.sigmoid(F.linear(x, self.gate_weight[None], self.gate_bias))
        return torch.sigmoid(self.gate_bias)

    def forward(self, x: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        g = self.gate_values(x)
        y = g * F.linear(F.linear(x, self.A), self.B)
        if ctx is not None:
            rows = x.shape[:-1].numel()
            ctx.meter.add("hgf", rows * self.flops_per_row(), rows * self.num_params)
            ctx.aux.add_stat("hgf_gate_mean", g.detach().float().mean())
        return y


@dataclass
class HGFConfig(BitLinearConfig):
    rank: int = 4
    gate: GateType = "token"
    gate_init: float = 0.5  # σ(b_g) at initialisation

    def validate(self) -> None:
        super().validate()
        check(self.rank >= 1, "rank", self.rank, "must be a positive integer (the correction's rank)")
        check(0 < self.gate_init < 1, "gate_init", self.gate_init, "must be strictly between 0 and 1")


@register("linear", "hgf")
class HGFLinear(ContextBound, BitLinear):
    """BitLinear plus the gated low-rank correction (training path)."""

    Config = HGFConfig

    def __init__(self, in_features: int, out_features: int, bias: bool = True, cfg: HGFConfig | None = None,
                 device: Any = None, dtype: Any = None):
        cfg = cfg or HGFConfig()
        super().__init__(in_features, out_features, bias, cfg, device=device, dtype=dtype)
        self.correction = GatedLowRank(in_features, out_features, cfg.rank, cfg.gate, cfg.gate_init,
                                       device=device, dtype=dtype)

    def init_from(self, linear: nn.Linear) -> None:
        super().init_from(linear)
        self.correction.reset_parameters()

    @classmethod
    def for_experts(cls, cfg: HGFConfig | None = None) -> None:
        """Not supported: the experts are stacked tensors with no per-expert correction path."""
        raise ConfigError("model.linear=hgf does not support MoE experts (no gated low-rank correction for "
                          "stacked experts); use model.linear=bitlinear, or add 'experts' and 'shared' to "
                          "model.linear.exclude to keep the experts in full precision")

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.correction(x, self._ctx)
