"""Tokenizers: a dependency-free byte tokenizer and an optional byte-level BPE.

Both follow the small `Tokenizer` protocol. Text is always encoded literally: the string
``"<|endoftext|>"`` inside a document is ordinary text, and the end-of-text id only enters
a token stream where `encode_documents` joins documents.

* ``byte``: ids 0-255 are the UTF-8 bytes, 256 is ``<|endoftext|>``, 257 is ``<|pad|>``.
* ``bpe``: HF ``tokenizers`` byte-level BPE (``pip install gatelab[hf]``), trained on the
  training split of the corpus, or loaded from a saved ``tokenizer.json`` (option ``path``).

A tokenizer's `config()` is its JSON identity (name, vocab size, special ids and, for
BPE, the sha256 of its canonical JSON); two tokenizers with equal configs encode alike.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..core.config import Component, check
from ..core.errors import DataError
from ..core.registry import get, names, register

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)
#: Written by `Tokenizer.save`; `load_tokenizer` reads it back.
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """What gatelab needs of a tokenizer. A registered one also has a nested ``Config`` and
    ``from_config(cfg, texts_for_training)``."""

    name: str
    vocab_size: int
    eot_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def config(self) -> dict[str, Any]: ...

    def save(self, directory: str | Path) -> Path: ...


def _write_config(tok: Tokenizer, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG_FILE).write_text(json.dumps(tok.config(), indent=2) + "\n", encoding="utf-8")
    return d


@register("tokenizer", "byte")
class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, plus ``<|endoftext|>`` (256) and ``<|pad|>`` (257)."""

    @dataclass
    class Config:
        pass

    name = "byte"
    eot_id = 256
    pad_id = 257
    vocab_size = 258

    @classmethod
    def from_config(cls, cfg: Config, texts_for_training: Sequence[str] | None = None) -> ByteTokenizer:
        del cfg, texts_for_training  # nothing to configure or learn
        return cls()


    @classmethod
    def from_saved(cls, directory: Path, cfg: dict[str, Any]) -> ByteTokenizer:
        return cls()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes decoded with errors="replace"; special ids rendered as their names."""
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
                continue
            if i not in (self.eot_id, self.pad_id):
                raise DataError(f"token id {i} is outside the byte tokenizer's vocabulary (0-{self.vocab_size - 1})")
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            out.append(SPECIAL_TOKENS[i - 256])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id, "pad_id": self.pad_id}

    def save(self, directory: str | Path) -> Path:
        return _write_config(self, directory)


def _hf() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "the bpe tokenizer needs the HF 'tokenizers' package, which is not installed; "
            "install it with: pip install gatelab[hf]  (or use tokenizer.name=byte)"
        ) from None
    return tokenizers


class HFTokenizer:
    """The body shared by tokenizers backed by an HF ``tokenizers.Tokenizer``: text is
    encoded literally (no special-token parsing), and ``save`` writes ``tokenizer.json``."""

    name = ""

    def __init__(self, hf_tokenizer: Any, eot_id: int, pad_id: int):
        self._tok = hf_tokenizer
        if hasattr(self._tok, "encode_special_tokens"):
            self._tok.encode_special_tokens = True
        self.vocab_size = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))
        self.eot_id, self.pad_id = eot_id, pad_id

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def config(self) -> dict[str, Any]:
        digest = hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id, "pad_id": self.pad_id, "sha256": digest}

    def save(self, directory: str | Path) -> Path:
        d = _write_config(self, directory)
        self._tok.save(str(d / HF_FILE))
        return d


@register("tokenizer", "bpe")
class BPETokenizer(HFTokenizer):
    """Byte-level BPE through HF ``tokenizers``: trained locally, or loaded from ``path``."""

    @dataclass
    class Config:
        vocab_size: int = 4096  # target size when training (special tokens included)
        min_frequency: int = 2  # a pair must occur this often to be merged
        path: str = ""  # a saved tokenizer.json (or a directory holding one); empty: train

        def validate(self) -> None:
            check(self.vocab_size >= 258, "vocab_size", self.vocab_size, "at least 258 (256 bytes + 2 special tokens)")
            check(self.min_frequency >= 1, "min_frequency", self.min_frequency, "an integer >= 1")

    name = "bpe"

    def __init__(self, hf_tokenizer: Any):
        ids = [hf_tokenizer.token_to_id(s) for s in SPECIAL_TOKENS]
        if None in ids:
            raise DataError(f"BPE tokenizer lacks the special tokens {EOT} and {PAD}; train it with gatelab (tokenizer.path empty)")
        super().__init__(hf_tokenizer, *ids)

    @classmethod
    def from_config(cls, cfg: Config, texts_for_training: Sequence[str] | None = None) -> BPETokenizer:
        """Load ``cfg.path``, or train on `texts_for_training` when the path is empty."""
        if cfg.path:
            return cls.load(cfg.path)
        if not texts_for_training:
            raise DataError("tokenizer bpe has no path and no training texts; set tokenizer.path to a tokenizer.json")
        return cls.train(texts_for_training, cfg.vocab_size, cfg.min_frequency)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 4096, min_frequency: int = 2) -> BPETokenizer:
        """Train a byte-level BPE on `texts` (deterministic for the same texts)."""
        tk = _hf()
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = tk.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Load a ``tokenizer.json`` (or the one inside directory `path`)."""
        tk = _hf()
        p = Path(path)
        if p.is_dir():
            p = p / HF_FILE
        if not p.is_file():
            raise DataError(f"BPE tokenizer file {str(p)!r} does not exist; give tokenizer.path a saved tokenizer.json")
        try:
            tok = tk.Tokenizer.from_file(str(p))
        except Exception as e:  # noqa: BLE001 - HF raises a bare Exception on bad JSON
            raise DataError(f"{str(p)!r} is not a valid HF tokenizer.json ({str(e).splitlines()[0]})") from None
        return cls(tok)

    @classmethod
    def from_saved(cls, directory: Path, cfg: dict[str, Any]) -> BPETokenizer:
        return cls.load(directory)


def build_tokenizer(spec: Component, texts_for_training: Sequence[str] | None = None) -> Tokenizer:
    """The tokenizer a config component names (a trainable one learns from `texts_for_training`)."""
    return spec.cls.from_config(spec.options, texts_for_training)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer that `Tokenizer.save(directory)` wrote."""
    d = Path(directory)
    try:
        cfg = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        name = cfg["name"]
    except FileNotFoundError:
        raise DataError(f"no {CONFIG_FILE} in {str(d)!r}; save the tokenizer there first") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{str(d / CONFIG_FILE)!r} is corrupt; save the tokenizer again") from None
    if name not in names("tokenizer"):
        raise DataError(f"{str(d / CONFIG_FILE)!r} names tokenizer {name!r}, which is not registered here "
                        f"(registered: {', '.join(names('tokenizer'))}); install the extra that provides it")
    tok: Tokenizer = get("tokenizer", name).from_saved(d, cfg)
    if tok.config() != cfg:
        raise DataError(f"tokenizer in {str(d)!r} does not match its {CONFIG_FILE}; save it again")
    return tok
