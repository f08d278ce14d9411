"""The app's command group: the one error handler every command runs under.

After Typer's docs and the `hf` CLI: `_Group.invoke` turns the project's exceptions into
one red line on stderr with a hint (`_print_error`); a traceback only with
ATTNSCOPE_DEBUG=1. The parser's own errors get the same line (`_Group.main`), every
argument enters as text (`_plain_arguments`), and every int and float option is bounded
as it is read (`_coerce.bound_number`, wired in `_Group.resolve_command`).

While a command runs, stdout is guarded (`_guarded_stdout`: a failed write is one line,
a reader that left is a quiet exit 141) and SIGTERM and SIGHUP are turned into an
exception (`errors.Terminated`), as Python already does for SIGINT, so every `finally`
and the exports' atomic cleanup run before the process exits with 128 + the signal's
number. Messages echo paths and text from the user and from files: their control
characters are printed visibly (`tokenize.visible`), so an error line cannot carry a
terminal escape.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from typing import Any, Callable

import typer
from typer.core import TyperGroup

try:  # typer >= 0.29 vendors its own click; older releases use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

try:  # a separate try: typer 0.29's vendored click has no Abort, and ClickException must not fall back with it
    from typer._click.exceptions import Abort as _Abort
except ImportError:
    from click.exceptions import Abort as _Abort

from attnscope.cli._coerce import bound_number
from attnscope.errors import AttnscopeError, Terminated

# Typer's own signals and its usage errors pass through the handler untouched.
_PASS_THROUGH = (typer.Exit, typer.Abort, ClickException)
# Signals that end a run the way Ctrl-C does: cleanly, through an exception.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_SURROGATE = re.compile("[\ud800-\udfff]")


_NOT_ONE_OF = re.compile(r"'([^']*)' is not one of")


def _per_layer_measure(exc: Exception, ctx: Any) -> tuple[str, str] | None:
    """A measure with one matrix per layer, asked of a command that keeps heads apart
    (`heads`, `generate`): the parser refuses it as a choice; say why, in one line."""
    from attnscope.cli._options import PER_LAYER_MEASURES

    param = getattr(exc, "param", None)
    found = _NOT_ONE_OF.search(str(getattr(exc, "message", "")))
    if param is None or getattr(param, "name", None) != "measure" or found is None:
        return None
    measure = found.group(1)
    if measure not in PER_LAYER_MEASURES or ctx is None:
        return None
    return (f"{ctx.info_name} keeps each head apart; --measure {measure} is per layer, not per head",
            f"use --measure weight or norm; attnscope attend --measure {measure} shows it per layer")


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
            message, hint = _per_layer_measure(exc, ctx) or (exc.format_message(), f"see {where} --help")
            _print_error(message, hint)
            sys.exit(exc.exit_code)
        except _Abort:
            _print_error("aborted", None)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        for param in getattr(command, "params", ()):
            bound_number(param)
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
        self.strerror = exc.strerror or str(exc)
        super().__init__(self.strerror)


class _Stdout:
    """sys.stdout while a command runs: a failing write or flush becomes `_StdoutFailed`
    (a broken pipe stays `BrokenPipeError`), so the handler can tell it from a bug."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, text: str) -> int:
        return _checked(self._real.write, text)

    def flush(self) -> None:
        _checked(self._real.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _checked(call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)` on the real stdout, its OSError (but a broken pipe) as `_StdoutFailed`."""
    try:
        return call(*args)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _StdoutFailed(exc) from None


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
