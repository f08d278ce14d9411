"""What can be opened offline right now: packaged models and the Hugging Face hub cache.

`discover()` lists the packaged models (installed or not, with the pip command for a
missing one) and every snapshot in the hub cache (huggingface_hub's layout:
`models--ORG--NAME/snapshots/<commit>/`, `refs/main` naming the current one): a
safetensors checkpoint per snapshot, and each `.gguf` file in it as its own entry. Every
entry is probed from headers only, as `params` counts (the safetensors JSON header, the
GGUF header and tensor table; no tensor data is read): family, parameters, bytes on disk,
and whether attnscope can open it, with the reason when not. A bad entry (corrupt
config.json, truncated file, unknown architecture, a link leading out of the cache)
becomes an unsupported entry with its reason: it never stops the listing.

The cache is walked as `sources.hub` reads it (`safe_io`'s bounded listings: iterative,
a fixed depth, never through a link to a folder, at most `safe_io.MAX_ENTRIES` entries a
listing), and a repository folder, snapshot or GGUF file that resolves outside its place
in the cache is listed as unsupported, never read.

`gguf_path(spec)` says whether a `--model` value names a GGUF, without importing torch
(the same rule as `api.gguf_path`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path
from typing import Any, Iterator

from attnscope.errors import AttnscopeError, ModelNotFoundError
from attnscope.params import param_shapes
from attnscope.safe_io import contained, list_dir, member, walk_files
from attnscope.sources import packaged
from attnscope.sources.hub import GGUF_DEPTH, read_ref

FORMATS = ("gguf", "safetensors")
SIZE_DEPTH = 16  # how deep a folder's bytes are counted: real repositories nest two or three levels
# A quantization in a GGUF file name: Q4_K_M, IQ4_XS, Q8_0, TQ1_0, BF16, F16, F32, MXFP4.
_QUANT_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[A-Z0-9]{1,3})*|TQ[12]_0|BF16|F16|F32|MXFP4)(?![A-Za-z0-9])",
                         re.IGNORECASE)


@dataclass
class ModelEntry:
    """One model that `models` lists; `--json` writes these fields as they are."""

    name: str  # what to pass to --model (packaged name, hub id), or repo/file for a GGUF in the cache
    source: str  # "package" or "hub-cache"
    path: str | None  # None for a packaged model that is not installed
    format: str  # "gguf" or "safetensors"
    family: str | None  # ours where supported, else the file's model_type / architecture
    parameters: int | None  # from headers, tied weights once
    bytes: int | None  # on disk
    supported: bool
    reason: str | None  # why not, where not
    quantization: str | None = None  # GGUF: Q4_1, ...; safetensors: the header's dtype (F32, BF16)
    install: str | None = None  # the pip command, for a packaged model that is not installed
    repo: str | None = None  # the hub repository a cached GGUF is in (for display; not in --json)


def discover(cache: Path | None = None) -> list[ModelEntry]:
    """Packaged models first, then the hub cache (`checkpoint.hub_cache_dir()` by default)."""
    from attnscope.checkpoint import hub_cache_dir

    return packaged_entries() + hub_entries(hub_cache_dir() if cache is None else cache)


def entry_dict(entry: ModelEntry) -> dict[str, Any]:
    out = asdict(entry)
    del out["repo"]
    if out["install"] is None:
        del out["install"]
    return out


def packaged_entries() -> list[ModelEntry]:
    out = []
    for name, pkg in packaged.PACKAGED.items():
        fmt = "gguf" if pkg.relative.endswith(".gguf") else "safetensors"
        path = packaged.find(name)
        if path is None:
            out.append(ModelEntry(name, "package", None, fmt, None, None, None, False,
                                  f"not installed ({pkg.distribution})", install=pkg.install))
        elif fmt == "gguf":
            out.append(gguf_entry(path, name, "package"))
        else:
            out.append(safetensors_entry(path, name, "package"))
    return out


def hub_entries(cache: Path) -> list[ModelEntry]:
    """Every model snapshot in a hub cache; datasets and spaces are left out."""
    out: list[ModelEntry] = []
    try:
        names = list_dir(cache, ModelNotFoundError)
    except FileNotFoundError:  # no cache yet: nothing in it to list
        return out
    except ModelNotFoundError:
        if not os.access(cache, os.R_OK | os.X_OK):  # not readable: nothing we may list
            return out
        raise  # more entries than any cache holds: one line, not a listing that never ends
    for repo in (cache / name for name in names if name.startswith("models--")):
        repo_id = repo.name[len("models--"):].replace("--", "/")
        try:
            contained(cache, repo, repo.name, ModelNotFoundError, within=f"the hub cache {cache}")
            snapshots = [repo / "snapshots" / n for n in list_dir(repo / "snapshots", ModelNotFoundError)]
            snapshots = [p for p in snapshots if p.is_dir()]
        except FileNotFoundError:
            snapshots = []
        except ModelNotFoundError as exc:
            out.append(ModelEntry(repo_id, "hub-cache", str(repo), "safetensors", None, None, None, False,
                                  _strip(exc.message, repo)))
            continue
        if not snapshots:
            out.append(ModelEntry(repo_id, "hub-cache", str(repo), "safetensors", None, None, _size([repo]), False,
                                  "no snapshot in the cache (an interrupted download?)"))
            continue
        try:
            main = read_ref(repo)
        except ModelNotFoundError:  # a damaged ref: every snapshot is listed by its hash
            main = None
        for snap in snapshots:
            label = repo_id if len(snapshots) == 1 or snap.name == main else f"{repo_id}@{snap.name[:8]}"
            try:
                contained(repo, snap, f"snapshot {snap.name}", ModelNotFoundError,
                          within=f"its repository's folder {repo}")
                ggufs = sorted(_ggufs(snap))
                plain = list_dir(snap, ModelNotFoundError)
            except (FileNotFoundError, ModelNotFoundError) as exc:
                reason = exc.message if isinstance(exc, ModelNotFoundError) else "removed while listing"
                out.append(ModelEntry(label, "hub-cache", str(snap), "safetensors", None, None, None, False, reason))
                continue
            if not ggufs or "config.json" in plain or any(n.endswith(".safetensors") for n in plain):
                out.append(safetensors_entry(snap, label, "hub-cache"))
            for g in ggufs:
                out.append(gguf_entry(g, f"{label}/{g.relative_to(snap).as_posix()}", "hub-cache", root=snap))
                out[-1].repo = label
    return out


def gguf_entry(path: Path, name: str, source: str, root: Path | None = None) -> ModelEntry:
    """A GGUF file, probed from its header; if `root` is given, only once it is known to
    resolve inside it (a snapshot's files link to its repository's `blobs/`)."""
    entry = ModelEntry(name, source, str(path), "gguf", None, None, _size([path]), False, None,
                       quantization=quant_from_name(path.name))

    def probe() -> str | None:
        if root is not None:
            contained(root, path, path.relative_to(root).as_posix(), ModelNotFoundError,
                      within=f"the cache folder {root.parent.parent}")
        return _probe_gguf(entry, path)

    _probe(entry, path, probe)
    return entry


def safetensors_entry(folder: Path, name: str, source: str) -> ModelEntry:
    """A checkpoint folder (config.json, *.safetensors, tokenizer.json), probed from its
    headers; its size leaves out any GGUF files beside it (they are entries of their own)."""
    files = [p for p in _files(folder) if p.suffix.lower() != ".gguf"]
    entry = ModelEntry(name, source, str(folder), "safetensors", None, None, _size(files), False, None)
    _probe(entry, folder, lambda: _probe_safetensors(entry, folder))
    return entry


def _probe(entry: ModelEntry, where: Path, probe: Any) -> None:
    """Run a probe; whatever it raises becomes the entry's reason, never the listing's end."""
    try:
        reason = probe()
    except AttnscopeError as exc:
        reason = _strip(exc.message, where) + (f" ({exc.hint})" if exc.hint else "")
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    except Exception as exc:  # noqa: BLE001 - a bug on one file must not hide the others
        if os.environ.get("ATTNSCOPE_DEBUG", "") not in ("", "0"):
            raise
        reason = (f"internal error while reading it ({type(exc).__name__}: {_strip(str(exc), where)}; "
                  "set ATTNSCOPE_DEBUG=1 for the traceback and report it)")
    entry.supported = reason is None
    entry.reason = reason


def _probe_gguf(entry: ModelEntry, path: Path) -> str | None:
    from attnscope.config import from_hf_config
    from attnscope.params import gguf_header_config, gguf_stored_shapes, split_fused
    from attnscope.sources.gguf import gguf_family, read_gguf

    f = read_gguf(path)
    entry.family = f.arch
    entry.quantization = quant_from_header(f.metadata) or entry.quantization or _dominant(f)
    entry.parameters = sum(t.numel for t in f.tensors.values())
    parts = f.metadata.get("split.count")
    if isinstance(parts, int) and parts > 1:
        return f"one part of a GGUF split in {parts} files, which attnscope cannot read (merge it with llama-gguf-split --merge)"
    family = gguf_family(f)  # raises, naming the supported architectures
    stored, skipped = gguf_stored_shapes(f, family)
    entry.parameters = sum(prod(s) for s in stored.values())
    cfg = from_hf_config(gguf_header_config(f, family, skipped), name=entry.name)
    stored = split_fused(stored, family, cfg)
    entry.family = cfg.family
    unknown = [n[len("other:"):] for n in stored if n.startswith("other:")]
    if unknown:
        return f"{len(unknown)} tensors attnscope does not know, e.g. {unknown[0]!r} (a variant of {f.arch} it does not implement)"
    mismatch = _mismatch(stored, cfg)
    if mismatch:
        return mismatch
    model, tokens = f.metadata.get("tokenizer.ggml.model"), f.metadata.get("tokenizer.ggml.tokens")
    if not model or not tokens:
        return "no tokenizer in the GGUF metadata (tokenizer.ggml.model and tokens); params works, attend does not"
    from attnscope.sources.gguf_tokenizer import MODELS

    if model not in MODELS:
        return f"tokenizer model {model!r} is not supported (supported: {', '.join(MODELS)})"
    return None


def _probe_safetensors(entry: ModelEntry, folder: Path) -> str | None:
    from attnscope import architectures, checkpoint
    from attnscope.config import from_hf_config, read_config_json
    from attnscope.errors import ConfigError
    from attnscope.params import stored_shapes

    for p in _files(folder):  # a FIFO would block the readers below forever
        try:
            if not stat.S_ISREG(p.stat().st_mode):
                return f"{p.name} is not a regular file"
        except OSError:
            continue  # a dangling link: reported by the reader that needs the file
    raw: dict[str, Any] | None = None
    bad: ConfigError | None = None
    config = member(folder, "config.json")  # a regular file inside the folder, or None
    if config is not None:
        try:
            raw = read_config_json(config)
            if raw.get("model_type") is not None:
                entry.family = str(raw["model_type"])
        except ConfigError as exc:  # said after the headers are counted: they may still be fine
            bad = exc
    ckpt = checkpoint.locate(str(folder))  # every shard's header
    dtypes: dict[str, int] = {}
    for info in ckpt.tensors.values():
        dtypes[info.dtype] = dtypes.get(info.dtype, 0) + info.end - info.start
    entry.quantization = max(dtypes, key=dtypes.__getitem__) if dtypes else None
    entry.parameters = sum(prod(s) for s in stored_shapes(ckpt, None)[0].values())
    if bad is not None:
        raise bad
    if raw is None:
        return "no config.json beside the weights"
    architectures.family_for(raw)  # raises, naming the supported model types
    cfg = from_hf_config(raw, name=entry.name)
    entry.family = cfg.family
    stored, _skipped = stored_shapes(ckpt, cfg)
    entry.parameters = sum(prod(s) for s in stored.values())
    mismatch = _mismatch(stored, cfg)
    if mismatch:
        return mismatch
    if ckpt.tokenizer_path is None:
        return "no tokenizer.json (params works; attend and generate need it)"
    return None


def _mismatch(stored: dict[str, tuple[int, ...]], cfg: Any) -> str | None:
    """What the loader would refuse, by arithmetic: a config declaring more parameters
    than are stored (as `api.check_declared`), or a stored tensor whose size the config
    does not allow (sizes, not shapes: fused q, k, v are stored as thirds)."""
    from attnscope.parts import required_count

    declared, total = required_count(cfg), sum(prod(s) for s in stored.values())
    if declared > total:
        return f"the config declares {declared:,} parameters, but the weights hold {total:,}"
    shapes = param_shapes(cfg)
    for name, shape in stored.items():
        want = shapes.get(name)
        if want is not None and prod(shape) != prod(want):
            return f"the weights do not match the config ({name}: {prod(shape)} values, the config implies {want})"
    return None


def quant_from_header(meta: dict[str, Any]) -> str | None:
    """`general.file_type` as llama.cpp names it (MOSTLY_Q4_1 -> Q4_1)."""
    value = meta.get("general.file_type")
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    import gguf

    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return None
    return None if name == "GUESSED" else name.removeprefix("MOSTLY_").removeprefix("ALL_")


def quant_from_name(filename: str) -> str | None:
    """The quantization a GGUF's file name carries (model.Q4_K_M.gguf -> Q4_K_M)."""
    found = _QUANT_NAME.findall(Path(filename).stem)
    return found[-1].upper() if found else None


