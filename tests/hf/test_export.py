"""gatelab dense and MoE models export to HF directories that transformers loads with equal logits."""
import pytest
import torch

from hf_models import logits, transformers
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.hf import default_model_type, export_hf, load_hf
from gatelab.models import LM, ModelConfig

ATT = {"name": "attention", "n_head": 4, "n_kv_head": 2, "rope_theta": 5000.0}
MOE = {"name": "moe", "n_experts": 4, "k": 2, "hidden": 32, "router": {"name": "topk", "renorm": True}}


def gatelab_lm(ffn, qkv_bias=False, variants=None, pattern=None, tie=True, seed=0):
    spec = {"vocab_size": 64, "d_model": 32, "n_layer": 2, "tie_embeddings": tie,
            "block": {"mixer": {**ATT, "qkv_bias": qkv_bias}, "ffn": ffn, "norm": {"name": "rmsnorm", "eps": 1e-5}},
            "variants": variants or {}, "pattern": pattern or []}
    torch.manual_seed(seed)
    model = LM(parse(ModelConfig, spec)).eval()
    with torch.no_grad():  # norms and biases away from their init so the mapping is tested
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("router.weight"):
                p.normal_(0, 0.5)  # decisive routing: no near-ties between experts
    return model


CASES = {
    "llama": (lambda: gatelab_lm({"name": "swiglu", "hidden": 48}, tie=False), "LlamaForCausalLM"),
    "qwen2": (lambda: gatelab_lm({"name": "swiglu", "hidden": 48}, qkv_bias=True), "Qwen2ForCausalLM"),
    "mixtral": (lambda: gatelab_lm(MOE), "MixtralForCausalLM"),
    "qwen2_moe": (lambda: gatelab_lm({"name": "swiglu", "hidden": 48}, variants={
        "moe": {"ffn": {**MOE, "granularity": 2, "n_shared": 1, "router": {"name": "topk"}}}},
        pattern=["base", "moe"]), "Qwen2MoeForCausalLM"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_round_trip_through_transformers(tmp_path, tokens, case):
    build, hf_class = CASES[case]
    model = build()
    assert default_model_type(model) == case
    export_hf(model, tmp_path)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == hf_class
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    torch.testing.assert_close(logits(hf.eval(), tokens), logits(model, tokens), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(load_hf(tmp_path), tokens), logits(model, tokens), atol=0, rtol=0)


def test_float64_export_and_reload_is_bit_exact(tmp_path, tokens):
    model = CASES["qwen2_moe"][0]().double()
    export_hf(model, tmp_path)
    back = load_hf(tmp_path, dtype=torch.float64)
    mine, theirs = dict(model.named_parameters()), dict(back.named_parameters())
    for name, p in theirs.items():  # Qwen2-MoE always has q/k/v biases: exported as zeros
        assert torch.equal(mine[name], p) if name in mine else name.endswith("qkv.bias") and not p.any(), name


@pytest.mark.parametrize("model_type,match", [("mixtral", "mixtral needs every layer MoE"),
                                              ("llama", "has MoE layers"), ("gpt2", "cannot export")])
def test_unexportable_combinations_are_refused(tmp_path, model_type, match):
    with pytest.raises(ConfigError, match=match):
        export_hf(CASES["qwen2_moe"][0](), tmp_path, model_type)


def test_gated_attention_does_not_export(tmp_path):
    model = LM(parse(ModelConfig, {"vocab_size": 64, "d_model": 32, "n_layer": 1,
                                   "block": {"mixer": {**ATT, "gate": "headwise"}}}))
    with pytest.raises(ConfigError, match="only plain softmax attention"):
        export_hf(model, tmp_path)
