"""Routed execution kernels: gathered fast path vs per-sequence loop vs masked execution (float64)."""
import pytest
import torch

from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.depth import capacity_tokens, keep_mask, run_selected, run_selected_loop, topk_tokens
from gatelab.models import Block, BlockConfig


def make_block(d=16):
    torch.manual_seed(0)
    blk = Block(parse(BlockConfig, {"mixer": {"name": "attention", "n_head": 4}}), d).double()
    for p in blk.parameters():  # non-trivial weights everywhere (norm gains too)
        p.data.normal_(0, 0.3)
    return blk


def grads(out, *tensors):
    return torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                               tensors)


@pytest.mark.parametrize("w_dim", [1, 16])
def test_gathered_block_equals_per_sequence_loop_fwd_bwd(w_dim):
    """Whole block (attention over the kept tokens + FFN) on k tokens per sequence."""
    blk = make_block()
    B, T, D, k = 3, 10, 16, 4
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    w = torch.rand(B, T, w_dim, dtype=torch.float64, requires_grad=True)
    idx = topk_tokens(torch.randn(B, T), k)
    ctx = ForwardContext()
    fast = run_selected(lambda s: blk(s, ctx) - s, x, idx, w)
    ref = run_selected_loop(lambda s: blk(s, ctx) - s, x, keep_mask(idx, T), w)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    params = list(blk.parameters())
    for a, b in zip(grads(fast, x, w, *params), grads(ref, x, w, *params)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    skipped = ~keep_mask(idx, T)
    assert torch.equal(fast[skipped], x[skipped])  # skipped tokens ride the residual unchanged
    assert not torch.allclose(fast[~skipped], x[~skipped])


def test_gathered_branch_equals_masked_execution_fwd_bwd():
    """A token-wise branch (FFN): gathered == run on every token, update multiplied by the keep mask."""
    blk = make_block()
    B, T, D = 2, 9, 16
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    w = torch.rand(B, T, D, dtype=torch.float64, requires_grad=True)
    idx = topk_tokens(torch.randn(B, T), 5)
    ctx = ForwardContext()
    fast = run_selected(lambda s: blk.channel(s, ctx), x, idx, w)
    masked = x + keep_mask(idx, T).unsqueeze(-1) * w * blk.channel(x, ctx)
    torch.testing.assert_close(fast, masked, rtol=0, atol=1e-12)
    params = [*blk.norm2.parameters(), *blk.ffn.parameters()]
    for a, b in zip(grads(fast, x, w, *params), grads(masked, x, w, *params)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_meter_counts_only_gathered_rows():
    blk = make_block()
    B, T, D, k = 2, 12, 16, 3
    x = torch.randn(B, T, D, dtype=torch.float64)
    ctx = ForwardContext()
    run_selected(lambda s: blk(s, ctx) - s, x, topk_tokens(torch.randn(B, T), k), x.new_ones(B, T, 1))
    table = ctx.meter.breakdown()
    hidden = blk.ffn.hidden
    assert table["ffn/down"][0] == 2 * B * k * hidden * D
    assert table["mixer/sdpa"][0] == 4 * B * 4 * 4 * k * (k + 1) // 2  # causal pairs among the kept tokens


def test_loop_handles_sequences_with_no_kept_token():
    blk = make_block()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    keep = torch.tensor([[False] * 5, [True, False, True, False, False]])
    out = run_selected_loop(lambda s: blk(s, ForwardContext()) - s, x, keep, x.new_ones(2, 5, 1))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1, 1], x[1, 1])


def test_topk_tokens_sorted_and_capacity():
    idx = topk_tokens(torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.0]]), 3)
    assert idx.tolist() == [[1, 2, 3]]
    assert [capacity_tokens(128, c) for c in (1.0, 0.5, 0.25, 0.125, 1e-6)] == [128, 64, 32, 16, 1]
    assert capacity_tokens(10, 0.25) == 3
