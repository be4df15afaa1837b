"""Shared checks every gatelab optimizer test runs (torch's `test_optim.py` idea).

Usage from a test module (tests/optim is on sys.path through conftest.py)::

    from harness import check_loop_vs_foreach, check_state_dict_roundtrip, ...

    def test_loop_vs_foreach():
        check_loop_vs_foreach(AdaBelief, dict(lr=1e-2, weight_decay=0.1))

API (stable; helper modules of other optimizers rely on it):

* `make_params(dtype, seed)`: leaf params of shapes 0-d, 1-d, a large 2-d, a non-contiguous
  2-d (whose `.grad` is non-contiguous too), a zero-size one, and a 3-d one.
* `objective(params, step)`: the deterministic pseudo-loss used to produce gradients:
  a fixed diagonal quadratic plus seeded per-step linear noise (`grad = a*p - b_step`).
* `check_paths_match(opt_cls, kwargs, ref, other, ...)`: two optimizers that differ only by
  `ref`/`other` kwargs, identical params and grads; params, state and group scalars equal.
  `check_loop_vs_foreach` is this with `{"foreach": False}` vs `{"foreach": True}`.
* `check_state_dict_roundtrip(opt_cls, kwargs, steps)`: save mid-run (through torch.save /
  torch.load(weights_only=True)), load into a fresh optimizer on cloned params, continue;
  must equal the uninterrupted run bit for bit.
* `check_maximize(opt_cls, kwargs)`: maximize=True on grads g == minimize on grads -g.
* `check_converges(opt_cls, kwargs, problem, steps, tol)`: "quadratic" or "rosenbrock".
* `check_invalid(opt_cls, bad_kwargs_list)`: each raises ValueError.
* `OptimizerSuite`: a mixin running all of the above from class attributes; a test module
  writes `class TestAdaBelief(OptimizerSuite): opt_cls = AdaBelief; configs = [...]`.
* `check_fused_vs_loop(opt_cls, kwargs, compile=...)`: `fused=True` equals the loop path;
  with compile=False the fused plumbing runs the kernel eagerly (fast, no inductor), with
  compile=True through torch.compile (skipped with the reason when unavailable).

Optimizers that need the loss value get a closure (`closure=True`); with `create_graph=True`
the closure's backward keeps the graph (for Hessian-vector-product methods).
Optimizers with `train()`/`eval()` (schedule-free) are switched to eval before the final
loss is measured in `check_converges`.
"""
from __future__ import annotations

import inspect
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

ParamsFn = Callable[..., list[Tensor]]


