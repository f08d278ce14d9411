"""One line of the per-text file: what a record holds, written and read back.

The header (`make_header`: every field a resume must match, checked by `check_header`)
and one record per text (`text_record`: index, line number, text digest, token count,
each score's value as [layer][head], and the float64 sums and row counts pooling
needs). A resumed record is checked like any input (`parse_record`): whole numbers in
range, a SHA-1 digest, a token count within the model's positions, each score's row
count what that many tokens give, its sums a (layers, heads) grid of finite numbers in
0..count; so a forged count, a NaN or negative sum never reaches the pooled scores.

A model with experts adds to the header `routes` ({"layers": the selected MoE layers,
"experts": E, "top_k": k}; a dense model's header has no such key, so its files read as
before and neither model resumes the other's), and to each record `expert_counts`: per
MoE layer, how many of the text's (token, choice) pairs each expert received, checked
as a (layers, E) grid of whole numbers ≥ 0 whose every row sums to n_tokens × k.
A model with signed layers (a linear layer's hidden attention M: `selection.signed_layers`,
rows that are no distributions) adds to the header `signed` ({"layers": the selected signed
layers, "why": the reason in words}; absent otherwise, so other models' files read as before).
On those layers a record's entropy is undefined, as in the pooled result: null in `scores`
and in `sums`, and a resumed record must hold null exactly there. Their other scores are
means of signed entries, each |M[t, j]| ≤ 1/√d_k ≤ 1 (unit q and k, 0 < β < 1, every
transition (I − β k kᵀ)·g of norm ≤ 1), so a row term lies in −1..1 (duplicate_token, a sum
over a row's earlier copies, in −(n − 1)..n − 1) and the sums are checked against those bounds.
The file these lines live in (locking, appending, merging) is `per_text`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from attnscope.errors import InputError
from attnscope.safe_io import MAX_DEPTH, json_depth_ok, loads_json
from attnscope.selection import signed_layers

if TYPE_CHECKING:
    from attnscope.api import Inspector

PER_TEXT_FORMAT = "attnscope per-text head scores"
PER_TEXT_VERSION = 1
_DIGEST_CHARS = 16
MAX_RECORD = 64 * 1024 * 1024  # bytes of one line: a record of 80 layers x 64 heads x 6 scores is ~2 MiB
_MAX_INT = 2**53  # indexes, line and token numbers: JSON's exact integers
_HEX = re.compile(f"[0-9a-f]{{{_DIGEST_CHARS}}}")
_SLACK = 1e-3  # per row: float32 row terms in 0..1 pass their bounds by rounding only


def text_digest(text: str) -> str:
    """The short SHA-1 a record keeps of its text, to tell that a resumed corpus is the same."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]


@dataclass
class Record:
    """One text's record, read back from a per-text file."""

    line: int
    digest: str
    n_tokens: int
    truncated_from: int | None
    sums: dict[str, Tensor]  # float64 (L_sel, H_sel)
    counts: dict[str, int]
    raw: str  # the line as written, for the merge
    experts: Tensor | None = None  # int64 (MoE layers, E): the header's `routes`; None on a dense model


