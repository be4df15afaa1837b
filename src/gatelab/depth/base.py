"""The depth seam: a depth method decides, per block and token, whether the block runs.

`LM.forward` calls ``logits = depth.run(blocks, x, ctx, caches, head)``; the default `run`
calls ``x = depth(layer, block, x, ctx)`` for every layer, then the head. Methods whose
decisions carry across layers (early exit, skip-middle gates) override `run`. The block exposes
its two residual branches (`block.mix`, `block.channel`) and runs whole (`block(x, ctx)`).
A method that skips tokens gathers the kept ones, runs the block (or branch) on them only
and scatters the update back (`routed.run_selected`), so the compute meter — which counts
rows from the tensors it sees — records only executed work.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from ..core.aux import ForwardContext
from ..core.config import Component
from ..core.registry import register


class BlockLike(Protocol):
    """What a depth method needs from a block (gatelab.models.Block satisfies it)."""

    def __call__(self, x_BTD: Tensor, ctx: ForwardContext) -> Tensor: ...
    def mix(self, x_BTD: Tensor, ctx: ForwardContext) -> Tensor: ...
    def channel(self, x_BTD: Tensor, ctx: ForwardContext) -> Tensor: ...


Head = Callable[[Tensor, ForwardContext], Tensor]  # (N, T, D) hidden states -> (N, T, V) logits, metered


class DepthMethod(nn.Module):
    """Base class: ``forward(layer, block, x_BTD, ctx) -> x_BTD``.

    `supports_cache` is False for methods whose token selection changes which tokens a
    block's attention sees; generation then recomputes the sequence each step.
    """

    supports_cache: bool = True

    def __init__(self, n_layer: int, d_model: int):
        super().__init__()
        self.n_layer, self.d_model = n_layer, d_model

    def forward(self, layer: int, block: BlockLike, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        raise NotImplementedError

    def run(self, blocks: Sequence[BlockLike], x_BTD: Tensor, ctx: ForwardContext, caches: list[Any] | None,
            head: Head) -> Tensor:
        """Run the block stack on the embedded tokens and return the logits (B, T, V)."""
        self.check_caches(caches)
        for i, block in enumerate(blocks):
            x_BTD = self(i, block, x_BTD, layer_context(ctx, i, caches))
        return head(x_BTD, ctx)

    def wrap_caches(self, caches: list[Any]) -> list[Any]:
        """The per-layer inference caches this method decodes with (default: the mixers' own)."""
        return caches

    def check_caches(self, caches: list[Any] | None) -> None:
        """Clear error for incremental decoding with a method that has no cache path."""
        if caches is not None and not self.supports_cache:
            raise ValueError(f"depth method {type(self).__name__} has no KV-cache path (its token selection "
                             "changes which tokens a block's attention sees); decode without caches "
                             "(generate(..., use_cache=False) recomputes the sequence)")


def layer_context(ctx: ForwardContext, layer: int, caches: list[Any] | None) -> ForwardContext:
    """The context of block `layer`: scoped names and its own inference cache."""
    return ctx.for_layer(layer, caches[layer] if caches is not None else None)


def build_depth(comp: Component, n_layer: int, d_model: int) -> DepthMethod:
    """Instantiate the configured depth method (`ModelConfig.depth`)."""
    return comp.cls(n_layer, d_model, comp.options)


@register("depth", "none")
class Dense(DepthMethod):
    """Every block runs on every token (the dense model)."""

    @dataclass
    class Config:
        pass

    def __init__(self, n_layer: int, d_model: int, cfg: Config | None = None):
        super().__init__(n_layer, d_model)

    def forward(self, layer: int, block: BlockLike, x_BTD: Tensor, ctx: ForwardContext) -> Tensor:
        return block(x_BTD, ctx)
