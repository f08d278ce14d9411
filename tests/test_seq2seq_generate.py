"""`generate SOURCE` on encoder-decoders (T5, BART) beyond greedy: sampling, stop strings and
the model's end token, --measure norm, --save / --save-topk, --chat's refusal, and the
cross-attention's keys and values projected once per decoding.

References are transformers' own: its eager model's logits at each step (a full pass, no
cache, over the source and the decoder's inputs so far), filtered by its own logits
warpers (`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, in the order
its `generate` applies them) and drawn from a `torch.Generator` seeded as `--seed`; and its
`cross_attentions` / `decoder_attentions` / `encoder_attentions` (output_attentions=True)
on one teacher-forced pass over the generated tokens. Greedy decoding equal to
transformers' `generate` is tests/test_family_t5.py::test_generate_decodes_greedily_as_transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import cli_runs
import tiny_models_seq2seq as sm
from cli_runs import error_line as _one_error

# Attention probabilities in float32 against transformers' float32 through at most three
# layers (test_family_t5 measured under 2e-6 on these models).
ATOL = 1e-5
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
N = 12  # new tokens per run: enough steps for sampling to leave the greedy path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return sm.builds(tmp_path_factory)


@pytest.fixture(scope="module")
def theirs(built: Callable[[str], Path]) -> Callable[[str], Any]:
    return sm.references(built)


def _cli(*args: Any) -> Any:
    return cli_runs.invoke(ENV, *args)


def _json(*args: Any) -> dict[str, Any]:
    result = _cli(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def _source_ids(folder: Path) -> list[int]:
    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(sm.SOURCE_TEXT).ids


def _start(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text())["decoder_start_token_id"])


@torch.no_grad()
def _reference_logits(model: Any, src: list[int], dec: list[int]) -> torch.Tensor:
    """transformers' next-token logits after the decoder's inputs `dec`, float64 (vocab,)."""
    out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), use_cache=False)
    return out.logits[0, -1].double()


def _warped(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """transformers' own warpers, in its generate's order: temperature, top-k, top-p."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = logits[None].clone()
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores[0]


def _reference_sample(model: Any, src: list[int], start: int, n: int, temperature: float, top_k: int, top_p: float,
                      seed: int, forced: list[int] | None = None) -> tuple[list[int], list[set[int]]]:
    """A sampling loop on transformers' logits: each step's draw from the warped distribution
    with a generator seeded `seed`, and the set of tokens the filters kept. With `forced`,
    the loop follows those tokens (so a disagreement shows at its step, not as drift)."""
    gen = torch.Generator().manual_seed(seed)
    drawn: list[int] = []
    kept: list[set[int]] = []
    for t in range(n):
        prefix = forced[:t] if forced is not None else drawn
        scores = _warped(_reference_logits(model, src, [start] + prefix), temperature, top_k, top_p)
        kept.append({int(i) for i in torch.nonzero(torch.isfinite(scores)).flatten()})
        drawn.append(int(torch.multinomial(scores.softmax(-1), 1, generator=gen)))
    return drawn, kept


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_sampled_tokens_equal_a_reference_loop_on_transformers_logits(name: str, built: Callable[[str], Path],
                                                                      theirs: Callable[[str], Any]) -> None:
    folder, model = built(name), theirs(name)
    src, start = _source_ids(folder), _start(folder)
    options = ("--temperature", 1.3, "--top-k", 50, "--top-p", 0.95, "--seed", 7, "--ignore-eos", "-n", N)
    doc = _json("generate", sm.SOURCE_TEXT, "--model", folder, *options)
    ours = doc["generated"]["ids"]
    assert doc["source"]["ids"] == src and len(ours) == N and doc["stopped"] == "length" and doc["seconds"] > 0
    drawn, kept = _reference_sample(model, src, start, N, 1.3, 50, 0.95, 7, forced=ours)
    assert ours == drawn
    assert all(token in keep and len(keep) > 1 for token, keep in zip(ours, kept))  # the filters left a choice
    # the probability shown is the model's own (before temperature and filters)
    for t, step in enumerate(doc["steps"]):
        p = float(_reference_logits(model, src, [start] + ours[:t]).softmax(-1)[ours[t]])
        assert abs(step["probability"] - p) < 1e-5
    assert _json("generate", sm.SOURCE_TEXT, "--model", folder, *options)["generated"]["ids"] == ours  # reproducible
    greedy = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--ignore-eos", "-n", N)["generated"]["ids"]
    assert ours != greedy  # so the check above could fail
    other = _json("generate", sm.SOURCE_TEXT, "--model", folder, *options[:6], "--seed", 8, "--ignore-eos", "-n", N)
    assert other["generated"]["ids"] != ours
    top1 = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--temperature", 2.0, "--top-k", 1, "--seed", 3,
                 "--ignore-eos", "-n", N)
    assert top1["generated"]["ids"] == greedy


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(temperature=st.floats(0.05, 5.0), top_k=st.integers(0, 60), top_p=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**63 - 1))
def test_any_sampling_setting_draws_as_the_reference(temperature: float, top_k: int, top_p: float, seed: int,
                                                      built: Callable[[str], Path], theirs: Callable[[str], Any]) -> None:
    """`seq2seq.decode` directly: every token in the set transformers' warpers keep, and
    equal to the reference draw with the same seed."""
    from attnscope.seq2seq import decode

    folder, model = built("t5"), theirs("t5")
    m = _inspector(folder)
    src = _source_ids(folder)
    out = decode(m.model, torch.tensor(src), 4, [0], [0], temperature=temperature, top_k=top_k, top_p=top_p,
                 seed=seed)
    drawn, kept = _reference_sample(model, src, _start(folder), 4, temperature, top_k, top_p, seed, forced=out.ids)
    assert all(token in keep for token, keep in zip(out.ids, kept))
    assert out.ids == drawn


