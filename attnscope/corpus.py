"""Head scores over a corpus: every score of `attnscope.heads` pooled over many texts.

A pooled score is the sum of its per-row quantity over every eligible row of every
text, divided by the number of those rows: a text weighs as many rows as it has, not
one vote. The per-row terms and their row counts are `heads.text_terms`', summed by
`heads.ScoreProbe` (which keeps float64 sums per layer and head), so the definitions
live in one place; here each text's sums and counts are added to running float64
totals. Induction is a property of the model, not of a text: it is measured once, on
its repeated random sequence, exactly as `heads.head_scores` measures it.

* `read_corpus`: (line number, text) from a plain file (one text a line), JSON Lines
  (`.jsonl`/`.ndjson`, one string field of each object) or stdin (`-`); blank lines skipped.
* `per_text`: a JSON Lines file, one header line (model, dtype, measure, truncation,
  scores, layers, heads), then one line per text (index, line number, token count, each
  score's value as [layer][head], and the float64 sums and row counts that pooling
  needs), appended and flushed as each text finishes. `resume` runs only the texts not
  in it and pools the others from it, after checking that its header matches the run
  and that each record's line and text digest match the corpus.
* Distributed (under torchrun, see `attnscope.distributed`): text i goes to rank
  i % world; each rank pools its share; the sums and counts are all-reduced in float64.
  Each rank appends its per-text lines to its own FILE.rankN.jsonl (no collective per
  text, so no rank waits on another and a crash loses nothing written); at the end rank 0
  merges them into FILE, sorted by index, and removes them. Only rank 0 returns a result
  and reports progress; a resume reads FILE and every FILE.rank*.jsonl, whatever the
  number of processes that wrote them.

No batching: attnscope's forward pass takes one text of shape (T,), so texts run one
after another and throughput comes from more processes. Nothing here prints: progress
goes to a callback.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from attnscope import heads as hd
from attnscope.errors import AttnscopeError, ExportError, InputError, UsageError

if TYPE_CHECKING:
    from attnscope.api import Inspector, Selector

PER_TEXT_FORMAT = "attnscope per-text head scores"
PER_TEXT_VERSION = 1
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_DIGEST_CHARS = 16
# Why a score the model defines has no row in a whole corpus.
_NO_ROWS = {"duplicate_token": "no token of any text repeats an earlier one of its text",
            "": "no text has a row it is defined on (every text is one token)"}


# --------------------------------------------------------------------------- reading


def read_corpus(path: str, field: str = "text", max_texts: int | None = None,
                jsonl: bool | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) for each text of a corpus, in order, at most `max_texts`.

    `path` is a file, or `-` for stdin. `jsonl` (default: a `.jsonl`/`.ndjson` name)
    reads one JSON object a line and takes its `field`; otherwise each line is a text.
    Blank lines (and, in JSON Lines, blank fields) are skipped. Bad input is an
    InputError naming the line: invalid UTF-8 or JSON, a line that is not an object, a
    missing or non-string field, a corpus with no text. The file is opened now (a
    missing file fails here); lines are read as the iterator is consumed."""
    if max_texts is not None and max_texts < 1:
        raise UsageError(f"--max-texts must be at least 1, got {max_texts}")
    if not field:
        raise UsageError("--field must name a field of the JSON objects")
    name = "stdin" if path == "-" else path
    as_jsonl = jsonl if jsonl is not None else path.lower().endswith(JSONL_SUFFIXES)
    if path == "-":
        return _texts(sys.stdin.buffer, name, field, max_texts, as_jsonl, close=False)
    if Path(path).is_dir():
        raise InputError(f"the corpus {path} is a folder", hint="give a file with one text a line, or a .jsonl file")
    try:
        stream = open(path, "rb")  # bytes: a line that is not UTF-8 is reported by its number
    except FileNotFoundError:
        raise InputError(f"the corpus {path} does not exist", hint="check the path (or use - for stdin)") from None
    except OSError as exc:
        raise InputError(f"cannot read the corpus {path}: {exc.strerror or exc}") from None
    return _texts(stream, name, field, max_texts, as_jsonl, close=True)


