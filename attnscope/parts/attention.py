"""Attention = projections + positions + one kernel.

* Projections turn the residual stream into per-head queries, keys and values (q, k, v)
  and the heads' outputs back into it (o). Grouped- and multi-query attention share
  each key/value head among `group_size` query heads.
* Positions act on q and k (`parts.positions.Rotary`) with absolute positions.
* Score modifiers (Gemma 2's soft-capping; later ALiBi) act on scores, in one place, given
  the query and key positions as tensors; an optional additive bias (a learned relative
  bias) and per-head sink logits (gpt-oss) are the kernel's optional arguments.
* The mask is built from absolute query and key positions (`MaskRule`) and, on a packed
  pass, each token's text, so a cache offset, a sliding window, padding and packed texts
  are one rule.
* One kernel (`attend`) runs scores → modifiers → bias → mask → softmax (float32, or
  float64 for float64 weights; with the sink column where the kind has one) → weighted values, in query chunks (`parts.chunk_rows`), reporting to
  hooks at the attention's named site (see `attnscope.hooks`). Nothing else in attnscope
  computes attention.

After nanoGPT: `scores = q @ k.T * scale` in plain sight, a shape comment on each reshape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.hooks import attn_site
from attnscope.kinds import AttnSpec
from attnscope.parts import chunk_rows
from attnscope.parts.norms import make_norm
from attnscope.parts.positions import apply_rope


@dataclass(frozen=True)
class MaskRule:
    """Which keys a query may see, from absolute positions: causal (no key after its
    query), a sliding window (only the last `window` keys, self included; both sides
    when bidirectional), or everything."""

    causal: bool
    window: int | None = None

    @property
    def kind(self) -> str:
        if self.window is not None:  # "local": both sides of the window (ModernBERT's local layers)
            return "sliding-window" if self.causal else "local"
        return "causal" if self.causal else "bidirectional"

    def visible(self, q_pos: Tensor, k_pos: Tensor, key_valid: Tensor | None = None) -> Tensor | None:
        """Boolean (c, K): may query i see key j? None when every key is visible.
        `key_valid` (K,) hides keys (padding) from every query."""
        if not self.causal and self.window is None:
            if key_valid is None:
                return None
            return key_valid[None, :].expand(q_pos.shape[0], -1)
        diff = q_pos[:, None] - k_pos[None, :]  # (c, K): i - j
        ok = torch.ones_like(diff, dtype=torch.bool)
        if self.causal:
            ok &= diff >= 0  # a key after the query is masked
        if self.window is not None:
            ok &= diff < self.window  # only the last `window` keys (self included) stay
            if not self.causal:
                ok &= diff > -self.window
        if key_valid is not None:
            ok &= key_valid[None, :]
        return ok

    def counts(self, q_pos: Tensor, n_keys: int) -> Tensor:
        """How many of keys 0..n_keys-1 each query sees (c,), by the same rule."""
        ok = self.visible(q_pos, torch.arange(n_keys, device=q_pos.device))
        return torch.full_like(q_pos, n_keys) if ok is None else ok.sum(-1)


@dataclass(frozen=True)
class Packing:
    """Several texts in one pass, one after another: each token's position within its own
    text and its text's index. A query sees only keys of its own text, under the rule."""

    positions: Tensor  # (T,) int64
    segments: Tensor  # (T,) int64


def mask_rule(cfg: ModelConfig, layer: int | None = None) -> MaskRule:
    """The rule layer `layer` applies, from its kind (None: the model's general rule,
    ignoring per-layer windows)."""
    if layer is None:
        return MaskRule(cfg.causal, cfg.sliding_window)
    spec = cfg.layer(layer).attn
    return MaskRule(spec.causal, spec.window)


class SoftCap:
    """Gemma 2: cap · tanh(scores / cap), squashing scores smoothly into (−cap, cap)."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __call__(self, scores: Tensor, q_pos: Tensor, k_pos: Tensor) -> None:
        scores.div_(self.cap).tanh_().mul_(self.cap)


# Acts in place on (H, c, K) scores, given the chunk's query positions (c,) and its keys'
# (K,), int64, each within its own text on a packed pass (what ALiBi or T5's buckets need).
ScoreModifier = Callable[[Tensor, Tensor, Tensor], None]
# An additive score bias: a tensor (H, T, K) (or broadcastable), or a callable giving the
# chunk's (H, c, K) from its query and key positions, as a learned relative bias does.
ScoreBias = Tensor | Callable[[Tensor, Tensor], Tensor]


def score_modifiers(spec: AttnSpec) -> list[ScoreModifier]:
    """The modifiers a kind of attention applies to its scores, in order."""
    return [SoftCap(spec.softcap)] if spec.softcap is not None else []


def _upper(rows: int, cols: int, device: torch.device) -> Tensor:
    """(rows, cols) bool, True above the diagonal: keys after the query within a block
    whose first key is the first query's own position."""
    return torch.ones(rows, cols, dtype=torch.bool, device=device).triu_(1)


