"""Turn attention patterns into results: full patterns, top-k, summaries (selections live in
`attnscope.selection` and are re-exported here).

The probes here receive one query chunk of one layer's probabilities at a time from
`model.Transformer` and keep only what they need, so top-k and summaries of every layer
and head never hold more than a chunk of probabilities. Everything returns dataclasses
of tensors; nothing prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnscope.errors import SelectionError  # noqa: F401  (re-exported)
from attnscope.hooks import Hooks, SiteInfo, attn_site  # noqa: F401  (SiteInfo re-exported)
from attnscope.parts.attention import mask_rule
from attnscope.selection import _LONG, _RANGE, _SLICE, _index, select, select_heads, signed_layers  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from attnscope.config import ModelConfig
    from attnscope.tokenize import Tokens

def by_magnitude(chunk: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k entries of each row with the largest |value|, their signed values and
    indices, largest first: how a signed row (a linear layer's M) is ranked."""
    _, i = torch.topk(chunk.abs(), k, dim=-1, sorted=True)
    return chunk.gather(-1, i), i


class ProbeBase:
    """Base of the probes: a hook (see `attnscope.hooks`) on the attention sites of the
    layers asked for, receiving each chunk of their patterns as `pattern(layer, start,
    probs)`; a subclass wanting more names it in `WHAT`."""

    WHAT: tuple[str, ...] = ("pattern",)

    def __init__(self, layers: list[int], heads: list[int]) -> None:
        self.layers = layers
        self.heads = heads
        self._layer_pos = {layer: i for i, layer in enumerate(layers)}
        self._heads = torch.tensor(heads, dtype=torch.long)
        self._sites = {attn_site(layer): layer for layer in layers}

    def wants(self, site: str | int, what: str = "pattern") -> bool:
        """At a site (or, given a layer index, at that layer's attention)."""
        if isinstance(site, int):
            return site in self._layer_pos and what in self.WHAT
        return what in self.WHAT and site in self._sites

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        assert k_start == 0, "probes read whole-text passes"  # internal invariant
        getattr(self, what)(self._sites[site], q_start, value)

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        pass

    def sink(self, layer: int, start: int, weights: Tensor) -> None:
        """The chunk's sink weights (H, c), where the layer's kind has sinks and `WHAT` names them."""

    def _pick(self, probs: Tensor) -> Tensor:
        if len(self.heads) == probs.shape[0]:
            return probs
        if max(self.heads, default=-1) < probs.shape[0]:
            return probs.index_select(0, self._heads.to(probs.device))  # (H_sel, c, T)
        # The grid as wide as the most heads (`select_heads` with no selector): a head
        # this layer lacks is a row of NaN, never another head's values.
        have = self._heads < probs.shape[0]
        out = probs.new_full((len(self.heads), *probs.shape[1:]), float("nan"))
        out[have.to(probs.device)] = probs.index_select(0, self._heads[have].to(probs.device))
        return out  # (H_sel, c, T)

    def _missing(self, probs: Tensor) -> Tensor:
        """(H_sel,) bool: the selected heads this layer lacks (its own count `probs.shape[0]`)."""
        return self._heads >= probs.shape[0]


@dataclass
class Attention:
    """Full patterns: probs[l, h, i, j] is how much query token i attends to key j."""

    probs: Tensor  # (L_sel, H_sel, T, T) float32
    layers: list[int]
    heads: list[int]
    tokens: "Tokens | None" = None
    signed: frozenset[int] = frozenset()  # layers whose pattern is signed, rows no distributions (`signed_layers`)


class FullPatterns(ProbeBase):
    def __init__(self, layers: list[int], heads: list[int], n: int) -> None:
        super().__init__(layers, heads)
        self.probs = torch.empty(len(layers), len(heads), n, n, dtype=torch.float32)  # (L_sel, H_sel, T, T)

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        chunk = self._pick(probs)  # (H_sel, c, K)
        rows = self.probs[self._layer_pos[layer], :, start : start + chunk.shape[1]]  # (H_sel, c, T)
        rows[..., : chunk.shape[2]] = chunk.cpu()
        rows[..., chunk.shape[2] :] = 0.0


class LayerStream(ProbeBase):
    """Holds one layer's selected heads (H_sel, T, T) at a time and hands each complete
    layer to `emit` (e.g. a streaming file writer), so memory holds one layer, not all;
    given `emit_sinks`, each chunk's sink weights (H_sel, c) go to it as they come."""

    def __init__(self, layers: list[int], heads: list[int], n: int, emit: Any, emit_sinks: Any = None) -> None:
        super().__init__(layers, heads)
        self.n = n
        self.emit = emit
        self.emit_sinks = emit_sinks
        if emit_sinks is not None:
            self.WHAT = ("pattern", "sink")
        self.buffer = torch.empty(len(heads), n, n, dtype=torch.float32)  # (H_sel, T, T)

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        chunk = self._pick(probs)  # (H_sel, c, K)
        stop = start + chunk.shape[1]
        self.buffer[:, start:stop, : chunk.shape[2]] = chunk.cpu()
        self.buffer[:, start:stop, chunk.shape[2] :] = 0.0
        if stop == self.n:  # chunks arrive in order; the layer is complete
            self.emit(layer, self.buffer)

    def sink(self, layer: int, start: int, weights: Tensor) -> None:
        self.emit_sinks(self._layer_pos[layer], start, self._pick(weights).cpu())  # (H_sel, c)


