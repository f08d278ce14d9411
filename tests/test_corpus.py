"""Tests for head scores over a corpus (`attnscope.corpus`): pooled scores against the
definitions applied to transformers' attention text by text, the per-text file and its
resume, two processes under torchrun against one, and every bad corpus's one error.

Tolerance, derived (STYLE rule 9): ours runs in float32 and is compared with the
float64 reference (transformers' model cast to float64). Transformers' own float32 pass
shows what float32 does to one attention entry p: it moves it by at most δ absolutely
and ρ·p relatively (both measured here, over the whole corpus, from its float32 pass
against its float64 one). Ours is another float32 computation of the same size, so each
of its entries is allowed twice that: d(p) = 2·min(δ, ρ·p). A pooled score is a mean of
row terms, so its error is at most the largest row term's: Σ d(p) over the entries a
term sums (one for the stripes and the first column; the earlier copies for
duplicate_token), and Σ |1 + log p|·d(p) / log(keys) for a row's normalised entropy
(first order in d; d ≤ 2ρ·p keeps it small where log p is large).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import tiny_models as tm
from attnscope import corpus
from attnscope import heads as hd
from attnscope.errors import ExportError, InputError, UsageError

REPO = Path(__file__).resolve().parents[1]

# Texts of different lengths, some with repeated words (so duplicate_token has rows),
# all within the tiny models' 64 positions.
TEXTS = tm.SENTENCES + [
    "the cat sat on the mat and the cat slept on the mat",
    tm.LONG_TEXT,
    "moon",
    "the dog saw the dog and the dog saw the cat, the cat saw the dog",
]
MODELS = [("llama", True), ("bert", False)]  # (tiny checkpoint, causal)


# --------------------------------------------------------------- the reference


def reference_terms(A: torch.Tensor, ids: list[int], causal: bool) -> dict[str, tuple[torch.Tensor, int]]:
    """The README's definitions on one text's full (L, H, n, n) float64 pattern: per
    score, the sum of its row terms (L, H) and how many rows it has."""
    n = A.shape[-1]

    def pooled(rows: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        total = torch.stack(rows, -1).sum(-1) if rows else torch.zeros(A.shape[:2], dtype=A.dtype)
        return total, len(rows)  # (L, H), rows

    out = {
        "previous_token": pooled([A[..., i, i - 1] for i in range(1, n)]),
        "first_token": pooled([A[..., i, 0] for i in range(1, n)]),
        "self": pooled([A[..., i, i] for i in range(n)]),
        "duplicate_token": pooled([A[..., i, [j for j in range(i) if ids[j] == ids[i]]].sum(-1)
                                   for i in range(n) if ids[i] in ids[:i]]),
    }
    if not causal:
        out["next_token"] = pooled([A[..., i, i + 1] for i in range(n - 1)])
    rows = []
    for i in range(n):
        keys = i + 1 if causal else n
        p = A[..., i, :]
        h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
        rows.append(h / math.log(keys) if keys > 1 else torch.zeros_like(h))
    out["entropy"] = pooled(rows)
    return out


def row_bounds(A: torch.Tensor, d: torch.Tensor, ids: list[int], causal: bool) -> dict[str, float]:
    """The largest error of one row term of each score when each entry p may move by
    d(p) (see the module docstring), over every head and row of one text."""
    n = A.shape[-1]
    out = {
        "previous_token": float(d[..., range(1, n), range(n - 1)].max()) if n > 1 else 0.0,
        "first_token": float(d[..., 1:, 0].max()) if n > 1 else 0.0,
        "self": float(d.diagonal(dim1=-2, dim2=-1).max()),
        "next_token": float(d[..., range(n - 1), range(1, n)].max()) if n > 1 else 0.0,
    }
    dup = [float(d[..., i, [j for j in range(i) if ids[j] == ids[i]]].sum(-1).max()) for i in range(n) if ids[i] in ids[:i]]
    out["duplicate_token"] = max(dup, default=0.0)
    keys = (torch.arange(n) + 1 if causal else torch.full((n,), n)).double()  # (n,)
    ent = ((1 + torch.log(A.clamp_min(1e-300))).abs() * d).sum(-1) / torch.log(keys).clamp_min(math.log(2))  # (L, H, n)
    out["entropy"] = float(ent.max())
    return out


def reference_pooled(folder: Path, texts: list[str], causal: bool) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """Pooled scores from transformers in float64, their row counts, and per score the
    tolerance derived from its own float32 noise."""
    ref32 = tm.load_reference(folder)
    ref64 = copy.deepcopy(ref32).double()
    tok = tm.plain_tokenizer(folder)
    per_text = []
    delta = rho = 0.0
    for text in texts:
        ids = tok.encode(text).ids
        A = tm.reference_attention(ref64, ids)  # (L, H, n, n) float64
        noise = (tm.reference_attention(ref32, ids).double() - A).abs()
        delta = max(delta, float(noise.max()))
        rho = max(rho, float((noise / A)[A > 0].max()))
        per_text.append((A, ids))
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    tol: dict[str, float] = {}
    for A, ids in per_text:
        d = 2 * torch.minimum(torch.full_like(A, delta), rho * A)
        bounds = row_bounds(A, d, ids, causal)
        for name, (total, count) in reference_terms(A, ids, causal).items():
            sums[name] = sums.get(name, 0) + total
            rows[name] = rows.get(name, 0) + count
            tol[name] = max(tol.get(name, 0.0), bounds[name])
    return {name: sums[name] / rows[name] for name in sums if rows[name]}, rows, tol


def plain(texts: list[str]) -> list[tuple[int, str]]:
    return [(k + 1, text) for k, text in enumerate(texts)]


# --------------------------------------------------------------- pooled scores


@pytest.mark.parametrize("name, causal", MODELS)
def test_pooled_scores_match_transformers(name: str, causal: bool, build: Callable, inspector: Callable) -> None:
    m = inspector(name)
    res = corpus.corpus_scores(m, plain(TEXTS), seed=1)
    assert res is not None
    expect, rows, tol = reference_pooled(build(name), TEXTS, causal)
    assert res.rows == rows  # every eligible row of every text, none twice
    assert res.n_texts == len(TEXTS)
    assert res.n_tokens == sum(len(tm.plain_tokenizer(build(name)).encode(t).ids) for t in TEXTS)
    assert set(res.scores) == set(expect) | {"induction"}
    for score, value in expect.items():
        got = res.scores[score].double()
        assert got.shape == value.shape == (m.n_layers, m.n_heads)
        diff = float((got - value).abs().max())
        assert diff <= tol[score], f"{name} {score}: max diff {diff:.3g} > derived bound {tol[score]:.3g}"
        # the float64 sums are the pooled numerators themselves
        assert torch.allclose(res.sums[score] / res.rows[score], value, rtol=0, atol=tol[score])
    if causal:
        assert "next_token" in res.undefined and "next_token" not in res.sums
    # induction is the model's, measured once as `heads` measures it
    assert torch.equal(res.scores["induction"], hd.head_scores(m, names=["induction"], seed=1).scores["induction"])


def test_a_long_text_weighs_by_its_rows(inspector: Callable) -> None:
    """Pooling by rows, not by texts: a corpus of one text twice and another once is not
    the mean of the three texts' means unless the texts have as many rows."""
    m = inspector("llama")
    short, long = "moon", tm.LONG_TEXT
    res = corpus.corpus_scores(m, [short, long, long], names=["self"])
    a, b = (hd.head_scores(m, t, names=["self"]).scores["self"].double() for t in (short, long))
    na, nb = len(m.tokenize(short)), len(m.tokenize(long))
    expect = (a * na + 2 * b * nb) / (na + 2 * nb)
    assert torch.allclose(res.scores["self"].double(), expect, atol=1e-6)
    assert not torch.allclose(expect, (a + 2 * b) / 3, atol=1e-3)


