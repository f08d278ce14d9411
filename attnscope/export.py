"""Writers for attention patterns and top-k: .npz, .safetensors, JSON documents. Atomic.

Each file is published through `attnscope.atomic` (a hidden temporary file renamed over
the target only when complete; several outputs of one run together in `batch()`); its
checks and context managers are re-exported here, where every caller reaches them.

Contract (`attentions` follows the Hugging Face layout, one batch row dropped):
  .npz          attentions float32 [layers, heads, n, n] (row i: query i over keys),
                layers int64, heads int64, token_ids int64, tokens str
  .safetensors  the same tensors; tokens (JSON list) and text in the metadata

A model with linear layers (Qwen3.5, Qwen3-Next: a site that is not row-stochastic)
saves each kind apart, in place of `attentions`, `layers` and `heads`:
                attentions float32 [softmax layers, heads, n, n], attention_layers int64,
                heads int64; linear_attentions float32 [linear layers, value heads, n, n]
                (the hidden attention M: signed, rows not summing to 1), linear_layers
                int64, linear_heads int64 (an empty selection of a kind: 0 rows)
(under --measure norm, `norms` and `linear_norms`).
"""

from __future__ import annotations

import json
import math
import os
import shutil  # noqa: F401  re-exported: tests reach `shutil.disk_usage` (atomic.check_space_all) through it
import struct
from pathlib import Path
from typing import Any

from attnscope.atomic import FORMATS, atomic_path, batch, check_space, check_space_all, check_target

__all__ = ["FORMATS", "PatternWriter", "atomic_path", "batch", "check_space", "check_space_all", "check_target",
           "pattern_bytes", "save_patterns", "save_topk", "tokens_document", "topk_document"]


def pattern_bytes(n_layers: int, n_heads: int, n: int) -> int:
    """Bytes of the float32 `attentions` array for a selection (the bulk of any save)."""
    return n_layers * n_heads * n * n * 4


class StreamedFile:
    """The end of a writer that streams into a temporary file published by `atomic_path`
    (`self._ctx`): on a clean exit `close()` then publish; on an error (or a failing close)
    close every open handle (`_entry`, `_zip`, `_file`, `_spill`) and discard the file."""

    def _abort(self) -> None:
        for closer in (self._entry, self._zip, self._file, self._spill):
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


