"""Export a gatelab `LM` to a Hugging Face model directory (``config.json`` +
``model.safetensors``) that ``transformers.AutoModelForCausalLM`` loads.

Dense models export as ``llama`` (or ``qwen2`` with q/k/v biases); MoE models as
``mixtral`` (every layer MoE, renormalised top-k, no shared expert) or ``qwen2_moe``
(dense layers listed in ``mlp_only_layers``, ``norm_topk_prob`` = the router's
renormalisation, a shared expert whose sigmoid gate is exported as weight 0, i.e. exactly
1/2, with its down projection doubled). Expert tensors are written per expert (the
layout of the published checkpoints; transformers >= 5 fuses them on load).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models import LM
from .hf_config import arch_of, hf_config_from_model
from .mapping import export_tensors


def default_model_type(model: LM) -> str:
    """llama / qwen2 for dense models, mixtral / qwen2_moe for MoE ones, whichever fits."""
    blocks = model.cfg.layer_blocks()
    bias = bool(getattr(blocks[0].mixer.options, "qkv_bias", False))
    moes = [b.ffn.options for b in blocks if b.ffn.name == "moe"]
    if not moes:
        return "qwen2" if bias else "llama"
    mixtral_ok = (not bias and len(moes) == len(blocks) and moes[0].n_shared == 0
                  and (moes[0].router.options.renorm or moes[0].router.options.order == "topk_softmax"))
    return "mixtral" if mixtral_ok else "qwen2_moe"


def export_hf(model: LM, out_dir: str | Path, model_type: str | None = None,
              dtype: torch.dtype | None = None) -> Path:
    """Write `model` to `out_dir` as a Hugging Face checkpoint of `model_type` (default: see
    `default_model_type`), in `dtype` (default: the model's); returns the directory."""
    from safetensors.torch import save_file

    model_type = model_type or default_model_type(model)
    hf = hf_config_from_model(model.cfg, model_type)
    tensors = export_tensors(model, arch_of(hf))
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    hf["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    return out
