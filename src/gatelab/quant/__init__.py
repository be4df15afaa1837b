"""gatelab.quant: ternary BitLinear and gated low-rank corrections (issue 11)."""
