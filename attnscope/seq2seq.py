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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod
from typing import Any

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

    def forward(self, ids: Tensor, tok: nn.Module, memory: Tensor, hooks: Any = None, start: int | None = None,
                cache: Any = None) -> Tensor:
        """Decoder ids (T,) at positions start.. (default: the cache's length, else 0), reading
        the encoder's final states `memory` (S, d): the decoder's last residual stream (T, d),
        before its final norm."""
        from attnscope.model import PassState

        cfg = self.cfg
        T = ids.shape[0]
        if start is None:
            start = cache.length if cache is not None else 0
        if cfg.positions in ("learned", "sinusoidal") and start + T > cfg.n_ctx:
            raise InputError(f"decoder positions up to {start + T} exceed the model's {cfg.n_ctx}")
        x = self.embed(ids, start, tok=tok)
        positions = torch.arange(start, start + T, device=ids.device)
        bias = self.relative.for_pass(start + T) if hasattr(self, "relative") else None
        state = PassState(start, positions, None, {}, bias, memory=memory)
        for i, block in enumerate(self.blocks):
            x = block(x, state, cache, hooks)
            if not bool(torch.isfinite(x).all()):
                raise CheckpointError(f"decoder layer {i} produced values that are not finite (NaN or infinity)",
                                      hint="the checkpoint's weights or config.json hold numbers the model cannot compute with")
        if cache is not None:
            cache.length = start + T
        return x


@torch.inference_mode()
def encode(model: nn.Module, source: Tensor, hooks: Any = None) -> Tensor:
    """The encoder's final states (S, d): its last residual stream after its final norm,
    what every cross-attention reads."""
    x = model(source, hooks)
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
            "layers": self.layers, "heads": self.heads, "k": self.k,
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


def pair_view(m: Any, source: str, target: str, part: str, view: str, layer: str | None, head: str | None,
              k: int, token: str | None, truncate: bool, save: Any = None, force: bool = False) -> PairView:
    """Tokenize both texts, run both stacks once and select what `view` shows of `part`.
    Display defaults as attend's: the last layer (every layer for overview and align), every
    head (head 0 for the heatmap); only the selected layers' patterns are kept. `save`: every
    part's patterns, streamed to that .npz as the pass runs (`PairWriter`)."""
    from attnscope import analysis
    from attnscope.errors import UsageError
    from attnscope.hooks import Capture, Hooks, sites
    from attnscope.outputs.views import focus_index
    from attnscope.tokenize import tokenize

    cfg = m.config
    if part not in PARTS:
        raise UsageError(f"unknown part {part!r}", hint="use cross, encoder or decoder")
    if view == "align" and part != "cross":
        raise UsageError("--view align is the cross-attention's alignment table", hint="use --part cross")
    if k < 1:
        raise UsageError(f"--top-k must be at least 1, got {k}")
    src = m.tokenize(source, truncate)
    if not target.strip():
        raise UsageError("--target is empty", hint='give the output text, e.g. --target "Das Haus ist klein."')
    try:  # the decoder's start token takes one position
        tgt = tokenize(m.tokenizer, target, cfg.n_ctx - 1, truncate, add_special_tokens=False)
    except InputError as err:
        raise InputError(f"--target: {err.message}", hint=err.hint) from None
    if not tgt.ids:
        raise UsageError("the target has no tokens", hint="give --target some text")
    dec = decoder_tokens(m, tgt)
    ids = dec.ids
    part_sites = sites(cfg, part)
    n_layers = len(part_sites)
    ls = analysis.select(layer if layer is not None else ("all" if view in ("overview", "align") else "-1"),
                         n_layers, "layer")
    hs = analysis.select_heads(head if head is not None else ("0" if view == "heatmap" else "all"), part_sites, ls)
    rows, columns = (src, src) if part == "encoder" else (dec, dec if part == "decoder" else src)
    query = focus_index(rows, token)
    shown = [part_sites[layer_i].name for layer_i in ls]
    cap = Capture({site: ["pattern"] for site in shown})
    if save is None:
        run(m.model, m._ids(src.ids), m._ids(ids), cap)
        saved = None
    else:
        with PairWriter(save, cfg, src, dec, force) as writer:
            run(m.model, m._ids(src.ids), m._ids(ids), Hooks(cap, writer))
        saved = writer.path
    chosen = torch.stack([cap.get(site, "pattern")[hs] for site in shown]).float()  # [layers, heads, rows, columns]
    return PairView(part, view, ls, hs, rows, columns, chosen, query, k, src, dec, saved)


