"""Mixtral: Mistral's layers with a mixture of experts in every MLP slot. Each token's
router logits go through a softmax over all `num_local_experts`, the token visits its
`num_experts_per_tok` best, weighted by their probabilities renormalised to sum 1
(always; Mixtral has no `norm_topk_prob`). A `sliding_window`, where set, holds on every
layer.

Experts are stored either one by one (published checkpoints:
`block_sparse_moe.experts.{e}.w1/w3/w2` = gate/up/down, router `block_sparse_moe.gate`)
or fused 3-D as transformers 5 holds them (`mlp.experts.gate_up_proj` [E, 2w, d], gate
rows first, `mlp.experts.down_proj` [E, d, w], router `mlp.gate`); both load (see
`parts.experts` for our names and how per-expert tensors are stacked).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama
from attnscope.config import ModelConfig
from attnscope.kinds import ExpertSpec, LayerSpec, MlpSpec, Stack

MODEL_TYPES = ("mixtral",)
PREFIXES = ("model.",)
DESCRIPTION = "Mixtral: Mistral layers, a mixture of experts in every MLP (softmax, top-k, renormalised)"

_DENSE_MLP = tuple(k for k in llama.WEIGHTS if ".mlp." in k)


def expert_weights(moe: str, router: str, parts: dict[str, str]) -> dict[str, str]:
    """A family's MoE tensors: the router `layers.{layer}.<moe>.<router>.weight`, the
    per-expert form `<moe>.experts.{expert}.<name>.weight` for each of `parts` (checkpoint
    name → gate/up/down), and transformers 5's fused `mlp.experts.gate_up_proj/down_proj`
    with its router `mlp.gate`."""
    table = {
        f"layers.{{layer}}.{moe}.{router}.weight": "blocks.{layer}.mlp.router.weight",
        "layers.{layer}.mlp.gate.weight": "blocks.{layer}.mlp.router.weight",
        "layers.{layer}.mlp.experts.gate_up_proj": "blocks.{layer}.mlp.experts.gate_up.weight",
        "layers.{layer}.mlp.experts.down_proj": "blocks.{layer}.mlp.experts.down.weight",
    }
    for theirs, ours in parts.items():
        table[f"layers.{{layer}}.{moe}.experts.{{expert}}.{theirs}.weight"] = (
            f"blocks.{{layer}}.mlp.experts.{ours}.weight.{{expert}}")
    return table


WEIGHTS: dict[str, str | None] = {
    **{k: v for k, v in llama.WEIGHTS.items() if k not in _DENSE_MLP},
    **expert_weights("block_sparse_moe", "gate", {"w1": "gate", "w3": "up", "w2": "down"}),
}


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """transformers 5's fused `gate_up_proj` [E, 2w, d] as our gate and up [E, w, d]
    (gate rows first), by shapes alone; anything else as it is."""
    if name.endswith(".mlp.experts.gate_up.weight") and len(shape) == 3 and shape[1] % 2 == 0:
        half = (shape[0], shape[1] // 2, shape[2])
        return {name.replace(".gate_up.", f".{part}."): half for part in ("gate", "up")}
    return {name: shape}


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """The fused gate_up into gate and up (`stored_parts`)."""
    parts = stored_parts(name, tuple(tensor.shape), cfg)
    if len(parts) == 1:
        return {name: tensor}
    return dict(zip(parts, tensor.chunk(2, dim=1)))


def experts_spec(spec: LayerSpec, width: int, experts: ExpertSpec) -> LayerSpec:
    """Layer kind `spec` with a mixture of `experts` of width `width` in its MLP slot."""
    return replace(spec, mlp=MlpSpec("experts", width, spec.mlp.act, experts=experts))


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    cfg = replace(llama.config_from_hf(raw, name), family="mixtral", sliding_window=raw.get("sliding_window"))
    experts = ExpertSpec(n_experts=raw.get("num_local_experts", 8), top_k=raw.get("num_experts_per_tok", 2))
    return replace(cfg, kinds=Stack(((experts_spec(cfg.layer(0), cfg.d_mlp, experts), cfg.n_layers),)))
