"""Decoding an encoder-decoder (`generate SOURCE`): `decode`, through the decoder's KV cache.

Its --save / --save-topk come from one teacher-forced pass over what the decoder read (`save_decoding`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection

import torch
from torch import Tensor, nn


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
    from attnscope.seq2seq import encode

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
    from attnscope.seq2seq import decoder_input, part_sites, run
    from attnscope.seq2seq_save import PairWriter, save_pair_topk
    from attnscope.seq2seq_view import PairView
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
