"""Gemma 4 (`gemma4_text`, and the text tower of `gemma4` checkpoints): Gemma 3's sandwich
block and local/global layers, with these differences (transformers' configuration_gemma4.py
and modeling_gemma4.py, 5.x):

  * RMSNorm scales by its weight, not (1 + weight); a scale-free RMSNorm on each value head;
  * no score scale (q and k are RMS-normed per head: the scale is 1), no attention soft-cap;
  * global layers have their own head size (`global_head_dim`, default 512) and, where
    `attention_k_eq_v` is set, their own key/value heads (`num_global_key_value_heads`) and
    no v projection: the values are the key projection (before its norm and RoPE);
  * global RoPE is "proportional": a full-width RoPE of which only the first
    `partial_rotary_factor` of the frequencies turn (parts.positions);
  * the last `num_kv_shared_layers` layers project only queries and read the keys and values
    of the last earlier layer of their own kind (`AttnSpec.kv_source`); their MLP is twice
    as wide where `use_double_wide_mlp`;
  * per-layer input embeddings (`hidden_size_per_layer_input` > 0: E2B, E4B): one table and
    one projection give each layer its own input, gated in after the MLP (`kinds.PerLayerSpec`);
  * each block's output × a stored `layer_scalar`;
  * the default layer pattern: local unless (i + 1) % 6 == 0, the last layer always global.

  * the MoE block (`enable_moe_block`, 26B-A4B), on every layer: the dense MLP (on the MLP
    norm, then its own post-norm `post_feedforward_layernorm_1`) beside `num_experts`
    gated experts of width `moe_intermediate_size` (on their own pre- and post-norm
    `pre/post_feedforward_layernorm_2`), summed before the block's MLP post-norm. The router
    reads the un-normed residual: a weightless RMSNorm, × a learned `scale` per dimension
    and 1/√d, a softmax over all experts, the `top_k_experts` best renormalised to sum 1,
    each × its expert's `per_expert_scale` (wiring "sandwich_moe", `ExpertSpec.d_dense`,
    `router_norm`, `expert_scale`). The experts' fused `gate_up_proj` [E, 2w, d]: gate rows first.

Refused: `use_bidirectional_attention` "all". "vision" changes only image tokens: text is causal.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import gemma3, mixtral
# GGUF (llama.cpp's gemma4) lives in _gemma4_gguf; re-exported here, where the registry looks.
from attnscope.architectures._gemma4_gguf import (  # noqa: F401
    GGUF_ARCHS, GGUF_WEIGHTS, _per_layer, config_from_gguf, gguf_config_tensors, gguf_rope_scaling, gguf_tensor,
)
from attnscope.architectures._common import layer_windows
from attnscope.architectures.gemma import gemma_config
from attnscope.config import ModelConfig, _check_booleans, _number, _shown
from attnscope.errors import ConfigError
from attnscope.kinds import ExpertSpec, MlpSpec, PerLayerSpec, RopeSpec, Stack, freeze

MODEL_TYPES = ("gemma4_text", "gemma4")
PREFIXES = ("model.", "language_model.model.", "model.language_model.")
DESCRIPTION = ("Gemma 4: Gemma 3's local/global layers, wider global heads (keys as values), KV-shared "
               "last layers, per-layer input embeddings, a dense MLP beside experts (26B-A4B)")

WEIGHTS: dict[str, str | None] = {
    **gemma3.WEIGHTS,
    "embed_tokens_per_layer.weight": "per_layer.tok.weight",
    "per_layer_model_projection.weight": "per_layer.proj.weight",
    "per_layer_projection_norm.weight": "per_layer.norm.weight",
    "layers.{layer}.per_layer_input_gate.weight": "blocks.{layer}.ple_gate.weight",
    "layers.{layer}.per_layer_projection.weight": "blocks.{layer}.ple_proj.weight",
    "layers.{layer}.post_per_layer_input_norm.weight": "blocks.{layer}.ple_norm.weight",
    "layers.{layer}.layer_scalar": "blocks.{layer}.layer_scalar",
    # the MoE block (26B-A4B): the dense MLP keeps mlp.gate_proj/up_proj/down_proj (Gemma 3's names)
    "layers.{layer}.router.proj.weight": "blocks.{layer}.mlp.router.weight",
    "layers.{layer}.router.scale": "blocks.{layer}.mlp.router.scale",
    "layers.{layer}.router.per_expert_scale": "blocks.{layer}.mlp.router.expert_scale",
    "layers.{layer}.experts.gate_up_proj": "blocks.{layer}.mlp.experts.gate_up.weight",
    "layers.{layer}.experts.down_proj": "blocks.{layer}.mlp.experts.down.weight",
    "layers.{layer}.post_feedforward_layernorm_1.weight": "blocks.{layer}.mlp.dense_post_norm.weight",
    "layers.{layer}.pre_feedforward_layernorm_2.weight": "blocks.{layer}.mlp.experts_norm.weight",
    "layers.{layer}.post_feedforward_layernorm_2.weight": "blocks.{layer}.mlp.experts_post_norm.weight",
}

# The experts' fused gate_up_proj [E, 2w, d] (gate rows first) into our gate and up [E, w, d].
stored_parts = mixtral.stored_parts
split = mixtral.split

# Gemma4TextConfig's defaults: what a config.json (or a `text_config`) may leave out.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "attention_bias": False, "sliding_window": 512,
    "final_logit_softcapping": None, "vocab_size_per_layer_input": 262_144, "hidden_size_per_layer_input": 256,
    "attention_k_eq_v": False, "num_kv_shared_layers": 0, "enable_moe_block": False,
    "use_double_wide_mlp": False, "global_head_dim": 512, "num_global_key_value_heads": None,
    "num_experts": None, "top_k_experts": None, "moe_intermediate_size": None,
}
PATTERN = 6
DEFAULT_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                   "rope_theta": 1_000_000.0}}
_KINDS = ("full_attention", "sliding_attention")


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The text tower's settings: a `gemma4_text` file itself, or a `gemma4` file's
    `text_config`, each over Gemma4TextConfig's defaults."""
    if raw.get("model_type") != "gemma4":
        return {**TEXT_DEFAULTS, **raw}
    text = raw.get("text_config") or {}
    if not isinstance(text, dict):
        raise ConfigError(f"gemma4 text_config must be an object, got {_shown(text)}")
    _check_booleans(text, "gemma4 text_config")
    dtype = {k: raw[k] for k in ("dtype", "torch_dtype") if k in raw}
    tie = {"tie_word_embeddings": raw["tie_word_embeddings"]} if "tie_word_embeddings" in raw else {}
    return {**TEXT_DEFAULTS, **dtype, **tie, **text, "model_type": "gemma4_text"}


