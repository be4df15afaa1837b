"""Optimizer step time on CPU fp32 for a ~10M-parameter set of transformer shapes.

Every registered gatelab optimizer (so new ones are included automatically) is timed with
each path it offers — loop (foreach=False), foreach (foreach=True) and fused (fused=True,
torch.compile) — and divided by torch.optim.AdamW's best of its foreach/fused paths
measured in the same run (fused AdamW is re-timed right after each row, so drifting load on
a shared machine affects both sides of a ratio alike). Prints a Markdown table and the machine.

    python benchmarks/optim.py            # ~10.5M parameters
    python benchmarks/optim.py --quick    # small smoke size
    python benchmarks/optim.py --only adabelief lion --steps 20

Optimizers whose step needs the loss (a closure) are timed with a closure that recomputes
a small quadratic loss and its gradient (marked "closure": includes that backward).
If `pytorch_optimizer` is importable, the same method's implementation there is timed
too and the ratio ours/theirs is printed (not a dependency; never installed by gatelab).
"""
from __future__ import annotations

import argparse
import gc
import inspect
import platform
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

# Methods whose pytorch_optimizer class implements the same rule (name there).
_PYTORCH_OPTIMIZER_NAMES = {
    "adabelief": "AdaBelief", "adabound": "AdaBound", "adamod": "AdaMod", "lion": "Lion",
    "dadapt_adam": "DAdaptAdam", "prodigy": "Prodigy", "swats": "SWATS",
    "schedule_free_adamw": "ScheduleFreeAdamW", "lars": "LARS", "adams": "AdamS",
}


def transformer_shapes(quick: bool) -> list[tuple[int, ...]]:
    """Embedding, 3 blocks (qkv, out-proj, MLP up/down with biases, 2 LayerNorms), final norm."""
    d, vocab, layers = (128, 512, 2) if quick else (512, 2048, 3)
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
        shapes += [(d,), (d,), (d,), (d,)]  # two LayerNorms: weight and bias
    return shapes + [(d,), (d,)]


def make_params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = (torch.randn(s, generator=g) * 0.02).requires_grad_()
        p.grad = torch.randn(s, generator=g) * 1e-3
        params.append(p)
    return params


def _quadratic_closure(params: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        with torch.enable_grad():
            loss = sum((0.5 * p * p).sum() for p in params)
            grads = torch.autograd.grad(loss, params, create_graph=True)
        for p, g in zip(params, grads):
            p.grad = g
        return loss.detach()

    return closure


def time_steps(make_opt: Callable[[list[torch.Tensor]], Any], shapes: list[tuple[int, ...]],
               steps: int, warmup: int) -> tuple[float, bool]:
    """Min ms per step over `steps` timed steps (and whether a closure was needed).

    The min is reported: on a shared machine it is the least disturbed by other load."""
    gc.collect()
    params = make_params(shapes)
    opt = make_opt(params)
    closure = None
    try:
        opt.step()
    except Exception:  # needs the loss value: time with a closure
        params = make_params(shapes)
        opt = make_opt(params)
        closure = _quadratic_closure(params)
        opt.step(closure)
    for _ in range(warmup - 1):
        opt.step(closure) if closure else opt.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step(closure) if closure else opt.step()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3, closure is not None


def paths_of(cls: Any) -> list[tuple[str, dict[str, Any]]]:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return [("default", {})]
    out = []
    if "foreach" in sig.parameters:
        out += [("loop", {"foreach": False}), ("foreach", {"foreach": True})]
    else:
        out.append(("default", {}))
    if "fused" in sig.parameters:
        out.append(("fused", {"fused": True}))
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke size")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (min is reported)")
    ap.add_argument("--only", nargs="*", help="registry names to time (default: all)")
    ap.add_argument("--no-fused", action="store_true", help="skip torch.compile paths")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). Use 1 on a shared machine: "
                         "inductor's OpenMP kernels stall badly when cores are oversubscribed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (5 if args.quick else 15)
    warmup = 6  # covers lazy phases (e.g. a predictor that starts after r steps) and compile

    import gatelab.optim  # noqa: F401  (registers everything)
    from gatelab.core.registry import _REGISTRIES

    registry = _REGISTRIES["optimizer"]
    shapes = transformer_shapes(args.quick)
    n_params = sum(torch.Size(s).numel() for s in shapes)

    ref = {}
    for path, kw in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        ref[path], _ = time_steps(lambda ps, kw=kw: torch.optim.AdamW(ps, **kw), shapes,
                                  steps, warmup)

    try:
        import pytorch_optimizer  # type: ignore[import-not-found]
    except ImportError:
        pytorch_optimizer = None

    rows = []
    names = args.only or sorted(registry)
    for name in names:
        cls = registry[name]
        for path, kw in paths_of(cls):
            if path == "fused" and args.no_fused:
                continue
            try:
                ms, needs_closure = time_steps(lambda ps, cls=cls, kw=kw: cls(ps, **kw), shapes,
                                               steps, warmup)
            except Exception as e:  # report, keep going
                rows.append((name, path, f"error: {type(e).__name__}: {str(e)[:60]}", "", ""))
                traceback.print_exc(limit=1)
                continue
            theirs = ""
            if pytorch_optimizer is not None and name in _PYTORCH_OPTIMIZER_NAMES and path != "fused":
                other = getattr(pytorch_optimizer, _PYTORCH_OPTIMIZER_NAMES[name], None)
                if other is not None:
                    try:
                        t_ms, _ = time_steps(lambda ps, c=other: c(ps), shapes, steps, warmup)
                        theirs = f"{ms / t_ms:.2f}"
                    except Exception as e:
                        theirs = f"error: {type(e).__name__}"
            note = " (closure)" if needs_closure else ""
            # Reference measured right after this row: on a shared machine load drifts.
            near, _ = time_steps(lambda ps: torch.optim.AdamW(ps, fused=True), shapes, steps,
                                 warmup)
            rows.append((name, path + note, f"{ms:.2f}", f"{ms / near:.2f}", theirs))

    print(f"\n### Optimizer step time, CPU fp32, {n_params / 1e6:.1f}M parameters "
          f"in {len(shapes)} tensors\n")
    print(f"- machine: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"python {platform.python_version()}")
    print(f"- reference: torch.optim.AdamW foreach {ref['foreach']:.2f} ms, fused "
          f"{ref['fused']:.2f} ms (fused is AdamW's best on CPU); ratio = ms / a fused AdamW "
          f"timing taken right after each row; min of {steps} steps "
          f"after {warmup} warm-up steps")
    print(f"- pytorch_optimizer: {'installed' if pytorch_optimizer else 'not installed'}\n")
    print("| optimizer | path | ms/step | / AdamW best | / pytorch_optimizer |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
