"""Per-text corpus records on a model with linear layers (issue 26; corpus/records.py).

On the tiny Qwen3.5 (tests/tiny_models_qwen3_5.py: layers linear, full, linear, linear) a
linear layer's pattern is its hidden attention M, signed, its rows no distributions. The
pooled result leaves entropy undefined there (NaN, null in JSON); each text's record must
agree: null in its `scores` and `sums` exactly on the linear layers, the header naming the
layers and saying why, and the entropy of the softmax layer equal to its definition. Every
other score of every layer is its definition over the captured pattern (M on the linear
layers: signed values, which a resume must accept, while a forged value is still refused).

Expected numbers are computed here from the captured patterns in float64, independently of
heads.py's probe: previous_token = mean over t ≥ 1 of A[t, t−1]; first_token = mean over
t ≥ 1 of A[t, 0]; self = mean over t of A[t, t]; duplicate_token = mean over the rows whose
token occurred earlier of the weight on its earlier copies; entropy = mean over t of
−Σ_j A[t, j] log A[t, j] / log(t + 1) (0 for t = 0). Records keep float32's 7 digits and
float32 row terms, so they match to 1e-6 (`RTOL`/`ATOL`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

from attnscope import corpus
from attnscope.errors import InputError
from attnscope.hooks import attn_site

TEXTS = ["The fluffy creature sat on the mat and looked at the moon, and the moon looked back at it.",
         "Once upon a time there was a small model with four layers and two kinds of attention in it.",
         "the cat the cat the cat sat sat on on the mat mat and the dog the dog"]
NAMES = ["previous_token", "first_token", "self", "duplicate_token", "entropy"]
LINEAR, FULL = [0, 2, 3], [1]
RTOL, ATOL = 1e-6, 1e-6
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


def plain(texts: list[str]) -> list[tuple[int, str]]:
    return [(k + 1, text) for k, text in enumerate(texts)]


def read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header, *rest = (json.loads(line) for line in path.read_text().splitlines())
    return header, rest


def definitions(pattern: torch.Tensor, ids: list[int]) -> dict[str, torch.Tensor]:
    """Each score's per-head value (H,) from one layer's (H, T, T) pattern, in float64."""
    a = pattern.double()
    n = a.shape[-1]
    t = torch.arange(n)
    out = {"previous_token": a[:, t[1:], t[1:] - 1].mean(-1), "first_token": a[:, 1:, 0].mean(-1),
           "self": a[:, t, t].mean(-1)}
    copies = [[j for j in range(i) if ids[j] == ids[i]] for i in range(n)]
    rows = [i for i in range(n) if copies[i]]
    out["duplicate_token"] = torch.stack([a[:, i, copies[i]].sum(-1) for i in rows], -1).mean(-1)
    ent = torch.zeros(a.shape[0], n, dtype=torch.float64)
    for i in range(1, n):
        p = a[:, i, : i + 1]
        ent[:, i] = -(p * torch.log(p.clamp_min(1e-30))).sum(-1) / math.log(i + 1)
    out["entropy"] = ent.mean(-1)
    return out


@pytest.fixture(scope="module")
def written(inspector: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Any]:
    m = inspector("qwen3_5")
    out = tmp_path_factory.mktemp("per_text") / "per.jsonl"
    res = corpus.corpus_scores(m, plain(TEXTS), names=NAMES, per_text=out)
    return m, out, res


def test_records_leave_entropy_undefined_exactly_on_linear_layers(written: tuple[Any, Path, Any]) -> None:
    m, out, res = written
    assert [i for i, s in enumerate(m.sites) if not s.stochastic] == LINEAR
    header, recs = read(out)
    assert header["scores"] == NAMES and header["layers"] == [0, 1, 2, 3]
    assert header["signed"]["layers"] == LINEAR
    assert "linear" in header["signed"]["why"] and "entropy is undefined" in header["signed"]["why"]
    assert len(recs) == len(TEXTS)
    for rec in recs:
        for grid in (rec["scores"]["entropy"], rec["sums"]["entropy"]):
            assert [all(v is None for v in row) for row in grid] == [i in LINEAR for i in range(4)]
            assert all(isinstance(v, float) for i in FULL for v in grid[i])
        for name in NAMES[:-1]:  # the other scores have a value on every layer
            assert all(isinstance(v, float) for row in rec["scores"][name] for v in row), name
    # the pooled result: the same cells undefined (NaN), the same reason
    assert torch.isnan(res.scores["entropy"][LINEAR]).all() and not torch.isnan(res.scores["entropy"][FULL]).any()
    assert "entropy" in res.partly


def test_record_values_equal_their_definitions(written: tuple[Any, Path, Any]) -> None:
    """Every score of every layer (M on the linear ones; entropy on the softmax one only)
    equals its definition over the captured pattern."""
    m, out, _ = written
    _, recs = read(out)
    for rec, text in zip(recs, TEXTS):
        ids = m.tokenize(text).ids
        assert rec["n_tokens"] == len(ids)
        cap = m.capture(ids, {attn_site(i): ["pattern"] for i in range(4)})
        for layer in range(4):
            want = definitions(cap.get(attn_site(layer), "pattern"), ids)
            for name in NAMES:
                if name == "entropy" and layer in LINEAR:
                    continue
                got = torch.tensor(rec["scores"][name][layer], dtype=torch.float64)
                torch.testing.assert_close(got, want[name], rtol=RTOL, atol=ATOL, msg=f"{name} layer {layer}")
        # signed sums really occur on the linear layers (a resume must read them back)
        assert min(v for name in NAMES[:-1] for i in LINEAR for v in rec["sums"][name][i]) < 0


def test_resume_reads_the_signed_records_back(written: tuple[Any, Path, Any], tmp_path: Path) -> None:
    """A resumed file pools to the same scores (NaN entropy on the linear layers), every
    text taken from the file. Before the fix a linear layer's negative sums were refused."""
    m, out, res = written
    copy = tmp_path / "again.jsonl"
    copy.write_bytes(out.read_bytes())
    again = corpus.corpus_scores(m, plain(TEXTS), names=NAMES, per_text=copy, resume=True)
    assert again.resumed == len(TEXTS)
    for name in NAMES:
        assert torch.equal(again.scores[name].nan_to_num(-1.0), res.scores[name].nan_to_num(-1.0)), name
    assert again.partly == res.partly


