"""Hugging Face directories load into gatelab's LM with transformers' logits."""
import json

import pytest
import torch

from hf_models import logits, tiny_hf
from gatelab.core.errors import CheckpointError, ConfigError
from gatelab.hf import load_hf


@pytest.mark.parametrize("model_type,over", [("llama", {}), ("llama", {"tie_word_embeddings": True}),
                                             ("llama", {"head_dim": 16}), ("qwen2", {}),
                                             ("mistral", {"sliding_window": None}), ("mixtral", {})])
def test_loaded_logits_equal_transformers_fp32(tmp_path, tokens, model_type, over):
    hf = tiny_hf(model_type, **over)
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    torch.testing.assert_close(logits(model, tokens), logits(hf, tokens), atol=1e-5, rtol=0)


def test_sharded_checkpoint_with_index_loads(tmp_path, tokens):
    hf = tiny_hf("llama")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    torch.testing.assert_close(logits(load_hf(tmp_path), tokens), logits(hf, tokens), atol=1e-5, rtol=0)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,match", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "model_type 'gpt2'.*not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 2.0}}, "rope type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_unsupported_config_is_one_line_config_error(tmp_path, changes, match):
    tiny_hf("llama").save_pretrained(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ConfigError, match=match) as e:
        load_hf(tmp_path)
    assert "\n" not in str(e.value)


def test_missing_and_mis_shaped_tensors_are_checkpoint_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf("llama").save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    up = tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match="lacks tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_hf(tmp_path)
    tensors["model.layers.1.mlp.up_proj.weight"] = up[:-1]
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match="shape mismatch for blocks.1.ffn.gate_up.weight"):
        load_hf(tmp_path)
    tensors["model.layers.1.mlp.up_proj.weight"] = up
    tensors["model.layers.1.mlp.extra.weight"] = up.clone()
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match="does not map"):
        load_hf(tmp_path)


def test_qwen2_moe_with_a_learned_shared_gate_is_refused(tmp_path):
    tiny_hf("qwen2_moe").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="shared_expert_gate.weight is not a zero"):
        load_hf(tmp_path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_hf(tmp_path)
