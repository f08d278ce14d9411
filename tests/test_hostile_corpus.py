"""Hostile input to `heads --corpus` and its per-text file, by whole classes (issue 22).

Each class gets one clear line and a bounded run: a named corpus or per-text file that
is a FIFO or a device (nothing hangs, nothing is read whole), lines of any length (read
and tokenized in bounded pieces), JSON nested 100,000 deep or holding a 5,000-digit
number, a lone surrogate, a closed stdin, forged or duplicated per-text records, two
runs on one per-text file, a per-text name that is a (dangling) link, and a write that
fails halfway. Hangs, memory and stdin run `python -m attnscope` in a subprocess with a
timeout; the rest call the library or the CLI in-process. Two bounded hypothesis runs
fuzz the corpus reader and the per-text record parser: every input is accepted or is
an AttnscopeError.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from procs import run_measured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_models as tm
from attnscope import corpus
from attnscope.corpus import per_text as pt
from attnscope.corpus import pooling, reading
from attnscope.errors import AttnscopeError, ExportError, InputError

REPO = Path(__file__).resolve().parents[1]
TEXTS = tm.SENTENCES[:4]
TIMEOUT = 120  # a hang, not a slow machine: each of these runs ends in seconds


def plain(texts: list[str]) -> list[tuple[int, str]]:
    return [(k + 1, text) for k, text in enumerate(texts)]


def cli(*args: str, stdin: Any = subprocess.DEVNULL, shell_tail: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m attnscope ARGS` in a fresh process, offline, with a hang timeout."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", NO_COLOR="1")
    if shell_tail:  # e.g. "<&-": a redirection only a shell can make
        command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "attnscope", *args]) + " " + shell_tail
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO,
                              env=env)
    return subprocess.run([sys.executable, "-m", "attnscope", *args], capture_output=True, text=True, stdin=stdin,
                          timeout=TIMEOUT, cwd=REPO, env=env)


def one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failure told in one error line, no traceback, no internal error."""
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    err = result.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err.replace("\n", " "), err


def write(tmp_path: Path, name: str, data: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return str(path)


# --------------------------------------------------------------- files that are not files


def test_fifo_corpus_and_per_text_do_not_hang(tmp_path: Path, build: Callable) -> None:
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)  # no writer: reading it would wait forever
    model = str(build("llama"))
    one_line(cli("heads", "--model", model, "--corpus", str(fifo)), "not a regular file")
    good = write(tmp_path, "good.txt", "\n".join(TEXTS) + "\n")
    per = tmp_path / "per.jsonl"
    os.mkfifo(per)
    one_line(cli("heads", "--model", model, "--corpus", good, "--per-text", str(per), "--resume"),
             "not a regular file")


def test_device_corpus_is_refused_not_read(tmp_path: Path) -> None:
    link = tmp_path / "zero.txt"
    link.symlink_to("/dev/zero")  # endless bytes without a newline
    with pytest.raises(InputError, match="not a regular file"):
        list(corpus.read_corpus(str(link)))
    per = tmp_path / "per.jsonl"
    os.mkfifo(per)
    with pytest.raises(ExportError, match="not a regular file"):
        pt.check_target(per, resume=True)


def test_closed_stdin_is_one_line(build: Callable) -> None:
    one_line(cli("heads", "--model", str(build("llama")), "--corpus", "-", shell_tail="<&-"), "stdin is closed")


