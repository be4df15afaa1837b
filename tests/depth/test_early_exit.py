"""CALM early exit: dense when it never exits, KV filling in decoding equals the masked
full-sequence reference with the same exit decisions, exit losses, executed-FLOP accounting."""
import pytest
import torch
import torch.nn.functional as F

from gatelab.core.aux import ForwardContext
from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.depth import decode_saved, decode_stepwise
from gatelab.depth.early_exit import softmax_confidence
from gatelab.models import LM, ModelConfig

V = 37  # vocabulary of the conftest models


def roughen(model, std=0.3):
    """Non-trivial weights so confidences vary across tokens and layers."""
    torch.manual_seed(5)
    for p in model.parameters():
        p.data.normal_(0, std)
    return model


def median_threshold(model, x, confidence):
    """A threshold half way between the two middle confidences after block 0 (so that about
    half the tokens exit there, and rounding differences cannot flip a decision)."""
    h = model.blocks[0](model.embed(x), _ctx())
    if confidence == "saturation":
        conf = F.cosine_similarity(h, model.embed(x), dim=-1)
    else:
        conf = softmax_confidence(model.head(h, _ctx()).flatten(0, 1), confidence)
    conf_N = conf.detach().flatten().sort().values
    mid = conf_N.numel() // 2
    return float(conf_N[mid - 1:mid + 1].mean())


def _ctx():
    return ForwardContext()


# ---------------------------------------------------------------- never exits == dense
def test_never_exiting_equals_dense_forward_generate_and_cache(lm):
    model, dense = lm({"name": "calm", "threshold": 2.0}, n_layer=3)
    model.eval(), dense.eval()
    x = torch.randint(0, V, (2, 9))
    assert torch.equal(model(x).logits, dense(x).logits)
    prompt = x[:, :4]
    ref = dense.generate(prompt, 6, temperature=0)
    assert torch.equal(model.generate(prompt, 6, temperature=0), ref)
    assert torch.equal(model.generate(prompt, 6, temperature=0, use_cache=False), ref)
    logits, _, stats = decode_stepwise(model, x)
    torch.testing.assert_close(logits, dense(x).logits, rtol=0, atol=1e-12)
    assert stats["exit/blocks_run"] == pytest.approx(1.0) and stats["exit/at_layer2"] == pytest.approx(1.0)