class PairWriter:
    """--save FILE.npz of a --target run, streamed: a hook on every site of the three parts
    that writes each layer's pattern as soon as its last query rows arrive, so no more than
    one layer is held at a time. The file is published atomically (a temporary name beside
    it, renamed when complete; `atomic.atomic_path`) after a space check, and holds:
    `encoder_attentions` [enc layers, heads, n_src, n_src], `decoder_attentions` [dec layers,
    heads, n_tgt, n_tgt], `cross_attentions` [dec layers, heads, n_tgt, n_src] float32, every
    layer and head; `source_token_ids` and `decoder_token_ids` int64 (exactly the decoder's
    inputs: its start token, then the target), `source_tokens` and `decoder_tokens` (unicode
    arrays: no pickle to load them) — the entries, in the order and bytes `np.savez` gives.
    The encoder's layers come first and the decoder's self-attention streams straight into
    the file; the cross-attention, whose layers alternate with the decoder's, goes to an
    unlinked spill file beside the target and is copied in at the end.

        with PairWriter(path, cfg, source, decoder, force) as w:
            run(model, source_ids, decoder_ids, Hooks(w, ...))
    """

    def __init__(self, path: Any, cfg: ModelConfig, source: Any, decoder: Any, force: bool = False) -> None:
        from attnscope.atomic import check_space, check_target

        self.path, self.force = check_target(path, force, (".npz",)), force
        self.source, self.decoder = source, decoder
        n_s, n_t = len(source), len(decoder)
        self.order = {part: part_sites(cfg, part) for part in PARTS}
        self.site_part = {site: part for part, names in self.order.items() for site in names}
        heads = {part: part_heads(cfg, part) for part in PARTS}
        self.shapes = {"encoder": (len(self.order["encoder"]), heads["encoder"], n_s, n_s),
                       "decoder": (len(self.order["decoder"]), heads["decoder"], n_t, n_t),
                       "cross": (len(self.order["cross"]), heads["cross"], n_t, n_s)}
        check_space(self.path, sum(4 * prod(shape) for shape in self.shapes.values()) + 4096 + 64 * (n_s + n_t))
        self.written = {part: 0 for part in PARTS}
        self._rows: dict[str, list[tuple[int, Tensor]]] = {}  # the site being received: its chunks so far
        self._ctx: Any = None
        self._file: Any = None
        self._zip: Any = None
        self._entry: Any = None  # the entry being streamed: encoder_attentions, then decoder_attentions
        self._spill: Any = None  # cross_attentions until the end

    def __enter__(self) -> "PairWriter":
        import tempfile
        import zipfile

        from attnscope.atomic import atomic_path

        self._ctx = atomic_path(self.path, self.force)
        tmp = self._ctx.__enter__()
        try:
            self._file = open(tmp, "wb")
            self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
            self._spill = tempfile.TemporaryFile(dir=self.path.expanduser().parent)  # unlinked at once
            self._entry = self._open_array("encoder_attentions", self.shapes["encoder"])
        except BaseException as err:
            self._abort()
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def _open_array(self, name: str, shape: tuple[int, ...]) -> Any:
        """A zip entry `name`.npy with its .npy header (the version `np.save` picks), open for the data."""
        import numpy as np

        entry = self._zip.open(f"{name}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(entry, {"descr": "<f4", "fortran_order": False, "shape": shape})
        return entry

    def wants(self, site: str, what: str) -> bool:
        return what == "pattern" and site in self.site_part

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        part = self.site_part[site]
        chunks = self._rows.setdefault(site, [])
        chunks.append((q_start, value.detach().to("cpu", torch.float32)))
        rows = self.shapes[part][2]
        if sum(c.shape[1] for _, c in chunks) < rows:
            return
        layer = torch.zeros(self.shapes[part][1:])  # a causal chunk carries only the keys up to its last row
        for start, c in self._rows.pop(site):
            layer[:, start:start + c.shape[1], :c.shape[2]] = c
        self._write(part, site, layer)

    def _write(self, part: str, site: str, layer: Tensor) -> None:
        assert self.order[part][self.written[part]] == site, site  # internal invariant: sites come in order
        data = layer.contiguous().numpy().tobytes(order="C")
        if part == "cross":
            self._spill.write(data)
        else:
            if part == "decoder" and self.written["decoder"] == 0:  # the encoder is complete
                assert self.written["encoder"] == self.shapes["encoder"][0]  # internal invariant
                self._entry.close()
                self._entry = self._open_array("decoder_attentions", self.shapes["decoder"])
            self._entry.write(data)
        self.written[part] += 1

    def close(self) -> None:
        import numpy as np

        assert all(self.written[p] == self.shapes[p][0] for p in PARTS), self.written  # internal invariant
        self._entry.close()
        self._entry = None
        with self._open_array("cross_attentions", self.shapes["cross"]) as entry:
            self._spill.seek(0)
            while piece := self._spill.read(16 << 20):
                entry.write(piece)
        small = {"source_token_ids": np.asarray(self.source.ids, dtype=np.int64),
                 "decoder_token_ids": np.asarray(self.decoder.ids, dtype=np.int64),
                 "source_tokens": np.asarray(self.source.labels, dtype=str),
                 "decoder_tokens": np.asarray(self.decoder.labels, dtype=str)}
        for name, arr in small.items():
            with self._zip.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, arr, allow_pickle=False)
        self._zip.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._spill.close()

    def _abort(self) -> None:
        for closer in (self._entry, self._zip, self._file, self._spill):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException as err:
                self._abort()
                self._ctx.__exit__(type(err), err, err.__traceback__)
                raise
            self._ctx.__exit__(None, None, None)
        else:
            self._abort()
            self._ctx.__exit__(exc_type, exc, tb)


