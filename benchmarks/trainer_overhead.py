"""Trainer overhead: gatelab's Trainer vs a bare PyTorch loop on the same model and data.

Both train the same tiny LM (same init, same batches, AdamW, grad clipping, cosine LR)
for the same number of steps in this process; runs alternate and the best of `--repeats`
is kept for each. Prints ms/step, tokens/s and the ratio trainer / bare (goal <= 1.05).

    python benchmarks/trainer_overhead.py [--steps 60] [--repeats 3] [--d-model 128]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from gatelab.config import load_config
from gatelab.data import RandomWindowSampler, build_data
from gatelab.lab.compare import machine_description
from gatelab.lab.table import markdown_table
from gatelab.train import Trainer


def make_cfg(args):
    return load_config(None, [
        ("model.d_model", str(args.d_model)), ("model.n_layer", str(args.n_layer)),
        ("data.seq_len", str(args.seq_len)), ("data.batch_size", str(args.batch_size)),
        ("train.steps", str(args.steps)), ("train.ckpt_every", "0"),
        ("eval.every", "0"), ("eval.batches", "1"), ("log.every", str(args.steps)), ("log.progress", "false"),
    ])


def time_trainer(cfg, data) -> float:
    """Seconds per step of Trainer.fit, excluding the one-off final eval and checkpoint."""
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="gl-bench-"), data=data)
    trainer.train_step()  # warm-up step, as in the bare loop
    trainer.step = 0
    t0 = time.perf_counter()
    for _ in range(cfg.train.steps):
        trainer.train_step()
    per_step = (time.perf_counter() - t0) / cfg.train.steps
    return per_step


def time_fit(cfg, data) -> float:
    """Seconds per step of the full `fit()` (metrics, progress, final eval and checkpoint)."""
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="gl-bench-"), data=data)
    t0 = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - t0) / cfg.train.steps


def time_bare(cfg, data) -> float:
    """The 15-line loop a PyTorch user would write."""
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="gl-bench-"), data=data)  # same model, optimizer, schedule
    model, opt, sched = trainer.model, trainer.optimizer, trainer.scheduler
    sampler = RandomWindowSampler(data.train, cfg.data.seq_len, cfg.data.batch_size, seed=0)

    def step():
        b = sampler.next()
        logits = model(b.x).logits
        loss = F.cross_entropy(logits.flatten(0, 1), b.y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step()
    t0 = time.perf_counter()
    for _ in range(cfg.train.steps):
        step()
    return (time.perf_counter() - t0) / cfg.train.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    cfg = make_cfg(args)
    data = build_data(cfg.data)
    best = {"bare loop": float("inf"), "Trainer.train_step": float("inf"), "Trainer.fit": float("inf")}
    for _ in range(args.repeats):
        best["bare loop"] = min(best["bare loop"], time_bare(cfg, data))
        best["Trainer.train_step"] = min(best["Trainer.train_step"], time_trainer(cfg, data))
        best["Trainer.fit"] = min(best["Trainer.fit"], time_fit(cfg, data))
    tokens = args.batch_size * args.seq_len
    rows = [{"loop": k, "ms": 1000 * v, "tok_s": tokens / v, "ratio": v / best["bare loop"]} for k, v in best.items()]
    print(f"# trainer overhead: d_model {args.d_model}, {args.n_layer} layers, batch {args.batch_size}x{args.seq_len}, "
          f"{args.steps} steps, best of {args.repeats}")
    print(f"# machine: {machine_description()}")
    print(markdown_table(rows, [("loop", "loop", "{}"), ("ms", "ms/step", "{:.1f}"), ("tok_s", "tokens/s", "{:,.0f}"),
                                ("ratio", "ratio vs bare", "{:.3f}")]))
    print("(Trainer.fit includes metrics, the final evaluation and the final checkpoint.)")


if __name__ == "__main__":
    main()