def test_training_runs_dense_and_adds_weighted_exit_losses(lm):
    model, dense = lm({"name": "calm", "exit_loss": 0.5}, n_layer=3)
    x = torch.randint(0, V, (2, 9))
    out = model.train()(x)
    torch.testing.assert_close(out.logits, dense(x).logits, rtol=0, atol=0)
    h, expected = model.embed(x), 0.0
    for i, block in enumerate(dense.blocks[:2]):
        h = block(h, _ctx())
        ce = F.cross_entropy(dense.head(h, _ctx())[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        expected = expected + 0.5 * (i + 1) / 3 * ce
    assert set(out.aux.losses) == {"layer0/exit_ce", "layer1/exit_ce"}
    torch.testing.assert_close(out.aux_loss, expected.float(), rtol=1e-6, atol=0)
    out.aux_loss.backward()  # the exit losses train the blocks below them and the shared head
    assert model.blocks[0].ffn.down.weight.grad.abs().sum() > 0
    assert model.blocks[2].ffn.down.weight.grad is None  # no exit loss above the last exit
    assert model.lm_head.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- KV filling
@pytest.mark.parametrize("confidence", ["margin", "max_prob", "saturation"])
def test_cached_decoding_with_kv_filling_equals_masked_reference(lm, confidence):
    model, _ = lm({"name": "calm", "confidence": confidence}, n_layer=3)
    roughen(model).eval()
    x = torch.randint(0, V, (3, 10))
    model.depth.cfg.threshold = median_threshold(model, x, confidence)
    full = model(x)
    hist = [full.aux.stats[f"exit/at_layer{i}"] for i in range(3)]
    assert 0.2 < hist[0] < 0.8 and hist[2] > 0  # mixed decisions: rows differ within a decoding step
    logits, _, stats = decode_stepwise(model, x)
    torch.testing.assert_close(logits, full.logits, rtol=0, atol=1e-10)
    assert stats["exit/blocks_run"] == pytest.approx(float(full.aux.stats["exit/blocks_run"]), abs=1e-6)
    prompt = x[:, :3]
    assert torch.equal(model.generate(prompt, 7, temperature=0), model.generate(prompt, 7, temperature=0,
                                                                                use_cache=False))


def test_exited_state_propagates_to_later_layers(lm):
    """Reference by hand: position 0 exits after block 0; position 1 (never exits) attends,
    in blocks 1 and 2, to keys/values computed from position 0's frozen state."""
    model, dense = lm({"name": "calm", "confidence": "max_prob"}, n_layer=3)
    roughen(model).eval()
    dense.load_state_dict(model.state_dict(), strict=False)
    x = torch.randint(0, V, (1, 2))
    h0 = model.blocks[0](model.embed(x), _ctx())
    p0 = softmax_confidence(model.head(h0[:, :1], _ctx())[0], "max_prob")
    model.depth.cfg.threshold = float(p0.detach()) - 1e-9  # position 0 exits at block 0 ...
    h1 = model.blocks[0](model.embed(x), _ctx())
    if softmax_confidence(model.head(h1[:, 1:], _ctx())[0], "max_prob") >= model.depth.cfg.threshold:
        pytest.skip("position 1 is confident too at this seed")
    h = h0
    for block in model.blocks[1:]:  # ... and its frozen state feeds the keys/values of blocks 1, 2
        h = torch.cat([h0[:, :1], block(h, _ctx())[:, 1:]], dim=1)
    ref = model.head(h, _ctx())
    torch.testing.assert_close(model(x).logits, ref, rtol=0, atol=1e-12)
    logits, _, _ = decode_stepwise(model, x)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- executed compute
def test_decoding_flops_count_executed_layers_exit_heads_and_kv_fills(lm):
    L, D = 3, 16
    model, dense = lm({"name": "calm", "confidence": "max_prob", "threshold": 1e-9}, n_layer=L)
    model.eval()
    x = torch.randint(0, V, (2, 6))
    B, T = x.shape
    _, executed, stats = decode_stepwise(model, x)
    assert stats["exit/at_layer0"] == pytest.approx(1.0)  # max_prob >= 1/V: every token exits after block 0
    caches, expected = dense.init_caches(B, T), 0.0
    for t in range(T):
        table = dense(x[:, t:t + 1], caches=caches, pos=t).meter.breakdown()
        expected += sum(f for name, (f, _) in table.items() if name.startswith("layer0/"))
    qkv_dim = model.blocks[0].mixer.qkv_dim
    expected += B * T * (2 * D * V + (L - 1) * 2 * D * qkv_dim)  # exit head once, KV fill in blocks 1, 2
    assert executed == pytest.approx(expected, rel=1e-12)
    saved, _, _ = decode_saved(model, x)
    _, dense_flops, _ = decode_stepwise(dense, x)
    assert saved == pytest.approx(1 - expected / dense_flops, rel=1e-12)


def test_never_exiting_pays_the_exit_heads(lm):
    L, D = 3, 16
    model, dense = lm({"name": "calm", "threshold": 2.0}, n_layer=L)
    model.eval()
    x = torch.randint(0, V, (2, 6))
    saved, _, _ = decode_saved(model, x)
    _, dense_flops, _ = decode_stepwise(dense, x)
    assert saved == pytest.approx(-(L - 1) * x.numel() * 2 * D * V / dense_flops, rel=1e-12)


# ---------------------------------------------------------------- errors
def test_bad_config_and_unsupported_mixer_are_clear_errors():
    with pytest.raises(ConfigError, match=r"depth.threshold=0.0 is invalid: must be > 0"):
        parse(ModelConfig, {"vocab_size": 5, "d_model": 16, "n_layer": 2, "depth": {"name": "calm", "threshold": 0.0}})
    model = LM(parse(ModelConfig, {"vocab_size": 5, "d_model": 16, "n_layer": 2,
                                   "block": {"mixer": {"name": "gla", "n_head": 2}},
                                   "depth": {"name": "calm"}})).eval()
    with pytest.raises(ValueError, match="KV filling for skipped tokens supports softmax attention"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2)
