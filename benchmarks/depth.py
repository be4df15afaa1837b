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
    python benchmarks/depth.py --curve 300 --ramp 0.1  # GateSkip: loss vs compute saved, soft vs ramped training
    python benchmarks/depth.py --calm 300            # CALM: threshold sweep in teacher-forced decoding
    python benchmarks/depth.py --learned-exit 300    # JEI-DNN-style learned exits: the same sweep
    python benchmarks/depth.py --exit-timing --batch 1 --seq 128  # CALM decoding wall-clock vs dense
    python benchmarks/depth.py --skip-middle 300     # skip-middle (6 layers) vs dense 4 / 5 / 6 layers

``--curve N`` trains a 4-layer d 128 GateSkip LM for N steps on the synthetic corpus (and,
with ``--ramp s``, one with the training-time skip ramp 0.5% -> s over the N steps), then
evaluates it at inference budgets skipping the lowest-gate tokens vs random tokens
(METHODS.md §8 claim 12) with the compute saved counted from the executed forward.
``--calm N`` trains a CALM model with exit losses and decodes eval sequences through the
KV cache at several confidence thresholds (exit heads and KV fills counted, claim 16);
``--learned-exit N`` does the same for learned exit gates (thresholds on the gate).
``--skip-middle N`` trains 6-layer skip-middle models and dense models of 4, 5 and 6
layers: loss against executed FLOPs per token (claim 13).
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


def train_small(depth: dict, steps: int, n_layer: int = 4):
    """A d 128 LM trained `steps` AdamW steps on the synthetic corpus (batch 16 x 128)."""
    import tempfile

    from gatelab.train import Trainer

    cfg = load_config(None, [("train.steps", str(steps)), ("eval.every", "0"), ("log.progress", "false")], base={
        "data": {"corpus": {"name": "synthetic"}, "seq_len": 128, "batch_size": 16},
        "model": {"d_model": 128, "n_layer": n_layer, "depth": depth},
        "optim": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_steps": min(30, steps // 10)}, "eval": {"batches": 8}})
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="gl-depth-"))
    trainer.fit()
    return trainer


def gateskip_curve(steps: int, ramp_to: float) -> None:
    """Validation loss vs eval compute saved for trained GateSkip models (gate vs random skip),
    trained with soft gates only and, if `ramp_to` > 0, with the skip ramp up to `ramp_to`."""
    variants = [("soft gates", {"name": "gateskip"})]
    if ramp_to > 0:
        variants.append((f"ramp 0.5% -> {100 * ramp_to:g}%",
                         {"name": "gateskip", "ramp_to": ramp_to, "ramp_steps": steps}))
    rows = []
    for train_name, depth in variants:
        trainer = train_small(depth, steps)
        method, x = trainer.model.depth, trainer.eval_set[0].x
        for keep in (1.0, 0.9, 0.75, 0.5, 0.25):
            for select in ("gate", "random"):
                method.cfg.keep, method.cfg.select = keep, select
                torch.manual_seed(0)
                loss = trainer.evaluate()["val_loss"]
                saved, _ = compute_saved(trainer.model.eval(), x)
                rows.append({"train": train_name, "keep": f"{100 * keep:g}%", "select": select, "val_loss": loss,
                             "saved": saved})
    print(f"\n## GateSkip after {steps} steps (4 layers, d 128, synthetic corpus): loss vs compute saved\n")
    print(f"Machine: {machine_description()}\n")
    print(markdown_table(rows, [("train", "training", "{}"), ("keep", "tokens kept per branch", "{}"),
                                ("select", "skipped tokens", "{}"), ("val_loss", "val loss", "{:.4f}"),
                                ("saved", "eval compute saved", "{:.1%}")]))


EXIT_SWEEPS = {  # method -> [(confidence or None, thresholds)]
    "calm": [("margin", (2.0, 0.9, 0.7, 0.5, 0.3, 0.1)), ("max_prob", (2.0, 0.9, 0.7, 0.5, 0.3, 0.1)),
             ("saturation", (0.999, 0.99, 0.98, 0.95, 0.9))],
    "learned_exit": [(None, (2.0, 0.9, 0.7, 0.5, 0.3))],
}


def exit_sweep(steps: int, method: str = "calm", n_layer: int = 4, n_seq: int = 4) -> None:
    """Early exit (CALM confidences or JEI-DNN-style learned gates): train with exit losses,
    then decode the first `n_seq` eval sequences teacher-forced through the KV cache at
    several thresholds; loss vs fraction of blocks run and compute saved (exit heads, gates
    and KV fills counted; METHODS.md §8 claim 16)."""
    import torch.nn.functional as F

    from gatelab.depth import decode_saved

    trainer = train_small({"name": method}, steps, n_layer)
    model, batch = trainer.model.eval(), trainer.eval_set[0]
    x, y = batch.x[:n_seq], batch.y[:n_seq]
    rows = []
    for confidence, thresholds in EXIT_SWEEPS[method]:
        for threshold in thresholds:
            model.depth.cfg.threshold = threshold
            if confidence is not None:
                model.depth.cfg.confidence = confidence
            label = confidence or "learned gate"
            saved, logits, stats = decode_saved(model, x)
            loss = float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
            rows.append({"confidence": label, "threshold": "never" if threshold > 1 else f"{threshold:g}",
                         "loss": loss, "blocks": stats["exit/blocks_run"], "saved": saved})
            print(f"  {label} {threshold}: loss {loss:.4f}, blocks run {stats['exit/blocks_run']:.3f}, "
                  f"saved {saved:.1%}", flush=True)
    print(f"\n## Early exit ({method}) after {steps} steps ({n_layer} layers, d 128, synthetic corpus): "
          f"teacher-forced decoding of {n_seq} x {x.shape[1]} eval tokens\n")
    print(f"Machine: {machine_description()}\n")
    print(markdown_table(rows, [("confidence", "confidence", "{}"), ("threshold", "threshold", "{}"),
                                ("loss", "loss", "{:.4f}"), ("blocks", "blocks run / token", "{:.1%}"),
                                ("saved", "decode compute saved (heads, KV fill counted)", "{:.1%}")]))


