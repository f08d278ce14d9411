"""Qwen3.5 (`qwen3_5_text`, and the text tower of the multimodal `qwen3_5`): a hybrid of
Gated DeltaNet (linear attention) layers and gated softmax layers, three to one by default.

  * Which layer is which: `layer_types` ("linear_attention" / "full_attention"), else every
    `full_attention_interval`-th layer (4) is softmax, counting from 1 (transformers' rule).
  * Softmax layers: Qwen3's per-head q/k RMSNorm before RoPE and grouped key/value heads,
    plus an output gate: q_proj yields, for each head, its query (head_dim rows) then its
    gate (head_dim rows); the heads' outputs × σ(gate) enter o_proj (`AttnSpec.out_gate`).
    RoPE turns the first `partial_rotary_factor` (0.25) of each head. The text model's
    multimodal RoPE (`mrope_section`, interleaved) gives every section the same text
    position, so on text it is plain RoPE (checked against transformers on the tiny model).
  * Linear layers (`kinds.LinearSpec`, parts.deltanet): in_proj_qkv → a causal depthwise
    conv (linear_conv_kernel_dim) → SiLU → q, k (linear_num_key_heads of
    linear_key_head_dim, L2-normalised), v (linear_num_value_heads of linear_value_head_dim);
    β = σ(in_proj_b x), log g = −exp(A_log)·softplus(in_proj_a x + dt_bias); the gated delta
    rule; a gated RMSNorm (weight, not 1 + weight) with SiLU(in_proj_z x); out_proj.
  * Every other RMSNorm scales by (1 + weight) (`norm_offset` 1), as Gemma's.
  * Checkpoints: `model.layers.…` (Qwen3_5ForCausalLM), or `model.language_model.layers.…`
    with `lm_head.weight` at the top (Qwen3_5ForConditionalGeneration, the published form);
    the vision tower (`model.visual.`) and the multi-token-prediction module (`mtp.`) are
    not part of the text model and are not read.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import qwen3
from attnscope.architectures._common import checkpoint_dtype, layer_kind, rope_settings, rotary_dim
from attnscope.config import ModelConfig, _shown
from attnscope.config_checks import MAX_LAYERS, _positive_int
from attnscope.errors import ConfigError
from attnscope.kinds import LayerSpec, LinearSpec, Stack

MODEL_TYPES = ("qwen3_5_text", "qwen3_5")
PREFIXES = ("model.language_model.", "model.")
DESCRIPTION = ("Qwen3.5: Gated DeltaNet linear layers (hidden attention shown) + gated softmax layers "
               "(q/k norm, partial RoPE)")

_LINEAR = "layers.{layer}.linear_attn."

WEIGHTS: dict[str, str | None] = {
    **qwen3.WEIGHTS,
    _LINEAR + "in_proj_qkv.weight": "blocks.{layer}.attn.qkv.weight",
    _LINEAR + "in_proj_z.weight": "blocks.{layer}.attn.z.weight",
    _LINEAR + "in_proj_b.weight": "blocks.{layer}.attn.b.weight",
    _LINEAR + "in_proj_a.weight": "blocks.{layer}.attn.a.weight",
    _LINEAR + "conv1d.weight": "blocks.{layer}.attn.conv.weight",
    _LINEAR + "dt_bias": "blocks.{layer}.attn.dt_bias",
    _LINEAR + "A_log": "blocks.{layer}.attn.a_log",
    _LINEAR + "norm.weight": "blocks.{layer}.attn.norm.weight",
    _LINEAR + "out_proj.weight": "blocks.{layer}.attn.o.weight",
}

# Qwen3_5TextConfig's defaults (Qwen3.5-9B-like): what a config.json may leave out.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 248320, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
    "num_attention_heads": 16, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False, "head_dim": 256,
    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32,
}
LAYER_TYPES = ("linear_attention", "full_attention")


def text_config(raw: dict[str, Any], model_type: str = "qwen3_5") -> dict[str, Any]:
    """The text tower's settings: a `*_text` file itself, or a multimodal file's
    `text_config` (with the top level's dtype and tie_word_embeddings where the tower has
    none), over the text config's defaults."""
    if raw.get("model_type") != model_type:
        return {**TEXT_DEFAULTS, **raw}
    text = raw.get("text_config") or {}
    if not isinstance(text, dict):
        raise ConfigError(f"{model_type} text_config must be an object, got {_shown(text)}")
    top = {k: raw[k] for k in ("dtype", "torch_dtype", "tie_word_embeddings") if k in raw}
    return {**TEXT_DEFAULTS, **top, **text, "model_type": f"{model_type}_text"}


