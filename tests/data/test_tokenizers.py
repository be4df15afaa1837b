import sys

import pytest

from gatelab.core.config import parse_component
from gatelab.core.errors import DataError
from gatelab.data import BPETokenizer, build_tokenizer, load_tokenizer
from gatelab.data.synthetic import generate

TEXTS = [
    "plain ascii text\n\twith tabs",
    "héllo wörld — naïve café",
    "日本語のテキスト and emoji 🎉🚀",
    "literal <|endoftext|> stays text",
    "",
]


def test_byte_round_trip_multibyte(byte_tok):
    for t in TEXTS:
        ids = byte_tok.encode(t)
        assert ids == list(t.encode("utf-8"))
        assert all(0 <= i < 256 for i in ids)
        assert byte_tok.decode(ids) == t
    assert byte_tok.encode_batch(TEXTS) == [byte_tok.encode(t) for t in TEXTS]


def test_byte_specials(byte_tok):
    assert (byte_tok.vocab_size, byte_tok.eot_id, byte_tok.pad_id) == (258, 256, 257)
    assert byte_tok.decode([104, 105, 256, 0xC3, 0xA9, 257]) == "hi<|endoftext|>é<|pad|>"
    assert 256 not in byte_tok.encode("a <|endoftext|> b")


def test_byte_decode_invalid_utf8_and_ids(byte_tok):
    assert byte_tok.decode([0xFF, 104, 0xC3]) == "\ufffdh\ufffd"
    # a multi-byte character cut by a special token is replaced, not merged across it
    assert byte_tok.decode([0xC3, 256, 0xA9]) == "\ufffd<|endoftext|>\ufffd"
    with pytest.raises(DataError, match=r"token id 300 .*0-257"):
        byte_tok.decode([300])


def test_byte_save_load(tmp_path, byte_tok):
    byte_tok.save(tmp_path)
    assert load_tokenizer(tmp_path).config() == byte_tok.config()


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="no tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        load_tokenizer(tmp_path)


def test_bpe_missing_dependency_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(DataError, match=r"pip install gatelab\[hf\]"):
        BPETokenizer.train(["some text"], vocab_size=300)


def test_bpe_needs_texts_or_path():
    spec = parse_component("tokenizer", {"name": "bpe"}, "tokenizer")
    with pytest.raises(DataError, match="tokenizer.path"):
        build_tokenizer(spec, None)


def test_bpe_train_save_load_round_trip(tmp_path, hf_tokenizers):
    texts, _ = generate(300, seed=1)
    spec = parse_component("tokenizer", {"name": "bpe", "vocab_size": 600}, "tokenizer")
    tok = build_tokenizer(spec, texts)
    assert 258 < tok.vocab_size <= 600
    assert tok.decode([tok.eot_id]) == "<|endoftext|>" and tok.eot_id != tok.pad_id
    sample = texts[0] + "\n" + "\n".join(TEXTS)
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    n_ids = sum(map(len, tok.encode_batch(texts)))
    assert n_ids < sum(len(t.encode("utf-8")) for t in texts) / 1.5  # merges were learned
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")  # literal text, like the byte tokenizer
    # deterministic training: same texts -> same tokenizer
    assert build_tokenizer(spec, texts).config() == tok.config()

    tok.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    for loaded in (
        load_tokenizer(tmp_path),
        BPETokenizer.load(tmp_path / "tokenizer.json"),
        build_tokenizer(parse_component("tokenizer", {"name": "bpe", "path": str(tmp_path)}, "tokenizer")),
    ):
        assert loaded.config() == tok.config()
        assert loaded.encode(sample) == ids
        assert loaded.decode(ids) == sample


def test_bpe_load_errors(tmp_path, hf_tokenizers):
    with pytest.raises(DataError, match="does not exist"):
        BPETokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{broken")
    with pytest.raises(DataError, match="not a valid HF tokenizer.json"):
        BPETokenizer.load(bad)
