"""Tiny random-weight encoder checkpoints of issue 27's BERT-like families: RoBERTa,
XLM-RoBERTa and DistilBERT, built offline with tests/tiny_models.py's recipe (`_build`:
eager attention, float32, every parameter redrawn at std 0.25, saved by transformers
itself, with a trained tokenizer beside it).

What a naive port could get wrong is set to show:
- positions start after the padding index: RoBERTa's padding index is 1 (its table has
  two rows ahead of position 0, as roberta-base's 514), XLM-RoBERTa's here is 3 (specials
  ordered `<s> </s> <unk> <pad>`), so a port that hard-codes an offset of 2 disagrees;
- the tokenizers are shaped like the real ones: RoBERTa's byte-level BPE with `<s> … </s>`
  from a RobertaProcessing post-processor, XLM-RoBERTa's SentencePiece-style Metaspace
  pieces with `<s> … </s>`, DistilBERT's WordPiece with `[CLS] … [SEP]`;
- DistilBERT's classifier uses ReLU, its MLM model GELU; one DistilBERT keeps the
  sinusoidal table transformers writes for `sinusoidal_pos_embds`;
- every head class: RobertaModel (pooler, no prefix), RobertaForMaskedLM (`roberta.` +
  `lm_head`), RobertaForSequenceClassification (3 labels), DistilBertForMaskedLM,
  DistilBertForSequenceClassification (5 labels).

`KINDS_TEXT` (tests/tiny_models_kinds.py) is 90+ tokens in each tokenizer here.
`ENCODER_BUILDERS` lists them by the name tests use; each draws its weights from its own seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from tiny_models import (
    SEED,
    SENTENCES,
    _add_byte_fallback,
    _build,
    _train_bpe,
    _vocab_size,
    bert_tokenizer,
)

N_POSITIONS = 160  # positions past the padding index: room for KINDS_TEXT (~100 tokens) and more
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # roberta-base's ids 0-3; <mask> its own
XLMR_SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<mask>"]  # padding index 3 (XLM-R's is 1): offsets differ
CLASSIFIER_LABELS = {"roberta_cls": 3, "distilbert_cls": 5}


def roberta_tokenizer(vocab_size: int = 600) -> Tokenizer:
    """Byte-level BPE laid out as roberta-base's tokenizer.json: ByteLevel pre-tokenizer
    and decoder, RobertaProcessing (`<s> $A </s>`, offsets trimmed)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    _train_bpe(tok, ROBERTA_SPECIALS, vocab_size, pre_tokenizers.ByteLevel.alphabet())
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls_token=("<s>", tok.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False,
    )
    return tok


def xlmr_tokenizer(vocab_size: int = 400) -> Tokenizer:
    """SentencePiece-style pieces (Metaspace '▁', byte fallback) with `<s> $A </s>`, laid
    out as xlm-roberta-base's tokenizer.json (whose model is a Unigram; a BPE over the same
    pieces tokenizes these sentences alike for what the tests need)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    alphabet = sorted(set("".join(SENTENCES).replace(" ", "▁")) | {"▁"})
    _train_bpe(tok, XLMR_SPECIALS, vocab_size, alphabet)
    tok = _add_byte_fallback(tok)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0", pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


def _plain_bert_tokenizer() -> Tokenizer:
    tok = bert_tokenizer()
    tok.no_padding()
    tok.no_truncation()
    return tok


def _roberta_config(cls_name: str, tok: Tokenizer, **kw: Any) -> Any:
    from transformers import RobertaConfig, XLMRobertaConfig

    pad = tok.token_to_id("<pad>")
    config_cls = XLMRobertaConfig if cls_name.startswith("XLM") else RobertaConfig
    return config_cls(
        vocab_size=_vocab_size(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=N_POSITIONS + pad + 1, type_vocab_size=1,
        hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=pad, bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"), architectures=[cls_name], **kw,
    )


def roberta(folder: Path, seed: int = SEED, cls_name: str = "RobertaForMaskedLM", **kw: Any) -> Path:
    """RoBERTa: width 32, 2 layers, 4 heads, 160 positions after the padding index 1."""
    import transformers

    tok = roberta_tokenizer()
    config = _roberta_config(cls_name, tok, **kw)
    if cls_name.endswith("MaskedLM"):
        config.tie_word_embeddings = True
    return _build(config, getattr(transformers, cls_name), Path(folder), tok, seed)


def xlm_roberta(folder: Path, seed: int = SEED) -> Path:
    """XLM-RoBERTa (XLMRobertaForMaskedLM): as `roberta`, Metaspace pieces, padding index 3."""
    from transformers import XLMRobertaForMaskedLM

    tok = xlmr_tokenizer()
    config = _roberta_config("XLMRobertaForMaskedLM", tok)
    config.tie_word_embeddings = True
    return _build(config, XLMRobertaForMaskedLM, Path(folder), tok, seed)


def distilbert(folder: Path, seed: int = SEED, cls_name: str = "DistilBertForMaskedLM", sinusoidal: bool = False,
               **kw: Any) -> Path:
    """DistilBERT: width 32, 2 layers, 4 heads, 160 positions, WordPiece `[CLS] … [SEP]`.
    `sinusoidal` keeps the sinusoidal position table transformers writes (all other
    parameters redrawn)."""
    import transformers
    from transformers import DistilBertConfig
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    tok = _plain_bert_tokenizer()
    config = DistilBertConfig(
        vocab_size=_vocab_size(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
        max_position_embeddings=N_POSITIONS, sinusoidal_pos_embds=sinusoidal,
        pad_token_id=tok.token_to_id("[PAD]"), architectures=[cls_name], **kw,
    )
    if cls_name.endswith("MaskedLM"):
        config.tie_word_embeddings = True
    folder = _build(config, getattr(transformers, cls_name), Path(folder), tok, seed)
    if sinusoidal:  # put transformers' own table back over the redrawn one
        from safetensors.torch import load_file, save_file

        path = folder / "model.safetensors"
        state = load_file(path)
        name = next(n for n in state if n.endswith("position_embeddings.weight"))
        state[name] = create_sinusoidal_embeddings(N_POSITIONS, 32, torch.empty_like(state[name])).contiguous()
        save_file(state, path, metadata={"format": "pt"})
    return folder


ENCODER_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "roberta_mlm": roberta,
    "roberta_bare": lambda folder: roberta(folder, SEED + 1, cls_name="RobertaModel"),
    "roberta_cls": lambda folder: roberta(folder, SEED + 2, cls_name="RobertaForSequenceClassification",
                                          num_labels=CLASSIFIER_LABELS["roberta_cls"]),
    "xlm_roberta": xlm_roberta,
    "distilbert_mlm": distilbert,
    "distilbert_cls": lambda folder: distilbert(folder, SEED + 3, cls_name="DistilBertForSequenceClassification",
                                                activation="relu", num_labels=CLASSIFIER_LABELS["distilbert_cls"]),
    "distilbert_sinusoidal": lambda folder: distilbert(folder, SEED + 4, cls_name="DistilBertModel", sinusoidal=True),
}
