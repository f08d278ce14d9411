"""The gated delta rule (Gated DeltaNet: Qwen3.5's and Qwen3-Next's linear-attention
layers), and the exact hidden attention matrix behind it.

A Gated DeltaNet head keeps a state S (d_k × d_v). Each token t decays it, erases along
its key and writes its value:

    S_t = g_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,     o_t = S_tᵀ q_t

with q_t and k_t L2-normalised (q_t also × 1/√d_k), g_t = exp(log-decay) ∈ (0, 1] and the
write strength β_t ∈ (0, 1). Unrolled, the output is a weighted sum of value vectors,

    o_t = Σ_{j ≤ t} M[t, j] v_j,    M[t, j] = β_j k_jᵀ A_{j+1} ⋯ A_t q_t,
    A_i = g_i (I − β_i k_i k_iᵀ)  (symmetric),

so the layer has an attention matrix although it has no softmax: signed, rows not
summing to 1. Reading the product the other way, M[t, j] = r_{t,j} · q_t with
r_{t,j} = A_t ⋯ A_{j+1} β_j k_j: key j *transported* to time t. `hidden_attention`
keeps the transported keys R_t (one row per earlier token) and emits M one row at a
time, R_t = A_t R_{t−1} with β_t k_t appended, so memory is one (H, n, d_k) block, like a
key cache, and rows come out in query order for the chunked consumers.

Both functions work on one sequence, heads first: q, k (H, T, d_k) already normalised
and scaled, v (H, T, d_v), log_g and beta (H, T). Written from the definition above (the
Gated DeltaNet paper, Yang, Kautz & Hatamizadeh 2024) and checked against transformers'
`torch_chunk_gated_delta_rule` in tests/test_linear_attention.py.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def l2_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / √(Σx² + eps) over the last dimension (the FLA kernels' form, eps inside the root)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def delta_rule(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, beta: Tensor,
               state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence, token by token: outputs (H, T, d_v) and the final state
    (H, d_k, d_v), starting from `state` (zeros when None). Computed in the inputs'
    dtype (callers pass float32 or float64)."""
    H, T, dk = k.shape
    dv = v.shape[-1]
    s = torch.zeros(H, dk, dv, dtype=v.dtype, device=v.device) if state is None else state.to(v.dtype)
    out = torch.empty(H, T, dv, dtype=v.dtype, device=v.device)
    decay = log_g.exp()
    for t in range(T):
        kt = k[:, t]  # (H, dk)
        s = s * decay[:, t, None, None]
        # erase along k_t what the state predicts for it, write β_t (v_t − prediction)
        delta = (v[:, t] - torch.einsum("hkv,hk->hv", s, kt)) * beta[:, t, None]
        s = s + kt[:, :, None] * delta[:, None, :]
        out[:, t] = torch.einsum("hkv,hk->hv", s, q[:, t])
    return out, s


def transport(r: Tensor, k_t: Tensor, g_t: Tensor, beta_t: Tensor) -> Tensor:
    """Apply A_t = g_t (I − β_t k_t k_tᵀ) to each row of r (H, m, d_k)."""
    along = torch.einsum("hmk,hk->hm", r, k_t)  # (H, m): each row's component along k_t
    return g_t[:, None, None] * (r - beta_t[:, None, None] * along[:, :, None] * k_t[:, None, :])


def hidden_attention(q: Tensor, k: Tensor, log_g: Tensor, beta: Tensor, rows: int,
                     carried: Tensor | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """M's rows in blocks of `rows` queries: yields (first row, (H, c, K) block, R) where
    K = every key (the carried ones, then this pass's; zero after each query, as a causal
    pattern is), and R is the transported
    keys after the block's last row (carry it into the next pass to continue, as the
    cache does). `carried`: R from earlier tokens (H, m, d_k), or None."""
    H, T, dk = k.shape
    r = q.new_zeros(H, 0, dk) if carried is None else carried.to(q.dtype)
    width = r.shape[1] + T
    decay = log_g.exp()
    for a in range(0, T, rows):
        b = min(T, a + rows)
        block = []
        for t in range(a, b):
            r = torch.cat([transport(r, k[:, t], decay[:, t], beta[:, t]),
                           (beta[:, t, None] * k[:, t])[:, None, :]], dim=1)
            block.append(torch.einsum("hmk,hk->hm", r, q[:, t]))
        out = q.new_zeros(H, b - a, width)
        for i, row in enumerate(block):
            out[:, i, : row.shape[1]] = row
        yield a, out, r
