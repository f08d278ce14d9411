"""OPT: learned positions whose table starts at OPT's offset of 2, pre- or post-LayerNorm
(`do_layer_norm_before`; opt-350m is post), ReLU, biases everywhere, tied unembedding,
and for opt-350m embeddings narrower than the width (`word_embed_proj_dim`), projected
in (`project_in`) and out (`project_out`) without biases.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("opt",)
PREFIXES = ("model.decoder.", "decoder.", "model.")
DESCRIPTION = "OPT: learned positions (offset 2), pre- or post-LayerNorm, ReLU, optional embedding projection"

WEIGHTS: dict[str, str | None] = {
    "embed_tokens.weight": "embed.tok.weight",
    "embed_positions.weight": "embed.pos.weight",
    "project_in.weight": "embed.proj_in.weight",
    "project_out.weight": "proj_out.weight",
    "layers.{layer}.self_attn_layer_norm.weight": "blocks.{layer}.attn_norm.weight",
    "layers.{layer}.self_attn_layer_norm.bias": "blocks.{layer}.attn_norm.bias",
    "layers.{layer}.self_attn.q_proj.weight": "blocks.{layer}.attn.q.weight",
    "layers.{layer}.self_attn.q_proj.bias": "blocks.{layer}.attn.q.bias",
    "layers.{layer}.self_attn.k_proj.weight": "blocks.{layer}.attn.k.weight",
    "layers.{layer}.self_attn.k_proj.bias": "blocks.{layer}.attn.k.bias",
    "layers.{layer}.self_attn.v_proj.weight": "blocks.{layer}.attn.v.weight",
    "layers.{layer}.self_attn.v_proj.bias": "blocks.{layer}.attn.v.bias",
    "layers.{layer}.self_attn.out_proj.weight": "blocks.{layer}.attn.o.weight",
    "layers.{layer}.self_attn.out_proj.bias": "blocks.{layer}.attn.o.bias",
    "layers.{layer}.final_layer_norm.weight": "blocks.{layer}.mlp_norm.weight",
    "layers.{layer}.final_layer_norm.bias": "blocks.{layer}.mlp_norm.bias",
    "layers.{layer}.fc1.weight": "blocks.{layer}.mlp.up.weight",
    "layers.{layer}.fc1.bias": "blocks.{layer}.mlp.up.bias",
    "layers.{layer}.fc2.weight": "blocks.{layer}.mlp.down.weight",
    "layers.{layer}.fc2.bias": "blocks.{layer}.mlp.down.bias",
    "final_layer_norm.weight": "final_norm.weight",
    "final_layer_norm.bias": "final_norm.bias",
    "lm_head.weight": "unembed.weight",
}

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "silu": "silu"}
OFFSET = 2  # OPT's position table keeps two extra rows ahead of position 0


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    act = raw.get("activation_function", "relu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported OPT activation_function {act!r}")
    if raw.get("layer_norm_elementwise_affine", True) is False:
        raise ConfigError("OPT without elementwise-affine LayerNorms is not supported")
    pre = bool(raw.get("do_layer_norm_before", True))
    d_model = raw["hidden_size"]
    bias = bool(raw.get("enable_bias", True))
    return ModelConfig(
        name=name,
        family="opt",
        d_model=d_model,
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        d_mlp=raw["ffn_dim"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 2048),
        positions="learned",
        pos_offset=OFFSET,
        d_embed=raw.get("word_embed_proj_dim") or d_model,
        norm="layernorm",
        norm_eps=1e-5,
        final_norm=pre and not raw.get("_remove_final_layer_norm", False),
        act=_ACTIVATIONS[act],
        layer_template=layer_kind("pre" if pre else "post", qkv_bias=bias, out_bias=bias, mlp_bias=bias),
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        dtype=checkpoint_dtype(raw),
    )
