"""Where a `config.ModelConfig` comes from: a preset by exact name, a config.json file or
folder, or a config.json-style dict handed to its family's reader (`architectures/`).

Presets (`attnscope.presets`) are plain dicts in Hugging Face `config.json` form, after
gpt-fast's dict of dicts, looked up by exact name and read through the same
`from_hf_config()` path as a real checkpoint's config, so there is one way to turn a
description into a `ModelConfig`. Files are read through `safe_io` (regular files only,
size-capped, depth-checked JSON). Every name here is re-exported by `attnscope.config`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnscope.config_checks import _shown
from attnscope.errors import ConfigError, UnknownPresetError
from attnscope.presets import PRESETS

if TYPE_CHECKING:
    from attnscope.config import ModelConfig

# config.json keys the family readers pass through bool(): the string "false" would read as True.
_HF_BOOLEANS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_parallel_residual",
                "do_layer_norm_before", "enable_bias", "is_decoder", "qkv_bias", "use_bias")


def preset(name: str) -> ModelConfig:
    """The preset called exactly `name`; an unknown name suggests close ones."""
    key = name.strip().lower()
    if key not in PRESETS:
        close = difflib.get_close_matches(key, PRESETS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `attnscope params --list`"
        raise UnknownPresetError(f"unknown preset {name!r}", hint=hint)
    raw = dict(PRESETS[key])
    raw.pop("_convention", None)
    return from_hf_config(raw, name=key)


def preset_convention(name: str) -> str:
    """The convention a preset headlines: the video's `3b1b` for GPT-3, else `full`."""
    return PRESETS.get(name.strip().lower(), {}).get("_convention", "full")


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse a config.json into a dict, with errors that name the file. Only a regular
    file of at most 100 MiB is read (a FIFO would block, a huge file fill the memory), and
    parsed as depth-checked JSON (`safe_io.loads_json`)."""
    from attnscope.safe_io import MAX_JSON, loads_json, read_regular

    try:
        data = read_regular(path, "config.json", MAX_JSON, ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"no config.json at {path}", hint="pass a folder that holds config.json") from None
    raw = loads_json(data, str(path), ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def _check_booleans(raw: dict[str, Any], name: str) -> None:
    """The config.json booleans (`_HF_BOOLEANS`) true, false or absent."""
    for key in _HF_BOOLEANS:
        value = raw.get(key)
        if value is not None and not isinstance(value, bool):
            where = f"{name}: " if name else ""
            raise ConfigError(f"{where}config.json's {key} must be true or false, got {_shown(value)}")


def from_hf_config(raw: dict[str, Any], name: str = "") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json dict via its family's module."""
    from attnscope.architectures import family_for

    where = f"{name}: " if name else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}config.json must hold a JSON object, not {type(raw).__name__}")
    module = family_for(raw)
    _check_booleans(raw, name)
    try:
        return module.config_from_hf(raw, name=name)
    except ConfigError:
        raise
    except KeyError as exc:
        raise ConfigError(f"{where}config.json lacks the field {_shown(exc.args[0])}",
                          hint="is this the model's own config.json?") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError, IndexError) as exc:
        # ArithmeticError: int(inf), 1 // 0 in a reader; the value is checked in ModelConfig after
        raise ConfigError(f"{where}config.json has a bad value: {_shown(str(exc), 200)}") from None


def load_config(path: Path) -> ModelConfig:
    """A ModelConfig from a config.json file, or a folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ConfigError(f"no such file: {path}", hint="pass a config.json or a model folder")
    return from_hf_config(read_config_json(path), name=path.parent.name or str(path))
