"""DeepSeek-V3 and Kimi-K2 (`deepseek_v3`, `kimi_k2`): multi-head latent attention, dense
first layers, then experts with grouped sigmoid routing.

Quirks, as transformers' modeling_deepseek_v3.py has them:

- Attention is latent (`kinds.LatentSpec`, `parts.latent`): queries through a low rank
  (`q_lora_rank`; plain `q_proj` where it is null), keys and values from one latent of
  `kv_lora_rank` expanded per head by `kv_b_proj`, plus `qk_rope_head_dim` rotated key
  dimensions shared by every head. A head's query/key is `qk_nope_head_dim +
  qk_rope_head_dim` wide, its value `v_head_dim`. `q_a_layernorm` and `kv_a_layernorm`
  use RMSNorm's default eps 1e-6, not `rms_norm_eps`.
- RoPE turns only the `qk_rope_head_dim` dimensions, laid out in adjacent pairs where
  `rope_interleave` (the default). YaRN with `mscale_all_dim` also multiplies the score
  scale: qk_head_dim^-0.5 · mscale(factor, mscale_all_dim)² (`yarn_apply_mscale`); cos and
  sin carry mscale(factor, mscale) / mscale(factor, mscale_all_dim) (1 for DeepSeek-V3).
- The first `first_k_dense_replace` layers have a dense SwiGLU MLP of `intermediate_size`;
  the rest are experts (`kinds.ExpertSpec`): sigmoid scores plus a learned
  score-correction bias choose the experts, within the `topk_group` best of `n_group`
  groups (a group scored by its two best); the weights are the uncorrected scores of the
  chosen, renormalised where `norm_topk_prob`, times `routed_scaling_factor`; the shared
  experts (`n_shared_experts` × `moe_intermediate_size` wide) see every token.
- Checkpoints carry a next-token-prediction module (`num_nextn_predict_layers`) as extra
  layers `model.layers.{n}.*` past the last: it is not part of the model (transformers
  ignores it), so it is never loaded, and `params` counts it apart.

Kimi-K2 ships `model_type` "kimi_k2" with DeepSeek-V3's architecture and config keys
(384 experts, one group, 64 heads); it is read the same way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama, mixtral
from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig, _positive_int, _shown
from attnscope.config_checks import _positive_number
from attnscope.errors import ConfigError
from attnscope.kinds import ExpertSpec, LatentSpec, MlpSpec, Stack

MODEL_TYPES = ("deepseek_v3", "kimi_k2")
PREFIXES = ("model.",)
DESCRIPTION = ("DeepSeek-V3, Kimi-K2: multi-head latent attention (low-rank q, shared kv latent, decoupled RoPE, "
               "YaRN mscale), dense first layers, experts with grouped sigmoid routing")

_ATTN = "layers.{layer}.self_attn."
WEIGHTS: dict[str, str | None] = {
    "embed_tokens.weight": "embed.tok.weight",
    "layers.{layer}.input_layernorm.weight": "blocks.{layer}.attn_norm.weight",
    _ATTN + "q_proj.weight": "blocks.{layer}.attn.q.weight",
    _ATTN + "q_a_proj.weight": "blocks.{layer}.attn.q_a.weight",
    _ATTN + "q_a_proj.bias": "blocks.{layer}.attn.q_a.bias",
    _ATTN + "q_a_layernorm.weight": "blocks.{layer}.attn.q_a_norm.weight",
    _ATTN + "q_b_proj.weight": "blocks.{layer}.attn.q_b.weight",
    _ATTN + "kv_a_proj_with_mqa.weight": "blocks.{layer}.attn.kv_a.weight",
    _ATTN + "kv_a_proj_with_mqa.bias": "blocks.{layer}.attn.kv_a.bias",
    _ATTN + "kv_a_layernorm.weight": "blocks.{layer}.attn.kv_a_norm.weight",
    _ATTN + "kv_b_proj.weight": "blocks.{layer}.attn.kv_b.weight",
    _ATTN + "o_proj.weight": "blocks.{layer}.attn.o.weight",
    _ATTN + "o_proj.bias": "blocks.{layer}.attn.o.bias",
    _ATTN + "rotary_emb.inv_freq": None,
    "layers.{layer}.post_attention_layernorm.weight": "blocks.{layer}.mlp_norm.weight",
    # dense layers
    "layers.{layer}.mlp.gate_proj.weight": "blocks.{layer}.mlp.gate.weight",
    "layers.{layer}.mlp.up_proj.weight": "blocks.{layer}.mlp.up.weight",
    "layers.{layer}.mlp.down_proj.weight": "blocks.{layer}.mlp.down.weight",
    "norm.weight": "final_norm.weight",
    "lm_head.weight": "unembed.weight",
    "rotary_emb.inv_freq": None,
    # expert layers: per expert (published checkpoints) or fused 3-D (transformers 5)
    **mixtral.expert_weights("mlp", "gate", {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}),
    "layers.{layer}.mlp.gate.e_score_correction_bias": "blocks.{layer}.mlp.router.score_bias",
    "layers.{layer}.mlp.shared_experts.gate_proj.weight": "blocks.{layer}.mlp.shared.gate.weight",
    "layers.{layer}.mlp.shared_experts.up_proj.weight": "blocks.{layer}.mlp.shared.up.weight",
    "layers.{layer}.mlp.shared_experts.down_proj.weight": "blocks.{layer}.mlp.shared.down.weight",
    # the next-token-prediction module's own tensors (layers past the last): never loaded
    **{f"layers.{{layer}}.{part}.weight": f"mtp.{{layer}}.{part}.weight"
       for part in ("enorm", "hnorm", "eh_proj", "embed_tokens", "shared_head.norm", "shared_head.head")},
}

DEFAULT_EPS = 1e-6  # DeepseekV3Config.rms_norm_eps
_YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "attention_factor", "truncate")


def _int(raw: dict[str, Any], key: str, default: Any = KeyError, *, even: bool = False) -> int:
    value = raw[key] if default is KeyError else raw.get(key, default)
    if not _positive_int(value) or (even and value % 2):
        kind = "a positive even integer" if even else "a positive integer"
        raise ConfigError(f"{key} must be {kind} up to 2**31, got {_shown(value)}")
    return value


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and YaRN scaling (None: plain RoPE), from `rope_scaling` (older files:
    `"type": "yarn"`) or `rope_parameters`, as DeepseekV3Config standardises them."""
    params = raw.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_parameters must be an object, got {_shown(params)}")
    theta = raw.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = raw.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling is None:
        return theta, None
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope_scaling must be an object, got {_shown(scaling)}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise ConfigError(f"unsupported {raw['model_type']} rope scaling {kind!r}", hint="supported: yarn")
    return theta, {"rope_type": "yarn", **{k: scaling[k] for k in _YARN_KEYS if scaling.get(k) is not None}}