def _texts(stream: IO[bytes], name: str, field: str, max_texts: int | None, as_jsonl: bool,
           close: bool) -> Iterator[tuple[int, str]]:
    count = 0
    try:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"line {number} of {name} is not UTF-8 (byte {exc.start + 1})",
                                 hint="convert the corpus to UTF-8") from None
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not text
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            text = _field(line, number, name, field) if as_jsonl else line
            if not text.strip():
                continue
            yield number, text
            count += 1
            if max_texts is not None and count >= max_texts:
                return
        if count == 0:
            what = f"no line with a non-blank {field!r}" if as_jsonl else "only blank lines"
            raise InputError(f"the corpus {name} holds no text ({what})",
                             hint="give one text a line, or JSON Lines with a text field")
    finally:
        if close:
            stream.close()


def _field(line: str, number: int, name: str, field: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"line {number} of {name} is not valid JSON: {exc.msg} at column {exc.colno}",
                         hint="each line of a JSON Lines corpus is one JSON object") from None
    if not isinstance(obj, dict):
        raise InputError(f"line {number} of {name} is a JSON {_json_kind(obj)}, not an object",
                         hint=f'each line of a JSON Lines corpus is one object, e.g. {{"{field}": "..."}}')
    if field not in obj:
        keys = ", ".join(list(obj)[:8]) + (", …" if len(obj) > 8 else "")
        raise InputError(f"line {number} of {name} has no field {field!r}" + (f" (its fields: {keys})" if obj else ""),
                         hint="name the text's field with --field")
    value = obj[field]
    if not isinstance(value, str):
        raise InputError(f"line {number} of {name}: field {field!r} is a JSON {_json_kind(value)}, not a string",
                         hint="name the text's field with --field")
    return value


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- results


@dataclass
class CorpusScores(hd.HeadScores):
    """`HeadScores` pooled over a corpus: `scores` are float32 sums / rows, `n_tokens`
    the tokens of every text; `tokens` is None (there is no one text to show)."""

    n_texts: int = 0  # texts pooled, resumed ones included
    resumed: int = 0  # of them, pooled from the per-text file without running
    truncated: int = 0  # of them, cut to the model's positions by `truncate`
    rows: dict[str, int] = field(default_factory=dict)  # eligible rows pooled, per text score
    sums: dict[str, Tensor] = field(default_factory=dict)  # float64 (L_sel, H_sel) per text score
    world: int = 1  # processes that shared the corpus
    seconds: float = 0.0  # wall time of the texts' passes (this process, rank 0)
    source: str = ""  # where the texts came from, for display (the caller's to set: here are only texts)


