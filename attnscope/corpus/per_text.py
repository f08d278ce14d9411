"""The per-text file: one JSON Lines record per text, written as each text finishes.

One header line, then one line per text (their contents, and the checks a resumed
record passes, live in `records`), appended and flushed as each text finishes. A
resume reads it back, after checking that its header matches the run; a last line
cut short by a killed run is dropped and its text runs again. Under torchrun each rank
appends to its own FILE.rankN.jsonl, which rank 0 merges into FILE at the end
(`merge_rank_files`); a resume reads FILE and every FILE.rank*.jsonl, whatever the
number of processes that wrote them.

Hostile files are refused, each in one line: a per-text name that is a symbolic link
(even a dangling one) or not a regular file, before the run (`check_target`) and again
when opened (O_NOFOLLOW); a file another run holds (`PerTextFile` locks it for the
whole run); every resumed record is checked like any input (`records.parse_record`),
and a text recorded twice is refused. Nothing here needs torch.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

from attnscope.corpus.reading import JSONL_SUFFIXES
# the record format, re-exported: callers and tests reach it as per_text.<name>
from attnscope.corpus.records import (MAX_RECORD, PER_TEXT_FORMAT, PER_TEXT_VERSION, Record, check_header,
                                      dumps_line, make_header, parse_record, text_digest, text_record)
from attnscope.errors import ExportError, InputError
from attnscope.safe_io import open_regular

__all__ = ["MAX_RECORD", "PER_TEXT_FORMAT", "PER_TEXT_VERSION", "PerTextFile", "Record", "check_target",
           "make_header", "merge_rank_files", "parse_record", "rank_file", "read_done", "text_digest",
           "text_record"]


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
    files = [path, *_rank_files(path)]  # the folder listed once
    for file in files:
        if file.is_symlink():
            raise _a_link(file)
    if path.is_dir():
        raise ExportError(f"{path} is a folder", hint="give a file name ending in .jsonl")
    for file in files:
        if file.exists() and not file.is_file():
            raise _not_regular(file)
    if not path.parent.is_dir():
        raise ExportError(f"the folder {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write in {path.parent}: permission denied")
    if not resume:
        existing = [p for p in files if p.exists()]
        if existing:
            raise _exists(existing[0])


def _a_link(file: Path) -> ExportError:
    return ExportError(f"the per-text file {file} is a symbolic link",
                       hint="name the real file: attnscope writes only the file it is given, never through a link")


def _not_regular(file: Path) -> ExportError:
    return ExportError(f"the per-text file {file} is not a regular file",
                       hint="a FIFO or device cannot hold records: choose another --per-text file")


def _exists(file: Path) -> ExportError:
    return ExportError(f"{file} already exists",
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
            check_header(file, raw, header)
            continue
        index, rec = parse_record(raw, header, max_tokens, f"line {number} of {file}")
        if index in first:
            raise InputError(f"line {number} of {file} is not a per-text record: it repeats text {index} "
                             f"(line {first[index]})", hint="remove that line, or start a new --per-text file")
        first[index] = number
        yield index, rec



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
                    raise _exists(file) from None
                fd = os.open(file, flags | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO swapped in cannot block the open
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _a_link(file) from None
            raise ExportError(f"cannot write {file}: {exc.strerror or exc}") from None
        self.fd = fd
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _not_regular(file)
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
        data = memoryview(dumps_line(doc).encode("utf-8"))
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
            f.write(dumps_line(header))
            for index in sorted(done):
                f.write(done[index].raw + "\n")
    for part in parts:
        part.unlink(missing_ok=True)
