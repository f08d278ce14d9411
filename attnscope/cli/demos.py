"""`attnscope mask-demo` and `attnscope heads`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from attnscope.cli._app import (
    Device, DeviceOpt, HeadOpt, JsonOpt, LayerOpt, LoadDtype, LoadDtypeOpt, MeasureName, MeasureOpt, ModelOpt,
    NoColorOpt, TruncateOpt,
    _console, _load, _print_json, app,
)

from enum import Enum


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
    truncate: TruncateOpt = False,
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
    demo = masks.demo_for(inspector, text if text is not None else masks.DEFAULT_TEXT, layer, head, kind.value, window,
                          truncate)
    steps = None if step is None else [step - 1]
    if as_json:
        _print_json(masks.to_dict(demo, steps))
        return
    from dataclasses import replace

    from attnscope.render.masks import mask_demo as render
    from attnscope.tokenize import visible

    shown = visible(demo.text)  # the user's text, printed: no control character reaches the terminal
    if demo.truncated_from:
        shown += f" (cut from {demo.truncated_from} tokens by --truncate)"
    console = _console(no_color)
    render(console, replace(demo, text=shown), steps, color=not no_color and console.color_system is not None)


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
    measure: MeasureOpt = MeasureName.weight,
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
    res = hd.head_scores(m, text if text is not None else hd.DEFAULT_TEXT, names, layer, head, seed, repeat, truncate,
                         measure.value)
    name = m.config.name or m.source
    if as_json:
        _print_json({"model": name, "measure": measure.value, **hd.scores_dict(res)})
        return
    from attnscope.render.heads import head_scores as render_heads

    console = _console(no_color)
    render_heads(console, res, name, m.n_layers, m.n_heads, top, color=not no_color and console.color_system is not None)
