"""A decoder-only language model assembled from registry parts (nanoGPT / Llama shape).

token embedding -> n_layer x Block -> final norm -> LM head (optionally tied).
Each Block is pre-norm:  x = x + mixer(norm1(x));  x = x + ffn(norm2(x)).
How each block runs per token is the config's depth method (`gatelab.depth`), which runs
the block stack and then `LM.head`: "none" runs every block on every token; skip gates and
mixture-of-depths run a block's residual update on the selected tokens only; early exit
stops a token at a confident layer, using `LM.head` as the shared exit head.
The mixer and ffn are whatever the config names (attention, gated attention, linear
mixers; SwiGLU, MoE, ...), and may differ per layer (`ModelConfig.pattern`).

`forward` returns an `LMOutput`: logits, the auxiliary-output collector (losses the
trainer adds to the loss; statistics it logs) and the compute meter (FLOPs and
parameter reads actually executed in this forward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.aux import AuxOutputs, ForwardContext
from ..core.config import Component
from ..core.flops import ComputeMeter
from ..depth import build_depth
from ..quant import quantize_linears
from .config import BlockConfig, ModelConfig


def build_part(comp: Component, d_model: int) -> nn.Module:
    """Instantiate a registered mixer / ffn / norm from its config component."""
    return comp.cls(d_model, comp.options)


class Block(nn.Module):
    def __init__(self, cfg: BlockConfig, d_model: int):
        super().__init__()
        self.norm1 = build_part(cfg.norm, d_model)
        self.mixer = build_part(cfg.mixer, d_model)
        self.norm2 = build_part(cfg.norm, d_model)
        self.ffn = build_part(cfg.ffn, d_model)
        self._norm_params = sum(p.numel() for p in self.norm1.parameters())

    def mix(self, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        """The token-mixing residual branch: mixer(norm1(x))."""
        ctx.meter.add("norms", 0, x_BTD.shape[0] * x_BTD.shape[1] * self._norm_params)
        return self.mixer(self.norm1(x_BTD), ctx.scoped("mixer"))

    def channel(self, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        """The channel-mixing residual branch: ffn(norm2(x))."""
        ctx.meter.add("norms", 0, x_BTD.shape[0] * x_BTD.shape[1] * self._norm_params)
        return self.ffn(self.norm2(x_BTD), ctx.scoped("ffn"))

    def forward(self, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        x_BTD = x_BTD + self.mix(x_BTD, ctx)
        return x_BTD + self.channel(x_BTD, ctx)


@dataclass
class LMOutput:
    logits: Tensor  # (B, T, V)
    aux: AuxOutputs
    meter: ComputeMeter

    @property
    def aux_loss(self) -> Tensor | None:
        return self.aux.total_loss()


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (the trainer fills it from the tokenizer)")
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(b, d) for b in cfg.layer_blocks())
        self.depth = build_depth(cfg.depth, cfg.n_layer, d)
        self.norm = build_part(cfg.block.norm, d)
        self._final_norm_params = sum(p.numel() for p in self.norm.parameters())
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._init_weights()
        quantize_linears(self.blocks, cfg.linear)  # after init: the swap copies the initialised weights

    # ------------------------------------------------------------------ init & counts
    def _init_weights(self) -> None:
        """N(0, init_std) for matmuls and embeddings; residual output projections scaled by
        1/sqrt(2 n_layer) (GPT-2). Modules with an `init_weights(std)` method (gates with a
        biased start, routers) then apply their own rule."""
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                scale = 1 / math.sqrt(2 * self.cfg.n_layer) if getattr(m, "is_residual_out", False) else 1.0
                nn.init.normal_(m.weight, mean=0.0, std=std * scale)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if m is not self and hasattr(m, "init_weights"):
                m.init_weights(std)

    def num_params(self, non_embedding: bool = True) -> int:
        """Total parameters (tied weights once); `non_embedding` leaves out embedding and head."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed.weight.numel()
            if not self.cfg.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    # ------------------------------------------------------------------ forward
    def forward(self, idx_BT: Tensor, *, domains_BT: Tensor | None = None,
                caches: list[Any] | None = None, pos: int = 0) -> LMOutput:
        ctx = ForwardContext(token_ids=idx_BT, domains=domains_BT, pos=pos)
        x_BTD = self.embed(idx_BT)
        logits_BTV = self.depth.run(self.blocks, x_BTD, ctx, caches, self.head)  # blocks, then self.head
        return LMOutput(logits_BTV, ctx.aux, ctx.meter)

    def head(self, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        """Final norm and LM head: logits (B, T, V). Early-exit methods use it as the shared exit head."""
        B, T = x_BTD.shape[:2]
        ctx.meter.add("final_norm", 0, B * T * self._final_norm_params)
        ctx.meter.add("lm_head", 2 * B * T * self.cfg.d_model * self.cfg.vocab_size)
        return self.lm_head(self.norm(x_BTD))

    # ------------------------------------------------------------------ generation
    def init_caches(self, batch: int, max_len: int) -> list[Any] | None:
        """One inference cache per layer, or None if some mixer (or the depth method, whose
        token selection may change the cached sequence) has no incremental form."""
        p = self.embed.weight
        if not self.depth.supports_cache or not all(hasattr(b.mixer, "init_cache") for b in self.blocks):
            return None
        return self.depth.wrap_caches([b.mixer.init_cache(batch, max_len, p.device, p.dtype) for b in self.blocks])

    @torch.no_grad()
    def generate(self, idx_BT: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample `max_new_tokens` continuations of `idx_BT`. temperature 0 = greedy.

        With `use_cache` the prompt is run once (prefill) and each new token attends to
        cached keys/values (or carries a recurrent state); without, the whole sequence is
        recomputed each step (the reference path).
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        B, T0 = idx_BT.shape
        caches = self.init_caches(B, T0 + max_new_tokens) if use_cache else None
        out_BT, pos = idx_BT, 0
        for _ in range(max_new_tokens):
            if caches is None:
                logits_BV = self(out_BT).logits[:, -1]
            else:
                logits_BV = self(out_BT[:, pos:], caches=caches, pos=pos).logits[:, -1]
                pos = out_BT.shape[1]
            next_B1 = sample_next(logits_BV, temperature, top_k, generator)
            out_BT = torch.cat([out_BT, next_B1], dim=1)
        return out_BT


def sample_next(logits_BV: Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next token (B, 1) from logits: greedy at temperature 0, else top-k softmax sampling."""
    if temperature == 0:
        return logits_BV.argmax(dim=-1, keepdim=True)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    probs_BV = F.softmax(logits_BV, dim=-1)
    return torch.multinomial(probs_BV, 1, generator=generator)
