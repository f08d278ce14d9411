"""The command line: `attnscope params | attend | mask-demo | heads`.

Thin Typer commands (parse, call the library, render) in one module per command group;
`_app` holds the app, the single error handler and the shared options.
"""

from __future__ import annotations

from attnscope.cli._app import app, unwrap_docstrings
from attnscope.cli import attend, demos, explore, generate, models, params  # noqa: F401 - registers the commands

unwrap_docstrings(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
