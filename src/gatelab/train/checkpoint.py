"""Atomic, safetensors-based checkpoints.

A checkpoint is a directory ``ckpt-0000100/`` holding

    model.safetensors   weights (tied tensors stored once)
    state.safetensors   every tensor of the training state (optimizer moments, RNG states,
                        data-sampler generator, ...)
    state.json          everything else: resolved config, step, scheduler, the structure
                        of the training state with tensors replaced by references

It is written to a temporary sibling directory, each file fsynced, then renamed into
place, so a write killed midway never leaves a half checkpoint under a final name and
the previous checkpoint stays loadable.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ..core.errors import CheckpointError

_NAME = re.compile(r"^ckpt-(\d{7,})$")
_TENSOR = "__tensor__"


def flatten_tensors(tree: Any, tensors: dict[str, torch.Tensor], prefix: str = "",
                    _seen: dict[int, str] | None = None) -> Any:
    """JSON-able copy of `tree` with each tensor moved into `tensors` under a path key.

    A tensor object met twice (e.g. D-Adaptation's d, shared by all param groups) is stored
    once and both places point at it, so loading shares it again (safetensors refuses
    tensors that share memory)."""
    seen = {} if _seen is None else _seen
    if isinstance(tree, torch.Tensor):
        if id(tree) in seen:
            return {_TENSOR: seen[id(tree)]}
        key = seen[id(tree)] = prefix or "root"
        tensors[key] = tree.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(tree, dict):
        return {"__dict__": [[_json_key(k), flatten_tensors(v, tensors, f"{prefix}.{k}" if prefix else str(k), seen)]
                             for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        items = [flatten_tensors(v, tensors, f"{prefix}.{i}", seen) for i, v in enumerate(tree)]
        return {"__tuple__": items} if isinstance(tree, tuple) else items
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise CheckpointError(f"cannot store a {type(tree).__name__} at {prefix!r} in a checkpoint")


def unflatten_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_tensors`."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        if "__tuple__" in tree:
            return tuple(unflatten_tensors(v, tensors) for v in tree["__tuple__"])
        return {k: unflatten_tensors(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, list):
        return [unflatten_tensors(v, tensors) for v in tree]
    return tree


def _json_key(k: Any) -> Any:
    if isinstance(k, (str, int)) and not isinstance(k, bool):
        return k
    raise CheckpointError(f"checkpoint state keys must be str or int, got {k!r}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"ckpt-{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(root: str | Path, step: int, model: nn.Module | dict[str, torch.Tensor], state: dict[str, Any],
                    keep_last: int | None = None) -> Path:
    """Atomically write checkpoint `step` under `root`; prune to the newest `keep_last`.
    `model` is the module, or its full state dict with tied weights once (as gathered
    under torch.distributed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        if isinstance(model, nn.Module):
            save_model(model, str(tmp / "model.safetensors"))
        else:
            save_file(model, str(tmp / "model.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        tree = flatten_tensors(state, tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        with open(tmp / "state.json", "w", encoding="utf-8") as fh:
            json.dump({"format": "gatelab-checkpoint-1", "step": step, "state": tree}, fh)
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. end of a resumed run): replace
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint directory: loads weights into `model` (strictly) and returns the
    training state dict with its tensors restored. Clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    for name in ("model.safetensors", "state.safetensors", "state.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: {name} is missing")
    try:
        with open(path / "state.json", encoding="utf-8") as fh:
            meta = json.load(fh)
        tensors = load_file(str(path / "state.safetensors"))
    except (json.JSONDecodeError, SafetensorError, OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt ({e}); delete it or resume from an older one") from None
    if meta.get("format") != "gatelab-checkpoint-1":
        raise CheckpointError(f"checkpoint {str(path)!r} has unknown format {meta.get('format')!r}")
    if model is not None:
        load_weights(path, model)
    try:
        return unflatten_tensors(meta["state"], tensors)
    except KeyError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: tensor {e} is missing") from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's ``model.safetensors`` as a state dict (tied weights once, on the CPU)."""
    try:
        return load_file(str(Path(path) / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: model.safetensors is unreadable ({e})") from None


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load a checkpoint's ``model.safetensors`` into `model` (strictly; tied weights once)."""
    path = Path(path)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: model.safetensors is corrupt ({e})") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model ({' '.join(first[:2])}); "
            "use the config the checkpoint was trained with"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}; use the config the checkpoint was trained with"
        )
