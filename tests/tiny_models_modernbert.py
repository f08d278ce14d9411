"""Tiny random-weight ModernBERT checkpoints (issue 27), built offline by transformers itself.

The recipe of tests/tiny_models.py (`_build`: eager attention, float32, every parameter
redrawn by `reinit` at std 0.25 — ModernBERT's own init draws truncated normals at
`initializer_range` with cutoffs and zero biases, so `reinit` replaces all of it — and
saved with a trained tokenizer). Every setting a naive port could get wrong is set to a
value that shows it:

- `local_attention` 16, so a local layer's query sees 8 keys on either side, and
  `MODERNBERT_TEXT` tokenizes to 90+ tokens: every local row is cut on both sides;
- layers 0 and 3 global, 1 and 2 local (`global_attn_every_n_layers` 3, written to
  config.json as the Hub's files write it, without `layer_types`), so a reader that calls
  every layer global, or counts from layer 1, disagrees;
- the global and local RoPE bases (20000, 500) differ from each other and from the
  defaults (160000, 10000), and are written as the legacy `global_rope_theta` /
  `local_rope_theta` keys, as the Hub's files have them;
- `modernbert_biased` turns on every bias flag (`attention_bias`, `mlp_bias`, `norm_bias`,
  `classifier_bias`) and saves `layer_types` + nested `rope_parameters` (transformers 5's
  own form), with the first layer local.

The tokenizer is byte-level BPE with ModernBERT's specials and its `[CLS] $A [SEP]` template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from tiny_models import SEED, SENTENCES, _build, _train_bpe, _vocab_size, rewrite_config

# 90+ tokens in this file's tokenizer (the tests check it), far longer than the local reach.
MODERNBERT_TEXT = " ".join(SENTENCES)
LOCAL_ATTENTION = 16  # a query sees local_attention // 2 = 8 keys on either side
GLOBAL_EVERY = 3
LAYER_TYPES = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
GLOBAL_THETA = 20000.0
LOCAL_THETA = 500.0
BIASED_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def modernbert_tokenizer(vocab_size: int = 500) -> Tokenizer:
    """Byte-level BPE (as ModernBERT's OLMo-derived tokenizer) that wraps a text in
    `[CLS] … [SEP]`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok = _train_bpe(tok, SPECIALS, vocab_size, pre_tokenizers.ByteLevel.alphabet())
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def _config(tok: Tokenizer, **kw: Any) -> Any:
    from transformers import ModernBertConfig

    base: dict[str, Any] = dict(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=256, hidden_activation="gelu", norm_eps=1e-5,
        local_attention=LOCAL_ATTENTION, pad_token_id=tok.token_to_id("[PAD]"),
        bos_token_id=tok.token_to_id("[CLS]"), eos_token_id=tok.token_to_id("[SEP]"),
        cls_token_id=tok.token_to_id("[CLS]"), sep_token_id=tok.token_to_id("[SEP]"),
        tie_word_embeddings=True, architectures=["ModernBertForMaskedLM"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": GLOBAL_THETA},
            "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_THETA},
        },
    )
    base.update(kw)
    return ModernBertConfig(**base)


def modernbert(folder: Path, seed: int = SEED) -> Path:
    """ModernBertForMaskedLM: width 32, 4 layers of 4 heads of 8, GeGLU of 48, no biases
    but the decoder's, LayerNorms without a bias, tied decoder; layers 0 and 3 global
    (RoPE base 20000), 1 and 2 local (±8 tokens, base 500). config.json is written as
    ModernBERT-base's is: `global_attn_every_n_layers`, `global_rope_theta`,
    `local_rope_theta`, no `layer_types` or `rope_parameters`."""
    from transformers import ModernBertForMaskedLM

    tok = modernbert_tokenizer()
    config = _config(tok, layer_types=LAYER_TYPES)
    path = _build(config, ModernBertForMaskedLM, Path(folder), tok, seed)

    def hub(raw: dict[str, Any]) -> None:
        assert raw.pop("layer_types") == LAYER_TYPES
        params = raw.pop("rope_parameters")
        raw["global_rope_theta"] = params["full_attention"]["rope_theta"]
        raw["local_rope_theta"] = params["sliding_attention"]["rope_theta"]
        raw["global_attn_every_n_layers"] = GLOBAL_EVERY
        raw["torch_dtype"] = raw.pop("dtype")

    rewrite_config(path, hub)
    return path


def modernbert_biased(folder: Path, seed: int = SEED) -> Path:
    """ModernBertForMaskedLM with every bias on (q/k/v and out, the MLP's, every norm's,
    the MLM head's dense), 3 layers of `BIASED_LAYER_TYPES` (local, global, local), saved
    as transformers 5 writes it (`layer_types`, nested `rope_parameters`)."""
    from transformers import ModernBertForMaskedLM

    tok = modernbert_tokenizer()
    config = _config(tok, num_hidden_layers=3, layer_types=BIASED_LAYER_TYPES, attention_bias=True,
                     mlp_bias=True, norm_bias=True, classifier_bias=True)
    return _build(config, ModernBertForMaskedLM, Path(folder), tok, seed)


def modernbert_bare(folder: Path, seed: int = SEED) -> Path:
    """ModernBertModel (no MLM head) with `modernbert`'s settings and config.json form."""
    from transformers import ModernBertModel

    tok = modernbert_tokenizer()
    config = _config(tok, layer_types=LAYER_TYPES, architectures=["ModernBertModel"])
    path = _build(config, ModernBertModel, Path(folder), tok, seed)

    def hub(raw: dict[str, Any]) -> None:
        raw.pop("layer_types")
        params = raw.pop("rope_parameters")
        raw["global_rope_theta"] = params["full_attention"]["rope_theta"]
        raw["local_rope_theta"] = params["sliding_attention"]["rope_theta"]
        raw["global_attn_every_n_layers"] = GLOBAL_EVERY

    rewrite_config(path, hub)
    return path


def modernbert_classifier(folder: Path, seed: int = SEED) -> Path:
    """ModernBertForSequenceClassification (3 labels), as the Hub's fine-tuned rerankers
    and classifiers ship: `modernbert`'s encoder plus a prediction head and a classifier,
    which attnscope does not run (its tensors are counted, but never loaded)."""
    from transformers import ModernBertForSequenceClassification

    tok = modernbert_tokenizer()
    config = _config(tok, layer_types=LAYER_TYPES, architectures=["ModernBertForSequenceClassification"],
                     num_labels=3)
    return _build(config, ModernBertForSequenceClassification, Path(folder), tok, seed)


MODERNBERT_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "modernbert": modernbert,
    "modernbert_biased": modernbert_biased,
    "modernbert_bare": modernbert_bare,
}
