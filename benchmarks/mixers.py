"""Token-mixer speed: gated vs plain softmax attention, chunked vs recurrent linear mixers,
and linear mixers vs SDPA attention (forward + backward, fp32).

Every ratio is against a baseline timed in the same run; each time is the best of
`--repeats` after one warm-up (the token-loop references run `--recurrent-repeats` times,
no warm-up: they take seconds). Goals (issue 5): gate overhead <= 5%; chunked >= 10x the
recurrent form at T=2048.

    python benchmarks/mixers.py [--seq-lens 512 2048] [--batch 4] [--d-model 512] [--heads 8]
"""
from __future__ import annotations

import argparse
import time

import torch

from gatelab.core.config import parse
from gatelab.core.registry import get
from gatelab.lab.compare import machine_description
from gatelab.lab.table import markdown_table

MIXERS = [  # (label, registry name, options)
    ("attention", "attention", {}),
    ("attention + G1 headwise", "attention", {"gate": "headwise"}),
    ("attention + G1 elementwise", "attention", {"gate": "elementwise"}),
    ("gla chunk", "gla", {"mode": "chunk"}),
    ("gla recurrent", "gla", {"mode": "recurrent"}),
    ("gated_deltanet chunk", "gated_deltanet", {"mode": "chunk"}),
    ("gated_deltanet recurrent", "gated_deltanet", {"mode": "recurrent"}),
]
BASELINE = {  # label -> the label its ratio is taken against
    "attention + G1 headwise": "attention", "attention + G1 elementwise": "attention",
    "gla chunk": "attention", "gated_deltanet chunk": "attention",
    "gla recurrent": "gla chunk", "gated_deltanet recurrent": "gated_deltanet chunk",
}


def fwd_bwd_seconds(module: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: bool) -> float:
    best = float("inf")
    for i in range(repeats + int(warmup)):
        x.grad = None
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        module(x).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= int(warmup):
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recurrent-repeats", type=int, default=1)
    ap.add_argument("--skip-recurrent", action="store_true", help="leave out the token-loop references")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for T in args.seq_lens:
        times: dict[str, float] = {}
        for label, name, opts in MIXERS:
            recurrent = opts.get("mode") == "recurrent"
            if recurrent and args.skip_recurrent:
                continue
            cls = get("token_mixer", name)
            if name != "attention":
                opts = {**opts, "chunk_size": args.chunk_size}
            module = cls(args.d_model, parse(cls.Config, {"n_head": args.heads, **opts})).to(args.device)
            x = torch.randn(args.batch, T, args.d_model, device=args.device, requires_grad=True)
            times[label] = fwd_bwd_seconds(module, x, args.recurrent_repeats if recurrent else args.repeats,
                                           warmup=not recurrent)
            base = BASELINE.get(label)
            rows.append({"T": T, "mixer": label, "ms": 1000 * times[label],
                         "ratio": times[label] / times[base] if base in times else None,
                         "vs": base or "-"})
            print(f"T={T:5d}  {label:28s} {1000 * times[label]:10.1f} ms", flush=True)
    print(f"\n{machine_description()}; batch {args.batch}, d_model {args.d_model}, {args.heads} heads, "
          f"chunk {args.chunk_size}, forward + backward, fp32\n")
    print(markdown_table(rows, [("T", "T", "{}"), ("mixer", "mixer", "{}"), ("ms", "fwd+bwd ms", "{:,.1f}"),
                                ("ratio", "time ratio", "{:.2f}"), ("vs", "vs", "{}")]))


if __name__ == "__main__":
    main()
