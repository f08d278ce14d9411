"""One process, an encoder-decoder's blocks placed across devices (`--device cuda:0,cuda:1`,
issue 30): the split's one ordered list (the encoder's layers, then the decoder's) as
`--pipeline` cuts it, each block on its device, the encoder's final states moved to each
device holding decoder layers (once per decoding with the cache), each stack's per-pass
relative table (T5) copied to each device running a layer of it.

This machine has no GPU, so the CPU tests place blocks across two "devices" that are both
the CPU, as tests/test_pipeline.py's placement tests do, one of them named with an index
(`cpu:0`): torch keeps every CPU tensor on device "cpu", so `cpu:0` differs from every
tensor's device and the stream, the pass's state and the encoder's states go through every
move a second GPU would take them through (moves that copy nothing here). On them attend
--target (every part, --save), heads --target and generate equal the one-device run exactly,
on the tiny T5 v1.0 (relative tables in both stacks, tied head), BART (learned positions,
no final norms) and a T5 GGUF. Which device each block's parameters sit on is checked with a
second device the CPU cannot compute on but can load onto (`meta`); where each cache entry
sits, on real devices, by the GPU tests, which skip cleanly without one (two for
`--device cuda:0,cuda:1`; one GPU beside the CPU for the rest).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from attnscope import api, pipeline
from attnscope.model import KVCache
from cli_runs import run

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models_seq2seq  # noqa: E402

SOURCE = "The fluffy creature sat on the mat and looked at the moon every night."
TARGET = "A fluffy blue creature jumps over the lazy dog every morning."
CPU = torch.device("cpu")
TWO = [CPU, torch.device("cpu", 0)]  # two "devices" that are both the CPU, every move taken (module docstring)
LIST = "cuda:0,cuda:1"
BOUND = 1e-5  # tests/test_chunks.py: float32 rounding only, on weights in 0..1 (another device's kernels)


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`seq2seq(name) -> Path`: the tiny T5 v1.0 or BART checkpoint, built once."""
    return tiny_models_seq2seq.builds(tmp_path_factory)


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda:0,cuda:1` reads as the two CPU "devices" (`TWO`) in this process."""
    monkeypatch.setattr(pipeline, "parse_devices", lambda device: list(TWO) if device == LIST else None)


def placed(folder: Path | str, where: list[torch.device]) -> Any:
    """The model with every block on its device in `where` (the encoder's layers, then the
    decoder's), as `placement.load_placed` loads it for the split's placement."""
    cfg = api.open_source(str(folder)).config
    n_dec = len(cfg.decoder) if cfg.decoder is not None else 0
    assert len(where) == cfg.n_layers + n_dec
    share = pipeline.Share(range(cfg.n_layers), True, True, cfg.tied_embeddings, where, range(n_dec))
    return api.load(str(folder), str(on_device(where[0])), "float32", share=share)  # cpu:0's tensors: "cpu"


def where_it_sits(m: Any, cache: KVCache | None = None) -> dict[str, set[torch.device]]:
    """The devices of each block's parameters (`blocks.i`, `decoder.blocks.i`), of what sits
    with the embeddings (`outside`: every other parameter), and, given a decoding's cache,
    of each decoder layer's self-attention keys and values (`cache.i`), its cross-attention
    keys and values (`cross.i`) and the encoder's states moved to each device (`memory.<device>`)."""
    net = m.model
    out: dict[str, set[torch.device]] = {}
    blocks = {f"blocks.{i}": b for i, b in enumerate(net.blocks)}
    blocks.update({f"decoder.blocks.{i}": b for i, b in enumerate(net.decoder.blocks)})
    for name, block in blocks.items():
        out[name] = {p.device for p in block.parameters()}
    out["outside"] = {p.device for n, p in net.named_parameters() if not n.startswith(("blocks.", "decoder.blocks."))}
    if cache is not None:
        for i in range(len(net.decoder.blocks)):
            out[f"cache.{i}"] = {t.device for t in (cache.k[i], cache.v[i])}
            out[f"cross.{i}"] = {t.device for t in cache.cross[i]}
        for device, memory in cache.memory.items():
            out[f"memory.{device}"] = {memory.device}
    return out


@torch.inference_mode()
def decoding(m: Any, steps: int = 3) -> tuple[KVCache, list[torch.Tensor]]:
    """A few greedy steps through the decoder's cache: the cache, and each step's logits (CPU)."""
    from attnscope import seq2seq

    cfg = m.config
    memory = seq2seq.encode(m.model, m._ids(m.tokenize(SOURCE).ids))
    cache, token, out = KVCache(len(cfg.decoder)), int(cfg.extra.get("decoder_start_token_id", 0)), []
    for _ in range(steps):
        x = m.model.decoder(m._ids([token]), m.model.embed.tok, memory, cache=cache)
        logits = m.model.logits(x)[0].cpu()
        out.append(logits)
        token = int(logits.argmax())
    return cache, out


# ------------------------------------------------------------------ the split and where the blocks go


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_the_placement_is_the_pipelines_split_over_both_stacks(name: str, seq2seq: Callable[[str], Path]) -> None:
    cfg = api.open_source(str(seq2seq(name))).config
    where = pipeline.placement(cfg, TWO)
    ranges = pipeline.split(cfg, 2)
    assert where == [TWO[k] for k, r in enumerate(ranges) for _ in r]  # one range a device, the encoder's then the decoder's
    m = pipeline.load_placed(str(seq2seq(name)), TWO, "float32")
    assert m.model.placement == where[:cfg.n_layers] and m.model.decoder.placement == where[cfg.n_layers:]
    assert not any(p.is_meta for p in m.model.parameters())  # every parameter loaded once, none left behind


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_each_block_loads_onto_its_device_and_the_rest_onto_the_first(name: str,
                                                                       seq2seq: Callable[[str], Path]) -> None:
    """Alternating devices, the second one the CPU can load onto but not compute on: each
    encoder and decoder block's parameters sit on its own, the embeddings, final norms,
    relative tables and head on the first."""
    meta = torch.device("meta")
    cfg = api.open_source(str(seq2seq(name))).config
    n = cfg.n_layers + len(cfg.decoder)
    where = [CPU if i % 2 == 0 else meta for i in range(n)]
    got = where_it_sits(placed(seq2seq(name), where))
    expected = {f"blocks.{i}": {where[i]} for i in range(cfg.n_layers)}
    expected.update({f"decoder.blocks.{i}": {where[cfg.n_layers + i]} for i in range(len(cfg.decoder))})
    expected["outside"] = {CPU}
    assert got == expected


# ------------------------------------------------------------------ equal to one device, exactly


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_patterns_and_a_decoding_equal_one_device_on_every_alternation(name: str,
                                                                       seq2seq: Callable[[str], Path]) -> None:
    """Every block on the other device from its neighbours: the stream and the encoder's
    states move at every block, and the three parts' patterns, the logits and a decoding
    through the cache equal the plain load's bit for bit."""
    from attnscope import seq2seq as s2s

    cfg = api.open_source(str(seq2seq(name))).config
    n = cfg.n_layers + len(cfg.decoder)
    plain = api.load(str(seq2seq(name)), "cpu", "float32")
    for where in ([TWO[i % 2] for i in range(n)], [TWO[(i + 1) % 2] for i in range(n)]):
        m = placed(seq2seq(name), where)
        src, dec = m._ids(m.tokenize(SOURCE).ids), m._ids([0, *m.tokenize(TARGET, add_special_tokens=False).ids])
        a, b = s2s.patterns(m.model, src, dec), s2s.patterns(plain.model, src, dec)
        for part in ("encoder", "decoder", "cross", "logits"):
            assert torch.equal(getattr(a, part), getattr(b, part)), part
        (cache, got), (_, want) = decoding(m), decoding(plain)
        assert all(torch.equal(x, y) for x, y in zip(got, want))
        assert set(cache.memory) == set(TWO)  # the encoder's states where they began and moved to, once a decoding


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_the_encoders_states_move_once_a_device_per_decoding(name: str, seq2seq: Callable[[str], Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each copy of the encoder's states made for a device: one for the second device over a
    four-step decoding (the cache keeps it), one a pass without a cache."""
    from attnscope import seq2seq as s2s

    copies: list[torch.device] = []
    real = s2s._moved

    def spy(state: Any, device: torch.device, moved: dict[torch.device, torch.Tensor]) -> Any:
        if device not in moved:
            copies.append(device)
        return real(state, device, moved)

    monkeypatch.setattr(s2s, "_moved", spy)
    cfg = api.open_source(str(seq2seq(name))).config
    m = placed(seq2seq(name), [TWO[i % 2] for i in range(cfg.n_layers + len(cfg.decoder))])
    decoding(m, steps=4)
    assert copies == [TWO[1]]
    copies.clear()
    src, dec = m._ids(m.tokenize(SOURCE).ids), m._ids([0, 5, 6])
    s2s.patterns(m.model, src, dec)
    assert copies == [TWO[1]]


@pytest.mark.parametrize("name", ["t5", "bart"])
@pytest.mark.parametrize("part", ["encoder", "decoder", "cross"])
def test_attend_target_save_equals_one_device(name: str, part: str, tmp_path: Path, two_cpus: None,
                                              seq2seq: Callable[[str], Path]) -> None:
    args = ["attend", SOURCE, "--target", TARGET, "--model", seq2seq(name), "--json", "--view", "topk",
            "--layer", "all", "--part", part]
    a = run(*args, "--device", "cpu", "--save", tmp_path / "one.npz")
    b = run(*args, "--device", LIST, "--save", tmp_path / "two.npz")
    assert a.exit_code == 0, a.stderr
    assert b.exit_code == 0, b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    ja.pop("saved", None), jb.pop("saved", None)
    assert ja == jb
    with np.load(tmp_path / "one.npz") as x, np.load(tmp_path / "two.npz") as y:  # every part, whatever --part shows
        assert set(x.files) == set(y.files) >= {"encoder_attentions", "decoder_attentions", "cross_attentions"}
        for key in x.files:
            assert np.array_equal(x[key], y[key]), key
            if x[key].dtype.kind == "f":
                assert float(np.abs(x[key]).max()) > 0.05, key  # patterns, not zeros


@pytest.mark.parametrize("name", ["t5", "bart"])
@pytest.mark.parametrize("part", ["cross", "encoder", "decoder"])
def test_heads_target_equals_one_device(name: str, part: str, two_cpus: None, seq2seq: Callable[[str], Path]) -> None:
    args = ["heads", SOURCE, "--target", TARGET, "--model", seq2seq(name), "--json", "--part", part]
    a, b = run(*args, "--device", "cpu"), run(*args, "--device", LIST)
    assert a.exit_code == 0, a.stderr
    assert b.exit_code == 0, b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["scores"] and ja == jb


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_generate_equals_one_device(name: str, tmp_path: Path, two_cpus: None,
                                    seq2seq: Callable[[str], Path]) -> None:
    """Token by token through the cache: each decoder layer's self-attention cache and cross
    keys and values on its device, the encoder's states moved once per decoding."""
    args = ["generate", SOURCE, "--model", seq2seq(name), "--json", "-n", "6", "--ignore-eos", "--layer", "all"]
    a = run(*args, "--device", "cpu", "--save", tmp_path / "one.npz")
    b = run(*args, "--device", LIST, "--save", tmp_path / "two.npz")
    assert a.exit_code == 0, a.stderr
    assert b.exit_code == 0, b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert len(ja["steps"]) == 6

    def timeless(doc: Any) -> Any:
        if isinstance(doc, dict):
            return {k: timeless(v) for k, v in doc.items() if k not in ("seconds", "saved") and not k.endswith("per_s")}
        return [timeless(v) for v in doc] if isinstance(doc, list) else doc

    assert timeless(ja) == timeless(jb)
    with np.load(tmp_path / "one.npz") as x, np.load(tmp_path / "two.npz") as y:
        assert set(x.files) == set(y.files) >= {"cross_attentions", "generated_token_ids"}
        for key in x.files:
            assert np.array_equal(x[key], y[key]), key


def test_a_t5_gguf_placed_equals_one_device(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    import test_gguf_t5 as t5
    from attnscope import seq2seq as s2s

    path = t5.write_t5_gguf(t5.build_t5(tmp_path / "t5", v11=True), tmp_path / "t5.gguf")
    m, plain = pipeline.load_placed(str(path), TWO, "float32"), api.load(str(path), "cpu", "float32")
    cfg = m.config
    assert m.model.placement + m.model.decoder.placement == pipeline.placement(cfg, TWO)
    assert TWO[1] in m.model.placement + m.model.decoder.placement
    src, dec = m._ids(m.tokenize(SOURCE).ids), m._ids([0, *m.tokenize(TARGET, add_special_tokens=False).ids])
    a, b = s2s.patterns(m.model, src, dec), s2s.patterns(plain.model, src, dec)
    for part in ("encoder", "decoder", "cross", "logits"):
        assert torch.equal(getattr(a, part), getattr(b, part)), part
    (_, got), (_, want) = decoding(m), decoding(plain)
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    meta = torch.device("meta")  # each block of the file read onto its own device, the rest onto the first
    where = [CPU if i % 2 == 0 else meta for i in range(cfg.n_layers + len(cfg.decoder))]
    sits = where_it_sits(placed(path, where))
    assert sits.pop("outside") == {CPU}
    assert sits == {**{f"blocks.{i}": {where[i]} for i in range(cfg.n_layers)},
                    **{f"decoder.blocks.{i}": {where[cfg.n_layers + i]} for i in range(len(cfg.decoder))}}


# ------------------------------------------------------------------ on GPUs (skipped without them)


def expected_places(m: Any, where: list[torch.device]) -> dict[str, set[torch.device]]:
    """`where_it_sits` as it should read after `decoding` on blocks placed by `where`."""
    cfg = m.config
    n = cfg.n_layers
    first = where[0]
    out = {f"blocks.{i}": {where[i]} for i in range(n)}
    for i in range(len(cfg.decoder)):
        out[f"decoder.blocks.{i}"] = out[f"cache.{i}"] = out[f"cross.{i}"] = {where[n + i]}
    out["outside"] = {first}
    start = first if cfg.final_norm else where[n - 1]  # the encoder's states: after the final norm, with the embeddings
    out.update({f"memory.{d}": {d} for d in {start, *where[n:]}})  # kept once for each device, where they began too
    return out


def on_device(d: torch.device) -> torch.device:
    """What a tensor's `.device` reads after `.to(d)` (cuda:0 for cuda:0, cpu for cpu)."""
    return torch.empty(0, device=d).device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_the_cpu_and_a_gpu_alternating_equal_the_cpu(name: str, seq2seq: Callable[[str], Path]) -> None:
    """Blocks alternating between the CPU and the GPU: every move a real one (T5's relative
    tables copied to the GPU per pass), each block, cache entry and moved copy of the
    encoder's states on its device, the results the CPU's within float32 rounding."""
    from attnscope import seq2seq as s2s

    gpu = on_device(torch.device("cuda", 0))
    cfg = api.open_source(str(seq2seq(name))).config
    where = [CPU if i % 2 == 0 else gpu for i in range(cfg.n_layers + len(cfg.decoder))]
    m, plain = placed(seq2seq(name), where), api.load(str(seq2seq(name)), "cpu", "float32")
    src, dec = m._ids(m.tokenize(SOURCE).ids), m._ids([0, *m.tokenize(TARGET, add_special_tokens=False).ids])
    a, b = s2s.patterns(m.model, src, dec), s2s.patterns(plain.model, src, dec)
    for part in ("encoder", "decoder", "cross"):
        torch.testing.assert_close(getattr(a, part), getattr(b, part), atol=BOUND, rtol=0)
    cache, got = decoding(m)
    _, want = decoding(plain)
    assert [int(x.argmax()) for x in got] == [int(y.argmax()) for y in want]
    assert where_it_sits(m, cache) == expected_places(m, where)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_blocks_across_two_gpus_equal_the_cpu(name: str, tmp_path: Path, seq2seq: Callable[[str], Path]) -> None:
    devices = pipeline.parse_devices(LIST)
    assert devices is not None
    m = pipeline.load_placed(str(seq2seq(name)), devices, "float32")
    cache, _ = decoding(m)
    assert where_it_sits(m, cache) == expected_places(m, pipeline.placement(m.config, devices))
    args = ["attend", SOURCE, "--target", TARGET, "--model", seq2seq(name), "--json", "--view", "topk", "--layer", "all",
            "--dtype", "float32"]
    a = run(*args, "--device", "cpu", "--save", tmp_path / "one.npz")
    b = run(*args, "--device", LIST, "--save", tmp_path / "two.npz")
    assert a.exit_code == 0 and b.exit_code == 0, (a.stderr, b.stderr)
    with np.load(tmp_path / "one.npz") as x, np.load(tmp_path / "two.npz") as y:
        for key in x.files:
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(y[key], x[key], atol=BOUND, rtol=0, err_msg=key)
            else:
                assert np.array_equal(x[key], y[key]), key
    args = ["generate", SOURCE, "--model", seq2seq(name), "--json", "-n", "6", "--ignore-eos", "--dtype", "float32"]
    a, b = run(*args, "--device", "cpu"), run(*args, "--device", LIST)
    assert a.exit_code == 0 and b.exit_code == 0, (a.stderr, b.stderr)
    assert json.loads(a.stdout)["generated"]["ids"] == json.loads(b.stdout)["generated"]["ids"]
