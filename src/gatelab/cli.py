"""The `gatelab` command line: train | eval | generate | prepare | compare | sweep | runs | report | claims.

Any config key can be overridden with a dotted option after the command's own options:
``gatelab train --model.n_layer 4 --optim.lr 1e-3``. Bad arguments and bad configs
exit with code 2 and a one-line message.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core.errors import ConfigError, GatelabError

OVERRIDES_HELP = (
    "Any config key may follow as a dotted override, e.g. --model.d_model 256 --optim.lr 1e-3 "
    "--model.block.ffn.name gelu --data.corpus.name shakespeare. Sections: model, data, optim, "
    "schedule, train, eval, log, parallel. Use --print-config to see every key with its resolved value."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise SystemExit(_fail(f"{self.prog}: {message}", 2))

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """Dotted overrides (``--a.b VALUE``) are set aside before parsing, so that their values
        are never taken for positional arguments (``gatelab claims --train.steps 3 gateskip``)."""
        tokens = sys.argv[1:] if args is None else list(args)
        dotted, rest, i = [], [], 0
        while i < len(tokens):
            tok = tokens[i]
            if tok.startswith("--") and "." in tok.split("=", 1)[0]:
                take = 1 if "=" in tok or i + 1 >= len(tokens) else 2
                dotted += tokens[i:i + take]
                i += take
            else:
                rest.append(tok)
                i += 1
        ns, extras = super().parse_known_args(rest, namespace)
        return ns, extras + dotted


def _fail(msg: str, code: int) -> int:
    print(f"gatelab: error: {msg}", file=sys.stderr)
    return code


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """['--model.n_layer', '4', '--optim.lr=1e-3'] -> [('model.n_layer', '4'), ('optim.lr', '1e-3')]."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok.split("=", 1)[0]:
            raise ConfigError(f"unrecognized argument {tok!r}; config overrides look like --section.key VALUE")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override {tok} needs a value")
            key, value = tok[2:], tokens[i + 1]
            i += 2
        out.append((key, value))
    return out


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="YAML", help="run config file (defaults apply to missing keys)")
    p.add_argument("--print-config", action="store_true", help="print the fully resolved config and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gatelab", description="gatelab: adaptive gating and conditional computation lab.",
                     epilog=OVERRIDES_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train a model from a config", epilog=OVERRIDES_HELP)
    _add_config_args(p)
    p.add_argument("--out", "-o", default=None, metavar="DIR", help="run directory (default: runs/<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in the run directory, exactly as if never stopped")

    p = sub.add_parser("eval", help="validation loss of a trained run", epilog=OVERRIDES_HELP)
    p.add_argument("run", metavar="RUN_DIR", help="run directory written by `gatelab train`")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory (default: the newest in the run)")
    p.add_argument("--batches", type=int, default=None, help="validation batches (default: the run's eval.batches)")

    p = sub.add_parser("generate", help="sample text from a trained run")
    p.add_argument("run", metavar="RUN_DIR", help="run directory written by `gatelab train`")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to sample (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute the full sequence each step (reference path)")

    p = sub.add_parser("prepare", help="tokenize a corpus into uint16 .bin files + meta.json", epilog=OVERRIDES_HELP)
    _add_config_args(p)
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory for train.bin/val.bin/meta.json")

    p = sub.add_parser("compare", help="train several variants and print a results table (the README's main job)",
                       epilog=OVERRIDES_HELP + " Overrides apply to every variant.")
    p.add_argument("experiment", nargs="?", default=None, metavar="EXPERIMENT_YAML",
                   help="experiment file with `base` and `variants` (default: the built-in dense comparison)")
    p.add_argument("--out", "-o", default="reports/compare", metavar="DIR", help="report directory (default reports/compare)")
    p.add_argument("--print-config", action="store_true", help="print every variant's resolved config and exit")

    p = sub.add_parser("report", help="HTML + Markdown report with figures over runs (train/compare/sweep dirs)")
    p.add_argument("runs", nargs="+", metavar="RUNS",
                   help="run directories, or directories holding runs at any depth (a sweep or compare --out)")
    p.add_argument("--out", "-o", default="reports/report", metavar="DIR", help="report directory (default reports/report)")
    p.add_argument("--no-analysis", action="store_true",
                   help="skip the checkpoint analysis (per-layer expert load, MI, sink share, depth); metrics only")
    p.add_argument("--best-over", action="append", default=[], metavar="KEY",
                   help="a sweep grid key (e.g. optim.lr; repeat for several): show each variant at its best setting")

    p = sub.add_parser("sweep", help="run a sweep (variants x grid x seeds); skips finished runs, resumes the rest",
                       epilog=OVERRIDES_HELP + " Overrides apply to every run.")
    p.add_argument("sweep", metavar="SWEEP_YAML", help="sweep file: base, variants, grid, seeds, best_over")
    p.add_argument("--out", "-o", default=None, metavar="DIR", help="sweep directory (default: runs/<name>)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--print-runs", action="store_true", help="print the expanded run ids and exit")

    p = sub.add_parser("runs", help="query the runs of sweeps: list | show | compare")
    runs = p.add_subparsers(dest="runs_command", metavar="ACTION", parser_class=_Parser, required=True)
    filters_help = "filters KEY=VALUE, KEY!=VALUE, KEY<NUMBER (<= > >= too), e.g. variant=moe seed=1 'val_loss<2'"
    q = runs.add_parser("list", help="list runs matching filters")
    q.add_argument("filters", nargs="*", metavar="FILTER", help=filters_help)
    q.add_argument("--root", default="runs", metavar="DIR", help="directory searched for run.json (default runs)")
    q = runs.add_parser("show", help="print one run's record")
    q.add_argument("run_id", metavar="RUN_ID", help="run id (SWEEP/RUN_ID when several sweeps share it)")
    q.add_argument("--root", default="runs", metavar="DIR", help="directory searched for run.json (default runs)")
    q = runs.add_parser("compare", help="per-variant mean +/- std over seeds at the best setting, Welch test")
    q.add_argument("filters", nargs="*", metavar="FILTER", help=filters_help)
    q.add_argument("--root", default="runs", metavar="DIR", help="directory searched for run.json (default runs)")
    q.add_argument("--by", default="variant", help="key to group runs by (default variant)")
    q.add_argument("--metric", default="val_loss", help="summary key, lower is better (default val_loss)")
    q.add_argument("--best-over", nargs="*", default=None, metavar="KEY",
                   help="keys to take the best setting over (default: the sweeps' best_over)")
    q.add_argument("--baseline", default=None, metavar="VALUE",
                   help="test each group against this one (one-sided Welch: lower than baseline)")

    p = sub.add_parser("convert", help="pretrained model (HF dir, .gguf, gatelab run) -> Hugging Face directory")
    p.add_argument("source", metavar="SOURCE", help="HF model directory, .gguf file or gatelab run/checkpoint directory")
    p.add_argument("out", nargs="?", default=None, metavar="OUT_DIR", help="Hugging Face directory to write")
    p.add_argument("--model-type", default=None, help="llama | qwen2 | mixtral | qwen2_moe (default: what fits)")
    p.add_argument("--print-config", action="store_true",
                   help="print the gatelab model config of SOURCE (for train.init_from) and exit")

    p = sub.add_parser("claims", help="small-scale reproductions of published claims: table of verdicts and p-values",
                       epilog=OVERRIDES_HELP + " Overrides apply to every run and are stated in the report "
                              "(they change the claims' fixed budget).")
    p.add_argument("names", nargs="*", metavar="NAME", help="claims to run (default: all; see --list)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per setting (default 3)")
    p.add_argument("--out", "-o", default="reports/claims", metavar="DIR",
                   help="report + runs directory (default reports/claims); re-running resumes")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes per claim (default 1)")
    p.add_argument("--list", action="store_true", help="list the claims with their settings and exit")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: report on the runs already under --out (incomplete claims are labelled)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        overrides = parse_overrides(rest)
        return _COMMANDS[args.command](args, overrides)
    except ConfigError as e:
        return _fail(str(e), 2)
    except GatelabError as e:
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _cmd_train(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from .config import load_config
    from .core.config import dump_yaml
    from .train import Trainer
    from .train.distributed import shutdown

    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    out = Path(args.out or f"runs/{cfg.name}")
    trainer = Trainer(cfg, out)  # under torchrun: one rank of a data / expert parallel job; rank 0 prints
    main, ranks = trainer.dist.is_main, f" x {trainer.dist.world} ranks" if trainer.dist.active else ""
    if main:
        print(f"training {cfg.name}: {trainer.model.num_params(non_embedding=False):,} params on "
              f"{trainer.device}{ranks} -> {out}")
    try:
        result = trainer.fit(resume=args.resume)
    finally:
        shutdown(trainer.dist)
    f = result.final
    if main:
        print(f"step {result.step}: train loss {result.losses[-1] if result.losses else float('nan'):.4f}, "
              f"val loss {f.get('val_loss', float('nan')):.4f}; checkpoint {trainer.last_ckpt}")
    return 0


def _load_run(run: str, checkpoint: str | None):
    from .config import load_config
    from .train import Trainer, list_checkpoints

    cfg_path = Path(run) / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run!r} is not a run directory (no config.yaml); pass the --out of `gatelab train`")
    cfg = load_config(str(cfg_path))
    trainer = Trainer(cfg, run)
    ckpt = checkpoint or (list_checkpoints(trainer.ckpt_root) or [None])[-1]
    if ckpt is None:
        raise ConfigError(f"run {run!r} has no checkpoint yet; train it first")
    trainer.load(ckpt)
    return trainer


def _cmd_eval(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    trainer = _load_run(args.run, args.checkpoint)
    if args.batches is not None:
        from .data import eval_batches

        if args.batches < 1:
            raise ConfigError(f"--batches must be >= 1, got {args.batches}")
        c = trainer.cfg.data
        trainer.eval_set = eval_batches(trainer.data.val, c.seq_len, c.batch_size, args.batches)
    res = trainer.evaluate()
    for k, v in res.items():
        print(f"{k}\t{v:.4f}")
    return 0


def _cmd_generate(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    import torch

    if args.max_new_tokens < 0 or args.temperature < 0 or (args.top_k is not None and args.top_k < 1):
        raise ConfigError("--max-new-tokens and --temperature must be >= 0 and --top-k >= 1")
    from .data import load_tokenizer

    trainer = _load_run(args.run, None)
    tok = load_tokenizer(args.run)
    ids = tok.encode(args.prompt) if args.prompt else [tok.eot_id]
    idx = torch.tensor([ids], device=trainer.device)
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    out = trainer.model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                 use_cache=not args.no_cache, generator=gen)
    print(tok.decode(out[0].tolist()))
    return 0


def _cmd_prepare(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from .config import load_config
    from .core.config import dump_yaml
    from .data import prepare

    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg.data), end="")
        return 0
    meta = prepare(cfg.data, args.out)
    print(f"wrote {args.out}: {meta.get('train_tokens', '?')} train / {meta.get('val_tokens', '?')} val tokens")
    return 0


def _cmd_compare(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from .core.config import dump_yaml
    from .lab import load_experiment, resolve_variants, results_table, run_compare

    exp = load_experiment(args.experiment)
    if args.print_config:
        for name, cfg in resolve_variants(exp, overrides).items():
            print(f"# --- {name}\n{dump_yaml(cfg)}")
        return 0
    rows = run_compare(exp, args.out, overrides)
    print()
    print(results_table(rows))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_report(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from .lab import make_report

    if overrides:
        raise ConfigError(f"unrecognized arguments {' '.join(t for kv in overrides for t in kv)!r} for report")
    report = make_report(args.runs, args.out, analyse=not args.no_analysis, best_over=args.best_over)
    for w in report.warnings:
        print(f"gatelab: warning: {w}", file=sys.stderr)
    n_runs = sum(len(v.runs) for v in report.variants)
    print(f"{n_runs} runs, {len(report.variants)} variants, {len(report.figures)} figures")
    print(f"report: {report.html_path}\n        {report.md_path}")
    return 0


def _cmd_sweep(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from .lab import compare_runs, compare_table, expand, load_sweep, run_sweep

    spec = load_sweep(args.sweep)
    if args.print_runs:
        for run in expand(spec, overrides):
            print(run.run_id)
        return 0
    out = Path(args.out or f"runs/{spec.name}")
    records = run_sweep(spec, out, workers=args.workers, overrides=overrides)
    failed = [r["run_id"] for r in records if r["status"] != "finished"]
    if len(failed) < len(records):
        print()
        print(compare_table(compare_runs(records, over=spec.best_over)))
    print(f"\nruns: {out / 'runs'}")
    if failed:
        return _fail(f"{len(failed)} of {len(records)} runs failed ({', '.join(failed[:3])}"
                     f"{', ...' if len(failed) > 3 else ''}); see their run.json and error.log", 1)
    return 0


def _cmd_runs(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    import json

    from .lab import RunIndex, compare_runs, compare_table, parse_filters, sweep_best_over
    from .lab.table import markdown_table

    if overrides:
        raise ConfigError(f"unrecognized arguments {' '.join(t for kv in overrides for t in kv)!r} for runs")
    with RunIndex(args.root) as index:
        index.refresh()
        if args.runs_command == "show":
            print(json.dumps(index.get(args.run_id), indent=2))
            return 0
        records = index.query(parse_filters(args.filters))
        if args.runs_command == "list":
            rows = [{**r, "val_loss": (r.get("summary") or {}).get("val_loss")} for r in records]
            cols = [("sweep", "sweep", "{}"), ("run_id", "run id", "{}"), ("status", "status", "{}"),
                    ("val_loss", "val loss", "{:.4f}"), ("wall_s", "wall s", "{:.1f}")]
            print(markdown_table(rows, cols))
            return 0
        over = sweep_best_over(records, args.root) if args.best_over is None else args.best_over
        rows = compare_runs(records, by=args.by, metric=args.metric, over=over, baseline=args.baseline)
        print(compare_table(rows, by=args.by, metric=args.metric, baseline=args.baseline))
        return 0


def _cmd_claims(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from .lab.claims import results_table, run_claims, select

    if args.list:
        for c in select(args.names):
            print(f"{c.name:16} [{c.number}] {c.title}: {c.setting}")
        return 0
    results = run_claims(args.names, args.out, seeds=args.seeds, workers=args.workers, overrides=overrides,
                         train=not args.no_train)
    print()
    print(results_table(results))
    print(f"\nreport: {Path(args.out) / 'claims.md'}")
    failed = sum(len(r.failed) for r in results)
    if failed:
        return _fail(f"{failed} runs failed; their claims are evaluated without them (see claims.md)", 1)
    return 0


def _cmd_convert(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from .core.config import dump_yaml
    from .hf import export_hf, load_pretrained

    model = load_pretrained(args.source)
    if args.print_config:
        print(dump_yaml({"model": model.cfg}), end="")
        return 0
    if args.out is None:
        raise ConfigError("convert needs OUT_DIR (or --print-config)")
    out = export_hf(model, args.out, args.model_type)
    print(f"wrote {out}: {model.num_params(non_embedding=False):,} params")
    return 0


_COMMANDS = {"convert": _cmd_convert, "train": _cmd_train, "eval": _cmd_eval, "generate": _cmd_generate,
             "prepare": _cmd_prepare, "compare": _cmd_compare, "sweep": _cmd_sweep, "runs": _cmd_runs,
             "report": _cmd_report, "claims": _cmd_claims}

if __name__ == "__main__":
    sys.exit(main())
