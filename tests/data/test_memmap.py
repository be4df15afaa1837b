import hashlib
import json

import numpy as np
import pytest

from gatelab.core.errors import DataError
from gatelab.data import DataConfig, build_data, prepare, write_prepared

SMALL = {"name": "synthetic", "n_docs": 120, "seed": 4}


@pytest.fixture
def prepared(tmp_path):
    cfg = DataConfig(corpus=SMALL)
    out = tmp_path / "tok"
    meta = prepare(cfg, out)
    return cfg, out, meta


def tokens_cfg(path, tokenizer="byte", **kw):
    return DataConfig(corpus={"name": "tokens", "path": str(path), **kw}, tokenizer=tokenizer)


def test_prepare_round_trip_equals_in_memory(prepared):
    cfg, out, meta = prepared
    mem = build_data(cfg)
    loaded = build_data(tokens_cfg(out, verify=True))
    for a, b in ((mem.train, loaded.train), (mem.val, loaded.val)):
        assert isinstance(b.tokens, np.memmap) and b.tokens.dtype == np.uint16
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        np.testing.assert_array_equal(np.asarray(a.domains), np.asarray(b.domains))
        assert a.n_docs == b.n_docs
    assert loaded.domain_names == mem.domain_names
    assert loaded.tokenizer.config() == mem.tokenizer.config()
    assert loaded.info["domain_token_shares"] == mem.info["domain_token_shares"]


def test_sidecar_contents(prepared):
    cfg, out, meta = prepared
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["vocab_size"] == 258 and meta["tokenizer"]["name"] == "byte" and meta["dtype"] == "uint16"
    assert meta["train_docs"] + meta["val_docs"] == 120
    assert meta["gatelab_version"] and meta["domain_names"][0] == "story"
    assert meta["source"]["corpus"] == {**SMALL, "domains": []} and meta["source"]["seq_len"] == cfg.seq_len
    for s in ("train", "val"):
        files = meta["files"][s]
        assert (out / files["file"]).stat().st_size == 2 * meta[f"{s}_tokens"]
        assert (out / files["domains_file"]).stat().st_size == meta[f"{s}_tokens"]
        assert hashlib.sha256((out / files["file"]).read_bytes()).hexdigest() == files["sha256"]
        assert hashlib.sha256((out / files["domains_file"]).read_bytes()).hexdigest() == files["domains_sha256"]
    assert not list(out.glob("*.tmp"))


def test_unlabelled_corpus_has_no_domain_files(tmp_path):
    (tmp_path / "t.txt").write_text("\n\n".join(f"doc {i}" for i in range(10)), encoding="utf-8")
    meta = prepare(DataConfig(corpus={"name": "text", "path": str(tmp_path / "t.txt")}), tmp_path / "out")
    assert meta["domain_names"] is None and "domains_file" not in meta["files"]["train"]
    assert not list((tmp_path / "out").glob("*_domains.bin"))
    loaded = build_data(tokens_cfg(tmp_path / "out"))
    assert loaded.train.domains is None and loaded.domain_names is None


