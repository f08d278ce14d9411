"""MPNet (`mpnet`) and the stack-owned relative position bias against transformers.

The tiny checkpoints of tests/tiny_models_mpnet.py (MPNetModel with a pooler; MPNetForMaskedLM
with a 40-row bias table that transformers still buckets into 32) run MPNET_TEXT, 130+
tokens, so query-key distances pass max_distance 128 both ways. Checked here:

1. the bucket function (parts.relative) equals transformers' MPNet and T5 ones, bidirectional
   and causal, at every distance out to ±3000;
2. attention equals transformers' eager attention (float32) to 1e-5, every layer and head,
   and the last hidden state to 1e-4; the bias each layer reports (hook `bias`) is exactly
   transformers' `compute_position_bias`; without the bias the patterns differ by far more
   than the tolerance (so the check can fail);
3. the bias is right in query chunks (any chunk size) and on a packed pass (each text's own
   positions), with and without hooks;
4. `mask-demo --json` on the tiny MPNet shows the bias as a step of its own, read from the
   hook; its last step (--kind bidirectional) equals the model's own pattern on every layer
   and head, and models without a bias keep the four steps;
5. the counts: all-mpnet-base-v2's real config (MPNetModel 109,486,464, the issue's
   figure), the preset, MPNetForMaskedLM, and the tiny folders, as transformers counts them;
6. the CLI: `attend` and `heads` on the folder; bad configs are one ConfigError line.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
import tiny_models_mpnet as mm
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError
from attnscope.hooks import Capture, attn_site
from attnscope.kinds import RelativeSpec
from attnscope.parts.relative import relative_bucket

NAMES = list(mm.MPNET_BUILDERS)
REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
# Attention probabilities in float32, ours against transformers' float32: both carry float32
# rounding through three post-norm layers (measured: under 1e-6).
ATOL = 1e-5
# The last hidden state: LayerNorm outputs of order 1 after three layers in float32 (measured: ~1e-6).
HIDDEN_ATOL = 1e-4
ENV = {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
LAYERS = 3


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = mm.MPNET_BUILDERS[name](tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.fixture(scope="module")
def ours(built: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            made[name] = load(str(built(name)), device="cpu", dtype="float32")
        return made[name]

    return get


@pytest.fixture(scope="module")
def ref(built: Callable[[str], Path]) -> Callable[[str], Any]:
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            made[name] = tm.load_reference(built(name))
        return made[name]

    return get


def ids_of(folder: Path, text: str = mm.MPNET_TEXT) -> list[int]:
    return tm.plain_tokenizer(folder).encode(text).ids


def encoder_of(model: Any) -> Any:
    return model.mpnet.encoder if hasattr(model, "mpnet") else model.encoder


def their_bias(model: Any, n: int) -> torch.Tensor:
    """transformers' own position bias for n tokens, (H, n, n)."""
    with torch.no_grad():
        return encoder_of(model).compute_position_bias(torch.zeros(1, n, model.config.hidden_size))[0]


def captured(inspector: Any, ids: list[int], whats: tuple[str, ...] = ("pattern", "bias")) -> Capture:
    return inspector.capture(ids, {attn_site(i): list(whats) for i in range(LAYERS)})


def run_cli(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, list(args), env=ENV)


# ---------------------------------------------------------------------- buckets


@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 20), (64, 1000), (4, 3), (33, 77)])
def test_buckets_equal_transformers_mpnet_and_t5(buckets: int, max_distance: int) -> None:
    """Bidirectional as MPNet and T5's encoder bucket, causal as T5's decoder does, at every
    distance out to ±3000 (exact, log-spaced and clamped buckets, both sides)."""
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
    from transformers.models.t5.modeling_t5 import T5Attention

    distance = torch.arange(-3000, 3001)
    both = relative_bucket(distance, buckets, max_distance, bidirectional=True)
    assert torch.equal(both, T5Attention._relative_position_bucket(distance, True, buckets, max_distance))
    if buckets % 2 == 0:  # MPNet's own copy halves the same way
        assert torch.equal(both, MPNetEncoder.relative_position_bucket(distance, buckets, max_distance))
    causal = relative_bucket(distance, buckets, max_distance, bidirectional=False)
    assert torch.equal(causal, T5Attention._relative_position_bucket(distance, False, buckets, max_distance))
    assert int(causal[distance > 0].max()) == 0  # keys after the query: distance 0's bucket
    half = buckets // 2  # bucket `half` would be a key after its query at distance 0: none is
    assert set(both.tolist()) == set(range(2 * half)) - {half}  # every other bucket used over this range


