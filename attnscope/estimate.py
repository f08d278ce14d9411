"""`--dry-run`: the memory and disk a run would need, by arithmetic, before running it.

Pure arithmetic on a ModelConfig and the checkpoint's headers (no weights are read). The
figures follow the model's own plan: weights in the chosen dtype, the residual stream and
one block's activations, one query chunk of float32 scores and probabilities (the
kernel's own `parts.chunk_rows`), and what the probes keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from attnscope.config import ModelConfig
from attnscope.params import DTYPE_BYTES
from attnscope.parts import chunk_rows

if TYPE_CHECKING:
    from attnscope.kinds import LayerSpec


def runtime_bytes() -> int:
    """This process's resident memory now, with torch and attnscope imported: the part of
    a run's peak that is the interpreter and its libraries (Linux; 0 where unknown)."""
    import torch  # noqa: F401  (a run imports it: count it)

    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Plan:
    n_tokens: int
    weights: int  # bytes of parameters in the run's dtype
    activations: int  # one block's working set
    attention_chunk: int  # scores + probabilities of one query chunk
    kept: int  # what the probes hold (top-k, summaries, one layer for a streaming save)
    output_file: int  # bytes written by --save / --save-topk
    runtime: int = 0  # the interpreter and libraries, measured
    mapped: int = 0  # checkpoint file pages resident while loading (memory-mapped reads)

    @property
    def peak_memory(self) -> int:
        return self.runtime + self.weights + self.mapped + self.activations + self.attention_chunk + self.kept


def softmax_block_bytes(cfg: ModelConfig, spec: "LayerSpec", n: int, width: int) -> int:
    """One softmax block's working set on n tokens: the residual stream and its norms,
    q, k, v, the heads' outputs and the MLP's hidden layer, in the run's dtype."""
    a, m = spec.attn, spec.mlp
    H, dh = a.n_heads, a.d_head
    return n * (4 * cfg.d_model + (H + 2 * a.n_kv_heads) * dh + 2 * H * dh + (3 if m.kind == "gated" else 2) * m.d_mlp) * width


def chunk_bytes(n_heads: int, n_rows: int, n_keys: int) -> int:
    """One query chunk of float32 scores, mask fill and probabilities (`parts.chunk_rows`)."""
    return 3 * n_heads * min(n_rows, chunk_rows(n_heads, n_keys)) * n_keys * 4


def plan(cfg: ModelConfig, stored_params: int, n: int, dtype: str, n_layers_sel: int, n_heads_sel: int,
         top_k: int, save: bool, save_topk: bool, file_bytes: int = 0, runtime: int = 0,
         measure: str = "weight", save_heads: list[int] | None = None) -> Plan:
    """`save_heads`: each selected layer's saved head count where --save writes each kind
    of layer apart (linear layers: their value heads); default n_heads_sel in every layer."""
    width = DTYPE_BYTES[dtype]
    # One block runs at a time: the largest kind's working set and query chunk is the peak.
    act = attn_chunk = 0
    for spec, _ in cfg.stack.kinds():
        a, m = spec.attn, spec.mlp
        H = a.n_heads
        if a.linear is not None:  # Gated DeltaNet (parts.deltanet): its own working set
            lin = a.linear
            act = max(act, n * (4 * cfg.d_model + 2 * lin.conv_channels + lin.n_v_heads * (2 * lin.d_k + 3 * lin.d_v)
                                + (3 if m.kind == "gated" else 2) * m.d_mlp) * width)
            rows = min(n, chunk_rows(H, n))
            # float32: the transported keys (H_v, n, d_k) twice while one token's are appended,
            # one block of M's rows (and its rows gathered), and the fixed state
            attn_chunk = max(attn_chunk, (2 * lin.n_v_heads * n * lin.d_k + 2 * H * rows * n + lin.state_values) * 4)
            continue
        act = max(act, softmax_block_bytes(cfg, spec, n, width))
        attn_chunk = max(attn_chunk, chunk_bytes(H, n, n))
    H = cfg.n_heads
    kept = 0
    output = 0
    if save:
        saved = save_heads if save_heads is not None else [n_heads_sel] * n_layers_sel
        kept += max(saved, default=0) * n * n * 4  # one layer, streamed
        output += sum(saved) * n * n * 4 + 8 * (n_layers_sel + n_heads_sel + n)
    if save_topk:
        k = min(top_k, n)
        kept += n_layers_sel * n_heads_sel * n * k * 12  # int64 indices + float32 weights
        output += n_layers_sel * n_heads_sel * n * k * 12
    if measure == "rollout":  # this layer's mean over heads, R of the layer before, and their product
        kept += 3 * n * n * 4
    elif measure == "norm":  # ‖f_h(x_j)‖ per head and key, and the focus view's f_h(x_j) vectors (float64)
        kept += H * n * 4 + H * n * cfg.d_model * 8
    elif measure in ("alti", "value-zeroing"):  # n × n float64 matrices and bounded pieces of work (measures.mixing)
        from attnscope.measures.mixing import kept_bytes

        d_mlp = max(spec.mlp.d_mlp for spec, _ in cfg.stack.kinds())
        kept += kept_bytes(n, measure, n_layers_sel if save else 0, cfg.d_model, d_mlp)
        if save and measure == "alti":  # alti_layer beside alti
            output += n_layers_sel * n * n * 4
    return Plan(n, stored_params * width, act, attn_chunk, kept, output, runtime, file_bytes)


