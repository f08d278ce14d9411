"""`--dry-run`: the memory and disk a run would need, by arithmetic, before running it.

Pure arithmetic on a ModelConfig and the checkpoint's headers (no weights are read). The
figures follow the model's own plan: weights in the chosen dtype, the residual stream and
one block's activations, one query chunk of float32 scores and probabilities (the
kernel's own `parts.chunk_rows`), and what the probes keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnscope.config import ModelConfig
from attnscope.params import DTYPE_BYTES
from attnscope.parts import chunk_rows


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
        H, dh = a.n_heads, a.d_head
        if a.linear is not None:  # Gated DeltaNet (parts.deltanet): its own working set
            lin = a.linear
            act = max(act, n * (4 * cfg.d_model + 2 * lin.conv_channels + lin.n_v_heads * (2 * lin.d_k + 3 * lin.d_v)
                                + (3 if m.kind == "gated" else 2) * m.d_mlp) * width)
            rows = min(n, chunk_rows(H, n))
            # float32: the transported keys (H_v, n, d_k) twice while one token's are appended,
            # one block of M's rows (and its rows gathered), and the fixed state
            attn_chunk = max(attn_chunk, (2 * lin.n_v_heads * n * lin.d_k + 2 * H * rows * n + lin.state_values) * 4)
            continue
        act = max(act, n * (4 * cfg.d_model + (H + 2 * a.n_kv_heads) * dh + 2 * H * dh
                            + (3 if m.kind == "gated" else 2) * m.d_mlp) * width)
        rows = min(n, chunk_rows(H, n))
        attn_chunk = max(attn_chunk, 3 * H * rows * n * 4)  # scores, mask fill, probabilities
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
