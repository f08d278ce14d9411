"""The gated delta rule and its hidden attention (attnscope.parts.linear_attention)
against transformers' own Gated DeltaNet kernels (Qwen3.5), on random inputs shaped like
a real layer: grouped key heads, 90+ tokens, decays and write strengths across their range.

Tolerances: the recurrence and transformers' chunked (UT-transform) form sum the same
terms in different orders; in float32 each output entry is a sum of ≤ T terms of size ≤
|v| ≤ 4 (q, k unit vectors, β < 1, g ≤ 1, so |M[t, j]| ≤ 1), so two orders differ by
≲ T · 2 · 2⁻²⁴ · 4 ≈ 5e-5 at T = 96 in the worst case and ~√T times less typically; we
check float32 at 1e-4 absolute. transformers' kernels compute in float32 whatever the
inputs' dtype, so float64 exactness is checked against the definition multiplied out
(`test_hidden_attention_is_the_definition`), and transformers is met at float32's bound.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.parts.linear_attention import delta_rule, hidden_attention, l2_normalise

pytest.importorskip("transformers")
from transformers.models.qwen3_5.modeling_qwen3_5 import (  # noqa: E402
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

T, HK, HV, DK, DV = 96, 2, 4, 16, 8


def inputs(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, HK, DK, generator=g, dtype=dtype)
    k = torch.randn(1, T, HK, DK, generator=g, dtype=dtype)
    v = torch.randn(1, T, HV, DV, generator=g, dtype=dtype)
    # log-decay: −exp(A_log)·softplus(a + dt_bias), from ~0 (keep) to −8 (forget)
    log_g = -torch.rand(1, T, HV, generator=g, dtype=dtype) ** 3 * 8
    beta = torch.rand(1, T, HV, generator=g, dtype=dtype)
    return {"q": q, "k": k, "v": v, "log_g": log_g, "beta": beta}


def ours_layout(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """transformers' (1, T, heads, d) → our (H, T, d): normalised, q scaled, key heads
    repeated to the value heads (each key head serves HV // HK consecutive value heads)."""
    rep = HV // HK
    q = l2_normalise(x["q"][0].transpose(0, 1)).repeat_interleave(rep, 0) * DK ** -0.5
    k = l2_normalise(x["k"][0].transpose(0, 1)).repeat_interleave(rep, 0)
    return q, k, x["v"][0].transpose(0, 1), x["log_g"][0].T, x["beta"][0].T


def theirs(x: dict[str, torch.Tensor], chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    rule = torch_chunk_gated_delta_rule if chunked else torch_recurrent_gated_delta_rule
    out, state = rule(x["q"], x["k"], x["v"], g=x["log_g"], beta=x["beta"], output_final_state=True,
                      use_qk_l2norm_in_kernel=True)
    return out[0].transpose(0, 1), state[0]  # (H, T, dv), (H, dk, dv)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunked", [True, False])
def test_delta_rule_equals_transformers(dtype: torch.dtype, chunked: bool) -> None:
    x = inputs(dtype)
    q, k, v, log_g, beta = ours_layout(x)
    out, state = delta_rule(q, k, v, log_g, beta)
    ref_out, ref_state = theirs(x, chunked)
    assert float((out.double() - ref_out.double()).abs().max()) < 1e-4
    assert float((state.double() - ref_state.double()).abs().max()) < 1e-4


def full_matrix(q, k, log_g, beta, rows: int) -> torch.Tensor:
    blocks = [block for _, block, _ in hidden_attention(q, k, log_g, beta, rows)]
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("rows", [1, 7, 64, 200])
def test_hidden_attention_reproduces_the_output(rows: int) -> None:
    """Σ_j M[t, j] v_j is the layer's own kernel output (transformers' chunked rule,
    float32) to 1e-5 relative, and our own recurrence's to 1e-12 in float64; M is causal."""
    for dtype in (torch.float64, torch.float32):
        x = inputs(dtype, seed=1)
        q, k, v, log_g, beta = ours_layout(x)
        m = full_matrix(q, k, log_g, beta, rows)
        assert m.shape == (HV, T, T)
        assert torch.equal(m.triu(1), torch.zeros_like(m))
        ref_out, _ = theirs(x)
        got = m.double() @ v.double()
        rel = float((got - ref_out.double()).norm() / ref_out.double().norm())
        assert rel < 1e-5, rel
        if dtype == torch.float64:
            own, _ = delta_rule(q, k, v, log_g, beta)
            assert float((got - own).abs().max()) < 1e-12


def test_hidden_attention_is_the_definition() -> None:
    """Every entry equals β_j k_jᵀ A_{j+1} ⋯ A_t q_t, multiplied out directly (float64)."""
    x = inputs(torch.float64, seed=2)
    q, k, v, log_g, beta = ours_layout(x)
    n = 20
    m = full_matrix(q[:, :n], k[:, :n], log_g[:, :n], beta[:, :n], rows=8)
    eye = torch.eye(DK, dtype=torch.float64)
    for h in (0, HV - 1):
        for t in range(n):
            for j in range(t + 1):
                p = eye.clone()
                for i in range(j + 1, t + 1):
                    a = log_g[h, i].exp() * (eye - beta[h, i] * torch.outer(k[h, i], k[h, i]))
                    p = p @ a
                want = beta[h, j] * k[h, j] @ p @ q[h, t]
                assert abs(float(m[h, t, j] - want)) < 1e-12


def test_carried_keys_continue_a_pass() -> None:
    """Two passes, the second carrying the first's transported keys (as a cache does),
    give the one-pass matrix's rows; the state carried by `delta_rule` gives its outputs."""
    x = inputs(torch.float64, seed=3)
    q, k, v, log_g, beta = ours_layout(x)
    whole = full_matrix(q, k, log_g, beta, rows=16)
    cut = 50
    *_, (_, _, r) = hidden_attention(q[:, :cut], k[:, :cut], log_g[:, :cut], beta[:, :cut], rows=16)
    rest = torch.cat([b for _, b, _ in hidden_attention(q[:, cut:], k[:, cut:], log_g[:, cut:], beta[:, cut:],
                                                        rows=9, carried=r)], dim=1)
    assert float((rest - whole[:, cut:]).abs().max()) < 1e-12
    out, state = delta_rule(q[:, :cut], k[:, :cut], v[:, :cut], log_g[:, :cut], beta[:, :cut])
    out2, _ = delta_rule(q[:, cut:], k[:, cut:], v[:, cut:], log_g[:, cut:], beta[:, cut:], state=state)
    full, _ = delta_rule(q, k, v, log_g, beta)
    assert float((torch.cat([out, out2], 1) - full).abs().max()) < 1e-12


def test_rows_are_not_distributions() -> None:
    """The point of showing it signed: rows neither sum to 1 nor stay non-negative."""
    x = inputs(torch.float64, seed=4)
    q, k, v, log_g, beta = ours_layout(x)
    m = full_matrix(q, k, log_g, beta, rows=32)
    assert float(m.min()) < 0
    assert float((m.sum(-1) - 1).abs().max()) > 0.1


# ------------------------------------------------------------ the whole Gated DeltaNet layer

def _reference_layer(seed: int = 0):
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    cfg = Qwen3_5TextConfig(hidden_size=48, linear_num_key_heads=HK, linear_num_value_heads=HV,
                            linear_key_head_dim=DK, linear_value_head_dim=DV, linear_conv_kernel_dim=4,
                            num_hidden_layers=1, layer_types=["linear_attention"], rms_norm_eps=1e-6,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=64,
                            vocab_size=64)
    torch.manual_seed(seed)
    layer = Qwen3_5GatedDeltaNet(cfg, 0).eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name == "A_log":
                p.copy_(torch.rand_like(p) * 2 - 1)  # decays exp(A_log)·softplus(·) of order 1
            elif name == "norm.weight":
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    return cfg, layer


def _ours_from(cfg, layer):
    from attnscope.parts.deltanet import GatedDeltaNet

    ours = GatedDeltaNet(cfg.hidden_size, HK, HV, DK, DV, 4, cfg.rms_norm_eps)
    names = {"in_proj_qkv.weight": "qkv.weight", "in_proj_z.weight": "z.weight", "in_proj_b.weight": "b.weight",
             "in_proj_a.weight": "a.weight", "dt_bias": "dt_bias", "A_log": "a_log", "norm.weight": "norm.weight",
             "out_proj.weight": "o.weight"}
    state = {names[k]: v for k, v in layer.state_dict().items() if k in names}
    state["conv.weight"] = layer.conv1d.weight[:, 0, :]
    ours.load_state_dict(state)
    return ours.eval()


@torch.no_grad()
def test_layer_equals_transformers_and_steps_exactly() -> None:
    """Our Gated DeltaNet layer equals transformers' Qwen3_5GatedDeltaNet on a 96-token
    input (float32; sums in another order: 1e-5 relative), token by token through its
    state equals the full pass, and Σ_j M[t, j] v_j is the kernel output."""
    cfg, layer = _reference_layer()
    ours = _ours_from(cfg, layer)
    x = torch.randn(T, cfg.hidden_size, generator=torch.Generator().manual_seed(5))
    want = layer(x[None])[0]
    got, _ = ours(x)
    assert float((got - want).norm() / want.norm()) < 1e-5

    rows_seen: dict[int, torch.Tensor] = {}
    stepped, state = [], None
    for t in range(T):
        out, state = ours(x[t:t + 1], state, keep_keys=True,
                          on_rows=lambda first, block, t=t: rows_seen.__setitem__(t, block))
        stepped.append(out)
    stepped_out = torch.cat(stepped)
    assert float((stepped_out - got).norm() / got.norm()) < 1e-5
    assert state.recurrent.shape == (HV, DK, DV) and state.conv.shape == (3, 2 * HK * DK + HV * DV)

    # the hidden attention, whole and stepped, reproduces the kernel's output
    whole: list[torch.Tensor] = []
    got2, _ = ours(x, on_rows=lambda first, block: whole.append(block))
    m = torch.cat(whole, dim=1)  # (HV, T, T)
    q, k, v, log_g, beta, _ = ours.inputs(x, None)
    o, _ = delta_rule(q, k, v, log_g, beta)
    assert float(((m @ v) - o).norm() / o.norm()) < 1e-5
    last = torch.zeros_like(m)
    for t in range(T):  # each step's own row, over the keys so far
        last[:, t, : t + 1] = rows_seen[t][:, 0]
    assert float((torch.tril(m) - last).norm() / m.norm()) < 1e-5
