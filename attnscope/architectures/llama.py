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

from attnscope.architectures._common import checkpoint_dtype, layer_windows, rope_settings
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
        gated_mlp=True,
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=mlp_bias,
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_windows=windows,
        dtype=checkpoint_dtype(raw),
    )
