"""Saves of a --target run: the three parts' full patterns streamed to one .npz (`PairWriter`), and the shown part's top-k."""

from __future__ import annotations

import os
from math import prod
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnscope.config import ModelConfig
from attnscope.export import StreamedFile
from attnscope.hooks import PARTS

if TYPE_CHECKING:
    from attnscope.seq2seq import PairView


class PairWriter(StreamedFile):
    """--save FILE.npz of a --target run, streamed: a hook on every site of the three parts
    that writes each layer's pattern as soon as its last query rows arrive, so no more than
    one layer is held at a time. The file is published atomically (a temporary name beside
    it, renamed when complete; `atomic.atomic_path`) after a space check, and holds:
    `encoder_attentions` [enc layers, heads, n_src, n_src], `decoder_attentions` [dec layers,
    heads, n_tgt, n_tgt], `cross_attentions` [dec layers, heads, n_tgt, n_src] float32, every
    layer and head; `source_token_ids` and `decoder_token_ids` int64 (exactly the decoder's
    inputs: its start token, then the target), `source_tokens` and `decoder_tokens` (unicode
    arrays: no pickle to load them), then `extra`'s arrays by name (a generation's
    `generated_token_ids`, `generated_tokens`: `seq2seq.save_decoding`) — the entries, in
    the order and bytes `np.savez` gives.
    The encoder's layers come first and the decoder's self-attention streams straight into
    the file; the cross-attention, whose layers alternate with the decoder's, goes to an
    unlinked spill file beside the target and is copied in at the end.

        with PairWriter(path, cfg, source, decoder, force) as w:
            run(model, source_ids, decoder_ids, Hooks(w, ...))
    """

    def __init__(self, path: Any, cfg: ModelConfig, source: Any, decoder: Any, force: bool = False,
                 extra: dict[str, Any] | None = None, saved_as: str = "attentions") -> None:
        from attnscope.atomic import check_space, check_target
        from attnscope.seq2seq import part_heads, part_sites

        self.path, self.force = check_target(path, force, (".npz",)), force
        self.source, self.decoder, self.extra = source, decoder, dict(extra or {})
        self.saved_as = saved_as  # the arrays' names: {part}_attentions, {part}_norms under --measure norm
        n_s, n_t = len(source), len(decoder)
        self.order = {part: part_sites(cfg, part) for part in PARTS}
        self.site_part = {site: part for part, names in self.order.items() for site in names}
        heads = {part: part_heads(cfg, part) for part in PARTS}
        self.shapes = {"encoder": (len(self.order["encoder"]), heads["encoder"], n_s, n_s),
                       "decoder": (len(self.order["decoder"]), heads["decoder"], n_t, n_t),
                       "cross": (len(self.order["cross"]), heads["cross"], n_t, n_s)}
        check_space(self.path, sum(4 * prod(shape) for shape in self.shapes.values()) + 4096 + 64 * (n_s + n_t))
        self.written = {part: 0 for part in PARTS}
        self._rows: dict[str, list[tuple[int, Tensor]]] = {}  # the site being received: its chunks so far
        self._ctx: Any = None
        self._file: Any = None
        self._zip: Any = None
        self._entry: Any = None  # the entry being streamed: encoder_attentions, then decoder_attentions
        self._spill: Any = None  # cross_attentions until the end

    def __enter__(self) -> "PairWriter":
        import tempfile
        import zipfile

        from attnscope.atomic import atomic_path

        self._ctx = atomic_path(self.path, self.force)
        tmp = self._ctx.__enter__()
        try:
            self._file = open(tmp, "wb")
            self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
            self._spill = tempfile.TemporaryFile(dir=self.path.expanduser().parent)  # unlinked at once
            self._entry = self._open_array(f"encoder_{self.saved_as}", self.shapes["encoder"])
        except BaseException as err:
            self._abort()
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def _open_array(self, name: str, shape: tuple[int, ...]) -> Any:
        """A zip entry `name`.npy with its .npy header (the version `np.save` picks), open for the data."""
        import numpy as np

        entry = self._zip.open(f"{name}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(entry, {"descr": "<f4", "fortran_order": False, "shape": shape})
        return entry

    def wants(self, site: str, what: str) -> bool:
        return what == "pattern" and site in self.site_part

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        part = self.site_part[site]
        chunks = self._rows.setdefault(site, [])
        chunks.append((q_start, value.detach().to("cpu", torch.float32)))
        rows = self.shapes[part][2]
        if sum(c.shape[1] for _, c in chunks) < rows:
            return
        layer = torch.zeros(self.shapes[part][1:])  # a causal chunk carries only the keys up to its last row
        for start, c in self._rows.pop(site):
            layer[:, start:start + c.shape[1], :c.shape[2]] = c
        self._write(part, site, layer)

    def _write(self, part: str, site: str, layer: Tensor) -> None:
        assert self.order[part][self.written[part]] == site, site  # internal invariant: sites come in order
        data = layer.contiguous().numpy().tobytes(order="C")
        if part == "cross":
            self._spill.write(data)
        else:
            if part == "decoder" and self.written["decoder"] == 0:  # the encoder is complete
                assert self.written["encoder"] == self.shapes["encoder"][0]  # internal invariant
                self._entry.close()
                self._entry = self._open_array(f"decoder_{self.saved_as}", self.shapes["decoder"])
            self._entry.write(data)
        self.written[part] += 1

    def close(self) -> None:
        import numpy as np

        assert all(self.written[p] == self.shapes[p][0] for p in PARTS), self.written  # internal invariant
        self._entry.close()
        self._entry = None
        with self._open_array(f"cross_{self.saved_as}", self.shapes["cross"]) as entry:
            self._spill.seek(0)
            while piece := self._spill.read(16 << 20):
                entry.write(piece)
        small = {"source_token_ids": np.asarray(self.source.ids, dtype=np.int64),
                 "decoder_token_ids": np.asarray(self.decoder.ids, dtype=np.int64),
                 "source_tokens": np.asarray(self.source.labels, dtype=str),
                 "decoder_tokens": np.asarray(self.decoder.labels, dtype=str), **self.extra}
        for name, arr in small.items():
            with self._zip.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, arr, allow_pickle=False)
        self._zip.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._spill.close()


def save_pair_topk(path: Any, pv: PairView, force: bool = False) -> Any:
    """--save-topk FILE.npz of a --target run: the shown part's (`--part`) top-k of every
    selected layer and head, written atomically: `indices` int64 and `weights` float32
    [layers, heads, rows, k] (k = min(--top-k, columns); rows and columns as the part's:
    cross target × source, encoder source × source, decoder target × target; where a causal
    row sees fewer than k keys its last entries weigh 0 and name no key, as attend's),
    `layers`, `heads`, `source_token_ids`, `decoder_token_ids` int64 and `part` (a unicode
    scalar: no pickle to load it)."""
    import numpy as np

    from attnscope.atomic import atomic_path, check_space, check_target

    path = check_target(path, force, (".npz",))
    weights, indices = pv.patterns.topk(min(pv.k, pv.patterns.shape[-1]), dim=-1, sorted=True)
    check_space(path, 12 * weights.numel() + 4096 + 8 * (len(pv.source) + len(pv.decoder)))
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, indices=indices.numpy().astype(np.int64), weights=weights.float().numpy(),
                     layers=np.asarray(pv.layers, dtype=np.int64), heads=np.asarray(pv.heads, dtype=np.int64),
                     source_token_ids=np.asarray(pv.source.ids, dtype=np.int64),
                     decoder_token_ids=np.asarray(pv.decoder.ids, dtype=np.int64), part=np.asarray(pv.part, dtype=str))
    return path
