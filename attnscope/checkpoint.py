"""Find checkpoint files, read safetensors headers, and hand out tensors lazily.

A source is a folder, a `.safetensors` file, or a hub id resolved through the local
Hugging Face cache. Headers are read by hand, as safetensors' own format doc describes
them (8-byte little-endian length, then a JSON object of name -> dtype, shape,
data_offsets): counting parameters never maps a file nor touches tensor data, and every
malformation becomes a `CheckpointError` that names the file.

Hostile input: only regular files are opened (non-blocking, checked with fstat, as
`sources.gguf.read_gguf` does), so a FIFO named `model.safetensors` cannot hang us; every
size and shape a header declares is checked against the file before anything is
allocated; and a file the checkpoint names (an index's shard, a symlink in the folder)
must resolve inside the model's folder, or inside its own `models--org--name` folder of
the Hugging Face cache, whose snapshots link to `../../blobs/`.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Iterator

from attnscope.sources.hub import hub_cache_dir, looks_like_hub_id, resolve_hub  # noqa: F401  (re-exported)
from attnscope.errors import AttnscopeError, CheckpointError, ModelNotFoundError  # noqa: F401
from attnscope.safe_io import MAX_JSON, _mib, loads_json, open_regular, read_regular  # noqa: F401  (re-exported)
from attnscope.safe_io import allowed_roots as _allowed_roots, contained as _contained, list_dir, member  # noqa: F401

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
# The dtypes a weight may have: each is converted to the model's dtype exactly as torch
# casts it (FP8 and E8M0 widen exactly; F64 rounds to the dtype asked for). The others
# (BOOL, the integers, C64) hold no real weight: a quantized or corrupt checkpoint.
FLOAT_DTYPES = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F16", "BF16", "F32", "F64")
MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
MAX_DIM = 2**53  # every dim below this: exact as a JSON number anywhere, far above any real tensor


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

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def refuse_non_float(file: Path | str, name: str, dtype: str) -> None:
    """The one line for a weight stored in a type that is not a float (safetensors or GGUF)."""
    raise CheckpointError(
        f"{file}: tensor {name!r} is stored as {dtype}, but a weight must be a float type",
        hint="attnscope reads F16, BF16, F32, F64 and FP8 weights (GGUF: also its quantized blocks); "
             "this checkpoint is quantized in a format it cannot read, or corrupt",
    )


def check_weight_dtypes(ckpt: "Checkpoint", family: Any) -> None:
    """Refuse, before anything is built, a checkpoint whose weights are not floats (see
    FLOAT_DTYPES). Weights are the tensors the family's table maps to a parameter; buffers
    (BERT's I64 `position_ids`, GPT-2's causal mask) and tensors the model does not use
    are not read, whatever their dtype."""
    from attnscope.architectures import our_name

    for name, info in ckpt.tensors.items():
        if info.is_float:
            continue
        try:
            ours = our_name(family, name)
        except KeyError:  # not one of the family's tensors: never loaded
            ours = None
        if ours is not None and not ours.endswith(tuple(getattr(family, "PACKED", ()))):  # gpt-oss's MXFP4: decoded
            refuse_non_float(info.file, name, info.dtype)


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
        """config.json beside the weights; None if absent, an error if it is not a regular
        file or leads out of the model's folder."""
        return member(self.root, "config.json")

    @property
    def tokenizer_path(self) -> Path | None:
        return member(self.root, "tokenizer.json")


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors header without reading tensor data."""
    try:
        fd, size = open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file", hint="download it again") from None
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER:
                raise CheckpointError(
                    f"{path}: header of {length} bytes exceeds the {_mib(MAX_HEADER)} limit",
                    hint="the file is corrupt or not safetensors",
                )
            if 8 + length > size:
                raise CheckpointError(
                    f"{path}: header length {length} runs past the end of the file ({size} bytes)",
                    hint="the file is truncated or not safetensors; download it again",
                )
            blob = f.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(blob) < length:  # it shrank after fstat
        raise CheckpointError(f"{path}: header runs past the end of the file", hint="the file is truncated")
    header = loads_json(blob, f"{path}: safetensors header")
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(path: Path, name: str, entry: Any, data_size: int) -> TensorInfo:
    """One header entry, checked against the data before anything is sized from it:
    every dim an int in 0..2**53, the product compared step by step with the bytes the
    offsets hold (so a long list of huge dims is refused without multiplying it out)."""
    bad = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{bad} has a malformed header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{bad} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(s) and 0 <= s < MAX_DIM for s in shape):
        raise CheckpointError(f"{bad} has a malformed shape {_short(shape)}",
                              hint="every dimension must be a whole number from 0 to 2**53")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CheckpointError(f"{bad} has malformed data_offsets {_short(offsets)}")
    start, end = offsets
    if start < 0 or end < start or end > data_size:
        raise CheckpointError(
            f"{bad}: offsets {_short(start)}..{_short(end)} run past the data ({data_size} bytes)",
            hint="the file is truncated or corrupt",
        )
    width = DTYPE_SIZES[dtype]
    nbytes = 0 if 0 in shape else width
    for dim in shape:
        nbytes *= dim
        if nbytes > end - start:
            break
    if nbytes != end - start:
        raise CheckpointError(f"{bad}: {end - start} bytes do not hold a {dtype} tensor of shape {_short(shape)}",
                              hint="the file is corrupt")
    return TensorInfo(name, dtype, tuple(shape), start, end, path)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def locate(spec: str | os.PathLike[str]) -> Checkpoint:
    """Resolve a folder, a .safetensors file or a hub id into a Checkpoint with its headers."""
    text = str(spec)
    path = Path(text).expanduser()
    try:
        st: os.stat_result | None = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied", hint="check its permissions") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise ModelNotFoundError(f"cannot use {text!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if st is None:
        if os.path.lexists(path):
            raise ModelNotFoundError(f"{path} is a link to nothing", hint="the file it pointed to was removed")
        if not looks_like_hub_id(text):
            raise ModelNotFoundError(f"no such file or folder: {text}",
                                     hint="pass a checkpoint folder, a .safetensors file or a hub id")
        path = resolve_hub(text)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ModelNotFoundError(f"cannot use the hub snapshot {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied", hint="check its permissions")
    if stat.S_ISREG(st.st_mode):
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file", hint="pass the checkpoint folder or its .safetensors file")
        ckpt = Checkpoint(text, path.parent, [path])
    elif stat.S_ISDIR(st.st_mode):
        ckpt = _folder(text, path)
    else:
        raise CheckpointError(f"{path} is not a regular file or a folder",
                              hint="pass the checkpoint folder or its .safetensors file")
    ckpt.tensors = _read_all(ckpt)
    return ckpt


def _folder(source: str, root: Path) -> Checkpoint:
    index = member(root, "model.safetensors.index.json")
    if index is not None:
        return Checkpoint(source, root, _shards(root, index), index=index)
    try:
        names = list_dir(root)
    except FileNotFoundError:
        raise CheckpointError(f"cannot list {root}: it was removed meanwhile") from None
    files = [_contained(root, root / name, name) for name in names if name.endswith(".safetensors")]
    if not files:
        bins = any(n.endswith(".bin") for n in names)
        hint = "convert the checkpoint to safetensors" if bins else "pass a folder with *.safetensors"
        raise CheckpointError(f"{root} holds no .safetensors weights", hint=hint)
    return Checkpoint(source, root, files)


def _shards(root: Path, index: Path) -> list[Path]:
    """The shard files an index names, in order; each a relative path that stays in the folder."""
    raw = loads_json(read_regular(index, "safetensors index"), str(index))
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map of tensor -> file)",
                              hint="download it again")
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        named = f"{index.name}'s shard {shard!r}"
        if os.path.isabs(shard) or "\0" in shard:
            what = "contains a NUL byte" if "\0" in shard else f"is an absolute path, outside the model folder {root}"
            raise CheckpointError(f"{named} {what}",
                                  hint="a shard must sit beside the index; the index is corrupt or hostile")
        f = _contained(root, root / shard, named)
        if not os.path.exists(f):
            raise CheckpointError(f"{index} names the shard {shard}, which is missing", hint="download the missing shard")
        files.append(f)
    return files


def _read_all(ckpt: Checkpoint) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for f in ckpt.weights:
        for name, info in read_header(f).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} is stored twice ({tensors[name].file.name}, {f.name})")
            tensors[name] = info
    return tensors


def iter_tensors(ckpt: Checkpoint, names: list[str], device: str = "cpu") -> Iterator[tuple[str, Any]]:
    """Yield (name, tensor) for `names`, opening each shard once, memory-mapped. Tensors
    come in their stored dtype; a loader checks its weights first (`check_weight_dtypes`)."""
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