def exit_decode_timing(args) -> None:
    """Wall-clock of cached teacher-forced decoding with CALM at its two extremes (no token
    exits: the exit heads are pure overhead; every token exits after block 0: the other
    blocks only fill their KV cache) divided by the dense model's cached decoding."""
    from gatelab.depth import decode_saved, decode_stepwise

    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.batch, args.seq))
    dense = build(args, {"name": "none"}).eval()
    rows = []
    for name, spec in [("never exits", {"name": "calm", "threshold": 2.0}),
                       ("all exit after block 0", {"name": "calm", "confidence": "max_prob", "threshold": 1e-9})]:
        model = build(args, spec).eval()
        saved, _, stats = decode_saved(model, x)
        ratio = paired_ratio(lambda: decode_stepwise(model, x), lambda: decode_stepwise(dense, x), args.repeats)
        rows.append({"case": name, "blocks": stats["exit/blocks_run"], "saved": saved, "time": ratio,
                     "ratio": (1 - ratio) / saved if saved > 0 else None})
    print(f"\n## CALM cached decoding / dense cached decoding (d {args.d_model}, {args.n_layer} layers, batch "
          f"{args.batch}, {args.seq} tokens, {torch.get_num_threads()} threads)\n")
    print(f"Machine: {machine_description()}\n")
    print(markdown_table(rows, [("case", "case", "{}"), ("blocks", "blocks run / token", "{:.1%}"),
                                ("saved", "FLOP saving", "{:.1%}"), ("time", "time / dense", "{:.3f}"),
                                ("ratio", "time saving / FLOP saving", "{:.2f}")]))


def skip_middle_vs_shallower(steps: int, sparsities: tuple[float, ...] = (0.05,)) -> None:
    """6-layer skip-middle models vs dense models of 4, 5, 6 layers (METHODS.md §8 claim 13):
    val loss against executed eval FLOPs per token."""
    runs = [(f"dense {n} layers", {"name": "none"}, n) for n in (4, 5, 6)]
    runs += [(f"skip-middle 6 layers, λ {lam:g}", {"name": "skip_middle", "sparsity": lam}, 6) for lam in sparsities]
    rows = []
    for name, depth, n_layer in runs:
        trainer = train_small(depth, steps, n_layer)
        x = trainer.eval_set[0].x
        loss = trainer.evaluate()["val_loss"]
        saved, executed = compute_saved(trainer.model.eval(), x)
        rows.append({"model": name, "val_loss": loss, "flops": executed / x.numel(), "saved": saved})
        print(f"  {name}: val loss {loss:.4f}, {executed / x.numel():,.0f} FLOPs/token, saved {saved:.1%}", flush=True)
    print(f"\n## Skip-middle vs shallower dense after {steps} steps (d 128, synthetic corpus)\n")
    print(f"Machine: {machine_description()}\n")
    print(markdown_table(rows, [("model", "model", "{}"), ("val_loss", "val loss", "{:.4f}"),
                                ("flops", "eval fwd FLOPs/token", "{:,.0f}"),
                                ("saved", "saved vs its own dense depth", "{:.1%}")]))


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
    ap.add_argument("--ramp", type=float, default=0.0, help="with --curve: also train with the skip ramp to this fraction")
    ap.add_argument("--calm", type=int, default=0, metavar="STEPS", help="CALM threshold sweep instead")
    ap.add_argument("--learned-exit", type=int, default=0, metavar="STEPS", help="learned-exit threshold sweep instead")
    ap.add_argument("--exit-timing", action="store_true", help="CALM cached-decoding wall-clock instead")
    ap.add_argument("--skip-middle", type=int, default=0, metavar="STEPS", help="skip-middle vs shallower dense instead")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.curve:
        gateskip_curve(args.curve, args.ramp)
        return
    if args.calm:
        exit_sweep(args.calm, "calm")
        return
    if args.learned_exit:
        exit_sweep(args.learned_exit, "learned_exit")
        return
    if args.exit_timing:
        exit_decode_timing(args)
        return
    if args.skip_middle:
        skip_middle_vs_shallower(args.skip_middle)
        return
    if args.quick:
        args.d_model, args.n_layer, args.batch, args.seq, args.new, args.repeats = 64, 2, 2, 64, 4, 2
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
