"""GGUF headers (llama.cpp's one-file format): the metadata and the tensor table.

`read_gguf(path)` parses the header by hand, after the GGUF spec (ggml's docs/gguf.md) and
gguf-py's `GGUFReader`: magic, version (2 or 3), metadata, the tensor table. No tensor data
is read. As with safetensors headers in `checkpoint.py`, every count, length, shape and
offset the file declares is checked against the file's size before anything is allocated,
and every malformation is a `CheckpointError` naming the file. Only regular files are read:
the file is opened non-blocking and checked with fstat, so a FIFO cannot hang us.

GGUF stores shapes innermost first (`ne[0]` is a row's length); `GGUFTensor.shape` is in
torch order (outermost first). gguf-py (`pip install gguf`) is needed for its type tables;
it is imported only when a GGUF is read. What the header becomes (a config, float32
tensors in our names) is `sources.gguf`.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from functools import cache
from math import prod
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from attnscope.errors import CheckpointError, ModelNotFoundError

VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 4  # arrays of arrays: the spec allows them, nothing real nests deeper
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
# Smallest possible encodings, to bound declared counts by the bytes that are left:
# a key/value is a key length (8), one key byte, a type (4), a one-byte value; a tensor
# entry is a name length (8), one dimension (4 + 8), a type (4) and an offset (8).
_MIN_KV, _MIN_TENSOR = 8 + 1 + 4 + 1, 8 + 4 + 8 + 4 + 8
# ggml's integer types hold no weight (llama.cpp writes them for nothing a model here
# reads): refused when the header is read. F64 is widened by hand (gguf-py has no
# dequantizer for it; `sources.gguf._dequantize`); every other type is a float or a
# quantized block format.
_INTEGER_TYPES = ("I8", "I16", "I32", "I64")


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table: where its bytes are and how they are encoded."""

    name: str
    shape: tuple[int, ...]  # torch order: GGUF's ne reversed
    ggml_type: int
    type_name: str  # "Q4_0", "F32", ...
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass
class GGUFFile:
    """A parsed GGUF header: metadata (strings decoded, arrays as lists) and tensor table."""

    path: Path
    version: int
    size: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    alignment: int
    data_start: int

    @property
    def arch(self) -> str:
        return self.metadata["general.architecture"]


def _gguf_py() -> Any:
    try:
        import gguf
        import gguf.quants  # the dequantizers live in a submodule
    except ImportError:
        raise CheckpointError("reading GGUF files needs the gguf package", hint="pip install gguf") from None
    return gguf


@cache
def _ggml_types() -> dict[int, tuple[Any, int, int]]:
    """ggml type id -> (gguf-py's type, elements per block, bytes per block), built once."""
    gguf = _gguf_py()
    return {int(q): (q, *sizes) for q, sizes in gguf.GGML_QUANT_SIZES.items()}


class _Header:
    """Bounds-checked little-endian reads over the mapped header."""

    def __init__(self, buf: mmap.mmap, path: Path, size: int) -> None:
        self.buf, self.path, self.size, self.pos = buf, path, size, 0

    def fail(self, what: str, hint: str = "the file is truncated or corrupt; download or convert it again") -> NoReturn:
        raise CheckpointError(f"{self.path}: {what}", hint=hint)

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            self.fail(f"{what} runs past the end of the file ({self.size} bytes)")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY or depth >= MAX_NESTING:
            self.fail(f"{what} has an unknown value type {vtype}")
        etype = self.scalar("<I", what)
        count = self.scalar("<Q", what)
        if etype in _SCALARS:
            width = struct.calcsize(_SCALARS[etype])
            self.need(count * width, what)
            values = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos).tolist()
            self.pos += count * width
            return values
        # variable-width elements: each takes at least 8 bytes (a length or a nested header)
        self.need(count * 8, what)
        if etype == _STRING:  # vocabularies: tens of thousands of strings, read in one tight loop
            return self._strings(count, what)
        return [self.value(etype, what, depth + 1) for _ in range(count)]

    def _strings(self, count: int, what: str) -> list[str]:
        buf, pos, size, out = self.buf, self.pos, self.size, []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.fail(f"{what} runs past the end of the file ({size} bytes)")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > size - pos:
                self.pos = pos
                self.fail(f"{what} runs past the end of the file ({size} bytes)")
            try:
                out.append(buf[pos : pos + n].decode("utf-8"))
            except UnicodeDecodeError:
                self.pos = pos
                self.fail(f"{what} is not valid UTF-8")
            pos += n
        self.pos = pos
        return out


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse and check a GGUF header (metadata and tensor table) without reading tensor data."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelNotFoundError(f"no such file: {path}", hint="pass the path of a .gguf file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a GGUF file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"{path} is a folder, not a GGUF file", hint="pass the .gguf file itself")
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path} is not a regular file", hint="pass the .gguf file itself")
        size = st.st_size
        if size < 24:
            raise CheckpointError(f"{path}: too short to be a GGUF file ({size} bytes)",
                                  hint="the file is truncated; download or convert it again")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Header(buf, path, size))
    finally:
        os.close(fd)