def layer_types(raw: dict[str, Any], n_layers: int) -> list[str]:
    """Each layer's type: `layer_types`, else every `full_attention_interval`-th layer full."""
    types = raw.get("layer_types")
    if types is None:
        every = raw.get("full_attention_interval", 4)
        if not _positive_int(every, MAX_LAYERS):
            raise ConfigError(f"full_attention_interval must be a positive integer, got {_shown(every)}")
        return ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(f"layer_types must list one type per layer ({n_layers}), got {_shown(types)}")
    for t in types:
        if t not in LAYER_TYPES:
            raise ConfigError(f"unsupported layer type {_shown(t)}", hint=f"supported: {', '.join(LAYER_TYPES)}")
    return types


def linear_spec(raw: dict[str, Any]) -> LinearSpec:
    """The Gated DeltaNet sizes (config_checks.check_linear bounds them)."""
    return LinearSpec(n_k_heads=raw.get("linear_num_key_heads"), n_v_heads=raw.get("linear_num_value_heads"),
                      d_k=raw.get("linear_key_head_dim"), d_v=raw.get("linear_value_head_dim"),
                      conv_kernel=raw.get("linear_conv_kernel_dim"), norm_eps=float(raw.get("rms_norm_eps", 1e-6)))


def linear_kind(spec: LayerSpec, m: LinearSpec) -> LayerSpec:
    """A softmax layer's kind turned linear: its MLP and wiring kept, its attention a Gated
    DeltaNet (heads = value heads over key heads, d_head = d_k; no positions, norms or gate)."""
    attn = replace(spec.attn, kind="linear", linear=m, n_heads=m.n_v_heads, n_kv_heads=m.n_k_heads, d_head=m.d_k,
                   rope=None, window=None, qk_norm=None, out_gate=False, qkv_bias=False, out_bias=False, scale=None)
    return replace(spec, attn=attn)


def hybrid(cfg: ModelConfig, raw: dict[str, Any]) -> ModelConfig:
    """`cfg` (every layer a gated softmax layer) with its linear layers made linear. A stack
    of linear layers only has no positions at all (`positions` "none")."""
    types = layer_types(raw, cfg.n_layers)
    if "full_attention" not in types:
        cfg = replace(cfg, positions="none")
    m = linear_spec(raw)
    linear: dict[LayerSpec, LayerSpec] = {}
    specs = []
    for i, t in enumerate(types):
        spec = cfg.layer(i)
        if t == "linear_attention":
            if spec not in linear:
                linear[spec] = linear_kind(spec, m)
            spec = linear[spec]
        specs.append(spec)
    return replace(cfg, kinds=Stack.of(specs))


def gated_config(text: dict[str, Any], name: str, family: str) -> ModelConfig:
    """Every layer as a gated softmax layer (Qwen3.5's and Qwen3-Next's full layers): the
    flat fields the softmax layers share; `hybrid` then makes the linear ones linear."""
    act = text.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"unsupported {family} hidden_act {_shown(act)}", hint="supported: silu")
    theta, scaling = rope_settings(text)
    bias = text.get("attention_bias", False)
    if not isinstance(bias, bool):
        raise ConfigError(f"attention_bias must be true or false, got {_shown(bias)}")
    gate = text.get("attn_output_gate", True)  # transformers gates always; the Hub's files say true
    if not isinstance(gate, bool):
        raise ConfigError(f"attn_output_gate must be true or false, got {_shown(gate)}")
    n_heads, d_head = text.get("num_attention_heads"), text.get("head_dim")
    if not _positive_int(d_head):
        raise ConfigError(f"head_dim must be a positive integer, got {_shown(d_head)}")
    template = layer_kind(mlp="gated", qkv_bias=bias, out_bias=bias, qk_norm="head")
    return ModelConfig(
        name=name,
        family=family,
        d_model=text.get("hidden_size"),
        n_layers=text.get("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=text.get("num_key_value_heads") or n_heads,
        d_head=d_head,
        d_mlp=text.get("intermediate_size"),
        vocab_size=text.get("vocab_size"),
        n_ctx=text.get("max_position_embeddings", 32768),
        causal=True,
        positions="rope",
        norm="rmsnorm",
        norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        norm_offset=1.0,  # Qwen3_5RMSNorm / Qwen3NextRMSNorm: x̂ · (1 + w)
        act="silu",
        layer_template=replace(template, attn=replace(template.attn, out_gate=gate)),
        tied_embeddings=bool(text.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=rotary_dim(text, d_head, default=0.25),
        dtype=checkpoint_dtype(text),
    )


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    text = text_config(raw)
    return hybrid(gated_config(text, name, "qwen3_5"), text)


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The depthwise conv's stored (channels, 1, kernel) as ours, (channels, kernel)."""
    if name.endswith(".attn.conv.weight") and len(shape) == 3 and shape[1] == 1:
        return {name: (shape[0], shape[2])}
    return {name: shape}


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    if name.endswith(".attn.conv.weight") and tensor.dim() == 3 and tensor.shape[1] == 1:
        return {name: tensor[:, 0, :]}
    return {name: tensor}
