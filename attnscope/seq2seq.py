"""Encoder-decoder models (T5, BART, mBART, Marian): the second stack and a pass over both.

A `ModelConfig` whose `decoder` is set describes two stacks: the model-wide fields and
`cfg.stack` are the encoder's (its blocks are `model.Transformer`'s own, sites
`blocks.{i}.attn`), and `cfg.decoder` lists the decoder's layers, each holding a
cross-attention (`LayerSpec.cross`). The token table is shared (T5's and BART's `shared`);
each stack has its own learned positions, embedding norm, relative position table and
final norm where the family has them (parameter names `decoder.…`). The decoder's sites
are `decoder.blocks.{i}.attn` (causal self-attention) and `decoder.blocks.{i}.cross`
(rows: target positions, keys: source positions).

A pass (`run`) encodes the source once, then runs the decoder on its input ids (the
decoder's start token followed by the target: teacher forcing), every decoder layer's
cross-attention reading the encoder's final states (`PassState.memory`). The output head
(`Transformer.logits`) reads the decoder's stream after the decoder's final norm.

After transformers' T5ForConditionalGeneration / BartForConditionalGeneration (two stacks
sharing one embedding, the encoder's last hidden state handed to every decoder layer).
The --save and --save-topk writers live in `seq2seq_save` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection

import torch
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.errors import CheckpointError, InputError
from attnscope.hooks import DECODER, PARTS
from attnscope.parts import stack_relative
from attnscope.parts.block import Block
from attnscope.parts.norms import make_norm
from attnscope.parts.relative import RelativeBias


class Decoder(nn.Module):
    """The decoder stack: positions and embedding norm of its own (the token table is the
    encoder's), its blocks with cross-attention, its relative table and final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from attnscope.model import Embedding

        assert cfg.decoder is not None  # internal invariant: built for an encoder-decoder only
        self.cfg = cfg
        self.embed = Embedding(cfg, tokens=False)
        self.blocks = nn.ModuleList(Block(cfg, i, cfg.decoder, DECODER) for i in range(len(cfg.decoder)))
        relative = stack_relative(cfg, cfg.decoder)
        if relative is not None:
            self.relative = RelativeBias(relative, cfg.decoder.layer(0).attn.n_heads)
        if cfg.final_norm:
            self.final_norm = make_norm(cfg)
        # Offloading (`api.load(offload=True)`): as `Transformer.block_source`, block i's
        # weights (names relative to the block) just before it runs, dropped after it.
        self.block_source: Any = None
        # Blocks across devices in one process (`attnscope.placement`): decoder block i's device,
        # as `Transformer.placement` for the encoder's; the stream, the pass's state and the
        # encoder's final states moved to it before it runs (`_moved`).
        self.placement: list[torch.device] | None = None

    def forward(self, ids: Tensor, tok: nn.Module, memory: Tensor, hooks: Any = None, start: int | None = None,
                cache: Any = None, first_layer: int = 0, last_layer: int | None = None,
                resid: Tensor | None = None) -> Tensor:
        """Decoder ids (T,) at positions start.. (default: the cache's length, else 0), reading
        the encoder's final states `memory` (S, d): the decoder's last residual stream (T, d),
        before its final norm. A pipeline's stage (`attnscope.pipeline`) runs decoder layers
        first_layer..last_layer (-1: none, the ids embedded only) on the stream `resid` (T, d)
        it received instead of embedding `ids`."""
        from attnscope.model import PassState

        cfg = self.cfg
        T = ids.shape[0] if resid is None else resid.shape[0]
        if start is None:
            start = cache.length if cache is not None else 0
        if cfg.positions in ("learned", "sinusoidal") and start + T > cfg.n_ctx:
            raise InputError(f"decoder positions up to {start + T} exceed the model's {cfg.n_ctx}")
        x = self.embed(ids, start, tok=tok) if resid is None else resid
        stop = len(self.blocks) - 1 if last_layer is None else last_layer
        positions = torch.arange(start, start + T, device=x.device)
        runs = first_layer <= stop  # a stage that only embeds has no table to read
        bias = self.relative.for_pass(start + T) if hasattr(self, "relative") and runs else None
        cross = cache.cross if cache is not None else {}  # the source's keys and values, per layer
        state = PassState(start, positions, None, {}, bias, memory=memory, cross=cross)
        moved = cache.memory if cache is not None else {}  # blocks across devices: the encoder's states on each
        if self.placement is not None:
            moved.setdefault(memory.device, memory)
        for i, block in enumerate(self.blocks):
            if i > stop:
                break
            if i < first_layer:
                continue
            device = self.placement[i] if self.placement is not None else None
            if device is not None and (x.device != device or state.memory.device != device):
                x, state = x.to(device), _moved(state, device, moved)
            if self.block_source is None:
                x = block(x, state, cache, hooks)
            else:
                block.load_state_dict(self.block_source(i), strict=True, assign=True)
                try:
                    x = block(x, state, cache, hooks)
                finally:
                    block.to_empty(device="meta")  # drop this block's weights before the next loads
            if not bool(torch.isfinite(x).all()):
                raise CheckpointError(f"decoder layer {i} produced values that are not finite (NaN or infinity)",
                                      hint="the checkpoint's weights or config.json hold numbers the model cannot compute with")
        if cache is not None and stop == len(self.blocks) - 1:
            cache.length = start + T
        return x


def _moved(state: Any, device: torch.device, moved: dict[torch.device, Tensor]) -> Any:
    """The decoder pass's state on `device` (the next block's, blocks across devices): its
    positions as `model._state_on` moves them, and the encoder's final states, moved to a
    device once and kept in `moved` (a decoding's cache keeps them: once per decoding). The
    cross-attention's keys and values stay in the one dict by layer, each computed on its
    layer's device."""
    import dataclasses

    from attnscope.model import _state_on

    memory = moved.get(device)
    if memory is None:
        memory = moved[device] = state.memory.to(device)
    return dataclasses.replace(_state_on(state, device), memory=memory)


@torch.inference_mode()
def encode(model: nn.Module, source: Tensor, hooks: Any = None) -> Tensor:
    """The encoder's final states (S, d): its last residual stream after its final norm,
    what every cross-attention reads."""
    x = model(source, hooks)
    if model.cfg.final_norm and model.placement is not None:  # blocks across devices: the norm is the first's
        x = x.to(model.embed.tok.weight.device)
    return model.final_norm(x) if model.cfg.final_norm else x


@torch.inference_mode()
def run(model: nn.Module, source: Tensor, decoder_ids: Tensor, hooks: Any = None) -> Tensor:
    """Encode `source` (S,), then decode `decoder_ids` (T,) (the start token and the target,
    teacher forcing): the decoder's last residual stream (T, d); `model.logits` of it gives
    each next token's logits."""
    if model.cfg.decoder is None:
        raise InputError(f"{model.cfg.name or 'this model'} has no decoder: it reads one text",
                         hint="a target is for encoder-decoder models (T5, BART, Marian)")
    memory = encode(model, source, hooks)
    return model.decoder(decoder_ids, model.embed.tok, memory, hooks)


def decoder_input(cfg: ModelConfig, target: list[int]) -> list[int]:
    """What the decoder reads for a target under teacher forcing: the start token
    (`decoder_start_token_id`), then the target's own ids."""
    return [int(cfg.extra.get("decoder_start_token_id", 0))] + list(target)


def decoder_tokens(m: Any, tgt: Any) -> Any:
    """The decoder's inputs as `Tokens`: its start token (a special token), then the target's."""
    from attnscope.tokenize import Tokens

    ids = decoder_input(m.config, tgt.ids)
    start = getattr(m.tokenizer, "id_to_token", lambda i: None)(ids[0]) or f"<{ids[0]}>"
    return Tokens(text=tgt.text, ids=ids, labels=[start] + list(tgt.labels), offsets=[(0, 0)] + list(tgt.offsets),
                  special=[True] + list(tgt.special), truncated_from=tgt.truncated_from)


@dataclass
class Patterns:
    """One encoder-decoder pass's attention, float32 on the CPU, every layer and head:
    `encoder` [enc layers, H, S, S], `decoder` [dec layers, H, T, T] (causal) and `cross`
    [dec layers, H, T, S] (rows: the decoder's inputs, keys: the source), each None where not
    asked for; the ids each stack read and the next-token logits (T, vocab)."""

    source_ids: list[int]
    decoder_ids: list[int]
    encoder: Tensor | None
    decoder: Tensor | None
    cross: Tensor | None
    logits: Tensor


def part_sites(cfg: ModelConfig, part: str) -> list[str]:
    """Every site of one part ("encoder", "decoder", "cross"; `hooks.PARTS`), in layer order."""
    from attnscope.hooks import sites

    return [s.name for s in sites(cfg, part)]


def patterns(model: nn.Module, source: Tensor, decoder_ids: Tensor, parts: tuple[str, ...] = PARTS) -> Patterns:
    """Run both stacks once (teacher forcing) and keep the patterns of `parts`."""
    from attnscope.hooks import Capture

    cfg = model.cfg
    wanted = {site: ["pattern"] for part in parts for site in part_sites(cfg, part)}
    cap = Capture(wanted)
    x = run(model, source, decoder_ids, cap)
    out = {part: torch.stack([cap.get(site, "pattern") for site in part_sites(cfg, part)]).float()
           if part in parts else None for part in PARTS}
    return Patterns(source.tolist(), decoder_ids.tolist(), out["encoder"], out["decoder"], out["cross"],
                    model.logits(x).cpu())


# ----------------------------------------------------------------------------- the command's views

VIEWS = ("focus", "topk", "heatmap", "overview", "align")


@dataclass
class PairView:
    """What `attend SOURCE --target TARGET` shows of one part: the part's patterns for the
    selected layers and heads [layers, heads, rows, columns] (float32), the row tokens (the
    decoder's inputs, or the source for the encoder part) and the column tokens, the
    focus row, and for `align` each row's best column under the mean over the selection."""

    part: str
    view: str
    layers: list[int]
    heads: list[int]
    rows: Any  # Tokens
    columns: Any  # Tokens
    patterns: Tensor
    query: int
    k: int
    source: Any  # Tokens
    decoder: Any  # Tokens
    saved: Any = None  # the --save file's path, where the run wrote one (`PairWriter`)
    measure: str = "weight"  # what `patterns` holds (`seq2seq_measures`: norm's rows normalised to 1)

    def top(self, li: int, hi: int, row: int) -> list[tuple[int, float]]:
        """Row `row`'s top-k columns (index, weight) in head `hi` of layer `li` (of the
        selection); a causal row ranks only the keys it sees."""
        w = self.patterns[li, hi, row]
        if self.part == "decoder":
            w = w[:row + 1]
        vals, idx = w.topk(min(self.k, w.shape[0]))
        return [(int(j), float(v)) for j, v in zip(idx, vals)]

    def alignment(self) -> list[tuple[int, float]]:
        """Each row's best column and its weight, averaged over the selected layers and heads."""
        mean = self.patterns.mean(dim=(0, 1))  # (rows, columns)
        vals, idx = mean.max(dim=-1)
        return [(int(j), float(v)) for j, v in zip(idx, vals)]

    def document(self, model: str) -> dict[str, Any]:
        """The --json document: the tokens of both sides, the selection and, per view, the
        focus row's top keys in every head, every row's top keys in every head, one head's
        whole pattern (heatmap), or the alignment table."""
        def side(tokens: Any) -> dict[str, Any]:
            return {"ids": list(tokens.ids), "tokens": list(tokens.labels)}

        doc: dict[str, Any] = {
            "model": model, "part": self.part, "view": self.view,
            "source": side(self.source), "decoder": side(self.decoder),
            "rows": "source" if self.part == "encoder" else "decoder",
            "columns": "decoder" if self.part == "decoder" else "source",
            "layers": self.layers, "heads": self.heads, "k": self.k, "measure": self.measure,
        }
        if self.view == "align":
            doc["alignment"] = [{"index": i, "token": self.rows.labels[i], "best": j,
                                 "best_token": self.columns.labels[j], "weight": w}
                                for i, (j, w) in enumerate(self.alignment())]
        elif self.view == "heatmap":
            doc["patterns"] = self.patterns.tolist()
        elif self.view in ("focus", "overview"):
            doc["query"] = self.query
            doc["focus"] = [{"layer": layer, "head": head, "keys": [{"index": j, "weight": w}
                                                                   for j, w in self.top(li, hi, self.query)]}
                            for li, layer in enumerate(self.layers) for hi, head in enumerate(self.heads)]
        else:
            doc["topk"] = [{"layer": layer, "head": head,
                            "rows": [[{"index": j, "weight": w} for j, w in self.top(li, hi, i)]
                                     for i in range(len(self.rows))]}
                           for li, layer in enumerate(self.layers) for hi, head in enumerate(self.heads)]
        return doc


def pair_tokens(tokenizer: Any, cfg: ModelConfig, source: str, target: str, truncate: bool) -> tuple[Any, Any]:
    """The source's tokens (with the tokenizer's special tokens, as the encoder reads them)
    and the target's own (without: the decoder's start token goes before them, taking one
    position), each checked against the context; an empty target refused in one line."""
    from attnscope.errors import UsageError
    from attnscope.tokenize import tokenize

    src = tokenize(tokenizer, source, cfg.n_ctx, truncate)
    if not target.strip():
        raise UsageError("--target is empty", hint='give the output text, e.g. --target "Das Haus ist klein."')
    try:
        tgt = tokenize(tokenizer, target, cfg.n_ctx - 1, truncate, add_special_tokens=False)
    except InputError as err:
        raise InputError(f"--target: {err.message}", hint=err.hint) from None
    if not tgt.ids:
        raise UsageError("the target has no tokens", hint="give --target some text")
    return src, tgt


def pair_selection(cfg: ModelConfig, part: str, view: str, layer: str | None, head: str | None,
                   measure: str = "weight") -> tuple[list[int], list[int]]:
    """The layers and heads of `part` a view shows: the last layer (every layer for
    overview and align), every head (head 0 for the heatmap); under a measure with one
    matrix a layer (rollout, alti, value-zeroing) the single head 0."""
    from attnscope import analysis
    from attnscope.hooks import sites
    from attnscope.seq2seq_measures import heads

    part_sites = sites(cfg, part)
    ls = analysis.select(layer if layer is not None else ("all" if view in ("overview", "align") else "-1"),
                         len(part_sites), "layer")
    hs = analysis.select_heads(head if head is not None else ("0" if view == "heatmap" else "all"), part_sites, ls)
    return ls, heads(measure, hs)


def pair_view(m: Any, source: str, target: str, part: str, view: str, layer: str | None, head: str | None,
              k: int, token: str | None, truncate: bool, save: Any = None, force: bool = False,
              measure: str = "weight", also: Any = None) -> PairView:
    """Tokenize both texts, run both stacks once and select what `view` shows of `part`.
    Display defaults as attend's: the last layer (every layer for overview and align), every
    head (head 0 for the heatmap); only the selected layers' patterns are kept. `save`: every
    part's patterns, streamed to that .npz as the pass runs (`PairWriter`). `measure`: what
    the patterns hold (`seq2seq_measures`: weight, norm, and on the encoder rollout, alti,
    value-zeroing). `also(source, decoder, query)`: called once the tokens and the selection
    are known, before the pass; it returns a hook of its own and the layers it reads, fed
    the same values as the view (`outputs.pair`: --html, --plot)."""
    from attnscope.errors import UsageError
    from attnscope.hooks import Capture, Hooks, sites
    from attnscope.outputs.views import focus_index

    cfg = m.config
    if part not in PARTS:
        raise UsageError(f"unknown part {part!r}", hint="use cross, encoder or decoder")
    if view == "align" and part != "cross":
        raise UsageError("--view align is the cross-attention's alignment table", hint="use --part cross")
    if k < 1:
        raise UsageError(f"--top-k must be at least 1, got {k}")
    src, tgt = pair_tokens(m.tokenizer, cfg, source, target, truncate)
    dec = decoder_tokens(m, tgt)
    ids = dec.ids
    part_sites = sites(cfg, part)
    ls, hs = pair_selection(cfg, part, view, layer, head, measure)
    from attnscope import seq2seq_measures

    seq2seq_measures.check(measure, part, save)
    seq2seq_measures.check_model(m, measure, len(src))
    rows, columns = (src, src) if part == "encoder" else (dec, dec if part == "decoder" else src)
    query = focus_index(rows, token)
    shown = [part_sites[layer_i].name for layer_i in ls]
    cap = Capture({site: ["pattern"] for site in shown})
    extra, extra_layers = also(src, dec, query) if also is not None else (None, [])
    views, reach = Hooks(cap, extra), sorted(set(ls) | set(extra_layers))
    if save is None:
        run(m.model, m._ids(src.ids), m._ids(ids), seq2seq_measures.hooks(m.model, measure, len(src), reach, views))
        saved = None
    else:
        from attnscope.measures import KINDS

        with PairWriter(save, cfg, src, dec, force, saved_as=KINDS[measure].saved_as) as writer:
            run(m.model, m._ids(src.ids), m._ids(ids),
                seq2seq_measures.hooks(m.model, measure, len(src), reach, views, writer))
        saved = writer.path
    chosen = torch.stack([cap.get(site, "pattern")[hs] for site in shown]).float()  # [layers, heads, rows, columns]
    return PairView(part, view, ls, hs, rows, columns, chosen, query, k, src, dec, saved, measure)


def part_heads(cfg: ModelConfig, part: str) -> int:
    """The head count of a part's sites (one for every layer of a stack here)."""
    from attnscope.hooks import sites

    counts = {s.n_heads for s in sites(cfg, part)}
    assert len(counts) == 1, counts  # internal invariant: T5, BART and Marian stacks are uniform
    return counts.pop()


def diagonal_scores(cross: Tensor) -> Tensor:
    """`heads`' cross-attention score `diagonal`, per layer and head ([L, H] float32) of a
    cross pattern [L, H, n_t, n_s]: target row i of n_t is matched with source position
    j* = round(i·(n_s − 1)/(n_t − 1)) (halves rounded up; j* = 0 when n_t = 1), and the score
    is the mean over rows of the weight on source positions j* − 1 … j* + 1 (those that
    exist). High for a head that reads the source in order, as translation alignments
    mostly do; a uniform head scores about 3/n_s."""
    n_t, n_s = cross.shape[-2], cross.shape[-1]
    i = torch.arange(n_t)
    star = (2 * i * (n_s - 1) + (n_t - 1)) // (2 * (n_t - 1)) if n_t > 1 else torch.zeros(1, dtype=torch.long)
    j = torch.arange(n_s)
    near = ((j[None, :] - star[:, None]).abs() <= 1).to(cross.dtype)  # (n_t, n_s)
    return (cross * near).sum(-1).mean(-1).float()


def self_scores(cfg: ModelConfig, pattern: Tensor, tokens: Any, causal: bool, layers: list[int], heads: list[int],
                names: list[str] | None = None) -> Any:
    """`heads --target --part encoder|decoder`: the text scores of `heads.DEFINITIONS` (all
    but induction, which needs an input of its own, and sink) of one stack's self-attention
    `pattern` [L_sel, H_sel, n, n] on its own tokens (the source, or the decoder's inputs),
    under that stack's mask rule (`causal`: the decoder's): a `heads.HeadScores`."""
    from dataclasses import replace

    from attnscope.heads import HeadScores, text_terms

    wanted = [name for name in (names or ["previous_token", "first_token", "self", "next_token",
                                          "duplicate_token", "entropy"]) if name not in ("induction", "sink")]
    stack = replace(cfg, causal=causal, sliding_window=None)  # the stack's rule: visible keys, next_token
    terms, counts, undefined = text_terms(tokens.ids, stack, wanted)
    if "next_token" in undefined:
        undefined["next_token"] = "the decoder is causal: no token sees the one after it"
    if names is not None and "induction" in names:
        undefined["induction"] = "scored on an input of its own: run heads without --target for the encoder's"
    probs = pattern.float()
    scores = {name: torch.stack([(term(probs[li], 0, None) / counts[name]) for li in range(len(layers))]).float()
              for name, term in terms.items()}  # layer None: the stack's general rule (`visible_counts`)
    return HeadScores(layers, heads, scores, len(tokens), tokens=tokens, undefined=undefined)


# ----------------------------------------------------------------------------- generation


@dataclass
class Step:
    """One decoded token: its id, its probability under the model (before temperature and
    filtering), and the source positions it looked at (the cross-attention row of the step,
    averaged over the selected layers and heads, (S,); under `--measure norm` each weight
    times the size of what its key's value adds, rows summing to 1)."""

    token: int
    probability: float
    looked: Tensor


@dataclass
class Decoded:
    """A decoding: its steps, and why it ended: "eos" (the model's end token), "stop" (the
    new text holds the stop string) or "length" (max_new_tokens)."""

    steps: list[Step]
    stopped: str = "length"

    @property
    def ids(self) -> list[int]:
        return [s.token for s in self.steps]


@torch.inference_mode()
def decode(model: nn.Module, source: Tensor, max_new_tokens: int, layers: list[int], heads: list[int],
           eos: Collection[int] = (), *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           seed: int | None = None, until: Callable[[list[int]], bool] | None = None,
           measure: str = "weight") -> Decoded:
    """Decoding from `source` (S,) through the decoder's KV cache: the encoder runs once and
    each cross-attention projects its keys and values from the encoder's states once
    (`KVCache.cross`); the decoder reads its start token and then each token it chose, one
    at a time, until a token in `eos`, `until(ids so far)` (a stop string) or
    `max_new_tokens`. Tokens are chosen as decoder-only `generate` chooses them
    (`generate.choose`: greedy at temperature 0, else sampled after temperature, top-k and
    top-p, from a generator seeded with `seed`, so the same seed gives the same tokens).
    Each step keeps its cross-attention row under `measure` (weight or norm)."""
    from attnscope.generate import choose
    from attnscope.hooks import Capture, cross_site
    from attnscope.measures.transforms import wrap
    from attnscope.model import KVCache

    cfg = model.cfg
    assert cfg.decoder is not None  # internal invariant: callers check
    memory = encode(model, source)
    cache = KVCache(len(cfg.decoder))
    token = int(cfg.extra.get("decoder_start_token_id", 0))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out = Decoded([])
    sites = [cross_site(layer) for layer in layers]
    for _ in range(max_new_tokens):
        cap = Capture({site: ["pattern"] for site in sites})
        x = model.decoder(torch.tensor([token], device=source.device), model.embed.tok, memory,
                          wrap(measure, 0, 0, cap), cache=cache)
        logits = model.logits(x)[0].float().cpu()  # (vocab,)
        token = choose(logits, temperature, top_k, top_p, gen)
        rows = torch.stack([cap.get(site, "pattern")[heads, 0] for site in sites])  # (L, H_sel, S)
        out.steps.append(Step(token, float(logits.softmax(-1)[token]), rows.mean(dim=(0, 1)).float().cpu()))
        if token in eos:
            out.stopped = "eos"
            break
        if until is not None and until(out.ids):
            out.stopped = "stop"
            break
    return out


# decoder-only generate's --save-topk keeps each query's top 3 keys (outputs.files.TopKSave)
SAVED_TOPK = 3


def save_decoding(m: Any, source: Any, decoded: Decoded, labels: list[str], save: Any = None, save_topk: Any = None,
                  force: bool = False, also: Any = None) -> tuple[Any, Any]:
    """generate's --save / --save-topk on an encoder-decoder, from one teacher-forced pass over
    what the decoder read while decoding: its start token and every generated token but the
    last, so row i of the decoder and cross arrays is step i, the step that chose generated
    token i (a pass through the cache gives the same rows: `decode`). `save`: FILE.npz as
    `attend --target --save` writes it (`PairWriter`: encoder_attentions, decoder_attentions,
    cross_attentions, source_token_ids, decoder_token_ids, source_tokens, decoder_tokens),
    plus `generated_token_ids` int64 and `generated_tokens` (unicode; `labels`) [steps];
    `save_topk`: the cross-attention's top 3 source positions per step, every decoder layer
    and head (`save_pair_topk`, part "cross"); `also`: one more hook on the same pass (the
    --html page, `outputs.pair.GenerationPage`). Returns the paths written (None where not asked)."""
    import numpy as np

    from attnscope.hooks import Capture, Hooks
    from attnscope.seq2seq_save import PairWriter, save_pair_topk
    from attnscope.tokenize import Tokens

    cfg = m.config
    ids = decoder_input(cfg, decoded.ids[:-1])
    start = getattr(m.tokenizer, "id_to_token", lambda i: None)(ids[0]) or f"<{ids[0]}>"
    dec = Tokens(text="", ids=ids, labels=[start] + list(labels[:-1]), offsets=[(0, 0)] * len(ids),
                 special=[True] + [False] * (len(ids) - 1))
    cross = part_sites(cfg, "cross")
    cap = Capture({site: ["pattern"] for site in cross}) if save_topk is not None else None
    saved = saved_topk = None
    if save is not None:
        extra = {"generated_token_ids": np.asarray(decoded.ids, dtype=np.int64),
                 "generated_tokens": np.asarray(labels, dtype=str)}
        with PairWriter(save, cfg, source, dec, force, extra) as writer:
            run(m.model, m._ids(source.ids), m._ids(ids), Hooks(cap, writer, also))
        saved = writer.path
    else:
        run(m.model, m._ids(source.ids), m._ids(ids), Hooks(cap, also))
    if cap is not None:
        chosen = torch.stack([cap.get(site, "pattern") for site in cross]).float()  # [dec layers, H, steps, S]
        pv = PairView("cross", "topk", list(range(len(cross))), list(range(chosen.shape[1])), dec, source, chosen, 0,
                      SAVED_TOPK, source, dec)
        saved_topk = save_pair_topk(save_topk, pv, force)
    return saved, saved_topk


def three_masks(n_source: int, n_target: int) -> dict[str, list[list[bool]]]:
    """What each of an encoder-decoder's attentions may see (True: visible), as `mask-demo`
    shows them side by side: the encoder every source token ([n_s, n_s]), the decoder each
    target token and those before it ([n_t, n_t], causal), the cross-attention the whole
    source from every target token ([n_t, n_s])."""
    return {"encoder": [[True] * n_source for _ in range(n_source)],
            "decoder": [[j <= i for j in range(n_target)] for i in range(n_target)],
            "cross": [[True] * n_source for _ in range(n_target)]}


from attnscope.seq2seq_save import PairWriter, save_pair_topk  # noqa: E402,F401  re-exported (it reads part_sites, part_heads from here)
