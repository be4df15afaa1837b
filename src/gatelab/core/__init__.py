"""Shared types with no gatelab dependencies: registry, aux channel, FLOP meter, errors."""
from .aux import AuxOutputs, ForwardContext
from .errors import CheckpointError, ConfigError, DataError, GatelabError, NonFiniteLossError
from .flops import ComputeMeter, causal_attention_flops, linear_flops
from .registry import get, names, register

__all__ = [
    "AuxOutputs", "ForwardContext", "ComputeMeter", "causal_attention_flops", "linear_flops",
    "CheckpointError", "ConfigError", "DataError", "GatelabError", "NonFiniteLossError",
    "get", "names", "register",
]
