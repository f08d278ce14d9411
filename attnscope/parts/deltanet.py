"""A Gated DeltaNet layer (Qwen3.5, Qwen3-Next): the linear-attention mixer that takes the
place of softmax attention in three of every four of their layers.

    mixed = conv(x W_qkv)            a causal depthwise convolution over time (kernel K), then SiLU
    q, k, v = split(mixed)           key heads H_k of d_k (q and k), value heads H_v of d_v
    q, k ← L2-normalised; q × 1/√d_k; each key head serves H_v / H_k value heads
    β = σ(x W_b),  log g = −exp(A_log) · softplus(x W_a + dt_bias)      per value head
    o = gated delta rule (parts.linear_attention)
    out = (RMSNorm(o) ⊙ SiLU(x W_z)) W_o                              the gated norm, per head

Parameters (our names, relative to the layer's `attn`): qkv.weight (2·H_k·d_k + H_v·d_v, d),
z.weight (H_v·d_v, d), b.weight (H_v, d), a.weight (H_v, d), conv.weight (2·H_k·d_k + H_v·d_v,
K), dt_bias (H_v,), a_log (H_v,), norm.weight (d_v,), o.weight (d, H_v·d_v).

What a layer keeps between passes (`DeltaState`): the convolution's last K − 1 inputs and
the recurrent state S (H_v, d_k, d_v): a fixed size whatever the context. The hidden
attention of its rows (`parts.linear_attention.hidden_attention`) also needs the
transported keys, one (d_k) row per earlier token; the state keeps them only when asked
(`keep_keys`), as a view of the pattern during generation needs them.

`LinearAttention` is the layer as a model part (`AttnSpec(kind="linear")`, chosen in
parts.block): it reads and writes its `DeltaState` in the cache (`model.KVCache.states`)
and reports at its site `blocks.{layer}.attn` (see attnscope.hooks), each head being a
value head:
  * `pattern` (H_v, c, K) the hidden attention M (signed, rows not summing to 1; the
    site is marked not row-stochastic, `hooks.SiteInfo.stochastic`), only when asked;
  * `v` (H_v, T, d_v) this pass's values (after the convolution): o_t = Σ_j M[t, j] v_j;
  * `z` (H_v, c, d_v) the kernel's output o_t, before the gated norm;
  * `result` (H_v, c, d_model) each value head's share of the output projection, after its
    gated norm (the norm works per head, so the heads' shares sum to the output).
It reports no `q`, `k`, `scores` or `fnorm`: there is no softmax over scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnscope.errors import InputError
from attnscope.hooks import attn_site
from attnscope.parts import chunk_rows
from attnscope.parts.linear_attention import delta_rule, hidden_attention, l2_normalise


@dataclass
class DeltaState:
    """One linear layer's carried state: the conv's last inputs (K − 1, C), the recurrent
    state (H_v, d_k, d_v), and (when kept) the transported keys (H_v, n, d_k)."""

    conv: Tensor
    recurrent: Tensor
    keys: Tensor | None = None


class GatedDeltaNet(nn.Module):
    def __init__(self, d_model: int, n_k_heads: int, n_v_heads: int, d_k: int, d_v: int, kernel: int,
                 eps: float) -> None:
        super().__init__()
        self.Hk, self.Hv, self.dk, self.dv, self.kernel, self.eps = n_k_heads, n_v_heads, d_k, d_v, kernel, eps
        self.key_dim, self.value_dim = n_k_heads * d_k, n_v_heads * d_v
        channels = 2 * self.key_dim + self.value_dim
        self.qkv = nn.Linear(d_model, channels, bias=False)
        self.z = nn.Linear(d_model, self.value_dim, bias=False)
        self.b = nn.Linear(d_model, n_v_heads, bias=False)
        self.a = nn.Linear(d_model, n_v_heads, bias=False)
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(torch.empty(channels, kernel))
        self.dt_bias = nn.Parameter(torch.empty(n_v_heads))
        self.a_log = nn.Parameter(torch.empty(n_v_heads))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.empty(d_v))
        self.o = nn.Linear(self.value_dim, d_model, bias=False)

    def _convolve(self, mixed: Tensor, tail: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv over time of (T, C) after the previous K − 1 inputs (zeros
        at the start); returns SiLU(conv) (T, C) and the new tail (K − 1, C)."""
        T, C = mixed.shape
        before = mixed.new_zeros(self.kernel - 1, C) if tail is None else tail.to(mixed.dtype)
        full = torch.cat([before, mixed], dim=0)  # (K - 1 + T, C)
        out = F.conv1d(full.T[None], self.conv.weight[:, None, :], groups=C)[0].T  # (T, C)
        return F.silu(out), full[-(self.kernel - 1):] if self.kernel > 1 else full[:0]

    def inputs(self, x: Tensor, state: DeltaState | None) -> tuple[Tensor, ...]:
        """q, k (H_v, T, d_k) normalised (q scaled), v (H_v, T, d_v), log g and β (H_v, T),
        in float32 at least (as the FLA kernels compute), and the conv's new tail."""
        T = x.shape[0]
        mixed, tail = self._convolve(self.qkv(x), None if state is None else state.conv)
        q, k, v = torch.split(mixed, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        rep = self.Hv // self.Hk  # each key head serves `rep` consecutive value heads
        q = l2_normalise(q.reshape(T, self.Hk, self.dk).transpose(0, 1).to(compute)) * self.dk ** -0.5
        k = l2_normalise(k.reshape(T, self.Hk, self.dk).transpose(0, 1).to(compute))
        q, k = q.repeat_interleave(rep, 0), k.repeat_interleave(rep, 0)
        v = v.reshape(T, self.Hv, self.dv).transpose(0, 1).to(compute)
        beta = torch.sigmoid(self.b(x)).T.to(compute)  # (H_v, T)
        log_g = (-self.a_log.to(compute).exp() * F.softplus(self.a(x).to(compute) + self.dt_bias)).T
        return q, k, v, log_g, beta, tail

    def forward(self, x: Tensor, state: DeltaState | None = None, keep_keys: bool = False,
                on_rows: object = None, rows: int = 64) -> tuple[Tensor, DeltaState]:
        """x (T, d) → (T, d) and the state after it. `on_rows(first, block)`, when given,
        receives the hidden attention's rows (H_v, c, K) in query order (K counts the kept
        earlier keys first), computed from the same q, k, g and β as the output."""
        out, _, _, new = self._run(x, state, keep_keys, on_rows, rows)
        return out, new

    def _run(self, x: Tensor, state: DeltaState | None, keep_keys: bool, on_rows: object,
             rows: int) -> tuple[Tensor, Tensor, Tensor, DeltaState]:
        """The layer's output (T, d), the kernel's output o (H_v, T, d_v) before the gated
        norm, the values (H_v, T, d_v) and the state after it."""
        q, k, v, log_g, beta, tail = self.inputs(x, state)
        o, s = delta_rule(q, k, v, log_g, beta, None if state is None else state.recurrent)
        keys = None
        if on_rows is not None or keep_keys:
            carried = None if state is None else state.keys
            for first, block, keys in hidden_attention(q, k, log_g, beta, rows, carried):
                if on_rows is not None:
                    on_rows(first, block)  # type: ignore[operator]
        out = self.o(self._gated(o, x).reshape(x.shape[0], self.value_dim))
        return out, o, v, DeltaState(tail, s, keys if keep_keys else None)

    def _gated(self, o: Tensor, x: Tensor) -> Tensor:
        """The gated norm of the kernel's output o (H_v, T, d_v): RMSNorm(o) ⊙ SiLU(x W_z)
        per value head, (T, H_v, d_v) in x's dtype (transformers' Qwen3_5RMSNormGated)."""
        T = x.shape[0]
        up = torch.float64 if x.dtype == torch.float64 else torch.float32  # never below float32
        o = o.to(x.dtype).transpose(0, 1).to(up)  # (T, H_v, d_v)
        variance = o.pow(2).mean(-1, keepdim=True)
        normed = self.norm.weight * (o * torch.rsqrt(variance + self.eps)).to(x.dtype)
        return (normed * F.silu(self.z(x).view(T, self.Hv, self.dv).to(up))).to(x.dtype)


class LinearAttention(GatedDeltaNet):
    """The Gated DeltaNet layer `layer` of a model (`AttnSpec(kind="linear")`), at the site
    `blocks.{layer}.attn`; parameters as `GatedDeltaNet`'s."""

    def __init__(self, cfg, layer: int) -> None:  # cfg: config.ModelConfig
        spec = cfg.layer(layer).attn
        m = spec.linear
        assert m is not None  # internal invariant: kind "linear" carries its LinearSpec
        super().__init__(cfg.d_model, m.n_k_heads, m.n_v_heads, m.d_k, m.d_v, m.conv_kernel, m.norm_eps)
        self.layer, self.site, self.spec = layer, attn_site(layer), spec

    def forward(self, x: Tensor, state: object = None,  # type: ignore[override]
                cache: object = None, hooks: object = None,
                keep_keys: bool = False, on_rows: object = None, rows: int = 64):
        """As a block calls it: x (T, d), the pass's `model.PassState`, the cache and hooks;
        returns (T, d). Called with a `DeltaState` (or None) and no hooks, it is
        `GatedDeltaNet.forward` (returns the output and the new state)."""
        if state is None or isinstance(state, DeltaState):
            return super().forward(x, state, keep_keys, on_rows, rows)
        site, start, T = self.site, state.start, x.shape[0]  # type: ignore[attr-defined]
        want = {what: hooks is not None and hooks.wants(site, what) for what in ("pattern", "v", "z", "result")}
        if state.segments is not None:  # type: ignore[attr-defined]  # packed texts: each its own recurrence
            return self._packed(x, state.segments, start, hooks, want)  # type: ignore[attr-defined]
        carried = cache.states[self.layer] if cache is not None else None  # type: ignore[attr-defined]
        if want["pattern"] and carried is not None and carried.keys is None:
            raise InputError(f"layer {self.layer} is linear: its pattern over earlier tokens needs them kept from "
                             "the first token", hint="ask for the pattern from the cache's first step on")
        keep = cache is not None and (want["pattern"] or (carried is not None and carried.keys is not None))
        n_before = 0 if carried is None or carried.keys is None else carried.keys.shape[1]
        on_rows = None
        if want["pattern"]:
            def on_rows(first: int, block: Tensor) -> None:  # rows over the kept keys, then this pass's
                hooks.report(site, "pattern", block, start + first, start - n_before)  # type: ignore[attr-defined]
        out, z, v, new = self._run(x, carried, keep, on_rows, chunk_rows(self.Hv, n_before + T))
        if cache is not None:
            cache.states[self.layer] = new  # type: ignore[attr-defined]
        self._report(hooks, want, z, v, x, start, start)
        return out

    def _report(self, hooks: object, want: dict[str, bool], z: Tensor, v: Tensor, x: Tensor, start: int,
                k_start: int) -> None:
        if want["v"]:
            hooks.report(self.site, "v", v, start, k_start)  # type: ignore[attr-defined]
        if want["z"]:
            hooks.report(self.site, "z", z, start, k_start)  # type: ignore[attr-defined]
        if want["result"]:  # each value head's gated, normed output through its columns of o
            T, gated = x.shape[0], self._gated(z, x)  # (T, H_v, d_v)
            w = self.o.weight.view(-1, self.Hv, self.dv)  # (d, H_v, d_v)
            step = max(1, chunk_rows(self.Hv, w.shape[0]) // 4)
            for a in range(0, T, step):
                part = torch.einsum("chd,mhd->hcm", gated[a:a + step], w)  # (H_v, c, d)
                hooks.report(self.site, "result", part, start + a, k_start)  # type: ignore[attr-defined]

    def _packed(self, x: Tensor, segments: Tensor, start: int, hooks: object, want: dict[str, bool]) -> Tensor:
        """A packed pass (several texts, no cache): each text's run of tokens starts from a
        fresh state; its pattern rows are reported full width (zero outside its text)."""
        T = x.shape[0]
        cuts = [0] + [int(i) + 1 for i in torch.nonzero(segments[1:] != segments[:-1]).flatten()] + [T]
        outs, zs, vs = [], [], []
        for a, b in zip(cuts[:-1], cuts[1:]):
            on_rows = None
            if want["pattern"]:
                def on_rows(first: int, block: Tensor, a: int = a, b: int = b) -> None:
                    full = block.new_zeros(block.shape[0], block.shape[1], T)
                    full[:, :, a:b] = block
                    hooks.report(self.site, "pattern", full, start + a + first, start)  # type: ignore[attr-defined]
            out, z, v, _ = self._run(x[a:b], None, False, on_rows, chunk_rows(self.Hv, T))
            outs.append(out)
            zs.append(z)
            vs.append(v)
        self._report(hooks, want, torch.cat(zs, 1), torch.cat(vs, 1), x, start, start)
        return torch.cat(outs)
