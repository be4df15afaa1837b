"""Forward time of ternary layers vs nn.Linear (fp32, CPU), measured in this run.

For each size (d_in = d_out = d, `--rows` tokens) times the forward of nn.Linear (the
baseline), BitLinear and HGF on the training path (latent weight re-ternarised every call),
and their packed inference forms (2-bit codes unpacked once into a cached dense matrix).
Alternating repeats, best kept; prints ms and the ratio to nn.Linear. The packed path
still runs a dense fp32 matmul: it removes the per-call weight quantisation, it is not a
ternary kernel, so the ratio's floor is ~1 plus activation quantisation.

    python benchmarks/quant.py [--sizes 256 512 1024] [--rows 512] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from gatelab.core.config import parse
from gatelab.lab.compare import machine_description
from gatelab.lab.table import markdown_table
from gatelab.quant import BitLinear, HGFConfig, HGFLinear, PackedBitLinear, PackedHGFLinear


def best_ms(fn: Callable[[], Tensor], iters: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters * 1e3


def layers(d: int, rank: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    linear = nn.Linear(d, d, bias=False)
    bit = BitLinear.from_linear(linear)
    hgf = HGFLinear.from_linear(linear, parse(HGFConfig, {"rank": rank, "gate": "token"}))
    return {"nn.Linear": linear, "BitLinear (train path)": bit, "HGF (train path)": hgf,
            "BitLinear (packed)": PackedBitLinear.from_bitlinear(bit),
            "HGF (packed)": PackedHGFLinear.from_bitlinear(hgf)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"Machine: {machine_description()}; fp32 forward, no grad, rows={args.rows}, HGF rank={args.rank}\n")
    rows = []
    with torch.no_grad():
        for d in args.sizes:
            mods = layers(d, args.rank)
            x = torch.randn(args.rows, d)
            best = {name: float("inf") for name in mods}
            for _ in range(args.repeats):
                for name, m in mods.items():
                    best[name] = min(best[name], best_ms(partial(m, x), args.iters))
            for name, ms in best.items():
                rows.append({"d": d, "layer": name, "ms": ms, "ratio": ms / best["nn.Linear"]})
    print(markdown_table(rows, [("d", "d_in = d_out", "{}"), ("layer", "layer", "{}"), ("ms", "forward ms", "{:.3f}"),
                                ("ratio", "x nn.Linear", "{:.2f}")]))


if __name__ == "__main__":
    main()
