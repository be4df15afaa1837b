"""Defining property of each router, plus config validation of bad MoE settings."""
import math

import pytest
import torch

from gatelab.config import load_config
from gatelab.core.aux import ForwardContext
from gatelab.core.errors import ConfigError
from gatelab.core.registry import get
from gatelab.routing.sinkhorn import sinkhorn_log_plan

D, E = 16, 6


def make(name, k=2, n_experts=E, **options):
    cls = get("router", name)
    torch.manual_seed(0)
    router = cls(D, n_experts, k, cls.Config(**options))
    if hasattr(router, "weight"):
        torch.nn.init.normal_(router.weight, std=1.0)
    return router


def x_TD(T=40, seed=1):
    return torch.randn(T, D, generator=torch.Generator().manual_seed(seed))


def per_token_weight_sums(d):
    return torch.zeros(d.n_tokens).index_add_(0, d.token_idx_A, d.weight_A)


def test_router_logits_are_fp32_for_low_precision_inputs():
    router = make("topk")
    d = router(x_TD().to(torch.bfloat16), ForwardContext())
    assert d.logits_TE.dtype == torch.float32 and d.weight_A.dtype == torch.float32


@pytest.mark.parametrize("k", [1, 2, E])
def test_topk_softmax_no_renorm_weights_are_probabilities(k):
    d = make("topk", k=k)(x_TD(), ForwardContext())
    assert torch.equal(d.experts_per_token(), torch.full((40,), k))
    assert torch.allclose(d.probs_TE, torch.softmax(d.logits_TE, -1))  # single softmax (HF #45120)
    assert torch.allclose(d.weight_A, d.probs_TE[d.token_idx_A, d.expert_idx_A])
    chosen = d.probs_TE.topk(k, -1).values.sum(-1)
    assert torch.allclose(per_token_weight_sums(d), chosen)


def test_topk_softmax_order_equals_renormalised_softmax_topk_forward_and_backward():
    x = x_TD()
    a, b = make("topk", order="topk_softmax"), make("topk", renorm=True)
    da, db = a(x, ForwardContext()), b(x, ForwardContext())
    assert torch.equal(da.expert_idx_A, db.expert_idx_A)
    assert torch.allclose(da.weight_A, db.weight_A, atol=1e-6)
    assert torch.allclose(per_token_weight_sums(db), torch.ones(40))
    g = torch.randn_like(da.weight_A)
    (da.weight_A * g).sum().backward()
    (db.weight_A * g).sum().backward()
    assert torch.allclose(a.weight.grad, b.weight.grad, atol=1e-5)


def test_sigmoid_scores_renormalised_and_scaled():
    d = make("topk", score="sigmoid", renorm=True, scale=2.5)(x_TD(), ForwardContext())
    assert torch.allclose(per_token_weight_sums(d), torch.full((40,), 2.5))
    assert torch.allclose(d.probs_TE.sum(-1), torch.ones(40))


def test_noisy_topk_is_random_in_training_only_and_trains_the_noise_net():
    router = make("topk", noise="noisy")
    torch.nn.init.normal_(router.w_noise, std=1.0)
    x = x_TD()
    router.eval()
    d1, d2 = router(x, ForwardContext()), router(x, ForwardContext())
    assert torch.equal(d1.expert_idx_A, d2.expert_idx_A)
    clean = make("topk")(x, ForwardContext())
    assert torch.equal(d1.expert_idx_A, clean.expert_idx_A)
    router.train()
    d3 = router(x, ForwardContext())
    assert not torch.equal(d3.expert_idx_A, d1.expert_idx_A)
    d3.weight_A.sum().backward()
    assert router.w_noise.grad.abs().sum() > 0


def test_jitter_changes_only_training_inputs():
    router = make("topk", noise="jitter", jitter=0.5)
    x = x_TD()
    router.eval()
    assert torch.equal(router(x, ForwardContext()).weight_A, make("topk")(x, ForwardContext()).weight_A)
    router.train()
    assert not torch.equal(router(x, ForwardContext()).weight_A, make("topk")(x, ForwardContext()).weight_A)


def test_null_experts_renormalise_over_real_and_all_null_is_zero_not_nan():
    router = make("topk", k=2, n_null=3)
    d = router(x_TD(), ForwardContext())
    assert d.n_null == 3 and int(d.expert_idx_A.max()) < E + 3
    sums = per_token_weight_sums(d.real())
    n_real = d.experts_per_token()
    assert torch.allclose(sums[n_real > 0], torch.ones(int((n_real > 0).sum())))
    with torch.no_grad():
        router.weight[E:, 0] = 100.0  # tokens with x[:, 0] > 0 choose only null experts
    x = x_TD()
    d = router(x, ForwardContext())
    assert not torch.isnan(d.weight_A).any()
    all_null = d.experts_per_token() == 0
    assert all_null[x[:, 0] > 0.2].all() and all_null.any()
    assert (per_token_weight_sums(d.real())[all_null] == 0).all()


