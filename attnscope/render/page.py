"""`attend --html`: one self-contained page showing the patterns, readable offline.

Everything the page needs is inline: its style, its script (`page_assets/`) and its data,
so it opens from a file with no network at all (its Content-Security-Policy forbids any
fetch, even by mistake). The data sits in `<script type="application/json"
id="attnscope-data">`; the patterns are the float32 arrays `--save` writes, bit for bit,
base64-encoded little-endian (decimal text would either round them or triple the size):

  tokens, token_ids, special, text, model, measure, layers, heads, n, initial
  attention  [layer][head]: base64 of one row-major n × n float32 matrix (query, key)
  or, with --html-topk K:
  k, topk    {indices: [layer][head] base64 int32 n × k, weights: same, float32}
  layer_heads  only where the held layers differ in head count (Qwen3.5: 16 value heads in
             its linear layers, 8 query heads in its softmax ones): each held layer's count;
             `heads` is then 0..the most − 1, and a head a layer lacks holds NaN (attention,
             top-k weights) and -1 (top-k indices)
  signed_layers, layer_kinds   only where some layers are signed (a linear layer's
             hidden attention: rows not summing to 1): those layers, drawn on a diverging
             scale and ranked by |weight|, and each one's kind in words
  part, source_text, target_text   an encoder-decoder's page (`attend --target --html`):
             the part shown ("cross", "encoder", "decoder") and both texts
  key_tokens, key_token_ids, key_special, n_keys   only where the keys are another
             sequence than the queries (the cross-attention: rows = the decoder's inputs,
             columns = the source): each matrix is then n × n_keys, and the page shows
             the two token rows, the key row shaded by where the chosen query looks

A page is planned before the run (`Page(...)`, `Page.size()`: exact, from the tokens and
the selection alone) so that a page no browser can hold is refused before any work, and
written after it, one head at a time, atomically (`export.atomic_path`).

After bertviz (the head view's token lists, hover shows where a token looks) and
TensorBoard's self-contained HTML plugins (data inline as JSON, no server).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

from attnscope.units import plural
from attnscope.errors import ExportError
from attnscope.units import human_bytes

if TYPE_CHECKING:
    from attnscope.tokenize import Tokens

FORMATS = (".html", ".htm")
# The data element is one string in the browser, and Chrome's longest string is
# 2^29 − 24 characters (V8; Firefox allows 2^30 − 2): stay clearly below it.
MAX_PAGE_BYTES = 500 * 2**20
NOTE_PAGE_BYTES = 64 * 2**20  # above this, say the size before writing
# Base64 of a run of whole 3-byte groups is the concatenation of its parts' base64, so a
# head is encoded in slices of this many bytes and never doubled in memory.
_SLICE = 3 * 2**20
_FIELD = re.compile(r"\{\{([A-Z_]+)\}\}")



def _b64_len(nbytes: int) -> int:
    return 4 * ((nbytes + 2) // 3)


def _script_json(doc: Any) -> str:
    """JSON safe inside <script>: ASCII only (a one-byte string in the browser, half the
    memory of UTF-16), and no '<', '>', '&' or '/' a parser or a reader could take for a
    tag or a URL (a text holding 'https://' stays inert as 'https:\\/\\/')."""
    text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("/", "\\/")):
        text = text.replace(raw, escaped)
    return text


def _text(text: str) -> str:
    """Text for the page's HTML: escaped, and with '/' as a character reference, so that a
    text holding a URL shows it but the file holds no 'https://' anywhere."""
    return html.escape(text).replace("/", "&#47;")


def _asset(name: str) -> str:
    return resources.files("attnscope.render").joinpath("page_assets").joinpath(name).read_text(encoding="utf-8")


@dataclass
class Page:
    """One page, planned from what is known before the run.

    `layers`/`heads` are what the page holds (the model's indices); `initial` the layer,
    head and query token it opens on. `k` set: the page holds top-k keys only."""

    model: str
    tokens: "Tokens"
    layers: list[int]
    heads: list[int]
    measure: str = "weight"
    k: Optional[int] = None
    initial: tuple[int, int, int] = (0, 0, 0)
    scores: Optional[dict[str, Any]] = None  # `heads --html`: {name: [layer][head]} over these layers and heads
    signed: Optional[dict[int, str]] = None  # the held layers whose values are signed, and each one's kind in words
    layer_heads: Optional[list[int]] = None  # each held layer's head count, where they differ (the grid is padded)
    keys: Optional["Tokens"] = None  # the key tokens, where they are another sequence (cross-attention); else `tokens`
    pair: Optional[tuple[str, str, str]] = None  # an encoder-decoder's (part, source text, target text)
    generated: bool = False  # the pair's target is what `generate` wrote: rows are the generated tokens

    def __post_init__(self) -> None:
        from attnscope.measures.transforms import DESCRIPTIONS
        from attnscope.tokenize import visible

        n = len(self.tokens)
        self.n = n
        self.n_keys = len(self.keys) if self.keys is not None else n
        if self.k is not None:
            self.k = min(self.k, self.n_keys)
        layer, head, token = self.initial
        doc: dict[str, Any] = {
            "format": "attnscope-page",
            "version": 1,
            "model": self.model,
            "text": self.tokens.text,
            "measure": self.measure,
            "measure_description": DESCRIPTIONS.get(self.measure, self.measure),
            "tokens": list(self.tokens.labels),
            "token_ids": list(self.tokens.ids),
            "special": list(self.tokens.special),
            "truncated_from": self.tokens.truncated_from,
            "n": n,
            "layers": list(self.layers),
            "heads": list(self.heads),
            "initial": {"layer": layer, "head": head, "token": token},
            "encoding": "base64 of little-endian arrays, one row-major matrix (query, key) per layer and head",
        }
        if self.pair is not None:
            doc["part"], doc["source_text"], doc["target_text"] = self.pair
            if self.generated:
                doc["generated"] = True
        if self.keys is not None:
            doc.update(key_tokens=list(self.keys.labels), key_token_ids=list(self.keys.ids),
                       key_special=list(self.keys.special), n_keys=self.n_keys)
        if self.k is not None:
            doc["k"] = self.k
        if self.scores is not None:
            doc["scores"] = self.scores
        if self.layer_heads is not None:
            doc["layer_heads"] = list(self.layer_heads)
        if self.signed:
            doc["signed_layers"] = sorted(self.signed)
            doc["layer_kinds"] = {str(layer): words for layer, words in sorted(self.signed.items())}
        meta = _script_json(doc)
        assert meta.endswith("}")  # internal invariant: the arrays are appended to this object
        self._meta = meta[:-1]
        mode = (f"top-{self.k} only: each token's {self.k} strongest keys; every other weight is not stored and drawn as 0"
                if self.k is not None else "full patterns, exactly as --save writes them")
        title = f"attnscope · {self.model} · {visible(self.pair[1] if self.pair else self.tokens.text)}"
        what = (f"{self.measure}: one matrix per layer" if self.measure in ("rollout", "alti", "value-zeroing")
                else f"{len(self.heads)} heads")
        counted = (f"{plural(n, self._rows_name() + ' token')} × {plural(self.n_keys, 'source token')}"
                   if self.keys is not None
                   else plural(n, "token"))
        fields = {
            "TITLE": _text(title[:120] + ("…" if len(title) > 120 else "")),
            "MODEL": _text(self.model),
            "TEXT": self._texts(),
            "MEASURE": _text(DESCRIPTIONS.get(self.measure, self.measure)) + self._part_line(),
            "MODE": _text(mode),
            "MODE_CLASS": "topk" if self.k is not None else "full",
            "SUMMARY": _text(f"{counted} · {plural(len(self.layers), 'layer')} × {what}"
                             + (f" (cut from {self.tokens.truncated_from:,} by --truncate)"
                                if self.tokens.truncated_from else "")),
            "TOKENS": self._token_spans(self.tokens),
            "KEYS": self._key_row(),
            "ROWS_LABEL": self._rows_label(),
            "SCORES": self._score_panel(),
            "CSS": _asset("page.css"),
            "SCRIPT": _asset("page.js"),
        }
        for name in ("CSS", "SCRIPT"):
            # internal invariant: our own assets cannot close their element early
            assert "</" + ("style" if name == "CSS" else "script") not in fields[name].lower()
        # One pass over the template, so a text holding "{{CSS}}" stays text.
        before, after = (_FIELD.sub(lambda m: fields[m.group(1)], part) for part in _asset("page.html").split("{{DATA}}"))
        # A text from the command line may hold lone surrogates (undecodable bytes): U+FFFD.
        self._before = before.encode("utf-8", errors="replace")
        self._after = after.encode("utf-8", errors="replace")

    def _score_panel(self) -> str:
        """`heads --html`: each score's three strongest heads, in the side panel (the full
        grids are in the data as `scores`)."""
        if not self.scores:
            return ""
        rows = []
        for name, grid in self.scores.items():
            cells = [(v, self.layers[li], self.heads[hi]) for li, row in enumerate(grid)
                     for hi, v in enumerate(row) if v is not None]
            best = sorted(cells, reverse=True)[:3]
            shown = "  ".join(f"L{layer}H{head} {v:.2f}" for v, layer, head in best) or "not defined here"
            rows.append(f'<div class="score"><b>{_text(name)}</b> <span class="dim">{_text(shown)}</span></div>')
        return '<section id="scores"><h2>Head scores</h2>' + "".join(rows) + "</section>"

    def _texts(self) -> str:
        """The text read; on an encoder-decoder's page both, each named."""
        from attnscope.tokenize import visible

        if self.pair is None:
            return _text(visible(self.tokens.text))
        return "".join(f'<div class="{name}-text"><b>{name}</b> {_text(visible(text))}</div>'
                       for name, text in (("source", self.pair[1]), (self._rows_name(), self.pair[2])))

    def _rows_label(self) -> str:
        """The query row's caption, where the key tokens have a row of their own."""
        if self.keys is None:
            return ""
        what = "decoder output, one row per step" if self.generated else "decoder input"
        return f'<div class="row-label dim">{self._rows_name()} ({what}) · rows</div>'

    def _rows_name(self) -> str:
        return "generated" if self.generated else "target"

    def _part_line(self) -> str:
        """Which attention of an encoder-decoder the page holds, in words."""
        if self.pair is None:
            return ""
        words = {"cross": ("cross-attention: rows = the generated tokens (each step's, as it chose its token), "
                           "columns = source" if self.generated
                           else "cross-attention: rows = target (the decoder's inputs), columns = source"),
                 "encoder": "the encoder's self-attention, on the source",
                 "decoder": "the decoder's self-attention (causal), on its inputs"}.get(self.pair[0], self.pair[0])
        return f'<div id="part" data-part="{_text(self.pair[0])}">{_text(words)}</div>'

    def _key_row(self) -> str:
        """The key tokens' row (the source), above the query row, where they differ."""
        if self.keys is None:
            return ""
        return ('<div class="row-label dim">source (encoder input) · columns</div>'
                f'<section id="keys" class="tokens" tabindex="0" aria-label="source tokens">'
                f"{self._token_spans(self.keys)}</section>")

    def _token_spans(self, tokens: "Tokens") -> str:
        """The tokens as spans, in the page before its script runs (so the text reads even
        where scripts are off); labels already show spaces and controls visibly."""
        spans = []
        for i, (label, special) in enumerate(zip(tokens.labels, tokens.special)):
            cls = "tok special" if special else "tok"
            spans.append(f'<span class="{cls}" data-i="{i}">{_text(label)}</span>')
        return "".join(spans)

    def _arrays(self) -> list[tuple[str, int]]:
        """(name, bytes per head) of each array the page holds."""
        n = self.n
        if self.k is None:
            return [("attention", 4 * n * self.n_keys)]
        return [("indices", 4 * n * self.k), ("weights", 4 * n * self.k)]

    def size(self) -> int:
        """The page's exact size in bytes."""
        cells = len(self.layers) * len(self.heads)
        data = 0
        for _name, nbytes in self._arrays():
            # "name":[ + per layer [ ] and commas + per head "…" and a comma
            data += len(f',"{_name}":[]') + 2 * len(self.layers) + (len(self.layers) - 1)
            data += cells * (_b64_len(nbytes) + 2) + (cells - len(self.layers))
        if self.k is not None:
            data += len(',"topk":{}') - 1  # indices, the first in it, has no comma before it
        return len(self._before) + len(self._meta) + data + 1 + len(self._after)

    def check(self, path: Path, space: bool = True) -> int:
        """Refuse a page no browser can hold, or (unless `space` is False: the caller
        checks it with its other outputs) one the disk cannot take; the size."""
        from attnscope import export

        size = self.size()
        if size > MAX_PAGE_BYTES:
            per = ("top-k keys" if self.k is not None else f"{self.n:,}² weights" if self.keys is None
                   else f"{self.n:,} × {self.n_keys:,} weights")
            raise ExportError(
                f"the page would be {human_bytes(size)} ({plural(len(self.layers), 'layer')} × {plural(len(self.heads), 'head')} of {per}), "
                f"more than a browser can hold ({human_bytes(MAX_PAGE_BYTES)})",
                hint="select fewer with --layer/--head, or keep each token's top keys with --html-topk K")
        if space:
            export.check_space(path, size)
        return size

    def write(self, path: Path, force: bool = False, attention: Any = None, topk: Any = None) -> int:
        """Write the page atomically; `attention` (L, H, n, n_keys) float32, or `topk`
        (indices, weights) each (L, H, n, k), in the page's layer and head order."""
        from attnscope import export

        expected = (len(self.layers), len(self.heads), self.n)
        if self.k is None:
            assert attention is not None and tuple(attention.shape) == expected + (self.n_keys,), attention.shape
            arrays = [("attention", attention, "<f4")]
        else:
            assert topk is not None and tuple(topk[0].shape) == expected + (self.k,), (topk[0].shape, self.k)
            arrays = [("indices", topk[0], "<i4"), ("weights", topk[1], "<f4")]
        with export.atomic_path(path, force) as tmp:
            with open(tmp, "wb") as f:
                f.write(self._before)
                f.write(self._meta.encode("ascii"))
                if self.k is not None:
                    f.write(b',"topk":{')
                for a, (name, values, dtype) in enumerate(arrays):
                    f.write((("," if self.k is None or a else "") + f'"{name}":[').encode("ascii"))
                    for li in range(len(self.layers)):
                        f.write(b"[" if li == 0 else b",[")
                        for hi in range(len(self.heads)):
                            if hi:
                                f.write(b",")
                            _write_b64(f, values[li][hi], dtype)
                        f.write(b"]")
                    f.write(b"]")
                f.write(b"}}" if self.k is not None else b"}")
                f.write(self._after)
                f.flush()
                os.fsync(f.fileno())
                written = f.tell()
        assert written == self.size(), (written, self.size())  # internal invariant: size() is what check() used
        return written


