"""Phi (phi-1, phi-1.5, phi-2): rotary positions on part of each head
(`partial_rotary_factor`), attention and MLP in parallel from one shared LayerNorm,
GELU (tanh), biases everywhere, and an untied `lm_head` with a bias.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind, rope_settings, rotary_dim
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("phi",)
PREFIXES = ("model.",)
DESCRIPTION = "Phi-1/1.5/2: partial RoPE, parallel attention + MLP from one LayerNorm, lm_head bias"

WEIGHTS: dict[str, str | None] = {
    "embed_tokens.weight": "embed.tok.weight",
    "layers.{layer}.input_layernorm.weight": "blocks.{layer}.attn_norm.weight",
    "layers.{layer}.input_layernorm.bias": "blocks.{layer}.attn_norm.bias",
    "layers.{layer}.self_attn.q_proj.weight": "blocks.{layer}.attn.q.weight",
    "layers.{layer}.self_attn.q_proj.bias": "blocks.{layer}.attn.q.bias",
    "layers.{layer}.self_attn.k_proj.weight": "blocks.{layer}.attn.k.weight",
    "layers.{layer}.self_attn.k_proj.bias": "blocks.{layer}.attn.k.bias",
    "layers.{layer}.self_attn.v_proj.weight": "blocks.{layer}.attn.v.weight",
    "layers.{layer}.self_attn.v_proj.bias": "blocks.{layer}.attn.v.bias",
    "layers.{layer}.self_attn.dense.weight": "blocks.{layer}.attn.o.weight",
    "layers.{layer}.self_attn.dense.bias": "blocks.{layer}.attn.o.bias",
    "layers.{layer}.self_attn.rotary_emb.inv_freq": None,
    "layers.{layer}.mlp.fc1.weight": "blocks.{layer}.mlp.up.weight",
    "layers.{layer}.mlp.fc1.bias": "blocks.{layer}.mlp.up.bias",
    "layers.{layer}.mlp.fc2.weight": "blocks.{layer}.mlp.down.weight",
    "layers.{layer}.mlp.fc2.bias": "blocks.{layer}.mlp.down.bias",
    "final_layernorm.weight": "final_norm.weight",
    "final_layernorm.bias": "final_norm.bias",
    "lm_head.weight": "unembed.weight",
    "lm_head.bias": "unembed.bias",
    "rotary_emb.inv_freq": None,
}

_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    act = raw.get("hidden_act", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported phi hidden_act {act!r}")
    if raw.get("qk_layernorm"):
        raise ConfigError("Phi with qk_layernorm is not supported")
    theta, scaling = rope_settings(raw)
    d_model, n_heads = raw["hidden_size"], raw["num_attention_heads"]
    d_head = d_model // n_heads if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 else 0
    return ModelConfig(
        name=name,
        family="phi",
        d_model=d_model,
        n_layers=raw["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 2048),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=rotary_dim(raw, d_head, default=0.5) if d_head else 0,
        norm="layernorm",
        norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
        act=_ACTIVATIONS[act],
        # attention and MLP read one shared norm's output, side by side
        layer_template=layer_kind("parallel_shared", qkv_bias=True, out_bias=True, mlp_bias=True),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        unembed_bias=True,
        dtype=checkpoint_dtype(raw),
    )
