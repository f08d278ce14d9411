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

import typer
from typer.core import TyperGroup

try:  # typer >= 0.29 vendors its own click; older releases use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

# Typer's own signals and its usage errors pass through the handler untouched.
_PASS_THROUGH = (typer.Exit, typer.Abort, ClickException)

from attnscope import __version__
from attnscope.errors import AttnscopeError, UsageError


class _Group(TyperGroup):
    """Runs every command under the project's single error handler."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
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


LayerOpt = Annotated[Optional[str], typer.Option("--layer", "-l", help="Layers: 3, -1 (last), 0,2,5, 1-3, 2: or all.")]
HeadOpt = Annotated[Optional[str], typer.Option("--head", "-H", help="Heads: same forms as --layer.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to run: auto picks cuda when available.")]
LoadDtypeOpt = Annotated[LoadDtype, typer.Option("--dtype", help="Weights' dtype (auto: float32 on CPU, the checkpoint's on GPU). Softmax is always float32.")]
NoColorOpt = Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")]
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Cut a text longer than the model's positions instead of failing.")]


def _load(model: Optional[str], device: Device, dtype: LoadDtype) -> Any:
    """Load a model with a progress bar on stderr for big checkpoints."""
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
        return load(model, device.value, dtype.value, progress)
    finally:
        if bar is not None:
            bar.stop()


def _focus_index(tokens: Any, token: Optional[str]) -> int:
    from attnscope.analysis import default_focus

    if token is None:
        return default_focus(tokens)
    try:
        i = int(token)
    except ValueError:
        wanted = token.strip().lower()
        for j in range(len(tokens) - 1, -1, -1):
            if tokens.labels[j].lstrip("␣#").lower() == wanted:
                return j
        raise UsageError(f"no token {token!r} in the text", hint=f"tokens: {' '.join(tokens.labels[:20])}") from None
    if -len(tokens) <= i < len(tokens):
        return i % len(tokens)
    raise UsageError(f"--token {i} is out of range: the text has {len(tokens)} tokens")


@app.command(
    epilog='Examples:\n\n  attnscope attend "a fluffy blue creature"\n\n'
    '  attnscope attend "a fluffy blue creature" --view heatmap --layer 2 --head 5\n\n'
    '  attnscope attend "the cat sat on the mat" --view topk --layer -1 --head 0-3 --top-k 2\n\n'
    '  attnscope attend "a fluffy blue creature" --view overview --token blue\n\n'
    '  attnscope attend "a fluffy blue creature" --save patterns.npz --json',
)
def attend(
    text: Annotated[str, typer.Argument(help="The text to look at.")],
    model: ModelOpt = None,
    view: Annotated[View, typer.Option("--view", "-v", help="focus: one token in every head; topk: every token; heatmap: one head's pattern; overview: all layers × heads.")] = View.focus,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many keys to show per token.")] = 3,
    token: Annotated[Optional[str], typer.Option("--token", "-t", help="Query token for focus/overview: an index or a word (default: the last word).")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write the selected patterns to FILE.npz or FILE.safetensors.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --save file.")] = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    dtype: LoadDtypeOpt = LoadDtype.auto,
    truncate: TruncateOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """Show who attends to whom: run a real checkpoint and show its attention.

    With no --model, runs the embedded all-MiniLM-L6-v2 (BERT, 6 layers × 12 heads)
    offline; ATTNSCOPE_MODEL overrides that default. The default view shows, for the
    last word, the tokens each head of the last layer draws on most.
    """
    from attnscope import analysis, export

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if save is not None:
        export.check_target(save, force)
    if not text.strip():
        from attnscope.errors import InputError

        raise InputError("the text is empty", hint='give some text, e.g. attnscope attend "a fluffy blue creature"')
    m = _load(model, device, dtype)
    tokens = m.tokenize(text, truncate)
    n = len(tokens)
    # Display defaults: the last layer for focus/topk; one head for the heatmap.
    view_layers = layer if layer is not None else ("all" if view == View.overview else "-1")
    view_heads = head if head is not None else ("0" if view == View.heatmap else "all")
    ls = analysis.select(view_layers, m.n_layers, "layer")
    hs = analysis.select(view_heads, m.n_heads, "head")
    query = _focus_index(tokens, token)
    probes: list[Any] = []
    topk = analysis.TopKProbe(ls, hs, n, top_k) if (as_json or view == View.topk) else None
    focus = analysis.FocusProbe(ls, hs, n, query) if view in (View.focus, View.overview) else None
    summary = analysis.SummaryProbe(ls, hs, m.config, n) if view == View.overview else None
    full = analysis.FullPatterns(ls, hs, n) if view == View.heatmap else None
    save_ls = analysis.select(layer, m.n_layers, "layer")
    save_hs = analysis.select(head, m.n_heads, "head")
    saved = analysis.FullPatterns(save_ls, save_hs, n) if save is not None else None
    probes = [p for p in (topk, focus, summary, full, saved) if p is not None]
    m.run(tokens.ids, analysis.Probes(*probes), max(max(ls), max(save_ls) if saved else 0))
    res = analysis.AttendResult(tokens, ls, hs)
    if topk is not None:
        res.topk = analysis.TopK(topk.indices, topk.weights, ls, hs, tokens)
    if focus is not None:
        res.focus = analysis.Focus(query, focus.rows, ls, hs, tokens)
    if summary is not None:
        res.summary = summary.result()
    if full is not None:
        res.attention = analysis.Attention(full.probs, ls, hs, tokens)
    if saved is not None:
        assert save is not None
        export.save_patterns(save, saved.probs, save_ls, save_hs, tokens.ids, tokens.labels, text, force)
    name = m.config.name or m.source
    if as_json:
        assert res.topk is not None
        doc = export.topk_document(res.topk, name, res.focus)
        if save is not None:
            doc["saved"] = str(save)
        _print_json(doc)
        return
    from attnscope.render.attend import render_result

    console = _console(no_color)
    render_result(console, res, view.value, name, top_k, color=not no_color and console.color_system is not None)
    if save is not None:
        console.print(f"[dim]saved {len(save_ls)} layers × {len(save_hs)} heads × {n}² to {save}[/]")


# --- mask-demo command goes here ---


# --- heads command goes here ---


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
