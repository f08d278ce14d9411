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
        layer_template=replace(cfg.layer_template, wiring="sandwich"),  # norms after attention and MLP too
    )


# --------------------------------------------------------------------------- GGUF
# llama.cpp's gemma2 architecture. Its converter (Gemma2Model) stores every norm weight
# plus one, writes the soft-caps and the window as metadata, no rope base (llama.cpp's
# default 10000 applies), and never an output tensor (the embedding is tied).

GGUF_ARCHS = ("gemma2",)

GGUF_WEIGHTS: dict[str, str | None] = {
    **llama.GGUF_WEIGHTS,
    "blk.{layer}.post_attention_norm.weight": "blocks.{layer}.post_attn_norm.weight",
    "blk.{layer}.ffn_norm.weight": "blocks.{layer}.mlp_norm.weight",
    "blk.{layer}.post_ffw_norm.weight": "blocks.{layer}.post_mlp_norm.weight",
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    raw = llama.config_from_gguf(meta, arch, shapes)
    raw["hidden_act"] = "gelu_pytorch_tanh"
    for suffix, key in (("attn_logit_softcapping", "attn_logit_softcapping"),
                        ("final_logit_softcapping", "final_logit_softcapping"),
                        ("attention.sliding_window", "sliding_window")):
        if f"{arch}.{suffix}" in meta:
            raw[key] = llama.gguf_value(meta, f"{arch}.{suffix}")
    # GGUF has no query_pre_attn_scalar: llama.cpp scales by the head size, except for the
    # 46-layer 27B, scaled by width / heads (after gemma_pytorch's config)
    head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    raw["query_pre_attn_scalar"] = (raw["hidden_size"] // raw["num_attention_heads"]
                                    if raw["num_hidden_layers"] == 46 else head_dim)
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """The converter stores each (1 + w) norm's weight as w + 1: take the 1 back off, in float32."""
    if name.endswith("norm.weight"):
        tensor = tensor - 1
    return {name: tensor}