def _yarn_mscale(factor: float, mscale: float) -> float:
    """transformers' `yarn_get_mscale`."""
    import math

    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def score_scale(qk_head_dim: int, scaling: dict[str, Any] | None, n_ctx: int) -> float:
    """qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)² under YaRN where the config
    names `mscale_all_dim` (transformers' `yarn_apply_mscale`, after DeepSeek's reference)."""
    scale = qk_head_dim ** (-0.5)
    if scaling and scaling.get("mscale_all_dim"):
        factor = scaling.get("factor") or n_ctx / scaling["original_max_position_embeddings"]
        m = _yarn_mscale(float(factor), float(scaling["mscale_all_dim"]))
        scale = scale * m * m
    return scale


def latent_spec(raw: dict[str, Any]) -> LatentSpec:
    """The latent projections' sizes, each checked."""
    q_rank = raw.get("q_lora_rank")
    if q_rank is not None:
        q_rank = _int(raw, "q_lora_rank")
    interleave = raw.get("rope_interleave", True)
    if not isinstance(interleave, bool):
        raise ConfigError(f"rope_interleave must be true or false, got {_shown(interleave)}")
    return LatentSpec(kv_rank=_int(raw, "kv_lora_rank"), nope_dim=_int(raw, "qk_nope_head_dim"),
                      rope_dim=_int(raw, "qk_rope_head_dim", even=True), v_dim=_int(raw, "v_head_dim"),
                      q_rank=q_rank, rope_interleave=interleave)


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    model_type = raw["model_type"]
    act = raw.get("hidden_act", "silu")
    if act not in llama._ACTIVATIONS:
        raise ConfigError(f"unsupported {model_type} hidden_act {act!r}")
    latent = latent_spec(raw)
    n_layers, n_heads = raw["num_hidden_layers"], raw["num_attention_heads"]
    n_ctx = raw.get("max_position_embeddings", 4096)
    theta, scaling = _rope(raw)
    qk = latent.nope_dim + latent.rope_dim
    bias = bool(raw.get("attention_bias", False))
    template = layer_kind(mlp="gated", qkv_bias=bias, out_bias=bias)
    template = template.with_attn(kind="latent", latent=latent)
    cfg = ModelConfig(
        name=name,
        family=model_type,
        d_model=raw["hidden_size"],
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,  # keys and values are expanded per head from the shared latent
        d_head=qk,
        d_mlp=raw.get("intermediate_size", 18432),
        vocab_size=raw["vocab_size"],
        n_ctx=n_ctx,
        positions="rope",
        norm="rmsnorm",
        norm_eps=float(raw.get("rms_norm_eps", DEFAULT_EPS)),
        act=llama._ACTIVATIONS[act],
        layer_template=template,
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=latent.rope_dim,
        attn_scale=score_scale(qk, scaling, n_ctx) if _positive_int(n_ctx) else None,
        dtype=checkpoint_dtype(raw),
    )
    first_dense = raw.get("first_k_dense_replace", 3)
    if isinstance(first_dense, bool) or not isinstance(first_dense, int) or first_dense < 0:
        raise ConfigError(f"first_k_dense_replace must be a non-negative integer, got {_shown(first_dense)}")
    if first_dense < cfg.n_layers:
        dense = cfg.layer(0)
        moe = replace(dense, mlp=expert_mlp(raw, dense.mlp.act))
        cfg = replace(cfg, kinds=Stack(((dense, first_dense), (moe, cfg.n_layers - first_dense))
                                       if first_dense else ((moe, cfg.n_layers),)))
    n_mtp = raw.get("num_nextn_predict_layers", 0)
    if isinstance(n_mtp, bool) or not isinstance(n_mtp, int) or not 0 <= n_mtp <= 1024:
        raise ConfigError(f"num_nextn_predict_layers must be a non-negative integer up to 1024, got {_shown(n_mtp)}")
    if n_mtp:  # not part of the model (transformers builds none): counted apart, never loaded
        label = f"next-token-prediction module (num_nextn_predict_layers {n_mtp}; layers {cfg.n_layers}.. of the checkpoint)"
        cfg = replace(cfg, extra={**cfg.extra, "not_counted": {label: next_token_module(cfg, n_mtp)}})
    return cfg


