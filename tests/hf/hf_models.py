"""Tiny random Hugging Face models written by transformers itself (no downloads); imported by the tests."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            rms_norm_eps=1e-5, rope_theta=5000.0, max_position_embeddings=128)


def tiny_hf(model_type: str, seed: int = 0, **over):
    """A random transformers model of `model_type` with the TINY shape (eval mode, fp32)."""
    cfg_cls = transformers.AutoConfig.for_model
    spec = {**TINY, "intermediate_size": 64, **over}
    if model_type == "mixtral":
        spec.update(num_local_experts=4, num_experts_per_tok=2)
    if model_type == "qwen2_moe":
        spec.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg_cls(model_type, **spec)).eval()
    with torch.no_grad():  # HF zero-inits biases and ones-inits norms: randomise so the mapping is tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out
