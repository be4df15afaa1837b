"""One entry point for every pretrained source, and initialising a (possibly MoE) model from it.

`load_pretrained(path)` reads a Hugging Face model directory (``config.json``), a ``.gguf``
file, or a gatelab run / checkpoint directory. `init_from(model, path)` copies those
weights into `model`, upcycling each dense FFN into the MoE layers `model` has there
(`gatelab.moe.upcycle_model`, strict: every parameter must be filled). The trainer calls it
when ``train.init_from`` is set.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.config import parse
from ..core.errors import CheckpointError
from ..models import LM, ModelConfig
from ..moe.upcycle import RouterInit, upcycle_model
from .gguf_load import load_gguf
from .hf_load import load_hf


def _load_gatelab(path: Path, dtype: torch.dtype, device: str | torch.device) -> LM:
    from ..train.checkpoint import list_checkpoints, load_checkpoint, load_weights

    ckpt = path
    if not (path / "state.json").is_file():
        found = list_checkpoints(path / "checkpoints")
        if not found:
            raise CheckpointError(f"{str(path)!r} is neither a gatelab checkpoint nor a run with checkpoints")
        ckpt = found[-1]
    state = load_checkpoint(ckpt)
    model = LM(parse(ModelConfig, state["config"]["model"], "model")).to(device=device, dtype=dtype)
    load_weights(ckpt, model)
    return model.eval()


def load_pretrained(path: str | Path, *, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> LM:
    """A gatelab `LM` from an HF model directory, a GGUF file or a gatelab run/checkpoint."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf(p, dtype=dtype, device=device)
    if (p / "config.json").is_file():
        return load_hf(p, dtype=dtype, device=device)
    if p.is_dir():
        return _load_gatelab(p, dtype, device)
    raise CheckpointError(f"pretrained source {str(p)!r} does not exist; give an HF model directory, a .gguf file "
                          "or a gatelab run directory")


def init_from(model: LM, path: str | Path, router_noise: float = 0.0, router_init: RouterInit = "keep",
              zero_routed: bool = False) -> list[str]:
    """Fill `model` from pretrained `path`, upcycling dense FFNs into its MoE layers; returns
    the upcycled module names. Raises if `model`'s config does not match the source's."""
    p = next(model.parameters())
    source = load_pretrained(path, dtype=p.dtype, device=p.device)
    if source.cfg.vocab_size != model.cfg.vocab_size:
        raise CheckpointError(f"{str(path)!r} has vocabulary {source.cfg.vocab_size} but the model has "
                              f"{model.cfg.vocab_size}; use the pretrained tokenizer (data.tokenizer.name=pretrained)")
    return upcycle_model(source, model, router_noise, router_init, zero_routed, strict=True)
