import pytest

from gatelab.core.config import Component, parse, to_dict
from gatelab.core.errors import ConfigError
from gatelab.data import DataConfig


def test_defaults_resolve_to_components():
    cfg = DataConfig()
    assert isinstance(cfg.corpus, Component) and cfg.corpus.name == "synthetic"
    assert cfg.tokenizer.name == "byte"
    assert cfg.corpus.options.n_docs == 3000
    assert to_dict(cfg)["corpus"] == {"name": "synthetic", "n_docs": 3000, "seed": 0, "domains": []}


def test_parse_from_cli_strings():
    cfg = parse(DataConfig, {"corpus": {"name": "text", "path": "a.txt", "doc_split": "line"},
                             "seq_len": "64", "val_fraction": "0.2"})
    assert cfg.corpus.options.path == "a.txt" and cfg.corpus.options.doc_split == "line"
    assert cfg.seq_len == 64 and cfg.val_fraction == 0.2


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"seq_len": 0}, "seq_len=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"val_fraction": 1.0}, "val_fraction=1.0"),
        ({"val_fraction": 0.0}, "val_fraction=0.0"),
        ({"corpus": {"name": "synthetc"}}, "did you mean 'synthetic'"),
        ({"corpus": {"name": "synthetic", "n_doc": 5}}, "did you mean 'n_docs'"),
        ({"corpus": {"name": "synthetic", "n_docs": 1}}, "corpus.n_docs=1"),
        ({"corpus": {"name": "synthetic", "domains": ["story", "poetry"]}}, "corpus.domains"),
        ({"corpus": {"name": "text"}}, "corpus.path=''"),
        ({"corpus": {"name": "text", "path": "x", "doc_split": "para"}}, "blank_line"),
        ({"corpus": {"name": "tokens"}}, "corpus.path=''"),
        ({"tokenizer": {"name": "bpe", "vocab_size": 100}}, "tokenizer.vocab_size=100"),
    ],
)
def test_invalid_values_name_key_and_allowed(kwargs, needle):
    with pytest.raises(ConfigError, match=None) as e:
        parse(DataConfig, kwargs)
    assert needle in str(e.value)
