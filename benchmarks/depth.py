"""Adaptive-depth wall-clock vs executed FLOPs: does skipping tokens make the model faster?

For each method and budget (100 / 50 / 25 / 12.5 % of tokens through each routed block or
branch) the same LM shape is timed against the dense model measured in the same run:

* ``fwd+bwd``: one training forward + backward (MoD / random skip route in training;
  GateSkip trains with soft gates, so it has no training saving and is timed in eval);
* ``fwd (eval)``: one inference forward;
* ``generate``: greedy decoding of `--new` tokens without a KV cache (routed methods have
  none; the dense model is timed on the same recompute path and, for reference, cached).

FLOP saving = 1 − executed FLOPs / FLOPs with every block run for every token (routers,
gates and predictors counted), from the compute meter of the timed forward. "time / FLOP
saving" is the measured time saving divided by the FLOP saving (goal ≥ 0.7 for MoD at
12.5 %). Each ratio is the median over `--repeats` back-to-back pairs; on a busy CPU
ratios are still noisy.

    python benchmarks/depth.py                       # d 256, 4 layers, batch 8 x 256
    python benchmarks/depth.py --quick               # small smoke size
    python benchmarks/depth.py --curve 300           # GateSkip: train 300 steps, loss vs compute saved

``--curve N`` trains a 4-layer d 128 GateSkip LM for N steps on the synthetic corpus, then
evaluates it at inference budgets skipping the lowest-gate tokens vs random tokens
(METHODS.md §8 claim 12) with the compute saved counted from the executed forward.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from gatelab.config import load_config
from gatelab.core.config import parse
from gatelab.depth import compute_saved, full_flops
from gatelab.lab.compare import machine_description
from gatelab.lab.table import markdown_table
from gatelab.models import LM, ModelConfig

BUDGETS = (1.0, 0.5, 0.25, 0.125)


def build(args, depth: dict) -> LM:
    torch.manual_seed(0)
    return LM(parse(ModelConfig, {"vocab_size": 256, "d_model": args.d_model, "n_layer": args.n_layer,
                                  "block": {"mixer": {"name": "attention", "n_head": args.d_model // 64 or 1}},
                                  "depth": depth}))


def paired_ratio(fn, dense_fn, repeats: int) -> float:
    """Median over `repeats` of time(fn) / time(dense_fn), each pair timed back to back so
    load changes on a shared machine hit both sides of a ratio."""
    fn(), dense_fn()  # warm-up
    ratios = []
    for _ in range(repeats):
        t = []
        for f in (fn, dense_fn):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        ratios.append(t[0] / t[1])
    return statistics.median(ratios)


def fwd_bwd(model: LM, x):
    def run():
        out = model(x)
        loss = out.logits.float().square().mean()
        aux = out.aux_loss
        (loss if aux is None else loss + aux).backward()
        model.zero_grad(set_to_none=True)
    return run


def fwd(model: LM, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def generate(model: LM, prompt, new: int, use_cache: bool = False):
    return lambda: model.generate(prompt, new, temperature=0, use_cache=use_cache)


def flop_saving(model: LM, x) -> float:
    with torch.no_grad():
        executed = model(x).meter.total_flops()
    return 1 - executed / full_flops(model, x)


def gateskip_curve(steps: int) -> None:
    """Validation loss vs eval compute saved for a trained GateSkip model (gate vs random skip)."""
    import tempfile

    from gatelab.train import Trainer

    cfg = load_config(None, [("train.steps", str(steps)), ("eval.every", "0"), ("log.progress", "false")], base={
        "data": {"corpus": {"name": "synthetic"}, "seq_len": 128, "batch_size": 16},
        "model": {"d_model": 128, "n_layer": 4, "depth": {"name": "gateskip"}},
        "optim": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_steps": min(30, steps // 10)}, "eval": {"batches": 8}})
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="gl-depth-"))
    trainer.fit()
    method, x = trainer.model.depth, trainer.eval_set[0].x
    rows = []
    for keep in (1.0, 0.9, 0.75, 0.5, 0.25):
        for select in ("gate", "random"):
            method.cfg.keep, method.cfg.select = keep, select
            torch.manual_seed(0)
            loss = trainer.evaluate()["val_loss"]
            saved, _ = compute_saved(trainer.model.eval(), x)
            rows.append({"keep": f"{100 * keep:g}%", "select": select, "val_loss": loss, "saved": saved})
    print(f"\n## GateSkip after {steps} steps (4 layers, d 128, synthetic corpus): loss vs compute saved\n")
    print(f"Machine: {machine_description()}\n")
    print(markdown_table(rows, [("keep", "tokens kept per branch", "{}"), ("select", "skipped tokens", "{}"),
                                ("val_loss", "val loss", "{:.4f}"), ("saved", "eval compute saved", "{:.1%}")]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new", type=int, default=16, help="generated tokens (prompt = seq / 4)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--curve", type=int, default=0, metavar="STEPS", help="GateSkip loss-vs-saving curve instead")
    args = ap.parse_args()
    if args.curve:
        gateskip_curve(args.curve)
        return
    if args.quick:
        args.d_model, args.n_layer, args.batch, args.seq, args.new, args.repeats = 64, 2, 2, 64, 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.batch, args.seq))
    prompt = x[:1, : args.seq // 4]

    dense = build(args, {"name": "none"})
    dense_fns = {"fwd+bwd": fwd_bwd(dense.train(), x), "fwd": fwd(dense, x), "gen": generate(dense, prompt, args.new)}
    dense.eval()
    gen_cached = paired_ratio(generate(dense, prompt, args.new, use_cache=True), dense_fns["gen"], args.repeats)

    methods = [("mod (every block)", lambda c: {"name": "mod", "capacity": c, "every": 1, "sampling": "topk"}, True),
               ("mod (every 2nd)", lambda c: {"name": "mod", "capacity": c, "every": 2, "sampling": "topk"}, True),
               ("random_skip", lambda c: {"name": "random_skip", "capacity": c, "every": 1}, True),
               ("gateskip (eval)", lambda c: {"name": "gateskip", "keep": c}, False)]
    rows = []
    for name, spec, trains_sparse in methods:
        for budget in BUDGETS:
            model = build(args, spec(budget))
            row = {"method": name, "budget": f"{100 * budget:g}%"}
            if trains_sparse:
                row["train_saving"] = flop_saving(model.train(), x)
                dense.train()
                row["fwd_bwd"] = paired_ratio(fwd_bwd(model, x), dense_fns["fwd+bwd"], args.repeats)
                dense.eval()
                row["train_ratio"] = (1 - row["fwd_bwd"]) / row["train_saving"] if row["train_saving"] > 0 else None
            model.eval()
            row["eval_saving"] = flop_saving(model, x)
            row["fwd"] = paired_ratio(fwd(model, x), dense_fns["fwd"], args.repeats)
            row["eval_ratio"] = (1 - row["fwd"]) / row["eval_saving"] if row["eval_saving"] > 0 else None
            row["gen"] = paired_ratio(generate(model, prompt, args.new), dense_fns["gen"], args.repeats)
            rows.append(row)
            print(f"  {name} {row['budget']}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)

    print(f"\n## Adaptive depth: time / dense (d {args.d_model}, {args.n_layer} layers, batch {args.batch} x "
          f"{args.seq}, fp32, {torch.get_num_threads()} threads)\n")
    print(f"Machine: {machine_description()}\n")
    print(f"Dense generation with a KV cache takes {gen_cached:.2f}x the time of the recompute path "
          "that routed methods use.\n")
    cols = [("method", "method", "{}"), ("budget", "budget", "{}"),
            ("train_saving", "train FLOP saving", "{:.1%}"), ("fwd_bwd", "fwd+bwd time / dense", "{:.3f}"),
            ("train_ratio", "time saving / FLOP saving (train)", "{:.2f}"),
            ("eval_saving", "eval FLOP saving", "{:.1%}"), ("fwd", "fwd time / dense", "{:.3f}"),
            ("eval_ratio", "time saving / FLOP saving (eval)", "{:.2f}"),
            ("gen", "generate time / dense (no cache)", "{:.3f}")]
    print(markdown_table(rows, cols))


if __name__ == "__main__":
    main()
