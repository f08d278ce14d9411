"""`attnscope explore`: the interactive view, a Textual app (see `attnscope.explore`).

The command checks what it can before loading anything (a terminal on both ends, a
text, one layer and one head), loads the model as every command does, tokenizes, and
hands a `Session` to the app. The app runs the model itself (in a worker thread) so the
screen is up at once; its exit status is the command's.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Optional

import typer

from attnscope.cli._app import (
    Device, DeviceOpt, LoadDtype, LoadDtypeOpt, MeasureName, MeasureOpt, ModelOpt, NoColorOpt, TruncateOpt,
    _load, app,
)
from attnscope.errors import InputError, UsageError

DEFAULT_TEXT = "a fluffy blue creature roamed the verdant forest"  # mask-demo's sentence


def _needs_terminal() -> None:
    # a closed stdin or stdout (<&-, >&-) is None in Python: no terminal either
    if not (sys.stdin is not None and sys.stdin.isatty() and sys.stdout is not None and sys.stdout.isatty()):
        raise UsageError("explore needs a terminal",
                         hint='use attnscope attend "TEXT" without a terminal: in a pipe, a file or CI')


def _one(spec: Optional[str], count: int, what: str, default: int) -> int:
    from attnscope.analysis import select

    if spec is None:
        return default
    picked = select(spec, count, what)
    if len(picked) != 1:
        raise UsageError(f"explore starts on one {what}, and --{what} {spec!r} selects {len(picked)}",
                         hint=f"give one index, e.g. --{what} 0 (then move with the arrow keys)")
    return picked[0]


@app.command(
    epilog='Examples:\n\n  attnscope explore\n\n  attnscope explore "the cat sat on the mat" --model PATH\n\n'
    '  attnscope explore "a fluffy blue creature" --layer 3 --head 2 --measure norm\n\n'
    "Keys: ←→ head, ↑↓ layer, Tab token, h heatmap, o overview, m measure, / find, e export, ? help, q quit.",
)
def explore(
    text: Annotated[Optional[str], typer.Argument(metavar="TEXT", help=f"The text to look at (default: {DEFAULT_TEXT}).")] = None,
    model: ModelOpt = None,
    layer: Annotated[Optional[str], typer.Option("--layer", "-l", help="Layer to open on (default: the last, -1).")] = None,
    head: Annotated[Optional[str], typer.Option("--head", "-H", help="Head to open on (default: 0).")] = None,
    measure: MeasureOpt = MeasureName.weight,
    device: DeviceOpt = Device.auto,
    dtype: LoadDtypeOpt = LoadDtype.auto,
    truncate: TruncateOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """Explore attention interactively: heads, layers, tokens, heatmap, overview.

    Opens on the last layer's first head, the last word selected; the model runs once.

    Needs a terminal: for pipes, files and CI use `attnscope attend`.
    """
    _needs_terminal()
    text = DEFAULT_TEXT if text is None else text
    if not text.strip():
        raise InputError("the text is empty", hint='give some text, e.g. attnscope explore "a fluffy blue creature"')
    m = _load(model, device, dtype)
    start_layer = _one(layer, m.n_layers, "layer", m.n_layers - 1)
    start_head = 0 if measure.value in ("rollout", "alti", "value-zeroing") else _one(head, m.n_heads, "head", 0)
    tokens = m.tokenize(text, truncate)
    started = time.perf_counter()

    from attnscope.explore.app import ExploreApp
    from attnscope.explore.session import Session

    session = Session(m, tokens)
    saved = os.environ.get("NO_COLOR")
    if no_color:  # Textual reads NO_COLOR when the app is made
        os.environ["NO_COLOR"] = "1"
    try:
        tui = ExploreApp(session, start_layer, start_head, measure.value, started=started)
    finally:
        if no_color and saved is None:
            del os.environ["NO_COLOR"]
    try:
        tui.run()
    finally:  # however it ends (q, SIGTERM, an error), a pass still running stops
        session.stop.set()
    raise typer.Exit(tui.return_code or 0)
