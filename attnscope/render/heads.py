"""The view for `heads`: one layers x heads grid per score, then its strongest heads.

Sized for an 80-column terminal: up to 15 heads take 5 columns each ("0.97"); more heads
show hundredths in 4 columns ("  97") and, if they still do not fit, split into blocks
of heads one above the other, so a 32-head model stays readable without wrapping. Every
cell shows its number; colour (the shared RAMP) only helps the eye.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from attnscope.render import RAMP, ramp_style
from attnscope.units import plural

if TYPE_CHECKING:
    from attnscope.heads import HeadScores

LABEL_W = 5  # "L31 " plus a space

# Each score is a mean weight, so each reading says so (not "of the time").
READINGS = {
    "previous_token": "attends to the previous token: {v:.2f} of its weight on average",
    "first_token": "attends to the first token{first}: {v:.2f} of its weight on average",
    "self": "attends to its own token: {v:.2f} of its weight on average",
    "next_token": "attends to the next token: {v:.2f} of its weight on average",
    "duplicate_token": "attends to earlier copies of the current token: {v:.2f} of its weight on average",
    "induction": "attends to what followed this token last time: {v:.2f} of its weight on average",
    "entropy": "spreads its attention broadly: entropy {v:.2f} of uniform",
    "sink": "gives its learned sink {v:.2f} of its weight on average",
}
# Below this, no head is called a head of that kind: the ranking says there is none.
NOTABLE = 0.1
TITLES = {
    "previous_token": "Previous-token heads",
    "first_token": "First-token heads (attention sinks)",
    "self": "Self heads",
    "next_token": "Next-token heads",
    "duplicate_token": "Duplicate-token heads",
    "induction": "Induction heads",
    "entropy": "Entropy",
    "sink": "Sink heads (learned sinks)",
}


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def header(console: Console, model: str, res: "HeadScores", n_layers: int, n_heads: int) -> None:
    console.print(Text.assemble((model, "bold"), (f"  {plural(n_layers, 'layer')} × {plural(n_heads, 'head')}", "dim")))
    if res.tokens is not None:
        shown = _clip(" ".join(res.tokens.labels), max(20, console.width - 24))
        line = Text(f"text: {plural(res.n_tokens, 'token')}  ", style="dim") + Text(shown)
        if res.tokens.truncated_from:
            line.append(f" (cut from {res.tokens.truncated_from} by --truncate)", style="yellow")
        console.print(line, no_wrap=True, overflow="ellipsis")
    kinds = getattr(res, "layer_kinds", None)
    if kinds:  # the model's layers differ in kind: which selected layers are which
        by_kind: dict[str, list[int]] = {}
        for layer, words in kinds.items():
            by_kind.setdefault(words, []).append(layer)
        shown = " · ".join(f"{words}: layer{'s' if len(ls) > 1 else ''} " + ", ".join(map(str, ls[:8]))
                           + (", …" if len(ls) > 8 else "") for words, ls in by_kind.items())
        console.print(Text(f"layer kinds: {shown}", style="dim"), no_wrap=True, overflow="ellipsis")
    signed = getattr(res, "signed", [])
    if signed:  # a linear layer's hidden attention: its scores are means of signed entries
        console.print(Text(f"layer{'s' if len(signed) > 1 else ''} {', '.join(map(str, signed[:8]))}"
                           f"{', …' if len(signed) > 8 else ''}: hidden attention M, signed, rows not summing to 1; "
                           "a score there is a mean of M's entries, not a share of weight", style="dim"))
    n_texts = getattr(res, "n_texts", 0)  # attnscope.corpus.CorpusScores
    if n_texts:
        from attnscope.tokenize import visible

        notes = [f"{res.resumed:,} from --per-text" if res.resumed else "",
                 f"{res.truncated:,} cut by --truncate" if res.truncated else "",
                 f"{res.world} processes" if res.world > 1 else ""]
        extra = ", ".join(note for note in notes if note)
        source = visible(res.source)
        source = source if len(source) <= 40 else "…" + source[-39:]  # the file's name, at least
        line = Text("corpus: ", style="dim") + Text(source) + Text(
            f"  {plural(n_texts, 'text')} · {plural(res.n_tokens, 'token')}" + (f" ({extra})" if extra else ""), style="dim")
        console.print(line, no_wrap=True, overflow="ellipsis")
        console.print(Text("each score pooled over every row of every text (a long text weighs more)", style="dim"))
    if res.induction_ids is not None:
        affix = f"{len(res.prefix)} special + " if res.prefix else ""
        tail = f" + {len(res.suffix)} special" if res.suffix else ""
        console.print(Text(f"induction: {affix}{plural(res.repeat, 'random token')} × 2{tail} (seed {res.seed})", style="dim"))


def legend(console: Console, color: bool) -> None:
    if not color:
        return
    line = Text("colour: 0 ", style="dim")
    for name in RAMP:
        line.append("██", style=name)
    line.append(" 1", style="dim")
    console.print(line)


def _layout(n_heads: int, width: int, wide: int = 0) -> tuple[int, int]:
    """(cell width, heads per block): 5-wide decimals when they fit, else 4-wide hundredths
    (`wide`: one column more each, for a sign)."""
    room = max(20, width - LABEL_W)
    if n_heads * (5 + wide) <= room:
        return 5 + wide, n_heads
    fit = max(1, room // (4 + wide))
    blocks = -(-n_heads // fit)
    return 4 + wide, -(-n_heads // blocks)  # blocks of equal size: 16 + 16, not 19 + 13


def grid(console: Console, res: "HeadScores", name: str, color: bool) -> None:
    values = res.scores[name]  # (L_sel, H_sel)
    # a signed layer's means may fall below 0: one more column, so "-0.01" never touches its neighbour
    wide = int(bool((values < 0).any()))
    cell, per_block = _layout(len(res.heads), console.width, wide)
    for first in range(0, len(res.heads), per_block):
        cols = list(range(first, min(len(res.heads), first + per_block)))
        top = Text(" " * LABEL_W, style="dim")
        for hi in cols:
            top.append(f"H{res.heads[hi]}".rjust(cell), style="dim")
        console.print(top, no_wrap=True, overflow="ellipsis")
        for li, layer in enumerate(res.layers):
            line = Text(f"L{layer}".ljust(LABEL_W), style="dim")
            for hi in cols:
                v = float(values[li, hi])
                if v != v:  # NaN: no value on this layer (`HeadScores.partly`)
                    line.append("—".rjust(cell), style="dim")
                    continue
                body = f"{v:{cell}.2f}" if cell >= 5 + wide else f"{round(v * 100):{cell}d}"
                line.append(body, style=ramp_style(v) if color else "")
            console.print(line, no_wrap=True, overflow="ellipsis")
    if cell == 4 + wide:
        console.print(Text("cells: hundredths (97 = 0.97)", style="dim"))


def ranking(console: Console, res: "HeadScores", name: str, top: int, color: bool) -> None:
    first = ""
    if res.tokens is not None:
        first = f" ({res.tokens.labels[0]})"
    ranked = res.ranked(name, top)
    if name != "entropy" and ranked and ranked[0][2] < NOTABLE:
        console.print(Text(f"  no head here scores {NOTABLE:.2f} or more; the strongest:", style="dim"))
        ranked = ranked[:1]
    for layer, head, v in ranked:
        reading = READINGS[name].format(v=v, first=first)
        line = Text("  ") + Text(f"L{layer}H{head}".ljust(8), style=ramp_style(v) if color else "bold")
        console.print(line + Text(reading))


def head_scores(console: Console, res: "HeadScores", model: str, n_layers: int, n_heads: int,
                top: int = 3, color: bool = True) -> None:
    """The whole view: header, then per score its definition, grid and strongest heads."""
    from attnscope.heads import ALL_SCORES, DEFINITIONS

    header(console, model, res, n_layers, n_heads)
    legend(console, color)
    for name in ALL_SCORES:
        if name in res.undefined:
            console.print()
            console.print(Text.assemble((TITLES[name], "bold"), (f"  {name}", "dim")))
            console.print(Text(f"not defined here: {res.undefined[name]}", style="dim"))
            continue
        if name not in res.scores:
            continue
        console.print()
        console.print(Text.assemble((TITLES[name], "bold"), (f"  {name}", "dim")))
        console.print(Text(DEFINITIONS[name], style="dim"))
        partly = getattr(res, "partly", {}).get(name)
        if partly:
            console.print(Text(f"— = not defined there: {partly}", style="dim"))
        grid(console, res, name, color)
        if top > 0:
            ranking(console, res, name, top, color)
    if getattr(res, "expert_counts", None) is not None:
        expert_load(console, res, color)


_MANY_EXPERTS = 32  # more experts than this: each layer's busiest and idlest only (--json has all)
_EACH_END = 5


def expert_load(console: Console, res: "HeadScores", color: bool) -> None:
    """Per MoE layer, each expert's share of the (token, choice) pairs and how uneven the
    shares are: max/min and the coefficient of variation (0 = even). A layer where an
    expert got under half an even share (a starved expert) is yellow."""
    from attnscope.routing import spread

    counts = res.expert_counts
    assert counts is not None  # internal invariant: called for a model with experts
    n_experts = counts.shape[1]
    over = "every text" if getattr(res, "n_texts", 0) else "the text"
    console.print()
    console.print(Text.assemble(("Expert load", "bold"), ("  expert_load", "dim")))
    console.print(Text(f"each expert's share of a layer's (token, choice) pairs over {over}: every token goes to "
                       f"{res.top_k} of {n_experts} experts, so an even share is {100 / n_experts:.1f}%", style="dim"))
    if not res.moe_layers:
        console.print(Text("no selected layer has experts", style="dim"))
        return
    shares = res.expert_load()  # (MoE layers, E)
    for li, (layer, stats) in enumerate(zip(res.moe_layers, spread(counts))):
        row = shares[li].tolist()
        ratio = "∞" if stats["min_share"] == 0 else f"{stats['max_share'] / stats['min_share']:.1f}"
        busiest = max(range(n_experts), key=lambda e: (row[e], -e))
        uneven = stats["min_share"] * n_experts < 0.5
        line = Text(f"L{layer}".ljust(LABEL_W), style="dim") + Text(
            f"max/min {ratio} · CV {stats['cv']:.2f} · busiest E{busiest}: "
            f"{stats['max_share'] * n_experts:.2f}× an even share", style="yellow" if uneven else "")
        console.print(line)
        top = max(stats["max_share"], 1e-12)
        order = list(range(n_experts))
        if n_experts > _MANY_EXPERTS:
            ranked = sorted(order, key=lambda e: (-row[e], e))
            cells = [(e, "") for e in ranked[:_EACH_END]] + [(-1, "…")] + [(e, "") for e in ranked[-_EACH_END:]]
        else:
            cells = [(e, "") for e in order]
        body = Text(" " * LABEL_W)
        for e, mark in cells:
            piece = mark.ljust(4) if e < 0 else f"E{e} {100 * row[e]:4.1f}%"
            if body.cell_len + len(piece) > console.width and body.cell_len > LABEL_W:
                body.rstrip()
                console.print(body, no_wrap=True, overflow="ellipsis")
                body = Text(" " * LABEL_W)
            body.append(piece, style=ramp_style(row[e] / top) if color and e >= 0 else "")
            body.append("  ")
        body.rstrip()
        console.print(body, no_wrap=True, overflow="ellipsis")