def _dominant(f: Any) -> str | None:
    """The ggml type holding most of a GGUF's parameters, where nothing names one."""
    counts: dict[str, int] = {}
    for t in f.tensors.values():
        counts[t.type_name] = counts.get(t.type_name, 0) + t.numel
    return max(counts, key=counts.__getitem__) if counts else None


def _strip(message: str, where: Path) -> str:
    """A message without the path the listing already shows."""
    for prefix in (f"{where}: ", f"{where} "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _files(folder: Path) -> list[Path]:
    """The entries of a folder that are not folders (bounded: `safe_io.list_dir`)."""
    try:
        return [p for p in (folder / n for n in list_dir(folder)) if not p.is_dir()]
    except (FileNotFoundError, AttnscopeError):
        return []


def _ggufs(snapshot: Path) -> Iterator[Path]:
    """Every .gguf entry in a snapshot and its subfolders (`GGUF_DEPTH` deep), whatever it
    is (the probe says why a FIFO cannot be read), not following links to folders."""
    for path in walk_files(snapshot, GGUF_DEPTH, ModelNotFoundError):
        if path.name.lower().endswith(".gguf"):
            yield path


def _size(paths: list[Path]) -> int | None:
    """Bytes on disk, following the cache's links to its blobs, each blob once; folders
    are walked (`SIZE_DEPTH` deep) without following links to other folders. None where
    a folder holds more entries than `safe_io.walk_files` visits."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            try:
                files.extend(walk_files(p, SIZE_DEPTH))
            except AttnscopeError:
                return None
        else:
            files.append(p)
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in files:
        try:
            st = p.stat()
        except OSError:  # a dangling link: nothing there to count
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