def test_aux_free_bias_affects_selection_only_and_moves_toward_balance():
    router = make("topk", k=1, bias_update=0.05)
    with torch.no_grad():
        router.weight[0] += 3.0 * x_TD().mean(0)  # expert 0 over-loaded
    router.train()
    x = x_TD(200)
    loads0 = router(x, ForwardContext()).counts()
    for _ in range(60):
        router.post_step()
        router(x, ForwardContext())
    router.post_step()
    assert abs(float(router.bias_E.sum())) < 1e-5  # centred
    assert float(router.bias_E[0]) < 0
    d = router(x, ForwardContext())
    assert d.counts().float().std() < loads0.float().std()
    assert torch.allclose(d.weight_A, d.probs_TE[d.token_idx_A, d.expert_idx_A])  # gate = score, no bias


def test_expert_choice_each_expert_takes_capacity_tokens():
    d = make("expert_choice", k=2)(x_TD(), ForwardContext())
    cap = math.ceil(2 * 40 / E)
    assert torch.equal(d.counts(), torch.full((E,), cap))
    assert torch.allclose(d.weight_A, d.probs_TE[d.token_idx_A, d.expert_idx_A])
    for e in range(E):
        tokens = d.token_idx_A[d.expert_idx_A == e]
        assert d.probs_TE[tokens, e].min() >= d.probs_TE[:, e].topk(cap).values.min()


@pytest.mark.parametrize("p", [0.3, 0.6, 1.0])
def test_top_p_keeps_smallest_prefix_reaching_p(p):
    d = make("top_p", p=p)(0.2 * x_TD(), ForwardContext())  # soft router: k varies per token
    for t in range(40):
        chosen = d.expert_idx_A[d.token_idx_A == t]
        probs = d.probs_TE[t]
        mass = probs[chosen].sum()
        assert mass >= p - 1e-6 or len(chosen) == E
        assert mass - probs[chosen].min() < p  # dropping the weakest chosen expert falls below p
        assert probs[chosen].min() >= probs.max() if len(chosen) == 1 else True
    assert torch.allclose(d.weight_A, d.probs_TE[d.token_idx_A, d.expert_idx_A])
    if p < 1:
        assert d.experts_per_token().unique().numel() > 1  # variable k


def test_top_p_max_k_caps_experts():
    d = make("top_p", p=1.0, max_k=3)(x_TD(), ForwardContext())
    assert int(d.experts_per_token().max()) == 3


def test_sinkhorn_plan_marginals_and_balanced_training_selection():
    logits = torch.randn(64, E) + torch.tensor([4.0, 0, 0, 0, 0, 0])
    plan = sinkhorn_log_plan(logits, n_iter=500, tol=1e-7).exp()
    assert torch.allclose(plan.sum(1), torch.full((64,), 1 / 64), atol=1e-5)
    assert torch.allclose(plan.sum(0), torch.full((E,), 1 / E), atol=1e-5)
    router = make("sinkhorn", k=1)
    with torch.no_grad():
        router.weight[0] += 2.0 * x_TD().mean(0) / x_TD().mean(0).norm() ** 2
    x = x_TD(120)
    router.eval()
    plain = router(x, ForwardContext())
    router.train()
    balanced = router(x, ForwardContext())
    assert balanced.counts().float().std() < plain.counts().float().std()
    assert torch.allclose(balanced.weight_A, balanced.probs_TE[balanced.token_idx_A, balanced.expert_idx_A])
    assert torch.equal(plain.expert_idx_A, plain.probs_TE.argmax(-1))


def test_hash_routing_is_a_fixed_function_of_token_id():
    router = make("hash", k=1)
    ids = torch.tensor([[5, 7, 5, 9, 7]])
    d = router(x_TD(5), ForwardContext(token_ids=ids))
    e = d.expert_idx_A
    assert e[0] == e[2] and e[1] == e[4]
    assert torch.equal(d.weight_A, torch.ones(5))
    with pytest.raises(ValueError, match="token_ids"):
        router(x_TD(5), ForwardContext())


