"""`attend SOURCE --target TARGET --dry-run` on an encoder-decoder (`estimate.plan_pair`):
both stacks' weights and working sets, the cross-attention pattern (heads × n_tgt × n_src),
the patterns kept for the view and what the saves write, against the run itself.

As tests/test_dry_run.py checks decoder-only runs: the estimated peak against the peak a
real run measures (VmHWM of a fresh process), within 25%. The model is a random T5 of
t5-small's sizes (6 + 6 layers of 512, 8 heads, vocabulary 32128: 231 MiB of float32
weights), built by transformers, so that the weights are a fair share of the peak beside
the interpreter's ~230 MiB: an estimate that left them out, or left out the view's
patterns where they dominate, would miss by more than the bound (asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tiny_models_seq2seq as sm

from test_dry_run import RUN

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


def _cli(*args: Any) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _peak(args: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(next(line for line in out.stderr.splitlines() if line.startswith("PEAK ")).split()[1]) * 1024


def _dry(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "attnscope", *args, "--dry-run", "--json"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def t5_small_sized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sm._t5(tmp_path_factory.mktemp("t5big"), 7, tied=True, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                  num_decoder_layers=6, num_heads=8, vocab_size=32128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sm.t5(tmp_path_factory.mktemp("t5"))


@pytest.mark.slow
@pytest.mark.parametrize("repeat, extra", [
    (60, ["--save", "{tmp}/all.npz"]),  # 512 + 512 tokens, every part saved: the weights dominate
    (14, ["--view", "heatmap", "--layer", "all", "--head", "all", "--json"]),  # 2.5M values in the document
], ids=["save", "heatmap-json"])
def test_dry_run_peak_within_a_quarter_of_the_measured_peak(repeat: int, extra: list[str], t5_small_sized: Path,
                                                            tmp_path: Path) -> None:
    source = " ".join(["fluffy blue creature sat on the mat"] * repeat)
    target = " ".join(["das flauschige blaue Wesen sass"] * repeat)
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    args = ["attend", source, "--target", target, "-m", str(t5_small_sized), "--truncate", "--force", *extra]
    doc = _dry(args)
    measured = _peak(args)
    assert abs(doc["peak_memory_bytes"] - measured) <= 0.25 * measured, (doc, measured)
    assert doc["weights_bytes"] > 0.25 * measured  # leaving the weights out would fail the bound
    if "--save" in extra:
        written = (tmp_path / "all.npz").stat().st_size
        assert 0 <= doc["output_file_bytes"] - written <= 4096 + 64 * (doc["source_tokens"] + doc["decoder_tokens"])
    else:
        assert doc["shown_patterns_bytes"] > 0.25 * measured  # so would the document's patterns


def test_dry_run_counts_what_the_run_reads(tiny: Path, tmp_path: Path) -> None:
    """The token counts are the run's (the source with its end token, the decoder's start
    token and the target), the cross pattern heads × n_tgt × n_src float32, the --save
    file's size as written, and nothing is loaded or written by the dry run."""
    out = tmp_path / "all.npz"
    base = ["attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", tiny]
    dry = _cli(*base, "--save", out, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.stdout)
    assert not out.exists()
    run = _cli(*base, "--save", out, "--json")
    assert run.exit_code == 0, run.output
    real = json.loads(run.stdout)
    n_s, n_t = len(real["source"]["ids"]), len(real["decoder"]["ids"])
    assert (doc["source_tokens"], doc["decoder_tokens"]) == (n_s, n_t)
    assert doc["cross_pattern_bytes"] == 4 * n_t * n_s * 4  # 4 cross heads
    assert 0 <= doc["output_file_bytes"] - out.stat().st_size <= 4096 + 64 * (n_s + n_t)
    assert doc["part"] == "cross" and doc["weights_bytes"] > 0 and doc["decoder_activations_bytes"] > 0
    text = _cli(*base, "--dry-run")
    assert text.exit_code == 0 and "cross-attention pattern (4 × " in text.stdout and "decoder activations" in text.stdout


def test_dry_run_grows_with_what_is_kept(tiny: Path) -> None:
    """The view's patterns: every head of the last layer for focus; all layers' and heads'
    values (and their JSON text) for a --json heatmap; a per-stack measure's matrices."""
    base = ["attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", tiny, "--dry-run", "--json"]
    focus = json.loads(_cli(*base).stdout)
    heat = json.loads(_cli(*base, "--view", "heatmap", "--layer", "all", "--head", "all").stdout)
    from attnscope.estimate import JSON_VALUE_BYTES

    cells = focus["decoder_tokens"] * focus["source_tokens"]  # cross: target rows × source columns
    assert focus["shown_patterns_bytes"] == (1 * 4 + 4 + 1 * 4) * cells * 4  # the last layer's 4 heads, captured and kept
    assert heat["shown_patterns_bytes"] == (3 * 4 + 4 + 3 * 4) * cells * 4 + 3 * 4 * cells * JSON_VALUE_BYTES
    roll = json.loads(_cli(*base, "--part", "encoder", "--measure", "rollout").stdout)
    assert roll["kept_results_bytes"] == 3 * roll["source_tokens"] ** 2 * 4


def test_dry_run_refusals_are_one_line(tiny: Path, tmp_path: Path) -> None:
    import tiny_models as tm

    def one(result: Any) -> str:
        assert result.exit_code != 0 and result.stdout == "", result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        return lines[0]

    assert "number of processes" in one(_cli("attend", "a", "--target", "b", "--model", tiny, "--dry-run",
                                             "--pipeline"))  # planned per rank: tests/test_pipeline_seq2seq.py
    assert "--measure rollout" in one(_cli("attend", "a", "--target", "b", "--model", tiny, "--dry-run",
                                           "--measure", "rollout"))
    gpt2 = tm.gpt2(tmp_path / "gpt2")
    assert "not an encoder-decoder" in one(_cli("attend", "a", "--target", "b", "--model", gpt2, "--dry-run"))
    assert "--target is empty" in one(_cli("attend", "a", "--target", " ", "--model", tiny, "--dry-run"))
