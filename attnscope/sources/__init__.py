"""Where weights come from, one module per kind of source: GGUF files (`gguf`, with the
tokenizer they carry in `gguf_tokenizer`), GGUF files in the Hugging Face cache (`hub`),
models shipped in packages (`packaged`). Each turns its source into a Hugging Face
config.json-style dict for `attnscope.config.from_hf_config`, a tokenizer, and a stream of
(our name, tensor) pairs for `attnscope.model.build`; nothing here reaches further down
the chain than the family tables in `attnscope.architectures`. This file stays free of
torch: `models` and `params` use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from attnscope.errors import CheckpointError, UsageError
from attnscope.safe_io import list_dir, open_regular


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def gguf_path(spec: str) -> Path | None:
    """The GGUF file `spec` names: a .gguf file, an extension-less file starting with the
    GGUF magic (as ollama keeps its blobs), or a folder holding exactly one .gguf and no
    safetensors checkpoint; None for anything else. A folder is listed with a bound on
    its entries (`safe_io.list_dir`); the GGUF found in it must be a regular file, and may
    be a link: it is the whole model in one file (weights, tokenizer, template), so a link
    the user put in the folder names it as surely as its own path would."""
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            names = list_dir(path)
        except FileNotFoundError:
            return None
        names = [n for n in names if not n.startswith(".")]  # as glob("*") lists them
        if ("config.json" in names and _is_regular(path / "config.json")) or any(
                n.endswith(".safetensors") for n in names):
            return None
        found = [path / n for n in names if n.endswith(".gguf") and _is_regular(path / n)]
        if len(found) > 1:
            raise UsageError(f"{path} holds {len(found)} GGUF files", hint=f"pass one of them, e.g. --model {found[0]}")
        return found[0] if found else None
    if path.suffix.lower() == ".gguf":
        return path
    if path.suffix == "" and _is_regular(path):
        try:
            fd, _size = open_regular(path)  # non-blocking, checked again once open
        except (OSError, CheckpointError):
            return None
        try:
            return path if os.read(fd, 4) == b"GGUF" else None
        except OSError:
            return None
        finally:
            os.close(fd)
    return None
