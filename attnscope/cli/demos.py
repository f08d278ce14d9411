"""`attnscope mask-demo` and `attnscope heads`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from attnscope.errors import UsageError
from attnscope.sources import packaged
from attnscope.units import plural

from attnscope.cli._app import (
    Device, DeviceOpt, HeadOpt, JsonOpt, LayerOpt, LoadDtype, LoadDtypeOpt, MeasureName, ModelOpt,
    NoColorOpt, PartOpt, PerHeadMeasure, PerHeadMeasureOpt, PipelineOpt, TargetOpt, TruncateOpt,
    _console, _load, _pipelined, _print_json, app,
)

from enum import Enum


class MaskKind(str, Enum):
    causal = "causal"
    padding = "padding"
    sliding_window = "sliding-window"
    bidirectional = "bidirectional"
    local = "local"


@app.command(
    "mask-demo",
    epilog="Examples:\n\n  attnscope mask-demo\n\n  attnscope mask-demo --kind sliding-window --window 4\n\n"
    '  attnscope mask-demo "the cat sat on the mat" --kind padding --step 4\n\n'
    "  attnscope mask-demo --layer 0 --head 2 --json",
)
def mask_demo(
    text: Annotated[Optional[str], typer.Argument(metavar="TEXT", help="The text (default: a fluffy blue creature roamed the verdant forest).")] = None,
    model: ModelOpt = None,
    layer: Annotated[str, typer.Option("--layer", "-l", help="One layer: an index, -1 for the last.")] = "-1",
    head: Annotated[Optional[str], typer.Option("--head", "-H", help="One head (default: the one leaning most on later keys).")] = None,
    kind: Annotated[Optional[MaskKind], typer.Option("--kind", metavar="KIND", help="Apply another mask: causal (GPT), padding (batches), sliding-window (Mistral), bidirectional (BERT) or local (both sides of a window: ModernBERT). Default: the layer's own (causal on an encoder's global layer).", show_default=False)] = None,
    window: Annotated[Optional[int], typer.Option("--window", "-w", help="Keys each query sees with --kind sliding-window, itself included (default 3); with --kind local, W − 1 on each side.")] = None,
    step: Annotated[Optional[int], typer.Option("--step", "-s", min=1, max=5, help="Show one step: 1 scores, 2 masked scores, 3 softmax, 4 masked softmax (where a layer adds a relative position bias, MPNet's: 2 is the bias, then 3 to 5).")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    truncate: TruncateOpt = False,
    no_color: NoColorOpt = False,
    pipeline: PipelineOpt = False,
) -> None:
    """Show how and why attention is masked, with one head's real numbers.

    Walks through the scores q·k/√d_head, the mask (hidden entries set to −∞) and
    softmax without and with it. With no --model it runs the default model,
    {default_model}. By default the demo applies the layer's own mask (causal, or a
    sliding window on a model's local layers), so its last step is the layer's
    attention, and names the layer's kind (local, window W / global / bidirectional
    encoder); on an encoder, which masks nothing, it applies the causal mask. --kind
    applies another mask to the same real scores. Where a layer adds a learned relative
    position bias (MPNet), the bias is a step of its own, between the scores and the
    mask. In --json
    output a masked score (−∞) is the string "-inf"; a masked probability is 0.
    """
    from attnscope import masks

    chosen = None if kind is None else kind.value
    masks.check_kind(chosen, window)

    def run(inspector: Any) -> None:  # rank 0's part under --pipeline
        _mask_demo(inspector, text, layer, head, chosen, window, step, as_json, truncate, no_color)

    if pipeline:
        _pipelined(model, device, LoadDtype.auto, run)
    else:
        run(_load(model, device, LoadDtype.auto))


def _mask_demo(inspector: Any, text: Optional[str], layer: str, head: Optional[str], chosen: Optional[str],
               window: Optional[int], step: Optional[int], as_json: bool, truncate: bool, no_color: bool) -> None:
    from attnscope import masks
    from attnscope.seq2seq import three_masks

    demo = masks.demo_for(inspector, text if text is not None else masks.DEFAULT_TEXT, layer, head, chosen, window,
                          truncate)
    if step is not None and step > len(demo.steps):
        raise UsageError(f"--step {step} is out of range: this demo has {len(demo.steps)} steps")
    steps = None if step is None else [step - 1]
    pair = inspector.config.decoder is not None  # an encoder-decoder: its three masks too
    if as_json:
        _print_json({**masks.to_dict(demo, steps), **({"encoder_decoder_masks": three_masks(
            len(demo.labels), len(demo.labels))} if pair else {})})
        return
    from dataclasses import replace

    from attnscope.render.masks import mask_demo as render
    from attnscope.tokenize import visible

    shown = visible(demo.text)  # the user's text, printed: no control character reaches the terminal
    if demo.truncated_from:
        shown += f" (cut from {plural(demo.truncated_from, 'token')} by --truncate)"
    console = _console(no_color)
    render(console, replace(demo, text=shown), steps, color=not no_color and console.color_system is not None)
    if pair:  # the demo above is the encoder's; the source's own tokens stand for the target's too
        from attnscope.render.seq2seq import three_masks as show_masks

        show_masks(console, demo.labels, demo.labels, color=not no_color and console.color_system is not None)


class ScoreName(str, Enum):
    """The scores of `heads`, in attnscope.heads.ALL_SCORES order."""

    previous_token = "previous_token"
    first_token = "first_token"
    self_ = "self"
    next_token = "next_token"
    duplicate_token = "duplicate_token"
    induction = "induction"
    entropy = "entropy"
    sink = "sink"


mask_demo.__doc__ = packaged.fill_default(mask_demo.__doc__)


@app.command(
    epilog="Examples:\n\n  attnscope heads\n\n  attnscope heads \"the cat sat on the mat and the cat slept\"\n\n"
    "  attnscope heads --score induction --seed 1 --repeat 30 --top 5\n\n"
    "  attnscope heads --model ./gpt2 --layer 0-3 --json",
)
def heads(
    text: Annotated[Optional[str], typer.Argument(metavar="TEXT", help="Text to score (default: a short text with repeated words).", show_default=False)] = None,
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
    measure: PerHeadMeasureOpt = PerHeadMeasure.weight,
    corpus: Annotated[Optional[str], typer.Option("--corpus", help="Pool every score over a corpus instead of one text: a file with one text a line, a .jsonl file (see --field), or - for stdin.", show_default=False)] = None,
    field: Annotated[str, typer.Option("--field", help="With a .jsonl --corpus: the field that holds each text.")] = "text",
    max_texts: Annotated[Optional[int], typer.Option("--max-texts", min=1, help="With --corpus: score only its first N texts.", show_default=False)] = None,
    per_text: Annotated[Optional[str], typer.Option("--per-text", help="With --corpus: write each text's scores, sums and row counts to this .jsonl as it finishes.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="With --per-text: skip the texts already in that file and pool them from it.")] = False,
    batch_tokens: Annotated[int, typer.Option("--batch-tokens", help="With --corpus: pack consecutive texts into one pass of up to this many tokens, each masked to itself (0: one text a pass).")] = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the atlas as a figure (.png, .svg or .pdf; needs matplotlib).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write one offline page of the text's attention (the selected layers and heads) with these scores in its side panel.")] = None,
    figsize: Annotated[Optional[str], typer.Option("--figsize", metavar="W,H", help="Size of the --plot figure in inches.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --plot or --html file.")] = False,
    pipeline: PipelineOpt = False,
    target: TargetOpt = None,
    part: PartOpt = None,
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
    [bold]sink[/]            mean over all i of row i's sink weight 1 − Σ_j A\\[i, j]:
                    the share of a learned sink (gpt-oss's extra softmax
                    column); only on models with sinks

    Every score lies in 0..1. With no --model, runs the default model, {default_model},
    offline on a text with repeated words. --json prints {layers, heads, scores: {name: \\[layer]\\[head]
    floats}}; --plot FILE draws the atlas as a figure.

    With --corpus, each score is pooled over every row of every text (its sum over all
    of them / their number: a long text weighs more); induction is the model's, measured
    once. --batch-tokens N packs consecutive texts into one pass of up to N tokens, each
    masked to itself. Under torchrun the texts are sharded across the processes (text i
    to rank i mod N) and rank 0 prints; --per-text then writes FILE.rankN.jsonl per
    process and merges them into FILE at the end.

    On a model with experts (Mixtral, Qwen-MoE, gpt-oss, DeepSeek-V3), an "Expert load"
    section follows: per selected MoE layer, each expert's share of the (token, choice)
    pairs, over the text or every text of --corpus, with max/min and the coefficient of
    variation (0 = even). --json adds expert_load and expert_counts {layer: \\[per expert]}
    and expert_spread.

    On an encoder-decoder (T5, BART, Marian), TEXT is the source; with --target TEXT the
    cross-attention of every decoder layer and head gets the score [bold]diagonal[/]: for
    target row i of n_t, j* = round(i·(n_s−1)/(n_t−1)) (j* = 0 when n_t = 1); the score is
    the mean over rows of the weight on source positions j*−1 … j*+1, high for heads that
    read the source in order, as translation alignments mostly do. --part encoder or
    --part decoder scores that stack's self-attention instead (the scores above but
    induction, on the source or on the decoder's start token and the target; the
    decoder is causal, so next_token is null there).
    """
    from attnscope import heads as hd

    if target is not None:  # an encoder-decoder's cross-attention
        from attnscope.cli._seq2seq import heads_pair

        return heads_pair(model, text, target, layer, head, top, truncate, as_json, no_color, device, dtype,
                          part.value if part is not None else "cross", [score.value] if score is not None else None,
                          pipeline)
    if part is not None:
        raise UsageError("--part picks the attention of an encoder-decoder run with --target",
                         hint='e.g. heads "a house" --target "ein Haus" --part decoder')

    names = [score.value] if score is not None else None
    hd.check_measure(measure.value)  # a per-layer measure is refused before the model loads
    corpus_run = corpus is not None or per_text is not None or resume or max_texts is not None or field != "text"
    if pipeline and (corpus_run or batch_tokens):
        raise UsageError("--pipeline splits one model's layers, --corpus splits texts: give one of them",
                         hint="under torchrun, --corpus alone shares the texts among the processes")
    if corpus_run or batch_tokens:
        _heads_corpus(text, corpus, field, max_texts, per_text, resume, model, device, dtype, names, layer, head,
                      seed, repeat, truncate, measure, as_json, top, no_color, batch_tokens)
        return
    size = None
    if plot is not None:
        from attnscope import export
        from attnscope.render.figure import parse_figsize, require_matplotlib

        export.check_target(plot, force, (".png", ".svg", ".pdf"))
        require_matplotlib()
        size = parse_figsize(figsize) if figsize is not None else None
    elif figsize is not None:
        raise UsageError("--figsize needs --plot", hint="e.g. --plot atlas.pdf --figsize 8,6")
    if html is not None:
        from attnscope import export

        export.check_target(html, force, (".html", ".htm"))

    def run(m: Any) -> None:  # rank 0's part under --pipeline
        res = hd.head_scores(m, text if text is not None else hd.DEFAULT_TEXT, names, layer, head, seed, repeat,
                             truncate, measure.value)
        if plot is not None:
            from attnscope.render.figure import write_atlas

            write_atlas(plot, {k: v.tolist() for k, v in res.scores.items()}, res.layers, res.heads,
                        m.config.name or m.source, measure.value, size, force)
        if html is not None:
            _heads_page(m, res, text if text is not None else hd.DEFAULT_TEXT, truncate, measure.value, html, force)
        name = m.config.name or m.source
        if as_json:
            _print_json({"model": name, "measure": measure.value, **hd.scores_dict(res)})
            return
        from attnscope.render.heads import head_scores as render_heads

        console = _console(no_color)
        render_heads(console, res, name, m.n_layers, m.n_heads, top, color=not no_color and console.color_system is not None)


    if pipeline:
        _pipelined(model, device, dtype, run)
    else:
        run(_load(model, device, dtype))


