"""The per-text file: one JSON Lines record per text, written as each text finishes.

One header line (model, dtype, measure, truncation, scores, layers, heads), then one
line per text (index, line number, text digest, token count, each score's value as
[layer][head], and the float64 sums and row counts that pooling needs), appended and
flushed as each text finishes. A resume reads it back, after checking that its header
matches the run; a last line cut short by a killed run is dropped and its text runs
again. Under torchrun each rank appends to its own FILE.rankN.jsonl, which rank 0
merges into FILE at the end (`merge_rank_files`); a resume reads FILE and every
FILE.rank*.jsonl, whatever the number of processes that wrote them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import Tensor

from attnscope.corpus.reading import JSONL_SUFFIXES
from attnscope.errors import ExportError, InputError

if TYPE_CHECKING:
    from attnscope.api import Inspector

PER_TEXT_FORMAT = "attnscope per-text head scores"
PER_TEXT_VERSION = 1
_DIGEST_CHARS = 16


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
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name) and p.is_file())


def check_target(path: Path, resume: bool) -> None:
    if path.suffix not in JSONL_SUFFIXES:
        raise ExportError(f"the per-text file {path.name} is not JSON Lines", hint="use a name ending in .jsonl")
    if path.is_dir():
        raise ExportError(f"{path} is a folder", hint="give a file name ending in .jsonl")
    if not path.parent.is_dir():
        raise ExportError(f"the folder {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write in {path.parent}: permission denied")
    if not resume:
        existing = [p for p in [path, *_rank_files(path)] if p.exists()]
        if existing:
            raise ExportError(f"{existing[0]} already exists",
                              hint="pass --resume to continue that run, or choose another --per-text file")


def read_done(path: Path, header: dict[str, Any], mine: Callable[[int], bool]) -> dict[int, Record]:
    """The records of `path` and its rank files whose index `mine` keeps, each once."""
    done: dict[int, Record] = {}
    for file in [path, *_rank_files(path)]:
        if not file.exists():
            continue
        for index, rec in _records(file, header):
            if not mine(index):
                continue
            if index in done and (done[index].line, done[index].digest) != (rec.line, rec.digest):
                raise InputError(f"text {index} has two different records in {path} and its .rank files",
                                 hint="start a new --per-text file")
            done[index] = rec
    return done


def _records(file: Path, header: dict[str, Any]) -> Iterator[tuple[int, Record]]:
    """(index, record) for each complete line after a matching header. A last line
    without its newline is a write cut short (the run was killed): it is skipped, and
    the text it held runs again."""
    with open(file, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: b"", or a line cut short
    if not lines:
        return  # killed before its header was complete: nothing to resume
    _check_header(file, lines[0], header)
    for k, raw in enumerate(lines[1:], 2):
        try:
            yield _parse_record(raw.decode("utf-8"), header)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RuntimeError):
            raise InputError(f"line {k} of {file} is not a per-text record",
                             hint="remove that line, or start a new --per-text file") from None


def _check_header(file: Path, raw: bytes, header: dict[str, Any]) -> None:
    try:
        theirs = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
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
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _parse_record(raw: str, header: dict[str, Any]) -> tuple[int, Record]:
    obj = json.loads(raw)
    shape = (len(header["layers"]), len(header["heads"]))
    sums, counts = {}, {}
    for name in header["scores"]:
        sums[name] = torch.tensor(obj["sums"][name], dtype=torch.float64)  # (L_sel, H_sel)
        counts[name] = obj["counts"][name]
        if tuple(sums[name].shape) != shape or not isinstance(counts[name], int) or counts[name] < 0:
            raise ValueError("a record of the wrong shape")
    index, line, n = obj["index"], obj["line"], obj["n_tokens"]
    cut = obj.get("truncated_from")
    if not all(isinstance(v, int) and v >= 0 for v in (index, line, n)) or not isinstance(obj["sha1"], str):
        raise ValueError("a record without its index, line, sha1 and n_tokens")
    return index, Record(line, obj["sha1"], n, cut, sums, counts, raw)


def text_record(index: int, line: int, digest: str, n: int, cut: int | None, sums: dict[str, Tensor],
                counts: dict[str, int]) -> dict[str, Any]:
    """One text's line: values to float32's precision for reading, sums in full float64
    for pooling (JSON floats round-trip exactly)."""
    rec: dict[str, Any] = {"index": index, "line": line, "sha1": digest, "n_tokens": n}
    if cut is not None:
        rec["truncated_from"] = cut
    rec["scores"] = {name: ([[float(f"{v:.7g}") for v in row] for row in (sums[name] / counts[name]).tolist()]
                            if counts[name] else None) for name in sums}
    rec["sums"] = {name: sums[name].tolist() for name in sums}
    rec["counts"] = dict(counts)
    return rec


def open_for_append(file: Path, header: dict[str, Any]) -> IO[str]:
    """The file to append records to, created with the header if new; a last line cut
    short by a killed run is removed first."""
    try:
        if file.exists() and file.stat().st_size > 0:
            with open(file, "rb+") as f:
                data = f.read()
                end = data.rfind(b"\n") + 1
                if end < len(data):
                    f.truncate(end)
            if end > 0:
                return open(file, "a", encoding="utf-8")
        out = open(file, "w", encoding="utf-8")
        append_line(out, header)
        return out
    except OSError as exc:
        raise ExportError(f"cannot write {file}: {exc.strerror or exc}") from None


def append_line(out: IO[str], doc: dict[str, Any]) -> None:
    try:
        out.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()
    except OSError as exc:
        raise ExportError(f"cannot write {out.name}: {exc.strerror or exc}") from None


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
