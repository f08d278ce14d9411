"""Atomic publication of output files, shared by every writer (export, the page, the figure).

Every file is written to a hidden temporary file (`.NAME….part`, its name cut so that it
fits the folder's NAME_MAX whatever the target's length) in the destination folder and
renamed over the target only when complete, so a failed or interrupted run (Ctrl-C,
SIGTERM, SIGHUP: the CLI turns each into an exception) leaves either the old file or
nothing, never half a file. An existing file is replaced only with `force`; without it
the final name is claimed with O_EXCL before the rename, which fails if the name appeared
meanwhile, so of two runs saving to one path only one can succeed.

`check_target` judges a name before any work: a symbolic link (dangling or not) is
refused, with or without `force`, because renaming over it would replace the link, not
what it names, and following it would write outside the folder the user named.
`check_space` / `check_space_all` refuse, before the run, outputs the disk cannot take.

One run with several outputs writes them inside `batch()`: each file is finished under
its temporary name and the renames all happen when the batch ends, so a run whose
second output fails publishes none of them, and a file that existed before is left as
it was (even with `force`: it is replaced only at the end, once every output is
complete). Only a rename itself failing midway (a race on the name, a folder made
read-only meanwhile) can stop a batch half-published: the files this run had already
published new are then removed again, and a file `force` had already replaced stays
replaced (the old one is gone by then), which the error says.

Callers reach these through `attnscope.export`, which re-exports them.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from attnscope.errors import ExportError, OutputNameError
from attnscope.units import human_bytes

FORMATS = (".npz", ".safetensors")  # the pattern files export writes: check_target's default


def check_target(path: Path, force: bool, formats: tuple[str, ...] = FORMATS) -> Path:
    """Validate an output path before any work is done: its format, that it is not a
    symbolic link or a folder, that its folder exists and is writable, that its name fits
    the folder's NAME_MAX, and (without `force`) that it does not exist yet."""
    path = Path(path).expanduser()
    if path.suffix not in formats:
        raise OutputNameError(f"cannot tell the format of {path.name}", hint=f"use a name ending in {' or '.join(formats)}")
    try:
        _check_place(path, force)
    except OSError as exc:  # a folder name past NAME_MAX, a path past PATH_MAX, a loop of links
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a shorter name") from None
    return path


def _check_place(path: Path, force: bool) -> None:
    limit = _name_max(path.parent) if path.parent.is_dir() else 255
    if len(os.fsencode(path.name)) > limit:
        raise ExportError(f"the name {path.name[:40]}… is {len(os.fsencode(path.name))} bytes long, more than the "
                          f"{limit} a file name may have in {path.parent}", hint="choose a shorter name")
    if path.is_symlink():
        dangling = "" if path.exists() else ", pointing nowhere"
        raise ExportError(f"{path} is a symbolic link{dangling}; attnscope does not write through links",
                          hint="name the file itself, or remove the link")
    if path.is_dir():
        raise ExportError(f"{path} is a folder", hint="give a file name")
    if not path.parent.is_dir():
        raise ExportError(f"the folder {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write in {path.parent}: permission denied")
    if path.exists() and not force:
        raise ExportError(f"{path} already exists", hint="pass --force to overwrite it")


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - a platform without pathconf
        return 255


