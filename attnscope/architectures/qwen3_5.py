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
    the vision tower (`model.visual.`) is not part of the text model and is not read.
  * The multi-token-prediction module (`mtp.*`, `mtp_num_hidden_layers` of them): per module
    one decoder layer of the full-attention kind (`mtp.layers.i.…`, a layer's own names), the
    projection `mtp.fc` (d × 2d) and the norms `mtp.pre_fc_norm_embedding`,
    `mtp.pre_fc_norm_hidden` and `mtp.norm` (the layout llama.cpp's `_Qwen35MtpMixin` maps to
    `nextn.*`). Transformers builds none of it, and neither do we: its tensors are named (ours
    under `mtp.`, `with_mtp`) so that they are neither loaded nor counted as the model's, and
    `params` shows the module apart (`not_counted`, `mtp_module`), as DeepSeek-V3's.
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

# our `attn.qkv` is the linear layers' own in_proj_qkv (q and k of n_k × d_k rows each, v
# of n_v × d_v), not GPT-2's three equal thirds: params.stored counts it whole
LINEAR_QKV = True

# the multi-token-prediction module's own tensors, beside its layers (see the docstring)
MTP_OWN: dict[str, str | None] = {f"mtp.{p}.weight": f"mtp.{p}.weight"
                                  for p in ("fc", "pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm")}


def with_mtp(weights: dict[str, str | None]) -> dict[str, str | None]:
    """A family's table with the multi-token-prediction module's tensors named: its layers'
    (`mtp.layers.{layer}.…`, a full-attention layer's names) and its own, as ours under `mtp.`,
    which `stored_parts` leaves out of the count and `split` drops."""
    layers = {"mtp." + k: "mtp." + v for k, v in weights.items()
              if k.startswith("layers.{layer}.") and ".linear_attn." not in k and v is not None}
    return {**weights, **layers, **MTP_OWN}


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
WEIGHTS = with_mtp(WEIGHTS)

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
    return mtp_module(hybrid(gated_config(text, name, "qwen3_5"), text), text)


def mtp_module(cfg: ModelConfig, text: dict[str, Any]) -> ModelConfig:
    """`cfg` with the checkpoint's multi-token-prediction module (`mtp_num_hidden_layers`)
    recorded as not counted: per module, a block of the model's full-attention kind (its
    MLP the model's: dense, or experts), `fc` (d × 2d) and three norms of d."""
    from math import prod

    from attnscope.parts import NOT_COUNTED, block_shapes

    n = text.get("mtp_num_hidden_layers") or 0
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_LAYERS:
        raise ConfigError(f"mtp_num_hidden_layers must be a non-negative integer up to {MAX_LAYERS}, got {_shown(n)}")
    if not n:
        return cfg
    full = next((cfg.layer(i) for i in range(cfg.n_layers) if cfg.layer(i).attn.kind != "linear"),
                replace(cfg.layer(0), attn=cfg.layer_template.attn))
    block = sum(prod(shape) for part, shape in block_shapes(cfg, full).items() if not part.endswith(NOT_COUNTED))
    d = cfg.d_model
    label = f"multi-token-prediction module (mtp_num_hidden_layers {n}; mtp.* in the checkpoint)"
    return replace(cfg, extra={**cfg.extra, "not_counted": {label: n * (block + 2 * d * d + 3 * d)}})


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The depthwise conv's stored (channels, 1, kernel) as ours, (channels, kernel); the
    multi-token-prediction module's tensors left out (`params` shows it apart)."""
    if name.startswith("mtp."):
        return {}
    if name.endswith(".attn.conv.weight") and len(shape) == 3 and shape[1] == 1:
        return {name: (shape[0], shape[2])}
    return {name: shape}


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    if name.startswith("mtp."):  # the multi-token-prediction module: not the model's
        return {}
    if name.endswith(".attn.conv.weight") and tensor.dim() == 3 and tensor.shape[1] == 1:
        return {name: tensor[:, 0, :]}
    return {name: tensor}


# --------------------------------------------------------------------------- GGUF
# llama.cpp's qwen35 (convert_hf_to_gguf.py: Qwen3_5TextModel → _LinearAttentionVReorderBase →
# Qwen3NextModel → Qwen2MoeModel; gguf-py's MODEL_TENSORS[QWEN35]). What the converter changes,
# undone in `gguf_tensor`:
#   * Qwen3NextModel.modify_tensors: `A_log` stored as −exp(A_log) (`ssm_a`); `dt_bias` renamed
#     `dt_proj.bias` (`ssm_dt.bias`); conv1d squeezed to (channels, kernel); every
#     `norm.weight` but the gated `linear_attn.norm.weight` stored + 1 (the (1 + w) norms,
#     q/k norms included).
#   * _LinearAttentionVReorderBase.modify_tensors (only where value heads ≠ key heads): the
#     value heads reordered from grouped by key head [k0v0, k0v1, …, k1v0, …] to tiled
#     [k0v0, k1v0, …, k0v1, …] (`_reorder_v_heads`) in the v rows of in_proj_qkv, the rows of
#     in_proj_z / in_proj_b / in_proj_a, A_log and dt_bias, the v channels of conv1d, and the
#     columns of out_proj.
#   * Untouched: the gated q_proj (per head, its query then its gate), k, v, o, the MLP.
# The file names no layer types: llama.cpp derives them from `full_attention_interval`; we
# read them from the tensor table (a layer holding `ssm_a` is linear), which is what the
# file holds whatever the interval says.

GGUF_ARCHS = ("qwen35",)

_SSM: dict[str, str | None] = {
    "blk.{layer}.attn_qkv.weight": "blocks.{layer}.attn.qkv.weight",
    "blk.{layer}.attn_gate.weight": "blocks.{layer}.attn.z.weight",
    "blk.{layer}.ssm_conv1d.weight": "blocks.{layer}.attn.conv.weight",
    "blk.{layer}.ssm_dt.bias": "blocks.{layer}.attn.dt_bias",
    "blk.{layer}.ssm_a": "blocks.{layer}.attn.a_log",
    "blk.{layer}.ssm_norm.weight": "blocks.{layer}.attn.norm.weight",
    "blk.{layer}.ssm_out.weight": "blocks.{layer}.attn.o.weight",
}

GGUF_WEIGHTS: dict[str, str | None] = {
    **qwen3.GGUF_WEIGHTS,
    # the post-attention norm is gguf-py's ATTN_POST_NORM for qwen35 (no FFN_NORM in its list)
    "blk.{layer}.post_attention_norm.weight": "blocks.{layer}.mlp_norm.weight",
    **_SSM,
    "blk.{layer}.ssm_beta.weight": "blocks.{layer}.attn.b.weight",
    "blk.{layer}.ssm_alpha.weight": "blocks.{layer}.attn.a.weight",
}


def gguf_linear_config(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]],
                       raw: dict[str, Any]) -> dict[str, Any]:
    """The hybrid's settings from the metadata Qwen3NextModel.set_gguf_parameters writes:
    ssm.conv_kernel, ssm.state_size (d_k), ssm.group_count (key heads), ssm.time_step_rank
    (value heads), ssm.inner_size (d_v × value heads), rope.dimension_count (the rotary
    width); the layer types from the tensor table; the output gate from attn_q's rows."""
    from attnscope.architectures import llama

    def get(suffix: str, default: Any = KeyError) -> Any:
        return llama.gguf_value(meta, f"{arch}.{suffix}", default)

    n_v, inner = get("ssm.time_step_rank"), get("ssm.inner_size")
    if not _positive_int(n_v) or not _positive_int(inner) or inner % n_v:
        raise ConfigError(f"GGUF {arch}.ssm.inner_size {_shown(inner)} is not a multiple of "
                          f"{arch}.ssm.time_step_rank {_shown(n_v)}")
    n_layers = raw["num_hidden_layers"]
    linear = {int(n.split(".")[1]) for n in shapes if n.startswith("blk.") and n.endswith(".ssm_a")
              and n.split(".")[1].isdigit()}
    head_dim = raw.get("head_dim")
    if not _positive_int(head_dim):
        raise ConfigError(f"GGUF {arch} lacks a positive attention.key_length, got {_shown(head_dim)}")
    rope_dim = get("rope.dimension_count", head_dim // 4)
    full = next((i for i in range(n_layers) if i not in linear), None)
    gate = True
    if full is not None and f"blk.{full}.attn_q.weight" in shapes:
        gate = shapes[f"blk.{full}.attn_q.weight"][0] == 2 * raw["num_attention_heads"] * head_dim
    raw.update(
        linear_conv_kernel_dim=get("ssm.conv_kernel"), linear_key_head_dim=get("ssm.state_size"),
        linear_num_key_heads=get("ssm.group_count"), linear_num_value_heads=n_v,
        linear_value_head_dim=inner // n_v,
        layer_types=["linear_attention" if i in linear else "full_attention" for i in range(n_layers)],
        partial_rotary_factor=rope_dim / head_dim, attn_output_gate=gate,
    )
    return raw


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from attnscope.architectures import llama

    raw = llama.config_from_gguf(meta, arch, shapes)
    raw["model_type"] = "qwen3_5_text"
    return gguf_linear_config(meta, arch, shapes, raw)


def _untile(tensor: Any, dim: int, m: LinearSpec, head: int) -> Any:
    """The inverse of the converter's `_reorder_v_heads(t, dim, n_k, n_v/n_k, head)`: it
    views dim as (n_k, r, head) and swaps the first two; viewed as (r, n_k, head), the same
    swap puts them back."""
    r = m.n_v_heads // m.n_k_heads
    if r == 1:
        return tensor
    shape = list(tensor.shape)
    dim %= len(shape)
    t = tensor.reshape(*shape[:dim], r, m.n_k_heads, head, *shape[dim + 1:])
    return t.transpose(dim, dim + 1).reshape(shape)


def gguf_norm_and_decay(name: str, tensor: Any) -> Any:
    """Qwen3NextModel.modify_tensors' changes undone: norm.weight + 1 (all but the gated
    linear-attention norm) and A_log → −exp(A_log) (inverted in float64)."""
    import torch

    if name.endswith("norm.weight") and not name.endswith(".attn.norm.weight"):
        return tensor - 1
    if name.endswith(".attn.a_log"):
        return torch.log(-tensor.double()).float()
    return tensor


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    tensor = gguf_norm_and_decay(name, tensor)
    if ".attn." not in name or name.endswith((".attn.q.weight", ".attn.k.weight", ".attn.v.weight",
                                             ".attn.q_norm.weight", ".attn.k_norm.weight")):
        return {name: tensor}
    m = cfg.layer(int(name.split(".")[1])).attn.linear
    if m is None:
        return {name: tensor}
    qk = 2 * m.n_k_heads * m.d_k
    if name.endswith((".attn.qkv.weight", ".attn.conv.weight")):  # only the v rows / channels
        import torch

        tensor = torch.cat([tensor[:qk], _untile(tensor[qk:], 0, m, m.d_v)])
    elif name.endswith(".attn.z.weight"):
        tensor = _untile(tensor, 0, m, m.d_v)
    elif name.endswith((".attn.b.weight", ".attn.a.weight", ".attn.a_log", ".attn.dt_bias")):
        tensor = _untile(tensor, 0, m, 1)
    elif name.endswith(".attn.o.weight"):
        tensor = _untile(tensor, 1, m, m.d_v)
    return {name: tensor}