class PatternWriter(StreamedFile):
    """Streams `attentions` to .npz or .safetensors one layer at a time, so a save is
    bounded by disk, not RAM; the file appears (atomically) only when `close()` succeeds.
    With `sinks` (a model whose attention has sinks, gpt-oss), it also writes `sinks`
    float32 [layer, head, query]: each row's sink weight, given by `write_sinks`. With
    `routes` (a `routing.RouteProbe` the pass fills), it also writes each token's experts in
    the saved MoE layers: `routes` int64 [moe layer, query, k], `route_weights` float32 and
    `moe_layers` int64.

        with PatternWriter(path, layers, heads, n, token_ids, tokens, text) as w:
            w.write_layer(probs)   # (H_sel, n, n) float32, once per selected layer, in order
    """

    def __init__(self, path: Path, layers: list[int], heads: list[int], n: int, token_ids: list[int],
                 tokens: list[str], text: str = "", force: bool = False, extra: dict[str, int] | None = None,
                 name: str = "attentions", head_axis: bool = True, sinks: bool = False, also: str = "",
                 routes: Any = None, linear: list[int] | None = None, linear_heads: list[int] | None = None) -> None:
        self.path = check_target(path, force)
        self.force = force
        self.name = name  # attentions, norms (--measure norm), rollout (one matrix per layer: no head axis)
        self.extra = dict(extra or {})  # scalar int64 entries (generate's prompt_length)
        self.n = n
        # `linear` (a model with linear layers): the selected ones, saved apart as
        # linear_<name> [linear layers, linear_heads, n, n]; the rest stay `name`.
        self.linear = None if linear is None else [layer for layer in layers if layer in set(linear)]
        self.all_layers = layers
        self.layers = layers if linear is None else [layer for layer in layers if layer not in set(linear)]
        self.heads = heads
        self.linear_heads = list(heads if linear_heads is None else linear_heads)
        assert linear is None or head_axis, "linear layers are saved per head"  # internal invariant
        self.token_ids, self.tokens, self.text = token_ids, tokens, text
        self.shape = (len(self.layers), len(heads), n, n) if head_axis else (len(self.layers), n, n)
        self.linear_shape = None if self.linear is None else (len(self.linear), len(self.linear_heads), n, n)
        self._spill: Any = None  # the linear layers' array, written aside until the first is complete
        self.written = 0
        self.sinks: Any = None  # (L_sel, H_sel, n) float32, filled by write_sinks
        if sinks:
            import numpy as np

            self.sinks = np.zeros((len(layers), len(heads), n), dtype=np.float32)
        # `also`: a second array of the same shape (alti_layer beside alti), filled by write_also
        self.also, self.also_data = also, None
        if also:
            import numpy as np

            self.also_data = np.zeros(self.shape, dtype=np.float32)
        self.routes = routes  # routing.RouteProbe: filled during the pass, written at close
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

        layers: dict[str, Any] = {"layers": np.asarray(self.layers, dtype=np.int64)}
        if self.linear is not None:
            layers = {"attention_layers": np.asarray(self.layers, dtype=np.int64),
                      "linear_layers": np.asarray(self.linear, dtype=np.int64),
                      "linear_heads": np.asarray(self.linear_heads, dtype=np.int64)}
        return {
            **layers,
            "heads": np.asarray(self.heads, dtype=np.int64),
            "token_ids": np.asarray(self.token_ids, dtype=np.int64),
            **{name: np.asarray(value, dtype=np.int64) for name, value in self.extra.items()},
            **({"moe_layers": np.asarray(self.routes.layers, dtype=np.int64)} if self.routes is not None else {}),
        }

    def _route_arrays(self) -> dict[str, Any]:
        if self.routes is None:
            return {}
        return {"routes": self.routes.experts.numpy().astype("<i8"),
                "route_weights": self.routes.weights.numpy().astype("<f4")}

    def _start_safetensors(self) -> None:
        big = 4 * math.prod(self.shape)  # float32 bytes of the one big array
        layout = f"{self.name}[layer, {'head, ' if len(self.shape) == 4 else ''}query, key]"
        if self.linear_shape is not None:
            layout = (f"{self.name}[softmax layer, head, query, key]; linear_{self.name}[linear layer, value head, "
                      "query, key]")
        header: dict[str, Any] = {
            "__metadata__": {"tokens": json.dumps(self.tokens, ensure_ascii=False), "text": self.text,
                             "layout": layout},
            self.name: {"dtype": "F32", "shape": list(self.shape), "data_offsets": [0, big]},
        }
        offset = big
        if self.linear_shape is not None:
            size = 4 * math.prod(self.linear_shape)
            header[f"linear_{self.name}"] = {"dtype": "F32", "shape": list(self.linear_shape),
                                             "data_offsets": [offset, offset + size]}
            offset += size
        if self.sinks is not None:
            header["sinks"] = {"dtype": "F32", "shape": list(self.sinks.shape),
                               "data_offsets": [offset, offset + self.sinks.nbytes]}
            offset += self.sinks.nbytes
        if self.also_data is not None:
            header[self.also] = {"dtype": "F32", "shape": list(self.shape),
                                 "data_offsets": [offset, offset + self.also_data.nbytes]}
            offset += self.also_data.nbytes
        if self.routes is not None:  # shapes known now, values written at close
            for name, dtype, width in (("routes", "I64", 8), ("route_weights", "F32", 4)):
                shape = list(self.routes.experts.shape)
                header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + width * math.prod(shape)]}
                offset += width * math.prod(shape)
        for name, arr in self._small_arrays().items():
            header[name] = {"dtype": "I64", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
            offset += arr.nbytes
        blob = json.dumps(header, ensure_ascii=False).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
        self._file.write(struct.pack("<Q", len(blob)) + blob)

    def write_layer(self, probs: Any, layer: int | None = None) -> None:
        """The next selected layer's values, (H_sel, n, n); with linear layers saved apart,
        `layer` says which array it belongs to (each kind's layers come in order)."""
        data = probs.detach().to("cpu").float().contiguous().numpy()
        if len(self.shape) == 3:  # one matrix per layer (rollout), handed on as a single head
            data = data[0]
        if self.linear is not None and layer in self.linear:
            import tempfile

            assert self.linear_shape is not None  # internal invariant
            assert data.shape == self.linear_shape[1:], data.shape  # internal invariant
            if self._spill is None:  # unlinked at once: nothing is left behind, whatever happens
                self._spill = tempfile.TemporaryFile(dir=self.path.expanduser().parent)
            self._spill.write(data.tobytes(order="C"))
            self.written += 1
            return
        assert data.shape == self.shape[1:], (data.shape, self.shape)  # internal invariant
        (self._entry if self._entry is not None else self._file).write(data.tobytes(order="C"))
        self.written += 1

    def _copy_spill(self, out: Any) -> None:
        """The linear layers' array, from its spill file into `out`, in bounded pieces."""
        if self._spill is None:
            return
        self._spill.seek(0)
        while piece := self._spill.read(16 << 20):
            out.write(piece)

    def write_sinks(self, layer_pos: int, start: int, weights: Any) -> None:
        """Rows start.. of the sink weights of the `layer_pos`-th selected layer, (H_sel, c)."""
        data = weights.detach().to("cpu").float().numpy()
        self.sinks[layer_pos, :, start:start + data.shape[1]] = data

    def write_also(self, layer_pos: int, data: Any) -> None:
        """The `layer_pos`-th selected layer of the `also` array, (1, n, n) or (H_sel, n, n)."""
        arr = data.detach().to("cpu").float().numpy()
        self.also_data[layer_pos] = arr[0] if len(self.shape) == 3 else arr

    def close(self) -> None:
        import numpy as np

        assert self.written == len(self.all_layers), "every selected layer must be written"  # internal invariant
        if self._zip is not None:
            self._entry.close()
            if self.linear_shape is not None:
                with self._zip.open(f"linear_{self.name}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array_header_2_0(entry, {"descr": "<f4", "fortran_order": False,
                                                                 "shape": self.linear_shape})
                    self._copy_spill(entry)
            if self.sinks is not None:
                with self._zip.open("sinks.npy", "w") as entry:
                    np.lib.format.write_array(entry, self.sinks)
            if self.also_data is not None:
                with self._zip.open(f"{self.also}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, self.also_data)
            for name, arr in self._route_arrays().items():
                with self._zip.open(f"{name}.npy", "w") as entry:
                    np.lib.format.write_array(entry, arr)
            for name, arr in self._small_arrays().items():
                with self._zip.open(f"{name}.npy", "w") as entry:
                    np.lib.format.write_array(entry, arr)
            with self._zip.open("tokens.npy", "w") as entry:
                np.lib.format.write_array(entry, np.asarray(self.tokens, dtype=str))
            self._zip.close()
        else:
            self._copy_spill(self._file)
            if self.sinks is not None:
                self._file.write(self.sinks.tobytes(order="C"))
            if self.also_data is not None:
                self._file.write(self.also_data.tobytes(order="C"))
            for arr in self._route_arrays().values():
                self._file.write(arr.tobytes(order="C"))
            for arr in self._small_arrays().values():
                self._file.write(arr.tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self._spill is not None:
            self._spill.close()


def save_patterns(path: Path, attentions: Any, layers: list[int], heads: list[int], token_ids: list[int],
                  tokens: list[str], text: str = "", force: bool = False) -> Path:
    """Write full patterns (L, H, n, n) held in memory as .npz or .safetensors."""
    with PatternWriter(path, layers, heads, attentions.shape[-1], token_ids, tokens, text, force) as writer:
        for layer_probs in attentions:
            writer.write_layer(layer_probs)
    return writer.path


def save_topk(path: Path, indices: Any, weights: Any, layers: list[int], heads: list[int], token_ids: list[int],
              force: bool = False, extra: dict[str, int] | None = None, layer_heads: list[int] | None = None) -> Path:
    """Write top-k as .npz: indices int64 and weights float32 [layers, heads, n, k]. Where
    the layers differ in head count, `heads` is 0..the most − 1, `layer_heads` int64
    [layers] each layer's count, and a head a layer lacks holds index -1, weight NaN."""
    import numpy as np

    path = check_target(path, force, (".npz",))
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, indices=indices.cpu().numpy().astype(np.int64), weights=weights.cpu().float().numpy(),
                     layers=np.asarray(layers, dtype=np.int64), heads=np.asarray(heads, dtype=np.int64),
                     token_ids=np.asarray(token_ids, dtype=np.int64),
                     **({} if layer_heads is None else {"layer_heads": np.asarray(layer_heads, dtype=np.int64)}),
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
        if getattr(focus, "sink", None) is not None:  # the query's sink weight [layer][head] (gpt-oss)
            doc["focus"]["sink"] = [[round(float(w), 6) for w in row] for row in focus.sink]
            doc["focus"]["layers"], doc["focus"]["heads"] = focus.layers, focus.heads
    return doc
