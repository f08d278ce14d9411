"""Tiny random-weight MPNet checkpoints (MPNetModel with its pooler, MPNetForMaskedLM with
its tied MLM head), built offline by transformers itself like tests/tiny_models.py's.

Chosen so that a naive port shows:
- the tokenizer is MPNet's shape (WordPiece, `<s> … </s>`, `<pad>` at id 1), and positions
  start after the padding index, so position i reads row i + 2 of a 2 + 200-row table;
- `MPNET_TEXT` is 130+ tokens, so query-key distances run past `max_distance` 128 both
  ways: the exact buckets (below 8), the log-spaced ones and the last, clamped one are all
  used, on both sides of the diagonal;
- `relative_attention_num_buckets` is 40 in the masked-LM checkpoint: transformers still
  buckets into 32 and the table's extra rows are never read (a reader that buckets into 40
  disagrees);
- weights are redrawn at std 0.25 (`tiny_models.reinit`) and the bias table then scaled
  ×`BIAS_SCALE` (to std 2), so the bias moves every head's pattern by more than its
  content scores do over long distances, and a port that drops or misplaces it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

import torch

from tiny_models import _BERT_PIECES, _BERT_WORDS, INIT_STD, SEED, SENTENCES, _save, _vocab_size, reinit

MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: <pad> at MPNet's padding index 1
# 130+ tokens (checked by the tests): every distance bucket, past max_distance both ways.
MPNET_TEXT = " ".join(SENTENCES + SENTENCES[:3])
N_POSITIONS = 200  # positions the tiny models hold (max_position_embeddings 202)
TABLE_ROWS = 40  # the masked-LM checkpoint's relative_attention_num_buckets
BIAS_SCALE = 8.0  # the bias table's std: 0.25 × 8 = 2


def mpnet_tokenizer() -> Tokenizer:
    """A WordPiece tokenizer shaped like all-mpnet-base-v2's: lower-cased BERT
    normalisation, `<s> $A </s>`, `<pad>` = 1."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    punct = list(".,;:!?'\"()-")
    vocab_list = MPNET_SPECIALS + punct + chars + ["##" + c for c in chars] + list(_BERT_WORDS) + _BERT_PIECES
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(MPNET_SPECIALS)
    return tok


def _build(config: Any, model_cls: type, folder: Path, tok: Tokenizer, seed: int) -> Path:
    """tiny_models._build, with the relative bias table scaled ×BIAS_SCALE after the redraw."""
    config.initializer_range = INIT_STD
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32).eval()
    reinit(model, seed=seed)
    with torch.no_grad():
        encoder = model.mpnet.encoder if hasattr(model, "mpnet") else model.encoder
        encoder.relative_attention_bias.weight.mul_(BIAS_SCALE)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return _save(model, folder, tok)


def _config(tok: Tokenizer, **kw: Any) -> Any:
    from transformers import MPNetConfig

    base: dict[str, Any] = dict(
        vocab_size=_vocab_size(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=N_POSITIONS + 2, hidden_act="gelu", layer_norm_eps=1e-5,
        relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    base.update(kw)
    return MPNetConfig(**base)


def mpnet(folder: Path, seed: int = SEED) -> Path:
    """MPNetModel (encoder + pooler), as sentence-transformers' all-mpnet-base-v2 stores it."""
    from transformers import MPNetModel

    tok = mpnet_tokenizer()
    return _build(_config(tok, architectures=["MPNetModel"]), MPNetModel, Path(folder), tok, seed)


def mpnet_mlm(folder: Path, seed: int = SEED + 1) -> Path:
    """MPNetForMaskedLM (`mpnet.` prefix, the tied MLM head) with a 40-row bias table."""
    from transformers import MPNetForMaskedLM

    tok = mpnet_tokenizer()
    config = _config(tok, architectures=["MPNetForMaskedLM"], relative_attention_num_buckets=TABLE_ROWS,
                     tie_word_embeddings=True)
    return _build(config, MPNetForMaskedLM, Path(folder), tok, seed)


MPNET_BUILDERS: dict[str, Callable[[Path], Path]] = {"mpnet": mpnet, "mpnet_mlm": mpnet_mlm}
