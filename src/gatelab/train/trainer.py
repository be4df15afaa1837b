"""The training loop: one readable `train_step`, evaluation, metrics and exact resume.

    trainer = Trainer(load_config("configs/tiny.yaml"), out_dir="runs/tiny")
    result = trainer.fit()

Per optimizer step: `grad_accum` micro-batches of (x, y) -> model -> cross-entropy +
the blocks' auxiliary losses -> backward; clip; optimizer and schedule step; modules
with a `post_step()` hook (e.g. aux-loss-free router biases) update. Metrics go to
``metrics.jsonl`` every `log.every` steps; checkpoints are atomic and resume exactly.

Under torchrun the same loop runs data parallel (DDP or FSDP2), optionally with expert
parallel MoE layers; every rank computes its rows of the single-process global batch, and
rank 0 writes metrics and checkpoints (`gatelab.train.distributed`).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import sink_metric
from ..config import RunConfig
from ..core.config import Component, dump_yaml, to_dict
from ..core.errors import CheckpointError, ConfigError, NonFiniteLossError
from ..data import Batch, DataBundle, RandomWindowSampler, build_data, eval_batches
from ..models import LM, LMOutput
from . import distributed
from .checkpoint import (checkpoint_dir, list_checkpoints, load_checkpoint, load_weights, read_weights,
                         save_checkpoint)
from .metrics import MetricsLogger


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config train.device={name!r} is invalid: CUDA is not available here; use cpu or auto")
    return dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. 'auto' = bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_optimizer(comp: Component, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer with weight decay on matrices only (nanoGPT's rule:
    norms, biases and other 1-D parameters are not decayed)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    kwargs = comp.kwargs()
    groups: list[dict[str, Any]] = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, **({"weight_decay": 0.0} if "weight_decay" in kwargs else {})})
    return comp.cls(groups, **kwargs)


def lm_loss(logits_BTV: Tensor, targets_BT: Tensor, reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy in fp32."""
    loss = F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten(), reduction=reduction)
    return loss if reduction == "mean" else loss.view_as(targets_BT)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # training loss of every step run here
    final: dict[str, Any] = field(default_factory=dict)  # last evaluation and compute figures


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, data: DataBundle | None = None):
        self.out_dir = Path(out_dir)
        self.data = data if data is not None else build_data(cfg.data)
        self.cfg = cfg = self._fill_vocab(cfg, self.data.tokenizer.vocab_size)
        self.dist, device = distributed.init_distributed(cfg.parallel, cfg.train.device)
        distributed.check_batch_size(self.dist, cfg.data.batch_size)
        self.device = resolve_device(device)
        torch.manual_seed(cfg.train.seed)
        self.model = LM(cfg.model).to(self.device)  # the module itself (FSDP2 shards it in place)
        if cfg.train.init_from:  # pretrained weights, dense FFNs upcycled into MoE layers (gatelab.hf)
            from ..hf import init_from
            init_from(self.model, cfg.train.init_from)
        self.train_model = distributed.wrap_model(self.dist, cfg.parallel, self.model)  # DDP wrapper or the model
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.scheduler = cfg.schedule.cls(self.optimizer, total_steps=cfg.train.steps, **cfg.schedule.kwargs())
        self.sampler = RandomWindowSampler(self.data.train, cfg.data.seq_len, cfg.data.batch_size, seed=cfg.data.seed)
        self.eval_set = eval_batches(self.data.val, cfg.data.seq_len, cfg.data.batch_size, cfg.eval.batches)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        if use_scaler and self.dist.mode == "fsdp":
            raise ConfigError("train.precision=fp16 with parallel.data=fsdp is not supported (it needs a sharded "
                              "gradient scaler); use precision=bf16 or parallel.data=ddp")
        self._post_step = [m for m in self.model.modules() if hasattr(m, "post_step")]
        if cfg.train.compile:
            for block in self.model.blocks:
                block.compile()
        self.step = 0
        self.skipped = 0
        self.last_ckpt: Path | None = None

    @staticmethod
    def _fill_vocab(cfg: RunConfig, vocab: int) -> RunConfig:
        if cfg.model.vocab_size == 0:
            return replace(cfg, model=replace(cfg.model, vocab_size=vocab))
        if cfg.model.vocab_size < vocab:
            raise ConfigError(f"config model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"vocabulary ({vocab}); set it to 0 to use the tokenizer's")
        return cfg

    @property
    def ckpt_root(self) -> Path:
        return self.out_dir / "checkpoints"

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: Batch) -> Batch:
        nb = self.device.type == "cuda"
        dom = batch.domains.to(self.device, non_blocking=nb) if batch.domains is not None else None
        return Batch(batch.x.to(self.device, non_blocking=nb), batch.y.to(self.device, non_blocking=nb), dom)

    def train_step(self) -> tuple[float, float, LMOutput]:
        """One optimizer step; returns (loss, grad norm, output of the last micro-batch)."""
        self.train_model.train()
        accum = self.cfg.train.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        for i in range(accum):
            batch = self._to_device(distributed.shard_batch(self.dist, self.sampler.next()))
            with distributed.grad_sync(self.dist, self.train_model, last=i == accum - 1):
                with self._autocast():
                    out = self.train_model(batch.x, domains_BT=batch.domains)
                    loss = lm_loss(out.logits, batch.y)
                    aux = out.aux_loss
                    total = loss if aux is None else loss + aux
                scaled = total / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += total.detach()
        loss_value = distributed.mean(self.dist, loss_sum / accum).item()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        distributed.finish_grads(self.dist)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = distributed.clip_grad_norm(self.dist, list(self.model.parameters()), clip)
        finite = math.isfinite(loss_value) and (math.isfinite(grad_norm) or self.scaler is not None)
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            distributed.sum_router_loads(self.dist, self._post_step)
            for m in self._post_step:
                m.post_step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if not finite:
            self._handle_nonfinite(loss_value, grad_norm)
        return loss_value, grad_norm, out

    def _handle_nonfinite(self, loss: float, grad_norm: float) -> None:
        what = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} " \
               f"(loss={loss}, grad_norm={grad_norm}) at step {self.step}"
        keep = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written yet"
        if self.cfg.train.on_nonfinite == "stop":
            raise NonFiniteLossError(f"{what}; {keep}; lower optim.lr, raise train.grad_clip "
                                     "or set train.on_nonfinite=skip")
        self.skipped += 1
        if self.skipped > self.cfg.train.max_skips:
            raise NonFiniteLossError(f"{what}: {self.skipped} steps skipped, more than train.max_skips="
                                     f"{self.cfg.train.max_skips}; {keep}")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss over the fixed eval batches (per domain too when labelled), and the
        attention-sink share and max activation per layer on the first eval batch."""
        self.model.eval()
        total, count = 0.0, 0
        dom_sum: dict[int, float] = {}
        dom_cnt: dict[int, int] = {}
        for batch in self.eval_set:
            batch = self._to_device(distributed.shard_batch(self.dist, batch))
            with self._autocast():
                out = self.model(batch.x, domains_BT=batch.domains)
            nll_BT = lm_loss(out.logits, batch.y, reduction="none")
            total += float(nll_BT.sum())
            count += nll_BT.numel()
            if batch.domains is not None:
                for d, s, c in _group_sum(nll_BT, batch.domains):
                    dom_sum[d] = dom_sum.get(d, 0.0) + s
                    dom_cnt[d] = dom_cnt.get(d, 0) + c
        mine = (total, count, dom_sum, dom_cnt)
        total, count, dom_sum, dom_cnt = _merge_sums(distributed.gather_objects(self.dist, mine))
        val = total / count
        res = {"val_loss": val, "val_bits_per_token": val / math.log(2)}
        res.update(sink_metric.measure(self.model, self._to_device(self.eval_set[0]).x))  # F-Attn, M-Act
        names = self.data.domain_names
        for d in sorted(dom_sum):
            label = names[d] if names is not None and d < len(names) else str(d)
            res[f"val_loss/{label}"] = dom_sum[d] / dom_cnt[d]
        return res

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": to_dict(self.cfg),
            "step": self.step,
            "skipped": self.skipped,
            "optimizer": distributed.full_optimizer_state(self.dist, self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
        }

    def save(self) -> Path:
        """Write a checkpoint (under torchrun: the gathered full state, by rank 0)."""
        weights = distributed.full_model_state(self.dist, self.model) if self.dist.active else self.model
        state = self.state_dict()
        if self.dist.is_main:
            save_checkpoint(self.ckpt_root, self.step, weights, state, keep_last=self.cfg.train.keep_last)
        self.dist.barrier()
        self.last_ckpt = checkpoint_dir(self.ckpt_root, self.step)
        return self.last_ckpt

    def load(self, path: str | Path) -> None:
        """Restore model, optimizer, schedule, data position and RNG from a checkpoint."""
        state = load_checkpoint(path)
        self._check_compatible(state["config"], path)  # before the weights: a config error, not a shape error
        if self.dist.active:  # every rank reads the checkpoint (a filesystem all ranks see)
            distributed.load_model_state(self.dist, self.model, read_weights(path))
            distributed.load_optimizer_state(self.dist, self.model, self.optimizer, state["optimizer"])
        else:
            load_weights(path, self.model)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_as_tuple(state["rng"]["python"]))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.last_ckpt = Path(path)

    def _check_compatible(self, saved: dict[str, Any], path: str | Path) -> None:
        now = to_dict(self.cfg)
        for section in ("model", "data"):
            diffs = _diff(saved.get(section), now[section], section)
            if diffs:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} was trained with a different {section} config "
                    f"({'; '.join(diffs[:3])}); resume with the original config or start a new run")

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Train to `train.steps`. With `resume`, continue from the newest checkpoint in
        ``out_dir/checkpoints`` (if any) exactly as if the run had never stopped."""
        cfg = self.cfg
        if resume and (ckpts := list_checkpoints(self.ckpt_root)):
            self.load(ckpts[-1])
        main = self.dist.is_main  # rank 0 writes files; every rank computes the records
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
            self.data.tokenizer.save(self.out_dir)  # `gatelab generate` decodes with exactly this tokenizer
        logger = MetricsLogger(self.out_dir, cfg.log.tensorboard, resume_step=self.step if resume else None) \
            if main else None
        result = TrainResult(self.out_dir, self.step)
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum
        progress = _progress(cfg.train.steps, self.step, cfg.log.progress and main)
        window_t0, window_steps = time.perf_counter(), 0
        try:
            while self.step < cfg.train.steps:
                loss, grad_norm, out = self.train_step()
                result.losses.append(loss)
                window_steps += 1
                last = self.step == cfg.train.steps
                record: dict[str, Any] | None = None
                if self.step % cfg.log.every == 0 or last:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    dt = (time.perf_counter() - window_t0) / window_steps
                    record = {"step": self.step, "loss": sum(result.losses[-window_steps:]) / window_steps,
                              "step_loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                              "grad_norm": grad_norm, "step_time_ms": 1000 * dt,
                              "tokens_per_s": tokens_per_step / dt, "skipped": self.skipped}
                    record.update(self._compute_figures(out, tokens_per_step / dt))
                    record.update(distributed.mean_scalars(self.dist, out.aux.scalar_stats()))
                if (cfg.eval.every and self.step % cfg.eval.every == 0) or last:
                    record = record or {"step": self.step}
                    record.update(self.evaluate())
                if record is not None:
                    if logger is not None:
                        logger.log(record)
                    if on_log is not None:
                        on_log(record)
                    if "tokens_per_s" in record:
                        progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    window_t0, window_steps = time.perf_counter(), 0
                if (cfg.train.ckpt_every and self.step % cfg.train.ckpt_every == 0) or last:
                    self.save()
                progress.update(1)
                if last:
                    result.final = record or {}
        finally:
            progress.close()
            if logger is not None:
                logger.close()
        result.step = self.step
        return result

    def _compute_figures(self, out: LMOutput, tokens_per_s: float) -> dict[str, Any]:
        """Executed forward FLOPs and active parameters per token, achieved FLOP/s, MFU
        (over all ranks: tokens_per_s is global, the peak is per device)."""
        tokens = out.logits.shape[0] * out.logits.shape[1]  # this rank's micro-batch
        fwd = out.meter.total_flops() / tokens
        achieved = 3 * fwd * tokens_per_s  # training ~ forward + 2x backward
        peak = self.cfg.train.peak_flops * self.dist.world
        return {"flops_per_token": fwd, "active_params": out.meter.total_param_reads() / tokens,
                "train_tflops": achieved / 1e12, "mfu": achieved / peak if peak > 0 else None}


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, leave=False)


def _group_sum(values_BT: Tensor, groups_BT: Tensor) -> list[tuple[int, float, int]]:
    ids = groups_BT.flatten()
    vals = values_BT.flatten().double()
    n = int(ids.max()) + 1
    sums = torch.zeros(n, dtype=torch.float64, device=vals.device).index_add_(0, ids, vals)
    counts = torch.bincount(ids, minlength=n)
    return [(d, float(sums[d]), int(counts[d])) for d in range(n) if counts[d] > 0]


def _merge_sums(parts: list[tuple[float, int, dict[int, float], dict[int, int]]]
                ) -> tuple[float, int, dict[int, float], dict[int, int]]:
    """Evaluation sums of every rank added up: (nll sum, token count, per-domain sums and counts)."""
    total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    dom_sum: dict[int, float] = {}
    dom_cnt: dict[int, int] = {}
    for _, _, ds, dc in parts:
        for d in ds:
            dom_sum[d] = dom_sum.get(d, 0.0) + ds[d]
            dom_cnt[d] = dom_cnt.get(d, 0) + dc[d]
    return total, count, dom_sum, dom_cnt


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}")
        return out
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
