"""The file outputs: patterns (--save), top-k (--save-topk), the page (--html), the figure (--plot).

Each is checked before loading (`export.check_target`: format, link, folder, name
length, an existing file), says what it needs and how many bytes it writes, and writes
through the export's atomic writers inside the run's batch (see `attnscope.outputs`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from attnscope.outputs import Emitted, Needs, Output, Run, Shape

if TYPE_CHECKING:
    from attnscope.analysis import AttendResult
    from attnscope.tokenize import Tokens

NOTE_SAVE_BYTES = 64 * 2**20  # a save this big is worth a note before a long run; small ones just happen


def _note(message: str) -> None:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False).print(Text(message, style="dim"))  # a Text: a path's brackets are not markup


def layer_heads(shape: Shape, layers: list[int]) -> Optional[list[int]]:
    """Each selected layer's head count where they differ (Qwen3.5's 16 value heads in its
    linear layers, 8 query heads in its softmax ones), else None: written beside a grid
    as wide as the most heads, a head a layer lacks filled in (`analysis.select_heads`)."""
    if not shape.per_head or not shape.sites:
        return None
    counts = [shape.sites[layer].n_heads for layer in layers]
    return counts if len(set(counts)) > 1 else None


def _selection(shape: Shape, n_layers: int, n_heads: int) -> str:
    from attnscope.units import plural

    return f"{plural(n_layers, 'layer')} × {plural(n_heads, 'head')}"


@dataclass
class PatternSave(Output):
    """--save: the selected layers' full patterns, streamed to .npz or .safetensors one
    layer at a time (memory holds one layer), raw values under every measure. A model
    with linear layers saves each kind apart (`export`), each kind's heads selected in
    its own layers (a linear layer's value heads)."""

    path: Path
    layer: Optional[str] = None
    head: Optional[str] = None
    force: bool = False
    extra: Optional[dict[str, int]] = None  # scalars written beside the patterns (generate's prompt_length)
    option = "--save"

    def check(self) -> None:
        from attnscope import export

        export.check_target(self.path, self.force)

    def _layers_heads(self, shape: Shape) -> tuple[list[int], list[int]]:
        ls = shape.layers(self.layer)
        linear = self._linear(shape)
        if linear is None:
            return ls, shape.heads(self.head, layers=ls)
        soft = [layer for layer in ls if layer not in linear]
        return ls, shape.heads(self.head, layers=soft) if soft else []

    def _linear(self, shape: Shape) -> set[int] | None:
        from attnscope.measures import linear_layers

        linear = linear_layers(shape.sites)
        return None if linear is None else set(linear)

    def _linear_heads(self, shape: Shape) -> tuple[list[int], list[int]]:
        """The selected linear layers and their value heads (none: a model without them)."""
        linear = self._linear(shape)
        mine = [layer for layer in shape.layers(self.layer) if linear is not None and layer in linear]
        return mine, shape.heads(self.head, layers=mine) if mine else []

    def size(self, run: Run) -> int:
        from attnscope import export
        from attnscope.units import human_bytes

        ls, hs = self._layers_heads(run.shape)
        lin, lin_hs = self._linear_heads(run.shape)
        n = len(run.tokens)
        size = export.pattern_bytes(len(ls) - len(lin), len(hs), n) + export.pattern_bytes(len(lin), len(lin_hs), n)
        if run.shape.measure == "alti":  # alti (rolled out) and alti_layer (each layer alone)
            size *= 2
        if size >= NOTE_SAVE_BYTES:
            _note(f"will write {human_bytes(size)} of patterns to {self.path}")
        return size

    def stream(self, run: Run, stack: contextlib.ExitStack) -> Any:
        from attnscope.measures import pattern_stream, route_probe

        from attnscope.measures import linear_layers

        ls, hs = self._layers_heads(run.shape)
        _, lin_hs = self._linear_heads(run.shape)
        routes = route_probe(run.config, ls, len(run.tokens)) if run.config is not None else None
        return pattern_stream(stack, self.path, ls, hs, run.tokens, run.shape.measure, run.text, self.force,
                              self.extra, any(run.shape.sites[layer].sinks for layer in ls), routes,
                              linear_layers(run.shape.sites), lin_hs)

    def emit(self, part: Optional["AttendResult"], run: Run) -> Emitted:
        from attnscope.units import plural

        ls, hs = self._layers_heads(run.shape)
        lin, lin_hs = self._linear_heads(run.shape)
        shown = _selection(run.shape, len(ls), len(hs))
        if self._linear(run.shape) is not None:  # each kind apart, as the file holds them
            kinds = [f"{plural(len(ls) - len(lin), 'softmax layer')} × {plural(len(hs), 'head')}" if len(ls) > len(lin)
                     else "", f"{plural(len(lin), 'linear layer')} × {plural(len(lin_hs), 'value head')}" if lin else ""]
            shown = " and ".join(k for k in kinds if k)
        return Emitted("saved", self.path, f"saved {shown} × {len(run.tokens)}² to {self.path}")


@dataclass
class TopKSave(Output):
    """--save-topk: every selected layer and head's top-k keys per query, as .npz."""

    path: Path
    layer: Optional[str] = None
    head: Optional[str] = None
    k: int = 3
    force: bool = False
    extra: Optional[dict[str, int]] = None
    option = "--save-topk"

    def check(self) -> None:
        from attnscope import export

        export.check_target(self.path, self.force, (".npz",))

    def needs(self, shape: Shape, tokens: "Tokens") -> Needs:
        ls = shape.layers(self.layer)
        return Needs(("topk",), tuple(ls), tuple(shape.heads(self.head, layers=ls)), self.k)

    def size(self, run: Run) -> int:
        ls = run.shape.layers(self.layer)
        hs = run.shape.heads(self.head, layers=ls)
        n = len(run.tokens)
        return len(ls) * len(hs) * n * min(self.k, n) * (8 + 4) + 8 * (len(ls) + len(hs) + n) + 4096

    def emit(self, part: Optional["AttendResult"], run: Run) -> Emitted:
        from attnscope import export

        assert part is not None and part.topk is not None  # internal invariant: needs() asked for it
        t = part.topk
        counts = layer_heads(run.shape, t.layers) if t.heads == list(range(len(t.heads))) else None
        export.save_topk(self.path, t.indices, t.weights, t.layers, t.heads, run.tokens.ids, self.force, self.extra,
                         layer_heads=counts if counts is not None and len(t.heads) > min(counts) else None)
        return Emitted("saved_topk", self.path,
                       f"saved top-{self.k} of {_selection(run.shape, len(t.layers), len(t.heads))} to {self.path}")


@dataclass
class PageOutput(Output):
    """--html: one offline page of the selected layers and heads (default: all, as --save),
    full patterns or each token's top K keys (--html-topk)."""

    path: Path
    layer: Optional[str] = None
    head: Optional[str] = None
    k: Optional[int] = None
    force: bool = False
    focus: Optional[tuple[int, int, int]] = None  # (layer, head, query) it opens on; default: the view's
    option = "--html"

    def __post_init__(self) -> None:
        self._page: Any = None

    def check(self) -> None:
        from attnscope import export
        from attnscope.errors import UsageError
        from attnscope.render.page import FORMATS

        if self.k is not None and self.k < 1:
            raise UsageError(f"--html-topk must be at least 1, got {self.k}")
        export.check_target(self.path, self.force, FORMATS)

    def needs(self, shape: Shape, tokens: "Tokens") -> Needs:
        what = "attention" if self.k is None else "topk"
        ls = shape.layers(self.layer)
        return Needs((what,), tuple(ls), tuple(shape.heads(self.head, layers=ls)), self.k or 0)

    def size(self, run: Run) -> int:
        from attnscope.render.page import NOTE_PAGE_BYTES, Page
        from attnscope.units import human_bytes

        ls = run.shape.layers(self.layer)
        hs = run.shape.heads(self.head, layers=ls)
        from attnscope.analysis import signed_layers

        focus = self.focus or run.focus or (ls[-1], hs[0], len(run.tokens) - 1)
        signed = {layer: run.shape.sites[layer].kind for layer in signed_layers(run.shape.sites, run.shape.measure)
                  if layer in ls}
        counts = layer_heads(run.shape, ls)
        self._page = Page(run.model, run.tokens, ls, hs, run.shape.measure, self.k, focus, signed=signed or None,
                          layer_heads=counts if counts is not None and max(hs) >= min(counts) else None)
        size = self._page.check(self.path, space=False)  # checked with the run's other outputs
        if size >= NOTE_PAGE_BYTES:
            _note(f"will write a {human_bytes(size)} page to {self.path}")
        return size

    def emit(self, part: Optional["AttendResult"], run: Run) -> Emitted:
        from attnscope.units import human_bytes

        assert part is not None and self._page is not None  # internal invariant: size() built the page
        page = self._page
        if page.k is not None:
            assert part.topk is not None
            written = page.write(self.path, self.force, topk=(part.topk.indices, part.topk.weights))
        else:
            assert part.attention is not None
            written = page.write(self.path, self.force, attention=part.attention.probs)
        held = f"top-{page.k} keys, " if page.k is not None else ""
        return Emitted("saved_html", self.path, f"wrote a {human_bytes(written)} page ({held}"
                                                f"{_selection(run.shape, len(page.layers), len(page.heads))}) to {self.path}")


@dataclass
class FigureOutput(Output):
    """--plot: one head's heatmap (default: the last layer, head 0), or a grid of the
    selected heads, as .png, .svg or .pdf (matplotlib). Its size is not known before
    matplotlib draws it: it counts for nothing in the space check, and a figure that
    does not fit fails the run's batch, which then publishes none of its files."""

    path: Path
    layer: Optional[str] = None
    head: Optional[str] = None
    figsize: Optional[str] = None
    force: bool = False
    option = "--plot"

    def check(self) -> None:
        from attnscope import export
        from attnscope.render.figure import FORMATS, parse_figsize, require_matplotlib

        export.check_target(self.path, self.force, FORMATS)
        if self.figsize is not None:
            parse_figsize(self.figsize)
        require_matplotlib()

    def needs(self, shape: Shape, tokens: "Tokens") -> Needs:
        from attnscope.render.figure import check_panels

        ls = shape.layers(self.layer, "-1")
        hs = shape.heads(self.head, "0", ls)
        check_panels(len(ls), len(hs))
        return Needs(("attention",), tuple(ls), tuple(hs))

    def emit(self, part: Optional["AttendResult"], run: Run) -> Emitted:
        from attnscope.render.figure import parse_figsize, write_figure

        assert part is not None and part.attention is not None  # internal invariant: needs() asked for it
        ls, hs = part.attention.layers, part.attention.heads
        signed = {layer: run.shape.sites[layer].kind for layer in part.attention.signed if layer in ls}
        write_figure(self.path, part.attention.probs, ls, hs, run.tokens.labels, run.model, run.shape.measure,
                     parse_figsize(self.figsize) if self.figsize is not None else None, self.force, signed or None)
        shown = (f"layer {ls[0]}" + ("" if not run.shape.per_head else f", head {hs[0]}")
                 if len(ls) * len(hs) == 1 else f"{len(ls)} layers × {len(hs)} heads")
        return Emitted("saved_plot", self.path, f"wrote a figure of {shown} to {self.path}")
