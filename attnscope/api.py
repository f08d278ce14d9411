"""The Python API: load a model once, then ask for patterns, top-k and summaries.

    >>> from attnscope.api import load
    >>> m = load()                      # the packaged default model (sources.packaged.DEFAULT), offline
    >>> att = m.attention("a fluffy blue creature", layers=[-1])
    >>> att.probs.shape                 # (layers, heads, T, T)
    >>> m.topk("a fluffy blue creature", k=3).indices

The CLI is a thin layer over this module: source -> config -> weights -> forward ->
probes -> results. Nothing here prints; progress goes through an optional callback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from attnscope.units import plural
from attnscope import analysis, architectures, checkpoint
from attnscope.sources import gguf_path, hub, packaged
from attnscope.config import ModelConfig, from_hf_config, read_config_json
from attnscope.errors import CheckpointError, ConfigError, DeviceError, InputError, ModelNotFoundError, UsageError
from attnscope.chat import ChatInfo, read_chat_info
from attnscope.hooks import Capture, SiteInfo, sites
from attnscope.model import KVCache, Transformer, block_tensors, build
from attnscope.model_source import Source, _display_name, _open_source, default_model, open_source  # noqa: F401  (re-exported)
from attnscope.params import param_shapes
from attnscope.tokenize import Tokens, load_tokenizer, tokenize

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Selector = str | int | Sequence[int] | None
if TYPE_CHECKING:
    from attnscope.generate import Generation
Progress = Callable[[int, int], None]  # (bytes loaded so far, total bytes)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for, but no CUDA GPU is available",
                              hint="use --device cpu (or auto)")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {device!r}", hint="use cpu, cuda or auto")


def pick_dtype(dtype: str, device: torch.device, cfg: ModelConfig) -> torch.dtype:
    """`auto`: float32 on the CPU (exact, and fast there); the checkpoint's half
    precision on a GPU. An explicit half dtype the device cannot run is an error."""
    if dtype == "auto":
        if device.type == "cuda" and cfg.dtype in ("bfloat16", "float16"):
            if cfg.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
                return torch.float16
            return DTYPES[cfg.dtype]
        return torch.float32
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    chosen = DTYPES[dtype]
    if device.type == "cuda" and chosen == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU cannot run bfloat16", hint="use --dtype float16 or float32")
    return chosen


@dataclass
class Inspector:
    """A loaded model with its tokenizer, ready to show attention."""

    config: ModelConfig
    model: Transformer
    tokenizer: Any
    source: str
    device: torch.device
    dtype: torch.dtype
    chat: ChatInfo = field(default_factory=ChatInfo)

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    @property
    def sites(self) -> list[SiteInfo]:
        """The model's attention sites, one per layer, each with its kind and own head count."""
        return sites(self.config)

    def tokenize(self, text: str, truncate: bool = False, add_special_tokens: bool = True) -> Tokens:
        return tokenize(self.tokenizer, text, self.config.n_ctx, truncate, add_special_tokens)

    def generate(self, prompt: str, **options: Any) -> "Generation":
        """Write after `prompt` with our KV cache (options: see `attnscope.generate.generate`)."""
        from attnscope.generate import generate

        return generate(self, prompt, **options)

    def _tokens(self, text: str | Tokens, truncate: bool) -> Tokens:
        return text if isinstance(text, Tokens) else self.tokenize(text, truncate)

    def _ids(self, ids: Sequence[int] | torch.Tensor, start: int = 0) -> torch.Tensor:
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        if ids_t.ndim != 1 or ids_t.numel() == 0:
            raise InputError("token ids must be a non-empty 1-D sequence")
        if start + ids_t.numel() > self.config.n_ctx and self.config.positions == "learned":
            raise InputError(f"{plural(start + ids_t.numel(), 'token')} exceed the model's {self.config.n_ctx} positions")
        if int(ids_t.max()) >= self.config.vocab_size or int(ids_t.min()) < 0:
            raise InputError(f"token ids must lie in 0..{self.config.vocab_size - 1}")
        return ids_t

    def run(self, ids: Sequence[int] | torch.Tensor, hooks: Any = None, last_layer: int | None = None,
            target: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass reporting to `hooks` (see `attnscope.hooks`); the residual
        stream after `last_layer` (default: the last), (T, d). An encoder-decoder with a
        `target` (the decoder's input ids: `seq2seq.decoder_input`) runs both stacks and
        returns the decoder's last stream; without one, only the encoder runs."""
        if target is not None:
            from attnscope import seq2seq

            return seq2seq.run(self.model, self._ids(ids), self._ids(target), hooks)
        return self.model(self._ids(ids), hooks, last_layer)

    def seq2seq(self, source: str | Tokens | Sequence[int], target: str | Sequence[int],
                parts: Sequence[str] = ("encoder", "decoder", "cross"), truncate: bool = False) -> "Any":
        """An encoder-decoder's three kinds of attention (`seq2seq.Patterns`): the source
        through the encoder, the decoder reading its start token and then the target's own
        tokens (teacher forcing); `parts` among "encoder", "decoder", "cross"."""
        from attnscope import seq2seq

        if self.config.decoder is None:
            raise UsageError(f"{self.config.name or 'this model'} is not an encoder-decoder: it has no target",
                             hint="a target is for encoder-decoder models (T5, BART, Marian)")
        src = source if not isinstance(source, (str, Tokens)) else self._tokens(source, truncate).ids
        tgt = (target if not isinstance(target, str)
               else tokenize(self.tokenizer, target, self.config.n_ctx, truncate, add_special_tokens=False).ids)
        bad = [p for p in parts if p not in seq2seq.PARTS]
        if bad:
            raise UsageError(f"unknown part {bad[0]!r}", hint="use encoder, decoder or cross")
        return seq2seq.patterns(self.model, self._ids(src),
                                self._ids(seq2seq.decoder_input(self.config, list(tgt))), tuple(parts))

    def capture(self, text: str | Tokens | Sequence[int], wanted: dict[str, Sequence[str]],
                truncate: bool = False) -> "Capture":
        """Whole tensors at named sites: `capture(text, {"blocks.0.attn": ["pattern", "v"]})`,
        then `.get("blocks.0.attn", "pattern")` (see `attnscope.hooks` for what each is)."""
        from attnscope.hooks import Capture, site_layer

        ids = text if not isinstance(text, (str, Tokens)) else self._tokens(text, truncate).ids
        cap = Capture(wanted)
        layers = [site_layer(site) for site in wanted]
        self.run(ids, cap, None if None in layers else max(layers))
        return cap

    def logits(self, text: str | Tokens | Sequence[int], truncate: bool = False) -> torch.Tensor:
        """Float32 next-token logits (T, vocab): row i predicts token i + 1."""
        ids = text if not isinstance(text, (str, Tokens)) else self._tokens(text, truncate).ids
        if self.config.decoder is not None:  # the head reads the decoder, which needs a target
            raise UsageError(f"{self.config.name or 'this model'} is an encoder-decoder: its logits need a target",
                             hint="use Inspector.seq2seq(source, target).logits")
        return self.model.logits(self.run(ids)).cpu()

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layers)

    def step(self, ids: Sequence[int] | torch.Tensor, cache: KVCache, hooks: Any = None,
             last_only: bool = False) -> torch.Tensor:
        """Feed `ids` after what `cache` holds; their float32 logits (T_new, vocab), or
        only the last one's (1, vocab) with `last_only` (a prefill needs no more)."""
        x = self.model(self._ids(ids, cache.length), hooks, cache=cache)
        return self.model.logits(x[-1:] if last_only else x).cpu()

    def _sel(self, layers: Selector, heads: Selector) -> tuple[list[int], list[int]]:
        ls = analysis.select(layers, self.n_layers, "layer")
        return ls, analysis.select_heads(heads, self.sites, ls)

    def attention_ids(self, ids: Sequence[int], layers: Selector = None, heads: Selector = None) -> analysis.Attention:
        ls, hs = self._sel(layers, heads)
        probe = analysis.FullPatterns(ls, hs, len(ids))
        self.run(ids, probe, max(ls))
        return analysis.Attention(probe.probs, ls, hs)

    def attention(self, text: str | Tokens, layers: Selector = None, heads: Selector = None,
                  truncate: bool = False) -> analysis.Attention:
        """Full patterns (L_sel, H_sel, T, T) for a text."""
        tokens = self._tokens(text, truncate)
        att = self.attention_ids(tokens.ids, layers, heads)
        att.tokens = tokens
        return att

    def topk(self, text: str | Tokens, k: int = 3, layers: Selector = None, heads: Selector = None,
             truncate: bool = False) -> analysis.TopK:
        """For every token, the k keys it attends to most, per selected layer and head
        (`TopK.rows` lists only the keys it can see: masked ones weigh 0)."""
        if k < 1:
            raise UsageError(f"top-k must be at least 1, got {k}")
        tokens = self._tokens(text, truncate)
        ls, hs = self._sel(layers, heads)
        signed = analysis.signed_layers(self.sites)  # ranked by |weight| there
        probe = analysis.TopKProbe(ls, hs, len(tokens), k, signed)
        self.run(tokens.ids, probe, max(ls))
        return analysis.TopK(probe.indices, probe.weights, ls, hs, tokens, signed)

    def summary(self, text: str | Tokens, layers: Selector = None, heads: Selector = None,
                truncate: bool = False) -> analysis.Summary:
        tokens = self._tokens(text, truncate)
        ls, hs = self._sel(layers, heads)
        probe = analysis.SummaryProbe(ls, hs, self.config, len(tokens), analysis.signed_layers(self.sites))
        self.run(tokens.ids, probe, max(ls))
        return probe.result()

    def qk(self, text: str | Tokens, layer: int, truncate: bool = False) -> tuple[Tokens, torch.Tensor, torch.Tensor, float]:
        """One layer's queries and keys after RoPE, (H, T, d_head) each (key heads repeated
        for the query heads they serve), float32, and the score scale."""
        tokens, probe = self._qk_probe(text, layer, truncate, scores=False)
        assert probe.q is not None and probe.k is not None
        return tokens, probe.q, probe.k, self.model.blocks[probe.layers[0]].attn.scale

    def scores(self, text: str | Tokens, layer: int, truncate: bool = False) -> tuple[Tokens, torch.Tensor]:
        """One layer's real scores (H, T, T), float32: q·k times the scale, after the
        model's score modifiers (Gemma 2's soft-capping), before its mask."""
        tokens, probe = self._qk_probe(text, layer, truncate)
        return tokens, probe.all_scores()

    def _qk_probe(self, text: str | Tokens, layer: int, truncate: bool,
                  scores: bool = True) -> tuple[Tokens, analysis.QKProbe]:
        tokens = self._tokens(text, truncate)
        (layer,) = analysis.select(layer, self.n_layers, "layer")
        probe = analysis.QKProbe(layer, self.config.layer(layer).attn.group_size, scores)  # its own kind's
        self.run(tokens.ids, probe, layer)
        return tokens, probe


def available_memory() -> int | None:
    """Bytes of memory available now (Linux), or None where it cannot be told."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def load(model: str | os.PathLike[str] | None = None, device: str = "auto", dtype: str = "auto",
         progress: Progress | None = None, offload: bool | None = None, share: Any = None) -> Inspector:
    """Load a checkpoint (folder, .safetensors or .gguf file, hub id, packaged name; None:
    `default_model()`, ATTNSCOPE_MODEL or else the packaged default, `sources.packaged.DEFAULT`).

    `offload`: keep only the embeddings resident and stream one block's weights at a
    time from the memory-mapped safetensors, so a checkpoint bigger than RAM can still be
    inspected. None decides by itself: offload when the weights would not fit in 80% of
    the memory available now.

    `share` (`attnscope.pipeline.Share`): load only its layers, each on its device, and
    the other parts it holds (a pipeline rank's share of the model, or every block placed
    across several devices); the rest stays on the meta device, never read."""
    src = open_source(model)
    if src.gguf is not None:
        return _load_gguf(src, device, dtype, share)
    spec, ckpt, raw, cfg = src.spec, src.checkpoint, src.raw, src.config
    assert ckpt is not None  # internal invariant: not a GGUF
    check_declared(cfg, _stored_count(ckpt, cfg), "config.json")
    tokenizer = load_tokenizer(ckpt.tokenizer_path, str(ckpt.root))
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev, cfg)
    module = architectures.family_for(raw)
    width = torch.finfo(dt).bits // 8
    need_bytes = sum(info.numel for info in ckpt.tensors.values()) * width
    if share is not None:
        offload = False
    if offload is None:
        free = available_memory() if dev.type == "cpu" else None
        offload = free is not None and need_bytes > 0.8 * free
    layer_of: dict[str, int] = {}  # checkpoint name -> block index, for offloading
    decoder_of: dict[str, int] = {}  # checkpoint name -> decoder block index (an encoder-decoder's)
    ours_of: dict[str, str] = {}  # checkpoint name -> our name, outside the blocks
    for name in ckpt.tensors:
        try:
            ours = architectures.our_name(module, name)
        except KeyError:
            continue
        if ours is not None and ours.startswith("blocks."):
            layer_of[name] = int(ours.split(".")[1])
        elif ours is not None and ours.startswith("decoder.blocks."):  # an encoder-decoder's second stack
            decoder_of[name] = int(ours.split(".")[2])
        elif ours is not None and not ours.startswith("mtp."):  # `mtp.`: a next-token-prediction module
            ours_of[name] = ours
    needed = set(layer_of) | set(decoder_of) | set(ours_of)  # the rest (unknown, buffers, MTP): never read
    resident = [n for n in ckpt.tensors if n in needed and not (offload and (n in layer_of or n in decoder_of))]
    if share is not None:  # only the share's own parts and blocks are ever read
        resident = [n for n in ckpt.tensors if n in ours_of and share.holds(ours_of[n])]
        resident += [n for n in ckpt.tensors if layer_of.get(n, -1) in share.layers]
        resident += [n for n in ckpt.tensors if decoder_of.get(n, -1) in (share.decoder or ())]
    total = sum(ckpt.tensors[n].end - ckpt.tensors[n].start for n in resident)
    done = 0
    expected = param_shapes(cfg)

    def stream(names: list[str], report: bool) -> Any:
        nonlocal done
        for name, tensor in checkpoint.iter_tensors(ckpt, names):
            if report:
                done += ckpt.tensors[name].end - ckpt.tensors[name].start
                if progress is not None:
                    progress(done, total)
            try:
                converted = architectures.to_ours(module, name, tensor, cfg)
            except KeyError:
                continue  # a tensor outside our model (classifier heads, ...): not needed
            for ours, t in converted.items():
                want = expected.get(ours)
                if want is not None and tuple(t.shape) != want:  # name the file's tensor, not ours
                    raise CheckpointError(
                        f"{name} in {ckpt.tensors[name].file.name} has shape {tuple(tensor.shape)}, "
                        f"which config.json does not allow (expected {want} for {ours})",
                        hint="the weights and config.json belong to different models",
                    )
            yield from converted.items()

    by_layer: dict[int, list[str]] = {}
    for name, layer in layer_of.items():
        by_layer.setdefault(layer, []).append(name)
    if share is not None:
        net = build(cfg, stream([n for n in resident if n not in layer_of and n not in decoder_of], True), dev, dt,
                    offload=True, only=share.holds)
        for i in share.layers:  # each block streamed onto its own device, one at a time
            state = block_tensors(cfg, i, stream(by_layer.get(i, []), True), share.device(i, dev), dt)
            net.blocks[i].load_state_dict(state, strict=True, assign=True)
        for i in share.decoder or ():  # an encoder-decoder's decoder blocks the share holds, the same way
            names = [n for n, layer in decoder_of.items() if layer == i]
            state = block_tensors(cfg, i, stream(names, True), share.device(cfg.n_layers + i, dev), dt, "decoder.")
            net.decoder.blocks[i].load_state_dict(state, strict=True, assign=True)
        _place(net, cfg, share.placement)
        return Inspector(cfg, net, tokenizer, spec, dev, dt, read_chat_info(ckpt.root, raw))
    net = build(cfg, stream(resident, True), dev, dt, offload=bool(offload))
    if offload:
        net.block_source = lambda i: block_tensors(cfg, i, stream(by_layer.get(i, []), False), dev, dt)
        if cfg.decoder is not None:  # the decoder's blocks stream in the same way, one at a time
            by_decoder: dict[int, list[str]] = {}
            for name, layer in decoder_of.items():
                by_decoder.setdefault(layer, []).append(name)
            net.decoder.block_source = lambda i: block_tensors(cfg, i, stream(by_decoder.get(i, []), False), dev, dt,
                                                               stack="decoder.")
    return Inspector(cfg, net, tokenizer, spec, dev, dt, read_chat_info(ckpt.root, raw))


def _place(net: Any, cfg: ModelConfig, placement: list[torch.device] | None) -> None:
    """Blocks across devices: each stack's blocks' devices, from the split's one list (an
    encoder-decoder's: the encoder's layers, then the decoder's; `layer_split.stack_layers`)."""
    net.placement = placement
    if placement is not None and cfg.decoder is not None:
        net.placement, net.decoder.placement = placement[:cfg.n_layers], placement[cfg.n_layers:]


def _stored_count(ckpt: Any, cfg: ModelConfig) -> int:
    """The values a checkpoint's headers hold, packed tensors (gpt-oss's MXFP4 blocks, two
    values a byte) counted as the matrices they decode to (the family's `stored_parts`)."""
    from math import prod

    from attnscope.params import stored_shapes

    raw = sum(info.numel for info in ckpt.tensors.values())
    return max(raw, sum(prod(shape) for shape in stored_shapes(ckpt, cfg)[0].values()))


def check_declared(cfg: ModelConfig, stored: int, what: str) -> None:
    """Refuse a config that declares more parameters than the checkpoint stores, before
    building anything (a lying `n_layer: 10**15` would otherwise build without end)."""
    from attnscope.parts import required_count

    declared = required_count(cfg)
    if declared > stored:
        raise CheckpointError(f"the checkpoint lacks parameters {what} declares: it stores {stored:,} of {declared:,}",
                              hint="the config and the weights belong to different models, or shards are missing")


def _load_gguf(src: Source, device: str, dtype: str, share: Any = None) -> Inspector:
    """A GGUF checkpoint: tokenizer from its metadata, tensors dequantized to float32 by
    gguf-py and assigned to our model, end-of-sequence id and chat template from the header.
    With a `share` (see `load`), only the share's tensors are read from the memory-mapped
    file and dequantized: its other parts first, then each block onto its device, one at a time."""
    from attnscope.chat import chat_info_from_gguf
    from attnscope.sources.gguf import gguf_family, iter_gguf_tensors
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    f, cfg = src.gguf, src.config
    check_declared(cfg, sum(t.numel for t in f.tensors.values()), "the GGUF header")
    tokenizer = gguf_tokenizer(f)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev, cfg)
    family = gguf_family(f)
    chat = chat_info_from_gguf(f.metadata)
    if share is None:
        net = build(cfg, iter_gguf_tensors(f, cfg, family), dev, dt)
        return Inspector(cfg, net, tokenizer, src.spec, dev, dt, chat)
    outside = iter_gguf_tensors(f, cfg, family, keep=lambda name: not name.startswith(("blocks.", "decoder.blocks."))
                                and share.holds(name))
    net = build(cfg, outside, dev, dt, offload=True, only=share.holds)
    for i in share.layers:
        prefix = f"blocks.{i}."
        block = iter_gguf_tensors(f, cfg, family, keep=lambda name: name.startswith(prefix))
        net.blocks[i].load_state_dict(block_tensors(cfg, i, block, share.device(i, dev), dt), strict=True, assign=True)
    for i in share.decoder or ():  # an encoder-decoder's decoder blocks the share holds (T5), the same way
        prefix = f"decoder.blocks.{i}."
        block = iter_gguf_tensors(f, cfg, family, keep=lambda name: name.startswith(prefix))
        net.decoder.blocks[i].load_state_dict(block_tensors(cfg, i, block, share.device(cfg.n_layers + i, dev), dt,
                                                            "decoder."), strict=True, assign=True)
    _place(net, cfg, share.placement)
    return Inspector(cfg, net, tokenizer, src.spec, dev, dt, chat)
