"""Config parsing: types, dotted overrides, YAML round trip and every error path."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from gatelab.config import RunConfig, load_config
from gatelab.core.config import (ConfigBase, apply_overrides, check, dump_yaml, parse, to_dict)
from gatelab.core.errors import ConfigError
from gatelab.models import ModelConfig


def test_defaults_resolve_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg.model.block.mixer.name == "attention"
    assert cfg.optim.name == "adamw" and cfg.optim.kwargs()["lr"] == 3e-3
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert to_dict(load_config(str(path))) == to_dict(cfg)


def test_dotted_overrides_are_typed():
    cfg = load_config(overrides=[("model.n_layer", "3"), ("optim.lr", "1e-3"), ("train.compile", "false"),
                                 ("model.block.ffn.name", "gelu"), ("model.block.ffn.hidden", "64"),
                                 ("optim.betas", "[0.8, 0.9]")])
    assert cfg.model.n_layer == 3
    assert cfg.optim.kwargs()["lr"] == pytest.approx(1e-3) and cfg.optim.kwargs()["betas"] == (0.8, 0.9)
    assert cfg.train.compile is False
    assert cfg.model.block.ffn.name == "gelu" and cfg.model.block.ffn.options.hidden == 64


def test_yaml_then_overrides_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {d_model: 64, n_layer: 2}\ntrain: {steps: 7}\n")
    cfg = load_config(str(path), [("model.n_layer", "5")])
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.train.steps) == (64, 5, 7)


@pytest.mark.parametrize("overrides, fragment", [
    ([("model.n_layr", "3")], "unknown config key 'model.n_layr' (did you mean 'n_layer'?)"),
    ([("modle.n_layer", "3")], "did you mean 'model'?"),
    ([("model.n_layer", "three")], "model.n_layer='three' has the wrong type: expected an integer"),
    ([("model.n_layer", "0")], "model.n_layer=0 is invalid: must be a positive integer"),
    ([("model.block.mixer.n_head", "5")], "model.block.mixer.n_head=5 is invalid: must divide d_model=128"),
    ([("model.block.mixer.n_kv_head", "3")], "n_kv_head=3 is invalid: must divide n_head=4"),
    ([("model.block.ffn.name", "swiglo")], "not a registered channel_mixer (did you mean 'swiglu'?)"),
    ([("model.block.ffn.hiden", "4")], "unknown config key 'model.block.ffn.hiden' (did you mean 'hidden'?)"),
    ([("optim.lr", "-1")], "config optim (adamw) rejected its options: Invalid learning rate: -1.0"),
    ([("optim.lrr", "1")], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    ([("optim.name", "adamx")], "not a registered optimizer"),
    ([("train.precision", "bf61")], "train.precision='bf61' is invalid (did you mean 'bf16'?)"),
    ([("train.grad_clip", "-1")], "train.grad_clip=-1.0 is invalid"),
    ([("data.seq_len", "0")], "data.seq_len=0 is invalid"),
    ([("model.pattern", "base,moe")], "model.pattern[1]='moe' is invalid: must name a variant: base"),
    ([("train.compile", "maybe")], "expected true or false"),
])
def test_bad_config_errors_name_key_value_and_fix(overrides, fragment):
    with pytest.raises(ConfigError) as ei:
        load_config(overrides=overrides)
    assert fragment in str(ei.value)
    assert "\n" not in str(ei.value)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(str(lst))


def test_variants_and_pattern_resolve_per_layer():
    cfg = parse(ModelConfig, {"n_layer": 5, "variants": {"g": {"ffn": {"name": "gelu", "hidden_mult": 2}}},
                              "pattern": ["base", "g"]})
    names = [b.ffn.name for b in cfg.layer_blocks()]
    assert names == ["swiglu", "gelu", "swiglu", "gelu", "swiglu"]
    assert cfg.layer_blocks()[1].ffn.options.hidden_mult == 2
    with pytest.raises(ConfigError, match="variants.g.ffn"):
        parse(ModelConfig, {"variants": {"g": {"ffn": {"name": "gelu", "bogus": 1}}}, "pattern": ["g"]}, "model")


def test_custom_dataclass_validation_path_prefix():
    @dataclass
    class Inner(ConfigBase):
        k: int = 1
        mode: Literal["a", "b"] = "a"

        def validate(self):
            check(self.k >= 1, "k", self.k, "must be >= 1")

    @dataclass
    class Outer(ConfigBase):
        inner: Inner = field(default_factory=Inner)
        sizes: list[int] = field(default_factory=list)

    assert parse(Outer, {"inner": {"k": "3"}, "sizes": "1,2"}).sizes == [1, 2]
    with pytest.raises(ConfigError, match=r"outer.inner.k=0 is invalid: must be >= 1"):
        parse(Outer, {"inner": {"k": 0}}, "outer")
    with pytest.raises(ConfigError, match=r"outer.sizes\[1\]='x'"):
        parse(Outer, {"sizes": [1, "x"]}, "outer")


def test_apply_overrides_rejects_malformed_keys():
    with pytest.raises(ConfigError, match="malformed"):
        apply_overrides({}, [("model..n_layer", "1")])


def test_runconfig_direct_construction_validates():
    with pytest.raises(ConfigError):
        RunConfig(optim={"name": "adamw", "lr": -1.0})