_LOADED: dict[Path, Any] = {}


def _inspector(folder: Path) -> Any:
    from attnscope.api import load

    if folder not in _LOADED:
        _LOADED[folder] = load(str(folder), device="cpu", dtype="float32")
    return _LOADED[folder]


# ----------------------------------------------------------------------------- where decoding ends


def test_stop_cuts_at_the_stop_string(built: Callable[[str], Path]) -> None:
    folder = built("t5")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    greedy = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--ignore-eos", "-n", N)["generated"]["ids"]

    def text(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    stop = next(text(greedy[:i])[-2:] for i in range(5, N) if text(greedy[:i])[-2:] not in text(greedy[:3])
                and len(text(greedy[:i])[-2:]) == 2)
    cut = next(i for i in range(1, N + 1) if stop in text(greedy[:i]))  # generate's definition: the new text holds it
    assert 3 < cut < N
    doc = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--ignore-eos", "-n", N, "--stop", stop)
    assert doc["generated"]["ids"] == greedy[:cut] and doc["stopped"] == "stop" and len(doc["steps"]) == cut
    sampled = ("--temperature", 1.3, "--seed", 5, "--ignore-eos", "-n", N)
    free = _json("generate", sm.SOURCE_TEXT, "--model", folder, *sampled)["generated"]["ids"]
    stop2 = text(free[:4])[-1]
    cut2 = next(i for i in range(1, N + 1) if stop2 in text(free[:i]))
    doc2 = _json("generate", sm.SOURCE_TEXT, "--model", folder, *sampled, "--stop", stop2)
    assert doc2["generated"]["ids"] == free[:cut2] and doc2["stopped"] == "stop"


def test_the_models_end_token_ends_decoding(built: Callable[[str], Path], tmp_path: Path) -> None:
    """A copy of the tiny T5 whose eos is the token greedy decoding writes at step i: it ends there."""
    folder = built("t5")
    greedy = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--ignore-eos", "-n", N)["generated"]["ids"]
    i = next(i for i in range(3, N) if greedy[i] not in greedy[:i])
    copy = tmp_path / "t5-eos"
    shutil.copytree(folder, copy)
    for name in ("config.json", "generation_config.json"):
        if (copy / name).exists():
            raw = json.loads((copy / name).read_text())
            raw["eos_token_id"] = greedy[i]
            (copy / name).write_text(json.dumps(raw))
    doc = _json("generate", sm.SOURCE_TEXT, "--model", copy, "-n", N)
    assert doc["generated"]["ids"] == greedy[:i + 1] and doc["stopped"] == "eos"
    assert _json("generate", sm.SOURCE_TEXT, "--model", copy, "-n", N, "--ignore-eos")["generated"]["ids"] == greedy


# ----------------------------------------------------------------------------- --save, --save-topk, --measure norm


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_save_holds_each_steps_attention_as_transformers(name: str, built: Callable[[str], Path],
                                                         theirs: Callable[[str], Any], tmp_path: Path) -> None:
    folder, model = built(name), theirs(name)
    src, start = _source_ids(folder), _start(folder)
    save, topk = tmp_path / "gen.npz", tmp_path / "gen-topk.npz"
    doc = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--temperature", 0.9, "--seed", 11, "--ignore-eos",
                "-n", N, "--layer", "all", "--alternatives", 500, "--save", save, "--save-topk", topk)
    ids = doc["generated"]["ids"]
    assert doc["saved"] == str(save) and doc["saved_topk"] == str(topk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen-topk.npz", "gen.npz"]  # no temporary left behind
    dec = [start] + ids[:-1]  # what the decoder read: row i is the step that chose ids[i]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True,
                    use_cache=False)
    ref = {"encoder_attentions": out.encoder_attentions, "decoder_attentions": out.decoder_attentions,
           "cross_attentions": out.cross_attentions}
    with np.load(save, allow_pickle=False) as z:
        assert z["source_token_ids"].tolist() == src and z["decoder_token_ids"].tolist() == dec
        assert z["generated_token_ids"].tolist() == ids and z["generated_tokens"].tolist() == doc["generated"]["tokens"]
        assert len(z["decoder_tokens"]) == len(dec) and len(z["source_tokens"]) == len(src)
        for key, attentions in ref.items():
            want = torch.stack([a[0] for a in attentions])  # [layers, heads, rows, keys]
            assert z[key].shape == tuple(want.shape) and z[key].dtype == np.float32
            assert np.abs(z[key] - want.numpy()).max() < ATOL, key
        cross = torch.from_numpy(z["cross_attentions"])
    # each step's row seen while decoding (through the cache) is the saved row, every layer and head averaged
    mean = cross.mean(dim=(0, 1))  # (steps, S)
    for i, step in enumerate(doc["steps"]):
        row = torch.zeros(len(src))
        for key in step["source"]:
            row[key["index"]] = key["weight"]
        assert (row - mean[i]).abs().max() < ATOL
    want = torch.stack([a[0] for a in out.cross_attentions])
    with np.load(topk, allow_pickle=False) as z:
        assert str(z["part"]) == "cross" and z["decoder_token_ids"].tolist() == dec
        assert z["indices"].shape == (want.shape[0], want.shape[1], len(ids), 3)
        assert np.abs(z["weights"] - want.topk(3, dim=-1).values.numpy()).max() < ATOL
        at = want.gather(-1, torch.from_numpy(z["indices"]))  # their weights at our indices
        assert (at - torch.from_numpy(z["weights"])).abs().max() < ATOL


