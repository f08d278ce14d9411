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


def _note(message: str) -> None:
    """A dim progress note on stderr (stdout carries only the command's output)."""
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[dim]{message}[/]")


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
        from attnscope.architectures import ARCHITECTURES

        families = {name: module.DESCRIPTION for name, module in sorted(ARCHITECTURES.items())}
        if as_json:
            _print_json({"presets": [{"name": r[0], "family": r[1].family, "total": r[2], "convention": r[3],
                                      "shape": pm.report_dict(pm.report(r[1]))["shape"]} for r in rows],
                         "families": families})
        else:
            console = _console()
            render.preset_list(console, rows)
            render.family_list(console, families)
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
    cfg.name = spec  # what the user named: a hub id, not its snapshot's hash
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
    save_topk: Annotated[Optional[Path], typer.Option("--save-topk", help="Write top-k indices and weights of every selected layer and head to FILE.npz (memory linear in the text length).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --save/--save-topk file.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the memory and disk the run would need, without running it.")] = False,
    offload: Annotated[bool, typer.Option("--offload", help="Stream one block's weights at a time from disk (automatic when the weights would not fit in memory).")] = False,
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
    from attnscope.measures import AttendRequest, run_attend
    from attnscope.units import human_bytes

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if save is not None:
        export.check_target(save, force)
    if save_topk is not None:
        export.check_target(save_topk, force, (".npz",))
        if save is not None and save.expanduser().resolve() == save_topk.expanduser().resolve():
            raise UsageError("--save and --save-topk name the same file", hint="give them different names")
    if not text.strip():
        from attnscope.errors import InputError

        raise InputError("the text is empty", hint='give some text, e.g. attnscope attend "a fluffy blue creature"')
    if dry_run:
        _dry_run(model, text, dtype, layer, head, top_k, save, save_topk, truncate, as_json)
        return
    m = _load(model, device, dtype, True if offload else None)
    tokens = m.tokenize(text, truncate)
    n = len(tokens)
    # Display defaults: the last layer for focus/topk; one head for the heatmap.
    view_layers = layer if layer is not None else ("all" if view == View.overview else "-1")
    view_heads = head if head is not None else ("0" if view == View.heatmap else "all")
    ls = analysis.select(view_layers, m.n_layers, "layer")
    hs = analysis.select(view_heads, m.n_heads, "head")
    query = _focus_index(tokens, token)
    wanted = {"topk": as_json or view == View.topk, "focus": view in (View.focus, View.overview),
              "summary": view == View.overview, "attention": view == View.heatmap}
    req = AttendRequest(ls, hs, [name for name, on in wanted.items() if on], query=query, top_k=top_k,
                        save=save, save_topk=save_topk, save_layers=analysis.select(layer, m.n_layers, "layer"),
                        save_heads=analysis.select(head, m.n_heads, "head"), force=force, text=text)
    if save is not None:
        size = export.pattern_bytes(len(req.save_layers), len(req.save_heads), n)
        export.check_space(save, size)
        if size >= 64 * 2**20:  # worth saying before a long run; small saves just happen
            _note(f"will write {human_bytes(size)} of patterns to {save}")
    res = run_attend(m, tokens, req)
    save_ls, save_hs = req.save_layers, req.save_heads
    name = m.config.name or m.source
    if as_json:
        assert res.topk is not None
        doc = export.topk_document(res.topk, name, res.focus)
        if save is not None:
            doc["saved"] = str(save)
        if save_topk is not None:
            doc["saved_topk"] = str(save_topk)
        _print_json(doc)
        return
    from attnscope.render.attend import render_result

    console = _console(no_color)
    render_result(console, res, view.value, name, top_k, color=not no_color and console.color_system is not None)
    if save is not None:
        console.print(f"[dim]saved {len(save_ls)} layers × {len(save_hs)} heads × {n}² to {save}[/]")
    if save_topk is not None:
        console.print(f"[dim]saved top-{top_k} of {len(save_ls)} layers × {len(save_hs)} heads to {save_topk}[/]")


