"""Expert parallelism for `MoELayer`: experts sharded over the ranks of a process group.

Rank r of a group of W ranks holds experts [r E/W, (r+1) E/W) (GShard; torchtitan's
``ExpertParallel``). One forward of a layer on rank r's tokens:

1. sort the (real) assignments by expert; exchange the per-expert counts with one
   ``all_to_all_single`` so every rank knows how many rows it will receive;
2. dispatch all-to-all: the gathered rows x_{t_a} go to the rank owning expert e_a
   (variable split sizes);
3. the owner runs its local experts on the received rows (dropless grouped matmul, or the
   per-expert loop for ``backend=reference``), unweighted;
4. combine all-to-all back (the inverse splits), then y_t = sum_a w_a y_a at the sender,
   so the combine weight's gradient is computed where the router lives.

Both exchanges use the autograd-aware functional collective ``all_to_all_single_autograd``
(its backward is the reverse all-to-all; what torchtitan uses), so input, router and expert gradients are those
of the single-process layer. An expert weight's gradient sums the contributions of every
rank's tokens; a data-parallel trainer that averages dense gradients over the same ranks
must divide expert gradients by W (`gatelab.train.distributed` does).

Router load statistics (``tokens_per_expert``, ``load_cv``, ``max_vio``) are those of the
loads summed over the group. Load balance on global counts (`MoEParallel(global_balance=True)`): f_i counts the
assignments of all ranks (one all-reduce, no gradient) while P_i stays the local mean, so
the mean over ranks of the per-rank losses equals the single-process loss of the global
batch, and so does its data-parallel-averaged gradient (Switch / GShard balance the global
batch; Qiu et al. 2025, "Demons in the detail", argue for global-batch balance).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..routing.balancing import load_balance_loss
from ..routing.decision import RoutingDecision
from ..routing.stats import routing_stats
from .dispatch import _acc_dtype, dispatch_dropless, dispatch_reference
from .experts import Experts


class MoEParallel:
    """What a `MoELayer` does differently under torch.distributed (set as ``layer.parallel``).

    group:          the process group (default: the whole world).
    shard_experts:  expert parallelism over `group` (`shard` must have been applied).
    global_balance: load-balance loss with f counted over all ranks of `group`.
    Load statistics are always those of the whole group.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, shard_experts: bool = True,
                 global_balance: bool = True):
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("expert parallelism / global balance needs torch.distributed initialised "
                              "(launch with torchrun, or call torch.distributed.init_process_group first)")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.shard_experts = shard_experts
        self.global_balance = global_balance

    # ------------------------------------------------------------------ sharding
    def local_experts(self, n_experts: int) -> range:
        """Global ids of the experts this rank holds."""
        if n_experts % self.world:
            raise ConfigError(f"expert parallelism needs n_experts ({n_experts}) divisible by the number of "
                              f"ranks ({self.world}); change the MoE layer's n_experts or the number of processes")
        n_local = n_experts // self.world
        return range(self.rank * n_local, (self.rank + 1) * n_local)

    def shard(self, experts: Experts) -> Experts:
        """A new `Experts` holding only this rank's rows of `experts` (same values)."""
        ids = self.local_experts(experts.n)
        local = Experts(len(ids), experts.d_model, experts.hidden, experts.activation)
        local.quant = experts.quant  # ternary experts stay ternary (gatelab.quant.ExpertQuant)
        local.to(device=experts.w_in.device, dtype=experts.w_in.dtype)
        with torch.no_grad():
            local.w_in.copy_(experts.w_in[ids.start:ids.stop])
            local.w_out.copy_(experts.w_out[ids.start:ids.stop])
        return local

    # ------------------------------------------------------------------ forward
    def dispatch(self, x_TD: Tensor, decision: RoutingDecision, local: Experts, backend: str,
                 impl: str = "auto") -> Tensor:
        """y_TD = sum_a w_a FFN_{e_a}(x_{t_a}) with the experts spread over the group."""
        W, n_local = self.world, local.n
        real = decision.real()
        order_A = torch.argsort(real.expert_idx_A, stable=True)
        token_A = real.token_idx_A[order_A]
        counts_WL = real.counts(real.n_experts).view(W, n_local)
        recv_WL = torch.empty_like(counts_WL)
        dist.all_to_all_single(recv_WL, counts_WL, group=self.group)  # [s, j]: rows from rank s for expert j
        send_W, recv_W = counts_WL.sum(1).tolist(), recv_WL.sum(1).tolist()
        x_AD = x_TD[token_A]
        x_RD = self._exchange(x_AD, recv_W, send_W)
        expert_R = torch.repeat_interleave(torch.arange(n_local, device=x_TD.device).repeat(W), recv_WL.flatten())
        rows = RoutingDecision(torch.arange(x_RD.shape[0], device=x_TD.device), expert_R,
                               torch.ones(x_RD.shape[0], device=x_TD.device), x_RD.shape[0], n_local)
        if backend == "reference":
            y_RD = dispatch_reference(x_RD, rows, local)
        else:
            y_RD = dispatch_dropless(x_RD, rows, local, impl)
        y_AD = self._exchange(y_RD, send_W, recv_W)
        acc = _acc_dtype(x_TD)
        w_A1 = real.weight_A[order_A].to(acc).unsqueeze(1)
        y_TD = torch.zeros(x_TD.shape, dtype=acc, device=x_TD.device).index_add(0, token_A, w_A1 * y_AD.to(acc))
        return y_TD.to(x_TD.dtype)

    def _exchange(self, x_ND: Tensor, out_splits: list[int], in_splits: list[int]) -> Tensor:
        """Rows x_ND[split s] to rank s; returns the rows received, in rank order (autograd)."""
        y = funcol.all_to_all_single_autograd(x_ND.contiguous(), out_splits, in_splits, self.group or dist.group.WORLD)
        return funcol.wait_tensor(y)

    def load_balance_loss(self, decision: RoutingDecision) -> Tensor:
        """This rank's Switch loss, with f counted over the group when `global_balance`."""
        return load_balance_loss(self._global_counts(decision) if self.global_balance else decision)

    def global_load_stats(self, decision: RoutingDecision) -> dict[str, Tensor]:
        """``tokens_per_expert``, ``load_cv`` and ``max_vio`` of the expert loads summed over the group."""
        stats = routing_stats(self._global_counts(decision))
        return {k: stats[k] for k in ("tokens_per_expert", "load_cv", "max_vio")}

    def _global_counts(self, decision: RoutingDecision) -> RoutingDecision:
        """The group's decision as far as loads read it: every rank's assignments per slot
        (one all-reduce), this rank's router probabilities; token ids and weights are void."""
        counts_N = decision.counts()
        dist.all_reduce(counts_N, group=self.group)
        expert_A = torch.repeat_interleave(torch.arange(decision.n_slots, device=counts_N.device), counts_N)
        return replace(decision, expert_idx_A=expert_A, token_idx_A=torch.zeros_like(expert_A),
                       weight_A=torch.zeros(expert_A.shape, device=expert_A.device))


def parallelize_moe(model: nn.Module, group: dist.ProcessGroup | None = None, shard_experts: bool = True,
                    global_balance: bool = True) -> list[nn.Parameter]:
    """Give every `MoELayer` of `model` a `MoEParallel`; with `shard_experts`, replace its
    experts by this rank's shard. Returns the expert parameters now local to this rank
    (they must not be averaged over `group` as if replicated)."""
    from .layer import MoELayer

    sharded: list[nn.Parameter] = []
    for name, layer in model.named_modules():
        if not isinstance(layer, MoELayer):
            continue
        if shard_experts and layer.cfg.backend == "capacity":
            raise ConfigError(f"{name}: expert parallelism with backend=capacity is not supported (capacity "
                              "would be counted per rank); use backend=dropless")
        par = MoEParallel(group, shard_experts, global_balance)
        if shard_experts:
            layer.experts = par.shard(layer.experts)
            sharded += list(layer.experts.parameters())
        layer.parallel = par
    return sharded
