"""The screens and panes of `explore`: what is on screen and where, drawn from the app's state.

    header   model · L29H0 · measure · n tokens · ▸selected (i)
    tokens   the text as tokens, wrapped, each shaded by the selected token's attention
    keys     the selected token's heaviest keys, ranked
    heatmap  (h) a window of the head's n × n pattern around the selected token
    footer   the last message or the keys; resident memory; the last computation's time

`MainScreen` holds those panes and the keys that act on them, `OverviewScreen` every
layer × head's entropy, `HelpScreen` the keys. The tokens pane (`TokenView`) draws
through Textual's line API, only the lines in view, so a keystroke costs the same at 20
tokens as at 8,000. What each pane says comes from `views`; the state and the actions
live on `ExploreApp` (app.py).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.geometry import Region, Size
from textual.screen import ModalScreen, Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Static

from attnscope.explore import views

if TYPE_CHECKING:
    from attnscope.explore.app import ExploreApp

HELP = """\
attnscope explore: one head's attention on the text, token by token

  ← →    previous / next head        ↑ ↓    previous / next layer
  Tab    next token (Shift+Tab back)  click  select a token
  h      heatmap of the head          o      every layer × head (entropy),
  m      weight → norm → rollout             Enter jumps to a head
  M      alti → value-zeroing (the whole layer: slower)
  /      find tokens (n: next)        e      export this head (.npz)
  ?      this help                    q      quit

Tokens are shaded by how much the selected token (▸) attends to each,
relative to its heaviest key; the list on the right ranks its keys.
weight: the softmax α. norm: ‖α·f(x)‖, what each key moves (rows sum
to 1). rollout: attention flow through the layers, one matrix a layer.
alti: each token's share of the layer's output, residual and norms
counted, rolled out. value-zeroing: how far zeroing a token's values
moves each output. Both one matrix a layer.
␣ marks a leading space, ↵ a line break.

Any key closes this."""


class TokenView(ScrollView, can_focus=False):
    """The tokens, wrapped to the pane's width, drawn line by line (Textual's line API)."""

    DEFAULT_CSS = "TokenView { scrollbar-gutter: stable; overflow-x: hidden; }"

    def __init__(self, labels: list[str], special: list[bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.labels, self.special = labels, special
        self.layout_ = views.TokenLayout.build(labels, 40)
        self.intensity: list[float] | None = None
        self.selected = 0
        self.matches: set[int] = set()
        self.palette = views.Palette()

    def relayout(self) -> None:
        width = max(4, self.scrollable_content_region.width)
        if width != self.layout_.width:
            self.layout_ = views.TokenLayout.build(self.labels, width)
        self.virtual_size = Size(width, len(self.layout_.lines))

    def on_resize(self, event: events.Resize) -> None:
        self.relayout()
        self.reveal()

    def show(self, intensity: list[float] | None, selected: int, matches: set[int], palette: views.Palette) -> None:
        moved = selected != self.selected
        self.intensity, self.selected, self.matches, self.palette = intensity, selected, matches, palette
        self.refresh()
        if moved:
            self.reveal()

    def reveal(self) -> None:
        """Scroll so the selected token's line is in view."""
        if self.selected < len(self.layout_.line_of):
            line = self.layout_.line_of[self.selected]
            self.scroll_to_region(Region(0, line, 1, 1), animate=False, immediate=True)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        segments = views.token_segments(self.layout_, scroll_y + y, self.intensity, self.selected, self.special,
                                        self.matches, self.palette)
        width = self.scrollable_content_region.width
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, Style())  # a None style breaks NO_COLOR

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        hit = self.layout_.hit(offset.x + int(self.scroll_x), offset.y + int(self.scroll_y))
        if hit is not None:
            self.app.select(hit)  # type: ignore[attr-defined]


_SIZED = "layout" in inspect.signature(Static.update).parameters  # Textual >= 1.x: skip needless layouts


class Pane(Static):
    """A pane whose size the CSS fixes: new content needs no layout pass where Textual
    can skip it (a layout per keystroke costs more than drawing the panes)."""

    def show(self, content: Any) -> None:
        if _SIZED:
            self.update(content, layout=False)
        else:  # pragma: no cover - older Textual
            self.update(content)


class HeatmapPane(Pane):
    """The heatmap; a click on a row selects that query."""

    row0 = 0

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None and offset.y >= 1:
            app: ExploreApp = self.app  # type: ignore[assignment]
            i = self.row0 + offset.y - 1
            if i < app.session.n:
                app.select(i)