def _write_b64(f: BinaryIO, values: Any, dtype: str) -> None:
    """One head's matrix as a quoted base64 string, written in slices."""
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor: its float32 (or int64 -> int32) numpy view
        values = values.detach().cpu().numpy()
    arr = np.ascontiguousarray(values)
    if dtype == "<i4":
        # internal invariant: indices, -1 only for a head the layer lacks (`analysis.TopK`)
        assert arr.size == 0 or (int(arr.min()) >= -1 and int(arr.max()) < 2**31)
    arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
    raw = memoryview(arr).cast("B")
    f.write(b'"')
    for start in range(0, len(raw), _SLICE):
        f.write(base64.b64encode(raw[start : start + _SLICE]))
    f.write(b'"')


def read_page_data(path: Path) -> dict[str, Any]:
    """The data document of a written page, its arrays decoded to numpy (for tests and
    for anyone who wants the numbers back): attention (L, H, n, n_keys) float32, or topk
    indices int64 and weights float32 (L, H, n, k)."""
    import numpy as np

    text = Path(path).read_text(encoding="utf-8")
    start_tag = '<script type="application/json" id="attnscope-data">'
    start = text.index(start_tag) + len(start_tag)
    doc = json.loads(text[start : text.index("</script>", start)])
    n = doc["n"]

    def decode(rows: list[list[str]], dtype: str, width: int) -> Any:
        return np.stack([np.stack([np.frombuffer(base64.b64decode(s), dtype=dtype).reshape(n, width) for s in row])
                         for row in rows]) if rows else np.zeros((0, 0, n, width), dtype=dtype)

    if "attention" in doc:
        doc["attention"] = decode(doc["attention"], "<f4", doc.get("n_keys", n))
    if "topk" in doc:
        doc["topk"] = {"indices": decode(doc["topk"]["indices"], "<i4", doc["k"]).astype(np.int64),
                       "weights": decode(doc["topk"]["weights"], "<f4", doc["k"])}
    return doc