def _layer_types(text: dict[str, Any], n_layers: int) -> list[str]:
    """`layer_types`, else every sixth layer global; the last layer global either way."""
    types = text.get("layer_types")
    if types is None:
        types = ["sliding_attention" if (i + 1) % PATTERN else "full_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers or any(t not in _KINDS for t in types):
        raise ConfigError(f"gemma4 layer_types must list sliding_attention or full_attention for each of the "
                          f"{n_layers} layers, got {_shown(types)}")
    return types[:-1] + ["full_attention"]  # as Gemma4TextConfig forces it


def _rope(params: Any, kind: str, d_head: int) -> RopeSpec:
    """One kind's RopeSpec: default, or proportional (a share of the frequencies turning)."""
    if not isinstance(params, dict):
        raise ConfigError(f"gemma4 rope_parameters[{kind!r}] must be an object, got {_shown(params)}")
    theta = params.get("rope_theta")
    if not _number(theta):
        raise ConfigError(f"gemma4 {kind} rope_theta must be a finite number, got {_shown(theta)}")
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        return RopeSpec(float(theta), d_head)
    if rope_type != "proportional":
        raise ConfigError(f"unsupported gemma4 rope type {_shown(rope_type)}", hint="supported: default, proportional")
    share, factor = params.get("partial_rotary_factor", 1.0), params.get("factor", 1.0)
    if not _number(share) or not 0 <= share <= 1 or not _number(factor) or factor <= 0:
        raise ConfigError(f"gemma4 proportional RoPE needs a partial_rotary_factor from 0 to 1 and a positive "
                          f"factor, got {_shown(params)}")
    scaling = {"rope_type": "proportional", "partial_rotary_factor": float(share), "factor": float(factor)}
    return RopeSpec(float(theta), d_head, freeze(scaling))


def _sources(types: list[str], shared: int) -> list[int | None]:
    """Each layer's key/value owner: None for the first L − shared layers, else the last of
    those of its own kind (transformers' kv_sharing_modes)."""
    n = len(types)
    first = n - shared
    out: list[int | None] = [None] * n
    last = {t: i for i, t in enumerate(types[:first])}  # the last earlier layer of each kind
    for i in range(first, n):
        if types[i] not in last:
            raise ConfigError(f"gemma4 layer {i} ({types[i]}) shares keys and values, but no earlier layer of its "
                              f"kind owns any (num_kv_shared_layers {shared} of {n})")
        out[i] = last[types[i]]
    return out


def _overrides(text: dict[str, Any], types: list[str], k_eq_v: bool) -> dict[int, dict[str, int]]:
    """Each layer's own head size and key/value heads where they differ from the model's:
    a file's `per_layer_config` ({"layer": {"head_dim": …, "num_key_value_heads": …}}, as
    transformers 5 writes it), else the Hub file's `global_head_dim` (default 512) and,
    where `attention_k_eq_v`, `num_global_key_value_heads` for every global layer."""
    given = text.get("per_layer_config")
    if given is None:
        own: dict[str, int] = {"head_dim": _int(text, "global_head_dim")}
        if k_eq_v and text.get("num_global_key_value_heads") is not None:
            own["num_key_value_heads"] = _int(text, "num_global_key_value_heads")
        return {i: own for i, t in enumerate(types) if t == "full_attention"}
    if not isinstance(given, dict):
        raise ConfigError(f"gemma4 per_layer_config must be an object by layer, got {_shown(given)}")
    out: dict[int, dict[str, int]] = {}
    for layer, values in given.items():
        index = int(layer) if isinstance(layer, str) and layer.isdecimal() and len(layer) < 7 else -1
        if not 0 <= index < len(types) or not isinstance(values, dict) or not set(values) <= {
                "head_dim", "num_key_value_heads"}:
            raise ConfigError(f"gemma4 per_layer_config must map layer indices to head_dim and "
                              f"num_key_value_heads, got {_shown({layer: values})}")
        out[index] = {key: _int(values, key) for key in values}
    return out


def _int(text: dict[str, Any], key: str, least: int = 1) -> int:
    value = text.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 2**31:
        raise ConfigError(f"gemma4 {key} must be an integer from {least} up to 2**31, got {_shown(value)}")
    return value


def _experts(text: dict[str, Any]) -> tuple[int, ExpertSpec]:
    """The MoE block's routed experts' width and their ExpertSpec (the dense width beside
    them is filled in per layer)."""
    try:
        n, top_k, width = (_int(text, key) for key in ("num_experts", "top_k_experts", "moe_intermediate_size"))
    except ConfigError as e:
        raise ConfigError(f"{e.message} (enable_moe_block needs num_experts, top_k_experts and "
                          f"moe_intermediate_size)") from None
    if top_k > n:
        raise ConfigError(f"gemma4 top_k_experts ({top_k}) must not exceed num_experts ({n})")
    routed = ExpertSpec(n_experts=n, top_k=top_k, router="softmax_topk", norm_topk_prob=True,
                        router_norm=True, expert_scale=True)
    return width, routed


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    text = text_config(raw)
    bidirectional = text.get("use_bidirectional_attention")
    if bidirectional not in (None, "vision"):
        raise ConfigError(f"gemma4 use_bidirectional_attention {_shown(bidirectional)} is not supported",
                          hint="supported: none, or 'vision' (text tokens stay causal)")
    skip = ("rope_parameters", "rope_scaling", "rope_theta", "use_bidirectional_attention", "layer_types")
    cfg = gemma_config({k: v for k, v in text.items() if k not in skip}, name, "gemma4")
    n_layers = cfg.n_layers
    types = _layer_types(text, n_layers)
    window = text.get("sliding_window")
    final = text.get("final_logit_softcapping")
    if final is not None and not (_number(final) and final >= 0):
        raise ConfigError(f"gemma4 final_logit_softcapping must be a finite number, got {_shown(final)}")
    cfg = replace(
        cfg,
        layer_windows=layer_windows({"layer_types": types}, n_layers, window),
        sliding_window=window,
        attn_scale=1.0,  # q and k are RMS-normed per head: no 1/√d
        final_softcap=float(final) if final else None,
        norm_offset=0.0,  # Gemma 4's RMSNorm scales by w, not 1 + w
        layer_template=replace(cfg.layer_template, wiring="sandwich", out_scalar=True).with_attn(
            qk_norm="head", v_norm=True),
    )
    k_eq_v = text.get("attention_k_eq_v")
    if not isinstance(k_eq_v, bool):
        raise ConfigError(f"gemma4 attention_k_eq_v must be true or false, got {_shown(k_eq_v)}")
    overrides = _overrides(text, types, k_eq_v)
    global_dim = next((o["head_dim"] for i, o in overrides.items() if types[i] == "full_attention"
                       and "head_dim" in o), cfg.d_head)
    params = text.get("rope_parameters") or DEFAULT_ROPE
    if not isinstance(params, dict) or not set(params) >= set(_KINDS):
        raise ConfigError(f"gemma4 rope_parameters must be an object per layer kind ({', '.join(_KINDS)}), "
                          f"got {_shown(params)}")
    ropes = {"sliding_attention": _rope(params["sliding_attention"], "sliding_attention", cfg.d_head),
             "full_attention": _rope(params["full_attention"], "full_attention", global_dim)}
    cfg = replace(cfg, rope_theta=ropes["sliding_attention"].theta)
    shared = _int(text, "num_kv_shared_layers", least=0)
    if shared >= n_layers:
        raise ConfigError(f"gemma4 num_kv_shared_layers ({shared}) must leave a layer of each kind owning its "
                          f"keys and values ({n_layers} layers)")
    sources = _sources(types, shared)
    width = _int(text, "hidden_size_per_layer_input", least=0)
    per_layer = PerLayerSpec(width, _int(text, "vocab_size_per_layer_input")) if width else None
    double = text.get("use_double_wide_mlp")
    if not isinstance(double, bool):
        raise ConfigError(f"gemma4 use_double_wide_mlp must be true or false, got {_shown(double)}")
    moe = text.get("enable_moe_block")
    if not isinstance(moe, bool):
        raise ConfigError(f"gemma4 enable_moe_block must be true or false, got {_shown(moe)}")
    experts = _experts(text) if moe else None
    made: dict[tuple[Any, ...], Any] = {}  # one spec per (kind, owner, overrides), not one per layer

    def kind(i: int, t: str, source: int | None) -> Any:
        own = overrides.get(i, {})
        key = (t, source, tuple(sorted(own.items())))
        if key not in made:
            spec = cfg.layer(i)
            d_head = own.get("head_dim", cfg.d_head)
            attn: dict[str, Any] = {"rope": replace(ropes[t], rotary_dim=d_head), "d_head": d_head,
                                    "n_kv_heads": own.get("num_key_value_heads", cfg.n_kv_heads)}
            if t == "full_attention":
                attn.update(k_eq_v=k_eq_v)
            if source is not None:  # no keys or values of its own
                attn.update(kv_source=source, k_eq_v=False, v_norm=False)
            spec = replace(spec.with_attn(**attn), per_layer=per_layer)
            if source is not None and double:
                spec = replace(spec, mlp=replace(spec.mlp, d_mlp=2 * spec.mlp.d_mlp))
            if experts is not None:  # the dense MLP (its width as above) beside the experts
                width, routed = experts
                spec = replace(spec, wiring="sandwich_moe", mlp=MlpSpec(
                    "experts", width, spec.mlp.act, experts=replace(routed, d_dense=spec.mlp.d_mlp)))
            made[key] = spec
        return made[key]

    return replace(cfg, kinds=Stack.of(kind(i, t, sources[i]) for i, t in enumerate(types)))
