"""The shared skeleton of the gated linear-attention token mixers (GLA, Gated DeltaNet).

Both keep a per-head matrix state S_t ∈ R^{d_k×d_v} and read out o_t = S_tᵀ q_t with
q scaled by d_k^{-1/2} (METHODS §3.3); they differ only in the state transition. Around
the recurrence they share one layout (as in both papers' released models):

    [q | k | v | z | gate inputs] = x W_in          one fused projection
    o = recurrence(q, k, v, gates)                  mixer-specific: `_mix`
    y = W_O (RMSNorm_head(o) ⊙ SiLU(z))             per-head RMSNorm, SiLU output gate

Training runs the chunked parallel form (or the token loop with ``mode: recurrent``);
decoding carries a `RecurrentState` of constant size and advances it token by token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check


@dataclass
class LinearMixerConfig:
    n_head: int = 4
    head_dim: int = 0  # key dimension per head; 0: d_model // n_head
    expand_v: float = 1.0  # value dimension per head = expand_v * head_dim
    chunk_size: int = 64  # tokens per chunk of the parallel form
    mode: Literal["chunk", "recurrent"] = "chunk"  # training form; decoding always steps the state
    norm_eps: float = 1e-5

    def validate(self) -> None:
        check(self.n_head >= 1, "n_head", self.n_head, "must be >= 1")
        check(self.head_dim >= 0, "head_dim", self.head_dim, "must be >= 0 (0 = d_model // n_head)")
        check(self.expand_v > 0, "expand_v", self.expand_v, "must be > 0")
        check(self.chunk_size >= 1, "chunk_size", self.chunk_size, "must be >= 1")
        check(self.norm_eps > 0, "norm_eps", self.norm_eps, "must be > 0")

    def check_dims(self, d_model: int, path: str) -> None:
        if self.head_dim == 0:
            check(d_model % self.n_head == 0, f"{path}.n_head", self.n_head,
                  f"must divide d_model={d_model} (or set head_dim)")
        value_dim = self.expand_v * (self.head_dim or d_model // self.n_head)
        check(value_dim == int(value_dim), f"{path}.expand_v", self.expand_v,
              f"must make expand_v * head_dim an integer (head_dim = {self.head_dim or d_model // self.n_head})")


@dataclass
class RecurrentState:
    """Constant-size decoding cache of a linear mixer: the state S (B, H, d_k, d_v) after `pos` tokens."""

    S_BHKV: Tensor
    pos: int = 0


def chunk_count(T: int, chunk: int) -> int:
    """Chunks covering T tokens (the last one zero-padded)."""
    return -(-T // chunk)


def pad_to_chunks(chunk: int, *tensors_BHT_: Tensor) -> list[Tensor]:
    """Zero-pad dim 2 (time) to a multiple of `chunk`. With zero keys, values, write
    strengths and log-decays the padded steps leave the state unchanged."""
    pad = -tensors_BHT_[0].shape[2] % chunk
    return [F.pad(t, (0, 0) * (t.dim() - 3) + (0, pad)) for t in tensors_BHT_]


class GatedLinearMixer(nn.Module):
    """Base of the linear mixers: projections, state cache, output norm and gate, FLOP meter.

    `gate_in_dim` extra projection columns carry the mixer's gate inputs. Subclasses implement
    `_mix(q_BHTK, k_BHTK, v_BHTV, gates_BTX, S0_BHKV, chunked)` -> (o_BHTV, S_BHKV) and
    `_kernel_flops(B, T, chunked)`.
    """

    def __init__(self, d_model: int, cfg: LinearMixerConfig, gate_in_dim: int):
        super().__init__()
        self.gate_in_dim = gate_in_dim
        cfg.validate()
        cfg.check_dims(d_model, type(self).__name__)
        self.d_model = d_model
        self.n_head = H = cfg.n_head
        self.key_dim = K = cfg.head_dim or d_model // cfg.n_head
        self.value_dim = V = int(cfg.expand_v * K)
        self.chunk_size, self.mode, self.eps = cfg.chunk_size, cfg.mode, cfg.norm_eps
        self.split = [H * K, H * K, H * V, H * V, self.gate_in_dim]
        self.in_proj = nn.Linear(d_model, sum(self.split), bias=False)
        self.o_norm_weight = nn.Parameter(torch.ones(V))
        self.out = nn.Linear(H * V, d_model, bias=False)
        self.out.is_residual_out = True

    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> RecurrentState:
        """The decoding state; its size does not depend on `max_len`."""
        return RecurrentState(torch.zeros(batch, self.n_head, self.key_dim, self.value_dim, device=device, dtype=dtype))

    def forward(self, x_BTD: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        B, T, _ = x_BTD.shape
        H, K, V = self.n_head, self.key_dim, self.value_dim
        pos = ctx.pos if ctx is not None else 0
        cache: RecurrentState | None = ctx.cache if ctx is not None else None
        if cache is None and pos != 0:
            raise ValueError(f"{type(self).__name__} at pos > 0 needs its recurrent state (ctx.cache)")
        if cache is not None and cache.pos != pos:
            raise ValueError(f"{type(self).__name__}: the recurrent state holds {cache.pos} tokens but this forward "
                             f"starts at pos {pos}; feed the tokens in order, or start from init_cache()")
        q_BTX, k_BTX, v_BTX, z_BTX, gates_BTX = self.in_proj(x_BTD).split(self.split, dim=-1)
        q_BHTK = q_BTX.view(B, T, H, K).transpose(1, 2)
        k_BHTK = k_BTX.view(B, T, H, K).transpose(1, 2)
        v_BHTV = v_BTX.view(B, T, H, V).transpose(1, 2)
        chunked = self.mode == "chunk" and not (cache is not None and T == 1)
        S0_BHKV = cache.S_BHKV if cache is not None else None
        o_BHTV, S_BHKV = self._mix(q_BHTK, k_BHTK, v_BHTV, gates_BTX, S0_BHKV, chunked)
        if cache is not None:
            cache.S_BHKV, cache.pos = S_BHKV.detach(), pos + T
        o_BTHV = F.rms_norm(o_BHTV.transpose(1, 2), (V,), self.o_norm_weight, self.eps)
        y_BTD = self.out((o_BTHV * F.silu(z_BTX.view(B, T, H, V))).reshape(B, T, H * V))
        if ctx is not None:
            ctx.meter.add_linear("in_proj", B * T, self.d_model, sum(self.split))
            for name, d_in, d_out in self.extra_linears():
                ctx.meter.add_linear(name, B * T, d_in, d_out, bias=True)
            ctx.meter.add("state", self._kernel_flops(B, T, chunked))
            ctx.meter.add("out_gate_norm", 0, B * T * V)
            ctx.meter.add_linear("out", B * T, H * V, self.d_model)
        return y_BTD

    def _mix(self, q_BHTK: Tensor, k_BHTK: Tensor, v_BHTV: Tensor, gates_BTX: Tensor,
             S0_BHKV: Tensor | None, chunked: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _kernel_flops(self, B: int, T: int, chunked: bool) -> int:
        raise NotImplementedError

    def extra_linears(self) -> list[tuple[str, int, int]]:
        """(name, d_in, d_out) of the per-token linears inside `_mix` (for the FLOP meter)."""
        return []
