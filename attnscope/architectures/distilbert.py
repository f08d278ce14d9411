"""DistilBERT: BERT's post-LayerNorm blocks under their own names (`q_lin`, `k_lin`,
`v_lin`, `out_lin`, `sa_layer_norm`, `ffn.lin1`/`lin2`, `output_layer_norm`) and config
keys (`dim`, `hidden_dim`, `n_heads`, `n_layers`, `activation`), word + position
embeddings with a LayerNorm and no token types, LayerNorm eps fixed at 1e-12.

`sinusoidal_pos_embds`: transformers writes the sinusoidal table into the position
embedding's weight (`create_sinusoidal_embeddings`, from `_init_weights`), a parameter
like any other that `save_pretrained` stores and `from_pretrained` reads back, so the
table is read from the checkpoint either way and counted in `num_parameters()`.

Checkpoints come with or without the `distilbert.` prefix: DistilBertForMaskedLM adds
`vocab_transform`, `vocab_layer_norm` and `vocab_projector` (tied to the word
embeddings, with its own bias); DistilBertForSequenceClassification adds
`pre_classifier` and `classifier`.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.architectures.roberta import n_labels
from attnscope.config import ModelConfig, _shown
from attnscope.errors import ConfigError

MODEL_TYPES = ("distilbert",)
PREFIXES = ("distilbert.",)
DESCRIPTION = "DistilBERT: BERT's post-LayerNorm blocks, no token types, learned or sinusoidal positions"

_LAYERS = {
    "attention.q_lin": "attn.q",
    "attention.k_lin": "attn.k",
    "attention.v_lin": "attn.v",
    "attention.out_lin": "attn.o",
    "sa_layer_norm": "attn_norm",
    "ffn.lin1": "mlp.up",
    "ffn.lin2": "mlp.down",
    "output_layer_norm": "mlp_norm",
}
_TOP = {
    "embeddings.word_embeddings": "embed.tok",
    "embeddings.position_embeddings": "embed.pos",
    "embeddings.LayerNorm": "embed.norm",
    "vocab_transform": "mlm.dense",
    "vocab_layer_norm": "mlm.norm",
    "pre_classifier": "classifier.dense",
    "classifier": "classifier.out",
}

WEIGHTS: dict[str, str | None] = {
    **{f"transformer.layer.{{layer}}.{hf}.{p}": f"blocks.{{layer}}.{ours}.{p}"
       for hf, ours in _LAYERS.items() for p in ("weight", "bias")},
    **{f"{hf}.{p}": f"{ours}.{p}" for hf, ours in _TOP.items() for p in ("weight", "bias")},
    "vocab_projector.weight": "unembed.weight",
    "vocab_projector.bias": "mlm.bias",
    "embeddings.position_ids": None,
}

_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}  # what DistilBertConfig allows

# What each class carries after the encoder.
_HEADS = {"DistilBertForMaskedLM": ("mlm",), "DistilBertForSequenceClassification": ("sequence_classifier",)}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    act = raw.get("activation", "gelu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported DistilBERT activation {act!r}", hint="DistilBERT supports gelu and relu")
    archs = raw.get("architectures") or ["DistilBertModel"]
    if not isinstance(archs, list):
        raise ConfigError(f"architectures must be a list, got {_shown(archs)}")
    heads: tuple[str, ...] = ()
    for arch in archs:
        heads += tuple(h for h in (_HEADS.get(arch, ()) if isinstance(arch, str) else ()) if h not in heads)
    return ModelConfig(
        name=name,
        family="distilbert",
        d_model=raw.get("dim", 768),
        n_layers=raw.get("n_layers", 6),
        n_heads=raw.get("n_heads", 12),
        d_mlp=raw.get("hidden_dim", 3072),
        vocab_size=raw.get("vocab_size", 30522),
        n_ctx=raw.get("max_position_embeddings", 512),
        causal=False,
        positions="learned",  # sinusoidal or not, the table is a stored parameter (see above)
        n_types=0,
        norm="layernorm",
        norm_eps=1e-12,
        embed_norm=True,
        final_norm=False,
        act=_ACTIVATIONS[act],
        layer_template=layer_kind("post", qkv_bias=True, out_bias=True, mlp_bias=True),
        lm_head="mlm" in heads,
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        heads=heads,
        n_labels=n_labels(raw) if "sequence_classifier" in heads else 0,
        dtype=checkpoint_dtype(raw),
    )
