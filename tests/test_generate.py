"""generate: our decoding loop against transformers' `generate`, on tiny random-weight
checkpoints of every causal family.

References: transformers' `*ForCausalLM` (eager attention, float32) for greedy ids (its
end-of-sequence handling included), per-step probabilities (softmax of its logits) and
the attention of the final sequence; its `apply_chat_template` for the chat prompt.
Tolerances: probabilities and patterns lie in [0, 1]; our float32 pipeline and the
reference's differ by float32 rounding of O(10) operations on values of O(1) at these
widths (~1e-6), so 1e-5 leaves a margin of ten while any real difference (a wrong
position, a missed modifier) moves them by 1e-2 or more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
from attnscope.api import load
from attnscope.cli import app

PROMPT = "a fluffy blue creature roamed the verdant forest and the"
CAUSAL = [("build", "gpt2"), ("build", "llama"), ("build", "llama_mqa"), ("build", "mistral"), ("build", "qwen2"),
          ("family_build", "gpt_neox"), ("family_build", "opt"), ("family_build", "phi"), ("family_build", "gemma"),
          ("family_build", "gemma2"), ("family_build", "qwen3")]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _causal_lm(folder: Path) -> Any:
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    if not arch.endswith(("ForCausalLM", "LMHeadModel")):
        arch = arch.replace("Model", "ForCausalLM")
    return tm.load_reference(folder, arch)


@pytest.fixture(scope="module")
def folders(request: pytest.FixtureRequest) -> dict[str, Path]:
    out = {}
    for fixture, name in CAUSAL:
        out[name] = request.getfixturevalue(fixture)(name)
    return out


@torch.no_grad()
def _reference_greedy(ref: Any, ids: list[int], n: int, eos: int | None) -> list[int]:
    x = torch.tensor([ids])
    out = ref.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                       eos_token_id=eos, pad_token_id=eos if eos is not None else 0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("name", [name for _, name in CAUSAL])
def test_greedy_equals_transformers(folders: dict[str, Path], name: str) -> None:
    m = load(str(folders[name]), device="cpu", dtype="float32")
    ref = _causal_lm(folders[name])
    ids = m.tokenize(PROMPT).ids
    free = m.generate(PROMPT, max_new_tokens=10, ignore_eos=True)
    assert free.prompt_ids == ids and len(free.token_ids) == 10 and free.stopped == "length"
    assert free.token_ids == _reference_greedy(ref, ids, 10, None)
    # End of sequence: make the 4th greedy token the model's EOS; both stop there, EOS included.
    eos = free.token_ids[3]
    m.chat.eos_ids = [eos]
    try:
        stopped = m.generate(PROMPT, max_new_tokens=10)
    finally:
        m.chat.eos_ids = []
    want = _reference_greedy(ref, ids, 10, eos)
    assert stopped.token_ids == want == free.token_ids[: free.token_ids.index(eos) + 1]
    assert stopped.stopped == "eos"
    # Each step's probability is the softmax of the reference's logits at the position before it.
    seq = ids + free.token_ids
    with torch.no_grad():
        probs = ref(torch.tensor([seq])).logits[0].float().softmax(-1)  # (N, vocab)
    for i, step in enumerate(free.steps):
        row = probs[len(ids) - 1 + i]
        assert step.prob == pytest.approx(float(row[step.token_id]), abs=1e-5)
        for token_id, _, p in step.alternatives:
            assert p == pytest.approx(float(row[token_id]), abs=1e-5)
        assert step.prob >= max(p for _, _, p in step.alternatives) - 1e-6  # greedy: the most likely


@pytest.mark.parametrize("name", ["gpt2", "mistral", "gemma2"])
def test_saved_attention_of_final_sequence(folders: dict[str, Path], name: str, tmp_path: Path) -> None:
    out = tmp_path / "gen.npz"
    res = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(folders[name]), "-n", "6", "--ignore-eos",
                                   "--json", "--save", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    data = np.load(out)
    seq = doc["prompt_token_ids"] + doc["token_ids"]
    assert data["token_ids"].tolist() == seq and int(data["prompt_length"]) == len(doc["prompt_token_ids"])
    want = tm.reference_attention(_causal_lm(folders[name]), seq)  # (L, H, N, N)
    np.testing.assert_allclose(data["attentions"], want.numpy(), atol=1e-5, rtol=0)
    assert np.all(np.triu(data["attentions"], 1) == 0)


def test_top_keys_are_the_reference_row(folders: dict[str, Path]) -> None:
    """Where a step looked: the last layer's row of the query that produced the token,
    averaged over heads, in the reference's eager attention."""
    m = load(str(folders["llama"]), device="cpu", dtype="float32")
    g = m.generate(PROMPT, max_new_tokens=4, ignore_eos=True, layers=-1)
    want = tm.reference_attention(_causal_lm(folders["llama"]), g.ids)[-1].mean(0)  # (N, N)
    for i, step in enumerate(g.steps):
        row = want[len(g.prompt_ids) - 1 + i]
        for pos, _, w in step.top_keys:
            assert w == pytest.approx(float(row[pos]), abs=1e-5)
        assert step.top_keys[0][2] == pytest.approx(float(row.max()), abs=1e-5)