def _temp_prefix(path: Path) -> str:
    """`.NAME.` with NAME cut to 48 characters (at most 192 bytes): with mkstemp's 8
    random characters and `.part`, the hidden name fits NAME_MAX (255) however long the
    target's name is, and still says which file it was for."""
    return f".{path.name[:48]}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it to `path`: over an
    existing file only with `force`, else to a name that must still be free (see
    `_publish_new`), so a file another run wrote meanwhile is never replaced.

    The file gets the mode a plain open() would give it (0666 less the umask), not
    mkstemp's owner-only 0600."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".part")
        os.close(fd)
    except OSError as exc:
        raise ExportError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        pending = _BATCH.get()
        if pending is not None:  # published with the batch's other files when it ends
            pending.append((tmp, path, force))
            return
        _publish(tmp, path, force)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise ExportError(f"no space left on the device while writing {path}", hint="free some space or save fewer layers") from None
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _publish(tmp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
    else:
        _publish_new(tmp, path)


# The files finished inside the current `batch()`, waiting to be renamed into place:
# (temporary file, target, force). None outside a batch: each file is published at once.
_BATCH: contextvars.ContextVar[list[tuple[Path, Path, bool]] | None] = contextvars.ContextVar("_BATCH", default=None)


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Publish every file written inside (through `atomic_path`) together when the block
    ends, or none of them: an exception inside removes every temporary file, and a
    file that existed before keeps its content. See the module's docstring for a rename
    that fails midway."""
    pending: list[tuple[Path, Path, bool]] = []
    token = _BATCH.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _path, _force in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _BATCH.reset(token)
    _publish_all(pending)


def _publish_all(pending: list[tuple[Path, Path, bool]]) -> None:
    done: list[tuple[Path, bool, os.stat_result]] = []
    for i, (tmp, path, force) in enumerate(pending):
        try:
            existed = os.path.lexists(path)
            _publish(tmp, path, force)
            done.append((path, force and existed, os.stat(path, follow_symlinks=False)))
        except BaseException as exc:
            for later, _path, _force in pending[i:]:
                later.unlink(missing_ok=True)
            replaced = [str(p) for p, was_replaced, _ in done if was_replaced]
            for p, was_replaced, st in done:
                if not was_replaced:
                    _unlink_if_ours(p, st)
            if not isinstance(exc, Exception):
                raise
            message = exc.message if isinstance(exc, ExportError) else f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}"
            hint = exc.hint if isinstance(exc, ExportError) else None
            if replaced:
                message += f"; already replaced (--force): {', '.join(replaced)}"
            raise ExportError(message, hint=hint) from None


def _publish_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path`, which must not exist: an ExportError if it does.

    The name is claimed with O_CREAT | O_EXCL (atomic: of two runs, one gets it), and the
    finished file renamed over our own empty claim; any failure in between removes the
    claim (checked to still be ours, by inode) so no empty file is left behind. This, not
    os.link, because a rename is what every filesystem supports (FAT and some network
    mounts have no hard links), and so a failing rename is reported as it is with --force."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ExportError(f"{path} already exists (written by another run meanwhile)",
                          hint="pass --force to overwrite it, or choose another name") from None
    try:
        claim = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_if_ours(path, claim)
        raise


def _unlink_if_ours(path: Path, ours: os.stat_result) -> None:
    """Remove `path` only if it is still the file `ours` was taken of (same device and
    inode), never one another run put there meanwhile; a failure to remove is ignored."""
    with contextlib.suppress(OSError):
        now = os.stat(path, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
            os.unlink(path)



def check_space(path: Path, needed: int) -> None:
    """Refuse before running when the destination has less free space than a save needs."""
    check_space_all([(path, needed)])


def check_space_all(outputs: list[tuple[Path, int]]) -> None:
    """Refuse before running when the outputs that share a filesystem need more space,
    together, than it has free (each output's temporary file is whole before any is
    renamed, so they all take their space at once)."""
    by_device: dict[int, tuple[Path, int, list[Path]]] = {}
    for path, needed in outputs:
        folder = Path(path).expanduser().parent
        try:
            dev = os.stat(folder).st_dev
        except OSError:
            continue  # check_target has said what is wrong with the folder
        first, total, paths = by_device.get(dev, (folder, 0, []))
        by_device[dev] = (first, total + needed, paths + [Path(path)])
    for folder, needed, paths in by_device.values():
        free = shutil.disk_usage(folder).free
        if needed > free:
            what = "saving" if len(paths) == 1 else f"the {len(paths)} outputs ({', '.join(p.name for p in paths)})"
            raise ExportError(
                f"{what} need{'s' if len(paths) == 1 else ''} {human_bytes(needed)} but {folder} has "
                f"{human_bytes(free)} free",
                hint="free some space, choose another folder, or save fewer layers/heads",
            )
