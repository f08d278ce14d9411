"""Property tests (hypothesis) for the parts that take untrusted input or do index maths.

* `checkpoint.read_header` on random bytes and on mutated valid safetensors files: it
  succeeds with a consistent result or raises `CheckpointError`, nothing else;
* `config.from_hf_config` on mutated config.json dicts: a `ConfigError` (or another of the
  project's errors) or a config that really builds a model;
* `analysis.select` on random selector strings: `SelectionError` or sorted in-range ints;
* `analysis.TopKProbe` fed probability chunks equals `torch.topk` on the whole pattern;
* `analysis.normalised_entropy` lies in [0, 1];
* `model.visible` keeps exactly min(i + 1, W) keys for row i of a causal sliding window,
  and the model's chunked attention honours it.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from attnscope import analysis, checkpoint
from attnscope import model as model_mod
from attnscope import parts
from attnscope.hooks import site_layer
from attnscope.parts.attention import MaskRule
from attnscope.parts.positions import rope_inv_freq
from attnscope.architectures._common import layer_kind
from attnscope.config import ModelConfig, from_hf_config, read_config_json
from attnscope.errors import AttnscopeError, CheckpointError, ConfigError, SelectionError

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------ safetensors headers


def valid_file() -> bytes:
    """A small, valid safetensors file written by the safetensors library itself."""
    from safetensors.torch import save

    tensors = {
        "a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b.bias": torch.arange(4, dtype=torch.int64),
        "c": torch.ones(3, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4),
    }
    return save(tensors, metadata={"format": "pt"})


VALID = valid_file()
HEADER_LEN = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8 : 8 + HEADER_LEN])
DATA = VALID[8 + HEADER_LEN :]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["F32", "I64", "BF16", "F16", "U8", "__metadata__", "f32"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def check_infos(infos: dict[str, Any], size: int, header_len: int) -> None:
    data_size = size - 8 - header_len
    spans = []
    for name, info in infos.items():
        assert info.name == name
        assert info.dtype in checkpoint.DTYPE_SIZES
        assert all(isinstance(s, int) and s >= 0 for s in info.shape)
        assert 0 <= info.start <= info.end <= data_size
        assert info.end - info.start == math.prod(info.shape) * checkpoint.DTYPE_SIZES[info.dtype]
        if info.end > info.start:
            spans.append((info.start, info.end))
    spans.sort()
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))


def read(scratch: Path, blob: bytes) -> dict[str, Any] | None:
    path = scratch / "fuzz.safetensors"
    path.write_bytes(blob)
    try:
        infos = checkpoint.read_header(path)
    except CheckpointError as exc:
        assert str(path) in exc.message  # the error names the file
        return None
    length = struct.unpack("<Q", blob[:8])[0]
    check_infos(infos, len(blob), length)
    return infos


def test_valid_file_reads(scratch: Path) -> None:
    infos = read(scratch, VALID)
    assert infos is not None
    assert {k: v.shape for k, v in infos.items()} == {"a.weight": (2, 3), "b.bias": (4,), "c": (3,), "empty": (0, 4)}


@FAST
@given(blob=st.binary(max_size=256))
@example(blob=b"")
@example(blob=b"\x00" * 8)
@example(blob=struct.pack("<Q", 2) + b"{}")
@example(blob=struct.pack("<Q", 2**64 - 1) + b"{}")
@example(blob=struct.pack("<Q", 4) + b"null")
@example(blob=struct.pack("<Q", 2) + b"\xff\xfe")
def test_read_header_random_bytes(scratch: Path, blob: bytes) -> None:
    read(scratch, blob)


@FAST
@given(header=st.dictionaries(st.text(max_size=8), json_values, max_size=4), data=st.binary(max_size=64))
def test_read_header_random_json(scratch: Path, header: dict[str, Any], data: bytes) -> None:
    blob = json.dumps(header).encode()
    read(scratch, struct.pack("<Q", len(blob)) + blob + data)


@FAST
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(VALID))))
def test_read_header_mutated_bytes(scratch: Path, flips: list[tuple[int, int]], cut: int | None) -> None:
    blob = bytearray(VALID)
    for pos, byte in flips:
        blob[pos] = byte
    read(scratch, bytes(blob[:cut] if cut is not None else blob))


@FAST
@given(
    tensor=st.sampled_from(sorted(k for k in HEADER if k != "__metadata__")),
    field=st.sampled_from(["dtype", "shape", "data_offsets", None]),
    value=json_values,
    extra=st.binary(max_size=16),
)
@example(tensor="a.weight", field="dtype", value=["F32"], extra=b"")
@example(tensor="a.weight", field="dtype", value={"F32": 1}, extra=b"")
@example(tensor="a.weight", field="shape", value=[True, 3], extra=b"")
@example(tensor="a.weight", field="data_offsets", value=[0.0, 24.0], extra=b"")
@example(tensor="a.weight", field=None, value=[1, 2], extra=b"")
def test_read_header_mutated_entries(scratch: Path, tensor: str, field: str | None, value: Any, extra: bytes) -> None:
    header = json.loads(json.dumps(HEADER))
    if field is None:
        header[tensor] = value
    else:
        header[tensor][field] = value
    blob = json.dumps(header).encode()
    read(scratch, struct.pack("<Q", len(blob)) + blob + DATA + extra)


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_read_header_deeply_nested_json(scratch: Path, depth: int) -> None:
    """A hostile header nested deeper than Python's recursion limit is still just a
    corrupt file, not a RecursionError."""
    blob = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    read(scratch, struct.pack("<Q", len(blob)) + blob)


def test_read_header_metadata_of_any_shape(scratch: Path) -> None:
    for meta in (None, 3, "x", [1], {"a": {"b": 1}}):
        header = {**HEADER, "__metadata__": meta}
        blob = json.dumps(header).encode()
        read(scratch, struct.pack("<Q", len(blob)) + blob + DATA)


# ----------------------------------------------------------------- config.json dicts


BASES: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 100, "n_positions": 64},
    "bert": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64, "type_vocab_size": 2,
             "architectures": ["BertModel"]},
    "llama": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64,
              "rope_theta": 10000.0},
    "llama3": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    "mistral": {"model_type": "mistral", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100,
                "max_position_embeddings": 64, "sliding_window": 4},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64,
              "use_sliding_window": True, "sliding_window": 4},
}
KEYS = sorted({k for base in BASES.values() for k in base} | {
    "head_dim", "hidden_act", "activation_function", "layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps",
    "tie_word_embeddings", "n_inner", "rope_parameters", "attention_bias", "position_embedding_type", "is_decoder",
    "torch_dtype", "dtype", "n_ctx",
})
small_values = st.none() | st.booleans() | st.integers(-3, 70) | st.floats(-2, 70, allow_nan=False) | st.sampled_from(
    ["gelu", "silu", "relu", "gelu_new", "swish", "llama3", "default", "yarn", "32", "", "bert", "float16"])
config_values = small_values | json_values | st.floats() | st.integers(min_value=2**31, max_value=2**200)
rope_dicts = st.dictionaries(
    st.sampled_from(["rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
                     "original_max_position_embeddings", "rope_theta"]),
    small_values | st.sampled_from(["llama3", "default"]), max_size=6)


@st.composite
def mutated_configs(draw: Any, values: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(draw(st.sampled_from(sorted(BASES)).map(BASES.get))))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True)):
        if draw(st.booleans()) and key in raw:
            del raw[key]
        else:
            raw[key] = draw(values)
    if draw(st.integers(0, 3)) == 0:
        raw[draw(st.sampled_from(["rope_scaling", "rope_parameters"]))] = draw(rope_dicts)
    return raw


def builds(cfg: ModelConfig) -> None:
    """What a valid config promises: the model, its parameter list, masks and RoPE."""
    from attnscope.params import param_shapes

    with torch.device("meta"):
        model_mod.Transformer(cfg)
    shapes = param_shapes(cfg)
    assert all(isinstance(d, int) and d >= 0 for shape in shapes.values() for d in shape)
    analysis.visible_counts(cfg, 5)
    if cfg.positions == "rope":
        inv = rope_inv_freq(cfg)
        assert torch.isfinite(inv).all(), f"RoPE frequencies are not finite for {cfg.rope_scaling}"


@FAST
@given(raw=mutated_configs(config_values))
@example(raw={**BASES["llama"], "rope_parameters": [1]})
@example(raw={**BASES["llama"], "rope_scaling": "yarn"})
@example(raw={**BASES["bert"], "hidden_size": "32"})
@example(raw={**BASES["bert"], "hidden_size": 32.0})
@example(raw={**BASES["bert"], "num_attention_heads": 0})
@example(raw={**BASES["bert"], "hidden_size": 2**100})
@example(raw={**BASES["bert"], "layer_norm_eps": None})
@example(raw={**BASES["bert"], "architectures": 5})
@example(raw={**BASES["gpt2"], "n_embd": None})
@example(raw={**BASES["gpt2"], "n_embd": [32]})
@example(raw={**BASES["mistral"], "sliding_window": "4"})
@example(raw={"model_type": ["bert"]})
@example(raw={"model_type": None})
@example(raw={})
def test_from_hf_config_raises_only_project_errors(raw: dict[str, Any]) -> None:
    try:
        cfg = from_hf_config(raw, name="fuzz")
    except AttnscopeError as exc:
        assert isinstance(exc, ConfigError), type(exc)
        assert exc.message
        return
    assert isinstance(cfg, ModelConfig)


@FAST
@given(raw=mutated_configs(small_values))
@example(raw={**BASES["llama3"], "rope_scaling": {"rope_type": "llama3"}})
@example(raw={**BASES["llama3"], "rope_scaling": {"rope_type": "llama3", "factor": "x"}})
@example(raw={**BASES["llama3"], "rope_scaling": {"rope_type": "llama3", "factor": None}})
@example(raw={**BASES["bert"], "type_vocab_size": "2"})
@example(raw={**BASES["bert"], "type_vocab_size": -1})
@example(raw={**BASES["bert"], "type_vocab_size": 2.0})
@example(raw={**BASES["mistral"], "sliding_window": True})
@example(raw={**BASES["mistral"], "sliding_window": 4.0})
@example(raw={**BASES["llama"], "head_dim": 2.5})
def test_valid_config_builds(raw: dict[str, Any]) -> None:
    """A config that from_hf_config accepts is one the model can be built from: bad values
    are refused up front with a ConfigError, not at load or run time."""
    try:
        cfg = from_hf_config(raw, name="fuzz")
    except ConfigError:
        return
    builds(cfg)
    if cfg.sliding_window is not None:
        assert type(cfg.sliding_window) is int and cfg.sliding_window > 0, cfg.sliding_window


@FEW
@given(text=st.text(max_size=60) | json_values.map(json.dumps) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_read_config_json_random_text(scratch: Path, text: str) -> None:
    path = scratch / "config.json"
    path.write_text(text, encoding="utf-8")
    try:
        from_hf_config(read_config_json(path), name="fuzz")
    except AttnscopeError as exc:
        assert isinstance(exc, ConfigError), type(exc)


# -------------------------------------------------------------------------- select


selector_text = st.lists(
    st.sampled_from(["0", "1", "2", "3", "7", "-1", "-2", "-9", "10", "99", "-", ":", ",", " ", "all", "ALL", "*",
                     "1-3", "3-1", "2:", ":2", "-2:", "::", "x", "", "+1", "1.0", "٣", "1_0"]),
    max_size=6,
).map("".join)


def check_selection(result: list[int], count: int) -> None:
    assert result, "a selection is never empty"
    assert result == sorted(set(result))
    assert all(isinstance(i, int) and 0 <= i < count for i in result)


@FAST
@given(spec=st.text(max_size=12) | selector_text, count=st.integers(1, 40))
def test_select_random_strings(spec: str, count: int) -> None:
    try:
        result = analysis.select(spec, count, "layer")
    except SelectionError as exc:
        assert exc.exit_code == 2
        assert "--layer" in exc.message or "layer" in exc.message
        return
    check_selection(result, count)


@FAST
@given(spec=st.integers(-100, 100) | st.lists(st.integers(-50, 50), max_size=5), count=st.integers(1, 40))
def test_select_ints_and_lists(spec: int | list[int], count: int) -> None:
    items = [spec] if isinstance(spec, int) else spec
    try:
        result = analysis.select(spec, count, "head")
    except SelectionError:
        assert any(not -count <= i < count for i in items) or not items
        return
    check_selection(result, count)
    assert result == sorted({i % count for i in items})


@FAST
@given(count=st.integers(1, 30), a=st.integers(-35, 35), b=st.integers(-35, 35))
def test_select_meanings(count: int, a: int, b: int) -> None:
    """Each form means what the help says: an index, a range a-b, a slice a:b."""
    if -count <= a < count:
        assert analysis.select(str(a), count) == [a % count]
    else:
        with pytest.raises(SelectionError):
            analysis.select(str(a), count)
    if 0 <= a <= b < count:
        assert analysis.select(f"{a}-{b}", count) == list(range(a, b + 1))
    want = list(range(count))[a:b]
    if want:
        assert analysis.select(f"{a}:{b}", count) == want
    else:
        with pytest.raises(SelectionError):
            analysis.select(f"{a}:{b}", count)
    assert analysis.select("all", count) == list(range(count))


# ------------------------------------------------------------------ top-k and entropy


def random_patterns(seed: int, layers: int, heads: int, n: int, causal: bool, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, n, n, generator=gen) * scale  # (L, H, n, n)
    if causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1)


@FAST
@given(
    seed=st.integers(0, 2**31),
    n_layers=st.integers(1, 3),
    n_heads=st.integers(1, 4),
    n=st.integers(1, 12),
    k=st.integers(1, 15),
    chunk=st.integers(1, 12),
    causal=st.booleans(),
    short_rows=st.booleans(),
    scale=st.sampled_from([0.0, 1.0, 5.0, 50.0]),
    data=st.data(),
)
def test_topk_probe_matches_torch_topk(seed: int, n_layers: int, n_heads: int, n: int, k: int, chunk: int,
                                       causal: bool, short_rows: bool, scale: float, data: Any) -> None:
    """Chunks arrive as model.Probe says: (H, c, K) with K = T, or for a causal model
    K = the chunk's last query + 1 (the keys after it are exactly 0 and left out)."""
    probs = random_patterns(seed, n_layers, n_heads, n, causal, scale)
    layers = data.draw(st.lists(st.integers(0, n_layers - 1), min_size=1, unique=True).map(sorted))
    heads = data.draw(st.lists(st.integers(0, n_heads - 1), min_size=1, unique=True).map(sorted))
    probe = analysis.TopKProbe(layers, heads, n, k)
    for layer in range(n_layers):
        if not probe.wants(layer):
            continue
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            K = stop if (causal and short_rows) else n
            probe.pattern(layer, start, probs[layer, :, start:stop, :K])  # (H, c, K)
    kk = min(k, n)
    assert probe.weights.shape == probe.indices.shape == (len(layers), len(heads), n, kk)
    want = probs[layers][:, heads]  # (L_sel, H_sel, n, n)
    w, _ = torch.topk(want, kk, dim=-1)
    assert torch.equal(probe.weights, w)
    assert ((probe.weights >= 0) & (probe.weights <= 1)).all()
    assert (probe.weights[..., :-1] >= probe.weights[..., 1:]).all()
    assert ((probe.indices >= 0) & (probe.indices < n)).all()
    assert torch.equal(torch.gather(want, -1, probe.indices), probe.weights)  # ties may reorder keys
    assert (probe.indices.sort(-1).values.diff(dim=-1) > 0).all() if kk > 1 else True  # no key twice