def attend(q: Tensor, k: Tensor, v: Tensor, *, q_pos: Tensor, k_pos: Tensor, rule: MaskRule, scale: float,
           modifiers: list[ScoreModifier] = (), bias: ScoreBias | None = None, sinks: Tensor | None = None,
           site: str = "", hooks: Any = None, segments: Tensor | None = None) -> Tensor:
    """The kernel. q (H, T, dh), k and v (H, K, dh) with every query head's own key/value
    (already expanded for GQA); returns z (H, T, dh), each head's weighted values.

    `q_pos` (T,) and `k_pos` (K,) are absolute positions, int64, increasing along the
    sequence within each text; `segments` (K,), on a packed pass, is each key's text, and
    positions then count within a text. Queries and keys are one sequence: query i is key
    K − T + i (self-attention, a cache's keys first), so a causal chunk can skip the keys
    after its last query. Only the causal and packed paths read that: a cross-attention
    (queries from the decoder, keys from the encoder) passes a rule that sees every key. `bias` is added to the scores after the modifiers, before the
    mask (and reported as `bias` where a hook asks); `sinks` (H,) are per-head logits of
    one extra softmax column that takes probability mass and is dropped (gpt-oss), so a
    row then sums to less than 1; the column's weight is reported as `sink` (H, c).
    Hooks receive (value, q_start, k_start): the rows' and keys' first indices in the
    pass's coordinates (the first query's position plus the row offset)."""
    H, T, _ = q.shape
    K = k.shape[1]
    own = K - T  # index of the first query's own key
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32  # softmax never below float32
    qf = q.to(compute) * scale  # once per layer rather than on every chunk of scores
    kf = k.to(compute)
    want = {what: hooks is not None and hooks.wants(site, what) for what in ("scores", "pattern", "sink", "z", "bias")}
    q0 = k0 = 0
    if hooks is not None and any(want.values()):  # hooks' integer coordinates (one read each)
        q0, k0 = int(q_pos[0]), int(k_pos[0])
    sink = sinks.to(compute)[:, None, None] if sinks is not None else None  # (H, 1, 1)
    out = torch.empty(H, T, v.shape[-1], dtype=v.dtype, device=v.device)  # (H, T, dh)
    rows = chunk_rows(H, K)
    for a in range(0, T, rows):
        b = min(T, a + rows)
        qp = q_pos[a:b]  # (c,) the chunk's query positions
        # A causal chunk never sees keys after its last query: leave them out (Kc <= K),
        # which halves the work; the pattern hook is told the rest of each row is 0.
        Kc = min(K, own + b) if rule.causal and not (want["scores"] or want["bias"]) else K
        kp = k_pos[:Kc]  # (Kc,)
        scores = torch.matmul(qf[:, a:b], kf[:, :Kc].transpose(-2, -1))  # (H, c, Kc)
        for modify in modifiers:
            modify(scores, qp, kp)
        if bias is not None:
            added = bias(qp, kp) if callable(bias) else bias[..., a:b, :Kc]  # (H, c, Kc) or broadcastable
            scores += added
            if want["bias"]:  # the bias itself, as the scores received it
                hooks.report(site, "bias", added.to(scores.dtype).expand_as(scores), q0 + a, k0)
            del added  # freed before the softmax allocates: the chunk's peak stays scores + probabilities
        if want["scores"]:  # a copy: the mask below fills `scores` in place
            hooks.report(site, "scores", scores.clone(), q0 + a, k0)
        d0 = own + a  # index of the key at the chunk's first query
        if segments is not None:  # packed texts: the rule on each text's own positions, within its text
            ok = rule.visible(qp, kp)
            same = segments[own + a:own + b, None] == segments[None, :Kc]  # (c, Kc)
            scores.masked_fill_(~(same if ok is None else ok & same), float("-inf"))
        elif rule.causal and rule.window is None and d0 >= 0:
            # keys before the chunk are visible to all its rows: mask the diagonal block only
            scores[..., d0:].masked_fill_(_upper(b - a, Kc - d0, q.device), float("-inf"))
        else:
            ok = rule.visible(qp, kp)
            if ok is not None:
                scores.masked_fill_(~ok, float("-inf"))
        if sink is None:
            probs = torch.softmax(scores, dim=-1)  # (H, c, Kc)
        else:  # the sink column joins the normaliser only: exp(s − log(Σ exp s + exp sink))
            norm = torch.logaddexp(torch.logsumexp(scores, dim=-1, keepdim=True), sink)  # (H, c, 1)
            probs = scores.sub_(norm).exp_()  # (H, c, Kc), in place
            if want["sink"]:  # the sink column's own weight, from the same normaliser
                hooks.report(site, "sink", (sink - norm).exp_()[..., 0], q0 + a, k0)  # (H, c)
        del scores
        if want["pattern"]:
            hooks.report(site, "pattern", probs, q0 + a, k0)
        z = torch.matmul(probs.to(v.dtype), v[:, :Kc])  # (H, c, dh)
        out[:, a:b] = z
        if want["z"]:
            hooks.report(site, "z", z, q0 + a, k0)
    return out


