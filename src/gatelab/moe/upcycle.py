"""Sparse upcycling: build MoE layers from a trained dense FFN (Komatsuzaki et al. 2022).

Every expert starts as a copy of the dense FFN (or, with ``granularity`` G > 1, as one of
the G hidden-unit slices of it, expert e taking slice e mod G); the router starts small
(its init, plus optional noise breaking exact ties). With a top-k router that
renormalises the chosen weights (``renorm=true`` or ``order=topk_softmax``) and full-width
identical experts, the upcycled layer equals the dense FFN at step 0: sum_i w_i FFN(x) =
FFN(x). Un-renormalised softmax weights give (sum_topk p) FFN(x) ~ (k/E) FFN(x) instead,
and slicing into fine-grained experts is not function-preserving under top-k (METHODS 2.17).

Options: ``router_init`` keeps the MoE's own small random router (``keep``) or zeroes it
(``zero``; add ``router_noise``, since exactly tied logits send every token to experts
0..k-1). ``zero_routed`` starts the routed experts' output projections at 0 (their input
projections are still copies): with shared experts as wide as the dense FFN
(``n_shared = granularity``, the shared expert then holds every hidden unit) the layer
equals the dense FFN exactly for any router, and the routed experts grow from zero
(DeepSeekMoE-style shared + fine-grained upcycling).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from .layer import MoELayer

RouterInit = Literal["keep", "zero"]


def dense_ffn_weights(ffn: nn.Module) -> tuple[Tensor, Tensor, str]:
    """(w_in [D, F], w_out [H, D], activation) of a gatelab SwiGLU (`gate_up`, `down`) or GELU
    (`up`, `down`) FFN; F = 2H for SwiGLU with columns [gate | up]."""
    if hasattr(ffn, "gate_up") and hasattr(ffn, "down"):
        return ffn.gate_up.weight.t(), ffn.down.weight.t(), "swiglu"
    if hasattr(ffn, "up") and hasattr(ffn, "down"):
        return ffn.up.weight.t(), ffn.down.weight.t(), "gelu"
    raise TypeError(f"cannot upcycle {type(ffn).__name__}: expected an FFN with gate_up/down (SwiGLU) or "
                    "up/down (GELU) linear layers")


@torch.no_grad()
def upcycle_ffn(moe: MoELayer, ffn: nn.Module, router_noise: float = 0.0, router_init: RouterInit = "keep",
                zero_routed: bool = False) -> None:
    """Initialise `moe`'s experts (and shared experts) from the dense `ffn` in place; see the
    module docstring for `router_init` and `zero_routed`."""
    if router_init not in ("keep", "zero"):
        raise ValueError(f"router_init must be keep or zero, got {router_init!r}")
    if router_noise < 0:
        raise ValueError(f"router_noise must be >= 0, got {router_noise}")
    w_in_DF, w_out_HD, activation = dense_ffn_weights(ffn)
    experts = moe.experts
    if activation != experts.activation:
        raise ValueError(f"dense FFN is {activation} but the MoE experts are {experts.activation}; "
                         f"set activation={activation}")
    H, h = w_out_HD.shape[0], experts.hidden
    if H % h:
        raise ValueError(f"expert width {h} must divide the dense FFN width {H} (set hidden={H} or a "
                         "granularity that divides it)")
    G = H // h
    for e in range(experts.n):
        experts.w_in[e].copy_(_slices_in(w_in_DF, H, h, [e % G], activation))
        experts.w_out[e].copy_(_slices_out(w_out_HD, h, [e % G]))
    if zero_routed:
        experts.w_out.zero_()
    if moe.shared is not None:
        slices = [j % G for j in range(moe.shared.hidden // h)]
        moe.shared.w_in[0].copy_(_slices_in(w_in_DF, H, h, slices, activation))
        moe.shared.w_out[0].copy_(_slices_out(w_out_HD, h, slices))
    weight = getattr(moe.router, "weight", None)
    if weight is not None and router_init == "zero":
        weight.zero_()
    if weight is not None and router_noise > 0:
        weight.add_(torch.randn_like(weight) * router_noise)


def _slices_in(w_in_DF: Tensor, H: int, h: int, js: list[int], activation: str) -> Tensor:
    """Input weights [D, (2) len(js) h] of hidden slices `js` (width h) of a dense FFN of width H;
    SwiGLU keeps the [gates | ups] layout."""
    gates = [w_in_DF[:, j * h:(j + 1) * h] for j in js]
    if activation == "swiglu":
        return torch.cat(gates + [w_in_DF[:, H + j * h:H + (j + 1) * h] for j in js], dim=1)
    return torch.cat(gates, dim=1)


def _slices_out(w_out_HD: Tensor, h: int, js: list[int]) -> Tensor:
    return torch.cat([w_out_HD[j * h:(j + 1) * h] for j in js], dim=0)


@torch.no_grad()
def upcycle_model(dense: nn.Module, moe_model: nn.Module, router_noise: float = 0.0, router_init: RouterInit = "keep",
                  zero_routed: bool = False, strict: bool = False) -> list[str]:
    """Copy every parameter of `dense` that `moe_model` has with the same name and shape, and
    upcycle each `MoELayer` of `moe_model` from the dense module at the same path (an MoE
    layer there is copied by name instead). Returns the upcycled module names. With `strict`,
    raise `ConfigError` if some parameter of `moe_model` is neither copied nor upcycled
    (the two configs do not match) instead of leaving it at its random init."""
    target = moe_model.state_dict()
    shared = {k: v for k, v in dense.state_dict().items() if k in target and target[k].shape == v.shape}
    moe_model.load_state_dict(shared, strict=False)
    dense_modules = dict(dense.named_modules())
    done = []
    for name, module in moe_model.named_modules():
        if isinstance(module, MoELayer) and not isinstance(dense_modules.get(name), MoELayer):
            if name not in dense_modules:
                raise ValueError(f"dense model has no module {name!r} to upcycle from")
            upcycle_ffn(module, dense_modules[name], router_noise, router_init, zero_routed)
            done.append(name)
    if strict:
        filled = set(shared) | {k for k in target if any(k.startswith(f"{n}.") for n in done)}
        left = sorted(k for k, _ in moe_model.named_parameters() if k not in filled)
        if left:
            src = dense.state_dict().get(left[0])
            found = f"shape {tuple(src.shape)}" if src is not None else "no such parameter"
            raise ConfigError(f"parameter {left[0]!r} {tuple(target[left[0]].shape)} has no match in the source model "
                              f"({found}); the model config does not match the pretrained one")
    return done
