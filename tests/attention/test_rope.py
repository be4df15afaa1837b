"""RoPE: the cached cos/sin table gives the values computed directly for any span."""
import torch

from gatelab.attention.rope import RotaryEmbedding


def _direct(rope: RotaryEmbedding, pos: int, length: int, dtype: torch.dtype):
    t = torch.arange(pos, pos + length, dtype=torch.float32)
    emb = torch.cat([torch.outer(t, rope.inv_freq)] * 2, dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def test_cached_table_equals_direct_values_for_any_span():
    rope = RotaryEmbedding(16, theta=500.0)
    for pos, length, dtype in [(0, 8, torch.float32), (5, 3, torch.float32), (0, 100, torch.float32),
                               (37, 1, torch.float32), (3, 9, torch.float64), (90, 20, torch.float32)]:
        cos, sin = rope.cos_sin(pos, length, torch.device("cpu"), dtype)
        ref_cos, ref_sin = _direct(rope, pos, length, dtype)
        assert cos.dtype == dtype and cos.shape == (length, 16)
        assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_table_grows_by_powers_of_two_and_is_reused():
    rope = RotaryEmbedding(8)
    rope.cos_sin(0, 10, torch.device("cpu"), torch.float32)
    first = rope._cos
    assert first.shape[0] == 16
    rope.cos_sin(10, 6, torch.device("cpu"), torch.float32)  # within the table: no rebuild
    assert rope._cos is first
    rope.cos_sin(16, 1, torch.device("cpu"), torch.float32)
    assert rope._cos.shape[0] == 32
