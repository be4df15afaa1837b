"""Stacked FFN experts: weights as [E, ...] tensors, applied per expert or grouped.

SwiGLU (Shazeer 2020): y = (silu(x W_g) * (x W_u)) W_o with w_in = [W_g | W_u] of shape
[E, D, 2H]; GELU: y = gelu(x W_in) W_o with w_in [E, D, H]; w_out is [E, H, D].

`gmm` / `gmm_wgrad` are the grouped matmuls (`torch.nn.functional.grouped_mm`) of the
dropless dispatcher's ``grouped_mm`` implementation, over rows sorted by expert. It needs
fp32/bf16/fp16 with 16-byte aligned rows. ``grouped=auto`` picks it on CUDA only: on CPU
(torch 2.13) the dispatcher's per-expert loop, which keeps each expert's rows in cache, was
faster in both shapes of benchmarks/moe.py (quiet machine, 2 threads: 1.53x in (a), 1.50x
in (b)).

Quantisation (`model.linear: bitlinear`, issue 11): the swap sets `quant`, an
`ExpertTransform` (gatelab.quant.ExpertQuant). The experts then see `weights()` (the
stacks through `quant.weight`, straight-through, one scale per expert matrix), `inputs(x)`
(each row through `quant.act`: per-token, so quantising before or after the gather is the
same) and `down_input(h)` (the activation's output through `quant.act`, per row, before the
down projection): each expert computes what two BitLinear layers would.
"""
from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import ConfigError

Activation = Literal["swiglu", "gelu"]
GroupedImpl = Literal["auto", "grouped_mm", "loop"]

_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ExpertTransform(Protocol):
    """Weight and activation transform of quantised experts (straight-through: identity gradient)."""

    def weight(self, w: Tensor) -> Tensor:
        """One matrix (d_in, d_out) or a stack (E, d_in, d_out), one scale per matrix."""
        ...

    def act(self, x_ND: Tensor) -> Tensor:
        """Rows of activations, each quantised on its own."""
        ...