@st.composite
def distributions(draw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows over T keys of which the first `count` are visible, the rest exactly 0."""
    T = draw(st.integers(1, 300))
    rows = draw(st.integers(1, 4))
    counts = torch.tensor(draw(st.lists(st.integers(1, T), min_size=rows, max_size=rows)))
    kind = draw(st.sampled_from(["random", "uniform", "onehot", "peaked", "tiny"]))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    probs = torch.zeros(rows, T)
    for r, c in enumerate(counts.tolist()):
        if kind == "uniform":
            probs[r, :c] = 1.0 / c
        elif kind == "onehot":
            probs[r, draw(st.integers(0, c - 1))] = 1.0
        else:
            scale = {"random": 1.0, "peaked": 30.0, "tiny": 120.0}[kind]
            probs[r, :c] = torch.softmax(torch.randn(c, generator=gen) * scale, dim=-1)
    return probs, counts


@FAST
@given(dist=distributions())
@example(dist=(torch.full((1, 7), 1 / 7), torch.tensor([7])))
@example(dist=(torch.full((1, 10000), 1 / 10000), torch.tensor([10000])))
def test_normalised_entropy_in_unit_interval(dist: tuple[torch.Tensor, torch.Tensor]) -> None:
    probs, counts = dist
    e = analysis.normalised_entropy(probs, counts)
    assert e.shape == counts.shape
    assert torch.isfinite(e).all()
    assert ((e >= 0) & (e <= 1)).all(), e.tolist()


@FAST
@given(T=st.integers(1, 200))
def test_normalised_entropy_extremes(T: int) -> None:
    uniform = torch.full((1, T), 1.0 / T)
    onehot = torch.zeros(1, T)
    onehot[0, T - 1] = 1.0
    counts = torch.tensor([T])
    assert float(analysis.normalised_entropy(onehot, counts)) == 0.0
    want = 1.0 if T > 1 else 0.0
    assert abs(float(analysis.normalised_entropy(uniform, counts)) - want) < 1e-5


# ----------------------------------------------------------------------------- masks


def expected_row(i: int, n: int, causal: bool, window: int | None) -> list[int]:
    keys = range(n)
    if causal:
        keys = [j for j in keys if j <= i]
    if window is not None:
        keys = [j for j in keys if abs(i - j) < window]
    return list(keys)


@FAST
@given(n=st.integers(1, 70), window=st.one_of(st.none(), st.integers(1, 80)), causal=st.booleans(),
       data=st.data())
def test_visible_mask(n: int, window: int | None, causal: bool, data: Any) -> None:
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    pos = torch.arange(n)
    ok = MaskRule(causal, window).visible(pos[start:stop], pos)
    if not causal and window is None:
        assert ok is None
        return
    assert ok is not None and ok.shape == (stop - start, n) and ok.dtype == torch.bool
    for r, i in enumerate(range(start, stop)):
        kept = ok[r].nonzero().flatten().tolist()
        assert kept == expected_row(i, n, causal, window)
        if causal:
            assert len(kept) == min(i + 1, window if window is not None else n + 1)
    cfg = ModelConfig(family="llama", d_model=8, n_layers=1, n_heads=1, d_mlp=8, vocab_size=10, n_ctx=128,
                      causal=causal, positions="rope", norm="rmsnorm", act="silu", sliding_window=window)
    assert analysis.visible_counts(cfg, n)[start:stop].tolist() == ok.sum(-1).tolist()


class _Keep:
    """A probe keeping every layer's full pattern, as the chunks arrive."""

    def __init__(self, n_layers: int, n_heads: int, n: int) -> None:
        self.probs = torch.full((n_layers, n_heads, n, n), float("nan"))
        self.calls: list[tuple[int, int, int]] = []

    def wants(self, site: str, what: str) -> bool:
        return what == "pattern"

    def report(self, site: str, what: str, probs: torch.Tensor, start: int, k_start: int) -> None:
        """probs: (H, c, K), K <= T; keys K.. of these rows are exactly 0 (attnscope.hooks)."""
        layer = site_layer(site)
        c, K = probs.shape[1], probs.shape[2]
        self.calls.append((layer, start, c))
        self.probs[layer, :, start : start + c] = 0.0
        self.probs[layer, :, start : start + c, :K] = probs


def tiny_model(window: int | None, causal: bool, seed: int, dtype: torch.dtype = torch.float32) -> Any:
    from attnscope.params import param_shapes

    cfg = ModelConfig(family="llama", d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=32, vocab_size=50,
                      n_ctx=64, causal=causal, positions="rope", norm="rmsnorm", act="silu", layer_template=layer_kind(mlp="gated"),
                      tied_embeddings=False, sliding_window=window)
    gen = torch.Generator().manual_seed(seed)
    tensors = ((name, torch.randn(shape, generator=gen) * 0.5) for name, shape in param_shapes(cfg).items())
    return model_mod.build(cfg, tensors, dtype=dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 24), window=st.one_of(st.none(), st.integers(1, 28)), seed=st.integers(0, 2**31),
       chunk_rows=st.integers(1, 7))
