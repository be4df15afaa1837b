"""Gated Linear Attention (Yang et al., 2023, "Gated Linear Attention Transformers with
Hardware-Efficient Training"): a linear-attention state with a data-dependent diagonal
decay, S_t = Diag(α_t) S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t (paper eq. 3), with
log α_t = logsigmoid(W_2 W_1 x_t + b) / 16 (rank-16 gate, §4.4).

`gla_recurrent` is the token loop (the reference); `gla_chunk` the chunkwise parallel form
(§4.2-4.3): within a chunk, with b_t the inclusive cumulative log decay,
    O = (Q ⊙ e^B) S + [A ⊙ M] V,   A_ts = Σ_d q_td k_sd e^{b_td - b_sd}   (s <= t)
    S ← Diag(e^{b_C}) S + (K ⊙ e^{b_C - B})ᵀ V.
Every exponent is <= 0, so nothing overflows: A is built on sub-blocks of 16 tokens, the
paper's secondary chunking; the diagonal sub-blocks take the decay per channel
explicitly, the others factor it through the last key position of the key sub-block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.config import check
from ..core.registry import register
from .linear_mixer import GatedLinearMixer, LinearMixerConfig, chunk_count, pad_to_chunks

SUB_BLOCK = 16  # secondary chunk of the intra-chunk scores


def gla_recurrent(q_BHTK: Tensor, k_BHTK: Tensor, v_BHTV: Tensor, g_BHTK: Tensor,
                  S0_BHKV: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: S_t = Diag(exp g_t) S_{t-1} + k_t v_tᵀ; o_t = S_tᵀ q_t. Returns (o, S_T)."""
    B, H, T, K = q_BHTK.shape
    S = S0_BHKV if S0_BHKV is not None else q_BHTK.new_zeros(B, H, K, v_BHTV.shape[-1])
    outs = []
    for t in range(T):
        S = g_BHTK[:, :, t, :, None].exp() * S + k_BHTK[:, :, t, :, None] * v_BHTV[:, :, t, None, :]
        outs.append((q_BHTK[:, :, t, :, None] * S).sum(-2))
    return torch.stack(outs, dim=2), S


def _intra_chunk_scores(q_BHNCK: Tensor, k_BHNCK: Tensor, b_BHNCK: Tensor, sub: int) -> Tensor:
    """A_ts = Σ_d q_td k_sd exp(b_td - b_sd) for s <= t in each chunk, 0 above the diagonal."""
    B, H, N, C, K = q_BHNCK.shape
    ns = C // sub
    q_6, k_6, b_6 = (t.reshape(B, H, N, ns, sub, K) for t in (q_BHNCK, k_BHNCK, b_BHNCK))
    # diagonal sub-blocks: explicit per-channel decay, (B, H, N, ns, sub_t, sub_s, K)
    causal_ts = torch.ones(sub, sub, dtype=torch.bool, device=q_BHNCK.device).tril()
    expo_7 = (b_6[..., :, None, :] - b_6[..., None, :, :]).masked_fill(~causal_ts[:, :, None], float("-inf"))
    A_diag_6 = (q_6[..., :, None, :] * k_6[..., None, :, :] * expo_7.exp()).sum(-1)  # (B,H,N,ns,sub,sub)
    # later query sub-blocks vs key sub-block j: decay factored through r_j, the last key position of j
    b_ref_BHNJK = b_6[..., -1, :]
    k_ref_6 = k_6 * (b_ref_BHNJK[..., None, :] - b_6).exp()  # (B,H,N,ns_j,sub,K), exponents <= 0
    later_JC = torch.arange(C, device=q_BHNCK.device)[None, :] // sub > torch.arange(ns, device=q_BHNCK.device)[:, None]
    expo_6 = (b_BHNCK[:, :, :, None] - b_ref_BHNJK[..., None, :]).masked_fill(~later_JC[:, :, None], float("-inf"))
    q_ref_6 = q_BHNCK[:, :, :, None] * expo_6.exp()  # (B,H,N,ns_j,C,K)
    A_off_6 = q_ref_6 @ k_ref_6.transpose(-1, -2)  # (B,H,N,ns_j,C,sub)
    A_7 = A_off_6.permute(0, 1, 2, 4, 3, 5).reshape(B, H, N, ns, sub, ns, sub)
    eye_J = torch.eye(ns, dtype=q_BHNCK.dtype, device=q_BHNCK.device)
    A_7 = A_7 + A_diag_6[..., :, :, None, :] * eye_J[:, None, :, None]
    return A_7.reshape(B, H, N, C, C)


