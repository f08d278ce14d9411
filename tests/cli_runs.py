"""The CLI in this process, as the output tests drive it: one environment (offline, 80
columns, no colour, no debug, no default model), one runner, one check of a refusal."""

from __future__ import annotations

from typing import Any, Optional

from typer.testing import CliRunner

from attnscope.cli import app

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "COLUMNS": "80",
    "NO_COLOR": "1",
    "ATTNSCOPE_DEBUG": None,
    "ATTNSCOPE_MODEL": None,
}


def run(*args: Any, input: Optional[bytes | str] = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV, terminal_width=80, input=input)


def one_error(result: Any, code: int, *needles: str) -> str:
    """The run failed with `code` and one `error: ` line on stderr holding every needle;
    nothing on stdout, no traceback, no internal error. Returns that line."""
    assert result.exit_code == code, (result.exit_code, result.stdout[-1000:], result.stderr, result.exception)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0], result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def invoke(env: dict[str, Any], *args: Any) -> Any:
    """The CLI under a test module's own environment `env`, the terminal's width left to it."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def error_line(result: Any) -> str:
    """The run failed (any code) with one `error: ` line on stderr, nothing on stdout and no
    traceback. Returns that line."""
    assert result.exit_code != 0 and result.stdout == "", (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def ok(result: Any) -> Any:
    """The run succeeded, with no traceback anywhere. Returns it."""
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def clean_failure(result: Any, code: int) -> str:
    """A clean failure: the exit code and exactly one `error:` line on stderr, no traceback
    anywhere, no internal error. Returns that line."""
    assert result.exit_code == code, (result.exit_code, result.stdout[-1000:], result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "internal error" not in lines[0]
    return lines[0]