def test_model_attention_honours_the_window(n: int, window: int | None, seed: int, chunk_rows: int) -> None:
    """Through the real forward pass, whole and in small query chunks: row i of every
    head puts weight on exactly the keys min(i + 1, W) back, and sums to 1."""
    # float64, so that whole and chunked passes differ only by the order of summing
    # (< 64 terms: ~1e-14), not float32 rounding, which varies by machine.
    net = tiny_model(window, True, seed, torch.float64)
    ids = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(seed))
    whole = _Keep(2, 4, n)
    net(ids, whole)
    assert not torch.isnan(whole.probs).any()
    torch.testing.assert_close(whole.probs.sum(-1), torch.ones(2, 4, n), atol=1e-5, rtol=0)
    for i in range(n):
        keys = (whole.probs[:, :, i] > 0).sum(-1)  # (L, H): nonzero keys in row i
        assert (keys == min(i + 1, window or n)).all(), (i, keys.tolist())
        lo = 0 if window is None else max(0, i - window + 1)
        assert (whole.probs[:, :, i, :lo] == 0).all() and (whole.probs[:, :, i, i + 1 :] == 0).all()
    # The same pattern when the queries are cut into chunks of `chunk_rows` rows.
    saved = parts.CHUNK_BYTES, parts.MIN_CHUNK_ROWS
    parts.CHUNK_BYTES = 4 * 4 * n * chunk_rows  # bytes of float32 scores for chunk_rows rows of 4 heads
    parts.MIN_CHUNK_ROWS = 1
    try:
        chunked = _Keep(2, 4, n)
        net(ids, chunked)
    finally:
        parts.CHUNK_BYTES, parts.MIN_CHUNK_ROWS = saved
    assert all(c <= chunk_rows for _, _, c in chunked.calls)
    torch.testing.assert_close(chunked.probs, whole.probs, atol=1e-12, rtol=0)
