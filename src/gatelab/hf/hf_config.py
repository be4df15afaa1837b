"""Map a Hugging Face decoder config (``config.json``) to a gatelab `ModelConfig` and back.

Supported architectures (the Llama family: pre-norm RMSNorm, RoPE with rotate-half pairing,
grouped-query attention, SwiGLU):

=================  ==========================  ==============================================
model_type         HF class                    gatelab
=================  ==========================  ==============================================
``llama``          LlamaForCausalLM (SmolLM)   attention + swiglu
``mistral``        MistralForCausalLM          as llama; only without a sliding window
``qwen2``          Qwen2ForCausalLM            attention with ``qkv_bias`` + swiglu
``mixtral``        MixtralForCausalLM          moe, softmax -> top-k -> renormalise
``qwen2_moe``      Qwen2MoeForCausalLM         moe (+ ungated shared expert, see export.py)
=================  ==========================  ==============================================

Anything the gatelab model cannot compute exactly (rope scaling other than the default,
sliding windows, biases on other projections, other activations) is refused with a
one-line `ConfigError` naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.config import Component, parse
from ..core.errors import ConfigError
from ..models.config import ModelConfig

DENSE_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
MOE_TYPES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
ARCHITECTURES = {**DENSE_TYPES, **MOE_TYPES}


@dataclass(frozen=True)
class HFArch:
    """The facts about a checkpoint's layout that the tensor mapping needs."""

    model_type: str
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    qkv_bias: bool
    moe_layers: tuple[int, ...] = ()  # layers whose FFN is an MoE (all others dense SwiGLU)
    n_experts: int = 0
    shared_hidden: int = 0  # width of Qwen2-MoE's shared expert (0: none)

    @property
    def qkv_sizes(self) -> tuple[int, int, int]:
        return (self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim)


def _get(hf: dict[str, Any], key: str, where: str) -> Any:
    if hf.get(key) is None:
        raise ConfigError(f"{where} has no {key!r}; it is not a complete {hf.get('model_type')} config")
    return hf[key]