heads.__doc__ = packaged.fill_default(heads.__doc__)


def _heads_corpus(text: Optional[str], corpus: Optional[str], field: str, max_texts: Optional[int],
                  per_text: Optional[str], resume: bool, model: Optional[str], device: Device, dtype: LoadDtype,
                  names: Optional[list[str]], layer: Optional[str], head: Optional[str], seed: int, repeat: int,
                  truncate: bool, measure: MeasureName, as_json: bool, top: int, no_color: bool,
                  batch_tokens: int = 0) -> None:
    """`heads --corpus`: read the whole corpus (so a bad line fails before the model
    loads), join torchrun's process group if launched by it, pool, and print on rank 0."""
    from attnscope import corpus as cp
    from attnscope import distributed
    from attnscope.errors import AttnscopeError, UsageError

    if corpus is None:
        raise UsageError("--field, --max-texts, --per-text, --resume and --batch-tokens go with --corpus",
                         hint="add --corpus FILE (one text a line, or .jsonl)")
    if text is not None:
        raise UsageError("give a TEXT or --corpus, not both")
    if resume and per_text is None:
        raise UsageError("--resume continues a --per-text file", hint="add --per-text FILE.jsonl")
    group = None
    try:
        group = distributed.start(device.value)  # before loading: it picks this rank's GPU
        if group is not None and corpus == "-":
            raise UsageError("under torchrun every process reads the corpus itself, and only one has stdin",
                             hint="give --corpus a file")
        if per_text is not None:  # a link, a FIFO or an existing file without --resume: refused before any work
            cp.per_text.check_target(Path(per_text).expanduser(), resume)
        texts = list(cp.read_corpus(corpus, field, max_texts))  # all of it: a bad line fails before the model loads
        m = _load(model, device, dtype)
        shown = _CorpusProgress(len(range(group.rank if group else 0, len(texts), group.world if group else 1)))
        try:
            res = cp.corpus_scores(m, texts, names, layer, head, truncate, per_text, resume, shown, measure.value,
                                   seed, repeat, batch_tokens)
        finally:
            shown.close()
    except AttnscopeError as exc:
        if group is not None and not group.main:
            raise typer.Exit(exc.exit_code)  # every rank has it; rank 0 says it, once
        raise
    finally:
        distributed.finish()
    if res is None:  # not rank 0
        return
    res.source = "stdin" if corpus == "-" else corpus
    name = m.config.name or m.source
    if as_json:
        _print_json({"model": name, "measure": measure.value, **cp.corpus_dict(res)})
        return
    from attnscope.render.heads import head_scores as render_heads

    console = _console(no_color)
    render_heads(console, res, name, m.n_layers, m.n_heads, top, color=not no_color and console.color_system is not None)


