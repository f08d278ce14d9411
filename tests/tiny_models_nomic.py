"""Tiny random-weight nomic-bert checkpoints (transformers' NomicBertModel), built offline
by tests/tiny_models.py's recipe (`_build`: eager attention, float32, weights redrawn by
`reinit` at std 0.25, saved by transformers itself, which writes Nomic's own names: the
fused `attn.Wqkv`, `mlp.fc11`/`fc12`/`fc2`, `norm1`/`norm2`, `emb_ln`), with the
WordPiece tokenizer of `tiny_models.bert_tokenizer`.

Settings that a naive port gets wrong are set to show: a RoPE base of 700 (neither
NomicBertConfig's 1,000 nor the usual 10,000), heads of 16 dimensions rotated in two
halves, three layers, and `KINDS_TEXT` (90+ tokens here) longer than any short-range
habit. `nomic_hub_config` rewrites a saved config.json the way the Hub's
nomic-embed-text files are written (Nomic's keys only: n_embd, n_layer, rotary_emb_base…).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiny_models import SEED, _build, _vocab_size, bert_tokenizer, rewrite_config

NOMIC_THETA = 700.0


def nomic_config(**kw: Any) -> Any:
    from transformers import NomicBertConfig

    tok = bert_tokenizer()
    base: dict[str, Any] = dict(
        vocab_size=_vocab_size(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=256, type_vocab_size=2, layer_norm_eps=1e-12,
        hidden_act="silu", pad_token_id=tok.token_to_id("[PAD]"),
        rope_parameters={"rope_type": "default", "rope_theta": NOMIC_THETA}, architectures=["NomicBertModel"],
    )
    base.update(kw)
    return NomicBertConfig(**base)


def nomic_bert(folder: Path, seed: int = SEED) -> Path:
    """NomicBertModel: width 64, 3 layers, 4 heads of 16, SwiGLU of 96, RoPE base 700."""
    from transformers import NomicBertModel

    return _build(nomic_config(), NomicBertModel, Path(folder), bert_tokenizer(), seed)


def nomic_mlm(folder: Path, seed: int = SEED) -> Path:
    """NomicBertForMaskedLM: the same shape with the MLM head (`nomic_bert.` prefix, tied decoder)."""
    from transformers import NomicBertForMaskedLM

    return _build(nomic_config(architectures=["NomicBertForMaskedLM"], num_hidden_layers=2), NomicBertForMaskedLM,
                  Path(folder), bert_tokenizer(), seed)


def nomic_hub_config(folder: Path) -> None:
    """Rewrite config.json in Nomic's own keys, as nomic-embed-text-v1.5's config.json
    was first published (transformers' keys removed)."""
    def edit(raw: dict[str, Any]) -> None:
        rope = raw.pop("rope_parameters")
        renamed = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                   "intermediate_size": "n_inner", "layer_norm_eps": "layer_norm_epsilon",
                   "max_position_embeddings": "max_trained_positions"}
        for old, new in renamed.items():
            raw[new] = raw.pop(old)
        for key in ("hidden_act", "head_dim"):
            raw.pop(key, None)
        raw.update({"n_positions": 8 * raw["max_trained_positions"], "rotary_emb_base": rope["rope_theta"],
                    "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False, "rotary_emb_scale_base": None,
                    "rotary_scaling_factor": None, "activation_function": "swiglu", "qkv_proj_bias": False,
                    "mlp_fc1_bias": False, "mlp_fc2_bias": False, "prenorm": False, "causal": False,
                    "parallel_block": False, "use_rms_norm": False})

    rewrite_config(folder, edit)


NOMIC_BUILDERS = {"nomic_bert": nomic_bert, "nomic_mlm": nomic_mlm}
