"""JEI-DNN-style learned exits: shut gates == dense, the gates' expected-loss objective by
hand, KV-filled decoding == the masked reference, gate FLOPs metered."""
import pytest
import torch

from gatelab.core.aux import ForwardContext
from gatelab.depth import decode_stepwise
from gatelab.depth.early_exit import next_token_ce
from gatelab.depth.learned_exit import confidence_features

V = 37  # vocabulary of the conftest models


def test_features_of_a_known_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]]))
    f = confidence_features(logits)
    torch.testing.assert_close(f[:, :2], torch.tensor([[0.5, 0.2], [1 / 3, 0.0]]), rtol=0, atol=1e-6)
    assert f[1, 2].abs() < 1e-6 and 0 < f[0, 2] < 1  # uniform: zero confidence by entropy


def test_shut_gates_equal_dense_and_cached_generation(lm):
    model, dense = lm({"name": "learned_exit"}, n_layer=3)
    for gate in model.depth.gates:
        gate[-1].bias.data.fill_(-50.0)  # g ≈ 0: never exits
    model.eval(), dense.eval()
    x = torch.randint(0, V, (2, 8))
    torch.testing.assert_close(model(x).logits, dense(x).logits, rtol=0, atol=0)
    prompt = x[:, :3]
    assert torch.equal(model.generate(prompt, 5, temperature=0), dense.generate(prompt, 5, temperature=0))


def test_gate_objective_is_the_expected_exit_loss_plus_cost(lm):
    model, dense = lm({"name": "learned_exit", "cost": 0.3, "gate_loss": 2.0, "exit_loss": 0.0}, n_layer=3)
    torch.manual_seed(4)
    for p in model.depth.gates.parameters():
        p.data.normal_(0, 1.0)
    x = torch.randint(0, V, (2, 9))
    out = model.train()(x)
    assert set(out.aux.losses) == {"exit_gate"}  # exit_loss 0: no CALM losses, only the gates'
    h, ctx, ce, g = model.embed(x), ForwardContext(), [], []
    for i, block in enumerate(dense.blocks):
        h = block(h, ctx)
        logits = dense.head(h, ctx)[:, :-1]
        ce.append(next_token_ce(logits, x))
        if i < 2:
            feats = confidence_features(logits.flatten(0, 1)).double()
            g.append(torch.sigmoid(model.depth.gates[i](feats)).view(2, 8))
    p0 = g[0]
    p1 = (1 - g[0]) * g[1]
    p2 = (1 - g[0]) * (1 - g[1])
    expected = sum(p * (c + 0.3 * (i + 1) / 3) for i, (p, c) in enumerate(zip((p0, p1, p2), ce))).mean()
    torch.testing.assert_close(out.aux.losses["exit_gate"], 2.0 * expected.float(), rtol=1e-6, atol=0)
    out.aux_loss.backward()  # only the gates learn from their objective
    for name, p in model.named_parameters():
        assert (p.grad is not None and bool(p.grad.abs().sum() > 0)) == name.startswith("depth.gates."), name


def test_kv_filled_decoding_equals_masked_reference_and_meters_the_gates(lm):
    model, _ = lm({"name": "learned_exit", "hidden": 4}, n_layer=3)
    torch.manual_seed(5)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    model.eval()
    x = torch.randint(0, V, (3, 10))
    h = model.blocks[0](model.embed(x), ForwardContext())
    g_N = model.depth.gate_probs(0, model.head(h, ForwardContext()).flatten(0, 1), ForwardContext()).detach()
    srt = g_N.sort().values
    model.depth.cfg.threshold = float(srt[14:16].mean())  # about half exit after block 0
    full = model(x)
    assert 0.2 < float(full.aux.stats["exit/at_layer0"]) < 0.8
    logits, _, _ = decode_stepwise(model, x)
    torch.testing.assert_close(logits, full.logits, rtol=0, atol=1e-10)
    table = full.meter.breakdown()
    assert table["layer0/exit/exit_gate"][0] == 2 * x.numel() * (3 * 4 + 4 * 1)  # every token asks at layer 0
    assert "layer2/exit/exit_gate" not in table  # the last layer has no gate

