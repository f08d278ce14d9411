"""OLMo 2 and OLMo 3: Llama's projections and SwiGLU MLP, wired differently.

* No norm before attention or the MLP: each sublayer's *output* is normalised inside its
  residual branch, `x += N1(attn(x)); x += N2(mlp(x))` (wiring "post_sublayer"). Quirk:
  `post_attention_layernorm` is that N1 here, where in Llama the same name is the norm
  before the MLP.
* q and k are RMS-normalised over the whole projection (n_heads·d_head and
  n_kv_heads·d_head wide), before the split into heads and before RoPE (qk_norm
  "projection"; Qwen3's and Gemma 3's norms are per head).
* OLMo 3 adds sliding layers (`layer_types`; default: sliding but every fourth) with their
  own RoPE spec. transformers' `Olmo3Config.convert_rope_params_to_dict` gives a legacy
  top-level `rope_theta` and `rope_scaling` to the full layers only; sliding layers then
  rotate with 500000 unless `rope_parameters.sliding_attention` names a base. We reproduce
  that, not "fix" it. OLMo-3-7B's YaRN (factor 8 over 8,192 positions) thus turns only
  the full layers (`parts.positions`).

After transformers' models/olmo2 and models/olmo3 (configuration and modeling files) and
llama.cpp's `Olmo2Model` converter (one GGUF arch, `olmo2`, for both).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama
from attnscope.architectures._common import checkpoint_dtype, layer_kind, layer_windows, rope_settings
from attnscope.config import MAX_LAYERS, ModelConfig, _shown
from attnscope.errors import ConfigError
from attnscope.kinds import RopeSpec, Stack, freeze

MODEL_TYPES = ("olmo2", "olmo3")
PREFIXES = ("model.",)
DESCRIPTION = ("OLMo 2, OLMo 3: norms after attention and MLP (none before), q/k RMSNorm over the whole "
               "projection; OLMo 3 sliding layers")

# Llama's names, without the norm before attention (OLMo 2 has none), with the q/k norms
# over the whole projection and the norms after attention and after the MLP.
WEIGHTS: dict[str, str | None] = {
    **{hf: ours for hf, ours in llama.WEIGHTS.items() if hf != "layers.{layer}.input_layernorm.weight"},
    "layers.{layer}.self_attn.q_norm.weight": "blocks.{layer}.attn.q_norm.weight",
    "layers.{layer}.self_attn.k_norm.weight": "blocks.{layer}.attn.k_norm.weight",
    "layers.{layer}.post_attention_layernorm.weight": "blocks.{layer}.post_attn_norm.weight",
    "layers.{layer}.post_feedforward_layernorm.weight": "blocks.{layer}.post_mlp_norm.weight",
}

DEFAULT_THETA = 500000.0  # Olmo3Config.default_theta
DEFAULT_WINDOW = 4096  # Olmo3Config.sliding_window
_LAYER_TYPES = ("sliding_attention", "full_attention")


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling of a config (or of one layer type's dict): YaRN, which
    transformers' OLMo rotary takes and OLMo 3 ships, else what `rope_settings` reads."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or None
    if scaling is None and isinstance(params, dict) and params.get("rope_type", "default") != "default":
        scaling = params
    if not (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "yarn"):
        return rope_settings(raw)
    theta, _ = rope_settings({**raw, "rope_scaling": None,
                              "rope_parameters": {k: v for k, v in params.items() if k == "rope_theta"}
                              if isinstance(params, dict) else params})
    return theta, {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}


def _olmo3_rope(raw: dict[str, Any]) -> dict[str, tuple[float, dict[str, Any] | None]]:
    """Each layer type's RoPE base and scaling, as `Olmo3Config.convert_rope_params_to_dict`
    settles them: a legacy top-level `rope_theta` / `rope_scaling` reaches the full layers
    only; any type not named gets the default base 500000."""
    params = raw.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_parameters must be an object, got {_shown(params)}")
    legacy_scaling = raw.get("rope_scaling") or None
    out: dict[str, tuple[float, dict[str, Any] | None]] = {}
    for kind in _LAYER_TYPES:
        entry = params.get(kind) or {}
        if not isinstance(entry, dict):
            raise ConfigError(f"rope_parameters.{kind} must be an object, got {_shown(entry)}")
        entry = dict(entry)
        if kind == "full_attention":
            if legacy_scaling is not None:
                if not isinstance(legacy_scaling, dict):
                    raise ConfigError(f"rope_scaling must be an object, got {_shown(legacy_scaling)}")
                entry.update(legacy_scaling)
            entry.setdefault("rope_theta", raw.get("rope_theta", DEFAULT_THETA))
        else:
            entry.setdefault("rope_theta", DEFAULT_THETA)
        # transformers reads YaRN's `truncate` from the top level of rope_parameters, which
        # OLMo 3's nested form never has: always the default (true)
        entry.pop("truncate", None)
        # one layer type's dict read as a whole config's (base, then scaling checks)
        out[kind] = _rope({"rope_parameters": entry})
    return out


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    model_type = raw["model_type"]
    act = raw.get("hidden_act", "silu")
    if act not in llama._ACTIVATIONS:
        raise ConfigError(f"unsupported {model_type} hidden_act {act!r}")
    n_layers, n_heads = raw["num_hidden_layers"], raw["num_attention_heads"]
    if model_type == "olmo3":
        ropes = _olmo3_rope(raw)
        window = raw.get("sliding_window", DEFAULT_WINDOW)
        # a declared depth is bounded before a list is sized from it (ModelConfig then refuses it)
        depth = n_layers if isinstance(n_layers, int) and 0 < n_layers <= MAX_LAYERS else 0
        default = ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(depth)]
        windows = layer_windows(raw, n_layers, window, default) if depth else None
    else:
        ropes = {"full_attention": _rope(raw)}
        window, windows = None, None
    theta, scaling = ropes["full_attention"]
    bias = bool(raw.get("attention_bias", False))
    cfg = ModelConfig(
        name=name,
        family=model_type,
        d_model=raw["hidden_size"],
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        d_head=raw.get("head_dim") or 0,
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 2048),
        positions="rope",
        norm="rmsnorm",
        norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        act=llama._ACTIVATIONS[act],
        # every layer: OLMo's norms after the sublayers and q/k norms over the whole projection
        layer_template=layer_kind("post_sublayer", mlp="gated", qkv_bias=bias, out_bias=bias, qk_norm="projection"),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window if windows is not None else None,
        layer_windows=windows,
        dtype=checkpoint_dtype(raw),
    )
    # Each window with its own RoPE.
    base = cfg.layer(0)
    rotary = cfg.d_head

    def spec(w: int | None) -> Any:
        theta, scaling = ropes["sliding_attention" if w is not None else "full_attention"]
        rope = RopeSpec(float(theta), rotary, freeze(scaling) if scaling else None)
        return base.with_attn(window=w, rope=rope)

    specs = {w: spec(w) for w in set(windows or [None])}
    return replace(cfg, kinds=Stack.of(specs[w] for w in (windows or [None] * n_layers)))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's olmo2 architecture serves both: TextModel's keys, NEOX RoPE (no q/k
# permutation), no attn_norm / ffn_norm; `post_attention_norm` and `post_ffw_norm` after
# the sublayers, `attn_q_norm` / `attn_k_norm` over the whole projection. OLMo 3 adds
# `attention.sliding_window` and a per-layer `attention.sliding_window_pattern` (true =
# sliding); llama.cpp rotates every layer with `rope.freq_base` (or `rope.freq_base_swa`
# on sliding layers, where a file names one).

GGUF_ARCHS = ("olmo2",)

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "blk.{layer}.attn_q.weight": "blocks.{layer}.attn.q.weight",
    "blk.{layer}.attn_k.weight": "blocks.{layer}.attn.k.weight",
    "blk.{layer}.attn_v.weight": "blocks.{layer}.attn.v.weight",
    "blk.{layer}.attn_output.weight": "blocks.{layer}.attn.o.weight",
    "blk.{layer}.attn_q_norm.weight": "blocks.{layer}.attn.q_norm.weight",
    "blk.{layer}.attn_k_norm.weight": "blocks.{layer}.attn.k_norm.weight",
    "blk.{layer}.post_attention_norm.weight": "blocks.{layer}.post_attn_norm.weight",
    "blk.{layer}.post_ffw_norm.weight": "blocks.{layer}.post_mlp_norm.weight",
    "blk.{layer}.ffn_gate.weight": "blocks.{layer}.mlp.gate.weight",
    "blk.{layer}.ffn_up.weight": "blocks.{layer}.mlp.up.weight",
    "blk.{layer}.ffn_down.weight": "blocks.{layer}.mlp.down.weight",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "unembed.weight",
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A config.json-style dict: `olmo2`, or `olmo3` where the file names a window."""
    raw = llama.config_from_gguf(meta, arch, shapes)
    if "rope_scaling" in raw:
        kind = raw.pop("rope_scaling")["rope_type"]
        raise ConfigError(f"GGUF rope scaling {kind!r} in an olmo2 file is not supported",
                          hint="attnscope reads OLMo 2/3 GGUFs without RoPE scaling")
    raw["model_type"] = "olmo2"
    window = meta.get(f"{arch}.attention.sliding_window")
    if not window:
        return raw
    n_layers = raw["num_hidden_layers"]
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise ConfigError(f"GGUF sliding_window_pattern lists {len(pattern)} layers, not {n_layers}")
        sliding = [bool(p) for p in pattern]
    else:  # llama.cpp's default for this arch: three sliding layers, then a full one
        sliding = [(i + 1) % 4 != 0 for i in range(n_layers)]
    theta = raw.pop("rope_theta")
    swa_theta = meta.get(f"{arch}.rope.freq_base_swa", theta)
    raw.update(
        model_type="olmo3",
        sliding_window=window,
        layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": theta},
                         "sliding_attention": {"rope_type": "default", "rope_theta": swa_theta}},
    )
    return raw
