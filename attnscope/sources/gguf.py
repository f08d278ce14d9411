"""GGUF checkpoints (llama.cpp's one-file format): config and tensors from a parsed header.

The header itself (`read_gguf`, `GGUFFile`, `GGUFTensor`) is read in `sources.gguf_header`
and re-exported here.

* `gguf_config(f)` turns the `{arch}.*` metadata into a Hugging Face config.json-style
  dict, through the family module that lists the architecture in its `GGUF_ARCHS` (key
  names as llama.cpp's `convert_hf_to_gguf.py` writes them).
* `iter_gguf_tensors(f, cfg, family)` yields (our name, float32 tensor in nn.Linear's
  (out, in) layout) for every tensor, dequantized by gguf-py's `gguf.quants.dequantize`
  (llama.cpp's reference numpy code for every ggml block format), named through the
  family's `GGUF_WEIGHTS`, with the family's `gguf_tensor` undoing what the converter
  changed (Llama's q/k row permutation, Gemma's norm + 1, GPT-2's fused qkv).

Next-token-prediction (MTP) layers: llama.cpp's converters append them after a model's last
layer (Qwen3.5's `_Qwen35MtpMixin`: `mtp.layers.i.*` written as `blk.{N+i}.*`, `mtp.fc` as
`blk.N.nextn.eh_proj`, its norms as `nextn.enorm` / `hnorm` / `shared_head_norm`), count them in
`{arch}.block_count` and say how many in `{arch}.nextn_predict_layers`. Transformers builds no
such layer, and neither do we: the family sees the main stack only (block_count −
nextn_predict_layers layers, per-layer metadata cut to them, the MTP blocks out of the tensor
table it is shown), and their tensors are checked by name but never read (`gguf_mtp_layers`).

Llama 3's RoPE scaling: the converter writes no scaling metadata, only a `rope_freqs`
tensor holding each frequency's divisor, computed from the `llama3` rope_scaling dict. We
read those divisors and rebuild that dict from them (`llama.gguf_rope_scaling`), because
our RoPE is driven by the config; the rebuilt dict is accepted only if it reproduces every
divisor, so a file with divisors of another shape is refused rather than run with wrong
positions. gguf-py (`pip install gguf`) is needed for its type tables and dequantizers; it
is imported only when a GGUF is read.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

import numpy as np

from attnscope.errors import CheckpointError, ConfigError
from attnscope.sources.gguf_header import (  # noqa: F401  (re-exported: the old import path)
    DEFAULT_ALIGNMENT,
    MAX_DIMS,
    MAX_NESTING,
    VERSIONS,
    GGUFFile,
    GGUFTensor,
    _ggml_types,
    _gguf_py,
    read_gguf,
)
from attnscope.tokenize import visible

if TYPE_CHECKING:
    from torch import Tensor

    from attnscope.config import ModelConfig

# a block tensor: `blk.N.`, or `enc.blk.N.` / `dec.blk.N.` in an encoder-decoder (T5)
_BLOCK = re.compile(r"^((?:enc|dec)\.)?blk\.(\d+)\.")
# the layer count each stack's blocks must match: a family with several stacks names
# them in its GGUF_STACKS (stack prefix -> its config key)
_ONE_STACK = {"": "num_hidden_layers"}
# the tensors only an MTP block holds (gguf-py's MODEL_TENSOR.NEXTN_*), `blk.N.nextn.<part>`
_NEXTN = tuple(f"nextn.{p}" for p in ("eh_proj", "embed_tokens", "enorm", "hnorm", "shared_head_head",
                                        "shared_head_norm"))
# metadata llama.cpp reads as one value per block (`get_key_or_arr`): cut to the main stack
_PER_LAYER = ("feed_forward_length", "expert_feed_forward_length", "attention.head_count",
              "attention.head_count_kv", "attention.sliding_window_pattern")


def gguf_family(f: GGUFFile) -> ModuleType:
    """The family module that reads this file's architecture (its `GGUF_ARCHS`)."""
    from attnscope.architectures import ARCHITECTURES

    families = list(dict.fromkeys(ARCHITECTURES.values()))
    for module in families:
        if f.arch in getattr(module, "GGUF_ARCHS", ()):
            return module
    known = sorted(a for m in families for a in getattr(m, "GGUF_ARCHS", ()))
    raise CheckpointError(f"{f.path}: GGUF architecture {f.arch!r} is not supported",
                          hint=f"supported GGUF architectures: {', '.join(known)}")


