"""`--pipeline` on encoder-decoders (issue 30): the encoder's and the decoder's layers split
across processes as one ordered list, the encoder's final states travelling to every rank
that holds decoder layers.

Two CPU processes (gloo) under `torchrun --nproc-per-node 2` against one process, on the
tiny T5 v1.0 (relative position tables in both stacks, tied head) and BART (learned
positions, 4 encoder heads and 2 decoder heads) of tests/tiny_models_seq2seq.py: attend
--target --save (all seven arrays the --target save writes: the six of the issue and the
decoder's token labels), --save-topk and --json, heads --target --json (cross's diagonal,
--part encoder and decoder) and generate --json equal the one-process results within the
bound derived for chunking (tests/test_chunks.py: float32 rounding only, 1e-5 absolute on
a weight in 0..1). Each is run on three splits: the one the byte balance picks, the whole
encoder on rank 0 and the decoder on rank 1, and a cut inside the encoder (rank 0 one
encoder layer); the last two are forced by a launcher script that replaces
`pipeline.split` (as tests/test_pipeline.py's scripts replace `pipeline.serve`). A rank
killed at the decoder's pass ends the other with one line and no file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from attnscope import pipeline
from attnscope.errors import DeviceError, UsageError
from cli_runs import one_error, run
from test_pipeline import brute_best
from torchrun_helpers import BOUND, REPO, documents, errors, one, same_floats, same_npz, two

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models_seq2seq  # noqa: E402

SOURCE = "The fluffy creature sat on the mat and looked at the moon every night."
TARGET = "A fluffy blue creature jumps over the lazy dog every morning."

# Replaces the byte-balanced split by a cut after H5_CUT layers of the one ordered list
# (the encoder's, then the decoder's), then runs the CLI as `python -m attnscope` does.
SPLIT = """
import os, sys
import attnscope.pipeline as p

cut = os.environ.get("H5_CUT")
if cut:
    def forced(cfg, world, width=4):
        n = cfg.n_layers + (len(cfg.decoder) if cfg.decoder is not None else 0)
        return [range(0, int(cut)), range(int(cut), n)]

    p.split = forced
sys.argv = ["attnscope", *sys.argv[1:]]
from attnscope.cli import main

main()
"""


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`seq2seq(name) -> Path`: the tiny T5 v1.0 or BART checkpoint, built once."""
    built: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in built:
            built[name] = tiny_models_seq2seq.SEQ2SEQ_BUILDERS[name](tmp_path_factory.mktemp(name))
        return built[name]

    return make


def pipelined(tmp_path: Path, cut: int | None, *args: Any, extra: dict[str, str] | None = None,
              launcher: tuple[str, ...] = (), script: str = SPLIT) -> Any:
    """The command under torchrun with 2 ranks, the split forced to cut after `cut` layers (None: the byte balance's)."""
    path = tmp_path / "split.py"
    path.write_text(script)
    env = {**(extra or {}), **({"H5_CUT": str(cut)} if cut is not None else {})}
    return two(tmp_path, *args, "--pipeline", script=str(path), extra=env, launcher=launcher)


def same_document(a: Any, b: Any) -> None:
    """Two --json documents equal but for their floats, which agree within BOUND."""
    same_floats(a, b)

    def shape(doc: Any) -> Any:
        if isinstance(doc, dict):
            return {k: shape(v) for k, v in doc.items() if k not in ("saved", "saved_topk")}
        if isinstance(doc, list):
            return [shape(v) for v in doc]
        return None if isinstance(doc, float) else doc

    assert shape(a) == shape(b)


# ------------------------------------------------------------------ the split, by arithmetic