def test_selection_measure_and_progress(inspector: Callable) -> None:
    m = inspector("bert")
    seen: list[corpus.CorpusProgress] = []
    res = corpus.corpus_scores(m, plain(TEXTS), names=["entropy", "self"], layers="1", heads="0,2",
                               progress=seen.append, measure="norm")
    whole = corpus.corpus_scores(m, plain(TEXTS), names=["self", "entropy"], measure="norm")
    assert list(res.scores) == ["entropy", "self"] and res.layers == [1] and res.heads == [0, 2]
    for score in res.scores:
        assert torch.equal(res.scores[score], whole.scores[score][1:, [0, 2]])
    assert [p.done for p in seen] == list(range(1, len(TEXTS) + 1))
    last = seen[-1]
    assert last.total == len(TEXTS) and last.tokens == res.n_tokens and last.eta_s == 0
    assert last.texts_per_s > 0 and last.tokens_per_s > last.texts_per_s
    doc = corpus.corpus_dict(res)
    assert doc["corpus"]["n_texts"] == len(TEXTS) and doc["corpus"]["rows"]["self"] == res.n_tokens
    with pytest.raises(UsageError, match="rollout"):
        corpus.corpus_scores(m, ["a b"], measure="rollout")
    with pytest.raises(UsageError, match="not on a corpus"):
        corpus.corpus_scores(m, ["a b"], names=["induction"])
    with pytest.raises(UsageError, match="unknown score"):
        corpus.corpus_scores(m, ["a b"], names=["self", "bogus"])
    with pytest.raises(InputError, match="no texts to score"):
        corpus.corpus_scores(m, [], names=["self"])


