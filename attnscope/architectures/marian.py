"""Marian (Helsinki-NLP's OPUS-MT translation models): BART's post-norm encoder-decoder
(`architectures.bart`) with fixed sinusoidal positions instead of learned ones.

As transformers' modeling_marian has it: positions are a sinusoidal table
(`parts.positions.sinusoidal`: sines in the first half of each vector, cosines in the
second, no padding offset), which transformers keeps as a frozen parameter it counts but
never saves, so here it is counted and computed, not loaded; embeddings are scaled by
√d_model where `scale_embedding` (OPUS-MT: true); there is no embedding norm and no final
norm; `final_logits_bias` is added to the logits; the head is the shared table. The
decoder starts from `decoder_start_token_id` (the pad token). Checkpoints whose decoder
has its own vocabulary (`share_encoder_decoder_embeddings` false) are refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import bart
from attnscope.config import ModelConfig, _shown
from attnscope.errors import ConfigError

MODEL_TYPES = ("marian",)
PREFIXES = ("model.",)
DESCRIPTION = "Marian (OPUS-MT): BART's post-norm encoder-decoder with sinusoidal positions"

WEIGHTS: dict[str, str | None] = {
    name: target for name, target in bart.WEIGHTS.items()
    if "layernorm_embedding" not in name and not name.startswith(("encoder.layer_norm", "decoder.layer_norm"))
}
# transformers never saves the sinusoidal tables; older checkpoints that hold them are read past
WEIGHTS["encoder.embed_positions.weight"] = None
WEIGHTS["decoder.embed_positions.weight"] = None


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    shared = raw.get("share_encoder_decoder_embeddings", True)
    if shared is not True:
        raise ConfigError(f"Marian with a decoder vocabulary of its own (share_encoder_decoder_embeddings "
                          f"{_shown(shared)}) is not supported yet")
    vocab = raw.get("vocab_size")
    if raw.get("decoder_vocab_size", vocab) != vocab:
        raise ConfigError(f"Marian's decoder_vocab_size {_shown(raw.get('decoder_vocab_size'))} differs from "
                          f"vocab_size {_shown(vocab)}: a decoder vocabulary of its own is not supported yet")
    start = raw.get("decoder_start_token_id", raw.get("pad_token_id", 58100))
    cfg = bart.config_from_hf({"activation_function": "gelu", **raw, "model_type": "bart",
                               "decoder_start_token_id": start,
                               "architectures": raw.get("architectures") or ["MarianMTModel"]}, name)
    archs = raw.get("architectures") or ["MarianMTModel"]
    heads = ("logits_bias",) if isinstance(archs, list) and "MarianMTModel" in archs else ()  # its final_logits_bias
    return replace(cfg, family="marian", positions="sinusoidal", pos_offset=0, embed_norm=False, heads=heads)
