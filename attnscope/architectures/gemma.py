"""Gemma: the Llama layout with (1 + weight) RMSNorm, embeddings scaled by sqrt(width),
GeGLU (GELU, tanh approximation: the published configs' legacy `gelu` means that, as
transformers reads it), a `head_dim` independent of the width, multi-query attention in
the 2B model, and a tied unembedding.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("gemma",)
PREFIXES = ("model.",)
DESCRIPTION = "Gemma: (1 + w) RMSNorm, embeddings × √d, GeGLU, free head_dim, multi-query"

WEIGHTS: dict[str, str | None] = dict(llama.WEIGHTS)

ACTIVATIONS = {"gelu": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def gemma_config(raw: dict[str, Any], name: str, family: str) -> ModelConfig:
    """What Gemma and Gemma 2 share: the Llama reading of config.json, then Gemma's
    differences (GeGLU, (1 + w) norms, scaled embeddings, tied by default)."""
    act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ACTIVATIONS:
        raise ConfigError(f"unsupported {family} activation {act!r}")
    if raw.get("use_bidirectional_attention"):
        raise ConfigError(f"{family} with use_bidirectional_attention is not supported")
    as_llama = {
        "max_position_embeddings": 8192,
        **raw,
        "hidden_act": "gelu_pytorch_tanh",
        "tie_word_embeddings": raw.get("tie_word_embeddings", True),
    }
    cfg = llama.config_from_hf(as_llama, name)
    return replace(cfg, family=family, act=ACTIVATIONS[act], norm_offset=1.0,
                   embed_multiplier=cfg.d_model ** 0.5)


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    return gemma_config(raw, name, "gemma")
