"""Load a Hugging Face model directory (``config.json`` + ``model.safetensors``, or shards
listed in ``model.safetensors.index.json``) into a gatelab `LM`."""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, ConfigError
from ..models import LM
from .hf_config import arch_of, model_config_from_hf
from .mapping import load_into

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_hf_config(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "config.json"
    if not p.is_file():
        raise ConfigError(f"{str(path)!r} is not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(p)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None


def safetensors_files(path: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded or single-file checkpoints)."""
    from safetensors import safe_open

    d = Path(path)
    if (d / INDEX_FILE).is_file():
        weight_map = json.loads((d / INDEX_FILE).read_text(encoding="utf-8")).get("weight_map", {})
        files = {name: d / f for name, f in weight_map.items()}
        absent = sorted({str(f) for f in files.values() if not f.is_file()})
        if absent:
            raise CheckpointError(f"shard {absent[0]!r} listed in {INDEX_FILE} does not exist; download every shard")
        return files
    shards = sorted(d.glob("*.safetensors"))
    if not shards:
        hint = " (PyTorch .bin checkpoints are not read: save with safe_serialization=True)" if list(d.glob("*.bin")) else ""
        raise CheckpointError(f"{str(d)!r} has no .safetensors weights{hint}")
    files = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            files.update({name: shard for name in f.keys()})
    return files


def load_hf(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LM:
    """A gatelab `LM` with the weights of the HF model directory `path` (eval mode)."""
    from safetensors import safe_open

    hf = read_hf_config(path)
    where = str(Path(path) / "config.json")
    arch = arch_of(hf, where)
    model = LM(model_config_from_hf(hf, where)).to(device=device, dtype=dtype)
    files = safetensors_files(path)
    with ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in set(files.values())}
        load_into(model, arch, files, lambda name: handles[files[name]].get_tensor(name), str(path))
    return model.eval()
