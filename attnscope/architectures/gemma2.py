"""Gemma 2: Gemma plus attention-logit soft-capping (cap · tanh(scores / cap)),
`query_pre_attn_scalar` as the score scale (1/sqrt of it), a sliding window on
alternating layers (`layer_types`, or the default: even layers slide), and norms after
attention and after the MLP as well as before them.

Quirk: `post_attention_layernorm` is the norm *after* attention here, where in Llama and
Gemma the same name is the norm before the MLP (`pre_feedforward_layernorm` in Gemma 2).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama
from attnscope.architectures._common import layer_windows
from attnscope.architectures.gemma import gemma_config
from attnscope.config import ModelConfig

MODEL_TYPES = ("gemma2",)
PREFIXES = ("model.",)
DESCRIPTION = "Gemma 2: Gemma + logit soft-capping, query_pre_attn_scalar, alternating sliding windows, post-norms"

WEIGHTS: dict[str, str | None] = {
    **llama.WEIGHTS,
    "layers.{layer}.post_attention_layernorm.weight": "blocks.{layer}.post_attn_norm.weight",
    "layers.{layer}.pre_feedforward_layernorm.weight": "blocks.{layer}.mlp_norm.weight",
    "layers.{layer}.post_feedforward_layernorm.weight": "blocks.{layer}.post_mlp_norm.weight",
}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    cfg = gemma_config(raw, name, "gemma2")
    n_layers = cfg.n_layers
    window = raw.get("sliding_window", 4096)
    default = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    scalar = raw.get("query_pre_attn_scalar")
    cap = raw.get("attn_logit_softcapping", 50.0)
    final = raw.get("final_logit_softcapping", 30.0)
    return replace(
        cfg,
        layer_windows=layer_windows(raw, n_layers, window, default),
        sliding_window=window,
        attn_scale=float(scalar) ** -0.5 if scalar else None,
        attn_softcap=float(cap) if cap else None,
        final_softcap=float(final) if final else None,
        post_norms=True,
    )
