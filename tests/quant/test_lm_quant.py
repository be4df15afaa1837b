"""The `model.linear` seam: which layers are swapped, initialisation, FLOP accounting, training."""
import pytest
import torch
from torch import nn

from gatelab.core.config import parse
from gatelab.models import LM, ModelConfig
from gatelab.quant import BitLinear, HGFLinear, quantize_linears
from gatelab.train.trainer import lm_loss


def tiny(linear, seed=0, **over):
    torch.manual_seed(seed)
    return LM(parse(ModelConfig, {"vocab_size": 37, "d_model": 16, "n_layer": 2, "linear": linear, **over}))


def test_swaps_mixer_and_ffn_linears_only():
    model = tiny("bitlinear", block={"ffn": {"name": "gelu"}})
    swapped = sorted(n for n, m in model.named_modules() if isinstance(m, BitLinear))
    assert swapped == [f"blocks.{i}.{p}" for i in range(2) for p in ("ffn.down", "ffn.up", "mixer.out", "mixer.qkv")]
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed.weight
    assert model.blocks[0].mixer.out.is_residual_out and model.blocks[1].ffn.down.is_residual_out


def test_same_seed_same_latent_weights_as_fp():
    fp, hgf = tiny("none").state_dict(), tiny({"name": "hgf", "rank": 2}).state_dict()
    assert set(fp) < set(hgf)
    assert all(torch.equal(fp[k], hgf[k]) for k in fp)


def test_exclude_keeps_named_linears_in_full_precision():
    model = tiny({"name": "bitlinear", "exclude": ["qkv"]})
    assert type(model.blocks[0].mixer.qkv) is nn.Linear and isinstance(model.blocks[0].mixer.out, BitLinear)


def test_quantize_linears_is_idempotent():
    model = tiny({"name": "hgf", "rank": 1})
    assert quantize_linears(model.blocks, model.cfg.linear) == []


def test_hgf_correction_flops_and_params_are_metered():
    x = torch.randint(0, 37, (2, 5))
    fp, hgf = tiny("none")(x).meter, tiny({"name": "hgf", "rank": 2, "gate": "token"})(x).meter
    rows = 10
    # per row, 2 r (d_in + d_out) + 2 d_in (token gate); SwiGLU hidden = 48 at d_model 16
    per_row = {"mixer/qkv": 4 * 64 + 32, "mixer/out": 4 * 32 + 32, "ffn/gate_up": 4 * 112 + 32,
               "ffn/down": 4 * 64 + 96}
    params = {"mixer/qkv": 2 * 64 + 17, "mixer/out": 2 * 32 + 17, "ffn/gate_up": 2 * 112 + 17,
              "ffn/down": 2 * 64 + 49}
    extra = {k: v for k, v in hgf.breakdown().items() if k.endswith("/hgf")}
    assert extra == {f"layer{i}/{name}/hgf": (rows * per_row[name], rows * params[name])
                     for i in range(2) for name in per_row}
    assert hgf.total_flops() - fp.total_flops() == rows * 2 * sum(per_row.values())
    # a ternary matmul counts as the dense matmul of its shape
    assert tiny("bitlinear")(x).meter.breakdown() == fp.breakdown()


def test_gate_statistics_reach_the_aux_channel():
    model = tiny({"name": "hgf", "rank": 1, "gate": "scalar", "gate_init": 0.25})
    stats = model(torch.randint(0, 37, (1, 4))).aux.stats
    assert stats["layer1/ffn/down/hgf_gate_mean"].item() == pytest.approx(0.25)
    assert len([k for k in stats if k.endswith("hgf_gate_mean")]) == 8


def test_standalone_mixer_call_without_context_records_nothing():
    model = tiny({"name": "hgf", "rank": 1})
    y = model.blocks[0].ffn(torch.randn(1, 3, 16))
    assert y.shape == (1, 3, 16) and all(m._ctx is None for m in model.modules() if isinstance(m, HGFLinear))


@pytest.mark.parametrize("linear", ["bitlinear", {"name": "hgf", "rank": 2}])
def test_tiny_lm_trains(linear):
    model = tiny(linear)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 37, (4, 16), generator=g)
    y = torch.roll(x, -1, dims=1)  # a learnable next-token map on a fixed batch
    losses = []
    for _ in range(40):
        loss = lm_loss(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    if linear != "bitlinear":
        assert any(m.correction.B.abs().sum() > 0 for m in model.modules() if isinstance(m, HGFLinear))
