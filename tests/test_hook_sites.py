"""Hooks at the named attention sites, and `mask-demo`'s last step, against transformers.

Every expected number comes from transformers (rule 7 of STYLE.md), run in float64 so
that the tolerances hold on any machine (rule 9): the model class config.json names,
eager attention, deep-copied from the session's float32 reference and cast to float64.
What each site reports is defined in `attnscope.hooks`; here each quantity is checked
against the tensor transformers computes for it:

* `q`, `k` (after RoPE) and `v`: the query/key/value projections' outputs (forward hooks),
  rotated with transformers' own `rotary_emb` and `apply_rotary_pos_emb`;
* `scores`: q·k times the layer's own `scaling`, soft-capped where the config says so,
  for every key (before the mask);
* `pattern`: `output_attentions=True`, and the scores softmaxed under transformers' mask;
* `z`: the input of the output projection (forward pre-hook), one slice per head;
* `result`: summed over heads plus the projection's bias, its output (forward hook).

Families: GPT-2 (Conv1D, biases), Llama (grouped-query, RoPE), Gemma 2 (soft-capping,
query_pre_attn_scalar, a full and a sliding layer) and BERT (bidirectional, post-norm).
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
from attnscope.hooks import WHATS, Capture, Hooks

# Probabilities in [0, 1]: absolute. Float32's own noise against float64 on these
# checkpoints is under 4e-6 (transformers' float32 included), Gemma 2 being the largest.
ATOL = 1e-5
# Activations (q, k, v, scores, z, result) compared relative to their scale: an entry
# near 0 is a sum of products of the scale's size, so its float32 error is proportional
# to the scale. Measured here: under 1e-6 of the scale.
RTOL = 1e-5

CAUSAL = [name for name in tm.BUILDERS if not name.startswith("bert")] + list(tm.FAMILY_BUILDERS)

# Where each family's attention lives in transformers, and its parts' module names.
# `qkv`: GPT-2's fused Conv1D; `scaling_at`: the submodule carrying `scaling`.
MODULES: dict[str, dict[str, Any]] = {
    "gpt2": {"attn": "transformer.h.{}.attn", "o": "c_proj", "qkv": "c_attn", "scaling_at": ""},
    "llama": {"attn": "model.layers.{}.self_attn", "o": "o_proj", "q": "q_proj", "k": "k_proj", "v": "v_proj",
              "scaling_at": "", "rope": True},
    "gemma2": {"attn": "model.layers.{}.self_attn", "o": "o_proj", "q": "q_proj", "k": "k_proj", "v": "v_proj",
               "scaling_at": "", "rope": True},
    "bert": {"attn": "bert.encoder.layer.{}.attention", "o": "output.dense", "q": "self.query", "k": "self.key",
             "v": "self.value", "scaling_at": "self"},
}
LAYERS = (0, 1)  # Gemma 2's checkpoint: layer 0 full, layer 1 sliding
# The quantities this file checks (attnscope.hooks.WHATS may hold more).
QUANTITIES = ("q", "k", "v", "scores", "pattern", "z", "result")


def assert_scaled_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours.double(), ref.double(), rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


def reference_window(config: Any, layer: int) -> int | None:
    """The sliding window transformers applies in `layer` (None: no window), read from
    its own config: `layer_types` where the family has them, else `sliding_window`."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return config.sliding_window if types[layer] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def reference_visible(config: Any, layer: int, n: int) -> torch.Tensor:
    """(n, n) bool: may query i see key j in transformers' `layer`? BERT sees all."""
    if config.model_type == "bert":
        return torch.ones(n, n, dtype=torch.bool)
    diff = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # (n, n): i - j
    window = reference_window(config, layer)
    return (diff >= 0) if window is None else (diff >= 0) & (diff < window)


@pytest.fixture(scope="module")
def folder(build: Callable[[str], Path], family_build: Callable[[str], Path]) -> Callable[[str], Path]:
    return lambda name: build(name) if name in tm.BUILDERS else family_build(name)


@pytest.fixture(scope="module")
def ours(inspector: Callable[..., Any], family_inspector: Callable[..., Any]) -> Callable[[str], Any]:
    return lambda name: inspector(name) if name in tm.BUILDERS else family_inspector(name)