# --------------------------------------------------------------------------- params
def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[Tensor]:
    """Leaf tensors of awkward shapes: 0-d, 1-d, 64x48, non-contiguous 24x40, zero-size, 3-d."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> Tensor:
        return torch.randn(shape, generator=g, dtype=dtype).requires_grad_()

    non_contig = torch.randn(40, 24, generator=g, dtype=dtype).t().detach().requires_grad_()
    assert not non_contig.is_contiguous()
    return [
        leaf(),  # 0-d
        leaf(7),  # 1-d
        leaf(64, 48),  # larger 2-d
        non_contig,  # 24x40 transposed view: param and its grad are non-contiguous
        leaf(0, 5),  # zero-size
        leaf(3, 4, 5),  # 3-d
    ]


def clone_params(params: Sequence[Tensor]) -> list[Tensor]:
    """Detached leaf copies with the same values and strides."""
    out = []
    for p in params:
        q = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=p.device)
        q.copy_(p.detach())
        out.append(q.requires_grad_())
    return out


def _curvature(p: Tensor, i: int) -> Tensor:
    """Fixed positive diagonal curvature in [0.5, 2.5] for param i (deterministic)."""
    g = torch.Generator().manual_seed(1000 + i)
    return (0.5 + 2.0 * torch.rand(p.shape, generator=g, dtype=p.dtype)).to(p.device)


def objective(params: Sequence[Tensor], step: int) -> Tensor:
    """sum_i 0.5*<a_i, p_i^2> - <b_{i,step}, p_i>: gradient a*p - b (quadratic + noise)."""
    loss = params[0].new_zeros(())
    for i, p in enumerate(params):
        g = torch.Generator().manual_seed(10_000 * (step + 1) + i)
        b = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
        loss = loss + 0.5 * (_curvature(p, i) * p * p).sum() - (b * p).sum()
    return loss


# --------------------------------------------------------------------------- building
def _default_lr(opt_cls: type, kwargs: dict[str, Any]) -> float | None:
    if "lr" in kwargs:
        return kwargs["lr"]
    param = inspect.signature(opt_cls.__init__).parameters.get("lr")
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def _build(
    opt_cls: type, params: Sequence[Tensor], kwargs: dict[str, Any], groups: int
) -> torch.optim.Optimizer:
    """Optimizer over `groups` param groups with lrs lr, 0.5*lr, 0.25*lr, ... (if it has lr)."""
    if groups <= 1:
        return opt_cls(list(params), **kwargs)
    lr = _default_lr(opt_cls, kwargs)
    chunks = [list(params[i::groups]) for i in range(groups)]
    group_dicts = []
    for k, chunk in enumerate(chunks):
        d: dict[str, Any] = {"params": chunk}
        if lr is not None:
            d["lr"] = lr * 0.5**k
        group_dicts.append(d)
    return opt_cls(group_dicts, **kwargs)


def _set_grads(
    params: Sequence[Tensor],
    step: int,
    none_at: Callable[[int, int], bool],
    create_graph: bool = False,
    sign: float = 1.0,
) -> Tensor:
    """Zero grads, backprop `sign*objective`, then set grad=None where none_at(i, step)."""
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = sign * objective(params, step)
        loss.backward(create_graph=create_graph)
    for i, p in enumerate(params):
        if none_at(i, step):
            p.grad = None
    return loss.detach()


def _none_pattern(n_params: int, steps: int) -> Callable[[int, int], bool]:
    """Last param frozen (grad always None); param 1 has grad None for two steps mid-run."""
    mid = max(1, steps // 3)

    def none_at(i: int, step: int) -> bool:
        if i == n_params - 1 and n_params > 2:
            return True
        return i == 1 and mid <= step < mid + 2

    return none_at


def run_steps(
    opt: torch.optim.Optimizer,
    params: Sequence[Tensor],
    steps: int,
    *,
    start: int = 0,
    closure: bool = False,
    create_graph: bool = False,
    none_at: Callable[[int, int], bool] | None = None,
    sign: float = 1.0,
) -> None:
    """Take `steps` optimizer steps with the harness gradients (step indices from `start`)."""
    if none_at is None:
        none_at = _none_pattern(len(params), start + steps)
    for t in range(start, start + steps):
        if closure:

            def _closure(t: int = t) -> Tensor:
                return _set_grads(params, t, none_at, create_graph, sign)

            opt.step(_closure)
        else:
            _set_grads(params, t, none_at, create_graph, sign)
            opt.step()


# --------------------------------------------------------------------------- comparing
def assert_tree_close(a: Any, b: Any, atol: float, path: str = "") -> None:
    """Recursive equality of tensors / numbers / containers to `atol` (rtol 0)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        assert isinstance(a, Tensor) and isinstance(b, Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} vs {b.shape}"
        if atol == 0:
            assert torch.equal(a, b), f"{path}: not bitwise equal, max diff {(a - b).abs().max()}"
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{path}: {m}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a)} vs {set(b)}"
        for k in a:
            assert_tree_close(a[k], b[k], atol, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for k, (x, y) in enumerate(zip(a, b)):
            assert_tree_close(x, y, atol, f"{path}[{k}]")
    elif isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            assert math.isnan(b), f"{path}: {a} vs {b}"
        else:
            assert a == b or abs(a - b) <= atol, f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


_PATH_KEYS = {"foreach", "fused", "params"}


def assert_optimizers_match(
    opt_a: torch.optim.Optimizer,
    opt_b: torch.optim.Optimizer,
    params_a: Sequence[Tensor],
    params_b: Sequence[Tensor],
    atol: float,
) -> None:
    """Params, per-param state and group entries (except foreach/fused) equal to atol."""
    for i, (p, q) in enumerate(zip(params_a, params_b)):
        assert_tree_close(p.detach(), q.detach(), atol, f"param[{i}]")
        assert_tree_close(opt_a.state.get(p, {}), opt_b.state.get(q, {}), atol, f"state[{i}]")
    for k, (ga, gb) in enumerate(zip(opt_a.param_groups, opt_b.param_groups)):
        ka = {key: v for key, v in ga.items() if key not in _PATH_KEYS}
        kb = {key: v for key, v in gb.items() if key not in _PATH_KEYS}
        assert_tree_close(ka, kb, atol, f"group[{k}]")


# --------------------------------------------------------------------------- checks
def check_paths_match(
    opt_cls: type,
    kwargs: dict[str, Any],
    ref: dict[str, Any],
    other: dict[str, Any],
    *,
    steps: int = 10,
    groups: int = 2,
    closure: bool = False,
    create_graph: bool = False,
    atol: float = 1e-12,
    dtype: torch.dtype = torch.float64,
    params_fn: ParamsFn = make_params,
) -> None:
    """Optimizers built with kwargs|ref and kwargs|other give the same params and state."""
    params_a = params_fn(dtype=dtype)
    params_b = clone_params(params_a)
    opt_a = _build(opt_cls, params_a, {**kwargs, **ref}, groups)
    opt_b = _build(opt_cls, params_b, {**kwargs, **other}, groups)
    none_at = _none_pattern(len(params_a), steps)
    for t in range(steps):
        run_steps(opt_a, params_a, 1, start=t, closure=closure, create_graph=create_graph,
                  none_at=none_at)
        run_steps(opt_b, params_b, 1, start=t, closure=closure, create_graph=create_graph,
                  none_at=none_at)
    # Something must have moved, or the comparison proves nothing.
    moved = any(not torch.equal(p.detach(), q.detach())
                for p, q in zip(params_a, params_fn(dtype=dtype)) if p.numel())
    assert moved, "no parameter changed: the check would pass vacuously"
    assert_optimizers_match(opt_a, opt_b, params_a, params_b, atol)


def check_loop_vs_foreach(
    opt_cls: type,
    kwargs: dict[str, Any],
    steps: int = 10,
    groups: int = 2,
    closure: bool = False,
    atol: float = 1e-12,
    **extra: Any,
) -> None:
    """The foreach path equals the loop path (params and all state) in float64."""
    check_paths_match(opt_cls, kwargs, {"foreach": False}, {"foreach": True}, steps=steps,
                      groups=groups, closure=closure, atol=atol, **extra)


def check_state_dict_roundtrip(
    opt_cls: type,
    kwargs: dict[str, Any],
    steps: int = 6,
    *,
    groups: int = 2,
    closure: bool = False,
    create_graph: bool = False,
    params_fn: ParamsFn = make_params,
) -> None:
    """Save after `steps`, load into a fresh optimizer on cloned params, continue `steps`:
    equal to the uninterrupted run bit for bit (params, state, group entries)."""
    total = 2 * steps
    params_a = params_fn()
    none_at = _none_pattern(len(params_a), total)
    opt_a = _build(opt_cls, params_a, kwargs, groups)
    run_steps(opt_a, params_a, steps, closure=closure, create_graph=create_graph, none_at=none_at)

    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    params_b = clone_params(params_a)
    opt_b = _build(opt_cls, params_b, kwargs, groups)
    opt_b.load_state_dict(saved)
    # The optimizer's mode (schedule-free train/eval) is part of what must survive.
    assert_optimizers_match(opt_a, opt_b, params_a, params_b, atol=0)

    for o, ps in ((opt_a, params_a), (opt_b, params_b)):
        run_steps(o, ps, steps, start=steps, closure=closure, create_graph=create_graph,
                  none_at=none_at)
    assert_optimizers_match(opt_a, opt_b, params_a, params_b, atol=0)


def check_maximize(
    opt_cls: type, kwargs: dict[str, Any], steps: int = 7, closure: bool = False,
    atol: float = 1e-12, create_graph: bool = False,
) -> None:
    """maximize=True on objective -f equals maximize=False on f."""
    params_a = make_params()
    params_b = clone_params(params_a)
    opt_a = _build(opt_cls, params_a, {**kwargs, "maximize": False}, 2)
    opt_b = _build(opt_cls, params_b, {**kwargs, "maximize": True}, 2)
    run_steps(opt_a, params_a, steps, closure=closure, create_graph=create_graph)
    run_steps(opt_b, params_b, steps, closure=closure, create_graph=create_graph, sign=-1.0)
    for i, (p, q) in enumerate(zip(params_a, params_b)):
        assert_tree_close(p.detach(), q.detach(), atol, f"param[{i}]")


# --------------------------------------------------------------------------- convergence
def _quadratic_coeffs(x: Tensor) -> tuple[Tensor, Tensor]:
    n = x.numel()
    return (torch.linspace(1.0, 10.0, n, dtype=x.dtype), torch.linspace(-1.0, 1.0, n, dtype=x.dtype))


def quadratic(x: Tensor) -> tuple[Tensor, Tensor]:
    """Convex quadratic 0.5*sum a_i (x_i - c_i)^2, a_i in [1, 10] (condition 10); min 0.

    Returns (loss, gradient); the gradient is analytic (no autograd: keeps tests fast)."""
    a, c = _quadratic_coeffs(x)
    return 0.5 * (a * (x - c) ** 2).sum(), a * (x - c)


def rosenbrock(x: Tensor) -> tuple[Tensor, Tensor]:
    """(1 - x0)^2 + 100 (x1 - x0^2)^2, min 0 at (1, 1); returns (loss, gradient)."""
    r = x[1] - x[0] ** 2
    loss = (1 - x[0]) ** 2 + 100 * r**2
    grad = torch.stack([-2 * (1 - x[0]) - 400 * x[0] * r, 200 * r])
    return loss, grad


PROBLEMS: dict[str, tuple[Callable[[Tensor], tuple[Tensor, Tensor]], Callable[[], Tensor]]] = {
    "quadratic": (quadratic, lambda: torch.full((10,), 3.0, dtype=torch.float64)),
    "rosenbrock": (rosenbrock, lambda: torch.tensor([-1.5, 2.0], dtype=torch.float64)),
}


def check_converges(
    opt_cls: type,
    kwargs: dict[str, Any],
    problem: str = "quadratic",
    steps: int = 500,
    tol: float = 1e-3,
    *,
    autograd: bool = False,
) -> float:
    """Minimise `problem` from its start point; assert final loss < tol (and < the start).

    The optimizer always gets a closure; one with `eval()` (schedule-free) is switched to
    eval mode before the final loss is measured. Returns the final loss. Gradients are
    analytic unless `autograd=True` (then the closure backprops with create_graph=True, for
    optimizers that take Hessian-vector products through the graph).
    """
    fn, x0 = PROBLEMS[problem]
    x = x0().requires_grad_()
    opt = opt_cls([x], **kwargs)
    start = fn(x.detach())[0].item()

    def closure() -> Tensor:
        if autograd:
            opt.zero_grad()
            with torch.enable_grad():
                loss = fn(x)[0]
                loss.backward(create_graph=True)
            return loss.detach()
        loss, grad = fn(x.detach())
        x.grad = grad
        return loss

    for _ in range(steps):
        opt.step(closure)
    if hasattr(opt, "eval"):
        opt.eval()
    final = fn(x.detach())[0].item()
    assert math.isfinite(final), f"{opt_cls.__name__} diverged on {problem}: {final}"
    assert final < tol and final < start, (
        f"{opt_cls.__name__} on {problem}: loss {start:.3g} -> {final:.3g} after {steps} steps "
        f"(need < {tol:g})"
    )
    return final


def check_fused_vs_loop(
    opt_cls: type,
    kwargs: dict[str, Any],
    *,
    compile: bool,
    steps: int = 7,
    atol: float = 1e-12,
    dtype: torch.dtype = torch.float64,
    **extra: Any,
) -> None:
    """fused=True (compiled single-tensor update) equals the loop path: params and state."""
    from gatelab.optim import _functional

    if compile:
        ok, why = _functional._compile_available()
        if not ok:
            pytest.skip(why)
        check_paths_match(opt_cls, kwargs, {"foreach": False}, {"fused": True}, steps=steps,
                          atol=atol, dtype=dtype, **extra)
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_functional, "_compiled", lambda fn: fn)
        check_paths_match(opt_cls, kwargs, {"foreach": False}, {"fused": True}, steps=steps,
                          atol=atol, dtype=dtype, **extra)


