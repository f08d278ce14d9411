"""Gemma 3: Gemma 2's block (four norms per layer, (1 + w) RMSNorm, embeddings × √d
rounded to the dtype, GeGLU, tied unembedding, `query_pre_attn_scalar`) plus a per-head
RMSNorm on queries and keys before RoPE, and two kinds of layer: local ones (a sliding
window, RoPE base `rope_local_base_freq`, default 10^4) and global ones (full causal
attention, RoPE base `rope_theta`, default 10^6, and the file's `rope_scaling` — linear ×8
on gemma-3-4b and -12b — which transformers merges into the global kind only). No
soft-caps unless the file sets them.

After transformers' configuration_gemma3.py / modeling_gemma3.py (5.x):
  * layer kinds: `layer_types`, else `sliding_window_pattern` P (default 6: local unless
    (i + 1) % P == 0); the `_sliding_window_pattern` key newer files carry is never read;
  * RoPE per kind: `rope_parameters` nested by kind, or the legacy top-level keys;
  * `gemma3` (multimodal) checkpoints: the text tower's settings under `text_config`
    (the Hub's files list only the non-default ones there, so Gemma3TextConfig's defaults
    fill the rest), its weights under `language_model.model.` on disk
    (`model.language_model.` in memory); the vision tower and projector are not read.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import gemma2, qwen3
from attnscope.architectures._common import layer_windows
from attnscope.architectures.gemma import gemma_config
from attnscope.config import ModelConfig, _check_booleans, _number, _positive_int, _shown
from attnscope.errors import ConfigError
from attnscope.kinds import RopeSpec, Stack, freeze

MODEL_TYPES = ("gemma3_text", "gemma3")
PREFIXES = ("model.", "language_model.model.", "model.language_model.")
DESCRIPTION = ("Gemma 3: Gemma 2's block + per-head q/k RMSNorm, local (window, own RoPE base) "
               "and global layers (rope scaling)")

_QK_NORMS = {k: v for k, v in qwen3.WEIGHTS.items() if ".q_norm." in k or ".k_norm." in k}
WEIGHTS: dict[str, str | None] = {**gemma2.WEIGHTS, **_QK_NORMS}

# Gemma3TextConfig's defaults: what a config.json (or a `text_config`) may leave out.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "attention_bias": False, "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
}
GLOBAL_THETA, LOCAL_THETA = 1_000_000.0, 10_000.0  # Gemma3TextConfig.default_theta
PATTERN = 6  # sliding_window_pattern's default (and llama.cpp's fixed one)
_KINDS = ("full_attention", "sliding_attention")


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The text tower's settings: a `gemma3_text` file itself, or a `gemma3` file's
    `text_config`, each over Gemma3TextConfig's defaults."""
    if raw.get("model_type") != "gemma3":
        return {**TEXT_DEFAULTS, **raw}
    text = raw.get("text_config") or {}
    if not isinstance(text, dict):
        raise ConfigError(f"gemma3 text_config must be an object, got {_shown(text)}")
    _check_booleans(text, "gemma3 text_config")  # from_hf_config checked the top level only
    dtype = {k: raw[k] for k in ("dtype", "torch_dtype") if k in raw}
    tie = {"tie_word_embeddings": raw["tie_word_embeddings"]} if "tie_word_embeddings" in raw else {}
    return {**TEXT_DEFAULTS, **dtype, **tie, **text, "model_type": "gemma3_text"}


def _layer_types(text: dict[str, Any], n_layers: int) -> list[str]:
    """`layer_types`, else every `sliding_window_pattern`-th layer global."""
    if text.get("layer_types") is not None:
        return text["layer_types"]  # checked by _common.layer_windows
    pattern = text.get("sliding_window_pattern", PATTERN)
    if not _positive_int(pattern):
        raise ConfigError(f"gemma3 sliding_window_pattern must be a positive integer, got {_shown(pattern)}")
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]


