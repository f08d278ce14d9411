"""Views for `attend`: focus (one token, every head), top-k, heatmap, overview.

Designed for an 80×24 terminal first: the default focus view answers "which words does
'creature' draw on, in each head?" in one screen, and the others degrade by eliding
(first and last tokens with a visible '…') rather than wrapping.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnscope.render import clip, distinct, diverging_style, elide, ramp_style, shade
from attnscope.units import plural

if TYPE_CHECKING:
    from attnscope.analysis import AttendResult, Attention, Focus, Summary, TopK
    from attnscope.tokenize import Tokens


def clip_label(label: str, width: int) -> str:
    """`clip`, keeping a repeated token's position suffix whole: '␣wint…@412', never
    '␣winter@4…', which names another position."""
    word, at, pos = label.rpartition("@")
    if not at or not word or not pos.isdigit() or len(label) <= width:
        return clip(label, width)
    return clip(word, max(2, width - len(pos) - 1)) + "@" + pos


def weight_text(label: str, weight: float, color: bool, width: int = 10, scale: float | None = None) -> Text:
    """A key and its weight; given `scale` (a signed layer's largest |weight| in view), the
    weight with its sign, on the diverging scale."""
    if scale is not None:
        return Text(f"{clip_label(label, width)} {weight:+.3f}", style=diverging_style(weight, scale) if color else "")
    body = f"{clip_label(label, width)} {weight:.2f}"
    return Text(body, style=ramp_style(weight) if color else "")


SIGNED = "signed, rows do not sum to 1"


def signed_title(layer: int, kinds: dict[int, str]) -> str:
    """What a signed layer's title adds: its kind, and that its numbers are signed (the
    header line says the rest once)."""
    return f" · {kinds.get(layer, 'not row-stochastic')}, signed"


# The measures with one matrix a layer (no heads), by the name a row or title gives it.
LAYER_MEASURES = {"rollout": "rollout", "alti": "ALTI", "value-zeroing": "value zeroing"}


def head_name(head: int, measure: str) -> str:
    """A row or column of heads: 'H3'; under rollout (ALTI, value zeroing) the one matrix
    is the layer's."""
    return LAYER_MEASURES.get(measure, f"H{head}")


def _has_specials(tokens: "Tokens") -> bool:
    """Whether the focus view shows a specials column: the text has both kinds of token."""
    return any(tokens.special) and not all(tokens.special)


def header(console: Console, model: str, tokens: "Tokens", note: str = "") -> None:
    line = Text.assemble((f"{model}", "bold"), (f"  {plural(len(tokens), 'token')}", "dim"))
    if tokens.truncated_from:
        line.append(f" (cut from {tokens.truncated_from} by --truncate)", style="yellow")
    console.print(line)
    if note:
        console.print(Text(note, style="dim"))