class _CorpusProgress:
    """Texts/s, tokens/s and the ETA on stderr: a bar on a terminal, else a plain line
    every `total // 20` texts (so a log gets about twenty)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.every = max(1, total // 20)
        self.bar: Any = None

    def __call__(self, p: Any) -> None:
        eta = "?" if p.eta_s is None else f"{int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
        rates = f"{p.texts_per_s:,.1f} texts/s · {p.tokens_per_s:,.0f} tokens/s · ETA {eta}"
        if p.resumed:
            rates += f" · {p.resumed:,} resumed"
        if p.world > 1:
            rates += f" · rank 0's share of {p.world}"
        if self.console.is_terminal:
            if self.bar is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

                self.bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[rates]}"), console=self.console, transient=True)
                self.bar.start()
                self.bar.add_task("texts", total=p.total, rates=rates)
            self.bar.update(self.bar.task_ids[0], completed=p.done, rates=rates)
        elif p.done % self.every == 0 or p.done == p.total:
            self.console.print(f"{p.done:,}/{p.total:,} texts · {rates}", markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _heads_page(m: Any, res: Any, text: str, truncate: bool, measure: str, html: Path, force: bool) -> None:
    """`heads --html`: the text's attention over the scored layers and heads, from one pass
    through the library's `run_attend`, with the scores in the page's side panel and data."""
    from attnscope.measures import AttendRequest, run_attend
    from attnscope.render.page import Page

    tokens = res.tokens if res.tokens is not None else m.tokenize(text, truncate)
    scores = {name: [[None if v != v else float(v) for v in row] for row in grid.tolist()]
              for name, grid in res.scores.items()}
    page = Page(m.config.name or m.source, tokens, res.layers, res.heads, measure, None,
                (res.layers[-1], res.heads[0], len(tokens) - 1), scores=scores)
    page.check(html)
    req = AttendRequest(res.layers, res.heads, ["attention"], measure=measure, text=text)
    page.write(html, force, attention=run_attend(m, tokens, req).attention.probs)