def make_header(inspector: "Inspector", measure: str, truncate: bool, measured: list[str], ls: list[int],
                hs: list[int], routes: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a per-text file's records depend on: a resume must match every field.
    `routes` (`routing.plan`): a model with experts, whose records count its routes."""
    cfg = inspector.config
    header = {"format": PER_TEXT_FORMAT, "version": PER_TEXT_VERSION, "model": cfg.name or inspector.source,
              "model_shape": [cfg.n_layers, cfg.n_heads], "dtype": str(inspector.dtype).removeprefix("torch."),
              "measure": measure, "truncate": truncate, "scores": measured, "layers": ls, "heads": hs}
    if routes is not None:
        header["routes"] = dict(routes)
    signed = sorted(signed_layers(inspector.sites, measure) & set(ls))
    if signed:
        kinds = sorted({inspector.sites[i].kind for i in signed})
        header["signed"] = {"layers": signed,
                            "why": f"rows of {' and '.join(kinds)} layers are signed and do not sum to 1: "
                                   "their entropy is undefined (null)"}
    return header


def _signed_rows(header: dict[str, Any] | None) -> list[int]:
    """The rows of a record's (layers, heads) grids that belong to the header's signed layers."""
    signed = set((header or {}).get("signed", {}).get("layers", []))
    return [row for row, layer in enumerate((header or {}).get("layers", [])) if layer in signed]


def dumps_line(doc: dict[str, Any]) -> str:
    """One line of the file, newline included: compact, UTF-8 as is."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n"


def text_record(index: int, line: int, digest: str, n: int, cut: int | None, sums: dict[str, Tensor],
                counts: dict[str, int], experts: Tensor | None = None,
                header: dict[str, Any] | None = None) -> dict[str, Any]:
    """One text's line: values to float32's precision for reading, sums in full float64
    for pooling (JSON floats round-trip exactly). `truncated_from` is the text's tokens,
    or, for a text too long to tokenize whole, its bounded prefix's (a lower bound; see
    `pooling.bounded_tokens`). On the `header`'s signed layers entropy is null, value and
    sum alike (undefined there, as in the pooled result)."""
    rec: dict[str, Any] = {"index": index, "line": line, "sha1": digest, "n_tokens": n}
    if cut is not None:
        rec["truncated_from"] = cut
    undefined = set(_signed_rows(header))
    rec["scores"] = {name: ([[float(f"{v:.7g}") for v in row] for row in (sums[name] / counts[name]).tolist()]
                            if counts[name] else None) for name in sums}
    rec["sums"] = {name: sums[name].tolist() for name in sums}
    if undefined and "entropy" in sums:
        for grid in (rec["scores"]["entropy"], rec["sums"]["entropy"]):
            for row in undefined:
                if grid is not None:
                    grid[row] = [None] * len(grid[row])
    rec["counts"] = dict(counts)
    if experts is not None:
        rec["expert_counts"] = experts.tolist()
    return rec


def check_header(file: Path, raw: bytes, header: dict[str, Any]) -> None:
    """Refuse a first line that is not a per-text header, or one another run wrote:
    every field of this run's `header` must match."""
    try:
        theirs = loads_json(raw, str(file), InputError)
    except InputError:  # not UTF-8, not JSON, too deep, a 4,300-digit integer: not our header
        theirs = None
    if not isinstance(theirs, dict) or theirs.get("format") != PER_TEXT_FORMAT:
        raise InputError(f"{file} is not an attnscope per-text file (its first line is not the header)",
                         hint="choose another --per-text file")
    for key in [*header, *(k for k in ("routes", "signed") if k not in header)]:  # e.g. a routed model's file, read by a dense one
        ours = header.get(key)
        if theirs.get(key) != ours:
            raise InputError(f"{file} was written with {key} {_short(theirs.get(key))}; this run has {_short(ours)}",
                             hint="resume with the --model, --dtype, --measure, --truncate, --score, --layer and "
                                  "--head of the run that wrote it, or choose another --per-text file")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:59] + "…"


class _Bad(ValueError):
    """Why a line is not a per-text record (worded by `parse_record`)."""


def _int(obj: dict[str, Any], key: str, low: int, high: int = _MAX_INT) -> int:
    value = obj.get(key)
    if type(value) is not int:  # bool is an int subclass: not a count
        raise _Bad(f"its {key} is {_kind(value)}, not a whole number")
    if not low <= value <= high:
        raise _Bad(f"its {key} {_number(value)} is outside {low}..{high}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "missing or null"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", float: "a fraction",
            int: "a number"}.get(type(value), type(value).__name__)


def _number(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:12] + "…" + f" ({len(text)} digits)"


def _term_bound(name: str, n: int) -> int:
    """The most |row term| a signed layer gives a score: one entry of M (≤ 1), or for
    duplicate_token the sum over a row's earlier copies (at most n − 1 entries)."""
    return max(n - 1, 1) if name == "duplicate_token" else 1


def _rows(name: str, n: int) -> tuple[int, int]:
    """The least and most rows a text of n tokens gives a score (`heads.text_terms`)."""
    if name in ("self", "entropy", "sink"):
        return n, n
    if name == "duplicate_token":
        return 0, n - 1
    return n - 1, n - 1  # previous_token, first_token, next_token


def parse_record(raw: bytes | str, header: dict[str, Any], max_tokens: int | None, where: str) -> tuple[int, Record]:
    """(index, record) from one line of a per-text file, checked like any input: whole
    numbers in range, a SHA-1 digest, `n_tokens` within the model's positions, each
    score's row count what n tokens give, its sums a (layers, heads) grid of finite
    numbers in 0..count (every row term lies in 0..1). Anything else is one InputError
    naming `where`."""
    try:
        return _parse(raw, header, max_tokens)
    except _Bad as exc:
        raise InputError(f"{where} is not a per-text record: {exc}",
                         hint="remove that line, or start a new --per-text file") from None


