"""BART and mBART: encoder-decoders (two stacks, `ModelConfig.decoder`, `attnscope.seq2seq`)
with learned positions and LayerNorm.

Both stacks embed tokens from one shared table (times √d_model where `scale_embedding`),
add learned positions from a table of their own whose row for position p is p + 2 (the
padding offset, as OPT's), and normalise the sum (`layernorm_embedding`). Every projection
has a bias; scores are scaled by 1/√d_head. BART's blocks are post-norm (x = norm(x +
sublayer(x)), the cross-attention between self-attention and MLP) with no final norm;
mBART's are pre-norm and each stack ends in its own LayerNorm (`layer_norm`). Encoder and
decoder may differ in depth, heads and MLP width. BartForConditionalGeneration adds
`final_logits_bias` to the logits (a buffer in transformers: loaded, not counted); its head
is the shared table. The decoder starts from `decoder_start_token_id` (BART: `</s>`, 2).

After transformers' modeling_bart.py and modeling_mbart.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig, _shown
from attnscope.errors import ConfigError
from attnscope.kinds import Stack

MODEL_TYPES = ("bart", "mbart")
PREFIXES = ("model.",)
DESCRIPTION = "BART, mBART: encoder-decoder, learned positions (offset 2), post-norm (BART) or pre-norm (mBART)"

OFFSET = 2  # BartLearnedPositionalEmbedding: position p reads row p + 2
_BP = ("weight", "bias")
_ATTN = {f"{hf}_proj": ours for hf, ours in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o"))}
_LAYER = {**{f"self_attn.{hf}": f"attn.{ours}" for hf, ours in _ATTN.items()},
          "self_attn_layer_norm": "attn_norm", "fc1": "mlp.up", "fc2": "mlp.down", "final_layer_norm": "mlp_norm"}
_CROSS = {**{f"encoder_attn.{hf}": f"cross.{ours}" for hf, ours in _ATTN.items()}, "encoder_attn_layer_norm": "cross_norm"}
WEIGHTS: dict[str, str | None] = {
    "shared.weight": "embed.tok.weight",
    "encoder.embed_tokens.weight": None,  # tied to shared.weight
    "decoder.embed_tokens.weight": None,  # tied to shared.weight
    "encoder.embed_positions.weight": "embed.pos.weight",
    "decoder.embed_positions.weight": "decoder.embed.pos.weight",
    **{f"encoder.layernorm_embedding.{p}": f"embed.norm.{p}" for p in _BP},
    **{f"decoder.layernorm_embedding.{p}": f"decoder.embed.norm.{p}" for p in _BP},
    **{f"encoder.layer_norm.{p}": f"final_norm.{p}" for p in _BP},  # mBART
    **{f"decoder.layer_norm.{p}": f"decoder.final_norm.{p}" for p in _BP},  # mBART
    **{f"encoder.layers.{{layer}}.{hf}.{p}": f"blocks.{{layer}}.{ours}.{p}" for hf, ours in _LAYER.items() for p in _BP},
    **{f"decoder.layers.{{layer}}.{hf}.{p}": f"decoder.blocks.{{layer}}.{ours}.{p}"
       for hf, ours in {**_LAYER, **_CROSS}.items() for p in _BP},
    "lm_head.weight": "unembed.weight",  # absent from the shapes: tied to the shared table
    "final_logits_bias": "logits_bias",
}

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}


def _positive(raw: dict[str, Any], key: str, default: Any = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{raw.get('model_type')}'s {key} must be a positive integer, got {_shown(value)}")
    return value


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    kind = raw.get("model_type")
    act = raw.get("activation_function", "gelu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported {kind} activation_function {_shown(act)}", hint=f"supported: {', '.join(_ACTIVATIONS)}")
    d_model = _positive(raw, "d_model", 1024)
    enc_heads, dec_heads = _positive(raw, "encoder_attention_heads", 16), _positive(raw, "decoder_attention_heads", 16)
    for heads in (enc_heads, dec_heads):
        if d_model % heads:
            raise ConfigError(f"{kind}'s {heads} attention heads do not divide d_model {d_model}")
    scale = raw.get("scale_embedding", False)
    if not isinstance(scale, bool):
        raise ConfigError(f"{kind}'s scale_embedding must be true or false, got {_shown(scale)}")
    archs = raw.get("architectures") or ["BartModel"]
    generation = isinstance(archs, list) and any(isinstance(a, str) and "ConditionalGeneration" in a for a in archs)
    start = raw.get("decoder_start_token_id", 2)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"{kind}'s decoder_start_token_id must be a token id, got {_shown(start)}")
    pre = kind == "mbart"
    template = layer_kind("pre" if pre else "post", qkv_bias=True, out_bias=True, mlp_bias=True)
    cfg = ModelConfig(
        name=name,
        family=kind,
        d_model=d_model,
        n_layers=_positive(raw, "encoder_layers", 12),
        n_heads=enc_heads,
        d_mlp=_positive(raw, "encoder_ffn_dim", 4096),
        vocab_size=_positive(raw, "vocab_size"),
        n_ctx=_positive(raw, "max_position_embeddings", 1024),
        pos_offset=OFFSET,
        causal=False,  # the encoder; the decoder's layers are causal
        positions="learned",
        norm="layernorm",
        norm_eps=1e-5,  # nn.LayerNorm's default: BART's config has no key for it
        embed_norm=True,
        final_norm=pre,
        act=_ACTIVATIONS[act],
        embed_multiplier=d_model ** 0.5 if scale else None,
        lm_head=True,
        tied_embeddings=True,
        heads=("logits_bias",) if generation else (),
        layer_template=template,
        dtype=checkpoint_dtype(raw),
        extra={"decoder_start_token_id": start, "eos_token_id": raw.get("eos_token_id", 2)},
    )
    if start >= cfg.vocab_size:
        raise ConfigError(f"{kind}'s decoder_start_token_id {start} is outside the vocabulary of {cfg.vocab_size}")
    encoder = cfg.layer(0)
    self_attn = replace(encoder.attn, n_heads=dec_heads, n_kv_heads=dec_heads, d_head=d_model // dec_heads, causal=True)
    decoder = replace(encoder, attn=self_attn, cross=replace(self_attn, causal=False),
                      mlp=replace(encoder.mlp, d_mlp=_positive(raw, "decoder_ffn_dim", 4096)))
    return replace(cfg, decoder=Stack(((decoder, _positive(raw, "decoder_layers", 12)),)))
