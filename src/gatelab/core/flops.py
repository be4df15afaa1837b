"""FLOP and active-parameter accounting from executed work.

Each module adds what it actually ran in this forward to the `ComputeMeter` it finds in
its `ForwardContext`: matmul FLOPs (2 per multiply-add) and *parameter reads*
(parameters used x tokens they were applied to). Divided by the number of tokens this
gives FLOPs per token and mean active parameters per token that follow sparsity: an
MoE layer counts only the assignments it computed, a skipped block counts nothing.

Counts may be Python numbers or 0-d tensors (data-dependent counts such as tokens per
expert stay on device until read).
"""
from __future__ import annotations

from torch import Tensor

Number = int | float | Tensor


def linear_flops(rows: Number, d_in: int, d_out: int) -> Number:
    """Forward FLOPs of `rows` tokens through a d_in x d_out matmul (bias ignored)."""
    return 2 * rows * d_in * d_out


def causal_attention_flops(batch: int, n_head: int, head_dim: int, q_len: int, pos: int) -> int:
    """Forward FLOPs of causal softmax attention (QK^T and PV), counting only unmasked pairs.

    Query at absolute position p attends p + 1 keys; the q_len queries start at `pos`.
    Each (query, key) pair costs 2*head_dim for the score and 2*head_dim for the value.
    """
    keys = q_len * pos + q_len * (q_len + 1) // 2  # sum over queries of (p + 1)
    return 4 * batch * n_head * head_dim * keys


class ComputeMeter:
    """Accumulates executed FLOPs and parameter reads under hierarchical names.

    `scope(name)` returns a view writing into the same table with a prefix, so a
    per-layer breakdown comes for free. `reset()` clears it between forwards.
    """

    def __init__(self, prefix: str = "", _table: dict | None = None):
        self.prefix = prefix
        self.table: dict[str, list[Number]] = {} if _table is None else _table

    def scope(self, name: str) -> ComputeMeter:
        return ComputeMeter(f"{self.prefix}{name}/", self.table)

    def add(self, name: str, flops: Number, param_reads: Number = 0) -> None:
        """Record `flops` executed and `param_reads` (= params used x tokens) under `name`."""
        key = self.prefix + name
        entry = self.table.setdefault(key, [0, 0])
        entry[0] = entry[0] + flops
        entry[1] = entry[1] + param_reads

    def add_linear(self, name: str, rows: Number, d_in: int, d_out: int, bias: bool = False) -> None:
        """Record a linear layer applied to `rows` tokens."""
        params = d_in * d_out + (d_out if bias else 0)
        self.add(name, linear_flops(rows, d_in, d_out), rows * params)

    def reset(self) -> None:
        self.table.clear()

    def total_flops(self) -> float:
        return float(sum(_num(v[0]) for v in self.table.values()))

    def total_param_reads(self) -> float:
        return float(sum(_num(v[1]) for v in self.table.values()))

    def breakdown(self) -> dict[str, tuple[float, float]]:
        """{name: (flops, param_reads)} as floats."""
        return {k: (_num(v[0]), _num(v[1])) for k, v in self.table.items()}


def _num(x: Number) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)