@pytest.mark.parametrize("name", ["t5", "bart"])
@pytest.mark.parametrize("world", [2, 3, 4, 5])
def test_the_split_covers_both_stacks_in_order_balanced_by_bytes(name: str, world: int,
                                                                 seq2seq: Callable[[str], Path]) -> None:
    from attnscope.api import open_source

    cfg = open_source(str(seq2seq(name))).config
    n_enc, n_dec = cfg.n_layers, len(cfg.decoder)
    per_layer, embed, head, _ = pipeline.layer_bytes(cfg, 4)
    assert len(per_layer) == n_enc + n_dec == 5
    assert per_layer[n_enc] > per_layer[0]  # a decoder layer counts its cross-attention
    ranges = pipeline.split(cfg, world)
    assert [i for r in ranges for i in r] == list(range(n_enc + n_dec)) and all(ranges)
    cost = list(per_layer)
    cost[0] += embed
    cost[-1] += head
    assert max(sum(cost[i] for i in r) for r in ranges) == brute_best(cost, world)
    stacks = [pipeline.stack_layers(cfg, r) for r in ranges]
    assert [i for enc, _ in stacks for i in enc] == list(range(n_enc))  # each stack's layers, once, in order
    assert [i for _, dec in stacks for i in dec] == list(range(n_dec))


def test_the_layer_bytes_of_an_encoder_decoder_sum_to_its_parameters(seq2seq: Callable[[str], Path]) -> None:
    from math import prod

    from attnscope.api import open_source
    from attnscope.parts import model_shapes

    cfg = open_source(str(seq2seq("bart"))).config  # no relative table
    per_layer, embed, head, relative = pipeline.layer_bytes(cfg, 4)
    assert relative == 0 and cfg.tied_embeddings  # the token table on both ends: the first embeds, the last unembeds
    total = sum(prod(s) for s in model_shapes(cfg).values())
    assert sum(per_layer) + embed + head == 4 * (total + cfg.vocab_size * cfg.d_model)


def test_a_share_of_an_encoder_decoder_holds_its_stacks_parts() -> None:
    # 2 encoder layers and 3 decoder layers, cut inside the decoder: rank 0 holds the encoder and decoder layer 0
    first = pipeline.Share(range(0, 2), True, False, True, decoder=range(0, 1))
    last = pipeline.Share(range(2, 2), False, True, True, decoder=range(1, 3))
    assert first.holds("blocks.1.attn.q.weight") and first.holds("decoder.blocks.0.cross.k.weight")
    assert not first.holds("decoder.blocks.1.cross.k.weight") and last.holds("decoder.blocks.2.mlp.up.weight")
    assert not last.holds("blocks.0.attn.q.weight")
    # each stack's relative table where a layer of that stack is held; loaded, never sent
    assert first.holds("relative.weight") and first.holds("decoder.relative.weight")
    assert not last.holds("relative.weight") and last.holds("decoder.relative.weight")
    # rank 0 embeds both stacks' inputs and normalises the encoder's states; the last rank the decoder's, and unembeds
    assert first.holds("embed.tok.weight") and first.holds("decoder.embed.pos.weight") and first.holds("final_norm.weight")
    assert not last.holds("final_norm.weight") and not last.holds("decoder.embed.pos.weight")
    assert last.holds("decoder.final_norm.weight") and last.holds("embed.tok.weight")  # tied
    assert not first.holds("decoder.final_norm.weight") and not first.holds("logits_bias")
    only_encoder = pipeline.Share(range(1, 2), False, False, True, decoder=range(0, 0))
    assert only_encoder.holds("relative.weight") and not only_encoder.holds("decoder.relative.weight")


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_dry_run_names_both_stacks_per_rank(name: str, seq2seq: Callable[[str], Path]) -> None:
    folder = seq2seq(name)
    res = run("attend", SOURCE, "--model", folder, "--dry-run", "--pipeline", "--ranks", "3", "--json")
    assert res.exit_code == 0, res.stderr
    ranks = json.loads(res.stdout)["ranks"]
    from attnscope.api import open_source

    cfg = open_source(str(folder)).config
    expected = [pipeline.stack_layers(cfg, r) for r in pipeline.split(cfg, 3)]
    for doc, (enc, dec) in zip(ranks, expected):
        assert doc["encoder_layers"] == ([enc.start, enc.stop - 1] if enc else None)
        assert doc["decoder_layers"] == ([dec.start, dec.stop - 1] if dec else None)
    res = run("attend", SOURCE, "--model", folder, "--dry-run", "--pipeline", "--ranks", "3")
    assert res.exit_code == 0 and "encoder 0" in res.stdout and "decoder" in res.stdout, res.stderr


