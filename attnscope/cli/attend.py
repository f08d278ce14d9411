"""`attnscope attend`: who attends to whom, and its --dry-run.

A parse–call–render: the options become output objects (`attnscope.outputs`: the view
or the JSON document, and the --save, --save-topk, --html and --plot files), each
checked before the model is loaded; `outputs.run` unions what they need, runs one pass
and hands each its part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from attnscope.sources import packaged
from attnscope.cli._app import (
    Device, DeviceOpt, HeadOpt, JsonOpt, LayerOpt, LoadDtype, LoadDtypeOpt, MeasureName, MeasureOpt, ModelOpt,
    NoColorOpt, PartOpt, PipelineOpt, RanksOpt, TargetOpt, TruncateOpt, View,
    _console, _load, _note, _pipelined, _print_json, app,
)
from attnscope.cli._seq2seq import attend_pair, encoder_noted
from attnscope.errors import InputError, UsageError

MAX_STDIN_BYTES = 1024 * 1024  # a text read from stdin: 1 MiB is some 250,000 tokens, past every model's context


@app.command(
    epilog='Examples:\n\n  attnscope attend "a fluffy blue creature"\n\n'
    '  attnscope attend "a fluffy blue creature" --view heatmap --layer 2 --head 5\n\n'
    '  attnscope attend "the cat sat on the mat" --view topk --layer -1 --head 0-3 --top-k 2\n\n'
    '  attnscope attend "a fluffy blue creature" --view overview --token blue\n\n'
    '  attnscope attend "a fluffy blue creature" --model ./qwen3-moe --view experts --layer 0-3\n\n'
    '  attnscope attend "a fluffy blue creature" --save patterns.npz --json\n\n'
    '  attnscope attend "a fluffy blue creature" --html page.html\n\n'
    '  attnscope attend "a fluffy blue creature" --plot head.pdf --layer 2 --head 5\n\n'
    '  echo "a fluffy blue creature" | attnscope attend -\n\n'
    '  attnscope attend "The house is small." --target "Das Haus ist klein." --model t5-small --view align',
)
def attend(
    text: Annotated[Optional[str], typer.Argument(metavar="TEXT", help="The text to look at; - (or nothing, from a pipe) reads it from standard input.", show_default=False)] = None,
    model: ModelOpt = None,
    view: Annotated[View, typer.Option("--view", "-v", metavar="VIEW", help="focus: one token in every head; topk: every token; heatmap: one head's pattern; overview: all layers × heads; experts: each token's experts and weights in a mixture-of-experts layer (--layer: which).")] = View.focus,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many keys to show per token.")] = 3,
    token: Annotated[Optional[str], typer.Option("--token", "-t", help="Query token for focus/overview: an index or a word (default: the last word).")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write the selected patterns to FILE.npz or FILE.safetensors.")] = None,
    save_topk: Annotated[Optional[Path], typer.Option("--save-topk", help="Write top-k indices and weights of every selected layer and head to FILE.npz (memory linear in the text length).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write one self-contained page (opens offline in any browser) with the selected layers and heads (default: all, as --save) to FILE.html; with --target, of the --part shown (cross: the source and the target as two token rows, the cross-attention between them).")] = None,
    html_topk: Annotated[Optional[int], typer.Option("--html-topk", metavar="K", help="With --html: keep only each token's top K keys (page size linear in the text length).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a figure to FILE.png, .svg or .pdf: one head's heatmap (default: last layer, head 0), or a grid of the selected heads; with --target, of the --part shown (cross: rows = target, columns = source) (needs matplotlib: pip install 'attnscope\\[plot]').")] = None,
    figsize: Annotated[Optional[str], typer.Option("--figsize", metavar="W,H", help="Size of the --plot figure in inches.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --save/--save-topk/--html/--plot file.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the memory and disk the run would need, without running it.")] = False,
    offload: Annotated[bool, typer.Option("--offload", help="Stream one block's weights at a time from disk (automatic when the weights would not fit in memory).")] = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    dtype: LoadDtypeOpt = LoadDtype.auto,
    truncate: TruncateOpt = False,
    no_color: NoColorOpt = False,
    measure: MeasureOpt = MeasureName.weight,
    pipeline: PipelineOpt = False,
    ranks: RanksOpt = None,
    target: TargetOpt = None,
    part: PartOpt = None,
) -> None:
    """Show who attends to whom: run a real checkpoint and show its attention.

    With no --model, runs the default model, {default_model}, offline;
    ATTNSCOPE_MODEL overrides that default. The default view shows, for the last word, the tokens each head of
    the last layer draws on most.
    """
    if target is not None or part is not None or view is View.align:  # an encoder-decoder's two texts
        return attend_pair(_read_text(text), **{k: v for k, v in locals().items() if k != "text"})
    from attnscope import outputs

    if view is View.experts and measure is not MeasureName.weight:
        raise UsageError("--view experts shows routes, which no attention --measure changes",
                         hint="leave out --measure, or use another view")
    if pipeline:
        _check_pipeline(offload)
    elif ranks is not None:
        raise UsageError("--ranks goes with --dry-run --pipeline", hint="add --pipeline")
    wanted = _outputs(view.value, layer, head, top_k, token, save, save_topk, html, html_topk, plot, figsize, force,
                      as_json, no_color)
    outputs.check(wanted)
    text = _read_text(text)
    if dry_run:
        _dry_run(model, text, dtype, layer, head, top_k, save, save_topk, truncate, as_json, measure.value,
                 pipeline, ranks)
        return
    if pipeline:
        _pipelined(model, device, dtype,
                   lambda m: outputs.run(m, m.tokenize(text, truncate), wanted, measure.value, text))
        return
    m = encoder_noted(_load(model, device, dtype, True if offload else None))
    outputs.run(m, m.tokenize(text, truncate), wanted, measure.value, text)



attend.__doc__ = packaged.fill_default(attend.__doc__)


def _check_pipeline(offload: bool) -> None:
    """What a pipeline cannot do, refused before anything starts. (Rank 0 holds only its
    own layers' weights: norm's focus view borrows its layer's W_O, `pipeline.Driver.fetch`,
    and the mixing measures each block as it reports, `pipeline.LEND`.)"""
    if offload:
        raise UsageError("--offload and --pipeline are two ways to hold less: pick one",
                         hint="--pipeline loads only each rank's share of the layers")


def _outputs(view: str, layer: Optional[str], head: Optional[str], top_k: int, token: Optional[str],
             save: Optional[Path], save_topk: Optional[Path], html: Optional[Path], html_topk: Optional[int],
             plot: Optional[Path], figsize: Optional[str], force: bool, as_json: bool, no_color: bool) -> list[Any]:
    """The run's outputs, in the order they are written and reported; refuses option
    pairs that cannot work together."""
    from attnscope.outputs.files import FigureOutput, PageOutput, PatternSave, TopKSave
    from attnscope.outputs.views import JsonDocument, TerminalView

    if html_topk is not None and html is None:
        raise UsageError("--html-topk needs --html", hint="e.g. --html page.html --html-topk 8")
    if html_topk is not None and save_topk is not None and html_topk > top_k >= 1:
        raise UsageError(f"--html-topk {html_topk} keeps more keys than --save-topk, which keeps --top-k {top_k}",
                         hint=f"give --top-k {html_topk} too, or write the page in a separate run")
    if figsize is not None and plot is None:
        raise UsageError("--figsize needs --plot", hint="e.g. --plot figure.pdf --figsize 6,5")
    if view == "experts":
        from attnscope.outputs.routes import ExpertsView

        shown: Any = ExpertsView(layer, as_json, no_color)
    else:
        shown = (JsonDocument if as_json else TerminalView)(view, layer, head, top_k, token, no_color)
    files = [PatternSave(save, layer, head, force) if save is not None else None,
             TopKSave(save_topk, layer, head, top_k, force) if save_topk is not None else None,
             PageOutput(html, layer, head, html_topk, force) if html is not None else None,
             FigureOutput(plot, layer, head, figsize, force) if plot is not None else None]
    return [shown] + [out for out in files if out is not None]


def _read_text(text: Optional[str]) -> str:
    """TEXT itself; or, when it is - or absent and stdin is not a terminal, stdin's text
    (at most MAX_STDIN_BYTES, UTF-8, trailing line breaks dropped). Refuses an empty text."""
    import sys

    if text is None or text == "-":
        stdin = getattr(sys.stdin, "buffer", None)  # `<&-` leaves sys.stdin None
        if stdin is None:
            raise InputError("stdin is closed, so there is no text to read", hint='give the text: attnscope attend "…"')
        if text is None and sys.stdin.isatty():
            raise UsageError("give the text to look at", hint='e.g. attnscope attend "a fluffy blue creature", or pipe it in')
        data = stdin.read(MAX_STDIN_BYTES + 1)
        if len(data) > MAX_STDIN_BYTES:
            raise InputError(f"the text on stdin is longer than {MAX_STDIN_BYTES // 1024 // 1024} MiB",
                             hint="pass a shorter text")
        try:
            # as "$(cat FILE)" would give it: no byte-order mark, no trailing line breaks
            text = data.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise InputError(f"the text on stdin is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise InputError("the text is empty", hint='give some text, e.g. attnscope attend "a fluffy blue creature"')
    return text


def checkpoint_facts(model: Optional[str], dtype: LoadDtype) -> tuple[Any, Any, int, int]:
    """What --dry-run reads of a model without its weights: the source (config, headers),
    its tokenizer, the parameters it stores and the file bytes its pages add while loading."""
    from attnscope import api
    from attnscope.tokenize import load_tokenizer

    src = api.open_source(model)
    ckpt = src.checkpoint
    if src.gguf is not None:
        from attnscope.sources.gguf_tokenizer import gguf_tokenizer

        return src, gguf_tokenizer(src.gguf), sum(t.numel for t in src.gguf.tensors.values()), src.gguf.size
    assert ckpt is not None  # internal invariant: not a GGUF
    tokenizer = load_tokenizer(ckpt.tokenizer_path, str(ckpt.root))
    stored = sum(info.numel for info in ckpt.tensors.values() if info.dtype.startswith(("F", "BF")))
    # Tensors already in the run's dtype are used as read: their pages are the weights.
    # Others are converted, and the pages read hold the file's bytes beside them.
    run_dtype = {"auto": "F32", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype.value]
    file_bytes = sum(info.end - info.start for info in ckpt.tensors.values() if info.dtype != run_dtype)
    return src, tokenizer, stored, file_bytes


def _dry_run(model: Optional[str], text: str, dtype: LoadDtype, layer: Optional[str], head: Optional[str],
             top_k: int, save: Optional[Path], save_topk: Optional[Path], truncate: bool, as_json: bool,
             measure: str = "weight", pipeline: bool = False, ranks: Optional[int] = None) -> None:
    """Estimate a run from config.json, the safetensors headers and the tokenizer alone."""
    from attnscope import analysis, estimate
    from attnscope.tokenize import tokenize
    from attnscope.units import human_bytes

    src, tokenizer, stored, file_bytes = checkpoint_facts(model, dtype)
    spec, cfg = src.spec, src.config
    tokens = tokenize(tokenizer, text, cfg.n_ctx, truncate)
    ls = analysis.select(layer, cfg.n_layers, "layer")
    from attnscope.hooks import sites

    hs = analysis.select_heads(head, sites(cfg), ls)
    from attnscope.measures import linear_layers

    linear = linear_layers(sites(cfg))
    save_heads = None
    if linear is not None and measure in ("weight", "norm"):  # --save writes each kind apart, its own heads
        kinds = [[layer for layer in ls if (layer in linear) == is_linear] for is_linear in (False, True)]
        picked = [analysis.select_heads(head, sites(cfg), mine) if mine else [] for mine in kinds]
        save_heads = [len(picked[layer in linear]) for layer in ls]
    dt = "float32" if dtype.value == "auto" else dtype.value
    p = estimate.plan(cfg, stored, len(tokens), dt, len(ls), len(hs), top_k, save is not None,
                      save_topk is not None, file_bytes=file_bytes, runtime=estimate.runtime_bytes(), measure=measure,
                      save_heads=save_heads)
    rows = {"tokens": p.n_tokens, "runtime_bytes": p.runtime, "weights_bytes": p.weights,
            "mapped_file_bytes": p.mapped, "activations_bytes": p.activations,
            "attention_chunk_bytes": p.attention_chunk, "kept_results_bytes": p.kept,
            "peak_memory_bytes": p.peak_memory, "output_file_bytes": p.output_file}
    if pipeline:
        _dry_run_pipeline(cfg, spec, dt, p, ranks, as_json)
        return
    if as_json:
        _print_json({"dry_run": True, "model": spec, "dtype": dt, **rows})
        return
    console = _console()
    console.print(f"[bold]Dry run[/] · {cfg.name} · {p.n_tokens} tokens · {dt} weights")
    for label, value in (("interpreter and libraries (measured)", p.runtime), ("weights", p.weights),
                         ("checkpoint pages read through the map", p.mapped),
                         ("activations (one block)", p.activations),
                         ("attention scores, one query chunk", p.attention_chunk),
                         ("results kept (top-k, one streamed layer, the measure's)", p.kept), ("peak memory, about", p.peak_memory),
                         ("output files", p.output_file)):
        console.print(f"  {label:<42}{human_bytes(value):>14}")


def _dry_run_pipeline(cfg: Any, spec: str, dt: str, p: Any, ranks: Optional[int], as_json: bool) -> None:
    """`--dry-run --pipeline`: each rank's layers, weights and peak memory (`pipeline.plan_ranks`)."""
    import os

    from attnscope import pipeline
    from attnscope.units import human_bytes

    if ranks is None:
        raw = os.environ.get("WORLD_SIZE", "").strip()
        if not raw.isdigit() or int(raw) < 2:
            raise UsageError("--dry-run --pipeline needs the number of processes",
                             hint="give --ranks N (or run it under torchrun, which sets WORLD_SIZE)")
        ranks = int(raw)
    plans = pipeline.plan_ranks(cfg, ranks, dt, p.n_tokens, p)
    if as_json:
        _print_json({"dry_run": True, "model": spec, "dtype": dt, "tokens": p.n_tokens, "ranks": [
            {"rank": r.rank, "layers": [r.layers.start, r.layers.stop - 1], **r.stacks(), "weights_bytes": r.weights,
             "peak_memory_bytes": r.peak_memory} for r in plans],
            "one_process_weights_bytes": p.weights, "one_process_peak_memory_bytes": p.peak_memory})
        return
    console = _console()
    console.print(f"[bold]Dry run, pipelined[/] · {cfg.name} · {p.n_tokens} tokens · {dt} weights · {ranks} ranks")
    wide = max(12, *(len(r.words()) + 2 for r in plans))  # an encoder-decoder's: "encoder 0-5, decoder 0-1"
    console.print(f"  {'rank':<6}{'layers':<{wide}}{'weights':>14}{'peak memory, about':>22}")
    for r in plans:
        console.print(f"  {r.rank:<6}{r.words():<{wide}}{human_bytes(r.weights):>14}"
                      f"{human_bytes(r.peak_memory):>22}")
    console.print(f"  {'one process':<{wide + 6}}{human_bytes(p.weights):>14}{human_bytes(p.peak_memory):>22}")
