"""load_pretrained / init_from (upcycling) / the pretrained tokenizer / `gatelab convert`, end to end."""
import pytest
import torch

from hf_models import logits, tiny_hf
from gatelab.cli import main
from gatelab.config import load_config
from gatelab.core.config import to_dict
from gatelab.core.errors import CheckpointError
from gatelab.data import load_tokenizer
from gatelab.hf import PretrainedTokenizer, init_from, load_pretrained
from gatelab.train import Trainer

WORDS = ["<|endoftext|>", "[UNK]"] + [f"w{i}" for i in range(62)]


def save_word_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))


@pytest.fixture
def hf_dir(tmp_path):
    d = tmp_path / "hf"
    tiny_hf("llama").save_pretrained(d)
    save_word_tokenizer(d)
    return d


def test_pretrained_tokenizer_from_tokenizer_json(hf_dir):
    tok = PretrainedTokenizer.load(hf_dir)
    assert tok.vocab_size == 64 and tok.eot_id == 0
    ids = tok.encode("w3 w17 w3")
    assert ids == [5, 19, 5] and tok.decode(ids) == "w3 w17 w3"
    tok.save(hf_dir / "copy")
    assert PretrainedTokenizer.load(hf_dir / "copy").config() == tok.config()
    again = load_tokenizer(hf_dir / "copy")  # what `gatelab generate` decodes a run with
    assert isinstance(again, PretrainedTokenizer) and again.config() == tok.config()


def test_trainer_init_from_hf_upcycles_into_moe_exactly(hf_dir, tmp_path, tokens):
    """A 2-layer MoE (renormalised top-2 of identical experts) initialised from the HF llama
    computes the same logits as transformers before any step."""
    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(f"w{(i * j) % 62}" for j in range(40))
                                                     for i in range(60)))
    dense = to_dict(load_pretrained(hf_dir).cfg)
    dense["block"]["ffn"] = {"name": "moe", "n_experts": 4, "k": 2, "hidden": 64, "router": {"name": "topk", "renorm": True}}
    cfg = load_config(base={"model": dense, "train": {"steps": 2, "init_from": str(hf_dir)},
                            "data": {"corpus": {"name": "text", "path": str(tmp_path / "corpus.txt")},
                                     "tokenizer": {"name": "pretrained", "path": str(hf_dir)},
                                     "seq_len": 16, "batch_size": 2},
                            "eval": {"batches": 1}, "log": {"progress": False}})
    trainer = Trainer(cfg, tmp_path / "run")
    hf = tiny_hf("llama")
    torch.testing.assert_close(logits(trainer.model.eval(), tokens), logits(hf, tokens), atol=1e-5, rtol=0)
    trainer.fit()  # and it trains
    assert trainer.step == 2


def test_init_from_rejects_another_vocabulary(hf_dir):
    cfg = load_pretrained(hf_dir).cfg
    from dataclasses import replace
    from gatelab.models import LM

    with pytest.raises(CheckpointError, match="vocabulary 64"):
        init_from(LM(replace(cfg, vocab_size=65)), hf_dir)


def test_convert_cli_gguf_free_round_trip(hf_dir, tmp_path, tokens, capsys):
    assert main(["convert", str(hf_dir), "--print-config"]) == 0
    assert "d_model: 32" in capsys.readouterr().out
    assert main(["convert", str(hf_dir), str(tmp_path / "out")]) == 0
    torch.testing.assert_close(logits(load_pretrained(tmp_path / "out"), tokens),
                               logits(load_pretrained(hf_dir), tokens), atol=0, rtol=0)
    assert main(["convert", str(tmp_path / "nothing")]) == 1
