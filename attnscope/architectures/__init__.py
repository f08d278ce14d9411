"""The architecture registry: one module per family, looked up by config.json's `model_type`.

Each family module (one file per family, found automatically) provides, after gpt-fast's
`convert_hf_checkpoint.py`:
  * `MODEL_TYPES`: the `model_type` values it serves;
  * `PREFIXES`: wrapper prefixes a checkpoint may carry (`bert.`, `model.`, ...);
  * `WEIGHTS`: one dict mapping each Hugging Face weight name (with `{layer}` for the
    layer index, and `{expert}` for a per-expert tensor's index) to our name, or to
    `None` for a non-parameter buffer we skip;
  * `config_from_hf(raw, name) -> ModelConfig`;
  * optionally `split(our_name, tensor, cfg) -> dict[str, tensor]` for quirks such as
    GPT-2's fused, transposed QKV (fused q/k/v are counted in equal thirds by
    `params.stored_shapes`);
  * `DESCRIPTION`: one line for `params --list` and the README's table.

This is the only place in attnscope where Hugging Face weight names appear; everything
downstream uses our names (see `attnscope.params.param_shapes`).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType
from typing import Any

from attnscope.errors import ConfigError, UnsupportedArchitectureError

# Every module in this package (but the _private ones) is a family: adding a family is
# adding a file. ARCHITECTURES maps each `model_type` to its module.
ARCHITECTURES: dict[str, ModuleType] = {}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _model_type in _module.MODEL_TYPES:
        ARCHITECTURES[_model_type] = _module

# Non-parameter buffers some checkpoints store: GPT-2's causal masks, rotary inverse
# frequencies, BERT's position ids. Counted nowhere, reported as skipped.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", "inv_freq", "position_ids")

_LAYER = re.compile(r"\.(\d+)\.")


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def family_for(raw: dict[str, Any]) -> ModuleType:
    """The family module for a config.json dict, or an error listing the supported ones."""
    model_type = raw.get("model_type")
    if model_type is None:
        raise ConfigError(
            "config.json has no model_type",
            hint=f"supported model types: {', '.join(supported())}",
        )
    module = ARCHITECTURES.get(str(model_type))
    if module is None:
        raise UnsupportedArchitectureError(
            f"unsupported model_type {model_type!r}",
            hint=f"supported model types: {', '.join(supported())}",
        )
    return module


def is_buffer(hf_name: str) -> bool:
    return hf_name.endswith(BUFFER_SUFFIXES)


def our_name(module: ModuleType, hf_name: str) -> str | None:
    """Our name for a checkpoint tensor; None for buffers; KeyError when unknown."""
    candidates = [hf_name] + [hf_name[len(p):] for p in module.PREFIXES if hf_name.startswith(p)]
    for name in candidates:
        match = _LAYER.search(name)
        if match:
            pattern = name[: match.start()] + ".{layer}." + name[match.end():]
            if pattern in module.WEIGHTS:
                target = module.WEIGHTS[pattern]
                return None if target is None else target.format(layer=int(match.group(1)))
            inner = _LAYER.search(pattern, match.start() + len(".{layer}"))  # a per-expert tensor
            if inner:
                pattern = pattern[: inner.start()] + ".{expert}." + pattern[inner.end():]
                if pattern in module.WEIGHTS:
                    target = module.WEIGHTS[pattern]
                    return None if target is None else target.format(layer=int(match.group(1)),
                                                                     expert=int(inner.group(1)))
        if name in module.WEIGHTS:
            return module.WEIGHTS[name]
    if is_buffer(hf_name):
        return None
    raise KeyError(hf_name)


def to_ours(module: ModuleType, hf_name: str, tensor: Any, cfg: Any) -> dict[str, Any]:
    """Translate one checkpoint tensor into our name(s); empty for buffers."""
    name = our_name(module, hf_name)
    if name is None:
        return {}
    split = getattr(module, "split", None)
    if split is not None:
        return split(name, tensor, cfg)
    return {name: tensor}