def focus_view(console: Console, focus: "Focus", k: int, color: bool, measure: str = "weight",
               kinds: dict[int, str] | None = None) -> None:
    """Rank the text's own tokens; the weight on special tokens ([CLS], <s>, ...), often
    a resting place rather than meaning, gets its own column, and so does a sink's
    (gpt-oss's extra softmax column, which is no token): specials = both. On a signed
    layer (`focus.signed`: a linear layer's hidden attention) keys are ranked by |weight|,
    shown with their sign, and specials is the plain sum of their signed weights."""
    import torch

    tokens = focus.tokens
    assert tokens is not None
    q = focus.query
    special = torch.tensor(tokens.special, dtype=torch.bool)
    words = (~special).nonzero().flatten()
    ranked = words if words.numel() else torch.arange(len(tokens))
    show_special = _has_specials(tokens) or focus.sink is not None
    names = distinct(tokens.labels)
    shown = min(k, ranked.numel())
    # a label as wide as the terminal allows: each cell is the label and " 0.00", the head
    # column and the specials column take their own
    room = console.width - 8 - (10 if show_special else 0)
    width = max(8, min(24, room // max(1, shown) - 6))
    of = f" (its {LAYER_MEASURES[measure]})" if measure in LAYER_MEASURES else ""
    for li, layer in enumerate(focus.layers):
        signed = layer in focus.signed
        title = f"What “{tokens.labels[q]}” (token {q}) attends to · layer {layer}{of}"
        if signed:
            title += signed_title(layer, kinds or {}) + ", by |weight|"
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, box=None, padding=(0, 1),
                      min_width=min(console.width, len(title)))  # the title on one line where it fits
        table.add_column(LAYER_MEASURES.get(measure, "head"), justify="right", style="dim")
        for r in range(shown):
            table.add_column(f"#{r + 1}")
        if show_special:
            table.add_column("specials", justify="right", style="dim")
        for hi, head in enumerate(focus.heads):
            row = focus.weights[li, hi]  # (T,)
            if bool(row.isnan().all()):  # a head this layer lacks (layers of different head counts): no row
                continue
            scale = float(row.abs().max()) if signed else None
            if signed:
                _, pos = row[ranked].abs().topk(shown)
                w = row[ranked][pos]
            else:
                w, pos = row[ranked].topk(shown)
            cells = [weight_text(names[int(ranked[p])], float(x), color, width, scale)
                     for x, p in zip(w.tolist(), pos.tolist())]
            if show_special:
                rest = float(focus.sink[li, hi]) if focus.sink is not None else 0.0  # the sink's own share
                total = float(row[special].sum()) + rest
                cells.append(Text(f"{total:+.3f}" if signed else f"{total:.2f}"))
            table.add_row("all heads" if measure in LAYER_MEASURES else f"H{head}", *cells)
        console.print(table)


def topk_view(console: Console, topk: "TopK", color: bool, max_rows: int = 40, measure: str = "weight",
              kinds: dict[int, str] | None = None) -> None:
    tokens = topk.tokens
    assert tokens is not None
    n = len(tokens)
    rows = list(range(n)) if n <= max_rows else list(range(max_rows // 2)) + [-1] + list(range(n - max_rows // 2, n))
    names = distinct(tokens.labels)
    for li, layer in enumerate(topk.layers):
        for hi, head in enumerate(topk.heads):
            signed = layer in topk.signed
            ranked_by = f"{signed_title(layer, kinds or {})}, by |weight|" if signed else ""
            scale = float(topk.weights[li, hi].abs().max()) if signed else None
            table = Table(title=f"L{layer} {head_name(head, measure)} · top {topk.indices.shape[-1]} keys per token "
                                f"(those it can see){ranked_by}",
                          title_justify="left", show_edge=False, box=None, padding=(0, 1))
            table.add_column("#", justify="right", style="dim")
            table.add_column("token")
            table.add_column("attends to")
            for i in rows:
                if i < 0:
                    table.add_row("…", f"({n - max_rows} more)", "")
                    continue
                parts = Text()
                for j, w in topk.rows(li, hi, i):
                    if parts:
                        parts.append("  ")
                    parts.append_text(weight_text(names[j], w, color, scale=scale))
                table.add_row(str(i), clip(tokens.labels[i], 14), parts)
            console.print(table)


def heatmap_view(console: Console, att: "Attention", color: bool, width: int, measure: str = "weight",
                 kinds: dict[int, str] | None = None) -> None:
    """A signed layer's matrix (`att.signed`) is drawn on a diverging scale: blue below
    0, red above, each cell's sign printed (one column wider), its scale the matrix's
    largest |value|."""
    tokens = att.tokens
    assert tokens is not None
    n = len(tokens)
    label_w = min(12, max(len(t) for t in tokens.labels) + 1)
    room = max(8, width - label_w - 6)
    rows = elide(n, 40)
    for li, layer in enumerate(att.layers):
        signed = layer in att.signed
        # Every numeric cell starts with a space, so neighbours never touch ("0 100", not
        # "0100"); a signed cell has room for its sign too (" -0.12").
        wide = 6 if signed else 5
        cell = wide if n * wide <= room else (wide - 1 if n * (wide - 1) <= room else 1)
        cols = elide(n, room // cell)
        elided = "; … = rows or columns left out" if len(cols) < n or len(rows) < n else ""
        digits = "; the header shows each key index's last digit" if cell == 1 else ""
        for hi, head in enumerate(att.heads):
            pattern = att.probs[li, hi]  # (T, T)
            scale = float(pattern.abs().max()) if signed else 1.0
            # a hidden attention's entries are often far below 1 (|M| ≤ β|q||k| with q
            # scaled by 1/√d_k): its cells show M × 10^e, the largest at least 1
            factor = 10 ** max(0, -math.floor(math.log10(scale))) if signed and scale > 0 else 1
            what = LAYER_MEASURES.get(measure, f"head {head}")
            kind = signed_title(layer, kinds or {}) if signed else ""
            console.print(Text(f"Layer {layer} · {what}{kind}: row = query token, column = key token", style="bold"))
            idx_line = Text(" " * (label_w + 4))
            for j in cols:
                idx_line.append(("…" if j < 0 else str(j if cell > 1 else j % 10)).rjust(cell))
            console.print(idx_line, no_wrap=True, overflow="ellipsis")
            for i in rows:
                label = "…" if i < 0 else clip(tokens.labels[i], label_w)
                line = Text(f"{'' if i < 0 else i:>3} " + label.ljust(label_w))
                for j in cols:
                    if i < 0 or j < 0:
                        line.append("…".rjust(cell))
                        continue
                    w = float(pattern[i, j])
                    style = (diverging_style(w, scale) if signed else ramp_style(w)) if color and w != 0 else ""
                    line.append(_cell(w * factor, cell, signed, scale * factor), style=style)
                console.print(line, no_wrap=True, overflow="ellipsis")
            console.print(Text(f"cells: {_legend(cell, signed, scale, color, factor)}; · = exactly 0 (masked){elided}"
                               f"{digits}", style="dim"))


def _cell(w: float, cell: int, signed: bool, scale: float) -> str:
    """One heatmap cell of `cell` columns: the weight, its hundredths, or a shade."""
    if w == 0:
        return "·".rjust(cell)
    if cell > 4 + signed:
        return f"{w:{cell}.2f}"
    if cell > 1:
        return f"{round(w * 100):{cell}d}"
    if signed:  # one column: the sign where |w| is at least 1/8 of the scale, else a dot
        return ("+" if w > 0 else "-") if abs(w) >= scale / 8 else "."
    return shade(w) if shade(w) != " " else "."


def _legend(cell: int, signed: bool, scale: float, color: bool, factor: int = 1) -> str:
    if not signed:
        return {5: "attention weight", 4: "attention weight in %",
                1: f"shade {shade(0.25)} {shade(0.5)} {shade(0.75)} {shade(1.0)} = weight about 0.25 0.5 0.75 1, "
                   ". = above 0 but under 1/8"}[cell]
    times = f" × {factor:,}" if factor > 1 else ""
    what = {6: f"signed weight{times}", 5: f"signed weight{times} in hundredths"}.get(
        cell, "+ / - = sign of a weight of |weight| at least 1/8 of the largest, . = smaller")
    scale_words = f"; colour: blue below 0, red above, brighter up to ±{scale:.2f} (the largest |weight|)" if color else ""
    return what + scale_words


def overview_view(console: Console, summary: "Summary", focus: "Focus | None", color: bool) -> None:
    table = Table(title="Entropy per head (0 = one key, 1 = uniform)",
                  title_justify="left", show_edge=False, box=None, padding=(0, 0, 0, 1))
    table.add_column("", style="dim")
    for head in summary.heads:
        table.add_column(f"H{head}", justify="right")
    for li, layer in enumerate(summary.layers):
        cells = []
        for hi in range(len(summary.heads)):
            v = float(summary.entropy[li, hi])
            if float(summary.first_token[li, hi]) != float(summary.first_token[li, hi]):  # NaN: no such head here
                cells.append(Text("·", style="dim"))
                continue
            if v != v:  # NaN: a signed layer's rows are no distributions
                cells.append(Text("—", style="dim"))
                continue
            cells.append(Text(f"{v:.2f}", style=ramp_style(1 - v) if color else ""))
        table.add_row(f"L{layer} ", *cells)
    console.print(table)
    if bool(summary.first_token.isnan().any()):
        console.print(Text("· = the layer has no such head (its layers differ in head count)", style="dim"))
    if summary.signed & set(summary.layers):
        shown = ", ".join(str(layer) for layer in summary.layers if layer in summary.signed)
        console.print(Text(f"— = not defined: the rows of layer{'s' if ',' in shown else ''} {shown} are signed and do "
                           "not sum to 1 (hidden attention)", style="dim"))
    if focus is not None and focus.tokens is not None:
        tokens = focus.tokens
        words = [i for i, sp in enumerate(tokens.special) if not sp] or list(range(len(tokens)))
        names = distinct(tokens.labels)
        # as wide as the terminal allows: the row label takes 5 columns, each head a space
        fit = max(4, min(14, (console.width - 5) // max(1, len(focus.heads)) - 1))
        table = Table(title=f"The word “{tokens.labels[focus.query]}” looks at most, per head",
                      title_justify="left", show_edge=False, box=None, padding=(0, 0))
        table.add_column("", style="dim")
        for head in focus.heads:
            table.add_column(f"H{head}", justify="right")
        for li, layer in enumerate(focus.layers):
            cells = []
            signed = layer in focus.signed
            for hi in range(len(focus.heads)):
                row = focus.weights[li, hi][words]  # (words,)
                if bool(row.isnan().all()):  # a head this layer lacks (layers of different head counts)
                    cells.append(Text(" ·", style="dim"))
                    continue
                if signed:  # the largest |weight|, its sign before the word
                    j = row.abs().argmax()
                    w = row[j]
                    sign = "-" if float(w) < 0 else "+"
                    style = diverging_style(float(w), float(row.abs().max())) if color else ""
                    cells.append(Text(" " + sign + clip(names[words[int(j)]], fit - 1), style=style))
                    continue
                w, j = row.max(dim=-1)
                cells.append(Text(" " + clip(names[words[int(j)]], fit), style=ramp_style(float(w)) if color else ""))
            table.add_row(f"L{layer} ", *cells)
        console.print(table)
        if focus.signed & set(focus.layers):
            console.print(Text("+/- before a word: the sign of the largest |weight| on a signed layer", style="dim"))


def update_view(console: Console, u: Any, tokens: "Tokens", k: int, color: bool, rows: int = 8) -> None:
    """What each word wrote into the chosen token's embedding in one layer (the lesson's
    'fluffy and blue move creature'), summed over heads, with the heads that carried most."""
    names = distinct(tokens.labels)
    total = float(u.per_key.sum()) or 1.0
    console.print(Text(f"What each word wrote into “{tokens.labels[u.query]}” · layer {u.layer}, all heads",
                       style="italic"))
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    table.add_column("word")
    table.add_column("‖moved‖", justify="right")
    table.add_column("share", justify="right")
    table.add_column("carried by (‖·‖ per head)")
    order = u.per_key.argsort(descending=True)[:rows].tolist()
    for j in order:
        share = float(u.per_key[j]) / total
        heads = u.per_head[:, j].argsort(descending=True)[:2].tolist()
        by = "  ".join(f"H{h} {float(u.per_head[h, j]):.2f}" for h in heads)
        table.add_row(Text(clip(names[j], 14), style=ramp_style(share) if color else ""),
                      f"{float(u.per_key[j]):.2f}", f"{share:.0%}", by)
    console.print(table)
    ratio = u.update / u.embedding if u.embedding else 0.0
    console.print(Text(f"whole update ‖Δ‖ = {u.update:.2f}; the embedding entering the layer ‖x‖ = "
                       f"{u.embedding:.2f} (the update is {ratio:.0%} of it)", style="dim"))


def render_result(console: Console, res: "AttendResult", view: str, model: str, k: int, color: bool,
                  measure: str = "weight") -> None:
    """`measure` names what the numbers are: under rollout the one matrix a layer has is
    its rollout (every head and every earlier layer), not a head."""
    note = ""
    if view == "focus" and res.focus is not None:
        note = {"rollout": "Top words in each layer's rollout (flow through all its heads and the layers below)",
                "alti": "Top words in each layer's ALTI (each token's share of the output, through the layers below)",
                "value-zeroing": "Top words in each layer's value zeroing (how far zeroing each token moves the output)",
                }.get(measure, "Top words per head")
        sink = res.focus.sink is not None
        if _has_specials(res.tokens) or sink:
            note += "; specials: weight on " + ("[CLS]-like tokens" if _has_specials(res.tokens) else "") + \
                (" and " if _has_specials(res.tokens) and sink else "") + ("the sink" if sink else "")
        note += ". More: --help"
    header(console, model, res.tokens, note)
    shown = sorted(res.signed & set(res.layers))
    if shown:  # a linear layer's hidden attention: say once what its numbers are
        words = sorted({res.kinds.get(layer, "not row-stochastic") for layer in shown})
        console.print(Text(f"layer{'s' if len(shown) > 1 else ''} {', '.join(map(str, shown))} ({', '.join(words)}): "
                           "the hidden attention M, o_t = Σ_j M[t, j] v_j; signed, rows do not sum to 1", style="dim"))
    if view == "focus" and res.focus is not None:
        focus_view(console, res.focus, k, color, measure, res.kinds)
        if res.update is not None:
            update_view(console, res.update, res.tokens, k, color)
    elif view == "topk" and res.topk is not None:
        topk_view(console, res.topk, color, measure=measure, kinds=res.kinds)
    elif view == "heatmap" and res.attention is not None:
        heatmap_view(console, res.attention, color, console.width, measure, res.kinds)
    elif view == "overview" and res.summary is not None:
        overview_view(console, res.summary, res.focus, color)
