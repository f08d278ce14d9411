"""What `explore` shows, computed and kept: patterns per measure, entropies, exports.

No Textual here: the app asks a `Session` for one head's n × n pattern under one
measure and draws it. Every pass goes through `measures.run_attend`, the one library
call behind `attend`, so a pattern shown here is the one `attend` reports for the same
layer and head.

How much is computed at once is decided by size, not by a flag. When every layer's
patterns fit in `budget` bytes (1 GiB: n ≲ 1,000 tokens on SmolLM2's 30 × 9 heads), the
first request runs the model once for the measure and keeps all of them, with the
per-head entropies from the same pass. Otherwise a request computes one layer (all its
heads), or only one head where a single layer would not fit, up to that layer only, and
the overview's entropies come from a separate pass that keeps O(L·H·n). Kept patterns
are evicted least recently used whenever a new block would go over the budget, so
memory stays bounded whatever the text length, as `attend` bounds it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from attnscope.errors import UsageError
from attnscope.measures import KINDS
from attnscope.tokenize import visible

if TYPE_CHECKING:
    from attnscope.api import Inspector
    from attnscope.tokenize import Tokens

MEASURES = tuple(KINDS)  # weight, norm, rollout
BUDGET = 1 << 30  # bytes of float32 patterns kept at once
SAVE_NAME = {name: kind.saved_as for name, kind in KINDS.items()}  # as `attend --save` names them

BlockKey = tuple[str, tuple[int, ...], tuple[int, ...]]  # (measure, layers, heads)


class Cancelled(Exception):
    """A pass stopped early: the app is closing, or the user moved on from its result."""


class _Checked:
    """Hooks that ask `go_on()` at every site and chunk before passing the report on, so
    a pass can be stopped within one layer (the model asks its hooks at each block)."""

    def __init__(self, hooks: Any, go_on: Callable[[], bool]) -> None:
        self.hooks, self.go_on = hooks, go_on

    def wants(self, site: str, what: str) -> bool:
        if not self.go_on():
            raise Cancelled
        return self.hooks is not None and self.hooks.wants(site, what)

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        if not self.go_on():
            raise Cancelled
        self.hooks.report(site, what, value, q_start, k_start)


class _Stoppable:
    """The inspector as `run_attend` sees it, with every pass's hooks `_Checked`."""

    def __init__(self, inspector: "Inspector", go_on: Callable[[], bool]) -> None:
        self._m, self._go_on = inspector, go_on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def run(self, ids: Any, hooks: Any = None, last_layer: int | None = None) -> Tensor:
        return self._m.run(ids, _Checked(hooks, self._go_on), last_layer)


@dataclass(frozen=True)
class Timing:
    """The last computation: how long it took and what it computed."""

    seconds: float
    what: str


