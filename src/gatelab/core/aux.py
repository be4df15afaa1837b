"""The auxiliary-output channel and the per-forward context passed down the model.

Any module may add named auxiliary losses (already multiplied by their coefficient) and
statistics (detached scalars or small tensors) to an `AuxOutputs` collector. The model
creates one collector per forward, hands each block a scoped view (names become
``layer3/moe/load_cv``), and returns it with the logits; the trainer adds
`total_loss()` to the task loss and logs `stats`. No module talks to a logger.

Standalone use of a gatelab module in your own model::

    aux = AuxOutputs()
    y = moe(x, ForwardContext(aux=aux))
    loss = task_loss + aux.total_loss()
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .flops import ComputeMeter


class AuxOutputs:
    """Collector of named losses and statistics for one forward pass.

    `scope(name)` returns a view that writes into the same dictionaries with
    ``name/`` prefixed, so a module never needs to know where it sits in the model.
    """

    def __init__(self, prefix: str = "", _losses: dict | None = None, _stats: dict | None = None,
                 _mean_groups: dict | None = None):
        self.prefix = prefix
        self.losses: dict[str, Tensor] = {} if _losses is None else _losses
        self.stats: dict[str, Tensor | float] = {} if _stats is None else _stats
        self.mean_groups: dict[str, str] = {} if _mean_groups is None else _mean_groups

    def scope(self, name: str) -> AuxOutputs:
        return AuxOutputs(f"{self.prefix}{name}/", self.losses, self.stats, self.mean_groups)

    def add_loss(self, name: str, value: Tensor, mean_over: str | None = None) -> None:
        """Add a weighted auxiliary loss (a scalar with grad); repeated names accumulate.

        Losses added with the same `mean_over` group (e.g. one per MoE layer) enter
        `total_loss` as their mean instead of their sum; `losses` keeps each one."""
        key = self.prefix + name
        self.losses[key] = self.losses[key] + value if key in self.losses else value
        if mean_over is not None:
            self.mean_groups[key] = mean_over

    def add_stat(self, name: str, value: Tensor | float) -> None:
        """Record a statistic; tensors are detached. A repeated name overwrites."""
        self.stats[self.prefix + name] = value.detach() if isinstance(value, Tensor) else value

    def total_loss(self) -> Tensor | None:
        """Sum of all auxiliary losses (the mean within each `mean_over` group), or None
        when no module added one."""
        if not self.losses:
            return None
        group_size = Counter(self.mean_groups.values())
        return torch.stack([v.float() / group_size[self.mean_groups[k]] if k in self.mean_groups else v.float()
                            for k, v in self.losses.items()]).sum()

    def scalar_stats(self) -> dict[str, float]:
        """Losses and statistics as Python floats (one device sync), for logging.

        Non-scalar statistics are skipped here; callers that want them read `stats`.
        """
        out: dict[str, float] = {}
        scalars: list[tuple[str, Tensor]] = []
        for k, v in list(self.losses.items()) + list(self.stats.items()):
            if isinstance(v, Tensor):
                if v.numel() == 1:
                    scalars.append((k, v.detach().float().reshape(())))
            else:
                out[k] = float(v)
        if scalars:
            values = torch.stack([v for _, v in scalars]).tolist()
            out.update({k: val for (k, _), val in zip(scalars, values)})
        return out


@dataclass
class ForwardContext:
    """What a block's parts may need besides the hidden states of one forward.

    aux:        the (scoped) auxiliary-output collector.
    meter:      executed-compute meter; modules add the FLOPs and parameter reads they ran.
    token_ids:  (B, T) input token ids (hash routing, statistics), or None.
    domains:    (B, T) ground-truth domain label per token (statistics only), or None.
    cache:      this layer's inference cache (KV cache or recurrent state), or None.
    pos:        absolute position of the first token of this forward (decoding offset).
    layer:      index of the block being run (-1 outside the model).
    """

    aux: AuxOutputs = field(default_factory=AuxOutputs)
    meter: ComputeMeter = field(default_factory=ComputeMeter)
    token_ids: Tensor | None = None
    domains: Tensor | None = None
    cache: Any = None
    pos: int = 0
    layer: int = -1

    def for_layer(self, layer: int, cache: Any = None) -> ForwardContext:
        return replace(self, aux=self.aux.scope(f"layer{layer}"), cache=cache, layer=layer,
                       meter=self.meter.scope(f"layer{layer}"))

    def scoped(self, name: str) -> ForwardContext:
        """The same context with aux and meter names prefixed by ``name/``."""
        return replace(self, aux=self.aux.scope(name), meter=self.meter.scope(name))
