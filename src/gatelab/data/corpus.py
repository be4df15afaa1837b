"""The corpus interface and `build_data`.

A corpus is a class registered under kind ``"corpus"`` with a nested ``Config``
dataclass (its options) and a ``load(data_cfg) -> DataBundle`` method. Text corpora
subclass `TextCorpus` and only implement ``documents(val_fraction) -> Documents``; the
base class trains/loads the tokenizer on the training documents and joins each split's
documents with the end-of-text id. The pre-tokenized ``tokens`` corpus implements
``load`` itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import DataError
from .batches import Batch, RandomWindowSampler, TokenSplit, eval_batches
from .tokenizers import Tokenizer, build_tokenizer

if TYPE_CHECKING:
    from .config import DataConfig


@dataclass
class Documents:
    """A corpus as text: train/val documents and, for labelled corpora, one domain id per document."""

    train: list[str]
    val: list[str]
    train_domains: list[int] | None = None
    val_domains: list[int] | None = None
    domain_names: tuple[str, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataBundle:
    """Everything a run needs from the data: tokenizer, token splits, domain names, statistics."""

    tokenizer: Tokenizer
    train: TokenSplit
    val: TokenSplit
    domain_names: tuple[str, ...] | None
    info: dict[str, Any]
    cfg: DataConfig | None = None

    def train_sampler(self, device: Any = None) -> RandomWindowSampler:
        """The training sampler with the config's seq_len, batch_size and seed."""
        c = self._cfg()
        return RandomWindowSampler(self.train, c.seq_len, c.batch_size, c.seed, device)

    def eval_batches(self, n_batches: int | None, device: Any = None) -> list[Batch]:
        """Fixed validation batches (see `eval_batches`)."""
        c = self._cfg()
        return eval_batches(self.val, c.seq_len, c.batch_size, n_batches, device)

    def _cfg(self) -> DataConfig:
        if self.cfg is None:
            raise ValueError("this DataBundle has no DataConfig; use RandomWindowSampler / eval_batches directly")
        return self.cfg


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def encode_documents(tokenizer: Tokenizer, texts: list[str], domains: list[int] | None = None) -> TokenSplit:
    """Tokenize `texts` and join them with the end-of-text id; each EOT carries the domain of the document it ends."""
    if not texts:
        raise DataError("a split has no documents; use more data or another val_fraction")
    encoded = tokenizer.encode_batch(texts)
    flat: list[int] = []
    for ids in encoded:
        flat.extend(ids)
        flat.append(tokenizer.eot_id)
    flat.pop()
    tokens = np.array(flat, dtype=token_dtype(tokenizer.vocab_size))
    dom = None
    if domains is not None:
        lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
        dom = np.repeat(np.asarray(domains, dtype=np.uint8), lengths)[:-1]
    return TokenSplit(tokens, dom, len(texts))


def val_indices(n_docs: int, val_fraction: float, what: str) -> list[int]:
    """Indices of the round(n*f) validation documents, evenly spaced over the corpus."""
    n_val = round(n_docs * val_fraction)
    if n_val < 1 or n_val >= n_docs:
        raise DataError(
            f"{what} has {n_docs} document(s): too few for val_fraction={val_fraction} to leave documents "
            "in both train and val; add documents or change data.val_fraction"
        )
    return [int((j + 0.5) * n_docs / n_val) for j in range(n_val)]


def split_documents(texts: list[str], val_fraction: float, what: str, domains: list[int] | None = None,
                    domain_names: tuple[str, ...] | None = None) -> Documents:
    """Deterministic train/val split by document index (every ~1/f-th document is validation)."""
    is_val = np.zeros(len(texts), dtype=bool)
    is_val[val_indices(len(texts), val_fraction, what)] = True

    def pick(seq: list, v: bool) -> list:
        return [s for s, flag in zip(seq, is_val) if flag == v]

    return Documents(
        pick(texts, False), pick(texts, True),
        None if domains is None else pick(domains, False),
        None if domains is None else pick(domains, True),
        domain_names,
    )


def split_stream(text: str, val_fraction: float, what: str) -> Documents:
    """nanoGPT-style split of one stream: the first 1-f of the characters train, the rest validate."""
    cut = int(len(text) * (1.0 - val_fraction))
    if cut == 0 or cut == len(text):
        raise DataError(f"{what} has {len(text)} characters: too few to split with val_fraction={val_fraction}")
    return Documents([text[:cut]], [text[cut:]])


class Corpus:
    """Base of registered corpora: ``Config`` holds the options, `load` builds the bundle."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def load(self, data_cfg: DataConfig) -> DataBundle:
        raise NotImplementedError


class TextCorpus(Corpus):
    """A corpus given as text documents; `load` tokenizes them."""

    def documents(self, val_fraction: float) -> Documents:
        raise NotImplementedError

    def load(self, data_cfg: DataConfig) -> DataBundle:
        t0 = time.perf_counter()
        docs = self.documents(data_cfg.val_fraction)
        tokenizer = build_tokenizer(data_cfg.tokenizer, docs.train)
        train = encode_documents(tokenizer, docs.train, docs.train_domains)
        val = encode_documents(tokenizer, docs.val, docs.val_domains)
        info = {
            "corpus": data_cfg.corpus.name,
            "tokenizer": tokenizer.config(),
            "train_docs": train.n_docs,
            "val_docs": val.n_docs,
            "train_bytes": sum(len(t.encode("utf-8")) for t in docs.train),
            "val_bytes": sum(len(t.encode("utf-8")) for t in docs.val),
            "train_tokens": len(train),
            "val_tokens": len(val),
            **docs.info,
        }
        if docs.domain_names is not None:
            info["domain_token_shares"] = domain_shares(train, docs.domain_names)
        info["build_seconds"] = round(time.perf_counter() - t0, 4)
        return DataBundle(tokenizer, train, val, docs.domain_names, info, data_cfg)


def domain_shares(split: TokenSplit, names: tuple[str, ...]) -> dict[str, float]:
    """Fraction of the split's tokens in each domain."""
    counts = np.bincount(np.asarray(split.domains), minlength=len(names))
    return {name: round(float(c) / max(len(split), 1), 4) for name, c in zip(names, counts)}


def build_data(cfg: DataConfig) -> DataBundle:
    """Load the configured corpus and tokenizer into train/val token splits."""
    corpus = cfg.corpus.cls(cfg.corpus.options)
    return corpus.load(cfg)