def _parse(raw: bytes | str, header: dict[str, Any], max_tokens: int | None) -> tuple[int, Record]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise _Bad("it is not UTF-8") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and not json_depth_ok(text):
        raise _Bad(f"it nests deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"it is not JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise _Bad("it holds a number of more than 4,300 digits") from None
    if not isinstance(obj, dict):
        raise _Bad(f"it is {_kind(obj)}, not an object")
    index = _int(obj, "index", 0)
    line = _int(obj, "line", 0)
    digest = obj.get("sha1")
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        raise _Bad(f"its sha1 is not {_DIGEST_CHARS} hexadecimal digits")
    n = _int(obj, "n_tokens", 1, max_tokens if max_tokens is not None else _MAX_INT)
    cut = obj.get("truncated_from")
    if cut is not None:
        if not header.get("truncate"):
            raise _Bad("it has truncated_from, but the run did not --truncate")
        cut = _int(obj, "truncated_from", n + 1)
    sums_in, counts_in = obj.get("sums"), obj.get("counts")
    if not isinstance(sums_in, dict) or not isinstance(counts_in, dict):
        raise _Bad("its sums or counts are not objects")
    shape = (len(header["layers"]), len(header["heads"]))
    signed = _signed_rows(header)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for name in header["scores"]:
        low, high = _rows(name, n)
        count = counts[name] = _int(counts_in, name, 0)
        if not low <= count <= high:
            raise _Bad(f"its count for {name} is {_number(count)}; {n} tokens give "
                       + (f"{low}" if low == high else f"{low} to {high}"))
        sums[name] = _grid(sums_in.get(name), shape, name, count, signed,
                           undefined=name == "entropy", bound=_term_bound(name, n))
    return index, Record(line, digest, n, cut, sums, counts, text, _experts(obj, header.get("routes"), n))


def _experts(obj: dict[str, Any], routes: dict[str, Any] | None, n: int) -> Tensor | None:
    """A record's expert counts: per MoE layer of the header's `routes`, a whole number
    ≥ 0 per expert, the layer's numbers summing to the text's n × k (token, choice) pairs."""
    value = obj.get("expert_counts")
    if routes is None:
        if "expert_counts" in obj:
            raise _Bad("it has expert_counts, but the run's model has no experts")
        return None
    rows, cols, k = len(routes["layers"]), routes["experts"], routes["top_k"]
    if (type(value) is not list or len(value) != rows
            or any(type(row) is not list or len(row) != cols for row in value)):
        raise _Bad(f"its expert_counts are not a {rows} x {cols} grid (MoE layers x experts)")
    for layer, row in zip(routes["layers"], value):
        if any(type(v) is not int or v < 0 for v in row):
            raise _Bad(f"its expert_counts for layer {layer} are not all whole numbers >= 0")
        if sum(row) != n * k:
            raise _Bad(f"its expert_counts for layer {layer} sum to {_number(sum(row))}; "
                       f"{n} tokens x {k} experts each give {n * k}")
    return torch.tensor(value, dtype=torch.long).reshape(rows, cols)  # (MoE layers, E)


def _grid(value: Any, shape: tuple[int, int], name: str, count: int, signed: Sequence[int] = (),
          undefined: bool = False, bound: int = 1) -> Tensor:
    """A (layers, heads) grid of finite sums in 0..count, as float64. On the `signed` rows
    (layers whose rows are no distributions): null where the score is `undefined` there
    (entropy; read as NaN, as the pooled result has it), else sums of signed terms in
    −bound·count..bound·count."""
    rows, cols = shape
    if (type(value) is not list or len(value) != rows
            or any(type(row) is not list or len(row) != cols for row in value)):
        raise _Bad(f"its sums for {name} are not a {rows} x {cols} grid (layers x heads)")
    slack = _SLACK * count  # float32 row terms may pass 0..1 by rounding, never by more
    high = count + slack
    for r, row in enumerate(value):
        if r in signed and undefined:
            if any(v is not None for v in row):
                raise _Bad(f"its sums for {name} are not null on a signed layer, where {name} is undefined")
            continue
        low, top = (-bound * high, bound * high) if r in signed else (-slack, high)
        for v in row:  # NaN fails every comparison, ±inf one of them
            if (type(v) is not float and type(v) is not int) or not low <= v <= top:
                span = f"-{bound * count}..{bound * count}" if r in signed else f"0..{count}"
                raise _Bad(f"its sums for {name} are not all numbers in {span} (its row count)")
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in value],
                        dtype=torch.float64)  # (L_sel, H_sel)
