"""Writers for attention patterns and top-k: .npz, .safetensors, JSON documents. Atomic.

Every file is written to a temporary file in the destination folder and renamed over
the target only when complete, so a failed or interrupted run leaves either the old
file or nothing, never half a file; an existing file is replaced only with `force`.

Contract (`attentions` follows the Hugging Face layout, one batch row dropped):
  .npz          attentions float32 [layers, heads, n, n] (row i: query i over keys),
                layers int64, heads int64, token_ids int64, tokens str
  .safetensors  the same tensors; tokens (JSON list) and text in the metadata
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from attnscope.errors import ExportError

FORMATS = (".npz", ".safetensors")


def check_target(path: Path, force: bool, formats: tuple[str, ...] = FORMATS) -> Path:
    """Validate an output path before any work is done."""
    path = Path(path).expanduser()
    if path.suffix not in formats:
        raise ExportError(f"cannot tell the format of {path.name}", hint=f"use a name ending in {' or '.join(formats)}")
    if path.is_dir():
        raise ExportError(f"{path} is a folder", hint="give a file name")
    if not path.parent.is_dir():
        raise ExportError(f"the folder {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write in {path.parent}: permission denied")
    if path.exists() and not force:
        raise ExportError(f"{path} already exists", hint="pass --force to overwrite it")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise ExportError(f"no space left on the device while writing {path}", hint="free some space or save fewer layers") from None
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_patterns(path: Path, attentions: Any, layers: list[int], heads: list[int], token_ids: list[int],
                  tokens: list[str], text: str = "", force: bool = False) -> Path:
    """Write full patterns as .npz or .safetensors (see the module docstring)."""
    import numpy as np

    path = check_target(path, force)
    arrays = {
        "attentions": attentions.detach().to("cpu").float().contiguous(),
        "layers": np.asarray(layers, dtype=np.int64),
        "heads": np.asarray(heads, dtype=np.int64),
        "token_ids": np.asarray(token_ids, dtype=np.int64),
    }
    writer: Callable[[Path], None]
    if path.suffix == ".npz":
        def writer(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, attentions=arrays["attentions"].numpy(), layers=arrays["layers"], heads=arrays["heads"],
                         token_ids=arrays["token_ids"], tokens=np.asarray(tokens, dtype=str))
    else:
        def writer(tmp: Path) -> None:
            import torch
            from safetensors.torch import save_file

            tensors = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(v)) for k, v in arrays.items()}
            save_file(tensors, str(tmp), metadata={"tokens": json.dumps(tokens, ensure_ascii=False), "text": text,
                                                    "layout": "attentions[layer, head, query, key]"})
    with atomic_path(path) as tmp:
        writer(tmp)
    return path


def save_topk(path: Path, indices: Any, weights: Any, layers: list[int], heads: list[int], token_ids: list[int],
              force: bool = False) -> Path:
    """Write top-k as .npz: indices int64 and weights float32 [layers, heads, n, k]."""
    import numpy as np

    path = check_target(path, force, (".npz",))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, indices=indices.cpu().numpy().astype(np.int64), weights=weights.cpu().float().numpy(),
                     layers=np.asarray(layers, dtype=np.int64), heads=np.asarray(heads, dtype=np.int64),
                     token_ids=np.asarray(token_ids, dtype=np.int64))
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