# ----------------------------------------------------------------------------- an encoder-decoder's pair run

# One pattern value of a --json heatmap at its peak, while the document is joined (CPython 3.11):
# the float in its list (24 + 8), the indented encoder's piece for it (a str of some 35
# characters, 49 + 35, and its slot, 8) and its share of the joined text (35). That is 159;
# 176 measured (a 6 × 8 × 512 × 512 heatmap, tests/test_seq2seq_dry_run.py's model).
JSON_VALUE_BYTES = 176


@dataclass
class PairPlan:
    """`attend SOURCE --target TARGET --dry-run`: both stacks' working sets and what the
    pass keeps (`seq2seq.pair_view`). The encoder runs first (its block and query chunk
    on n_source tokens), then the decoder beside the encoder's final states (its block,
    its cross-attention's keys and values over the source, and the larger of its causal
    and cross query chunks)."""

    n_source: int
    n_decoder: int
    weights: int
    encoder_activations: int  # one encoder block on the source
    decoder_activations: int  # one decoder block on the target, its cross-attention's keys and values, the memory
    attention_chunk: int  # the largest query chunk of either stack
    cross_pattern: int  # one decoder layer's cross-attention pattern, heads × n_decoder × n_source float32
    shown: int  # the shown part's patterns kept from the pass (every head of each selected layer, then the selection)
    kept: int  # --save's one streamed layer, --save-topk's arrays, the measure's own
    output_file: int
    runtime: int = 0
    mapped: int = 0

    @property
    def peak_memory(self) -> int:
        stacks = max(self.encoder_activations, self.decoder_activations) + self.attention_chunk
        return self.runtime + self.weights + self.mapped + stacks + self.shown + self.kept


def plan_pair(cfg: ModelConfig, stored_params: int, n_source: int, n_decoder: int, dtype: str, part: str,
              view: str, as_json: bool, layers: int, heads: int, top_k: int, save: bool, save_topk: bool,
              measure: str = "weight", file_bytes: int = 0, runtime: int = 0) -> PairPlan:
    """`layers` × `heads`: the shown part's selection; `part`: cross, encoder or decoder."""
    assert cfg.decoder is not None  # internal invariant: an encoder-decoder
    width = DTYPE_BYTES[dtype]
    n_s, n_t, d = n_source, n_decoder, cfg.d_model
    enc = max(softmax_block_bytes(cfg, spec, n_s, width) for spec, _ in cfg.stack.kinds())
    dec = chunk = 0
    for spec, _ in cfg.decoder.kinds():
        cross = spec.cross
        assert cross is not None  # internal invariant: every decoder layer has its cross-attention
        own = softmax_block_bytes(cfg, spec, n_t, width)
        # q and the heads' outputs over the target, k and v over the source
        over = (2 * n_t * cross.n_heads * cross.d_head + 2 * n_s * cross.n_kv_heads * cross.d_head) * width
        dec = max(dec, own + over + n_s * d * width)  # + the encoder's final states, read by every layer
        chunk = max(chunk, chunk_bytes(spec.attn.n_heads, n_t, n_t), chunk_bytes(cross.n_heads, n_t, n_s))
    chunk = max([chunk] + [chunk_bytes(spec.attn.n_heads, n_s, n_s) for spec, _ in cfg.stack.kinds()])
    h_of = {"encoder": cfg.stack.layer(0).attn.n_heads, "decoder": cfg.decoder.layer(0).attn.n_heads}
    h_cross = cfg.decoder.layer(0).cross.n_heads  # type: ignore[union-attr]
    h_of["cross"] = h_cross
    rows, cols = {"encoder": (n_s, n_s), "decoder": (n_t, n_t), "cross": (n_t, n_s)}[part]
    layer_bytes = rows * cols * 4
    # every head of each shown layer as captured, one layer's copy while selecting, then the selection
    shown = (layers * h_of[part] + h_of[part] + layers * heads) * layer_bytes
    if as_json and view == "heatmap":
        shown += layers * heads * rows * cols * JSON_VALUE_BYTES
    kept = output = 0
    if save:
        sizes = {"encoder": (cfg.n_layers, h_of["encoder"], n_s * n_s),
                 "decoder": (len(cfg.decoder), h_of["decoder"], n_t * n_t),
                 "cross": (len(cfg.decoder), h_cross, n_t * n_s)}
        kept += max(2 * h * values * 4 for _, h, values in sizes.values())  # a layer's chunks and the layer assembled
        output += sum(count * h * values * 4 for count, h, values in sizes.values()) + 4096 + 64 * (n_s + n_t)
    if save_topk:
        k = min(top_k, cols)
        kept += layers * heads * rows * k * 12
        output += layers * heads * rows * k * 12 + 4096 + 8 * (n_s + n_t)
    if measure == "rollout":
        kept += 3 * n_s * n_s * 4
    elif measure in ("alti", "value-zeroing"):
        from attnscope.measures.mixing import kept_bytes

        kept += kept_bytes(n_s, measure, 0, d, max(spec.mlp.d_mlp for spec, _ in cfg.stack.kinds()))
    return PairPlan(n_s, n_t, stored_params * width, enc, dec, chunk, h_cross * n_t * n_s * 4, shown, kept, output,
                    runtime, file_bytes)
