"""Depth methods in the LM: 100% budget == dense, honest executed-FLOP accounting, causality."""
import math

import pytest
import torch
from torch import nn

from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.core.flops import causal_attention_flops
from gatelab.depth import GateSkip, compute_saved, full_flops
from gatelab.models import ModelConfig

V = 37  # vocabulary of the conftest models


def fwd_bwd(model, x):
    out = model(x)
    loss = out.logits.pow(2).mean()
    grads = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if not n.startswith("depth.")])
    return out, grads


def assert_same(a, b, atol=1e-12):
    out_a, g_a = a
    out_b, g_b = b
    torch.testing.assert_close(out_a.logits, out_b.logits, rtol=0, atol=atol)
    for ga, gb in zip(g_a, g_b):
        torch.testing.assert_close(ga, gb, rtol=0, atol=atol)


class OpenRouter(nn.Module):
    """Stand-in router whose score is +inf for every token: σ = 1, all tokens tie."""

    def forward(self, x_BTD):
        return x_BTD.new_full((*x_BTD.shape[:-1], 1), math.inf)


# ---------------------------------------------------------------- 100% budget == dense
def test_gateskip_with_fully_open_gates_equals_dense(lm):
    model, dense = lm({"name": "gateskip", "keep": 1.0})
    for gate in model.depth.gates:
        gate.weight.data.zero_()
        gate.bias.data.fill_(math.inf)
    x = torch.randint(0, V, (2, 11))
    for mode in (True, False):  # soft gates (training) and the routed inference path at keep=1
        model.train(mode), dense.train(mode)
        assert_same(fwd_bwd(model, x), fwd_bwd(dense, x))


def test_gateskip_inference_at_full_budget_equals_soft_training_path(lm):
    model, _ = lm({"name": "gateskip", "gate": "vector", "keep": 1.0})
    for gate in model.depth.gates:  # gates far from 1 and varying per token
        gate.weight.data.normal_(0, 0.5)
        gate.bias.data.zero_()
    x = torch.randint(0, V, (2, 11))
    soft = fwd_bwd(model.train(), x)
    routed = fwd_bwd(model.eval(), x)
    assert_same(soft, routed, atol=1e-11)


@pytest.mark.parametrize("name", ["mod", "random_skip"])
def test_mod_at_full_capacity_with_unit_weight_equals_dense(lm, name):
    model, dense = lm({"name": name, "capacity": 1.0, "every": 1})
    if name == "mod":
        for key in model.depth.routers:
            model.depth.routers[key] = OpenRouter()
    x = torch.randint(0, V, (2, 11))
    assert_same(fwd_bwd(model, x), fwd_bwd(dense, x), atol=1e-11)


def test_layer_drop_trains_dense_and_skips_blocks_in_eval(lm):
    model, dense = lm({"name": "layer_drop", "layers": [1]}, n_layer=3)
    x = torch.randint(0, V, (2, 8))
    assert_same(fwd_bwd(model, x), fwd_bwd(dense, x))
    model.eval()
    dense.blocks = nn.ModuleList([dense.blocks[0], dense.blocks[2]])  # the shallower model it becomes
    dense.depth.n_layer = 2
    torch.testing.assert_close(model(x).logits, dense(x).logits, rtol=0, atol=0)


# ---------------------------------------------------------------- honest compute
def test_gateskip_budget_skips_the_lowest_gate_tokens():
    torch.manual_seed(0)
    method = GateSkip(1, 4, GateSkip.Config(gate="scalar", keep=0.5)).double().eval()
    method.gates[1].weight.data.zero_()
    method.gates[1].bias.data.zero_()
    method.gates[1].weight.data[0, 0] = 1.0  # gate of the channel branch = σ(x[..., 0])
    x = torch.zeros(1, 6, 4, dtype=torch.float64)
    x[0, :, 0] = torch.tensor([3.0, -1.0, 2.0, -2.0, 0.5, 1.0])
    seen = []

    def branch(s, ctx):
        seen.append(s.shape[1])
        return torch.ones_like(s)

    ctx = ForwardContext()
    out = method._branch(1, branch, x, ctx, "ffn_gate")
    assert seen == [3]  # the branch ran on 3 of 6 tokens
    changed = (out != x).any(-1)[0].tolist()
    assert changed == [True, False, True, False, False, True]  # the 3 highest gates
    torch.testing.assert_close(out[0, 0, 1], torch.sigmoid(torch.tensor(3.0, dtype=torch.float64)))
    assert ctx.aux.stats["ffn_gate/processed"] == 0.5


