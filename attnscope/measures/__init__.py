"""Measures: what can be asked of one forward pass, registered in one place.

Each measure names the hook it reads (today every one reads the `pattern` at the
attention sites of its layers), builds the probe that keeps only what it needs, and
turns that probe into a result. `run_attend()` is the one library call behind `attend`'s
views, `--json`, `--save` and `--save-topk`: it takes the text and what to measure, runs
one pass with every probe attached (the streaming `--save` writer included) and returns
an `AttendResult`. The CLI only parses, calls and renders (through `attnscope.outputs`,
which unions what its outputs need into one request).

`KINDS` says what each `--measure` (weight, norm, rollout, alti, value-zeroing) yields per
layer: one matrix a head, or (rollout and the mixing measures) one a layer, so the heads a
selection may name come from here alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from attnscope import analysis
from attnscope.measures import transforms

if TYPE_CHECKING:
    from attnscope.api import Inspector
    from attnscope.hooks import SiteInfo
    from attnscope.tokenize import Tokens


@dataclass(frozen=True)
class Measure:
    """One measure: the hook quantity it reads, its probe, and the result it gives."""

    name: str
    reads: str  # the hook quantity (see attnscope.hooks)
    probe: Callable[["Inspector", list[int], list[int], "Tokens", "AttendRequest"], Any]
    result: Callable[[Any, "Tokens", "AttendRequest"], Any]


MEASURES: dict[str, Measure] = {
    "topk": Measure(
        "topk", "pattern",
        lambda m, ls, hs, t, r: analysis.TopKProbe(ls, hs, len(t), r.top_k, analysis.signed_layers(m.sites, r.measure)),
        lambda p, t, r: analysis.TopK(p.indices, p.weights, p.layers, p.heads, t, p.signed)),
    "focus": Measure(
        "focus", "pattern",
        lambda m, ls, hs, t, r: analysis.FocusProbe(ls, hs, len(t), r.query),
        lambda p, t, r: analysis.Focus(r.query, p.rows, p.layers, p.heads, t, p.sinks, r.signed)),
    "summary": Measure(
        "summary", "pattern",
        lambda m, ls, hs, t, r: analysis.SummaryProbe(ls, hs, m.config, len(t),
                                                      analysis.signed_layers(m.sites, r.measure)),
        lambda p, t, r: p.result()),
    "attention": Measure(
        "attention", "pattern",
        lambda m, ls, hs, t, r: analysis.FullPatterns(ls, hs, len(t)),
        lambda p, t, r: analysis.Attention(p.probs, p.layers, p.heads, t, r.signed)),
}


@dataclass(frozen=True)
class Kind:
    """What a `--measure` yields per layer, and the name its arrays take in a --save file."""

    name: str
    saved_as: str
    per_head: bool  # False: one matrix per layer (rollout), handed on as a single head 0

    def heads(self, spec: str | int | list[int] | None, n_heads: int, sites: Sequence["SiteInfo"] = (),
              layers: Iterable[int] | None = None) -> list[int]:
        """The heads a selection names under this measure: rollout has none to pick, so
        one row per layer, index 0, whatever --head said. Given the model's `sites`, each
        selected layer (default: all) is checked against its own head count."""
        if not self.per_head:
            return [0]
        if not sites:
            return analysis.select(spec, n_heads, "head")
        return analysis.select_heads(spec, sites, range(len(sites)) if layers is None else layers)


KINDS: dict[str, Kind] = {
    "weight": Kind("weight", "attentions", True),
    "norm": Kind("norm", "norms", True),
    "rollout": Kind("rollout", "rollout", False),
    "alti": Kind("alti", "alti", False),  # --save adds `alti_layer`, each layer alone (measures.mixing)
    "value-zeroing": Kind("value-zeroing", "value_zeroing", False),
}


@dataclass
class AttendRequest:
    """What to compute in one pass. `layers`/`heads` select what the measures show;
    `save_layers`/`save_heads` what `--save` and `--save-topk` write."""

    layers: list[int]
    heads: list[int]
    measures: list[str]
    query: int = 0
    top_k: int = 3
    save: Path | None = None
    save_topk: Path | None = None
    save_layers: list[int] = field(default_factory=list)
    save_heads: list[int] = field(default_factory=list)
    force: bool = False
    text: str = ""
    extra: dict[str, int] = field(default_factory=dict)  # scalars written beside the patterns
    measure: str = "weight"  # weight | norm | rollout | alti | value-zeroing (see measures.transforms)
    # A measure's own (layers, heads), where it differs from `layers`/`heads`: one pass
    # serves outputs that each want their own selection of each measure.
    selections: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    # More raw-value probes to attach (streamed file writers): each is called with the
    # pass's ExitStack, enters what it must close there, and returns its probe.
    streams: list[Callable[[contextlib.ExitStack], Any]] = field(default_factory=list)
    signed: frozenset[int] = frozenset()  # set by run_attend from the sites (`analysis.signed_layers`)

    def selection(self, measure: str) -> tuple[list[int], list[int]]:
        return self.selections.get(measure, (self.layers, self.heads))


def pattern_stream(stack: contextlib.ExitStack, path: Path, layers: list[int], heads: list[int], tokens: "Tokens",
                   measure: str, text: str = "", force: bool = False,
                   extra: dict[str, int] | None = None, sinks: bool = False, routes: Any = None,
                   linear: list[int] | None = None, linear_heads: list[int] | None = None) -> Any:
    """A probe streaming each complete layer's raw values into a `--save` file, whose
    writer is closed (and the file published) with `stack`. `sinks` (the model's
    attention has them): under `weight`, each row's sink weight is saved as `sinks`
    (the sink has no value vector, so norm and rollout have no sink column). `routes`: a
    `routing.RouteProbe` the pass fills, saved beside (routes, route_weights, moe_layers).
    `linear` (a model with linear layers: `linear_layers`): those layers are saved apart,
    their `linear_heads` (default: `heads`) as `linear_<name>` (see `export`)."""
    from attnscope import export

    kind = KINDS[measure]
    sinks = sinks and measure == "weight"
    writer = stack.enter_context(export.PatternWriter(path, layers, heads, len(tokens), tokens.ids, tokens.labels,
                                                      text, force, extra, name=kind.saved_as,
                                                      head_axis=kind.per_head, sinks=sinks,
                                                      also="alti_layer" if measure == "alti" else "",
                                                      routes=routes, linear=linear, linear_heads=linear_heads))
    if linear is not None:  # each kind its own heads and array: one stream a kind, the writer sorts them
        def emit(layer: int, probs: Any) -> None:
            writer.write_layer(probs, layer)

        apart = set(linear)
        stream: Any = _Kinds(analysis.LayerStream([x for x in layers if x not in apart], heads, len(tokens), emit),
                             analysis.LayerStream([x for x in layers if x in apart], linear_heads or heads,
                                                  len(tokens), emit))
    elif measure == "alti":  # each layer's own C_l beside the rolled-out matrices
        from attnscope.measures.mixing import AltiStream

        stream = AltiStream(layers, heads, len(tokens), lambda _layer, probs: writer.write_layer(probs),
                                 writer.write_also)
    else:
        stream = analysis.LayerStream(layers, heads, len(tokens), lambda _layer, probs: writer.write_layer(probs),
                                      writer.write_sinks if sinks else None)
    stream.routes = routes  # run_attend hooks it up beside the measure's wrapper
    return stream


class _Kinds(analysis.Probes):
    """Streams of a save's two kinds of layers, fed by one pass as one probe."""

    def __init__(self, *streams: Any) -> None:
        super().__init__(*streams)
        self.layers = sorted(layer for stream in streams for layer in stream.layers)
        self.routes: Any = None


