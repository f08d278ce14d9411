"""Next-token logits and the KV cache, against transformers' *ForCausalLM models.

Every expected number comes from transformers (rule 7 of STYLE.md): the checkpoint folder
loaded with `AutoModelForCausalLM` (eager attention, every tensor in the file used, none
missing) and run in float64, so that the reference carries no float32 noise of its own
and a tolerance holds on any machine (rule 9). Our model runs in float32.

* `Inspector.logits` equals the reference's logits on every causal checkpoint the tiny
  builders make (tied and untied unembeddings, Phi's bias, Gemma 2's final soft-capping,
  OPT-350m's project_out).
* Feeding a text through `Inspector.step` one token at a time, or a prefix and then the
  rest, gives the logits and the attention patterns of one full pass, including on the
  sliding-window layers (Mistral, Gemma 2) for texts longer than their window.
* Eight greedy steps through our cache pick the tokens `generate(do_sample=False)` does.
* Encoders, and causal checkpoints shipped without their lm_head, refuse to give logits
  with the project's own error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from family_checks import reference_run
import tiny_models as tm
from attnscope.errors import AttnscopeError, InputError
from attnscope.hooks import site_layer

CAUSAL = [name for name in tm.BUILDERS if not name.startswith("bert")] + list(tm.FAMILY_BUILDERS)
ENCODERS = [name for name in tm.BUILDERS if name.startswith("bert")]
# Checkpoints with sliding-window layers (transformers' config says which layers slide).
SLIDING = ["mistral", "gemma2", "gemma2_default_types", "gemma2_legacy"]

# Logits against the float64 reference: relative 1e-4 (the brief's bound). The absolute
# part is 1e-4 of the logits' scale (their largest magnitude), because a logit near 0 is
# still a sum of d_model products of the scale's size, so its float32 rounding error is
# proportional to the scale, not to its own value. Measured here: under 2e-6 of the scale.
LOGITS_RTOL = 1e-4
# Step by step against one full pass, both ours in float32: the same sums taken in other
# shapes differ only by float32 rounding through a few layers (measured under 2e-6 of the
# scale, Gemma 2 being the largest); 1e-5 leaves a margin of 5 on that.
STEP_RTOL = 1e-5
# Probabilities lie in [0, 1]: absolute. Float32's own noise against float64 on these
# checkpoints is under 4e-6 (transformers' float32 included), Gemma 2 being the largest.
PATTERN_ATOL = 1e-5
GREEDY_STEPS = 8


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float, what: str) -> None:
    """`ours` (float32) equals `ref` to `rtol` of each entry plus `rtol` of the logits' scale."""
    assert ours.dtype == torch.float32, f"{what}: dtype {ours.dtype}, want float32"
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours.double(), ref.double(), rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


def reference_window(config: Any, layer: int) -> int | None:
    """The sliding window transformers applies in `layer` (None: full causal attention),
    read from its own config: `layer_types` where the family has them (Gemma 2, Qwen2),
    else `sliding_window` on every layer (Mistral)."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return config.sliding_window if types[layer] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def reference_visible(config: Any, layer: int, n: int) -> torch.Tensor:
    """(n, n) bool: may query i see key j in transformers' `layer`?"""
    diff = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # (n, n): i - j
    window = reference_window(config, layer)
    return (diff >= 0) if window is None else (diff >= 0) & (diff < window)


