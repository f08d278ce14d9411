"""Parameter accounting: pure arithmetic on a ModelConfig, and counts from stored tensors
(safetensors headers, or a GGUF's tensor table with its bytes per ggml type).

  counting.py  declared shapes -> rows by category, per layer kind, per head; `ParamReport`,
               `report`, the `--json` document (`report_dict`)
  categories.py the breakdown row of each parameter name; `count_by_category`
  stored.py    what a checkpoint stores (safetensors or GGUF headers), in our names;
               `report_from_stored`, `report_from_gguf`, bytes by ggml type
  context.py   what n tokens of context cost: pattern entries, KV cache per kind, FLOPs

Two conventions:
  * `3b1b`: weight matrices only, as in 3Blue1Brown's "Attention in transformers"
    (embedding, key, query, value, output, up, down, unembedding; the unembedding is
    counted even when it is tied to the embedding);
  * `full`: every parameter the model stores, tied weights once (transformers'
    `num_parameters()`).

Every name is importable from `attnscope.params` as before; nothing here imports torch.
"""

from attnscope.params.context import ContextReport, KindCache, context_report
from attnscope.params.counting import (
    CONVENTIONS,
    DTYPE_BYTES,
    ROWS_3B1B,
    ROWS_OTHER,
    HeadCount,
    KindRow,
    ParamReport,
    category,
    count_by_category,
    declared_counts,
    head_count,
    inactive,
    kind_labels,
    kind_rows,
    layer_ranges,
    param_shapes,
    ranges_text,
    report,
    report_dict,
)
from attnscope.params.stored import (
    QuantRow,
    gguf_header_config,
    gguf_stored_shapes,
    quantization_table,
    report_from_gguf,
    report_from_stored,
    split_fused,
    stored_shapes,
)

__all__ = [
    "CONVENTIONS", "DTYPE_BYTES", "ROWS_3B1B", "ROWS_OTHER", "ContextReport", "HeadCount", "KindCache",
    "KindRow", "ParamReport", "QuantRow", "category", "context_report", "count_by_category",
    "declared_counts", "gguf_header_config", "gguf_stored_shapes", "head_count", "inactive", "kind_labels",
    "kind_rows", "layer_ranges", "param_shapes", "quantization_table", "ranges_text", "report",
    "report_dict", "report_from_gguf", "report_from_stored", "split_fused", "stored_shapes",
]