def test_bpe_prepare_and_load(tmp_path, hf_tokenizers):
    cfg = DataConfig(corpus=SMALL, tokenizer={"name": "bpe", "vocab_size": 400})
    meta = prepare(cfg, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and meta["tokenizer"]["name"] == "bpe"
    loaded = build_data(tokens_cfg(tmp_path, tokenizer="bpe"))  # BPE read from the directory
    mem = build_data(cfg)
    np.testing.assert_array_equal(np.asarray(loaded.train.tokens), np.asarray(mem.train.tokens))
    assert loaded.tokenizer.decode(loaded.val.tokens[:200]) == mem.tokenizer.decode(mem.val.tokens[:200])
    with pytest.raises(DataError, match=r"data.tokenizer \(byte\) is not the tokenizer .* \(bpe, vocab \d+\)"):
        build_data(tokens_cfg(tmp_path, tokenizer="byte"))
    other = build_data(DataConfig(corpus=SMALL, tokenizer={"name": "bpe", "vocab_size": 300})).tokenizer
    other.save(tmp_path / "other")
    with pytest.raises(DataError, match=rf"\(bpe, vocab {other.vocab_size}\) is not the tokenizer .* \(bpe, vocab {meta['vocab_size']}\)"):
        build_data(tokens_cfg(tmp_path, tokenizer={"name": "bpe", "path": str(tmp_path / "other")}))


def test_tokenizer_name_mismatch(prepared):
    _, out, _ = prepared
    with pytest.raises(DataError, match=r"data.tokenizer \(bpe\) is not the tokenizer .* prepared with \(byte, vocab 258\)"):
        build_data(tokens_cfg(out, tokenizer="bpe"))


def test_prepare_rejects_tokens_corpus(prepared):
    _, out, _ = prepared
    with pytest.raises(DataError, match="already 'tokens'"):
        prepare(tokens_cfg(out), out / "again")


class HugeVocab:
    """A stand-in tokenizer whose vocabulary does not fit uint16."""

    name, vocab_size, eot_id, pad_id = "huge", 70_000, 69_998, 69_999


def test_vocab_too_large_for_uint16(tmp_path):
    data = build_data(DataConfig(corpus=SMALL))
    data.tokenizer = HugeVocab()
    with pytest.raises(DataError, match=r"vocab_size 70000 does not fit the uint16 .* use a smaller tokenizer.vocab_size"):
        write_prepared(data, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


# ---- corrupt or missing directories

def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist; create it with gatelab prepare"):
        build_data(tokens_cfg(tmp_path / "nope"))


def test_missing_sidecar(prepared):
    _, out, _ = prepared
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="has no meta.json"):
        build_data(tokens_cfg(out))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda m: "{not json",
        lambda m: json.dumps({k: v for k, v in m.items() if k != "train_tokens"}),
        lambda m: json.dumps({**m, "format": "something-else"}),
        lambda m: json.dumps([1, 2, 3]),
    ],
)
def test_corrupt_sidecar(prepared, corrupt):
    _, out, meta = prepared
    (out / "meta.json").write_text(corrupt(meta))
    with pytest.raises(DataError, match="is corrupt or not a gatelab meta.json"):
        build_data(tokens_cfg(out))


def test_wrong_declared_dtype(prepared):
    _, out, meta = prepared
    (out / "meta.json").write_text(json.dumps({**meta, "dtype": "uint32"}))
    with pytest.raises(DataError, match="declares dtype 'uint32'; gatelab reads uint16"):
        build_data(tokens_cfg(out))


def test_wrong_dtype_size(prepared):
    _, out, meta = prepared
    np.fromfile(out / "train.bin", dtype=np.uint16).astype(np.uint32).tofile(out / "train.bin")
    with pytest.raises(DataError, match=r"train.bin' has \d+ bytes .* it holds 4-byte items, gatelab reads 2-byte uint16"):
        build_data(tokens_cfg(out))


def test_truncated_and_missing_bin(prepared):
    _, out, meta = prepared
    raw = (out / "val.bin").read_bytes()
    (out / "val.bin").write_bytes(raw[:-3])
    with pytest.raises(DataError, match=rf"val.bin' has {len(raw) - 3} bytes but meta.json says {meta['val_tokens']}"):
        build_data(tokens_cfg(out))
    (out / "val_domains.bin").unlink()
    (out / "val.bin").write_bytes(raw)
    with pytest.raises(DataError, match="val_domains.bin' is missing"):
        build_data(tokens_cfg(out))


def test_hash_checked_only_with_verify(prepared):
    _, out, _ = prepared
    raw = bytearray((out / "train.bin").read_bytes())
    raw[10] ^= 1  # same size, different content
    (out / "train.bin").write_bytes(bytes(raw))
    assert len(build_data(tokens_cfg(out)).train) == len(raw) // 2
    with pytest.raises(DataError, match="does not match the sha256"):
        build_data(tokens_cfg(out, verify=True))
