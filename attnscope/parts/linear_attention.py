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
keeps the transported keys R_t (one row per earlier token) and emits M a block of
query rows at a time, R_t = A_t R_{t−1} with β_t k_t appended (each block's products in
matrix form, the chunked kernels' WY/UT algebra), so memory is one (H, n, d_k) block, like a
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
    """The recurrence: outputs (H, T, d_v) and the final state (H, d_k, d_v), starting
    from `state` (zeros when None), in blocks of ≤64 tokens by the algebra of
    `hidden_attention` (the state S is the carried keys' share: token t reads
    e^{G_t} (P_t q_t)ᵀ S, and the block leaves e^{G_C} (S − Kᵀ (U S)) plus its own keys'
    outer products with their values). Computed in the inputs' dtype (callers pass
    float32 or float64)."""
    H, T, dk = k.shape
    dv = v.shape[-1]
    s = torch.zeros(H, dk, dv, dtype=v.dtype, device=v.device) if state is None else state.to(v.dtype)
    out = torch.empty(H, T, dv, dtype=v.dtype, device=v.device)
    for a in range(0, T, 64):
        b = min(T, a + 64)
        qc, kc, vc, bc = q[:, a:b], k[:, a:b], v[:, a:b], beta[:, a:b]
        G = log_g[:, a:b].cumsum(-1)  # (H, C)
        u, inv, gamma = _block_forms(kc, bc, G)
        kq = torch.einsum("hik,htk->hit", kc, qc).triu()  # (H, C, C): k_i·q_t for i ≤ t
        us = u @ s  # (H, C, dv): u_i · S
        carried = (qc @ s - kq.transpose(1, 2) @ us) * G[:, :, None].exp()  # (H, C, dv)
        m_own = (torch.einsum("htk,hik->hti", qc, kc) * gamma) @ inv * bc[:, None, :]  # (H, C, C)
        out[:, a:b] = carried + m_own @ vc
        own = bc[:, :, None] * (inv.transpose(1, 2) @ ((G[:, -1:, None] - G[:, :, None]).exp() * kc))  # (H, C, dk)
        s = (s - kc.transpose(1, 2) @ us) * G[:, -1, None, None].exp() + own.transpose(1, 2) @ vc
    return out, s


def _block_forms(kc: Tensor, bc: Tensor, G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A block's WY vectors U (H, C, d_k) of P_t = I − Σ_{i≤t} u_i k_iᵀ (no decay), the UT
    inverse T (H, C, C) with the decays inside, and Γ[t, i] = e^{G_t − G_i} for i ≤ t, 0 above."""
    H, C, _ = kc.shape
    eye = torch.eye(C, dtype=kc.dtype, device=kc.device)
    kk = torch.einsum("htk,hik->hti", kc, kc)  # (H, C, C)
    u = torch.linalg.solve_triangular(eye + (bc[:, :, None] * kk).tril(-1), bc[:, :, None] * kc, upper=False,
                                      unitriangular=True)
    diff = G[:, :, None] - G[:, None, :]  # (H, C, C): G_t − G_i
    gamma = torch.where(eye.new_ones(C, C).tril().bool(), diff, diff.new_tensor(float("-inf"))).exp()
    inv = torch.linalg.solve_triangular(eye + (bc[:, :, None] * kk * gamma).tril(-1), eye.expand(H, C, C),
                                        upper=False, unitriangular=True)
    return u, inv, gamma


def transport(r: Tensor, k_t: Tensor, g_t: Tensor, beta_t: Tensor) -> Tensor:
    """Apply A_t = g_t (I − β_t k_t k_tᵀ) to each row of r (H, m, d_k)."""
    along = torch.einsum("hmk,hk->hm", r, k_t)  # (H, m): each row's component along k_t
    return g_t[:, None, None] * (r - beta_t[:, None, None] * along[:, :, None] * k_t[:, None, :])


def hidden_attention(q: Tensor, k: Tensor, log_g: Tensor, beta: Tensor, rows: int,
                     carried: Tensor | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """M's rows in blocks of at most `rows` queries: yields (first row, (H, c, K) block, R)
    where K = every key (the carried ones, then this pass's; zero after each query, as a
    causal pattern is), and R is the transported keys after the block's last row (carry
    it into the next pass to continue, as the cache does). `carried`: R from earlier
    tokens (H, m, d_k), or None.

    Blocks of C ≤ 64 queries, in matrix products: with G_t the block's cumulative log-decay
    and P_t = (I − β_1 k_1 k_1ᵀ)⋯(I − β_t k_t k_tᵀ) = I − Σ_{i≤t} u_i k_iᵀ (its WY form,
    u_t = β_t (k_t − Σ_{i<t} (k_i·k_t) u_i): one unit-triangular solve), the keys carried
    into the block give M[t, ·] = e^{G_t} (R q_t − Σ_{i≤t} (R u_i)(k_i·q_t)) and leave it as
    e^{G_C} (R − (R Uᵀ) K); the block's own keys by the same algebra with the decays inside
    (the UT transform of the chunked kernels), so every step is a matrix product."""
    H, T, dk = k.shape
    r = q.new_zeros(H, 0, dk) if carried is None else carried.to(q.dtype)
    width = r.shape[1] + T
    step = max(1, min(rows, 64))
    for a in range(0, T, step):
        b = min(T, a + step)
        C = b - a
        qc, kc, lg, bc = q[:, a:b], k[:, a:b], log_g[:, a:b], beta[:, a:b]  # (H, C, dk), (H, C)
        G = lg.cumsum(-1)  # (H, C): log of the decay from the block's start through token t
        out = q.new_zeros(H, C, width)
        m = r.shape[1]
        u, inv, gamma = _block_forms(kc, bc, G)
        if m:
            ru = torch.einsum("hmk,hik->hmi", r, u)  # (H, m, C): R u_i
            kq = torch.einsum("hik,htk->hit", kc, qc).triu()  # (H, C, C): k_i·q_t for i ≤ t
            mc = torch.einsum("hmk,htk->hmt", r, qc) - ru @ kq  # (H, m, C)
            out[:, :, :m] = (mc * G[:, None, :].exp()).transpose(1, 2)
            r = (r - ru @ kc) * G[:, -1, None, None].exp()  # carried keys, transported past the block
        # the block's own keys: with Γ[t, i] = e^{G_t − G_i} (i ≤ t) and
        # T = (I + tril(diag(β)(K Kᵀ ⊙ Γ), −1))⁻¹, M[t, j] = Σ_i (q_t·k_i) Γ[t, i] T[i, j] β_j,
        # and key j leaves the block as β_j Σ_i T[i, j] e^{G_C − G_i} k_i
        out[:, :, m:m + C] = (torch.einsum("htk,hik->hti", qc, kc) * gamma) @ inv * bc[:, None, :]
        own = bc[:, :, None] * (inv.transpose(1, 2) @ ((G[:, -1:, None] - G[:, :, None]).exp() * kc))  # (H, C, dk)
        r = torch.cat([r, own], dim=1)
        yield a, out, r
