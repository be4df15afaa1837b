"""2-bit packing round trip and the packed inference path against the BitLinear reference."""
import pytest
import torch

from gatelab.core.config import parse
from gatelab.models import LM, ModelConfig
from gatelab.quant import (BitLinear, HGFConfig, HGFLinear, PackedBitLinear, PackedHGFLinear, pack_linears,
                           pack_ternary, unpack_ternary)


def test_byte_layout_hand_example():
    # trits -> codes t + 1, first trit in the low bits: [-1, 0, 1, 1] -> 0 | 1<<2 | 2<<4 | 2<<6 = 164
    packed = pack_ternary(torch.tensor([-1, 0, 1, 1, 1]))
    assert packed.dtype == torch.uint8 and packed.tolist() == [164, 2 | 1 << 2 | 1 << 4 | 1 << 6]


@pytest.mark.parametrize("shape", [(1,), (3,), (4,), (7,), (3, 5), (2, 3, 5), (64, 33)])
def test_round_trip(shape):
    g = torch.Generator().manual_seed(sum(shape))
    w_q = torch.randint(-1, 2, shape, generator=g).float()
    packed = pack_ternary(w_q)
    assert packed.numel() == -(-w_q.numel() // 4)
    assert torch.equal(unpack_ternary(packed, shape, torch.float32), w_q)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="values in"):
        pack_ternary(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="2 bytes for shape"):
        unpack_ternary(torch.zeros(3, dtype=torch.uint8), (2, 3))
    with pytest.raises(ValueError, match="unused code 3"):
        unpack_ternary(torch.tensor([255], dtype=torch.uint8), (4,))


def layers():
    torch.manual_seed(0)
    bit = BitLinear(10, 7, bias=True).double()
    hgf = HGFLinear(10, 7, bias=False, cfg=parse(HGFConfig, {"rank": 3})).double()
    with torch.no_grad():
        hgf.correction.B.normal_()
    return [(bit, PackedBitLinear), (hgf, PackedHGFLinear)]


@pytest.mark.parametrize("idx", [0, 1])
def test_packed_layer_matches_reference(idx):
    layer, packed_cls = layers()[idx]
    packed = packed_cls.from_bitlinear(layer)
    x = torch.randn(3, 4, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), layer(x), rtol=0, atol=1e-12)
    assert not any(k == "dense_weight" for k in packed.state_dict())  # the export holds packed codes only
    assert packed.state_dict()["packed"].dtype == torch.uint8


def test_packed_state_dict_round_trip():
    layer, _ = layers()[0]
    packed = PackedBitLinear.from_bitlinear(layer)
    other = PackedBitLinear.from_bitlinear(BitLinear(10, 7, bias=True).double())
    other.load_state_dict(packed.state_dict())
    x = torch.randn(5, 10, dtype=torch.float64)
    assert torch.equal(other(x), packed(x))


@pytest.mark.parametrize("linear", ["bitlinear", {"name": "hgf", "rank": 2}])
def test_pack_linears_keeps_model_outputs_and_meter(linear):
    torch.manual_seed(0)
    model = LM(parse(ModelConfig, {"vocab_size": 37, "d_model": 16, "n_layer": 2, "linear": linear})).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, HGFLinear):
                m.correction.B.normal_()
    x = torch.randint(0, 37, (2, 9))
    model.eval()
    with torch.no_grad():
        ref = model(x)
        assert pack_linears(model) == 8
        out = model(x)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-10)
    assert out.meter.breakdown() == ref.meter.breakdown()
    assert out.aux.scalar_stats() == pytest.approx(ref.aux.scalar_stats())
