"""One bounded way to read a file the user or a model folder names.

Every file a command reads goes through here: only a regular file is opened (a FIFO,
socket or device is refused before and after opening, non-blocking, so nothing can
hang), its size is capped before a byte is read, and JSON is parsed only after its
nesting depth is checked (json's recursion would otherwise end in RecursionError) and
with integers capped in length (Python refuses 4,300+ digit integers with a ValueError).
Where a file must stay inside a root (the model folder), `contained` checks the real
path. Streams that the user named as pipes (`--corpus -`) are read in bounded pieces by
their callers, never whole.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from attnscope.errors import AttnscopeError, CheckpointError

MAX_JSON = 100 * 1024 * 1024  # config.json, a shard index: real ones are kilobytes to a few MiB
MAX_SMALL_JSON = 16 * 1024 * 1024  # generation_config.json, tokenizer_config.json, refs: kilobytes
MAX_DEPTH = 256  # JSON nesting: real configs and tokenizers nest under 10 levels


def _mib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB"


def open_regular(path: Path, error: type[AttnscopeError] = CheckpointError) -> tuple[int, int]:
    """Open `path` for reading if it is a regular file: (fd, size). A FIFO, socket or
    device is refused before it is opened (`os.stat`) and again after (`fstat` on a
    non-blocking open, in case it was swapped meanwhile), so nothing can block. A missing
    file raises FileNotFoundError, for the caller to word; other failures `error`."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        else:
            fd = -1
    except FileNotFoundError:
        raise
    except PermissionError:
        raise error(f"{path}: permission denied", hint="check the file's permissions") from None
    except NotADirectoryError:
        raise FileNotFoundError(path) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise error(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if fd >= 0:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return fd, st.st_size
        os.close(fd)
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path} is a folder, not a file", hint="pass the file itself, or the folder that holds it")
    raise error(f"{path} is not a regular file", hint="replace it with the real file (a FIFO or device cannot be read)")


def read_regular(path: Path, what: str, limit: int = MAX_JSON,
                 error: type[AttnscopeError] = CheckpointError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see `open_regular`)."""
    fd, size = open_regular(path, error)
    try:
        if size > limit:
            raise error(f"{path}: {what} of {size} bytes exceeds the {_mib(limit)} limit",
                        hint=f"is this really the model's {what}?")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew after fstat
        raise error(f"{path}: {what} exceeds the {_mib(limit)} limit")
    return data


def json_depth_ok(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """Whether `text`'s brackets nest at most `max_depth` deep (strings skipped), checked
    in one linear pass before json.loads can recurse."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def loads_json(data: bytes | str, where: str, error: type[AttnscopeError] = CheckpointError,
               max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON with one-line errors naming `where`: not UTF-8, not JSON, nested past
    `max_depth`, or an integer past Python's 4,300-digit limit."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise error(f"{where} is not UTF-8 text") from None
    if ("[" in text or "{" in text) and not json_depth_ok(text, max_depth):
        raise error(f"{where} nests deeper than {max_depth} levels", hint="no real file nests that deep") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except (ValueError, RecursionError):  # integers over 4,300 digits
        raise error(f"{where} holds a number longer than any real value") from None


def read_json(path: Path, what: str, error: type[AttnscopeError] = CheckpointError,
              limit: int = MAX_SMALL_JSON) -> Any:
    """A bounded regular file parsed as bounded JSON (FileNotFoundError if absent)."""
    return loads_json(read_regular(path, what, limit, error), str(path), error)
