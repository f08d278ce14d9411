"""RoBERTa and XLM-RoBERTa: BERT's layout (post-LayerNorm blocks, exact GELU, biases
everywhere, bidirectional) with fairseq's positions, which start after the padding index:
transformers' `create_position_ids_from_input_ids` gives the i-th token of an unpadded
text position `padding_idx + 1 + i`, so the learned table (`max_position_embeddings`
rows, 514 for roberta-base) keeps `padding_idx + 1` rows ahead of position 0 (OPT's
`pos_offset` idea). One token type. Checkpoints come with or without the `roberta.`
prefix: RobertaModel adds a pooler, RobertaForMaskedLM an MLM head (`lm_head.dense`,
`lm_head.layer_norm`, the decoder tied to the word embeddings, `lm_head.bias`), and
RobertaForSequenceClassification a classifier (`classifier.dense`, `classifier.out_proj`).
XLM-RoBERTa (modeling_xlm_roberta.py) is the same model under another name.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures import bert
from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import MAX_SIZE, ModelConfig, _shown
from attnscope.errors import ConfigError

MODEL_TYPES = ("roberta", "xlm-roberta")
PREFIXES = ("roberta.",)
DESCRIPTION = "RoBERTa, XLM-RoBERTa: BERT's layout, positions from padding_idx + 1, one token type"

_TOP = {
    "lm_head.dense": "mlm.dense",
    "lm_head.layer_norm": "mlm.norm",
    "lm_head.decoder": "unembed",
    "classifier.dense": "classifier.dense",
    "classifier.out_proj": "classifier.out",
}

# BERT's encoder and embedding names, RoBERTa's own heads; BERT's `cls.` heads dropped.
WEIGHTS: dict[str, str | None] = {
    **{hf: ours for hf, ours in bert.WEIGHTS.items() if not hf.startswith("cls.")},
    **{f"{hf}.{p}": f"{ours}.{p}" for hf, ours in _TOP.items() for p in ("weight", "bias")},
    "lm_head.bias": "mlm.bias",
    "lm_head.decoder.bias": "mlm.bias",
    "embeddings.token_type_ids": None,
}

# What each class carries after the encoder (RobertaForCausalLM is refused as a decoder).
_HEADS = {
    "Model": ("pooler",),
    "ForMaskedLM": ("mlm",),
    "ForSequenceClassification": ("sequence_classifier",),
}


def _heads(archs: list[Any]) -> tuple[str, ...]:
    heads: list[str] = []
    for arch in archs:
        for suffix, names in _HEADS.items():
            if isinstance(arch, str) and arch.endswith("Roberta" + suffix):
                heads += [h for h in names if h not in heads]
    return tuple(heads)


def n_labels(raw: dict[str, Any]) -> int:
    """A classifier's outputs: `id2label`'s length where the config lists labels (as
    transformers derives `num_labels`), else `num_labels`, else transformers' default 2."""
    labels = raw.get("id2label")
    count = len(labels) if isinstance(labels, dict) and labels else raw.get("num_labels", 2)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_SIZE:
        raise ConfigError(f"num_labels must be a positive integer up to 2**31, got {_shown(count)}")
    return count


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    kind = raw.get("model_type", "roberta")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{kind} position_embedding_type {raw['position_embedding_type']!r} is not supported; "
                          "only 'absolute'")
    if raw.get("is_decoder"):
        raise ConfigError(f"{kind} as a decoder (is_decoder, RobertaForCausalLM) is not supported")
    act = raw.get("hidden_act", "gelu")
    if act not in bert._ACTIVATIONS:
        raise ConfigError(f"unsupported {kind} hidden_act {act!r}")
    pad = raw.get("pad_token_id", 1)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ConfigError(f"{kind} pad_token_id must be a non-negative integer, got {_shown(pad)}")
    table = raw.get("max_position_embeddings", 512)
    if isinstance(table, bool) or not isinstance(table, int):
        raise ConfigError(f"{kind} max_position_embeddings must be an integer, got {_shown(table)}")
    if table <= pad + 1:
        raise ConfigError(f"{kind} max_position_embeddings {_shown(table)} leaves no position after the padding "
                          f"index {pad} (positions start at padding_idx + 1)")
    archs = raw.get("architectures") or ["RobertaModel"]
    if not isinstance(archs, list):
        raise ConfigError(f"architectures must be a list, got {_shown(archs)}")
    heads = _heads(archs)
    return ModelConfig(
        name=name,
        family=kind if kind in MODEL_TYPES else "roberta",
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=table - (pad + 1),  # the table's rows past the padding index
        pos_offset=pad + 1,
        causal=False,
        positions="learned",
        n_types=raw.get("type_vocab_size", 2),
        norm="layernorm",
        norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        embed_norm=True,
        final_norm=False,
        act=bert._ACTIVATIONS[act],
        layer_template=layer_kind("post", qkv_bias=True, out_bias=True, mlp_bias=True),
        lm_head="mlm" in heads,
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        heads=heads,
        n_labels=n_labels(raw) if "sequence_classifier" in heads else 0,
        dtype=checkpoint_dtype(raw),
    )
