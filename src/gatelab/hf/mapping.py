"""One table mapping gatelab parameter names to Hugging Face tensor names, used in both
directions (load: concatenate HF tensors into gatelab's fused ones; export: split them).

gatelab fuses q/k/v into one ``qkv`` linear (rows [q | k | v]) and SwiGLU's gate and up
projections into ``gate_up`` (rows [gate | up]); MoE experts are stacked ``[E, D, 2h]`` /
``[E, h, D]`` tensors (the transpose of HF's per-expert linears). RoPE pairs dimensions
by rotate-half in both, so no row permutation is needed here (GGUF's is undone in
gguf_load.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import CheckpointError
from ..models import LM
from .hf_config import HFArch

#: Buffers some HF checkpoints carry that hold no weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
#: Qwen2-MoE gates its shared expert by sigmoid(x . w); gatelab's is ungated. Exporting w = 0
#: gives the gate 1/2 exactly, so the shared expert's down projection is exported doubled.
SHARED_GATE_SCALE = 2.0


@dataclass(frozen=True)
class Link:
    """gatelab tensor `target` = HF tensors `sources` concatenated along rows (dim 0).

    With `expert` set, the target is a stacked expert tensor and only its slot `expert` is
    meant, holding the transpose of the concatenation. `sizes` gives the row split for
    export (None: equal parts). HF = `scale` x gatelab.
    """

    target: str
    sources: tuple[str, ...]
    expert: int | None = None
    sizes: tuple[int, ...] | None = None
    scale: float = 1.0


def links(arch: HFArch, tie_embeddings: bool) -> list[Link]:
    out = [Link("embed.weight", ("model.embed_tokens.weight",)), Link("norm.weight", ("model.norm.weight",))]
    if not tie_embeddings:
        out.append(Link("lm_head.weight", ("lm_head.weight",)))
    for i in range(arch.n_layer):
        out += _layer_links(arch, i)
    return out


def _layer_links(arch: HFArch, i: int) -> list[Link]:
    g, h = f"blocks.{i}.", f"model.layers.{i}."
    att = h + "self_attn."
    out = [
        Link(g + "norm1.weight", (h + "input_layernorm.weight",)),
        Link(g + "norm2.weight", (h + "post_attention_layernorm.weight",)),
        Link(g + "mixer.qkv.weight", tuple(f"{att}{p}_proj.weight" for p in "qkv"), sizes=arch.qkv_sizes),
        Link(g + "mixer.out.weight", (att + "o_proj.weight",)),
    ]
    if arch.qkv_bias:
        out.append(Link(g + "mixer.qkv.bias", tuple(f"{att}{p}_proj.bias" for p in "qkv"), sizes=arch.qkv_sizes))
    if i not in arch.moe_layers:
        return out + [Link(g + "ffn.gate_up.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")),
                      Link(g + "ffn.down.weight", (h + "mlp.down_proj.weight",))]
    if arch.model_type == "mixtral":
        moe = h + "block_sparse_moe."
        names = {"gate": "w1", "up": "w3", "down": "w2"}
    else:
        moe = h + "mlp."
        names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    out.append(Link(g + "ffn.router.weight", (moe + "gate.weight",)))
    for e in range(arch.n_experts):
        out += _expert_links(g + "ffn.experts", f"{moe}experts.{e}.", names, e)
    if arch.shared_hidden:
        out += _expert_links(g + "ffn.shared", moe + "shared_expert.", names, 0, SHARED_GATE_SCALE)
    return out


def _expert_links(target: str, prefix: str, names: dict[str, str], e: int, down_scale: float = 1.0) -> list[Link]:
    return [Link(target + ".w_in", (f"{prefix}{names['gate']}.weight", f"{prefix}{names['up']}.weight"), expert=e),
            Link(target + ".w_out", (f"{prefix}{names['down']}.weight",), expert=e, scale=down_scale)]


def zero_tensors(arch: HFArch, d_model: int) -> dict[str, tuple[int, ...]]:
    """HF tensors with no gatelab counterpart that must be zero (Qwen2-MoE shared-expert gates)."""
    if not arch.shared_hidden:
        return {}
    return {f"model.layers.{i}.mlp.shared_expert_gate.weight": (1, d_model) for i in arch.moe_layers}


# ---------------------------------------------------------------------------------- load
@torch.no_grad()
def load_into(model: LM, arch: HFArch, names: Iterable[str], get: Callable[[str], Tensor],
              source: str) -> None:
    """Fill every parameter of `model` from the HF-named tensors `get(name)`; raises
    `CheckpointError` on a missing, unexpected, non-zero-gate or mis-shaped tensor."""
    available = set(names)
    params = dict(model.named_parameters())
    table = links(arch, model.cfg.tie_embeddings)
    zeros = zero_tensors(arch, model.cfg.d_model)
    needed = {s for link in table for s in link.sources} | set(zeros)
    missing = sorted(needed - available)
    if missing:
        raise CheckpointError(f"{source} lacks tensor {missing[0]!r} (and {len(missing) - 1} more) that a "
                              f"{arch.model_type} config of this shape needs; the file is incomplete or not {arch.model_type}")
    extra = sorted(n for n in available - needed if not n.endswith(IGNORED_SUFFIXES)
                   and not (n == "lm_head.weight" and model.cfg.tie_embeddings))
    if extra:
        raise CheckpointError(f"{source} has tensor {extra[0]!r} (and {len(extra) - 1} more) that gatelab does not "
                              "map; the checkpoint has parts this architecture does not compute")
    for name, shape in zeros.items():
        w = get(name)
        if tuple(w.shape) != shape or bool(w.any()):
            raise CheckpointError(f"{source}: {name} is not a zero {shape} tensor; gatelab's shared expert is ungated, "
                                  "so only checkpoints exported by gatelab (gate weight 0) load exactly")
    covered = set()
    for link in table:
        if link.target not in params:
            raise CheckpointError(f"gatelab model has no parameter {link.target!r} for {link.sources[0]}; "
                                  "the model config does not match the checkpoint")
        parts = [get(s) for s in link.sources]
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        value = value / link.scale if link.scale != 1.0 else value
        dest = params[link.target]
        if link.expert is not None:
            value, dest = value.t(), dest[link.expert]
        if tuple(value.shape) != tuple(dest.shape):
            shapes = ", ".join(f"{s} {tuple(p.shape)}" for s, p in zip(link.sources, parts))
            raise CheckpointError(f"{source}: shape mismatch for {link.target}: {shapes} give {tuple(value.shape)} "
                                  f"but the config implies {tuple(dest.shape)}")
        dest.copy_(value.to(dest.dtype))
        covered.add(link.target)
    uncovered = sorted(set(params) - covered)
    if uncovered:
        raise CheckpointError(f"gatelab parameter {uncovered[0]!r} has no tensor in {source}; "
                              "the model config has parts the checkpoint lacks")


# ---------------------------------------------------------------------------------- export
@torch.no_grad()
def export_tensors(model: LM, arch: HFArch) -> dict[str, Tensor]:
    """HF-named tensors of `model` (contiguous copies), the inverse of `load_into`."""
    params = dict(model.named_parameters())
    out: dict[str, Tensor] = {}
    covered = set()
    for link in links(arch, model.cfg.tie_embeddings):
        if link.target not in params and link.target.endswith("qkv.bias"):  # Qwen2-MoE always has q/k/v biases
            value = torch.zeros(sum(arch.qkv_sizes), dtype=model.embed.weight.dtype)
        else:
            value = params[link.target].detach()
        if link.expert is not None:
            value = value[link.expert].t()
        sizes = list(link.sizes) if link.sizes else [value.shape[0] // len(link.sources)] * len(link.sources)
        for name, part in zip(link.sources, value.split(sizes, dim=0)):
            out[name] = (part * link.scale if link.scale != 1.0 else part).contiguous().clone()
        covered.add(link.target)
    for name, shape in zero_tensors(arch, model.cfg.d_model).items():
        out[name] = torch.zeros(shape, dtype=model.embed.weight.dtype)
    uncovered = sorted(set(params) - covered)
    if uncovered:
        raise CheckpointError(f"gatelab parameter {uncovered[0]!r} has no Hugging Face counterpart in "
                              f"{arch.model_type}; it cannot be exported")
    return out