def test_random_router_picks_k_distinct_experts():
    d = make("random", k=3)(x_TD(), ForwardContext())
    for t in range(40):
        assert d.expert_idx_A[d.token_idx_A == t].unique().numel() == 3
    assert torch.allclose(per_token_weight_sums(d), torch.ones(40))


MOE = [("model.block.ffn.name", "moe")]


@pytest.mark.parametrize("overrides,pattern", [
    ([("model.block.ffn.k", "9")], r"k=9.*n_experts \(8\)"),
    ([("model.block.ffn.k", "0")], r"k=0"),
    ([("model.block.ffn.backend", "capacity"), ("model.block.ffn.capacity_factor", "0")], r"capacity_factor=0"),
    ([("model.block.ffn.router.name", "top_p"), ("model.block.ffn.router.p", "0")], r"router.p=0"),
    ([("model.block.ffn.router.name", "top_p"), ("model.block.ffn.router.p", "1.5")], r"router.p=1.5"),
    ([("model.block.ffn.router.name", "topkk")], r"not a registered router.*did you mean 'topk'"),
    ([("model.block.ffn.router.name", "hash")], r"k=2.*k=1"),
    ([("model.block.ffn.granularity", "7")], r"granularity=7.*divide"),
    ([("model.block.ffn.router.n_null", "-1")], r"n_null=-1"),
])
def test_bad_moe_configs_fail_at_validation(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=MOE + overrides)


def test_null_experts_widen_the_allowed_k():
    cfg = load_config(overrides=MOE + [("model.block.ffn.k", "10"), ("model.block.ffn.router.n_null", "2")])
    assert cfg.model.block.ffn.options.k == 10


def test_dense_to_sparse_gate_anneals_from_dense_to_nearly_top1():
    router = make("dense_to_sparse", tau_start=2.0, tau_end=0.05, anneal_steps=10, threshold=1e-2)
    with torch.no_grad():
        router.weight.mul_(0.3)
    router.eval()
    x = x_TD()
    early = router(x, ForwardContext())
    assert float(early.experts_per_token().float().mean()) > 4
    for _ in range(10):
        router.post_step()
    late = router(x, ForwardContext())
    assert float(late.experts_per_token().float().mean()) < 2
    assert torch.allclose(per_token_weight_sums(late), torch.ones(40), atol=0.1)
    assert router.temperature().item() == pytest.approx(0.05)


def test_gshard_random_second_expert_is_kept_with_probability_weight_over_threshold():
    router = make("topk", k=2, renorm=True, second="random", second_threshold=0.5)
    router.train()
    x = x_TD(4000)
    with torch.no_grad():
        full = make("topk", k=2, renorm=True)(x, ForwardContext())
    w2_T = full.weight_A.view(-1, 2)[:, 1]
    p_T = (w2_T / 0.5).clamp_max(1)  # GShard: keep the second iff 2 g2 > U(0, 1)
    torch.manual_seed(123)
    d = router(x, ForwardContext())
    kept_T = d.experts_per_token() == 2
    assert (d.experts_per_token() >= 1).all()
    # kept assignments carry their unchanged weights (the first keeps g1, not 1)
    assert torch.equal(d.weight_A, full.weight_A.view(-1, 2)[torch.stack([torch.ones_like(kept_T), kept_T], 1)])
    observed, expected, sd = kept_T.sum().item(), p_T.sum().item(), p_T.mul(1 - p_T).sum().sqrt().item()
    assert abs(observed - expected) < 4 * sd and 0.1 * len(p_T) < expected < 0.9 * len(p_T)
    low, high = w2_T < w2_T.median(), w2_T >= w2_T.median()
    assert kept_T[high].float().mean() > kept_T[low].float().mean() + 0.1  # proportional to g2, not uniform
    torch.manual_seed(123)
    assert torch.equal(router(x, ForwardContext()).expert_idx_A, d.expert_idx_A)  # seeded: reproducible
    router.eval()
    e1, e2 = router(x, ForwardContext()), router(x, ForwardContext())
    assert torch.equal(e1.expert_idx_A, full.expert_idx_A) and torch.equal(e2.expert_idx_A, full.expert_idx_A)


def test_gshard_random_second_expert_needs_k_of_at_least_two():
    with pytest.raises(ConfigError, match=r"router.second='random'.*k >= 2"):
        make("topk", k=1, second="random")


def test_gshard_random_second_expert_with_k_1_fails_at_config_time():
    from gatelab.config import load_config

    with pytest.raises(ConfigError, match=r"router.second='random'.*k >= 2"):
        load_config(None, [("model.block.ffn.name", "moe"), ("model.block.ffn.k", "1"),
                           ("model.block.ffn.router.second", "random")])
