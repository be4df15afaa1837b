"""Load a llama.cpp GGUF file (``llama`` or ``qwen2`` architecture) into a gatelab `LM`.

Metadata becomes an HF-style config (`hf_config.model_config_from_hf` then checks it);
tensor names come from the `gguf` package's own HF <-> GGUF name map; quantised tensors
(Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ... anything `gguf.quants.dequantize` implements) are
dequantised by `gguf` itself. llama.cpp's converter permutes the rows of ``attn_q`` /
``attn_k`` of ``llama`` models from rotate-half pairing (dims i, i + K/2) to interleaved
pairing (2i, 2i + 1); `unpermute_rows` undoes it (qwen2 files are stored unpermuted).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import CheckpointError, ConfigError
from ..models import LM
from .hf_config import HFArch, arch_of, model_config_from_hf
from .mapping import links, load_into

#: GGUF architectures and whether llama.cpp permuted their q/k rows.
ARCHS = {"llama": True, "qwen2": False}


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ConfigError("loading GGUF files needs the 'gguf' package; install it with: pip install gatelab[hf]") from None
    return gguf


def unpermute_rows(w: Tensor, n_head: int) -> Tensor:
    """Inverse of llama.cpp's ``permute``: rows (head, pair, 2) -> (head, 2, pair)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_config_from_gguf(reader: Any, where: str) -> dict[str, Any]:
    """An HF-style config dict from GGUF metadata (checked for what gatelab cannot compute)."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHS:
        raise ConfigError(f"{where}: GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHS)}")
    a = arch + "."
    if _field(reader, a + "expert_count", 0):
        raise ConfigError(f"{where}: MoE GGUF files are not supported; load the Hugging Face directory instead")
    scaling = _field(reader, a + "rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ConfigError(f"{where}: rope scaling {scaling!r} is not supported (gatelab computes the default RoPE only)")
    names = {t.name for t in reader.tensors}
    d, n_head = int(_field(reader, a + "embedding_length")), int(_field(reader, a + "attention.head_count"))
    head_dim = int(_field(reader, a + "attention.key_length", d // n_head))
    if int(_field(reader, a + "rope.dimension_count", head_dim)) != head_dim:
        raise ConfigError(f"{where}: partial rotary embeddings (rope.dimension_count != head_dim) are not supported")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = _field(reader, a + "vocab_size") or (len(tokens) if tokens else None) or (int(embed.shape[-1]) if embed is not None else 0)
    return {
        "model_type": arch, "hidden_size": d, "num_attention_heads": n_head, "head_dim": head_dim,
        "num_hidden_layers": int(_field(reader, a + "block_count")),
        "intermediate_size": int(_field(reader, a + "feed_forward_length")),
        "num_key_value_heads": int(_field(reader, a + "attention.head_count_kv", n_head)),
        "rms_norm_eps": float(_field(reader, a + "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_field(reader, a + "rope.freq_base", 10000.0)),
        "vocab_size": int(vocab), "tie_word_embeddings": "output.weight" not in names,
    }


def dequantize(tensor: Any, where: str) -> Tensor:
    """A GGUF tensor as float32 torch (rows = output features), dequantised by `gguf`."""
    gguf = _gguf()
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{where}: tensor {tensor.name} has quant type {tensor.tensor_type.name}, which the "
                              "installed gguf package cannot dequantise; upgrade gguf or requantise the file") from None
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a copy: the reader maps the file read-only


def load_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LM:
    """A gatelab `LM` with the (dequantised) weights of GGUF file `path` (eval mode)."""
    gguf = _gguf()
    where = str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"GGUF file {where!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{where!r} is not a readable GGUF file ({e})") from None
    hf = hf_config_from_gguf(reader, where)
    arch = arch_of(hf, where)
    model = LM(model_config_from_hf(hf, where)).to(device=device, dtype=dtype)
    tensors = {t.name: t for t in reader.tensors}
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == hf["model_type"])
    name_map = gguf.get_tensor_name_map(arch_id, arch.n_layer)
    to_gguf = {}  # HF name -> GGUF name, for the tensors the file has
    for hf_name in _hf_names(arch, model.cfg.tie_embeddings):
        g = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g is not None and g in tensors:
            to_gguf[hf_name] = g
    unmapped = sorted(set(tensors) - set(to_gguf.values()))
    if unmapped:
        raise CheckpointError(f"{where} has tensor {unmapped[0]!r} (and {len(unmapped) - 1} more) that gatelab does not "
                              "map; the file has parts this architecture does not compute")
    permuted = ARCHS[hf["model_type"]]

    def get(hf_name: str) -> Tensor:
        w = dequantize(tensors[to_gguf[hf_name]], where)
        if permuted and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_rows(w, arch.n_head)
        elif permuted and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_rows(w, arch.n_kv_head)
        return w

    load_into(model, arch, to_gguf, get, where)
    return model.eval()


def _hf_names(arch: HFArch, tie: bool) -> list[str]:
    return [s for link in links(arch, tie) for s in link.sources]
