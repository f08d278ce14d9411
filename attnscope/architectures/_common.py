"""Config-reading helpers shared by the family modules, for both config.json styles:
the older keys most published checkpoints carry (`rope_theta`, `rope_scaling`,
`torch_dtype`, `rotary_pct`) and the newer ones current transformers writes
(`rope_parameters`, `dtype`, `layer_types`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.config import PLAIN_LAYER
from attnscope.errors import ConfigError
from attnscope.kinds import LayerSpec


def layer_kind(wiring: str = "pre", *, mlp: str = "dense", mlp_bias: bool = False, qkv_bias: bool = False,
               out_bias: bool = False, qk_norm: str | None = None) -> LayerSpec:
    """A family's layer kind, as `ModelConfig(layer_template=…)` takes it: how the block
    is wired (`kinds.WIRINGS`), the MLP's kind and bias, the attention's biases and q/k
    norm. Sizes, mask, positions and scale stay flat in ModelConfig, which fills them in
    (so `replace()` on a size re-derives every layer); a family whose layers differ
    passes `kinds=` built from `cfg.layer(i)`."""
    return replace(PLAIN_LAYER, wiring=wiring, mlp=replace(PLAIN_LAYER.mlp, kind=mlp, bias=mlp_bias),
                   attn=replace(PLAIN_LAYER.attn, qkv_bias=qkv_bias, out_bias=out_bias, qk_norm=qk_norm))


def rope_settings(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling (None, or a `llama3` dict without the base)."""
    params = raw.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_parameters must be an object, got {params!r}")
    scaling = raw.get("rope_scaling") or None
    theta = raw.get("rope_theta", raw.get("rotary_emb_base", params.get("rope_theta", 10000.0)))
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = dict(params)
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise ConfigError(f"rope_scaling must be an object, got {scaling!r}")
        # the base lives in `theta`; newer configs repeat it (and the rotary share) inside
        scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
        elif kind != "llama3":
            raise ConfigError(
                f"unsupported rope scaling {kind!r}", hint="supported rope scaling: llama3"
            )
    return float(theta), scaling


def rotary_dim(raw: dict[str, Any], d_head: int, default: float = 1.0) -> int:
    """How many dimensions of each head RoPE rotates (NeoX `rotary_pct`, Phi
    `partial_rotary_factor`, or the factor inside `rope_parameters`)."""
    params = raw.get("rope_parameters") or {}
    factor = raw.get("rotary_pct", raw.get("partial_rotary_factor", params.get("partial_rotary_factor", default)))
    return int(d_head * float(factor))


def layer_windows(raw: dict[str, Any], n_layers: int, window: int | None,
                  default: list[str] | None = None) -> list[int | None] | None:
    """Per-layer sliding windows from `layer_types` (or a family's default pattern)."""
    types = raw.get("layer_types") or default
    if window is None or types is None:
        return None
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(f"layer_types must list one type per layer ({n_layers}), got {types!r}")
    out: list[int | None] = []
    for t in types:
        if t not in ("sliding_attention", "full_attention"):
            raise ConfigError(f"unsupported layer type {t!r}", hint="supported: sliding_attention, full_attention")
        out.append(window if t == "sliding_attention" else None)
    return out


def checkpoint_dtype(raw: dict[str, Any]) -> str:
    return str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