class Session:
    """One model and one text; patterns computed on request and kept within a budget.

    Thread-safe for one computing thread beside the UI thread: passes are serialised,
    and reads of what is kept never wait for a pass to finish."""

    def __init__(self, inspector: "Inspector", tokens: "Tokens", budget: int = BUDGET) -> None:
        self.m = inspector
        self.tokens = tokens
        self.n = len(tokens)
        self.n_layers = inspector.n_layers
        self.n_heads = inspector.n_heads
        self.name = visible(inspector.config.name or str(inspector.source))
        self.budget = budget
        self.last: Timing | None = None
        self._blocks: OrderedDict[BlockKey, Tensor] = OrderedDict()  # (L_sel, H_sel, n, n) each
        self._entropy: dict[str, Tensor] = {}  # measure -> (L, H') mean normalised entropy
        self._compute = threading.Lock()  # one pass at a time
        self.stop = threading.Event()  # set when the app closes: a running pass stops
        self._keep = threading.Lock()  # the kept blocks, held only briefly

    # ------------------------------------------------------------------ shapes and plans

    def heads_of(self, measure: str) -> int:
        """Heads a measure has per layer: rollout mixes them into one matrix."""
        return self.n_heads if KINDS[measure].per_head else 1

    def _bytes(self, layers: int, heads: int) -> int:
        return layers * heads * self.n * self.n * 4

    def plan(self, measure: str) -> str:
        """'all' (every layer in one pass), 'layer' (one layer's heads a pass) or 'head'."""
        heads = self.heads_of(measure)
        if self._bytes(self.n_layers, heads) <= self.budget:
            return "all"
        return "layer" if self._bytes(1, heads) <= self.budget else "head"

    def _block_for(self, measure: str, layer: int, head: int) -> tuple[list[int], list[int]]:
        plan = self.plan(measure)
        heads = list(range(self.heads_of(measure)))
        if plan == "all":
            return list(range(self.n_layers)), heads
        return [layer], heads if plan == "layer" else [head]

    def _check(self, measure: str, layer: int, head: int) -> None:
        if measure not in MEASURES:
            raise UsageError(f"unknown measure {measure!r}", hint=f"use one of {', '.join(MEASURES)}")
        if not (0 <= layer < self.n_layers and 0 <= head < self.heads_of(measure)):
            raise UsageError(f"no layer {layer} head {head} under {measure}")  # internal: the app clamps

    # ------------------------------------------------------------------ reading what is kept

    def pattern(self, measure: str, layer: int, head: int) -> Tensor | None:
        """One head's (n, n) pattern if it is kept (row i: query i over the keys), else None."""
        with self._keep:
            for key, block in reversed(self._blocks.items()):
                m, layers, heads = key
                if m == measure and layer in layers and head in heads:
                    self._blocks.move_to_end(key)
                    return block[layers.index(layer), heads.index(head)]  # (n, n)
        return None

    def entropy(self, measure: str) -> Tensor | None:
        """Per layer and head (L, H'), each row's entropy over log(visible keys), averaged."""
        return self._entropy.get(measure)

    def kept_bytes(self) -> int:
        with self._keep:
            return sum(b.numel() * b.element_size() for b in self._blocks.values())

    # ------------------------------------------------------------------ computing

    def ensure(self, measure: str, layer: int, head: int, wanted: Callable[[], bool] | None = None) -> Tensor | None:
        """The pattern, computed (one pass) if it is not kept. `wanted` is asked before and
        during a pass that computes only this layer or head: a request the user has moved
        on from is dropped (None). A pass of every layer serves every head, and runs on."""
        self._check(measure, layer, head)
        with self._compute:
            found = self.pattern(measure, layer, head)
            if found is not None or self.stop.is_set() or (wanted is not None and not wanted()):
                return found
            layers, heads = self._block_for(measure, layer, head)
            self._make_room(self._bytes(len(layers), len(heads)))
            with_summary = len(layers) == self.n_layers and measure not in self._entropy
            try:
                res, seconds = self._run(measure, layers, heads, ["attention", "summary"] if with_summary else ["attention"],
                                         wanted if len(layers) < self.n_layers else None)
            except Cancelled:
                return None
            assert res.attention is not None  # internal invariant: asked for
            with self._keep:
                self._blocks[(measure, tuple(layers), tuple(heads))] = res.attention.probs
            if res.summary is not None:
                self._entropy[measure] = res.summary.entropy
            self.last = Timing(seconds, self._describe(measure, layers, heads))
            found = self.pattern(measure, layer, head)  # under the lock: no other pass can evict it first
        assert found is not None  # internal invariant: just kept
        return found

    def ensure_entropy(self, measure: str) -> Tensor | None:
        """Every head's entropy under a measure: from the pass that kept all patterns, else
        a pass keeping only the entropies (memory linear in n)."""
        if measure not in self._entropy and self.plan(measure) == "all":
            self.ensure(measure, self.n_layers - 1, 0)
        with self._compute:
            if measure not in self._entropy and not self.stop.is_set():
                layers, heads = list(range(self.n_layers)), list(range(self.heads_of(measure)))
                try:
                    res, seconds = self._run(measure, layers, heads, ["summary"])
                except Cancelled:
                    return None
                assert res.summary is not None  # internal invariant: asked for
                self._entropy[measure] = res.summary.entropy
                self.last = Timing(seconds, f"entropy of every head, {measure}")
        return self._entropy.get(measure)

    def _run(self, measure: str, layers: list[int], heads: list[int], measures: list[str],
             wanted: Callable[[], bool] | None = None) -> tuple[Any, float]:
        """One `run_attend` pass; `Cancelled` if the app closes (or `wanted()` turns False)."""
        from attnscope.measures import AttendRequest, run_attend

        def go_on() -> bool:
            return not self.stop.is_set() and (wanted is None or wanted())

        req = AttendRequest(list(layers), list(heads), measures, text=self.tokens.text, measure=measure)
        start = time.perf_counter()
        with torch.inference_mode():
            res = run_attend(_Stoppable(self.m, go_on), self.tokens, req)  # type: ignore[arg-type]
        return res, time.perf_counter() - start

    def _make_room(self, need: int) -> None:
        """Evict the least recently used blocks until `need` more bytes fit the budget
        (all of them if it never will: one block is always allowed)."""
        with self._keep:
            used = sum(b.numel() * b.element_size() for b in self._blocks.values())
            while self._blocks and used + need > self.budget:
                _, block = self._blocks.popitem(last=False)
                used -= block.numel() * block.element_size()

    def _describe(self, measure: str, layers: list[int], heads: list[int]) -> str:
        where = f"L0–{self.n_layers - 1}" if len(layers) == self.n_layers and len(layers) > 1 else f"L{layers[0]}"
        if len(heads) == 1 and self.heads_of(measure) > 1:
            where += f"H{heads[0]}"
        return f"{where} {measure}"

    # ------------------------------------------------------------------ export

    def default_export_path(self, measure: str, layer: int, head: int, folder: Path | None = None) -> Path:
        """attnscope-L29H0.npz (-norm, L29-rollout) in `folder` (the cwd), numbered
        -1, -2, … rather than overwriting a file already there."""
        folder = Path.cwd() if folder is None else folder
        stem = f"attnscope-L{layer}" + (f"H{head}" if KINDS[measure].per_head else "")
        stem += "" if measure == "weight" else f"-{measure}"
        path, i = folder / f"{stem}.npz", 0
        while path.exists() or path.is_symlink():
            i += 1
            path = folder / f"{stem}-{i}.npz"
        return path

    def export(self, path: Path, measure: str, layer: int, head: int) -> Path:
        """Write one head as `attend --save` writes it (same arrays and names; never over
        an existing file). Weights and rollout come from memory; `norm` views hold rows
        normalised to 1 while `--save` writes the raw ‖α·f(x)‖, so norm is recomputed."""
        from attnscope import export

        self._check(measure, layer, head)
        path = export.check_target(Path(path), force=False)
        export.check_space(path, export.pattern_bytes(1, 1, self.n))
        heads = [head]
        if measure == "norm":
            from attnscope.measures import AttendRequest, run_attend

            req = AttendRequest([layer], heads, [], save=path, save_layers=[layer], save_heads=heads,
                                text=self.tokens.text, measure=measure)
            with self._compute, torch.inference_mode():
                run_attend(_Stoppable(self.m, lambda: not self.stop.is_set()), self.tokens, req)  # type: ignore[arg-type]
            return path
        probs = self.ensure(measure, layer, head)
        if probs is None:
            raise Cancelled
        with export.PatternWriter(path, [layer], heads, self.n, self.tokens.ids, self.tokens.labels,
                                  self.tokens.text, False, name=SAVE_NAME[measure],
                                  head_axis=KINDS[measure].per_head) as writer:
            writer.write_layer(probs[None])  # (1, n, n): one head, or rollout's single matrix
        return path


def ranked(row: Tensor, k: int) -> list[tuple[int, float]]:
    """The k keys a query row weighs most, heaviest first (by |weight|, the sign kept: a
    linear layer's hidden attention is signed); masked keys (exactly 0) left out."""
    k = max(0, min(k, row.shape[0]))
    if k == 0:
        return []
    _, i = torch.topk(row.abs(), k, sorted=True)
    return [(j, x) for j, x in zip(i.tolist(), row[i].tolist()) if x != 0.0]


def rss_bytes() -> tuple[int, bool] | None:
    """(resident memory now, True) from /proc; else (peak resident memory, False); else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), True
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (peak if sys.platform == "darwin" else peak * 1024), False
    except (ImportError, OSError, ValueError):
        return None
