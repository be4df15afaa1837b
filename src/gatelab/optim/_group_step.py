"""The torch.optim ``step`` skeleton shared by helper B's optimizers (not auto-imported).

``GroupStepOptimizer.step`` evaluates the closure with grad enabled, then hands each param
group's tensors that have gradients to ``_step_group(group, params, grads, foreach)``, with
``foreach`` resolved by `_get_foreach_default` (loop on CPU, foreach on accelerators).
``safe_div`` is the guarded ratio the step-size rules share.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._functional import _get_foreach_default, _params_with_grads

__all__ = ["GroupStepOptimizer", "eval_closure", "safe_div"]


def eval_closure(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` under ``torch.enable_grad()`` (None without a closure)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (broadcasting; den is never divided by 0)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)


class GroupStepOptimizer(Optimizer):
    """An Optimizer whose update is independent per param group."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Any:
        """One step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = eval_closure(closure)
        for group in self.param_groups:
            params, grads = _params_with_grads(group)
            if params:
                foreach = _get_foreach_default(params, group["foreach"])
                self._step_group(group, params, grads, foreach)
        return loss

    def _step_group(self, group: dict, params: list[Tensor], grads: list[Tensor],
                    foreach: bool) -> None:
        raise NotImplementedError