def test_dry_run_of_a_target_run_plans_each_rank(seq2seq: Callable[[str], Path]) -> None:
    folder = seq2seq("t5")
    res = run("attend", SOURCE, "--target", TARGET, "--model", folder, "--dry-run", "--pipeline", "--ranks", "2",
              "--json", "--save", "x.npz")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [(r["encoder_layers"], r["decoder_layers"]) for r in doc["ranks"]] == [([0, 1], [0, 0]), (None, [1, 2])]
    assert all(r["weights_bytes"] < doc["one_process_weights_bytes"] for r in doc["ranks"])
    one_process = run("attend", SOURCE, "--target", TARGET, "--model", folder, "--dry-run", "--json", "--save", "x.npz")
    assert json.loads(one_process.stdout)["weights_bytes"] == doc["one_process_weights_bytes"]
    assert not Path("x.npz").exists()


@pytest.mark.parametrize("args, needles", [
    (["attend", SOURCE, "--target", TARGET, "--ranks", "2"], ["--ranks goes with"]),
    (["attend", SOURCE, "--target", TARGET, "--dry-run", "--pipeline"], ["number of processes"]),
    (["attend", SOURCE, "--target", TARGET, "--part", "encoder", "--measure", "alti", "--pipeline"],
     ["--measure alti", "--pipeline"]),
    (["attend", SOURCE, "--target", TARGET, "--pipeline", "--offload"], ["--offload and --pipeline"]),
    (["attend", SOURCE, "--target", TARGET, "--pipeline"], ["a single one", "torchrun"]),
    (["heads", SOURCE, "--target", TARGET, "--pipeline"], ["a single one", "torchrun"]),
    (["generate", SOURCE, "--pipeline"], ["a single one", "torchrun"]),
])
def test_what_a_seq2seq_pipeline_cannot_do_is_one_line(args: list[str], needles: list[str],
                                                       seq2seq: Callable[[str], Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    one_error(run(*args, "--model", seq2seq("t5")), UsageError("").exit_code, *needles)


@pytest.mark.parametrize("listing, why", [
    ((("resid", (2, 3), "float32"),) * 2, "twice"),
    (tuple((f"t{i}", (1,), "float32") for i in range(17)), "at most 16"),
    ((("resid", (2, 3), "object"),), "known dtype"),
    ((("resid", (-1, 3), "float32"),), "shape"),
    ((("resid", (1,) * 9, "float32"),), "shape"),
    ((("resid", (1 << 20, 1 << 20), "float32"),), "bytes"),
    ([("resid", (2, 3), "float32")], "at most 16"),
    ((("resid", (2.0, 3), "float32"),), "shape"),
])
def test_a_message_this_rank_cannot_read_is_refused_before_allocating(listing: Any, why: str) -> None:
    from attnscope.pipeline_link import check_manifest

    with pytest.raises(DeviceError, match=why):
        check_manifest(listing, 1)


def test_a_manifest_lists_the_stream_in_order() -> None:
    from attnscope.pipeline_link import manifest

    stream = {"resid": torch.zeros(3, 4), "memory": torch.zeros(5, 4, dtype=torch.float64)}
    assert manifest(stream) == (("resid", (3, 4), "float32"), ("memory", (5, 4), "float64"))


# ------------------------------------------------------------------ two processes against one

# (model, cut): None the byte balance's (T5: the encoder and decoder layer 0 on rank 0; BART: the encoder on rank
# 0), 2 the whole encoder on rank 0 and the decoder on rank 1, 1 a cut inside the encoder
SPLITS = [("t5", None), ("t5", 2), ("t5", 1), ("bart", None), ("bart", 1)]
PART = {None: "cross", 2: "decoder", 1: "encoder"}  # each split shows and saves the top-k of one part


def test_the_splits_tested_are_the_ones_named(seq2seq: Callable[[str], Path]) -> None:
    from attnscope.api import open_source

    t5, bart = (open_source(str(seq2seq(n))).config for n in ("t5", "bart"))
    assert pipeline.split(t5, 2) == [range(0, 3), range(3, 5)]  # a cut inside the decoder
    assert pipeline.split(bart, 2) == [range(0, 2), range(2, 5)]  # the encoder | the decoder


@pytest.mark.slow
@pytest.mark.parametrize("name, cut", SPLITS)
def test_attend_target_save_topk_and_json_equal_one_process(name: str, cut: int | None, tmp_path: Path,
                                                             seq2seq: Callable[[str], Path]) -> None:
    args = ["attend", SOURCE, "--target", TARGET, "--model", seq2seq(name), "--json", "--view", "topk",
            "--layer", "all", "--part", PART[cut]]
    a = one(tmp_path, *args, "--save", "one.npz", "--save-topk", "one_topk.npz")
    b = pipelined(tmp_path, cut, *args, "--save", "two.npz", "--save-topk", "two_topk.npz")
    same_document(*documents(a, b))  # rank 0 alone printed: one document
    with np.load(tmp_path / "one.npz") as x, np.load(tmp_path / "two.npz") as y:
        assert set(x.files) == set(y.files) >= {"encoder_attentions", "decoder_attentions", "cross_attentions",
                                                "source_token_ids", "decoder_token_ids", "source_tokens",
                                                "decoder_tokens"}
        for key in x.files:
            assert x[key].shape == y[key].shape, key
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(y[key], x[key], atol=BOUND, rtol=0, err_msg=key)
                assert float(np.abs(x[key]).max()) > 0.05, key  # patterns, not zeros
            else:
                assert np.array_equal(x[key], y[key]), key
    same_npz(tmp_path / "one_topk.npz", tmp_path / "two_topk.npz")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npz") == [
        "one.npz", "one_topk.npz", "two.npz", "two_topk.npz"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("name, cut", SPLITS)
def test_heads_target_json_equals_one_process(name: str, cut: int | None, tmp_path: Path,
                                              seq2seq: Callable[[str], Path]) -> None:
    """The cross part's diagonal on every split, and each stack's self-attention scores on one."""
    parts = ["cross"] + (["encoder", "decoder"] if cut == 1 else [])
    for part in parts:
        args = ["heads", SOURCE, "--target", TARGET, "--model", seq2seq(name), "--json", "--part", part]
        a, b = one(tmp_path, *args), pipelined(tmp_path, cut, *args)
        ja, jb = documents(a, b)
        if part == "cross":
            assert set(ja["scores"]) == {"diagonal"}
        same_document(ja, jb)


@pytest.mark.slow
@pytest.mark.parametrize("name, cut", SPLITS)
def test_generate_json_equals_one_process(name: str, cut: int | None, tmp_path: Path,
                                          seq2seq: Callable[[str], Path]) -> None:
    """Token by token through each rank's own self-attention cache and cross keys and values."""
    args = ["generate", SOURCE, "--model", seq2seq(name), "--json", "-n", "6", "--ignore-eos", "--layer", "all"]
    a, b = one(tmp_path, *args, "--save", "one.npz"), pipelined(tmp_path, cut, *args, "--save", "two.npz")
    ja, jb = documents(a, b)
    assert ja["generated"]["ids"] == jb["generated"]["ids"] and len(ja["steps"]) == 6
    same_document(ja, jb)
    with np.load(tmp_path / "one.npz") as x, np.load(tmp_path / "two.npz") as y:  # the teacher-forced pass of --save
        assert set(x.files) == set(y.files) >= {"cross_attentions", "generated_token_ids"}
        for key in x.files:
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(y[key], x[key], atol=BOUND, rtol=0, err_msg=key)
            else:
                assert np.array_equal(x[key], y[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["attend", SOURCE, "--target", TARGET, "--measure", "norm", "--view", "topk", "--layer", "all"],
    ["attend", SOURCE, "--target", TARGET, "--part", "encoder", "--measure", "rollout", "--view", "topk"],
    ["generate", SOURCE, "--measure", "norm", "-n", "4", "--ignore-eos", "--layer", "all"],
    ["attend", SOURCE, "--view", "topk", "--layer", "all"],  # no target: the encoder alone, over both ranks
])
def test_measures_and_the_encoder_alone_equal_one_process(args: list[str], tmp_path: Path,
                                                          seq2seq: Callable[[str], Path]) -> None:
    """--measure norm reads each head's value sizes on the rank that owns the layer (the
    cross part's from the encoder's states it received); rollout composes the relayed
    encoder patterns on rank 0."""
    args = [*args, "--model", seq2seq("t5"), "--json"]
    a, b = one(tmp_path, *args), pipelined(tmp_path, 1, *args)
    same_document(*documents(a, b))


@pytest.mark.slow
def test_a_t5_gguf_file_equals_one_process(tmp_path: Path) -> None:
    """A share of a T5 GGUF file reads its decoder blocks from the file too (the encoder on rank 0, the decoder on 1)."""
    import test_gguf_t5

    path = test_gguf_t5.write_t5_gguf(test_gguf_t5.build_t5(tmp_path / "folder", v11=False), tmp_path / "tiny.gguf")
    args = ["attend", SOURCE, "--target", TARGET, "--model", path, "--json"]
    a = one(tmp_path, *args, "--save", "one.npz")
    b = pipelined(tmp_path, 2, *args, "--save", "two.npz")
    same_document(*documents(a, b))
    with np.load(tmp_path / "one.npz") as x, np.load(tmp_path / "two.npz") as y:
        for key in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
            np.testing.assert_allclose(y[key], x[key], atol=BOUND, rtol=0, err_msg=key)


# Counts on rank 0 what each stream message carries, then runs the CLI under the forced split.
COUNT = """
import os, sys
import attnscope.pipeline_link as link

sent = []
orig = link._Link.send_named


def counting(self, peer, header, tensors):
    sent.append(",".join(tensors))
    return orig(self, peer, header, tensors)


link._Link.send_named = counting
import atexit

atexit.register(lambda: open(os.environ["H5_LOG"] + os.environ["RANK"], "w").write("\\n".join(sent)))
""" + SPLIT


@pytest.mark.slow
def test_the_encoders_states_travel_once_per_decoding(tmp_path: Path, seq2seq: Callable[[str], Path]) -> None:
    """generate -n 5 with the encoder on rank 0 and the decoder on rank 1: the encoder's pass
    stays on rank 0; the first decoder step sends the encoder's states with the stream, the
    four after it the stream alone (rank 1 keeps them with its cache)."""
    log = tmp_path / "sent."
    b = pipelined(tmp_path, 2, "generate", SOURCE, "--model", seq2seq("t5"), "--json", "-n", "5", "--ignore-eos",
                  script=COUNT, extra={"H5_LOG": str(log)})
    assert b.returncode == 0, b.stderr[-3000:]
    assert (tmp_path / "sent.0").read_text().splitlines() == ["resid,memory"] + ["resid"] * 4
    assert (tmp_path / "sent.1").read_text().splitlines() == ["resid"] * 5  # each step's stream back to rank 0


DIE = """
import os, signal, sys
import attnscope.pipeline as p

if os.environ.get("RANK") == "1":
    serve = p.serve

    def dying(net, link, ranges):
        recv = link.recv

        def then_die(peer):
            header = recv(peer)
            if header[0] == "pass" and header[-1] > 0:  # the decoder's pass: this rank dies instead of running it
                os.kill(os.getpid(), signal.SIGKILL)
            return header

        link.recv = then_die
        return serve(net, link, ranges)

    p.serve = dying
""" + SPLIT


@pytest.mark.slow
def test_a_rank_killed_at_the_decoders_pass_ends_the_other_with_one_line(tmp_path: Path,
                                                                         seq2seq: Callable[[str], Path]) -> None:
    # rank 1 runs the encoder's second layer, then dies when the decoder's pass comes
    b = pipelined(tmp_path, 1, "attend", SOURCE, "--target", TARGET, "--model", seq2seq("t5"), "--save", "out.npz",
                  script=DIE, launcher=("--monitor-interval", "2"))
    assert b.returncode != 0
    lines = errors(b.stderr)
    assert len(lines) == 1 and "rank 1 stopped or cannot be reached (seen from rank 0)" in lines[0], b.stderr[-3000:]
    assert "internal error" not in b.stderr and f'File "{REPO / "attnscope"}' not in b.stderr
    assert not list(tmp_path.glob("*.npz")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

