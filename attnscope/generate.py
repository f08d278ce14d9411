"""Generation: our own decoding loop on our own model and its KV cache, watching where
each new token's query looked.

After gpt-fast's `generate.py`: one prefill pass over the prompt, then one new query per
step through the cache. Logits are float32 from the output head; greedy by default, or
sampled with temperature, top-k and top-p (filtered as transformers' logits warpers do)
from a seeded generator, so the same seed gives the same text. A hook on the selected
layers keeps only the newest query's pattern row, so memory stays linear in the length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from attnscope.errors import InputError, UsageError
from attnscope.hooks import attn_site
from attnscope.measures import KINDS

if TYPE_CHECKING:
    from attnscope.api import Inspector, Selector
    from attnscope.config import ModelConfig

MAX_SEED = 2**63 - 1
# Below this, logits / T leaves the float range (5e-324: inf, then a NaN distribution).
MIN_TEMPERATURE = 1e-6
MAX_NEW_TOKENS = 100_000


@dataclass
class Step:
    """One generated token: its probability under the model, the alternatives it
    weighed, and the earlier positions its query attended to most."""

    token_id: int
    token: str
    prob: float
    alternatives: list[tuple[int, str, float]]
    top_keys: list[tuple[int, str, float]]


@dataclass
class Generation:
    prompt_ids: list[int]
    prompt_labels: list[str]
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    text: str = ""
    steps: list[Step] = field(default_factory=list)
    stopped: str = "length"  # eos | stop | length
    layers: list[int] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    seconds: float = 0.0
    measure: str = "weight"

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.token_ids

    @property
    def labels(self) -> list[str]:
        return self.prompt_labels + self.tokens


class LastRow:
    """Hook: the newest query's pattern row, averaged over the selected layers and heads,
    over absolute key positions."""

    def __init__(self, layers: list[int], heads: list[int]) -> None:
        self.sites = {attn_site(layer) for layer in layers}
        self.heads = torch.tensor(heads, dtype=torch.long)
        self.n_layers = len(layers)
        self.rows: dict[str, tuple[int, Tensor]] = {}

    def wants(self, site: str, what: str) -> bool:
        return what == "pattern" and site in self.sites

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        row = value[:, -1].index_select(0, self.heads.to(value.device)).float().mean(0)  # (K,)
        self.rows[site] = (k_start, row.cpu())  # chunks arrive in order: the last holds the newest query

    def weights(self, n: int) -> Tensor:
        out = torch.zeros(n)
        for k_start, row in self.rows.values():
            out[k_start:k_start + row.shape[0]] += row / self.n_layers
        return out


def check_sampling(temperature: float, top_k: int, top_p: float, seed: int | None, max_new_tokens: int) -> None:
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < float("inf")):
        raise UsageError(f"--temperature must be 0 (greedy) or a finite number from {MIN_TEMPERATURE:g}, got {temperature}")
    if top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0: no limit), got {top_k}")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p must lie in (0, 1], got {top_p}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must lie in 0..{MAX_SEED}, got {seed}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens must lie in 1..{MAX_NEW_TOKENS:,}, got {max_new_tokens}")


# The measures a step's keys are ranked by: rollout mixes a layer's heads and every
# earlier layer, so it has no per-step row of its own here.
STEP_MEASURES = tuple(name for name, kind in KINDS.items() if kind.per_head)


def check_request(cfg: "ModelConfig", name: str, *, measure: str = "weight", stop: str | None = None,
                  layers: "Selector" = -1, heads: "Selector" = None) -> tuple[list[int], list[int]]:
    """Everything about a generation that the model's config can judge, so that the CLI
    refuses it before any weight is read; returns the selected layers and heads."""
    from attnscope.analysis import select

    if cfg.decoder is not None:  # the CLI's generate takes these to cli._seq2seq.generate_pair
        raise InputError(f"{name} is an encoder-decoder: it writes from a source, not after a prompt",
                         hint="run `attnscope generate SOURCE --model ...`, or attnscope.seq2seq.decode in Python")
    if not cfg.causal or not cfg.lm_head:
        kind = "an encoder" if not cfg.causal else "a model without an output head"
        raise InputError(f"{name} is {kind} and cannot generate text",
                         hint="use a causal language model, e.g. --model smollm2-135m-instruct")
    if measure not in STEP_MEASURES:
        raise UsageError(f"generate ranks each step's keys by weight or norm, not {measure}",
                         hint="for rollout, run attnscope attend --measure rollout on the generated text")
    check_stop(stop)
    return select(layers, cfg.n_layers, "layer"), select(heads, cfg.n_heads, "head")


def check_stop(stop: str | None) -> None:
    if stop is not None and not stop:
        raise UsageError("--stop needs a non-empty text")


def stop_reached(tokenizer: Any, token_ids: list[int], stop: str | None) -> bool:
    """Whether the new text (`token_ids`, special tokens written out) holds the stop string."""
    return stop is not None and stop in tokenizer.decode(token_ids, skip_special_tokens=False)


def choose(logits: Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy at temperature 0; else sample from the tempered, top-k and top-p filtered
    distribution (transformers' order: temperature, top-k, top-p)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.double() / temperature
    if top_k and top_k < scores.shape[0]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - top_p
        drop[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def generate(m: "Inspector", prompt: str, *, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, stop: str | None = None, ignore_eos: bool = False,
             chat: bool = False, layers: "Selector" = -1, heads: "Selector" = None, alternatives: int = 3,
             keys: int = 3, on_token: Callable[[Step], None] | None = None, measure: str = "weight") -> Generation:
    """Write up to `max_new_tokens` after `prompt`, recording each step (see `Step`);
    `measure` (weight or norm) says what `top_keys` ranks."""
    import time

    from attnscope import chat as chat_mod
    from attnscope.tokenize import token_label
    from attnscope.units import plural

    cfg = m.config
    ls, hs = check_request(cfg, cfg.name or m.source, measure=measure, stop=stop, layers=layers, heads=heads)
    if not m.model.has_head:  # the config promised a head the checkpoint does not hold
        raise InputError(f"{cfg.name or m.source} has no output head and cannot generate text",
                         hint="use a causal language model, e.g. --model smollm2-135m-instruct")
    check_sampling(temperature, top_k, top_p, seed, max_new_tokens)
    text = chat_mod.render(m.chat, prompt) if chat else prompt
    tokens = m.tokenize(text, add_special_tokens=not chat)
    if cfg.positions == "learned" and len(tokens) + max_new_tokens > cfg.n_ctx:
        raise InputError(f"{plural(len(tokens), 'prompt token')} + {max_new_tokens:,} new ones exceed the model's "
                         f"{cfg.n_ctx} positions", hint="shorten the prompt or lower --max-new-tokens")
    out = Generation(list(tokens.ids), list(tokens.labels), layers=ls, heads=hs, measure=measure)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = set(m.chat.eos_ids)
    from attnscope.measures.transforms import wrap

    look = LastRow(ls, hs)
    hooks = wrap(measure, 0, max(ls), look, sites=m.sites)
    cache = m.new_cache()
    began = time.perf_counter()
    logits = m.step(tokens.ids, cache, hooks, last_only=True)[-1]  # (vocab,)
    for _ in range(max_new_tokens):
        probs = logits.float().softmax(-1)  # the model's own distribution
        chosen = choose(logits, temperature, top_k, top_p, gen)
        ranked = torch.topk(probs, min(alternatives + 1, probs.shape[0]))
        alts = [(int(i), token_label(m.tokenizer, int(i)), float(p))
                for p, i in zip(ranked.values, ranked.indices) if int(i) != chosen][:alternatives]
        n = len(out.ids)
        where = look.weights(n)
        top = torch.topk(where.abs(), min(keys, n))  # by |weight|: a linear layer's hidden attention is signed
        labels = out.labels
        step = Step(chosen, token_label(m.tokenizer, chosen), float(probs[chosen]), alts,
                    [(int(j), labels[int(j)], float(where[j])) for j in top.indices])
        out.token_ids.append(chosen)
        out.tokens.append(step.token)
        out.steps.append(step)
        if on_token is not None:
            on_token(step)
        if chosen in eos and not ignore_eos:
            out.stopped = "eos"
            break
        if stop_reached(m.tokenizer, out.token_ids, stop):
            out.stopped = "stop"
            break
        if len(out.token_ids) == max_new_tokens:
            break
        logits = m.step([chosen], cache, hooks, last_only=True)[-1]
    out.seconds = time.perf_counter() - began
    out.text = m.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    return out


def generation_dict(g: Generation, model: str) -> dict[str, Any]:
    """The --json document."""
    return {
        "model": model,
        "prompt_token_ids": g.prompt_ids,
        "token_ids": g.token_ids,
        "tokens": g.tokens,
        "text": g.text,
        "stopped": g.stopped,
        "seconds": g.seconds,
        "measure": g.measure,
        "layers": g.layers,
        "heads": g.heads,
        "steps": [
            {"token_id": s.token_id, "token": s.token, "prob": s.prob,
             "alternatives": [list(a) for a in s.alternatives], "top_keys": [list(k) for k in s.top_keys]}
            for s in g.steps
        ],
    }


