"""Schedule-Free AdamW: interpolation + averaging replaces the lr schedule (baseline).

Paper: "The Road Less Scheduled" (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky,
NeurIPS 2024).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.registry import register
from ._functional import _BaseOptimizer, _check_lr_betas_eps, _check_nonneg

__all__ = ["ScheduleFreeAdamW"]


@register("optimizer", "schedule_free_adamw")
class ScheduleFreeAdamW(_BaseOptimizer):
    r"""Schedule-Free AdamW (Defazio et al., 2024), Algorithm 1.

    Three sequences: z (the base SGD/Adam iterate), x (the average, used for evaluation)
    and y = (1-β1) z + β1 x (where gradients are taken). Per step t = 1, 2, ...::

        v_t = β2 v_{t-1} + (1-β2) g_t²,  g_t = ∇f(y_t)
        γ_t = lr · sqrt(1-β2^t) · min(1, t/warmup_steps)
        z_{t+1} = z_t - γ_t (g_t/(√v_t + ε) + λ y_t)
        c_{t+1} = w_t / Σ_{i<=t} w_i,  w_t = t^r · (max_{i<=t} γ_i)^weight_lr_power
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}

    With r = 0 and power 2 (defaults) and a non-decreasing γ_t, c_{t+1} = γ_t²/Σγ_i² as in
    the paper. Only y and z are stored: the parameter holds y in train mode and is
    rewritten in place as y_{t+1} = lerp(y_t, z_t, c) + γ(β1(1-c) - 1)·ĝ,
    z_{t+1} = z_t - γ ĝ (ĝ = g/(√v+ε) + λy), which is the update above.

    **Call ``optimizer.eval()`` before evaluating or saving weights** (the parameter then
    holds x = (y - (1-β1) z)/β1) and ``optimizer.train()`` before training again; the mode
    is stored in the param groups (``train_mode``) and survives ``state_dict``. ``step`` in
    eval mode raises. Do not combine with an lr schedule other than the built-in warm-up.

    Defaults (official ``schedulefree``): lr 0.0025, betas (0.9, 0.999), eps 1e-8,
    weight_decay 0, warmup_steps 0, r 0, weight_lr_power 2.

    Args:
        params, lr, betas, eps, weight_decay, warmup_steps, r, weight_lr_power: as above.
        maximize: maximise the objective.
        foreach: ``torch._foreach_*`` path; None picks the faster one (loop on CPU).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr_betas_eps(lr, betas, eps, weight_decay)
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"Invalid warmup_steps: {warmup_steps}")
        _check_nonneg("r", r)
        _check_nonneg("weight_lr_power", weight_lr_power)
        if betas[0] == 0:
            raise ValueError("Invalid beta parameter at index 0: 0 (schedule-free needs β1 > 0)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                        maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.update(k=0, lr_max=0.0, weight_sum=0.0, train_mode=True)

    def _init_extra_state(self, p: Tensor, state: dict[str, Any], group: Any) -> None:
        state["z"] = p.detach().clone(memory_format=torch.preserve_format)

    @torch.no_grad()
    def eval(self) -> None:
        """Switch parameters to the averaged point x (for evaluation and checkpoints)."""
        self._switch(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Switch parameters back to the gradient point y."""
        self._switch(train=True)

    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta1 = group["betas"][0]
            weight = 1 - beta1 if train else 1 - 1 / beta1  # x → y  or  y → x
            params = [p for p in group["params"] if "z" in self.state[p]]
            if params:
                torch._foreach_lerp_(params, [self.state[p]["z"] for p in params], weight)
            group["train_mode"] = train

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if not group["train_mode"]:
            raise RuntimeError("ScheduleFreeAdamW.step() in eval mode: call optimizer.train() first")
        steps, (exp_avg_sqs,) = self._states(params, ("exp_avg_sq",), group)
        for step_t in steps:
            step_t += 1
        zs = [self.state[p]["z"] for p in params]
        beta1, beta2 = group["betas"]
        k = group["k"] + 1
        warm = min(1.0, k / group["warmup_steps"]) if group["warmup_steps"] else 1.0
        lr = group["lr"] * math.sqrt(1 - beta2**k) * warm
        group["lr_max"] = lr_max = max(lr, group["lr_max"])
        weight = k ** group["r"] * lr_max ** group["weight_lr_power"]
        group["weight_sum"] += weight
        ckp1 = weight / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
        group["k"] = k
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        fn = (_multi_tensor_schedule_free if self._use_path(group, params) == "foreach"
              else _single_tensor_schedule_free)
        fn(params, grads, exp_avg_sqs, zs, lr=lr, ckp1=ckp1, beta1=beta1, beta2=beta2,
           eps=group["eps"], weight_decay=group["weight_decay"])


def _single_tensor_schedule_free(
    params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor], zs: list[Tensor],
    *, lr: float, ckp1: float, beta1: float, beta2: float, eps: float, weight_decay: float,
) -> None:
    """Per-tensor reference: updates y (the parameter), z and v in place."""
    for y, g, v, z in zip(params, grads, exp_avg_sqs, zs):
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        g_hat = g.div(v.sqrt().add_(eps))
        if weight_decay != 0:
            g_hat.add_(y, alpha=weight_decay)  # decay at y
        y.lerp_(z, ckp1)
        y.add_(g_hat, alpha=lr * (beta1 * (1 - ckp1) - 1))
        z.sub_(g_hat, alpha=lr)


def _multi_tensor_schedule_free(
    params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor], zs: list[Tensor],
    *, lr: float, ckp1: float, beta1: float, beta2: float, eps: float, weight_decay: float,
) -> None:
    """The same update with torch._foreach_* ops."""
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    g_hats = torch._foreach_div(grads, denoms)
    if weight_decay != 0:
        torch._foreach_add_(g_hats, params, alpha=weight_decay)
    torch._foreach_lerp_(params, zs, ckp1)
    torch._foreach_add_(params, g_hats, alpha=lr * (beta1 * (1 - ckp1) - 1))
    torch._foreach_sub_(zs, g_hats, alpha=lr)
