"""Data, fully sharded and expert parallel training under torchrun, identical to one process.

    torchrun --nproc_per_node 2 -m gatelab.cli train -c cfg.yaml

`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts
the process group (NCCL on CUDA, gloo on CPU); without torchrun it returns a one-process
`DistEnv` and nothing changes. The trainer then calls a few functions of this module:

* `wrap_model`: expert parallelism for MoE layers (`gatelab.moe.expert_parallel`), then
  DDP or FSDP2 (``fully_shard`` per block, then the root).
* `shard_batch`: every rank draws the *global* batch from the same seeded sampler and keeps
  its contiguous block of rows, so the global batch, the losses and the data position in a
  checkpoint are those of the single-process run, whatever the world size.
* `grad_sync`: DDP ``no_sync`` / FSDP2 ``set_requires_gradient_sync(False)`` on all but the
  last micro-batch of a gradient-accumulation step.
* `mean`, `clip_grad_norm`, `finish_grads`, `sum_router_loads`: global reductions (loss mean,
  global gradient norm over DTensor and expert-local gradients, expert-gradient averaging,
  aux-loss-free router loads summed before the bias update).
* `full_model_state` / `full_optimizer_state` gather the full state to rank 0 in the
  single-process format (optimizer state keyed by parameter index), and
  `load_model_state` / `load_optimizer_state` scatter it back, so a checkpoint written at
  one world size resumes at any other.

Expert parameters (with ``parallel.expert``) are local to their rank: DDP ignores them, and
their gradient (the sum over every rank's tokens, via the all-to-all backward) is divided
by the world size to match DDP's average of the dense gradients.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import ParallelConfig
from ..core.errors import ConfigError
from ..data import Batch
from ..moe.expert_parallel import parallelize_moe


@dataclass
class DistEnv:
    """This process's place in the job and the parallelism in use."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp
    expert_params: list[nn.Parameter] = field(default_factory=list)  # local shards (expert parallel)
    aliases: dict[str, str] = field(default_factory=dict)  # tied parameter name -> the name it is saved under

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_distributed(cfg: ParallelConfig, device: str) -> tuple[DistEnv, str]:
    """The job's `DistEnv` and the device this rank uses (``cuda`` -> ``cuda:LOCAL_RANK``).

    Uses an already initialised default process group if there is one (tests, notebooks),
    else starts one from torchrun's environment when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    if world == 1:
        return DistEnv(), device
    mode = "ddp" if cfg.data == "auto" else cfg.data
    if mode == "none":
        raise ConfigError(f"launched with {world} processes but parallel.data=none; set parallel.data to "
                          "ddp or fsdp (or auto), or launch one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        backend = ("nccl" if cuda else "gloo") if cfg.backend == "auto" else cfg.backend
        if backend == "nccl" and not cuda:
            raise ConfigError("parallel.backend=nccl needs CUDA devices; use gloo (or auto) on CPU")
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, mode), device


def shutdown(env: DistEnv) -> None:
    """End the process group a torchrun launch started (no-op in one process)."""
    if env.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(env: DistEnv, cfg: ParallelConfig, model: nn.Module) -> nn.Module:
    """Apply expert parallelism, then DDP or FSDP2, to `model` (in place where the wrapper
    allows); returns the module to call for training steps."""
    if not env.active:
        return model
    env.aliases = _tied_aliases(model)
    env.expert_params = parallelize_moe(model, shard_experts=cfg.expert, global_balance=cfg.global_balance)
    if env.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    mine = {id(p) for p in env.expert_params}
    DDP._set_params_and_buffers_to_ignore_for_model(model, [n for n, p in model.named_parameters() if id(p) in mine])
    cuda = next(model.parameters()).device.type == "cuda"
    # buffers (router biases, step counters) evolve identically on every rank: no broadcast
    return DDP(model, device_ids=[env.local_rank] if cuda else None, forward_sync_buffers=False)


def check_batch_size(env: DistEnv, batch_size: int) -> None:
    if batch_size % env.world:
        raise ConfigError(f"data.batch_size={batch_size} is not divisible by the {env.world} ranks; use a "
                          f"multiple of {env.world} (it is the global batch, split over the ranks)")


def shard_batch(env: DistEnv, batch: Batch) -> Batch:
    """This rank's contiguous block of rows of the global batch."""
    if not env.active:
        return batch
    B = batch.x.shape[0]
    check_batch_size(env, B)
    rows = slice(env.rank * (B // env.world), (env.rank + 1) * (B // env.world))
    dom = batch.domains[rows] if batch.domains is not None else None
    return Batch(batch.x[rows], batch.y[rows], dom)


@contextlib.contextmanager
def grad_sync(env: DistEnv, model: nn.Module, last: bool) -> Iterator[None]:
    """Skip the gradient reduction on all micro-batches but the `last` of a step."""
    if env.mode == "ddp" and not last:
        with model.no_sync():
            yield
        return
    if env.mode == "fsdp":
        model.set_requires_gradient_sync(last)
    yield


def mean(env: DistEnv, value: Tensor) -> Tensor:
    """Mean of `value` over the ranks (gloo has no AVG: sum, then divide)."""
    if not env.active:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / env.world


def mean_scalars(env: DistEnv, values: dict[str, float]) -> dict[str, float]:
    """Per-key mean over the ranks that logged it (router statistics, aux losses of each
    rank's micro-batch; with global balance the mean lb_loss is the global-batch loss)."""
    if not env.active:
        return values
    parts = gather_objects(env, values)
    keys = sorted(set().union(*parts))
    return {k: sum(p[k] for p in parts if k in p) / sum(k in p for p in parts) for k in keys}


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """`obj` of every rank (pickled; for small results such as evaluation sums)."""
    if not env.active:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def finish_grads(env: DistEnv) -> None:
    """Average expert gradients over the ranks as DDP/FSDP average the dense ones."""
    for p in env.expert_params:
        if p.grad is not None:
            p.grad.div_(env.world)


def clip_grad_norm(env: DistEnv, params: list[nn.Parameter], max_norm: float) -> float:
    """Clip to the global L2 norm of all gradients and return it: DTensor (FSDP2) grads are
    reduced by DTensor, expert-local grads by one all-reduce of their squared norm."""
    if not env.active:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    from torch.distributed.tensor import DTensor

    mine = {id(p) for p in env.expert_params}
    grads = [p.grad for p in params if p.grad is not None and id(p) not in mine]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if env.expert_params:
        local_sq = torch.nn.utils.get_total_norm([p.grad for p in env.expert_params if p.grad is not None]).square()
        dist.all_reduce(local_sq)
        norm = (norm.square() + local_sq).sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def sum_router_loads(env: DistEnv, modules: list[nn.Module]) -> None:
    """Sum the per-rank expert loads of aux-loss-free routers (``load_E``) before their
    `post_step` bias update, so every rank applies the same update from global loads."""
    if not env.active:
        return
    for m in modules:
        load = getattr(m, "load_E", None)
        if isinstance(load, Tensor):
            dist.all_reduce(load)


def spawn_local(fn: Callable[..., None], nprocs: int, *args: Any) -> None:
    """Run ``fn(rank, *args)`` in `nprocs` fresh processes on this machine with torchrun's
    environment (RANK, LOCAL_RANK, WORLD_SIZE, a free localhost port), as tests and
    benchmarks need; `fn` must be importable (module level). Raises if any process fails."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_spawned, args=(fn, nprocs, port, args), nprocs=nprocs, start_method="spawn")


def _spawned(rank: int, fn: Callable[..., None], world: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn(rank, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------- full state
_FULL = dict(full_state_dict=True, cpu_offload=True)


def full_model_state(env: DistEnv, model: nn.Module) -> dict[str, Tensor] | None:
    """The single-process state dict (tied weights once) on rank 0, None elsewhere. Collective."""
    if env.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(**_FULL))
    else:
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        for name in _expert_names(env, model):
            sd[name] = _gather_rows(sd[name])
    if not env.is_main:
        return None
    return {k: v.cpu().contiguous() for k, v in sd.items() if k not in env.aliases}


def load_model_state(env: DistEnv, model: nn.Module, sd: dict[str, Tensor]) -> None:
    """Load a full single-process state dict into the (sharded) model on every rank."""
    sd = dict(sd)
    for alias, name in env.aliases.items():
        sd.setdefault(alias, sd[name])
    if env.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))
        return
    for name in _expert_names(env, model):
        sd[name] = _local_rows(env, sd[name])
    model.load_state_dict(sd)


def full_optimizer_state(env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` of the single-process run (state keyed by parameter index)
    on rank 0 ({} elsewhere). Collective."""
    if env.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        osd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(**_FULL))
        return _by_index(osd, _param_names(model, optimizer)) if env.is_main else {}
    osd = optimizer.state_dict()  # its per-parameter dicts are the live state: replace, never edit
    for i in _expert_indices(env, optimizer):
        shape = _param_at(optimizer, i).shape
        if i in osd["state"]:
            osd["state"][i] = {key: _gather_rows(v) if isinstance(v, Tensor) and v.shape == shape else v
                               for key, v in sorted(osd["state"][i].items())}
    return osd if env.is_main else {}


def load_optimizer_state(env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer,
                         osd: dict[str, Any]) -> None:
    """Load a single-process optimizer state dict into the (sharded) optimizer on every rank."""
    if env.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        by_name = _by_name(osd, _param_names(model, optimizer))
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
        return
    osd = {"state": {int(k): dict(v) for k, v in osd["state"].items()}, "param_groups": osd["param_groups"]}
    for i in _expert_indices(env, optimizer):
        full_shape = (_param_at(optimizer, i).shape[0] * env.world, *_param_at(optimizer, i).shape[1:])
        for key, value in osd["state"].get(i, {}).items():
            if isinstance(value, Tensor) and value.shape == full_shape:
                osd["state"][i][key] = _local_rows(env, value)
    optimizer.load_state_dict(osd)


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _expert_names(env: DistEnv, model: nn.Module) -> list[str]:
    mine = {id(p) for p in env.expert_params}
    return [n for n, p in model.named_parameters() if id(p) in mine]


def _gather_rows(local: Tensor) -> Tensor:
    """Concatenate every rank's rows (expert shards are equal-sized, in rank order)."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)


def _local_rows(env: DistEnv, full: Tensor) -> Tensor:
    n = full.shape[0] // env.world
    return full[env.rank * n:(env.rank + 1) * n]


def _flat_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _param_at(optimizer: torch.optim.Optimizer, i: int) -> nn.Parameter:
    return _flat_params(optimizer)[i]


def _expert_indices(env: DistEnv, optimizer: torch.optim.Optimizer) -> list[int]:
    mine = {id(p) for p in env.expert_params}
    return [i for i, p in enumerate(_flat_params(optimizer)) if id(p) in mine]


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in _flat_params(optimizer)]


def _by_index(osd: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A name-keyed optimizer state dict (torch.distributed.checkpoint) -> index-keyed."""
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]
    return {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def _by_name(osd: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Inverse of `_by_index`."""
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]]
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()}, "param_groups": groups}