def test_seeded_sampling_repeats(folders: dict[str, Path]) -> None:
    m = load(str(folders["qwen2"]), device="cpu", dtype="float32")
    kw = dict(max_new_tokens=12, temperature=1.5, top_k=50, top_p=0.95, ignore_eos=True)
    a = m.generate(PROMPT, seed=7, **kw)
    b = m.generate(PROMPT, seed=7, **kw)
    c = m.generate(PROMPT, seed=8, **kw)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids  # 12 draws at temperature 1.5 from ~500 tokens: a collision is ~impossible


def test_top_p_and_top_k_keep_the_right_tokens() -> None:
    from attnscope.generate import choose

    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    assert {choose(logits, 1.0, 2, 1.0, gen) for _ in range(200)} == {0, 1}
    # softmax: 0.636, 0.234, 0.086, ...: top-p 0.8 keeps the first two (0.636 < 0.8 <= 0.870)
    assert {choose(logits, 1.0, 0, 0.8, gen) for _ in range(300)} == {0, 1}
    assert {choose(logits, 1.0, 0, 0.5, gen) for _ in range(50)} == {0}
    assert choose(logits, 0.0, 0, 1.0, None) == 0


def test_chat_prompt_matches_apply_chat_template(folders: dict[str, Path], tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "chat"
    shutil.copytree(folders["llama"], folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "bos_token": "<s>",
                                                              "eos_token": "</s>"}))
    m = load(str(folder), device="cpu", dtype="float32")
    g = m.generate("What is attention?", max_new_tokens=3, chat=True, ignore_eos=True)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    want = tok.apply_chat_template([{"role": "user", "content": "What is attention?"}], tokenize=True,
                                   add_generation_prompt=True, chat_template=CHATML)
    if not isinstance(want, list):  # a BatchEncoding in current transformers
        want = want["input_ids"]
    assert g.prompt_ids == list(want)


def test_hostile_chat_template_is_one_line(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(folders["llama"], folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{{ messages.__class__.__mro__[1].__subclasses__() }}"}))
    res = CliRunner().invoke(app, ["generate", "hi", "--model", str(folder), "--chat", "-n", "2"])
    assert res.exit_code == 2  # bad input (InputError)
    assert "chat template" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_encoder_cannot_generate(build: Any) -> None:
    res = CliRunner().invoke(app, ["generate", "hi", "--model", str(build("bert")), "-n", "2"])
    assert res.exit_code == 2
    assert "cannot generate" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--seed", str(10**24)], ["--top-p", "0"], ["--temperature", "-1"],
                                  ["-n", "0"], ["--top-k", "-2"]])
def test_bad_sampling_options(folders: dict[str, Path], args: list[str]) -> None:
    res = CliRunner().invoke(app, ["generate", "hi", "--model", str(folders["llama"]), *args])
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_json_document(folders: dict[str, Path]) -> None:
    res = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(folders["gpt2"]), "-n", "3", "--json",
                                   "--ignore-eos", "--alternatives", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) >= {"prompt_token_ids", "token_ids", "tokens", "text", "steps"}
    assert len(doc["steps"]) == len(doc["token_ids"]) == len(doc["tokens"]) == 3
    step = doc["steps"][0]
    assert set(step) == {"token_id", "token", "prob", "alternatives", "top_keys"}
    assert len(step["alternatives"]) == 2 and all(len(a) == 3 for a in step["alternatives"])
    assert all(0 <= k[0] < len(doc["prompt_token_ids"]) for k in step["top_keys"])


def test_generate_html_page_holds_the_final_sequence(folders: dict[str, Path], tmp_path: Path) -> None:
    from test_page import page_doc

    page, saved = tmp_path / "gen.html", tmp_path / "gen.npz"
    res = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(folders["llama"]), "-n", "5", "--ignore-eos",
                                   "--json", "--html", str(page), "--save", str(saved)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    data = np.load(saved)
    got = page_doc(page)
    assert got["token_ids"] == doc["prompt_token_ids"] + doc["token_ids"]
    assert np.array_equal(got["attention"], data["attentions"])
