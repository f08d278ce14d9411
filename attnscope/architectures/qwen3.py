"""Qwen3: the Llama layout plus a per-head RMSNorm on queries and keys before RoPE
(`q_norm`, `k_norm`), no q/k/v biases, an explicit `head_dim`, and sliding windows only
where `use_sliding_window` and `layer_types` say so.
"""

from __future__ import annotations

from dataclasses import replace
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
    llama_cfg = llama.config_from_hf(raw, name)
    return replace(llama_cfg, family="qwen3",
                   layer_template=llama_cfg.layer_template.with_attn(qk_norm="head"))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's qwen3 architecture: Llama's tensor names plus the per-head q/k norms; NEOX
# RoPE, so no q/k permutation (convert_hf_to_gguf.py's Qwen3Model is Qwen2Model's).

GGUF_ARCHS = ("qwen3",)

GGUF_WEIGHTS: dict[str, str | None] = {
    **llama.GGUF_WEIGHTS,
    "blk.{layer}.attn_q_norm.weight": "blocks.{layer}.attn.q_norm.weight",
    "blk.{layer}.attn_k_norm.weight": "blocks.{layer}.attn.k_norm.weight",
}

config_from_gguf = llama.config_from_gguf
