"""Find checkpoint files, read safetensors headers, and hand out tensors lazily.

A source is a folder, a `.safetensors` file, or a hub id resolved through the local
Hugging Face cache. Headers are read by hand, as safetensors' own format doc describes
them (8-byte little-endian length, then a JSON object of name -> dtype, shape,
data_offsets): counting parameters never maps a file nor touches tensor data, and every
malformation becomes a `CheckpointError` that names the file.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Iterator

from attnscope.errors import CheckpointError, ModelNotFoundError

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    file: Path

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass
class Checkpoint:
    """Where a model's files are. `weights` are the safetensors files, in shard order."""

    source: str
    root: Path
    weights: list[Path]
    index: Path | None = None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def config_path(self) -> Path | None:
        path = self.root / "config.json"
        return path if path.is_file() else None

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.root / "tokenizer.json"
        return path if path.is_file() else None


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors header without reading tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER or 8 + length > size:
                raise CheckpointError(
                    f"{path}: header length {length} runs past the end of the file ({size} bytes)",
                    hint="the file is truncated or not safetensors; download it again",
                )
            blob = f.read(length)
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a safetensors file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: safetensors header is not valid JSON", hint="the file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    data_size = size - 8 - length
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        infos[name] = _tensor_info(path, name, entry, data_size)
    spans = sorted((i.start, i.end, i.name) for i in infos.values() if i.end > i.start)
    for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap in the file", hint="the file is corrupt")
    return infos


def _tensor_info(path: Path, name: str, entry: Any, data_size: int) -> TensorInfo:
    bad = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{bad} has a malformed header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{bad} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise CheckpointError(f"{bad} has a malformed shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise CheckpointError(f"{bad} has malformed data_offsets {offsets!r}")
    start, end = offsets
    if start < 0 or end < start or end > data_size:
        raise CheckpointError(
            f"{bad}: offsets {start}..{end} run past the data ({data_size} bytes)",
            hint="the file is truncated or corrupt",
        )
    if end - start != prod(shape) * DTYPE_SIZES[dtype]:
        raise CheckpointError(f"{bad}: {end - start} bytes do not hold a {dtype} tensor of shape {tuple(shape)}")
    return TensorInfo(name, dtype, tuple(shape), start, end, path)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, honouring HF_HUB_CACHE and HF_HOME as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _offline() -> bool:
    """huggingface_hub's rule (`constants.HF_HUB_OFFLINE`: HF_HUB_OFFLINE, else
    TRANSFORMERS_OFFLINE), read at call time rather than from the constant, which
    huggingface_hub fixes when it is first imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.endswith((".json", ".safetensors")) and not spec.startswith(".")


def resolve_hub(repo_id: str) -> Path:
    """The snapshot folder of a hub model, from the local cache (downloading only when online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # a malformed cache entry, an invalid id
        raise ModelNotFoundError(f"cannot use {repo_id!r} from the hub cache at {cache}: {exc}") from None
    if _offline():
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set",
            hint=f"download it where there is network (`hf download {repo_id}`) and copy the cache, or pass --model PATH",
        )
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the Hugging Face cache at {cache} and could not be downloaded ({type(exc).__name__})",
            hint="check the id and your network, set HF_HOME to the cache that holds it, or pass --model PATH",
        ) from None


def locate(spec: str | os.PathLike[str]) -> Checkpoint:
    """Resolve a folder, a .safetensors file or a hub id into a Checkpoint with its headers."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        root = path if path.is_dir() else path.parent
    elif looks_like_hub_id(text):
        root = resolve_hub(text)
        path = root
    else:
        raise ModelNotFoundError(f"no such file or folder: {text}", hint="pass a checkpoint folder, a .safetensors file or a hub id")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file", hint="pass the checkpoint folder or its .safetensors file")
        ckpt = Checkpoint(text, root, [path])
    else:
        ckpt = _folder(text, path)
    ckpt.tensors = _read_all(ckpt)
    return ckpt


def _folder(source: str, root: Path) -> Checkpoint:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = list(dict.fromkeys(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map)") from None
        files = [root / str(s) for s in shards]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index} names the shard {f.name}, which is missing", hint="download the missing shard")
        return Checkpoint(source, root, files, index=index)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        hint = "convert the checkpoint to safetensors" if any(root.glob("*.bin")) else "pass a folder with *.safetensors"
        raise CheckpointError(f"{root} holds no .safetensors weights", hint=hint)
    return Checkpoint(source, root, files)


def _read_all(ckpt: Checkpoint) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for f in ckpt.weights:
        for name, info in read_header(f).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} is stored twice ({tensors[name].file.name}, {f.name})")
            tensors[name] = info
    return tensors


def iter_tensors(ckpt: Checkpoint, names: list[str], device: str = "cpu") -> Iterator[tuple[str, Any]]:
    """Yield (name, tensor) for `names`, opening each shard once, memory-mapped."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(ckpt.tensors[name].file, []).append(name)
    for file, file_names in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device=device) as f:
                for name in file_names:
                    yield name, f.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own types for bad data
            raise CheckpointError(f"{file}: cannot read tensors: {exc}") from None
