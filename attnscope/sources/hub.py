"""The local Hugging Face hub cache: where it is, whether we are offline, a snapshot by
repository id (safetensors), and GGUF files, picked the way llama.cpp's `-hf REPO[:QUANT]`
picks them: `org/name:Q8_0` names a quantization; without one, a repository holding a
single GGUF gives it, and one holding several gives Q4_K_M when present (llama.cpp's
default), else a message listing what is there. Nothing is downloaded: the cache is read
with `local_files_only`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from attnscope.errors import ModelNotFoundError, UsageError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
DEFAULT_QUANT = "Q4_K_M"


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


def resolve_hub(repo_id: str) -> Path:
    """The snapshot folder of a hub model, from the local cache (downloading only when online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # a malformed cache entry, an invalid id
        raise ModelNotFoundError(f"cannot use {repo_id!r} from the hub cache at {cache}: {exc}") from None
    if _offline():
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set",
            hint=f"download it where there is network (`hf download {repo_id}`) and copy the cache, or pass --model PATH",
        )
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the Hugging Face cache at {cache} and could not be downloaded ({type(exc).__name__})",
            hint="check the id and your network, set HF_HOME to the cache that holds it, or pass --model PATH",
        ) from None


def looks_like_gguf_repo(spec: str) -> bool:
    return bool(_REPO.match(spec)) and not Path(spec).expanduser().exists()


def hub_gguf(spec: str) -> Path | None:
    """The cached GGUF file `spec` (org/name[:QUANT]) names; None when the cache holds no
    GGUF for that repository (it may hold safetensors: the caller goes on with those)."""
    repo, _, quant = spec.partition(":")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, cache_dir=hub_cache_dir(), local_files_only=True,
                                        allow_patterns=["*.gguf"]))
    except Exception:  # not cached, or not a valid id: the safetensors path says what to do
        if quant:
            raise ModelNotFoundError(f"{repo!r} is not in the Hugging Face cache",
                                     hint=f"download it where there is network (`hf download {repo}`), "
                                          "or pass --model FILE.gguf") from None
        return None
    files = sorted(p for p in folder.rglob("*.gguf") if p.is_file())
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


def _quant_of(path: Path) -> str:
    m = re.search(r"(IQ\d\w*|Q\d\w*|BF16|F16|F32)", path.stem, flags=re.I)
    return m.group(1) if m else path.stem
