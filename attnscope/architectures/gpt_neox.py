"""GPT-NeoX / Pythia: rotary positions on part of each head (`rotary_pct`), attention and
MLP in parallel from two LayerNorms (`use_parallel_residual`), exact GELU, biases
everywhere, an untied `embed_out`.

Quirk: query, key and value are fused in one `query_key_value` whose rows are
interleaved per head, (n_heads, 3, d_head) — not three blocks as in GPT-2 — so they are
split head by head here.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind, rope_settings, rotary_dim
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("gpt_neox",)
PREFIXES = ("gpt_neox.",)
DESCRIPTION = "GPT-NeoX/Pythia: partial RoPE, parallel residual, fused per-head QKV, untied embed_out"

WEIGHTS: dict[str, str | None] = {
    "embed_in.weight": "embed.tok.weight",
    "layers.{layer}.input_layernorm.weight": "blocks.{layer}.attn_norm.weight",
    "layers.{layer}.input_layernorm.bias": "blocks.{layer}.attn_norm.bias",
    "layers.{layer}.attention.query_key_value.weight": "blocks.{layer}.attn.qkv.weight",
    "layers.{layer}.attention.query_key_value.bias": "blocks.{layer}.attn.qkv.bias",
    "layers.{layer}.attention.dense.weight": "blocks.{layer}.attn.o.weight",
    "layers.{layer}.attention.dense.bias": "blocks.{layer}.attn.o.bias",
    "layers.{layer}.attention.bias": None,
    "layers.{layer}.attention.masked_bias": None,
    "layers.{layer}.attention.rotary_emb.inv_freq": None,
    "layers.{layer}.post_attention_layernorm.weight": "blocks.{layer}.mlp_norm.weight",
    "layers.{layer}.post_attention_layernorm.bias": "blocks.{layer}.mlp_norm.bias",
    "layers.{layer}.mlp.dense_h_to_4h.weight": "blocks.{layer}.mlp.up.weight",
    "layers.{layer}.mlp.dense_h_to_4h.bias": "blocks.{layer}.mlp.up.bias",
    "layers.{layer}.mlp.dense_4h_to_h.weight": "blocks.{layer}.mlp.down.weight",
    "layers.{layer}.mlp.dense_4h_to_h.bias": "blocks.{layer}.mlp.down.bias",
    "final_layer_norm.weight": "final_norm.weight",
    "final_layer_norm.bias": "final_norm.bias",
    "embed_out.weight": "unembed.weight",
    "rotary_emb.inv_freq": None,
}

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu"}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    act = raw.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported gpt_neox hidden_act {act!r}")
    theta, scaling = rope_settings(raw)
    d_model, n_heads = raw["hidden_size"], raw["num_attention_heads"]
    bias = bool(raw.get("attention_bias", True))
    d_head = d_model // n_heads if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 else 0
    return ModelConfig(
        name=name,
        family="gpt_neox",
        d_model=d_model,
        n_layers=raw["num_hidden_layers"],
        n_heads=n_heads,
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 2048),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=rotary_dim(raw, d_head, default=0.25) if d_head else 0,
        norm="layernorm",
        norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
        act=_ACTIVATIONS[act],
        # attention and MLP read the same input, unless use_parallel_residual is false
        layer_template=layer_kind("parallel" if raw.get("use_parallel_residual", True) else "pre",
                                  qkv_bias=bias, out_bias=bias, mlp_bias=True),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        dtype=checkpoint_dtype(raw),
    )


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    if ".attn.qkv." not in name:
        return {name: tensor}
    per_head = tensor.reshape(cfg.n_heads, 3, cfg.d_head, *tensor.shape[1:])  # (H, 3, dh, ...)
    return {
        name.replace(".qkv.", f".{part}."): per_head[:, i].reshape(cfg.n_heads * cfg.d_head, *tensor.shape[1:])
        for i, part in enumerate("qkv")
    }