def _rope(params: Any, kind: str, d_head: int) -> RopeSpec:
    """One kind's RopeSpec from its rope_parameters entry: default, or linear scaling."""
    theta = params.get("rope_theta")
    if not _number(theta):
        raise ConfigError(f"gemma3 {kind} rope_theta must be a finite number, got {_shown(theta)}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return RopeSpec(float(theta), d_head)
    if rope_type != "linear":
        raise ConfigError(f"unsupported gemma3 rope scaling {_shown(rope_type)}", hint="supported: linear")
    factor = params.get("factor")
    if not _number(factor) or factor <= 0:
        raise ConfigError(f"gemma3 linear rope scaling factor must be a finite positive number, got {_shown(factor)}")
    return RopeSpec(float(theta), d_head, freeze({"rope_type": "linear", "factor": float(factor)}))


def _ropes(text: dict[str, Any], d_head: int) -> dict[str, RopeSpec]:
    """RoPE per layer kind, as Gemma3TextConfig.convert_rope_params_to_dict reads it:
    nested `rope_parameters`, then the legacy keys for what they lack (`rope_theta` and
    `rope_scaling` reach the global kind only, `rope_local_base_freq` the local one)."""
    params = text.get("rope_parameters") or {}
    if not isinstance(params, dict) or (params and not set(params) & set(_KINDS)):
        raise ConfigError(f"gemma3 rope_parameters must be an object per layer kind ({', '.join(_KINDS)}), "
                          f"got {_shown(params)}")
    for kind in _KINDS:
        if params.get(kind) is not None and not isinstance(params[kind], dict):
            raise ConfigError(f"gemma3 rope_parameters[{kind!r}] must be an object, got {_shown(params[kind])}")
    full = dict(params.get("full_attention") or {"rope_type": "default"})
    scaling = text.get("rope_scaling")
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise ConfigError(f"gemma3 rope_scaling must be an object, got {_shown(scaling)}")
        full.update(scaling)
    full.setdefault("rope_theta", text.get("rope_theta", GLOBAL_THETA))
    local = dict(params.get("sliding_attention") or {"rope_type": "default"})
    local.setdefault("rope_theta", text.get("rope_local_base_freq", LOCAL_THETA))
    return {"full_attention": _rope(full, "full_attention", d_head),
            "sliding_attention": _rope(local, "sliding_attention", d_head)}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    text = text_config(raw)
    as_gemma = {k: v for k, v in text.items() if k not in ("rope_parameters", "rope_scaling", "rope_theta")}
    cfg = gemma_config(as_gemma, name, "gemma3")
    n_layers = cfg.n_layers
    types = _layer_types(text, n_layers)
    window = text.get("sliding_window")
    windows = layer_windows({"layer_types": types}, n_layers, window)
    scalar = text.get("query_pre_attn_scalar")
    if not _number(scalar) or scalar <= 0:
        raise ConfigError(f"gemma3 query_pre_attn_scalar must be a finite positive number, got {_shown(scalar)}")
    cap, final = text.get("attn_logit_softcapping"), text.get("final_logit_softcapping")
    cfg = replace(
        cfg,
        layer_windows=windows,
        sliding_window=window,
        attn_scale=float(scalar) ** -0.5,
        attn_softcap=float(cap) if cap else None,
        final_softcap=float(final) if final else None,
        layer_template=replace(cfg.layer_template, wiring="sandwich").with_attn(qk_norm="head"),
    )
    ropes = _ropes(text, cfg.d_head)
    cfg = replace(cfg, rope_theta=ropes["full_attention"].theta)
    # flat fields: what every layer shares; each layer's RoPE comes from its kind
    made: dict[tuple[int, str], Any] = {}  # one spec per (kind, layer type), not one per layer: 10^5 layers stay fast

    def kind(i: int, t: str) -> Any:
        layer = cfg.layer(i)
        key = (id(layer), t)
        if key not in made:
            made[key] = layer.with_attn(rope=ropes[t])
        return made[key]

    return replace(cfg, kinds=Stack.of(kind(i, t) for i, t in enumerate(types)))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's gemma3 architecture (convert_hf_to_gguf.py's Gemma3Model, src/llama-model.cpp):
# Gemma 2's tensor names plus the per-head q/k norms, every norm stored + 1, no output
# tensor (tied). The file holds the global RoPE base, the window (absent or 0: no local
# layers), and a rope scaling if the model has one; llama.cpp fixes the rest: pattern 6,
# local base 10^4 without scaling, and the score scale 1/sqrt(head size), except for the
# 62-layer 27B (1/sqrt(width / heads), after gemma_pytorch).

GGUF_ARCHS = ("gemma3",)

GGUF_WEIGHTS: dict[str, str | None] = {
    **gemma2.GGUF_WEIGHTS,
    "blk.{layer}.attn_q_norm.weight": "blocks.{layer}.attn.q_norm.weight",
    "blk.{layer}.attn_k_norm.weight": "blocks.{layer}.attn.k_norm.weight",
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from attnscope.architectures import llama

    raw = llama.config_from_gguf(meta, arch, shapes)
    raw["model_type"] = "gemma3_text"
    raw["hidden_act"] = "gelu_pytorch_tanh"
    scaling = raw.pop("rope_scaling", None)
    if scaling is not None:  # llama.cpp scales the global layers only
        raw["rope_scaling"] = {"rope_type": scaling["rope_type"], "factor": scaling["factor"]}
    final = llama.gguf_value(meta, f"{arch}.final_logit_softcapping", None)
    if final:
        raw["final_logit_softcapping"] = final
    window = llama.gguf_value(meta, f"{arch}.attention.sliding_window", None)
    if window:
        raw["sliding_window"] = window
        raw["sliding_window_pattern"] = PATTERN
    else:
        raw["sliding_window"] = None
        raw["layer_types"] = ["full_attention"] * raw["num_hidden_layers"]
    raw["rope_local_base_freq"] = LOCAL_THETA
    head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    raw["query_pre_attn_scalar"] = (raw["hidden_size"] // raw["num_attention_heads"]
                                    if raw["num_hidden_layers"] == 62 else head_dim)
    return raw


gguf_tensor = gemma2.gguf_tensor