def test_measure_norm_ranks_the_source_by_weight_times_value_size(built: Callable[[str], Path],
                                                                  theirs: Callable[[str], Any]) -> None:
    """Each step's row under --measure norm: Σ over heads of α_hij ‖v_hj W_O^h‖ / Σ_j, averaged,
    from transformers' cross_attentions and its EncDecAttention weights (T5)."""
    folder, model = built("t5"), theirs("t5")
    src, start = _source_ids(folder), _start(folder)
    doc = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--measure", "norm", "--layer", "all",
                "--alternatives", 500, "--ignore-eos", "-n", 6)
    ids = doc["generated"]["ids"]
    assert doc["measure"] == "norm"
    dec = [start] + ids[:-1]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True,
                    use_cache=False)
        memory = out.encoder_last_hidden_state[0].double()  # (S, d)
        rows = []
        for layer, alpha in zip(model.decoder.block, out.cross_attentions):
            att = layer.layer[1].EncDecAttention
            H, dh = att.n_heads, att.key_value_proj_dim
            v = (memory @ att.v.weight.double().T).view(len(src), H, dh).transpose(0, 1)  # (H, S, dh)
            wo = att.o.weight.double().view(-1, H, dh)  # (d, H, dh)
            size = torch.einsum("hsd,mhd->hsm", v, wo).norm(dim=-1)  # (H, S)
            norms = alpha[0].double() * size[:, None, :]  # (H, T, S)
            rows.append(norms / norms.sum(-1, keepdim=True))
        want = torch.stack(rows).mean(dim=(0, 1))  # (T, S)
    weight = _json("generate", sm.SOURCE_TEXT, "--model", folder, "--layer", "all", "--alternatives", 500,
                   "--ignore-eos", "-n", 6)
    assert weight["generated"]["ids"] == ids  # the measure changes the view, not the tokens
    moved = 0.0
    for i, (step, plain) in enumerate(zip(doc["steps"], weight["steps"])):
        got = torch.zeros(len(src), dtype=torch.float64)
        alpha = torch.zeros(len(src), dtype=torch.float64)
        for key in step["source"]:
            got[key["index"]] = key["weight"]
        for key in plain["source"]:
            alpha[key["index"]] = key["weight"]
        assert (got - want[i]).abs().max() < ATOL
        moved = max(moved, float((got - alpha).abs().max()))
    assert moved > 10 * ATOL  # norm is not weight here, so the check above could fail


