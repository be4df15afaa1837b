"""CALM early exit: the shared LM head after any block; a token stops at its first confident layer.

"Confident Adaptive Language Modeling" (Schuster et al., 2022). After block l < L−1 the
tokens still running get a confidence c; a token exits when c ≥ `threshold`:

    margin:     p_top1 − p_top2 of softmax(head(h_l))   (CALM's softmax response)
    max_prob:   p_top1 of softmax(head(h_l))
    saturation: cos(h_l, h_{l−1})                        (needs no head to decide)

head = final norm + LM head (shared with the last layer). An exited token's hidden state
is frozen: its logits are head(h_l), and every later block computes its keys/values from
h_l (CALM's state propagation), so later tokens attend to it. A threshold above 1 never
exits (the dense model).

Training runs every block on every token and adds the exit losses

    coef · Σ_{l<L−1} (l+1)/L · CE(head(h_l), next token)

(CALM's weights l/Σj j, rescaled so the last layer's — the trainer's LM loss — is 1).
The forward sees no targets: the next input token is the target, so the last position
of a sequence has no exit loss.

Execution in eval. With a KV cache and one token per row (decoding), exited rows run
only the KV fill of the later blocks (`kv_fill.fill_kv`); the other rows run the block on
their own. Any other forward (a whole sequence, a prefill chunk) is the masked reference:
every block runs on every token and the exited tokens' updates are dropped — the same
outputs as decoding with the same exit decisions, but no saving. Compute saved is
therefore measured by decoding (`accounting.decode_stepwise`). Not implemented: CALM's
threshold decay over decoding steps, a trained exit classifier.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.aux import ForwardContext
from ..core.config import check
from ..core.registry import register
from .base import BlockLike, DepthMethod, Head, layer_context
from .kv_fill import check_fillable, fill_kv, rows_context
from .routed import record_by_domain


def next_token_ce(logits_BTV: Tensor, token_ids_BT: Tensor) -> Tensor:
    """Per-position CE (B, T') of logits at positions 0..T'−1 against the next input token."""
    T = logits_BTV.shape[1]
    ce_N = F.cross_entropy(logits_BTV.float().flatten(0, 1), token_ids_BT[:, 1:T + 1].flatten(), reduction="none")
    return ce_N.view(logits_BTV.shape[0], T)


def softmax_confidence(logits_NV: Tensor, kind: str) -> Tensor:
    """Top-1 probability ("max_prob") or top-1 − top-2 probability ("margin") per row."""
    top2_N2 = F.softmax(logits_NV.float(), dim=-1).topk(2, dim=-1).values
    return top2_N2[:, 0] if kind == "max_prob" else top2_N2[:, 0] - top2_N2[:, 1]


@register("depth", "calm")
class EarlyExit(DepthMethod):
    """Confidence-thresholded early exit with the shared head (see the module docstring)."""

    @dataclass
    class Config:
        confidence: Literal["margin", "max_prob", "saturation"] = "margin"
        threshold: float = 0.9  # exit when confidence >= threshold (> 1: never exit)
        exit_loss: float = 1.0  # coefficient of the intermediate exit losses in training (0: none)

        def validate(self) -> None:
            check(self.threshold > 0, "threshold", self.threshold, "must be > 0 (> 1 never exits)")
            check(self.exit_loss >= 0, "exit_loss", self.exit_loss, "must be >= 0 (0 = no exit losses)")

    def __init__(self, n_layer: int, d_model: int, cfg: Config | None = None):
        super().__init__(n_layer, d_model)
        self.cfg = cfg or self.Config()

    def run(self, blocks: Sequence[BlockLike], x_BTD: Tensor, ctx: ForwardContext, caches: list[Any] | None,
            head: Head) -> Tensor:
        if self.training:
            return self._run_training(blocks, x_BTD, ctx, caches, head)
        return self._run_exiting(blocks, x_BTD, ctx, caches, head)

    def _run_training(self, blocks: Sequence[BlockLike], x_BTD: Tensor, ctx: ForwardContext,
                      caches: list[Any] | None, head: Head) -> Tensor:
        L, T = len(blocks), x_BTD.shape[1]
        with_losses = ctx.token_ids is not None and T > 1
        exits: list[tuple[Tensor, Tensor]] = []  # per block l < L−1: exit logits (B, T−1, V), CE (B, T−1)
        for i, block in enumerate(blocks):
            lctx = layer_context(ctx, i, caches)
            x_BTD = block(x_BTD, lctx)
            if with_losses and i < L - 1 and self.wants_exit_logits():
                logits_BTV = head(x_BTD[:, :-1], lctx.scoped("exit"))
                ce_BT = next_token_ce(logits_BTV, ctx.token_ids)
                if self.cfg.exit_loss > 0:
                    lctx.aux.add_loss("exit_ce", self.cfg.exit_loss * (i + 1) / L * ce_BT.mean())
                exits.append((logits_BTV, ce_BT))
        logits_BTV = head(x_BTD, ctx)
        if exits:
            self.exit_objective(ctx, exits, next_token_ce(logits_BTV[:, :-1], ctx.token_ids))
        return logits_BTV

    def wants_exit_logits(self) -> bool:
        """Whether training computes the intermediate exit logits."""
        return self.cfg.exit_loss > 0

    def exit_objective(self, ctx: ForwardContext, exits: list[tuple[Tensor, Tensor]], last_ce_BT: Tensor) -> None:
        """Extra training losses of learned exits, from each exit's logits and CE (none for CALM)."""

    def _run_exiting(self, blocks: Sequence[BlockLike], x_BTD: Tensor, ctx: ForwardContext,
                     caches: list[Any] | None, head: Head) -> Tensor:
        B, T, _ = x_BTD.shape
        L = len(blocks)
        decoding = caches is not None and T == 1
        if caches is not None:
            for block in blocks:
                check_fillable(block)
        active_BT = torch.ones(B, T, dtype=torch.bool, device=x_BTD.device)
        exit_layer_BT = torch.full((B, T), L - 1, device=x_BTD.device)
        logits_BTV: Tensor | None = None
        for i, block in enumerate(blocks):
            lctx = layer_context(ctx, i, caches)
            prev_BTD = x_BTD
            if decoding:
                x_BTD = self._decode_block(block, x_BTD, active_BT[:, 0], lctx)
            elif caches is not None or active_BT.any():  # with no cache, nothing reads a frozen token's KV
                x_BTD = torch.where(active_BT.unsqueeze(-1), block(x_BTD, lctx), x_BTD)
            if i == L - 1 or not active_BT.any():
                continue
            exit_N, exit_logits_NV = self.decide(i, x_BTD[active_BT], prev_BTD[active_BT], head, lctx)
            if exit_logits_NV is None:
                continue
            b_N, t_N = active_BT.nonzero(as_tuple=True)
            b_N, t_N = b_N[exit_N], t_N[exit_N]
            if logits_BTV is None:
                logits_BTV = exit_logits_NV.new_empty(B, T, exit_logits_NV.shape[-1])
            logits_BTV[b_N, t_N] = exit_logits_NV
            active_BT[b_N, t_N] = False
            exit_layer_BT[b_N, t_N] = i
        self._record(ctx, exit_layer_BT, L)
        if logits_BTV is None:  # no token exited: the dense head, exactly
            return head(x_BTD, ctx)
        if active_BT.any():
            logits_BTV[active_BT] = head(x_BTD[active_BT].unsqueeze(0), ctx)[0]
        return logits_BTV

    def decide(self, layer: int, h_ND: Tensor, prev_ND: Tensor, head: Head,
               ctx: ForwardContext) -> tuple[Tensor, Tensor | None]:
        """Which of the N running tokens exit after block `layer` (mask (N,)), and their logits
        (None when none exits). `prev_ND` is their input to the block."""
        head_ctx = ctx.scoped("exit")
        if self.cfg.confidence == "saturation":
            exit_N = F.cosine_similarity(h_ND, prev_ND, dim=-1) >= self.cfg.threshold
            return exit_N, head(h_ND[exit_N].unsqueeze(0), head_ctx)[0] if exit_N.any() else None
        logits_NV = head(h_ND.unsqueeze(0), head_ctx)[0]
        exit_N = softmax_confidence(logits_NV, self.cfg.confidence) >= self.cfg.threshold
        return exit_N, logits_NV[exit_N] if exit_N.any() else None

    @staticmethod
    def _decode_block(block: BlockLike, x_B1D: Tensor, active_B: Tensor, ctx: ForwardContext) -> Tensor:
        """One decoding step of a block: active rows run it, exited rows only fill its KV cache."""
        if active_B.all():
            return block(x_B1D, ctx)
        rows_N, frozen_N = active_B.nonzero().squeeze(1), (~active_B).nonzero().squeeze(1)
        fill_kv(block, x_B1D[frozen_N], rows_context(ctx, frozen_N))
        if rows_N.numel() == 0:
            return x_B1D
        out_B1D = x_B1D.clone()
        out_B1D[rows_N] = block(x_B1D[rows_N], rows_context(ctx, rows_N))
        return out_B1D

    @staticmethod
    def _record(ctx: ForwardContext, exit_layer_BT: Tensor, n_layer: int) -> None:
        """Statistics: mean fraction of blocks run per token (per domain too) and the exit-layer histogram."""
        record_by_domain(ctx, "exit/blocks_run", (exit_layer_BT + 1) / n_layer)
        for layer in range(n_layer):
            ctx.aux.add_stat(f"exit/at_layer{layer}", (exit_layer_BT == layer).float().mean())
