"""Where weights come from, one module per kind of source: GGUF files (`gguf`, with the
tokenizer they carry in `gguf_tokenizer`), GGUF files in the Hugging Face cache (`hub`),
models shipped in packages (`packaged`). Each turns its source into a Hugging Face
config.json-style dict for `attnscope.config.from_hf_config`, a tokenizer, and a stream of
(our name, tensor) pairs for `attnscope.model.build`; nothing here reaches further down
the chain than the family tables in `attnscope.architectures`. This file stays free of
torch: `models` and `params` use it.
"""

from __future__ import annotations

from pathlib import Path

from attnscope.errors import UsageError


def gguf_path(spec: str) -> Path | None:
    """The GGUF file `spec` names: a .gguf file, an extension-less file starting with the
    GGUF magic (as ollama keeps its blobs), or a folder holding exactly one .gguf and no
    safetensors checkpoint; None for anything else."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or any(path.glob("*.safetensors")):
            return None
        found = sorted(p for p in path.glob("*.gguf") if p.is_file())
        if len(found) > 1:
            raise UsageError(f"{path} holds {len(found)} GGUF files", hint=f"pass one of them, e.g. --model {found[0]}")
        return found[0] if found else None
    if path.suffix.lower() == ".gguf":
        return path
    if path.is_file() and path.suffix == "":
        try:
            with open(path, "rb") as fh:  # a regular file: is_file() follows no FIFO
                return path if fh.read(4) == b"GGUF" else None
        except OSError:
            return None
    return None