def unscaled_rms(x: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dimension without a scale, in float32 (Gemma 4's value norm)."""
    h = x.float() if x.dtype != torch.float64 else x
    return (h * torch.pow(h.pow(2).mean(-1, keepdim=True) + eps, -0.5)).to(x.dtype)


class Attention(nn.Module):
    """Self-attention of one layer, of the layer's own kind (`ModelConfig.layer(i).attn`),
    reporting at the site `blocks.{layer}.attn`."""

    def __init__(self, cfg: ModelConfig, layer: int, spec: AttnSpec | None = None, site: str | None = None) -> None:
        """`spec`, `site`: another stack's layer (an encoder-decoder's decoder, its cross-attention)."""
        super().__init__()
        self.cfg = cfg
        self.spec = spec = spec or cfg.layer(layer).attn
        self.layer = layer
        self.site = site or attn_site(layer)
        self.rule = MaskRule(spec.causal, spec.window)
        self.modifiers = score_modifiers(spec)
        self.scale = spec.score_scale
        self.H, self.Hkv, self.dh = spec.n_heads, spec.n_kv_heads, spec.d_head
        q_out, kv_out = self.H * self.dh, self.Hkv * self.dh
        # an output gate (Qwen3.5, Qwen3-Next): each head's q rows are its query, then its gate
        self.q = nn.Linear(cfg.d_model, 2 * q_out if spec.out_gate else q_out, bias=spec.qkv_bias)
        # Gemma 4: a KV-shared layer reads layer `kv_source`'s keys and values (PassState.shared)
        # and projects none; `k_eq_v` takes the values from the key projection. A layer whose
        # keys a later layer reads hands them over each pass (`self.shares`).
        self.shared = spec.kv_source is not None
        self.shares = any(s.attn.kv_source == layer for s, _ in cfg.stack.kinds())
        if not self.shared:
            self.k = nn.Linear(cfg.d_model, kv_out, bias=spec.qkv_bias)
            if not spec.k_eq_v:
                self.v = nn.Linear(cfg.d_model, kv_out, bias=spec.qkv_bias)
        if spec.qk_norm == "head":  # Qwen3, Gemma 3: RMSNorm over each head's dimensions, before RoPE
            self.q_norm = make_norm(cfg, self.dh)
            if not self.shared:
                self.k_norm = make_norm(cfg, self.dh)
        elif spec.qk_norm == "projection":  # OLMo 2: RMSNorm over the whole projection, before RoPE
            self.q_norm = make_norm(cfg, q_out)
            self.k_norm = make_norm(cfg, kv_out)
        self.o = nn.Linear(q_out, cfg.d_model, bias=spec.out_bias)
        if spec.sinks:  # gpt-oss: one learned sink logit per head, an extra softmax column
            self.sinks = nn.Parameter(torch.empty(self.H))

    def queries(self, x: Tensor) -> Tensor:
        """Residual (T, d) -> the query projection (T, H*dh), before norms and positions;
        with an output gate, the query half of each head's rows."""
        return self._q_half(x, 0) if self.spec.out_gate else self.q(x)

    def _q_half(self, x: Tensor, half: int) -> Tensor:
        """Half 0 (queries) or 1 (the output gate) of a gated q projection, (T, H*dh): each
        head's 2·dh rows are its query, then its gate (transformers' view(…, H, 2·dh).chunk(2))."""
        w = self.q.weight.view(self.H, 2, self.dh, -1)[:, half].reshape(self.H * self.dh, -1)
        b = None if self.q.bias is None else self.q.bias.view(self.H, 2, self.dh)[:, half].reshape(-1)
        return nn.functional.linear(x, w, b)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Residual (T, d) -> q (H, T, dh), k and v (H_kv, T, dh), before positions (a
        KV-shared layer: q only, k and v None)."""
        T = x.shape[0]
        if self.shared:
            q = self.queries(x)  # (T, H*dh)
            if self.spec.qk_norm == "projection":
                q = self.q_norm(q)
            q = q.view(T, self.H, self.dh)  # (T, H, dh)
            if self.spec.qk_norm == "head":
                q = self.q_norm(q)
            return q.transpose(0, 1), None, None
        q, k = self.queries(x), self.k(x)  # (T, H*dh), (T, Hkv*dh)
        raw_k = k
        if self.spec.qk_norm == "projection":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(T, self.H, self.dh)  # (T, H, dh)
        k = k.view(T, self.Hkv, self.dh)  # (T, Hkv, dh)
        if self.spec.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        v = (raw_k if self.spec.k_eq_v else self.v(x)).view(T, self.Hkv, self.dh)  # (T, Hkv, dh)
        if self.spec.v_norm:  # Gemma 4: RMSNorm without a scale over each value head
            v = unscaled_rms(v, self.cfg.norm_eps)
        return q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)

    def forward(self, x: Tensor, state: Any, cache: Any = None, hooks: Any = None) -> Tensor:
        """`state`: the pass's `model.PassState` (its first position, positions, texts, and
        (cos, sin) tables per RopeSpec; the layer takes its own kind's, or none without RoPE)."""
        site = self.site
        T = x.shape[0]
        start = state.start
        q, k, v = self.project(x)
        rope = state.ropes.get(self.spec.rope) if self.spec.rope is not None else None
        if rope is not None:
            q = apply_rope(q, *rope)
        if self.shared:  # the owner's keys and values of this pass (cached ones included)
            k, v, k_start, k_pos = state.shared[self.spec.kv_source]
            if k.device != q.device:  # blocks placed across devices: the owner's may sit on another
                k, v, k_pos = k.to(q.device), v.to(q.device), k_pos.to(q.device)
        else:
            if rope is not None:
                k = apply_rope(k, *rope)
            k_start, k_pos = start, state.positions
            if cache is not None:  # earlier keys and values join the new ones
                k, v, k_start = cache.update(self.layer, k, v, start, self.rule.window)
                if k_start != start:
                    k_pos = torch.arange(k_start, start + T, device=x.device)  # (K,)
            if self.shares:
                state.shared[self.layer] = (k, v, k_start, k_pos)
        if hooks is not None:
            for what, value, first in (("q", q, start), ("k", k, k_start), ("v", v, k_start)):
                if hooks.wants(site, what):
                    hooks.report(site, what, value, start, first)
        if hooks is not None and hooks.wants(site, "fnorm"):
            hooks.report(site, "fnorm", self.value_out_norms(v), start, k_start)
        if self.Hkv != self.H:  # each key/value head serves `group_size` query heads
            k = k.repeat_interleave(self.spec.group_size, dim=0)  # (H, K, dh)
            v = v.repeat_interleave(self.spec.group_size, dim=0)  # (H, K, dh)
        bias = state.bias if self.spec.relative is not None else None  # the stack's relative bias (T5, MPNet)
        z = attend(q, k, v, q_pos=state.positions, k_pos=k_pos, rule=self.rule, scale=self.scale,
                   modifiers=self.modifiers, bias=bias, sinks=getattr(self, "sinks", None), site=site, hooks=hooks,
                   segments=state.segments)  # (H, T, dh)
        if self.spec.out_gate:  # Qwen3.5, Qwen3-Next: each head's output × σ(its gate), before o
            z = z * torch.sigmoid(self._q_half(x, 1)).view(T, self.H, self.dh).transpose(0, 1).to(z.dtype)
        if hooks is not None and hooks.wants(site, "result"):
            self._report_result(z, start, k_start, hooks)
        return self.o(z.transpose(0, 1).reshape(T, self.H * self.dh))  # (T, d)

    def value_out_norms(self, v: Tensor) -> Tensor:
        """‖v_j W_O^h‖₂ for every query head h and key j, (H, K) float32, from the values
        (H_kv, K, dh) through the Gram matrix G_h = W_O^hᵀ W_O^h (dh × dh), so memory
        stays at one vector per head whatever the width."""
        w = self.o.weight.view(self.cfg.d_model, self.H, self.dh).double()  # (d, H, dh)
        gram = torch.einsum("mhd,mhe->hde", w, w)  # (H, dh, dh)
        vv = v.double().repeat_interleave(self.spec.group_size, dim=0)  # (H, K, dh)
        sq = torch.einsum("hkd,hde,hke->hk", vv, gram, vv)  # (H, K)
        return sq.clamp_min(0).sqrt().float()

    def _report_result(self, z: Tensor, start: int, k_start: int, hooks: Any) -> None:
        """Each head's share of the output projection, in row chunks of bounded size."""
        w = self.o.weight.view(self.cfg.d_model, self.H, self.dh)  # (d, H, dh)
        rows = max(1, chunk_rows(self.H, self.cfg.d_model) // 4)
        for a in range(0, z.shape[1], rows):
            part = torch.einsum("hcd,mhd->hcm", z[:, a:a + rows], w)  # (H, c, d)
            hooks.report(self.site, "result", part, start + a, k_start)
