"""Writers for attention patterns and top-k: .npz, .safetensors, JSON documents. Atomic.

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

One run with several outputs writes them inside `batch()`: each file is finished under
its temporary name and the renames all happen when the batch ends, so a run whose
second output fails publishes none of them, and a file that existed before is left as
it was (even with `force`: it is replaced only at the end, once every output is
complete). Only a rename itself failing midway (a race on the name, a folder made
read-only meanwhile) can stop a batch half-published: the files this run had already
published new are then removed again, and a file `force` had already replaced stays
replaced (the old one is gone by then), which the error says.

Contract (`attentions` follows the Hugging Face layout, one batch row dropped):
  .npz          attentions float32 [layers, heads, n, n] (row i: query i over keys),
                layers int64, heads int64, token_ids int64, tokens str
  .safetensors  the same tensors; tokens (JSON list) and text in the metadata
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

from attnscope.errors import ExportError, OutputNameError
from attnscope.units import human_bytes

FORMATS = (".npz", ".safetensors")


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
                    with contextlib.suppress(OSError):  # only our own file: checked by inode
                        now = os.stat(p, follow_symlinks=False)
                        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                            os.unlink(p)
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
        with contextlib.suppress(OSError):
            now = os.stat(path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (claim.st_dev, claim.st_ino):
                os.unlink(path)
        raise


def pattern_bytes(n_layers: int, n_heads: int, n: int) -> int:
    """Bytes of the float32 `attentions` array for a selection (the bulk of any save)."""
    return n_layers * n_heads * n * n * 4


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


class PatternWriter:
    """Streams `attentions` to .npz or .safetensors one layer at a time, so a save is
    bounded by disk, not RAM; the file appears (atomically) only when `close()` succeeds.

        with PatternWriter(path, layers, heads, n, token_ids, tokens, text) as w:
            w.write_layer(probs)   # (H_sel, n, n) float32, once per selected layer, in order
    """

    def __init__(self, path: Path, layers: list[int], heads: list[int], n: int, token_ids: list[int],
                 tokens: list[str], text: str = "", force: bool = False, extra: dict[str, int] | None = None,
                 name: str = "attentions", head_axis: bool = True) -> None:
        self.path = check_target(path, force)
        self.force = force
        self.name = name  # attentions, norms (--measure norm), rollout (one matrix per layer: no head axis)
        self.extra = dict(extra or {})  # scalar int64 entries (generate's prompt_length)
        self.layers, self.heads, self.n = layers, heads, n
        self.token_ids, self.tokens, self.text = token_ids, tokens, text
        self.shape = (len(layers), len(heads), n, n) if head_axis else (len(layers), n, n)
        self.written = 0
        self._ctx: Any = None
        self._file: Any = None
        self._zip: Any = None
        self._entry: Any = None

    def __enter__(self) -> "PatternWriter":
        self._ctx = atomic_path(self.path, self.force)
        tmp = self._ctx.__enter__()
        try:
            self._file = open(tmp, "wb")
            if self.path.suffix == ".npz":
                self._start_npz()
            else:
                self._start_safetensors()
        except BaseException as err:
            self._abort()
            # let atomic_path remove the temporary file and translate OS errors
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def _start_npz(self) -> None:
        import zipfile

        import numpy as np

        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._entry = self._zip.open(f"{self.name}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_2_0(self._entry, {"descr": "<f4", "fortran_order": False, "shape": self.shape})

    def _small_arrays(self) -> dict[str, Any]:
        import numpy as np

        return {
            "layers": np.asarray(self.layers, dtype=np.int64),
            "heads": np.asarray(self.heads, dtype=np.int64),
            "token_ids": np.asarray(self.token_ids, dtype=np.int64),
            **{name: np.asarray(value, dtype=np.int64) for name, value in self.extra.items()},
        }

    def _start_safetensors(self) -> None:
        big = 4 * self.n * self.n * (self.shape[0] * (self.shape[1] if len(self.shape) == 4 else 1))
        header: dict[str, Any] = {
            "__metadata__": {"tokens": json.dumps(self.tokens, ensure_ascii=False), "text": self.text,
                             "layout": f"{self.name}[layer, {'head, ' if len(self.shape) == 4 else ''}query, key]"},
            self.name: {"dtype": "F32", "shape": list(self.shape), "data_offsets": [0, big]},
        }
        offset = big
        for name, arr in self._small_arrays().items():
            header[name] = {"dtype": "I64", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
            offset += arr.nbytes
        blob = json.dumps(header, ensure_ascii=False).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
        self._file.write(struct.pack("<Q", len(blob)) + blob)

    def write_layer(self, probs: Any) -> None:
        data = probs.detach().to("cpu", dtype=__import__("torch").float32).contiguous().numpy()
        if len(self.shape) == 3:  # one matrix per layer (rollout), handed on as a single head
            data = data[0]
        assert data.shape == self.shape[1:], (data.shape, self.shape)  # internal invariant
        (self._entry if self._entry is not None else self._file).write(data.tobytes(order="C"))
        self.written += 1

    def close(self) -> None:
        import numpy as np

        assert self.written == self.shape[0], "every selected layer must be written"  # internal invariant
        if self._zip is not None:
            self._entry.close()
            for name, arr in self._small_arrays().items():
                with self._zip.open(f"{name}.npy", "w") as entry:
                    np.lib.format.write_array(entry, arr)
            with self._zip.open("tokens.npy", "w") as entry:
                np.lib.format.write_array(entry, np.asarray(self.tokens, dtype=str))
            self._zip.close()
        else:
            for arr in self._small_arrays().values():
                self._file.write(arr.tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def _abort(self) -> None:
        for closer in (self._entry, self._zip, self._file):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException as err:
                self._abort()
                self._ctx.__exit__(type(err), err, err.__traceback__)
                raise
            self._ctx.__exit__(None, None, None)
        else:
            self._abort()
            self._ctx.__exit__(exc_type, exc, tb)


def save_patterns(path: Path, attentions: Any, layers: list[int], heads: list[int], token_ids: list[int],
                  tokens: list[str], text: str = "", force: bool = False) -> Path:
    """Write full patterns (L, H, n, n) held in memory as .npz or .safetensors."""
    with PatternWriter(path, layers, heads, attentions.shape[-1], token_ids, tokens, text, force) as writer:
        for layer_probs in attentions:
            writer.write_layer(layer_probs)
    return writer.path


def save_topk(path: Path, indices: Any, weights: Any, layers: list[int], heads: list[int], token_ids: list[int],
              force: bool = False, extra: dict[str, int] | None = None) -> Path:
    """Write top-k as .npz: indices int64 and weights float32 [layers, heads, n, k]."""
    import numpy as np

    path = check_target(path, force, (".npz",))
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, indices=indices.cpu().numpy().astype(np.int64), weights=weights.cpu().float().numpy(),
                     layers=np.asarray(layers, dtype=np.int64), heads=np.asarray(heads, dtype=np.int64),
                     token_ids=np.asarray(token_ids, dtype=np.int64),
                     **{name: np.asarray(value, dtype=np.int64) for name, value in (extra or {}).items()})
    return path


def tokens_document(tokens: Any) -> list[dict[str, Any]]:
    return [
        {"index": i, "id": tid, "label": label, "special": special, "offsets": list(off)}
        for i, (tid, label, special, off) in enumerate(zip(tokens.ids, tokens.labels, tokens.special, tokens.offsets))
    ]


def topk_document(topk: Any, model: str, focus: Any = None) -> dict[str, Any]:
    """The `attend --json` document: every selected head's top-k keys for every token."""
    tokens = topk.tokens
    heads_out = []
    for li, layer in enumerate(topk.layers):
        for hi, head in enumerate(topk.heads):
            rows = []
            for i in range(len(tokens)):
                rows.append({
                    "query": i,
                    "token": tokens.labels[i],
                    "top": [{"key": j, "token": tokens.labels[j], "weight": round(w, 6)} for j, w in topk.rows(li, hi, i)],
                })
            heads_out.append({"layer": layer, "head": head, "rows": rows})
    doc: dict[str, Any] = {
        "model": model,
        "text": tokens.text,
        "n_tokens": len(tokens),
        "tokens": tokens_document(tokens),
        "layers": topk.layers,
        "heads": topk.heads,
        "k": int(topk.indices.shape[-1]),
        "topk": heads_out,
    }
    if tokens.truncated_from:
        doc["truncated_from"] = tokens.truncated_from
    if focus is not None:
        doc["focus"] = {"query": focus.query, "token": tokens.labels[focus.query]}
    return doc
