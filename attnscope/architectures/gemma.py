"""Gemma: the Llama layout with (1 + weight) RMSNorm, embeddings scaled by sqrt(width),
GeGLU (GELU, tanh approximation: the published configs' legacy `gelu` means that, as
transformers reads it), a `head_dim` independent of the width, multi-query attention in
the 2B model, and a tied unembedding.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures import llama
from attnscope.architectures._common import checkpoint_dtype, rope_settings
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("gemma",)
PREFIXES = ("model.",)
DESCRIPTION = "Gemma: (1 + w) RMSNorm, embeddings × √d, GeGLU, free head_dim, multi-query"

WEIGHTS: dict[str, str | None] = dict(llama.WEIGHTS)

ACTIVATIONS = {"gelu": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def gemma_kwargs(raw: dict[str, Any], name: str, family: str) -> dict[str, Any]:
    """What Gemma and Gemma 2 share."""
    act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ACTIVATIONS:
        raise ConfigError(f"unsupported {family} activation {act!r}")
    theta, scaling = rope_settings(raw)
    n_heads = raw["num_attention_heads"]
    return dict(
        name=name,
        family=family,
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        d_head=raw.get("head_dim") or 0,
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 8192),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        norm_offset=1.0,
        embed_scale=True,
        act=ACTIVATIONS[act],
        gated_mlp=True,
        qkv_bias=bool(raw.get("attention_bias", False)),
        out_bias=bool(raw.get("attention_bias", False)),
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        dtype=checkpoint_dtype(raw),
    )


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    if raw.get("use_bidirectional_attention"):
        raise ConfigError("Gemma with use_bidirectional_attention is not supported")
    return ModelConfig(**gemma_kwargs(raw, name, "gemma"))
