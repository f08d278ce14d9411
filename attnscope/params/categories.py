"""Parameter categories: the breakdown row each of our parameter names belongs to, and
counts by row (`count_by_category`)."""

from __future__ import annotations

import re
from math import prod
from typing import Iterable

from attnscope.parts import NOT_COUNTED


# The video's rows, then what its counting leaves out. Order is display order.
ROWS_3B1B = ("embedding", "key", "query", "value", "output", "latent", "linear", "gate", "up", "down", "unembedding")
ROWS_OTHER = ("positions", "projections", "per_layer", "biases", "norms", "router", "pooler", "heads", "other")


def category(name: str) -> str:
    """The breakdown row one of our parameter names belongs to."""
    if name.startswith("other:"):
        return "other"
    if name.startswith("decoder."):  # an encoder-decoder's second stack: its rows are the encoder's
        name = name[len("decoder."):]
    piece = _EXPERT_PIECE.fullmatch(name)
    if piece is not None:  # one expert's tensor of a checkpoint that stores them one by one
        name = piece.group(1)
    if name == "embed.tok.weight":
        return "embedding"
    if name == "unembed.weight":
        return "unembedding"
    if name in ("embed.pos.weight", "embed.types.weight", "relative.weight"):
        return "positions"
    if name.startswith("pooler."):
        return "pooler"
    if name.startswith(("mlm.", "nsp.", "classifier.", "logits_bias")):
        return "heads"
    if name in ("embed.proj_in.weight", "proj_out.weight"):
        return "projections"
    if "norm." in name:
        return "norms"
    if name.startswith("per_layer."):  # Gemma 4's per-layer input table and projection
        return "per_layer"
    if name.endswith((".attn.dt_bias", ".attn.a_log")):  # a linear layer's decay parameters
        return "linear"
    if name.endswith(".bias"):
        return "biases"
    part = name.split(".")[-2]
    if part in ("router", "shared_gate"):  # experts' router, Qwen2-MoE's shared-expert gate
        return "router"
    return _PARTS.get(part, "other")


# A weight's row by its part's name. Latent attention (MLA, parts.latent): its queries
# (plain q, or the low-rank q_a, q_b) are queries; kv_a (to the shared latent and rotated
# key) and kv_b (the latent to each head's key part and value) make keys and values at
# once: their own row, "latent". Linear attention (Gated DeltaNet, parts.deltanet): its
# q/k/v projection before the convolution, the norm's gate z, the write strength b, the
# decay input a, the convolution and the decay parameters (dt_bias, a_log): row "linear".
_PARTS = {"q": "query", "k": "key", "v": "value", "o": "output", "gate": "gate", "up": "up", "down": "down",
          "q_a": "query", "q_b": "query", "kv_a": "latent", "kv_b": "latent", "ple_gate": "per_layer",
          "ple_proj": "per_layer",
          "qkv": "linear", "z": "linear", "b": "linear", "a": "linear", "conv": "linear"}


# One expert's tensor as the family tables name it (see parts.experts): counted as its row.
_EXPERT_PIECE = re.compile(r"(.+\.experts\.\w+\.(?:weight|bias))\.\d+")


def count_by_category(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, int]:
    counts = {row: 0 for row in ROWS_3B1B + ROWS_OTHER}
    for name, shape in shapes:
        if name.endswith(NOT_COUNTED):  # loaded like a parameter, a buffer in transformers: not counted
            continue
        counts[category(name)] += prod(shape)
    return counts