class PatternChunks:
    """A hook keeping every pattern chunk with its absolute positions, to put whole rows
    back together: `full(T)` is (L, H, T, T) with 0 where no chunk reported a key."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int, int, torch.Tensor]] = []  # (layer, q_start, k_start, (H, c, K))

    def wants(self, site: str, what: str) -> bool:
        return what == "pattern" and site_layer(site) is not None

    def report(self, site: str, what: str, value: torch.Tensor, q_start: int, k_start: int) -> None:
        layer = site_layer(site)
        assert layer is not None
        self.chunks.append((layer, q_start, k_start, value.detach().cpu().clone()))

    def full(self, n_layers: int, n_heads: int, n: int) -> torch.Tensor:
        out = torch.zeros(n_layers, n_heads, n, n)  # (L, H, T, T)
        for layer, q0, k0, value in self.chunks:
            _, rows, keys = value.shape
            assert q0 + rows <= n and k0 + keys <= n, \
                f"layer {layer}: chunk at ({q0}, {k0}) of {tuple(value.shape)} runs past {n} tokens"
            out[layer, :, q0:q0 + rows, k0:k0 + keys] = value
        return out


@pytest.fixture(scope="module")
def folder(build: Callable[[str], Path], family_build: Callable[[str], Path]) -> Callable[[str], Path]:
    return lambda name: build(name) if name in tm.BUILDERS else family_build(name)


@pytest.fixture(scope="module")
def ours(inspector: Callable[..., Any], family_inspector: Callable[..., Any]) -> Callable[[str], Any]:
    return lambda name: inspector(name) if name in tm.BUILDERS else family_inspector(name)


@pytest.fixture(scope="module")
def ids_of(folder: Callable[[str], Path]) -> Callable[[str, str], list[int]]:
    """`ids_of(name, text)`: the folder's own tokenizer.json on `text`, specials included."""
    tokenizers: dict[str, Any] = {}

    def get(name: str, text: str) -> list[int]:
        if name not in tokenizers:
            tokenizers[name] = tm.plain_tokenizer(folder(name))
        return tokenizers[name].encode(text).ids

    return get


@pytest.fixture(scope="module")
def causal_reference(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    """`causal_reference(name)`: transformers' AutoModelForCausalLM on that folder, eager,
    in float64. A checkpoint without an lm_head (untied) is skipped with that reason;
    any other missing or unused tensor fails, as the reference would be partly random."""
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            import transformers

            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                folder(name), attn_implementation="eager", dtype=torch.float32, output_loading_info=True
            )
            missing = sorted(info["missing_keys"])
            if missing and all(key.startswith("lm_head.") for key in missing):
                pytest.skip(f"{name}: the checkpoint has no lm_head ({missing}), so no reference logits")
            assert not missing, f"{name}: the causal-LM reference misses {missing}"
            assert not info["unexpected_keys"], f"{name}: the causal-LM reference ignores {info['unexpected_keys']}"
            made[name] = model.double().eval()
        return made[name]

    return get


# -------------------------------------------------------------------------- logits


@pytest.mark.parametrize("name", CAUSAL)
def test_logits_match_transformers(name: str, ours: Callable, causal_reference: Callable, ids_of: Callable) -> None:
    insp = ours(name)
    ref = causal_reference(name)
    for text in (tm.SHORT_TEXT, tm.LONG_TEXT):
        ids = ids_of(name, text)
        expected, _ = reference_run(ref, ids)
        got = insp.logits(ids)
        assert got.shape == (len(ids), ref.config.vocab_size)
        assert_logits_close(got, expected, LOGITS_RTOL, f"{name} on {text!r}")
        # Text in, the same: the Inspector's tokenizer gives the folder's ids.
        torch.testing.assert_close(insp.logits(text), got, rtol=0, atol=0)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_has_no_next_token_logits(name: str, ours: Callable, ids_of: Callable) -> None:
    insp = ours(name)
    with pytest.raises(InputError) as err:
        insp.logits(tm.SHORT_TEXT)
    assert isinstance(err.value, AttnscopeError)
    message = str(err.value)
    assert "head" in message and "logits" in message, message
    assert err.value.hint, "the error says what to use instead"
    with pytest.raises(InputError):
        insp.step(ids_of(name, tm.SHORT_TEXT), insp.new_cache())
    # Attention is still there to inspect.
    assert insp.attention(tm.SHORT_TEXT, layers=[0]).probs.shape[0] == 1


