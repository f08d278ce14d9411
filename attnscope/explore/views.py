"""What each pane of `explore` shows, as rich Text and Segments: no Textual, no torch.

Pure functions of plain values (labels, lists of floats), so the app only decides what
to draw and where, and the tests can read what a pane says. Shading: with colour, a
cell's background is blended from the pane's background towards an accent by its
intensity; without (NO_COLOR, --no-color), intensity is carried by text attributes
(tokens), shade glyphs ░▒▓█ (heatmap) and the printed numbers, never by colour alone.
Every label has passed through `tokenize.visible` (control characters shown as ↵, \\xNN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from attnscope.tokenize import visible
from attnscope.units import plural

RGB = tuple[int, int, int]
ACCENT: RGB = (255, 150, 40)  # an amber that reads on dark and light backgrounds
SHADES = " ░▒▓█"
SELECT_MARK = "▸"
TITLE = Style(bold=True)
DIM = Style(dim=True)


@dataclass(frozen=True)
class Palette:
    """How to shade: colour (blend `background` towards `accent`) or attributes only."""

    color: bool = True
    background: RGB = (30, 30, 30)
    accent: RGB = ACCENT

    def shade(self, intensity: float) -> Style:
        """Style for a cell of intensity in [0, 1] (already relative to its row's largest)."""
        a = min(1.0, max(0.0, intensity))
        if not self.color:
            if a >= 0.6:
                return Style(reverse=True, bold=True)
            if a >= 0.25:
                return Style(bold=True, underline=True)
            if a >= 0.05:
                return Style(underline=True)
            return Style()
        if a < 0.02:
            return Style()
        bg = tuple(round(b + (c - b) * a) for b, c in zip(self.background, self.accent))
        luminance = (0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]) / 255
        fg = "rgb(0,0,0)" if luminance > 0.55 else "rgb(255,255,255)"
        return Style(bgcolor=f"rgb({bg[0]},{bg[1]},{bg[2]})", color=fg)

    def glyph(self, intensity: float) -> str:
        """A shade character for colourless heatmaps."""
        a = min(1.0, max(0.0, intensity))
        return SHADES[min(len(SHADES) - 1, int(a * (len(SHADES) - 1) + 0.5))]


def fit(label: str, width: int) -> str:
    """`label` cut to `width` cells with a trailing … when it does not fit."""
    if width <= 0:
        return ""
    if cell_len(label) <= width:
        return label
    out, used = [], 0
    for ch in label:
        w = cell_len(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pad(label: str, width: int) -> str:
    label = fit(label, width)
    return label + " " * (width - cell_len(label))


def relative(row: Sequence[float]) -> list[float]:
    """A row's magnitudes scaled so its largest is 1 (all zeros stay zeros): a signed row
    (a linear layer's hidden attention) is shaded by |weight|."""
    top = max((abs(x) for x in row), default=0.0)
    return [abs(x) / top for x in row] if top > 0 else [0.0 for _ in row]


# ---------------------------------------------------------------------- the tokens


@dataclass
class TokenLayout:
    """The text's tokens wrapped to `width` cells: a one-cell separator (the selection
    mark goes there) then the label, so marking a token never moves another."""

    width: int
    shown: list[str]
    lines: list[list[tuple[int, int]]] = field(default_factory=list)  # (token, x of its separator)
    line_of: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, labels: Sequence[str], width: int) -> "TokenLayout":
        width = max(width, 4)
        shown = [fit(visible(label) or " ", width - 1) for label in labels]
        layout = cls(width, shown)
        line: list[tuple[int, int]] = []
        x = 0
        for i, label in enumerate(shown):
            w = 1 + cell_len(label)
            if line and x + w > width:
                layout.lines.append(line)
                line, x = [], 0
            line.append((i, x))
            layout.line_of.append(len(layout.lines))
            x += w
        if line:
            layout.lines.append(line)
        return layout

    def hit(self, x: int, y: int) -> int | None:
        """The token under cell (x, y) of the laid-out text, separator included."""
        if not 0 <= y < len(self.lines):
            return None
        for i, start in self.lines[y]:
            if start <= x < start + 1 + cell_len(self.shown[i]):
                return i
        return None


