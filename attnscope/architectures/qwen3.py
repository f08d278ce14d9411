"""Qwen3: the Llama layout plus a per-head RMSNorm on queries and keys before RoPE
(`q_norm`, `k_norm`), no q/k/v biases, an explicit `head_dim`, and sliding windows only
where `use_sliding_window` and `layer_types` say so.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures import llama
from attnscope.config import ModelConfig

MODEL_TYPES = ("qwen3",)
PREFIXES = ("model.",)
DESCRIPTION = "Qwen3: Llama layout + per-head q/k RMSNorm before RoPE"

WEIGHTS: dict[str, str | None] = {
    **llama.WEIGHTS,
    "layers.{layer}.self_attn.q_norm.weight": "blocks.{layer}.attn.q_norm.weight",
    "layers.{layer}.self_attn.k_norm.weight": "blocks.{layer}.attn.k_norm.weight",
}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    cfg = llama.config_from_hf(raw, name)
    cfg.family = "qwen3"
    cfg.qk_norm = True
    return cfg