@pytest.fixture(scope="module")
def ref64(reference: Callable[[str], Any], family_reference: Callable[[str], Any]) -> Callable[[str], Any]:
    """`ref64(name)`: the session's transformers reference (every tensor loaded, none
    missing), copied and cast to float64."""
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            base = reference(name) if name in tm.BUILDERS else family_reference(name)
            made[name] = copy.deepcopy(base).double().eval()
        return made[name]

    return get


@pytest.fixture(scope="module")
def ids_of(folder: Callable[[str], Path]) -> Callable[[str, str], list[int]]:
    tokenizers: dict[str, Any] = {}

    def get(name: str, text: str) -> list[int]:
        if name not in tokenizers:
            tokenizers[name] = tm.plain_tokenizer(folder(name))
        return tokenizers[name].encode(text).ids

    return get


@torch.no_grad()
def reference_sites(model: Any, name: str, ids: list[int], layers: tuple[int, ...]) -> dict[str, Any]:
    """transformers' own tensors for each layer in `layers`: q, k (after RoPE) and v as
    (heads, T, d_head); the output projection's input and output; the layer's scaling;
    and the attentions of the whole run."""
    mods = MODULES[name]
    cfg = model.config
    n = len(ids)
    seen: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def keep(key: str, layer: int) -> Callable:
        return lambda module, args, out: seen.__setitem__((key, layer), out[0])

    for layer in layers:
        attn = model.get_submodule(mods["attn"].format(layer))
        o = attn.get_submodule(mods["o"])
        handles.append(o.register_forward_pre_hook(
            lambda module, args, layer=layer: seen.__setitem__(("o_in", layer), args[0][0])))
        handles.append(o.register_forward_hook(keep("o_out", layer)))
        for part in ("qkv",) if "qkv" in mods else ("q", "k", "v"):
            handles.append(attn.get_submodule(mods[part]).register_forward_hook(keep(part, layer)))
    x = torch.tensor([ids])  # (1, T)
    kwargs: dict[str, Any] = {}
    if cfg.model_type == "bert":
        kwargs = {"token_type_ids": torch.zeros_like(x), "attention_mask": torch.ones_like(x)}
    try:
        out = model(x, output_attentions=True, **kwargs)
    finally:
        for handle in handles:
            handle.remove()

    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    result: dict[str, Any] = {"attentions": out.attentions}
    for layer in layers:
        if "qkv" in mods:  # GPT-2: one Conv1D gives [q | k | v]
            q, k, v = seen[("qkv", layer)].split(cfg.hidden_size, dim=-1)  # 3 x (T, d)
        else:
            q, k, v = seen[("q", layer)], seen[("k", layer)], seen[("v", layer)]
        q = q.view(n, n_heads, d_head).transpose(0, 1)  # (H, T, dh)
        k = k.view(n, n_kv, d_head).transpose(0, 1)  # (H_kv, T, dh)
        v = v.view(n, n_kv, d_head).transpose(0, 1)  # (H_kv, T, dh)
        if mods.get("rope"):
            modeling = importlib.import_module(type(model).__module__)
            positions = torch.arange(n)[None]  # (1, T)
            cos, sin = model.model.rotary_emb(q[None], positions)
            q4, k4 = modeling.apply_rotary_pos_emb(q[None], k[None], cos, sin)  # (1, H, T, dh), (1, H_kv, T, dh)
            q, k = q4[0], k4[0]
        attn = model.get_submodule(mods["attn"].format(layer))
        scaling_module = attn.get_submodule(mods["scaling_at"]) if mods["scaling_at"] else attn
        o = attn.get_submodule(mods["o"])
        result[layer] = {
            "q": q, "k": k, "v": v, "scaling": float(scaling_module.scaling),
            "z": seen[("o_in", layer)].view(n, n_heads, d_head).transpose(0, 1),  # (H, T, dh)
            "o_out": seen[("o_out", layer)],  # (T, d)
            "o_bias": o.bias,
            "o": o,  # the output projection itself (Linear, or GPT-2's Conv1D)
        }
    return result


