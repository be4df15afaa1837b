"""The data section of a run's config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.config import ConfigBase, check, component


@dataclass
class DataConfig(ConfigBase):
    corpus: Any = component("corpus", "synthetic")  # which corpus, and its options
    tokenizer: Any = component("tokenizer", "byte")  # which tokenizer, and its options
    seq_len: int = 128  # tokens per training window (the model's context)
    batch_size: int = 16  # windows per batch
    val_fraction: float = 0.1  # share of the documents (or of the stream) held out for validation
    seed: int = 0  # seed of the random batch windows

    def validate(self) -> None:
        check(self.seq_len >= 1, "seq_len", self.seq_len, "an integer >= 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a number strictly between 0 and 1")
