"""Outputs: what a command emits from one run, each a small class.

An output has four steps, and `run()` drives them for a list of outputs:

* `check()` judges its arguments before anything is loaded (names, formats, links,
  folders, option pairs), so a bad one costs no model load;
* `needs(shape)`, once the model is loaded and the text tokenised, says what it wants
  from the pass: which measures (topk, focus, summary, attention), on which layers and
  heads, how many keys, which query; `size(run)` says how many bytes it will write where;
* `run()` unions the needs measure by measure, checks the space all the files need
  together, runs ONE pass (`measures.run_attend`) and hands each output the result
  narrowed to what it asked for (`narrow`);
* `emit(part, run)` writes the output's file or prints its view, and returns what it
  wrote (`Emitted`), which the JSON document and the terminal view report.

Files are written inside one `export.batch()`: every file is finished under a hidden
temporary name first, and they are renamed into place together only when all are
complete, so a run whose second output fails leaves nothing behind and replaces
nothing. Views (`final = True`) are emitted after that, so stdout never reports a file
that was not written. A new output is one class; a command only builds its list.

After the `hf` CLI and llm's output formats: one small object per output kind, the
command a short parse–call–render.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from attnscope.analysis import AttendResult
    from attnscope.api import Inspector
    from attnscope.hooks import SiteInfo
    from attnscope.tokenize import Tokens

ORDER = ("topk", "focus", "summary", "attention")  # the measures an output may need


@dataclass(frozen=True)
class Shape:
    """The loaded model as an output sees it: its layers, and the heads its --measure
    has (rollout: one matrix a layer, so one head, index 0)."""

    n_layers: int
    n_heads: int
    measure: str = "weight"
    sites: tuple["SiteInfo", ...] = ()  # the model's (`hooks.sites`): heads checked per layer

    def layers(self, spec: Optional[str], default: str = "all") -> list[int]:
        from attnscope.analysis import select

        return select(spec if spec is not None else default, self.n_layers, "layer")

    def heads(self, spec: Optional[str], default: str = "all", layers: Optional[list[int]] = None) -> list[int]:
        """The heads `spec` names in `layers` (default: every layer)."""
        from attnscope.measures import KINDS

        # No selector and the default every head: None, so that layers of different head
        # counts give the grid as wide as the most heads (`analysis.select_heads`).
        spec = spec if spec is not None else (None if default == "all" and self.sites else default)
        return KINDS[self.measure].heads(spec, self.n_heads, self.sites, layers)

    @property
    def per_head(self) -> bool:
        from attnscope.measures import KINDS

        return KINDS[self.measure].per_head


@dataclass(frozen=True)
class Needs:
    """What one output wants from the pass."""

    measures: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    k: int = 0  # keys per query, for topk
    focus: Optional[tuple[int, int, int]] = None  # (layer, head, query) the output looks at


@dataclass(frozen=True)
class Emitted:
    """What an output wrote: its --json key, its path, and the line the terminal shows."""

    key: str
    path: Path
    line: str


@dataclass
class Run:
    """One run as its outputs see it."""

    model: str  # the model's display name
    tokens: "Tokens"
    shape: Shape
    text: str = ""
    focus: Optional[tuple[int, int, int]] = None  # the view's (layer, head, query), for the page
    emitted: list[Emitted] = field(default_factory=list)
    config: Any = None  # the model's ModelConfig (the experts view reads its layer kinds)


class Output:
    """Base: an output that needs nothing and writes nothing. See the module docstring."""

    final = False  # a view: emitted after every file is in place
    option = ""  # the option that names its file, for messages
    path: Optional[Path] = None

    def check(self) -> None:
        """Refuse bad arguments before the model is loaded."""

    def needs(self, shape: Shape, tokens: "Tokens") -> Needs:
        return Needs()

    def size(self, run: Run) -> int:
        """Bytes it will write at `self.path` (checked against free space before the pass)."""
        return 0

    def stream(self, run: Run, stack: contextlib.ExitStack) -> Any:
        """A raw-value probe to attach to the pass (a streamed writer), or None."""
        return None

    def emit(self, part: Optional["AttendResult"], run: Run) -> Optional[Emitted]:
        return None


def check(outputs: list[Output]) -> None:
    """Every output's own check, then: no two outputs name one file."""
    for out in outputs:
        out.check()
    files = [out for out in outputs if out.path is not None]
    for i, a in enumerate(files):
        for b in files[i + 1:]:
            assert a.path is not None and b.path is not None
            if a.path.expanduser().resolve() == b.path.expanduser().resolve():
                from attnscope.errors import UsageError

                raise UsageError(f"{a.option} and {b.option} name the same file", hint="give them different names")