def test_too_long_text_names_its_line_unless_truncated(inspector: Callable) -> None:
    m = inspector("llama")  # 64 positions
    texts = [(3, "the cat sat"), (7, "word " * 100), (9, "the end")]
    with pytest.raises(InputError, match=r"^line 7: the text is \d+ tokens, longer than the model's 64 positions"):
        corpus.corpus_scores(m, texts)
    res = corpus.corpus_scores(m, texts, truncate=True)
    assert res.truncated == 1 and res.n_tokens == len(m.tokenize("the cat sat")) + 64 + len(m.tokenize("the end"))


# --------------------------------------------------------------- per-text file, resume


def records(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header, *rest = (json.loads(line) for line in path.read_text().splitlines())
    return header, rest


def test_per_text_file_holds_each_text(tmp_path: Path, inspector: Callable) -> None:
    m = inspector("bert")
    out = tmp_path / "per.jsonl"
    res = corpus.corpus_scores(m, plain(TEXTS), names=["previous_token", "duplicate_token", "entropy"], per_text=out)
    header, recs = records(out)
    assert header["scores"] == ["previous_token", "duplicate_token", "entropy"]
    assert header["layers"] == [0, 1] and header["heads"] == [0, 1, 2, 3] and header["measure"] == "weight"
    assert [r["index"] for r in recs] == list(range(len(TEXTS)))
    assert [r["line"] for r in recs] == list(range(1, len(TEXTS) + 1))
    for rec, text in zip(recs, TEXTS):
        one = hd.head_scores(m, text, names=header["scores"])
        assert rec["n_tokens"] == one.n_tokens
        for score in header["scores"]:
            if score in one.undefined:
                assert rec["scores"][score] is None and rec["counts"][score] == 0
                continue
            # values are written to float32's 7 digits
            assert torch.allclose(torch.tensor(rec["scores"][score]), one.scores[score], rtol=1e-6, atol=1e-7)
    pooled = {s: sum(torch.tensor(r["sums"][s], dtype=torch.float64) for r in recs) / sum(r["counts"][s] for r in recs)
              for s in header["scores"]}
    for score, value in pooled.items():  # pooling redone from the file alone
        assert torch.equal(value.float(), res.scores[score])
    with pytest.raises(ExportError, match="already exists"):
        corpus.corpus_scores(m, plain(TEXTS), per_text=out)


def test_resume_runs_only_the_rest_and_changes_nothing(tmp_path: Path, inspector: Callable,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    m = inspector("llama")
    full = tmp_path / "full.jsonl"
    whole = corpus.corpus_scores(m, plain(TEXTS), per_text=full)
    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:5]) + lines[5][:40])  # header, 4 texts, a write cut short
    runs: list[int] = []
    real = type(m).run
    monkeypatch.setattr(type(m), "run", lambda self, ids, *a: runs.append(len(ids)) or real(self, ids, *a))
    again = corpus.corpus_scores(m, plain(TEXTS), per_text=part, resume=True, seed=0)
    assert again.resumed == 4 and len(runs) == len(TEXTS) - 4 + 1  # the rest, and induction's one pass
    assert part.read_text() == full.read_text()  # the cut line rewritten, every text once, in order
    for score in whole.scores:
        assert torch.equal(again.scores[score], whole.scores[score]), score
    assert again.rows == whole.rows and again.n_tokens == whole.n_tokens
    done = corpus.corpus_scores(m, plain(TEXTS), per_text=part, resume=True)  # nothing left to run
    assert done.resumed == len(TEXTS) and all(torch.equal(done.scores[s], whole.scores[s]) for s in whole.scores)
    fresh = tmp_path / "fresh.jsonl"  # --resume on a file that does not exist yet starts it
    corpus.corpus_scores(m, plain(TEXTS[:2]), per_text=fresh, resume=True)
    assert len(records(fresh)[1]) == 2


