"""`--pipeline` (issue 30): a model's layers split across processes under torchrun.

Two CPU processes (gloo) under `torchrun --nproc-per-node 2` against one process: attend
--save, heads --json and generate --json give the same results to the bound derived for
chunking (tests/test_chunks.py: float32 rounding only, 1e-5 absolute on a weight in 0..1;
here both runs do the very same float32 operations on one thread, so they agree exactly
in practice, and the bound is what the claim is); each rank's peak memory for the
weights is about half one process's on a 12-layer checkpoint; a rank killed mid-run
ends the other with one line naming it and no file written. The split itself is checked
by arithmetic, and `--dry-run --pipeline` against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from attnscope import pipeline
from attnscope.config import from_hf_config
from attnscope.errors import UsageError
from cli_runs import one_error, run
from torchrun_helpers import BOUND, REPO, TEXT, TIMEOUT, documents, env, errors, one, same_floats, same_npz, two


# ------------------------------------------------------------------ the split, by arithmetic


def gpt2_like(n_layer: int = 12, n_embd: int = 768, vocab: int = 50257, tied: bool = True) -> Any:
    return from_hf_config({"model_type": "gpt2", "n_layer": n_layer, "n_embd": n_embd, "n_head": 12,
                           "vocab_size": vocab, "n_positions": 1024, "tie_word_embeddings": tied})


def brute_best(cost: list[int], world: int) -> int:
    """The smallest largest share over every contiguous split of `cost` into `world` parts."""
    from itertools import combinations

    n = len(cost)
    best = None
    for cuts in combinations(range(1, n), world - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(cost[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    assert best is not None
    return best


@pytest.mark.parametrize("world", [2, 3, 4, 5])
@pytest.mark.parametrize("vocab", [600, 50257, 200_000])
def test_split_is_contiguous_and_balanced_by_bytes(world: int, vocab: int) -> None:
    cfg = gpt2_like(n_layer=7, n_embd=384, vocab=vocab)
    ranges = pipeline.split(cfg, world)
    assert len(ranges) == world and all(len(r) >= 1 for r in ranges)
    assert [i for r in ranges for i in r] == list(range(7))  # contiguous, in order, every layer once
    per_layer, embed, head, _ = pipeline.layer_bytes(cfg, 4)
    cost = list(per_layer)
    cost[0] += embed
    cost[-1] += head
    worst = max(sum(cost[i] for i in r) for r in ranges)
    assert worst == brute_best(cost, world)  # the largest rank is as small as any split makes it


def test_split_of_gpt2_small_halves_and_refuses_more_ranks_than_layers() -> None:
    cfg = gpt2_like()
    assert pipeline.split(cfg, 1) == [range(0, 12)]
    # the tied token table (38.6M of 124M parameters) sits on both ends: embeddings first, unembedding last
    assert pipeline.split(cfg, 2) == [range(0, 6), range(6, 12)]
    with pytest.raises(UsageError, match="13 ranks cannot share 12 layers"):
        pipeline.split(cfg, 13)


def test_a_share_holds_only_its_parts() -> None:
    first = pipeline.Share(range(0, 6), True, False, True)
    last = pipeline.Share(range(6, 12), False, True, True)
    assert first.holds("embed.tok.weight") and first.holds("embed.pos.weight") and first.holds("blocks.5.attn.q.weight")
    assert not first.holds("blocks.6.attn.q.weight") and not first.holds("final_norm.weight")
    assert last.holds("embed.tok.weight") and not last.holds("embed.pos.weight")  # tied: it unembeds
    assert last.holds("final_norm.weight") and last.holds("relative.weight")
    assert not last.holds("blocks.0.mlp.up.weight")
    untied = pipeline.Share(range(6, 12), False, True, False)
    assert not untied.holds("embed.tok.weight")


def test_dry_run_reports_each_rank(build: Callable[[str], Path]) -> None:
    folder = build("llama")
    res = run("attend", TEXT, "--model", folder, "--dry-run", "--pipeline", "--ranks", "2", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    ranks = doc["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["layers"] for r in ranks] == [[0, 0], [1, 1]]
    # every parameter on exactly one rank (the llama is untied, without a relative table)
    assert sum(r["weights_bytes"] for r in ranks) == doc["one_process_weights_bytes"]
    assert all(r["peak_memory_bytes"] < doc["one_process_peak_memory_bytes"] for r in ranks)
    res = run("attend", TEXT, "--model", folder, "--dry-run", "--pipeline", "--ranks", "2")
    assert res.exit_code == 0 and "rank" in res.stdout and "one process" in res.stdout, res.stderr


@pytest.mark.parametrize("args, needles", [
    (["attend", TEXT, "--pipeline"], ["a single one", "torchrun"]),
    (["attend", TEXT, "--pipeline", "--offload"], ["--offload and --pipeline"]),
    (["attend", TEXT, "--ranks", "2"], ["--ranks goes with"]),
    (["attend", TEXT, "--dry-run", "--pipeline"], ["number of processes"]),
    (["heads", "--pipeline", "--corpus", "x.txt"], ["--corpus splits texts"]),
])
def test_what_a_pipeline_cannot_do_is_one_line(args: list[str], needles: list[str], build: Callable[[str], Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    one_error(run(*args, "--model", build("llama")), UsageError("").exit_code, *needles)


# ------------------------------------------------------------------ two processes against one


@pytest.mark.slow
def test_attend_save_and_topk_equal_one_process(tmp_path: Path, build: Callable[[str], Path]) -> None:
    folder = build("llama")
    args = ["attend", TEXT, "--model", folder, "--view", "topk", "--json", "--layer", "all", "--head", "all"]
    a = one(tmp_path, *args, "--save", "one.npz", "--save-topk", "one_topk.npz")
    b = two(tmp_path, *args, "--save", "two.npz", "--save-topk", "two_topk.npz", "--pipeline")
    ja, jb = documents(a, b)  # rank 0 alone printed: one document
    for doc in (ja, jb):
        doc.pop("saved", None), doc.pop("saved_topk", None)
        doc.pop("files", None)
    same_npz(tmp_path / "one.npz", tmp_path / "two.npz")
    with np.load(tmp_path / "one_topk.npz") as x, np.load(tmp_path / "two_topk.npz") as y:
        np.testing.assert_allclose(y["weights"], x["weights"], atol=BOUND, rtol=0)
        assert np.array_equal(x["layers"], y["layers"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "one_topk.npz", "two.npz", "two_topk.npz"]


@pytest.mark.slow
def test_heads_json_equals_one_process(tmp_path: Path, build: Callable[[str], Path]) -> None:
    folder = build("gpt2")  # tied embeddings: the last rank holds the token table to unembed; learned positions
    args = ["heads", TEXT, "--model", folder, "--json"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    ja, jb = documents(a, b)
    assert ja["layers"] == jb["layers"] and ja["heads"] == jb["heads"] and set(ja["scores"]) == set(jb["scores"])
    for name, grid in ja["scores"].items():
        if grid is None:  # a score this model has none of (next_token on a causal model)
            assert jb["scores"][name] is None, name
            continue
        x = torch.tensor([[float("nan") if v is None else v for v in row] for row in grid], dtype=torch.float64)
        y = torch.tensor([[float("nan") if v is None else v for v in row] for row in jb["scores"][name]],
                         dtype=torch.float64)
        torch.testing.assert_close(y, x, atol=BOUND, rtol=0, equal_nan=True, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--layer", "0"], ["--layer", "-1"], ["--layer", "-1", "--kind", "padding"]])
def test_mask_demo_json_equals_one_process(tmp_path: Path, build: Callable[[str], Path], extra: list[str]) -> None:
    """mask-demo's scores come from the layer's own hooks, on whichever rank holds it
    (layer 0 on rank 0, the last layer on rank 1): every step equals one process."""
    folder = build("gpt2")
    args = ["mask-demo", TEXT, "--model", folder, "--json", *extra]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    ja, jb = documents(a, b)
    assert {k: v for k, v in ja.items() if k != "steps"} == {k: v for k, v in jb.items() if k != "steps"}
    assert [s["name"] for s in ja["steps"]] == [s["name"] for s in jb["steps"]]
    for sa, sb in zip(ja["steps"], jb["steps"]):
        x = torch.tensor([[float("-inf") if v == "-inf" else v for v in row] for row in sa["matrix"]], dtype=torch.float64)
        y = torch.tensor([[float("-inf") if v == "-inf" else v for v in row] for row in sb["matrix"]], dtype=torch.float64)
        torch.testing.assert_close(y, x, atol=BOUND, rtol=0, msg=sa["name"])


@pytest.mark.slow
def test_mask_demo_of_a_sink_layer_on_another_rank_is_one_line(tmp_path: Path, build: Callable[[str], Path]) -> None:
    """A sink logit is a weight of the layer, which only its owner holds: one line, not a guess."""
    import tiny_models_gpt_oss

    folder = tiny_models_gpt_oss.gpt_oss(tmp_path / "gpt_oss")
    b = two(tmp_path, "mask-demo", TEXT, "--model", folder, "--layer", "-1", "--pipeline")
    assert b.returncode != 0 and b.stdout == ""
    assert any("sink logits" in line for line in errors(b.stderr)), b.stderr[-2000:]


@pytest.mark.slow
def test_generate_json_equals_one_process(tmp_path: Path, build: Callable[[str], Path]) -> None:
    folder = build("llama")
    args = ["generate", "the cat sat", "--model", folder, "--json", "-n", "8", "--ignore-eos", "--layer", "all"]
    a, b = one(tmp_path, *args), two(tmp_path, *args, "--pipeline")
    ja, jb = documents(a, b)
    assert ja["text"] == jb["text"] and len(ja["steps"]) == len(jb["steps"]) == 8
    same_floats(ja, jb)  # the same document, token by token through each rank's own cache


DIE = """
import os, signal, sys
import attnscope.pipeline as p

