"""Layer and head selections from the command line ("all", "3", "2-5", "-4:", lists), checked
against what the model has; and which layers' values are signed. Free of torch."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from attnscope.errors import SelectionError

if TYPE_CHECKING:
    from attnscope.hooks import SiteInfo


_RANGE = re.compile(r"^(\d+)-(\d+)$")
_SLICE = re.compile(r"^(-?\d+)?:(-?\d+)?$")
_LONG = re.compile(r"\d{19}")  # a number past 64 bits: out of range of any model (and int() stops at 4,300 digits)


def select(spec: str | int | list[int] | None, count: int, what: str = "layer", owner: str = "the model") -> list[int]:
    """Parse a selector into sorted unique indices in [0, count).

    Accepts an int, a list, 'all', comma-separated items each an index (negative counts
    from the end), an inclusive range 'a-b', or a Python slice 'a:b'. An out-of-range
    index names `owner` ("the model has 8 heads", "layer 3 has 8 heads").
    """
    if spec is None:
        return list(range(count))
    if isinstance(spec, int):
        items: list[Any] = [spec]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
        if not items:
            raise SelectionError(f"an empty --{what} selection selects nothing", hint="give at least one index, or all")
    else:
        text = spec.strip().lower()
        if text in ("all", "*", ":"):
            return list(range(count))
        items = [part.strip() for part in text.split(",")]
    out: set[int] = set()
    for item in items:
        if isinstance(item, int):
            out.add(_index(item, count, what, owner))
            continue
        if not item:
            raise SelectionError(f"empty item in the --{what} selector {spec!r}")
        if _LONG.search(item):
            shown = item if len(item) <= 24 else f"{item[:20]}… ({len(item)} characters)"
            raise SelectionError(f"--{what} {shown} is out of range: {owner} has {count} {what}s "
                                 f"(0..{count - 1}, or -1 for the last)")
        if m := _RANGE.match(item):
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise SelectionError(f"--{what} range {item!r} runs backwards")
            out.update(_index(i, count, what, owner) for i in (a, b))
            out.update(range(a, b + 1))
        elif m := _SLICE.match(item):
            a = int(m.group(1)) if m.group(1) else None
            b = int(m.group(2)) if m.group(2) else None
            picked = list(range(count))[slice(a, b)]
            if not picked:
                raise SelectionError(f"--{what} slice {item!r} selects nothing of 0..{count - 1}")
            out.update(picked)
        else:
            try:
                out.add(_index(int(item), count, what, owner))
            except ValueError:
                raise SelectionError(
                    f"cannot read --{what} {item!r}",
                    hint="use an index (-1 is the last), a list 0,2,5, a range 1-3, a slice 2: or all",
                ) from None
    return sorted(out)


def _index(i: int, count: int, what: str, owner: str = "the model") -> int:
    if -count <= i < count:
        return i % count
    from attnscope.units import plural

    raise SelectionError(f"--{what} {i} is out of range: {owner} has {plural(count, what)} (0..{count - 1}, or -1 "
                         "for the last)")


def select_heads(spec: str | int | list[int] | None, sites: Sequence[SiteInfo], layers: Iterable[int]) -> list[int]:
    """The heads a --head selector names in the selected layers, each layer checked
    against its own head count (`hooks.sites`). Where every selected layer has the same
    count this is `select(spec, count, "head")`; where counts differ, an index past a
    layer's heads names that layer ("layer 3 has 8 heads"), and a selector meaning
    different heads in different layers ("all", "-1") is refused: results keep one head
    list for every layer. No selector at all (None: an output's default, every head of
    every layer) is the grid as wide as the most heads, 0..max−1, where counts differ: a
    layer's missing heads are filled in (`ProbeBase._pick`: NaN), as `heads` does."""
    first: dict[int, int] = {}  # head count -> the first selected layer that has it
    for layer in layers:
        first.setdefault(sites[layer].n_heads, layer)
    assert first, "a layer selection is never empty"  # internal invariant (select refuses one)
    if len(first) == 1:
        return select(spec, next(iter(first)), "head")
    if spec is None:
        return list(range(max(first)))
    picks = {count: select(spec, count, "head", owner=f"layer {layer}") for count, layer in first.items()}
    chosen = next(iter(picks.values()))
    if any(p != chosen for p in picks.values()):
        counts = ", ".join(f"layer {layer} has {count}" for count, layer in sorted(first.items()))
        raise SelectionError(f"--head {spec if spec is not None else 'all'} means different heads in layers with "
                             f"different head counts ({counts})",
                             hint="name heads by index, below the smallest count, or select layers of one head count")
    return chosen


def signed_layers(sites: Sequence[SiteInfo], measure: str = "weight") -> frozenset[int]:
    """The layers whose values under `measure` are signed and whose rows are no
    distributions: a site that is not row-stochastic (`SiteInfo.stochastic`) and has no
    sinks, as a linear layer's hidden attention M (`parts.linear_attention`). Only under
    `weight`: `norm` hands on magnitudes |M|·‖v‖, and rollout refuses such layers."""
    if measure != "weight":
        return frozenset()
    return frozenset(s.layer for s in sites if not s.stochastic and not s.sinks)
