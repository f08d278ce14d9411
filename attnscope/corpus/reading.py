"""Reading a corpus: (line number, text) from a plain file, JSON Lines or stdin.

A plain file holds one text a line; JSON Lines (`.jsonl`/`.ndjson`) one object a line,
whose string `field` is the text; `-` is stdin. Blank lines are skipped, and every bad
line is an InputError naming its number. Nothing here needs torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from attnscope.errors import InputError, UsageError

JSONL_SUFFIXES = (".jsonl", ".ndjson")

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
