"""One bounded way to read a file the user or a model folder names.

Every file a command reads goes through here: only a regular file is opened (a FIFO,
socket or device is refused before and after opening, non-blocking, so nothing can
hang), its size is capped before a byte is read, and JSON is parsed only after its
nesting depth is checked (json's recursion would otherwise end in RecursionError) and
with integers capped in length (Python refuses 4,300+ digit integers with a ValueError).
Where a file must stay inside a root (the model folder), `contained` checks the real
path, and `member` names a file of a folder that must be a regular file inside it.
Folders are listed (`list_dir`) and walked (`walk_files`) with a bound on the entries
visited, iteratively, to a fixed depth and never through a link to another folder, so a
folder tree a thousand levels deep or a million entries wide is answered at once.
Streams that the user named as pipes (`--corpus -`) are read in bounded pieces by
their callers, never whole.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator

from attnscope.errors import AttnscopeError, CheckpointError

MAX_JSON = 100 * 1024 * 1024  # config.json, a shard index: real ones are kilobytes to a few MiB
MAX_SMALL_JSON = 16 * 1024 * 1024  # generation_config.json, tokenizer_config.json, refs: kilobytes
MAX_DEPTH = 256  # JSON nesting: real configs and tokenizers nest under 10 levels
MAX_ENTRIES = 100_000  # entries one listing or walk visits: a model folder holds tens, a hub cache thousands


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
        raise error(f"{where} is not valid JSON: a number longer than any real value") from None


def read_json(path: Path, what: str, error: type[AttnscopeError] = CheckpointError,
              limit: int = MAX_SMALL_JSON) -> Any:
    """A bounded regular file parsed as bounded JSON (FileNotFoundError if absent)."""
    return loads_json(read_regular(path, what, limit, error), str(path), error)


def allowed_roots(root: Path) -> list[Path]:
    """Where the files a checkpoint folder names may lie: the folder itself and, for a
    snapshot of the Hugging Face cache, its repo folder (the snapshot's files are links
    to `../../blobs/`)."""
    roots = []
    for folder in (root, root.resolve()):
        roots.append(folder.resolve())
        repo = folder.parent.parent
        if folder.parent.name == "snapshots" and repo.name.startswith("models--"):
            roots.append(repo.resolve())
    return list(dict.fromkeys(roots))


def contained(root: Path, path: Path, named_by: str, error: type[AttnscopeError] = CheckpointError,
              within: str | None = None) -> Path:
    """`path` if it resolves inside `root` (or its hub repo folder); else `error`, saying
    that `named_by` leads outside `within` (the model folder `root` unless told)."""
    try:
        real = path.resolve()
        roots = allowed_roots(root)
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop
        raise error(f"{path}: cannot resolve the path (a symlink loop?)") from None
    if not any(real == r or r in real.parents for r in roots):
        if within is None:
            raise error(
                f"{named_by} leads outside the model folder {root}, to {real}",
                hint="a checkpoint's files must sit in its folder; copy them in or pass the file itself",
            )
        raise error(f"{named_by} leads outside {within}, to {real}",
                    hint="the cache entry is damaged or planted; remove it and download the model again")
    return path


def member(root: Path, name: str, error: type[AttnscopeError] = CheckpointError) -> Path | None:
    """A file in the model folder: None if absent (or a dangling link), else checked to
    be a regular file inside the folder."""
    path = root / name
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise error(f"{path}: permission denied", hint="check the folder's permissions") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file", hint=f"replace it with the model's own {name}")
    return contained(root, path, name, error)


def list_dir(folder: Path, error: type[AttnscopeError] = CheckpointError, limit: int = MAX_ENTRIES) -> list[str]:
    """The sorted names in `folder`, refusing a folder of more than `limit` entries
    before they are all read. A missing folder raises FileNotFoundError."""
    names: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if len(names) >= limit:
                    raise error(f"{folder} holds more than {limit:,} entries",
                                hint="no model folder holds that many; pass the model's own folder")
                names.append(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(folder) from None
    except PermissionError:
        raise error(f"cannot list {folder}: permission denied", hint="check the folder's permissions") from None
    except (OSError, ValueError) as exc:
        raise error(f"cannot list {folder}: {getattr(exc, 'strerror', None) or exc}") from None
    return sorted(names)


def walk_files(root: Path, max_depth: int, error: type[AttnscopeError] = CheckpointError,
               limit: int = MAX_ENTRIES) -> Iterator[Path]:
    """Every entry under `root` that is not a folder (files, links to files, dangling
    links, FIFOs: the caller checks what it opens), in sorted order, down to `max_depth`
    levels of subfolders. Iterative (a tree 10,000 deep is no deeper for it), never
    entering a link to a folder, and refusing after `limit` entries visited in all.
    Folders that cannot be listed are skipped."""
    seen = 0
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    seen += 1
                    if seen > limit:
                        raise error(f"{root} holds more than {limit:,} entries",
                                    hint="no model folder holds that many")
                    entries.append(entry)
        except OSError:
            continue
        subfolders = []
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                if depth < max_depth:
                    subfolders.append((Path(entry.path), depth + 1))
            elif not (entry.is_symlink() and _links_to_folder(entry.path)):
                yield Path(entry.path)
        stack.extend(reversed(subfolders))


def _links_to_folder(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