@dataclass
class CorpusProgress:
    """Where a corpus run stands, after each text (on rank 0, of rank 0's share)."""

    done: int  # texts finished, resumed ones included
    total: int | None  # texts in this process's share, when the corpus is a sized collection
    resumed: int  # of `done`, texts pooled from the per-text file
    tokens: int  # tokens run (resumed texts not counted)
    elapsed: float  # seconds since the first text
    rank: int = 0
    world: int = 1

    @property
    def texts_per_s(self) -> float:
        return (self.done - self.resumed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None while unknown."""
        rate = self.texts_per_s
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate


def corpus_dict(res: CorpusScores) -> dict[str, Any]:
    """`heads.scores_dict` plus the corpus: texts, tokens, rows pooled per score."""
    doc = hd.scores_dict(res)
    doc["corpus"] = {"n_texts": res.n_texts, "n_tokens": res.n_tokens, "rows": dict(res.rows),
                     "resumed": res.resumed, "truncated": res.truncated, "processes": res.world}
    return doc


# --------------------------------------------------------------------------- scoring


def corpus_scores(
    inspector: "Inspector",
    texts: Iterable[tuple[int, str] | str],
    names: Iterable[str] | None = None,
    layers: "Selector" = None,
    heads: "Selector" = None,
    truncate: bool = False,
    per_text: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: Callable[[CorpusProgress], None] | None = None,
    measure: str = "weight",
    seed: int = 0,
    repeat: int = hd.DEFAULT_REPEAT,
) -> CorpusScores | None:
    """Pool every selected head's scores over `texts` ((line number, text) pairs as
    `read_corpus` yields them, or plain strings, numbered from 1): one forward pass a
    text, plus one for induction. Under torchrun, texts are shared across the processes
    and only rank 0 gets the result (the others get None)."""
    from attnscope import distributed

    group = distributed.current(inspector.device)
    rank, world = (group.rank, group.world) if group is not None else (0, 1)
    wanted = list(hd.SCORES) if names is None else list(dict.fromkeys(names))
    text_names = [name for name in wanted if name in hd.TEXT_SCORES]
    if not text_names and all(name in hd.SCORES for name in wanted):
        raise UsageError("induction is measured once on a repeated random sequence, not on a corpus",
                         hint="drop --corpus, or ask for a text score too")
    # head_scores checks the measure, the score names and the selections; with no names
    # left to compute it runs nothing.
    checked = hd.head_scores(inspector, names=[name for name in wanted if name not in hd.SCORES],
                             layers=layers, heads=heads, measure=measure)
    ls, hs = checked.layers, checked.heads
    cfg = inspector.config
    # Scores the model itself leaves undefined (next_token on a causal model); ids [0, 0]
    # repeat, so duplicate_token is not among them.
    _, _, model_undefined = hd.text_terms([0, 0], cfg, text_names)
    measured = [name for name in text_names if name not in model_undefined]
    header = _header(inspector, measure, truncate, measured, ls, hs)
    path = Path(per_text).expanduser() if per_text is not None else None

    # Phase 1, reading only: what an earlier run left (every rank reads before any writes).
    done: dict[int, _Record] = {}
    failure: AttnscopeError | None = None
    try:
        if path is not None:
            _check_target(path, resume)
            if resume:
                done = _read_done(path, header, lambda index: index % world == rank)
    except AttnscopeError as exc:
        failure = exc
    distributed.raise_first(group, failure)

    # Phase 2: this process's share of the texts.
    shape = (len(ls), len(hs))
    totals = {name: torch.zeros(shape, dtype=torch.float64) for name in measured}
    rows = {name: 0 for name in measured}
    n_texts = n_tokens = truncated = resumed = run_tokens = 0
    total = len(range(rank, len(texts), world)) if hasattr(texts, "__len__") else None  # type: ignore[arg-type]
    line = math.inf
    out: IO[str] | None = None
    started = time.perf_counter()
    try:
        if path is not None:
            out = _open_for_append(path if group is None else rank_file(path, rank), header)
        for index, item in enumerate(texts):
            if index % world != rank:
                continue
            line, text = (index + 1, item) if isinstance(item, str) else item
            digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
            if index in done:
                rec = done.pop(index)
                if (rec.line, rec.digest) != (line, digest):
                    raise InputError(f"{path} does not match this corpus: its text {index} was line {rec.line} "
                                     f"(digest {rec.digest}), here it is line {line} (digest {digest})",
                                     hint="resume with the corpus, --field and --max-texts of the run that wrote it")
                sums, counts, n, cut = rec.sums, rec.counts, rec.n_tokens, rec.truncated_from
                resumed += 1
            else:
                sums, counts, n, cut = _score_text(inspector, text, line, measured, ls, hs, truncate, measure)
                run_tokens += n
                if out is not None:
                    _append(out, _record(index, line, digest, n, cut, sums, counts))
            for name in measured:
                totals[name] += sums[name]
                rows[name] += counts[name]
            n_texts += 1
            n_tokens += n
            truncated += cut is not None
            line = math.inf
            if progress is not None and rank == 0:
                progress(CorpusProgress(n_texts, total, resumed, run_tokens, time.perf_counter() - started, rank, world))
    except AttnscopeError as exc:
        failure = exc
    finally:
        if out is not None:
            out.close()
    seconds = time.perf_counter() - started
    distributed.raise_first(group, failure, line)

    # Phase 3: pool across the processes; rank 0 finishes alone.
    flat = torch.cat([totals[name].flatten() for name in measured]
                     + [torch.tensor([rows[name] for name in measured] + [n_texts, n_tokens, truncated, resumed],
                                     dtype=torch.float64)])
    flat = distributed.sum_float64(group, flat)
    size = shape[0] * shape[1]
    totals = {name: flat[k * size:(k + 1) * size].reshape(shape) for k, name in enumerate(measured)}  # (L_sel, H_sel)
    tail = [int(v) for v in flat[len(measured) * size:].tolist()]
    rows = dict(zip(measured, tail[:len(measured)]))
    n_texts, n_tokens, truncated, resumed = tail[len(measured):]
    if n_texts == 0:  # every rank knows, so every rank says so
        raise InputError("there are no texts to score", hint="give a corpus with at least one non-blank text")
    if rank != 0:
        return None
    if path is not None:
        _merge(path, header)

    res = CorpusScores(ls, hs, {}, n_tokens, seed=seed, n_texts=n_texts, resumed=resumed, truncated=truncated,
                       rows=rows, sums=totals, world=world, seconds=seconds)
    for name in measured:
        if rows[name]:
            res.scores[name] = (totals[name] / rows[name]).float()
    for name in text_names:
        if name not in res.scores:
            res.undefined[name] = model_undefined.get(name) or _NO_ROWS.get(name, _NO_ROWS[""])
    if "induction" in wanted:
        ind = hd.head_scores(inspector, names=["induction"], layers=ls, heads=hs, seed=seed, repeat=repeat,
                             measure=measure)
        res.scores.update(ind.scores)
        res.induction_ids, res.prefix, res.suffix, res.repeat = ind.induction_ids, ind.prefix, ind.suffix, ind.repeat
    res.scores = {name: res.scores[name] for name in wanted if name in res.scores}  # in the order asked
    return res


def _score_text(inspector: "Inspector", text: str, line: int, measured: list[str], ls: list[int], hs: list[int],
                truncate: bool, measure: str) -> tuple[dict[str, Tensor], dict[str, int], int, int | None]:
    """One text's float64 sums (L_sel, H_sel) and row counts per score, its length, and
    the length it was cut from (None when whole)."""
    from attnscope.measures.transforms import wrap

    try:
        tokens = inspector.tokenize(text, truncate)
    except InputError as exc:
        raise type(exc)(f"line {line}: {exc.message}", exc.hint) from None
    n = len(tokens)
    terms, counts, _ = hd.text_terms(tokens.ids, inspector.config, measured)
    probe = hd.ScoreProbe(ls, hs, terms, counts)
    if terms:
        inspector.run(tokens.ids, wrap(measure, n, max(ls), probe), max(ls))
    zeros = torch.zeros(len(ls), len(hs), dtype=torch.float64)
    sums = {name: probe.sums[name].cpu() if name in probe.sums else zeros for name in measured}
    return sums, {name: counts.get(name, 0) for name in measured}, n, tokens.truncated_from


# ---------------------------------------------------------------- the per-text file


@dataclass
class _Record:
    line: int
    digest: str
    n_tokens: int
    truncated_from: int | None
    sums: dict[str, Tensor]  # float64 (L_sel, H_sel)
    counts: dict[str, int]
    raw: str  # the line as written, for the merge


def _header(inspector: "Inspector", measure: str, truncate: bool, measured: list[str], ls: list[int],
            hs: list[int]) -> dict[str, Any]:
    """What a per-text file's records depend on: a resume must match every field."""
    cfg = inspector.config
    return {"format": PER_TEXT_FORMAT, "version": PER_TEXT_VERSION, "model": cfg.name or inspector.source,
            "model_shape": [cfg.n_layers, cfg.n_heads], "dtype": str(inspector.dtype).removeprefix("torch."),
            "measure": measure, "truncate": truncate, "scores": measured, "layers": ls, "heads": hs}


