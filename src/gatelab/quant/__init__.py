"""gatelab.quant: ternary BitLinear and gated low-rank corrections (issue 11).

* `BitLinear` (registered linear ``bitlinear``): BitNet b1.58 absmean ternary weights and
  per-token absmax 8-bit activations, straight-through; a drop-in nn.Linear.
* `HGFLinear` (``hgf``): BitLinear + g(x) ⊙ B(A x), the Hybrid Gated Flow correction.
* `quantize_linears(model, spec)`: swap the linears of every block's mixer and FFN
  (`ModelConfig.linear` calls it in `LM.__init__`); ``none`` keeps them.
* `pack_ternary` / `unpack_ternary`, `pack_linears`: 2-bit storage and packed inference.
* MoE experts: `ExpertQuant` (set as `Experts.quant` by the swap for ``bitlinear``) applies
  the same quantisers to the stacked expert weights and per-row activations.
* `memory_report(model)`: packed bytes, correction overhead, fp16 comparison.
"""
from .bitlinear import (BitLinear, BitLinearConfig, ExpertQuant, FullPrecision, fake_quant_activations,
                        fake_quant_weight, quantize_activations, ternarize)
from .hgf import ContextBound, GatedLowRank, HGFConfig, HGFLinear
from .memory import LayerMemory, MemoryReport, memory_report
from .packing import PackedBitLinear, PackedHGFLinear, pack_linears, pack_ternary, packed_size, unpack_ternary
from .swap import quantize_linears, replace_modules

__all__ = [
    "BitLinear", "BitLinearConfig", "ContextBound", "ExpertQuant", "FullPrecision", "GatedLowRank", "HGFConfig",
    "HGFLinear", "LayerMemory", "MemoryReport", "PackedBitLinear", "PackedHGFLinear", "fake_quant_activations",
    "fake_quant_weight", "memory_report", "pack_linears", "pack_ternary", "packed_size", "quantize_activations",
    "quantize_linears", "replace_modules", "ternarize", "unpack_ternary",
]
