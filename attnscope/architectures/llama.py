"""The Llama family: Llama, Mistral, Qwen2. Pre-RMSNorm, rotary positions (with the
`llama3` frequency scaling), grouped- or multi-query attention, SwiGLU MLP, no biases
except Qwen2's on q/k/v (and Llama's optional `attention_bias`/`mlp_bias`), a `head_dim`
that may differ from width / heads, and tied or untied embeddings. Mistral adds a
sliding attention window.

Hugging Face's Llama checkpoints permute q/k so that RoPE rotates the two halves of each
head (`rotate_half`); our RoPE uses that same convention, so no permutation is needed.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind, layer_windows, rope_settings
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("llama", "mistral", "qwen2")
PREFIXES = ("model.",)
DESCRIPTION = "Llama, Mistral (sliding window), Qwen2 (q/k/v biases): RoPE (llama3 scaling), GQA/MQA, RMSNorm, SwiGLU"

WEIGHTS: dict[str, str | None] = {
    "embed_tokens.weight": "embed.tok.weight",
    "layers.{layer}.input_layernorm.weight": "blocks.{layer}.attn_norm.weight",
    "layers.{layer}.self_attn.q_proj.weight": "blocks.{layer}.attn.q.weight",
    "layers.{layer}.self_attn.q_proj.bias": "blocks.{layer}.attn.q.bias",
    "layers.{layer}.self_attn.k_proj.weight": "blocks.{layer}.attn.k.weight",
    "layers.{layer}.self_attn.k_proj.bias": "blocks.{layer}.attn.k.bias",
    "layers.{layer}.self_attn.v_proj.weight": "blocks.{layer}.attn.v.weight",
    "layers.{layer}.self_attn.v_proj.bias": "blocks.{layer}.attn.v.bias",
    "layers.{layer}.self_attn.o_proj.weight": "blocks.{layer}.attn.o.weight",
    "layers.{layer}.self_attn.o_proj.bias": "blocks.{layer}.attn.o.bias",
    "layers.{layer}.self_attn.rotary_emb.inv_freq": None,
    "layers.{layer}.post_attention_layernorm.weight": "blocks.{layer}.mlp_norm.weight",
    "layers.{layer}.mlp.gate_proj.weight": "blocks.{layer}.mlp.gate.weight",
    "layers.{layer}.mlp.gate_proj.bias": "blocks.{layer}.mlp.gate.bias",
    "layers.{layer}.mlp.up_proj.weight": "blocks.{layer}.mlp.up.weight",
    "layers.{layer}.mlp.up_proj.bias": "blocks.{layer}.mlp.up.bias",
    "layers.{layer}.mlp.down_proj.weight": "blocks.{layer}.mlp.down.weight",
    "layers.{layer}.mlp.down_proj.bias": "blocks.{layer}.mlp.down.bias",
    "norm.weight": "final_norm.weight",
    "lm_head.weight": "unembed.weight",
    "rotary_emb.inv_freq": None,
}

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    model_type = raw["model_type"]
    act = raw.get("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported {model_type} hidden_act {act!r}")
    theta, scaling = rope_settings(raw)
    windows = None
    if model_type == "qwen2":
        qkv_bias, out_bias, mlp_bias = True, False, False
    else:
        qkv_bias = out_bias = bool(raw.get("attention_bias", False))
        mlp_bias = bool(raw.get("mlp_bias", False))
    if model_type == "mistral":
        window = raw.get("sliding_window")
    elif model_type in ("qwen2", "qwen3") and raw.get("use_sliding_window"):
        # Qwen slides only from layer `max_window_layers` on, unless layer_types says otherwise
        window = raw.get("sliding_window")
        n_layers, first = raw["num_hidden_layers"], raw.get("max_window_layers", 0)
        default = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
        windows = layer_windows(raw, n_layers, window, default)
    else:
        window = None
    n_heads = raw["num_attention_heads"]
    return ModelConfig(
        name=name,
        family=model_type,
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        d_head=raw.get("head_dim") or 0,
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 2048),
        causal=True,
        positions="rope",
        norm="rmsnorm",
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        act=_ACTIVATIONS[act],
        layer_template=layer_kind(mlp="gated", qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_windows=windows,
        dtype=checkpoint_dtype(raw),
    )


# --------------------------------------------------------------------------- GGUF
# llama.cpp's names for these architectures (gguf-py's constants.py, TENSOR_NAMES and
# MODEL_TENSORS) and what its convert_hf_to_gguf.py writes (LlamaModel, Qwen2Model).

GGUF_ARCHS = ("llama", "qwen2")

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "blk.{layer}.attn_norm.weight": "blocks.{layer}.attn_norm.weight",
    "blk.{layer}.attn_q.weight": "blocks.{layer}.attn.q.weight",
    "blk.{layer}.attn_q.bias": "blocks.{layer}.attn.q.bias",
    "blk.{layer}.attn_k.weight": "blocks.{layer}.attn.k.weight",
    "blk.{layer}.attn_k.bias": "blocks.{layer}.attn.k.bias",
    "blk.{layer}.attn_v.weight": "blocks.{layer}.attn.v.weight",
    "blk.{layer}.attn_v.bias": "blocks.{layer}.attn.v.bias",
    "blk.{layer}.attn_output.weight": "blocks.{layer}.attn.o.weight",
    "blk.{layer}.attn_output.bias": "blocks.{layer}.attn.o.bias",
    "blk.{layer}.ffn_norm.weight": "blocks.{layer}.mlp_norm.weight",
    "blk.{layer}.ffn_gate.weight": "blocks.{layer}.mlp.gate.weight",
    "blk.{layer}.ffn_gate.bias": "blocks.{layer}.mlp.gate.bias",
    "blk.{layer}.ffn_up.weight": "blocks.{layer}.mlp.up.weight",
    "blk.{layer}.ffn_up.bias": "blocks.{layer}.mlp.up.bias",
    "blk.{layer}.ffn_down.weight": "blocks.{layer}.mlp.down.weight",
    "blk.{layer}.ffn_down.bias": "blocks.{layer}.mlp.down.bias",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "unembed.weight",
    "rope_freqs.weight": None,  # Llama 3's RoPE divisors: read into the config, not a parameter
    # Mixtral (and Qwen3-MoE): the router and the experts merged into 3-D tensors, GGUF ne
    # {d, w, E} for gate/up and {w, d, E} for down, so [E, out, in] in torch order as ours
    "blk.{layer}.ffn_gate_inp.weight": "blocks.{layer}.mlp.router.weight",
    "blk.{layer}.ffn_gate_exps.weight": "blocks.{layer}.mlp.experts.gate.weight",
    "blk.{layer}.ffn_up_exps.weight": "blocks.{layer}.mlp.experts.up.weight",
    "blk.{layer}.ffn_down_exps.weight": "blocks.{layer}.mlp.experts.down.weight",
}

# Only llama.cpp's "llama" architecture rotates adjacent pairs (its NORM RoPE), so only its
# converter permutes q and k; qwen2, qwen3 and gemma2 use NEOX RoPE, our rotate_half layout.
GGUF_PERMUTED = ("llama",)


def gguf_value(meta: dict[str, Any], key: str, default: Any = KeyError) -> Any:
    """A metadata value that may be one per layer; all layers must then agree."""
    if key not in meta:
        if default is KeyError:
            raise KeyError(key)
        return default
    value = meta[key]
    if isinstance(value, list):
        if not value or any(v != value[0] for v in value):
            raise ConfigError(f"GGUF {key!r} differs between layers ({value!r}); attnscope needs one value")
        value = value[0]
    return value


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A config.json-style dict from `{arch}.*` metadata. Mistral GGUFs are `llama`:
    llama.cpp records no sliding window for them and attends over everything, as we do."""
    def get(suffix: str, default: Any = KeyError) -> Any:
        return gguf_value(meta, f"{arch}.{suffix}", default)

    heads = get("attention.head_count")
    raw: dict[str, Any] = {
        "model_type": arch,
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "intermediate_size": get("feed_forward_length"),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "hidden_act": "silu",
    }
    key_length, value_length = get("attention.key_length", None), get("attention.value_length", None)
    if key_length is not None and value_length not in (None, key_length):
        raise ConfigError(f"GGUF key length {key_length} and value length {value_length} differ; attnscope needs one head size")
    # llama's rotary width is the whole head, so older files give the head size only there
    head_dim = key_length or (get("rope.dimension_count", None) if arch in GGUF_PERMUTED else None)
    if head_dim:
        raw["head_dim"] = head_dim
    if arch == "llama":
        raw["attention_bias"] = "blk.0.attn_q.bias" in shapes
        raw["mlp_bias"] = "blk.0.ffn_up.bias" in shapes
        if get("expert_count", 0):  # Mixtral: llama.cpp's llama with experts in every layer
            raw.update(model_type="mixtral", num_local_experts=get("expert_count"),
                       num_experts_per_tok=get("expert_used_count"))
    kind = get("rope.scaling.type", None)
    if kind not in (None, "none"):
        raw["rope_scaling"] = {"rope_type": kind, "factor": get("rope.scaling.factor", 1.0),
                               "original_max_position_embeddings": get("rope.scaling.original_context_length", None)}
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """Undo the converter's q/k permutation (weights and biases): for each of n heads of
    D rows, GGUF row h·D + 2i + s holds our row h·D + s·D/2 + i (rotate_half's halves)."""
    if arch in GGUF_PERMUTED and name.endswith((".attn.q.weight", ".attn.q.bias", ".attn.k.weight", ".attn.k.bias")):
        heads = cfg.n_heads if ".attn.q." in name else cfg.n_kv_heads
        d = tensor.shape[0] // heads
        tensor = tensor.reshape(heads, d // 2, 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)
    return {name: tensor}


def _llama3_factors(scaling: dict[str, float], wavelengths: list[float]) -> list[float]:
    """The divisors convert_hf_to_gguf.py (LlamaModel.generate_extra_tensors) writes."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for w in wavelengths:
        if w < old / high:
            out.append(1.0)
        elif w > old / low:
            out.append(factor)
        else:
            smooth = (old / w - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def gguf_rope_scaling(factors: list[float], raw: dict[str, Any]) -> dict[str, Any] | None:
    """The `llama3` rope_scaling dict that reproduces a GGUF's `rope_freqs` divisors;
    {"rope_type": "default"} when they are all 1; None when no llama3 dict fits.

    Between its two wavelength bounds llama3 scaling blends 1/f = (1 - s)/factor + s with
    s linear in 1/wavelength, so the blended divisors fix `factor` (the largest divisor)
    and two of the three remaining numbers; low_freq_factor is taken as 1, as in every
    Llama 3 release. With fewer than two blended divisors, the release values are tried."""
    import math

    import torch

    dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    if len(factors) != dim // 2 or not all(f > 0 for f in factors):
        return None
    if all(abs(f - 1) < 1e-6 for f in factors):
        return {"rope_type": "default"}
    theta = float(raw["rope_theta"])
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # as the converter computes it
    wavelengths = [2 * math.pi / float(x) for x in inv]
    factor = max(factors)
    blended = [(1 / w, (1 / f - 1 / factor) / (1 - 1 / factor))
               for w, f in zip(wavelengths, factors) if 1 + 1e-6 < f < factor * (1 - 1e-6)]
    candidates = []
    if len(blended) >= 2:
        (x0, s0), (x1, s1) = blended[0], blended[-1]
        slope = (s1 - s0) / (x1 - x0)  # old / (high - low)
        offset = s0 - slope * x0  # -low / (high - low)
        if slope > 0 and offset < 0:
            high = 1 - 1 / offset
            old = slope * (high - 1)
            candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": round(high, 4),
                               "original_max_position_embeddings": round(old)})
            candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": high,
                               "original_max_position_embeddings": old})
    candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192})
    for scaling in candidates:
        again = _llama3_factors(scaling, wavelengths)
        if all(abs(a - f) <= 1e-5 * f for a, f in zip(again, factors)):
            return {"rope_type": "llama3", **scaling}
    return None
