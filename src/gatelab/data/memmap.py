"""Pre-tokenized corpora: `prepare` writes them, the ``tokens`` corpus memory-maps them.

A prepared directory holds::

    train.bin, val.bin                  uint16 token ids, documents joined by <|endoftext|>
    train_domains.bin, val_domains.bin  uint8 domain id per token (labelled corpora only)
    tokenizer_config.json [+ tokenizer.json for BPE]
    meta.json                           written last: tokenizer, vocab size, document and
                                        token counts, sha256 of every .bin, gatelab version,
                                        domain names, the data config it came from

Loading checks the sidecar and every file's size always, the sha256 hashes only with
``verify: true`` (they read every byte), and that the configured tokenizer is the one the
tokens were made with.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.config import Component, check, to_dict
from ..core.errors import DataError
from ..core.files import atomic_write_text
from ..core.registry import register
from .batches import TokenSplit
from .config import DataConfig
from .corpus import Corpus, DataBundle, build_data, domain_shares
from .tokenizers import build_tokenizer

META_FILE = "meta.json"
FORMAT = "gatelab-tokens"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
_TOKEN_DTYPE = np.dtype("<u2")
_DOMAIN_DTYPE = np.dtype("u1")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_array(arr: np.ndarray, path: Path) -> str:
    """Write `arr` raw to `path` (via a temporary file and rename); its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    arr.tofile(tmp)
    os.replace(tmp, path)
    return _sha256(path)


