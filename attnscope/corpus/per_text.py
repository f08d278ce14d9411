"""The per-text file: one JSON Lines record per text, written as each text finishes.

One header line (model, dtype, measure, truncation, scores, layers, heads), then one
line per text (index, line number, text digest, token count, each score's value as
[layer][head], and the float64 sums and row counts that pooling needs), appended and
flushed as each text finishes. A resume reads it back, after checking that its header
matches the run; a last line cut short by a killed run is dropped and its text runs
again. Under torchrun each rank appends to its own FILE.rankN.jsonl, which rank 0
merges into FILE at the end (`merge_rank_files`); a resume reads FILE and every
FILE.rank*.jsonl, whatever the number of processes that wrote them.

Hostile files are refused, each in one line: a per-text name that is a symbolic link
(even a dangling one) or not a regular file, before the run (`check_target`) and again
when opened (O_NOFOLLOW); a file another run holds (`PerTextFile` locks it for the
whole run); and every resumed record is checked like any input (`parse_record`), so a
forged count, a NaN or negative sum or a duplicate never reaches the pooled scores.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import Tensor

from attnscope.corpus.reading import JSONL_SUFFIXES
from attnscope.errors import ExportError, InputError
from attnscope.safe_io import MAX_DEPTH, json_depth_ok, open_regular

if TYPE_CHECKING:
    from attnscope.api import Inspector

PER_TEXT_FORMAT = "attnscope per-text head scores"
PER_TEXT_VERSION = 1
_DIGEST_CHARS = 16
MAX_RECORD = 64 * 1024 * 1024  # bytes of one line: a record of 80 layers x 64 heads x 6 scores is ~2 MiB
_MAX_INT = 2**53  # indexes, line and token numbers: JSON's exact integers
_HEX = re.compile(f"[0-9a-f]{{{_DIGEST_CHARS}}}")
_SLACK = 1e-3  # per row: float32 row terms in 0..1 pass their bounds by rounding only


def text_digest(text: str) -> str:
    """The short SHA-1 a record keeps of its text, to tell that a resumed corpus is the same."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]


@dataclass
class Record:
    """One text's record, read back from a per-text file."""

    line: int
    digest: str
    n_tokens: int
    truncated_from: int | None
    sums: dict[str, Tensor]  # float64 (L_sel, H_sel)
    counts: dict[str, int]
    raw: str  # the line as written, for the merge


def make_header(inspector: "Inspector", measure: str, truncate: bool, measured: list[str], ls: list[int],
                hs: list[int]) -> dict[str, Any]:
    """What a per-text file's records depend on: a resume must match every field."""
    cfg = inspector.config
    return {"format": PER_TEXT_FORMAT, "version": PER_TEXT_VERSION, "model": cfg.name or inspector.source,
            "model_shape": [cfg.n_layers, cfg.n_heads], "dtype": str(inspector.dtype).removeprefix("torch."),
            "measure": measure, "truncate": truncate, "scores": measured, "layers": ls, "heads": hs}


