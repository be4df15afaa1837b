"""Pretrained models: load Hugging Face directories and GGUF files into gatelab's `LM`,
upcycle them into MoE, and export gatelab models back to Hugging Face format.

    from gatelab.hf import load_pretrained, export_hf
    model = load_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")   # or an HF model directory
    export_hf(model, "out/my-model")                              # transformers loads it

Needs the optional extra ``pip install gatelab[hf]`` (safetensors is core; the `gguf`
package for GGUF, `tokenizers` / `transformers` for tokenizers).
"""
from .export import default_model_type, export_hf
from .gguf_load import load_gguf
from .hf_config import hf_config_from_model, model_config_from_hf
from .hf_load import load_hf
from .pretrained import init_from, load_pretrained
from .tokenizer import PretrainedTokenizer

__all__ = ["PretrainedTokenizer", "default_model_type", "export_hf", "hf_config_from_model", "init_from",
           "load_gguf", "load_hf", "load_pretrained", "model_config_from_hf"]
