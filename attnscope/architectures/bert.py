"""BERT: word + position + token-type embeddings with a LayerNorm, post-LayerNorm blocks
(normalise after each residual add), exact GELU, biases everywhere, no mask (every token
sees every token). Checkpoints come with or without the `bert.` prefix; BertModel adds
a pooler, BertForMaskedLM an MLM head whose decoder is tied to the word embeddings.
Old TF-converted checkpoints name LayerNorm parameters `gamma`/`beta`.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("bert",)
PREFIXES = ("bert.",)
DESCRIPTION = "BERT: word + position + token-type embeddings, post-LayerNorm, bidirectional"

_LAYERS = {
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.o",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up",
    "output.dense": "mlp.down",
    "output.LayerNorm": "mlp_norm",
}
_TOP = {
    "embeddings.word_embeddings": "embed.tok",
    "embeddings.position_embeddings": "embed.pos",
    "embeddings.token_type_embeddings": "embed.types",
    "embeddings.LayerNorm": "embed.norm",
    "pooler.dense": "pooler",
    "cls.predictions.transform.dense": "mlm.dense",
    "cls.predictions.transform.LayerNorm": "mlm.norm",
    "cls.predictions.decoder": "unembed",
}
_PARAM = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}

WEIGHTS: dict[str, str | None] = {
    **{f"encoder.layer.{{layer}}.{hf}.{p}": f"blocks.{{layer}}.{ours}.{q}"
       for hf, ours in _LAYERS.items() for p, q in _PARAM.items()},
    **{f"{hf}.{p}": f"{ours}.{q}" for hf, ours in _TOP.items() for p, q in _PARAM.items()},
    "cls.predictions.bias": "mlm.bias",
    "cls.predictions.decoder.bias": "mlm.bias",
    "embeddings.position_ids": None,
    "cls.seq_relationship.weight": "nsp.weight",
    "cls.seq_relationship.bias": "nsp.bias",
}

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"BERT position_embedding_type {raw['position_embedding_type']!r} is not supported; only 'absolute'")
    if raw.get("is_decoder"):
        raise ConfigError("BERT as a decoder (is_decoder) is not supported")
    act = raw.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported BERT hidden_act {act!r}")
    archs = raw.get("architectures") or ["BertModel"]
    mlm = any("MaskedLM" in a or "PreTraining" in a for a in archs)
    pooler = any(a in ("BertModel", "BertForPreTraining") for a in archs) or not mlm
    return ModelConfig(
        name=name,
        family="bert",
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 512),
        causal=False,
        positions="learned",
        n_types=raw.get("type_vocab_size", 2),
        norm="layernorm",
        norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        embed_norm=True,
        final_norm=False,
        act=_ACTIVATIONS[act],
        layer_template=layer_kind("post", qkv_bias=True, out_bias=True, mlp_bias=True),
        lm_head=mlm,
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        heads=(("pooler",) if pooler else ()) + (("mlm",) if mlm else ())
        + (("nsp",) if any("PreTraining" in a for a in archs) else ()),
        dtype=checkpoint_dtype(raw),
    )


# --------------------------------------------------------------------------- GGUF
# llama.cpp's bert architecture (gguf-py MODEL_TENSORS[BERT]; convert_hf_to_gguf.py's
# BertModel, which also writes DistilBERT, RoBERTa and XLM-RoBERTa encoders as `bert`).
# The converter drops the pooler and the MLM / NSP heads, keeps q, k, v apart (a fused
# attn_qkv is cut in thirds), and cuts RoBERTa's position table to start after the pad
# index, so positions count from 0 here as in BERT. GELU is the exact one BERT configs
# name (llama.cpp itself evaluates the tanh approximation).

GGUF_ARCHS = ("bert",)

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "position_embd.weight": "embed.pos.weight",
    "token_types.weight": "embed.types.weight",
    "token_embd_norm.weight": "embed.norm.weight",
    "token_embd_norm.bias": "embed.norm.bias",
    **{f"blk.{{layer}}.{g}.{p}": f"blocks.{{layer}}.{ours}.{p}"
       for g, ours in (("attn_q", "attn.q"), ("attn_k", "attn.k"), ("attn_v", "attn.v"), ("attn_qkv", "attn.qkv"),
                       ("attn_output", "attn.o"), ("attn_output_norm", "attn_norm"), ("ffn_up", "mlp.up"),
                       ("ffn_down", "mlp.down"), ("layer_output_norm", "mlp_norm"))
       for p in ("weight", "bias")},
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A config.json-style dict from `bert.*` metadata; the position and token-type
    tables' sizes from the tensor table (a DistilBERT file has no token types)."""
    from attnscope.architectures.llama import gguf_value

    def get(suffix: str, default: Any = KeyError) -> Any:
        return gguf_value(meta, f"{arch}.{suffix}", default)

    if get("attention.causal", False) is not False:
        raise ConfigError(f"a causal {arch} GGUF is not supported")
    positions, types = shapes.get("position_embd.weight"), shapes.get("token_types.weight")
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": get("attention.head_count"),
        "intermediate_size": get("feed_forward_length"),
        "max_position_embeddings": positions[0] if positions else get("context_length"),
        "type_vocab_size": types[0] if types else 0,
        "layer_norm_eps": get("attention.layer_norm_epsilon"),
        "hidden_act": "gelu",
    }


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """A fused attn_qkv: q, k and v stacked on the output dimension."""
    if ".attn.qkv." in name:
        q, k, v = tensor.chunk(3, dim=0)  # (3 * d_model, ...) -> 3 x (d_model, ...)
        return {name.replace(".qkv.", f".{part}."): t for part, t in zip("qkv", (q, k, v))}
    return {name: tensor}