def rank_file(path: Path, rank: int) -> Path:
    """FILE.jsonl -> FILE.rank{rank}.jsonl: where one process of a torchrun job appends."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _rank_files(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.stem) + r"\.rank\d+" + re.escape(path.suffix) + "$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name) and p.is_file())


def _check_target(path: Path, resume: bool) -> None:
    if path.suffix not in JSONL_SUFFIXES:
        raise ExportError(f"the per-text file {path.name} is not JSON Lines", hint="use a name ending in .jsonl")
    if path.is_dir():
        raise ExportError(f"{path} is a folder", hint="give a file name ending in .jsonl")
    if not path.parent.is_dir():
        raise ExportError(f"the folder {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write in {path.parent}: permission denied")
    if not resume:
        existing = [p for p in [path, *_rank_files(path)] if p.exists()]
        if existing:
            raise ExportError(f"{existing[0]} already exists",
                              hint="pass --resume to continue that run, or choose another --per-text file")


def _read_done(path: Path, header: dict[str, Any], mine: Callable[[int], bool]) -> dict[int, _Record]:
    """The records of `path` and its rank files whose index `mine` keeps, each once."""
    done: dict[int, _Record] = {}
    for file in [path, *_rank_files(path)]:
        if not file.exists():
            continue
        for index, rec in _records(file, header):
            if not mine(index):
                continue
            if index in done and (done[index].line, done[index].digest) != (rec.line, rec.digest):
                raise InputError(f"text {index} has two different records in {path} and its .rank files",
                                 hint="start a new --per-text file")
            done[index] = rec
    return done


def _records(file: Path, header: dict[str, Any]) -> Iterator[tuple[int, _Record]]:
    """(index, record) for each complete line after a matching header. A last line
    without its newline is a write cut short (the run was killed): it is skipped, and
    the text it held runs again."""
    with open(file, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: b"", or a line cut short
    if not lines:
        return  # killed before its header was complete: nothing to resume
    _check_header(file, lines[0], header)
    for k, raw in enumerate(lines[1:], 2):
        try:
            yield _parse_record(raw.decode("utf-8"), header)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RuntimeError):
            raise InputError(f"line {k} of {file} is not a per-text record",
                             hint="remove that line, or start a new --per-text file") from None


def _check_header(file: Path, raw: bytes, header: dict[str, Any]) -> None:
    try:
        theirs = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        theirs = None
    if not isinstance(theirs, dict) or theirs.get("format") != PER_TEXT_FORMAT:
        raise InputError(f"{file} is not an attnscope per-text file (its first line is not the header)",
                         hint="choose another --per-text file")
    for key, ours in header.items():
        if theirs.get(key) != ours:
            raise InputError(f"{file} was written with {key} {_short(theirs.get(key))}; this run has {_short(ours)}",
                             hint="resume with the --model, --dtype, --measure, --truncate, --score, --layer and "
                                  "--head of the run that wrote it, or choose another --per-text file")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _parse_record(raw: str, header: dict[str, Any]) -> tuple[int, _Record]:
    obj = json.loads(raw)
    shape = (len(header["layers"]), len(header["heads"]))
    sums, counts = {}, {}
    for name in header["scores"]:
        sums[name] = torch.tensor(obj["sums"][name], dtype=torch.float64)  # (L_sel, H_sel)
        counts[name] = obj["counts"][name]
        if tuple(sums[name].shape) != shape or not isinstance(counts[name], int) or counts[name] < 0:
            raise ValueError("a record of the wrong shape")
    index, line, n = obj["index"], obj["line"], obj["n_tokens"]
    cut = obj.get("truncated_from")
    if not all(isinstance(v, int) and v >= 0 for v in (index, line, n)) or not isinstance(obj["sha1"], str):
        raise ValueError("a record without its index, line, sha1 and n_tokens")
    return index, _Record(line, obj["sha1"], n, cut, sums, counts, raw)


def _record(index: int, line: int, digest: str, n: int, cut: int | None, sums: dict[str, Tensor],
            counts: dict[str, int]) -> dict[str, Any]:
    """One text's line: values to float32's precision for reading, sums in full float64
    for pooling (JSON floats round-trip exactly)."""
    rec: dict[str, Any] = {"index": index, "line": line, "sha1": digest, "n_tokens": n}
    if cut is not None:
        rec["truncated_from"] = cut
    rec["scores"] = {name: ([[float(f"{v:.7g}") for v in row] for row in (sums[name] / counts[name]).tolist()]
                            if counts[name] else None) for name in sums}
    rec["sums"] = {name: sums[name].tolist() for name in sums}
    rec["counts"] = dict(counts)
    return rec


def _open_for_append(file: Path, header: dict[str, Any]) -> IO[str]:
    """The file to append records to, created with the header if new; a last line cut
    short by a killed run is removed first."""
    try:
        if file.exists() and file.stat().st_size > 0:
            with open(file, "rb+") as f:
                data = f.read()
                end = data.rfind(b"\n") + 1
                if end < len(data):
                    f.truncate(end)
            if end > 0:
                return open(file, "a", encoding="utf-8")
        out = open(file, "w", encoding="utf-8")
        _append(out, header)
        return out
    except OSError as exc:
        raise ExportError(f"cannot write {file}: {exc.strerror or exc}") from None


def _append(out: IO[str], doc: dict[str, Any]) -> None:
    try:
        out.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()
    except OSError as exc:
        raise ExportError(f"cannot write {out.name}: {exc.strerror or exc}") from None


def _merge(path: Path, header: dict[str, Any]) -> None:
    """Fold the rank files into `path`, one line per text sorted by index, atomically;
    then remove them. Nothing to do when there are none."""
    from attnscope.export import atomic_path

    parts = _rank_files(path)
    if not parts:
        return
    done = _read_done(path, header, lambda index: True)
    with atomic_path(path, force=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, separators=(",", ":"), ensure_ascii=False) + "\n")
            for index in sorted(done):
                f.write(done[index].raw + "\n")
    for part in parts:
        part.unlink(missing_ok=True)
