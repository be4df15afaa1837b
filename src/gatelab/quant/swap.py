"""The config seam: swap the nn.Linear layers of a model's mixers and FFNs for a
registered linear replacement (`model.linear: {name: bitlinear | hgf | none, ...}`).

Embeddings and the LM head are never swapped (they sit outside the blocks' `mixer` and
`ffn`), nor is any linear whose qualified name contains an `exclude` entry (routers by
default). The replacement copies the original weights, so swapping after the model's
initialisation keeps that initialisation (FP, BitLinear and HGF runs with one seed start
from the same latent weights).

FLOP accounting: a mixer / FFN records its projections by shape, so a ternary matmul
counts like the dense matmul of that shape (2·d_in·d_out FLOPs and d_in·d_out parameter
reads per token: the unpacked path runs exactly that dense matmul; quantisation's
elementwise work is not counted, like norms). Layers with extra work (HGF's correction)
are `ContextBound`: a forward pre-hook on each swapped mixer / FFN binds that call's
`ForwardContext` to them, so they add their own FLOPs and statistics under
``layer{i}/{mixer|ffn}/{linear name}/``.

MoE experts (`gatelab.moe.Experts`, stacked tensors, not nn.Linear) get the layer class's
`for_experts(options)` transform as their `quant` (BitLinear: `ExpertQuant`; none: no
transform; HGF raises ConfigError), unless their qualified name contains an `exclude` entry
(e.g. ``experts`` / ``shared``). Expert matmuls count like the FP ones.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..core.aux import ForwardContext
from ..core.config import Component
from ..core.errors import ConfigError
from ..moe.experts import Experts
from .hgf import ContextBound

BLOCK_PARTS = ("mixer", "ffn")


def replace_modules(root: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> list[str]:
    """Replace each descendant `m` (qualified name `name`) for which `make(name, m)` returns a
    module; returns the replaced names. Replacements are not searched again."""
    found = [(name, m) for name, m in root.named_modules() if name]
    replaced = []
    for name, m in found:
        if any(name.startswith(r + ".") for r in replaced):
            continue
        new = make(name, m)
        if new is None or new is m:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(root.get_submodule(parent_name), attr, new)
        replaced.append(name)
    return replaced


def quantize_linears(model: nn.Module, spec: Component, parts: Sequence[str] = BLOCK_PARTS) -> list[str]:
    """Swap the plain nn.Linear modules inside every `parts` submodule (a block's mixer and
    ffn) of `model` for `spec`'s registered layer; returns the swapped qualified names."""
    options = spec.options
    exclude = tuple(getattr(options, "exclude", ()))
    targets = [(name, m) for name, m in model.named_modules() if name.rpartition(".")[2] in parts]
    swapped = []
    for prefix, target in targets:
        def make(name: str, m: nn.Module) -> nn.Module | None:
            if type(m) is not nn.Linear or any(e in f"{prefix}.{name}" for e in exclude):
                return None
            return spec.cls.from_linear(m, options)

        names = replace_modules(target, make)
        if names:
            _install_context_hooks(target)
        swapped += [f"{prefix}.{n}" for n in names] + _quantize_experts(target, prefix, spec, exclude)
    return swapped


def _quantize_experts(part: nn.Module, prefix: str, spec: Component, exclude: tuple[str, ...]) -> list[str]:
    """Set `quant` on the not yet quantised, not excluded `Experts` inside `part`; returns their names."""
    done = []
    for name, m in part.named_modules():
        qualified = f"{prefix}.{name}"
        if not isinstance(m, Experts) or m.quant is not None or any(e in qualified for e in exclude):
            continue
        for_experts = getattr(spec.cls, "for_experts", None)
        if for_experts is None:
            raise ConfigError(f"model.linear={spec.name} has no MoE expert form ({qualified}); add 'experts' and "
                              "'shared' to model.linear.exclude or use model.linear=bitlinear")
        m.quant = for_experts(spec.options)
        if m.quant is not None:
            done.append(qualified)
    return done


def _install_context_hooks(part: nn.Module) -> None:
    if getattr(part, "_quant_context_hooks", False):
        return
    part.register_forward_pre_hook(_bind_context, with_kwargs=True)
    part.register_forward_hook(_unbind_context, with_kwargs=True)
    part._quant_context_hooks = True


def _bind_context(part: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    ctx = next((a for a in (*args, *kwargs.values()) if isinstance(a, ForwardContext)), None)
    for name, m in part.named_modules():
        if isinstance(m, ContextBound):
            m.bind_context(None if ctx is None else ctx.scoped(name.replace(".", "/")))


def _unbind_context(part: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
    for m in part.modules():
        if isinstance(m, ContextBound):
            m.bind_context(None)
