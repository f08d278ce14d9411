"""Reading a corpus: (line number, text) from a plain file, JSON Lines or stdin.

A plain file holds one text a line; JSON Lines (`.jsonl`/`.ndjson`) one object a line,
whose string `field` is the text; `-` is stdin. Blank lines are skipped, and every bad
line is an InputError naming its number. Nothing here needs torch.

Bounded like every file a command reads (`attnscope.safe_io`): a named corpus must be
a regular file (a FIFO or a device is refused before a byte is read, so nothing
hangs); only stdin, which the user names as a pipe with `-`, is streamed. Either way
lines are read at most `MAX_LINE` bytes at a time, and a JSON line is parsed only
after its nesting is checked and with its integers capped (no RecursionError, no
5,000-digit number).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from attnscope.errors import InputError, UsageError
from attnscope.safe_io import MAX_DEPTH, json_depth_ok, open_regular

JSONL_SUFFIXES = (".jsonl", ".ndjson")
MAX_LINE = 16 * 1024 * 1024  # bytes of one line: a whole book is a few MiB
_CHUNK = 1024 * 1024  # bytes read at a time
MAX_HELD = 512 * 1024**2  # bytes of texts a corpus may hold in memory (heads --corpus holds all of it)
_PER_TEXT = 100  # bytes Python spends on a text besides its string: the tuple, the number, a list slot


def read_corpus(path: str, field: str = "text", max_texts: int | None = None,
                jsonl: bool | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) for each text of a corpus, in order, at most `max_texts`.

    `path` is a regular file, or `-` for stdin. `jsonl` (default: a `.jsonl`/`.ndjson`
    name) reads one JSON object a line and takes its `field`; otherwise each line is a
    text. Blank lines (and, in JSON Lines, blank fields) are skipped. Bad input is an
    InputError naming the line: invalid UTF-8 or JSON, JSON nested past
    `safe_io.MAX_DEPTH` or holding a 4,300-digit integer, a line over `MAX_LINE` bytes,
    texts past `MAX_HELD` bytes in all (an endless stdin),
    a line that is not an object, a missing or non-string field, a text holding a lone
    surrogate (a `\\ud800` escape: not text, as invalid UTF-8 is not), a corpus with no
    text. The file is opened now (a missing file, a FIFO, a closed stdin fail here);
    lines are read as the iterator is consumed."""
    if max_texts is not None and max_texts < 1:
        raise UsageError(f"--max-texts must be at least 1, got {max_texts}")
    if not field:
        raise UsageError("--field must name a field of the JSON objects")
    name = "stdin" if path == "-" else path
    as_jsonl = jsonl if jsonl is not None else path.lower().endswith(JSONL_SUFFIXES)
    if path == "-":
        # `<&-` leaves sys.stdin None; a replaced stdin may have no byte buffer
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise InputError("stdin is closed, so --corpus - has no text to read",
                             hint="pipe the corpus in (… | attnscope heads --corpus -), or give --corpus a file")
        return _texts(stdin, name, field, max_texts, as_jsonl, close=False)
    if Path(path).is_dir():
        raise InputError(f"the corpus {path} is a folder", hint="give a file with one text a line, or a .jsonl file")
    try:
        fd, _ = open_regular(Path(path), InputError)  # a FIFO or /dev/zero is refused, not read
    except FileNotFoundError:
        raise InputError(f"the corpus {path} does not exist", hint="check the path (or use - for stdin)") from None
    stream = os.fdopen(fd, "rb")  # bytes: a line that is not UTF-8 is reported by its number
    return _texts(stream, name, field, max_texts, as_jsonl, close=True)


