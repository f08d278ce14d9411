"""`mask-demo` applies each layer's own mask by default and names the layer's kind.

With no --kind, a decoder layer's demo applies the rule that layer's forward pass uses
(causal, or causal within its window on Gemma 2's and Mistral's sliding layers), so its
last step (`--json`'s final matrix) is the layer's attention. That is checked here for
every layer and head of every tiny checkpoint in `tiny_models.BUILDERS` and
`FAMILY_BUILDERS`, against transformers' eager attention (`output_attentions`) run in
float64, on a text longer than every window. The expected window and the kind's words
are read from transformers' own config, not from ours. An encoder masks nothing; its
default stays the causal mask (what a causal model would hide), and its own pattern is
the demo's unmasked softmax (step 3) and the last step under --kind bidirectional.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
from attnscope.mask_captions import layer_kind_words
from attnscope.parts.attention import MaskRule

# Our float32 pattern against a float64 reference: the difference is our float32 noise
# alone, probabilities ≤ 1 through 2-3 layers (test_hook_sites measures it under 1e-6).
ATOL = 1e-5
NAMES = list(tm.BUILDERS) + list(tm.FAMILY_BUILDERS)
ENCODERS = [name for name in NAMES if name.startswith("bert")]
DECODERS = [name for name in NAMES if name not in ENCODERS]
TEXT = tm.LONG_TEXT
ENV = {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


@pytest.fixture(scope="module")
def folder(build: Callable[[str], Path], family_build: Callable[[str], Path]) -> Callable[[str], Path]:
    return lambda name: build(name) if name in tm.BUILDERS else family_build(name)


@pytest.fixture(scope="module")
def ref64(reference: Callable[[str], Any], family_reference: Callable[[str], Any]) -> Callable[[str], Any]:
    """`ref64(name)`: the session's transformers reference, copied and cast to float64."""
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            base = reference(name) if name in tm.BUILDERS else family_reference(name)
            made[name] = copy.deepcopy(base).double().eval()
        return made[name]

    return get


def reference_window(config: Any, layer: int) -> int | None:
    """The window transformers applies in `layer` (None: none), from its own config."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return config.sliding_window if types[layer] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def expected_words(config: Any, layer: int) -> str:
    if config.model_type == "bert":
        return "bidirectional encoder"
    window = reference_window(config, layer)
    return "global" if window is None else f"local, window {window}"


def run(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, ["mask-demo", *args], env=ENV)


def demo_json(folder: Path, layer: int, head: int, *args: str) -> dict[str, Any]:
    result = run(TEXT, "--model", str(folder), "--layer", str(layer), "--head", str(head), "--device", "cpu",
                 "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def matrix(doc: dict[str, Any], name: str) -> torch.Tensor:
    step = next(s for s in doc["steps"] if s["name"] == name)
    return torch.tensor(step["matrix"], dtype=torch.float64)  # (T, T): a masked probability is the number 0


@pytest.mark.parametrize("name", DECODERS)
def test_default_last_step_is_the_layers_attention(name: str, folder: Callable, ref64: Callable) -> None:
    """No --kind: every layer's and head's last step is transformers' eager attention,
    and the demo names the layer's kind (local, window W / global)."""
    model = ref64(name)
    ids = tm.plain_tokenizer(folder(name)).encode(TEXT).ids
    attentions = tm.reference_attention(model, ids)  # (L, H, T, T)
    n_layers, n_heads = attentions.shape[:2]
    windows = [reference_window(model.config, layer) for layer in range(n_layers)]
    assert all(w is None or w < len(ids) for w in windows), "the text must be longer than every window"
    for layer in range(n_layers):
        for head in range(n_heads):
            doc = demo_json(folder(name), layer, head)
            where = f"{name} layer {layer} head {head}"
            assert doc["kind_given"] is False and doc["own_mask"] is True, where
            assert doc["layer_kind"] == expected_words(model.config, layer), f"{where}: {doc['layer_kind']}"
            assert doc["window"] == windows[layer], where
            assert doc["kind"] == doc["model_mask"] == ("causal" if windows[layer] is None else "sliding-window")
            assert "uses this very mask" in doc["note"], doc["note"]
            assert len(doc["tokens"]) == len(ids)
            assert doc["steps"][-1]["name"] == "masked_softmax"
            torch.testing.assert_close(matrix(doc, "masked_softmax"), attentions[layer, head], rtol=0, atol=ATOL,
                                       msg=lambda m, where=where: f"{where}: {m}")


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_names_its_kind_and_shows_its_own_pattern(name: str, folder: Callable, ref64: Callable) -> None:
    """An encoder masks nothing: by default the demo still teaches the causal mask (and
    says it is not the layer's own); its own pattern is step 3, and the last step under
    --kind bidirectional, for every layer and head."""
    model = ref64(name)
    ids = tm.plain_tokenizer(folder(name)).encode(TEXT).ids
    attentions = tm.reference_attention(model, ids)  # (L, H, T, T)
    n_layers, n_heads = attentions.shape[:2]
    for layer in range(n_layers):
        for head in range(n_heads):
            where = f"{name} layer {layer} head {head}"
            doc = demo_json(folder(name), layer, head)
            assert doc["layer_kind"] == "bidirectional encoder" and doc["model_mask"] == "bidirectional", where
            assert doc["kind"] == "causal" and doc["own_mask"] is False and doc["kind_given"] is False, where
            assert "step 3" in doc["note"], doc["note"]
            torch.testing.assert_close(matrix(doc, "softmax"), attentions[layer, head], rtol=0, atol=ATOL,
                                       msg=lambda m, where=where: f"{where} step 3: {m}")
            own = demo_json(folder(name), layer, head, "--kind", "bidirectional")
            assert own["own_mask"] is True and own["kind_given"] is True, where
            torch.testing.assert_close(matrix(own, "masked_softmax"), attentions[layer, head], rtol=0, atol=ATOL,
                                       msg=lambda m, where=where: f"{where} --kind bidirectional: {m}")