def test_mod_meter_counts_executed_work_and_compute_saved(lm):
    model, dense = lm({"name": "mod", "capacity": 0.25, "every": 2}, n_layer=2)
    B, T, D, H, K = 2, 16, 16, 4, 4
    k = 4
    x = torch.randint(0, V, (B, T))
    out = model(x)
    table = out.meter.breakdown()
    hidden = model.blocks[1].ffn.hidden
    assert table["layer0/ffn/down"][0] == 2 * B * T * hidden * D  # layer 0 is not routed
    assert table["layer1/ffn/down"][0] == 2 * B * k * hidden * D
    assert table["layer1/mixer/sdpa"][0] == causal_attention_flops(B, H, K, k, 0)
    assert table["layer1/router"][0] == 2 * B * T * D
    assert table["layer1/predictor"][0] == 2 * B * T * (D * 4 + 4 * 1)
    block_full = dense(x).meter.total_flops()
    assert full_flops(model, x) == block_full
    saved, executed = compute_saved(model.train(), x)
    assert executed == out.meter.total_flops()
    layer1_full = sum(v[0] for n, v in dense(x).meter.breakdown().items() if n.startswith("layer1/"))
    layer1_run = sum(v[0] for n, v in table.items() if n.startswith("layer1/"))
    assert saved == pytest.approx((layer1_full - layer1_run) / block_full, rel=1e-12)
    assert out.aux.stats["layer1/processed"] == 0.25


def test_gateskip_training_saves_nothing_and_pays_for_gates(lm):
    model, _ = lm({"name": "gateskip"})
    x = torch.randint(0, V, (2, 8))
    saved, _ = compute_saved(model.train(), x)
    assert saved < 0  # soft gates execute every token, plus the gate matmuls
    model.depth.cfg.keep = 0.25
    saved_eval, _ = compute_saved(model.eval(), x)
    assert saved_eval > 0.3


def test_domain_statistics(lm):
    model, _ = lm({"name": "random_skip", "capacity": 0.5, "every": 1})
    x = torch.randint(0, V, (2, 8))
    dom = torch.tensor([[0] * 8, [2] * 8])
    stats = model(x, domains_BT=dom).aux.stats
    assert stats["layer0/processed"] == 0.5
    assert {k for k in stats if k.startswith("layer0/")} == {
        "layer0/processed", "layer0/processed/domain0", "layer0/processed/domain2"}
    assert stats["layer0/processed/domain0"] == 0.5  # k per sequence: each domain gets half


# ---------------------------------------------------------------- MoD sampling and causality
def test_mod_predictor_sampling_is_causal_and_topk_is_not(lm):
    model, _ = lm({"name": "mod", "capacity": 0.5, "every": 1}, n_layer=2)
    for p in model.depth.predictors.parameters():
        p.data.normal_(0, 1.0)
    model.eval()
    torch.manual_seed(1)
    x = torch.randint(0, V, (4, 12))
    x2 = x.clone()
    x2[:, 7:] = torch.randint(0, V, (4, 5))
    a, b = model(x).logits, model(x2).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    model.depth.cfg.sampling = "topk"
    a, b = model(x).logits, model(x2).logits
    assert not torch.allclose(a[:, :7], b[:, :7])  # sequence top-k looks at later tokens


def test_mod_generation_is_consistent_with_the_full_forward(lm):
    model, _ = lm({"name": "mod", "capacity": 0.5, "every": 1})
    for p in model.depth.predictors.parameters():
        p.data.normal_(0, 1.0)
    model.eval()
    prompt = torch.randint(0, V, (2, 3))
    seq = model.generate(prompt, 6, temperature=0, use_cache=False)
    logits = model(seq).logits
    assert torch.equal(logits[:, 2:-1].argmax(-1), seq[:, 3:])  # each token = greedy of its prefix
    assert torch.equal(model.generate(prompt, 6, temperature=0), seq)  # the packed KV cache path


@pytest.mark.parametrize("every", [1, 2])
def test_mod_packed_kv_cache_decoding_equals_full_forward(lm, every):
    model, _ = lm({"name": "mod", "capacity": 0.5, "every": every}, n_layer=2)
    torch.manual_seed(2)
    for p in model.depth.predictors.parameters():  # token-dependent decisions (hidden states are ~0.02)
        p.data.normal_(0, 20.0) if p.dim() == 2 else p.data.zero_()
    model.eval()
    x = torch.randint(0, V, (3, 12))
    full = model(x)
    kept = float(full.aux.stats["layer1/processed"])
    assert 0.1 < kept < 0.9  # tokens differ in whether they run the routed block
    caches = model.init_caches(3, 12)
    parts, pos = [], 0
    for chunk in (4, 1, 1, 3, 1, 2):  # prefill, single tokens and chunks after a prefix
        out = model(x[:, pos:pos + chunk], caches=caches, pos=pos)
        parts.append(out.logits)
        pos += chunk
    torch.testing.assert_close(torch.cat(parts, 1), full.logits, rtol=0, atol=1e-10)
    assert sum(caches[1].lengths) == round(kept * x.numel())  # only kept tokens entered the routed cache