def rope_theta(hf: dict[str, Any], where: str) -> float:
    """RoPE base from ``rope_parameters`` (transformers >= 5) or ``rope_theta`` + ``rope_scaling``;
    only the default (unscaled) rotary embedding is supported."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConfigError(f"{where}: rope type {kind!r} is not supported (gatelab computes the default RoPE only); "
                          "use a checkpoint without rope scaling")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor != 1 is not supported (gatelab rotates the whole head)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def _refuse(hf: dict[str, Any], where: str) -> None:
    """Raise on keys whose value changes the computation in a way gatelab does not model."""
    mt = hf["model_type"]
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act={hf['hidden_act']!r} is not supported; gatelab's SwiGLU uses silu")
    if hf.get("mlp_bias"):
        raise ConfigError(f"{where}: mlp_bias=true is not supported (gatelab FFNs have no biases)")
    if hf.get("attention_bias") and mt != "qwen2_moe":
        raise ConfigError(f"{where}: attention_bias=true (a bias on o_proj too) is not supported; "
                          "only Qwen2-style q/k/v biases are")
    if hf.get("use_sliding_window") or (mt in ("mistral", "mixtral") and hf.get("sliding_window")):
        raise ConfigError(f"{where}: sliding-window attention is not supported; set sliding_window to null "
                          "if the context never exceeds the window")
    if hf.get("pretraining_tp", 1) not in (None, 1):
        raise ConfigError(f"{where}: pretraining_tp={hf['pretraining_tp']} is not supported; set it to 1")


def moe_layers(hf: dict[str, Any]) -> tuple[int, ...]:
    """Indices of the layers whose FFN is sparse (transformers' rule for each MoE type)."""
    n = int(hf["num_hidden_layers"])
    mt = hf["model_type"]
    if mt == "mixtral":
        return tuple(range(n))
    if mt == "qwen2_moe":
        dense = set(hf.get("mlp_only_layers") or [])
        step = int(hf.get("decoder_sparse_step", 1))
        return tuple(i for i in range(n) if i not in dense and hf.get("num_experts", 0) > 0 and (i + 1) % step == 0)
    return ()


def arch_of(hf: dict[str, Any], where: str = "config.json") -> HFArch:
    """Checked `HFArch` of an HF config dict."""
    mt = hf.get("model_type")
    if mt not in ARCHITECTURES:
        archs = hf.get("architectures") or []
        raise ConfigError(f"{where}: model_type {mt!r} ({', '.join(archs) or 'no architectures'}) is not supported; "
                          f"supported: {', '.join(sorted(ARCHITECTURES))}")
    _refuse(hf, where)
    d, n_head = int(_get(hf, "hidden_size", where)), int(_get(hf, "num_attention_heads", where))
    n_kv = int(hf.get("num_key_value_heads") or n_head)
    head_dim = int(hf.get("head_dim") or d // n_head)
    layers = moe_layers(hf)
    qkv_bias = mt == "qwen2" or (mt == "qwen2_moe" and bool(hf.get("qkv_bias", True)))
    n_experts = int(hf.get("num_local_experts") or hf.get("num_experts") or 0) if layers else 0
    shared = int(hf.get("shared_expert_intermediate_size") or 0) if mt == "qwen2_moe" else 0
    return HFArch(mt, int(_get(hf, "num_hidden_layers", where)), n_head, n_kv, head_dim, qkv_bias,
                  layers, n_experts, shared)


def model_config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """The gatelab `ModelConfig` computing the same function as HF config `hf`."""
    arch = arch_of(hf, where)
    d = int(hf["hidden_size"])
    mixer = {"name": "attention", "n_head": arch.n_head, "n_kv_head": arch.n_kv_head, "head_dim": arch.head_dim,
             "rope_theta": rope_theta(hf, where), "qkv_bias": arch.qkv_bias}
    dense_ffn = {"name": "swiglu", "hidden": int(_get(hf, "intermediate_size", where))}
    spec: dict[str, Any] = {
        "vocab_size": int(_get(hf, "vocab_size", where)), "d_model": d, "n_layer": arch.n_layer,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "init_std": float(hf.get("initializer_range", 0.02)),
        "block": {"mixer": mixer, "ffn": dense_ffn, "norm": {"name": "rmsnorm", "eps": float(hf.get("rms_norm_eps", 1e-6))}},
    }
    if arch.moe_layers:
        moe = _moe_ffn(hf, arch, where)
        if len(arch.moe_layers) == arch.n_layer:
            spec["block"]["ffn"] = moe
        else:
            spec["variants"] = {"moe": {"ffn": moe}}
            spec["pattern"] = ["moe" if i in arch.moe_layers else "base" for i in range(arch.n_layer)]
    return parse(ModelConfig, spec, "model")


def _moe_ffn(hf: dict[str, Any], arch: HFArch, where: str) -> dict[str, Any]:
    k = int(_get(hf, "num_experts_per_tok", where))
    if arch.model_type == "mixtral":
        hidden, renorm = int(_get(hf, "intermediate_size", where)), True
    else:
        hidden, renorm = int(_get(hf, "moe_intermediate_size", where)), bool(hf.get("norm_topk_prob", False))
    n_shared = 0
    if arch.shared_hidden:
        if arch.shared_hidden % hidden:
            raise ConfigError(f"{where}: shared_expert_intermediate_size={arch.shared_hidden} must be a multiple of "
                              f"moe_intermediate_size={hidden} (gatelab's shared expert is n_shared experts wide)")
        n_shared = arch.shared_hidden // hidden
    return {"name": "moe", "n_experts": arch.n_experts, "k": k, "hidden": hidden, "n_shared": n_shared,
            "router": {"name": "topk", "renorm": renorm}}


# ---------------------------------------------------------------------------------- export side
def _attention_options(comp: Component, path: str) -> Any:
    opts = comp.options
    if comp.name != "attention" or opts.gate != "none" or opts.sink != "none":
        raise ConfigError(f"{path}: only plain softmax attention (no gate, no sink) exports to Hugging Face; "
                          f"got {comp.name} gate={getattr(opts, 'gate', '?')} sink={getattr(opts, 'sink', '?')}")
    return opts


def hf_config_from_model(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
    """The ``config.json`` dict of `model_type` for gatelab model config `cfg` (checked exportable)."""
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"cannot export to model_type {model_type!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    blocks = cfg.layer_blocks()
    first = blocks[0]
    if cfg.depth.name != "none" or cfg.linear.name != "none":
        raise ConfigError(f"model.depth={cfg.depth.name} / model.linear={cfg.linear.name}: only dense-depth, "
                          "full-precision models export to Hugging Face")
    for i, b in enumerate(blocks):
        if b.mixer != first.mixer or b.norm != first.norm:
            raise ConfigError(f"layer {i} has a different mixer or norm from layer 0; Hugging Face configs describe "
                              "one attention and norm for all layers")
        if b.norm.name != "rmsnorm":
            raise ConfigError(f"layer {i} norm is {b.norm.name}; only rmsnorm exports")
    att = _attention_options(first.mixer, "model.block.mixer")
    head_dim = att.head_dim or cfg.d_model // att.n_head
    if att.qkv_bias and model_type not in ("qwen2", "qwen2_moe"):
        raise ConfigError(f"the model has q/k/v biases; export it as qwen2 or qwen2_moe, not {model_type}")
    if model_type == "qwen2" and not att.qkv_bias:
        raise ConfigError("qwen2 has q/k/v biases but the model has none; export it as llama (or set qkv_bias)")
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": att.n_head, "num_key_value_heads": att.n_kv_head or att.n_head, "head_dim": head_dim,
        "hidden_act": "silu", "rms_norm_eps": first.norm.options.eps, "rope_theta": att.rope_theta,
        "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": att.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
        "max_position_embeddings": 4096, "attention_dropout": 0.0, "torch_dtype": "float32",
    }
    if model_type in ("llama", "mistral"):
        hf.update(attention_bias=False, mlp_bias=False)
    if model_type in ("mistral", "mixtral", "qwen2", "qwen2_moe"):
        hf.update(sliding_window=None, use_sliding_window=False)
    moe_idx = [i for i, b in enumerate(blocks) if b.ffn.name == "moe"]
    dense_idx = [i for i, b in enumerate(blocks) if b.ffn.name == "swiglu"]
    other = [i for i, b in enumerate(blocks) if b.ffn.name not in ("moe", "swiglu")]
    if other:
        raise ConfigError(f"layer {other[0]} FFN is {blocks[other[0]].ffn.name}; only swiglu and moe export")
    if model_type in DENSE_TYPES:
        if moe_idx:
            raise ConfigError(f"the model has MoE layers; export it as mixtral or qwen2_moe, not {model_type}")
        hf["intermediate_size"] = _swiglu_hidden(blocks[0].ffn, cfg.d_model)
        return hf
    if not moe_idx:
        raise ConfigError(f"{model_type} needs MoE layers but the model is dense; export it as llama or qwen2")
    moe = blocks[moe_idx[0]].ffn.options
    for i in moe_idx:
        if blocks[i].ffn.options != moe:
            raise ConfigError(f"layer {i} MoE options differ from layer {moe_idx[0]}; Hugging Face configs describe "
                              "one MoE for all sparse layers")
    renorm = _router_renorm(moe, "model.block.ffn.router")
    expert_hidden = moe.expert_hidden(cfg.d_model)
    common = {"num_experts_per_tok": moe.k, "output_router_logits": False, "router_aux_loss_coef": moe.lb_coef}
    if moe.activation != "swiglu":
        raise ConfigError(f"MoE activation {moe.activation} does not export; Hugging Face MoE experts are SwiGLU")
    if model_type == "mixtral":
        if dense_idx or moe.n_shared or not renorm:
            raise ConfigError("mixtral needs every layer MoE, no shared expert and renormalised top-k weights "
                              "(router.renorm=true); export it as qwen2_moe instead")
        hf.update(common, num_local_experts=moe.n_experts, intermediate_size=expert_hidden, router_jitter_noise=0.0)
        return hf
    dense_hidden = _swiglu_hidden(blocks[dense_idx[0]].ffn, cfg.d_model) if dense_idx else expert_hidden
    hf.update(common, num_experts=moe.n_experts, moe_intermediate_size=expert_hidden,
              shared_expert_intermediate_size=moe.n_shared * expert_hidden, norm_topk_prob=renorm,
              intermediate_size=dense_hidden, decoder_sparse_step=1, mlp_only_layers=dense_idx, qkv_bias=True)
    return hf


def _swiglu_hidden(ffn: Component, d_model: int) -> int:
    from ..models.layers import _hidden_size

    o = ffn.options
    return _hidden_size(d_model, o.hidden, o.hidden_mult, o.multiple_of)


def _router_renorm(moe: Any, path: str) -> bool:
    """Whether a plain softmax top-k router renormalises; other routers do not export."""
    r = moe.router
    o = r.options
    plain = (r.name == "topk" and o.score == "softmax" and o.n_null == 0 and o.bias_update == 0 and o.scale == 1.0
             and o.noise in ("none", "jitter"))
    if not plain:
        raise ConfigError(f"{path}: only a plain softmax top-k router exports (no sigmoid score, null experts, "
                          f"bias balancing, scale or learned noise); got {r.name}")
    return bool(o.renorm or o.order == "topk_softmax")