@pytest.mark.parametrize("change, message", [
    (dict(layers="0"), "layers"),
    (dict(names=["self"]), "scores"),
    (dict(measure="norm"), "measure"),
    (dict(truncate=True), "truncate"),
])
def test_resume_refuses_a_file_from_another_run(tmp_path: Path, inspector: Callable, change: dict[str, Any],
                                                message: str) -> None:
    m = inspector("llama")
    out = tmp_path / "per.jsonl"
    corpus.corpus_scores(m, plain(TEXTS[:3]), names=["self", "entropy"], per_text=out)
    args: dict[str, Any] = dict(names=["self", "entropy"], per_text=out, resume=True) | change
    with pytest.raises(InputError, match=f"was written with {message}"):
        corpus.corpus_scores(m, plain(TEXTS[:3]), **args)


def test_resume_refuses_another_corpus_and_broken_files(tmp_path: Path, inspector: Callable) -> None:
    m = inspector("llama")
    out = tmp_path / "per.jsonl"
    corpus.corpus_scores(m, plain(TEXTS[:3]), names=["self"], per_text=out)
    with pytest.raises(InputError, match="does not match this corpus: its text 1 was line 2"):
        corpus.corpus_scores(m, plain([TEXTS[0], "another text", TEXTS[2]]), names=["self"], per_text=out, resume=True)
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(InputError, match="line 2 of .*per.jsonl is not a per-text record"):
        corpus.corpus_scores(m, plain(TEXTS[:3]), names=["self"], per_text=out, resume=True)
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "a"}\n')
    with pytest.raises(InputError, match="not an attnscope per-text file"):
        corpus.corpus_scores(m, plain(TEXTS[:3]), names=["self"], per_text=other, resume=True)
    with pytest.raises(ExportError, match="per.txt is not JSON Lines"):
        corpus.corpus_scores(m, plain(TEXTS[:3]), per_text=tmp_path / "per.txt")


# --------------------------------------------------------------- two processes

