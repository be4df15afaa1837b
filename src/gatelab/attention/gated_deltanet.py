"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, 2024, "Gated Delta Networks: Improving Mamba2
with Delta Rule"): the gated delta rule S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,
o_t = S_tᵀ q_t (paper eq. 10), with Mamba2-style decay log α = -exp(A_log)·softplus(W_a x + dt_bias),
write strength β = σ(W_b x) (×2 with ``allow_neg_eigval``), L2-normalised q and k.

`gated_delta_recurrent` is the token loop (the reference); `gated_delta_chunk` the exact
chunkwise form through the WY / UT transform (paper §3.3; METHODS §3.4): per chunk, with γ
the inclusive cumulative log decay and Γ_ij = e^{γ_i - γ_j} (i >= j),
    A = [I + StrictLower(diag(β)(KKᵀ ⊙ Γ))]^{-1},  U = A diag(β) V,  W = A diag(β) diag(e^γ) K
    V' = U - W S;  O = (Q ⊙ e^γ) S + [(QKᵀ) ⊙ Γ ⊙ M] V';  S ← e^{γ_C} S + (K ⊙ e^{γ_C - γ})ᵀ V'.
The inverse is a unit-lower-triangular solve; every exponent is <= 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.registry import register
from .linear_mixer import GatedLinearMixer, LinearMixerConfig, chunk_count, pad_to_chunks