class MaskKind(str, Enum):
    causal = "causal"
    padding = "padding"
    sliding_window = "sliding-window"
    bidirectional = "bidirectional"


@app.command(
    "mask-demo",
    epilog="Examples:\n\n  attnscope mask-demo\n\n  attnscope mask-demo --kind sliding-window --window 4\n\n"
    '  attnscope mask-demo "the cat sat on the mat" --kind padding --step 4\n\n'
    "  attnscope mask-demo --layer 0 --head 2 --json",
)
def mask_demo(
    text: Annotated[Optional[str], typer.Argument(help="The text (default: a fluffy blue creature roamed the verdant forest).")] = None,
    model: ModelOpt = None,
    layer: Annotated[str, typer.Option("--layer", "-l", help="One layer: an index, -1 for the last.")] = "-1",
    head: Annotated[Optional[str], typer.Option("--head", "-H", help="One head (default: the one leaning most on later keys).")] = None,
    kind: Annotated[MaskKind, typer.Option("--kind", help="causal (GPT), padding (batches), sliding-window (Mistral) or bidirectional (BERT).")] = MaskKind.causal,
    window: Annotated[Optional[int], typer.Option("--window", "-w", help="Keys each query sees with --kind sliding-window, itself included (default 3).")] = None,
    step: Annotated[Optional[int], typer.Option("--step", "-s", min=1, max=4, help="Show one step: 1 scores, 2 masked scores, 3 softmax, 4 masked softmax.")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    no_color: NoColorOpt = False,
) -> None:
    """Show how and why attention is masked, with one head's real numbers.

    Walks through the scores q·k/√d_head, the mask (hidden entries set to −∞) and
    softmax without and with it. The default model, all-MiniLM-L6-v2, is BERT and
    bidirectional; the demo applies the chosen mask to its real scores. In --json
    output a masked score (−∞) is the string "-inf"; a masked probability is 0.
    """
    from attnscope import masks

    masks.check_kind(kind.value, window)
    inspector = _load(model, device, LoadDtype.auto)
    demo = masks.demo_for(inspector, text if text is not None else masks.DEFAULT_TEXT, layer, head, kind.value, window)
    steps = None if step is None else [step - 1]
    if as_json:
        _print_json(masks.to_dict(demo, steps))
        return
    from attnscope.render.masks import mask_demo as render

    console = _console(no_color)
    render(console, demo, steps, color=not no_color and console.color_system is not None)


class ScoreName(str, Enum):
    """The scores of `heads`, in attnscope.heads.SCORES order."""

    previous_token = "previous_token"
    first_token = "first_token"
    self_ = "self"
    next_token = "next_token"
    duplicate_token = "duplicate_token"
    induction = "induction"
    entropy = "entropy"


@app.command(
    epilog="Examples:\n\n  attnscope heads\n\n  attnscope heads \"the cat sat on the mat and the cat slept\"\n\n"
    "  attnscope heads --score induction --seed 1 --repeat 30 --top 5\n\n"
    "  attnscope heads --model ./gpt2 --layer 0-3 --json",
)
def heads(
    text: Annotated[Optional[str], typer.Argument(help="Text to score (default: a short text with repeated words).", show_default=False)] = None,
    model: ModelOpt = None,
    score: Annotated[Optional[ScoreName], typer.Option("--score", "-s", help="Show only this score.")] = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for the induction input's random tokens.")] = 0,
    repeat: Annotated[int, typer.Option(min=2, help="T, the length of the random run that is repeated for induction (cut to fit the model).")] = 20,
    top: Annotated[int, typer.Option(min=0, help="How many of the strongest heads to list per score (0: none).")] = 3,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    dtype: LoadDtypeOpt = LoadDtype.auto,
    truncate: TruncateOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """An atlas of attention heads: what every head of every layer does, as scores.

    With A a head's n × n pattern on the tokenized text (special tokens included):

    [bold]previous_token[/]  mean over i ≥ 1 of A\\[i, i−1]
    [bold]first_token[/]     mean over i ≥ 1 of A\\[i, 0] (the attention sink)
    [bold]self[/]            mean over all i of A\\[i, i]
    [bold]next_token[/]      mean over i ≤ n−2 of A\\[i, i+1]; bidirectional models
                    only (null on causal ones)
    [bold]duplicate_token[/] over rows i whose token id occurred earlier, the mean of
                    the attention A\\[i, ·] puts on those earlier occurrences
                    (summed); null when no token repeats
    [bold]induction[/]       on a second input, the tokenizer's special prefix + R + R
                    (+ its special suffix, e.g. BERT's \\[SEP]), R a run of T
                    random non-special token ids (--repeat, --seed): the mean
                    over rows i of the second copy after its first token of
                    A\\[i, i−T+1], the token that followed this token last time
    [bold]entropy[/]         mean over rows of the row's entropy / log(keys it may
                    see): 0 = one key, 1 = uniform

    Every score lies in 0..1. With no --model, runs the embedded all-MiniLM-L6-v2
    (BERT, 6 layers × 12 heads) offline on a text with repeated words. --json
    prints {layers, heads, scores: {name: \\[layer]\\[head] floats}}.
    """
    from attnscope import heads as hd

    m = _load(model, device, dtype)
    names = [score.value] if score is not None else None
    res = hd.head_scores(m, text if text is not None else hd.DEFAULT_TEXT, names, layer, head, seed, repeat, truncate)
    name = m.config.name or m.source
    if as_json:
        _print_json({"model": name, **hd.scores_dict(res)})
        return
    from attnscope.render.heads import head_scores as render_heads

    console = _console(no_color)
    render_heads(console, res, name, m.n_layers, m.n_heads, top, color=not no_color and console.color_system is not None)


def _dry_run(model: Optional[str], text: str, dtype: LoadDtype, layer: Optional[str], head: Optional[str],
             top_k: int, save: Optional[Path], save_topk: Optional[Path], truncate: bool, as_json: bool) -> None:
    """Estimate a run from config.json, the safetensors headers and the tokenizer alone."""
    from attnscope import analysis, api, estimate
    from attnscope.tokenize import load_tokenizer, tokenize
    from attnscope.units import human_bytes

    src = api.open_source(model)
    spec, ckpt, cfg = src.spec, src.checkpoint, src.config
    tokens = tokenize(load_tokenizer(ckpt.tokenizer_path, str(ckpt.root)), text, cfg.n_ctx, truncate)
    ls = analysis.select(layer, cfg.n_layers, "layer")
    hs = analysis.select(head, cfg.n_heads, "head")
    stored = sum(info.numel for info in ckpt.tensors.values() if info.dtype.startswith(("F", "BF")))
    dt = "float32" if dtype.value == "auto" else dtype.value
    p = estimate.plan(cfg, stored, len(tokens), dt, len(ls), len(hs), top_k, save is not None,
                      save_topk is not None)
    rows = {"tokens": p.n_tokens, "weights_bytes": p.weights, "activations_bytes": p.activations,
            "attention_chunk_bytes": p.attention_chunk, "kept_results_bytes": p.kept,
            "peak_memory_bytes": p.peak_memory, "output_file_bytes": p.output_file}
    if as_json:
        _print_json({"dry_run": True, "model": spec, "dtype": dt, **rows})
        return
    console = _console()
    console.print(f"[bold]Dry run[/] · {cfg.name} · {p.n_tokens} tokens · {dt} weights")
    for label, value in (("weights", p.weights), ("activations (one block)", p.activations),
                         ("attention scores, one query chunk", p.attention_chunk),
                         ("results kept (top-k, one streamed layer)", p.kept), ("peak memory, about", p.peak_memory),
                         ("output files", p.output_file)):
        console.print(f"  {label:<42}{human_bytes(value):>14}")


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