def linear_layers(sites: Sequence["SiteInfo"]) -> list[int] | None:
    """The model's linear layers, whose patterns a save keeps apart (sites neither
    row-stochastic nor with sinks: a linear layer's hidden attention), or None for a
    model without any (its files keep the one `attentions` layout)."""
    apart = sorted(analysis.signed_layers(sites))
    return apart or None


def route_probe(cfg: Any, layers: list[int], n: int) -> Any:
    """A `routing.RouteProbe` for the saved `layers` that have experts; None without any."""
    from attnscope import routing

    chosen = set(layers)
    moe = [layer for layer in routing.moe_layers(cfg) if layer in chosen]
    return routing.RouteProbe(moe, n, routing.top_k(cfg, moe)) if moe else None


def run_attend(m: "Inspector", tokens: "Tokens", req: AttendRequest) -> analysis.AttendResult:
    """One forward pass computing every requested measure and writing the saves."""
    from attnscope import export

    n = len(tokens)
    unknown = [name for name in req.measures if name not in MEASURES]
    assert not unknown, f"unknown measures {unknown}"  # internal invariant: the CLI offers only these
    if req.measure in ("alti", "value-zeroing"):  # refused before the pass, in one line
        from attnscope.measures import mixing

        mixing.check(m, req.measure, n, m.n_layers if req.save is not None or req.streams else 0)
    if req.measure == "rollout":  # refused before the pass, in one line, where a layer's rows are signed
        transforms.check_rollout(m.sites, max(req.layers + req.save_layers
                                              + [layer for ls, _hs in req.selections.values() for layer in ls],
                                              default=0))
    if req.measure == "norm":  # refused before the pass where an output gate scales heads per query
        transforms.check_norm(m.config, req.layers + req.save_layers
                              + [layer for ls, _hs in req.selections.values() for layer in ls])
    if not KINDS[req.measure].per_head:  # one matrix per layer: a single "head"
        req.heads, req.save_heads = [0], [0]
        req.selections = {name: (ls, [0]) for name, (ls, _hs) in req.selections.items()}
    req.signed = analysis.signed_layers(m.sites, req.measure)
    probes = {name: MEASURES[name].probe(m, *req.selection(name), tokens, req) for name in req.measures}
    views: list[Any] = list(probes.values())
    topk_all = None
    if req.save_topk is not None:
        topk_all = analysis.TopKProbe(req.save_layers, req.save_heads, n, req.top_k)
        views.append(topk_all)
    with contextlib.ExitStack() as stack:
        saves: list[Any] = [stream(stack) for stream in req.streams]
        if req.save is not None:
            saves.append(pattern_stream(stack, req.save, req.save_layers, req.save_heads, tokens, req.measure,
                                        req.text, req.force, req.extra,
                                        any(m.sites[layer].sinks for layer in req.save_layers),
                                        route_probe(m.config, req.save_layers, n), linear_layers(m.sites)))
        wanted = [layer for probe in views + saves for layer in probe.layers]
        last = max(wanted + req.layers, default=0)
        hooks = transforms.wrap(req.measure, n, last, analysis.Probes(*views), analysis.Probes(*saves), m.model,
                                m.sites)
        word = None
        focus_layer = max(req.selection("focus")[0], default=0)
        # the lesson's view: what moved this word (through W_O: a softmax layer's, not a
        # linear layer's, whose gated norm is not linear in the values)
        if req.measure == "norm" and "focus" in req.measures and m.sites[focus_layer].stochastic:
            from attnscope.measures.update import WordUpdateHook

            word = WordUpdateHook(m.model, focus_layer, req.query)
            hooks = analysis.Probes(hooks, word)
        routes = [save.routes for save in saves if getattr(save, "routes", None) is not None]
        if routes:  # routes are no attention quantity: they go beside any measure's wrapper
            hooks = analysis.Probes(hooks, *routes)
        m.run(tokens.ids, hooks, last)
    if topk_all is not None:
        assert req.save_topk is not None
        export.save_topk(req.save_topk, topk_all.indices, topk_all.weights, req.save_layers, req.save_heads,
                         tokens.ids, req.force, req.extra)
    res = analysis.AttendResult(tokens, req.layers, req.heads, signed=req.signed,
                                kinds={layer: m.sites[layer].kind for layer in req.signed})
    for name, probe in probes.items():
        setattr(res, name, MEASURES[name].result(probe, tokens, req))
    if word is not None:
        res.update = word.result
    return res
