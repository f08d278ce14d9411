"""`--pipeline` on GGUF files, and on Gemma 4 (per-layer inputs, KV-shared layers) (issue 30).

A GGUF is one memory-mapped file: each rank reads and dequantizes only the tensors of its
share (`api.load(share=…)` -> `sources.gguf.iter_gguf_tensors(keep=…)`). Checked two ways:
in one process, by recording every tensor `_dequantize` is asked for under each rank's
share; and under torchrun, by the same recording on each rank of a real pipelined run.
Two CPU processes (gloo) under `torchrun --nproc-per-node 2` give the one-process results
(attend --save, heads --json, generate --json) to the chunking bound of tests/test_pipeline.py.

Gemma 4: the per-layer inputs are computed on rank 0 (where the token embeddings live) and
travel with the residual stream; a KV-shared layer whose owner sits on an earlier rank
receives the owner's keys and values (this pass's and its cache's) with the stream.

Measures that read a layer's weights on rank 0: norm's focus view borrows its layer's W_O
(`Driver.fetch`), ALTI and Value Zeroing each block as it reports (`pipeline.LEND`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import tiny_gguf as tg
from attnscope import api, pipeline
from torchrun_helpers import BOUND, TEXT, documents, floats, one, same_floats, same_npz, two

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """tiny_gguf's files by name; "gemma4": the tiny Gemma 4 below as a `gemma4` GGUF
    (tiny_models_gemma4's writer: per-layer tables, KV-shared layers, rope_freqs)."""
    folder = tmp_path_factory.mktemp("gguf")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            if name == "gemma4":
                from transformers import Gemma4ForCausalLM

                from tiny_models_gemma4 import write_gguf as write_gemma4_gguf

                model = Gemma4ForCausalLM.from_pretrained(str(tiny_gemma4(folder / "gemma4"))).eval()
                made[name] = write_gemma4_gguf(folder / "gemma4.gguf", model)
            else:
                made[name] = tg.BUILDERS[name](folder / f"{name}.gguf")
        return made[name]

    return get


def tiny_gemma4(folder: Path) -> Path:
    import tiny_models_gemma4 as g4

    # 5 layers: local, global, local, local reading layer 2's keys, global reading layer 1's; per-layer inputs
    return g4.gemma4(folder)


def shares(cfg: Any, world: int = 2) -> list[pipeline.Share]:
    ranges = pipeline.split(cfg, world)
    return [pipeline.Share(r, i == 0, i == world - 1, cfg.tied_embeddings) for i, r in enumerate(ranges)]


def expected_reads(path: Path, share: pipeline.Share) -> set[str]:
    """The GGUF parameter tensors a share needs: its blocks', the embeddings first, the
    head last (the token table there too when tied: llama.cpp writes no output.weight then).
    (rope_freqs, a setting the config is read from on every rank, is no parameter: `params`.)"""
    from attnscope.sources.gguf import read_gguf

    out = set()
    for name in read_gguf(path).tensors:
        if name.startswith("blk."):
            if int(name.split(".")[1]) in share.layers:
                out.add(name)
        elif name.startswith("per_layer_"):  # Gemma 4's per-layer tables: with the embeddings
            if share.first:
                out.add(name)
        elif name in ("token_embd.weight", "position_embd.weight"):
            if share.first or (name == "token_embd.weight" and share.last and share.tied):
                out.add(name)
        elif name.startswith(("output_norm.", "output.")):
            if share.last:
                out.add(name)
    return out


def params(read: list[str]) -> list[str]:
    """The parameters among the tensors read, in order: the config's rope_freqs left out."""
    return [name for name in read if name != "rope_freqs.weight"]


@pytest.mark.parametrize("name", ["llama", "gpt2", "llama3", "gemma4"])
def test_each_share_reads_only_its_tensors(name: str, gguf_file: Callable[[str], Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor dequantized under a share is one the share needs, and every one it
    needs is there; the share's parameters equal the whole load's, the rest stay on meta."""
    import attnscope.sources.gguf as g

    path = gguf_file(name)
    whole = api.load(str(path), "cpu", "float32")
    full = dict(whole.model.named_parameters())
    read: list[str] = []
    dequantize = g._dequantize

    def recording(f: Any, t: Any, data: Any) -> Any:
        read.append(t.name)
        return dequantize(f, t, data)

    monkeypatch.setattr(g, "_dequantize", recording)
    every: set[str] = set()
    for share in shares(whole.model.cfg):
        read.clear()
        m = api.load(str(path), "cpu", "float32", share=share)
        assert sorted(params(read)) == sorted(expected_reads(path, share)), share  # each once, none of another rank's
        every |= set(read)
        for pname, p in m.model.named_parameters():
            if share.holds(pname):
                assert not p.is_meta and torch.equal(p, full[pname]), pname
            else:
                assert p.is_meta, pname
    from attnscope.sources.gguf import read_gguf

    assert every == set(read_gguf(path).tensors)  # between them, the ranks read the whole file


def test_blocks_placed_across_devices_load_a_gguf(gguf_file: Callable[[str], Path]) -> None:
    """The one-process placement (`--device cuda:0,cuda:1`) streams a GGUF's blocks the
    same way; two CPU "devices" give the plain load's patterns and logits."""
    cpu = torch.device("cpu")
    path = str(gguf_file("llama"))
    placed = pipeline.load_placed(path, [cpu, cpu], "float32")
    plain = api.load(path, "cpu", "float32")
    assert placed.model.placement == [cpu] * plain.n_layers
    assert not any(p.is_meta for p in placed.model.parameters())
    assert torch.equal(placed.attention(TEXT).probs, plain.attention(TEXT).probs)
    assert torch.equal(placed.logits(TEXT), plain.logits(TEXT))


# ------------------------------------------------------------------ two processes against one


RECORD = """
import atexit, os, sys
import attnscope.sources.gguf as g

read = []
dequantize = g._dequantize


def recording(f, t, data):
    read.append(t.name)
    return dequantize(f, t, data)


g._dequantize = recording
out = sys.argv[1]
atexit.register(lambda: open(f"{out}.{os.environ.get('RANK', 'one')}", "w").write("\\n".join(read)))
sys.argv = ["attnscope", *sys.argv[2:]]
from attnscope.cli import main

main()
"""


@pytest.mark.slow
def test_attend_save_of_a_gguf_equals_one_process_and_each_rank_reads_its_share(
        tmp_path: Path, gguf_file: Callable[[str], Path]) -> None:
    path = gguf_file("llama")  # untied, quantized Q4_0/Q4_1/Q8_0/F16, SentencePiece vocabulary from the file
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    args = ["attend", TEXT, "--model", path, "--view", "topk", "--json", "--layer", "all", "--head", "all"]
    a = one(tmp_path, *args, "--save", "one.npz")
    b = two(tmp_path, str(tmp_path / "read"), *args, "--save", "two.npz", "--pipeline", script=str(script))
    ja, jb = documents(a, b)  # rank 0 alone printed: one document
    for doc in (ja, jb):
        doc.pop("saved", None), doc.pop("files", None)
    assert ja == jb
    same_npz(tmp_path / "one.npz", tmp_path / "two.npz")
    cfg = api.open_source(str(path)).config
    for rank, share in enumerate(shares(cfg)):
        read = (tmp_path / f"read.{rank}").read_text().split()
        assert sorted(params(read)) == sorted(expected_reads(path, share)), rank


@pytest.mark.slow
def test_heads_json_of_a_gguf_equals_one_process(tmp_path: Path, gguf_file: Callable[[str], Path]) -> None:
    path = gguf_file("gpt2")  # tied: the last rank reads the token table to unembed; fused qkv; learned positions
    args = ["heads", TEXT, "--model", path, "--json"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    ja, jb = documents(a, b)
    same_floats(ja, jb)
    assert {k: v for k, v in ja.items() if k != "scores"} == {k: v for k, v in jb.items() if k != "scores"}


@pytest.mark.slow
def test_generate_json_of_a_gguf_equals_one_process(tmp_path: Path, gguf_file: Callable[[str], Path]) -> None:
    path = gguf_file("llama3")  # rope_freqs (Llama 3 scaling) read by the config on every rank
    args = ["generate", "the cat sat", "--model", path, "--json", "-n", "6", "--ignore-eos", "--layer", "all"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    ja, jb = documents(a, b)
    assert ja["text"] == jb["text"] and len(ja["steps"]) == len(jb["steps"]) == 6
    same_floats(ja, jb)


# ------------------------------------------------------------------ Gemma 4: per-layer inputs, KV-shared layers


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gemma4(tmp_path_factory.mktemp("gemma4") / "gemma4")


def staged(path: Path, ranges: list[range]) -> Callable[[torch.Tensor, int, list[Any]], tuple[torch.Tensor, list[set[str]]]]:
    """One process playing every rank of `ranges`: each stage loads its share alone, and the
    stream passes from stage to stage as the ranks pass it (`hand_on`, `taken`): the
    logits of a pass, and the names each stage handed on."""
    cfg = api.open_source(str(path)).config
    n = cfg.n_layers
    stages = [api.load(str(path), "cpu", "float32", share=pipeline.Share(r, i == 0, i == len(ranges) - 1, True)).model
              for i, r in enumerate(ranges)]

    def run(ids: torch.Tensor, start: int, caches: list[Any]) -> tuple[torch.Tensor, list[set[str]]]:
        carry: dict[str, Any] = {}
        x = stages[0](ids, None, ranges[0].stop - 1, start, caches[0], carry=carry)
        stream = {"resid": x, **pipeline.hand_on(cfg, carry, ranges[0].stop, n - 1)}
        sent = [set(stream)]
        for r in range(1, len(ranges)):
            carry, rest = pipeline.taken(stream)
            x = stages[r](torch.empty(0, dtype=torch.long), None, ranges[r].stop - 1, start, caches[r],
                          first_layer=ranges[r].start, resid=rest["resid"], carry=carry)
            stream = {**rest, "resid": x, **pipeline.hand_on(cfg, carry, ranges[r].stop, n - 1)}
            sent.append(set(stream))
        return stages[-1].logits(x), sent

    return run


@pytest.mark.parametrize("ranges, handed", [
    # owner 1 and its reader 4 apart, owner 2 with its reader 3 (the split --pipeline picks for 2 ranks)
    ([range(0, 2), range(2, 5)], [{"resid", "per_layer", "kv.1.k", "kv.1.v", "kv.1.positions"}]),
    # both owners on rank 0, both readers on rank 1
    ([range(0, 3), range(3, 5)], [{"resid", "per_layer", "kv.1.k", "kv.1.v", "kv.1.positions",
                                   "kv.2.k", "kv.2.v", "kv.2.positions"}]),
    # owner 1 on rank 0, its reader on rank 2: rank 1 relays it; owner 2 on rank 1, its reader on rank 2
    ([range(0, 2), range(2, 3), range(3, 5)], [{"resid", "per_layer", "kv.1.k", "kv.1.v", "kv.1.positions"},
                                                {"resid", "per_layer", "kv.1.k", "kv.1.v", "kv.1.positions",
                                                 "kv.2.k", "kv.2.v", "kv.2.positions"}]),
    # the readers' rank holds no owner, the owners' rank no reader; the per-layer inputs cross two ranks
    ([range(0, 1), range(1, 3), range(3, 5)], [{"resid", "per_layer"},
                                                {"resid", "per_layer", "kv.1.k", "kv.1.v", "kv.1.positions",
                                                 "kv.2.k", "kv.2.v", "kv.2.positions"}]),
])
@pytest.mark.parametrize("form", ["safetensors", "gguf"])
def test_gemma4_stages_equal_one_process_with_a_cache(ranges: list[range], handed: list[set[str]], form: str,
                                                      gemma4: Path, gguf_file: Callable[[str], Path]) -> None:
    """Prefill then three one-token steps through stages that each hold only their layers'
    cache: every step's logits equal the whole model's, and each stage hands on exactly
    what later layers read (nothing after the last)."""
    from attnscope.model import KVCache

    path = gemma4 if form == "safetensors" else gguf_file("gemma4")
    whole = api.load(str(path), "cpu", "float32")
    ids = torch.tensor(whole.tokenize(TEXT).ids)
    run = staged(path, ranges)
    n = whole.n_layers
    ours_caches, one_cache = [KVCache(n) for _ in ranges], KVCache(n)
    start = 0
    for chunk in (ids[:9], ids[9:10], ids[10:11], ids[11:12]):
        got, sent = run(chunk, start, ours_caches)
        want = whole.model.logits(whole.model(chunk, None, None, start, one_cache))
        assert torch.equal(got, want), (ranges, start)
        assert sent[:-1] == handed and sent[-1] == {"resid"}
        start += chunk.shape[0]
    for r, (layers, cache) in enumerate(zip(ranges, ours_caches)):  # each layer's cache on its owner alone
        assert [i for i in range(n) if cache.k[i] is not None] == [i for i in layers if i < 3], r


def test_gemma4_per_layer_tables_sit_with_the_embeddings(gemma4: Path) -> None:
    cfg = api.open_source(str(gemma4)).config
    first, last = (pipeline.Share(r, i == 0, i == 1, True) for i, r in enumerate(pipeline.split(cfg, 2)))
    assert first.holds("per_layer.tok.weight") and first.holds("per_layer.proj.weight")
    assert not last.holds("per_layer.tok.weight") and not last.holds("per_layer.norm.weight")
    from math import prod

    from attnscope.parts import embedding_shapes

    _, embed, _, _ = pipeline.layer_bytes(cfg, 4)
    shapes = embedding_shapes(cfg)
    assert embed == 4 * sum(prod(s) for n, s in shapes.items() if n.startswith(("embed.", "per_layer.")))


@pytest.mark.slow
def test_gemma4_attend_save_equals_one_process(tmp_path: Path, gemma4: Path) -> None:
    """The split puts owner layer 1 on rank 0 and its KV-shared reader, layer 4, on rank 1;
    the per-layer inputs, computed on rank 0, reach layers 2-4 on rank 1."""
    cfg = api.open_source(str(gemma4)).config
    assert pipeline.split(cfg, 2) == [range(0, 2), range(2, 5)]
    args = ["attend", TEXT, "--model", gemma4, "--view", "topk", "--json", "--layer", "all", "--head", "all"]
    a = one(tmp_path, *args, "--save", "one.npz")
    b = two(tmp_path, *args, "--save", "two.npz", "--pipeline")
    ja, jb = documents(a, b)
    for doc in (ja, jb):
        doc.pop("saved", None), doc.pop("files", None)
    assert ja == jb
    same_npz(tmp_path / "one.npz", tmp_path / "two.npz")


@pytest.mark.slow
def test_gemma4_generate_json_equals_one_process(tmp_path: Path, gemma4: Path) -> None:
    """Each step, layer 4 on rank 1 reads layer 1's cache, held on rank 0, as it has grown."""
    args = ["generate", "the cat sat", "--model", gemma4, "--json", "-n", "8", "--ignore-eos", "--layer", "all"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    ja, jb = documents(a, b)
    assert ja["text"] == jb["text"] and len(ja["steps"]) == len(jb["steps"]) == 8
    same_floats(ja, jb)


# ------------------------------------------------------------------ norm's focus view: W_O lent by its owner


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["0", "1"])
def test_norm_focus_view_equals_one_process(layer: str, tmp_path: Path, gguf_file: Callable[[str], Path]) -> None:
    """The word update reads the focus layer's W_O: rank 0's own (layer 0) or lent by rank 1
    (layer 1, `Driver.fetch`) before the pass; the document equals one process's."""
    path = gguf_file("gpt2")
    args = ["attend", TEXT, "--model", path, "--measure", "norm", "--view", "focus", "--layer", layer, "--json"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    ja, jb = documents(a, b)
    assert ja["update"]["layer"] == int(layer) and len(ja["update"]["moved_per_head"]) == 4
    fa, fb = floats(ja), floats(jb)
    assert fa.keys() == fb.keys() and any(".update." in key for key in fa)
    for key, value in fa.items():
        assert abs(fb[key] - value) <= BOUND * max(1.0, abs(value)), (key, value, fb[key])


def test_a_serving_rank_lends_only_its_own_blocks(gguf_file: Callable[[str], Path]) -> None:
    """`Driver.fetch` asks the rank that holds the layer; a serving rank asked for a
    parameter it does not hold says so in one line (never a meta tensor sent as weights)."""
    from attnscope.errors import DeviceError

    cfg = api.open_source(str(gguf_file("gpt2"))).config
    net = api.load(str(gguf_file("gpt2")), "cpu", "float32", share=shares(cfg)[1]).model

    class Link:  # rank 1 of 2, asked by rank 0 for a parameter of layer 0, then told to stop
        group = type("G", (), {"rank": 1})()

        def __init__(self) -> None:
            self.inbox = [("fetch", "blocks.0.attn.o.weight"), ("fetch", "blocks.1.attn.o.weight"), ("stop", 0)]
            self.sent: list[tuple[Any, ...]] = []

        def recv(self, peer: int) -> tuple[Any, ...]:
            return self.inbox.pop(0)

        def send(self, peer: int, header: tuple[Any, ...], tensor: Any = None) -> None:
            self.sent.append((peer, header, tensor))

    link = Link()
    assert pipeline.serve(net, link, pipeline.split(cfg, 2)) == 0
    (p0, error, _), (p1, lent, weight) = link.sent
    assert p0 == 0 and error[0] == "error" and error[1] == DeviceError.__name__ and "does not hold" in error[2]
    assert p1 == 0 and lent[0] == "fetch" and torch.equal(weight, net.blocks[1].attn.o.weight)


# ------------------------------------------------------------------ ALTI and Value Zeroing: blocks lent one at a time


@pytest.mark.slow
@pytest.mark.parametrize("model, measure", [("gpt2", "alti"), ("gpt2", "value-zeroing"), ("gemma4", "alti")])
def test_mixing_measures_equal_one_process(model: str, measure: str, tmp_path: Path,
                                           gguf_file: Callable[[str], Path], gemma4: Path) -> None:
    """Each layer's matrix is computed on rank 0 from the layer's weights, rank 1's block
    lent for its reports (`pipeline.LEND`): the saved matrices and the view equal one process's.
    GPT-2: pre-norm LayerNorm blocks with biases, every term of both decompositions; Gemma 4:
    sandwich norms, its buffers (layer_scalar) lent too, a KV-shared layer on rank 1."""
    path = gguf_file("gpt2") if model == "gpt2" else gemma4
    args = ["attend", TEXT, "--model", path, "--measure", measure, "--view", "topk", "--layer", "all", "--json"]
    a = one(tmp_path, *args, "--save", "one.npz")
    b = two(tmp_path, *args, "--save", "two.npz", "--pipeline")
    ja, jb = documents(a, b)
    for doc in (ja, jb):
        doc.pop("saved", None), doc.pop("files", None)
    assert ja == jb
    same_npz(tmp_path / "one.npz", tmp_path / "two.npz")


def test_a_lent_block_goes_back_after_its_reports(gguf_file: Callable[[str], Path]) -> None:
    """Rank 0's side of a lending: rank 1's block arrives tensor by tensor, sits in rank 0's
    meta block while its reports come, and goes back to meta at the end of the pass; a
    lending of rank 0's own layer is one line."""
    from attnscope.errors import DeviceError

    path = str(gguf_file("gpt2"))
    cfg = api.open_source(path).config
    first, last = shares(cfg)
    own = api.load(path, "cpu", "float32", share=first).model
    theirs = api.load(path, "cpu", "float32", share=last).model
    ranges = pipeline.split(cfg, 2)
    state = theirs.blocks[1].state_dict()
    seen: list[bool] = []

    class Hook:
        def wants(self, site: str, what: str) -> bool:
            return True

        def report(self, site: str, what: str, value: Any, q: int, k: int) -> None:
            seen.append(all(not p.is_meta for p in own.blocks[1].parameters()))

    class Link:
        def __init__(self, inbox: list[tuple[Any, ...]], tensors: list[torch.Tensor]) -> None:
            self.inbox, self.tensors = inbox, tensors

        def recv(self, peer: int) -> tuple[Any, ...]:
            return self.inbox.pop(0)

        def recv_tensor(self, peer: int, shape: Any, dtype: str) -> torch.Tensor:
            return self.tensors.pop(0)

        def recv_named(self, peer: int, header: Any) -> dict[str, torch.Tensor]:
            return {"resid": torch.zeros(1)}

    x = torch.zeros(3, cfg.d_model)
    inbox = [*(("weight", name, tuple(t.shape), "float32") for name, t in state.items()), ("lent", 1),
             ("report", "blocks.1", "resid_pre", 0, 0, (3, cfg.d_model), "float32"), ("done", ())]
    driver = pipeline.Driver(own, Link(inbox, [*state.values(), x]), ranges, True)
    assert all(p.is_meta for p in own.blocks[1].parameters())
    driver._serve_reports(1, Hook(), True)
    assert seen == [True]  # the block held its weights while its report came
    assert all(p.is_meta for p in own.blocks[1].parameters())  # and gave them back at the end of the pass
    driver.link = Link([("lent", 0)], [])
    with pytest.raises(DeviceError, match="not another rank's"):
        driver._serve_reports(1, Hook(), True)
    assert not any(p.is_meta for p in own.blocks[0].parameters())  # rank 0's own block untouched


def test_gemma4_blocks_placed_across_devices_equal_one_device(gemma4: Path) -> None:
    """One process, blocks across two "devices" (both the CPU): no refusal for per-layer
    inputs or KV-shared layers any more, and the patterns and logits of the plain load."""
    cpu = torch.device("cpu")
    placed = pipeline.load_placed(str(gemma4), [cpu, cpu], "float32")
    plain = api.load(str(gemma4), "cpu", "float32")
    assert not any(p.is_meta for p in placed.model.parameters())
    assert torch.equal(placed.attention(TEXT).probs, plain.attention(TEXT).probs)
    assert torch.equal(placed.logits(TEXT), plain.logits(TEXT))


@pytest.mark.parametrize("drop", ["kv.1.v", "kv.1.positions"])
def test_a_stream_with_keys_but_not_their_values_is_one_line(drop: str) -> None:
    from attnscope.errors import DeviceError

    stream = {"resid": torch.zeros(3, 4), "kv.1.k": torch.zeros(1, 3, 2), "kv.1.v": torch.zeros(1, 3, 2),
              "kv.1.positions": torch.arange(3)}
    carry, rest = pipeline.taken(stream)
    assert set(rest) == {"resid"} and set(carry["shared"]) == {1} and carry["shared"][1][2] == 0
    del stream[drop]
    with pytest.raises(DeviceError, match="keys of layer 1 without their values or positions"):
        pipeline.taken(stream)


@pytest.mark.slow
def test_t5_gguf_attend_target_equals_one_process_and_splits_its_reads(tmp_path: Path) -> None:
    """An encoder-decoder GGUF (T5 v1.1) takes the same per-share reading: the ranks'
    block tensors (enc.blk.*, dec.blk.*) are each read by one rank, and `attend --target`
    equals one process. (Each rank holding layers of a stack reads its small relative table.)"""
    import test_gguf_t5 as t5

    path = t5.write_t5_gguf(t5.build_t5(tmp_path / "t5", v11=True), tmp_path / "t5.gguf")
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    args = ["attend", "the cat sat on the mat", "--target", "a dog ran in the park", "--model", path, "--json"]
    a = one(tmp_path, *args)
    b = two(tmp_path, str(tmp_path / "read"), *args, "--pipeline", script=str(script))
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-3000:]
    assert json.loads(a.stdout) == json.loads(b.stdout)
    reads = [(tmp_path / f"read.{rank}").read_text().split() for rank in (0, 1)]
    blocks = [{n for n in r if ".blk." in n and "attn_rel_b" not in n} for r in reads]
    assert blocks[0] and blocks[1] and not blocks[0] & blocks[1]  # each block's tensors on one rank
    from attnscope.sources.gguf import read_gguf

    assert set(reads[0]) | set(reads[1]) == set(read_gguf(path).tensors)
    assert all(len(r) == len(set(r)) for r in reads)  # nothing read twice on a rank