def gla_chunk(q_BHTK: Tensor, k_BHTK: Tensor, v_BHTV: Tensor, g_BHTK: Tensor,
              S0_BHKV: Tensor | None = None, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunkwise parallel form of `gla_recurrent` (same outputs and final state)."""
    B, H, T, K = q_BHTK.shape
    V = v_BHTV.shape[-1]
    C = chunk_size
    sub = SUB_BLOCK if C % SUB_BLOCK == 0 else C
    N = chunk_count(T, C)
    q_BHNCK, k_BHNCK, g_BHNCK = (t.reshape(B, H, N, C, K) for t in pad_to_chunks(C, q_BHTK, k_BHTK, g_BHTK))
    v_BHNCV = pad_to_chunks(C, v_BHTV)[0].reshape(B, H, N, C, V)
    b_BHNCK = g_BHNCK.cumsum(dim=3)
    b_last_BHNK = b_BHNCK[:, :, :, -1]
    dS_BHNKV = (k_BHNCK * (b_last_BHNK[:, :, :, None] - b_BHNCK).exp()).transpose(-1, -2) @ v_BHNCV
    S = S0_BHKV if S0_BHKV is not None else q_BHTK.new_zeros(B, H, K, V)
    starts = []
    for n in range(N):  # state entering each chunk
        starts.append(S)
        S = b_last_BHNK[:, :, n, :, None].exp() * S + dS_BHNKV[:, :, n]
    S_in_BHNKV = torch.stack(starts, dim=2)
    A_BHNCC = _intra_chunk_scores(q_BHNCK, k_BHNCK, b_BHNCK, sub)
    o_BHNCV = (q_BHNCK * b_BHNCK.exp()) @ S_in_BHNKV + A_BHNCC @ v_BHNCV
    return o_BHNCV.reshape(B, H, N * C, V)[:, :, :T], S


@dataclass
class GLAConfig(LinearMixerConfig):
    gate_rank: int = 16  # rank of the decay projection W_2 W_1
    gate_normalizer: float = 16.0  # log α = logsigmoid(.) / gate_normalizer

    def validate(self) -> None:
        super().validate()
        check(self.gate_rank >= 1, "gate_rank", self.gate_rank, "must be >= 1")
        check(self.gate_normalizer > 0, "gate_normalizer", self.gate_normalizer, "must be > 0")
        check(self.chunk_size % SUB_BLOCK == 0 or self.chunk_size <= SUB_BLOCK, "chunk_size", self.chunk_size,
              f"must be <= {SUB_BLOCK} or a multiple of {SUB_BLOCK}")


@register("token_mixer", "gla")
class GatedLinearAttention(GatedLinearMixer):
    """GLA token mixer: y = W_O(RMSNorm(o) ⊙ SiLU(W_z x)), o from the gated recurrence above."""

    Config = GLAConfig

    def __init__(self, d_model: int, cfg: GLAConfig | None = None):
        cfg = cfg or self.Config()
        super().__init__(d_model, cfg, gate_in_dim=cfg.gate_rank)
        self.normalizer = cfg.gate_normalizer
        self.gate_up = nn.Linear(cfg.gate_rank, self.n_head * self.key_dim, bias=True)  # W_2, b

    def _mix(self, q_BHTK: Tensor, k_BHTK: Tensor, v_BHTV: Tensor, gates_BTX: Tensor,
             S0_BHKV: Tensor | None, chunked: bool) -> tuple[Tensor, Tensor]:
        B, H, T, K = q_BHTK.shape
        g_BHTK = (F.logsigmoid(self.gate_up(gates_BTX)) / self.normalizer).view(B, T, H, K).transpose(1, 2)
        q_BHTK = q_BHTK * K ** -0.5
        if chunked:
            return gla_chunk(q_BHTK, k_BHTK, v_BHTV, g_BHTK, S0_BHKV, self.chunk_size)
        return gla_recurrent(q_BHTK, k_BHTK, v_BHTV, g_BHTK, S0_BHKV)

    def extra_linears(self) -> list[tuple[str, int, int]]:
        return [("gate_up", self.gate_in_dim, self.n_head * self.key_dim)]

    def _kernel_flops(self, B: int, T: int, chunked: bool) -> int:
        """State work: per token and head 5·d_k·d_v in the loop (decay, outer product, add,
        read-out); per chunk the C×C scores and A V (2C²(d_k+d_v)), Q S and the state
        update (4C·d_k·d_v)."""
        H, K, V = self.n_head, self.key_dim, self.value_dim
        if not chunked:
            return 5 * B * H * T * K * V
        C = self.chunk_size
        return B * H * chunk_count(T, C) * (2 * C * C * (K + V) + 4 * C * K * V + 2 * K * V)