def save_pair_topk(path: Any, pv: PairView, force: bool = False) -> Any:
    """--save-topk FILE.npz of a --target run: the shown part's (`--part`) top-k of every
    selected layer and head, written atomically: `indices` int64 and `weights` float32
    [layers, heads, rows, k] (k = min(--top-k, columns); rows and columns as the part's:
    cross target × source, encoder source × source, decoder target × target; where a causal
    row sees fewer than k keys its last entries weigh 0 and name no key, as attend's),
    `layers`, `heads`, `source_token_ids`, `decoder_token_ids` int64 and `part` (a unicode
    scalar: no pickle to load it)."""
    import numpy as np

    from attnscope.atomic import atomic_path, check_space, check_target

    path = check_target(path, force, (".npz",))
    weights, indices = pv.patterns.topk(min(pv.k, pv.patterns.shape[-1]), dim=-1, sorted=True)
    check_space(path, 12 * weights.numel() + 4096 + 8 * (len(pv.source) + len(pv.decoder)))
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, indices=indices.numpy().astype(np.int64), weights=weights.float().numpy(),
                     layers=np.asarray(pv.layers, dtype=np.int64), heads=np.asarray(pv.heads, dtype=np.int64),
                     source_token_ids=np.asarray(pv.source.ids, dtype=np.int64),
                     decoder_token_ids=np.asarray(pv.decoder.ids, dtype=np.int64), part=np.asarray(pv.part, dtype=str))
    return path


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
    """One decoded token: its id, its probability, and the source positions it looked at
    (the cross-attention row of the step, averaged over the selected layers and heads, (S,))."""

    token: int
    probability: float
    looked: Tensor


@torch.inference_mode()
def decode(model: nn.Module, source: Tensor, max_new_tokens: int, layers: list[int], heads: list[int],
           eos: int | None = None) -> list[Step]:
    """Greedy decoding from `source` (S,) through the decoder's KV cache: the encoder runs
    once, the decoder reads its start token and then each token it chose, one at a time,
    until `eos` or `max_new_tokens`. Each step keeps its cross-attention row."""
    from attnscope.hooks import Capture, cross_site
    from attnscope.model import KVCache

    cfg = model.cfg
    assert cfg.decoder is not None  # internal invariant: callers check
    memory = encode(model, source)
    cache = KVCache(len(cfg.decoder))
    token = int(cfg.extra.get("decoder_start_token_id", 0))
    steps: list[Step] = []
    sites = [cross_site(layer) for layer in layers]
    for _ in range(max_new_tokens):
        cap = Capture({site: ["pattern"] for site in sites})
        x = model.decoder(torch.tensor([token], device=source.device), model.embed.tok, memory, cap, cache=cache)
        probs = model.logits(x)[0].softmax(-1)
        token = int(probs.argmax())
        rows = torch.stack([cap.get(site, "pattern")[heads, 0] for site in sites])  # (L, H_sel, S)
        steps.append(Step(token, float(probs[token]), rows.mean(dim=(0, 1)).float().cpu()))
        if eos is not None and token == eos:
            break
    return steps


def three_masks(n_source: int, n_target: int) -> dict[str, list[list[bool]]]:
    """What each of an encoder-decoder's attentions may see (True: visible), as `mask-demo`
    shows them side by side: the encoder every source token ([n_s, n_s]), the decoder each
    target token and those before it ([n_t, n_t], causal), the cross-attention the whole
    source from every target token ([n_t, n_s])."""
    return {"encoder": [[True] * n_source for _ in range(n_source)],
            "decoder": [[j <= i for j in range(n_target)] for i in range(n_target)],
            "cross": [[True] * n_source for _ in range(n_target)]}
