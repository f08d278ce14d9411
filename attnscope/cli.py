"""Thin Typer commands: parse, call the library, render. One error handler for all.

After Typer's docs and the `hf` CLI: options shared as `Annotated` aliases, `str` Enums
for choices, and one place (`_Group.invoke`) that turns the project's exceptions into
one red line on stderr with a hint; a traceback only with ATTNSCOPE_DEBUG=1. torch is
imported only inside the commands that run a model, so `params` and `--help` stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperGroup

from attnscope import __version__
from attnscope.errors import AttnscopeError, UsageError


class _Group(TyperGroup):
    """Runs every command under the project's single error handler."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except AttnscopeError as exc:
            if _debug():
                raise
            _print_error(exc.message, exc.hint)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _print_error("interrupted", None)
            ctx.exit(130)
        except Exception as exc:  # a bug: say so in one line rather than a traceback
            if _debug():
                raise
            _print_error(f"internal error: {type(exc).__name__}: {exc}", "set ATTNSCOPE_DEBUG=1 for the traceback and report it")
            ctx.exit(1)


def _debug() -> bool:
    return os.environ.get("ATTNSCOPE_DEBUG", "") not in ("", "0")


def _print_error(message: str, hint: str | None) -> None:
    from rich.console import Console
    from rich.text import Text

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    line = Text("error: ", style="bold red") + Text(message, style="red")
    if hint:
        line += Text(f" ({hint})", style="dim")
    err.print(line)


def _console(no_color: bool = False) -> Any:
    from rich.console import Console

    return Console(highlight=False, no_color=no_color or None)


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


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Checkpoint folder, .safetensors file, or hub id from the local cache."),
]


@app.command(
    epilog="Examples:\n\n  attnscope params --config gpt3\n\n  attnscope params --config llama3-8b --context 8192\n\n"
    "  attnscope params --model ./my-checkpoint --json\n\n  attnscope params --list",
)
def params(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="A preset name, or a config.json (or a folder with one).")] = None,
    model: ModelOpt = None,
    convention: Annotated[
        Optional[Convention],
        typer.Option(help="3b1b: weight matrices only, as the video counts; full: every stored parameter, tied once."),
    ] = None,
    context: Annotated[Optional[int], typer.Option("--context", min=1, help="Show pattern size, KV cache and FLOPs at N tokens.")] = None,
    dtype: Annotated[Dtype, typer.Option(help="Bytes per value for --context memory figures.")] = Dtype.float32,
    as_json: JsonOpt = False,
    list_presets: Annotated[bool, typer.Option("--list", help="List the presets with their shapes.")] = False,
) -> None:
    """Count parameters per head, per block and per model.

    The gpt3 presets headline the [bold]3b1b[/] convention (the video's: weight matrices
    only); configs and checkpoints headline [bold]full[/] (every stored parameter).
    """
    from attnscope import config as cfgmod
    from attnscope import params as pm
    from attnscope.render import params as render

    if list_presets:
        rows = []
        for name in cfgmod.PRESETS:
            conv = cfgmod.preset_convention(name)
            rep = pm.report(cfgmod.preset(name), conv)
            rows.append((name, rep.cfg, rep.total, conv))
        if as_json:
            _print_json({"presets": [{"name": r[0], "family": r[1].family, "total": r[2], "convention": r[3],
                                      "shape": pm.report_dict(pm.report(r[1]))["shape"]} for r in rows]})
        else:
            render.preset_list(_console(), rows)
        return
    if (config is None) == (model is None):
        raise UsageError("give exactly one of --config or --model", hint="e.g. attnscope params --config gpt3")
    if config is not None:
        cfg, default_conv, source = _config_source(config)
        rep = pm.report(cfg, (convention.value if convention else default_conv), source)
    else:
        rep = _checkpoint_report(model, convention.value if convention else "full")
    ctx = pm.context_report(rep.cfg, context, dtype.value) if context else None
    if as_json:
        _print_json(pm.report_dict(rep, ctx))
    else:
        render.params_report(_console(), rep, ctx)


def _config_source(spec: str) -> tuple[Any, str, str]:
    from attnscope import config as cfgmod
    from attnscope.errors import ConfigError

    if spec.strip().lower() in cfgmod.PRESETS:
        return cfgmod.preset(spec), cfgmod.preset_convention(spec), spec
    path = Path(spec).expanduser()
    if path.exists():
        return cfgmod.load_config(path), "full", str(path)
    if "/" in spec or os.sep in spec or spec.endswith(".json"):
        raise ConfigError(f"no such file or folder: {spec}", hint="pass a config.json, a folder holding one, or a preset name")
    return cfgmod.preset(spec), "full", spec  # raises UnknownPresetError with suggestions


def _checkpoint_report(spec: str, convention: str) -> Any:
    from attnscope import checkpoint as ck
    from attnscope import config as cfgmod
    from attnscope import params as pm
    from attnscope.errors import ConfigError

    ckpt = ck.locate(spec)
    if ckpt.config_path is None:
        raise ConfigError(
            f"{ckpt.root} has no config.json, so the stored tensors cannot be broken down",
            hint="put the model's config.json beside the weights",
        )
    cfg = cfgmod.load_config(ckpt.config_path)
    cfg.name = cfg.name if cfg.name not in ("", ".") else spec
    stored, skipped = pm.stored_shapes(ckpt, cfg)
    return pm.report_from_stored(cfg, stored, convention, spec, skipped)


# --- mask-demo command goes here ---


# --- heads command goes here ---


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
