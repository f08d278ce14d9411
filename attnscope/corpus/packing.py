"""One scoring pass over texts packed together (`_score_packed`), each masked to itself
with its own positions, and the hook that cuts its pattern into each text's rows (`_Split`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnscope import heads as hd

if TYPE_CHECKING:
    from attnscope.api import Inspector


class _Split:
    """Hook: a packed pass's pattern chunks, cut into each text's own rows and keys and
    handed to that text's probe as if it had run alone (rows from 0, keys from 0)."""

    def __init__(self, probes: list[Any], bounds: list[tuple[int, int]]) -> None:
        self.probes, self.bounds = probes, bounds

    def wants(self, site: str, what: str) -> bool:
        return what in ("pattern", "sink") and any(p.wants(site, what) for p in self.probes)

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        rows = value.shape[1]
        for probe, (a, b) in zip(self.probes, self.bounds):
            r0, r1 = max(q_start, a), min(q_start + rows, b)
            if r0 < r1 and probe.wants(site, what):
                part = value[:, r0 - q_start:r1 - q_start]  # (H, c_text): a sink weight per row
                if what == "pattern":
                    part = part[..., a:min(b, value.shape[2])]  # (H, c, K_text)
                probe.report(site, what, part, r0 - a, 0)


# One text's sums and row counts per score, tokens, `truncated_from`, and its expert
# counts (MoE layers, E) int64 (None on a dense model).
_Scored = tuple[dict[str, Tensor], dict[str, int], int, "int | None", "Tensor | None"]


def _score_packed(inspector: "Inspector", batch: list[Any], measured: list[str], ls: list[int], hs: list[int],
                  measure: str) -> list[_Scored]:
    """Each text's float64 sums and row counts (and on a model with experts its expert
    counts), from one pass over the texts packed together (one text: a plain pass)."""
    from attnscope.hooks import Hooks
    from attnscope.measures.transforms import wrap
    from attnscope.parts.attention import Packing

    probes, countss, bounds = [], [], []
    start = 0
    for tokens in batch:
        terms, counts, _ = hd.text_terms(tokens.ids, inspector.config, measured)
        probes.append(hd.ScoreProbe(ls, hs, terms, counts) if terms else None)
        countss.append(counts)
        bounds.append((start, start + len(tokens)))
        start += len(tokens)
    live = [(p, b) for p, b in zip(probes, bounds) if p is not None]
    routes = hd.load_probe(inspector.config, ls, bounds)  # each text's own routes counted
    if live or routes is not None:
        if len(batch) == 1:
            hooks = wrap(measure, len(batch[0]), max(ls), live[0][0], sites=inspector.sites) if live else None
            inspector.run(batch[0].ids, Hooks(hooks, routes), max(ls))
        else:
            # each text was checked against the model's positions when tokenized; packed, they keep their own
            ids = torch.tensor(sum((list(t.ids) for t in batch), []), dtype=torch.long, device=inspector.device)
            positions = torch.cat([torch.arange(len(t)) for t in batch]).to(ids.device)
            segments = torch.cat([torch.full((len(t),), i) for i, t in enumerate(batch)]).to(ids.device)
            split = _Split([p for p, _ in live], [b for _, b in live])
            hooks = wrap(measure, start, max(ls), split, sites=inspector.sites) if live else None
            inspector.model(ids, Hooks(hooks, routes), max(ls), packing=Packing(positions, segments))
    loads = routes.result() if routes is not None else None  # (texts, MoE layers, E)
    zeros = torch.zeros(len(ls), len(hs), dtype=torch.float64)
    out: list[_Scored] = []
    for t, (tokens, probe, counts) in enumerate(zip(batch, probes, countss)):
        sums = {name: probe.sums[name].cpu() if probe is not None and name in probe.sums else zeros
                for name in measured}
        out.append((sums, {name: counts.get(name, 0) for name in measured}, len(tokens), tokens.truncated_from,
                    loads[t] if loads is not None else None))
    return out