def test_stdin_is_streamed(build: Callable) -> None:
    result = subprocess.run([sys.executable, "-m", "attnscope", "heads", "--model", str(build("llama")), "--corpus",
                             "-", "--json", "--score", "self"], input="\n".join(TEXTS) + "\n", capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["corpus"]["n_texts"] == len(TEXTS)


def test_an_endless_stdin_stops_at_the_memory_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    class Endless:  # `yes the cat sat | attnscope heads --corpus -`
        def read1(self, size: int) -> bytes:
            return b"the cat sat\n" * (size // 12)

    class Stdin:
        buffer = Endless()

    monkeypatch.setattr(sys, "stdin", Stdin)
    monkeypatch.setattr(reading, "MAX_HELD", 2 * 1024**2)
    with pytest.raises(InputError, match=r"^the corpus stdin holds more than 2 MiB of text \(at line \d+\)") as info:
        list(corpus.read_corpus("-"))
    assert "--max-texts" in (info.value.hint or "")
    assert len(list(corpus.read_corpus("-", max_texts=1000))) == 1000  # --max-texts stops it first


# --------------------------------------------------------------- lines of any length


def test_a_line_past_the_cap_names_its_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading, "MAX_LINE", 1000)
    path = write(tmp_path, "c.txt", "short\n" + "x" * 1001 + "\nend\n")
    with pytest.raises(InputError, match=r"^line 2 of .*c.txt is longer than the .* limit"):
        list(corpus.read_corpus(path))
    exact = write(tmp_path, "d.txt", "short\n" + "x" * 1000 + "\n" + "y" * 1000)  # at the cap: fine
    assert [n for n, _ in corpus.read_corpus(exact)] == [1, 2, 3]


def test_a_10_mb_line_with_truncate_stays_small(tmp_path: Path, build: Callable) -> None:
    """Tokenized whole, this line took 3.6 GB; a bounded prefix gives the same first tokens."""
    words = "the cat sat on the mat and the dog ran ".split()
    line = " ".join(words[k % len(words)] for k in range(2_500_000))[:10_000_000]
    path = write(tmp_path, "big.txt", "the cat sat\n" + line + "\n")
    result = run_measured([sys.executable, "-m", "attnscope", "heads", "--model", str(build("llama")), "--corpus",
                           str(path), "--truncate", "--json", "--score", "self"], timeout=120)
    peak_mib = result.peak_rss / 2**20  # this one child's own peak
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["corpus"]["n_texts"] == 2 and doc["corpus"]["truncated"] == 1
    assert 0 < peak_mib < 1024, f"peak {peak_mib:.0f} MiB"


def test_a_long_text_without_truncate_is_one_line(inspector: Callable) -> None:
    m = inspector("llama")
    with pytest.raises(InputError, match=r"^line 2: the text is more than \d+ tokens, longer than the model's 64"):
        corpus.corpus_scores(m, [(1, "the cat"), (2, "the cat sat " * 10_000)], names=["self"])


def test_a_sparse_long_text_is_refused_not_tokenized_whole(inspector: Callable,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pooling, "MAX_WINDOW", 4096)
    m = inspector("bert")  # WordPiece: a word past 100 characters is one [UNK]
    with pytest.raises(InputError, match=r"^line 1: the text's first 4,096 characters make only \d+ tokens"):
        corpus.corpus_scores(m, [(1, "x" * 20_000)], names=["self"], truncate=True)


_WORDS = st.sampled_from("the cat sat on mat and dog ran , . ! a b c 7 42 é 日本 \t".split(" ") + ["  ", "x" * 30])


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(_WORDS, min_size=300, max_size=3000))
def test_bounded_tokens_equal_whole_ones(name: str, inspector: Callable, words: list[str]) -> None:
    """The prefix's first n_ctx tokens are the whole text's, for every tiny tokenizer."""
    m = inspector(name)
    text = " ".join(words)
    whole = m.tokenize(text, truncate=True)
    try:
        cut = pooling.bounded_tokens(m, text, truncate=True)
    except InputError:
        return  # a text of fewer tokens than positions per MAX_WINDOW: not this test's case
    assert cut.ids == whole.ids
    assert (cut.truncated_from is None) == (whole.truncated_from is None)
    if whole.truncated_from is not None:
        assert cut.truncated_from is not None and cut.truncated_from <= whole.truncated_from


# --------------------------------------------------------------- JSON lines


