"""RoutingDecision, capacity dropping, balancing losses and statistics."""
import math

import pytest
import torch

from gatelab.routing import RoutingDecision, apply_capacity, capacity, from_topk, load_balance_loss, z_loss
from gatelab.routing.stats import expert_domain_mi, routing_stats


def _decision(expert_TK, probs_TE=None, n_experts=4, n_null=0):
    expert_TK = torch.as_tensor(expert_TK)
    w_TK = torch.full(expert_TK.shape, 1.0 / expert_TK.shape[1])
    return from_topk(expert_TK, w_TK, n_experts, n_null, probs_TE)


def test_from_topk_flattens_token_major():
    d = _decision([[0, 1], [2, 0]])
    assert d.token_idx_A.tolist() == [0, 0, 1, 1]
    assert d.expert_idx_A.tolist() == [0, 1, 2, 0]
    assert d.counts().tolist() == [2, 1, 1, 0]
    assert d.experts_per_token().tolist() == [2, 2]


def test_real_drops_null_assignments_and_counts_real_experts_per_token():
    d = _decision([[0, 4], [5, 4], [1, 2]], n_experts=4, n_null=2)
    real = d.real()
    assert real.expert_idx_A.tolist() == [0, 1, 2]
    assert d.experts_per_token().tolist() == [1, 0, 2]
    assert d.counts().tolist() == [1, 1, 1, 0, 2, 1]


def test_capacity_formula():
    assert capacity(100, 2, 8, 1.25) == math.ceil(1.25 * 2 * 100 / 8)
    assert capacity(3, 1, 8, 1.0, min_capacity=4) == 4


def test_apply_capacity_keeps_first_tokens_per_expert_and_counts_drops():
    d = _decision([[0], [0], [1], [0], [0]])
    kept, dropped = apply_capacity(d, 2)
    assert kept.token_idx_A.tolist() == [0, 1, 2]
    assert kept.expert_idx_A.tolist() == [0, 0, 1]
    assert int(dropped) == 2


def test_apply_capacity_property_random():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        T, E, K = 37, 5, 2
        expert_TK = torch.rand(T, E, generator=g).pow(3).topk(K, dim=-1).indices
        d = _decision(expert_TK, n_experts=E)
        cap = int(torch.randint(0, 20, (), generator=g))
        kept, dropped = apply_capacity(d, cap)
        counts = d.counts()
        assert (kept.counts() <= cap).all()
        assert torch.equal(kept.counts(), counts.clamp_max(cap))
        assert int(dropped) == int((counts - cap).clamp_min(0).sum())


def test_load_balance_loss_is_one_at_perfect_balance_for_any_k():
    for k in (1, 2, 4):
        E, T = 4, 8
        expert_TK = torch.stack([(torch.arange(k) + t) % E for t in range(T)])
        d = _decision(expert_TK, probs_TE=torch.full((T, E), 1 / E), n_experts=E)
        assert load_balance_loss(d).item() == pytest.approx(1.0)


def test_load_balance_loss_hand_computed():
    # 2 tokens, 2 experts, top-1: both to expert 0; P = mean([.8,.2],[.6,.4]) = [.7,.3]; f = [1, 0]
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    d = _decision([[0], [0]], probs_TE=probs, n_experts=2)
    assert load_balance_loss(d).item() == pytest.approx(2 * 0.7)
    # collapse onto one of E experts with one-hot probabilities gives E
    E = 8
    d = _decision([[3]] * 5, probs_TE=torch.nn.functional.one_hot(torch.full((5,), 3), E).float(), n_experts=E)
    assert load_balance_loss(d).item() == pytest.approx(E)


def test_load_balance_loss_under_gradient_accumulation_stays_one_per_microbatch():
    E = 4
    micro = [_decision([[i % E] for i in range(s, s + 8)], probs_TE=torch.full((8, E), 1 / E), n_experts=E)
             for s in (0, 1)]
    accumulated = sum(load_balance_loss(d) for d in micro) / len(micro)  # trainer: loss / grad_accum
    assert accumulated.item() == pytest.approx(1.0)


