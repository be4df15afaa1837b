"""Sparse upcycling: build MoE layers from a trained dense FFN (Komatsuzaki et al. 2022).

Every expert starts as a copy of the dense FFN (or, with ``granularity`` G > 1, as one of
the G hidden-unit slices of it, expert e taking slice e mod G); the router starts small
(its init, plus optional noise breaking exact ties). With a top-k router that
renormalises the chosen weights (``renorm=true`` or ``order=topk_softmax``) and full-width
identical experts, the upcycled layer equals the dense FFN at step 0: sum_i w_i FFN(x) =
FFN(x). Un-renormalised softmax weights give (sum_topk p) FFN(x) ~ (k/E) FFN(x) instead,
and slicing into fine-grained experts is not function-preserving under top-k (METHODS 2.17).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layer import MoELayer


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
def upcycle_ffn(moe: MoELayer, ffn: nn.Module, router_noise: float = 0.0) -> None:
    """Initialise `moe`'s experts (and shared experts) from the dense `ffn` in place."""
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
    if moe.shared is not None:
        slices = [j % G for j in range(moe.shared.hidden // h)]
        moe.shared.w_in[0].copy_(_slices_in(w_in_DF, H, h, slices, activation))
        moe.shared.w_out[0].copy_(_slices_out(w_out_HD, h, slices))
    if router_noise > 0 and hasattr(moe.router, "weight"):
        moe.router.weight.add_(torch.randn_like(moe.router.weight) * router_noise)


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
def upcycle_model(dense: nn.Module, moe_model: nn.Module, router_noise: float = 0.0) -> list[str]:
    """Copy every parameter of `dense` that `moe_model` has with the same name and shape, and
    upcycle each `MoELayer` of `moe_model` from the dense module at the same path.
    Returns the upcycled module names."""
    target = moe_model.state_dict()
    shared = {k: v for k, v in dense.state_dict().items() if k in target and target[k].shape == v.shape}
    moe_model.load_state_dict(shared, strict=False)
    dense_modules = dict(dense.named_modules())
    done = []
    for name, module in moe_model.named_modules():
        if isinstance(module, MoELayer):
            if name not in dense_modules:
                raise ValueError(f"dense model has no module {name!r} to upcycle from")
            upcycle_ffn(module, dense_modules[name], router_noise)
            done.append(name)
    return done
