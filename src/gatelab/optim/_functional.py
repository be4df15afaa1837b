"""Small helpers shared by gatelab's optimizers (not auto-imported: the name starts with `_`).

* hyperparameter validation in the torch.optim style (`ValueError("Invalid learning rate: ...")`);
* the `foreach` default (`_get_foreach_default`);
* the params with gradients of a group (`_params_with_grads`), step counters;
* shared per-tensor math (`_decayed_grad`, `_adam_moments_` and their foreach twins);
* running a per-tensor kernel: eagerly (`_run_single`, the loop path) or compiled with
  `torch.compile` over a whole param group (`_run_fused`, the fused path; `_group_runner`,
  `_compile_available`, `_compiled`);
* `_BaseOptimizer`: the step skeleton (closure, groups, lazy state, path dispatch).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "_BaseOptimizer",
    "_check_lr_betas_eps",
    "_check_nonneg",
    "_check_unit_interval",
    "_check_foreach_fused",
    "_get_foreach_default",
    "_params_with_grads",
    "_step_tensor",
    "_compile_available",
    "_compiled",
    "_group_runner",
    "_run_fused",
    "_run_single",
    "_advance_steps",
    "_decayed_grad",
    "_foreach_decayed_grads",
    "_adam_moments_",
    "_foreach_adam_moments_",
]


# --------------------------------------------------------------------------- validation
def _check_nonneg(name: str, value: float) -> None:
    """ValueError('Invalid {name}: {value}') unless value is a finite float >= 0."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be a scalar (1 element), got {value.numel()}")
        value = value.item()
    if not (0.0 <= value < math.inf):
        raise ValueError(f"Invalid {name}: {value}")


def _check_unit_interval(name: str, value: float) -> None:
    """ValueError unless 0 <= value < 1 (momentum-like coefficients)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1))")


def _check_lr_betas_eps(
    lr: float | Tensor,
    betas: Sequence[float] | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
) -> None:
    """Validate the usual Adam-family hyperparameters, torch.optim style.

    `lr`, `eps`, `weight_decay` must be >= 0 (finite); each beta must lie in [0, 1).
    Arguments left as None are not checked.
    """
    _check_nonneg("learning rate", lr)
    if eps is not None:
        _check_nonneg("epsilon value", eps)
    if weight_decay is not None:
        _check_nonneg("weight_decay value", weight_decay)
    if betas is not None:
        for i, b in enumerate(betas):
            _check_unit_interval(f"beta parameter at index {i}", b)


def _check_foreach_fused(foreach: bool | None, fused: bool) -> None:
    if fused and foreach:
        raise ValueError("`fused` and `foreach` cannot both be True")


# --------------------------------------------------------------------------- dispatch
def _get_foreach_default(params: Iterable[Tensor], foreach: bool | None) -> bool:
    """Resolve `foreach=None` to the faster path for the device.

    On accelerators the multi-tensor (`torch._foreach_*`) path saves kernel launches and
    is the default, as in torch.optim. On CPU there is no launch to save and every foreach
    op materialises a list of temporaries, so the per-tensor loop wins. Measured with
    `benchmarks/optim.py` (10.5M fp32 parameters in 39 transformer-shaped tensors, AMD EPYC,
    torch 2.13, shared machine), loop vs foreach ms/step:
    1 thread: AdaBelief 102 vs 184, AdaBound 68 vs 148, AdaMod 95 vs 142, AMSGrad 54 vs 116,
    Lion 35 vs 96, D-Adapt Adam 146 vs 229, Prodigy 206 vs 214, SWATS 85 vs 218,
    Schedule-Free 65 vs 177; 2 threads: AdaBelief 23 vs 46, AdaBound 14 vs 34, AdaMod 24 vs
    33, AMSGrad 14 vs 24, Lion 24 vs 82, D-Adapt Adam 44 vs 85. So None means the loop on
    CPU (and meta), foreach elsewhere. On CPU `fused=True` is faster than both.
    """
    if foreach is not None:
        return bool(foreach)
    return all(p.device.type not in ("cpu", "meta") for p in params)


def _params_with_grads(
    group: dict[str, Any],
) -> tuple[list[Tensor], list[Tensor]]:
    """(params, grads) of a group, skipping params whose grad is None; rejects sparse grads."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("gatelab optimizers do not support sparse gradients")
        params.append(p)
        grads.append(p.grad)
    return params, grads


def _step_tensor() -> Tensor:
    """A fresh step counter: a 0-d float32 tensor, as torch.optim keeps it (state_dict-stable)."""
    return torch.tensor(0.0, dtype=torch.float32)