def test_causal_checkpoint_without_lm_head_says_so(folder: Callable, ids_of: Callable, tmp_path: Path) -> None:
    """Llama (untied) with `lm_head.weight` taken out of the file: it loads, its attention
    works, and logits raise the project's error rather than using random weights."""
    import shutil

    import transformers
    from safetensors.torch import load_file, save_file

    from attnscope.api import load

    copy = tmp_path / "llama_headless"
    shutil.copytree(folder("llama"), copy)
    tensors = load_file(str(copy / "model.safetensors"))
    assert "lm_head.weight" in tensors
    del tensors["lm_head.weight"]
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    _, info = transformers.AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float32, output_loading_info=True)
    assert "lm_head.weight" in info["missing_keys"], "the copy really lacks its head"

    insp = load(str(copy), device="cpu", dtype="float32")
    ids = ids_of("llama", tm.SHORT_TEXT)
    assert insp.attention_ids(ids, layers=[1]).probs.shape[-1] == len(ids)
    with pytest.raises(InputError, match="head"):
        insp.logits(ids)
    with pytest.raises(InputError, match="head"):
        insp.step(ids, insp.new_cache())


# --------------------------------------------------------------------------- cache


def check_against_full_pass(name: str, insp: Any, ref: Any, ids: list[int], pieces: list[list[int]]) -> None:
    """Feed `pieces` (which join to `ids`) through one cache; their logits and the
    reassembled pattern rows must be one full pass's, and transformers'."""
    assert [i for piece in pieces for i in piece] == ids
    n, L, H = len(ids), insp.n_layers, insp.n_heads
    whole = PatternChunks()
    insp.run(ids, whole)
    full_patterns = whole.full(L, H, n)
    full_logits = insp.logits(ids)

    cache = insp.new_cache()
    hook = PatternChunks()
    rows = []
    for piece in pieces:
        start = cache.length
        seen = len(hook.chunks)
        out = insp.step(piece, cache, hook)
        assert out.shape == (len(piece), ref.config.vocab_size) and out.dtype == torch.float32
        assert cache.length == start + len(piece)
        for layer, q0, k0, value in hook.chunks[seen:]:
            # The queries are this piece's positions; a sliding layer's keys go back no
            # further than its window (the cache keeps only that much), a full layer's to 0.
            assert start <= q0 and q0 + value.shape[1] <= cache.length, f"layer {layer}: queries at {q0}"
            window = reference_window(ref.config, layer)
            if window is None:
                assert k0 == 0, f"layer {layer}: a full layer's keys start at {k0}"
            else:
                assert k0 >= max(0, q0 - window), f"layer {layer}: keys from {k0} for a query at {q0}, window {window}"
        rows.append(out)
    stepped = torch.cat(rows)  # (T, vocab)
    stepped_patterns = hook.full(L, H, n)  # (L, H, T, T)
    what = f"{name}, pieces {[len(p) for p in pieces]}"

    assert_logits_close(stepped, full_logits.double(), STEP_RTOL, f"{what}: stepped vs full logits")
    torch.testing.assert_close(stepped_patterns, full_patterns, rtol=0, atol=PATTERN_ATOL,
                               msg=lambda m: f"{what}: stepped vs full patterns: {m}")
    ref_logits, ref_attn = reference_run(ref, ids)
    assert_logits_close(stepped, ref_logits, LOGITS_RTOL, f"{what}: stepped logits vs transformers")
    torch.testing.assert_close(stepped_patterns.double(), ref_attn, rtol=0, atol=PATTERN_ATOL,
                               msg=lambda m: f"{what}: stepped patterns vs transformers: {m}")
    for layer in range(L):
        hidden = ~reference_visible(ref.config, layer, n)  # (T, T)
        assert (stepped_patterns[layer][:, hidden] == 0).all(), f"{what}: layer {layer} weights a hidden key"
    torch.testing.assert_close(stepped_patterns.sum(-1), torch.ones(L, H, n), rtol=0, atol=PATTERN_ATOL)