DIST_SCRIPT = r'''
import json, sys
from attnscope import corpus, distributed
from attnscope.api import load
from attnscope.errors import AttnscopeError

folder, corpus_path, per_text, resumed, out = sys.argv[1:6]
group = distributed.start("cpu")
m = load(folder, device="cpu", dtype="float32")
texts = list(corpus.read_corpus(corpus_path))
doc = {}
for key, kwargs in [("fresh", dict(per_text=per_text)), ("resumed", dict(per_text=resumed, resume=True))]:
    res = corpus.corpus_scores(m, texts, **kwargs)
    if group.rank == 0:
        doc[key] = {"sums": {k: v.tolist() for k, v in res.sums.items()}, "rows": res.rows,
                    "n_texts": res.n_texts, "n_tokens": res.n_tokens, "resumed": res.resumed, "world": res.world}
    else:
        assert res is None
try:  # text 5 (rank 1's) is too long: rank 0 must stop with its message, not wait
    corpus.corpus_scores(m, ["a short text"] * 5 + ["word " * 100] + ["the end"] * 4)
except AttnscopeError as exc:
    doc["error"] = [type(exc).__name__, exc.message]
if group.rank == 0:
    with open(out, "w") as f:
        json.dump(doc, f)
distributed.finish()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path: Path, build: Callable, inspector: Callable) -> None:
    folder = build("llama")
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(TEXTS[:6]) + "\n\n" + "\n".join(TEXTS[6:]) + "\n")  # a blank line: line numbers skip it
    texts = list(corpus.read_corpus(str(text_file)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process runs: the same float32 kernels, the same per-text sums
    try:
        one = corpus.corpus_scores(inspector("llama"), texts, per_text=tmp_path / "one.jsonl")
    finally:
        torch.set_num_threads(threads)
    lines = (tmp_path / "one.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "resumed.jsonl").write_text("".join(lines[:6]))  # a one-process run stopped after 5 texts
    script = tmp_path / "run.py"
    script.write_text(DIST_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(script), str(folder), str(text_file), str(tmp_path / "two.jsonl"), str(tmp_path / "resumed.jsonl"),
           str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out.json").read_text())
    for key, resumed in [("fresh", 0), ("resumed", 5)]:
        two = doc[key]
        assert two["world"] == 2 and two["resumed"] == resumed
        assert two["rows"] == one.rows and two["n_texts"] == one.n_texts and two["n_tokens"] == one.n_tokens
        for score, total in one.sums.items():
            # the same float64 terms added in another order: float64 rounding only
            assert torch.allclose(torch.tensor(two["sums"][score], dtype=torch.float64), total, rtol=1e-12, atol=0), score
    # the ranks' files merged into one, sorted by text, the same records as one process wrote
    assert [json.loads(x)["index"] for x in (tmp_path / "two.jsonl").read_text().splitlines()[1:]] == list(range(len(TEXTS)))
    assert (tmp_path / "resumed.jsonl").read_text() == "".join(lines)
    assert not list(tmp_path.glob("*.rank*.jsonl"))
    assert doc["error"][0] == "InputError" and doc["error"][1].startswith("line 6: the text is")


# --------------------------------------------------------------- reading corpora


def write(tmp_path: Path, name: str, data: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_read_plain_and_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "c.txt", "\ufefffirst text\r\n\n   \nsecond {text}\nthird\n")
    assert list(corpus.read_corpus(path)) == [(1, "first text"), (4, "second {text}"), (5, "third")]
    assert list(corpus.read_corpus(path, max_texts=2)) == [(1, "first text"), (4, "second {text}")]
    path = write(tmp_path, "c.jsonl", '{"text": "a b", "id": 1}\n\n{"text": "  "}\n{"body": "c", "text": "d"}\n')
    assert list(corpus.read_corpus(path)) == [(1, "a b"), (4, "d")]
    path = write(tmp_path, "d.jsonl", '{"body": "x"}\n{"body": "y"}\n')
    assert list(corpus.read_corpus(path, field="body")) == [(1, "x"), (2, "y")]

    class Stdin:
        buffer = __import__("io").BytesIO(b'one\n{"text": "two"}\n')

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert list(corpus.read_corpus("-")) == [(1, "one"), (2, '{"text": "two"}')]


@pytest.mark.parametrize("name, data, kwargs, message", [
    ("c.jsonl", '{"text": "a"}\n{"text": "b",}\n', {}, r"^line 2 of .*c.jsonl is not valid JSON: .* column \d+$"),
    ("c.jsonl", '{"text": "a"}\n\n{"body": "b", "id": 3}\n', {}, r"^line 3 of .*c.jsonl has no field 'text' \(its fields: body, id\)$"),
    ("c.jsonl", '{"text": 5}\n', {}, r"^line 1 of .*c.jsonl: field 'text' is a JSON number, not a string$"),
    ("c.jsonl", '["a"]\n', {}, r"^line 1 of .*c.jsonl is a JSON array, not an object$"),
    ("c.jsonl", '{"body": "a"}\n', dict(field="text"), "has no field 'text'"),
    ("c.txt", "", {}, r"^the corpus .*c.txt holds no text \(only blank lines\)$"),
    ("c.txt", "\n  \n\t\n", {}, "holds no text"),
    ("c.jsonl", '{"text": ""}\n', {}, r"holds no text \(no line with a non-blank 'text'\)"),
    ("c.txt", b"fine\n\xff\xfe bad\n", {}, r"^line 2 of .*c.txt is not UTF-8 \(byte 1\)$"),
])
def test_bad_corpus_is_one_clear_error(tmp_path: Path, name: str, data: str | bytes, kwargs: dict[str, Any],
                                       message: str) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(InputError, match=message) as info:
        list(corpus.read_corpus(path, **kwargs))
    assert info.value.hint  # and says what to do


def test_missing_corpus_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        corpus.read_corpus(str(tmp_path / "nope.txt"))  # at the call, before any reading
    with pytest.raises(InputError, match="is a folder"):
        corpus.read_corpus(str(tmp_path))
    with pytest.raises(UsageError, match="--max-texts must be at least 1"):
        corpus.read_corpus(write(tmp_path, "c.txt", "a\n"), max_texts=0)


# --------------------------------------------------------------- the command (once wired)


def _heads_has_corpus() -> bool:
    import inspect

    from attnscope.cli import demos

    return "corpus" in inspect.signature(demos.heads).parameters


@pytest.mark.skipif(not _heads_has_corpus(), reason="heads --corpus is not wired into the CLI yet")
def test_cli_corpus(tmp_path: Path, build: Callable, inspector: Callable) -> None:
    from typer.testing import CliRunner

    from attnscope.cli import app

    path = write(tmp_path, "c.jsonl", "".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    per = tmp_path / "per.jsonl"
    args = ["heads", "--model", str(build("bert")), "--corpus", path, "--field", "body", "--max-texts", "5",
            "--per-text", str(per), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    lib = corpus.corpus_scores(inspector("bert"), plain(TEXTS[:5]))
    assert doc["corpus"]["n_texts"] == 5 and doc["corpus"]["n_tokens"] == lib.n_tokens
    for score, value in lib.scores.items():
        assert torch.allclose(torch.tensor(doc["scores"][score]), value, atol=0), score
    assert len(records(per)[1]) == 5
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "--resume" in again.output
    assert CliRunner().invoke(app, args + ["--resume"]).exit_code == 0
    view = CliRunner().invoke(app, ["heads", "--model", str(build("bert")), "--corpus", path, "--field", "body",
                                    "--score", "self", "--no-color"])
    assert view.exit_code == 0 and "corpus: " in view.stdout and f"{len(TEXTS)} texts" in view.stdout.replace(",", "")
    bad = CliRunner().invoke(app, ["heads", "--model", str(build("bert")), "--corpus", path])
    assert bad.exit_code == 2 and "line 1" in bad.output and "has no field 'text'" in bad.output


@pytest.mark.parametrize("name, causal", MODELS)
@pytest.mark.parametrize("batch_tokens", [40, 100000])
def test_packed_batches_match_transformers(name: str, causal: bool, batch_tokens: int, build: Callable,
                                           inspector: Callable) -> None:
    """--batch-tokens packs texts into one pass, each masked to itself with its own
    positions: the pooled scores still equal transformers' text by text, within the same
    derived bound (a sliding-window model included)."""
    m = inspector(name)
    res = corpus.corpus_scores(m, plain(TEXTS), seed=1, batch_tokens=batch_tokens)
    assert res is not None
    expect, rows, tol = reference_pooled(build(name), TEXTS, causal)
    assert res.rows == rows and res.n_texts == len(TEXTS)
    for score, value in expect.items():
        diff = float((res.scores[score].double() - value).abs().max())
        assert diff <= tol[score], f"{name} {score} (batch {batch_tokens}): {diff:.3g} > {tol[score]:.3g}"


def test_packing_a_sliding_window_model_changes_nothing(inspector: Callable) -> None:
    """Mistral's window applies to each text's own positions when packed: every score
    equals one text a pass (whose patterns tests/test_parity.py checks against
    transformers) within float32 noise of means of weights (1e-6)."""
    m = inspector("mistral")
    one = corpus.corpus_scores(m, plain(TEXTS), seed=1)
    packed = corpus.corpus_scores(m, plain(TEXTS), seed=1, batch_tokens=100000)
    assert one is not None and packed is not None and one.rows == packed.rows
    for score in one.scores:
        assert torch.allclose(one.scores[score], packed.scores[score], rtol=0, atol=1e-6), score