def _lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, bytes]]:
    """(number, line without its newline): read in `_CHUNK`s and split (as fast as
    iterating the file), a line spanning chunks held in pieces up to MAX_LINE bytes."""
    number = held = 0
    pieces: list[bytes] = []  # the start of a line that spans chunks
    read = getattr(stream, "read1", None) or stream.read  # read1: a pipe gives what it has, without waiting for more
    size = min(_CHUNK, MAX_LINE)
    while True:
        try:
            chunk = read(size)
        except OSError as exc:
            raise InputError(f"cannot read the corpus {name}: {exc.strerror or exc}") from None
        except ValueError:  # a stream closed under us
            raise InputError(f"cannot read the corpus {name}: the stream is closed") from None
        if not chunk:
            break
        start = 0
        if pieces:
            k = chunk.find(b"\n")
            held += len(chunk) if k < 0 else k
            if held > MAX_LINE:
                raise _too_long(number + 1, name)
            if k < 0:
                pieces.append(chunk)
                continue
            pieces.append(chunk[:k])
            number += 1
            yield number, b"".join(pieces)
            pieces, held, start = [], 0, k + 1
        lines = chunk[start:].split(b"\n")  # each shorter than a chunk: within MAX_LINE
        last = lines.pop()
        for line in lines:
            number += 1
            yield number, line
        if last:
            pieces, held = [last], len(last)
    if pieces:
        yield number + 1, b"".join(pieces)


def _too_long(number: int, name: str) -> InputError:
    return InputError(f"line {number} of {name} is longer than the {MAX_LINE // (1024 * 1024)} MiB limit on one text",
                      hint="split the text over several lines, or shorten it")


def _texts(stream: IO[bytes], name: str, field: str, max_texts: int | None, as_jsonl: bool,
           close: bool) -> Iterator[tuple[int, str]]:
    count = held = 0
    try:
        for number, raw in _lines(stream, name):
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
            held += sys.getsizeof(text) + _PER_TEXT
            if held > MAX_HELD:  # an endless stdin (`yes | …`) or a corpus past what one process should hold
                raise InputError(f"the corpus {name} holds more than {MAX_HELD // 1024**2:,} MiB of text "
                                 f"(at line {number}), more than attnscope keeps in memory",
                                 hint="score part of it with --max-texts, or split it into several runs")
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
    # counting brackets is C-fast; the character walk runs only where the nesting could be deep
    if line.count("[") + line.count("{") > MAX_DEPTH and not json_depth_ok(line):
        raise InputError(f"line {number} of {name} nests deeper than {MAX_DEPTH} levels",
                         hint="each line of a JSON Lines corpus is one flat JSON object") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"line {number} of {name} is not valid JSON: {exc.msg} at column {exc.colno}",
                         hint="each line of a JSON Lines corpus is one JSON object") from None
    except (ValueError, RecursionError):  # an integer of 4,300+ digits
        raise InputError(f"line {number} of {name} holds a number of more than 4,300 digits",
                         hint="no real value is that long; fix or drop the line") from None
    if not isinstance(obj, dict):
        raise InputError(f"line {number} of {name} is a JSON {_json_kind(obj)}, not an object",
                         hint=f'each line of a JSON Lines corpus is one object, e.g. {{"{field}": "..."}}')
    if field not in obj:
        keys = ", ".join(_printable(key) for key in list(obj)[:8]) + (", …" if len(obj) > 8 else "")
        raise InputError(f"line {number} of {name} has no field {field!r}" + (f" (its fields: {keys})" if obj else ""),
                         hint="name the text's field with --field")
    value = obj[field]
    if not isinstance(value, str):
        raise InputError(f"line {number} of {name}: field {field!r} is a JSON {_json_kind(value)}, not a string",
                         hint="name the text's field with --field")
    try:
        if "\\u" in line:  # only a \u escape can make a lone surrogate
            value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a \ud800 escape decodes to a lone surrogate: not a character
        raise InputError(f"line {number} of {name}: field {field!r} holds a lone surrogate "
                         f"(\\u{ord(value[exc.start]):04x} at character {exc.start + 1}), which is not text",
                         hint="fix that \\u escape (a surrogate pair needs both halves), or drop the line") from None
    return value


def _printable(key: str) -> str:
    """A JSON key, safe to print: lone surrogates as \\udXXX escapes."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
