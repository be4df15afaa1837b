"""Causal softmax self-attention: fused QKV projection, RoPE, grouped-query attention
(Ainslie et al., 2023, "GQA"), `F.scaled_dot_product_attention`, optional KV cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.flops import causal_attention_flops
from ..core.registry import register
from .kv_cache import KVCache
from .rope import RotaryEmbedding, apply_rope


@dataclass
class AttentionConfig:
    n_head: int = 4
    n_kv_head: int = 0  # 0: n_head (multi-head); 1: multi-query; else grouped-query
    head_dim: int = 0  # 0: d_model // n_head
    rope_theta: float = 10000.0

    def validate(self) -> None:
        check(self.n_head >= 1, "n_head", self.n_head, "must be >= 1")
        check(self.n_kv_head >= 0, "n_kv_head", self.n_kv_head, "must be >= 0 (0 = n_head)")
        check(self.n_kv_head == 0 or self.n_head % self.n_kv_head == 0, "n_kv_head", self.n_kv_head,
              f"must divide n_head={self.n_head}")
        check(self.head_dim >= 0 and self.head_dim % 2 == 0, "head_dim", self.head_dim,
              "must be an even number >= 0 (RoPE rotates pairs; 0 = d_model // n_head)")
        check(self.rope_theta > 0, "rope_theta", self.rope_theta, "must be > 0")

    def check_dims(self, d_model: int, path: str) -> None:
        if self.head_dim == 0:
            check(d_model % self.n_head == 0, f"{path}.n_head", self.n_head,
                  f"must divide d_model={d_model} (or set head_dim)")
            check((d_model // self.n_head) % 2 == 0, f"{path}.n_head", self.n_head,
                  f"d_model/n_head = {d_model // self.n_head} must be even for RoPE")


@register("token_mixer", "attention")
class CausalSelfAttention(nn.Module):
    Config = AttentionConfig

    def __init__(self, d_model: int, cfg: AttentionConfig | None = None):
        super().__init__()
        cfg = cfg or self.Config()
        cfg.validate()
        cfg.check_dims(d_model, "attention")
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.head_dim or d_model // cfg.n_head
        self.d_model = d_model
        self.qkv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(d_model, self.qkv_dim, bias=False)
        self.out = nn.Linear(self.n_head * self.head_dim, d_model, bias=False)
        self.out.is_residual_out = True
        self.rope = RotaryEmbedding(self.head_dim, cfg.rope_theta)

    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    def forward(self, x_BTD: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        B, T, _ = x_BTD.shape
        pos = ctx.pos if ctx is not None else 0
        cache: KVCache | None = ctx.cache if ctx is not None else None
        H, G, K = self.n_head, self.n_kv_head, self.head_dim
        q_BTHK, k_BTGK, v_BTGK = self.qkv(x_BTD).split([H * K, G * K, G * K], dim=-1)
        q_BHTK = q_BTHK.view(B, T, H, K).transpose(1, 2)
        k_BGTK = k_BTGK.view(B, T, G, K).transpose(1, 2)
        v_BGTK = v_BTGK.view(B, T, G, K).transpose(1, 2)
        cos_TK, sin_TK = self.rope.cos_sin(pos, T, x_BTD.device, q_BHTK.dtype)
        q_BHTK, k_BGTK = apply_rope(q_BHTK, cos_TK, sin_TK), apply_rope(k_BGTK, cos_TK, sin_TK)
        if cache is not None:
            k_BGSK, v_BGSK = cache.update(k_BGTK, v_BGTK, pos)  # S = pos + T keys
        else:
            if pos != 0:
                raise ValueError("attention at pos > 0 needs a KV cache (ctx.cache)")
            k_BGSK, v_BGSK = k_BGTK, v_BGTK
        y_BHTK = self._attend(q_BHTK, k_BGSK, v_BGSK, pos)
        y_BTD = self.out(y_BHTK.transpose(1, 2).reshape(B, T, H * K))
        if ctx is not None:
            ctx.meter.add_linear("qkv", B * T, self.d_model, self.qkv_dim)
            ctx.meter.add("sdpa", causal_attention_flops(B, H, K, T, pos))
            ctx.meter.add_linear("out", B * T, H * K, self.d_model)
        return y_BTD

    def _attend(self, q_BHTK: Tensor, k_BGSK: Tensor, v_BGSK: Tensor, pos: int) -> Tensor:
        T, S = q_BHTK.shape[2], k_BGSK.shape[2]
        gqa = self.n_kv_head != self.n_head
        if pos == 0:
            return F.scaled_dot_product_attention(q_BHTK, k_BGSK, v_BGSK, is_causal=True, enable_gqa=gqa)
        if T == 1:  # one new token attends to every cached key
            return F.scaled_dot_product_attention(q_BHTK, k_BGSK, v_BGSK, enable_gqa=gqa)
        # a chunk after a prefix: query i (absolute pos+i) sees keys 0..pos+i (bottom-right causal)
        mask_TS = torch.ones(T, S, dtype=torch.bool, device=q_BHTK.device).tril(diagonal=S - T)
        return F.scaled_dot_product_attention(q_BHTK, k_BGSK, v_BGSK, attn_mask=mask_TS, enable_gqa=gqa)
