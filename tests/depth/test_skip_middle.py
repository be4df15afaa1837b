"""Skip-middle gates: open gates == dense; gathered execution == a plain loop of the formula
(float64, forward and backward); executed-FLOP accounting; causality; no KV cache."""
import pytest
import torch
import torch.nn.functional as F

from gatelab.core.aux import ForwardContext
from gatelab.depth import compute_saved

V = 37  # vocabulary of the conftest models


def grads_of(logits, params):
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)
    return torch.autograd.grad((logits * weights).sum(), params)


def make_mixed(lm, n_layer=4):
    """A skip-middle LM whose routers shut some tokens (g = 0), half-open others, keep the rest."""
    model, dense = lm({"name": "skip_middle"}, n_layer=n_layer)
    torch.manual_seed(3)
    for router in model.depth.routers:
        router.weight.data.normal_(0, 15.0)  # hidden states are ~0.02 per channel here
        router.bias.data.fill_(0.1)
    return model, dense


def reference(model, x):
    """The METHODS.md §4.7 formula as a loop over sequences and layers: gates from the block
    input, mirrored onto the second half, each branch run on the tokens with g > 0 only."""
    L, ctx = len(model.blocks), ForwardContext()
    rows = []
    for b in range(x.shape[0]):
        h_1TD = model.embed(x[b:b + 1])
        m_T, gates = torch.zeros(x.shape[1], dtype=h_1TD.dtype), []
        for i, block in enumerate(model.blocks):
            if i < len(model.depth.routers):
                m_T = m_T + F.relu(model.depth.routers[i](h_1TD)[0, :, 0])
                gates.append(1 - m_T.clamp(0, 1))
            g_T = gates[min(i, L - 1 - i)]
            kept_K = (g_T > 0).nonzero().flatten()
            for branch in (block.mix, block.channel):
                upd_KD = branch(h_1TD[:, kept_K], ctx)[0]
                h_1TD = h_1TD.index_add(1, kept_K, (g_T[kept_K, None] * upd_KD).unsqueeze(0))
        rows.append(h_1TD)
    return model.head(torch.cat(rows), ctx)


def test_open_gates_equal_dense_fwd_bwd(lm):
    model, dense = lm({"name": "skip_middle"}, n_layer=5)
    for router in model.depth.routers:
        router.weight.data.zero_()
        router.bias.data.fill_(-10.0)  # ReLU(−10) = 0: m = 0, g = 1 everywhere
    x = torch.randint(0, V, (2, 9))
    for mode in (True, False):
        model.train(mode), dense.train(mode)
        a, b = model(x).logits, dense(x).logits
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        params = [p for n, p in model.named_parameters() if not n.startswith("depth.")]
        for ga, gb in zip(grads_of(a, params), grads_of(b, list(dense.parameters()))):
            torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_layer", [4, 5])
def test_gathered_execution_equals_reference_loop_fwd_bwd(lm, n_layer):
    model, _ = make_mixed(lm, n_layer)
    x = torch.randint(0, V, (3, 10))
    out = model(x)
    middle = n_layer // 2
    assert 0.1 < out.aux.stats[f"layer{middle}/processed"] < 0.9  # some tokens skip the middle block
    ref = reference(model, x)
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-12)
    names, params = zip(*model.named_parameters())
    grads = grads_of(out.logits, params)
    for ga, gb in zip(grads, grads_of(ref, params)):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-11)
    router_grads = [g for n, g in zip(names, grads) if n.startswith("depth.routers.")]
    assert len(router_grads) == 2 * len(model.depth.routers)
    assert all(g.abs().sum() > 0 for g in router_grads)  # the routers learn through g·f


def test_mirrored_layers_process_the_same_tokens_and_the_meter_counts_them(lm):
    model, dense = make_mixed(lm, 4)
    x = torch.randint(0, V, (2, 12))
    out = model(x)
    stats, table = out.aux.stats, out.meter.breakdown()
    assert stats["layer0/processed"] == stats["layer3/processed"]
    assert stats["layer1/processed"] == stats["layer2/processed"] < stats["layer0/processed"]
    hidden, D = model.blocks[0].ffn.hidden, 16
    for i in range(4):
        kept = round(float(stats[f"layer{i}/processed"]) * x.numel())
        assert table[f"layer{i}/ffn/down"][0] == 2 * kept * hidden * D
    assert table["layer0/router"][0] == table["layer1/router"][0] == 2 * x.numel() * D
    assert "layer2/router" not in table  # the second half reuses the first half's gates
    saved, _ = compute_saved(model, x)
    assert 0 < saved < 1


def test_causal_and_no_kv_cache(lm):
    model, _ = make_mixed(lm, 4)
    model.eval()
    x = torch.randint(0, V, (2, 12))
    x2 = x.clone()
    x2[:, 8:] = torch.randint(0, V, (2, 4))
    torch.testing.assert_close(model(x).logits[:, :8], model(x2).logits[:, :8], rtol=0, atol=1e-12)
    assert model.init_caches(2, 16) is None  # generate() recomputes the sequence
    seq = model.generate(x[:, :3], 4, temperature=0)
    assert torch.equal(model(seq).logits[:, 2:-1].argmax(-1), seq[:, 3:])
    caches = [b.mixer.init_cache(2, 16, "cpu", torch.float64) for b in model.blocks]
    with pytest.raises(ValueError, match="SkipMiddle has no KV-cache path"):
        model(x, caches=caches)


def test_sparsity_loss_is_the_mean_gate(lm):
    model, _ = make_mixed(lm, 2)  # one router: block 0 and its mirror, block 1, share g_0
    model.depth.cfg.sparsity = 0.1
    x = torch.randint(0, V, (2, 8))
    out = model.train()(x)
    g_BT = 1 - F.relu(model.depth.routers[0](model.embed(x))[..., 0]).clamp(0, 1)
    assert set(out.aux.losses) == {"skip_middle/sparsity"}
    torch.testing.assert_close(out.aux.losses["skip_middle/sparsity"], 0.1 * g_BT.mean(), rtol=1e-12, atol=0)
    assert model.eval()(x).aux.total_loss() is None
