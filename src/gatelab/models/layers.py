"""Norms and dense channel mixers (FFNs), registered for configs.

Every channel mixer maps (B, T, D) -> (B, T, D), takes an optional `ForwardContext`,
and records the matmul work it executed in ``ctx.meter``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register


@register("norm", "rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich, 2019): x / rms(x) * g."""

    @dataclass
    class Config:
        eps: float = 1e-6

        def validate(self) -> None:
            check(self.eps > 0, "eps", self.eps, "must be > 0")

    def __init__(self, d_model: int, cfg: Config | None = None):
        super().__init__()
        self.eps = (cfg or self.Config()).eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


@register("norm", "layernorm")
class LayerNorm(nn.Module):
    """LayerNorm without bias (as in nanoGPT's bias=False setting)."""

    Config = RMSNorm.Config

    def __init__(self, d_model: int, cfg: RMSNorm.Config | None = None):
        super().__init__()
        self.eps = (cfg or self.Config()).eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)


def _hidden_size(d_model: int, hidden: int, mult: float, multiple_of: int) -> int:
    if hidden > 0:
        return hidden
    h = int(mult * d_model)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


@dataclass
class MLPConfig:
    hidden: int = 0  # 0: hidden_mult * d_model rounded up to multiple_of
    hidden_mult: float = 4.0
    multiple_of: int = 16

    def validate(self) -> None:
        check(self.hidden >= 0, "hidden", self.hidden, "must be >= 0 (0 = hidden_mult * d_model)")
        check(self.hidden_mult > 0, "hidden_mult", self.hidden_mult, "must be > 0")
        check(self.multiple_of >= 1, "multiple_of", self.multiple_of, "must be >= 1")


@register("channel_mixer", "gelu")
class GeluMLP(nn.Module):
    """GPT-2 MLP: W2 gelu(W1 x)."""

    Config = MLPConfig

    def __init__(self, d_model: int, cfg: MLPConfig | None = None):
        super().__init__()
        cfg = cfg or self.Config()
        self.hidden = _hidden_size(d_model, cfg.hidden, cfg.hidden_mult, cfg.multiple_of)
        self.up = nn.Linear(d_model, self.hidden, bias=False)
        self.down = nn.Linear(self.hidden, d_model, bias=False)
        self.down.is_residual_out = True

    def forward(self, x_BTD: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        if ctx is not None:
            rows, d = x_BTD.shape[:-1].numel(), x_BTD.shape[-1]
            ctx.meter.add_linear("up", rows, d, self.hidden)
            ctx.meter.add_linear("down", rows, self.hidden, d)
        return self.down(F.gelu(self.up(x_BTD)))


@dataclass
class SwiGLUConfig(MLPConfig):
    hidden_mult: float = 8 / 3  # keeps params equal to a 4x GELU MLP


@register("channel_mixer", "swiglu")
class SwiGLU(nn.Module):
    """SwiGLU FFN (Shazeer, 2020, "GLU Variants Improve Transformer"): W2 (silu(W1 x) * W3 x)."""

    Config = SwiGLUConfig

    def __init__(self, d_model: int, cfg: SwiGLUConfig | None = None):
        super().__init__()
        cfg = cfg or self.Config()
        self.hidden = _hidden_size(d_model, cfg.hidden, cfg.hidden_mult, cfg.multiple_of)
        self.gate_up = nn.Linear(d_model, 2 * self.hidden, bias=False)  # [W1; W3] fused
        self.down = nn.Linear(self.hidden, d_model, bias=False)
        self.down.is_residual_out = True

    def forward(self, x_BTD: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        if ctx is not None:
            rows, d = x_BTD.shape[:-1].numel(), x_BTD.shape[-1]
            ctx.meter.add_linear("gate_up", rows, d, 2 * self.hidden)
            ctx.meter.add_linear("down", rows, self.hidden, d)
        gate_BTH, up_BTH = self.gate_up(x_BTD).chunk(2, dim=-1)
        return self.down(F.silu(gate_BTH) * up_BTH)
