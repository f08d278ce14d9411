"""The CLI's outputs as objects (issue 23): `attnscope.outputs`.

- `cli/attend.py` stays a short parse–call–render (no function over 60 lines);
- each output says what it needs, `outputs.run` unions the needs measure by measure,
  runs one pass and hands each output exactly its part;
- a new output is one class;
- the rollout special case lives in `measures.KINDS`;
- `attend` reads its text from stdin (`-`, or no TEXT with a pipe), bounded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

import attnscope
from attnscope import measures, outputs
from attnscope.outputs import Needs, Output, Run, Shape
from attnscope.outputs.views import TerminalView

from cli_runs import ENV, one_error, run

TEXT = "a fluffy blue creature"


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    return result


# ------------------------------------------------------------------ the command's shape


def test_attend_has_no_function_over_60_lines() -> None:
    source = Path(attnscope.__file__).parent / "cli" / "attend.py"
    tree = ast.parse(source.read_text())
    lengths = {node.name: node.end_lineno - node.lineno + 1  # type: ignore[operator]
               for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert lengths and max(lengths.values()) <= 60, lengths


def test_rollout_heads_live_in_one_place() -> None:
    assert measures.KINDS["rollout"].heads("0-3", 9) == [0]
    assert measures.KINDS["weight"].heads("0-3", 9) == [0, 1, 2, 3]
    assert Shape(4, 9, "rollout").heads(None) == [0] and Shape(4, 9, "norm").heads(None) == list(range(9))
    assert not Shape(4, 9, "rollout").per_head
    assert {k.saved_as for k in measures.KINDS.values()} == {"attentions", "norms", "rollout", "alti", "value_zeroing"}


# ------------------------------------------------------------------ one pass, each its part


def test_needs_are_united_measure_by_measure() -> None:
    """A heatmap of one head beside a top-k save of every head: the full patterns are
    kept for that one head only, the top-k for all."""
    view = Needs(("attention",), (3,), (0,), 3, (3, 0, 5))
    topk = Needs(("topk",), (0, 1, 2, 3), (0, 1, 2, 3), 3)
    page = Needs(("topk",), (2, 3), (1,), 8)
    req = outputs._request([view, topk, page], "weight", "text")
    assert req.selections == {"topk": ([0, 1, 2, 3], [0, 1, 2, 3]), "attention": ([3], [0])}
    assert req.measures == ["topk", "attention"] and req.top_k == 8 and req.query == 5


@dataclass
class Entropies(Output):
    """A new output in one class: the mean entropy of each layer's first heads."""

    got: Any = None
    final = True

    def needs(self, shape: Shape, tokens: Any) -> Needs:
        return Needs(("summary",), (0,), tuple(shape.heads("0-1")))

    def emit(self, part: Any, run: Run) -> None:
        self.got = part


def test_a_new_output_is_one_class_and_gets_its_part(inspector: Callable[..., Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m = inspector("bert_bare")
    passes: list[Any] = []
    real = m.run
    monkeypatch.setattr(m, "run", lambda *a, **k: passes.append(a) or real(*a, **k))
    tokens = m.tokenize(TEXT)
    extra = Entropies()
    shown = TerminalView("focus", "-1", "1", 2)
    view_part: list[Any] = []
    monkeypatch.setattr(TerminalView, "emit", lambda self, part, run: view_part.append(part))
    outputs.run(m, tokens, [shown, extra])
    assert len(passes) == 1  # one forward pass for both
    last = m.n_layers - 1
    got = extra.got
    assert got.summary.layers == [0] and got.summary.heads == [0, 1] and tuple(got.summary.entropy.shape) == (1, 2)
    assert got.focus is None and got.topk is None and got.attention is None  # only what it asked for
    part = view_part[0]
    assert part.focus.layers == [last] and part.focus.heads == [1] and part.summary is None
    # the same numbers as a pass of its own
    alone = Entropies()
    outputs.run(m, tokens, [alone])
    assert alone.got.summary.entropy.equal(got.summary.entropy)


# ------------------------------------------------------------------ identical through the objects


def test_every_output_together_reports_each_file(bert: Path, tmp_path: Path) -> None:
    files = {"saved": tmp_path / "p.npz", "saved_topk": tmp_path / "t.npz", "saved_html": tmp_path / "p.html"}
    doc = json.loads(ok(run("attend", TEXT, "-m", bert, "--save", files["saved"], "--save-topk", files["saved_topk"],
                            "--html", files["saved_html"], "--json")).stdout)
    assert [key for key in doc if key.startswith("saved")] == list(files)
    assert all(doc[key] == str(path) and path.is_file() for key, path in files.items())
    lines = ok(run("attend", TEXT, "-m", bert, "--save", tmp_path / "q.npz", "--save-topk", tmp_path / "u.npz")).stdout
    patterns, topk = lines.index("saved 2 layers × 4 heads × "), lines.index("saved top-3 of 2 layers × 4 heads to ")
    assert 0 < patterns < topk  # after the view, in the order of the options


# ------------------------------------------------------------------ text from stdin


def test_text_from_stdin_equals_the_argument(bert: Path) -> None:
    want = ok(run("attend", TEXT, "-m", bert, "--json")).stdout
    assert ok(run("attend", "-", "-m", bert, "--json", input=TEXT + "\n")).stdout == want
    assert ok(run("attend", "-m", bert, "--json", input=TEXT)).stdout == want  # no TEXT, a pipe


@pytest.mark.parametrize("data,needle", [(b"", "the text is empty"), (b"\xff\xfe blue", "not UTF-8"),
                                         (b"a" * (1024 * 1024 + 1), "longer than 1 MiB")])
def test_bad_stdin_is_one_line(data: bytes, needle: str, bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attnscope.cli.attend._load", lambda *a, **k: pytest.fail("loaded the model"))
    one_error(run("attend", "-", "-m", bert, input=data), 2, needle)


def test_closed_stdin_is_one_line(bert: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "attnscope", "attend", "-", "-m", str(bert)], capture_output=False,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60, env=env, cwd=tmp_path,
                          preexec_fn=lambda: os.close(0))
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "stdin is closed" in lines[0], proc.stderr
