"""Training throughput at world size 1 vs 2: DDP, FSDP2 and DDP + expert-parallel MoE.

Each configuration trains the same model on the same global batch (the config does not
change with the world size) in fresh processes started like torchrun
(`gatelab.train.distributed.spawn_local`): world size 1 (plain single process) and 2
(gloo on CPU, NCCL on CUDA). Printed per mode: tokens/s (global batch tokens per second of
optimizer step, median over `--steps` after warm-up), speedup = tokens/s(2) / tokens/s(1),
and scaling efficiency = speedup / 2.

On CPU every process runs `--threads` intra-op threads (default 1), so world size 2 uses
twice the cores of world size 1, as a second GPU or node would add hardware: the ideal is
2x, reached only with 2 x threads idle cores (a shared 2-core machine cannot; the figure
is what was measured, not a scaling claim). One process with 2 threads is not the
baseline: on a loaded 2-core machine OpenMP oversubscription made it up to 30x slower,
which would flatter the 2-rank figure. With 2 or more CUDA devices (`--device cuda`) each
rank gets its own GPU.

    python benchmarks/distributed.py                  # CPU, all modes
    python benchmarks/distributed.py --steps 3 --d-model 64 --modes ddp   # smoke size
    python benchmarks/distributed.py --device cuda    # needs >= 2 GPUs
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gatelab.lab.compare import machine_description
from gatelab.lab.table import markdown_table
from gatelab.train.distributed import spawn_local

MODES = {
    "ddp": [("parallel.data", "ddp")],
    "fsdp": [("parallel.data", "fsdp")],
    "ddp+ep": [("parallel.data", "ddp"), ("parallel.expert", "true"), ("model.block.ffn.name", "moe"),
               ("model.block.ffn.n_experts", "8"), ("model.block.ffn.k", "2")],
}
COLUMNS = [("mode", "mode", "{}"), ("tok1", "tokens/s, 1 process", "{:.0f}"), ("tok2", "tokens/s, 2 ranks", "{:.0f}"),
           ("speedup", "speedup", "{:.2f}x"), ("eff", "scaling efficiency", "{:.0%}")]


def _worker(rank: int, over: list[tuple[str, str]], threads: int, steps: int, out: str) -> None:
    from gatelab.config import load_config
    from gatelab.train import Trainer

    torch.set_num_threads(threads)
    cfg = load_config(None, over)
    trainer = Trainer(cfg, tempfile.mkdtemp())
    trainer.train_step()  # warm-up (allocations, gloo connections)
    times = []
    for _ in range(steps):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        tokens = cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum
        Path(out).write_text(str(tokens / statistics.median(times)))


def tokens_per_s(world: int, over: list[tuple[str, str]], threads: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/tok_s"
        spawn_local(_worker, world, over, threads, steps, out)
        return float(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (each rank on its own GPU)")
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16, help="global batch (split over the ranks)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process (CPU)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and torch.cuda.device_count() < 2:
        raise SystemExit(f"--device cuda needs >= 2 GPUs for world size 2; found {torch.cuda.device_count()}")
    base = [("data.corpus.name", "synthetic"), ("data.seq_len", str(args.seq_len)),
            ("data.batch_size", str(args.batch_size)), ("model.d_model", str(args.d_model)),
            ("model.n_layer", str(args.n_layer)), ("train.device", args.device), ("log.progress", "false")]
    torch.set_num_threads(args.threads)
    print(f"# distributed training throughput, d_model={args.d_model} n_layer={args.n_layer} "
          f"seq_len={args.seq_len} global batch={args.batch_size}, device {args.device}, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} cores, {machine_description()}")
    rows = []
    for mode in args.modes.split(","):
        over = base + MODES[mode]
        tok1 = tokens_per_s(1, over, args.threads, args.steps)
        tok2 = tokens_per_s(2, over, args.threads, args.steps)
        rows.append({"mode": mode, "tok1": tok1, "tok2": tok2, "speedup": tok2 / tok1, "eff": tok2 / tok1 / 2})
        print(markdown_table(rows[-1:], COLUMNS), flush=True)
    print()
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
