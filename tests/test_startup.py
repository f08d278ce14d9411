"""Start-up: `params` and `--help` import neither torch nor pydantic (typer >= 0.29 would
coerce option values through pydantic; attnscope.cli._coerce does plain leaves itself),
and the coercion it replaces keeps typer's documented behaviour."""

from __future__ import annotations

import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

PROBE = """
import sys
sys.argv = ["attnscope"] + {args!r}
from attnscope.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "pydantic", "transformers", "numpy") if m in sys.modules)
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
"""


@pytest.mark.parametrize("args", [["params", "--config", "gpt3"], ["--help"], ["attend", "--help"],
                                  ["params", "--config", "gpt3", "--context", "2048"], ["params", "--list"]])
def test_light_commands_import_no_heavy_module(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=60)
    heavy = [line for line in out.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], out.stderr


@pytest.mark.parametrize("args", [["attend", "x", "--device", "bogus"], ["heads", "x", "--device", "cuda:7,cpu"],
                                  ["mask-demo", "--device", "auto", "--kind", "nonsense"]])
def test_an_option_with_its_own_parser_needs_no_pydantic(args: list[str]) -> None:
    """--device has a parser of its own: typer would build a pydantic adapter around it on
    every command that takes it (~90 ms of the default `attend`); _coerce calls the parser."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=60)
    heavy = [line for line in out.stderr.splitlines() if line.startswith("HEAVY=")]
    assert len(heavy) == 1 and "pydantic" not in heavy[0], out.stderr
    assert "error:" in out.stderr


class Colour(str, Enum):
    red = "red"
    blue = "blue"


def _app() -> typer.Typer:
    from attnscope.cli import _coerce

    _coerce.install()
    app = typer.Typer()

    @app.command()
    def run(
        n: Annotated[int, typer.Option(min=1, max=10)] = 3,
        x: Annotated[Optional[float], typer.Option()] = None,
        c: Annotated[int, typer.Option(min=0, max=5, clamp=True)] = 0,
        colour: Annotated[Colour, typer.Option()] = Colour.red,
        flag: Annotated[bool, typer.Option("--flag")] = False,
        where: Annotated[Optional[Path], typer.Option()] = None,
        name: Annotated[Optional[str], typer.Option()] = None,
    ) -> None:
        typer.echo(repr((n, x, c, colour.value, flag, where, name)))

    return app


@pytest.mark.parametrize("argv, shown", [
    ([], "(3, None, 0, 'red', False, None, None)"),
    (["--n", " 7 ", "--x", "2.5", "--c", "9", "--colour", "blue", "--flag", "--where", "a/b", "--name", "é"],
     "(7, 2.5, 5, 'blue', True, PosixPath('a/b'), 'é')"),
    (["--c", "-4"], "(3, None, 0, 'red', False, None, None)"),
])
def test_plain_coercion_accepts_what_typer_accepts(argv: list[str], shown: str) -> None:
    res = CliRunner().invoke(_app(), argv)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == shown


@pytest.mark.parametrize("argv, said", [
    (["--n", "0"], "0 is not in the range 1 to 10"),
    (["--n", "abc"], "'abc' is not a valid integer"),
    (["--n", "9" * 5000], "is not a valid integer"),
    (["--x", "pi"], "'pi' is not a valid number"),
    (["--colour", "green"], "'green' is not one of 'red', 'blue'"),
])
def test_plain_coercion_refuses_in_one_plain_sentence(argv: list[str], said: str) -> None:
    res = CliRunner().invoke(_app(), argv)
    assert res.exit_code == 2
    assert said in res.output
    assert "Value error" not in res.output
    assert len(res.output) < 2000  # a 5,000-digit value is not echoed whole
