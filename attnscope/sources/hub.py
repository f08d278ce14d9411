"""GGUF files from the local Hugging Face cache, picked the way llama.cpp's `-hf REPO[:QUANT]`
picks them: `org/name:Q8_0` names a quantization; without one, a repository holding a
single GGUF gives it, and one holding several gives Q4_K_M when present (llama.cpp's
default), else a message listing what is there. Nothing is downloaded: the cache is read
with `local_files_only`."""

from __future__ import annotations

import re
from pathlib import Path

from attnscope.errors import ModelNotFoundError, UsageError

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
DEFAULT_QUANT = "Q4_K_M"


def looks_like_gguf_repo(spec: str) -> bool:
    return bool(_REPO.match(spec)) and not Path(spec).expanduser().exists()


def hub_gguf(spec: str) -> Path | None:
    """The cached GGUF file `spec` (org/name[:QUANT]) names; None when the cache holds no
    GGUF for that repository (it may hold safetensors: the caller goes on with those)."""
    repo, _, quant = spec.partition(":")
    try:
        from huggingface_hub import snapshot_download

        from attnscope.checkpoint import hub_cache_dir

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
