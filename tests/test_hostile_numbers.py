"""Hostile input (issue 22): numbers and text on the command line.

Every number an option takes is bounded where it is read, with one line that says the
range: a float must be finite, an int must fit in 64 bits (`cli._app._bound_number`, one
mechanism for every command), within the range each option declares; layer and head
selectors of thousands of digits, `--figsize` too small to draw, a subnormal
`--temperature` and a `--seed` past 64 bits are each one line. A fuzzing run drives every
int and float option of every command (found from the app itself, so a new option is
fuzzed too) with huge, negative, fractional, NaN, infinite and digit-string values.

Text: an argument that is not UTF-8 (bytes that arrive as lone surrogates) becomes
U+FFFD where arguments enter; bidirectional overrides, isolates and marks are shown as
\\uNNNN wherever text is shown, as control characters are.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attnscope.analysis import select
from attnscope.cli import app
from attnscope.errors import SelectionError
from attnscope.tokenize import visible

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "80", "NO_COLOR": "1",
       "ATTNSCOPE_DEBUG": None, "ATTNSCOPE_MODEL": None}
HUGE = "1" + "0" * 4999
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV, terminal_width=80)


def answered(result: Any) -> None:
    """Exit 0, or one `error:` line and a usage or run-time exit code: never an internal
    error nor a traceback."""
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 0:
        return
    assert result.exit_code in (1, 2), (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]


def one_line(result: Any, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout[-500:], result.stderr, result.exception)
    answered(result)
    line = result.stderr.strip()
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tiny_models

    return tiny_models.llama(tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------ selectors


@pytest.mark.parametrize("spec", [f"1-{HUGE}", HUGE, f"-{HUGE}", f"{HUGE}:", f":{HUGE}", f"0,{HUGE}", "9" * 19,
                                  f"{HUGE}-{HUGE}", "1-" + "9" * 400])
def test_selector_of_thousands_of_digits(spec: str, tiny: Path) -> None:
    for option in ("--layer", "--head"):
        line = one_line(run("attend", "a blue cat", "-m", tiny, option, spec), 2, "out of range", "the model has")
        assert len(line) < 300


@settings(max_examples=200, deadline=None)
@given(spec=st.text(alphabet="0123456789-:,all ", max_size=60)
       | st.builds(lambda a, b, sep: f"{a}{sep}{b}", st.integers(-10**40, 10**40), st.integers(-10**40, 10**40),
                   st.sampled_from(["-", ":", ","])))
@example(spec="1-" + "9" * 5000)
@example(spec="9" * 4301 + ":")
def test_select_answers_every_selector(spec: str) -> None:
    try:
        picked = select(spec, 12, "layer")
    except SelectionError as exc:
        assert "\n" not in exc.message and len(exc.message) < 300
    else:
        assert picked and all(0 <= i < 12 for i in picked)


# ------------------------------------------------------------------ one option each


def test_params_context_of_400_digits() -> None:
    one_line(run("params", "--config", "gpt2", "--context", "9" * 400), 2, "--context", "400 digits", "range")
    one_line(run("params", "--config", "gpt2", "--context", HUGE), 2, "--context")


@pytest.mark.parametrize("size", ["0.001,0.001", "1e-300,1e-300", "0.5,4", "1e300,1e300", "nan,nan", "inf,4", "4,-4"])
def test_figsize_out_of_range(size: str, tiny: Path, tmp_path: Path) -> None:
    line = one_line(run("attend", "a blue cat", "-m", tiny, "--plot", tmp_path / "f.png", "--figsize", size), 2,
                    "--figsize")
    assert "from 2 to 60 inches" in line or "cannot read" in line
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("value", ["5e-324", "1e-300", "inf", "-inf", "nan", "-1", "1e999"])
def test_temperature(value: str, tiny: Path) -> None:
    one_line(run("generate", "a blue cat", "-m", tiny, "--temperature", value, "-n", "2"), 2, "--temperature")


def test_smallest_temperature_samples(tiny: Path) -> None:
    answered(run("generate", "a blue cat", "-m", tiny, "--temperature", "1e-6", "-n", "2", "--seed", "1"))


@pytest.mark.parametrize("command", [["generate", "a blue cat", "-n", "2"], ["heads", "a blue cat sat on the mat"]])
@pytest.mark.parametrize("seed", [str(2**64), str(2**70), "-" + str(2**64), HUGE])
def test_seed_past_64_bits(command: list[str], seed: str, tiny: Path) -> None:
    one_line(run(*command, "-m", tiny, "--seed", seed), 2, "--seed")


@pytest.mark.parametrize("args", [["--top-p", "nan"], ["--top-p", "0"], ["--top-p", "5e-324"], ["--top-k", "-1"],
                                  ["--top-k", str(2**64)], ["-n", "0"], ["-n", str(10**12)], ["-n", HUGE],
                                  ["--alternatives", "-1"], ["--alternatives", str(2**63)]])
def test_generate_options(args: list[str], tiny: Path) -> None:
    answered(run("generate", "a blue cat", "-m", tiny, "-n", "2", *args))


# ------------------------------------------------------------------ the fuzz


def numeric_options() -> list[tuple[str, str, type]]:
    """(command, option, int or float) for every number an option of the app takes."""
    import typer.main

    group = typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():
        for param in command.params:
            kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if kind in (int, float) and getattr(param, "opts", None) and param.opts[0].startswith("--"):
                found.append((name, param.opts[0], kind))
    return found


OPTIONS = numeric_options()
BASE = {  # the least each command needs to run on the tiny model
    "attend": ["attend", "a blue cat"],
    "heads": ["heads", "a blue cat sat on the mat"],
    "mask-demo": ["mask-demo", "a blue cat", "--kind", "sliding-window"],
    "generate": ["generate", "a blue cat", "-n", "2"],
    "params": ["params", "--config", "gpt2"],
}
NUMBERS = (
    st.integers(-2**70, 2**70).map(str)
    | st.integers(-3, 40).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.sampled_from(["nan", "inf", "-inf", "5e-324", "1e999", "-0", "0x10", "1_000", " 7 ", "", "٣", "1e5"])
    | st.integers(1, 5000).map(lambda n: "9" * n)
    | st.integers(1, 400).map(lambda n: "-" + "1" * n)
)


def test_the_fuzz_sees_every_numeric_option() -> None:
    assert {c for c, _o, _k in OPTIONS} <= set(BASE), OPTIONS
    assert ("generate", "--seed", int) in OPTIONS and ("params", "--context", int) in OPTIONS


@FUZZ
@given(choice=st.sampled_from(OPTIONS), value=NUMBERS)
@example(choice=("generate", "--temperature", float), value="5e-324")
@example(choice=("heads", "--seed", int), value=str(2**70))
@example(choice=("params", "--context", int), value="9" * 400)
def test_fuzz_numeric_options(tiny: Path, choice: tuple[str, str, type], value: str) -> None:
    command, option, _kind = choice
    if option == "--max-new-tokens":  # a valid count runs that many steps: keep the run short
        try:
            if 8 < int(value.strip()) <= 10**5:
                value = "8"
        except ValueError:
            pass
    args = [*BASE[command], *(["-m", tiny] if command != "params" else []), f"{option}={value}"]
    answered(run(*args))


# ------------------------------------------------------------------ text


def test_bidi_controls_are_shown() -> None:
    for code in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]:
        assert visible(f"a{chr(code)}b") == f"a\\u{code:04x}b"
    assert visible("a\udcffb") == "a\\udcffb"
    assert visible("é ü 日本 🙂") == "é ü 日本 🙂"


def test_bidi_override_in_a_token_table(tiny: Path) -> None:
    result = run("attend", "invoice\u202eexe.pdf", "-m", tiny, "--view", "topk")
    answered(result)
    assert result.exit_code == 0
    assert "\u202e" not in result.stdout and "\\u202e" in result.stdout


def test_bidi_override_in_an_error_line() -> None:
    line = one_line(run("params", "--config", "gpt\u202e2"), 2)
    assert "\u202e" not in line and "\\u202e" in line


def cli(argv: list[bytes], cwd: Path, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
    env["HOME"] = str(cwd)
    return subprocess.run([sys.executable.encode(), b"-m", b"attnscope", *argv], capture_output=True, cwd=cwd,
                          env=env, timeout=120, check=False, stdin=stdin)


def test_invalid_utf8_arguments(tiny: Path, tmp_path: Path) -> None:
    """Bytes that are not UTF-8 become U+FFFD where arguments enter: the text runs, a name
    echoed in an error line reads the same, and --json stays one document."""
    text = b"a blue \xff\xfe cat \xc3"
    proc = cli([b"attend", text, b"-m", str(tiny).encode(), b"--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    import json

    doc = json.loads(proc.stdout.decode("utf-8"))
    assert "\ufffd" in doc["text"] and "\udcff" not in doc["text"]
    proc = cli([b"params", b"--config", b"gpt\xff2"], tmp_path)
    assert proc.returncode == 2 and proc.stdout == b""
    err = proc.stderr.decode("utf-8")
    assert err.count("\n") == 1 and "gpt\ufffd2" in err and "Traceback" not in err


def test_invalid_utf8_through_the_runner(tiny: Path) -> None:
    result = run("attend", "a blue \udcff cat", "-m", tiny, "--view", "topk")
    answered(result)
    assert result.exit_code == 0 and "\udcff" not in result.stdout


def test_closed_stdin(tiny: Path, tmp_path: Path) -> None:
    """`<&-`: the process starts without a standard input; commands that read it say so."""
    script = ("import os, sys, runpy; os.close(0); sys.stdin = None; sys.argv = ['attnscope', *sys.argv[1:]]; "
              "runpy.run_module('attnscope', run_name='__main__')")
    env = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
    for args in (["heads", "-m", str(tiny), "--corpus", "-"], ["explore", "-m", str(tiny)],
                 ["attend", "a blue cat", "-m", str(tiny), "--view", "topk"]):
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=120, check=False)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
        if proc.returncode:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
