"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's layers (q/k/v biases) with a mixture
of experts in the MLP slot of the sparse layers. The router's softmax over all
`num_experts` picks each token's `num_experts_per_tok`, renormalised only where
`norm_topk_prob`; every token also visits a shared expert of width
`shared_expert_intermediate_size`, scaled by sigmoid(`shared_expert_gate` · x).

Which layers are sparse: layer i unless it is in `mlp_only_layers`, when `num_experts` > 0
and (i + 1) is a multiple of `decoder_sparse_step`; the others keep a dense gated MLP of
`intermediate_size` (another layer kind in the stack). Windows only with
`use_sliding_window`: per `layer_types`, else transformers' default (odd-numbered layers
below `max_window_layers`, counting from 1).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama, mixtral
from attnscope.architectures._common import layer_windows
from attnscope.config import ModelConfig, _shown
from attnscope.config_checks import MAX_LAYERS, _positive_int
from attnscope.errors import ConfigError
from attnscope.kinds import ExpertSpec, Stack

MODEL_TYPES = ("qwen2_moe",)
PREFIXES = ("model.",)
DESCRIPTION = "Qwen2-MoE (Qwen1.5-MoE): Qwen2 layers, routed experts + a sigmoid-gated shared expert, sparse step"

WEIGHTS: dict[str, str | None] = {
    **llama.WEIGHTS,  # dense layers keep mlp.gate_proj/up_proj/down_proj
    **mixtral.expert_weights("mlp", "gate", {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}),
    "layers.{layer}.mlp.shared_expert.gate_proj.weight": "blocks.{layer}.mlp.shared.gate.weight",
    "layers.{layer}.mlp.shared_expert.up_proj.weight": "blocks.{layer}.mlp.shared.up.weight",
    "layers.{layer}.mlp.shared_expert.down_proj.weight": "blocks.{layer}.mlp.shared.down.weight",
    "layers.{layer}.mlp.shared_expert_gate.weight": "blocks.{layer}.mlp.shared_gate.weight",
}

stored_parts = mixtral.stored_parts
split = mixtral.split


def n_experts(raw: dict[str, Any], default: int) -> Any:
    """`num_experts`, or `num_local_experts` as transformers 5 writes Qwen3-MoE's."""
    for key in ("num_experts", "num_local_experts"):
        if raw.get(key) is not None:
            return raw[key]
    return default


def sparse_layers(raw: dict[str, Any], n_layers: int) -> list[bool]:
    """Which layers hold experts: transformers' rule (see the module's docstring)."""
    step, only = raw.get("decoder_sparse_step", 1), raw.get("mlp_only_layers") or []
    count = n_experts(raw, 0)
    if not _positive_int(step, MAX_LAYERS):
        raise ConfigError(f"decoder_sparse_step must be a positive integer, got {_shown(step)}")
    if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise ConfigError(f"mlp_only_layers must list layer numbers, got {_shown(only)}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ConfigError(f"num_experts must be a non-negative integer, got {_shown(count)}")
    dense = set(only)
    return [i not in dense and count > 0 and (i + 1) % step == 0 for i in range(n_layers)]


def moe_stack(cfg: ModelConfig, raw: dict[str, Any], experts: ExpertSpec, width: int) -> ModelConfig:
    """`cfg` with experts of `width` in its sparse layers (`sparse_layers`); the dense
    layers keep the kind `cfg` derived for them (its window, its gated MLP)."""
    sparse = sparse_layers(raw, cfg.n_layers)
    moe = {}  # one experts kind per distinct dense kind (windows differ)
    specs = []
    for i, is_moe in enumerate(sparse):
        spec = cfg.layer(i)
        if is_moe:
            if spec not in moe:
                moe[spec] = mixtral.experts_spec(spec, width, experts)
            spec = moe[spec]
        specs.append(spec)
    return replace(cfg, kinds=Stack.of(specs))


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    cfg = llama.config_from_hf(raw, name)
    n = cfg.n_layers
    windows = None
    if raw.get("use_sliding_window"):
        first = raw.get("max_window_layers", 28)
        default = ["sliding_attention" if (i + 1) % 2 and i < first else "full_attention" for i in range(n)]
        windows = layer_windows(raw, n, raw.get("sliding_window"), default)
    cfg = replace(cfg, family="qwen2_moe", layer_windows=windows,
                  layer_template=cfg.layer_template.with_attn(qkv_bias=bool(raw.get("qkv_bias", True))))
    experts = ExpertSpec(
        n_experts=n_experts(raw, 60), top_k=raw.get("num_experts_per_tok", 4),
        norm_topk_prob=raw.get("norm_topk_prob", False),
        d_shared=raw.get("shared_expert_intermediate_size", 0), n_shared=1 if raw.get("shared_expert_intermediate_size") else 0,
        shared_gate=bool(raw.get("shared_expert_intermediate_size")),
    )
    return moe_stack(cfg, raw, experts, raw.get("moe_intermediate_size", 1408))