def test_mod_without_a_causal_rule_has_no_kv_cache(lm):
    model, _ = lm({"name": "mod", "capacity": 0.5, "every": 1, "sampling": "topk"})
    model.eval()
    assert model.init_caches(2, 8) is None
    caches = [b.mixer.init_cache(2, 8, "cpu", torch.float64) for b in model.blocks]
    with pytest.raises(ValueError, match="MixtureOfDepths has no KV-cache path"):
        model(torch.randint(0, V, (2, 4)), caches=caches)


def test_mod_predictor_loss_trains_only_the_predictor(lm):
    model, _ = lm({"name": "mod", "capacity": 0.5, "every": 1})
    out = model(torch.randint(0, V, (2, 8)))
    assert set(out.aux.losses) == {"layer0/predictor_bce", "layer1/predictor_bce"}
    out.aux_loss.backward()
    for name, p in model.named_parameters():
        touched = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert touched == name.startswith("depth.predictors."), name


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("depth, match", [
    ({"name": "mod", "capacity": 0.0}, r"depth.capacity=0.0 is invalid: must be in \(0, 1\]"),
    ({"name": "mod", "every": 5}, r"depth.every=5 is invalid: must be <= n_layer=2"),
    ({"name": "gateskip", "keep": 1.5}, r"depth.keep=1.5 is invalid"),
    ({"name": "layer_drop", "layers": [0, 2]}, r"depth.layers\[1\]=2 is invalid: must be a block index in \[0, 2\)"),
    ({"name": "mode"}, r"depth.name='mode' is not a registered depth.*did you mean 'mod'"),
])
def test_bad_depth_config_is_a_clear_error(depth, match):
    with pytest.raises(ConfigError, match=match):
        parse(ModelConfig, {"vocab_size": 5, "d_model": 16, "n_layer": 2, "depth": depth})


def test_gateskip_random_selection_baseline_keeps_the_budget(lm):
    model, _ = lm({"name": "gateskip", "keep": 0.5, "select": "random"})
    model.eval()
    x = torch.randint(0, V, (2, 8))
    stats = model(x).aux.stats
    assert stats["layer1/ffn_gate/processed"] == 0.5
    torch.manual_seed(1)
    a = model(x).logits
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x).logits)  # a different random subset


# ---------------------------------------------------------------- GateSkip training-time skip ramp
def test_gateskip_ramp_schedule_and_post_step():
    method = GateSkip(2, 8, GateSkip.Config(ramp_from=0.01, ramp_to=0.1, ramp_steps=10))
    assert method.train_skip() == pytest.approx(0.01)
    for _ in range(5):
        method.post_step()
    assert method.train_skip() == pytest.approx(0.055)
    for _ in range(10):
        method.post_step()
    assert method.train_skip() == pytest.approx(0.1) and int(method.steps_done) == 15
    assert "steps_done" in method.state_dict()  # the ramp resumes from a checkpoint
    assert GateSkip(2, 8).train_skip() == 0.0  # no ramp: soft gates only


def test_gateskip_ramp_skips_in_training_like_the_eval_budget(lm):
    model, _ = lm({"name": "gateskip", "ramp_from": 0.5, "ramp_to": 0.5, "keep": 0.5})
    for gate in model.depth.gates:
        gate.weight.data.normal_(0, 0.5)
    x = torch.randint(0, V, (2, 10))
    train = model.train()(x)
    assert train.aux.stats["layer0/mixer_gate/processed"] == 0.5
    assert "layer0/mixer_gate/sparsity" in train.aux.losses
    torch.testing.assert_close(train.logits, model.eval()(x).logits, rtol=0, atol=1e-12)


def test_gateskip_below_full_budget_has_no_kv_cache(lm):
    model, _ = lm({"name": "gateskip", "keep": 0.5})
    model.eval()
    assert model.init_caches(2, 8) is None
    prompt = torch.randint(0, V, (2, 4))
    seq = model.generate(prompt, 3, temperature=0)
    assert torch.equal(model(seq).logits[:, 3:-1].argmax(-1), seq[:, 4:])
    caches = [b.mixer.init_cache(2, 8, "cpu", torch.float64) for b in model.blocks]
    with pytest.raises(ValueError, match="GateSkip has no KV-cache path"):
        model(prompt, caches=caches)
    model.depth.cfg.keep = 1.0
    assert model.init_caches(2, 8) is not None  # every token runs: the dense cache applies