def expert_mlp(raw: dict[str, Any], act: str) -> MlpSpec:
    """The experts of the layers after the dense ones: `n_routed_experts` of width
    `moe_intermediate_size`, `num_experts_per_tok` per token by grouped sigmoid routing,
    and `n_shared_experts` shared experts as one gated MLP of their summed width."""
    scoring = raw.get("scoring_func", "sigmoid")
    if scoring != "sigmoid":
        raise ConfigError(f"unsupported {raw['model_type']} scoring_func {scoring!r}", hint="supported: sigmoid")
    width, n_shared = _int(raw, "moe_intermediate_size", 2048), raw.get("n_shared_experts", 1)
    if isinstance(n_shared, bool) or not isinstance(n_shared, int) or not 0 <= n_shared <= 2**16:
        raise ConfigError(f"n_shared_experts must be a non-negative integer, got {_shown(n_shared)}")
    norm = raw.get("norm_topk_prob", True)
    if not isinstance(norm, bool):
        raise ConfigError(f"norm_topk_prob must be true or false, got {_shown(norm)}")
    scale = raw.get("routed_scaling_factor", 2.5)
    if not _positive_number(scale):
        raise ConfigError(f"routed_scaling_factor must be a finite positive number, got {_shown(scale)}")
    n_group, topk_group = raw.get("n_group", 8), raw.get("topk_group", 4)
    experts = ExpertSpec(n_experts=_int(raw, "n_routed_experts", 256), top_k=_int(raw, "num_experts_per_tok", 8),
                         router="sigmoid_grouped", norm_topk_prob=norm, d_shared=width * n_shared, n_shared=n_shared,
                         n_group=1 if n_group is None else n_group, topk_group=1 if topk_group is None else topk_group,
                         routed_scale=float(scale))
    return MlpSpec("experts", width, act, experts=experts)


def _next_token_module(name: str, cfg: ModelConfig) -> bool:
    """A tensor of the next-token-prediction module: its own (`mtp.`) or a layer past the last."""
    if name.startswith("mtp."):
        return True
    parts = name.split(".")
    return parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) >= cfg.n_layers


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """transformers 5's fused gate_up_proj cut in two; the next-token-prediction module's
    tensors left out of the count (`params` shows the module apart, from the config)."""
    if _next_token_module(name, cfg):
        return {}
    return mixtral.stored_parts(name, shape, cfg)


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """The fused gate_up into gate and up; the next-token-prediction module's tensors skipped."""
    if _next_token_module(name, cfg):
        return {}
    return mixtral.split(name, tensor, cfg)


def next_token_module(cfg: ModelConfig, n_modules: int) -> int:
    """Parameters of `n_modules` next-token-prediction modules as DeepSeek-V3's checkpoints
    store them (layers `n_layers`.. past the last): a block of the last layer's kind, the
    norms `enorm`, `hnorm` and `shared_head.norm`, `eh_proj` (d × 2d), and their own copies
    of the embedding and the output head (DeepSeek-V3: 13,463,425,536, which with the
    671,026,404,352 of the model makes the 685B the checkpoint holds)."""
    from math import prod

    from attnscope.parts import NOT_COUNTED, block_shapes

    d = cfg.d_model
    block = sum(prod(shape) for name, shape in block_shapes(cfg, cfg.layer(cfg.n_layers - 1)).items()
                if not name.endswith(NOT_COUNTED))
    return n_modules * (block + 3 * d + 2 * d * d + 2 * cfg.vocab_size * d)
