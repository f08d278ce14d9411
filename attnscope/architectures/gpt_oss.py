"""gpt-oss (openai/gpt-oss-20b, -120b): Llama's pre-norm layers with four quirks, each a
field of the layer kinds.

* Attention: q/k/v/o all with biases, and a learned sink logit per head (`AttnSpec.sinks`):
  one more softmax column that takes probability mass and adds no value, so a pattern
  row sums to 1 − sink weight (the kernel's `sinks` argument; hook `sink`).
* A window of `sliding_window` (128) keys on the layers `layer_types` names sliding
  (default: every even-numbered layer, counting from 0); the others see every key.
* YaRN RoPE (factor 32 over 4,096 positions, `truncate` false, cos and sin times
  0.1·ln 32 + 1), rotate-half layout (`parts.positions`).
* Every MLP slot is a mixture of experts (`ExpertSpec`): router logits with a bias,
  the top k of them, then a softmax over those k ("topk_softmax"); each expert's
  projections carry biases; its GLU is the clamped SwiGLU: gate clamped above and up on
  both sides at `swiglu_limit`, then (up + 1) · gate · sigmoid(1.702 · gate).

Checkpoint layout (transformers' GptOssExperts): `mlp.experts.gate_up_proj` [E, d, 2w]
holds each expert's gate and up *interleaved* along its last axis (gate = [..., ::2],
up = [..., 1::2]) and is multiplied from the left (x @ W), so it is transposed into our
[E, w, d]; `gate_up_proj_bias` [E, 2w] is interleaved the same way; `down_proj`
[E, w, d] is transposed into our [E, d, w] (whatever the sizes: gpt-oss-20b has w = d).

Published checkpoints store the experts' matrices in MXFP4 (`quantization_config`
"mxfp4"): `…gate_up_proj_blocks` [E, 2w, d/32, 16] uint8 (two 4-bit values a byte, the
low nibble first) and `…gate_up_proj_scales` [E, 2w, d/32] uint8 (a power of two, biased
by 127, per block of 32), `down_proj_blocks` [E, d, w/32, 16] likewise. Each pair is
decoded to float here (`mxfp4_decode`, transformers' `convert_moe_packed_tensors` values:
e2m1 ∈ ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} × 2^(scale − 127)), already in [E, out, in]; the
count is the decoded matrix's, whatever the storage.

After transformers' models/gpt_oss (configuration and modeling) and llama.cpp's `GptOssModel`
converter (GGUF arch "gpt-oss": experts as `ffn_gate_exps`/`ffn_up_exps`/`ffn_down_exps`
[E, out, in] with `_b` biases, router `ffn_gate_inp`, sinks `attn_sinks`, MXFP4 experts).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama, mixtral
from attnscope.architectures._common import checkpoint_dtype, layer_kind, layer_windows
from attnscope.config import ModelConfig, _shown
from attnscope.errors import CheckpointError, ConfigError
from attnscope.kinds import ExpertSpec, Stack

MODEL_TYPES = ("gpt_oss",)
PREFIXES = ("model.",)
DESCRIPTION = ("gpt-oss: attention sinks, a 128-token window on alternate layers, YaRN; experts with "
               "biases, top-k then softmax, clamped SwiGLU")

_DENSE_MLP = tuple(k for k in llama.WEIGHTS if ".mlp." in k)

WEIGHTS: dict[str, str | None] = {
    **{k: v for k, v in llama.WEIGHTS.items() if k not in _DENSE_MLP},
    "layers.{layer}.self_attn.sinks": "blocks.{layer}.attn.sinks",
    "layers.{layer}.mlp.router.weight": "blocks.{layer}.mlp.router.weight",
    "layers.{layer}.mlp.router.bias": "blocks.{layer}.mlp.router.bias",
    "layers.{layer}.mlp.experts.gate_up_proj": "blocks.{layer}.mlp.experts.gate_up.weight",
    "layers.{layer}.mlp.experts.gate_up_proj_bias": "blocks.{layer}.mlp.experts.gate_up.bias",
    "layers.{layer}.mlp.experts.down_proj": "blocks.{layer}.mlp.experts.down.weight",
    "layers.{layer}.mlp.experts.down_proj_bias": "blocks.{layer}.mlp.experts.down.bias",
    **{f"layers.{{layer}}.mlp.experts.{hf}_proj_{part}": f"blocks.{{layer}}.mlp.experts.{ours}.mxfp4_{part}"
       for hf, ours in (("gate_up", "gate_up"), ("down", "down")) for part in ("blocks", "scales")},
}
# Our names of the packed MXFP4 tensors (uint8, decoded in `split`): `checkpoint` lets
# these through its float-only check.
PACKED = (".mxfp4_blocks", ".mxfp4_scales")
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

DEFAULT_THETA = 150000.0  # GptOssConfig.default_theta
DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096}  # GptOssConfig's, where a config names none
SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The stored expert tensors as our parameters, by name (never by shape: gpt-oss-20b's
    experts are as wide as the model, so [E, w, d] and [E, d, w] look alike): the fused
    gate_up [E, d, 2w] as gate and up [E, w, d], its bias [E, 2w] as two [E, w], down
    [E, w, d] as [E, d, w]; anything else as it is."""
    if name.endswith(".mlp.experts.gate_up.weight") and len(shape) == 3 and shape[2] % 2 == 0:
        half = (shape[0], shape[2] // 2, shape[1])
        return {name.replace(".gate_up.", f".{part}."): half for part in ("gate", "up")}
    if name.endswith(".mlp.experts.gate_up.bias") and len(shape) == 2 and shape[1] % 2 == 0:
        half = (shape[0], shape[1] // 2)
        return {name.replace(".gate_up.", f".{part}."): half for part in ("gate", "up")}
    if name.endswith(".mlp.experts.down.weight") and len(shape) == 3:
        return {name: (shape[0], shape[2], shape[1])}
    if name.endswith(".mxfp4_scales"):
        return {}  # part of the packed matrix its blocks stand for
    if name.endswith(".mxfp4_blocks") and len(shape) == 4:
        rows, cols = shape[1], shape[2] * shape[3] * 2  # (E, out, in / 32, 16) bytes -> (E, out, in)
        if name.endswith(".gate_up.mxfp4_blocks") and rows % 2 == 0:
            return {name.replace(".gate_up.mxfp4_blocks", f".{part}.weight"): (shape[0], rows // 2, cols)
                    for part in ("gate", "up")}
        return {name.replace(".mxfp4_blocks", ".weight"): (shape[0], rows, cols)}
    return {name: shape}


# A packed matrix's blocks or scales, held until its partner arrives (they are two tensors,
# maybe in two shards): our name -> (the load's config, which part, the tensor).
_pending: dict[str, tuple[ModelConfig, str, Any]] = {}


def mxfp4_decode(blocks: Any, scales: Any) -> Any:
    """MXFP4 blocks (..., G, 16) uint8 and scales (..., G) uint8 -> float32 (..., G·32):
    each byte's low nibble, then its high one, an e2m1 value times 2^(scale − 127)."""
    import torch

    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or tuple(blocks.shape[:-1]) != tuple(scales.shape) \
            or blocks.shape[-1] != 16:
        raise CheckpointError(f"MXFP4 blocks {tuple(blocks.shape)} {blocks.dtype} and scales {tuple(scales.shape)} "
                              f"{scales.dtype} do not fit together (blocks of 16 bytes, one uint8 scale each)",
                              hint="the checkpoint is corrupt, or another MXFP4 layout")
    lut = torch.tensor(E2M1, dtype=torch.float32)
    out = torch.empty(*blocks.shape[:-1], 32, dtype=torch.float32)  # (..., G, 32)
    out[..., 0::2] = lut[(blocks & 0x0F).long()]
    out[..., 1::2] = lut[(blocks >> 4).long()]
    out = torch.ldexp(out, (scales.to(torch.int32) - 127)[..., None])
    return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


def _packed(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """One half of a packed matrix: nothing until both halves are here, then the decoded
    matrix as our parameters (gate_up's interleaved rows split into gate and up)."""
    base, part = name.rsplit(".mxfp4_", 1)
    for key in [k for k, (owner, _, _) in _pending.items() if owner is not cfg]:
        del _pending[key]  # left by an earlier load that stopped half way
    other = _pending.pop(base, None)
    if other is None or other[1] == part:
        _pending[base] = (cfg, part, tensor)
        return {}
    blocks, scales = (tensor, other[2]) if part == "blocks" else (other[2], tensor)
    spec = cfg.layer(int(base.split(".")[1])).mlp
    E, w, d = (spec.experts.n_experts if spec.experts else 0), spec.d_mlp, cfg.d_model
    want = (E, 2 * w, d // 32, 16) if base.endswith(".gate_up") else (E, d, w // 32, 16)
    if tuple(blocks.shape) != want:  # checked before decoding: the decoded matrix is 8x the blocks' bytes
        raise CheckpointError(f"MXFP4 blocks of {base} have shape {tuple(blocks.shape)}, but config.json implies {want}",
                              hint="the weights and config.json belong to different models")
    full = mxfp4_decode(blocks, scales)  # (E, out, in)
    if base.endswith(".gate_up"):
        return {f"{base[:-len('.gate_up')]}.gate.weight": full[:, 0::2].contiguous(),
                f"{base[:-len('.gate_up')]}.up.weight": full[:, 1::2].contiguous()}
    return {f"{base}.weight": full}


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """The interleaved gate_up into gate (even columns) and up (odd ones), each transposed
    to [E, w, d]; down transposed to [E, d, w] (`stored_parts` names the shapes); MXFP4
    blocks and scales decoded once both are read (`_packed`)."""
    if name.endswith(PACKED):
        return _packed(name, tensor, cfg)
    parts = stored_parts(name, tuple(tensor.shape), cfg)
    if name.endswith(".mlp.experts.gate_up.weight") and len(parts) == 2:
        gate, up = tensor[..., 0::2], tensor[..., 1::2]  # (E, d, w) each
        return dict(zip(parts, (gate.transpose(1, 2).contiguous(), up.transpose(1, 2).contiguous())))
    if name.endswith(".mlp.experts.gate_up.bias") and len(parts) == 2:
        return dict(zip(parts, (tensor[..., 0::2].contiguous(), tensor[..., 1::2].contiguous())))
    if name.endswith(".mlp.experts.down.weight") and tensor.dim() == 3:
        return {name: tensor.transpose(1, 2).contiguous()}  # (E, w, d) -> (E, d, w)
    return {name: tensor}


def _rope(raw: dict[str, Any]) -> tuple[Any, Any]:
    """RoPE base and scaling: `rope_parameters` (transformers 5) or the Hub file's
    `rope_theta` + `rope_scaling`; GptOssConfig's YaRN where neither names one."""
    params = raw.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"rope_parameters must be an object, got {_shown(params)}")
    params = params or {}
    theta = raw.get("rope_theta", params.get("rope_theta", DEFAULT_THETA))
    scaling = raw.get("rope_scaling")
    if scaling is None:
        scaling = params if params.get("rope_type", params.get("type")) not in (None, "default") else None
        if not params:
            scaling = DEFAULT_ROPE
    if scaling is None:
        return theta, None
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope_scaling must be an object, got {_shown(scaling)}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return theta, None
    if kind != "yarn":
        raise ConfigError(f"unsupported gpt-oss rope scaling {_shown(kind)}", hint="supported: yarn")
    return theta, {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    theta, scaling = _rope(raw)
    n_layers, n_heads = raw["num_hidden_layers"], raw["num_attention_heads"]
    window = raw.get("sliding_window", 128)
    default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)] \
        if isinstance(n_layers, int) and not isinstance(n_layers, bool) and 0 < n_layers <= 2**20 else None
    bias = bool(raw.get("attention_bias", True))
    template = layer_kind(mlp="gated", qkv_bias=bias, out_bias=bias)
    cfg = ModelConfig(
        name=name,
        family="gpt_oss",
        d_model=raw["hidden_size"],
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        d_head=raw.get("head_dim") or 0,
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 131072),
        causal=True,
        positions="rope",
        norm="rmsnorm",
        norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        act="silu",
        layer_template=replace(template, attn=replace(template.attn, sinks=True)),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_theta=float(theta) if isinstance(theta, (int, float)) and not isinstance(theta, bool) else theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_windows=layer_windows(raw, n_layers, window, default) if default is not None else None,
        dtype=checkpoint_dtype(raw),
    )
    experts = ExpertSpec(
        n_experts=raw.get("num_local_experts", 128),
        top_k=raw.get("num_experts_per_tok", raw.get("experts_per_token", 4)),
        router="topk_softmax", norm_topk_prob=False, router_bias=True, expert_bias=True,
        swiglu_alpha=raw.get("swiglu_alpha", SWIGLU_ALPHA), swiglu_limit=raw.get("swiglu_limit", SWIGLU_LIMIT),
    )
    kinds: dict[Any, Any] = {}  # one experts kind per distinct attention kind (window or not)
    specs = []
    for i in range(cfg.n_layers):
        spec = cfg.layer(i)
        if spec not in kinds:
            kinds[spec] = mixtral.experts_spec(spec, cfg.d_mlp, experts)
        specs.append(kinds[spec])
    return replace(cfg, kinds=Stack.of(specs))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's arch "gpt-oss" (gguf-py constants, convert_hf_to_gguf.py's GptOssModel): the
# experts already split and in [E, out, in] (MXFP4 blocks in published files, dequantized by
# gguf-py like any block format), their biases `.bias` [E, out]; the norm before the MLP is
# `post_attention_norm` (transformers' post_attention_layernorm), the sinks `attn_sinks`.
# llama.cpp writes no layer types: sliding layers are the even ones (its SWA pattern 2,
# transformers' default); nor the SwiGLU constants, which it fixes at 1.702 and 7.0 (a
# `swiglu_clamp_exp` key, where present, gives the limit).

GGUF_ARCHS = ("gpt-oss",)

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "blk.{layer}.attn_norm.weight": "blocks.{layer}.attn_norm.weight",
    **{f"blk.{{layer}}.attn_{g}.{kind}": f"blocks.{{layer}}.attn.{ours}.{kind}"
       for g, ours in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")) for kind in ("weight", "bias")},
    "blk.{layer}.attn_sinks.weight": "blocks.{layer}.attn.sinks",
    "blk.{layer}.post_attention_norm.weight": "blocks.{layer}.mlp_norm.weight",
    "blk.{layer}.ffn_gate_inp.weight": "blocks.{layer}.mlp.router.weight",
    "blk.{layer}.ffn_gate_inp.bias": "blocks.{layer}.mlp.router.bias",
    **{f"blk.{{layer}}.ffn_{g}_exps.{kind}": f"blocks.{{layer}}.mlp.experts.{g}.{kind}"
       for g in ("gate", "up", "down") for kind in ("weight", "bias")},
    "output_norm.weight": "final_norm.weight",
    "output.weight": "unembed.weight",
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A config.json-style dict from `gpt-oss.*` metadata (what GptOssModel.set_gguf_parameters writes)."""
    def get(suffix: str, default: Any = KeyError) -> Any:
        return llama.gguf_value(meta, f"{arch}.{suffix}", default)

    heads = get("attention.head_count")
    raw: dict[str, Any] = {
        "model_type": "gpt_oss",
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "intermediate_size": get("expert_feed_forward_length", None) or get("feed_forward_length"),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", DEFAULT_THETA),
        "sliding_window": get("attention.sliding_window", 128),
        "num_local_experts": get("expert_count"),
        "num_experts_per_tok": get("expert_used_count"),
        "attention_bias": "blk.0.attn_q.bias" in shapes,
        "swiglu_limit": get("swiglu_clamp_exp", SWIGLU_LIMIT),
    }
    head_dim = get("attention.key_length", None)
    if head_dim:
        raw["head_dim"] = head_dim
    kind = get("rope.scaling.type", None)
    if kind not in (None, "none"):  # gpt-oss's YaRN: the HF file's truncate false, which GGUF does not record
        raw["rope_scaling"] = {"rope_type": kind, "factor": get("rope.scaling.factor", 1.0),
                               "original_max_position_embeddings": get("rope.scaling.original_context_length", None),
                               "beta_fast": get("rope.scaling.yarn_beta_fast", 32.0),
                               "beta_slow": get("rope.scaling.yarn_beta_slow", 1.0), "truncate": False}
    else:
        raw["rope_parameters"] = {"rope_type": "default"}
    return raw
