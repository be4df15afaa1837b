"""Model configuration: a decoder LM is a stack of blocks, each a token mixer and a
channel mixer (FFN) chosen by registry name, with an optional per-layer pattern.

    model:
      d_model: 128
      n_layer: 4
      block: {mixer: {name: attention, n_head: 4}, ffn: {name: swiglu}}
      variants: {moe: {ffn: {name: moe, n_experts: 8}}}   # partial overrides of `block`
      pattern: [base, moe]                                  # cycled over the layers
      depth: {name: mod, capacity: 0.125}                   # adaptive depth (gatelab.depth)

`pattern` names a variant per layer ("base" is `block` itself) and repeats to fill
`n_layer`, so "every 2nd layer MoE" and "3 linear : 1 attention" hybrids are one line.
`depth` decides per block and token whether the block runs (default "none": all run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.config import ConfigBase, Component, check, component, deep_merge, parse, to_dict


@dataclass
class BlockConfig(ConfigBase):
    """One pre-norm residual block: x + mixer(norm(x)), then x + ffn(norm(x))."""

    mixer: Any = component("token_mixer", "attention")
    ffn: Any = component("channel_mixer", "swiglu")
    norm: Any = component("norm", "rmsnorm")


@dataclass
class ModelConfig(ConfigBase):
    vocab_size: int = 0  # 0: the tokenizer's vocabulary size
    d_model: int = 128
    n_layer: int = 4
    tie_embeddings: bool = True
    init_std: float = 0.02
    block: BlockConfig = field(default_factory=BlockConfig)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    pattern: list[str] = field(default_factory=list)
    linear: Any = component("linear", "none")  # mixers' and FFNs' linears: none | bitlinear | hgf (gatelab.quant)
    depth: Any = component("depth", "none")  # adaptive depth (gatelab.depth): how blocks run per token

    def validate(self) -> None:
        check(self.vocab_size >= 0, "vocab_size", self.vocab_size, "must be >= 0 (0 = from the tokenizer)")
        check(self.d_model >= 1, "d_model", self.d_model, "must be a positive integer")
        check(self.n_layer >= 1, "n_layer", self.n_layer, "must be a positive integer")
        check(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        known = ["base", *self.variants]
        for i, name in enumerate(self.pattern):
            check(name in known, f"pattern[{i}]", name, f"must name a variant: {', '.join(known)}")
        for i, blk in enumerate(self.layer_blocks()):
            for part in ("mixer", "ffn", "norm"):
                comp: Component = getattr(blk, part)
                check_dims = getattr(comp.options, "check_dims", None)
                if check_dims is not None:
                    check_dims(self.d_model, f"{self._block_path(i)}.{part}")
        check_layers = getattr(self.depth.options, "check_layers", None)
        if check_layers is not None:
            check_layers(self.n_layer, "depth")

    def _block_path(self, layer: int) -> str:
        name = self.pattern[layer % len(self.pattern)] if self.pattern else "base"
        return "block" if name == "base" else f"variants.{name}"

    def layer_blocks(self) -> list[BlockConfig]:
        """The resolved BlockConfig of every layer (variants merged onto `block`)."""
        resolved = {"base": self.block}
        base = to_dict(self.block)
        for name, over in self.variants.items():
            check(isinstance(over, dict) and set(over) <= {"mixer", "ffn", "norm"}, f"variants.{name}", over,
                  "a variant is a mapping with keys among mixer, ffn, norm")
            merged = deep_merge(base, over)
            # a variant that changes a part's name starts from that part's own defaults
            for part, spec in over.items():
                if isinstance(spec, dict) and spec.get("name", base[part]["name"]) != base[part]["name"]:
                    merged[part] = spec
            resolved[name] = parse(BlockConfig, merged, f"variants.{name}")
        names = self.pattern or ["base"]
        return [resolved[names[i % len(names)]] for i in range(self.n_layer)]
