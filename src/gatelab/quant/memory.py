"""Memory accounting for ternary models (METHODS.md §6.3), in bytes of the deployed form.

Per quantised layer (d_in -> d_out):
    backbone   = ceil(d_in·d_out / 4)  2-bit packed trits (b_w = 2, see packing.py)
               + 4                     γ, one fp32 scale per tensor
               + 2·d_out               fp16 bias, if any
    correction = 2·(r·(d_in + d_out) + gate parameters)     HGF path stored in fp16
    fp16       = 2·d_in·d_out + 2·d_out (bias)              the same layer left in fp16

Quantised MoE experts (`Experts.quant` set) count as one such layer per expert matrix
(``{name}.w_in[e]``, ``{name}.w_out[e]``: one γ each, no bias, no correction).

`overhead_vs_ternary` = correction / backbone (the HGF claim's "overhead beyond the
ternary backbone", backbone-only denominator). Whole-model figures add every other
parameter (embedding, tied head, norms, layers left in FP) at fp16, compared with the
all-fp16 model. Training memory is separate: fp32 latents plus AdamW's two fp32 moments,
12 bytes per trained parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..moe.experts import Experts
from .bitlinear import BitLinear
from .hgf import GatedLowRank
from .packing import PackedBitLinear, packed_size

FP16_BYTES = 2
SCALE_BYTES = 4
ADAMW_TRAIN_BYTES = 12


@dataclass
class LayerMemory:
    name: str
    d_in: int
    d_out: int
    backbone_bytes: int
    correction_bytes: int
    fp16_bytes: int


@dataclass
class MemoryReport:
    layers: list[LayerMemory] = field(default_factory=list)
    other_fp16_bytes: int = 0  # parameters outside the quantised layers, at fp16
    train_bytes: int = 0  # fp32 latents + AdamW state of every trainable parameter

    @property
    def backbone_bytes(self) -> int:
        return sum(layer.backbone_bytes for layer in self.layers)

    @property
    def correction_bytes(self) -> int:
        return sum(layer.correction_bytes for layer in self.layers)

    @property
    def fp16_bytes(self) -> int:
        return sum(layer.fp16_bytes for layer in self.layers)

    @property
    def overhead_vs_ternary(self) -> float:
        """Correction bytes / ternary backbone bytes (0 without quantised layers)."""
        return self.correction_bytes / self.backbone_bytes if self.backbone_bytes else 0.0

    @property
    def quantized_vs_fp16(self) -> float:
        """(Backbone + correction) / the same layers in fp16."""
        return (self.backbone_bytes + self.correction_bytes) / self.fp16_bytes if self.fp16_bytes else 1.0

    @property
    def model_bytes(self) -> int:
        return self.backbone_bytes + self.correction_bytes + self.other_fp16_bytes

    @property
    def model_vs_fp16(self) -> float:
        """Whole deployed model / the whole model in fp16."""
        return self.model_bytes / (self.fp16_bytes + self.other_fp16_bytes)

    def summary(self) -> dict[str, float]:
        return {"backbone_bytes": self.backbone_bytes, "correction_bytes": self.correction_bytes,
                "fp16_bytes": self.fp16_bytes, "overhead_vs_ternary": self.overhead_vs_ternary,
                "quantized_vs_fp16": self.quantized_vs_fp16, "model_bytes": self.model_bytes,
                "model_vs_fp16": self.model_vs_fp16, "train_bytes": self.train_bytes}


def memory_report(model: nn.Module) -> MemoryReport:
    """Bytes of `model` deployed with packed ternary layers (training or packed form alike)."""
    report = MemoryReport()
    counted: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, Experts) and m.quant is not None:
            report.layers += _expert_layers(name, m)
            counted.update(id(t) for t in m.parameters())
            continue
        if not isinstance(m, (BitLinear, PackedBitLinear)):
            continue
        d_in, d_out = m.in_features, m.out_features
        bias = FP16_BYTES * d_out if m.bias is not None else 0
        correction = getattr(m, "correction", None)
        report.layers.append(LayerMemory(
            name, d_in, d_out,
            backbone_bytes=packed_size(d_in * d_out) + SCALE_BYTES + bias,
            correction_bytes=FP16_BYTES * correction.num_params if isinstance(correction, GatedLowRank) else 0,
            fp16_bytes=FP16_BYTES * d_in * d_out + bias,
        ))
        counted.update(id(t) for t in m.parameters())
        counted.update(id(t) for t in m.buffers())
    params = list(model.parameters())
    report.other_fp16_bytes = FP16_BYTES * sum(p.numel() for p in params if id(p) not in counted)
    report.train_bytes = ADAMW_TRAIN_BYTES * sum(p.numel() for p in params if p.requires_grad)
    return report


def _expert_layers(name: str, experts: Experts) -> list[LayerMemory]:
    """One ternary layer per expert matrix of a quantised `Experts` (2-bit trits + one fp32 γ)."""
    layers = []
    for w_name, w in (("w_in", experts.w_in), ("w_out", experts.w_out)):
        _, d_in, d_out = w.shape
        backbone = packed_size(d_in * d_out) + SCALE_BYTES
        layers += [LayerMemory(f"{name}.{w_name}[{e}]", d_in, d_out, backbone_bytes=backbone, correction_bytes=0,
                               fp16_bytes=FP16_BYTES * d_in * d_out) for e in range(experts.n)]
    return layers
