"""What travels with the pipeline's residual stream from rank to rank (`hand_on`, `taken`).

Gemma 4's per-layer inputs, and the keys and values of an owner layer whose KV-shared readers sit on a later rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attnscope.errors import DeviceError

if TYPE_CHECKING:
    from attnscope.config import ModelConfig
    from attnscope.pipeline_link import Named


def hand_on(cfg: "ModelConfig", carry: dict[str, Any], after: int, stop: int) -> "Named":
    """What layers after..stop read that an earlier stage computed, as named tensors for the
    stream (from a `Transformer.forward` `carry`): Gemma 4's per-layer inputs "per_layer"
    (T, layers, width), and for each owner layer i < after that a KV-shared layer in
    after..stop reads, its keys and values of this pass, cached ones included,
    "kv.{i}.k"/"kv.{i}.v" (H_kv, K, dh) and their positions "kv.{i}.positions" (K,)."""
    out: Named = {}
    readers = range(after, min(stop, cfg.n_layers - 1) + 1)
    if carry.get("per_layer") is not None and readers:
        out["per_layer"] = carry["per_layer"]
    shared = carry.get("shared") or {}
    owners = sorted({src for i in readers if (src := cfg.layer(i).attn.kv_source) is not None and src < after})
    for i in owners:
        k, v, _, positions = shared[i]
        out.update({f"kv.{i}.k": k, f"kv.{i}.v": v, f"kv.{i}.positions": positions})
    return out


def taken(stream: "Named") -> tuple[dict[str, Any], "Named"]:
    """The `carry` a stage's forward takes from a received stream (see `hand_on`), and the
    rest of the stream ("resid", and what travels on as it came)."""
    carry: dict[str, Any] = {"per_layer": stream.get("per_layer"), "shared": {}}
    rest: Named = {}
    for name, t in stream.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "kv" and parts[1].isdigit() and parts[2] == "k":
            i = int(parts[1])
            positions = stream.get(f"kv.{i}.positions")
            if stream.get(f"kv.{i}.v") is None or positions is None or positions.numel() == 0:
                raise DeviceError(f"the stream carries keys of layer {i} without their values or positions",
                                  hint="run the same attnscope on every rank")
            carry["shared"][i] = (t, stream[f"kv.{i}.v"], int(positions[0]), positions)
        elif name != "per_layer" and not (parts[0] == "kv" and len(parts) == 3):
            rest[name] = t
    return carry, rest