@dataclass
class TopK:
    """indices[l, h, i] are the k keys query i attends to most, weights descending (on a
    signed layer, `signed`, by |weight|: the weight keeps its sign).

    A key the mask hides (a causal query's future, a window's past, padding) weighs
    exactly 0 after the kernel's softmax: where a query sees fewer than k keys, its last
    entries weigh 0 and name no key it can see. `rows` lists only keys of weight other
    than 0, and a saved top-k is read the same way (an entry of weight 0 is no key).
    Where layers differ in head count, a head a layer lacks has index -1, weight NaN."""

    indices: Tensor  # (L_sel, H_sel, T, k) int64
    weights: Tensor  # (L_sel, H_sel, T, k) float32
    layers: list[int]
    heads: list[int]
    tokens: "Tokens | None" = None
    signed: frozenset[int] = frozenset()  # layers ranked by |weight| (`signed_layers`)

    def rows(self, layer_pos: int, head_pos: int, query: int) -> list[tuple[int, float]]:
        """The query's listed keys (key index, weight), heaviest first: at most k."""
        idx = self.indices[layer_pos, head_pos, query].tolist()
        w = self.weights[layer_pos, head_pos, query].tolist()
        return [(j, x) for j, x in zip(idx, w) if x != 0.0 and j >= 0]


class TopKProbe(ProbeBase):
    def __init__(self, layers: list[int], heads: list[int], n: int, k: int,
                 signed: frozenset[int] = frozenset()) -> None:
        super().__init__(layers, heads)
        self.k = min(k, n)
        self.signed = signed
        shape = (len(layers), len(heads), n, self.k)
        self.indices = torch.empty(shape, dtype=torch.long)
        self.weights = torch.empty(shape, dtype=torch.float32)

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        chunk = self._pick(probs)  # (H_sel, c, K)
        if chunk.shape[2] < self.k:  # fewer keys than k in this chunk: the rest weigh 0
            chunk = torch.nn.functional.pad(chunk, (0, self.k - chunk.shape[2]))
        w, i = (by_magnitude(chunk, self.k) if layer in self.signed
                else torch.topk(chunk, self.k, dim=-1, sorted=True))  # (H_sel, c, k)
        pos, stop = self._layer_pos[layer], start + chunk.shape[1]
        missing = self._missing(probs)
        if missing.any():  # a head this layer lacks: no key (-1), weight NaN
            i = i.masked_fill(missing.to(i.device)[:, None, None], -1)
            w = w.masked_fill(missing.to(w.device)[:, None, None], float("nan"))
        self.weights[pos, :, start:stop] = w.cpu()
        self.indices[pos, :, start:stop] = i.cpu()


@dataclass
class Summary:
    """Per layer and head: mean normalised entropy and mean attention on the first token.
    A signed layer's rows are no distributions: its entropy is NaN (undefined)."""

    entropy: Tensor  # (L_sel, H_sel): mean over rows of H(row) / log(visible keys); NaN on `signed` layers
    first_token: Tensor  # (L_sel, H_sel): mean over rows i >= 1 of A[i, 0]
    layers: list[int]
    heads: list[int]
    signed: frozenset[int] = frozenset()


def visible_counts(cfg: "ModelConfig", n: int, layer: int | None = None, rows: slice = slice(None)) -> Tensor:
    """How many keys each query row (of `rows`) may see, under the model's own mask rule
    (`parts.attention.MaskRule`, in `layer`, where layers differ as Gemma 2's do)."""
    q_pos = torch.arange(n)[rows]
    return mask_rule(cfg, layer).counts(q_pos, n)


def normalised_entropy(probs: Tensor, counts: Tensor) -> Tensor:
    """Row entropy divided by log(visible keys): 0 = one key, 1 = uniform. probs (..., c, T)."""
    ent = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)  # (..., c)
    denom = torch.log(counts.to(probs.dtype).clamp_min(1))
    # float32 rounding can put a uniform row a hair above 1: the score is defined on [0, 1]
    return torch.where(counts > 1, ent / denom.clamp_min(1e-30), torch.zeros_like(ent)).clamp(0.0, 1.0)


