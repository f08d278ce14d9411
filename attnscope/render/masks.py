"""Draw `mask-demo`: each step as a compact matrix with a caption, within 80 columns.

Scores show one decimal and probabilities two, so a 13-token text fits an 80-column
terminal whole; longer texts keep their first and last tokens around a visible '…' row
and column (the diagonal stays in view) instead of wrapping. Column labels alternate
between two header lines, so each may run over its right-hand neighbour's cell.
Without colour the marks alone carry the meaning: `−∞` is a masked score, `·` an exact
zero, and Σ each row's sum. All steps share one layout, so they line up on screen. A
head with a learned sink (gpt-oss) gets a `sink` column before Σ, which counts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.text import Text

from attnscope.units import plural
from attnscope.render import clip, elide, ramp_style

if TYPE_CHECKING:
    from attnscope.masks import MaskDemo, Step

MINUS_INF = "−∞"  # U+2212, as printed in books
ZERO = "·"
GAP = " "
LABEL_MAX = 10
LABEL_MIN = 5
MAX_SHOWN = 20  # tokens per side before eliding, however wide the terminal
SUM_HEADER = "Σ"
SINK_HEADER = "sink"


@dataclass
class Layout:
    label_w: int
    cell_w: int
    shown: list[int]  # token indices, -1 for the '…' gap


def cell(value: float, probabilities: bool) -> str:
    if probabilities:
        return ZERO if value == 0 else f"{value:.2f}"
    return MINUS_INF if value == -math.inf else f"{value:.1f}"


def step_cell(value: float, step: "Step") -> str:
    """A cell as its step shows it: a linear layer's signed weights with their sign."""
    if step.signed:
        return ZERO if value == 0 else f"{value:+.2f}"
    return cell(value, step.probabilities)


def layout(demo: "MaskDemo", width: int) -> Layout:
    """One layout for every step: the widest cell, the longest label that fits, and
    as many tokens as fit (all of them if possible)."""
    cell_w = max(4, *(len(step_cell(v, s)) for s in demo.steps
                      for v in s.matrix.flatten().tolist() + (s.sink.tolist() if s.sink is not None else [])))
    n_tokens = len(demo.labels)
    slot = len(GAP) + cell_w

    extra = slot * (2 if demo.sink is not None else 1)  # the Σ column, and the sink's

    def total(label_w: int, columns: int) -> int:
        return label_w + columns * slot + extra

    natural = min(LABEL_MAX, max(LABEL_MIN, *(len(t) for t in demo.labels)))
    # Shorter row labels are worth it only if every token then fits; when some must be
    # elided anyway, keep the labels readable and drop one more column instead.
    label_w = natural
    while label_w > LABEL_MIN and total(label_w, n_tokens) > width:
        label_w -= 1
    if total(label_w, n_tokens) > width or n_tokens > MAX_SHOWN:
        label_w = min(natural, 8)
    fit = min(n_tokens, MAX_SHOWN)
    while fit > 3 and total(label_w, fit) > width:
        fit -= 1
    return Layout(label_w, cell_w, elide(n_tokens, fit))


def _style(value: float, probabilities: bool, color: bool) -> str:
    if not color:
        return ""
    if probabilities:
        return "dim" if value == 0 else ramp_style(value)
    return "red" if value == -math.inf else ""


def _header(demo: "MaskDemo", lay: Layout, sums: bool, color: bool) -> list[Text]:
    """Two lines of column labels, alternating, each label starting at its column."""
    slot = len(GAP) + lay.cell_w
    room = 2 * slot - 1
    corner = ("keys →", "query ↓") if lay.label_w >= 7 else ("keys", "")
    lines = [Text().append(c.ljust(lay.label_w)[: lay.label_w], style="dim" if color else "") for c in corner]
    for pos, j in enumerate(lay.shown):
        line = lines[pos % 2]
        start = lay.label_w + pos * slot + len(GAP)
        line.append(" " * (start - len(line)))
        label = "…" if j < 0 else clip(demo.labels[j], room)
        padded = j >= 0 and j >= len(demo.labels) - demo.n_pad
        line.append(label, style=("dim" if padded else "bold") if color else "")
    extra = ([SINK_HEADER] if demo.sink is not None else []) + ([SUM_HEADER] if sums else [])
    for k, name in enumerate(extra):
        start = lay.label_w + (len(lay.shown) + k) * slot + len(GAP)
        line = lines[(len(lay.shown) + k) % 2]
        line.append(" " * (start - len(line)) + name.rjust(lay.cell_w), style="dim" if color else "")
    return lines


