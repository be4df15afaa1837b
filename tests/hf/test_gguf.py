"""GGUF files (llama.cpp naming, permuted q/k, F32 / F16 / Q8_0) load into gatelab's LM."""
import numpy as np
import pytest
import torch

from hf_models import logits, tiny_hf
from gatelab.core.errors import CheckpointError, ConfigError
from gatelab.hf import load_gguf, load_hf
from gatelab.hf.gguf_load import unpermute_rows

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute` (rotate-half -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf, qtype=Q.F32, arch="llama", drop=(), edit=None):
    """`hf`'s weights as a GGUF file the way llama.cpp's converter writes them."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(128)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(5000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
                                     c.num_hidden_layers)
    for key, t in hf.state_dict().items():
        a = t.numpy()
        if arch == "llama" and "q_proj" in key:
            a = llama_cpp_permute(a, c.num_attention_heads)
        if arch == "llama" and "k_proj" in key:
            a = llama_cpp_permute(a, c.num_key_value_heads)
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name in drop:
            continue
        if edit and name in edit:
            a = edit[name](a)
        if a.ndim == 2 and a.dtype == np.float32 and qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        elif a.ndim == 2 and a.dtype == np.float32 and qtype != Q.F32:
            q = gguf.quants.quantize(a, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute_rows(torch.from_numpy(llama_cpp_permute(w.numpy(), 4)), 4), w)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f32_gguf_equals_the_hf_checkpoint_exactly(tmp_path, tokens, arch):
    hf = tiny_hf(arch, intermediate_size=64)
    hf.save_pretrained(tmp_path / "hf")
    from_gguf = load_gguf(write_gguf(tmp_path / "m.gguf", hf, Q.F32, arch))
    from_hf = load_hf(tmp_path / "hf")
    for (name, p), (_, q) in zip(from_gguf.named_parameters(), from_hf.named_parameters()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(logits(from_gguf, tokens), logits(hf, tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_quantised_gguf_equals_the_dequantised_weights(tmp_path, tokens, qtype):
    """Expected: transformers' model with every matrix replaced by dequantise(quantise(W))
    (blocks run along rows, so this commutes with llama.cpp's row permutation)."""
    hf = tiny_hf("llama", intermediate_size=64)
    model = load_gguf(write_gguf(tmp_path / "m.gguf", hf, qtype))
    exact = logits(hf, tokens)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                a = p.numpy().astype(np.float16) if qtype == Q.F16 else gguf.quants.quantize(p.numpy(), qtype)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(a, Q.F16 if qtype == Q.F16 else qtype).copy()))
    torch.testing.assert_close(logits(model, tokens), logits(hf, tokens), atol=1e-5, rtol=0)
    assert (logits(model, tokens) - exact).abs().max() > 1e-5  # the weights really were quantised


def test_transformers_reads_the_same_gguf_to_the_same_logits(tmp_path, tokens):
    pytest.importorskip("accelerate")  # transformers needs it for gguf_file=
    import transformers

    hf = tiny_hf("llama", intermediate_size=64)
    write_gguf(tmp_path / "m.gguf", hf, Q.Q8_0)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    torch.testing.assert_close(logits(load_gguf(tmp_path / "m.gguf"), tokens), logits(theirs, tokens),
                               atol=1e-5, rtol=0)


def test_gguf_errors_are_one_line(tmp_path):
    hf = tiny_hf("llama", intermediate_size=64)
    with pytest.raises(CheckpointError, match="lacks tensor 'model.layers.0.mlp.up_proj.weight'"):
        load_gguf(write_gguf(tmp_path / "a.gguf", hf, drop={"blk.0.ffn_up.weight"}))
    with pytest.raises(CheckpointError, match="quant type I8"):
        load_gguf(write_gguf(tmp_path / "b.gguf", hf, edit={"blk.0.ffn_up.weight": lambda a: a.astype(np.int8)}))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_gguf(write_gguf(tmp_path / "c.gguf", hf, edit={"blk.1.ffn_down.weight": lambda a: a[:, :32].copy()}))
    with pytest.raises(ConfigError, match="GGUF architecture 'gpt2'"):
        load_gguf(write_gguf(tmp_path / "d.gguf", hf, arch="gpt2"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_gguf(tmp_path / "none.gguf")
