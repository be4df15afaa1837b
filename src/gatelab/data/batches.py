"""Token splits and the batches drawn from them.

* `TokenSplit`: one split's token stream (documents joined by the end-of-text id) with an
  optional per-token domain id.
* `RandomWindowSampler`: random windows for training. Batch ``k`` of a sampler is a pure
  function of ``(seed, k)``, so its `state_dict` (the "data position" saved in checkpoints)
  is a few JSON-able integers, and a resumed run draws exactly the batches that an
  uninterrupted one would have drawn.
* `eval_batches`: a fixed list of evenly spaced windows over a split, the same every call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import DataError


@dataclass
class TokenSplit:
    """A 1-D token stream (uint16 in-memory array or memmap) and its per-token domain ids."""

    tokens: np.ndarray
    domains: np.ndarray | None = None  # uint8, same length as tokens
    n_docs: int = 1

    def __post_init__(self) -> None:
        if self.tokens.ndim != 1:
            raise DataError(f"token array must be 1-D, got shape {self.tokens.shape}")
        if self.domains is not None and self.domains.shape != self.tokens.shape:
            raise DataError(f"domain labels ({len(self.domains)}) and tokens ({len(self.tokens)}) differ in length")

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Batch:
    """Inputs `x` (B, T), next-token targets `y` (B, T), and the domain id of each input token."""

    x: Tensor
    y: Tensor
    domains: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.domains))


def _n_starts(split: TokenSplit, seq_len: int, what: str) -> int:
    """Number of valid window starts (a window holds seq_len + 1 tokens)."""
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    n = len(split) - seq_len
    if n < 1:
        raise DataError(
            f"seq_len={seq_len} needs windows of {seq_len + 1} tokens but the {what} split has only "
            f"{len(split)}; use a smaller data.seq_len or more data"
        )
    return n


def _gather(split: TokenSplit, starts: np.ndarray, seq_len: int, device: Any) -> Batch:
    idx = starts[:, None] + np.arange(seq_len + 1)  # (B, T+1)
    w = torch.from_numpy(np.asarray(split.tokens[idx], dtype=np.int64))
    dom = None
    if split.domains is not None:
        dom = torch.from_numpy(np.asarray(split.domains[idx[:, :-1]], dtype=np.int64))
    batch = Batch(w[:, :-1], w[:, 1:], dom)
    return batch if device is None else batch.to(device, non_blocking=True)


def _mix_seed(seed: int, k: int) -> int:
    """A 63-bit seed for batch `k` of a sampler seeded `seed` (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + k + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


class RandomWindowSampler:
    """Batches of `batch_size` random windows of `seq_len` + 1 tokens from `split`.

    The starts of batch ``k`` come from a ``torch.Generator`` seeded with a mix of
    ``(seed, k)``; `state_dict` is ``{"seed", "seq_len", "batch_size", "n_tokens",
    "batches_drawn"}`` and `load_state_dict` continues at the saved position.
    """

    def __init__(self, split: TokenSplit, seq_len: int, batch_size: int, seed: int = 0, device: Any = None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.seq_len, self.batch_size, self.seed, self.device = split, seq_len, batch_size, seed, device
        self._n_starts = _n_starts(split, seq_len, "training")
        self.batches_drawn = 0
        self._gen = torch.Generator()

    def starts(self, k: int) -> np.ndarray:
        """Window starts of batch `k` (B,)."""
        self._gen.manual_seed(_mix_seed(self.seed, k))
        return torch.randint(0, self._n_starts, (self.batch_size,), generator=self._gen).numpy()

    def next(self) -> Batch:
        batch = _gather(self.split, self.starts(self.batches_drawn), self.seq_len, self.device)
        self.batches_drawn += 1
        return batch

    __next__ = next

    def __iter__(self) -> RandomWindowSampler:
        return self

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "n_tokens": len(self.split),
            "batches_drawn": self.batches_drawn,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "batch_size", "n_tokens"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"saved data position has {key}={state.get(key)!r} but this sampler has {mine[key]!r}; "
                    "resume with the data config (and data) the checkpoint was made with"
                )
        drawn = state.get("batches_drawn")
        if not isinstance(drawn, int) or drawn < 0:
            raise DataError(f"saved data position has an invalid batches_drawn={drawn!r}")
        self.batches_drawn = drawn


def eval_batches(
    split: TokenSplit, seq_len: int, batch_size: int, n_batches: int | None = None, device: Any = None
) -> list[Batch]:
    """`n_batches` batches of evenly spaced windows spanning `split`, identical on every call.

    With ``n_batches=None`` the windows are the non-overlapping ones that fit (the last
    batch may be smaller), so the whole split is scored once.
    """
    n_starts = _n_starts(split, seq_len, "validation")
    if n_batches is None:
        starts = np.arange(0, n_starts, seq_len, dtype=np.int64)
    else:
        if n_batches < 1 or batch_size < 1:
            raise DataError(f"eval needs n_batches >= 1 and batch_size >= 1, got {n_batches} and {batch_size}")
        total = n_batches * batch_size
        starts = (np.arange(total, dtype=np.int64) * (n_starts - 1)) // max(total - 1, 1)
    return [_gather(split, starts[i : i + batch_size], seq_len, device) for i in range(0, len(starts), batch_size)]
