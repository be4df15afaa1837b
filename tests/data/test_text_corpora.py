from pathlib import Path

import numpy as np
import pytest

from gatelab.core.errors import DataError
from gatelab.data import DataConfig, build_data
from gatelab.data.text import ASSETS

PARAS = [f"Paragraph {i}: the quick brown fox jumps over the lazy dog, {i} times." for i in range(20)]


def text_cfg(path, **kw):
    return DataConfig(corpus={"name": "text", "path": str(path), **kw})


def docs_of(data, split):
    """The documents of a split, recovered by cutting its tokens at the end-of-text ids."""
    return data.tokenizer.decode(np.asarray(split.tokens)).split("<|endoftext|>")


def test_text_file_blank_line_documents(tmp_path):
    f = tmp_path / "paras.txt"
    f.write_text("\n\n".join(PARAS) + "\n", encoding="utf-8")
    data = build_data(text_cfg(f))
    train, val = docs_of(data, data.train), docs_of(data, data.val)
    assert (data.train.n_docs, data.val.n_docs) == (18, 2) == (len(train), len(val))
    assert sorted(train + val) == sorted(PARAS)
    assert val == [PARAS[5], PARAS[15]]  # every 10th document, evenly spaced
    assert data.domain_names is None and data.train.domains is None


def test_blank_lines_with_whitespace_and_crlf(tmp_path):
    f = tmp_path / "crlf.txt"
    f.write_bytes("\r\n \t\r\n".join(PARAS).encode())
    data = build_data(text_cfg(f))
    assert data.train.n_docs + data.val.n_docs == 20


def test_directory_recursive_in_path_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee one\n\nbee two\n\nbee three", encoding="utf-8")
    (tmp_path / "sub" / "a.txt").write_text("sub one\n\nsub two", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay one\n\nay two\n\nay three\n\nay four", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    data = build_data(DataConfig(corpus={"name": "text", "path": str(tmp_path), "doc_split": "file"},
                                 val_fraction=0.34))
    assert data.info["files"] == 3
    # files in path order a.txt, b.txt, sub/a.txt; the middle one is the validation document
    assert docs_of(data, data.train) == ["ay one\n\nay two\n\nay three\n\nay four", "sub one\n\nsub two"]
    assert docs_of(data, data.val) == ["bee one\n\nbee two\n\nbee three"]
    paras = build_data(text_cfg(tmp_path))  # blank_line: 4 + 3 + 2 paragraphs
    assert paras.train.n_docs + paras.val.n_docs == 9


def test_stream_split_is_a_prefix(tmp_path):
    text = "".join(PARAS)
    (tmp_path / "s.txt").write_text(text, encoding="utf-8")
    data = build_data(DataConfig(corpus={"name": "text", "path": str(tmp_path / "s.txt"), "doc_split": "stream"},
                                 val_fraction=0.25))
    tok = data.tokenizer
    train, val = tok.decode(data.train.tokens), tok.decode(data.val.tokens)
    assert train + val == text and len(train) == int(len(text) * 0.75)


def test_shakespeare_nanogpt_split():
    data = build_data(DataConfig(corpus="shakespeare"))
    full = (ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert len(full) == 1_115_394
    tok = data.tokenizer
    assert tok.decode(data.train.tokens) == full[: int(len(full) * 0.9)]
    assert tok.decode(data.val.tokens) == full[int(len(full) * 0.9):]
    assert (data.train.n_docs, data.val.n_docs) == (1, 1)


def write_tinystories(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    (d / "tinystories_train.txt").write_text("Once upon a time.\n\nThe end.\nAnother story.", encoding="utf-8")
    (d / "tinystories_val.txt").write_text("A val story.\n\nIt ends.", encoding="utf-8")


def test_tinystories_from_path_and_env(tmp_path, monkeypatch):
    write_tinystories(tmp_path / "ts")
    data = build_data(DataConfig(corpus={"name": "tinystories", "path": str(tmp_path / "ts")}, val_fraction=0.5))
    assert data.tokenizer.decode(data.val.tokens) == "A val story.\n\nIt ends."  # own val file, not val_fraction
    assert data.tokenizer.decode(data.train.tokens) == "Once upon a time.\n\nThe end.\nAnother story."
    monkeypatch.setenv("GATELAB_DATA_DIR", str(tmp_path / "ts"))
    monkeypatch.chdir(tmp_path)
    assert build_data(DataConfig(corpus="tinystories")).info["path"] == str(tmp_path / "ts")


def test_tinystories_default_searches_shared_data(tmp_path, monkeypatch):
    write_tinystories(tmp_path / "shared" / "data")
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    monkeypatch.delenv("GATELAB_DATA_DIR", raising=False)
    assert build_data(DataConfig(corpus="tinystories")).info["path"] == str(tmp_path / "shared" / "data")


def test_tinystories_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATELAB_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"tinystories_train.txt and tinystories_val.txt not found in .*nowhere.*GATELAB_DATA_DIR"):
        build_data(DataConfig(corpus="tinystories"))


# ---- error paths

def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"'.*missing.txt' does not exist; set data.corpus.path"):
        build_data(text_cfg(tmp_path / "missing.txt"))


@pytest.mark.parametrize("content", [b"", b"  \n\n\t \n"])
def test_empty_file(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=r"empty.txt' is empty"):
        build_data(text_cfg(f))


def test_empty_file_inside_directory_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(PARAS), encoding="utf-8")
    (tmp_path / "b.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"b.txt' is empty"):
        build_data(text_cfg(tmp_path))


def test_non_utf8_names_file_and_offset(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("café au lait".encode("latin-1"))  # 'é' is byte 0xe9 at offset 3
    with pytest.raises(DataError, match=r"latin1.txt' is not valid UTF-8 \(byte offset 3: b'\\xe9'\); convert it"):
        build_data(text_cfg(f))


def test_directory_without_txt(tmp_path):
    (tmp_path / "notes.md").write_text("no txt here", encoding="utf-8")
    with pytest.raises(DataError, match="holds no .txt files"):
        build_data(text_cfg(tmp_path))


def test_too_few_documents_for_val(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("a single paragraph without blank lines", encoding="utf-8")
    with pytest.raises(DataError, match=r"1 document\(s\): too few for val_fraction=0.1"):
        build_data(text_cfg(f))
    assert build_data(text_cfg(f, doc_split="stream")).val.n_docs == 1  # the fix the message suggests


def test_real_tinystories_if_available(monkeypatch):
    root = Path(__file__).resolve().parents[3] / "shared" / "data"
    if not (root / "tinystories_val.txt").is_file():
        pytest.skip(f"TinyStories not found in {root}")
    monkeypatch.delenv("GATELAB_DATA_DIR", raising=False)
    data = build_data(DataConfig(corpus={"name": "tinystories", "path": str(root)}))
    assert len(data.train) == (root / "tinystories_train.txt").stat().st_size
    assert len(data.val) == (root / "tinystories_val.txt").stat().st_size