def run(m: "Inspector", tokens: "Tokens", outputs: list[Output], measure: str = "weight", text: str = "") -> Run:
    """Run one pass for every output and emit each: files first (published together),
    then the views."""
    from attnscope import export
    from attnscope.measures import AttendRequest, run_attend

    shape = Shape(m.n_layers, m.n_heads, measure, tuple(m.sites))
    info = Run(m.config.name or m.source, tokens, shape, text, config=m.config)
    needs = [out.needs(shape, tokens) for out in outputs]
    info.focus = next((n.focus for n in needs if n.focus is not None), None)
    export.check_space_all([(out.path, out.size(info)) for out in outputs if out.path is not None])
    req = _request(needs, measure, text)
    req.streams = [_bind(out, info) for out in outputs if type(out).stream is not Output.stream]
    with export.batch():
        full = run_attend(m, tokens, req)
        for out, need in zip(outputs, needs):
            if not out.final:
                _emit(out, full, need, info)
    for out, need in zip(outputs, needs):
        if out.final:
            _emit(out, full, need, info)
    return info


def _bind(out: Output, info: Run) -> Any:
    return lambda stack: out.stream(info, stack)


def _emit(out: Output, full: "AttendResult", need: Needs, info: Run) -> None:
    part = narrow(full, list(need.layers), list(need.heads), need.k or None, need.measures) if need.measures else None
    emitted = out.emit(part, info)
    if emitted is not None:
        info.emitted.append(emitted)


def _request(needs: list[Needs], measure: str, text: str) -> Any:
    """One request: each measure on the union of the layers and heads its outputs want."""
    from attnscope.measures import AttendRequest

    selections: dict[str, tuple[list[int], list[int]]] = {}
    k = 0
    for name in ORDER:
        wanting = [n for n in needs if name in n.measures]
        if wanting:
            selections[name] = (sorted({layer for n in wanting for layer in n.layers}),
                                sorted({head for n in wanting for head in n.heads}))
            k = max([k] + [n.k for n in wanting if name == "topk"])
    every_layer = sorted({layer for ls, _ in selections.values() for layer in ls})
    every_head = sorted({head for _, hs in selections.values() for head in hs})
    query = next((n.focus[2] for n in needs if n.focus is not None), 0)
    return AttendRequest(every_layer, every_head, list(selections), query=query, top_k=max(k, 1), text=text,
                         measure=measure, selections=selections)


def narrow(res: "AttendResult", layers: list[int], heads: list[int], k: Optional[int] = None,
           measures: tuple[str, ...] = ORDER) -> "AttendResult":
    """The part of a result one output asked for: its `measures` only, each cut to its
    `layers` × `heads` (and to the first `k` of the top-k keys, which are sorted). Every
    part's tensors lead with (layer, head) axes in the order of its own `layers` and
    `heads`; a part shares its tensors when nothing is cut."""
    import torch

    from attnscope.analysis import TopK

    def pick(t: Any, li: list[int], hi: list[int]) -> Any:
        if li != list(range(t.shape[0])):
            t = t.index_select(0, torch.tensor(li, dtype=torch.long))
        if hi != list(range(t.shape[1])):
            t = t.index_select(1, torch.tensor(hi, dtype=torch.long))
        return t

    changes: dict[str, Any] = {"layers": layers, "heads": heads}
    for name in ORDER:
        part = getattr(res, name)
        if name not in measures or part is None:
            changes[name] = None
            continue
        li = [part.layers.index(layer) for layer in layers]
        hi = [part.heads.index(head) for head in heads]
        cut: dict[str, Any] = {}
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if isinstance(value, torch.Tensor):
                value = pick(value, li, hi)
                cut[f.name] = value[..., :k] if k is not None and isinstance(part, TopK) else value
        changes[name] = dataclasses.replace(part, layers=layers, heads=heads, **cut)
    if "focus" not in measures:
        changes["update"] = None
    return dataclasses.replace(res, **changes)