# --------------------------------------------------------------------------- fused (compiled)
@functools.lru_cache(maxsize=None)
def _compile_available() -> tuple[bool, str]:
    """(True, '') if `torch.compile` can build a CPU kernel here, else (False, reason)."""
    if not hasattr(torch, "compile"):
        return False, "torch.compile is not available in this torch build"
    try:
        importlib.import_module("torch._dynamo")
        importlib.import_module("torch._inductor")
    except Exception as e:  # pragma: no cover - depends on the install
        return False, f"torch inductor unavailable: {e}"
    try:
        fn = torch.compile(lambda x: x * 2.0 + 1.0, dynamic=False, fullgraph=True)
        out = fn(torch.ones(3))
        if not torch.equal(out, torch.full((3,), 3.0)):
            return False, "torch.compile produced a wrong result in the probe"
    except Exception as e:  # no C++ compiler, unsupported platform, ...
        return False, f"torch.compile failed on CPU: {type(e).__name__}: {e}"
    return True, ""


# Recompiles allowed per kernel (one graph per distinct group layout, dtype and constants);
# `isolate_recompiles` (torch >= 2.13) keeps each kernel's graphs apart, since every kernel's
# group runner shares one code object and dynamo otherwise pools their limit.
_COMPILE_LIMITS = {k: v for k, v in dict(recompile_limit=64, isolate_recompiles=True).items()
                   if k in inspect.signature(torch.compile).parameters}


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.compile(fn)` once per function (dynamic shapes, no graph breaks).

    The functions compiled are the group runners of the optimizers' functional per-tensor
    updates (`_group_runner`); every hyperparameter that changes between steps (lr, step)
    arrives in a tensor so one graph serves all steps. Raises RuntimeError with the reason
    if compile is unavailable.
    """
    ok, why = _compile_available()
    if not ok:
        raise RuntimeError(f"fused=True needs torch.compile: {why}")
    return torch.compile(fn, fullgraph=True, dynamic=True, **_COMPILE_LIMITS)


@functools.lru_cache(maxsize=None)
def _group_runner(kernel: Callable[..., Any]) -> Callable[..., None]:
    """`kernel` applied to every tensor of a group: the function `_run_fused` compiles.

    `run(tensor_lists, scalars_KN, names, consts)` calls
    `kernel(*tensors_i, **{names[k]: scalars_KN[k, i]}, **consts)` for each i; compiled,
    the loop unrolls into one graph, so a step is one call per group, not one per tensor.
    """

    def run(tensor_lists: Sequence[Sequence[Tensor]], scalars_KN: Tensor,
            names: tuple[str, ...], consts: dict[str, Any]) -> None:
        for i in range(len(tensor_lists[0])):
            kernel(*[tl[i] for tl in tensor_lists],
                   **{name: scalars_KN[k, i] for k, name in enumerate(names)}, **consts)

    return run


def _flat_alike(tensors: Sequence[Tensor]) -> list[Tensor] | None:
    """1-D aliases of same-layout dense tensors (element i aligned across them), else None.

    Each tensor's memory must be one dense block (contiguous, or a permutation of
    contiguous like a transposed parameter with its grad and `zeros_like` state). The
    alias is a fresh tensor set onto the same storage rather than a view, so the compiled
    kernel's guards never see the parameter's original shape (`._base`): one graph serves
    every parameter regardless of rank.
    """
    t0 = tensors[0]
    if any(t.stride() != t0.stride() or t.shape != t0.shape for t in tensors[1:]):
        return None
    order = sorted(range(t0.dim()), key=lambda d: -t0.stride(d))
    if not t0.permute(order).is_contiguous():
        return None
    n = t0.numel()
    return [torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (n,), (1,)) for t in tensors]


def _run_single(
    kernel: Callable[..., Any],
    tensor_lists: Sequence[Sequence[Tensor]],
    scalar_lists: dict[str, Sequence[float]],
    **consts: Any,
) -> None:
    """The loop path: `kernel(*tensors_i, **scalars_i, **consts)` for every parameter i.

    `kernel` is an optimizer's `_single_tensor_<name>` update (the reference).
    """
    for i in range(len(tensor_lists[0])):
        kernel(*[tl[i] for tl in tensor_lists], **{k: v[i] for k, v in scalar_lists.items()},
               **consts)


def _run_fused(
    kernel: Callable[..., Any],
    tensor_lists: Sequence[Sequence[Tensor]],
    scalar_lists: dict[str, Sequence[float]],
    **consts: Any,
) -> None:
    """The fused path: the same `kernel` as `_run_single`, compiled per param group.

    The group's tensors are flattened to aligned 1-D aliases and handed to one compiled
    call (`_group_runner`) per dtype and device, so inductor emits every parameter's loop
    into one module and a step pays one call per group, not one per tensor (the per-tensor
    version ran at 1.5-1.8x torch's fused AdamW, mostly call overhead). The per-step
    scalars (lr, bias corrections) arrive as one (K, n) tensor in the math dtype of the
    eager ops (float64 for float64 parameters, else float32), so a changing lr or step
    never recompiles; `consts` (betas, eps, flags) are specialised. Zero-size tensors are
    skipped; tensors whose layouts differ run the eager kernel. The price is compile time
    growing with the group: the first step compiles one graph per group layout (36 s for
    benchmarks/optim.py's 39-tensor AdaBelief group on a loaded 2-core machine, 13 s for a
    1-tensor graph); a group whose set of tensors with gradients changes compiles again.
    """
    compiled = _compiled(_group_runner(kernel))
    names = tuple(scalar_lists)
    buckets: dict[tuple[torch.dtype, torch.device], list[tuple[int, list[Tensor]]]] = {}
    for i in range(len(tensor_lists[0])):
        tensors = [tl[i] for tl in tensor_lists]
        if tensors[0].numel() == 0:
            continue
        flat = _flat_alike(tensors)
        if flat is None:
            kernel(*tensors, **{k: scalar_lists[k][i] for k in names}, **consts)
        else:
            buckets.setdefault((tensors[0].dtype, tensors[0].device), []).append((i, flat))
    for (dtype, device), items in buckets.items():
        math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        scalars_KN = torch.tensor([[float(scalar_lists[k][i]) for i, _ in items] for k in names],
                                  dtype=math_dtype, device=device).reshape(len(names), len(items))
        compiled([list(col) for col in zip(*(flat for _, flat in items))], scalars_KN, names,
                 consts)


# --------------------------------------------------------------------------- shared math
def _decayed_grad(
    param: Tensor, grad: Tensor, *, decay: float | Tensor, weight_decay: float,
    decoupled: bool, maximize: bool,
) -> Tensor:
    """Negate for `maximize`, then weight decay: decoupled θ ← θ·decay (decay = 1 - ηλ) or
    L2 g ← g + λθ. Returns the gradient to use (a new tensor when changed; p.grad is kept)."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled:
            param.mul_(decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    return grad


def _foreach_decayed_grads(
    params: list[Tensor], grads: list[Tensor], *, decay: Sequence[float], weight_decay: float,
    decoupled: bool, maximize: bool,
) -> list[Tensor]:
    """`_decayed_grad` with torch._foreach_* ops."""
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, list(decay))
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    return grads


def _adam_moments_(
    exp_avg: Tensor, exp_avg_sq: Tensor, grad: Tensor, beta1: float, beta2: float
) -> None:
    """m ← β1 m + (1-β1) g (as lerp, like torch.optim.Adam); v ← β2 v + (1-β2) g²."""
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


def _foreach_adam_moments_(
    exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], grads: list[Tensor], beta1: float,
    beta2: float,
) -> None:
    """`_adam_moments_` with torch._foreach_* ops."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)


def _advance_steps(steps: Sequence[Tensor]) -> list[int]:
    """Increment each parameter's step counter; return the new values as ints."""
    out = []
    for step_t in steps:
        step_t += 1
        out.append(int(step_t.item()))
    return out


# --------------------------------------------------------------------------- base class
class _BaseOptimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer plus the step skeleton gatelab's optimizers share.

    Subclasses implement `_step_group(group, params, grads)` (called only for groups with
    at least one gradient) and usually call `_states(params, keys)` to get per-key lists
    of lazily created, zero-initialised state tensors and the per-parameter step counters.
    """

    _defaults_on_setstate: dict[str, Any] = {"foreach": None, "fused": False, "maximize": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for k, v in self._defaults_on_setstate.items():
                group.setdefault(k, v)

    def _states(
        self, params: Sequence[Tensor], keys: Sequence[str], group: dict[str, Any] | None = None
    ) -> tuple[list[Tensor], list[list[Tensor]]]:
        """(steps, [state[key] for each param] for each key); creates missing state lazily
        (zeros for `keys`, then `_init_extra_state(p, state, group)`)."""
        steps: list[Tensor] = []
        lists: list[list[Tensor]] = [[] for _ in keys]
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = _step_tensor()
                for k in keys:
                    state[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self._init_extra_state(p, state, group)
            steps.append(state["step"])
            for lst, k in zip(lists, keys):
                lst.append(state[k])
        return steps, lists

    def _init_extra_state(
        self, p: Tensor, state: dict[str, Any], group: dict[str, Any] | None
    ) -> None:
        """Hook for state that is not zeros (e.g. a copy of the initial parameter); it may
        overwrite the zero tensors `_states` just created."""

    @staticmethod
    def _use_path(group: dict[str, Any], params: Sequence[Tensor]) -> str:
        """'fused', 'foreach' or 'single' for this group."""
        if group.get("fused"):
            return "fused"
        return "foreach" if _get_foreach_default(params, group.get("foreach")) else "single"

    def _apply(
        self,
        group: dict[str, Any],
        single: Callable[..., Any],
        multi: Callable[..., Any],
        tensors: list[list[Tensor]],
        scalars: dict[str, Sequence[float]],
        **consts: Any,
    ) -> None:
        """Run the group's path: `multi(*tensors, **scalars, **consts)` for foreach, else the
        per-tensor `single` kernel eagerly (loop) or compiled (fused)."""
        path = self._use_path(group, tensors[0])
        if path == "foreach":
            multi(*tensors, **scalars, **consts)
        else:
            run = _run_fused if path == "fused" else _run_single
            run(single, tensors, scalars, **consts)

    def _step_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _before_groups(self) -> None:
        """Hook run once per step before the groups (e.g. optimizer-wide quantities)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._before_groups()
        for group in self.param_groups:
            params, grads = _params_with_grads(group)
            if params:
                self._step_group(group, params, grads)
        return loss
