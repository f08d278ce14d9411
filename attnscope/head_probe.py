"""Head scores' probe: per-chunk terms, `ScoreProbe` (and `_Padded` for mixed head counts), and the induction input."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from attnscope.analysis import ProbeBase, normalised_entropy, visible_counts
from attnscope.errors import InputError, UsageError

if TYPE_CHECKING:
    from attnscope.config import ModelConfig

_AFFIX_PROBE_TEXT = "a"


# ---------------------------------------------------------------------- the probe

# (probs (H, c, K), start, layer) -> (H,) sum over the chunk's rows. K <= T: a causal
# chunk carries only the keys up to its last query (the rest are exactly 0).
Term = Callable[[Tensor, int, int], Tensor]


def _stripe(offset: int, lo: int, hi: int, probs: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over query rows lo <= i < hi of A[i, i + offset], for this chunk's rows."""
    stop = start + probs.shape[1]
    first, last = max(lo, start, -offset), min(hi, stop, probs.shape[2] - offset)
    if first >= last:
        return probs.new_zeros(probs.shape[0])
    rows = torch.arange(first, last, device=probs.device)
    return probs[:, rows - start, rows + offset].sum(-1)  # (H, m) -> (H,)


def _column(col: int, lo: int, probs: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over query rows i >= lo of A[i, col]."""
    skip = max(0, lo - start)
    return probs[:, skip:, col].sum(-1)  # (H, c - skip) -> (H,)


def _earlier_copies(ids: Tensor, probs: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over rows of the attention each row puts on earlier occurrences of its token."""
    c, n = probs.shape[1], probs.shape[2]
    ids = ids.to(probs.device)
    rows = torch.arange(start, start + c, device=probs.device)
    cols = torch.arange(n, device=probs.device)
    same = (ids[start : start + c, None] == ids[None, :n]) & (cols[None, :] < rows[:, None])  # (c, K)
    # One matrix-vector product instead of an (H, c, T) masked copy.
    return probs.reshape(probs.shape[0], c * n) @ same.reshape(c * n).to(probs.dtype)  # (H, c*T) @ (c*T,) -> (H,)


def _sink_rows(weights: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over the chunk's rows of each row's sink weight, (H, c) -> (H,): a term of
    the kernel's `sink` quantity, not of the pattern."""
    return weights.sum(-1)


def _entropy(counts: Callable[[int], Tensor], probs: Tensor, start: int, layer: int = 0) -> Tensor:
    rows = counts(layer)[start : start + probs.shape[1]].to(probs.device)
    return normalised_entropy(probs, rows).sum(-1)  # (H, c) -> (H,)


class ScoreProbe(ProbeBase):
    """Accumulates, per selected layer and head, a sum for each term over all query rows.

    `terms` maps a score name to a function of one chunk (of the pattern, or for
    `_sink_rows` of the sink weights); `counts` maps it to the number of rows it averages
    over, so `result()` is sums / counts."""

    def __init__(self, layers: list[int], heads: list[int], terms: dict[str, Term], counts: dict[str, int]) -> None:
        super().__init__(layers, heads)
        self.terms = terms
        self.counts = counts
        self.sums: dict[str, Tensor] = {}
        self.sink_terms = {name for name, term in terms.items() if term is _sink_rows}
        if self.sink_terms:
            self.WHAT = ("pattern", "sink")

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        self._add(layer, start, probs, False)

    def sink(self, layer: int, start: int, weights: Tensor) -> None:
        self._add(layer, start, weights, True)

    def _add(self, layer: int, start: int, values: Tensor, sink: bool) -> None:
        chunk = self._pick(values).float()  # (H_sel, c, T), or the sink weights (H_sel, c)
        pos = self._layer_pos[layer]
        for name, term in self.terms.items():
            if (name in self.sink_terms) != sink:
                continue
            if name not in self.sums:  # on the probabilities' device, so a GPU run never syncs per chunk
                self.sums[name] = torch.zeros(len(self.layers), len(self.heads), dtype=torch.float64, device=chunk.device)
            self.sums[name][pos] += term(chunk, start, layer).double()

    def result(self) -> dict[str, Tensor]:
        zeros = torch.zeros(len(self.layers), len(self.heads), dtype=torch.float64)  # selected layers without sinks
        return {name: (self.sums.get(name, zeros) / self.counts[name]).float().cpu() for name in self.terms}


def text_terms(ids: Sequence[int], cfg: "ModelConfig", names: Sequence[str],
               measure: str = "weight") -> tuple[dict[str, Term], dict[str, int], dict[str, str]]:
    """Terms and row counts for the text scores in `names`, and why any has no value
    (under `measure`: the sink has no value vector, so only `weight` has a sink score)."""
    n = len(ids)
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    earlier = _rows_with_earlier_copies(ids_t.tolist())
    available: dict[str, tuple[Term, int]] = {
        "previous_token": (partial(_stripe, -1, 1, n), n - 1),
        "first_token": (partial(_column, 0, 1), n - 1),
        "self": (partial(_stripe, 0, 0, n), n),
        "next_token": (partial(_stripe, 1, 0, n - 1), n - 1),
        "duplicate_token": (partial(_earlier_copies, ids_t), earlier),
        "entropy": (partial(_entropy, partial(visible_counts, cfg, n)), n),
        "sink": (_sink_rows, n),
    }
    undefined: dict[str, str] = {}
    if cfg.causal:
        undefined["next_token"] = "the model is causal: no token sees the one after it"
    if earlier == 0:
        undefined["duplicate_token"] = "no token of the text repeats an earlier one"
    if not has_sinks(cfg):
        undefined["sink"] = "the model's attention has no sinks: every row sums to 1"
    elif measure != "weight":
        undefined["sink"] = f"--measure {measure}: the sink has no value vector, so it moves nothing"
    terms = {name: available[name][0] for name in names if name not in undefined}
    counts = {name: available[name][1] for name in terms}
    return terms, counts, {name: why for name, why in undefined.items() if name in names}


def has_sinks(cfg: "ModelConfig") -> bool:
    """Whether any layer's attention has learned sinks (gpt-oss)."""
    return any(spec.attn.sinks for spec, _ in cfg.stack.kinds())


def _rows_with_earlier_copies(ids: Sequence[int]) -> int:
    """How many positions hold a token id seen earlier (a set, not an n x n comparison)."""
    seen: set[int] = set()
    count = 0
    for token in ids:
        count += token in seen
        seen.add(token)
    return count


def induction_terms(prefix_len: int, repeat: int) -> tuple[dict[str, Term], dict[str, int]]:
    """Rows of the second copy after its first token, each scored on the key T-1 back:
    the token that followed the current token's first occurrence."""
    lo, hi = prefix_len + repeat + 1, prefix_len + 2 * repeat
    return {"induction": partial(_stripe, 1 - repeat, lo, hi)}, {"induction": repeat - 1}


# ------------------------------------------------------------------ induction input


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after any text: ([CLS], [SEP])
    for BERT, ([BOS], []) for Llama, ([], []) for GPT-2 and Qwen2."""
    full = list(tokenizer.encode(_AFFIX_PROBE_TEXT).ids)
    plain = list(tokenizer.encode(_AFFIX_PROBE_TEXT, add_special_tokens=False).ids)
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return full[:k], full[k + len(plain) :]
    return [], []  # a post-processor that rewrites the text's own ids: assume no affixes


def candidate_ids(tokenizer: Any, vocab_size: int, exclude: Sequence[int] = ()) -> list[int]:
    """Token ids the random run may use: the tokenizer's, within the model's embedding,
    without special tokens."""
    size = min(vocab_size, tokenizer.get_vocab_size(with_added_tokens=True))
    special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    special.update(exclude)
    return [i for i in range(size) if i not in special]


def induction_input(tokenizer: Any, cfg: "ModelConfig", repeat: int, seed: int) -> tuple[list[int], list[int], list[int], int]:
    """prefix + R + R + suffix with R a seeded run of random ids, drawn without
    replacement where the vocabulary allows (so 'what followed last time' is unique).
    Returns (ids, prefix, suffix, T), T clamped so the input fits the model's positions."""
    if repeat < 2:
        raise UsageError(f"the induction run must be at least 2 tokens, got {repeat}", hint="use --repeat 2 or more")
    prefix, suffix = special_affixes(tokenizer)
    room = (cfg.n_ctx - len(prefix) - len(suffix)) // 2
    T = min(repeat, room)
    if T < 2:
        raise InputError(f"the model's {cfg.n_ctx} positions leave no room for a repeated run",
                         hint="score the text only: --score with another score")
    pool = candidate_ids(tokenizer, cfg.vocab_size, prefix + suffix)
    if not pool:
        raise InputError("the tokenizer has no ordinary tokens to draw the induction run from")
    gen = torch.Generator().manual_seed(seed)
    if len(pool) >= T:
        picks = torch.randperm(len(pool), generator=gen)[:T]
    else:
        picks = torch.randint(len(pool), (T,), generator=gen)
    run = [pool[k] for k in picks.tolist()]
    return prefix + run + run + suffix, prefix, suffix, T


class _Padded:
    """Score probes for layers of different head counts, one a count, fed by one pass;
    `result()` is one (L_sel, H_max) grid a score, NaN where a layer has no such head."""

    def __init__(self, layers: list[int], heads: list[int], by_count: dict[int, list[int]], terms: dict[str, Term],
                 counts: dict[str, int]) -> None:
        self.layers, self.heads = layers, heads
        self.parts = [(group, ScoreProbe(group, list(range(count)), terms, counts))
                      for count, group in by_count.items()]

    def wants(self, site: str, what: str) -> bool:
        return any(p.wants(site, what) for _, p in self.parts)

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        for _, p in self.parts:
            if p.wants(site, what):
                p.report(site, what, value, q_start, k_start)

    def result(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for group, p in self.parts:
            for name, values in p.result().items():  # (len(group), count)
                grid = out.setdefault(name, torch.full((len(self.layers), len(self.heads)), float("nan")))
                for i, layer in enumerate(group):
                    grid[self.layers.index(layer), : values.shape[1]] = values[i]
        return out
