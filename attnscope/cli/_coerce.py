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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off", ""}


def _plain(annotation: Any, info: Any) -> str | None:
    """Which plain leaf `annotation` is, or None where typer's own builder must serve."""
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return None
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
        from typer._click.exceptions import BadParameter
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
