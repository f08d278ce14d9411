"""GPT-2 (and the GPT-3 presets, which share its wiring): learned positions, pre-LayerNorm,
GELU (tanh approximation), biases everywhere, unembedding tied to the token embedding.

Quirk, as nanoGPT's loader notes: GPT-2 checkpoints store OpenAI's Conv1D layers, whose
weights are (in, out) rather than nn.Linear's (out, in), so they are transposed here; the
attention's query, key and value come fused in one `c_attn` and are split here.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("gpt2",)
PREFIXES = ("transformer.",)
DESCRIPTION = "GPT-2 (and the GPT-3 presets): learned positions, pre-LayerNorm, Conv1D weights, tied unembedding"

WEIGHTS: dict[str, str | None] = {
    "wte.weight": "embed.tok.weight",
    "wpe.weight": "embed.pos.weight",
    "h.{layer}.ln_1.weight": "blocks.{layer}.attn_norm.weight",
    "h.{layer}.ln_1.bias": "blocks.{layer}.attn_norm.bias",
    "h.{layer}.attn.c_attn.weight": "blocks.{layer}.attn.qkv.weight",
    "h.{layer}.attn.c_attn.bias": "blocks.{layer}.attn.qkv.bias",
    "h.{layer}.attn.c_proj.weight": "blocks.{layer}.attn.o.weight",
    "h.{layer}.attn.c_proj.bias": "blocks.{layer}.attn.o.bias",
    "h.{layer}.attn.bias": None,
    "h.{layer}.attn.masked_bias": None,
    "h.{layer}.ln_2.weight": "blocks.{layer}.mlp_norm.weight",
    "h.{layer}.ln_2.bias": "blocks.{layer}.mlp_norm.bias",
    "h.{layer}.mlp.c_fc.weight": "blocks.{layer}.mlp.up.weight",
    "h.{layer}.mlp.c_fc.bias": "blocks.{layer}.mlp.up.bias",
    "h.{layer}.mlp.c_proj.weight": "blocks.{layer}.mlp.down.weight",
    "h.{layer}.mlp.c_proj.bias": "blocks.{layer}.mlp.down.bias",
    "ln_f.weight": "final_norm.weight",
    "ln_f.bias": "final_norm.bias",
    "lm_head.weight": "unembed.weight",
}

_CONV1D = (".attn.qkv.weight", ".attn.o.weight", ".mlp.up.weight", ".mlp.down.weight")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    act = raw.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported GPT-2 activation_function {act!r}")
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("reorder_and_upcast_attn"):
        raise ConfigError("GPT-2 variants with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn are not supported")
    d_model = raw["n_embd"]
    return ModelConfig(
        name=name,
        family="gpt2",
        d_model=d_model,
        n_layers=raw["n_layer"],
        n_heads=raw["n_head"],
        d_mlp=raw.get("n_inner") or 4 * d_model,
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("n_positions", raw.get("n_ctx", 1024)),
        causal=True,
        positions="learned",
        norm="layernorm",
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        act=_ACTIVATIONS[act],
        layer_template=layer_kind(qkv_bias=True, out_bias=True, mlp_bias=True),
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        dtype=checkpoint_dtype(raw),
    )


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    if name.endswith(_CONV1D):
        tensor = tensor.t()  # Conv1D stores (in, out); we use nn.Linear's (out, in)
    if ".attn.qkv." in name:
        q, k, v = tensor.split(cfg.d_model, dim=0)  # (3 * d_model, ...) -> 3 x (d_model, ...)
        return {name.replace(".qkv.", f".{part}."): t for part, t in zip("qkv", (q, k, v))}
    return {name: tensor}


# --------------------------------------------------------------------------- GGUF
# llama.cpp's gpt2 architecture. Its converter (GPT2Model) transposes the Conv1D weights,
# so the GGUF already holds nn.Linear's (out, in) layout and only the fused qkv is split
# here (`split` above would transpose them back); it writes feed_forward_length as
# 4 × width whatever the checkpoint's n_inner, so the width comes from ffn_up's shape.

GGUF_ARCHS = ("gpt2",)

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "position_embd.weight": "embed.pos.weight",
    "blk.{layer}.attn_norm.weight": "blocks.{layer}.attn_norm.weight",
    "blk.{layer}.attn_norm.bias": "blocks.{layer}.attn_norm.bias",
    "blk.{layer}.attn_qkv.weight": "blocks.{layer}.attn.qkv.weight",
    "blk.{layer}.attn_qkv.bias": "blocks.{layer}.attn.qkv.bias",
    "blk.{layer}.attn_output.weight": "blocks.{layer}.attn.o.weight",
    "blk.{layer}.attn_output.bias": "blocks.{layer}.attn.o.bias",
    "blk.{layer}.ffn_norm.weight": "blocks.{layer}.mlp_norm.weight",
    "blk.{layer}.ffn_norm.bias": "blocks.{layer}.mlp_norm.bias",
    "blk.{layer}.ffn_up.weight": "blocks.{layer}.mlp.up.weight",
    "blk.{layer}.ffn_up.bias": "blocks.{layer}.mlp.up.bias",
    "blk.{layer}.ffn_down.weight": "blocks.{layer}.mlp.down.weight",
    "blk.{layer}.ffn_down.bias": "blocks.{layer}.mlp.down.bias",
    "output_norm.weight": "final_norm.weight",
    "output_norm.bias": "final_norm.bias",
    "output.weight": "unembed.weight",
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from attnscope.architectures.llama import gguf_value

    def get(suffix: str, default: Any = KeyError) -> Any:
        return gguf_value(meta, f"{arch}.{suffix}", default)

    up = shapes.get("blk.0.ffn_up.weight")  # (d_mlp, d_model)
    return {
        "model_type": "gpt2",
        "n_embd": get("embedding_length"),
        "n_layer": get("block_count"),
        "n_head": get("attention.head_count"),
        "n_inner": up[0] if up else get("feed_forward_length"),
        "n_positions": get("context_length"),
        "layer_norm_epsilon": get("attention.layer_norm_epsilon", 1e-5),
        "activation_function": "gelu_new",
    }


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    if ".attn.qkv." in name:
        q, k, v = tensor.split(cfg.d_model, dim=0)  # (3 * d_model, ...) -> 3 x (d_model, ...)
        return {name.replace(".qkv.", f".{part}."): t for part, t in zip("qkv", (q, k, v))}
    return {name: tensor}