@pytest.mark.parametrize("name", CAUSAL)
def test_one_token_at_a_time_is_one_full_pass(name: str, ours: Callable, causal_reference: Callable,
                                              ids_of: Callable) -> None:
    ids = ids_of(name, tm.LONG_TEXT)
    check_against_full_pass(name, ours(name), causal_reference(name), ids, [[i] for i in ids])


@pytest.mark.parametrize("name", CAUSAL)
def test_prefill_then_steps_is_one_full_pass(name: str, ours: Callable, causal_reference: Callable,
                                             ids_of: Callable) -> None:
    """A prefix longer than any window, then three tokens at once (their queries see the
    cache and each other), then one at a time."""
    ids = ids_of(name, tm.LONG_TEXT)
    cut = 7
    assert len(ids) > cut + 3 + 2
    pieces = [ids[:cut], ids[cut:cut + 3]] + [[i] for i in ids[cut + 3:]]
    check_against_full_pass(name, ours(name), causal_reference(name), ids, pieces)


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_checkpoints_slide_on_these_texts(name: str, causal_reference: Callable, ids_of: Callable) -> None:
    """The cache tests above mean something for sliding layers: the text is longer than
    the window, so the window hides keys, in at least one layer of each checkpoint."""
    config = causal_reference(name).config
    windows = [reference_window(config, layer) for layer in range(config.num_hidden_layers)]
    assert any(w is not None for w in windows), f"{name}: no sliding layer"
    assert len(ids_of(name, tm.LONG_TEXT)) > 2 * max(w for w in windows if w is not None)


def test_step_past_learned_positions_is_refused_and_the_cache_survives(ours: Callable,
                                                                       causal_reference: Callable) -> None:
    """GPT-2 has 64 learned positions: a step that would go past them raises InputError
    and leaves the cache as it was, ready for a step that fits."""
    insp = ours("gpt2")
    n_ctx = causal_reference("gpt2").config.n_positions
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, insp.config.vocab_size, (n_ctx,), generator=gen).tolist()
    cache = insp.new_cache()
    insp.step(ids[:-4], cache)
    with pytest.raises(InputError):
        insp.step(ids[-4:] + [ids[0]], cache)
    assert cache.length == n_ctx - 4
    last = insp.step(ids[-4:], cache)
    assert_logits_close(last, insp.logits(ids)[-4:].double(), STEP_RTOL, "gpt2 after a refused step")


# -------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("name", CAUSAL)
def test_greedy_steps_match_generate(name: str, ours: Callable, causal_reference: Callable, ids_of: Callable) -> None:
    """Eight greedy tokens from our prefill + decode loop are transformers' `generate`'s.
    No end-of-sequence token stops generate early (eos_token_id None)."""
    from transformers import GenerationConfig

    insp = ours(name)
    ref = causal_reference(name)
    prompt = ids_of(name, tm.SHORT_TEXT)
    config = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_STEPS, min_new_tokens=0,
                              eos_token_id=None, bos_token_id=None, pad_token_id=0)
    x = torch.tensor([prompt])  # (1, T)
    with torch.no_grad():
        out = ref.generate(x, attention_mask=torch.ones_like(x), generation_config=config,
                           return_dict_in_generate=True, output_logits=True)
    expected = out.sequences[0, len(prompt):].tolist()
    assert len(expected) == GREEDY_STEPS
    # Each choice must be clear of a tie by more than our tolerance, or float32 noise
    # could rightly pick the other token.
    for i, step_logits in enumerate(out.logits):
        top2 = step_logits[0].topk(2).values
        margin = float(top2[0] - top2[1])
        tie = 2 * LOGITS_RTOL * float(step_logits.abs().max())
        assert margin > tie, f"{name}: step {i} is a near-tie ({margin:.3g}); pick another prompt"

    cache = insp.new_cache()
    logits = insp.step(prompt, cache)
    got = []
    for _ in range(GREEDY_STEPS):
        token = int(logits[-1].argmax())
        got.append(token)
        logits = insp.step([token], cache)
    assert got == expected, f"{name}: ours {got}, transformers {expected}"
    assert cache.length == len(prompt) + GREEDY_STEPS