def reference_scores(sites: dict[str, Any], n_heads: int, softcap: float | None) -> torch.Tensor:
    """(H, T, T): every key's q·k times the layer's scaling, soft-capped where the
    config caps, from transformers' q and k (key heads repeated for the query heads)."""
    k = sites["k"].repeat_interleave(n_heads // sites["k"].shape[0], dim=0)  # (H, T, dh)
    scores = sites["q"] @ k.transpose(-2, -1) * sites["scaling"]  # (H, T, T)
    return scores if softcap is None else torch.tanh(scores / softcap) * softcap


# ---------------------------------------------------------------- every quantity


@pytest.mark.parametrize("name", list(MODULES))
def test_every_quantity_matches_transformers(name: str, ours: Callable, ref64: Callable, ids_of: Callable) -> None:
    insp = ours(name)
    model = ref64(name)
    cfg = model.config
    ids = ids_of(name, tm.LONG_TEXT)
    n = len(ids)
    cap = insp.capture(ids, {f"blocks.{layer}.attn": list(QUANTITIES) for layer in LAYERS})
    ref = reference_sites(model, name, ids, LAYERS)
    H, H_kv, dh, d = insp.n_heads, insp.config.n_kv_heads, insp.config.d_head, insp.config.d_model
    softcap = getattr(cfg, "attn_logit_softcapping", None)
    for layer in LAYERS:
        site = f"blocks.{layer}.attn"
        got = {what: cap.get(site, what) for what in QUANTITIES}
        want = ref[layer]
        where = f"{name} layer {layer}"

        shapes = {"q": (H, n, dh), "k": (H_kv, n, dh), "v": (H_kv, n, dh), "scores": (H, n, n),
                  "pattern": (H, n, n), "z": (H, n, dh), "result": (H, n, d)}
        assert {what: tuple(t.shape) for what, t in got.items()} == shapes, where
        assert got["scores"].dtype == got["pattern"].dtype == torch.float32

        for what in ("q", "k", "v"):
            assert_scaled_close(got[what], want[what], f"{where} {what}")

        # Scores: q·k times the layer's scaling, soft-capped. Compared where the mask
        # leaves a key visible; that the masked ones are kept as well is
        # test_scores_are_reported_before_the_mask's business.
        visible = reference_visible(cfg, layer, n)  # (T, T)
        scores = reference_scores(want, H, softcap)  # (H, T, T)
        assert_scaled_close(got["scores"][:, visible], scores[:, visible], f"{where} scores")

        # The pattern is transformers' attention, and our scores softmaxed under its mask.
        expected = ref["attentions"][layer][0]  # (H, T, T)
        torch.testing.assert_close(got["pattern"].double(), expected, rtol=0, atol=ATOL,
                                   msg=lambda m, where=where: f"{where} pattern vs output_attentions: {m}")
        resoftmaxed = got["scores"].masked_fill(~visible, float("-inf")).softmax(-1)  # (H, T, T)
        torch.testing.assert_close(got["pattern"], resoftmaxed, rtol=0, atol=ATOL,
                                   msg=lambda m, where=where: f"{where} pattern vs masked softmax of scores: {m}")
        assert (got["pattern"][:, ~visible] == 0).all(), f"{where}: a masked key has weight"

        assert_scaled_close(got["z"], want["z"], f"{where} z vs the output projection's input")
        summed = got["result"].double().sum(0)  # (T, d)
        if want["o_bias"] is not None:
            summed = summed + want["o_bias"]
        assert_scaled_close(summed, want["o_out"], f"{where} result summed + bias vs the output projection")


@pytest.mark.skipif("fnorm" not in WHATS, reason="this attnscope reports no fnorm")
@pytest.mark.parametrize("name", list(MODULES))
def test_fnorm_matches_transformers(name: str, ours: Callable, ref64: Callable, ids_of: Callable) -> None:
    """`fnorm` (H, K): ‖(x_j W_V^h + b_V^h) W_O^h‖₂, from transformers' values passed
    through its own output projection one head's slice at a time, bias taken off."""
    insp = ours(name)
    ids = ids_of(name, tm.LONG_TEXT)
    n, H, dh = len(ids), insp.n_heads, insp.config.d_head
    cap = insp.capture(ids, {f"blocks.{layer}.attn": ["fnorm"] for layer in LAYERS})
    ref = reference_sites(ref64(name), name, ids, LAYERS)
    for layer in LAYERS:
        v, o = ref[layer]["v"], ref[layer]["o"]  # (H_kv, T, dh)
        norms = []
        with torch.no_grad():
            zero = o(torch.zeros(1, H * dh, dtype=torch.float64))[0]  # (d,): the bias, or 0
            for h in range(H):
                x = torch.zeros(n, H, dh, dtype=torch.float64)  # (T, H, dh): only head h's slice
                x[:, h] = v[h // (H // v.shape[0])]
                norms.append((o(x.reshape(n, H * dh)) - zero).norm(dim=-1))  # (T,)
        got = cap.get(f"blocks.{layer}.attn", "fnorm")
        assert got.dtype == torch.float32
        assert_scaled_close(got, torch.stack(norms), f"{name} layer {layer} fnorm")


# A regression found here: the kernel once reported `scores` and then masked the same
# tensor in place, so on the CPU hooks saw -inf at masked keys.


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2"])
def test_scores_are_reported_before_the_mask(name: str, ours: Callable, ref64: Callable, ids_of: Callable) -> None:
    """attnscope.hooks: `scores` are after score modifiers and before the mask, so a
    causal or sliding layer reports the keys it will hide too (the kernel scores all of
    them when `scores` is asked for)."""
    insp = ours(name)
    model = ref64(name)
    ids = ids_of(name, tm.LONG_TEXT)
    cap = insp.capture(ids, {f"blocks.{layer}.attn": ["scores"] for layer in LAYERS})
    ref = reference_sites(model, name, ids, LAYERS)
    softcap = getattr(model.config, "attn_logit_softcapping", None)
    for layer in LAYERS:
        got = cap.get(f"blocks.{layer}.attn", "scores")  # (H, T, T)
        assert torch.isfinite(got).all(), f"{name} layer {layer}: masked keys' scores are -inf"
        assert_scaled_close(got, reference_scores(ref[layer], insp.n_heads, softcap), f"{name} layer {layer} scores")


def test_mask_demo_softmax_without_the_mask_on_a_causal_model(folder: Callable) -> None:
    """On a causal model, mask-demo's step 1 is the real scores of every key and step 3
    (softmax without the mask) puts weight on later keys, as it does on BERT."""
    result = run_mask_demo(tm.SHORT_TEXT, "--model", str(folder("gpt2")), "--layer", "0", "--head", "1",
                           "--device", "cpu", "--kind", "causal", "--json")
    assert result.exit_code == 0, result.output
    steps = {s["name"]: s["matrix"] for s in json.loads(result.stdout)["steps"]}
    assert not any(v == "-inf" for row in steps["scores"] for v in row), "step 1 shows the mask already"
    probs = torch.tensor(steps["softmax"])  # (T, T)
    later = torch.ones_like(probs, dtype=torch.bool).triu(1)
    assert (probs[later] > 0).all(), "unmasked softmax gives later keys no weight"


def test_gemma2_checkpoint_caps_and_slides(ref64: Callable) -> None:
    """The Gemma 2 case above means something: its layer 1 slides, its scores are capped."""
    cfg = ref64("gemma2").config
    assert reference_window(cfg, LAYERS[0]) is None and reference_window(cfg, LAYERS[1]) == tm.GEMMA2_WINDOW
    assert cfg.attn_logit_softcapping == tm.GEMMA2_SOFTCAP


# ----------------------------------------------------- only what was asked for


class Recorder:
    """A custom hook (any object with `wants` and `report`) wanting a fixed set."""

    def __init__(self, wanted: set[tuple[str, str]]) -> None:
        self.wanted = wanted
        self.reports: list[tuple[str, str, tuple[int, ...]]] = []

    def wants(self, site: str, what: str) -> bool:
        return (site, what) in self.wanted

    def report(self, site: str, what: str, value: torch.Tensor, q_start: int, k_start: int) -> None:
        assert (site, what) in self.wanted, f"reported {what} at {site}, which nobody asked for"
        self.reports.append((site, what, tuple(value.shape)))


@pytest.mark.parametrize("name", list(MODULES))
def test_nothing_is_computed_for_sites_not_asked(name: str, ours: Callable, ids_of: Callable,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from attnscope.parts import attention

    insp = ours(name)
    ids = ids_of(name, tm.SHORT_TEXT)
    calls: list[int] = []
    original = attention.Attention._report_result

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(self.layer)
        original(self, *args, **kwargs)

    monkeypatch.setattr(attention.Attention, "_report_result", counted)

    cap = insp.capture(ids, {"blocks.1.attn": ["pattern"]})
    assert cap.get("blocks.1.attn", "pattern").shape == (insp.n_heads, len(ids), len(ids))
    with pytest.raises(KeyError):
        cap.get("blocks.0.attn", "pattern")
    for what in set(WHATS) - {"pattern"}:
        with pytest.raises(KeyError):
            cap.get("blocks.1.attn", what)
    assert calls == [], "per-head results were computed though nobody asked"

    rec = Recorder({("blocks.0.attn", "z"), ("blocks.1.attn", "result")})
    insp.run(ids, rec)
    assert {(site, what) for site, what, _ in rec.reports} == rec.wanted
    assert calls == [1], "per-head results computed for layer 1 only"

    # Two hooks fed by one pass each get what they asked for, as if run alone.
    a, b = Capture({"blocks.0.attn": ["pattern"]}), Capture({"blocks.1.attn": ["z", "v"]})
    insp.run(ids, Hooks(a, b))
    alone = insp.capture(ids, {"blocks.0.attn": ["pattern"], "blocks.1.attn": ["z", "v"]})
    for cap_, site, what in ((a, "blocks.0.attn", "pattern"), (b, "blocks.1.attn", "z"), (b, "blocks.1.attn", "v")):
        torch.testing.assert_close(cap_.get(site, what), alone.get(site, what), rtol=0, atol=0)
    with pytest.raises(KeyError):
        a.get("blocks.1.attn", "z")
    with pytest.raises(KeyError):
        b.get("blocks.0.attn", "pattern")


# --------------------------------------------------------------------- mask-demo


def run_mask_demo(*args: str) -> Any:
    from attnscope.cli import app

    env = {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
    return CliRunner().invoke(app, ["mask-demo", *args], env=env)


@pytest.mark.parametrize("name", CAUSAL)
def test_mask_demo_with_the_models_own_mask_is_its_attention(name: str, folder: Callable, ref64: Callable,
                                                             ids_of: Callable) -> None:
    """With the model's own kind (causal, or sliding-window with the model's window),
    mask-demo's last step is transformers' eager attention for that layer and head, on
    every layer of every causal checkpoint (Gemma 2's soft-capped ones included)."""
    model = ref64(name)
    cfg = model.config
    ids = ids_of(name, tm.LONG_TEXT)
    attentions = tm.reference_attention(model, ids)  # (L, H, T, T)
    n_layers, n_heads = attentions.shape[:2]
    for layer in range(n_layers):
        head = (2 * layer + 1) % n_heads
        window = reference_window(cfg, layer)
        kind = ["--kind", "causal"] if window is None else ["--kind", "sliding-window", "--window", str(window)]
        result = run_mask_demo(tm.LONG_TEXT, "--model", str(folder(name)), "--layer", str(layer), "--head", str(head),
                               "--device", "cpu", "--json", *kind)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        where = f"{name} layer {layer} head {head} ({kind[1]})"
        assert doc["kind"] == kind[1] and doc["model_mask"] == kind[1], f"{where}: {doc['model_mask']}"
        assert doc["window"] == window and (doc["layer"], doc["head"]) == (layer, head)
        assert "uses this very mask" in doc["note"], doc["note"]
        assert len(doc["tokens"]) == len(ids)
        last = doc["steps"][-1]
        assert last["name"] == "masked_softmax"
        got = torch.tensor(last["matrix"], dtype=torch.float64)  # (T, T): masked entries are the number 0
        torch.testing.assert_close(got, attentions[layer, head], rtol=0, atol=ATOL,
                                   msg=lambda m, where=where: f"{where}: {m}")
