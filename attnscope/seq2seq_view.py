"""What `attend SOURCE --target TARGET` and `heads --target` show of one pair of texts.

`PairView` with its tokens and selection (`pair_view`), and the heads' scores of a pair
(`diagonal_scores` on the cross-attention, `self_scores` on a stack's self-attention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnscope.config import ModelConfig
from attnscope.errors import InputError
from attnscope.hooks import PARTS
from attnscope.seq2seq_save import PairWriter


VIEWS = ("focus", "topk", "heatmap", "overview", "align")


@dataclass
class PairView:
    """What `attend SOURCE --target TARGET` shows of one part: the part's patterns for the
    selected layers and heads [layers, heads, rows, columns] (float32), the row tokens (the
    decoder's inputs, or the source for the encoder part) and the column tokens, the
    focus row, and for `align` each row's best column under the mean over the selection."""

    part: str
    view: str
    layers: list[int]
    heads: list[int]
    rows: Any  # Tokens
    columns: Any  # Tokens
    patterns: Tensor
    query: int
    k: int
    source: Any  # Tokens
    decoder: Any  # Tokens
    saved: Any = None  # the --save file's path, where the run wrote one (`PairWriter`)
    measure: str = "weight"  # what `patterns` holds (`seq2seq_measures`: norm's rows normalised to 1)

    def top(self, li: int, hi: int, row: int) -> list[tuple[int, float]]:
        """Row `row`'s top-k columns (index, weight) in head `hi` of layer `li` (of the
        selection); a causal row ranks only the keys it sees."""
        w = self.patterns[li, hi, row]
        if self.part == "decoder":
            w = w[:row + 1]
        vals, idx = w.topk(min(self.k, w.shape[0]))
        return [(int(j), float(v)) for j, v in zip(idx, vals)]

    def alignment(self) -> list[tuple[int, float]]:
        """Each row's best column and its weight, averaged over the selected layers and heads."""
        mean = self.patterns.mean(dim=(0, 1))  # (rows, columns)
        vals, idx = mean.max(dim=-1)
        return [(int(j), float(v)) for j, v in zip(idx, vals)]

    def document(self, model: str) -> dict[str, Any]:
        """The --json document: the tokens of both sides, the selection and, per view, the
        focus row's top keys in every head, every row's top keys in every head, one head's
        whole pattern (heatmap), or the alignment table."""
        def side(tokens: Any) -> dict[str, Any]:
            return {"ids": list(tokens.ids), "tokens": list(tokens.labels)}

        doc: dict[str, Any] = {
            "model": model, "part": self.part, "view": self.view,
            "source": side(self.source), "decoder": side(self.decoder),
            "rows": "source" if self.part == "encoder" else "decoder",
            "columns": "decoder" if self.part == "decoder" else "source",
            "layers": self.layers, "heads": self.heads, "k": self.k, "measure": self.measure,
        }
        if self.view == "align":
            doc["alignment"] = [{"index": i, "token": self.rows.labels[i], "best": j,
                                 "best_token": self.columns.labels[j], "weight": w}
                                for i, (j, w) in enumerate(self.alignment())]
        elif self.view == "heatmap":
            doc["patterns"] = self.patterns.tolist()
        elif self.view in ("focus", "overview"):
            doc["query"] = self.query
            doc["focus"] = [{"layer": layer, "head": head, "keys": [{"index": j, "weight": w}
                                                                   for j, w in self.top(li, hi, self.query)]}
                            for li, layer in enumerate(self.layers) for hi, head in enumerate(self.heads)]
        else:
            doc["topk"] = [{"layer": layer, "head": head,
                            "rows": [[{"index": j, "weight": w} for j, w in self.top(li, hi, i)]
                                     for i in range(len(self.rows))]}
                           for li, layer in enumerate(self.layers) for hi, head in enumerate(self.heads)]
        return doc


def pair_tokens(tokenizer: Any, cfg: ModelConfig, source: str, target: str, truncate: bool) -> tuple[Any, Any]:
    """The source's tokens (with the tokenizer's special tokens, as the encoder reads them)
    and the target's own (without: the decoder's start token goes before them, taking one
    position), each checked against the context; an empty target refused in one line."""
    from attnscope.errors import UsageError
    from attnscope.tokenize import tokenize

    src = tokenize(tokenizer, source, cfg.n_ctx, truncate)
    if not target.strip():
        raise UsageError("--target is empty", hint='give the output text, e.g. --target "Das Haus ist klein."')
    try:
        tgt = tokenize(tokenizer, target, cfg.n_ctx - 1, truncate, add_special_tokens=False)
    except InputError as err:
        raise InputError(f"--target: {err.message}", hint=err.hint) from None
    if not tgt.ids:
        raise UsageError("the target has no tokens", hint="give --target some text")
    return src, tgt


def pair_selection(cfg: ModelConfig, part: str, view: str, layer: str | None, head: str | None,
                   measure: str = "weight") -> tuple[list[int], list[int]]:
    """The layers and heads of `part` a view shows: the last layer (every layer for
    overview and align), every head (head 0 for the heatmap); under a measure with one
    matrix a layer (rollout, alti, value-zeroing) the single head 0."""
    from attnscope import analysis
    from attnscope.hooks import sites
    from attnscope.seq2seq_measures import heads

    part_sites = sites(cfg, part)
    ls = analysis.select(layer if layer is not None else ("all" if view in ("overview", "align") else "-1"),
                         len(part_sites), "layer")
    hs = analysis.select_heads(head if head is not None else ("0" if view == "heatmap" else "all"), part_sites, ls)
    return ls, heads(measure, hs)


def pair_view(m: Any, source: str, target: str, part: str, view: str, layer: str | None, head: str | None,
              k: int, token: str | None, truncate: bool, save: Any = None, force: bool = False,
              measure: str = "weight", also: Any = None) -> PairView:
    """Tokenize both texts, run both stacks once and select what `view` shows of `part`.
    Display defaults as attend's: the last layer (every layer for overview and align), every
    head (head 0 for the heatmap); only the selected layers' patterns are kept. `save`: every
    part's patterns, streamed to that .npz as the pass runs (`PairWriter`). `measure`: what
    the patterns hold (`seq2seq_measures`: weight, norm, and on the encoder rollout, alti,
    value-zeroing). `also(source, decoder, query)`: called once the tokens and the selection
    are known, before the pass; it returns a hook of its own and the layers it reads, fed
    the same values as the view (`outputs.pair`: --html, --plot)."""
    from attnscope.errors import UsageError
    from attnscope.hooks import Capture, Hooks, sites
    from attnscope.outputs.views import focus_index
    from attnscope.seq2seq import decoder_tokens, run

    cfg = m.config
    if part not in PARTS:
        raise UsageError(f"unknown part {part!r}", hint="use cross, encoder or decoder")
    if view == "align" and part != "cross":
        raise UsageError("--view align is the cross-attention's alignment table", hint="use --part cross")
    if k < 1:
        raise UsageError(f"--top-k must be at least 1, got {k}")
    src, tgt = pair_tokens(m.tokenizer, cfg, source, target, truncate)
    dec = decoder_tokens(m, tgt)
    ids = dec.ids
    part_sites = sites(cfg, part)
    ls, hs = pair_selection(cfg, part, view, layer, head, measure)
    from attnscope import seq2seq_measures

    seq2seq_measures.check(measure, part, save)
    seq2seq_measures.check_model(m, measure, len(src))
    rows, columns = (src, src) if part == "encoder" else (dec, dec if part == "decoder" else src)
    query = focus_index(rows, token)
    shown = [part_sites[layer_i].name for layer_i in ls]
    cap = Capture({site: ["pattern"] for site in shown})
    extra, extra_layers = also(src, dec, query) if also is not None else (None, [])
    views, reach = Hooks(cap, extra), sorted(set(ls) | set(extra_layers))
    if save is None:
        run(m.model, m._ids(src.ids), m._ids(ids), seq2seq_measures.hooks(m.model, measure, len(src), reach, views))
        saved = None
    else:
        from attnscope.measures import KINDS

        with PairWriter(save, cfg, src, dec, force, saved_as=KINDS[measure].saved_as) as writer:
            run(m.model, m._ids(src.ids), m._ids(ids),
                seq2seq_measures.hooks(m.model, measure, len(src), reach, views, writer))
        saved = writer.path
    chosen = torch.stack([cap.get(site, "pattern")[hs] for site in shown]).float()  # [layers, heads, rows, columns]
    return PairView(part, view, ls, hs, rows, columns, chosen, query, k, src, dec, saved, measure)


def diagonal_scores(cross: Tensor) -> Tensor:
    """`heads`' cross-attention score `diagonal`, per layer and head ([L, H] float32) of a
    cross pattern [L, H, n_t, n_s]: target row i of n_t is matched with source position
    j* = round(i·(n_s − 1)/(n_t − 1)) (halves rounded up; j* = 0 when n_t = 1), and the score
    is the mean over rows of the weight on source positions j* − 1 … j* + 1 (those that
    exist). High for a head that reads the source in order, as translation alignments
    mostly do; a uniform head scores about 3/n_s."""
    n_t, n_s = cross.shape[-2], cross.shape[-1]
    i = torch.arange(n_t)
    star = (2 * i * (n_s - 1) + (n_t - 1)) // (2 * (n_t - 1)) if n_t > 1 else torch.zeros(1, dtype=torch.long)
    j = torch.arange(n_s)
    near = ((j[None, :] - star[:, None]).abs() <= 1).to(cross.dtype)  # (n_t, n_s)
    return (cross * near).sum(-1).mean(-1).float()


def self_scores(cfg: ModelConfig, pattern: Tensor, tokens: Any, causal: bool, layers: list[int], heads: list[int],
                names: list[str] | None = None) -> Any:
    """`heads --target --part encoder|decoder`: the text scores of `heads.DEFINITIONS` (all
    but induction, which needs an input of its own, and sink) of one stack's self-attention
    `pattern` [L_sel, H_sel, n, n] on its own tokens (the source, or the decoder's inputs),
    under that stack's mask rule (`causal`: the decoder's): a `heads.HeadScores`."""
    from dataclasses import replace

    from attnscope.heads import HeadScores, text_terms

    wanted = [name for name in (names or ["previous_token", "first_token", "self", "next_token",
                                          "duplicate_token", "entropy"]) if name not in ("induction", "sink")]
    stack = replace(cfg, causal=causal, sliding_window=None)  # the stack's rule: visible keys, next_token
    terms, counts, undefined = text_terms(tokens.ids, stack, wanted)
    if "next_token" in undefined:
        undefined["next_token"] = "the decoder is causal: no token sees the one after it"
    if names is not None and "induction" in names:
        undefined["induction"] = "scored on an input of its own: run heads without --target for the encoder's"
    probs = pattern.float()
    scores = {name: torch.stack([(term(probs[li], 0, None) / counts[name]) for li in range(len(layers))]).float()
              for name, term in terms.items()}  # layer None: the stack's general rule (`visible_counts`)
    return HeadScores(layers, heads, scores, len(tokens), tokens=tokens, undefined=undefined)
