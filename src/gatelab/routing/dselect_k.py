"""DSelect-k gate (Hazimeh et al. 2021, "DSelect-k: Differentiable Selection in the Mixture of
Experts with Applications to Multi-Task Learning", section 3; per-example gating).

k single-expert selectors, each a soft binary code of m = ceil(log2 E) smooth steps:

    S(t) = 0 (t <= -gamma/2),  1 (t >= gamma/2),  -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2 otherwise
    r_i(x)_l = prod_j S(z_ij)^[bit j of l] (1 - S(z_ij))^[1 - bit j of l],   z_i = W_i x + b_i
    q(x) = sum_i softmax(A x + c)_i r_i(x)

(bits most significant first, as in the authors' code). S saturates at exactly 0 and 1, so
once every selector's z leaves (-gamma/2, gamma/2) each r_i is one-hot and q has at most k
nonzeros; before that a token can use every expert (dense early training, counted by the
compute meter as executed assignments). The decision holds the nonzero entries of q.

Regularisers (added to ``ctx.aux`` by the router): ``dselect_entropy`` = entropy_reg x
mean_t sum_i H(r_i(x_t)) (the paper's entropy regulariser, speeds up convergence to k
selections; the authors' default is off). When E is not a power of two, codes >= E are
unreachable and ``dselect_reach`` = mean_t sum_i 1 / sum_{l < E} r_i(x_t)_l keeps selectors
from putting their mass there (the authors' code; no coefficient); until it reaches k
the weights of a token sum to less than 1. Initialisation as the authors' code: z's
weights and bias U(-gamma/100, gamma/100), the selector-weight projection U(-0.05, 0.05).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .decision import RoutingDecision


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth step S(t): exactly 0 below -gamma/2 and 1 above gamma/2, C^1."""
    inner = -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner))


def selector_outputs(s_TKM: Tensor) -> Tensor:
    """(T, K, 2^M) distributions r over codes from smooth steps s (bit 0 = most significant)."""
    r_TKL = torch.ones(*s_TKM.shape[:2], 1, dtype=s_TKM.dtype, device=s_TKM.device)
    for j in range(s_TKM.shape[-1]):
        s_TK1 = s_TKM[..., j : j + 1]
        r_TKL = torch.stack([r_TKL * (1 - s_TK1), r_TKL * s_TK1], dim=-1).flatten(2)
    return r_TKL


@register("router", "dselect_k")
class DSelectKRouter(nn.Module):
    """Per-token DSelect-k gate: k smooth binary selectors mixed by a softmax."""

    @dataclass
    class Config:
        gamma: float = 1.0
        entropy_reg: float = 0.0

        def validate(self) -> None:
            check(self.gamma > 0, "gamma", self.gamma, "must be > 0")
            check(self.entropy_reg >= 0, "entropy_reg", self.entropy_reg, "must be >= 0 (0 = off)")

    def __init__(self, d_model: int, n_experts: int, k: int, cfg: Config | None = None):
        super().__init__()
        cfg = cfg or self.Config()
        self.cfg, self.n_experts, self.k = cfg, n_experts, k
        self.n_bits = math.ceil(math.log2(n_experts)) if n_experts > 1 else 0
        self.z_weight = nn.Parameter(torch.empty(k * self.n_bits, d_model))
        self.z_bias = nn.Parameter(torch.empty(k * self.n_bits))
        self.w_weight = nn.Parameter(torch.empty(k, d_model))
        self.w_bias = nn.Parameter(torch.empty(k))
        self.init_weights(0.0)

    def init_weights(self, std: float) -> None:
        """The authors' initialisation (independent of the model's `std`)."""
        z = self.cfg.gamma / 100
        for p, bound in ((self.z_weight, z), (self.z_bias, z), (self.w_weight, 0.05), (self.w_bias, 0.05)):
            nn.init.uniform_(p, -bound, bound)

    def gates(self, x_TD: Tensor) -> tuple[Tensor, Tensor]:
        """(q_TE expert weights, r_TKL selector outputs over all 2^m codes), fp32 (float64 for float64)."""
        dtype = torch.promote_types(x_TD.dtype, torch.float32)
        with torch.autocast(x_TD.device.type, enabled=False):
            x_TD = x_TD.to(dtype)
            z_TKM = F.linear(x_TD, self.z_weight.to(dtype), self.z_bias.to(dtype)).view(-1, self.k, self.n_bits)
            alpha_TK = torch.softmax(F.linear(x_TD, self.w_weight.to(dtype), self.w_bias.to(dtype)), dim=-1)
        r_TKL = selector_outputs(smooth_step(z_TKM, self.cfg.gamma))
        q_TE = torch.einsum("tk,tke->te", alpha_TK, r_TKL[..., : self.n_experts])
        return q_TE, r_TKL

    def forward(self, x_TD: Tensor, ctx: ForwardContext) -> RoutingDecision:
        q_TE, r_TKL = self.gates(x_TD)
        ctx.meter.add_linear("router", x_TD.shape[0], x_TD.shape[1], self.z_weight.shape[0] + self.w_weight.shape[0],
                             bias=True)
        if self.cfg.entropy_reg > 0:
            entropy = -(r_TKL * torch.log(r_TKL.clamp_min(1e-30))).sum(-1).sum(-1).mean()
            ctx.aux.add_loss("dselect_entropy", self.cfg.entropy_reg * entropy)
        if r_TKL.shape[-1] > self.n_experts:
            ctx.aux.add_loss("dselect_reach", (1 / r_TKL[..., : self.n_experts].sum(-1).clamp_min(1e-6)).sum(-1).mean())
        token_A, expert_A = (q_TE > 0).nonzero(as_tuple=True)
        return RoutingDecision(token_A, expert_A, q_TE[token_A, expert_A], q_TE.shape[0], self.n_experts, 0, q_TE)
