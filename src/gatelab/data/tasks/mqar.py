"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology: Measuring and Improving
Recall in Efficient Language Models", §3), the zoology layout:

    k1 v1 k2 v2 ... kP vP  0 0 k3 v3 0 0 0 0 k1 v1 ...
    |---- P key-value pairs ---| |----- P queries at random even offsets -----|

Keys are distinct ids from [1, V/2), values ids from [V/2, V); each key is queried once, in a
random order. Only the token after a queried key is scored (target = its value, -100
elsewhere), so a model must store every pair and retrieve by content; accuracy is the
exact-match rate over queries. `train_mqar` trains any model mapping (B, T) ids to logits
on fresh batches and reports accuracy on a fixed held-out set.

    task = MQARConfig(vocab_size=256, seq_len=128, num_kv_pairs=16)
    batch = make_mqar(task, n=64, seed=0)            # inputs (64, 128), targets (64, 128)
    result = train_mqar(model, task, steps=500, lr=1e-3)  # {"accuracy": ..., "loss": ...}
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.config import check

IGNORE = -100


@dataclass
class MQARConfig:
    vocab_size: int = 256
    seq_len: int = 128
    num_kv_pairs: int = 16

    def validate(self) -> None:
        check(self.num_kv_pairs >= 1, "num_kv_pairs", self.num_kv_pairs, "must be >= 1")
        check(self.vocab_size // 2 - 1 >= self.num_kv_pairs, "vocab_size", self.vocab_size,
              f"must give at least num_kv_pairs={self.num_kv_pairs} distinct keys in [1, vocab_size/2)")
        check(self.seq_len >= 4 * self.num_kv_pairs, "seq_len", self.seq_len,
              f"must be >= 4 * num_kv_pairs = {4 * self.num_kv_pairs} (pairs, then one query slot of 2 per pair)")


@dataclass
class MQARBatch:
    inputs: Tensor  # (N, T) token ids
    targets: Tensor  # (N, T) the value after each queried key, IGNORE elsewhere


def make_mqar(cfg: MQARConfig, n: int, seed: int) -> MQARBatch:
    """`n` MQAR sequences, a deterministic function of (cfg, n, seed)."""
    cfg.validate()
    gen = torch.Generator().manual_seed(seed)
    P, T, half = cfg.num_kv_pairs, cfg.seq_len, cfg.vocab_size // 2
    keys_NP = torch.rand(n, half - 1, generator=gen).argsort(dim=1)[:, :P] + 1
    values_NP = torch.randint(half, cfg.vocab_size, (n, P), generator=gen)
    inputs = torch.zeros(n, T, dtype=torch.long)
    targets = torch.full((n, T), IGNORE, dtype=torch.long)
    inputs[:, 0:2 * P:2], inputs[:, 1:2 * P:2] = keys_NP, values_NP
    slots = (T - 2 * P) // 2
    pos_NP = 2 * P + 2 * torch.rand(n, slots, generator=gen).argsort(dim=1)[:, :P]
    order_NP = torch.rand(n, P, generator=gen).argsort(dim=1)  # which pair each query asks for
    rows_N1 = torch.arange(n)[:, None]
    inputs[rows_N1, pos_NP] = keys_NP.gather(1, order_NP)
    inputs[rows_N1, pos_NP + 1] = values_NP.gather(1, order_NP)
    targets[rows_N1, pos_NP] = values_NP.gather(1, order_NP)
    return MQARBatch(inputs, targets)


def mqar_accuracy(logits_NTV: Tensor, targets_NT: Tensor) -> float:
    """Exact-match accuracy of the argmax prediction over the queried positions."""
    mask = targets_NT != IGNORE
    return float((logits_NTV.argmax(-1)[mask] == targets_NT[mask]).float().mean())


def _logits(model: Callable[[Tensor], object], x_NT: Tensor) -> Tensor:
    out = model(x_NT)
    return out.logits if hasattr(out, "logits") else out  # a gatelab LM returns LMOutput


def train_mqar(model: torch.nn.Module, cfg: MQARConfig, *, steps: int, lr: float = 1e-3,
               batch_size: int = 64, n_eval: int = 256, seed: int = 0, weight_decay: float = 0.1) -> dict[str, float]:
    """Train `model` (ids -> logits or an LMOutput) with AdamW and a linear decay on fresh MQAR
    batches, masked cross-entropy on the queried positions; evaluate on a fixed held-out set."""
    if steps < 1:
        raise ValueError(f"train_mqar needs steps >= 1, got {steps}")
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    model.train()
    loss = torch.zeros(())
    for step in range(steps):
        batch = make_mqar(cfg, batch_size, seed=1_000_003 * (seed + 1) + step)
        logits = _logits(model, batch.inputs.to(device))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.to(device).flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    held_out = make_mqar(cfg, n_eval, seed=-1 - seed)  # never a training seed
    model.eval()
    with torch.no_grad():
        acc = mqar_accuracy(_logits(model, held_out.inputs.to(device)), held_out.targets.to(device))
    return {"accuracy": acc, "final_train_loss": float(loss.detach())}
