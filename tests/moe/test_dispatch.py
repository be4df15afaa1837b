"""Every dispatch backend agrees with the per-expert reference loop, forward and backward,
in float64 (loop grouped impl) and fp32 (`F.grouped_mm`), for every router and edge case."""
import pytest
import torch

from gatelab.core.aux import ForwardContext
from gatelab.core.errors import ConfigError
from gatelab.core.registry import get
from gatelab.moe import Experts, dispatch_capacity, dispatch_dropless, dispatch_reference
from gatelab.routing import apply_capacity, capacity, from_topk

D, H, E, T = 8, 12, 4, 24

ROUTERS = [
    ("topk", 2, {}), ("topk", 1, {}), ("topk", 2, {"order": "topk_softmax"}),
    ("topk", 2, {"score": "sigmoid", "renorm": True}), ("topk", 3, {"n_null": 2}),
    ("expert_choice", 2, {}), ("top_p", 2, {"p": 0.5}), ("sinkhorn", 2, {}), ("hash", 1, {}), ("random", 2, {}),
    ("sinkhorn", 1, {"sinkhorn_frac": 0.5}), ("dense_to_sparse", 2, {}),
]


def _setup(dtype, activation="swiglu", seed=0):
    torch.manual_seed(seed)
    experts = Experts(E, D, H, activation).to(dtype)
    experts.init_weights(0.3)
    x = torch.randn(T, D, dtype=dtype, requires_grad=True)
    return experts, x


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g, allow_unused=True)


def _compare(fast_fn, experts, x, decision, atol):
    """fast_fn(x, decision) vs the reference: outputs and grads wrt x, experts, weights."""
    weight_A = decision.weight_A.detach().to(x.dtype).requires_grad_()
    dec = type(decision)(**{**decision.__dict__, "weight_A": weight_A})
    inputs = [x, experts.w_in, experts.w_out, weight_A]
    y_ref = dispatch_reference(x, dec, experts)
    y_fast = fast_fn(x, dec)
    torch.testing.assert_close(y_fast, y_ref, atol=atol, rtol=0)
    for g_fast, g_ref in zip(_grads(y_fast, inputs), _grads(y_ref, inputs)):
        torch.testing.assert_close(g_fast, g_ref, atol=atol, rtol=0)


@pytest.mark.parametrize("name,k,options", ROUTERS, ids=[f"{n}-{k}-{o}" for n, k, o in ROUTERS])
def test_dropless_matches_reference_float64_every_router(name, k, options):
    experts, x = _setup(torch.float64)
    cls = get("router", name)
    router = cls(D, E, k, cls.Config(**options))
    if hasattr(router, "weight"):
        torch.nn.init.normal_(router.weight, std=1.0)
    router.train()
    ctx = ForwardContext(token_ids=torch.randint(0, 50, (1, T)))
    decision = router(x.detach().float(), ctx)
    _compare(lambda x_, d: dispatch_dropless(x_, d, experts, "loop"), experts, x, decision, atol=1e-12)


def _edge_decisions():
    g = torch.Generator().manual_seed(3)
    w = lambda shape: torch.rand(shape, generator=g, dtype=torch.float64)  # noqa: E731
    yield "expert_unused", from_topk(torch.randint(0, E - 1, (T, 1), generator=g), w((T, 1)), E)
    yield "all_to_one", from_topk(torch.full((T, 2), 2).index_fill_(1, torch.tensor([1]), 0), w((T, 2)), E)
    yield "k_equals_E", from_topk(torch.arange(E).repeat(T, 1), w((T, E)), E)
    yield "one_token", from_topk(torch.tensor([[1, 3]]), w((1, 2)), E)
    yield "no_assignment", from_topk(torch.zeros(T, 0, dtype=torch.long), w((T, 0)), E)


@pytest.mark.parametrize("case", list(_edge_decisions()), ids=lambda c: c[0])
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_dropless_and_capacity_match_reference_on_edge_cases(case, activation):
    _, decision = case
    experts, x = _setup(torch.float64, activation)
    _compare(lambda x_, d: dispatch_dropless(x_, d, experts, "loop"), experts, x, decision, atol=1e-12)
    # capacity with a capacity no expert exceeds == dropless
    _compare(lambda x_, d: dispatch_capacity(x_, d, experts, 1e6, 1.0, "loop")[0], experts, x, decision,
             atol=1e-12)


def test_capacity_backend_equals_reference_on_the_kept_assignments():
    experts, x = _setup(torch.float64)
    g = torch.Generator().manual_seed(5)
    decision = from_topk(torch.rand(T, E, generator=g).pow(4).topk(2, -1).indices, torch.rand(T, 2, generator=g), E)
    cf = 0.6
    kept, dropped = apply_capacity(decision, capacity(T, 2, E, cf))
    y, kept2, dropped2 = dispatch_capacity(x, decision, experts, cf, 2, "loop")
    assert int(dropped) == int(dropped2) > 0
    assert (kept2.counts() <= capacity(T, 2, E, cf)).all()
    torch.testing.assert_close(y, dispatch_reference(x, kept, experts), atol=1e-12, rtol=0)
    # a token whose every assignment was dropped gets exactly zero (it rides the residual)
    gone = kept.experts_per_token() == 0
    if gone.any():
        assert (y[gone] == 0).all()


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_grouped_mm_path_matches_reference_fp32(activation):
    experts, x = _setup(torch.float32, activation)
    assert experts.grouped_mm_ok(x)
    g = torch.Generator().manual_seed(2)
    decision = from_topk(torch.rand(T, E, generator=g).topk(2, -1).indices.index_fill_(0, torch.tensor([0, 1]), 3),
                         torch.rand(T, 2, generator=g), E)
    _compare(lambda x_, d: dispatch_dropless(x_, d, experts, "grouped_mm"), experts, x, decision, atol=1e-5)


def test_dropless_loses_no_token_under_any_imbalance():
    experts, x = _setup(torch.float64)
    for e in range(E):
        decision = from_topk(torch.full((T, 1), e), torch.ones(T, 1, dtype=torch.float64), E)
        y = dispatch_dropless(x, decision, experts, "loop")
        torch.testing.assert_close(y, experts.forward_one(e, x), atol=1e-12, rtol=0)


def test_grouped_mm_is_not_used_for_float64_or_unaligned_widths():
    experts, x = _setup(torch.float64)
    assert not experts.grouped_mm_ok(x)
    odd = Experts(E, 6, 5)
    assert not odd.grouped_mm_ok(torch.randn(3, 6))


def test_auto_picks_the_per_expert_loop_on_cpu_and_grouped_mm_must_be_supported():
    experts, x = _setup(torch.float32)
    assert experts.resolve_impl(x, "auto") == "loop" and experts.resolve_impl(x, "grouped_mm") == "grouped_mm"
    experts64, x64 = _setup(torch.float64)
    with pytest.raises(ConfigError, match="grouped=grouped_mm needs.*float64.*use grouped=auto"):
        dispatch_dropless(x64, from_topk(torch.zeros(T, 1, dtype=torch.long), torch.ones(T, 1), E), experts64,
                          "grouped_mm")