if os.environ.get("RANK") == "1":
    def dying(net, link, ranges):
        link.recv(0)  # rank 0 asks for the first pass: this rank dies instead of running it
        os.kill(os.getpid(), signal.SIGKILL)

    p.serve = dying
sys.argv = ["attnscope", *sys.argv[1:]]
from attnscope.cli import main

main()
"""


@pytest.mark.slow
def test_a_killed_rank_ends_the_other_with_one_line_and_no_file(tmp_path: Path, build: Callable[[str], Path]) -> None:
    script = tmp_path / "die.py"
    script.write_text(DIE)
    # torchrun's own monitor stops the survivors of a dead worker too; looking every 2 s, it leaves them the time
    # to see the death themselves (as any launcher that does not kill them would)
    b = two(tmp_path, "attend", TEXT, "--model", build("llama"), "--pipeline", "--save", "out.npz",
            script=str(script), launcher=("--monitor-interval", "2"))
    assert b.returncode != 0
    lines = errors(b.stderr)
    assert len(lines) == 1 and "rank 1 stopped or cannot be reached (seen from rank 0)" in lines[0], b.stderr[-3000:]
    assert "internal error" not in b.stderr and f'File "{REPO / "attnscope"}' not in b.stderr
    assert not list(tmp_path.glob("*.npz")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


HANG = """
import os, signal, sys
import attnscope.pipeline as p

