"""Rendering `attend SOURCE --target TARGET` on an encoder-decoder: one part's attention
(`seq2seq.PairView`) as the focus, topk, heatmap, overview or align view. Rows are the
decoder's inputs (its start token, then the target) for the cross and decoder parts, the
source for the encoder part; columns are the source for cross-attention."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnscope.render import clip, distinct, elide, ramp_style, shade
from attnscope.render.attend import head_name, weight_text
from attnscope.units import plural

if TYPE_CHECKING:
    from attnscope.seq2seq import PairView

PART_WORDS = {"cross": "cross-attention: rows = target, columns = source",
              "encoder": "encoder self-attention: source × source",
              "decoder": "decoder causal self-attention: target × target"}


def pair_header(console: Console, model: str, pv: "PairView") -> None:
    console.print(Text.assemble((model, "bold"), (f"  source {plural(len(pv.source), 'token')}, decoder reads "
                                                  f"{plural(len(pv.decoder), 'token')}", "dim")))
    others = "|".join(p for p in ("cross", "encoder", "decoder") if p != pv.part)
    console.print(Text(f"{PART_WORDS[pv.part]} (others: --part {others})", style="dim"))


def render_pair(console: Console, pv: "PairView", model: str, color: bool) -> None:
    pair_header(console, model, pv)
    if pv.measure != "weight":  # the values shown are the measure's, not the softmax weights
        from attnscope.measures.transforms import DESCRIPTIONS

        console.print(Text(f"measure: {DESCRIPTIONS[pv.measure]}", style="dim"))
    {"focus": _focus, "topk": _topk, "heatmap": _heatmap, "overview": _overview, "align": _align}[pv.view](
        console, pv, color)


def _focus(console: Console, pv: "PairView", color: bool) -> None:
    cols = distinct(pv.columns.labels)
    width = max(8, min(20, (console.width - 8) // max(1, pv.k) - 6))
    q = pv.query
    for li, layer in enumerate(pv.layers):
        title = f"What “{pv.rows.labels[q]}” (token {q}) attends to · layer {layer}"
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, box=None, padding=(0, 1),
                      min_width=min(console.width, len(title)))  # the title on one line where it fits
        table.add_column("head", justify="right", style="dim")
        for r in range(min(pv.k, len(pv.columns) if pv.part != "decoder" else q + 1)):
            table.add_column(f"#{r + 1}")
        for hi, head in enumerate(pv.heads):
            table.add_row(head_name(head, pv.measure),
                          *[weight_text(cols[j], w, color, width) for j, w in pv.top(li, hi, q)])
        console.print(table)


def _topk(console: Console, pv: "PairView", color: bool, max_rows: int = 40) -> None:
    cols = distinct(pv.columns.labels)
    n = len(pv.rows)
    for li, layer in enumerate(pv.layers):
        for hi, head in enumerate(pv.heads):
            table = Table(title=f"L{layer} {head_name(head, pv.measure)} · top {pv.k} keys per token",
                          title_justify="left",
                          show_edge=False, box=None, padding=(0, 1))
            table.add_column("#", justify="right", style="dim")
            table.add_column("token")
            table.add_column("attends to")
            for i in elide(n, max_rows):
                if i < 0:
                    table.add_row("…", f"({n - max_rows + 1} more)", "")
                    continue
                parts = Text()
                for j, w in pv.top(li, hi, i):
                    if parts:
                        parts.append("  ")
                    parts.append_text(weight_text(cols[j], w, color))
                table.add_row(str(i), clip(pv.rows.labels[i], 14), parts)
            console.print(table)


def _heatmap(console: Console, pv: "PairView", color: bool) -> None:
    n_rows, n_cols = len(pv.rows), len(pv.columns)
    label_w = min(12, max(len(t) for t in pv.rows.labels) + 1)
    room = max(8, console.width - label_w - 6)
    cell = 5 if n_cols * 5 <= room else 1
    cols = elide(n_cols, room // cell)
    rows = elide(n_rows, 40)
    for li, layer in enumerate(pv.layers):
        for hi, head in enumerate(pv.heads):
            console.print(Text(f"Layer {layer} · head {head}: row = {'target' if pv.part != 'encoder' else 'source'} "
                               f"token, column = {'source' if pv.part != 'decoder' else 'target'} token", style="bold"))
            idx = Text(" " * (label_w + 4))
            for j in cols:
                idx.append(("…" if j < 0 else str(j if cell > 1 else j % 10)).rjust(cell))
            console.print(idx, no_wrap=True, overflow="ellipsis")
            for i in rows:
                line = Text(f"{'' if i < 0 else i:>3} " + ("…" if i < 0 else clip(pv.rows.labels[i], label_w)).ljust(label_w))
                for j in cols:
                    if i < 0 or j < 0:
                        line.append("…".rjust(cell))
                        continue
                    w = float(pv.patterns[li, hi, i, j])
                    text = "·".rjust(cell) if w == 0 else (f"{w:{cell}.2f}" if cell > 1 else (shade(w).strip() or "."))
                    line.append(text, style=ramp_style(w) if color and w != 0 else "")
                console.print(line, no_wrap=True, overflow="ellipsis")
    legend = "attention weight" if cell > 1 else f"shade {shade(0.25)} {shade(0.5)} {shade(0.75)} {shade(1.0)} = weight about 0.25 0.5 0.75 1, . = under 1/8"
    console.print(Text(f"cells: {legend}; · = exactly 0 (masked); … = rows or columns left out", style="dim"))


def _overview(console: Console, pv: "PairView", color: bool) -> None:
    cols = distinct(pv.columns.labels)
    q = pv.query
    title = f"Where “{pv.rows.labels[q]}” (token {q}) looks most, per layer and head"
    table = Table(title=title, title_justify="left", show_edge=False, box=None, padding=(0, 0, 0, 1),
                  min_width=min(console.width, len(title)))
    table.add_column("", style="dim")
    for head in pv.heads:
        table.add_column(head_name(head, pv.measure))
    for li, layer in enumerate(pv.layers):
        table.add_row(f"L{layer}", *[weight_text(cols[pv.top(li, hi, q)[0][0]], pv.top(li, hi, q)[0][1], color, 8)
                                     for hi in range(len(pv.heads))])
    console.print(table)


def _align(console: Console, pv: "PairView", color: bool) -> None:
    cols = distinct(pv.columns.labels)
    layers = f"layers {pv.layers[0]}-{pv.layers[-1]}" if len(pv.layers) > 1 else f"layer {pv.layers[0]}"
    title = "Alignment: each target token's best source token"
    table = Table(title=title, title_justify="left", show_edge=False, box=None, padding=(0, 1),
                  min_width=min(console.width, len(title)),
                  caption=f"cross-attention averaged over {layers}, {plural(len(pv.heads), 'head')}",
                  caption_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("target")
    table.add_column("source")
    table.add_column("weight", justify="right")
    for i, (j, w) in enumerate(pv.alignment()):
        table.add_row(str(i), clip(pv.rows.labels[i], 16), clip(cols[j], 20),
                      Text(f"{w:.2f}", style=ramp_style(w) if color else ""))
    console.print(table)


def three_masks(console: Console, source: list[str], target: list[str], color: bool, most: int = 10) -> None:
    """mask-demo on an encoder-decoder: its three masks side by side, compact (■ visible,
    · masked), the first `most` tokens of each side."""
    from rich.columns import Columns

    from attnscope.seq2seq import three_masks as masks

    src, tgt = source[:most], target[:most]
    grids = masks(len(src), len(tgt))
    panels = []
    for name, rows, labels, title in (("encoder", grids["encoder"], src, "encoder: all"),
                                      ("decoder", grids["decoder"], tgt, "decoder: causal"),
                                      ("cross", grids["cross"], tgt, "cross: whole source")):
        text = Text(title + "\n", style="bold")
        for label, row in zip(labels, rows):
            text.append(clip(label, 8).ljust(9))
            for seen in row:
                text.append("■" if seen else "·", style=("green" if seen else "grey50") if color else "")
            text.append("\n")
        panels.append(text)
    console.print(Text("An encoder-decoder's three masks (■ visible, · masked):", style="bold"))
    console.print(Columns(panels, padding=(0, 3)))