def test_text_reaches_every_bucket(built: Callable[[str], Path]) -> None:
    """MPNET_TEXT is longer than max_distance + 2, so all 32 buckets (exact, log-spaced, the
    clamped last one on both sides; all but bucket 16, distance 0 "after" its query) appear
    among its distances; it fits the positions."""
    n = len(ids_of(built("mpnet")))
    assert 128 + 2 < n <= mm.N_POSITIONS, n
    distance = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    assert set(relative_bucket(distance, 32, 128, True).flatten().tolist()) == set(range(32)) - {16}


# ---------------------------------------------------------------------- against transformers


@pytest.mark.parametrize("name", NAMES)
def test_attention_equals_transformers(name: str, built: Callable, ours: Callable, ref: Callable) -> None:
    ids = ids_of(built(name))
    want = tm.reference_attention(ref(name), ids)  # (L, H, T, T)
    cap = captured(ours(name), ids)
    got = torch.stack([cap.get(attn_site(i), "pattern") for i in range(LAYERS)])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    # the bias each layer was handed is transformers' compute_position_bias, exactly
    bias = their_bias(ref(name), len(ids))
    for i in range(LAYERS):
        assert torch.equal(cap.get(attn_site(i), "bias"), bias), f"layer {i}"


@pytest.mark.parametrize("name", NAMES)
def test_last_hidden_state_equals_transformers(name: str, built: Callable, ours: Callable, ref: Callable) -> None:
    ids = ids_of(built(name))
    with torch.no_grad():
        model = ref(name)
        base = model.mpnet if hasattr(model, "mpnet") else model
        want = base(torch.tensor([ids])).last_hidden_state[0]
    got = ours(name).run(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=HIDDEN_ATOL)


def test_the_bias_matters(built: Callable, ours: Callable, ref: Callable) -> None:
    """The check above can fail: without the bias (its table zeroed) the patterns differ
    from transformers' by far more than the tolerance."""
    ids = ids_of(built("mpnet"))
    want = tm.reference_attention(ref("mpnet"), ids)
    model = ours("mpnet").model
    saved = model.relative.weight.detach().clone()
    try:
        with torch.no_grad():
            model.relative.weight.zero_()
        cap = captured(ours("mpnet"), ids, ("pattern",))
    finally:
        with torch.no_grad():
            model.relative.weight.copy_(saved)
    got = torch.stack([cap.get(attn_site(i), "pattern") for i in range(LAYERS)])
    assert float((got - want).abs().max()) > 100 * ATOL


def test_table_rows_beyond_32_are_never_read(built: Callable, ours: Callable) -> None:
    """MPNetForMaskedLM's 40-row table: bucketing stays at 32, as transformers' does, so
    rows 32..39 change nothing."""
    ids = ids_of(built("mpnet_mlm"))
    model = ours("mpnet_mlm").model
    assert tuple(model.relative.weight.shape) == (mm.TABLE_ROWS, 4)
    before = captured(ours("mpnet_mlm"), ids, ("pattern",)).get(attn_site(2), "pattern")
    saved = model.relative.weight.detach().clone()
    try:
        with torch.no_grad():
            model.relative.weight[32:] = 1e3
        after = captured(ours("mpnet_mlm"), ids, ("pattern",)).get(attn_site(2), "pattern")
    finally:
        with torch.no_grad():
            model.relative.weight.copy_(saved)
    assert torch.equal(before, after)