def matrix_lines(demo: "MaskDemo", step: "Step", lay: Layout, color: bool) -> list[Text]:
    lines = _header(demo, lay, step.probabilities or step.signed, color)
    m = step.matrix  # (T, T)
    sums = m.sum(-1) if step.probabilities or step.signed else None  # (T,): a signed row's sum is not 1
    if sums is not None and step.sink is not None:
        sums = sums + step.sink  # the sink column takes its share of each row's 1
    n_real = len(demo.labels) - demo.n_pad
    for i in lay.shown:
        if i < 0:
            line = Text().append("…".ljust(lay.label_w), style="dim" if color else "")
            for _ in lay.shown:
                line.append(GAP + "…".rjust(lay.cell_w), style="dim" if color else "")
            lines.append(line)
            continue
        label = clip(demo.labels[i], lay.label_w).ljust(lay.label_w)
        line = Text().append(label, style=("dim" if i >= n_real else "bold") if color else "")
        for j in lay.shown:
            if j < 0:
                line.append(GAP + "…".rjust(lay.cell_w), style="dim" if color else "")
                continue
            v = float(m[i, j])
            line.append(GAP)
            style = (("dim" if v == 0 else "blue" if v > 0 else "red") if color else "") if step.signed \
                else _style(v, step.probabilities, color)  # signed: a diverging pair, the sign also printed
            line.append(step_cell(v, step).rjust(lay.cell_w), style=style)
        if step.sink is not None:
            v = float(step.sink[i])
            line.append(GAP + cell(v, step.probabilities).rjust(lay.cell_w),
                        style=(_style(v, True, color) if step.probabilities else "dim") if color else "")
        if sums is not None:
            line.append(GAP + f"{float(sums[i]):.2f}".rjust(lay.cell_w), style="green" if color else "")
        lines.append(line)
    return lines


def title(console: Console, demo: "MaskDemo", color: bool) -> None:
    from attnscope.masks import model_note

    window = f" (W = {demo.window})" if demo.window else ""
    if demo.kind == "local" and demo.window:  # both sides: named by its reach, as the layer's kind is
        window = f" (±{demo.window - 1})"
    dim = "dim" if color else ""
    console.print(Text.assemble(
        (demo.model, "bold" if color else ""),
        f" · layer {demo.layer}, head {demo.head} · {demo.kind} mask{window} · {plural(len(demo.labels), 'token')}",
    ))
    if demo.text:
        console.print(Text(f"text: {demo.text}", style=dim))
    if demo.layer_kind:
        shown = "its own mask is shown" if demo.own_mask else f"the {demo.kind} mask shown is not its own"
        console.print(Text(f"layer {demo.layer}: {demo.layer_kind} · {shown}", style=dim))
    if demo.auto_head:
        console.print(Text(f"head {demo.head}: the one leaning most on later keys (pick another with --head)", style=dim))
    console.print(Text(model_note(demo), style=dim))
    console.print(Text(f"{MINUS_INF} masked score   {ZERO} exactly 0   {SUM_HEADER} row sum   row = query, column = key",
                       style=dim))


def mask_demo(console: Console, demo: "MaskDemo", steps: Sequence[int] | None = None, color: bool = True) -> None:
    """Print the demo: a title, then each chosen step (0-based) with its caption and matrix."""
    color = color and not console.no_color
    lay = layout(demo, console.width)
    chosen = list(range(len(demo.steps))) if steps is None else list(steps)
    title(console, demo, color)
    if -1 in lay.shown:
        first = lay.shown.index(-1)
        last = len(lay.shown) - first - 1
        console.print(Text(f"{len(demo.labels)} tokens are too many for {console.width} columns: showing the first "
                           f"{first} and last {last}, with … for the rest", style="yellow" if color else ""))
    for i in chosen:
        step = demo.steps[i]
        console.print()
        console.print(Text(f"Step {i + 1}/{len(demo.steps)} · {step.title}", style="bold" if color else ""))
        console.print(Text(step.caption, style="italic" if color else ""))
        for line in matrix_lines(demo, step, lay, color):
            console.print(line, no_wrap=True, overflow="crop")
