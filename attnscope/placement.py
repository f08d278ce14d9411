"""Blocks of one process placed across several devices by the pipeline's split (`--device cuda:0,cuda:1`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from attnscope.errors import DeviceError
from attnscope.layer_split import split

if TYPE_CHECKING:
    from attnscope.api import Inspector
    from attnscope.config import ModelConfig


def placement(cfg: "ModelConfig", devices: list[torch.device], width: int = 4) -> list[torch.device]:
    """Each layer's device: the same balanced split, one range per device (an
    encoder-decoder's: the encoder's layers, then the decoder's, as `split` lists them)."""
    out: list[torch.device] = []
    for device, layers in zip(devices, split(cfg, len(devices), width)):
        out += [device] * len(layers)
    return out


def parse_devices(device: str) -> list[torch.device] | None:
    """`cuda:0,cuda:1` -> those devices; `auto` with several GPUs -> all of them; else None
    (one device: the plain path)."""
    if device == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", i) for i in range(count)] if count > 1 else None
    if "," not in device:
        return None
    names = [part.strip() for part in device.split(",")]
    out: list[torch.device] = []
    for name in names:
        if not name.startswith("cuda:") or not name[5:].isdigit():
            raise DeviceError(f"--device {device!r}: each device of a list must be cuda:N, not {name!r}",
                              hint="e.g. --device cuda:0,cuda:1")
        out.append(torch.device(name))
    if len(set(out)) != len(out):
        raise DeviceError(f"--device {device!r} names a device twice", hint="e.g. --device cuda:0,cuda:1")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device!r} was asked for, but no CUDA GPU is available", hint="use --device cpu")
    if max(d.index for d in out) >= torch.cuda.device_count():
        raise DeviceError(f"--device {device!r} names a GPU beyond the {torch.cuda.device_count()} visible",
                          hint="see nvidia-smi for the GPUs")
    return out


def load_placed(model: str | None, devices: list[torch.device], dtype: str, progress: Any = None) -> "Inspector":
    """One process, the blocks placed across `devices` (embeddings and head on the first).

    An encoder-decoder's layers are the split's one ordered list (`layer_split.stack_layers`):
    the encoder's blocks, then the decoder's, each streamed onto its device. Both stacks'
    embeddings, the encoder's final norm, the decoder's and the head sit on the first device,
    with the stacks' relative position tables (T5), whose per-pass table is copied once to
    each device that runs a layer of its stack (`parts.relative`). The encoder's final states
    are moved once to each device holding decoder layers (once per decoding with a cache,
    `seq2seq.Decoder`), so each decoder layer's self-attention cache and cross-attention keys
    and values are computed, and kept, on its own device."""
    from attnscope import api
    from attnscope.pipeline import Share

    src = api.open_source(model)
    cfg = src.config
    width = torch.finfo(api.pick_dtype(dtype, devices[0], cfg)).bits // 8
    where = placement(cfg, devices, width)
    decoder = range(len(cfg.decoder)) if cfg.decoder is not None else None
    share = Share(range(cfg.n_layers), True, True, cfg.tied_embeddings, where, decoder)
    return api.load(model, str(devices[0]), dtype, progress, share=share)
