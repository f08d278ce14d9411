"""What a causal model needs to write: its end-of-sequence ids and its chat template.

End-of-sequence ids come from generation_config.json, else config.json, else (for a
GGUF file) its `tokenizer.ggml.eos_token_id`. A chat template (tokenizer_config.json's
`chat_template`, or the GGUF's `tokenizer.chat_template`) is untrusted code: it is
rendered as transformers renders it (`apply_chat_template`), in jinja2's immutable
sandbox with trim_blocks and lstrip_blocks, `raise_exception` and a `tojson` that does
not escape HTML, and a bounded output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnscope.errors import CheckpointError, InputError

MAX_RENDERED = 1 << 20  # characters: a template that writes more than this is refused


@dataclass
class ChatInfo:
    """A model's generation settings: end-of-sequence ids, chat template, bos/eos strings."""

    eos_ids: list[int] = field(default_factory=list)
    template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    """`folder/name` as a JSON object; {} when the folder has no such file. Anything else
    that is not a small regular file inside the folder holding a JSON object (a FIFO, a
    link to /dev/zero or out of the folder, JSON nested 100,000 deep) is a one-line
    CheckpointError naming the file: it is read through `safe_io`, as config.json is."""
    from attnscope.safe_io import MAX_JSON, MAX_SMALL_JSON, member, read_json

    path = member(folder, name)
    if path is None:
        return {}
    try:  # a tokenizer_config.json lists every added token: megabytes for some vocabularies
        data = read_json(path, name, limit=MAX_JSON if name == "tokenizer_config.json" else MAX_SMALL_JSON)
    except FileNotFoundError:  # removed since member() looked
        return {}
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}",
                              hint=f"replace it with the model's own {name}")
    return data


def _token_string(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):  # AddedToken as saved
        return value["content"]
    return None


def read_chat_info(folder: Path | None, raw_config: dict[str, Any]) -> ChatInfo:
    """From a checkpoint folder's generation_config.json, config.json and tokenizer_config.json."""
    gen = _read_json(folder, "generation_config.json") if folder is not None else {}
    eos = _ids(gen.get("eos_token_id")) or _ids(raw_config.get("eos_token_id"))
    tok = _read_json(folder, "tokenizer_config.json") if folder is not None else {}
    template = tok.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template
                 if isinstance(t, dict) and isinstance(t.get("name"), str)}
        template = named.get("default")
    return ChatInfo(eos, template if isinstance(template, str) else None,
                    _token_string(tok.get("bos_token")), _token_string(tok.get("eos_token")))


# the widths and precisions of %-formats and of str.format's {…:spec} fields
_WIDTHS = (re.compile(r"%[-+ #0]*(\d*)(?:\.(\d*))?"), re.compile(r"\{[^{}]*:[^{}\d]*(\d*)(?:\.(\d*))?"))


def _checked_size(n: Any, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and abs(n) > MAX_RENDERED:
        raise InputError(f"the chat template asks for {what} of {n:,}, past the {MAX_RENDERED:,}-character limit")


def _checked_spec(spec: Any) -> None:
    """Widths and precisions in a %-format or str.format string, before Python pads to them."""
    if isinstance(spec, str):
        for pattern in _WIDTHS:
            for match in pattern.finditer(spec):
                for digits in match.groups():
                    if digits and len(digits) > 7:  # 10 million or more: past MAX_RENDERED
                        _checked_size(int(digits[:20]), "a format width")


def _sandbox() -> Any:
    """jinja2's immutable sandbox, as transformers renders chat templates, with sizes
    checked where Python would allocate them at once: `*` and `**` on large operands,
    %-formatting and str.format widths, integer arguments of any call (`ljust`, `center`,
    `zfill`), and without `lipsum`. Time, memory and the output's length are bounded by
    `render`, which runs this in a forked child."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                        _checked_size(len(seq) * n, "a repetition")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) \
                    and abs(left) > 1 and right * abs(left).bit_length() > MAX_RENDERED * 4:
                raise InputError(f"the chat template raises a number to the power {right:,}")
            elif operator == "%" and isinstance(left, str):
                _checked_spec(left)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            for value in (*args, *kwargs.values()):
                _checked_size(value, "a size")
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Any:  # str.format and format_map, when looked up
            if getattr(value, "__name__", None) in ("format", "format_map"):
                _checked_spec(getattr(value, "__self__", None))
            return super().wrap_str_format(value)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    format_filter = jinja2.filters.do_format

    def do_format(value: Any, *args: Any, **kwargs: Any) -> str:
        _checked_spec(value)
        return format_filter(value, *args, **kwargs)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.filters["format"] = do_format
    env.globals["raise_exception"] = raise_exception
    env.globals.pop("lipsum", None)
    return env


def _render(template: str, variables: dict[str, Any]) -> str:
    """The template rendered in `_sandbox()`, streamed so that its output stops at
    MAX_RENDERED characters; every failure an InputError."""
    import jinja2

    try:
        parts, size = [], 0
        for piece in _sandbox().from_string(template).generate(**variables):
            parts.append(piece)
            size += len(piece)
            if size > MAX_RENDERED:
                raise InputError(f"the chat template wrote more than {MAX_RENDERED:,} characters for one prompt")
        return "".join(parts)
    except InputError:
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise InputError(f"the chat template tried something unsafe: {str(exc)[:200]}") from None
    except MemoryError:
        raise InputError("the chat template ran out of memory") from None
    except RecursionError:
        raise InputError("the chat template recursed too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the template is untrusted code: any failure is its own
        kind = "" if isinstance(exc, jinja2.exceptions.TemplateError) else f"{type(exc).__name__}: "
        raise InputError(f"the model's chat template failed: {kind}{str(exc)[:200]}") from None


def render(info: ChatInfo, prompt: str, system: str | None = None) -> str:
    """The prompt as one user turn (after an optional system turn) in the model's chat
    template, with the generation prompt added. The template is untrusted code: it runs in
    a forked child within `bounded`'s budget of time and memory."""
    if not info.template:
        raise InputError("this model has no chat template", hint="drop --chat, or use an instruction-tuned model")
    from attnscope import bounded

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    variables = {"messages": messages, "add_generation_prompt": True, "bos_token": info.bos_token or "",
                 "eos_token": info.eos_token or ""}
    try:
        return str(bounded.run(_render, info.template, variables))
    except bounded.Exceeded as exc:
        raise InputError(f"the model's chat template {exc} for one prompt") from None


def chat_info_from_gguf(meta: dict[str, Any]) -> ChatInfo:
    """From a GGUF header: `tokenizer.ggml.eos_token_id`, `tokenizer.chat_template`, and
    the bos/eos token strings from `tokenizer.ggml.tokens`."""
    tokens = meta.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str | None:
        i = meta.get(key)
        ok = isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tokens)
        return tokens[i] if ok and isinstance(tokens[i], str) else None

    template = meta.get("tokenizer.chat_template")
    return ChatInfo(_ids(meta.get("tokenizer.ggml.eos_token_id")), template if isinstance(template, str) else None,
                    token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))