def gated_delta_recurrent(q_BHTK: Tensor, k_BHTK: Tensor, v_BHTV: Tensor, g_BHT: Tensor, beta_BHT: Tensor,
                          S0_BHKV: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: S ← α_t S;  v' = β_t (v_t - Sᵀk_t);  S ← S + k_t v'ᵀ;  o_t = Sᵀ q_t (α = exp g)."""
    B, H, T, K = q_BHTK.shape
    S = S0_BHKV if S0_BHKV is not None else q_BHTK.new_zeros(B, H, K, v_BHTV.shape[-1])
    outs = []
    for t in range(T):
        S = g_BHT[:, :, t, None, None].exp() * S
        k_BHK = k_BHTK[:, :, t]
        v_new_BHV = beta_BHT[:, :, t, None] * (v_BHTV[:, :, t] - (S * k_BHK[..., None]).sum(-2))
        S = S + k_BHK[..., None] * v_new_BHV[..., None, :]
        outs.append((q_BHTK[:, :, t, :, None] * S).sum(-2))
    return torch.stack(outs, dim=2), S


def gated_delta_chunk(q_BHTK: Tensor, k_BHTK: Tensor, v_BHTV: Tensor, g_BHT: Tensor, beta_BHT: Tensor,
                      S0_BHKV: Tensor | None = None, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunkwise WY form of `gated_delta_recurrent` (same outputs and final state)."""
    B, H, T, K = q_BHTK.shape
    V = v_BHTV.shape[-1]
    C = chunk_size
    N = chunk_count(T, C)
    q_p, k_p, v_p = pad_to_chunks(C, q_BHTK, k_BHTK, v_BHTV)
    g_p, beta_p = (F.pad(t, (0, N * C - T)) for t in (g_BHT, beta_BHT))
    q_BHNCK, k_BHNCK, v_BHNCV = q_p.view(B, H, N, C, K), k_p.view(B, H, N, C, K), v_p.view(B, H, N, C, V)
    gam_BHNC, beta_BHNC = g_p.view(B, H, N, C).cumsum(-1), beta_p.view(B, H, N, C)
    incl_CC = torch.ones(C, C, dtype=torch.bool, device=q_BHTK.device).tril()
    Gam_BHNCC = (gam_BHNC[..., :, None] - gam_BHNC[..., None, :]).masked_fill(~incl_CC, float("-inf")).exp()
    kb_BHNCK = k_BHNCK * beta_BHNC[..., None]
    L_BHNCC = ((kb_BHNCK @ k_BHNCK.transpose(-1, -2)) * Gam_BHNCC).tril(-1)
    rhs_BHNCX = torch.cat([v_BHNCV * beta_BHNC[..., None], kb_BHNCK * gam_BHNC.exp()[..., None]], dim=-1)
    UW_BHNCX = torch.linalg.solve_triangular(L_BHNCC + torch.eye(C, dtype=L_BHNCC.dtype, device=L_BHNCC.device),
                                             rhs_BHNCX, upper=False, unitriangular=True)
    U_BHNCV, W_BHNCK = UW_BHNCX.split([V, K], dim=-1)
    Aqk_BHNCC = (q_BHNCK @ k_BHNCK.transpose(-1, -2)) * Gam_BHNCC
    q_dec_BHNCK = q_BHNCK * gam_BHNC.exp()[..., None]
    k_dec_BHNCK = k_BHNCK * (gam_BHNC[..., -1:] - gam_BHNC).exp()[..., None]
    S = S0_BHKV if S0_BHKV is not None else q_BHTK.new_zeros(B, H, K, V)
    outs = []
    for n in range(N):
        v_new_BHCV = U_BHNCV[:, :, n] - W_BHNCK[:, :, n] @ S
        outs.append(q_dec_BHNCK[:, :, n] @ S + Aqk_BHNCC[:, :, n] @ v_new_BHCV)
        S = gam_BHNC[:, :, n, -1, None, None].exp() * S + k_dec_BHNCK[:, :, n].transpose(-1, -2) @ v_new_BHCV
    return torch.cat(outs, dim=2)[:, :, :T], S


@dataclass
class GatedDeltaNetConfig(LinearMixerConfig):
    allow_neg_eigval: bool = False  # β ∈ (0, 2): transitions with negative eigenvalues


@register("token_mixer", "gated_deltanet")
class GatedDeltaNet(GatedLinearMixer):
    """Gated DeltaNet token mixer: q, k = L2norm(SiLU(.)), v = SiLU(.); y = W_O(RMSNorm(o) ⊙ SiLU(W_z x))."""

    Config = GatedDeltaNetConfig

    def __init__(self, d_model: int, cfg: GatedDeltaNetConfig | None = None):
        cfg = cfg or self.Config()
        super().__init__(d_model, cfg, gate_in_dim=2 * cfg.n_head)  # [a | b] per head
        self.beta_scale = 2.0 if cfg.allow_neg_eigval else 1.0
        self.A_log_H = nn.Parameter(torch.empty(self.n_head))
        self.dt_bias_H = nn.Parameter(torch.empty(self.n_head))
        self.init_weights(0.0)

    def init_weights(self, std: float) -> None:
        """Mamba2's decay init: A ~ U(0, 16), dt ~ logU(1e-3, 0.1), dt_bias = softplus^{-1}(dt)."""
        with torch.no_grad():
            self.A_log_H.copy_(torch.empty_like(self.A_log_H).uniform_(0, 16).clamp_min(1e-4).log())
            dt_H = torch.exp(torch.empty_like(self.dt_bias_H).uniform_(math.log(1e-3), math.log(0.1)))
            self.dt_bias_H.copy_(dt_H + torch.log(-torch.expm1(-dt_H)))

    def _mix(self, q_BHTK: Tensor, k_BHTK: Tensor, v_BHTV: Tensor, gates_BTX: Tensor,
             S0_BHKV: Tensor | None, chunked: bool) -> tuple[Tensor, Tensor]:
        K = q_BHTK.shape[-1]
        a_BTH, b_BTH = gates_BTX.chunk(2, dim=-1)
        g_BHT = (-self.A_log_H.exp() * F.softplus(a_BTH + self.dt_bias_H)).transpose(1, 2)
        beta_BHT = (self.beta_scale * torch.sigmoid(b_BTH)).transpose(1, 2)
        q_BHTK = F.normalize(F.silu(q_BHTK), dim=-1) * K ** -0.5
        k_BHTK = F.normalize(F.silu(k_BHTK), dim=-1)
        v_BHTV = F.silu(v_BHTV)
        if chunked:
            return gated_delta_chunk(q_BHTK, k_BHTK, v_BHTV, g_BHT, beta_BHT, S0_BHKV, self.chunk_size)
        return gated_delta_recurrent(q_BHTK, k_BHTK, v_BHTV, g_BHT, beta_BHT, S0_BHKV)

    def _kernel_flops(self, B: int, T: int, chunked: bool) -> int:
        """State work: per token and head 7·d_k·d_v in the loop (decay, Sᵀk, outer product and
        add, read-out); per chunk KKᵀ and QKᵀ (4C²d_k), the triangular solve (C²(d_k+d_v)),
        A V' (2C²d_v) and W S, Q S, the state update (6C·d_k·d_v)."""
        H, K, V = self.n_head, self.key_dim, self.value_dim
        if not chunked:
            return 7 * B * H * T * K * V
        C = self.chunk_size
        return B * H * chunk_count(T, C) * (4 * C * C * K + C * C * (K + V) + 2 * C * C * V + 6 * C * K * V)