@pytest.mark.parametrize("data, message", [
    ('{"text": "a"}\n' + '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", r"^line 2 of .* nests deeper than"),
    ('{"text": "a"}\n{"text": "b", "id": ' + "9" * 5000 + "}\n", r"^line 2 of .* holds a number of more than 4,300"),
    ('{"text": "a"}\n{"text": "b \\ud800 c"}\n', r"^line 2 of .*: field 'text' holds a lone surrogate \(\\ud800"),
    ('{"body": "\\udc80 b"}\n', r"^line 1 of .*: field 'body' holds a lone surrogate"),
    ('{"text": "\\ud83d\\ude00 fine"}\n{"\\udfff": 1}\n', r"^line 2 of .* has no field 'text' \(its fields: \\udfff\)"),
])
def test_hostile_json_lines_are_one_line(tmp_path: Path, data: str, message: str) -> None:
    path = write(tmp_path, "c.jsonl", data)
    field = "body" if '"body"' in data else "text"
    with pytest.raises(InputError, match=message) as info:
        list(corpus.read_corpus(path, field=field))
    assert info.value.hint


def test_a_surrogate_pair_is_text(tmp_path: Path) -> None:
    path = write(tmp_path, "c.jsonl", '{"text": "\\ud83d\\ude00 fine"}\n')
    assert list(corpus.read_corpus(path)) == [(1, "\U0001F600 fine")]


def test_deep_json_through_the_cli(tmp_path: Path, build: Callable) -> None:
    path = write(tmp_path, "c.jsonl", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    one_line(cli("heads", "--model", str(build("llama")), "--corpus", path), "line 1 of", "nests deeper")


# --------------------------------------------------------------- forged per-text records


def _good_file(tmp_path: Path, m: Any) -> tuple[Path, list[str]]:
    out = tmp_path / "per.jsonl"
    corpus.corpus_scores(m, plain(TEXTS), names=["previous_token", "self", "duplicate_token", "entropy"],
                         per_text=out)
    return out, out.read_text().splitlines()


def _forge(edit: Callable[[dict[str, Any]], None]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        rec = json.loads(lines[2])
        edit(rec)
        return lines[:2] + [json.dumps(rec, allow_nan=True)] + lines[3:]
    return apply


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(rec: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        target = rec
        for key in keys:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return edit


FORGERIES = {
    "count 1e29": _forge(_set("counts.self", 1e29)),
    "count 10**29": _forge(_set("counts.self", 10**29)),
    "count as text": _forge(_set("counts.self", "5")),
    "count true": _forge(_set("counts.self", True)),
    "count off by one": _forge(lambda r: r["counts"].update(self=r["counts"]["self"] + 1)),
    "NaN sum": _forge(_set("sums.self.0.0", math.nan)),
    "infinite sum": _forge(_set("sums.self.0.0", math.inf)),
    "negative sum": _forge(_set("sums.self.0.0", -0.5)),
    "sum past its count": _forge(lambda r: _set("sums.self.0.0", r["counts"]["self"] + 1.0)(r)),
    "sum as text": _forge(_set("sums.self.0.0", "0.5")),
    "sum null": _forge(_set("sums.self.0.0", None)),
    "sums ragged": _forge(lambda r: r["sums"]["self"][0].pop()),
    "sums one layer short": _forge(lambda r: r["sums"]["self"].pop()),
    "sums nested deeper": _forge(_set("sums.self.0.0", [0.5])),
    "sums missing": _forge(lambda r: r["sums"].pop("self")),
    "index negative": _forge(_set("index", -1)),
    "index a fraction": _forge(_set("index", 1.5)),
    "index huge": _forge(_set("index", 10**40)),
    "n_tokens past the positions": _forge(_set("n_tokens", 65)),
    "n_tokens zero": _forge(_set("n_tokens", 0)),
    "sha1 not hex": _forge(_set("sha1", "zz" * 8)),
    "truncated_from without --truncate": _forge(_set("truncated_from", 100)),
    "an array": lambda lines: lines[:2] + ["[1, 2]"] + lines[3:],
    "deep": lambda lines: lines[:2] + ["[" * 100_000 + "]" * 100_000] + lines[3:],
    "a 5,000-digit number": lambda lines: lines[:2] + [lines[2][:-1] + ', "x": ' + "7" * 5000 + "}"] + lines[3:],
    "not UTF-8": lambda lines: lines[:2] + ["\udcff"] + lines[3:],
    "duplicate": lambda lines: lines[:3] + [lines[2]] + lines[3:],
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_record_is_one_line(tmp_path: Path, inspector: Callable, forgery: str) -> None:
    m = inspector("llama")
    out, lines = _good_file(tmp_path, m)
    forged = FORGERIES[forgery](lines)
    out.write_bytes(("\n".join(forged) + "\n").encode("utf-8", "surrogateescape"))
    with pytest.raises(InputError, match=r"^line \d of .*per.jsonl is not a per-text record: ") as info:
        corpus.corpus_scores(m, plain(TEXTS), names=["previous_token", "self", "duplicate_token", "entropy"],
                             per_text=out, resume=True)
    assert info.value.hint
    assert "line 3" in info.value.message or (forgery == "duplicate" and "line 4" in info.value.message)


def test_forged_record_through_the_cli(tmp_path: Path, build: Callable, inspector: Callable) -> None:
    path = write(tmp_path, "c.txt", "\n".join(TEXTS) + "\n")
    per = tmp_path / "per.jsonl"
    args = ["heads", "--model", str(build("llama")), "--corpus", path, "--per-text", str(per), "--json"]
    assert cli(*args).returncode == 0
    lines = per.read_text().splitlines()
    per.write_text("\n".join(FORGERIES["count 1e29"](lines)) + "\n")
    one_line(cli(*args, "--resume"), "line 3 of", "not a per-text record")


def test_a_good_file_resumes_unchanged(tmp_path: Path, inspector: Callable) -> None:
    m = inspector("llama")
    out, lines = _good_file(tmp_path, m)
    names = ["previous_token", "self", "duplicate_token", "entropy"]
    whole = corpus.corpus_scores(m, plain(TEXTS), names=names)
    again = corpus.corpus_scores(m, plain(TEXTS), names=names, per_text=out, resume=True)
    assert again.resumed == len(TEXTS) and out.read_text().splitlines() == lines
    assert all((again.scores[s] == whole.scores[s]).all() for s in whole.scores)


# --------------------------------------------------------------- writing the per-text file


def test_a_second_run_on_one_file_is_refused(tmp_path: Path, inspector: Callable) -> None:
    m = inspector("llama")
    out, lines = _good_file(tmp_path, m)
    with open(out, "rb") as other:  # another run holds it
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ExportError, match="per.jsonl is in use by another run"):
            corpus.corpus_scores(m, plain(TEXTS + ["one more text"]), names=["previous_token", "self",
                                 "duplicate_token", "entropy"], per_text=out, resume=True)
    assert out.read_text().splitlines() == lines  # untouched


def test_the_lock_is_held_while_the_run_writes(tmp_path: Path, inspector: Callable) -> None:
    m = inspector("llama")
    out = tmp_path / "per.jsonl"
    held: list[bool] = []

    def progress(_: Any) -> None:
        with open(out, "rb") as probe:
            try:
                fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)

    corpus.corpus_scores(m, plain(TEXTS), names=["self"], per_text=out, progress=progress)
    assert held == [True] * len(TEXTS)


@pytest.mark.parametrize("dangling", [True, False])
def test_a_per_text_link_is_refused_before_the_run(tmp_path: Path, build: Callable, dangling: bool) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "planted.jsonl"
    if not dangling:
        target.write_text("")
    link = tmp_path / "per.jsonl"
    link.symlink_to(target)
    path = write(tmp_path, "c.txt", "\n".join(TEXTS) + "\n")
    for extra in ([], ["--resume"]):
        result = cli("heads", "--model", "/nonexistent/model", "--corpus", path, "--per-text", str(link), *extra)
        one_line(result, "symbolic link")  # refused before the (missing) model is looked for
    assert sorted(p.name for p in elsewhere.iterdir()) == ([] if dangling else ["planted.jsonl"])
    assert dangling or target.read_text() == ""


def test_a_link_swapped_in_after_the_check_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.jsonl"
    link = tmp_path / "per.jsonl"
    link.symlink_to(target)
    with pytest.raises(ExportError, match="symbolic link"):
        pt.PerTextFile(link, resume=True)  # O_NOFOLLOW at the open itself
    assert not target.exists()


def test_a_failed_write_leaves_whole_lines(tmp_path: Path, inspector: Callable,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    m = inspector("llama")
    out = tmp_path / "per.jsonl"
    real = os.write
    calls = {"n": 0}

    def write_some(fd: int, data: Any) -> int:
        if fd > 2 and len(data) > 200:  # the records (the header is written first, whole)
            calls["n"] += 1
            if calls["n"] == 3:  # the third text: half a line, then the disk is full
                real(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(pt.os, "write", write_some)
    with pytest.raises(ExportError, match="No space left on device"):
        corpus.corpus_scores(m, plain(TEXTS), names=["self"], per_text=out)
    data = out.read_bytes()
    assert data.endswith(b"\n") and len(data.splitlines()) == 3  # header and two whole records
    monkeypatch.undo()
    again = corpus.corpus_scores(m, plain(TEXTS), names=["self"], per_text=out, resume=True)
    assert again.resumed == 2


def test_a_run_that_fails_before_any_text_leaves_no_file(tmp_path: Path, inspector: Callable) -> None:
    m = inspector("llama")
    out = tmp_path / "per.jsonl"
    with pytest.raises(InputError, match="line 1: the text is"):
        corpus.corpus_scores(m, [(1, "word " * 200)], names=["self"], per_text=out)
    assert not out.exists()


# --------------------------------------------------------------- fuzzing


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_JSONISH = st.sampled_from([b'{"text": "a b"}', b'{"text": ', b"[", b"]", b"{", b"}", b'"', b"\\ud800", b"\\u",
                            b"9" * 5000, b"\n", b"\r\n", b"\xff", b"\xef\xbb\xbf", b" ", b"text", b"1e999", b"NaN",
                            b'"text"', b":", b",", b"null", b"\x00"])


@_FUZZ
@given(data=st.one_of(st.binary(max_size=400), st.lists(_JSONISH, max_size=40).map(b"".join)),
       jsonl=st.booleans())
def test_fuzz_the_corpus_reader(tmp_path: Path, data: bytes, jsonl: bool) -> None:
    path = tmp_path / ("c.jsonl" if jsonl else "c.txt")
    path.write_bytes(data)
    try:
        texts = list(corpus.read_corpus(str(path)))
    except AttnscopeError as exc:
        assert exc.message and "\n" not in exc.message.strip()
        return
    for number, text in texts:
        assert number >= 1 and text.strip()
        text.encode("utf-8")  # every text is text: no lone surrogate reaches a tokenizer


_HEADER = {"format": pt.PER_TEXT_FORMAT, "version": pt.PER_TEXT_VERSION, "model": "m", "model_shape": [2, 4],
           "dtype": "float32", "measure": "weight", "truncate": False, "scores": ["self", "duplicate_token"],
           "layers": [0, 1], "heads": [0, 1]}
_GOOD = {"index": 0, "line": 1, "sha1": "0123456789abcdef", "n_tokens": 5, "scores": {},
         "sums": {"self": [[1.0, 2.0], [0.5, 5.0]], "duplicate_token": [[0.0, 0.0], [0.0, 0.0]]},
         "counts": {"self": 5, "duplicate_token": 0}}
_LEAF = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                  st.lists(st.floats(min_value=-2, max_value=10), max_size=3))
_PATHS = ["index", "line", "sha1", "n_tokens", "truncated_from", "counts.self", "counts.duplicate_token",
          "sums.self", "sums.self.0", "sums.self.0.1", "sums.duplicate_token.1.0", "sums", "counts"]


@_FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(_PATHS), _LEAF), max_size=3),
       raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_fuzz_the_per_text_record_parser(edits: list[tuple[str, Any]], raw: bytes | None) -> None:
    if raw is None:
        rec = copy.deepcopy(_GOOD)
        for path, value in edits:
            try:
                _set(path, value)(rec)
            except (IndexError, KeyError, TypeError, ValueError):  # the path no longer fits the edited record
                pass
        raw = json.dumps(rec, allow_nan=True).encode()
    try:
        index, record = pt.parse_record(raw, _HEADER, 64, "line 2 of per.jsonl")
    except InputError as exc:
        assert exc.message.startswith("line 2 of per.jsonl is not a per-text record: ")
        return
    assert 0 <= index and 1 <= record.n_tokens <= 64
    for name, grid in record.sums.items():
        assert tuple(grid.shape) == (2, 2) and bool(grid.isfinite().all())
        assert 0 <= record.counts[name] <= record.n_tokens
        assert bool((grid >= -1e-3 * record.counts[name]).all())
        assert bool((grid <= record.counts[name] * (1 + 1e-3)).all())