class MainScreen(Screen[None]):
    """Header, tokens and top keys, the optional heatmap, a prompt line and the footer."""

    BINDINGS = [
        Binding("left", "app.head(-1)", "previous head", show=False),
        Binding("right", "app.head(1)", "next head", show=False),
        Binding("up", "app.layer(-1)", "previous layer", show=False),
        Binding("down", "app.layer(1)", "next layer", show=False),
        Binding("tab", "app.token(1)", "next token", show=False, priority=True),
        Binding("shift+tab", "app.token(-1)", "previous token", show=False, priority=True),
        Binding("h", "app.heatmap", "heatmap", show=False),
        Binding("o", "app.overview", "overview", show=False),
        Binding("m", "app.measure", "measure", show=False),
        Binding("M", "app.mixing", "mixing measure", show=False),
        Binding("slash", "app.prompt('search')", "find", show=False),
        Binding("n", "app.next_match", "next match", show=False),
        Binding("e", "app.prompt('export')", "export", show=False),
        Binding("question_mark", "app.help", "help", show=False),
        Binding("q", "app.quit", "quit", show=False),
        Binding("escape", "app.cancel_prompt", "cancel", show=False),
    ]

    def compose(self) -> ComposeResult:
        app: ExploreApp = self.app  # type: ignore[assignment]
        tokens = app.session.tokens
        yield Pane(id="header")
        with Horizontal(id="body"):
            yield TokenView(list(tokens.labels), list(tokens.special), id="tokens")
            yield Pane(id="keys")
        yield HeatmapPane(id="heatmap")
        with Horizontal(id="prompt-row"):  # the prompt and its label, shown while one is asked for
            yield Static(id="prompt-label")
            yield Input(id="prompt")
        yield Pane(id="footer")

    def on_mount(self) -> None:
        self.query_one("#heatmap").display = False
        self.query_one("#prompt-row").display = False

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self.app.redraw)  # type: ignore[attr-defined]

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.app.submit_prompt(event.value)  # type: ignore[attr-defined]


class OverviewScreen(Screen[tuple[int, int] | None]):
    """Every layer × head's entropy; arrows move, Enter (or a click) jumps to the head."""

    BINDINGS = [
        Binding("left", "move(0, -1)", show=False), Binding("right", "move(0, 1)", show=False),
        Binding("up", "move(-1, 0)", show=False), Binding("down", "move(1, 0)", show=False),
        Binding("enter", "jump", show=False), Binding("escape,o", "close", show=False),
        Binding("q", "app.quit", show=False), Binding("question_mark", "app.help", show=False),
    ]

    def __init__(self, cursor: tuple[int, int]) -> None:
        super().__init__()
        self.cursor = cursor

    def compose(self) -> ComposeResult:
        yield Static(id="ov-title")
        yield Static(id="ov-heads")
        with VerticalScroll(id="ov-scroll", can_focus=False):
            yield Static(id="grid")
        yield Static(id="ov-footer")

    def on_mount(self) -> None:
        self.app.want_entropy()  # type: ignore[attr-defined]
        self.redraw()

    def on_resize(self, event: events.Resize) -> None:
        self.redraw()

    def redraw(self) -> None:
        app: ExploreApp = self.app  # type: ignore[assignment]
        s, measure = app.session, app.measure
        entropy = s.entropy(measure)
        values = entropy.tolist() if entropy is not None else None
        width = self.size.width or 80
        grid = self.query_one("#grid", Static)
        current = (app.layer, app.head_shown())
        heads = s.heads_of(measure)
        self.query_one("#ov-heads", Static).update(views.overview_header(heads, width - 2, measure))
        grid.update(views.overview_text(values, self.cursor, current, width - 2, app.palette()))
        title = Text(no_wrap=True, overflow="ellipsis")
        # at 80 columns the whole line shows beside a model name of 20 characters or so
        title.append(views.fit(f"{s.name} · layers × heads · {measure} entropy · 0: one key, 1: uniform", width),
                     views.TITLE)
        self.query_one("#ov-title", Static).update(title)
        l, h = self.cursor
        value = f" = {values[l][h]:.3f}" if values is not None else ""
        where = f"L{l}H{h}" if measure not in ("rollout", "alti", "value-zeroing") else f"L{l} all heads"
        foot = f"{where}{value} · bright: focused · * on show · ←→↑↓ Enter jump · Esc back"
        self.query_one("#ov-footer", Static).update(Text(views.fit(foot, width), style=views.DIM))
        scroll = self.query_one("#ov-scroll", VerticalScroll)
        scroll.scroll_to_region(Region(0, l, 1, 1), animate=False, immediate=True)

    def action_move(self, dl: int, dh: int) -> None:
        app: ExploreApp = self.app  # type: ignore[assignment]
        heads = app.session.heads_of(app.measure)
        l, h = self.cursor
        self.cursor = ((l + dl) % app.session.n_layers, (h + dh) % heads)
        self.redraw()

    def action_jump(self) -> None:
        self.dismiss(self.cursor)

    def action_close(self) -> None:
        self.dismiss(None)

    def on_click(self, event: events.Click) -> None:
        grid = self.query_one("#grid", Static)
        offset = event.get_content_offset(grid)
        app: ExploreApp = self.app  # type: ignore[assignment]
        if offset is None or offset.x < 5:
            return
        heads = app.session.heads_of(app.measure)
        w = views.overview_cell_width(heads, (self.size.width or 80) - 2)
        l, h = offset.y, (offset.x - 5) // w
        if l < app.session.n_layers and h < heads:
            self.cursor = (l, h)
            self.dismiss(self.cursor)


class HelpScreen(ModalScreen[None]):
    """The keys; any key or click closes it."""

    def compose(self) -> ComposeResult:
        yield Static(Text(HELP), id="help")

    def on_key(self, event: events.Key) -> None:
        event.stop()
        self.dismiss(None)

    def on_click(self, event: events.Click) -> None:
        self.dismiss(None)
