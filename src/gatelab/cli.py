"""The `gatelab` command line: train | eval | generate | prepare | compare.

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
    "schedule, train, eval, log. Use --print-config to see every key with its resolved value."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise SystemExit(_fail(f"{self.prog}: {message}", 2))


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

    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    out = Path(args.out or f"runs/{cfg.name}")
    trainer = Trainer(cfg, out)
    print(f"training {cfg.name}: {trainer.model.num_params(non_embedding=False):,} params on {trainer.device} -> {out}")
    result = trainer.fit(resume=args.resume)
    f = result.final
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


_COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "generate": _cmd_generate,
             "prepare": _cmd_prepare, "compare": _cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