if os.environ.get("RANK") == "1":
    def hanging(net, link, ranges):
        link.recv(0)
        os.kill(os.getpid(), signal.SIGSTOP)  # alive, holding its sockets, and answering nothing

    p.serve = hanging
sys.argv = ["attnscope", *sys.argv[1:]]
from attnscope.cli import main

main()
"""


@pytest.mark.slow
def test_a_rank_that_cannot_be_reached_ends_the_run_within_the_timeout(tmp_path: Path,
                                                                       build: Callable[[str], Path]) -> None:
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    b = two(tmp_path, "attend", TEXT, "--model", build("llama"), "--pipeline", "--save", "out.npz",
            script=str(script), extra={"ATTNSCOPE_PIPELINE_TIMEOUT": "5"})
    assert b.returncode != 0
    lines = errors(b.stderr)
    assert len(lines) == 1 and "rank 1 stopped or cannot be reached (seen from rank 0)" in lines[0], b.stderr[-3000:]
    assert not list(tmp_path.glob("*.npz"))


# ------------------------------------------------------------------ memory: each rank about half


MEASURE = """
import os, resource, sys

import torch, torch.distributed  # noqa: F401  what every run imports, before the base line is read
import attnscope.api, attnscope.cli, attnscope.pipeline  # noqa: F401


def rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


base = rss()
out = sys.argv[1]


def record() -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(f"{out}.{os.environ.get('RANK', 'one')}", "w") as fh:
        fh.write(f"{base} {peak}")


import atexit

atexit.register(record)
sys.argv = ["attnscope", *sys.argv[2:]]
from attnscope.cli import main

main()
"""


def twelve_layers(folder: Path, tokenizer_from: Path) -> Path:
    """A 12-layer GPT-2 (width 512, 8 heads, 600 tokens, untied): 12 x 3.1M parameters in blocks."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=608, n_positions=128, n_embd=512, n_layer=12, n_head=8, tie_word_embeddings=False,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    shutil.copy(tokenizer_from / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.mark.slow
def test_each_rank_holds_about_half_the_weights(tmp_path: Path, build: Callable[[str], Path]) -> None:
    folder = twelve_layers(tmp_path / "gpt2-12", build("gpt2"))
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    args = ["attend", "the cat sat", "--model", folder, "--view", "topk", "--json"]
    a = subprocess.run([sys.executable, str(script), str(tmp_path / "rss"), *map(str, args)], env=env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=TIMEOUT)
    b = two(tmp_path, str(tmp_path / "rss"), *args, "--pipeline", script=str(script))
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-3000:])

    def grown(name: str) -> int:
        base, peak = map(int, (tmp_path / f"rss.{name}").read_text().split())
        return peak - base

    one_proc, rank0, rank1 = grown("one"), grown("0"), grown("1")
    weights = sum(p.numel() for p in __import__("safetensors.torch").torch.load_file(
        str(folder / "model.safetensors")).values()) * 4
    print(f"weights {weights / 2**20:.1f} MiB; peak growth one process {one_proc / 2**20:.1f} MiB, "
          f"rank 0 {rank0 / 2**20:.1f} MiB, rank 1 {rank1 / 2**20:.1f} MiB")
    assert one_proc >= weights  # the one process holds them all
    for rank in (rank0, rank1):
        # measured: one process grows by 288 MiB for 147 MiB of weights (the file's mapped pages stay resident
        # while its tensors are copied out), each rank by 93-96 MiB (its half, one block's pages at a time)
        assert rank < 0.65 * one_proc, (rank, one_proc)
        assert 0.35 * weights < rank < 0.8 * weights, (rank, weights)  # its half, with the pass and gloo beside


# ------------------------------------------------------------------ one process, blocks across devices


def test_blocks_placed_across_devices_load_every_share_and_equal_one_device(build: Callable[[str], Path],
                                                                            inspector: Callable[..., Any]) -> None:
    """Two "devices" that are both the CPU: the placed load (every block streamed to its
    device, embeddings and head on the first) gives the plain load's patterns and logits."""
    cpu = torch.device("cpu")
    placed = pipeline.load_placed(str(build("llama")), [cpu, cpu], "float32")
    plain = inspector("llama")
    assert placed.model.placement == [cpu] * plain.n_layers
    assert not any(p.is_meta for p in placed.model.parameters())
    assert torch.equal(placed.attention(TEXT).probs, plain.attention(TEXT).probs)
    assert torch.equal(placed.logits(TEXT), plain.logits(TEXT))


