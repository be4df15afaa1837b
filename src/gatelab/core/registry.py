"""String-name registries for every pluggable part.

A new router, mixer or optimizer is one file plus one line::

    @register("router", "topk")
    class TopKRouter(nn.Module): ...

Configs name parts by string; `get("router", "topk")` returns the class, and an unknown
name raises a `ConfigError` listing the registered names and the closest match.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ConfigError, did_you_mean

T = TypeVar("T")

#: The kinds of parts gatelab knows; a registry exists for each.
KINDS = (
    "token_mixer",  # attention and its gated / linear variants: (B,T,D) -> (B,T,D)
    "channel_mixer",  # FFN / MoE: (B,T,D) -> (B,T,D)
    "norm",
    "router",
    "optimizer",
    "schedule",
    "corpus",
    "tokenizer",
    "linear",  # replacement for the nn.Linear layers of mixers / FFNs (ternary BitLinear, HGF)
    "depth",  # adaptive depth: how each block's residual update runs (skip gates, MoD, ...)
    "claim",  # small-scale reproductions of published claims (gatelab.lab.claims)
)

_REGISTRIES: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class/function decorator that registers `obj` under `name` in registry `kind`."""
    if kind not in _REGISTRIES:
        raise ValueError(f"unknown registry kind {kind!r}; kinds are {', '.join(KINDS)}")

    def deco(obj: T) -> T:
        table = _REGISTRIES[kind]
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name]!r} and {obj!r})")
        table[name] = obj
        return obj

    return deco


def get(kind: str, name: str) -> Any:
    """The object registered as `name` in `kind`; `ConfigError` naming the choices if absent."""
    _load_builtins()
    table = _REGISTRIES[kind]
    if name not in table:
        raise ConfigError(
            f"unknown {kind} {name!r}{did_you_mean(name, table)}; "
            f"registered: {', '.join(sorted(table)) or '(none)'}"
        )
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted registered names of `kind`."""
    _load_builtins()
    return sorted(_REGISTRIES[kind])


_loaded = False


def _load_builtins() -> None:
    """Import the subpackages whose modules register gatelab's built-in parts."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


#: Modules that register built-in parts; a new subpackage adds itself here once.
_BUILTIN_MODULES = (
    "gatelab.models.layers",
    "gatelab.attention",
    "gatelab.routing",
    "gatelab.moe",
    "gatelab.depth",
    "gatelab.quant",
    "gatelab.optim",
    "gatelab.data",
    "gatelab.hf.tokenizer",
)