def token_segments(layout: TokenLayout, y: int, intensity: Sequence[float] | None, selected: int,
                   special: Sequence[bool], matches: set[int], palette: Palette) -> list[Segment]:
    """Line `y` of the laid-out tokens: each shaded by its (relative) intensity, the
    selected one marked, search matches underlined, special tokens dim."""
    out: list[Segment] = []
    if not 0 <= y < len(layout.lines):
        return out
    for i, _x in layout.lines[y]:
        mark = SELECT_MARK if i == selected else " "
        out.append(Segment(mark, Style(bold=True)))
        style = palette.shade(intensity[i]) if intensity is not None else Style()
        if special[i]:
            style += Style(dim=True)
        if i in matches:
            style += Style(underline=True)
        if i == selected:
            style += Style(bold=True, underline=True)
        out.append(Segment(layout.shown[i], style))
    return out


# ---------------------------------------------------------------------- the panes


def header_text(model: str, layer: int, head: int | None, measure: str, n: int, query: int, label: str,
                width: int) -> Text:
    """`SmolLM2-135M-Instruct · L29H0 · weight · 12 tokens · ▸␣creature (11)`."""
    where = f"L{layer}H{head}" if head is not None else f"L{layer} all heads"
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(fit(model, max(8, width // 3)), TITLE)
    text.append(" · ")
    text.append(where, Style(bold=True, reverse=True))
    text.append(f" · {measure} · {plural(n, 'token')} · ")
    text.append(f"{SELECT_MARK}{fit(visible(label), 20)} ({query})", Style(bold=True))
    text.truncate(width, overflow="ellipsis")
    return text


def top_keys_text(keys: Sequence[tuple[int, float]], labels: Sequence[str], query: int, measure: str,
                  width: int, palette: Palette, computing: bool = False) -> Text:
    """The selected token's heaviest keys: rank, label, position and share of its row."""
    text = Text(no_wrap=True, overflow="ellipsis")
    what = {"weight": "α", "norm": "share", "rollout": "flow", "alti": "share", "value-zeroing": "moved"}[measure]
    text.append(fit(f"{fit(visible(labels[query]), 12)} ({query}) looks at", width), TITLE)
    text.append("\n")
    if computing:
        text.append("computing…", DIM)
        return text
    top = abs(keys[0][1]) if keys else 0.0
    label_w = max(3, width - 15)
    text.append(fit(f" #  {pad('key', label_w)} {'pos':>4} {what:>5}", width), DIM)
    for rank, (j, w) in enumerate(keys, 1):
        text.append("\n")
        text.append(f"{rank:>2}  ")
        text.append(pad(visible(labels[j]), label_w), palette.shade(abs(w) / top if top > 0 else 0.0))
        text.append(f" {j:>4} {w:.3f}")
    if not keys:
        text.append("\n(no visible keys)", DIM)
    return text


def heatmap_text(matrix: Sequence[Sequence[float]] | None, labels: Sequence[str], query: int, n: int,
                 width: int, height: int, palette: Palette, title: str, row0: int, col0: int) -> Text:
    """A window of one head's pattern: rows `row0…` (queries) × columns `col0…` (keys),
    two cells a key, each shaded relative to its row's largest, `·` where exactly 0."""
    text = Text(no_wrap=True, overflow="crop")
    if matrix is None:
        text.append(fit(title, width), TITLE)
        text.append("\ncomputing…", DIM)
        return text
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    text.append(fit(f"{title} · queries {row0}–{row0 + rows - 1} × keys {col0}–{col0 + cols - 1} of {n}", width),
                TITLE)
    label_w = _heat_label_width(width)
    for r, row in enumerate(matrix):
        i = row0 + r
        text.append("\n")
        text.append(SELECT_MARK if i == query else " ", Style(bold=True))
        text.append(f"{i:>4} {pad(visible(labels[i]), label_w - 6)} ", Style(bold=i == query))
        rel = relative(row)
        for c, (x, a) in enumerate(zip(row, rel)):
            j = col0 + c
            if x == 0.0:
                text.append(" ·", DIM)
            elif palette.color:
                text.append(("- " if x < 0 else "  ") if j != i else "◆ ", palette.shade(max(a, 0.02)))
            else:
                g = palette.glyph(a)
                text.append(("-" if x < 0 else g) + (g if j != i else "◆"))
    signed = any(x < 0 for row in matrix for x in row)
    legend = ("shade: |weight| over the row's largest; - below 0 (signed: a linear layer's hidden attention)"
              if signed else "shade: share of the row's largest") + "; · exactly 0; ◆ the query itself"
    if rows + 2 <= height:
        text.append("\n")
        text.append(fit(legend, width), DIM)
    return text


def _heat_label_width(width: int) -> int:
    return min(18, max(10, width // 5))


def heatmap_window(n: int, query: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(row0, rows, col0, cols): the rows and keys a heatmap pane of this size shows,
    centred on the selected query and clamped to the text."""
    rows = max(1, min(n, height - 2))
    cols = max(1, min(n, (width - _heat_label_width(width) - 1) // 2))
    row0 = min(max(0, query - rows // 2), n - rows)
    col0 = min(max(0, query - cols // 2), n - cols)
    return row0, rows, col0, cols


def overview_cell_width(heads: int, width: int) -> int:
    """Cells of 5 ('0.52 '), 3 ('52 ') or 2 (shade only) characters, the widest that fits."""
    for w in (5, 3):
        if 5 + w * heads <= width:
            return w
    return 2


def overview_header(heads: int, width: int, measure: str) -> Text:
    """The overview's column labels, kept in view above its scrolling rows."""
    text = Text("     ", no_wrap=True, overflow="crop")
    w = overview_cell_width(heads, width)
    for h in range(heads):
        label = "all" if measure in ("rollout", "alti", "value-zeroing") else (f"H{h}" if w >= 5 or h % 5 == 0 else "")
        text.append(pad(label, w) if w >= 5 or h % 5 == 0 else " " * w, DIM)
    return text


def overview_text(entropy: Sequence[Sequence[float]] | None, cursor: tuple[int, int], current: tuple[int, int],
                  width: int, palette: Palette) -> Text:
    """Every layer × head's mean normalised entropy (0: one key, 1: uniform), one row a
    layer, brighter = more focused; the cursor reversed, the head on show marked *."""
    text = Text(no_wrap=True, overflow="crop")
    if entropy is None:
        text.append("computing the entropy of every head…", DIM)
        return text
    w = overview_cell_width(len(entropy[0]) if entropy else 0, width)
    for layer, row in enumerate(entropy):
        if layer:
            text.append("\n")
        text.append(f"L{layer:<3} ", Style(bold=layer == cursor[0]))
        for h, v in enumerate(row):
            if v != v:  # NaN: a linear layer's rows are no distributions, so no entropy
                text.append("—".rjust(w - 1), DIM if (layer, h) != cursor else Style(reverse=True))
                text.append("*" if (layer, h) == current else " ")
                continue
            if w == 5:
                value = f"{v:.2f}"
            elif w == 3:
                value = f"{min(99, round(v * 100)):>2}"
            else:
                value = " " if palette.color else palette.glyph(1 - v)
            style = palette.shade(1 - v) if palette.color else Style()
            if (layer, h) == cursor:
                style = Style(reverse=True, bold=True)
            text.append(value, style)
            text.append("*" if (layer, h) == current else " ")
    return text
