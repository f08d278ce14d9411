"""Config-reading helpers shared by the family modules (both config.json styles)."""

from __future__ import annotations

from typing import Any

from attnscope.errors import ConfigError


def rope_settings(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling from either config style: old (`rope_theta`, `rope_scaling`)
    or new (`rope_parameters`, as current transformers writes it)."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or None
    theta = raw.get("rope_theta", params.get("rope_theta", 10000.0))
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = dict(params)
    if scaling is not None:
        # the base lives in `theta`; newer configs repeat it inside the scaling dict
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
        elif kind != "llama3":
            raise ConfigError(
                f"unsupported rope scaling {kind!r}", hint="supported rope scaling: llama3"
            )
    return float(theta), scaling


def checkpoint_dtype(raw: dict[str, Any]) -> str:
    return str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
