"""Where a model comes from, resolved but not loaded: the default model's name, and a path, hub
id or packaged name opened into its checkpoint (or GGUF file) and config.json (`Source`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnscope import architectures, checkpoint
from attnscope.config import ModelConfig, from_hf_config, read_config_json
from attnscope.errors import ConfigError, ModelNotFoundError
from attnscope.sources import gguf_path, hub, packaged


def default_model() -> str:
    """ATTNSCOPE_MODEL, else the packaged default (`sources.packaged.DEFAULT`), by name."""
    env = os.environ.get("ATTNSCOPE_MODEL", "").strip()
    return env or packaged.DEFAULT


@dataclass
class Source:
    """A model's files and its config, resolved but not loaded."""

    spec: str  # what was asked for (a path, hub id or packaged name), or the default model's name
    checkpoint: checkpoint.Checkpoint | None  # None for a GGUF file
    raw: dict[str, Any]  # config.json as read (for a GGUF, its metadata in config.json's keys)
    config: ModelConfig
    gguf: Any = None  # sources.gguf.GGUFFile, for a GGUF checkpoint


def open_source(model: str | os.PathLike[str] | None = None) -> Source:
    """Resolve a model (None: the default) and read its config.json once.

    A local folder's config is read before its weights' headers, so an unsupported
    model_type is reported ahead of anything about the weights."""
    spec = str(model) if model is not None else default_model()
    from_env = model is None and bool(os.environ.get("ATTNSCOPE_MODEL", "").strip())
    try:
        return _open_source(spec)
    except ModelNotFoundError as exc:
        exc = packaged.with_suggestion(spec, exc)
        if from_env:  # say where the name came from: the user did not type it here
            raise ModelNotFoundError(f"ATTNSCOPE_MODEL names {spec!r}: {exc.message}",
                                     hint=exc.hint or "unset ATTNSCOPE_MODEL or point it at a model") from None
        raise exc from None


def _display_name(spec: str) -> str:
    """How output names a model: a folder's or file's own name, not its whole path."""
    path = Path(spec).expanduser()
    if path.exists():
        resolved = path.resolve()
        return resolved.stem if resolved.is_file() else resolved.name or spec
    return spec


def _open_source(spec: str) -> Source:
    name = _display_name(spec)
    where = spec
    if spec in packaged.PACKAGED:
        where, name = str(packaged.resolve(spec)), packaged.PACKAGED[spec].title
    g = gguf_path(where)
    if g is None and hub.looks_like_gguf_repo(where):
        g = hub.hub_gguf(where)
    if g is not None:
        from attnscope.sources.gguf import gguf_config, read_gguf

        f = read_gguf(g)
        raw = gguf_config(f)
        return Source(spec, None, raw, from_hf_config(raw, name=name), gguf=f)
    spec = where
    folder = Path(spec).expanduser()
    # A local folder's config.json is read first, through the same containment and
    # regular-file checks as every file a checkpoint names.
    early = checkpoint.member(folder, "config.json") if folder.is_dir() else None
    raw = read_config_json(early) if early is not None else None
    cfg = from_hf_config(raw, name=name) if raw is not None else None
    ckpt = checkpoint.locate(spec)
    if raw is None:
        if ckpt.config_path is None:
            raise ConfigError(f"{ckpt.root} has no config.json", hint="put the model's config.json beside its weights")
        raw = read_config_json(ckpt.config_path)
        cfg = from_hf_config(raw, name=name)
    assert cfg is not None  # internal invariant: set on both paths
    checkpoint.check_weight_dtypes(ckpt, architectures.family_for(raw))
    return Source(spec, ckpt, raw, cfg)
