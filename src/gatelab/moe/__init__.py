"""gatelab.moe: mixture-of-experts layer = router + dispatcher + experts (issue 4).

Registered channel mixer: ``moe`` (`MoELayer`). Dispatch backends: reference loop,
dropless sorted grouped matmul, capacity. `upcycle` builds MoE layers from dense FFNs.
"""
from . import layer  # noqa: F401  (registers the moe channel mixer)
from .dispatch import dispatch_capacity, dispatch_dropless, dispatch_reference
from .experts import Experts
from .layer import MoEConfig, MoELayer
from .upcycle import upcycle_ffn, upcycle_model

__all__ = ["Experts", "MoEConfig", "MoELayer", "dispatch_capacity", "dispatch_dropless", "dispatch_reference",
           "upcycle_ffn", "upcycle_model"]
