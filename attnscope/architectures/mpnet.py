"""MPNet (all-mpnet-base-v2, microsoft/mpnet-base): BERT's post-LayerNorm blocks with
biases everywhere and exact GELU, word + learned position embeddings with a LayerNorm and
no token types, and a T5-style relative position bias: one learned table of 32 buckets ×
heads (`encoder.relative_attention_bias`), bidirectional, max distance 128, added to every
layer's scores after the 1/√d_head scale and before the mask (`kinds.RelativeSpec`; the
stack owns it, `parts.relative`).

Quirks, as transformers' modeling_mpnet has them: positions start after the padding
index, which MPNetEmbeddings fixes at 1 whatever `pad_token_id` says (position i reads
row i + 2, so 514 rows hold 512 positions); the bias buckets into 32 whatever
`relative_attention_num_buckets` says (`compute_position_bias`'s default), which sizes
only the table. MPNetModel adds a pooler, MPNetForMaskedLM an MLM head (dense, GELU,
LayerNorm, a decoder tied to the word embeddings, and a bias).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError
from attnscope.kinds import RelativeSpec

MODEL_TYPES = ("mpnet",)
PREFIXES = ("mpnet.",)
DESCRIPTION = "MPNet: BERT's post-LayerNorm blocks, positions after the padding index, relative position buckets"

_LAYERS = {
    "attention.attn.q": "attn.q",
    "attention.attn.k": "attn.k",
    "attention.attn.v": "attn.v",
    "attention.attn.o": "attn.o",
    "attention.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up",
    "output.dense": "mlp.down",
    "output.LayerNorm": "mlp_norm",
}
_TOP = {
    "embeddings.word_embeddings": "embed.tok",
    "embeddings.position_embeddings": "embed.pos",
    "embeddings.LayerNorm": "embed.norm",
    "pooler.dense": "pooler",
    "lm_head.dense": "mlm.dense",
    "lm_head.layer_norm": "mlm.norm",
}
_PARAMS = ("weight", "bias")

WEIGHTS: dict[str, str | None] = {
    **{f"encoder.layer.{{layer}}.{hf}.{p}": f"blocks.{{layer}}.{ours}.{p}" for hf, ours in _LAYERS.items() for p in _PARAMS},
    **{f"{hf}.{p}": f"{ours}.{p}" for hf, ours in _TOP.items() for p in _PARAMS},
    "encoder.relative_attention_bias.weight": "relative.weight",
    "embeddings.position_ids": None,
    "lm_head.bias": "mlm.bias",
    "lm_head.decoder.bias": "mlm.bias",  # tied to lm_head.bias
    "lm_head.decoder.weight": "unembed.weight",  # absent from the shapes where tied to the word embeddings
}

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}
PADDING_IDX = 1  # MPNetEmbeddings' own, not the config's pad_token_id
OFFSET = PADDING_IDX + 1  # position i reads row i + 2
BUCKETS = 32  # compute_position_bias buckets into 32 whatever the table holds
MAX_DISTANCE = 128  # relative_position_bucket's default: the config has no key for it


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    act = raw.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported MPNet hidden_act {act!r}", hint=f"supported: {', '.join(_ACTIVATIONS)}")
    n_positions = raw.get("max_position_embeddings", 514)
    if isinstance(n_positions, bool) or not isinstance(n_positions, int) or n_positions <= OFFSET:
        raise ConfigError(f"MPNet max_position_embeddings must be an integer above {OFFSET} (positions start after "
                          f"the padding index), got {n_positions!r}")
    table = raw.get("relative_attention_num_buckets", BUCKETS)
    relative = RelativeSpec(BUCKETS, MAX_DISTANCE, bidirectional=True, rows=None if table == BUCKETS else table)
    archs = raw.get("architectures") or ["MPNetModel"]
    mlm = any("MaskedLM" in a for a in archs)
    template = layer_kind("post", qkv_bias=True, out_bias=True, mlp_bias=True)
    return ModelConfig(
        name=name,
        family="mpnet",
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=n_positions - OFFSET,
        pos_offset=OFFSET,
        causal=False,
        positions="learned",
        norm="layernorm",
        norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        embed_norm=True,
        final_norm=False,
        act=_ACTIVATIONS[act],
        layer_template=replace(template, attn=replace(template.attn, relative=relative)),
        lm_head=mlm,
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        heads=("mlm",) if mlm else ("pooler",),
        dtype=checkpoint_dtype(raw),
    )