def test_load_balance_gradient_reaches_router_from_aux_alone():
    logits = torch.randn(6, 4, requires_grad=True)
    probs = torch.softmax(logits, -1)
    d = from_topk(probs.topk(1).indices, probs.topk(1).values, 4, probs_TE=probs, logits_TE=logits)
    load_balance_loss(d).backward()
    assert logits.grad.abs().sum() > 0


def test_z_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert z_loss(logits).item() == pytest.approx(expected)


def test_stats_cv_maxvio_hist():
    d = _decision([[0], [0], [0], [1]], n_experts=2)
    s = routing_stats(d)
    assert s["tokens_per_expert"].tolist() == [3, 1]
    assert s["load_cv"].item() == pytest.approx(0.5)
    assert s["max_vio"].item() == pytest.approx(0.5)
    assert s["experts_per_token_hist"].tolist() == [0, 1, 0]


def test_domain_mutual_information():
    domains = torch.tensor([0, 0, 1, 1, 2, 2])
    aligned = _decision([[0], [0], [1], [1], [2], [2]], n_experts=3)
    assert expert_domain_mi(aligned, domains).item() == pytest.approx(math.log(3))
    independent = _decision([[0], [1], [0], [1], [0], [1]], n_experts=3)
    assert expert_domain_mi(independent, domains).item() == pytest.approx(0.0, abs=1e-6)


def test_decision_type_is_plain_dataclass():
    d = RoutingDecision(torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]), 1, 2)
    assert d.n_slots == 2 and d.probs_TE is None


def test_null_slots_are_pooled_in_the_balance_loss():
    # 4 tokens, top-1, 2 real + 2 null slots. Counts [1, 1, 2, 0]: f = [.25, .25, .5, 0];
    # P = [.3, .2, .4, .1]. Pooled: 4 * (.25*.3 + .25*.2 + (.5 + 0) * (.4 + .1) / 2) = 1.0
    probs = torch.tensor([[0.3, 0.2, 0.4, 0.1]]).expand(4, 4)
    skewed = _decision([[0], [1], [2], [2]], probs_TE=probs, n_experts=2, n_null=2)
    assert load_balance_loss(skewed).item() == pytest.approx(1.0)
    # moving null use between the identical null copies changes nothing ...
    spread = _decision([[0], [1], [2], [3]], probs_TE=probs, n_experts=2, n_null=2)
    assert load_balance_loss(spread).item() == pytest.approx(1.0)
    # ... and with uniform null use the pooled loss is the plain Switch loss: 4 * (.075 + .05 + .1 + .025)
    assert load_balance_loss(spread).item() == pytest.approx(4 * (0.25 * 0.3 + 0.25 * 0.2 + 0.25 * 0.4 + 0.25 * 0.1))
    # minimum 1 at perfect balance; the gradient is the same for every null copy's probability
    logits = torch.zeros(4, 4, requires_grad=True)
    balanced = _decision([[0], [1], [2], [2]], probs_TE=torch.softmax(logits, -1), n_experts=2, n_null=2)
    loss = load_balance_loss(balanced)
    assert loss.item() == pytest.approx(1.0)
    (g_P,) = torch.autograd.grad(loss, balanced.probs_TE)
    assert torch.allclose(g_P[:, 2], g_P[:, 3])


def test_balance_loss_total_is_the_mean_over_moe_layers_not_the_sum():
    from gatelab.core.aux import AuxOutputs
    aux = AuxOutputs()
    for layer, value in enumerate([1.0, 2.0, 4.5]):
        aux.scope(f"layer{layer}").scope("ffn").add_loss("lb_loss", torch.tensor(0.01 * value), mean_over="moe_lb")
    aux.scope("layer0").add_loss("other", torch.tensor(0.5))  # not in the group: summed
    assert aux.total_loss().item() == pytest.approx(0.01 * 2.5 + 0.5)
    assert aux.scalar_stats()["layer2/ffn/lb_loss"] == pytest.approx(0.045)  # logged per layer, unaveraged
