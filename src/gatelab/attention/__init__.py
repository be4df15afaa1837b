"""gatelab.attention: softmax attention (RoPE, GQA, KV cache) and, in later modules,
gated and linear-attention token mixers."""
from .kv_cache import KVCache
from .rope import RotaryEmbedding, apply_rope
from .softmax import AttentionConfig, CausalSelfAttention

__all__ = ["AttentionConfig", "CausalSelfAttention", "KVCache", "RotaryEmbedding", "apply_rope"]
