"""The local Hugging Face hub cache: where it is, whether we are offline, a snapshot by
repository id (safetensors), and GGUF files, picked the way llama.cpp's `-hf REPO[:QUANT]`
picks them: `org/name:Q8_0` names a quantization; without one, a repository holding a
single GGUF gives it, and one holding several gives Q4_K_M when present (llama.cpp's
default), else a message listing what is there. Nothing is downloaded offline.

The cache is read here, not through huggingface_hub (whose `snapshot_download` opens
`refs/main` with a plain `open()`, so a FIFO there hangs it, and joins whatever the ref
holds onto `snapshots/`, so `../../..` leaves the cache): a repository's folder must lie
inside the cache, `refs/main` must be a small regular file inside the repository's
folder holding a 40-digit commit hash, and the snapshot it names must be a folder inside
the repository's folder. Everything that breaks these rules is one line. GGUF files are
looked for iteratively, `GGUF_DEPTH` levels of subfolders deep, never through a link to
a folder, and each must resolve inside its repository's folder (its `blobs/`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from attnscope.errors import ModelNotFoundError, UsageError
from attnscope.safe_io import contained, read_regular, walk_files

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
_COMMIT = re.compile(r"[0-9a-f]{40}")  # what huggingface_hub writes into refs/ (its REGEX_COMMIT_HASH)
DEFAULT_QUANT = "Q4_K_M"
MAX_REF = 4096  # bytes: a ref holds a 40-character hash
GGUF_DEPTH = 3  # how deep GGUF files are looked for inside a snapshot (repos keep them in subfolders)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, honouring HF_HUB_CACHE and HF_HOME as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _offline() -> bool:
    """huggingface_hub's rule (`constants.HF_HUB_OFFLINE`: HF_HUB_OFFLINE, else
    TRANSFORMERS_OFFLINE), read at call time rather than from the constant, which
    huggingface_hub fixes when it is first imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.endswith((".json", ".safetensors")) and not spec.startswith(".")


def repo_folder(repo_id: str, cache: Path) -> Path:
    """The cache folder of a model repository (huggingface_hub's `repo_folder_name`)."""
    return cache / ("models--" + repo_id.replace("/", "--"))


def read_ref(repo: Path) -> str | None:
    """The commit hash `refs/main` names; None when the repository has no such ref. A ref
    that is not a small regular file inside the repository's folder holding a commit hash
    is a ModelNotFoundError (a FIFO would hang a plain read; `../../..` would leave the
    cache)."""
    path = repo / "refs" / "main"
    if not os.path.lexists(path):
        return None
    contained(repo, path, f"{repo.name}'s refs/main", ModelNotFoundError, within=f"its repository's folder {repo}")
    try:
        data = read_regular(path, "refs/main", MAX_REF, ModelNotFoundError)
    except FileNotFoundError:
        return None
    ref = data.decode("ascii", errors="replace").strip()
    if not _COMMIT.fullmatch(ref):
        raise ModelNotFoundError(f"{path} does not hold a commit hash",
                                 hint="the cache entry is damaged; download the model again")
    return ref


def cached_snapshot(repo_id: str, cache: Path) -> Path | None:
    """The snapshot folder `refs/main` names in the cache; None when the repository, its
    ref or that snapshot is not there. Each step is checked (see the module's docstring)."""
    repo = repo_folder(repo_id, cache)
    if not repo.is_dir():
        return None
    contained(cache, repo, f"the cache folder of {repo_id!r}", ModelNotFoundError, within=f"the hub cache {cache}")
    commit = read_ref(repo)
    if commit is None:
        return None
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return contained(repo, snapshot, f"the snapshot {commit[:8]} of {repo_id!r}", ModelNotFoundError,
                     within=f"its repository's folder {repo}")


def resolve_hub(repo_id: str) -> Path:
    """The snapshot folder of a hub model, from the local cache (downloading only when online)."""
    cache = hub_cache_dir()
    found = cached_snapshot(repo_id, cache)
    if found is not None:
        return found
    if _offline():
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set",
            hint=f"download it where there is network (`hf download {repo_id}`) and copy the cache, or pass --model PATH",
        )
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, cache_dir=cache, allow_patterns=["*.json", "*.safetensors"])
    except Exception as exc:
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the Hugging Face cache at {cache} and could not be downloaded ({type(exc).__name__})",
            hint="check the id and your network, set HF_HOME to the cache that holds it, or pass --model PATH",
        ) from None
    found = cached_snapshot(repo_id, cache)  # what was downloaded, checked like what was there
    if found is None:
        raise ModelNotFoundError(f"{repo_id!r} was downloaded, but the cache at {cache} has no snapshot for it")
    return found


def looks_like_gguf_repo(spec: str) -> bool:
    return bool(_REPO.match(spec)) and not Path(spec).expanduser().exists()


def hub_gguf(spec: str) -> Path | None:
    """The cached GGUF file `spec` (org/name[:QUANT]) names; None when the cache holds no
    GGUF for that repository (it may hold safetensors: the caller goes on with those)."""
    repo, _, quant = spec.partition(":")
    folder = cached_snapshot(repo, hub_cache_dir())
    if folder is None:  # not cached: the safetensors path says what to do
        if quant:
            raise ModelNotFoundError(f"{repo!r} is not in the Hugging Face cache",
                                     hint=f"download it where there is network (`hf download {repo}`), "
                                          "or pass --model FILE.gguf")
        return None
    files = snapshot_ggufs(folder)
    if not files:
        if quant:
            raise ModelNotFoundError(f"the cached {repo!r} holds no GGUF file")
        return None
    if quant:
        picked = [p for p in files if quant.lower() in p.name.lower()]
        if not picked:
            raise ModelNotFoundError(f"the cached {repo!r} has no {quant} GGUF",
                                     hint="cached: " + ", ".join(p.name for p in files[:6]))
        return picked[0]
    if len(files) == 1:
        return files[0]
    default = [p for p in files if DEFAULT_QUANT.lower() in p.name.lower()]
    if default:
        return default[0]
    raise UsageError(f"the cached {repo!r} holds {len(files)} GGUF files",
                     hint=f"name one, e.g. --model {repo}:{_quant_of(files[0])}")


def snapshot_ggufs(snapshot: Path) -> list[Path]:
    """The regular .gguf files in a snapshot and its subfolders (`GGUF_DEPTH` deep), each
    checked to resolve inside the snapshot's repository folder."""
    found = []
    for path in walk_files(snapshot, GGUF_DEPTH, ModelNotFoundError):
        if path.name.lower().endswith(".gguf") and path.is_file():
            found.append(contained(snapshot, path, path.relative_to(snapshot).as_posix(), ModelNotFoundError,
                                   within=f"the cache folder {snapshot.parent.parent}"))
    return sorted(found)


def _quant_of(path: Path) -> str:
    m = re.search(r"(IQ\d\w*|Q\d\w*|BF16|F16|F32)", path.stem, flags=re.I)
    return m.group(1) if m else path.stem