def rank_file(path: Path, rank: int) -> Path:
    """FILE.jsonl -> FILE.rank{rank}.jsonl: where one process of a torchrun job appends."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _rank_files(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.stem) + r"\.rank\d+" + re.escape(path.suffix) + "$")
    if not path.parent.is_dir():
        return []
    # links and non-files too, for check_target to refuse (is_file() would hide a dangling link)
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


def check_target(path: Path, resume: bool) -> None:
    """Refuse, before any work, a per-text name that is not a plain .jsonl file this run
    may write: a symbolic link (even a dangling one: records go only to the file
    named), a folder, a FIFO or device, a missing folder, an existing file without
    --resume."""
    if path.suffix not in JSONL_SUFFIXES:
        raise ExportError(f"the per-text file {path.name} is not JSON Lines", hint="use a name ending in .jsonl")
    for file in [path, *_rank_files(path)]:
        if file.is_symlink():
            raise ExportError(f"the per-text file {file} is a symbolic link",
                              hint="name the real file: attnscope writes only the file it is given, never through "
                                   "a link")
    if path.is_dir():
        raise ExportError(f"{path} is a folder", hint="give a file name ending in .jsonl")
    for file in [path, *_rank_files(path)]:
        if file.exists() and not file.is_file():
            raise ExportError(f"the per-text file {file} is not a regular file",
                              hint="a FIFO or device cannot hold records: choose another --per-text file")
    if not path.parent.is_dir():
        raise ExportError(f"the folder {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write in {path.parent}: permission denied")
    if not resume:
        existing = [p for p in [path, *_rank_files(path)] if p.exists()]
        if existing:
            raise ExportError(f"{existing[0]} already exists",
                              hint="pass --resume to continue that run, or choose another --per-text file")


def read_done(path: Path, header: dict[str, Any], mine: Callable[[int], bool],
              max_tokens: int | None = None) -> dict[int, Record]:
    """The records of `path` and its rank files whose index `mine` keeps, each once, each
    checked like any input (`parse_record`; `max_tokens`: the model's positions). A text
    in two files (a merge cut short) must have the same record in both."""
    done: dict[int, Record] = {}
    for file in [path, *_rank_files(path)]:
        if not file.exists():
            continue
        for index, rec in _records(file, header, max_tokens):
            if not mine(index):
                continue
            if index in done and done[index].raw != rec.raw:
                raise InputError(f"text {index} has two different records in {path} and its .rank files",
                                 hint="start a new --per-text file")
            done[index] = rec
    return done


def _lines(file: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(number, line, complete) for each line of a regular file, read at most MAX_RECORD
    bytes at a time; `complete` is False for a last line without its newline."""
    try:
        fd, _ = open_regular(file, InputError)  # never a FIFO or a device: nothing blocks
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as f:
        number = 0
        while True:
            try:
                raw = f.readline(MAX_RECORD + 1)
            except OSError as exc:
                raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
            if not raw:
                return
            number += 1
            if len(raw) > MAX_RECORD:
                raise InputError(f"line {number} of {file} is longer than any per-text record",
                                 hint="remove that line, or start a new --per-text file")
            complete = raw.endswith(b"\n")
            yield number, raw.rstrip(b"\n"), complete


def _records(file: Path, header: dict[str, Any], max_tokens: int | None) -> Iterator[tuple[int, Record]]:
    """(index, record) for each complete line after a matching header. A last line
    without its newline is a write cut short (the run was killed): it is skipped, and
    the text it held runs again. A text twice in one file is an error."""
    first: dict[int, int] = {}
    for number, raw, complete in _lines(file):
        if not complete:
            return  # killed mid-write (before its header was complete, when the first line)
        if number == 1:
            _check_header(file, raw, header)
            continue
        index, rec = parse_record(raw, header, max_tokens, f"line {number} of {file}")
        if index in first:
            raise InputError(f"line {number} of {file} is not a per-text record: it repeats text {index} "
                             f"(line {first[index]})", hint="remove that line, or start a new --per-text file")
        first[index] = number
        yield index, rec


def _check_header(file: Path, raw: bytes, header: dict[str, Any]) -> None:
    try:
        text = raw.decode("utf-8")
        theirs = json.loads(text) if json_depth_ok(text) else None
    except (ValueError, RecursionError):  # not UTF-8, not JSON, a 4,300-digit integer
        theirs = None
    if not isinstance(theirs, dict) or theirs.get("format") != PER_TEXT_FORMAT:
        raise InputError(f"{file} is not an attnscope per-text file (its first line is not the header)",
                         hint="choose another --per-text file")
    for key, ours in header.items():
        if theirs.get(key) != ours:
            raise InputError(f"{file} was written with {key} {_short(theirs.get(key))}; this run has {_short(ours)}",
                             hint="resume with the --model, --dtype, --measure, --truncate, --score, --layer and "
                                  "--head of the run that wrote it, or choose another --per-text file")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:59] + "…"


class _Bad(ValueError):
    """Why a line is not a per-text record (worded by `parse_record`)."""


def _int(obj: dict[str, Any], key: str, low: int, high: int = _MAX_INT) -> int:
    value = obj.get(key)
    if type(value) is not int:  # bool is an int subclass: not a count
        raise _Bad(f"its {key} is {_kind(value)}, not a whole number")
    if not low <= value <= high:
        raise _Bad(f"its {key} {_number(value)} is outside {low}..{high}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "missing or null"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", float: "a fraction",
            int: "a number"}.get(type(value), type(value).__name__)