class SummaryProbe(ProbeBase):
    def __init__(self, layers: list[int], heads: list[int], cfg: "ModelConfig", n: int,
                 signed: frozenset[int] = frozenset()) -> None:
        super().__init__(layers, heads)
        self.n = n
        self.cfg = cfg
        self.signed = signed
        self.row_entropy = torch.zeros(len(layers), len(heads), n)  # (L_sel, H_sel, T)
        self.first = torch.zeros(len(layers), len(heads), n)  # (L_sel, H_sel, T)

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        chunk = self._pick(probs).float()
        stop = start + chunk.shape[1]
        pos = self._layer_pos[layer]
        if layer in self.signed:  # rows that are no distributions have no entropy
            self.row_entropy[pos, :, start:stop] = float("nan")
        else:
            counts = visible_counts(self.cfg, self.n, layer, slice(start, stop)).to(chunk.device)
            self.row_entropy[pos, :, start:stop] = normalised_entropy(chunk, counts).cpu()
        self.first[pos, :, start:stop] = chunk[..., 0].cpu()

    def result(self) -> Summary:
        first = self.first[..., 1:].mean(-1) if self.n > 1 else torch.zeros(self.first.shape[:2])
        return Summary(self.row_entropy.mean(-1), first, self.layers, self.heads, self.signed)


class QKProbe(ProbeBase):
    """Keeps one layer's queries and keys (after RoPE), each key head repeated for the
    query heads it serves, and its real scores (after modifiers, before the mask)."""

    def __init__(self, layer: int, group_size: int = 1, scores: bool = True) -> None:
        super().__init__([layer], [])
        # scores make a causal kernel score every key: asked for only where they are read
        self.WHAT = ("q", "k", "scores") if scores else ("q", "k")
        self.group_size = group_size
        self.q: Tensor | None = None
        self.k: Tensor | None = None
        self.scores: list[Tensor] = []

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        if what == "scores":
            self.scores.append(value.float().cpu())
        elif what == "q":
            self.q = value.float().cpu()
        else:
            self.k = value.float().cpu().repeat_interleave(self.group_size, dim=0)

    def all_scores(self) -> Tensor:
        return torch.cat(self.scores, dim=1)  # (H, T, T)


@dataclass
class Focus:
    """Where one query token's attention goes, in every selected head."""

    query: int
    weights: Tensor  # (L_sel, H_sel, T): the query's row in each head
    layers: list[int]
    heads: list[int]
    tokens: "Tokens | None" = None
    sink: Tensor | None = None  # (L_sel, H_sel): the row's sink weight (1 − its sum), for a model with sinks
    signed: frozenset[int] = frozenset()  # layers whose row is signed (`signed_layers`): ranked by |weight|


class FocusProbe(ProbeBase):
    WHAT = ("pattern", "sink")

    def __init__(self, layers: list[int], heads: list[int], n: int, query: int) -> None:
        super().__init__(layers, heads)
        self.query = query
        self.rows = torch.zeros(len(layers), len(heads), n)  # (L_sel, H_sel, T)
        self.sinks: Tensor | None = None  # (L_sel, H_sel), once a layer with sinks reports

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        if start <= self.query < start + probs.shape[1]:
            row = self.rows[self._layer_pos[layer]]  # (H_sel, T)
            row.zero_()
            row[:, : probs.shape[2]] = self._pick(probs)[:, self.query - start].cpu()

    def sink(self, layer: int, start: int, weights: Tensor) -> None:
        if start <= self.query < start + weights.shape[1]:
            if self.sinks is None:  # only a model with sinks reports them
                self.sinks = torch.zeros(len(self.layers), len(self.heads))  # (L_sel, H_sel)
            self.sinks[self._layer_pos[layer]] = self._pick(weights)[:, self.query - start].float().cpu()


Probes = Hooks  # several probes fed by one forward pass


def default_focus(tokens: "Tokens") -> int:
    """The last word: the last non-special token holding a letter or digit ('creature' in
    'a fluffy blue creature', 'mat' in 'The cat sat on the mat.'); else the last
    non-special token."""
    plain = [i for i in range(len(tokens)) if not tokens.special[i]]
    for i in reversed(plain):
        if any(ch.isalnum() for ch in tokens.labels[i]):
            return i
    return plain[-1] if plain else len(tokens) - 1



@dataclass
class AttendResult:
    """Everything `attend` may show, computed in one pass."""

    tokens: "Tokens"
    layers: list[int]
    heads: list[int]
    topk: TopK | None = None
    focus: Focus | None = None
    summary: Summary | None = None
    attention: Attention | None = None
    update: Any = None  # measures.update.WordUpdate under --measure norm
    signed: frozenset[int] = frozenset()  # layers whose values are signed, rows no distributions (`signed_layers`)
    kinds: dict[int, str] = field(default_factory=dict)  # each signed layer's kind in words ("linear, …")