def test_bias_in_small_query_chunks(built: Callable, ours: Callable, ref: Callable,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel gathers each query chunk's bias from its own positions: chunks of 7 rows
    give transformers' attention and bias as one chunk does."""
    from attnscope.parts import attention

    ids = ids_of(built("mpnet"))
    want = tm.reference_attention(ref("mpnet"), ids)
    monkeypatch.setattr(attention, "chunk_rows", lambda n_heads, n_keys: 7)
    cap = captured(ours("mpnet"), ids)
    for i in range(LAYERS):
        torch.testing.assert_close(cap.get(attn_site(i), "pattern"), want[i], rtol=0, atol=ATOL)
        assert torch.equal(cap.get(attn_site(i), "bias"), their_bias(ref("mpnet"), len(ids)))


def test_packed_texts_keep_their_own_distances(built: Callable, ours: Callable, ref: Callable) -> None:
    """Two texts in one packed pass: each text's positions count from 0, so each gets its
    own bias and its own pattern, as transformers gives it alone."""
    from attnscope.parts.attention import Packing

    folder = built("mpnet")
    a, b = ids_of(folder, tm.SENTENCES[0]), ids_of(folder, " ".join(tm.SENTENCES[1:6]))
    positions = torch.cat([torch.arange(len(a)), torch.arange(len(b))])
    segments = torch.cat([torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)])
    cap = Capture({attn_site(i): ["pattern"] for i in range(LAYERS)})
    ours("mpnet").model(torch.tensor(a + b), cap, packing=Packing(positions, segments))
    for i in range(LAYERS):
        pattern = cap.get(attn_site(i), "pattern")  # (H, Ta + Tb, Ta + Tb)
        for ids, rows in ((a, slice(0, len(a))), (b, slice(len(a), len(a) + len(b)))):
            want = tm.reference_attention(ref("mpnet"), ids)[i]
            torch.testing.assert_close(pattern[:, rows, rows], want, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------- mask-demo


def test_mask_demo_shows_the_bias_step(built: Callable, ours: Callable, ref: Callable) -> None:
    """No --kind (an encoder gets the causal mask to show): five steps, the bias the second,
    equal to transformers' compute_position_bias; step 1 + step 2 are the layer's scores."""
    from attnscope import masks

    folder = built("mpnet")
    ids = ids_of(folder)
    bias = their_bias(ref("mpnet"), len(ids))
    result = run_cli("mask-demo", mm.MPNET_TEXT, "--model", str(folder), "--layer", "1", "--head", "2",
                     "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [s["name"] for s in doc["steps"]] == list(masks.BIAS_STEPS)
    assert doc["kind"] == "causal" and doc["own_mask"] is False
    assert doc["relative_bias"] == {"buckets": 32, "max_distance": 128, "bidirectional": True}
    step = {s["name"]: torch.tensor([[float(v) for v in row] for row in s["matrix"]]) for s in doc["steps"]}
    assert torch.equal(step["bias"], bias[2])
    scores = ours("mpnet").capture(ids, {attn_site(1): ["scores"]}).get(attn_site(1), "scores")[2]
    torch.testing.assert_close(step["scores"] + step["bias"], scores, rtol=0, atol=1e-6)
    assert "distance" in doc["steps"][1]["caption"]


@pytest.mark.parametrize("name", NAMES)
def test_mask_demo_last_step_is_the_models_pattern(name: str, built: Callable, ref: Callable) -> None:
    """--kind bidirectional (the layer's own mask): the last of the five steps equals
    transformers' attention on every layer and head."""
    folder = built(name)
    want = tm.reference_attention(ref(name), ids_of(folder))
    for layer in range(LAYERS):
        for head in range(4):
            result = run_cli("mask-demo", mm.MPNET_TEXT, "--model", str(folder), "--layer", str(layer),
                             "--head", str(head), "--kind", "bidirectional", "--step", "5", "--device", "cpu",
                             "--json")
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            assert doc["own_mask"] is True
            (step,) = doc["steps"]
            assert step["name"] == "masked_softmax" and step["step"] == 5
            got = torch.tensor(step["matrix"], dtype=torch.float32)
            torch.testing.assert_close(got, want[layer, head], rtol=0, atol=ATOL,
                                       msg=lambda m: f"{name} layer {layer} head {head}: {m}")


def test_mask_demo_padding_adds_the_padded_bias(built: Callable, ref: Callable) -> None:
    """--kind padding: the bias step covers the pads too, at the padded text's positions."""
    folder = built("mpnet")
    result = run_cli("mask-demo", tm.SHORT_TEXT, "--model", str(folder), "--kind", "padding", "--head", "0",
                     "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    n = len(doc["tokens"])
    assert doc["padding"] == 3 and n == len(ids_of(folder, tm.SHORT_TEXT)) + 3
    bias = torch.tensor(doc["steps"][1]["matrix"])
    assert doc["steps"][1]["name"] == "bias" and torch.equal(bias, their_bias(ref("mpnet"), n)[0])
    rows = torch.tensor([[float(v) for v in row] for row in doc["steps"][-1]["matrix"]])
    torch.testing.assert_close(rows.sum(-1), torch.ones(n), rtol=0, atol=1e-5)


def test_mask_demo_steps_without_a_bias_stay_four(bert: Path) -> None:
    """A model without a bias keeps the four steps; --step 5 there is one usage line."""
    from attnscope import masks

    result = run_cli("mask-demo", tm.SHORT_TEXT, "--model", str(bert), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert [s["name"] for s in json.loads(result.stdout)["steps"]] == list(masks.STEPS)
    assert "relative_bias" not in json.loads(result.stdout)
    bad = run_cli("mask-demo", tm.SHORT_TEXT, "--model", str(bert), "--device", "cpu", "--step", "5")
    assert bad.exit_code == 2
    assert "--step 5 is out of range: this demo has 4 steps" in bad.stderr and "Traceback" not in bad.output
    assert run_cli("mask-demo", "--step", "6").exit_code == 2


def test_mask_demo_terminal_view(built: Callable) -> None:
    result = run_cli("mask-demo", tm.SHORT_TEXT, "--model", str(built("mpnet")), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Step 2/5 · Relative position bias" in result.stdout and "Step 5/5" in result.stdout


# ---------------------------------------------------------------------- counts


def real_config() -> dict[str, Any]:
    return json.loads((REAL_CONFIGS / "all-mpnet-base-v2.json").read_text())


def test_real_config_count() -> None:
    """all-mpnet-base-v2 as MPNetModel: the issue's 109,486,464, through `params --config`
    on the file and on the preset."""
    from attnscope.config import load_config
    from attnscope.params import report

    path = REAL_CONFIGS / "all-mpnet-base-v2.json"
    expected = real_config()["_num_parameters"]
    assert expected == 109_486_464
    assert report(load_config(path)).total_full == expected
    for spec in (str(path), "all-mpnet-base-v2"):
        result = run_cli("params", "--config", spec, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["total"] == expected, spec


def test_masked_lm_count_is_transformers_own() -> None:
    """The file's Hub spelling (MPNetForMaskedLM): lm_head instead of the pooler, as
    transformers counts it on the meta device (109,518,527)."""
    from transformers import MPNetConfig, MPNetForMaskedLM

    from attnscope.params import report

    raw = {k: v for k, v in real_config().items() if k != "_num_parameters"}
    raw["architectures"] = ["MPNetForMaskedLM"]
    with torch.device("meta"):
        want = MPNetForMaskedLM(MPNetConfig(**raw)).num_parameters()
    assert want == 109_518_527
    assert report(from_hf_config(raw, "mlm")).total_full == want


@pytest.mark.parametrize("name", NAMES)
def test_tiny_counts_equal_the_checkpoint(name: str, built: Callable, ref: Callable) -> None:
    result = run_cli("params", "--model", str(built(name)), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == ref(name).num_parameters()


def test_relative_table_is_declared_and_counted_as_positions() -> None:
    from attnscope.params import param_shapes, report

    cfg = from_hf_config({k: v for k, v in real_config().items() if k != "_num_parameters"}, "x")
    assert param_shapes(cfg)["relative.weight"] == (32, 12)
    assert report(cfg).rows["positions"] == 514 * 768 + 32 * 12
    assert cfg.layer(0).attn.relative == RelativeSpec(32, 128, True)
    assert cfg.n_ctx == 512 and cfg.pos_offset == 2


# ---------------------------------------------------------------------- CLI and bad configs


@pytest.mark.parametrize("name", NAMES)
def test_attend_and_heads_cli(name: str, built: Callable) -> None:
    folder = str(built(name))
    result = run_cli("attend", mm.MPNET_TEXT, "--model", folder, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    result = run_cli("heads", "--model", folder, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["layers"]) == LAYERS


@pytest.mark.parametrize(("edit", "message"), [
    ({"relative_attention_num_buckets": 16}, "at least 32 rows"),
    ({"max_position_embeddings": 2}, "above 2"),
    ({"hidden_act": "swish"}, "hidden_act"),
])
def test_bad_configs_are_one_line(edit: dict[str, Any], message: str, tmp_path: Path) -> None:
    raw = {**{k: v for k, v in real_config().items() if k != "_num_parameters"}, **edit}
    with pytest.raises(ConfigError, match=message):
        from_hf_config(raw, "bad")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    result = run_cli("params", "--config", str(path))
    assert result.exit_code != 0
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 2  # the line, and at most its hint


@pytest.mark.parametrize(("spec", "message"), [
    (RelativeSpec(3, 128, True), "at least 4"),
    (RelativeSpec(1, 128, False), "at least 2"),
    (RelativeSpec(32, 8, True), "above 8"),
    (RelativeSpec(32, 8, False), "above 16"),
    (RelativeSpec(32, 128, True, rows=31), "at least 32 rows"),
    (RelativeSpec(2**40, 128, True), "up to 2\\*\\*31"),
])
def test_bad_relative_specs_are_refused(spec: RelativeSpec, message: str) -> None:
    """A layer kind's relative bias is checked where the kind is (template or stack)."""
    cfg = from_hf_config({k: v for k, v in real_config().items() if k != "_num_parameters"}, "x")
    bad = cfg.layer(0).with_attn(relative=spec)
    with pytest.raises(ConfigError, match=message):
        replace(cfg, layer_template=bad)
    with pytest.raises(ConfigError, match=message):
        replace(cfg, kinds=type(cfg.stack).of([bad] * cfg.n_layers))


def test_one_table_per_stack() -> None:
    cfg = from_hf_config({k: v for k, v in real_config().items() if k != "_num_parameters"}, "x")
    other = cfg.layer(0).with_attn(relative=RelativeSpec(32, 64, True))
    with pytest.raises(ConfigError, match="one relative position table"):
        replace(cfg, kinds=type(cfg.stack).of([cfg.layer(0)] * 11 + [other]))


def test_causal_bias_for_a_decoder_stack() -> None:
    """T5's decoder will take the same module with bidirectional=False: keys after the
    query share bucket 0, so the bias a causal layer sees depends on how far back a key is."""
    from attnscope.parts.relative import RelativeBias

    module = RelativeBias(RelativeSpec(32, 128, bidirectional=False), n_heads=2)
    with torch.no_grad():
        module.weight.copy_(torch.arange(64, dtype=torch.float32).view(32, 2))
    q, k = torch.tensor([5, 299]), torch.arange(300)
    with torch.no_grad():
        got = module.for_pass(300)(q, k)  # (2, 2, 300)
        want = module.weight[relative_bucket(k[None, :] - q[:, None], 32, 128, False)].permute(2, 0, 1)
    assert torch.equal(got, want)
    weight = module.weight.detach()
    assert torch.equal(got[:, 0, 5:], weight[0][:, None].expand(2, 295))  # the query and keys after it
    assert math.isclose(float(got[0, 1, 0]), float(weight[31, 0]))  # 299 back: the last bucket
