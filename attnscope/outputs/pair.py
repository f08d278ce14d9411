"""The page (--html) and the figure (--plot) of an encoder-decoder's run
(`attend SOURCE --target TARGET`), of the part shown (`--part`):

- cross (the default): rows are the decoder's inputs (its start token, then the target),
  columns the source. The page shows the source and the target as two token rows, the
  source row shaded by where the chosen target token looks (`render.page.Page(keys=)`),
  and the n_tgt × n_src heatmap; the figure is that non-square heatmap, both axes labelled.
- encoder / decoder: that stack's self-attention on its own tokens, square, as a one-stack
  model's page and figure.

Checked before the model loads (`check`: names, formats, --html-topk, --figsize,
matplotlib), planned from the tokens before the pass (`plan`: the page's exact size
against the browser's and the disk's limits, the figure's panel count; a hook keeping the
selected heads of the part's selected sites (`Kept`: memory as large as the page's data,
never a layer's other heads), on the same pass that --json, the view and --save read),
written after it, each atomically (`emit`). Selections as attend's: the page holds every layer and head
of the part by default (as --save), the figure the last layer's head 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from attnscope.errors import UsageError

if TYPE_CHECKING:
    from attnscope.tokenize import Tokens

PART_WORDS = {"cross": "cross-attention", "encoder": "encoder self-attention", "decoder": "decoder self-attention"}


class Kept:
    """A hook keeping the `heads` of the sites `names` as their query chunks arrive, in one
    [len(names), len(heads), rows, columns] float32 tensor allocated once: what a page or a
    figure holds and no more (a causal chunk's keys past its rows stay 0, as masked). With
    `k`, each row's k largest only (`weights` float32 and `indices` int64, [..., rows, k]):
    memory linear in the columns, as the page's --html-topk data."""

    def __init__(self, names: list[str], heads: list[int], rows: int, columns: int, k: Optional[int] = None) -> None:
        import torch

        self.position = {name: i for i, name in enumerate(names)}
        self.heads = torch.tensor(heads, dtype=torch.long)
        self.k = k
        shape = (len(names), len(heads), rows, columns if k is None else k)
        self.values = torch.zeros(shape, dtype=torch.float32)  # the weights, where k is set
        self.indices = torch.zeros(shape, dtype=torch.long) if k is not None else None

    def wants(self, site: str, what: str) -> bool:
        return what == "pattern" and site in self.position

    def report(self, site: str, what: str, value: Any, q_start: int, k_start: int) -> None:
        import torch

        chunk = value.index_select(0, self.heads.to(value.device)).float().cpu()  # (H_sel, c, K)
        at, rows = self.position[site], slice(q_start, q_start + chunk.shape[1])
        if self.k is None:
            self.values[at, :, rows, k_start:k_start + chunk.shape[2]] = chunk
            return
        assert k_start == 0  # internal invariant: a pair pass's chunks hold whole rows of keys
        if chunk.shape[2] < self.k:  # a causal chunk's short rows: the keys after them weigh 0
            chunk = torch.nn.functional.pad(chunk, (0, self.k - chunk.shape[2]))
        weights, indices = chunk.topk(self.k, dim=-1, sorted=True)
        self.values[at, :, rows], self.indices[at, :, rows] = weights, indices  # type: ignore[index]


@dataclass
class PairFiles:
    """--html / --plot of a --target run (either or both None)."""

    html: Optional[Path]
    html_topk: Optional[int]
    plot: Optional[Path]
    figsize: Optional[str]
    layer: Optional[str]
    head: Optional[str]
    force: bool = False
    _plan: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.html is not None or self.plot is not None

    def check(self) -> None:
        """What can be refused before the model loads."""
        from attnscope.atomic import check_target

        if self.html_topk is not None and self.html is None:
            raise UsageError("--html-topk needs --html", hint="e.g. --html page.html --html-topk 8")
        if self.figsize is not None and self.plot is None:
            raise UsageError("--figsize needs --plot", hint="e.g. --plot figure.pdf --figsize 6,5")
        if self.html is not None:
            from attnscope.render.page import FORMATS

            if self.html_topk is not None and self.html_topk < 1:
                raise UsageError(f"--html-topk must be at least 1, got {self.html_topk}")
            self.html = check_target(self.html, self.force, FORMATS)
        if self.plot is not None:
            from attnscope.render.figure import FORMATS as FIGURES, parse_figsize, require_matplotlib

            self.plot = check_target(self.plot, self.force, FIGURES)
            if self.figsize is not None:
                parse_figsize(self.figsize)
            require_matplotlib()

    def plan(self, m: Any, name: str, part: str, measure: str, source: "Tokens", decoder: "Tokens",
             query: int) -> tuple[Any, list[int]]:
        """After tokenizing, before the pass: the page planned and its size checked, the
        figure's panels counted; the hook that keeps the selected sites' patterns (under
        `measure`, as the view's: `seq2seq.pair_view`) and the layers it reads."""
        from attnscope import analysis, seq2seq_measures
        from attnscope.hooks import Hooks, sites

        part_sites = sites(m.config, part)
        rows, keys = (source, None) if part == "encoder" else (decoder, source if part == "cross" else None)
        plan: dict[str, Any] = {"part": part, "rows": rows, "keys": keys, "sites": part_sites, "name": name,
                                "measure": measure}
        if self.html is not None:
            from attnscope.render.page import NOTE_PAGE_BYTES, Page
            from attnscope.units import human_bytes

            ls = analysis.select(self.layer if self.layer is not None else "all", len(part_sites), "layer")
            hs = seq2seq_measures.heads(measure, analysis.select_heads(self.head if self.head is not None else "all",
                                                                       part_sites, ls))
            page = Page(name, rows, ls, hs, measure, self.html_topk, (ls[-1], hs[0], query), keys=keys,
                        pair=(part, source.text, decoder.text))
            size = page.check(self.html)
            if size >= NOTE_PAGE_BYTES:
                from attnscope.outputs.files import _note

                _note(f"will write a {human_bytes(size)} page to {self.html}")
            plan["page"] = page
        if self.plot is not None:
            from attnscope.render.figure import check_panels

            ls = analysis.select(self.layer if self.layer is not None else "-1", len(part_sites), "layer")
            hs = seq2seq_measures.heads(measure, analysis.select_heads(self.head if self.head is not None else "0",
                                                                       part_sites, ls))
            check_panels(len(ls), len(hs))
            plan["figure"] = (ls, hs)
        chosen = {"figure": plan["figure"]} if "figure" in plan else {}
        if "page" in plan:
            chosen["page"] = (plan["page"].layers, plan["page"].heads)
        n_columns = len(keys if keys is not None else rows)
        plan["kept"] = {key: Kept([part_sites[layer].name for layer in ls], hs, len(rows), n_columns,
                                  plan["page"].k if key == "page" else None)
                        for key, (ls, hs) in chosen.items()}
        self._plan = plan
        return Hooks(*plan["kept"].values()), sorted({layer for ls, _hs in chosen.values() for layer in ls})

    def emit(self) -> list[tuple[str, Path, str]]:
        """After the pass: write the page and the figure from what the hook `plan` gave
        kept; (json key, path, the line saying so) for each."""
        from attnscope.units import human_bytes

        plan, done = self._plan, []
        assert "kept" in plan  # internal invariant: plan() ran before the pass
        rows, keys = plan["rows"], plan["keys"]
        if "page" in plan:
            page = plan["page"]
            kept = plan["kept"]["page"]  # [layers, heads, rows, columns or k]
            if page.k is None:
                written = page.write(self.html, self.force, attention=kept.values)
            else:
                written = page.write(self.html, self.force, topk=(kept.indices, kept.values))
            held = f"top-{page.k} keys, " if page.k is not None else ""
            done.append(("saved_html", self.html,
                         f"wrote a {human_bytes(written)} page ({held}{PART_WORDS[plan['part']]}, "
                         f"{len(page.layers)} layers × {len(page.heads)} heads) to {self.html}"))
        if "figure" in plan:
            from attnscope.render.figure import parse_figsize, write_figure

            ls, hs = plan["figure"]
            axes_names = ("target", "source") if plan["part"] == "cross" else ("query", "key")
            write_figure(self.plot, plan["kept"]["figure"].values, ls, hs, list(rows.labels),
                         f"{plan['name']} · {PART_WORDS[plan['part']]}", plan["measure"],
                         parse_figsize(self.figsize) if self.figsize is not None else None, self.force,
                         columns=list(keys.labels) if keys is not None else None, axes_names=axes_names)
            shown = f"layer {ls[0]}, head {hs[0]}" if len(ls) * len(hs) == 1 else f"{len(ls)} layers × {len(hs)} heads"
            done.append(("saved_plot", self.plot, f"wrote a figure of the {PART_WORDS[plan['part']]}, {shown}, to "
                                                  f"{self.plot}"))
        return done


class GenerationPage:
    """`generate SOURCE --html` on an encoder-decoder: the source as one token row, the
    generated tokens as the other, and the cross-attention of each step between them (row i:
    the step that chose generated token i, every decoder layer and head, under `measure` as
    the table's), read from the teacher-forced pass over what the decoder read
    (`seq2seq.save_decoding`, which gives each step's row as decoding did). Planned once the
    tokens are known (its size checked against the browser's and the disk's limits) and
    written atomically after that pass."""

    def __init__(self, m: Any, name: str, source: "Tokens", ids: list[int], labels: list[str], text: str,
                 measure: str, path: Path) -> None:
        from attnscope import seq2seq_measures
        from attnscope.hooks import sites
        from attnscope.render.page import NOTE_PAGE_BYTES, Page
        from attnscope.tokenize import Tokens
        from attnscope.units import human_bytes

        self.path, self.sites = path, sites(m.config, "cross")
        rows = Tokens(text=text, ids=list(ids), labels=list(labels), offsets=[(0, 0)] * len(ids),
                      special=[False] * len(ids))
        layers = list(range(len(self.sites)))
        heads = seq2seq_measures.heads(measure, list(range(self.sites[0].n_heads)))
        self.page = Page(name, rows, layers, heads, measure, None, (layers[-1], heads[0], len(ids) - 1), keys=source,
                         pair=("cross", source.text, text), generated=True)
        size = self.page.check(path)
        if size >= NOTE_PAGE_BYTES:
            from attnscope.outputs.files import _note

            _note(f"will write a {human_bytes(size)} page to {path}")
        self._kept = Kept([site.name for site in self.sites], heads, len(ids), len(source))
        self.hook = seq2seq_measures.hooks(m.model, measure, len(source), layers, self._kept)

    def write(self, force: bool) -> str:
        """Write the page; the line saying so."""
        from attnscope.units import human_bytes

        written = self.page.write(self.path, force, attention=self._kept.values)
        return (f"wrote a {human_bytes(written)} page (each generated token's cross-attention, "
                f"{len(self.page.layers)} layers × {len(self.page.heads)} heads) to {self.path}")
