"""The app: its root callback, the help's tidying, and the helpers every command uses to
load a model and print (`_load`, `_console`, `_note`, `_print_json`).

This package: `_app` holds the app; `_group` the single error handler it runs every
command under; `_options` the options and choices the commands share; `_coerce` how
option values are coerced and bounded; `params`, `attend`, `demos` (mask-demo, heads),
`explore`, `generate` and `models` hold one command group each. Their names are
re-exported here, where the commands import them from. torch is imported only inside
the commands that run a model, so `params` and `--help` stay fast.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any, Optional

import typer

from attnscope import __version__
from attnscope.cli import _coerce
from attnscope.cli._coerce import INT_LIMIT  # noqa: F401 - re-exported
from attnscope.cli._coerce import OWN_RANGE as _OWN_RANGE  # noqa: F401
from attnscope.cli._coerce import bound_number as _bound_number  # noqa: F401
from attnscope.cli._coerce import out_of_bounds as _out_of_bounds  # noqa: F401
from attnscope.cli._group import _debug, _Group, _print_error  # noqa: F401
from attnscope.cli._options import (  # noqa: F401 - re-exported: the commands import them from here
    Convention, Device, DeviceOpt, Dtype, HeadOpt, JsonOpt, LayerOpt, LoadDtype, LoadDtypeOpt, MeasureName,
    MeasureOpt, ModelOpt, NoColorOpt, Part, PartOpt, PerHeadMeasure, PerHeadMeasureOpt, PipelineOpt, RanksOpt, TargetOpt, TruncateOpt, View,
)

_coerce.install()  # plain option values without pydantic (before any command is built): see _coerce

_C1 = re.compile("[\x7f-\x9f]")


def _note(message: str) -> None:
    """A dim progress note on stderr (stdout carries only the command's output)."""
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[dim]{message}[/]")


def _console(no_color: bool = False) -> Any:
    from rich.console import Console

    return Console(highlight=False, no_color=no_color or None)


def _tidy_help() -> None:
    """Help that reads well at 80 columns with typer >= 0.29's rich help: a flag shows no
    `<bool>`, an option with a metavar shows it instead of a long `<a|b|c>` that would
    break mid-word (its help lists the choices)."""
    from typer.core import TyperArgument, TyperOption

    def display(self: Any, ctx: Any, _original: Any = TyperOption.display_type_rich) -> Any:
        if getattr(self, "is_flag", False):
            return None
        if self.metavar:
            return self.metavar
        shown = _original(self, ctx)
        # a bare <str> says nothing: the option's own name says what goes there
        return (self.name or "value").upper() if shown == "<str>" else shown

    if getattr(TyperOption.display_type_rich, "__name__", "") != "display":
        TyperOption.display_type_rich = display  # type: ignore[method-assign]
    argument = TyperArgument.display_type_rich
    if getattr(argument, "__name__", "") != "display_argument":
        def display_argument(self: Any, ctx: Any, _original: Any = argument) -> Any:
            return None if self.metavar else _original(self, ctx)  # the name column shows it already

        TyperArgument.display_type_rich = display_argument  # type: ignore[method-assign]
    usage = TyperArgument._usage_display_name
    if getattr(usage, "__name__", "") != "usage_name":
        def usage_name(self: Any, _original: Any = usage) -> str:
            # a required argument reads TEXT, not {TEXT}: the usage line's convention
            shown = _original(self)
            return shown[1:-1] if self.required and shown.startswith("{") and shown.endswith("}") else shown

        TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


def unwrap_docstrings(typer_app: Any) -> None:
    """Each command's docstring as paragraphs: rich help keeps a docstring's hard line
    breaks, which leave single words on lines at 80 columns."""
    import inspect

    for info in typer_app.registered_commands:
        doc = inspect.getdoc(info.callback) or ""
        if info.help is None and doc:
            # prose paragraphs are joined; a table (lines of markup or indented) keeps its lines
            paragraphs = [p if any(line.startswith(("[", " ")) for line in p.splitlines()) else " ".join(p.split())
                          for p in doc.split("\n\n")]
            info.help = "\n\n".join(paragraphs)


_tidy_help()

app = typer.Typer(
    cls=_Group,
    name="attnscope",
    help="Look inside transformer attention: parameter counts, attention patterns, masks.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Look inside transformer attention: parameter counts, attention patterns, masks."""


def _load(model: Optional[str], device: Device, dtype: LoadDtype, offload: Optional[bool] = None) -> Any:
    """Load a model with a progress bar on stderr for big checkpoints (and, offloaded,
    one for the blocks as they stream through)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from attnscope.api import load

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if total < 256 * 1024 * 1024:
            return
        if bar is None:
            bar = Progress(TextColumn("loading weights"), BarColumn(), DownloadColumn(),
                           console=Console(stderr=True), transient=True)
            bar.start()
            bar.add_task("load", total=total)
        bar.update(bar.task_ids[0], completed=done)

    from attnscope import pipeline

    try:
        devices = pipeline.parse_devices(device.value) if not offload else None
        if devices is not None:  # several GPUs in this process: the blocks placed across them
            m = pipeline.load_placed(model, devices, dtype.value, progress)
        else:
            m = load(model, device.value, dtype.value, progress, offload)
    finally:
        if bar is not None:
            bar.stop()
    source = m.model.block_source
    if source is not None:  # offloaded: show blocks streaming in, one at a time
        m.model.block_source = _streaming(source, m.n_layers, "streaming blocks")
        decoder = getattr(m.model, "decoder", None)  # an encoder-decoder's second stack streams too
        if decoder is not None and decoder.block_source is not None:
            decoder.block_source = _streaming(decoder.block_source, len(decoder.blocks), "streaming decoder blocks")
    return m


def _streaming(source: Any, total: int, label: str) -> Any:
    """`source` (block i -> its weights), showing a bar on stderr as the blocks stream in."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    blocks = Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      console=Console(stderr=True), transient=True)

    def streamed(i: int) -> Any:
        if not blocks.tasks:
            blocks.start()
            blocks.add_task("blocks", total=total)
        state = source(i)
        blocks.update(blocks.task_ids[0], completed=i + 1)
        if i == total - 1:
            blocks.stop()
        return state

    return streamed


def _pipelined(model: Optional[str], device: Device, dtype: LoadDtype, body: Any) -> None:
    """`--pipeline`: run `body(inspector)` on rank 0 over every process torchrun started,
    the model's layers split among them (`attnscope.pipeline`); the others serve, and end
    with rank 0's exit code."""
    from attnscope import pipeline

    code = pipeline.run(model, device.value, dtype.value, body)
    if code:
        raise typer.Exit(code)


def _print_json(doc: Any) -> None:
    """One JSON document on stdout. json.dumps escapes C0 controls in strings but leaves
    DEL and the C1 range (U+009B is a CSI to some terminals) raw: escape those too."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    sys.stdout.write(_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
