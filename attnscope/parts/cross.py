"""Cross-attention: a decoder layer's queries read another sequence, the encoder's output.

In an encoder-decoder model (T5, BART, Marian) each decoder layer, after its causal
self-attention, attends to the source: queries come from the decoder's residual stream,
keys and values from the encoder's final states (`model.PassState.memory`, (S, d), after
the encoder's final norm; projected once per decoding and kept in `PassState.cross`, the
cache's `KVCache.cross` when decoding token by token), every query seeing the whole source
(`MaskRule(causal=False)`: no mask, no positions, no relative bias; T5 adds a bias of zeros). The kernel is the one
every attention runs (`parts.attention.attend`): query positions are the decoder's own,
key positions 0..S−1 of the source, so hooks report rows as decoder positions and keys as
source positions, at the site `decoder.blocks.{layer}.cross`.

After transformers' T5Attention / BartAttention with `key_value_states` (the projections
are the self-attention's own, q from one sequence and k, v from the other).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnscope.parts.attention import Attention, attend


class CrossAttention(Attention):
    """One decoder layer's attention over the encoder's output (its `LayerSpec.cross`)."""

    def forward(self, x: Tensor, state: Any, hooks: Any = None) -> Tensor:
        """`x` (T, d): the decoder's stream; `state.memory` (S, d): the encoder's final states."""
        memory = state.memory
        assert memory is not None, "a cross-attention runs in a decoder pass"  # internal invariant
        site, start = self.site, state.start
        T, S = x.shape[0], memory.shape[0]
        q = self.q(x).view(T, self.H, self.dh).transpose(0, 1)  # (H, T, dh)
        kv = state.cross.get(self.layer)  # a cached step: the source's keys and values, computed once
        if kv is None:
            kv = state.cross[self.layer] = (self.k(memory).view(S, self.Hkv, self.dh).transpose(0, 1),  # (Hkv, S, dh)
                                            self.v(memory).view(S, self.Hkv, self.dh).transpose(0, 1))  # (Hkv, S, dh)
        k, v = kv
        assert k.shape[1] == S, "a cache of another source"  # internal invariant: one cache per decoding
        if hooks is not None:
            for what, value, first in (("q", q, start), ("k", k, 0), ("v", v, 0)):
                if hooks.wants(site, what):
                    hooks.report(site, what, value, start, first)
            if hooks.wants(site, "fnorm"):
                hooks.report(site, "fnorm", self.value_out_norms(v), start, 0)
        if self.Hkv != self.H:
            k = k.repeat_interleave(self.spec.group_size, dim=0)  # (H, S, dh)
            v = v.repeat_interleave(self.spec.group_size, dim=0)  # (H, S, dh)
        k_pos = torch.arange(S, device=x.device)  # (S,) source positions
        z = attend(q, k, v, q_pos=state.positions, k_pos=k_pos, rule=self.rule, scale=self.scale,
                   modifiers=self.modifiers, site=site, hooks=hooks)  # (H, T, dh)
        if hooks is not None and hooks.wants(site, "result"):
            self._report_result(z, start, 0, hooks)
        return self.o(z.transpose(0, 1).reshape(T, self.H * self.dh))  # (T, d)