def prepare(data_cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Tokenize the configured corpus into `out_dir` (see the module docstring); the sidecar dict."""
    if data_cfg.corpus.name == "tokens":
        raise DataError("data.corpus is already 'tokens' (pre-tokenized); prepare a text corpus instead")
    return write_prepared(build_data(data_cfg), out_dir, to_dict(data_cfg))


def write_prepared(bundle: DataBundle, out_dir: str | Path, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `bundle`'s splits, tokenizer and ``meta.json`` to `out_dir`; the sidecar dict."""
    tok = bundle.tokenizer
    if tok.vocab_size > 1 << 16:
        raise DataError(
            f"vocab_size {tok.vocab_size} does not fit the uint16 .bin format (at most 65536 ids; uint32 is "
            "not supported); use a smaller tokenizer.vocab_size"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # a directory without meta.json is incomplete
    tok.save(out)
    counts: dict[str, int] = {}
    files: dict[str, Any] = {}
    for name, split in zip(SPLITS, (bundle.train, bundle.val)):
        counts.update({f"{name}_tokens": len(split), f"{name}_docs": split.n_docs})
        entry: dict[str, Any] = {"file": f"{name}.bin"}
        entry["sha256"] = _write_array(np.asarray(split.tokens, dtype=_TOKEN_DTYPE), out / entry["file"])
        if split.domains is not None:
            entry["domains_file"] = f"{name}_domains.bin"
            entry["domains_sha256"] = _write_array(np.asarray(split.domains, dtype=_DOMAIN_DTYPE), out / entry["domains_file"])
        files[name] = entry
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gatelab_version": __version__,
        "dtype": "uint16",
        "tokenizer": tok.config(),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "domain_names": None if bundle.domain_names is None else list(bundle.domain_names),
        **counts,
        "files": files,
        "source": source,
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(directory: Path) -> dict[str, Any]:
    """The checked ``meta.json`` of a prepared directory."""
    path = directory / META_FILE
    if not directory.is_dir():
        raise DataError(f"tokens directory {str(directory)!r} does not exist; create it with gatelab prepare")
    if not path.is_file():
        raise DataError(f"{str(directory)!r} has no {META_FILE}; it is not (completely) prepared: run gatelab prepare again")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        ok = (
            meta["format"] == FORMAT
            and all(isinstance(meta[f"{s}_tokens"], int) and "file" in meta["files"][s] for s in SPLITS)
            and isinstance(meta["tokenizer"], dict)
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(f"{str(path)!r} is corrupt or not a gatelab {META_FILE}; run gatelab prepare again")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{str(path)!r} has format_version {meta.get('format_version')!r}, this gatelab reads {FORMAT_VERSION}; run gatelab prepare again")
    if meta.get("dtype") != "uint16":
        raise DataError(f"{str(path)!r} declares dtype {meta.get('dtype')!r}; gatelab reads uint16 tokens only: run gatelab prepare again")
    return meta


def _open(directory: Path, file: str, n: int, dtype: np.dtype, digest: str | None) -> np.ndarray:
    """Memory-map `file` as `n` items of `dtype`, checking its size (and sha256 when `digest`)."""
    path = directory / file
    if not path.is_file():
        raise DataError(f"{str(path)!r} is missing; run gatelab prepare again")
    size = path.stat().st_size
    if size != n * dtype.itemsize:
        per = f"; it holds {size // n}-byte items, gatelab reads {dtype.itemsize}-byte {dtype.name}" if n and size % n == 0 else ""
        raise DataError(
            f"{str(path)!r} has {size} bytes but {META_FILE} says {n} {dtype.name} items ({n * dtype.itemsize} bytes){per}; "
            "run gatelab prepare again"
        )
    if digest is not None and _sha256(path) != digest:
        raise DataError(f"{str(path)!r} does not match the sha256 in {META_FILE} (corrupt or modified); run gatelab prepare again")
    if n == 0:
        raise DataError(f"{str(path)!r} holds no tokens; prepare a larger corpus")
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def _mismatch(have: str, directory: Path, want: dict[str, Any]) -> DataError:
    return DataError(
        f"data.tokenizer ({have}) is not the tokenizer {str(directory)!r} was prepared with "
        f"({want.get('name')}, vocab {want.get('vocab_size')}); use that tokenizer "
        "(BPE: leave tokenizer.path empty to use the directory's) or prepare again"
    )


@register("corpus", "tokens")
class TokensCorpus(Corpus):
    """A directory written by `gatelab prepare` (uint16 memmaps + meta.json); its splits are fixed."""

    @dataclass
    class Config:
        path: str = ""  # the directory gatelab prepare wrote
        verify: bool = False  # also check each file's sha256 (reads every byte)

        def validate(self) -> None:
            check(bool(self.path), "path", self.path, "a directory written by gatelab prepare")

    def load(self, data_cfg: DataConfig) -> DataBundle:
        d = Path(self.cfg.path).expanduser()
        meta = read_meta(d)
        want = meta["tokenizer"]
        spec = data_cfg.tokenizer
        if spec.name != want.get("name"):
            raise _mismatch(spec.name, d, want)
        if getattr(spec.options, "path", None) == "":  # e.g. BPE: the one saved beside the tokens
            spec = Component(spec.kind, spec.name, dataclasses.replace(spec.options, path=str(d)))
        tokenizer = build_tokenizer(spec)
        if tokenizer.config() != want:
            raise _mismatch(f"{tokenizer.name}, vocab {tokenizer.vocab_size}", d, want)
        names = meta.get("domain_names")
        names = tuple(names) if names else None
        splits = []
        for s in SPLITS:
            e, n, verify = meta["files"][s], meta[f"{s}_tokens"], self.cfg.verify
            tokens = _open(d, e["file"], n, _TOKEN_DTYPE, e.get("sha256") if verify else None)
            domains = None
            if names is not None and "domains_file" in e:
                domains = _open(d, e["domains_file"], n, _DOMAIN_DTYPE, e.get("domains_sha256") if verify else None)
            splits.append(TokenSplit(tokens, domains, int(meta.get(f"{s}_docs", 1))))
        train, val = splits
        info = {
            "corpus": "tokens",
            "path": str(d),
            "tokenizer": want,
            "train_docs": train.n_docs,
            "val_docs": val.n_docs,
            "train_tokens": len(train),
            "val_tokens": len(val),
            "val_fraction": "unused: splits fixed by gatelab prepare",
            "source": meta.get("source"),
        }
        if names is not None and train.domains is not None:
            info["domain_token_shares"] = domain_shares(train, names)
        return DataBundle(tokenizer, train, val, names, info, data_cfg)