def test_the_pass_state_moves_with_the_stream() -> None:
    from attnscope.model import PassState, _state_on

    state = PassState(0, torch.arange(3), None, {"rope": (torch.ones(3, 2), torch.zeros(3, 2))})
    moved = _state_on(state, torch.device("meta"))
    assert moved.positions.is_meta and all(c.is_meta and s.is_meta for c, s in moved.ropes.values())
    assert moved.start == 0 and moved.segments is None


@pytest.mark.parametrize("device, message", [
    ("cpu,cuda:1", "is not a device"),
    ("cuda:0,cuda:0", "names a device twice"),
])
def test_bad_device_lists_are_one_line(device: str, message: str, build: Callable[[str], Path]) -> None:
    if message == "names a device twice":
        with pytest.raises(Exception, match=message):
            pipeline.parse_devices(device)
        return
    one_error(run("attend", TEXT, "--model", build("llama"), "--device", device), 2, message)


def test_a_device_list_without_gpus_is_one_line(build: Callable[[str], Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = run("attend", TEXT, "--model", build("llama"), "--device", "cuda:0,cuda:1")
    assert res.exit_code != 0 and "no CUDA GPU is available" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_blocks_across_two_gpus_equal_the_cpu(build: Callable[[str], Path], inspector: Callable[..., Any]) -> None:
    devices = pipeline.parse_devices("cuda:0,cuda:1")
    assert devices is not None
    placed = pipeline.load_placed(str(build("llama")), devices, "float32")
    plain = inspector("llama")
    assert {p.device for p in placed.model.blocks[-1].parameters()} == {devices[-1]}
    torch.testing.assert_close(placed.attention(TEXT).probs.cpu(), plain.attention(TEXT).probs, atol=BOUND, rtol=0)


@pytest.mark.parametrize("value", ["abc", "0", "1e9", "nan"])
def test_a_bad_timeout_is_one_line(value: str, build: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNSCOPE_PIPELINE_TIMEOUT", value)
    one_error(run("attend", TEXT, "--model", build("llama"), "--pipeline"), UsageError("").exit_code,
              "ATTNSCOPE_PIPELINE_TIMEOUT must be a number of seconds")


@pytest.mark.slow
def test_an_error_on_a_serving_rank_is_rank_0s_one_line(tmp_path: Path, build: Callable[[str], Path]) -> None:
    """Layer 1 (rank 1's) computes infinities: its CheckpointError travels to rank 0, which
    says it once; rank 1 ends quietly with the same exit code; nothing is written."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(build("llama"), folder)
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.1.mlp.down_proj.weight"] = torch.full_like(state["model.layers.1.mlp.down_proj.weight"], 1e38)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    b = two(tmp_path, "attend", TEXT, "--model", folder, "--pipeline", "--save", "out.npz")
    lines = errors(b.stderr)
    assert b.returncode != 0 and len(lines) == 1, b.stderr[-3000:]
    assert "layer 1 produced values that are not finite" in lines[0]
    assert f'File "{REPO / "attnscope"}' not in b.stderr  # torchrun's own summary aside, no traceback of ours
    assert not list(tmp_path.glob("*.npz"))


def test_the_deepest_config_splits_at_once() -> None:
    """A config at config_checks.MAX_LAYERS: the split is O(layers · log bytes), not quadratic."""
    import time

    from attnscope.config_checks import MAX_LAYERS

    cfg = gpt2_like(n_layer=MAX_LAYERS, n_embd=48, vocab=10_000_000)
    began = time.monotonic()
    ranges = pipeline.split(cfg, 7)
    assert time.monotonic() - began < 60  # generous: a quadratic split would take hours
    assert [i for r in ranges for i in r] == list(range(MAX_LAYERS)) and len(ranges) == 7
    assert len(ranges[0]) < len(ranges[3]) and len(ranges[-1]) < len(ranges[3])  # the token table weighs on both ends
