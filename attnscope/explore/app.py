"""The `explore` app: its state (layer, head, measure, selected token), keys and workers.

`ExploreApp` holds what is on show and the actions on it; the screens and panes that
show it live in `screens`. `o` opens every layer × head's entropy, `?` the keys. Passes
run in a worker thread (`Session.ensure`), so the screen answers while a layer is
computed; a redraw only reads what is kept.

Textual's own documentation and examples (the line API's `ScrollView`, `ModalScreen`,
thread workers) are the model; colour follows Textual's NO_COLOR handling, and every
pane also carries its meaning without colour (see `views`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input, Static
from textual.worker import Worker, WorkerState

from attnscope.analysis import signed_layers
from attnscope.errors import AttnscopeError
from attnscope.explore import views
from attnscope.explore.screens import HeatmapPane, HelpScreen, MainScreen, OverviewScreen, Pane, TokenView
from attnscope.explore.session import MEASURES, Session, ranked, rss_bytes
from attnscope.measures import KINDS
from attnscope.measures.mixing import NAMES as MIXING
from attnscope.tokenize import visible
from attnscope.units import human_bytes

HINTS = "←→ head ↑↓ layer Tab token ? help q quit"


class ExploreApp(App[int]):
    """State (layer, head, measure, selected token) and the actions on it."""

    TITLE = "attnscope explore"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = None  # nothing takes the keys from the screen until a prompt asks for them
    BINDINGS = [Binding("ctrl+c", "quit", "quit", show=False, priority=True)]  # as q (Textual 8 copies)
    CSS = """
    #header { height: 1; background: $panel; }
    #body { height: 1fr; }
    #tokens { width: 1fr; height: 1fr; }
    #keys { width: 30; height: 1fr; padding: 0 0 0 1; border-left: vkey $panel; }
    #heatmap { height: 45%; border-top: hkey $panel; }
    #prompt-row { height: 1; }
    #prompt-label { width: auto; height: 1; padding: 0 1 0 0; text-style: bold; }
    #prompt { width: 1fr; height: 1; border: none; padding: 0; }
    #footer { height: 1; background: $panel; }
    #ov-title, #ov-footer { height: 1; background: $panel; }
    #ov-heads { height: 1; }
    #ov-scroll { height: 1fr; }
    HelpScreen { align: center middle; }
    #help { width: auto; max-width: 100%; height: auto; max-height: 100%; padding: 0 1; border: round $accent;
            background: $surface; }
    """

    def __init__(self, session: Session, layer: int | None = None, head: int = 0, measure: str = "weight",
                 query: int | None = None, started: float | None = None) -> None:
        # NO_COLOR: Textual's ANSI mode strips every colour (its default would turn colours
        # to greys); the panes carry their meaning in attributes and glyphs instead.
        super().__init__(ansi_color=True if "NO_COLOR" in os.environ else None)
        from attnscope.analysis import default_focus

        self.session = session
        self.layer = session.n_layers - 1 if layer is None else layer
        self.head = head
        self.measure = measure
        self.query = default_focus(session.tokens) if query is None else query
        self.started = time.perf_counter() if started is None else started
        self.ready_s: float | None = None  # from `started` to the first screen with a pattern
        self.redraw_ms: float | None = None  # building the panes on the last change
        self.paint_ms: float | None = None  # from that change to the screen painted with it
        self.message: Text | None = None
        self.search_term = ""
        self.matches: list[int] = []
        self.prompt_mode: str | None = None
        self._pending: dict[Worker[Any], tuple[str, Any]] = {}  # running jobs: (kind, what)
        self._failed: set[tuple[str, Any]] = set()

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    # ------------------------------------------------------------------ state

    def head_shown(self) -> int:
        """The head index of the view: rollout, alti and value-zeroing have one matrix (index 0) per layer."""
        return self.head if KINDS[self.measure].per_head else 0

    def target(self) -> tuple[str, int, int]:
        return self.measure, self.layer, self.head_shown()

    def palette(self) -> views.Palette:
        if self.no_color:
            return views.Palette(color=False)
        bg = self.current_theme.background or "#1e1e1e"
        from textual.color import Color

        c = Color.parse(bg)
        return views.Palette(True, (c.r, c.g, c.b))

    def say(self, message: str, error: bool = False) -> None:
        self.message = Text(visible(message), style=Style(bold=True, color="red" if error else None))

    # ------------------------------------------------------------------ drawing

    def on_mount(self) -> None:
        self.set_interval(2.0, self._tick)

    def _tick(self) -> None:
        if isinstance(self.screen, MainScreen):
            self._footer()

    def redraw(self) -> None:
        """Rebuild every pane of the main screen from the state and what is kept."""
        screen = self.screen
        if not isinstance(screen, MainScreen):
            if isinstance(screen, OverviewScreen):
                screen.redraw()
            return
        start = time.perf_counter()
        s, palette = self.session, self.palette()
        pattern = s.pattern(*self.target())
        if pattern is None:
            self.request()
        tokens = screen.query_one("#tokens", TokenView)
        keys_pane = screen.query_one("#keys", Pane)
        row = pattern[self.query] if pattern is not None else None
        intensity = views.relative(row.tolist()) if row is not None else None
        tokens.show(intensity, self.query, set(self.matches), palette)
        width = max(10, screen.size.width or 80)
        head = self.head if KINDS[self.measure].per_head else None
        screen.query_one("#header", Pane).show(views.header_text(
            s.name, self.layer, head, self.measure, s.n, self.query, s.tokens.labels[self.query], width))
        k = max(3, keys_pane.size.height - 2)
        keys = ranked(row, k) if row is not None else []
        keys_pane.show(views.top_keys_text(keys, s.tokens.labels, self.query, self.measure,
                                             max(10, keys_pane.size.width - 1), palette, row is None))
        heat = screen.query_one("#heatmap", HeatmapPane)
        if heat.display:
            hw, hh = heat.size.width or width, heat.size.height or 10
            row0, rows, col0, cols = views.heatmap_window(s.n, self.query, hw, hh)
            matrix = pattern[row0:row0 + rows, col0:col0 + cols].tolist() if pattern is not None else None
            where = f"L{self.layer}H{head}" if head is not None else f"L{self.layer}"
            if self.layer in signed_layers(s.m.sites, self.measure):  # a linear layer's hidden attention
                where += f" · {s.m.sites[self.layer].kind}, signed, rows not summing to 1 ·"
            heat.row0 = row0
            heat.show(views.heatmap_text(matrix, s.tokens.labels, self.query, s.n, hw, hh, palette,
                                           f"{where} {self.measure}", row0, col0))
        self._footer()
        self.redraw_ms = (time.perf_counter() - start) * 1000
        self.call_after_refresh(self._painted, start)
        if pattern is not None and self.ready_s is None:
            self.call_after_refresh(self._mark_ready)

    def _painted(self, start: float) -> None:
        self.paint_ms = (time.perf_counter() - start) * 1000

    def _mark_ready(self) -> None:
        if self.ready_s is None:
            self.ready_s = time.perf_counter() - self.started
            if self.message is None:
                self.say(f"ready in {self.ready_s:.2f} s · ? for help")
                self._footer()

    def _footer(self) -> None:
        screen = self.screen
        if not isinstance(screen, MainScreen):
            return
        width = max(10, screen.size.width or 80)
        rss = rss_bytes()
        right = f"{'RSS' if rss[1] else 'peak RSS'} {human_bytes(rss[0])}" if rss is not None else ""
        last = self.session.last
        if self._pending:
            right += " · computing…"
        elif last is not None:
            right += f" · {last.seconds:.2f} s"
            if self.message is None or self.message.cell_len + len(right) + len(last.what) + 4 <= width:
                right += f" ({last.what})"
        left = (self.message if self.message is not None else Text(HINTS, style=views.DIM)).copy()
        left.truncate(max(0, width - len(right) - 1), overflow="ellipsis")
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append_text(left)
        line.append(" " * max(1, width - left.cell_len - len(right)))
        line.append(right)
        line.truncate(width, overflow="ellipsis")
        screen.query_one("#footer", Pane).show(line)

    # ------------------------------------------------------------------ computing

    def request(self) -> None:
        """Compute the shown pattern in a worker thread unless one is already on it."""
        target = self.target()
        if ("pattern", target) in self._pending.values() or ("pattern", target) in self._failed:
            return

        def wanted() -> bool:  # the block this pass makes still serves what is on show
            measure, layer, head = self.target()
            same_head = head == target[2] or self.session.plan(measure) != "head"
            return (measure, layer) == target[:2] and same_head

        def job() -> None:
            self.session.ensure(*target, wanted=wanted)

        worker = self.run_worker(job, thread=True, group="compute", exit_on_error=False)
        self._pending[worker] = ("pattern", target)

    def want_entropy(self) -> None:
        measure = self.measure
        job = ("entropy", measure)
        if self.session.entropy(measure) is not None or job in self._pending.values() or job in self._failed:
            return
        worker = self.run_worker(lambda: self.session.ensure_entropy(measure), thread=True, group="compute",
                                 exit_on_error=False)
        self._pending[worker] = ("entropy", measure)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        job = self._pending.pop(event.worker, None)
        if event.state == WorkerState.ERROR:
            err = event.worker.error
            if isinstance(err, AttnscopeError):
                text = err.message + (f" ({err.hint})" if err.hint else "")
            else:
                text = f"internal error: {type(err).__name__}: {err}"
            self.say(text, error=True)
            if job is not None and job[0] in ("pattern", "entropy"):
                self._failed.add(job)  # not asked again, or each redraw would retry it
        elif job is not None and job[0] == "export" and event.state == WorkerState.SUCCESS:
            self.say(f"saved {job[1]}")
        self.redraw()

    # ------------------------------------------------------------------ actions

    def select(self, i: int) -> None:
        self.query = i % self.session.n
        self.redraw()

    def action_head(self, step: int) -> None:
        if not KINDS[self.measure].per_head:
            self.say(f"{self.measure} has one matrix per layer: no heads to step through")
            self._footer()
            return
        self.head = (self.head + step) % self.session.n_heads
        self.redraw()

    def action_layer(self, step: int) -> None:
        self.layer = (self.layer + step) % self.session.n_layers
        self.redraw()

    def action_token(self, step: int) -> None:
        self.select(self.query + step)

    def action_heatmap(self) -> None:
        heat = self.screen.query_one("#heatmap", HeatmapPane)
        heat.display = not heat.display
        self.call_after_refresh(self.redraw)
        self.redraw()

    def action_measure(self) -> None:
        from attnscope.measures.transforms import DESCRIPTIONS

        quick = [name for name in MEASURES if name not in MIXING]  # weight, norm, rollout
        self.measure = quick[(quick.index(self.measure) + 1) % len(quick)] if self.measure in quick else quick[0]
        self.say(f"measure: {DESCRIPTIONS[self.measure]}")
        self.redraw()

    def action_mixing(self) -> None:
        """The context-mixing measures on their own key: each reads the whole layer (Value
        Zeroing a pass of the block per query and key), too slow to land on by cycling."""
        from attnscope.measures.transforms import DESCRIPTIONS

        self.measure = MIXING[(MIXING.index(self.measure) + 1) % len(MIXING)] if self.measure in MIXING else MIXING[0]
        self.say(f"measure: {DESCRIPTIONS[self.measure]}")
        self.redraw()

    def action_overview(self) -> None:
        def jump(picked: tuple[int, int] | None) -> None:
            if picked is not None:
                self.layer, h = picked
                if KINDS[self.measure].per_head:
                    self.head = h
            self.redraw()

        self.push_screen(OverviewScreen((self.layer, self.head_shown())), jump)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        self.session.stop.set()  # a pass still running stops within a layer, so exiting never waits on it
        self.exit(0)

    def action_prompt(self, mode: str) -> None:
        prompt = self.screen.query_one("#prompt", Input)
        self.prompt_mode = mode
        if mode == "search":
            label = "find:"
            prompt.placeholder = "tokens containing… (Enter; Esc cancels)"
            prompt.value = self.search_term
        else:
            layer, head = self.layer, self.head_shown()
            label = "export to:"
            prompt.placeholder = "FILE.npz (Enter; Esc cancels)"
            prompt.value = str(self.session.default_export_path(self.measure, layer, head).name)
            self.say("Enter writes the .npz (as attend --save) · Esc cancels")
            self._footer()
        self.screen.query_one("#prompt-label", Static).update(Text(label))
        self.screen.query_one("#prompt-row").display = True
        prompt.focus()
        prompt.cursor_position = len(prompt.value)

    def action_cancel_prompt(self) -> None:
        row = self.screen.query_one("#prompt-row")
        if row.display:
            row.display = False
            self.prompt_mode = None
            self.screen.set_focus(None)

    def submit_prompt(self, value: str) -> None:
        mode = self.prompt_mode
        self.action_cancel_prompt()
        if mode == "search":
            self.search(value)
        elif mode == "export":
            self.export(value)

    def search(self, term: str) -> None:
        self.search_term = term
        needle = term.strip().casefold()
        labels = self.session.tokens.labels
        self.matches = [i for i, label in enumerate(labels) if needle and needle in label.casefold()]
        if not needle:
            self.message = None
        elif not self.matches:
            self.say(f"no token contains {term!r}", error=True)
        else:
            self._goto_match(1)
            return
        self.redraw()

    def _goto_match(self, step: int) -> None:
        after = [i for i in self.matches if (i - self.query) * step > 0]
        i = (after[0] if step > 0 else after[-1]) if after else (self.matches[0] if step > 0 else self.matches[-1])
        self.say(f"{self.matches.index(i) + 1}/{len(self.matches)} tokens contain {self.search_term!r} · n: next")
        self.select(i)

    def action_next_match(self) -> None:
        if self.matches:
            self._goto_match(1)

    def export(self, name: str) -> None:
        name = name.strip()
        if not name:
            return
        path = Path(name).expanduser()
        measure, layer, head = self.target()

        def job() -> None:
            self.session.export(path, measure, layer, head)

        worker = self.run_worker(job, thread=True, group="compute", exit_on_error=False)
        where = f"L{layer}H{head}" if KINDS[measure].per_head else f"L{layer}"
        self._pending[worker] = ("export", f"{path} ({where} {measure}, {self.session.n}×{self.session.n})")
        self.say(f"writing {path}…")
        self._footer()
