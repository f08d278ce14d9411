"""Context mixing: how much each input token makes up a token's representation at a
layer, with the residual stream, the norms (and, for Value Zeroing, the MLP) counted;
hook wrappers like those of `transforms`, one n × n matrix a layer handed on as a
single "head".

Both read, at layer l, the residual stream entering the block (`resid_pre` at
`blocks.{l}`), the values (`v`) and the pattern chunks (`pattern`) at `blocks.{l}.attn`,
and the block's own output projection and norms while the block runs. With
f_h(x_j) = v_hj W_O^h (the value bias included, the output bias b_O not) each chunk of
query rows i gets, for every key j, S_ij = Σ_h α_hij f_h(x_j): the attention output is
A_i = Σ_j S_ij + b_O exactly.

* alti (Ferrando, Gállego & Costa-jussà, "Measuring the Mixing of Contextual Information
  in the Transformer", EMNLP 2022; pre-norm layers as in ALTI-Logit, Ferrando et al.
  2023): the residual stream after the attention, y_i, written as one vector a token,
  y_i = Σ_j T_i(x_j) + (the biases), each T_i(x_j) depending on x_j alone:
    pre (GPT-2, Llama; parallel wirings too, the MLP left out):  y_i = x_i + s·A_i,
      T_i(x_j) = s·S_ij + [i = j] x_i  (s: Granite's residual scale, 1 elsewhere);
    post (BERT):  y_i = LN(x_i + A_i), the norm linearised at token i's own scale σ_i,
      T_i(x_j) = L(S_ij + [i = j] x_i) / σ_i, the biases L(b_O)/σ_i + β;
    sandwich, post_sublayer (Gemma 2, OLMo 2):  y_i = x_i + N(A_i),
      T_i(x_j) = L(S_ij)/σ_i + [i = j] x_i;
  with L(v) = γ ⊙ (v − mean v) for LayerNorm (γ ⊙ v for RMSNorm) and σ_i the norm's
  own divisor for token i. c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁), rows normalised to
  sum 1; the views and `alti` get the layers rolled out (R_0 = C_0, R_l = C_l R_{l−1}),
  `alti_layer` each layer's C_l alone.
* value-zeroing (Mohebbi, Zuidema, Chrupała & Alishahi, "Quantifying Context Mixing in
  Transformers", EACL 2023): zero token j's value vectors in every head and recompute
  the layer's output from the same input. Zeroing v_j leaves the weights as they are
  and removes S_ij from every A_i, so token i's altered output is the block's own
  wiring (norms, MLP, residual) applied to (x_i, A_i − S_ij): every (i, j) pair with
  some α_hij > 0 is one row of a batched pass of the block's remainder, no attention
  recomputed (a causal layer's pairs are half the n², a window's n·w). score_ij is the
  cosine distance between token i's original and altered outputs, rows normalised to
  sum 1 as the paper does; one matrix a layer, not rolled out.

Precision: every step after the pass is float64 (the block's remainder runs on float64
copies of its norms' and MLP's weights, one block at a time), and the cosine distance
is ‖â − b̂‖²/2 of the unit vectors, free of the cancellation in 1 − cos: BERT's [CLS]
rows in the early layers move by distances near 1e-8, below float32's resolution of
1 − cos, and are resolved here.

Memory: each chunk of query rows is cut into pieces whose (rows × keys × width) float64
work stays under WORK_BYTES; what a layer keeps is a few n × n float64 matrices
(`kept_bytes`, which `--dry-run` counts and `check_fits` holds against the memory at
hand before the run).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from attnscope.analysis import LayerStream
from attnscope.hooks import site_layer

NAMES = ("alti", "value-zeroing")
WORK_BYTES = 64 << 20  # one piece's float64 work: (rows, keys, width) of the decomposition or the remainder
PRE_LIKE = ("pre", "parallel", "parallel_shared", "pre_no_attn_norm")  # y = x + s·A
NORM_AFTER = {"post": "attn_norm", "sandwich": "post_attn_norm", "post_sublayer": "post_attn_norm",
              "sandwich_moe": "post_attn_norm"}  # Gemma 4's MoE layers: a sandwich up to the MLP


def unsupported(model: Any, measure: str, layers: range) -> str | None:
    """Why `measure` cannot run on `layers` of `model` (one line), or None."""
    from attnscope.parts.attention import Attention

    for layer in layers:
        block = model.blocks[layer]
        spec = block.attn.spec if hasattr(block.attn, "spec") else None
        if not isinstance(block.attn, Attention) or spec is None or spec.kind != "softmax":
            kind = spec.kind if spec is not None else type(block.attn).__name__
            return f"--measure {measure} needs softmax attention with per-head values; layer {layer} is {kind}"
        if spec.out_gate:  # Qwen3.5, Qwen3-Next: σ(gate of the query) scales each head's output
            return f"--measure {measure} has no decomposition for layer {layer}'s output gate"
        if measure == "value-zeroing" and hasattr(block, "ple_gate"):  # its input is not the pass's to replay
            return f"--measure value-zeroing has no remainder for layer {layer}'s per-layer input gate"
        if measure == "alti":
            if block.wiring not in PRE_LIKE and block.wiring not in NORM_AFTER:
                return f"--measure alti has no decomposition for layer {layer}'s {block.wiring} wiring"
            norm = getattr(block, NORM_AFTER.get(block.wiring, ""), None)
            if norm is not None and _linear_norm(norm) is None:
                return f"--measure alti cannot linearise layer {layer}'s {type(norm).__name__}"
    return None


def check(m: Any, measure: str, n: int, saved_layers: int) -> None:
    """Before the pass: a model whose layers the measure cannot read, or a text whose
    matrices would not fit, is refused in one line."""
    from attnscope.errors import UsageError

    why = unsupported(m.model, measure, range(m.n_layers))
    if why is not None:
        raise UsageError(why, hint="use --measure weight, norm or rollout on this model")
    cfg = m.config
    d_mlp = max(spec.mlp.d_mlp for spec, _ in cfg.stack.kinds())
    check_fits(n, measure, saved_layers, str(getattr(m, "device", "cpu")), cfg.d_model, d_mlp)


def kept_bytes(n: int, measure: str, saved_layers: int = 0, d: int = 0, d_mlp: int = 0) -> int:
    """What the measure holds beside the pass, for n tokens and width d (d_mlp the MLP's):
    ALTI its layer, the rolled-out matrix and their product (float64) and, with --save,
    every saved layer's C_l (float32) until the file is closed; Value Zeroing its layer
    (float64); and their pieces of work, each at most WORK_BYTES (a few temporaries each)."""
    pairs = n * n * 8
    if measure == "alti":
        return 3 * pairs + saved_layers * n * n * 4 + 3 * min(WORK_BYTES, pairs * 4 * d)
    if measure == "value-zeroing":
        return pairs + 3 * min(WORK_BYTES, pairs * d) + 3 * min(WORK_BYTES, pairs * (4 * d + 3 * d_mlp))
    return 0


def check_fits(n: int, measure: str, saved_layers: int, device: str, d: int = 0, d_mlp: int = 0) -> None:
    """Refuse, before the pass, a text whose n × n matrices would not fit in the memory
    available now (CPU; on a GPU the driver's own error speaks)."""
    from attnscope.api import available_memory
    from attnscope.errors import InputError
    from attnscope.units import human_bytes

    need = kept_bytes(n, measure, saved_layers, d, d_mlp)
    free = available_memory() if device.startswith("cpu") else None
    if free is not None and need > 0.8 * free:
        raise InputError(f"--measure {measure} on {n} tokens keeps {human_bytes(need)} of n × n matrices, more than "
                         f"the {human_bytes(free)} of memory available now",
                         hint="pass a shorter text (the matrices grow with its square)")


def _linear_norm(norm: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Tensor | None] | None:
    """A norm as (L, σ, β): N(z) = L(z)/σ(z) + β with L linear, for LayerNorm and our
    RMSNorm; None for any other module."""
    from attnscope.parts.norms import RMSNorm

    if isinstance(norm, nn.LayerNorm):
        gamma = norm.weight.detach().double() if norm.weight is not None else None
        eps = norm.eps

        def lin_ln(z: Tensor) -> Tensor:
            centred = z - z.mean(-1, keepdim=True)
            return centred * gamma if gamma is not None else centred

        beta = norm.bias.detach().double() if norm.bias is not None else None
        return lin_ln, lambda z: (z.var(-1, unbiased=False, keepdim=True) + eps).sqrt(), beta
    if isinstance(norm, RMSNorm):
        w = norm.weight.detach().double() + norm.offset
        eps = norm.eps
        return (lambda z: z * w), lambda z: (z.pow(2).mean(-1, keepdim=True) + eps).sqrt(), None
    return None


class _Remainder(nn.Module):
    """A block's wiring after its attention, token by token: (x, A) -> the block's
    output, where A stands for what the attention returned."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, a: Tensor) -> Tensor:
        return self.block._forward(x, lambda _h: a, self.block.mlp)


class _Layer:
    """One running layer as both measures read it: its values, output projection and
    residual stream, in float64."""

    def __init__(self, block: nn.Module, x: Tensor, v: Tensor) -> None:
        attn = block.attn
        self.block = block
        self.H, self.dh = attn.H, attn.dh
        self.group = attn.spec.group_size
        self.w_o = attn.o.weight.detach().double()  # (d, H*dh)
        self.b_o = attn.o.bias.detach().double() if attn.o.bias is not None else torch.zeros_like(self.w_o[:, 0])  # (d,)
        self.x = x.double()  # (T, d): the residual stream entering the block
        self.v = v.double().repeat_interleave(self.group, dim=0)  # (H, K, dh)
        self.d = self.w_o.shape[0]

    def moved(self, alpha: Tensor) -> Tensor:
        """S_ij = Σ_h α_hij f_h(x_j) for a piece of query rows: alpha (H, r, K) -> (r, K, d)."""
        K = alpha.shape[-1]
        u = torch.einsum("hck,hke->ckhe", alpha.double(), self.v[:, :K])  # (r, K, H, dh)
        return u.reshape(alpha.shape[1], K, self.H * self.dh) @ self.w_o.T  # (r, K, d)

    def rows_per_piece(self, K: int, width: int) -> int:
        return max(1, WORK_BYTES // max(1, K * width * 8))


# ----------------------------------------------------------------------------- ALTI


class AltiMeasure:
    """Pattern chunks of every layer up to the last one wanted -> ALTI: the rolled-out
    matrix to `pattern` of the targets as a single head, each layer's own C_l as
    `alti_layer` to whichever target wants it."""

    def __init__(self, model: Any, n: int, last_layer: int, views: Any = None, raw: Any = None) -> None:
        self.model = model
        self.targets = [t for t in (views, raw) if t is not None]
        self.n = n
        self.last = last_layer
        self.x: Tensor | None = None
        self.layer: _Layer | None = None
        self.current: Tensor | None = None  # (n, n) float64: this layer's C
        self.rolled: Tensor | None = None  # (n, n) float64: R of the layer before

    def wants(self, site: str, what: str) -> bool:
        # "weights": the block's own, read below while it reports (a pipeline lends another rank's)
        if what in ("resid_pre", "weights") and site.startswith("blocks.") and site.count(".") == 1:
            return int(site.split(".")[1]) <= self.last
        layer = site_layer(site)
        return what in ("v", "pattern") and layer is not None and layer <= self.last

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        if what == "resid_pre":
            self.x = value.detach().clone()
            return
        layer = site_layer(site)
        assert layer is not None and k_start == 0, "alti reads whole-text passes"  # internal invariant
        if what == "v":
            assert self.x is not None  # internal invariant: the block reports its input first
            self.layer = _Layer(self.model.blocks[layer], self.x, value)
            self.current = torch.zeros(self.n, self.n, dtype=torch.float64, device=value.device)
            return
        assert self.layer is not None and self.current is not None  # internal invariant: values come first
        K = value.shape[2]
        step = self.layer.rows_per_piece(K, 4 * self.layer.d)
        for a in range(0, value.shape[1], step):
            alpha = value[:, a:a + step]  # (H, r, K)
            self.current[q_start + a:q_start + a + alpha.shape[1], :K] = alti_rows(self.layer, alpha, q_start + a)
        if q_start + value.shape[1] < self.n:
            return
        c = self.current
        self.rolled = c if self.rolled is None else c @ self.rolled  # (n, n)
        self.current, self.layer, self.x = None, None, None
        for target in self.targets:
            if target.wants(site, "pattern"):
                target.report(site, "pattern", self.rolled.float()[None], 0, 0)  # (1, n, n)
            if target.wants(site, "alti_layer"):
                target.report(site, "alti_layer", c.float()[None], 0, 0)  # (1, n, n)


def decompose(layer: _Layer, alpha: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """ALTI's decomposition for query rows start.. (alpha (H, r, K)): T (r, K, d), T[i, j]
    = T_i(x_j), and the biases (r, d), so that y_i = Σ_j T[i, j] + bias[i]."""
    block = layer.block
    r, K = alpha.shape[1], alpha.shape[2]
    s = layer.moved(alpha)  # (r, K, d)
    rows = torch.arange(r, device=s.device)
    diag = rows + start  # each query's own key
    keep = diag < K
    x = layer.x[start:start + r]  # (r, d)
    if block.wiring in PRE_LIKE:
        if block.scale != 1.0:
            s = s * block.scale
        s[rows[keep], diag[keep]] += x[keep]
        return s, (layer.b_o * block.scale).expand(r, -1)
    lin, sigma_of, beta = _linear_norm(getattr(block, NORM_AFTER[block.wiring]))  # type: ignore[misc]
    if block.wiring == "post":
        s[rows[keep], diag[keep]] += x[keep]
    sigma = sigma_of(s.sum(1) + layer.b_o)  # (r, 1): the norm's divisor for each query
    t = lin(s) / sigma[:, None]  # (r, K, d)
    bias = lin(layer.b_o) / sigma  # (r, d)
    if beta is not None:
        bias = bias + beta
    if block.wiring != "post":
        t[rows[keep], diag[keep]] += x[keep]
    return t, bias


def alti_rows(layer: _Layer, alpha: Tensor, start: int) -> Tensor:
    """Rows start.. of C_l: c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁), normalised to sum 1."""
    t, bias = decompose(layer, alpha, start)
    y = t.sum(1) + bias  # (r, d)
    c = (y.abs().sum(-1, keepdim=True) - (y[:, None] - t).abs().sum(-1)).clamp_min(0)  # (r, K)
    return c / c.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


class AltiStream(LayerStream):
    """A `--save` stream of the rolled-out matrices that also hands each layer's own C_l
    (`alti_layer`) to `emit_layer(layer_pos, (1, n, n))`."""

    WHAT = ("pattern", "alti_layer")

    def __init__(self, layers: list[int], heads: list[int], n: int, emit: Any, emit_layer: Any) -> None:
        super().__init__(layers, heads, n, emit)
        self.emit_layer = emit_layer

    def alti_layer(self, layer: int, start: int, value: Tensor) -> None:
        self.emit_layer(self._layer_pos[layer], value)


# ---------------------------------------------------------------------- Value Zeroing


class ValueZeroingMeasure:
    """Pattern chunks of the layers wanted -> Value Zeroing, one (1, n, n) matrix a layer
    handed to the targets as a single head."""

    def __init__(self, model: Any, n: int, views: Any = None, raw: Any = None) -> None:
        self.model = model
        self.targets = [t for t in (views, raw) if t is not None]
        self.n = n
        self.x: Tensor | None = None
        self.layer: _Layer | None = None
        self.remainder: Callable[[Tensor, Tensor], Tensor] | None = None
        self.current: Tensor | None = None  # (n, n) float64: this layer's distances

    def _wanted(self, layer: int) -> bool:
        site = f"blocks.{layer}.attn"
        return any(t.wants(site, "pattern") for t in self.targets)

    def wants(self, site: str, what: str) -> bool:
        # "weights": the block's own, read below while it reports (a pipeline lends another rank's)
        if what in ("resid_pre", "weights") and site.startswith("blocks.") and site.count(".") == 1:
            return self._wanted(int(site.split(".")[1]))
        layer = site_layer(site)
        return what in ("v", "pattern") and layer is not None and self._wanted(layer)

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        if what == "resid_pre":
            self.x = value.detach().clone()
            return
        layer = site_layer(site)
        assert layer is not None and k_start == 0, "value zeroing reads whole-text passes"  # internal invariant
        if what == "v":
            assert self.x is not None  # internal invariant: the block reports its input first
            block = self.model.blocks[layer]
            self.layer = _Layer(block, self.x, value)
            self.remainder = float64_remainder(block)
            self.current = torch.zeros(self.n, self.n, dtype=torch.float64, device=value.device)
            return
        assert self.layer is not None and self.remainder is not None and self.current is not None
        K = value.shape[2]
        width = 4 * self.layer.d + 3 * _mlp_width(self.layer.block)  # a pair's float64 activations
        step = self.layer.rows_per_piece(K, self.layer.d)
        for a in range(0, value.shape[1], step):
            alpha = value[:, a:a + step]  # (H, r, K)
            start = q_start + a
            self.current[start:start + alpha.shape[1], :K] = zeroed_distances(
                self.layer, self.remainder, alpha, start, max(1, WORK_BYTES // (width * 8)))
        if q_start + value.shape[1] < self.n:
            return
        d = self.current
        scores = d / d.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        self.current, self.layer, self.remainder, self.x = None, None, None, None
        for target in self.targets:
            if target.wants(site, "pattern"):
                target.report(site, "pattern", scores.float()[None], 0, 0)  # (1, n, n)


def _mlp_width(block: nn.Module) -> int:
    widths = [p.shape[0] for name, p in block.mlp.named_parameters() if p.ndim == 2]
    return max(widths, default=0)


def float64_remainder(block: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """The block after its attention, (x, A) -> output, on float64 copies of its norms'
    and MLP's weights (the block itself is left as it is)."""
    wrapper = _Remainder(block)
    params = {f"block.{name}": p.detach().double() for name, p in block.named_parameters()
              if not name.startswith("attn.")}
    params.update({f"block.{name}": b.detach().double() if b.is_floating_point() else b
                   for name, b in block.named_buffers() if not name.startswith("attn.")})
    return lambda x, a: torch.func.functional_call(wrapper, params, (x, a), strict=False)


def zeroed_distances(layer: _Layer, remainder: Callable[[Tensor, Tensor], Tensor], alpha: Tensor, start: int,
                     batch: int) -> Tensor:
    """Cosine distances (r, K) between each query row's output and its output with key j's
    values zeroed, for rows start.. (alpha (H, r, K)); pairs no head attends are 0."""
    r, K = alpha.shape[1], alpha.shape[2]
    s = layer.moved(alpha)  # (r, K, d)
    x = layer.x[start:start + r]  # (r, d)
    a = s.sum(1) + layer.b_o  # (r, d): the attention output
    y0 = remainder(x, a)  # (r, d)
    out = torch.zeros(r, K, dtype=torch.float64, device=s.device)
    qi, kj = (alpha > 0).any(0).nonzero(as_tuple=True)  # the pairs whose zeroing changes anything
    for b in range(0, qi.shape[0], batch):
        i, j = qi[b:b + batch], kj[b:b + batch]
        y = remainder(x[i], a[i] - s[i, j])  # (p, d)
        out[i, j] = cosine_distance(y0[i], y)
    return out


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 − cos(a, b) row by row, as ‖â − b̂‖²/2 (no cancellation when they nearly agree)."""
    a, b = a.double(), b.double()
    ua = a / a.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    ub = b / b.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (ua - ub).pow(2).sum(-1) / 2


def wrap(measure: str, model: Any, n: int, last_layer: int, views: Any = None, raw: Any = None) -> Any:
    if measure == "alti":
        return AltiMeasure(model, n, last_layer, views, raw)
    return ValueZeroingMeasure(model, n, views, raw)
