"""MoE dispatch backends vs a dense SwiGLU FFN with the same active FLOPs per token.

Shapes (issue 4): T tokens, d_model 512, fp32 on CPU (bf16 on CUDA):
  (a) E=8,  k=2, expert d_ff=1024 (dense equivalent d_ff 2048)
  (b) E=64, k=8, expert d_ff=128  (fine-grained; dense equivalent d_ff 1024)
For each backend (reference loop, dropless with `F.grouped_mm`, dropless with its
per-expert loop -- the CPU default --, capacity CF 1.25 with the default) it prints the
forward+backward time of the whole MoE layer (top-k router included) divided by the dense
FFN's measured in the same run, its speedup over the reference loop, the router+permutation
share of the per-expert-loop dropless layer time (router forward and backward, sort, and
the kernel's own gathers and weighted un-permutes with identity experts), and the
activation memory saved for backward relative to the dense FFN (bytes of the distinct
non-parameter tensors autograd saves; on CUDA also the peak allocated memory). Times are medians over
`--repeats`; on a busy CPU ratios are noisy.

    python benchmarks/moe.py                 # T 8192
    python benchmarks/moe.py --tokens 1024   # smoke size
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from gatelab.core.aux import ForwardContext
from gatelab.lab.compare import machine_description
from gatelab.lab.table import markdown_table
from gatelab.models.layers import SwiGLU
from gatelab.moe import MoEConfig, MoELayer

SHAPES = {"a": (8, 2, 1024), "b": (64, 8, 128)}
COLUMNS = [("shape", "shape", "{}"), ("backend", "backend", "{}"), ("ms", "fwd+bwd ms", "{:.0f}"),
           ("vs_dense", "/ dense", "{:.2f}x"), ("speedup", "vs reference", "{:.2f}x"),
           ("route_share", "router+perm share", "{:.0%}"), ("mem", "saved act / dense", "{:.2f}x"),
           ("peak", "peak mem / dense", "{:.2f}x")]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fwd_bwd(fn, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward of fn(x) with a fixed random output grad."""
    g = torch.randn_like(x)
    fn(x).backward(g)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(x.device)
        t0 = time.perf_counter()
        fn(x).backward(g)
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def saved_bytes(fn, x: torch.Tensor, module: torch.nn.Module) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for backward in fn(x)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def peak_bytes(fn, x: torch.Tensor) -> int | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(x).backward(torch.ones_like(x))
    return torch.cuda.max_memory_allocated() - base


class _PermuteOnly(torch.autograd.Function):
    """The dropless kernel's data movement with identity experts: per expert block, gather
    rows and weighted `index_add_` forward; gather g, re-gather x and `index_add_` backward."""

    @staticmethod
    def forward(ctx, x_TD, token_A, w_A1, sizes):
        y_TD = torch.zeros_like(x_TD)
        for tok_N, w_N1 in zip(token_A.split(sizes), w_A1.split(sizes)):
            y_TD.index_add_(0, tok_N, x_TD.index_select(0, tok_N) * w_N1)
        ctx.save_for_backward(x_TD, token_A, w_A1)
        ctx.sizes = sizes
        return y_TD

    @staticmethod
    def backward(ctx, g_TD):
        x_TD, token_A, w_A1 = ctx.saved_tensors
        grad_x_TD, grad_w = torch.zeros_like(x_TD), []
        for tok_N, w_N1 in zip(token_A.split(ctx.sizes), w_A1.split(ctx.sizes)):
            g_ND = g_TD.index_select(0, tok_N)
            grad_w.append((g_ND * x_TD.index_select(0, tok_N)).sum(1, keepdim=True))
            grad_x_TD.index_add_(0, tok_N, g_ND * w_N1)
        return grad_x_TD, None, torch.cat(grad_w), None


def routing_overhead(moe: MoELayer):
    """Router (forward and backward) + sort + the kernel's gathers and un-permutes, no experts."""
    def run(x_BTD: torch.Tensor) -> torch.Tensor:
        x_TD = x_BTD.reshape(-1, x_BTD.shape[-1])
        real = moe.router(x_TD, ForwardContext()).real()
        order_A = torch.argsort(real.expert_idx_A, stable=True)
        sizes = real.counts(real.n_experts).tolist()
        w_A1 = real.weight_A[order_A].unsqueeze(1).to(x_TD.dtype)
        return _PermuteOnly.apply(x_TD, real.token_idx_A[order_A], w_A1, sizes).reshape(x_BTD.shape)
    return run


def bench_shape(name: str, T: int, d: int, repeats: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    E, k, h = SHAPES[name]
    torch.manual_seed(0)
    dense = SwiGLU(d, SwiGLU.Config(hidden=k * h)).to(device, dtype)
    x = torch.randn(1, T, d, device=device, dtype=dtype, requires_grad=True)
    t_dense = time_fwd_bwd(lambda x_: dense(x_), x, repeats)
    mem_dense = saved_bytes(lambda x_: dense(x_), x, dense)
    peak_dense = peak_bytes(lambda x_: dense(x_), x)
    rows = [{"shape": name, "backend": f"dense SwiGLU d_ff={k * h}", "ms": 1e3 * t_dense, "vs_dense": 1.0,
             "mem": 1.0, "peak": 1.0 if peak_dense else None}]
    variants = [("reference", "reference", "auto"), ("dropless (grouped_mm)", "dropless", "grouped_mm"),
                ("dropless (per-expert loop)", "dropless", "loop"), ("capacity CF1.25", "capacity", "auto")]
    t_ref = None
    for label, backend, grouped in variants:
        torch.manual_seed(0)
        moe = MoELayer(d, MoEConfig(n_experts=E, k=k, hidden=h, backend=backend, grouped=grouped,
                                    capacity_factor=1.25)).to(device, dtype)
        moe.router.init_weights(0.02 / moe.router.init_scale)  # trained-like router, not the tiny init
        def layer(x_):
            return moe(x_, ForwardContext())
        t = time_fwd_bwd(layer, x, repeats)
        t_ref = t if backend == "reference" else t_ref
        row = {"shape": name, "backend": label, "ms": 1e3 * t, "vs_dense": t / t_dense, "speedup": t_ref / t,
               "mem": saved_bytes(layer, x, moe) / mem_dense}
        pk = peak_bytes(layer, x)
        row["peak"] = pk / peak_dense if pk and peak_dense else None
        if grouped == "loop":
            row["route_share"] = time_fwd_bwd(routing_overhead(moe), x, repeats) / t
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="ab")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"# MoE dispatch, T={args.tokens}, d_model={args.d_model}, {dtype}, {machine_description()}")
    for name in args.shapes:  # one table per shape, printed as soon as it is measured
        rows = bench_shape(name, args.tokens, args.d_model, args.repeats, device, dtype)
        print(markdown_table(rows, COLUMNS), flush=True)


if __name__ == "__main__":
    main()
