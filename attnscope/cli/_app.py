"""Thin Typer commands: parse, call the library, render. One error handler for all.

This package: `_app` holds the app, the error handler and the options the commands
share; `params`, `attend` and `demos` (mask-demo, heads) hold one command group each.

After Typer's docs and the `hf` CLI: options shared as `Annotated` aliases, `str` Enums
for choices, and one place (`_Group.invoke`) that turns the project's exceptions into
one red line on stderr with a hint; a traceback only with ATTNSCOPE_DEBUG=1. torch is
imported only inside the commands that run a model, so `params` and `--help` stay fast.

SIGTERM and SIGHUP are turned into an exception (`errors.Terminated`) while a command
runs, as Python already does for SIGINT, so every `finally` and the exports' atomic
cleanup run before the process exits with 128 + the signal's number. Messages echo
paths and text from the user and from files: their control characters are printed
visibly (`tokenize.visible`), so an error line cannot carry a terminal escape.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
from enum import Enum
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.29 vendors its own click; older releases use click itself
    from typer._click.exceptions import BadParameter as _BadParameter
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import BadParameter as _BadParameter
    from click import ClickException

try:  # typer >= 0.29 vendors its own click; older releases use click itself
    from typer._click.exceptions import Abort as _Abort
except ImportError:  # pragma: no cover
    from click.exceptions import Abort as _Abort

# Typer's own signals and its usage errors pass through the handler untouched.
_PASS_THROUGH = (typer.Exit, typer.Abort, ClickException)

from attnscope import __version__
from attnscope.cli import _coerce

_coerce.install()  # plain option values without pydantic: see _coerce's docstring
from attnscope.errors import AttnscopeError, Terminated

_C1 = re.compile("[\x7f-\x9f]")
# Signals that end a run the way Ctrl-C does: cleanly, through an exception.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Group(TyperGroup):
    """Runs every command under the project's single error handler, the parser's own
    errors included: every failure is one red line with a hint, never a boxed panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        args, kwargs = _plain_arguments(args, kwargs)
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as exc:  # the parser: unknown command or option, bad value, missing argument
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "attnscope"
            _print_error(exc.format_message(), f"see {where} --help")
            sys.exit(exc.exit_code)
        except _Abort:
            _print_error("aborted", None)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        for param in getattr(command, "params", ()):
            _bound_number(param)
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            with _stop_signals_raise(), _guarded_stdout():
                return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except BrokenPipeError:  # the reader left (`| head`): stop quietly, as other tools do
            _drop_stdout()
            ctx.exit(141)
        except _StdoutFailed as exc:
            _drop_stdout()
            _print_error(f"cannot write to standard output: {exc.strerror}", None)
            ctx.exit(1)
        except AttnscopeError as exc:
            if _debug():
                raise
            _print_error(exc.message, exc.hint)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _print_error("interrupted", None)
            ctx.exit(130)
        except Terminated as exc:
            _print_error(f"terminated ({exc.name})", None)
            ctx.exit(128 + exc.signum)
        except Exception as exc:  # a bug: say so in one line rather than a traceback
            if _debug():
                raise
            _print_error(f"internal error: {type(exc).__name__}: {exc}", "set ATTNSCOPE_DEBUG=1 for the traceback and report it")
            ctx.exit(1)


class _StdoutFailed(Exception):
    """Writing standard output failed (a full disk, /dev/full, an I/O error)."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))
        self.strerror = exc.strerror or str(exc)


class _Stdout:
    """sys.stdout while a command runs: a failing write or flush becomes `_StdoutFailed`
    (a broken pipe stays `BrokenPipeError`), so the handler can tell it from a bug."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, text: str) -> int:
        try:
            return self._real.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc) from None

    def flush(self) -> None:
        try:
            self._real.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _guarded_stdout:
    """Route sys.stdout through `_Stdout` while a command runs, and flush it before the
    handler returns, so a failure surfaces here, not at the interpreter's exit."""

    def __enter__(self) -> None:
        self.real = sys.stdout
        sys.stdout = _Stdout(self.real)  # type: ignore[assignment]

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        guarded, sys.stdout = sys.stdout, self.real
        if exc_type is None and guarded is not None:
            guarded.flush()


def _drop_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so the interpreter's last flush of what is
    still buffered cannot fail again (Python's advice for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (a test's captured stdout)
        pass


_SURROGATE = re.compile("[\ud800-\udfff]")


