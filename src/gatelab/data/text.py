"""Corpora read from UTF-8 text: your own files, TinyShakespeare, TinyStories.

* ``text``: a .txt file or a directory of them (found recursively, read in path order).
  ``doc_split`` chooses the documents: ``blank_line`` (paragraphs, the default), ``line``,
  ``file``, or ``stream`` (the whole text as one stream, the last val_fraction of its
  characters held out, as nanoGPT does).
* ``shakespeare``: the vendored TinyShakespeare (public domain) as one stream; the first
  1 - val_fraction of it trains, the rest validates (nanoGPT's ``shakespeare_char``).
* ``tinystories``: ``tinystories_train.txt`` / ``tinystories_val.txt`` from a data
  directory; their own train/val files replace val_fraction. Story boundaries are not
  marked in these files (paragraphs and stories are both separated by newlines), so each
  file is kept as one stream rather than cut into false documents.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..core.config import check
from ..core.errors import DataError
from ..core.registry import register
from .corpus import Documents, TextCorpus, split_documents, split_stream

ASSETS = Path(__file__).parent / "assets"
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents; `DataError` for empty or undecodable files."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{str(path)!r} is not valid UTF-8 (byte offset {e.start}: {raw[e.start:e.start + 1]!r}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if not text.strip():
        raise DataError(f"{str(path)!r} is empty; give a file with text in it")
    return text


def text_files(path: str) -> list[Path]:
    """The .txt file `path`, or the .txt files below directory `path` in path order."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"text corpus path {path!r} does not exist; set data.corpus.path to a .txt file or a directory")
    if p.is_file():
        return [p]
    files = sorted((f for f in p.rglob("*.txt") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
    if not files:
        raise DataError(f"directory {path!r} holds no .txt files; put UTF-8 .txt files in it or point to a file")
    return files


def split_text(text: str, mode: str) -> list[str]:
    """Documents of one file's `text`: paragraphs, lines, or the whole file (stripped, empty ones dropped)."""
    if mode == "blank_line":
        parts = _BLANK_LINE.split(text)
    elif mode == "line":
        parts = text.splitlines()
    else:
        parts = [text]
    return [s for s in (p.strip() for p in parts) if s]


@register("corpus", "text")
class TextFileCorpus(TextCorpus):
    """A UTF-8 .txt file or a directory of them."""

    @dataclass
    class Config:
        path: str = ""  # a .txt file or a directory searched recursively for .txt files
        doc_split: Literal["blank_line", "line", "file", "stream"] = "blank_line"

        def validate(self) -> None:
            check(bool(self.path), "path", self.path, "a .txt file or a directory of .txt files")

    def documents(self, val_fraction: float) -> Documents:
        files = text_files(self.cfg.path)
        texts = [read_text(f) for f in files]
        info = {"files": len(files), "doc_split": self.cfg.doc_split}
        what = f"text corpus {self.cfg.path!r} (doc_split={self.cfg.doc_split})"
        if self.cfg.doc_split == "stream":
            docs = split_stream("".join(texts), val_fraction, what)
        else:
            docs = split_documents([d for t in texts for d in split_text(t, self.cfg.doc_split)], val_fraction, what)
        docs.info.update(info)
        return docs


@register("corpus", "shakespeare")
class ShakespeareCorpus(TextCorpus):
    """TinyShakespeare (vendored, public domain), split by position like nanoGPT."""

    @dataclass
    class Config:
        pass

    def documents(self, val_fraction: float) -> Documents:
        return split_stream(read_text(ASSETS / "tinyshakespeare.txt"), val_fraction, "shakespeare")


TINYSTORIES_FILES = ("tinystories_train.txt", "tinystories_val.txt")


def find_tinystories(path: str) -> Path:
    """The directory holding the TinyStories files: `path`, else $GATELAB_DATA_DIR, else ../shared/data."""
    if path:
        candidates = [Path(path).expanduser()]
    else:
        env = os.environ.get("GATELAB_DATA_DIR")
        candidates = ([Path(env)] if env else []) + [Path.cwd().parent / "shared" / "data"]
    for d in candidates:
        if all((d / f).is_file() for f in TINYSTORIES_FILES):
            return d
    tried = ", ".join(repr(str(c)) for c in candidates)
    raise DataError(
        f"TinyStories files {' and '.join(TINYSTORIES_FILES)} not found in {tried}; "
        "set data.corpus.path (or GATELAB_DATA_DIR) to the directory holding them"
    )


@register("corpus", "tinystories")
class TinyStoriesCorpus(TextCorpus):
    """TinyStories (CDLA-Sharing-1.0, not vendored): its own train and val files, each one stream."""

    @dataclass
    class Config:
        path: str = ""  # directory with tinystories_train.txt / tinystories_val.txt

    def documents(self, val_fraction: float) -> Documents:
        del val_fraction  # the files are the split
        d = find_tinystories(self.cfg.path)
        train, val = (read_text(d / f) for f in TINYSTORIES_FILES)
        return Documents([train], [val], info={"path": str(d), "val_fraction": "unused: own val file"})
