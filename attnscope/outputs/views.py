"""The views: `attend`'s terminal view (focus, topk, heatmap, overview) and its --json document.

Both are emitted after every file of the run is in place, and report those files: the
terminal view with one dim line each, the JSON document with `saved`, `saved_topk`,
`saved_html` and `saved_plot`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from attnscope.outputs import Needs, Output, Run, Shape

if TYPE_CHECKING:
    from attnscope.analysis import AttendResult
    from attnscope.tokenize import Tokens

# What each view shows, as measures.
VIEW_MEASURES = {"focus": ("focus",), "topk": ("topk",), "heatmap": ("attention",), "overview": ("focus", "summary")}


def focus_index(tokens: "Tokens", token: Optional[str]) -> int:
    """The query a view looks at: an index (negative from the end), a word (its last
    occurrence), or by default the last word."""
    from attnscope.analysis import default_focus
    from attnscope.errors import UsageError

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


@dataclass
class TerminalView(Output):
    """One of attend's views on stdout. Display defaults: the last layer for focus and
    topk, every layer for overview; every head, but one (head 0) for the heatmap."""

    view: str = "focus"
    layer: Optional[str] = None
    head: Optional[str] = None
    k: int = 3
    token: Optional[str] = None
    no_color: bool = False
    final = True

    def check(self) -> None:
        from attnscope.errors import UsageError

        if self.k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.k}")

    def measures(self) -> tuple[str, ...]:
        return VIEW_MEASURES[self.view]

    def needs(self, shape: Shape, tokens: "Tokens") -> Needs:
        ls = shape.layers(self.layer, "all" if self.view == "overview" else "-1")
        hs = shape.heads(self.head, "0" if self.view == "heatmap" else "all", ls)
        query = focus_index(tokens, self.token)
        return Needs(self.measures(), tuple(ls), tuple(hs), self.k, (ls[-1], hs[0], query))

    def emit(self, part: Optional["AttendResult"], run: Run) -> None:
        from rich.console import Console
        from rich.text import Text

        from attnscope.analysis import signed_layers
        from attnscope.render.attend import render_result

        assert part is not None  # internal invariant: every view needs a measure
        console = Console(highlight=False, no_color=self.no_color or None)
        if run.shape.measure != "weight":
            from attnscope.measures.transforms import DESCRIPTIONS

            console.print(f"[dim]measure: {DESCRIPTIONS[run.shape.measure]}[/]")
            linear = sorted(signed_layers(run.shape.sites) & set(part.layers)) if run.shape.measure == "norm" else []
            if linear:  # what norm is on a linear layer (measures.transforms)
                console.print(Text(f"on layer{'s' if len(linear) > 1 else ''} {', '.join(map(str, linear))} (linear): "
                                   "|M[t, j]|·‖v_j‖, what key j moves into the layer's output before its gated norm "
                                   "(no W_O: the norm between is not linear)", style="dim"))
        render_result(console, part, self.view, run.model, self.k,
                      color=not self.no_color and console.color_system is not None, measure=run.shape.measure)
        for emitted in run.emitted:
            console.print(Text(emitted.line, style="dim"))  # a Text: a path's brackets are not markup


@dataclass
class JsonDocument(TerminalView):
    """--json: every selected head's top-k keys for every token (what the view's heads
    and layers select), the focus, the measure, the word update under norm, the
    heatmap's patterns under --view heatmap, and the files the run wrote."""

    def measures(self) -> tuple[str, ...]:
        return ("topk",) + tuple(m for m in VIEW_MEASURES[self.view] if m != "topk")

    def emit(self, part: Optional["AttendResult"], run: Run) -> None:
        from attnscope.cli._app import _print_json  # the one JSON printer (C1 controls escaped)

        assert part is not None  # internal invariant: measures() asks for top-k
        _print_json(self.document(part, run))

    def document(self, res: "AttendResult", run: Run) -> dict[str, Any]:
        from attnscope import export

        assert res.topk is not None
        doc = export.topk_document(res.topk, run.model, res.focus)
        doc["measure"] = run.shape.measure
        if res.update is not None:
            u = res.update
            doc["update"] = {"layer": u.layer, "query": u.query, "moved": u.per_key.tolist(),
                             "moved_per_head": u.per_head.tolist(), "update_norm": u.update,
                             "embedding_norm": u.embedding}
        shown = sorted(res.signed & set(res.layers))
        if shown:  # layers whose weights are signed, rows not summing to 1 (a linear layer's hidden attention)
            doc["signed_layers"] = shown
            doc["layer_kinds"] = {str(layer): res.kinds[layer] for layer in shown if layer in res.kinds}
        if self.view == "heatmap" and res.attention is not None:
            att = res.attention
            doc["attention"] = {"layers": att.layers, "heads": att.heads, "probs": att.probs.tolist()}
        for emitted in run.emitted:
            doc[emitted.key] = str(emitted.path)
        return doc

