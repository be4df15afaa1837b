"""A pretrained model's own tokenizer as a gatelab `Tokenizer` (registered as ``pretrained``).

``path`` is a ``tokenizer.json`` (HF `tokenizers`), a model directory holding one, or a
GGUF file, whose ``tokenizer.ggml.*`` metadata transformers converts to the same fast
tokenizer (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``; needs transformers).
Text is encoded literally, without BOS/EOS (`add_special_tokens=False`); documents are
joined with ``<|endoftext|>`` when the vocabulary has it, else with the model's EOS.

    data: {tokenizer: {name: pretrained, path: SmolLM2-135M-Instruct.Q4_1.gguf}}
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import check
from ..core.errors import DataError
from ..core.registry import register
from ..data.tokenizers import EOT, HF_FILE, HFTokenizer


@register("tokenizer", "pretrained")
class PretrainedTokenizer(HFTokenizer):
    """A fast HF tokenizer loaded from a pretrained model's files."""

    @dataclass
    class Config:
        path: str = ""  # tokenizer.json, a model directory with one, or a .gguf file

        def validate(self) -> None:
            check(bool(self.path), "path", self.path, "must name a tokenizer.json, model directory or .gguf file")

    name = "pretrained"

    def __init__(self, hf_tokenizer: Any, eos_id: int | None, pad_id: int | None = None):
        eot = hf_tokenizer.token_to_id(EOT)
        eot = eot if eot is not None else eos_id
        if eot is None:
            raise DataError(f"the tokenizer has no {EOT} token and no EOS id; it cannot separate documents")
        super().__init__(hf_tokenizer, eot, pad_id if pad_id is not None else eot)

    @classmethod
    def from_config(cls, cfg: Config, texts_for_training: Sequence[str] | None = None) -> PretrainedTokenizer:
        del texts_for_training  # pretrained: nothing to learn
        return cls.load(cfg.path)

    @classmethod
    def load(cls, path: str | Path) -> PretrainedTokenizer:
        p = Path(path)
        if p.suffix == ".gguf":
            return cls.from_gguf(p)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise DataError(f"no tokenizer at {str(p)!r}; give a tokenizer.json, a directory holding one, or a .gguf file")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError("pretrained tokenizers need HF 'tokenizers'; install it with: pip install gatelab[hf]") from None
        eos, pad = _special_ids(file.parent)
        return cls(Tokenizer.from_file(str(file)), eos, pad)

    @classmethod
    def from_gguf(cls, path: Path) -> PretrainedTokenizer:
        if not path.is_file():
            raise DataError(f"GGUF file {str(path)!r} does not exist")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise DataError("a tokenizer from GGUF metadata needs transformers; install it with: "
                            "pip install gatelab[hf]") from None
        fast = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return cls(fast.backend_tokenizer, fast.eos_token_id, fast.pad_token_id)

    @classmethod
    def from_saved(cls, directory: Path, cfg: dict[str, Any]) -> PretrainedTokenizer:
        """What `save` wrote into a run directory (special ids from its tokenizer config)."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(directory / HF_FILE)), cfg.get("eot_id"), cfg.get("pad_id"))


def _special_ids(directory: Path) -> tuple[int | None, int | None]:
    """EOS and pad ids from a model directory's config.json (None where absent)."""
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        return None, None
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    return eos, cfg.get("pad_token_id")