class Experts(nn.Module):
    """`n` FFN experts of width `hidden` stored as stacked tensors."""

    def __init__(self, n: int, d_model: int, hidden: int, activation: Activation = "swiglu"):
        super().__init__()
        if activation not in ("swiglu", "gelu"):
            raise ValueError(f"unknown expert activation {activation!r}; use swiglu or gelu")
        self.n, self.d_model, self.hidden, self.activation = n, d_model, hidden, activation
        d_in_out = 2 * hidden if activation == "swiglu" else hidden
        self.w_in = nn.Parameter(torch.empty(n, d_model, d_in_out))
        self.w_out = nn.Parameter(torch.empty(n, hidden, d_model))
        self.quant: ExpertTransform | None = None
        self.init_weights(0.02)

    @property
    def params_per_expert(self) -> int:
        return self.w_in[0].numel() + self.w_out[0].numel()

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.w_in, std=std)
        nn.init.normal_(self.w_out, std=std)

    def act(self, h_NF: Tensor) -> Tensor:
        if self.activation == "swiglu":
            gate_NH, up_NH = h_NF.chunk(2, dim=-1)
            return F.silu(gate_NH) * up_NH
        return F.gelu(h_NF)

    def weights(self, e: int | None = None) -> tuple[Tensor, Tensor]:
        """(w_in, w_out) as the matmuls use them: the stacks, or expert `e`'s; quantised if `quant`."""
        w_in, w_out = (self.w_in, self.w_out) if e is None else (self.w_in[e], self.w_out[e])
        return (w_in, w_out) if self.quant is None else (self.quant.weight(w_in), self.quant.weight(w_out))

    def inputs(self, x_ND: Tensor) -> Tensor:
        """The rows as the first matmul sees them (quantised per row if `quant`)."""
        return x_ND if self.quant is None else self.quant.act(x_ND)

    def down_input(self, h_NF: Tensor) -> Tensor:
        """`act(h)` as the second matmul sees it (quantised per row if `quant`)."""
        a_NH = self.act(h_NF)
        return a_NH if self.quant is None else self.quant.act(a_NH)

    def forward_one(self, e: int, x_ND: Tensor) -> Tensor:
        """Expert `e` applied to rows x_ND."""
        w_in, w_out = self.weights(e)
        return self.down_input(self.inputs(x_ND) @ w_in) @ w_out

    def forward_each(self, x_ND_per_expert: list[Tensor]) -> list[Tensor]:
        """Expert e applied to the e-th row block; `unbind` makes the weight gradient one
        stack instead of E full-size zero-filled gradients (as `w_in[e]` would)."""
        w_in_E, w_out_E = self.weights()
        return [self.down_input(self.inputs(x_ND) @ w_in) @ w_out
                for x_ND, w_in, w_out in zip(x_ND_per_expert, w_in_E.unbind(0), w_out_E.unbind(0))]

    def act_backward(self, h_NF: Tensor, g_NH: Tensor) -> Tensor:
        """Gradient wrt h of `act(h)` given the gradient g of its output (no autograd graph);
        also that of `down_input(h)`, whose quantisation is straight-through."""
        if self.activation == "swiglu":
            gate_NH, up_NH = h_NF.chunk(2, dim=-1)
            g_h_NF = torch.empty_like(h_NF)
            g_gate_NH, g_up_NH = g_h_NF.chunk(2, dim=-1)
            torch.ops.aten.silu_backward.grad_input(g_NH * up_NH, gate_NH, grad_input=g_gate_NH)
            torch.mul(g_NH, F.silu(gate_NH), out=g_up_NH)
            return g_h_NF
        return torch.ops.aten.gelu_backward(g_NH, h_NF)

    def grouped_mm_ok(self, x_AD: Tensor) -> bool:
        """Whether `F.grouped_mm` supports these operands (dtype, 16-byte aligned rows)."""
        if not hasattr(F, "grouped_mm") or x_AD.dtype not in _GROUPED_DTYPES or self.w_in.dtype != x_AD.dtype:
            return False
        per16 = 16 // x_AD.element_size()
        return self.d_model % per16 == 0 and self.hidden % per16 == 0

    def resolve_impl(self, x_AD: Tensor, impl: GroupedImpl) -> GroupedImpl:
        """``auto``: grouped_mm on CUDA where supported, else the per-expert loop."""
        if impl == "auto":
            return "grouped_mm" if x_AD.device.type == "cuda" and self.grouped_mm_ok(x_AD) else "loop"
        if impl == "grouped_mm" and not self.grouped_mm_ok(x_AD):
            raise ConfigError(f"grouped=grouped_mm needs torch.nn.functional.grouped_mm, fp32/bf16/fp16 weights of "
                              f"x's dtype and widths giving 16-byte rows (got {x_AD.dtype}, d_model {self.d_model}, "
                              f"hidden {self.hidden}); use grouped=auto")
        return impl

    def extra_repr(self) -> str:
        return f"n={self.n}, d_model={self.d_model}, hidden={self.hidden}, activation={self.activation}" + (
            f", quant={self.quant}" if self.quant is not None else "")


def gmm(a_AK: Tensor, b_EKN: Tensor, counts_E: Tensor) -> Tensor:
    """Grouped matmul: rows of group e (counts_E[e] consecutive rows) times b_EKN[e] -> (A, N)."""
    return F.grouped_mm(a_AK, b_EKN, offs=torch.cumsum(counts_E, 0).to(torch.int32))


def gmm_wgrad(a_AK: Tensor, b_AN: Tensor, counts_E: Tensor) -> Tensor:
    """Per-group a^T b over each group's rows -> (E, K, N) (weight gradients of `gmm`)."""
    return F.grouped_mm(a_AK.t(), b_AN, offs=torch.cumsum(counts_E, 0).to(torch.int32))
