"""Optimizer step time on CPU fp32 for a ~10M-parameter set of transformer shapes.

Every registered gatelab optimizer (so new ones are included automatically) is timed with
each path it offers — loop (foreach=False), foreach (foreach=True) and fused (fused=True,
torch.compile) — and divided by torch.optim.AdamW fused (its best on CPU) and foreach. The
two AdamW references are stepped in turn with every row's optimizer (round robin), so
drifting load on a shared machine affects both sides of a ratio alike. Prints a Markdown
table, the machine and its load average before and after. With ``--threads 1`` steps are
timed in process CPU time (unaffected by preemption on a loaded machine).

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
import os
import platform
import statistics
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


class _Timed:
    """One optimizer over its own copy of the parameter set, ready to step (and time)."""

    def __init__(self, make_opt: Callable[[list[torch.Tensor]], Any],
                 shapes: list[tuple[int, ...]]) -> None:
        self.params = make_params(shapes)
        self.opt = make_opt(self.params)
        self.closure = None
        try:
            self.opt.step()
        except Exception:  # needs the loss value: time with a closure
            self.params = make_params(shapes)
            self.opt = make_opt(self.params)
            self.closure = _quadratic_closure(self.params)
            self.opt.step(self.closure)
        self.times: list[float] = []

    def step(self) -> None:
        self.opt.step(self.closure) if self.closure else self.opt.step()

    def timed_step(self) -> None:
        clock = step_clock()
        t0 = clock()
        self.step()
        self.times.append(clock() - t0)


def step_clock() -> Callable[[], float]:
    """The process's CPU time when torch runs on 1 thread (every kernel, compiled ones
    included, then runs in the stepping thread, and time spent preempted by other processes on
    a shared machine is not counted), else wall-clock time."""
    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def time_interleaved(makers: list[Callable[[list[torch.Tensor]], Any]],
                     shapes: list[tuple[int, ...]], steps: int, warmup: int) -> list[_Timed]:
    """Each optimizer stepped `steps` times, round robin after `warmup` steps each; every
    run's `times` holds its per-step seconds, round i of all runs taken back to back.

    Round-robin timing puts the optimizers of one round under the same background load, so
    the per-round ratios (`paired_ratio`) hold on a shared machine while absolute times drift.
    """
    gc.collect()
    runs = [_Timed(make, shapes) for make in makers]
    for run in runs:
        for _ in range(warmup - 1):
            run.step()
    for _ in range(steps):
        for run in runs:
            run.timed_step()
    return runs


def paired_ratio(run: _Timed, ref: _Timed) -> float:
    """Median over rounds of run's step time / ref's step time in the same round."""
    return statistics.median(a / b for a, b in zip(run.times, ref.times))


def _fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def _adamw(kw: dict[str, Any]) -> Callable[[list[torch.Tensor]], Any]:
    return lambda ps: torch.optim.AdamW(ps, **kw)


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
    steps = args.steps or (5 if args.quick else 25)
    warmup = 6  # covers lazy phases (e.g. a predictor that starts after r steps) and compile

    import gatelab.optim  # noqa: F401  (registers everything)
    from gatelab.core.registry import _REGISTRIES

    registry = _REGISTRIES["optimizer"]
    shapes = transformer_shapes(args.quick)
    n_params = sum(torch.Size(s).numel() for s in shapes)

    try:
        import pytorch_optimizer  # type: ignore[import-not-found]
    except ImportError:
        pytorch_optimizer = None

    # Each row is timed interleaved with both AdamW references (fused, foreach).
    refs = [_adamw({"fused": True}), _adamw({"foreach": True})]
    rows = []
    last_ref: tuple[float, float] | None = None
    load_before = os.getloadavg()
    names = args.only or sorted(registry)
    for name in names:
        cls = registry[name]
        for path, kw in paths_of(cls):
            if path == "fused" and args.no_fused:
                continue
            try:
                run, fused, foreach = time_interleaved(
                    [lambda ps, cls=cls, kw=kw: cls(ps, **kw)] + refs, shapes, steps, warmup)
            except Exception as e:  # report, keep going
                rows.append((name, path, f"error: {type(e).__name__}: {str(e)[:60]}", "", "",
                             ""))
                traceback.print_exc(limit=1)
                continue
            theirs = ""
            if (pytorch_optimizer is not None and name in _PYTORCH_OPTIMIZER_NAMES
                    and path != "fused"):
                other = getattr(pytorch_optimizer, _PYTORCH_OPTIMIZER_NAMES[name], None)
                if other is not None:
                    try:
                        ours, other_run = time_interleaved(
                            [lambda ps, cls=cls, kw=kw: cls(ps, **kw), lambda ps, c=other: c(ps)],
                            shapes, steps, warmup)
                        theirs = f"{paired_ratio(ours, other_run):.2f}"
                    except Exception as e:
                        theirs = f"error: {type(e).__name__}"
            note = " (closure)" if run.closure is not None else ""
            rows.append((name, path + note, f"{min(run.times) * 1e3:.2f}",
                         f"{paired_ratio(run, fused):.2f}", f"{paired_ratio(run, foreach):.2f}",
                         theirs))
            last_ref = (min(fused.times) * 1e3, min(foreach.times) * 1e3)

    print(f"\n### Optimizer step time, CPU fp32, {n_params / 1e6:.1f}M parameters "
          f"in {len(shapes)} tensors\n")
    print(f"- machine: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"python {platform.python_version()}")
    clock = "process CPU time (1 thread)" if step_clock() is time.process_time \
        else "wall-clock time"
    print(f"- clock: {clock}")
    print(f"- load average (1/5/15 min) before {_fmt_load(load_before)}, after "
          f"{_fmt_load(os.getloadavg())} on {os.cpu_count()} cores")
    if last_ref is not None:
        print(f"- reference: torch.optim.AdamW fused and foreach, stepped in turn with every "
              f"row's optimizer (last row: fused {last_ref[0]:.2f} ms, foreach "
              f"{last_ref[1]:.2f} ms); ms/step = min of {steps} steps after {warmup} warm-up "
              f"steps; ratio = median over the {steps} rounds of the per-round time ratio")
    print(f"- pytorch_optimizer: {'installed' if pytorch_optimizer else 'not installed'}\n")
    print("| optimizer | path | ms/step | / AdamW fused | / AdamW foreach | / pytorch_optimizer |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