@pytest.mark.parametrize(("name", "layer"), [("gemma2", 1), ("gemma2", 2), ("gemma2_default_types", 0),
                                              ("mistral", 0), ("mistral", 1)])
def test_kind_still_teaches_other_rules_on_a_sliding_layer(name: str, layer: int, folder: Callable,
                                                           ref64: Callable) -> None:
    """An explicit --kind causal on a sliding layer applies the causal mask as before (the
    old default, which differed from the model's attention by far more than ATOL) and
    says it is not the layer's own; another --window says the layer's own window."""
    model = ref64(name)
    window = reference_window(model.config, layer)
    assert window is not None, f"{name} layer {layer} must slide"
    ids = tm.plain_tokenizer(folder(name)).encode(TEXT).ids
    attentions = tm.reference_attention(model, ids)  # (L, H, T, T)
    doc = demo_json(folder(name), layer, 0, "--kind", "causal")
    assert doc["kind"] == "causal" and doc["kind_given"] is True and doc["own_mask"] is False
    assert doc["layer_kind"] == f"local, window {window}"
    assert "uses this very mask" not in doc["note"]
    causal = matrix(doc, "masked_softmax")
    assert (causal[len(ids) - 1, : len(ids) - window] > 0).all(), "the causal mask keeps keys outside the window"
    assert float((causal - attentions[layer, 0]).abs().max()) > 100 * ATOL
    other = demo_json(folder(name), layer, 0, "--kind", "sliding-window", "--window", str(window - 1))
    assert other["own_mask"] is False and f"a window of {window} here" in other["note"], other["note"]


def test_table_names_each_layers_kind(folder: Callable) -> None:
    """The terminal view names the layer's kind and whether the mask shown is its own."""
    cases = [("gemma2", 0, "layer 0: global · its own mask is shown"),
             ("gemma2", 1, "layer 1: local, window 4 · its own mask is shown"),
             ("mistral", 1, f"layer 1: local, window {tm.MISTRAL_WINDOW} · its own mask is shown"),
             ("gpt2", 0, "layer 0: global · its own mask is shown"),
             ("bert", 1, "layer 1: bidirectional encoder · the causal mask shown is not its own")]
    for name, layer, line in cases:
        result = run(TEXT, "--model", str(folder(name)), "--layer", str(layer), "--device", "cpu", "--step", "4")
        assert result.exit_code == 0, result.output
        assert line in result.stdout.splitlines(), (name, layer, result.stdout[:600])
    result = run(TEXT, "--model", str(folder("gemma2")), "--layer", "1", "--kind", "causal", "--device", "cpu")
    assert "layer 1: local, window 4 · the causal mask shown is not its own" in result.stdout.splitlines()


def test_window_needs_the_sliding_window_kind(folder: Callable) -> None:
    result = run("--model", str(folder("mistral")), "--window", "3")
    assert result.exit_code == 2, result.output
    assert "--window applies only to --kind sliding-window" in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""


def test_kind_words() -> None:
    assert layer_kind_words(MaskRule(True)) == "global"
    assert layer_kind_words(MaskRule(True, 4096)) == "local, window 4096"
    assert layer_kind_words(MaskRule(False)) == "bidirectional encoder"
    # a bidirectional window W keeps keys less than W away: named by its reach (ModernBERT's local layers)
    assert layer_kind_words(MaskRule(False, 128)) == "local, ±127 tokens"