def _plain_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The command line as text: an argument that is not valid UTF-8 arrives from Python
    with each bad byte as a lone surrogate (surrogateescape), which tokenizers, terminals
    and JSON cannot take. Each becomes U+FFFD here, where every argument enters, so the
    text, a path and an echo in an error line all read the same replacement."""
    given = args[0] if args else kwargs.get("args")
    argv = list(sys.argv[1:] if given is None else given)
    if not any(isinstance(a, str) and _SURROGATE.search(a) for a in argv):
        return args, kwargs
    argv = [_SURROGATE.sub("\ufffd", a) if isinstance(a, str) else a for a in argv]
    if args:
        return (argv, *args[1:]), kwargs
    return args, {**kwargs, "args": argv}


# Every number an option takes is bounded where it is read: a float must be finite and an
# int must fit in 64 bits, within the narrower range an option declares (`min=`/`max=`,
# which the coercion itself enforces). A value outside is one line naming the range.
INT_LIMIT = 2**63 - 1
# Options whose command checks a narrower range itself, before any use, in words of its
# own: mask-demo's --window (masks.check_kind: "at most 2**31").
_OWN_RANGE = {("mask-demo", "window")}


def _bound_number(param: Any) -> None:
    """Check `param`'s values after coercion, if it takes ints or floats (once per
    parameter object: the commands are built once, and CliRunner reuses them)."""
    kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if kind not in (int, float) or getattr(param, "_attnscope_bounded", False):
        return
    process = param.process_value

    def process_value(ctx: Any, value: Any) -> Any:
        value = process(ctx, value)
        if (ctx.info_name, param.name) in _OWN_RANGE:
            return value
        for number in value if isinstance(value, (list, tuple)) else (value,):
            problem = _out_of_bounds(number, kind, getattr(param, "min", None), getattr(param, "max", None))
            if problem:
                raise _BadParameter(problem, ctx=ctx, param=param)
        return value

    param.process_value = process_value
    param._attnscope_bounded = True


def _out_of_bounds(number: Any, kind: type, lo: Any, hi: Any) -> str | None:
    if number is None or isinstance(number, bool):
        return None
    if kind is float:
        return None if math.isfinite(number) else f"{number} is not a finite number"
    lo = -INT_LIMIT if lo is None else lo
    hi = INT_LIMIT if hi is None else hi
    if lo <= number <= hi:
        return None
    text = str(number)
    shown = text if len(text) <= 24 else f"{text[:20]}… ({len(text)} digits)"
    return f"{shown} is not in the range {lo} to {hi}"


class _stop_signals_raise:
    """While a command runs, SIGTERM and SIGHUP raise `Terminated` in the main thread
    (once: a second signal during the cleanup is ignored rather than cutting it short);
    the previous handlers come back afterwards. Outside the main thread Python cannot
    install handlers, and nothing is changed."""

    def __enter__(self) -> None:
        self.saved: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        raised = False

        def handler(signum: int, frame: Any) -> None:
            nonlocal raised
            if raised:
                return
            raised = True
            raise Terminated(signum)

        for sig in _STOP_SIGNALS:
            try:
                self.saved[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover - an embedding that forbids it
                pass

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.saved.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def _debug() -> bool:
    return os.environ.get("ATTNSCOPE_DEBUG", "") not in ("", "0")


def _print_error(message: str, hint: str | None) -> None:
    """One red line on stderr. Control characters from paths or text a message echoes
    are shown visibly, so the line is one line and cannot drive the terminal."""
    from rich.console import Console
    from rich.text import Text

    from attnscope.tokenize import visible

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    line = Text("error: ", style="bold red") + Text(visible(message), style="red")
    if hint:
        line += Text(f" ({visible(hint)})", style="dim")
    err.print(line)


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


class Convention(str, Enum):
    b3b1 = "3b1b"
    full = "full"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


from attnscope.sources import packaged as _packaged  # names only: no torch, no model read

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", metavar="MODEL", help=f"A packaged model by name ({_packaged.names_for_help()}), a checkpoint folder, a .safetensors or .gguf file, or a hub id (REPO[:QUANT] for GGUF) from the local cache: attnscope models lists them."),
]


class View(str, Enum):
    focus = "focus"
    topk = "topk"
    heatmap = "heatmap"
    overview = "overview"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LoadDtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class MeasureName(str, Enum):
    weight = "weight"
    norm = "norm"
    rollout = "rollout"


MeasureOpt = Annotated[MeasureName, typer.Option(
    "--measure", help="weight: attention α; norm: ‖α·f(x)‖, what each key actually moves; rollout: flow through the layers.")]


class PerHeadMeasure(str, Enum):
    """The measures that keep each head apart (rollout mixes a layer's heads into one
    matrix): what `heads` and `generate` offer."""

    weight = "weight"
    norm = "norm"


PerHeadMeasureOpt = Annotated[PerHeadMeasure, typer.Option(
    "--measure", help="weight: attention α; norm: ‖α·f(x)‖, what each key actually moves. (Rollout has no heads: attnscope attend --measure rollout.)")]
LayerOpt = Annotated[Optional[str], typer.Option("--layer", "-l", help="Layers: 3, -1 (last), 0,2,5, 1-3, 2: or all.")]
HeadOpt = Annotated[Optional[str], typer.Option("--head", "-H", help="Heads: same forms as --layer.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to run: auto picks cuda when available.")]
LoadDtypeOpt = Annotated[LoadDtype, typer.Option("--dtype", metavar="DTYPE", help="Weights' dtype: auto, float32, bfloat16 or float16 (auto: float32 on CPU, the checkpoint's on GPU). Softmax is always float32.")]
NoColorOpt = Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")]
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Cut a text longer than the model's positions instead of failing.")]


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

    try:
        m = load(model, device.value, dtype.value, progress, offload)
    finally:
        if bar is not None:
            bar.stop()
    source = m.model.block_source
    if source is not None:  # offloaded: show blocks streaming in, one at a time
        blocks = Progress(TextColumn("streaming blocks"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          console=Console(stderr=True), transient=True)

        def streamed(i: int) -> Any:
            if not blocks.tasks:
                blocks.start()
                blocks.add_task("blocks", total=m.n_layers)
            state = source(i)
            blocks.update(blocks.task_ids[0], completed=i + 1)
            if i == m.n_layers - 1:
                blocks.stop()
            return state

        m.model.block_source = streamed
    return m


def _print_json(doc: Any) -> None:
    """One JSON document on stdout. json.dumps escapes C0 controls in strings but leaves
    DEL and the C1 range (U+009B is a CSI to some terminals) raw: escape those too."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    sys.stdout.write(_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
