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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import tiny_gguf as tg
from attnscope import api, pipeline
from test_pipeline import BOUND, TEXT, errors, one, two

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("gguf")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = tg.BUILDERS[name](folder / f"{name}.gguf")
        return made[name]

    return get


def shares(cfg: Any, world: int = 2) -> list[pipeline.Share]:
    ranges = pipeline.split(cfg, world)
    return [pipeline.Share(r, i == 0, i == world - 1, cfg.tied_embeddings) for i, r in enumerate(ranges)]


def expected_reads(path: Path, share: pipeline.Share) -> set[str]:
    """The GGUF tensors a share needs: its blocks', the embeddings first, the head last
    (the token table there too when tied: llama.cpp writes no output.weight then), and on
    every rank Llama 3's small rope_freqs, which the config is read from."""
    from attnscope.sources.gguf import read_gguf

    out = set()
    for name in read_gguf(path).tensors:
        if name == "rope_freqs.weight":
            out.add(name)
        elif name.startswith("blk."):
            if int(name.split(".")[1]) in share.layers:
                out.add(name)
        elif name in ("token_embd.weight", "position_embd.weight"):
            if share.first or (name == "token_embd.weight" and share.last and share.tied):
                out.add(name)
        elif name.startswith(("output_norm.", "output.")):
            if share.last:
                out.add(name)
    return out


@pytest.mark.parametrize("name", ["llama", "gpt2", "llama3"])
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
        assert sorted(read) == sorted(expected_reads(path, share)), share  # each once, none of the other rank's
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


def floats(doc: Any, path: str = "") -> dict[str, float]:
    """Every float of a JSON document by its path, timings left out."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k != "seconds" and not k.endswith("per_s"):
                out.update(floats(v, f"{path}.{k}"))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(floats(v, f"{path}[{i}]"))
    elif isinstance(doc, float):
        out[path] = doc
    return out


def same_npz(a: Path, b: Path) -> None:
    with np.load(a) as x, np.load(b) as y:
        assert set(x.files) == set(y.files)
        for key in x.files:
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(y[key], x[key], atol=BOUND, rtol=0, err_msg=key)
            else:
                assert np.array_equal(x[key], y[key]), key


@pytest.mark.slow
def test_attend_save_of_a_gguf_equals_one_process_and_each_rank_reads_its_share(
        tmp_path: Path, gguf_file: Callable[[str], Path]) -> None:
    path = gguf_file("llama")  # untied, quantized Q4_0/Q4_1/Q8_0/F16, SentencePiece vocabulary from the file
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    args = ["attend", TEXT, "--model", path, "--view", "topk", "--json", "--layer", "all", "--head", "all"]
    a = one(tmp_path, *args, "--save", "one.npz")
    b = two(tmp_path, str(tmp_path / "read"), *args, "--save", "two.npz", "--pipeline", script=str(script))
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-3000:]
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)  # rank 0 alone printed: one document
    for doc in (ja, jb):
        doc.pop("saved", None), doc.pop("files", None)
    assert ja == jb
    same_npz(tmp_path / "one.npz", tmp_path / "two.npz")
    cfg = api.open_source(str(path)).config
    for rank, share in enumerate(shares(cfg)):
        read = (tmp_path / f"read.{rank}").read_text().split()
        assert sorted(read) == sorted(expected_reads(path, share)), rank


@pytest.mark.slow
def test_heads_json_of_a_gguf_equals_one_process(tmp_path: Path, gguf_file: Callable[[str], Path]) -> None:
    path = gguf_file("gpt2")  # tied: the last rank reads the token table to unembed; fused qkv; learned positions
    args = ["heads", TEXT, "--model", path, "--json"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-3000:]
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    fa, fb = floats(ja), floats(jb)
    assert fa.keys() == fb.keys() and fa
    for key, value in fa.items():
        assert abs(fb[key] - value) <= BOUND, (key, value, fb[key])
    assert {k: v for k, v in ja.items() if k != "scores"} == {k: v for k, v in jb.items() if k != "scores"}


@pytest.mark.slow
def test_generate_json_of_a_gguf_equals_one_process(tmp_path: Path, gguf_file: Callable[[str], Path]) -> None:
    path = gguf_file("llama3")  # rope_freqs (Llama 3 scaling) read by the config on every rank
    args = ["generate", "the cat sat", "--model", path, "--json", "-n", "6", "--ignore-eos", "--layer", "all"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-3000:]
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["text"] == jb["text"] and len(ja["steps"]) == len(jb["steps"]) == 6
    fa, fb = floats(ja), floats(jb)
    assert fa.keys() == fb.keys() and fa
    for key, value in fa.items():
        assert abs(fb[key] - value) <= BOUND, (key, value, fb[key])