def _number(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:12] + "…" + f" ({len(text)} digits)"


def _rows(name: str, n: int) -> tuple[int, int]:
    """The least and most rows a text of n tokens gives a score (`heads.text_terms`)."""
    if name in ("self", "entropy"):
        return n, n
    if name == "duplicate_token":
        return 0, n - 1
    return n - 1, n - 1  # previous_token, first_token, next_token


def parse_record(raw: bytes | str, header: dict[str, Any], max_tokens: int | None, where: str) -> tuple[int, Record]:
    """(index, record) from one line of a per-text file, checked like any input: whole
    numbers in range, a SHA-1 digest, `n_tokens` within the model's positions, each
    score's row count what n tokens give, its sums a (layers, heads) grid of finite
    numbers in 0..count (every row term lies in 0..1). Anything else is one InputError
    naming `where`."""
    try:
        return _parse(raw, header, max_tokens)
    except _Bad as exc:
        raise InputError(f"{where} is not a per-text record: {exc}",
                         hint="remove that line, or start a new --per-text file") from None


def _parse(raw: bytes | str, header: dict[str, Any], max_tokens: int | None) -> tuple[int, Record]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise _Bad("it is not UTF-8") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and not json_depth_ok(text):
        raise _Bad(f"it nests deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"it is not JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise _Bad("it holds a number of more than 4,300 digits") from None
    if not isinstance(obj, dict):
        raise _Bad(f"it is {_kind(obj)}, not an object")
    index = _int(obj, "index", 0)
    line = _int(obj, "line", 0)
    digest = obj.get("sha1")
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        raise _Bad(f"its sha1 is not {_DIGEST_CHARS} hexadecimal digits")
    n = _int(obj, "n_tokens", 1, max_tokens if max_tokens is not None else _MAX_INT)
    cut = obj.get("truncated_from")
    if cut is not None:
        if not header.get("truncate"):
            raise _Bad("it has truncated_from, but the run did not --truncate")
        cut = _int(obj, "truncated_from", n + 1)
    sums_in, counts_in = obj.get("sums"), obj.get("counts")
    if not isinstance(sums_in, dict) or not isinstance(counts_in, dict):
        raise _Bad("its sums or counts are not objects")
    shape = (len(header["layers"]), len(header["heads"]))
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for name in header["scores"]:
        low, high = _rows(name, n)
        count = counts[name] = _int(counts_in, name, 0)
        if not low <= count <= high:
            raise _Bad(f"its count for {name} is {_number(count)}; {n} tokens give "
                       + (f"{low}" if low == high else f"{low} to {high}"))
        sums[name] = _grid(sums_in.get(name), shape, name, count)
    return index, Record(line, digest, n, cut, sums, counts, text)


def _grid(value: Any, shape: tuple[int, int], name: str, count: int) -> Tensor:
    """A (layers, heads) grid of finite sums in 0..count, as float64."""
    rows, cols = shape
    if (type(value) is not list or len(value) != rows
            or any(type(row) is not list or len(row) != cols for row in value)):
        raise _Bad(f"its sums for {name} are not a {rows} x {cols} grid (layers x heads)")
    slack = _SLACK * count  # float32 row terms may pass 0..1 by rounding, never by more
    high = count + slack
    for row in value:
        for v in row:  # NaN fails every comparison, ±inf one of them
            if (type(v) is not float and type(v) is not int) or not -slack <= v <= high:
                raise _Bad(f"its sums for {name} are not all numbers in 0..{count} (its row count)")
    return torch.tensor(value, dtype=torch.float64)  # (L_sel, H_sel)


def text_record(index: int, line: int, digest: str, n: int, cut: int | None, sums: dict[str, Tensor],
                counts: dict[str, int]) -> dict[str, Any]:
    """One text's line: values to float32's precision for reading, sums in full float64
    for pooling (JSON floats round-trip exactly). `truncated_from` is the text's tokens,
    or, for a text too long to tokenize whole, its bounded prefix's (a lower bound; see
    `pooling.bounded_tokens`)."""
    rec: dict[str, Any] = {"index": index, "line": line, "sha1": digest, "n_tokens": n}
    if cut is not None:
        rec["truncated_from"] = cut
    rec["scores"] = {name: ([[float(f"{v:.7g}") for v in row] for row in (sums[name] / counts[name]).tolist()]
                            if counts[name] else None) for name in sums}
    rec["sums"] = {name: sums[name].tolist() for name in sums}
    rec["counts"] = dict(counts)
    return rec


class PerTextFile:
    """The per-text file one run appends to. Opened without following a link (O_NOFOLLOW)
    and locked (flock, exclusive, non-blocking) from before a resume reads it until the
    run ends, so a second run on it stops at once instead of interleaving lines. Each
    line goes out whole (one write loop, cut back on any failure), so a failed run
    leaves no half-written line; a file this run created and wrote no record to is
    removed when the run fails."""

    def __init__(self, file: Path, resume: bool) -> None:
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self.file, self.records, self.created = file, 0, False
        try:
            try:
                fd = os.open(file, flags | os.O_CREAT | os.O_EXCL, 0o666)
                self.created = True
            except FileExistsError:
                if not resume:
                    raise ExportError(f"{file} already exists",
                                      hint="pass --resume to continue that run, or choose another --per-text file"
                                      ) from None
                fd = os.open(file, flags | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO swapped in cannot block the open
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ExportError(f"the per-text file {file} is a symbolic link",
                                  hint="name the real file: attnscope writes only the file it is given") from None
            raise ExportError(f"cannot write {file}: {exc.strerror or exc}") from None
        self.fd = fd
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ExportError(f"the per-text file {file} is not a regular file",
                                  hint="a FIFO or device cannot hold records: choose another --per-text file")
            os.set_blocking(fd, True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExportError(f"the per-text file {file} is in use by another run",
                                  hint="wait for that run to end, or choose another --per-text file") from None
            except OSError as exc:
                raise ExportError(f"cannot lock {file}: {exc.strerror or exc}",
                                  hint="put the per-text file on a local disk") from None
        except BaseException:
            self.close(failed=True)
            raise

    def start(self, header: dict[str, Any]) -> None:
        """Drop a last line cut short by a killed run; give an empty file its header."""
        try:
            size = os.fstat(self.fd).st_size
            end = _after_last_newline(self.fd, size)
            if end < size:
                os.ftruncate(self.fd, end)
        except OSError as exc:
            raise ExportError(f"cannot write {self.file}: {exc.strerror or exc}") from None
        if end == 0:
            self._write(header)

    def append(self, doc: dict[str, Any]) -> None:
        self._write(doc)
        self.records += 1

    def _write(self, doc: dict[str, Any]) -> None:
        data = memoryview((json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8"))
        size = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except BaseException as exc:  # no space, a signal: cut the partial line back off
            try:
                os.ftruncate(self.fd, size)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise ExportError(f"cannot write {self.file}: {exc.strerror or exc}") from None
            raise

    def close(self, failed: bool = False) -> None:
        if self.fd < 0:
            return
        if failed and self.created and self.records == 0:
            self.file.unlink(missing_ok=True)  # only what this run began: nothing to resume from
        os.close(self.fd)  # releases the lock
        self.fd = -1


def _after_last_newline(fd: int, size: int) -> int:
    """The offset just past the file's last newline (0 if none), read backwards."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        k = chunk.rfind(b"\n")
        if k >= 0:
            return start + k + 1
        end = start
    return 0


def merge_rank_files(path: Path, header: dict[str, Any]) -> None:
    """Fold the rank files into `path`, one line per text sorted by index, atomically;
    then remove them. Nothing to do when there are none."""
    from attnscope.export import atomic_path

    parts = _rank_files(path)
    if not parts:
        return
    done = read_done(path, header, lambda index: True)
    with atomic_path(path, force=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, separators=(",", ":"), ensure_ascii=False) + "\n")
            for index in sorted(done):
                f.write(done[index].raw + "\n")
    for part in parts:
        part.unlink(missing_ok=True)