def check_invalid(opt_cls: type, bad_kwargs_list: Sequence[dict[str, Any]]) -> None:
    """Each kwargs dict makes the constructor raise ValueError."""
    for bad in bad_kwargs_list:
        with pytest.raises(ValueError):
            opt_cls(make_params(), **bad)


# --------------------------------------------------------------------------- scalar runs
def scalar_run(
    opt_cls: type, kwargs: dict[str, Any], steps: int = 2, grads: Sequence[float] | None = None,
    theta0: float = 1.0, shape: tuple[int, ...] = (),
) -> tuple[list[float], torch.optim.Optimizer, Tensor]:
    """Iterates θ_1..θ_steps of one float64 parameter (0-d, or `shape` filled with θ0) for
    hand-computed tests: the gradient is θ itself (f = θ²/2) or the given values."""
    theta = torch.full(shape, theta0, dtype=torch.float64, requires_grad=True)
    opt = opt_cls([theta], **kwargs)
    out = []
    for t in range(steps):
        g = theta.detach().clone() if grads is None else torch.full(shape, grads[t],
                                                                      dtype=torch.float64)
        theta.grad = g
        opt.step()
        out.append(theta.detach().reshape(-1)[0].item())
    return out, opt, theta


# --------------------------------------------------------------------------- suite
class OptimizerSuite:
    """The standard checks as pytest tests; subclass as `class TestX(OptimizerSuite)`.

    Attributes (override in the subclass):
      opt_cls: the optimizer class.  name: its registry name (checked if set).
      configs: kwargs dicts; every path check runs for each (cover each option once).
      steps: steps of the loop-vs-foreach check (>= 7).
      closure / create_graph: the optimizer needs the loss value / a differentiable grad.
      has_foreach / has_fused / has_maximize: which checks apply.
      quadratic / rosenbrock: (kwargs, steps, tol) for `check_converges`, or None.
      invalid: kwargs dicts that must raise ValueError.
    """

    opt_cls: type
    name: str | None = None
    configs: Sequence[dict[str, Any]] = ({},)
    steps: int = 10
    closure: bool = False
    create_graph: bool = False
    has_foreach: bool = True
    has_fused: bool = False
    has_maximize: bool = True
    quadratic: tuple[dict[str, Any], int, float] | None = None
    rosenbrock: tuple[dict[str, Any], int, float] | None = None
    invalid: Sequence[dict[str, Any]] = (dict(lr=-1e-3),)

    def _extra(self) -> dict[str, Any]:
        return dict(closure=self.closure, create_graph=self.create_graph)

    def test_registered(self) -> None:
        if self.name is None:
            return
        from gatelab.core.registry import _REGISTRIES

        assert _REGISTRIES["optimizer"][self.name] is self.opt_cls

    def test_loop_vs_foreach(self) -> None:
        if not self.has_foreach:
            pytest.skip("no foreach path")
        for kwargs in self.configs:
            check_paths_match(self.opt_cls, kwargs, {"foreach": False}, {"foreach": True},
                              steps=self.steps, **self._extra())

    def test_state_dict_roundtrip(self) -> None:
        for kwargs in self.configs:
            check_state_dict_roundtrip(self.opt_cls, kwargs, **self._extra())

    def test_maximize(self) -> None:
        if not self.has_maximize:
            pytest.skip("no maximize option")
        check_maximize(self.opt_cls, dict(self.configs[0]), closure=self.closure,
                       create_graph=self.create_graph)

    def test_fused_plumbing_matches_loop(self) -> None:
        """fused=True with the kernel run eagerly: fast cover of the fused code path."""
        if not self.has_fused:
            pytest.skip("no fused path")
        for kwargs in self.configs:
            check_fused_vs_loop(self.opt_cls, kwargs, compile=False, steps=self.steps)

    @pytest.mark.slow
    def test_fused_compiled_matches_loop(self) -> None:
        """fused=True through torch.compile (inductor C++ on CPU) equals the loop: float64 to
        1e-12, and float32 (the dtype the fast path is for) to fp32 rounding."""
        if not self.has_fused:
            pytest.skip("no fused path")
        check_fused_vs_loop(self.opt_cls, self.configs[0], compile=True, steps=self.steps)
        check_fused_vs_loop(self.opt_cls, self.configs[0], compile=True, steps=self.steps,
                            atol=1e-5, dtype=torch.float32)

    def test_converges_quadratic(self) -> None:
        if self.quadratic is not None:
            kwargs, steps, tol = self.quadratic
            check_converges(self.opt_cls, kwargs, "quadratic", steps, tol,
                            autograd=self.create_graph)

    def test_converges_rosenbrock(self) -> None:
        if self.rosenbrock is not None:
            kwargs, steps, tol = self.rosenbrock
            check_converges(self.opt_cls, kwargs, "rosenbrock", steps, tol,
                            autograd=self.create_graph)

    def test_invalid(self) -> None:
        check_invalid(self.opt_cls, self.invalid)
