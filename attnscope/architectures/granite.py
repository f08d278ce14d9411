"""Granite (3.x dense): Llama's block and weight names, plus four multipliers
(transformers' configuration_granite.py and modeling_granite.py, defaults 1.0):

- `embedding_multiplier`: the token embeddings are multiplied by it;
- `attention_multiplier`: the score scale itself, *in place of* 1/sqrt(head size)
  (granite-3.3-2b: 1/64, eight times smaller than 1/sqrt(64));
- `residual_multiplier`: each sublayer's output is multiplied by it before the
  residual add, on both branches (the layer kind's `residual_scale`);
- `logits_scaling`: the logits are *divided* by it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama
from attnscope.config import ModelConfig, _number
from attnscope.errors import ConfigError
from attnscope.kinds import Stack

MODEL_TYPES = ("granite",)
PREFIXES = ("model.",)
DESCRIPTION = "Granite 3: Llama layout + embedding, attention, residual multipliers and logit scaling"

WEIGHTS: dict[str, str | None] = dict(llama.WEIGHTS)

# config.json key -> what it becomes; each defaults to 1.0, as in GraniteConfig.
MULTIPLIERS = ("embedding_multiplier", "attention_multiplier", "residual_multiplier", "logits_scaling")


def _multiplier(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key, 1.0)
    if not _number(value) or value <= 0:
        raise ConfigError(f"config.json's {key} must be a finite positive number, got {value!r:.60}")
    return float(value)


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    embed, attn, resid, logits = (_multiplier(raw, key) for key in MULTIPLIERS)
    cfg = replace(llama.config_from_hf(raw, name), attn_scale=attn,
                  embed_multiplier=None if embed == 1.0 else embed,
                  logits_divisor=None if logits == 1.0 else logits)
    if resid == 1.0:
        return cfg
    return replace(cfg, kinds=Stack(tuple((replace(spec, residual_scale=resid), n) for spec, n in cfg.stack.runs)))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's granite architecture: Llama's tensor names, q/k rows permuted by the
# converter (GraniteModel is a LlamaModel: NORM RoPE), `head_dim` dropped, and the four
# multipliers written as `granite.attention.scale`, `.embedding_scale`, `.residual_scale`
# and `.logit_scale`, each only when non-zero. llama.cpp reads an absent attention scale
# as 1/sqrt(head size) and the others as no scaling.

GGUF_ARCHS = ("granite",)

GGUF_WEIGHTS: dict[str, str | None] = dict(llama.GGUF_WEIGHTS)

_GGUF_KEYS = {"attention.scale": "attention_multiplier", "embedding_scale": "embedding_multiplier",
              "residual_scale": "residual_multiplier", "logit_scale": "logits_scaling"}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    raw = llama.config_from_gguf(meta, arch, shapes)
    raw["model_type"] = "granite"
    raw["attention_bias"] = "blk.0.attn_q.bias" in shapes
    raw["mlp_bias"] = "blk.0.ffn_up.bias" in shapes
    for suffix, key in _GGUF_KEYS.items():
        value = llama.gguf_value(meta, f"{arch}.{suffix}", None)
        if value:
            raw[key] = value
    if "attention_multiplier" not in raw:
        head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
        raw["attention_multiplier"] = head_dim ** -0.5
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """Undo the converter's q/k row permutation, exactly as for llama.cpp's `llama`."""
    return llama.gguf_tensor(name, tensor, cfg, "llama")
