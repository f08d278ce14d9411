"""`attnscope attend`: who attends to whom, and its --dry-run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from attnscope.cli._app import (
    Device, DeviceOpt, HeadOpt, JsonOpt, LayerOpt, LoadDtype, LoadDtypeOpt, MeasureName, MeasureOpt, ModelOpt,
    NoColorOpt, TruncateOpt, View,
    _console, _load, _note, _print_json, app,
)
from attnscope.errors import UsageError






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
    '  attnscope attend "a fluffy blue creature" --save patterns.npz --json\n\n'
    '  attnscope attend "a fluffy blue creature" --html page.html\n\n'
    '  attnscope attend "a fluffy blue creature" --plot head.pdf --layer 2 --head 5',
)
def attend(
    text: Annotated[str, typer.Argument(metavar="TEXT", help="The text to look at.")],
    model: ModelOpt = None,
    view: Annotated[View, typer.Option("--view", "-v", metavar="VIEW", help="focus: one token in every head; topk: every token; heatmap: one head's pattern; overview: all layers × heads.")] = View.focus,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many keys to show per token.")] = 3,
    token: Annotated[Optional[str], typer.Option("--token", "-t", help="Query token for focus/overview: an index or a word (default: the last word).")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write the selected patterns to FILE.npz or FILE.safetensors.")] = None,
    save_topk: Annotated[Optional[Path], typer.Option("--save-topk", help="Write top-k indices and weights of every selected layer and head to FILE.npz (memory linear in the text length).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write one self-contained page (opens offline in any browser) with the selected layers and heads (default: all, as --save) to FILE.html.")] = None,
    html_topk: Annotated[Optional[int], typer.Option("--html-topk", metavar="K", help="With --html: keep only each token's top K keys (page size linear in the text length).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a figure to FILE.png, .svg or .pdf: one head's heatmap (default: last layer, head 0), or a grid of the selected heads (needs matplotlib: pip install 'attnscope\\[plot]').")] = None,
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
) -> None:
    """Show who attends to whom: run a real checkpoint and show its attention.

    With no --model, runs the default model, SmolLM2-135M-Instruct (a 4-bit GGUF, 30 layers × 9 heads), offline;
    ATTNSCOPE_MODEL overrides that default. The default view shows, for the last word, the tokens each head of
    the last layer draws on most.
    """
    from attnscope import analysis, export
    from attnscope.measures import AttendRequest, run_attend
    from attnscope.units import human_bytes, plural

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if save is not None:
        export.check_target(save, force)
    if save_topk is not None:
        export.check_target(save_topk, force, (".npz",))
        if save is not None and save.expanduser().resolve() == save_topk.expanduser().resolve():
            raise UsageError("--save and --save-topk name the same file", hint="give them different names")
    # --html and --plot take their own suffixes, so they can name no other output's file.
    _check_page_and_plot(html, html_topk, plot, figsize, top_k, save_topk, force)
    if not text.strip():
        from attnscope.errors import InputError

        raise InputError("the text is empty", hint='give some text, e.g. attnscope attend "a fluffy blue creature"')
    if dry_run:
        _dry_run(model, text, dtype, layer, head, top_k, save, save_topk, truncate, as_json, measure.value)
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
    # --json returns what the view shows: the heatmap's patterns too, beside every head's top-k
    save_ls, save_hs = analysis.select(layer, m.n_layers, "layer"), analysis.select(head, m.n_heads, "head")
    # The page holds what --save writes; the figure shows the heatmap view's head unless told.
    page_hs = save_hs
    plot_ls = analysis.select(layer if layer is not None else "-1", m.n_layers, "layer")
    plot_hs = analysis.select(head if head is not None else "0", m.n_heads, "head")
    if measure == MeasureName.rollout:  # one matrix per layer, handed on as head 0
        hs = page_hs = plot_hs = [0]
    name = m.config.name or m.source
    page = None
    if html is not None:
        from attnscope.render.page import NOTE_PAGE_BYTES, Page

        page = Page(name, tokens, save_ls, page_hs, measure.value, html_topk, (ls[-1], hs[0], query))
        page_size = page.check(html)
        if page_size >= NOTE_PAGE_BYTES:
            _note(f"will write a {human_bytes(page_size)} page to {html}")
    if plot is not None:
        from attnscope.render.figure import check_panels

        check_panels(len(plot_ls), len(plot_hs))
    # One pass for everything: the measures run on the union of what the view, the page
    # and the figure show, and each takes its part of the result.
    run_ls, run_hs = set(ls), set(hs)
    measures = [what for what, on in wanted.items() if on]
    for on, its_ls, its_hs, needs in ((html is not None, save_ls, page_hs, "attention" if html_topk is None else "topk"),
                                      (plot is not None, plot_ls, plot_hs, "attention")):
        if on:
            run_ls, run_hs = run_ls | set(its_ls), run_hs | set(its_hs)
            measures += [needs] if needs not in measures else []
    req = AttendRequest(sorted(run_ls), sorted(run_hs), measures, query=query, top_k=max(top_k, html_topk or 0),
                        save=save, save_topk=save_topk, save_layers=save_ls, save_heads=save_hs, force=force,
                        text=text, measure=measure.value)
    if save is not None:
        size = export.pattern_bytes(len(req.save_layers), len(req.save_heads), n)
        export.check_space(save, size)
        if size >= 64 * 2**20:  # worth saying before a long run; small saves just happen
            _note(f"will write {human_bytes(size)} of patterns to {save}")
    full = run_attend(m, tokens, req)
    save_ls, save_hs = req.save_layers, req.save_heads
    res = _narrow(full, ls, hs, top_k)
    wrote: list[str] = []
    if page is not None and html is not None:
        part = _narrow(full, page.layers, page.heads, page.k)
        if page.k is not None:
            assert part.topk is not None
            written = page.write(html, force, topk=(part.topk.indices, part.topk.weights))
        else:
            assert part.attention is not None
            written = page.write(html, force, attention=part.attention.probs)
        held = f"top-{page.k} keys, " if page.k is not None else ""
        wrote.append(f"wrote a {human_bytes(written)} page ({held}{len(page.layers)} layers × {len(page.heads)} heads)"
                     f" to {html}")
    if plot is not None:
        from attnscope.render.figure import parse_figsize, write_figure

        part = _narrow(full, plot_ls, plot_hs)
        assert part.attention is not None
        write_figure(plot, part.attention.probs, plot_ls, plot_hs, tokens.labels, name, measure.value,
                     parse_figsize(figsize) if figsize is not None else None, force)
        shown = (f"layer {plot_ls[0]}" + ("" if measure == MeasureName.rollout else f", head {plot_hs[0]}")
                 if len(plot_ls) * len(plot_hs) == 1 else f"{len(plot_ls)} layers × {len(plot_hs)} heads")
        wrote.append(f"wrote a figure of {shown} to {plot}")
    if as_json:
        assert res.topk is not None
        doc = export.topk_document(res.topk, name, res.focus)
        doc["measure"] = measure.value
        if res.update is not None:
            u = res.update
            doc["update"] = {"layer": u.layer, "query": u.query, "moved": u.per_key.tolist(),
                             "moved_per_head": u.per_head.tolist(), "update_norm": u.update,
                             "embedding_norm": u.embedding}
        if view == View.heatmap and res.attention is not None:
            att = res.attention
            doc["attention"] = {"layers": att.layers, "heads": att.heads, "probs": att.probs.tolist()}
        if save is not None:
            doc["saved"] = str(save)
        if save_topk is not None:
            doc["saved_topk"] = str(save_topk)
        if html is not None:
            doc["saved_html"] = str(html)
        if plot is not None:
            doc["saved_plot"] = str(plot)
        _print_json(doc)
        return
    from attnscope.render.attend import render_result

    console = _console(no_color)
    if measure != MeasureName.weight:
        from attnscope.measures.transforms import DESCRIPTIONS

        console.print(f"[dim]measure: {DESCRIPTIONS[measure.value]}[/]")
    render_result(console, res, view.value, name, top_k, color=not no_color and console.color_system is not None)
    if save is not None:
        console.print(f"[dim]saved {plural(len(save_ls), 'layer')} × {plural(len(save_hs), 'head')} × {n}² to {save}[/]")
    if save_topk is not None:
        console.print(f"[dim]saved top-{top_k} of {plural(len(save_ls), 'layer')} × {plural(len(save_hs), 'head')} "
                      f"to {save_topk}[/]")
    for line in wrote:
        from rich.text import Text

        console.print(Text(line, style="dim"))  # a Text: a path's brackets are not markup


def _check_page_and_plot(html: Optional[Path], html_topk: Optional[int], plot: Optional[Path], figsize: Optional[str],
                         top_k: int, save_topk: Optional[Path], force: bool) -> None:
    """Refuse --html/--plot values that cannot work, before the model is loaded."""
    from attnscope import export

    if html_topk is not None:
        if html is None:
            raise UsageError("--html-topk needs --html", hint="e.g. --html page.html --html-topk 8")
        if html_topk < 1:
            raise UsageError(f"--html-topk must be at least 1, got {html_topk}")
        if save_topk is not None and html_topk > top_k:
            raise UsageError(f"--html-topk {html_topk} keeps more keys than --save-topk, which keeps --top-k {top_k}",
                             hint=f"give --top-k {html_topk} too, or write the page in a separate run")
    if html is not None:
        from attnscope.render.page import FORMATS

        export.check_target(html, force, FORMATS)
    if figsize is not None and plot is None:
        raise UsageError("--figsize needs --plot", hint="e.g. --plot figure.pdf --figsize 6,5")
    if plot is not None:
        from attnscope.render.figure import FORMATS as FIGURES, parse_figsize, require_matplotlib

        export.check_target(plot, force, FIGURES)
        if figsize is not None:
            parse_figsize(figsize)
        require_matplotlib()


def _narrow(res: Any, layers: list[int], heads: list[int], k: Optional[int] = None) -> Any:
    """The part of a result for a sub-selection of its layers and heads (and the first `k`
    of its top-k keys, which are sorted): one pass computed the union of what the view,
    the page and the figure show. Shares the tensors when nothing is cut."""
    import dataclasses

    import torch

    li = [res.layers.index(layer) for layer in layers]
    hi = [res.heads.index(head) for head in heads]

    def pick(t: Any) -> Any:
        if li != list(range(t.shape[0])):
            t = t.index_select(0, torch.tensor(li, dtype=torch.long))
        if hi != list(range(t.shape[1])):
            t = t.index_select(1, torch.tensor(hi, dtype=torch.long))
        return t

    changes: dict[str, Any] = {"layers": layers, "heads": heads}
    if res.topk is not None:
        cut = slice(None) if k is None else slice(0, k)
        changes["topk"] = dataclasses.replace(res.topk, indices=pick(res.topk.indices)[..., cut],
                                              weights=pick(res.topk.weights)[..., cut], layers=layers, heads=heads)
    if res.focus is not None:
        changes["focus"] = dataclasses.replace(res.focus, weights=pick(res.focus.weights), layers=layers, heads=heads)
    if res.summary is not None:
        changes["summary"] = dataclasses.replace(res.summary, entropy=pick(res.summary.entropy),
                                                 first_token=pick(res.summary.first_token), layers=layers, heads=heads)
    if res.attention is not None:
        changes["attention"] = dataclasses.replace(res.attention, probs=pick(res.attention.probs), layers=layers,
                                                   heads=heads)
    return dataclasses.replace(res, **changes)


def _dry_run(model: Optional[str], text: str, dtype: LoadDtype, layer: Optional[str], head: Optional[str],
             top_k: int, save: Optional[Path], save_topk: Optional[Path], truncate: bool, as_json: bool,
             measure: str = "weight") -> None:
    """Estimate a run from config.json, the safetensors headers and the tokenizer alone."""
    from attnscope import analysis, api, estimate
    from attnscope.tokenize import load_tokenizer, tokenize
    from attnscope.units import human_bytes

    src = api.open_source(model)
    spec, ckpt, cfg = src.spec, src.checkpoint, src.config
    if src.gguf is not None:
        from attnscope.sources.gguf_tokenizer import gguf_tokenizer

        tokenizer = gguf_tokenizer(src.gguf)
        stored = sum(t.numel for t in src.gguf.tensors.values())
        file_bytes = src.gguf.size
    else:
        assert ckpt is not None  # internal invariant: not a GGUF
        tokenizer = load_tokenizer(ckpt.tokenizer_path, str(ckpt.root))
        stored = sum(info.numel for info in ckpt.tensors.values() if info.dtype.startswith(("F", "BF")))
        # Tensors already in the run's dtype are used as read: their pages are the weights.
        # Others are converted, and the pages read hold the file's bytes beside them.
        run_dtype = {"auto": "F32", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype.value]
        file_bytes = sum(info.end - info.start for info in ckpt.tensors.values() if info.dtype != run_dtype)
    tokens = tokenize(tokenizer, text, cfg.n_ctx, truncate)
    ls = analysis.select(layer, cfg.n_layers, "layer")
    hs = analysis.select(head, cfg.n_heads, "head")
    dt = "float32" if dtype.value == "auto" else dtype.value
    p = estimate.plan(cfg, stored, len(tokens), dt, len(ls), len(hs), top_k, save is not None,
                      save_topk is not None, file_bytes=file_bytes, runtime=estimate.runtime_bytes(), measure=measure)
    rows = {"tokens": p.n_tokens, "runtime_bytes": p.runtime, "weights_bytes": p.weights,
            "mapped_file_bytes": p.mapped, "activations_bytes": p.activations,
            "attention_chunk_bytes": p.attention_chunk, "kept_results_bytes": p.kept,
            "peak_memory_bytes": p.peak_memory, "output_file_bytes": p.output_file}
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
