"""Option values coerced without pydantic, so that start-up stays fast.

typer >= 0.29 coerces every option value through a pydantic `TypeAdapter`
(`typer._coercion.build_runtime_param`); importing pydantic and building the adapters
costs 60-90 ms of a 0.3 s `attnscope params --config gpt3` before any of our code runs.
Our options use only plain leaves (str, bool, int, float, a str Enum, a Path without
existence checks), and those are coerced here as typer documents them: the same
accepted spellings, the same checks (min/max/clamp, the path flags through typer's own
`coerce_cli_path`), and `BadParameter` errors, worded as one plain sentence (pydantic
would prefix "Value error, "). Anything else (lists, tuples, datetimes, a custom
parser, or a typer without these internals) goes to typer's own builder unchanged.

Bounds, for every int and float option whichever builder coerced it (`bound_number`,
wired into each command's parameters by `_group._Group.resolve_command`): a float must
be finite and an int must fit in 64 bits, within the range the option declares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

try:  # typer >= 0.29 vendors its own click; older releases use click itself
    from typer._click.exceptions import BadParameter
except ImportError:  # pragma: no cover
    from click import BadParameter

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off", ""}


def _plain(annotation: Any, info: Any) -> str | None:
    """Which plain leaf `annotation` is, or None where typer's own builder must serve."""
    if getattr(info, "click_type", None) is not None:
        return None
    if getattr(info, "parser", None) is not None:  # typer calls the option's own parser, and so do we
        return "parsed"
    if annotation is bool:
        return "bool"
    if annotation is str:
        return "str"
    if annotation is int or annotation is float:
        return "number"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "choice"
    if isinstance(annotation, type) and issubclass(annotation, Path) and getattr(info, "path_type", None) is None:
        return "path"
    return None


def install() -> None:
    """Route typer's coercion of plain leaves here (a no-op on a typer without it)."""
    try:
        import typer.core as core
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer._param_types import coerce_cli_choice, coerce_cli_path
    except ImportError:  # pragma: no cover - another typer: its own coercion serves
        return
    if getattr(core.build_runtime_param, "_attnscope", False):
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):  # type: ignore[misc]
        kind: str = "str"

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            info = self.parameter_info
            try:
                if self.kind == "parsed":  # as typer's own coercion: the parser's value is the value
                    return info.parser(value)
                if self.kind == "str":
                    if isinstance(value, bytes):
                        return value.decode("utf-8", "replace")
                    return str(value)
                if self.kind == "bool":
                    if isinstance(value, bool):
                        return value
                    word = str(value).strip().lower()
                    if word in _TRUE or word in _FALSE:
                        return word in _TRUE
                    raise ValueError(f"{value!r} is not a valid boolean")
                if self.kind == "choice":
                    return coerce_cli_choice(value, choices=list(self.annotation),
                                             case_sensitive=info.case_sensitive, ctx=ctx)
                if self.kind == "path":
                    if not isinstance(value, Path):
                        value = Path(value)
                    return coerce_cli_path(value, info, path_type=self.annotation, param=param, ctx=ctx)
                return self._number(value, info)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None

        def _number(self, value: Any, info: Any) -> Any:
            cls = self.annotation
            what = "integer" if cls is int else "number"
            if isinstance(value, cls) and not isinstance(value, bool):
                number = value
            else:
                text = str(value).strip()
                try:
                    number = cls(text)
                except ValueError:
                    # int(): also the digit limit; a 5,000-digit value is no valid option
                    raise ValueError(f"{_short(text)!r} is not a valid {what}") from None
            lo, hi = info.min, info.max
            if info.clamp:
                if lo is not None and number < lo:
                    return cls(lo)
                if hi is not None and number > hi:
                    return cls(hi)
                return number
            if (lo is not None and not number >= lo) or (hi is not None and not number <= hi):
                span = f"{lo if lo is not None else '-∞'} to {hi if hi is not None else '∞'}"
                raise ValueError(f"{_short(str(value))} is not in the range {span}")
            return number

    def build(descriptor: Any) -> Any:
        if descriptor.file_annotation is None:
            kind = _plain(descriptor.annotation, descriptor.parameter_info)
            if kind is not None:
                return PlainRuntimeParam(parameter_info=descriptor.parameter_info,
                                         annotation=descriptor.annotation, kind=kind)
        return build_runtime_param(descriptor)

    build._attnscope = True  # type: ignore[attr-defined]
    core.build_runtime_param = build


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# Every number an option takes is bounded where it is read: a float must be finite and an
# int must fit in 64 bits, within the narrower range an option declares (`min=`/`max=`,
# which the coercion itself enforces). A value outside is one line naming the range.
INT_LIMIT = 2**63 - 1
# Options whose command checks a narrower range itself, before any use, in words of its
# own: mask-demo's --window (masks.check_kind: "at most 2**31").
OWN_RANGE = {("mask-demo", "window")}


def bound_number(param: Any) -> None:
    """Check `param`'s values after coercion, if it takes ints or floats (once per
    parameter object: the commands are built once, and CliRunner reuses them)."""
    kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if kind not in (int, float) or getattr(param, "_attnscope_bounded", False):
        return
    process = param.process_value

    def process_value(ctx: Any, value: Any) -> Any:
        value = process(ctx, value)
        if (ctx.info_name, param.name) in OWN_RANGE:
            return value
        for number in value if isinstance(value, (list, tuple)) else (value,):
            problem = out_of_bounds(number, kind, getattr(param, "min", None), getattr(param, "max", None))
            if problem:
                raise BadParameter(problem, ctx=ctx, param=param)
        return value

    param.process_value = process_value
    param._attnscope_bounded = True


def out_of_bounds(number: Any, kind: type, lo: Any, hi: Any) -> str | None:
    """What is wrong with `number` for an option of `kind` declared `lo` to `hi`, or None."""
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
