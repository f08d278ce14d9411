"""A learned relative position bias: a score per head for each distance between a query
and a key, owned by the stack and handed to every layer (T5, MPNet).

Distances are sorted into buckets (`relative_bucket`): one bucket per distance while
distances are small, then buckets whose width grows logarithmically up to `max_distance`,
beyond which every distance shares the last bucket. A bidirectional stack (an encoder)
gives keys after the query their own half of the buckets; a causal one (T5's decoder)
sees only keys at or before its query and uses every bucket for them. One table of
(buckets, heads) learned scores maps each bucket to a score per head, added to the
scores after the scale and before the mask (`parts.attention.attend`'s `bias`).

The stack builds the per-distance table once per forward pass (`RelativeBias.for_pass`:
(2·span − 1, H), span = the pass's largest position + 1) and hands every layer the same
callable, which gathers a query chunk's (H, c, K) from the chunk's own positions: memory
stays bounded by the kernel's chunk, a cache's earlier keys are just smaller positions,
and on a packed pass each text's positions count from 0, so its distances are its own.
With blocks placed across devices (`attnscope.placement`) the table is copied once a pass
to each device whose layers ask for it.

After the T5 paper (Raffel et al. 2020, §2.1) and Mesh TensorFlow's
`_relative_position_bucket`, which transformers' T5 and MPNet copy; the arithmetic is
float32 as theirs is, so a distance on a bucket boundary lands where theirs does.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from attnscope.kinds import RelativeSpec


def relative_bucket(distance: Tensor, buckets: int, max_distance: int, bidirectional: bool) -> Tensor:
    """The bucket (int64, same shape) of each `distance` = key position − query position.

    Bidirectional: keys after the query (distance > 0) take buckets half..buckets−1, keys at
    or before it 0..half−1, and `n` = |distance| is sorted within a half. Causal: keys after
    the query count as distance 0 (the mask hides them anyway) and n = query − key uses
    every bucket. Within the `m` buckets available, the first m/2 hold one distance each
    (n = 0 .. m/2 − 1); the rest cover m/2 .. max_distance log-spaced,
    ⌊m/2 + log(n / (m/2)) / log(max_distance / (m/2)) · (m − m/2)⌋, and every farther
    distance the last bucket, m − 1."""
    n = -distance  # how far before its query the key is
    if bidirectional:
        buckets //= 2
        offset = (n < 0).to(torch.long) * buckets  # keys after the query: the upper half
        n = n.abs()
    else:
        offset = torch.zeros_like(n)
        n = n.clamp_min(0)
    exact = buckets // 2
    # clamped to `exact` so that the log never sees 0; below it the exact bucket is taken
    far = exact + (torch.log(n.clamp_min(exact).float() / exact) / math.log(max_distance / exact)
                   * (buckets - exact)).to(torch.long)
    far = far.clamp_max(buckets - 1)
    return offset + torch.where(n < exact, n, far)


class RelativeBias(nn.Module):
    """The stack's table of learned scores, (rows, H): one row per bucket."""

    def __init__(self, spec: RelativeSpec, n_heads: int) -> None:
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.table_rows, n_heads))

    def buckets(self, distance: Tensor) -> Tensor:
        s = self.spec
        return relative_bucket(distance, s.buckets, s.max_distance, s.bidirectional)

    def table(self, span: int) -> Tensor:
        """(2·span − 1, H): the bias at each distance −(span − 1) .. span − 1, row d + span − 1."""
        distance = torch.arange(1 - span, span, device=self.weight.device)
        return self.weight[self.buckets(distance)]

    def for_pass(self, span: int) -> Callable[[Tensor, Tensor], Tensor]:
        """The bias of a pass whose positions lie in 0 .. span − 1, as the kernel takes it:
        (q_pos (c,), k_pos (K,)) -> (H, c, K), built from one per-distance table."""
        table = self.table(span)  # (2·span − 1, H)
        tables = {table.device: table}  # blocks across devices: the pass's table copied once to each

        def bias(q_pos: Tensor, k_pos: Tensor) -> Tensor:
            here = tables.get(q_pos.device)
            if here is None:
                here = tables[q_pos.device] = table.to(q_pos.device)
            return here[k_pos[None, :] - q_pos[:, None] + (span - 1)].permute(2, 0, 1)  # (H, c, K)

        return bias