def gguf_mtp_layers(f: GGUFFile) -> range:
    """The blocks that are next-token-prediction layers (`{arch}.nextn_predict_layers` of
    them, the last of `{arch}.block_count`; empty where the file names none). Each must hold
    its `nextn.eh_proj` (the projection that makes a block an MTP layer), and at least one
    layer of the model must remain."""
    key = f"{f.arch}.nextn_predict_layers"
    n = f.metadata.get(key, 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{f.path}: {key} must be a count of layers, got {visible(repr(n))[:40]}")
    total = f.metadata.get(f"{f.arch}.block_count")
    if n and (isinstance(total, bool) or not isinstance(total, int) or not n < total):
        raise ConfigError(f"{f.path}: {key} says {n} next-token-prediction layers, but "
                          f"{f.arch}.block_count is {visible(repr(total))[:40]}: no layer of the model would remain",
                          hint="the file's metadata is damaged; convert it again with llama.cpp")
    mtp = range(total - n, total) if n else range(0)
    for name in f.tensors:  # a block holding nextn tensors is an MTP layer the metadata must name
        if (m := _BLOCK.match(name)) and not m.group(1) and name[m.end():].startswith("nextn.") \
                and int(m.group(2)) not in mtp:
            named = "no block" if not n else f"only blk.{mtp.start} to blk.{mtp.stop - 1}"
            raise CheckpointError(f"{f.path}: tensor {name!r} belongs to a next-token-prediction layer, but {key} "
                                  f"names {named} as one",
                                  hint="the file's metadata is damaged; convert it again with llama.cpp")
    for layer in mtp:
        if f"blk.{layer}.nextn.eh_proj.weight" not in f.tensors:
            raise CheckpointError(f"{f.path}: {key} makes blk.{mtp.start} to blk.{total - 1} next-token-prediction "
                                  f"layers, but blk.{layer} holds no nextn.eh_proj",
                                  hint="the file is incomplete or its metadata is damaged; convert it again with llama.cpp")
    return mtp


def gguf_mtp_tensors(f: GGUFFile) -> set[str]:
    """The names of the tensors in the file's next-token-prediction blocks (never read)."""
    mtp = gguf_mtp_layers(f)
    return {name for name in f.tensors if (m := _BLOCK.match(name)) and not m.group(1) and int(m.group(2)) in mtp}


def gguf_config(f: GGUFFile) -> dict[str, Any]:
    """A config.json-style dict for `attnscope.config.from_hf_config`, from the metadata
    (and, for Llama 3, the `rope_freqs` tensor). A file with next-token-prediction layers is
    shown to its family as the main stack alone (see the module's docstring)."""
    family = gguf_family(f)
    mtp = gguf_mtp_layers(f)
    meta, drop = f.metadata, gguf_mtp_tensors(f) if mtp else set()
    if mtp:
        main = mtp.start
        meta = {k: v[:main] if isinstance(v, list) and len(v) == mtp.stop and k.removeprefix(f"{f.arch}.") in _PER_LAYER
                else v for k, v in meta.items()}
        meta[f"{f.arch}.block_count"] = main
    shapes = {name: t.shape for name, t in f.tensors.items() if name not in drop}
    try:
        raw = family.config_from_gguf(meta, f.arch, shapes)
    except KeyError as exc:
        raise CheckpointError(f"{f.path}: the GGUF metadata lacks {exc.args[0]!r}",
                              hint="the file is incomplete; convert it again with llama.cpp") from None
    _check_sizes(f, raw, getattr(family, "GGUF_STACKS", _ONE_STACK), drop)
    if mtp:  # the checkpoint's own key, so that `params` can show the module apart as it does for a folder
        raw["mtp_num_hidden_layers"] = len(mtp)
    finish = getattr(family, "gguf_config_tensors", None)
    if finish is not None:  # settings the converter stored as tensors (Phi-3's longrope factors)
        raw = finish(raw, lambda name: _config_tensor(f, name))
    embed = f.tensors.get("token_embd.weight")
    vocab = f.metadata.get(f"{f.arch}.vocab_size")
    if vocab is None:  # older files: the embedding's rows, else the tokenizer's length
        vocab = embed.shape[0] if embed else len(f.metadata.get("tokenizer.ggml.tokens") or ())
    if embed is not None and embed.shape[0] != vocab:
        raise CheckpointError(f"{f.path}: the metadata says {vocab!r} tokens, but token_embd has {embed.shape[0]} rows")
    raw["vocab_size"] = vocab
    # llama.cpp writes the output projection only when it is not the token embedding
    raw["tie_word_embeddings"] = "output.weight" not in f.tensors
    raw["torch_dtype"] = "float32"  # what iter_gguf_tensors yields, whatever the file's types
    if "rope_freqs.weight" in f.tensors:
        rebuild = getattr(family, "gguf_rope_scaling", None)
        if rebuild is None:
            raise CheckpointError(f"{f.path}: a rope_freqs tensor in a {f.arch} GGUF is not supported")
        factors = _config_tensor(f, "rope_freqs.weight")
        assert factors is not None  # it is in the table: checked above
        raw["rope_scaling"] = rebuild(factors, raw)
        if raw["rope_scaling"] is None:
            raise CheckpointError(f"{f.path}: its rope_freqs are not Llama 3's RoPE scaling",
                                  hint="attnscope supports the llama3 frequency scaling only")
    return raw


def _config_tensor(f: GGUFFile, name: str) -> list[float] | None:
    """A small tensor read as numbers for the config (None when absent): Phi-3's longrope
    factors, Llama 3's rope_freqs. A config tensor holds one number per rotary frequency,
    so more than 2**16 is refused unread."""
    t = f.tensors.get(name)
    if t is None:
        return None
    if t.numel > 2**16:
        raise CheckpointError(f"{f.path}: {name!r} holds {t.numel:,} values, far more than a setting needs")
    return _dequantize(f, t, _open_data(f)).flatten().tolist()


def _check_sizes(f: GGUFFile, raw: dict[str, Any], stacks: dict[str, str], mtp: set[str] = frozenset()) -> None:
    """The metadata's layer count (each stack's) and width must match the tensor table (but
    the next-token-prediction blocks' tensors, `mtp`): the model is sized from the config
    before any tensor is read, so a lie there would be allocated."""
    for stack, key in stacks.items():
        layers = {int(m.group(2)) for name in f.tensors
                  if (m := _BLOCK.match(name)) and (m.group(1) or "") == stack and name not in mtp}
        n_layers = raw.get(key, raw.get("n_layer"))
        if layers != set(range(len(layers))) or n_layers != len(layers):
            raise CheckpointError(f"{f.path}: the metadata says {n_layers!r} layers, but the file holds tensors "
                                  f"for {len(layers)} ({stack}blk.0 to {stack}blk.{max(layers, default=-1)})")
    embed = f.tensors.get("token_embd.weight")
    width = raw.get("hidden_size", raw.get("n_embd", raw.get("d_model")))
    if embed is not None and (len(embed.shape) != 2 or embed.shape[1] != width):
        raise CheckpointError(f"{f.path}: the metadata says width {width!r}, but token_embd has shape {embed.shape}")


def _our_name(f: GGUFFile, table: dict[str, str | None], name: str, counts: dict[str, int],
              mtp: range = range(0)) -> str | None:
    """Our name for a file's tensor; `counts`: each stack's layers (by block prefix); None
    for a tensor of a next-token-prediction block (`mtp`), once its name is known to be one
    such a block holds (a layer's, or `nextn.*`)."""
    m = _BLOCK.match(name)
    key = f"{m.group(1) or ''}blk.{{layer}}." + name[m.end():] if m else name
    if m is not None and not m.group(1) and int(m.group(2)) in mtp \
            and (key in table or name[m.end():].rpartition(".")[0] in _NEXTN):
        return None
    if key not in table:
        raise CheckpointError(f"{f.path}: unknown tensor {name!r} in a {f.arch} GGUF",
                              hint="attnscope does not know this tensor; the file may be of a variant it does not support")
    target = table[key]
    if m is None or target is None:
        return target
    layer, n_layers = int(m.group(2)), counts.get(m.group(1) or "", 0)
    if layer >= n_layers:
        raise CheckpointError(f"{f.path}: tensor {name!r} is in layer {layer}, but the metadata says {n_layers} layers")
    return target.format(layer=layer)


def _open_data(f: GGUFFile) -> np.ndarray:
    if not f.path.is_file() or f.path.stat().st_size != f.size:
        raise CheckpointError(f"{f.path} changed since its header was read", hint="run the command again")
    return np.memmap(f.path, dtype=np.uint8, mode="r")


def _dequantize(f: GGUFFile, t: GGUFTensor, data: np.ndarray) -> np.ndarray:
    """One tensor as a float32 numpy array in torch order."""
    gguf = _gguf_py()
    qtype, block, type_size = _ggml_types()[t.ggml_type]
    row = t.shape[-1]
    if t.numel == 0:
        return np.zeros(t.shape, dtype=np.float32)
    # A plain ndarray view of the map: numpy's memmap subclass costs a finalizer call per
    # block slice inside gguf-py (0.65 -> 0.32 s for SmolLM2's 272 tensors).
    blocks = data[t.start : t.start + t.nbytes].view(np.ndarray).reshape(-1, row // block * type_size)  # (rows, bytes/row)
    if qtype == gguf.GGMLQuantizationType.F64:
        values = blocks.view("<f8")
    else:
        try:
            values = gguf.quants.dequantize(blocks, qtype)
        except NotImplementedError:
            _cannot_dequantize(f, t)
    values = np.asarray(values, dtype=np.float32).reshape(t.shape)
    return values if values.flags.writeable else values.copy()  # F32 comes back as a view of the map


def _cannot_dequantize(f: GGUFFile, t: GGUFTensor) -> NoReturn:
    raise CheckpointError(f"{f.path}: tensor {t.name!r} is stored as {t.type_name}, which the installed "
                          "gguf package cannot dequantize", hint="pip install -U gguf, or use another quantization")


def check_types(f: GGUFFile) -> None:
    """Every tensor's type can be turned into floats (integer types were refused with the
    header); a type gguf-py has no dequantizer for (Q8_K, ...) is one line naming the
    tensor, before any tensor is read."""
    gguf = _gguf_py()
    traits = getattr(gguf.quants, "_type_traits", None)
    if traits is None:  # another gguf-py: its dequantize says so per tensor
        return
    own = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F64}
    for t in f.tensors.values():
        qtype = gguf.GGMLQuantizationType(t.ggml_type)
        if qtype not in own and qtype not in traits:
            _cannot_dequantize(f, t)


def iter_gguf_tensors(f: GGUFFile, cfg: ModelConfig, family: ModuleType,
                      keep: Callable[[str], bool] | None = None) -> Iterator[tuple[str, Tensor]]:
    """(our name, float32 tensor) for every tensor of the file, in file order. Every name
    and type is checked before the first tensor is dequantized.

    `keep`: only the tensors whose name (ours, as the family's table gives it, before its
    `gguf_tensor` adjustment) it accepts, a pipeline rank's share; the file is
    memory-mapped, so the others' bytes are never read nor dequantized."""
    import torch

    counts = {"": cfg.n_layers, "enc.": cfg.n_layers, "dec.": len(cfg.decoder) if cfg.decoder is not None else 0}
    mtp = gguf_mtp_layers(f)  # next-token-prediction blocks: named, never read
    plan = [(t, _our_name(f, family.GGUF_WEIGHTS, t.name, counts, mtp)) for t in f.tensors.values()]
    check_types(f)
    adjust = getattr(family, "gguf_tensor", None)
    data = _open_data(f)
    for t, name in plan:
        if name is None:  # read elsewhere (rope_freqs: by gguf_config), not a parameter, or an MTP block's
            continue
        if keep is not None and not keep(name):  # another rank's, never touched here
            continue
        tensor = torch.from_numpy(_dequantize(f, t, data))
        yield from (adjust(name, tensor, cfg, f.arch) if adjust else {name: tensor}).items()
