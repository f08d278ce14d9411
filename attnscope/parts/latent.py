"""Multi-head latent attention (MLA; DeepSeek-V2/V3, Kimi-K2): projections only.

What sets it apart is how queries, keys and values are made; the attention itself is
the one kernel (`parts.attention.attend`), so masks, chunking, hooks and every measure
stay shared. Per layer (`kinds.LatentSpec`):

  q        = q_b(norm(q_a(x)))  or  q(x)                       (T, H, nope + rope)
  c, k_rot = kv_a(x)                                           (T, kv_rank), (T, rope)
  c        = norm(c)                                           the latent
  k_nope, v = kv_b(c) per head                                 (H, K, nope), (H, K, v_dim)
  k        = [k_nope, rot(k_rot)]: one rotated part for all heads
  q        = [q_nope, rot(q_rot)]

RoPE turns only the last `rope` dimensions of each query and the shared key part.
DeepSeek's checkpoints lay those out in adjacent pairs (`rope_interleave`); they are put
into rotate-half order first, which is what transformers' `apply_rotary_pos_emb_interleave`
returns too, so q and k read the same at the hooks.

The cache keeps what the design keeps: the normed latent and the rotated key part,
`kv_rank + rope` values per position (`AttnSpec.bytes_per_token`), expanded through
`kv_b` into per-head keys and values on every pass, as transformers' `expand_kv` does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.hooks import attn_site
from attnscope.parts.attention import Attention, MaskRule, attend, score_modifiers
from attnscope.parts.norms import RMSNorm
from attnscope.parts.positions import apply_rope


def deinterleave(x: Tensor) -> Tensor:
    """(…, r) in pairs (x0, x1), (x2, x3), … -> (x0, x2, …, x1, x3, …): rotate-half order."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class LatentAttention(Attention):
    """Latent attention of one layer (`AttnSpec(kind="latent")`), at the site
    `blocks.{layer}.attn`. It shares `Attention`'s reporting (`value_out_norms`,
    `_report_result`, which read `o` per head of `dh` = the value width) but builds its
    own projections, so `Attention.__init__` is not run."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        nn.Module.__init__(self)
        self.cfg = cfg
        self.spec = spec = cfg.layer(layer).attn
        m = spec.latent
        assert m is not None  # internal invariant: kind "latent" carries its LatentSpec
        self.m = m
        self.layer = layer
        self.site = attn_site(layer)
        self.rule = MaskRule(spec.causal, spec.window)
        self.modifiers = score_modifiers(spec)
        self.scale = spec.score_scale
        self.H, self.Hkv = spec.n_heads, spec.n_heads  # keys and values are expanded per head
        self.dh = m.v_dim  # each head's output width (what `o` reads per head)
        d, H, qk = cfg.d_model, spec.n_heads, spec.d_head
        if m.q_rank is None:
            self.q = nn.Linear(d, H * qk, bias=False)
        else:
            self.q_a = nn.Linear(d, m.q_rank, bias=spec.qkv_bias)
            self.q_a_norm = RMSNorm(m.q_rank, m.norm_eps)
            self.q_b = nn.Linear(m.q_rank, H * qk, bias=False)
        self.kv_a = nn.Linear(d, m.kv_rank + m.rope_dim, bias=spec.qkv_bias)
        self.kv_a_norm = RMSNorm(m.kv_rank, m.norm_eps)
        self.kv_b = nn.Linear(m.kv_rank, H * (m.nope_dim + m.v_dim), bias=False)
        self.o = nn.Linear(H * m.v_dim, d, bias=spec.out_bias)

    def latents(self, x: Tensor, rope: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Residual (T, d) -> q (H, T, nope + rope) after RoPE, the normed latent (1, T,
        kv_rank) and the rotated shared key part (1, T, rope)."""
        m, T = self.m, x.shape[0]
        q = self.q(x) if m.q_rank is None else self.q_b(self.q_a_norm(self.q_a(x)))  # (T, H*qk)
        q = q.view(T, self.H, m.nope_dim + m.rope_dim).transpose(0, 1)  # (H, T, qk)
        q_nope, q_rot = q.split([m.nope_dim, m.rope_dim], dim=-1)  # (H, T, nope), (H, T, rope)
        c, k_rot = self.kv_a(x).split([m.kv_rank, m.rope_dim], dim=-1)  # (T, kv_rank), (T, rope)
        c = self.kv_a_norm(c)[None]  # (1, T, kv_rank)
        k_rot = k_rot[None]  # (1, T, rope): one key part for every head
        if m.rope_interleave:
            q_rot, k_rot = deinterleave(q_rot), deinterleave(k_rot)
        if rope is not None:
            q_rot, k_rot = apply_rope(q_rot, *rope), apply_rope(k_rot, *rope)
        return torch.cat((q_nope, q_rot), dim=-1), c, k_rot

    def expand(self, c: Tensor, k_rot: Tensor) -> tuple[Tensor, Tensor]:
        """The latent (1, K, kv_rank) and rotated key part (1, K, rope) -> keys (H, K,
        nope + rope) and values (H, K, v_dim)."""
        m, K = self.m, c.shape[1]
        kv = self.kv_b(c[0]).view(K, self.H, m.nope_dim + m.v_dim).transpose(0, 1)  # (H, K, nope + v)
        k_nope, v = kv.split([m.nope_dim, m.v_dim], dim=-1)  # (H, K, nope), (H, K, v_dim)
        k = torch.cat((k_nope, k_rot.expand(self.H, -1, -1)), dim=-1)  # (H, K, nope + rope)
        return k, v

    def forward(self, x: Tensor, state: Any, cache: Any = None, hooks: Any = None) -> Tensor:
        site, T, start = self.site, x.shape[0], state.start
        rope = state.ropes.get(self.spec.rope) if self.spec.rope is not None else None
        q, c, k_rot = self.latents(x, rope)
        k_start, k_pos = start, state.positions
        if cache is not None:  # the cache holds latents: (1, K, kv_rank) and (1, K, rope)
            c, k_rot, k_start = cache.update(self.layer, c, k_rot, start, self.rule.window)
            if k_start != start:
                k_pos = torch.arange(k_start, start + T, device=x.device)  # (K,)
        k, v = self.expand(c, k_rot)
        if hooks is not None:
            for what, value, first in (("q", q, start), ("k", k, k_start), ("v", v, k_start)):
                if hooks.wants(site, what):
                    hooks.report(site, what, value, start, first)
            if hooks.wants(site, "fnorm"):
                hooks.report(site, "fnorm", self.value_out_norms(v), start, k_start)
        z = attend(q, k, v, q_pos=state.positions, k_pos=k_pos, rule=self.rule, scale=self.scale,
                   modifiers=self.modifiers, site=site, hooks=hooks, segments=state.segments)  # (H, T, v_dim)
        if hooks is not None and hooks.wants(site, "result"):
            self._report_result(z, start, k_start, hooks)
        return self.o(z.transpose(0, 1).reshape(T, self.H * self.dh))  # (T, d)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (H, T, qk), k (H, T, qk) and v (H, T, v_dim) of a pass without a cache, before
        positions (as `Attention.project`; the rotated parts in rotate-half order)."""
        q, c, k_rot = self.latents(x, None)
        k, v = self.expand(c, k_rot)
        return q, k, v
