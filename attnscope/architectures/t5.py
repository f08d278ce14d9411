"""T5 (v1.0: t5-small … t5-11b) and T5 v1.1 / FLAN-T5: an encoder-decoder (two stacks,
`ModelConfig.decoder`, `attnscope.seq2seq`).

Both stacks are pre-norm with T5's RMSNorm (no mean subtracted, no bias) and a final norm
each; no biases anywhere; scores are NOT scaled by 1/√d_head (the scale is folded into the
initialisation), so every attention has `scale=1.0`. Positions are a learned relative bias
(`kinds.RelativeSpec`, `parts.relative`) that each stack computes in its first layer and
shares with the rest: bidirectional in the encoder, causal in the decoder's
self-attention, none in the cross-attention (transformers adds zeros there). The MLP is
`relu` (v1.0: wi, wo) or gated (v1.1 / FLAN-T5's `gated-gelu`: gelu_new(wi_0 x) · wi_1 x).
The token table is shared by both stacks and, where `tie_word_embeddings` (v1.0), by the
head, which then rescales the decoder's output by d_model^-0.5 (here: the logits divided by
√d_model); v1.1 has its own `lm_head` and no rescale. The decoder starts from
`decoder_start_token_id` (the pad token, 0).

After transformers' modeling_t5.py (T5Stack, T5Block, T5LayerFF, T5Attention).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig, _shown
from attnscope.errors import ConfigError
from attnscope.kinds import RelativeSpec, Stack

MODEL_TYPES = ("t5", "mt5")  # mT5: T5 v1.1's architecture, a multilingual vocabulary
PREFIXES = ()
DESCRIPTION = "T5, FLAN-T5: encoder-decoder, relative position buckets, RMSNorm, unscaled scores"

_ATTN = {f"SelfAttention.{p}.weight": f"attn.{p}.weight" for p in "qkvo"}
_FF = {"DenseReluDense.wi.weight": "mlp.up.weight", "DenseReluDense.wi_0.weight": "mlp.gate.weight",
       "DenseReluDense.wi_1.weight": "mlp.up.weight", "DenseReluDense.wo.weight": "mlp.down.weight",
       "layer_norm.weight": "mlp_norm.weight"}
WEIGHTS: dict[str, str | None] = {
    "shared.weight": "embed.tok.weight",
    "encoder.embed_tokens.weight": None,  # tied to shared.weight
    "decoder.embed_tokens.weight": None,  # tied to shared.weight
    "lm_head.weight": "unembed.weight",  # absent from the shapes where tied
    **{f"encoder.block.{{layer}}.layer.0.{hf}": f"blocks.{{layer}}.{ours}" for hf, ours in _ATTN.items()},
    "encoder.block.{layer}.layer.0.layer_norm.weight": "blocks.{layer}.attn_norm.weight",
    **{f"encoder.block.{{layer}}.layer.1.{hf}": f"blocks.{{layer}}.{ours}" for hf, ours in _FF.items()},
    "encoder.block.{layer}.layer.0.SelfAttention.relative_attention_bias.weight": "relative.weight",
    "encoder.final_layer_norm.weight": "final_norm.weight",
    **{f"decoder.block.{{layer}}.layer.0.{hf}": f"decoder.blocks.{{layer}}.{ours}" for hf, ours in _ATTN.items()},
    "decoder.block.{layer}.layer.0.layer_norm.weight": "decoder.blocks.{layer}.attn_norm.weight",
    **{f"decoder.block.{{layer}}.layer.1.EncDecAttention.{p}.weight": f"decoder.blocks.{{layer}}.cross.{p}.weight"
       for p in "qkvo"},
    "decoder.block.{layer}.layer.1.layer_norm.weight": "decoder.blocks.{layer}.cross_norm.weight",
    # transformers ignores it on load (T5's cross-attention has no bias): never read
    "decoder.block.{layer}.layer.1.EncDecAttention.relative_attention_bias.weight": None,
    **{f"decoder.block.{{layer}}.layer.2.{hf}": f"decoder.blocks.{{layer}}.{ours}" for hf, ours in _FF.items()},
    "decoder.block.{layer}.layer.0.SelfAttention.relative_attention_bias.weight": "decoder.relative.weight",
    "decoder.final_layer_norm.weight": "decoder.final_norm.weight",
}

# feed_forward_proj's activation (its last `-` part) in our names: gated-gelu is gelu_new (tanh).
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "silu": "silu", "swish": "silu"}


def _int(raw: dict[str, Any], key: str, default: Any = None) -> int:
    value = raw.get(key, default) if default is not None else raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"T5's {key} must be a positive integer, got {_shown(value)}")
    return value


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    proj = raw.get("feed_forward_proj", "relu")
    parts = proj.split("-") if isinstance(proj, str) else []
    gated = len(parts) == 2 and parts[0] == "gated"
    act = "gelu_new" if proj == "gated-gelu" else parts[-1] if parts else None
    if not parts or len(parts) > 2 or (len(parts) == 2 and not gated) or act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported T5 feed_forward_proj {_shown(proj)}",
                          hint=f"supported: an activation among {', '.join(_ACTIVATIONS)}, or gated-<one of them>")
    buckets = _int(raw, "relative_attention_num_buckets", 32)
    max_distance = _int(raw, "relative_attention_max_distance", 128)
    if buckets < 4 or max_distance <= buckets // 4:
        raise ConfigError(f"T5's relative buckets {buckets} and max distance {max_distance} leave no log-spaced "
                          "buckets (need at least 4 buckets, and a max distance above a quarter of them)")
    n_layers = _int(raw, "num_layers")
    # T5EncoderModel (the text encoder of image pipelines): the encoder stack alone, no head
    encoder_only = raw.get("architectures") in (["T5EncoderModel"], ["MT5EncoderModel"])
    n_decoder = _int(raw, "num_decoder_layers", n_layers) \
        if raw.get("num_decoder_layers") is not None and not encoder_only else n_layers
    tied = raw.get("tie_word_embeddings", True) is not False and not encoder_only
    d_model = _int(raw, "d_model")
    template = layer_kind("pre", mlp="gated" if gated else "dense")
    encoder_relative = RelativeSpec(buckets, max_distance, bidirectional=True)
    start = raw.get("decoder_start_token_id", raw.get("pad_token_id", 0))
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"T5's decoder_start_token_id must be a token id, got {_shown(start)}")
    cfg = ModelConfig(
        name=name,
        family="mt5" if raw.get("model_type") == "mt5" else "t5",
        d_model=d_model,
        n_layers=n_layers,
        n_heads=_int(raw, "num_heads"),
        d_head=_int(raw, "d_kv"),
        d_mlp=_int(raw, "d_ff"),
        vocab_size=_int(raw, "vocab_size"),
        n_ctx=_int(raw, "n_positions", 512),  # relative positions: no table caps it; the trained length
        causal=False,  # the encoder; the decoder's layers are causal
        positions="none",
        norm="rmsnorm",
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-6)),
        final_norm=True,
        act=_ACTIVATIONS[act],
        attn_scale=1.0,
        lm_head=not encoder_only,
        tied_embeddings=tied,
        # v1.0's d_model^-0.5 rescale before the tied head (T5 only: transformers' mT5 never rescales)
        logits_divisor=d_model ** 0.5 if tied and raw.get("model_type") == "t5" else None,
        layer_template=replace(template, attn=replace(template.attn, relative=encoder_relative)),
        dtype=checkpoint_dtype(raw),
        extra={"decoder_start_token_id": start, "eos_token_id": raw.get("eos_token_id", 1)},
    )
    if start >= cfg.vocab_size:
        raise ConfigError(f"T5's decoder_start_token_id {start} is outside the vocabulary of {cfg.vocab_size}")
    if encoder_only:
        return cfg
    encoder = cfg.layer(0)
    decoder = replace(encoder, attn=replace(encoder.attn, causal=True, relative=replace(encoder_relative,
                                                                                          bidirectional=False)),
                      cross=replace(encoder.attn, causal=False, relative=None))
    return replace(cfg, decoder=Stack(((decoder, n_decoder),)))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's `t5` architecture (gguf-py's constants.py: MODEL_ARCH.T5, `enc.blk.N.*` and
# `dec.blk.N.*`), as T5Model in convert_hf_to_gguf.py writes it for T5, FLAN-T5 and mT5.
# The converter renames and never reshapes: weights keep nn.Linear's (out, in) layout and
# need no undoing. It writes one token table (`token_embd`, whichever of shared /
# encoder.embed_tokens / decoder.embed_tokens came first) and `output` only where the
# checkpoint has its own lm_head, so a file without `output` is T5 v1.0's tied head with
# its d_model^-0.5 rescale (transformers'; llama.cpp itself skips the rescale, which no
# argmax sees). It stores no feed_forward_proj: ffn_gate tensors mean gated-gelu (llama.cpp
# runs them with its tanh GELU, gelu_new), none mean relu. It stores no
# relative_attention_max_distance: llama.cpp's bucketing fixes it at 128, as every T5
# release sets it. Each stack's relative table lives in its layer 0 only; a table in a
# later layer is UMT5's per-layer tables (which attnscope does not run) and is refused.
# T5's cross-attention has no relative bias (transformers never loads one): a
# `cross_attn_rel_b` an old checkpoint carried is skipped. `t5encoder` (T5EncoderModel in
# the converter: the encoder stack alone, as image pipelines use it) loads as an encoder
# without head, as a T5EncoderModel config.json does.

GGUF_ARCHS = ("t5", "t5encoder")  # t5encoder: T5EncoderModel, the encoder stack alone (no head)

_GGUF_ATTN = {"attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v", "attn_o": "attn.o",
              "attn_norm": "attn_norm", "ffn_gate": "mlp.gate", "ffn_up": "mlp.up", "ffn_down": "mlp.down",
              "ffn_norm": "mlp_norm"}
GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "output.weight": "unembed.weight",
    **{f"enc.blk.{{layer}}.{g}.weight": f"blocks.{{layer}}.{ours}.weight" for g, ours in _GGUF_ATTN.items()},
    "enc.blk.{layer}.attn_rel_b.weight": "relative.weight",  # layer 0 only (config_from_gguf checks)
    "enc.output_norm.weight": "final_norm.weight",
    **{f"dec.blk.{{layer}}.{g}.weight": f"decoder.blocks.{{layer}}.{ours}.weight" for g, ours in _GGUF_ATTN.items()},
    **{f"dec.blk.{{layer}}.cross_attn_{p}.weight": f"decoder.blocks.{{layer}}.cross.{p}.weight" for p in "qkvo"},
    "dec.blk.{layer}.cross_attn_norm.weight": "decoder.blocks.{layer}.cross_norm.weight",
    "dec.blk.{layer}.cross_attn_rel_b.weight": None,
    "dec.blk.{layer}.attn_rel_b.weight": "decoder.relative.weight",
    "dec.output_norm.weight": "decoder.final_norm.weight",
}
# the stacks of a GGUF's block tensors (sources.gguf checks each against its layer count)
GGUF_STACKS = {"enc.": "num_layers", "dec.": "num_decoder_layers"}
_MAX_DISTANCE = 128  # llama.cpp's llama_relative_position_bucket
_GGUF_RELATIVE = re.compile(r"^(?:enc|dec)\.blk\.(\d+)\.attn_rel_b\.weight$")


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A T5 config.json-style dict from `t5.*` metadata (checked by `config_from_hf`), the
    MLP's kind from the tensor table."""
    from attnscope.architectures.llama import gguf_value

    def get(suffix: str, default: Any = KeyError) -> Any:
        return gguf_value(meta, f"{arch}.{suffix}", default)

    heads, d_kv = get("attention.head_count"), get("attention.key_length")
    for key, value, same in (("attention.value_length", get("attention.value_length", d_kv), d_kv),
                             ("attention.head_count_kv", get("attention.head_count_kv", heads), heads)):
        if value != same:
            raise ConfigError(f"GGUF {arch}.{key} {_shown(value)} differs from its query side {_shown(same)}: "
                              "T5's attention has one head size and no grouped keys")
    late = sorted(n for n in shapes if (m := _GGUF_RELATIVE.match(n)) and m.group(1) != "0")
    if late:
        raise ConfigError(f"GGUF tensor {late[0]!r}: relative-position tables in layers past the first are "
                          "UMT5's per-layer tables, which attnscope does not run",
                          hint="attnscope reads T5, FLAN-T5 and mT5, whose stacks share one table each")
    encoder_only = arch == "t5encoder"
    if encoder_only and "output.weight" in shapes:
        raise ConfigError("a t5encoder GGUF with an output head: T5's encoder alone has none",
                          hint="convert the model as t5 (T5ForConditionalGeneration) to keep its head")
    gated = {stack: f"{stack}blk.0.ffn_gate.weight" in shapes for stack in GGUF_STACKS
             if any(n.startswith(stack) for n in shapes)}
    if len(set(gated.values())) > 1:
        raise ConfigError("the GGUF's encoder and decoder disagree on a gated feed-forward (ffn_gate in one only)")
    eps = get("attention.layer_norm_rms_epsilon")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ConfigError(f"GGUF {arch}.attention.layer_norm_rms_epsilon must be a small number, got {_shown(eps)}")
    n_layers = get("block_count")
    raw = {
        "model_type": "t5",
        "architectures": ["T5EncoderModel" if encoder_only else "T5ForConditionalGeneration"],
        "d_model": get("embedding_length"),
        "num_layers": n_layers,
        "num_decoder_layers": 0 if encoder_only else get("decoder_block_count", n_layers),
        "num_heads": heads,
        "d_kv": d_kv,
        "d_ff": get("feed_forward_length"),
        "n_positions": get("context_length", 512),
        "relative_attention_num_buckets": get("attention.relative_buckets_count"),
        "relative_attention_max_distance": _MAX_DISTANCE,
        "layer_norm_epsilon": eps,
        "feed_forward_proj": "gated-gelu" if gated.get("enc.") else "relu",
        "decoder_start_token_id": get("decoder_start_token_id", meta.get("tokenizer.ggml.padding_token_id", 0)),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id", 1),
    }
    eos = raw["eos_token_id"]
    if isinstance(eos, bool) or not isinstance(eos, int) or eos < 0:
        raise ConfigError(f"GGUF tokenizer.ggml.eos_token_id must be a token id, got {_shown(eos)}")
    return raw