def _parse(r: _Header) -> GGUFFile:
    magic = r.buf[:4]
    if magic != b"GGUF":
        r.fail(f"not a GGUF file (it starts with {magic!r}, not b'GGUF')", hint="pass a .gguf file")
    r.pos = 4
    version = r.scalar("<I", "the version")
    if version not in VERSIONS:
        hint = "re-convert it with a current llama.cpp (convert_hf_to_gguf.py)"
        if version in (2 << 24, 3 << 24):
            r.fail("is a big-endian GGUF, which attnscope cannot read", hint=hint)
        r.fail(f"GGUF version {version} is not supported (attnscope reads versions 2 and 3)", hint=hint)
    n_tensors = r.scalar("<Q", "the tensor count")
    n_kv = r.scalar("<Q", "the metadata count")
    if n_kv * _MIN_KV + n_tensors * _MIN_TENSOR > r.size - r.pos:
        r.fail(f"declares {n_kv} metadata entries and {n_tensors} tensors, more than its {r.size} bytes can hold")
    meta: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key {i}")
        if key in meta:
            r.fail(f"metadata key {key!r} appears twice")
        vtype = r.scalar("<I", f"the type of metadata {key!r}")
        meta[key] = r.value(vtype, f"metadata {key!r}")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        r.fail("has no general.architecture string in its metadata", hint="is this a model file (not a vocabulary-only GGUF)?")
    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        r.fail(f"general.alignment must be a power of two, got {alignment!r}")
    entries = []
    for i in range(n_tensors):
        name = r.string(f"the name of tensor {i}")
        n_dims = r.scalar("<I", f"tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            r.fail(f"tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
        r.need(8 * n_dims, f"tensor {name!r}")
        dims = struct.unpack_from(f"<{n_dims}Q", r.buf, r.pos)
        r.pos += 8 * n_dims
        type_id = r.scalar("<I", f"tensor {name!r}")
        offset = r.scalar("<Q", f"tensor {name!r}")
        entries.append((name, dims, type_id, offset))
    data_start = -(-r.pos // alignment) * alignment  # the data section starts aligned
    tensors: dict[str, GGUFTensor] = {}
    for name, dims, type_id, offset in entries:
        if name in tensors:
            r.fail(f"tensor {name!r} is listed twice")
        tensors[name] = _tensor(r, name, dims, type_id, offset, data_start, alignment)
    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            r.fail(f"tensors {n0!r} and {n1!r} overlap in the file")
    return GGUFFile(r.path, version, r.size, meta, tensors, alignment, data_start)


def _tensor(r: _Header, name: str, dims: tuple[int, ...], type_id: int, offset: int,
            data_start: int, alignment: int) -> GGUFTensor:
    known = _ggml_types().get(type_id)
    if known is None:
        r.fail(f"tensor {name!r} has an unknown ggml type id {type_id}",
               hint="the file is corrupt, or newer than the installed gguf package (pip install -U gguf)")
    qtype, block, type_size = known
    if qtype.name in _INTEGER_TYPES:
        from attnscope.checkpoint import refuse_non_float

        refuse_non_float(r.path, name, qtype.name)
    numel = prod(dims)
    if numel >= 1 << 62:
        r.fail(f"tensor {name!r} declares {numel} elements")
    if dims[0] % block:
        r.fail(f"tensor {name!r}: rows of {dims[0]} elements are not whole {qtype.name} blocks of {block}")
    nbytes = numel // block * type_size
    start = data_start + offset
    if offset % alignment:
        r.fail(f"tensor {name!r} starts at offset {offset}, not a multiple of the alignment {alignment}")
    if start + nbytes > r.size:
        r.fail(f"tensor {name!r} ({nbytes} bytes at byte {start}) runs past the end of the file ({r.size} bytes)")
    return GGUFTensor(name, tuple(reversed(dims)), type_id, qtype.name, start, nbytes)