@pytest.mark.parametrize("forge, words", [
    (lambda rec: rec["sums"]["entropy"][0].__setitem__(0, 0.5), "not null on a signed layer"),
    (lambda rec: rec["sums"]["entropy"][1].__setitem__(0, None), "not all numbers"),
    (lambda rec: rec["sums"]["first_token"][0].__setitem__(0, -1e6), "not all numbers in -"),
    (lambda rec: rec["sums"]["self"][1].__setitem__(0, -0.5), "not all numbers in 0.."),
])
def test_forged_records_are_still_refused(forge: Callable[[dict[str, Any]], None], words: str,
                                          written: tuple[Any, Path, Any], tmp_path: Path) -> None:
    """The signed layers' wider bounds are theirs only: an entropy on a linear layer, a
    null on the softmax layer, a sum past −count..count on a linear layer, a negative sum
    on the softmax layer are each one InputError on resume."""
    m, out, _ = written
    header, recs = read(out)
    forge(recs[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(doc) + "\n" for doc in [header, *recs]))
    with pytest.raises(InputError, match=words):
        corpus.corpus_scores(m, plain(TEXTS), names=NAMES, per_text=bad, resume=True)


def test_the_cli_shows_the_same_undefined_cells(build: Callable[[str], Path], tmp_path: Path) -> None:
    """`heads --corpus --per-text --json`: the pooled entropy is null on the linear layers,
    as every record's is."""
    from attnscope.cli import app

    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    per = tmp_path / "per.jsonl"
    result = CliRunner().invoke(app, ["heads", "--model", str(build("qwen3_5")), "--corpus", str(path), "--per-text",
                                      str(per), *[a for name in NAMES for a in ("--score", name)], "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    pooled = doc["scores"]["entropy"]
    _, recs = read(per)
    for rec in recs:
        assert [[v is None for v in row] for row in rec["scores"]["entropy"]] == \
            [[v is None for v in row] for row in pooled]
    assert [all(v is None for v in row) for row in pooled] == [i in LINEAR for i in range(4)]