def test_cross_keys_and_values_are_projected_once_per_decoding(built: Callable[[str], Path]) -> None:
    from attnscope.seq2seq import decode

    m = _inspector(built("bart"))
    calls: dict[str, int] = {}
    handles = []
    for i, block in enumerate(m.model.decoder.blocks):
        for what, module in (("cross.k", block.cross.k), ("cross.v", block.cross.v), ("self.k", block.attn.k)):
            key = f"{i}.{what}"
            calls[key] = 0
            handles.append(module.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1)))
    try:
        out = decode(m.model, torch.tensor(_source_ids(built("bart"))), 6, [0], [0], temperature=1.0, seed=1)
    finally:
        for h in handles:
            h.remove()
    assert len(out.steps) == 6
    for i in range(len(m.model.decoder.blocks)):
        assert calls[f"{i}.cross.k"] == calls[f"{i}.cross.v"] == 1  # once, from the encoder's states
        assert calls[f"{i}.self.k"] == 6  # the decoder's own keys: one per step


# ----------------------------------------------------------------------------- --chat and bad values


def test_chat_without_a_template_is_refused_with_its_reason(built: Callable[[str], Path]) -> None:
    line = _one_error(_cli("generate", "Translate: a house", "--model", built("t5"), "--chat"))
    assert "no chat template" in line and "yet" not in line


def test_chat_with_a_template_renders_the_source(built: Callable[[str], Path], tmp_path: Path) -> None:
    copy = tmp_path / "t5-chat"
    shutil.copytree(built("t5"), copy)
    (copy / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "Q: {{ messages[0]['content'] }} A:"}))
    doc = _json("generate", "a house", "--model", copy, "--chat", "-n", 2)
    tok = Tokenizer.from_file(str(copy / "tokenizer.json"))
    assert doc["source"]["ids"] == tok.encode("Q: a house A:", add_special_tokens=False).ids


@pytest.mark.parametrize("args, words", [
    (["--temperature", -1], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--top-k", -1], "--top-k"),
    (["--top-p", 0], "--top-p"),
    (["--top-p", 1.5], "--top-p"),
    (["--seed", -1], "--seed"),
    (["-n", 0], "--max-new-tokens"),
    (["--stop", ""], "--stop"),
    (["--save", "out.safetensors"], "FILE.npz"),
    (["--save-topk", "out.txt"], ".npz"),
    (["--measure", "rollout"], "rollout"),
])
def test_bad_values_are_one_line(args: list[Any], words: str, built: Callable[[str], Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert words in _one_error(_cli("generate", "a house", "--model", built("t5"), *args))
    assert list(tmp_path.iterdir()) == []


def test_more_new_tokens_than_learned_positions_is_one_line(built: Callable[[str], Path]) -> None:
    line = _one_error(_cli("generate", "a house", "--model", built("bart"), "-n", 129))  # 128 positions
    assert "128 positions" in line
    assert len(_json("generate", "a house", "--model", built("bart"), "-n", 128, "--ignore-eos")["steps"]) == 128


def test_the_python_generate_names_an_encoder_decoder_for_what_it_is(built: Callable[[str], Path]) -> None:
    from attnscope.errors import InputError

    with pytest.raises(InputError, match="is an encoder-decoder: it writes from a source"):
        _inspector(built("t5")).generate("a house")
