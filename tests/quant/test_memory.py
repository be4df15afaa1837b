"""Memory accounting: exact bytes on a hand example and agreement with the packed buffers."""
import pytest
import torch
from torch import nn

from gatelab.core.config import parse
from gatelab.models import LM, ModelConfig
from gatelab.quant import BitLinear, HGFConfig, HGFLinear, memory_report, pack_linears


def test_hand_example():
    model = nn.Sequential(HGFLinear(8, 6, bias=False, cfg=parse(HGFConfig, {"rank": 2, "gate": "token"})),
                          BitLinear(6, 5, bias=True), nn.LayerNorm(5))
    r = memory_report(model)
    # HGF 8 -> 6: 48 trits -> 12 bytes + 4 (fp32 γ) = 16; correction fp16: 2 x (2 x (8 + 6) + 8 + 1) = 74
    # BitLinear 6 -> 5 with bias: 30 trits -> 8 bytes + 4 + 2 x 5 (fp16 bias) = 22; no correction
    assert [(m.backbone_bytes, m.correction_bytes, m.fp16_bytes) for m in r.layers] == [(16, 74, 96), (22, 0, 70)]
    assert r.overhead_vs_ternary == 74 / 38
    assert r.quantized_vs_fp16 == (38 + 74) / 166
    assert r.other_fp16_bytes == 2 * 10  # LayerNorm weight + bias
    assert r.model_vs_fp16 == (38 + 74 + 20) / (166 + 20)
    total_params = sum(p.numel() for p in model.parameters())  # 48 + 37 + 30 + 5 + 10
    assert r.train_bytes == 12 * total_params == 12 * 130


def test_packed_model_reports_the_same_deployed_bytes():
    torch.manual_seed(0)
    model = LM(parse(ModelConfig, {"vocab_size": 37, "d_model": 16, "n_layer": 2,
                                   "linear": {"name": "hgf", "rank": 2}}))
    before = memory_report(model)
    pack_linears(model)
    after = memory_report(model)
    stored = [m.packed.numel() + 4 for m in model.modules() if hasattr(m, "packed")]
    assert after.backbone_bytes == sum(stored) == before.backbone_bytes
    for key in ("correction_bytes", "fp16_bytes", "other_fp16_bytes", "model_bytes"):
        assert getattr(after, key) == getattr(before, key)
    # embedding (tied head) and 5 RMSNorm weights stay fp16: 2 x (37 x 16 + 5 x 16)
    assert before.other_fp16_bytes == 2 * (37 * 16 + 5 * 16)


def test_full_precision_model_has_no_overhead():
    model = LM(parse(ModelConfig, {"vocab_size": 37, "d_model": 16, "n_layer": 1}))
    r = memory_report(model)
    assert r.layers == [] and r.overhead_vs_ternary == 0 and r.model_vs_fp16 == pytest.approx(1.0)
