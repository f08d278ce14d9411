"""Pooling head scores over a corpus: `corpus_scores`, its result and its progress.

A pooled score is the sum of its per-row quantity over every eligible row of every
text, divided by the number of those rows: a text weighs as many rows as it has, not
one vote. The per-row terms and their row counts are `heads.text_terms`', summed by
`heads.ScoreProbe` (which keeps float64 sums per layer and head), so the definitions
live in one place; here each text's sums and counts are added to running float64
totals. Induction is a property of the model, not of a text: it is measured once, on
its repeated random sequence, exactly as `heads.head_scores` measures it.

A model with experts also pools its expert load: per selected MoE layer, how many
(token, choice) pairs each expert received over every text, read from the same passes
(`routing.LoadProbe` beside the scores' probe, counting a packed pass's routes per
text), kept per text in the per-text file and summed like the scores.

Distributed (under torchrun, see `attnscope.distributed`): text i goes to rank
i % world; each rank pools its share; the sums and counts are all-reduced in float64.
Each rank appends its per-text lines to its own file (`per_text`: no collective per
text, so no rank waits on another and a crash loses nothing written). Only rank 0
returns a result and reports progress.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import Tensor

from attnscope import heads as hd
from attnscope.analysis import signed_layers
from attnscope import routing
from attnscope.corpus import per_text as pt
from attnscope.corpus.packing import _Scored, _score_packed, _Split  # noqa: F401  (re-exported)
from attnscope.errors import AttnscopeError, InputError, UsageError

if TYPE_CHECKING:
    from attnscope.api import Inspector, Selector

_CHARS_PER_TOKEN = 8  # a first prefix for a long text: real text runs ~4 characters a token
_MARGIN = 64  # tokens a prefix must yield past the model's positions, so that its cut cannot reach them
MAX_WINDOW = 2 * 1024 * 1024  # characters tokenized at once: ~300 MB of tokenizer memory

# Why a score the model defines has no row in a whole corpus.
_NO_ROWS = {"duplicate_token": "no token of any text repeats an earlier one of its text",
            "": "no text has a row it is defined on (every text is one token)"}


# --------------------------------------------------------------------------- results


@dataclass
class CorpusScores(hd.HeadScores):
    """`HeadScores` pooled over a corpus: `scores` are float32 sums / rows, `n_tokens`
    the tokens of every text; `tokens` is None (there is no one text to show)."""

    n_texts: int = 0  # texts pooled, resumed ones included
    resumed: int = 0  # of them, pooled from the per-text file without running
    truncated: int = 0  # of them, cut to the model's positions by `truncate`
    rows: dict[str, int] = field(default_factory=dict)  # eligible rows pooled, per text score
    sums: dict[str, Tensor] = field(default_factory=dict)  # float64 (L_sel, H_sel) per text score
    world: int = 1  # processes that shared the corpus
    seconds: float = 0.0  # wall time of the texts' passes (this process, rank 0)
    source: str = ""  # where the texts came from, for display (the caller's to set: here are only texts)


@dataclass
class CorpusProgress:
    """Where a corpus run stands, after each text (on rank 0, of rank 0's share)."""

    done: int  # texts finished, resumed ones included
    total: int | None  # texts in this process's share, when the corpus is a sized collection
    resumed: int  # of `done`, texts pooled from the per-text file
    tokens: int  # tokens run (resumed texts not counted)
    elapsed: float  # seconds since the first text
    rank: int = 0
    world: int = 1

    @property
    def texts_per_s(self) -> float:
        return (self.done - self.resumed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None while unknown."""
        rate = self.texts_per_s
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate


def corpus_dict(res: CorpusScores) -> dict[str, Any]:
    """`heads.scores_dict` plus the corpus: texts, tokens, rows pooled per score."""
    doc = hd.scores_dict(res)
    doc["corpus"] = {"n_texts": res.n_texts, "n_tokens": res.n_tokens, "rows": dict(res.rows),
                     "resumed": res.resumed, "truncated": res.truncated, "processes": res.world}
    return doc


# --------------------------------------------------------------------------- scoring


def corpus_scores(
    inspector: "Inspector",
    texts: Iterable[tuple[int, str] | str],
    names: Iterable[str] | None = None,
    layers: "Selector" = None,
    heads: "Selector" = None,
    truncate: bool = False,
    per_text: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: Callable[[CorpusProgress], None] | None = None,
    measure: str = "weight",
    seed: int = 0,
    repeat: int = hd.DEFAULT_REPEAT,
    batch_tokens: int = 0,
) -> CorpusScores | None:
    """Pool every selected head's scores over `texts` ((line number, text) pairs as
    `read_corpus` yields them, or plain strings, numbered from 1): one forward pass a
    text, plus one for induction. Under torchrun, texts are shared across the processes
    and only rank 0 gets the result (the others get None)."""
    from attnscope import distributed

    group = distributed.current(inspector.device)
    rank, world = (group.rank, group.world) if group is not None else (0, 1)
    wanted = hd.default_scores(inspector.config) if names is None else list(dict.fromkeys(names))
    text_names = [name for name in wanted if name in hd.TEXT_SCORES]
    if not text_names and all(name in hd.SCORES for name in wanted):
        raise UsageError("induction is measured once on a repeated random sequence, not on a corpus",
                         hint="drop --corpus, or ask for a text score too")
    # head_scores checks the measure, the score names and the selections; with no names
    # left to compute it runs nothing.
    checked = hd.head_scores(inspector, names=[name for name in wanted if name not in hd.ALL_SCORES],
                             layers=layers, heads=heads, measure=measure)
    ls, hs = checked.layers, checked.heads
    cfg = inspector.config
    # Scores the model itself leaves undefined (next_token on a causal model); ids [0, 0]
    # repeat, so duplicate_token is not among them.
    _, _, model_undefined = hd.text_terms([0, 0], cfg, text_names, measure)
    measured = [name for name in text_names if name not in model_undefined]
    plan = routing.plan(cfg, ls)  # None on a dense model (and no selected MoE layer): nothing below changes for it
    moe = plan["layers"] if plan is not None else []
    plan = plan if moe else None
    header = pt.make_header(inspector, measure, truncate, measured, ls, hs, plan)
    if batch_tokens < 0:
        raise UsageError(f"--batch-tokens must be >= 0 (0: one text a pass), got {batch_tokens}")
    path = Path(per_text).expanduser() if per_text is not None else None

    # Phase 1, reading only: what an earlier run left (every rank reads before any writes).
    # This process's per-text file is opened and locked first, and stays locked to the end.
    done: dict[int, pt.Record] = {}
    failure: AttnscopeError | None = None
    out: pt.PerTextFile | None = None
    failed = True
    try:
        if path is not None:
            try:
                pt.check_target(path, resume)
            except AttnscopeError as exc:
                failure = exc
            distributed.raise_first(group, failure)  # every rank checks before any creates its file
            try:
                out = pt.PerTextFile(path if group is None else pt.rank_file(path, rank), resume)
                if resume:
                    done = pt.read_done(path, header, lambda index: index % world == rank, cfg.n_ctx)
            except AttnscopeError as exc:
                failure = exc
            distributed.raise_first(group, failure)

        # Phase 2: this process's share of the texts.
        shape = (len(ls), len(hs))
        totals = {name: torch.zeros(shape, dtype=torch.float64) for name in measured}
        rows = {name: 0 for name in measured}
        experts = torch.zeros((len(moe), plan["experts"] if plan else 0), dtype=torch.float64)  # (MoE layers, E)
        n_texts = n_tokens = truncated = resumed = run_tokens = 0
        total = len(range(rank, len(texts), world)) if hasattr(texts, "__len__") else None  # type: ignore[arg-type]
        line = math.inf
        started = time.perf_counter()
        try:
            if out is not None:
                out.start(header)
            mine = [(index, *((index + 1, item) if isinstance(item, str) else item))
                    for index, item in enumerate(texts) if index % world == rank]
            batcher = _Batcher(inspector, mine, done, measured, ls, hs, truncate, measure, batch_tokens)
            for position, (index, line, text) in enumerate(mine):
                digest = pt.text_digest(text)
                if index in done:
                    rec = done.pop(index)
                    if (rec.line, rec.digest) != (line, digest):
                        raise InputError(f"{path} does not match this corpus: its text {index} was line "
                                         f"{rec.line} (digest {rec.digest}), here it is line {line} (digest {digest})",
                                         hint="resume with the corpus, --field and --max-texts of the run that "
                                              "wrote it")
                    sums, counts, n, cut, routed = rec.sums, rec.counts, rec.n_tokens, rec.truncated_from, rec.experts
                    resumed += 1
                else:
                    sums, counts, n, cut, routed = batcher.get(position)
                    run_tokens += n
                    if out is not None:
                        out.append(pt.text_record(index, line, digest, n, cut, sums, counts, routed, header))
                for name in measured:
                    totals[name] += sums[name]
                    rows[name] += counts[name]
                if routed is not None:
                    experts += routed
                n_texts += 1
                n_tokens += n
                truncated += cut is not None
                line = math.inf
                if progress is not None and rank == 0:
                    progress(CorpusProgress(n_texts, total, resumed, run_tokens, time.perf_counter() - started, rank,
                                            world))
        except AttnscopeError as exc:
            failure = exc
        seconds = time.perf_counter() - started
        distributed.raise_first(group, failure, line)
        failed = False
    finally:
        if out is not None:
            out.close(failed)  # a file this run created and never wrote a text to goes

    # Phase 3: pool across the processes; rank 0 finishes alone.
    # Expert counts ride in the float64 sum: whole numbers below 2^53 add exactly.
    flat = torch.cat([totals[name].flatten() for name in measured] + [experts.flatten()]
                     + [torch.tensor([rows[name] for name in measured] + [n_texts, n_tokens, truncated, resumed],
                                     dtype=torch.float64)])
    flat = distributed.sum_float64(group, flat)
    size = shape[0] * shape[1]
    totals = {name: flat[k * size:(k + 1) * size].reshape(shape) for k, name in enumerate(measured)}  # (L_sel, H_sel)
    at = len(measured) * size
    experts = flat[at:at + experts.numel()].reshape(experts.shape).round().long()  # (MoE layers, E)
    tail = [int(v) for v in flat[at + experts.numel():].tolist()]
    rows = dict(zip(measured, tail[:len(measured)]))
    n_texts, n_tokens, truncated, resumed = tail[len(measured):]
    if n_texts == 0:  # every rank knows, so every rank says so
        raise InputError("there are no texts to score", hint="give a corpus with at least one non-blank text")
    if rank != 0:
        return None
    if path is not None:
        pt.merge_rank_files(path, header)

    res = CorpusScores(ls, hs, {}, n_tokens, seed=seed, n_texts=n_texts, resumed=resumed, truncated=truncated,
                       rows=rows, sums=totals, world=world, seconds=seconds)
    if moe:
        res.moe_layers, res.expert_counts, res.top_k = moe, experts, plan["top_k"]  # type: ignore[index]
    for name in measured:
        if rows[name]:
            res.scores[name] = (totals[name] / rows[name]).float()
    for name in text_names:
        if name not in res.scores:
            res.undefined[name] = model_undefined.get(name) or _NO_ROWS.get(name, _NO_ROWS[""])
    # entropy only where rows are distributions (a linear layer's are signed)
    hd.signed_entropy(res, signed_layers(inspector.sites, measure), {i: inspector.sites[i].kind for i in ls})
    if "induction" in wanted:
        ind = hd.head_scores(inspector, names=["induction"], layers=ls, heads=hs, seed=seed, repeat=repeat,
                             measure=measure)
        res.scores.update(ind.scores)
        res.induction_ids, res.prefix, res.suffix, res.repeat = ind.induction_ids, ind.prefix, ind.suffix, ind.repeat
    res.scores = {name: res.scores[name] for name in wanted if name in res.scores}  # in the order asked
    return res


def bounded_tokens(inspector: "Inspector", text: str, truncate: bool) -> Any:
    """`inspector.tokenize(text, truncate)`, tokenizing no more of a long text than the
    model's positions can use (a tokenizer takes ~150 bytes a character: a 10 MB line
    whole would take gigabytes).

    A text of more than `_CHARS_PER_TOKEN` characters a position is tokenized by a
    prefix, cut at a space and grown fourfold until it yields `_MARGIN` tokens past the
    positions: a cut changes only the tokens next to it, so the first ones are those of
    the whole text. With `truncate` they are kept (`truncated_from` then counts the
    prefix's tokens: the text has at least that many); without, the text is too long,
    as it would be whole. A text whose first `MAX_WINDOW` characters yield fewer tokens
    than that is refused: it could only be cut by tokenizing it whole."""
    n_ctx = inspector.config.n_ctx
    size = min(_CHARS_PER_TOKEN * (n_ctx + _MARGIN), MAX_WINDOW)
    while len(text) > size:
        space = text.rfind(" ", size // 2, size)
        tokens = inspector.tokenize(text[:space if space > 0 else size], truncate=True)
        if tokens.truncated_from is not None and tokens.truncated_from >= n_ctx + _MARGIN:
            if not truncate:
                raise InputError(f"the text is more than {tokens.truncated_from} tokens, longer than the model's "
                                 f"{n_ctx} positions", hint="shorten it or pass --truncate to keep the first tokens")
            return tokens
        if size >= MAX_WINDOW:
            raise InputError(f"the text's first {MAX_WINDOW:,} characters make only {len(tokens)} tokens, and it "
                             f"is {len(text):,} characters long", hint="split it into shorter texts")
        size = min(4 * size, MAX_WINDOW)
    return inspector.tokenize(text, truncate)


class _Batcher:
    """This process's texts, scored `batch_tokens` at a time: consecutive texts still to
    score are packed into one pass (each masked to itself, with its own positions) up to
    that many tokens; 0 scores one text a pass."""

    def __init__(self, inspector: "Inspector", mine: list[tuple[int, int, str]], done: dict[int, Any],
                 measured: list[str], ls: list[int], hs: list[int], truncate: bool, measure: str,
                 batch_tokens: int) -> None:
        self.m, self.mine, self.done = inspector, mine, done
        self.measured, self.ls, self.hs, self.truncate, self.measure = measured, ls, hs, truncate, measure
        self.batch_tokens = batch_tokens
        self.results: dict[int, _Scored] = {}
        self.ahead: dict[int, Any] = {}  # tokens of a text read past the end of a pass

    def get(self, position: int) -> "_Scored":
        if position not in self.results:
            self._score_from(position)
        return self.results.pop(position)

    def _tokens(self, j: int) -> Any:
        _, line, text = self.mine[j]
        if j in self.ahead:
            return self.ahead.pop(j)
        try:
            return bounded_tokens(self.m, text, self.truncate)
        except InputError as exc:
            raise type(exc)(f"line {line}: {exc.message}", exc.hint) from None

    def _score_from(self, position: int) -> None:
        batch: list[tuple[int, Any]] = []
        total = 0
        for j in range(position, len(self.mine)):
            if self.mine[j][0] in self.done:
                continue
            if batch and self.batch_tokens == 0:
                break  # one text a pass: the next is tokenized when its turn comes
            tokens = self._tokens(j)
            if batch and total + len(tokens) > self.batch_tokens:
                self.ahead[j] = tokens  # the next pass's first text, tokenized once
                break
            batch.append((j, tokens))
            total += len(tokens)
        self.results.update(zip((j for j, _ in batch), _score_packed(self.m, [t for _, t in batch], self.measured,
                                                                     self.ls, self.hs, self.measure)))
