"""gatelab.attention: softmax attention (RoPE, GQA, KV cache, output/value gates, sink
options), the attention-sink metric, and gated linear-attention token mixers."""
from . import sink_metric
from .gated_deltanet import GatedDeltaNet, gated_delta_chunk, gated_delta_recurrent
from .gla import GatedLinearAttention, gla_chunk, gla_recurrent
from .kv_cache import KVCache
from .linear_mixer import RecurrentState
from .rope import RotaryEmbedding, apply_rope
from .softmax import AttentionConfig, CausalSelfAttention

__all__ = [
    "AttentionConfig", "CausalSelfAttention", "KVCache", "RotaryEmbedding", "apply_rope", "sink_metric",
    "GatedLinearAttention", "gla_chunk", "gla_recurrent",
    "GatedDeltaNet", "gated_delta_chunk", "gated_delta_recurrent", "RecurrentState",
]
