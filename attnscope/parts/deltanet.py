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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        T = x.shape[0]
        q, k, v, log_g, beta, tail = self.inputs(x, state)
        o, s = delta_rule(q, k, v, log_g, beta, None if state is None else state.recurrent)
        keys = None
        if on_rows is not None or keep_keys:
            carried = None if state is None else state.keys
            for first, block, keys in hidden_attention(q, k, log_g, beta, rows, carried):
                if on_rows is not None:
                    on_rows(first, block)  # type: ignore[operator]
        o = o.to(x.dtype).transpose(0, 1)  # (T, H_v, d_v)
        variance = o.float().pow(2).mean(-1, keepdim=True)
        normed = self.norm.weight * (o.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)
        gated = normed * F.silu(self.z(x).view(T, self.Hv, self.dv).float())
        out = self.o(gated.to(x.dtype).reshape(T, self.value_dim))
        return out, DeltaState(tail, s, keys if keep_keys else None)
