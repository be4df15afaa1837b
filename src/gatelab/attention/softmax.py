"""Causal softmax self-attention: fused QKV projection, RoPE, grouped-query attention
(Ainslie et al., 2023, "GQA"), `F.scaled_dot_product_attention`, optional KV cache, and
the options studied in "Gated Attention for Large Language Models: Non-linearity,
Sparsity, and Attention-Sink-Free" (Qiu et al., 2025):

- ``gate``: a sigmoid gate computed from the (pre-normed) block input X,
  ``Y' = Y ⊙ σ(X W_θ)`` (paper eq. 5), one scalar per head (``headwise``) or one per
  channel (``elementwise``). ``gate_position: output`` is the paper's G1 (after SDPA,
  before W_O, its best position); ``value`` is G2 (on the value projection).
  ``gate_fn: ns_sigmoid`` (0.5 + 0.5σ, non-sparse) is the paper's control. The gate
  columns are folded into the fused QKV projection (one matmul).
- ``sink``: the usual sink remedies as baselines: ``off_by_one`` adds 1 to the softmax
  denominator (Miller, 2023, "Attention Is Off By One"), ``learned`` adds exp(s_h) for a
  learned per-head logit s_h (zero-init, so it starts as off-by-one; gpt-oss's "attention
  sinks"). Both run inside the fused SDPA: a virtual key whose score is s_h and value is 0.
  ``token`` prepends a learned sink token: a key and a value per KV head (zero-init, so it
  also starts as off-by-one; no RoPE on the sink key), seen by every query and kept out of
  the KV cache (prepended at every step): a key/value-level form of the learnable sink token
  that "Efficient Streaming Language Models with Attention Sinks" (Xiao et al., 2023)
  prepends to every training sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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
    gate: Literal["none", "headwise", "elementwise"] = "none"  # sigmoid gate from the block input
    gate_position: Literal["output", "value"] = "output"  # output = G1 (after SDPA); value = G2
    gate_fn: Literal["sigmoid", "ns_sigmoid"] = "sigmoid"  # ns_sigmoid = 0.5 + 0.5 sigmoid (control)
    sink: Literal["none", "off_by_one", "learned", "token"] = "none"  # extra softmax-denominator term
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)

    def validate(self) -> None:
        check(self.n_head >= 1, "n_head", self.n_head, "must be >= 1")
        check(self.n_kv_head >= 0, "n_kv_head", self.n_kv_head, "must be >= 0 (0 = n_head)")
        check(self.n_kv_head == 0 or self.n_head % self.n_kv_head == 0, "n_kv_head", self.n_kv_head,
              f"must divide n_head={self.n_head}")
        check(self.head_dim >= 0 and self.head_dim % 2 == 0, "head_dim", self.head_dim,
              "must be an even number >= 0 (RoPE rotates pairs; 0 = d_model // n_head)")
        check(self.rope_theta > 0, "rope_theta", self.rope_theta, "must be > 0")
        check(self.gate != "none" or self.gate_fn == "sigmoid", "gate_fn", self.gate_fn,
              "only applies with a gate; set gate to headwise or elementwise")

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
        self.gate, self.gate_position, self.gate_fn, self.sink = cfg.gate, cfg.gate_position, cfg.gate_fn, cfg.sink
        self.gated_heads = self.n_head if cfg.gate_position == "output" else self.n_kv_head
        self.gate_width = {"none": 0, "headwise": 1, "elementwise": self.head_dim}[cfg.gate]
        self.gate_dim = self.gated_heads * self.gate_width
        self.qkv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(d_model, self.qkv_dim + self.gate_dim, bias=cfg.qkv_bias)  # [q | k | v | gate]
        self.out = nn.Linear(self.n_head * self.head_dim, d_model, bias=False)
        self.out.is_residual_out = True
        self.rope = RotaryEmbedding(self.head_dim, cfg.rope_theta)
        self.sink_logit_H = nn.Parameter(torch.zeros(self.n_head)) if cfg.sink == "learned" else None
        token = cfg.sink == "token"  # a learned sink key and value per KV head (zero-init: off-by-one)
        self.sink_key_GK = nn.Parameter(torch.zeros(self.n_kv_head, self.head_dim)) if token else None
        self.sink_value_GK = nn.Parameter(torch.zeros(self.n_kv_head, self.head_dim)) if token else None
        #: set to a dict by `sink_metric.probe`; a forward at pos 0 then stores the attention
        #: mass on the first token per head ("first_token_mass_H", mean over batch and queries >= 1)
        #: and, with ``sink: token``, the mass on the sink token ("sink_token_mass_H", same mean)
        self.sink_probe: dict[str, Tensor] | None = None

    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    def forward(self, x_BTD: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        B, T, _ = x_BTD.shape
        pos = ctx.pos if ctx is not None else 0
        cache: KVCache | None = ctx.cache if ctx is not None else None
        H, G, K = self.n_head, self.n_kv_head, self.head_dim
        q_BTHK, k_BTGK, v_BTGK, z_BTX = self.qkv(x_BTD).split([H * K, G * K, G * K, self.gate_dim], dim=-1)
        q_BHTK = q_BTHK.view(B, T, H, K).transpose(1, 2)
        k_BGTK = k_BTGK.view(B, T, G, K).transpose(1, 2)
        v_BGTK = v_BTGK.view(B, T, G, K).transpose(1, 2)
        if self.gate != "none" and self.gate_position == "value":
            v_BGTK = v_BGTK * self._gate(z_BTX, ctx)
        cos_TK, sin_TK = self.rope.cos_sin(pos, T, x_BTD.device, q_BHTK.dtype)
        q_BHTK, k_BGTK = apply_rope(q_BHTK, cos_TK, sin_TK), apply_rope(k_BGTK, cos_TK, sin_TK)
        if cache is not None:
            k_BGSK, v_BGSK = cache.update(k_BGTK, v_BGTK, pos)  # S = pos + T keys
        else:
            if pos != 0:
                raise ValueError("attention at pos > 0 needs a KV cache (ctx.cache)")
            k_BGSK, v_BGSK = k_BGTK, v_BGTK
        y_BHTK = self._attend(q_BHTK, k_BGSK, v_BGSK, pos)
        if self.gate != "none" and self.gate_position == "output":
            y_BHTK = y_BHTK * self._gate(z_BTX, ctx)
        if self.sink_probe is not None and pos == 0 and T > 1:
            self._probe_first_token(q_BHTK, k_BGSK)
        y_BTD = self.out(y_BHTK.transpose(1, 2).reshape(B, T, H * K))
        if ctx is not None:
            ctx.meter.add_linear("qkv", B * T, self.d_model, self.qkv_dim)
            if self.gate_dim:
                ctx.meter.add_linear("gate", B * T, self.d_model, self.gate_dim)
            sink_key_flops = 4 * B * H * K * T if self.sink == "token" else 0  # one more key per query
            ctx.meter.add("sdpa", causal_attention_flops(B, H, K, T, pos) + sink_key_flops)
            ctx.meter.add_linear("out", B * T, H * K, self.d_model)
        return y_BTD

    def _gate(self, z_BTX: Tensor, ctx: ForwardContext | None) -> Tensor:
        """Gate scores (B, n, T, w) for n gated heads of width w (1 headwise, head_dim elementwise)."""
        B, T, _ = z_BTX.shape
        z_BnTw = z_BTX.view(B, T, self.gated_heads, self.gate_width).transpose(1, 2)
        g_BnTw = torch.sigmoid(z_BnTw)
        if self.gate_fn == "ns_sigmoid":
            g_BnTw = 0.5 + 0.5 * g_BnTw
        if ctx is not None:
            g = g_BnTw.detach()
            ctx.aux.add_stat("gate_mean", g.mean())
            ctx.aux.add_stat("gate_frac_lt_1e-2", (g < 1e-2).float().mean())
            ctx.aux.add_stat("gate_frac_lt_1e-3", (g < 1e-3).float().mean())
        return g_BnTw

    def _attend(self, q_BHTK: Tensor, k_BGSK: Tensor, v_BGSV: Tensor, pos: int) -> Tensor:
        T, S = q_BHTK.shape[2], k_BGSK.shape[2]
        gqa = self.n_kv_head != self.n_head
        if self.sink == "token":
            return self._attend_with_sink_token(q_BHTK, k_BGSK, v_BGSV, self.sink_value_GK)
        if self.sink != "none":
            return self._attend_with_sink(q_BHTK, k_BGSK, v_BGSV, gqa)
        if pos == 0:
            return F.scaled_dot_product_attention(q_BHTK, k_BGSK, v_BGSV, is_causal=True, enable_gqa=gqa)
        if T == 1:  # one new token attends to every cached key
            return F.scaled_dot_product_attention(q_BHTK, k_BGSK, v_BGSV, enable_gqa=gqa)
        # a chunk after a prefix: query i (absolute pos+i) sees keys 0..pos+i (bottom-right causal)
        mask_TS = torch.ones(T, S, dtype=torch.bool, device=q_BHTK.device).tril(diagonal=S - T)
        return F.scaled_dot_product_attention(q_BHTK, k_BGSK, v_BGSV, attn_mask=mask_TS, enable_gqa=gqa)

    def _attend_with_sink(self, q_BHTK: Tensor, k_BGSK: Tensor, v_BGSV: Tensor, gqa: bool) -> Tensor:
        """softmax over [s_h, scores] with a zero value for the sink: a virtual key 0 that every
        query sees. An extra channel carries the score: q' = [q, s_h], k'_sink = [0, sqrt(K)],
        k'_j = [k_j, 0], with the scale fixed at 1/sqrt(K), so q'·k'_sink / sqrt(K) = s_h."""
        B, H, T, K = q_BHTK.shape
        G, S = k_BGSK.shape[1], k_BGSK.shape[2]
        s_H = self.sink_logit_H if self.sink_logit_H is not None else q_BHTK.new_zeros(H)
        q_BHTK1 = torch.cat([q_BHTK, s_H.to(q_BHTK.dtype).view(1, H, 1, 1).expand(B, H, T, 1)], dim=-1)
        sink_key_BG1K1 = k_BGSK.new_zeros(B, G, 1, K + 1)
        sink_key_BG1K1[..., K] = math.sqrt(K)
        k_BGS1K1 = torch.cat([sink_key_BG1K1, F.pad(k_BGSK, (0, 1))], dim=2)
        v_BGS1V = F.pad(v_BGSV, (0, 0, 1, 0))
        return F.scaled_dot_product_attention(q_BHTK1, k_BGS1K1, v_BGS1V, attn_mask=_sink_mask(T, S, q_BHTK.device),
                                              scale=1 / math.sqrt(K), enable_gqa=gqa)

    def _attend_with_sink_token(self, q_BHTK: Tensor, k_BGSK: Tensor, v_BGSV: Tensor, sink_value_GV: Tensor) -> Tensor:
        """softmax over [sink key, keys] with values [sink value, values]; the sink token
        (key ``sink_key_GK``, value ``sink_value_GK``, no RoPE) is column 0 of the mask."""
        B, T = q_BHTK.shape[0], q_BHTK.shape[2]
        G, S = k_BGSK.shape[1], k_BGSK.shape[2]
        sink_k_BG1K = self.sink_key_GK.to(k_BGSK.dtype).view(1, G, 1, -1).expand(B, G, 1, -1)
        sink_v_BG1V = sink_value_GV.to(v_BGSV.dtype).view(1, G, 1, -1).expand(B, G, 1, -1)
        k_BGS1K = torch.cat([sink_k_BG1K, k_BGSK], dim=2)
        v_BGS1V = torch.cat([sink_v_BG1V, v_BGSV], dim=2)
        return F.scaled_dot_product_attention(q_BHTK, k_BGS1K, v_BGS1V, attn_mask=_sink_mask(T, S, q_BHTK.device),
                                              enable_gqa=self.n_kv_head != self.n_head)

    def _probe_first_token(self, q_BHTK: Tensor, k_BGSK: Tensor) -> None:
        """Attention mass on key 0 (the first real token), read out by attending over one-hot
        values (no T x T matrix); with a sink token, its own mass in a second value channel."""
        B, G, S, _ = k_BGSK.shape
        onehot_BGS1 = k_BGSK.new_zeros(B, G, S, 1)
        onehot_BGS1[:, :, 0] = 1.0
        with torch.no_grad():
            if self.sink == "token":  # channel 0: real token 0; channel 1: the sink token
                sink_onehot_G2 = k_BGSK.new_zeros(G, 2)
                sink_onehot_G2[:, 1] = 1.0
                mass_BHT2 = self._attend_with_sink_token(q_BHTK.detach(), k_BGSK.detach(),
                                                         F.pad(onehot_BGS1, (0, 1)), sink_onehot_G2)
                self.sink_probe["sink_token_mass_H"] = mass_BHT2[:, :, 1:, 1].float().mean(dim=(0, 2))
                self.sink_probe["first_token_mass_H"] = mass_BHT2[:, :, 1:, 0].float().mean(dim=(0, 2))
            else:
                mass_BHT1 = self._attend(q_BHTK.detach(), k_BGSK.detach(), onehot_BGS1, 0)
                self.sink_probe["first_token_mass_H"] = mass_BHT1[:, :, 1:, 0].float().mean(dim=(0, 2))


def _sink_mask(T: int, S: int, device: torch.device) -> Tensor:
    """(T, 1 + S) boolean mask: column 0 (a sink every query sees), then the S keys causally,
    query i (absolute position S - T + i) seeing keys 0..S - T + i."""
    return torch.ones(T, S + 1, dtype=torch.bool, device=device).tril(diagonal=S + 1 - T)
