"""`heads --corpus` on models with experts (issue 25): the expert load, per MoE layer.

For each selected MoE layer, how many (token, choice) pairs each expert received, pooled
over every text like the scores (attnscope/corpus/pooling.py, routing.expert_counts),
kept per text in the per-text file (corpus/records.py: the header's `routes`, each
record's `expert_counts`, validated on resume) and shown as shares (heads --json
`expert_load`, the view's "Expert load" section).

Expected counts come from transformers' own router (eager experts), text by text, on the
three tiny MoE checkpoints of tests/tiny_models_moe.py. A router's choice is exact only
where a token's k-th and (k+1)-th probabilities lie further apart than float32 noise
(MARGIN, as tests/test_family_moe.py): the corpus compared with transformers keeps the
texts with no such near-tie in any layer, and must keep most of them.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from family_checks import cached, run_hooked
import tiny_models as tm
import tiny_models_moe as tmoe
from attnscope import corpus
from attnscope import heads as hd
from attnscope.corpus import records
from attnscope.errors import InputError

NAMES = ["mixtral", "qwen2_moe", "qwen3_moe"]
MARGIN = 1e-4  # a token's k-th and (k+1)-th router probabilities further apart than float32 noise
REPO = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
# Texts of many lengths: one of 90+ tokens (past Mixtral's window of 16), one of a word.
TEXTS = tm.SENTENCES + [
    tmoe.MOE_TEXT,
    "moon",
    "the cat sat on the mat and the cat slept on the mat",
    "the dog saw the dog and the dog saw the cat, the cat saw the dog",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return cached(lambda name: tmoe.MOE_BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def ours(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    return cached(lambda name: load(str(folder(name)), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    def make(name: str) -> Any:
        model = tm.load_reference(folder(name))
        model.config._experts_implementation = "eager"
        return model

    return cached(make)


def their_counts(model: Any, ids: list[int], n_experts: int) -> tuple[dict[int, torch.Tensor], bool]:
    """Per MoE layer, how many of the text's (token, choice) pairs transformers' router
    sent to each expert; and whether every token's choice is clear of a near-tie."""
    chosen: dict[int, torch.Tensor] = {}
    clear = True
    handles = []
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None or not hasattr(gate, "top_k"):
            continue

        def catch(module: Any, args: Any, out: Any, i: int = i) -> None:
            nonlocal clear
            logits, _, experts = out
            k = experts.shape[-1]
            top = torch.softmax(logits.float(), dim=-1).topk(k + 1, dim=-1).values
            clear = clear and bool(((top[:, k - 1] - top[:, k]) > MARGIN).all())
            chosen[i] = experts

        handles.append(gate.register_forward_hook(catch))
    run_hooked(model, ids, handles)
    return {i: torch.bincount(e.reshape(-1), minlength=n_experts) for i, e in chosen.items()}, clear


def plain(texts: list[str]) -> list[tuple[int, str]]:
    return [(i + 1, t) for i, t in enumerate(texts)]


def n_experts(m: Any) -> int:
    from attnscope import routing

    return routing.n_experts(m.config, routing.moe_layers(m.config))


@pytest.fixture(scope="module")
def clear_texts(ours: Callable, reference: Callable) -> Callable[[str], tuple[list[str], torch.Tensor]]:
    """`clear_texts(name)`: the texts with no near-tie in any MoE layer, and transformers'
    counts over them, (MoE layers, E) int64."""

    def make(name: str) -> tuple[list[str], torch.Tensor]:
        m = ours(name)
        kept, total = [], None
        for text in TEXTS:
            counts, clear = their_counts(reference(name), m.tokenize(text).ids, n_experts(m))
            if not clear:
                continue
            kept.append(text)
            grid = torch.stack([counts[layer] for layer in sorted(counts)])
            total = grid if total is None else total + grid
        assert len(kept) >= len(TEXTS) - 3, f"{name}: {len(TEXTS) - len(kept)} texts have near-ties"
        assert total is not None
        return kept, total

    return cached(make)


# ------------------------------------------------------------------ pooled load


@pytest.mark.parametrize("name", NAMES)
def test_pooled_load_equals_transformers_text_by_text(name: str, ours: Callable, clear_texts: Callable) -> None:
    """The pooled counts are transformers' router's, text by text, summed; each layer's
    total is tokens × k; the shares are counts / that total."""
    from attnscope import routing

    m = ours(name)
    texts, expect = clear_texts(name)
    res = corpus.corpus_scores(m, plain(texts), names=["self"])
    assert res is not None and res.expert_counts is not None
    assert res.moe_layers == routing.moe_layers(m.config) and res.top_k == 2
    assert torch.equal(res.expert_counts, expect), f"{name}: {res.expert_counts} != {expect}"
    assert res.expert_counts.sum(-1).tolist() == [res.n_tokens * res.top_k] * len(res.moe_layers)
    torch.testing.assert_close(res.expert_load(), expect.double() / (res.n_tokens * 2), rtol=0, atol=1e-15)
    doc = corpus.corpus_dict(res)
    assert doc["expert_counts"] == {str(layer): row for layer, row in zip(res.moe_layers, expect.tolist())}
    assert list(doc["expert_load"]) == [str(layer) for layer in res.moe_layers]
    spread = doc["expert_spread"][str(res.moe_layers[0])]
    share = expect[0].double() / expect[0].sum()
    assert spread["max_share"] == float(share.max()) and spread["min_share"] == float(share.min())
    assert spread["cv"] == pytest.approx(float(share.std(unbiased=False) / share.mean()), rel=1e-12)


def test_our_route_probe_per_text_equals_transformers(ours: Callable, reference: Callable) -> None:
    """The single-text `heads` counts (our RouteProbe on the scores' pass) equal
    transformers' router on the same ids, on a 90+-token text."""
    m = ours("qwen3_moe")
    res = hd.head_scores(m, tmoe.MOE_TEXT, names=["self"])
    counts, clear = their_counts(reference("qwen3_moe"), res.tokens.ids, n_experts(m))
    assert clear and res.expert_counts is not None
    assert torch.equal(res.expert_counts, torch.stack([counts[layer] for layer in res.moe_layers]))


@pytest.mark.parametrize("name", NAMES)
def test_packed_passes_cut_routes_at_each_text(name: str, tmp_path: Path, ours: Callable,
                                               clear_texts: Callable) -> None:
    """Packed into passes of 40 tokens or all at once, every text's record holds its own
    routes only: each equals the record of a pass of its own, and the pooled counts too."""
    m = ours(name)
    texts, expect = clear_texts(name)
    one = corpus.corpus_scores(m, plain(texts), names=["self"], per_text=tmp_path / "one.jsonl")
    assert one is not None and torch.equal(one.expert_counts, expect)
    alone = [json.loads(x)["expert_counts"] for x in (tmp_path / "one.jsonl").read_text().splitlines()[1:]]
    for batch in (40, 100000):
        out = tmp_path / f"packed{batch}.jsonl"
        packed = corpus.corpus_scores(m, plain(texts), names=["self"], per_text=out, batch_tokens=batch)
        assert packed is not None and torch.equal(packed.expert_counts, expect), batch
        recs = [json.loads(x) for x in out.read_text().splitlines()[1:]]
        assert [r["expert_counts"] for r in recs] == alone, batch
        for r in recs:
            assert [sum(row) for row in r["expert_counts"]] == [2 * r["n_tokens"]] * len(one.moe_layers)


@pytest.mark.parametrize("builder", ["gpt_oss", "deepseek_moe"])
def test_other_routers_count_what_they_route(builder: str, tmp_path: Path) -> None:
    """gpt-oss (top-k logits, then a softmax over them) and DeepSeek-V3 (grouped sigmoid
    routing, 3 experts a token, a dense first layer): the pooled counts are the routes
    each text's own pass reports (`routing.route`, which tests/test_family_* hold to
    transformers), summed."""
    import tiny_models_deepseek as tds
    import tiny_models_gpt_oss as tgo
    from attnscope import routing
    from attnscope.api import load

    make = {"gpt_oss": tgo.gpt_oss, "deepseek_moe": tds.deepseek_moe}[builder]
    m = load(str(make(tmp_path / builder)), device="cpu", dtype="float32")
    layers = routing.moe_layers(m.config)
    E, k = routing.n_experts(m.config, layers), routing.top_k(m.config, layers)
    expect = sum(routing.expert_counts(routing.route(m, m.tokenize(t).ids).experts, E) for t in TEXTS)
    res = corpus.corpus_scores(m, plain(TEXTS), names=["self"])
    assert res is not None and res.moe_layers == layers and res.top_k == k
    assert torch.equal(res.expert_counts, expect)
    assert res.expert_counts.sum(-1).tolist() == [k * res.n_tokens] * len(layers)


def test_selected_layers_only(ours: Callable) -> None:
    """--layer picks which MoE layers are counted; a selection without one counts none."""
    m = ours("qwen3_moe")
    res = corpus.corpus_scores(m, plain(TEXTS[:3]), names=["self"], layers="2")
    assert res is not None and res.moe_layers == [2] and res.expert_counts.shape == (1, n_experts(m))
    none = corpus.corpus_scores(m, plain(TEXTS[:3]), names=["self"], layers="0")
    assert none is not None and none.expert_counts is None and "expert_load" not in corpus.corpus_dict(none)
    normed = corpus.corpus_scores(m, plain(TEXTS[:3]), names=["self"], layers="2", measure="norm")
    assert normed is not None and torch.equal(normed.expert_counts, res.expert_counts)  # routes beside any measure


# ------------------------------------------------------------------ per-text file, resume


def test_resume_gives_the_same_load(tmp_path: Path, ours: Callable) -> None:
    m = ours("qwen2_moe")
    full = tmp_path / "full.jsonl"
    whole = corpus.corpus_scores(m, plain(TEXTS), names=["self", "entropy"], per_text=full)
    header, *recs = (json.loads(x) for x in full.read_text().splitlines())
    assert header["routes"] == {"layers": [1], "experts": 6, "top_k": 2}
    assert all(len(r["expert_counts"]) == 1 and len(r["expert_counts"][0]) == 6 for r in recs)
    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:5]) + lines[5][:40])  # header, 4 texts, a write cut short
    again = corpus.corpus_scores(m, plain(TEXTS), names=["self", "entropy"], per_text=part, resume=True)
    assert again is not None and again.resumed == 4
    assert torch.equal(again.expert_counts, whole.expert_counts)
    assert part.read_text() == full.read_text()
    done = corpus.corpus_scores(m, plain(TEXTS), names=["self", "entropy"], per_text=part, resume=True)
    assert done is not None and done.resumed == len(TEXTS) and torch.equal(done.expert_counts, whole.expert_counts)


def _forge(rec: dict[str, Any], how: str) -> dict[str, Any]:
    rec = copy.deepcopy(rec)
    row = rec["expert_counts"][0]
    if how == "missing":
        del rec["expert_counts"]
    elif how == "null":
        rec["expert_counts"] = None
    elif how == "a layer short":
        rec["expert_counts"] = []
    elif how == "a layer more":
        rec["expert_counts"].append(list(row))
    elif how == "an expert more":
        row.append(0)
    elif how == "negative":
        row[0], row[1] = row[0] + row[1] + 1, -1
    elif how == "fraction":
        row[0] = row[0] + 0.0
    elif how == "boolean":
        row[-1], row[0] = True, row[0] + row[-1] - 1
    elif how == "string":
        row[0] = str(row[0])
    elif how == "sum":
        row[0] += 1
    elif how == "huge":
        row[0] += 10**300
    elif how == "nested":
        row[0] = [row[0]]
    return rec


FORGERIES = {
    "missing": "are not a 1 x 6 grid", "null": "are not a 1 x 6 grid", "a layer short": "are not a 1 x 6 grid",
    "a layer more": "are not a 1 x 6 grid", "an expert more": "are not a 1 x 6 grid", "nested": "are not all whole",
    "negative": "are not all whole numbers >= 0", "fraction": "are not all whole numbers >= 0",
    "boolean": "are not all whole numbers >= 0", "string": "are not all whole numbers >= 0",
    "sum": "sum to", "huge": "sum to",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, ours: Callable) -> Path:
    out = tmp_path_factory.mktemp("written") / "per.jsonl"
    corpus.corpus_scores(ours("qwen2_moe"), plain(TEXTS[:3]), names=["self"], per_text=out)
    return out


@pytest.mark.parametrize("how", list(FORGERIES))
def test_forged_expert_counts_are_refused(how: str, tmp_path: Path, ours: Callable, written: Path) -> None:
    lines = written.read_text().splitlines()
    bad = _forge(json.loads(lines[2]), how)
    out = tmp_path / "per.jsonl"
    out.write_text("\n".join([lines[0], lines[1], records.dumps_line(bad).rstrip("\n"), lines[3]]) + "\n")
    with pytest.raises(InputError, match="line 3 of .*per.jsonl is not a per-text record: its expert_counts") as exc:
        corpus.corpus_scores(ours("qwen2_moe"), plain(TEXTS[:3]), names=["self"], per_text=out, resume=True)
    assert FORGERIES[how] in exc.value.message and "\n" not in exc.value.message


def test_forged_counts_through_the_cli_are_one_line(tmp_path: Path, folder: Callable, written: Path) -> None:
    from attnscope.cli import app

    lines = written.read_text().splitlines()
    out = tmp_path / "per.jsonl"
    out.write_text("\n".join([lines[0], records.dumps_line(_forge(json.loads(lines[1]), "sum")).rstrip("\n")]) + "\n")
    text = tmp_path / "c.txt"
    text.write_text("\n".join(TEXTS[:3]) + "\n")
    result = CliRunner().invoke(app, ["heads", "--model", str(folder("qwen2_moe")), "--corpus", str(text),
                                      "--score", "self", "--per-text", str(out), "--resume", "--device", "cpu"], env=ENV)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "its expert_counts for layer 1 sum to" in result.output


def test_a_file_from_another_model_is_refused(tmp_path: Path, ours: Callable, written: Path) -> None:
    """The header says the model routes: a dense model's file (no `routes`) is refused by
    an MoE run, an MoE file by a dense run, and a record with counts under a dense header."""
    header = json.loads(written.read_text().splitlines()[0])
    dense = {k: v for k, v in header.items() if k != "routes"}
    with pytest.raises(InputError, match="was written with routes null"):
        records.check_header(written, json.dumps(dense).encode(), header)
    with pytest.raises(InputError, match='was written with routes {"layers": \\[1\\]'):
        records.check_header(written, json.dumps(header).encode(), dense)
    other = dict(header, routes={"layers": [1], "experts": 8, "top_k": 2})
    with pytest.raises(InputError, match="was written with routes"):
        records.check_header(written, json.dumps(other).encode(), header)
    rec = written.read_text().splitlines()[1]
    with pytest.raises(InputError, match="its expert_counts, but the run's model has no experts|has expert_counts"):
        records.parse_record(rec, dense, None, "line 2")
    out = tmp_path / "per.jsonl"  # through a run: the header is refused before any text runs
    out.write_text(records.dumps_line(dense) + "\n".join(written.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(InputError, match="was written with routes null"):
        corpus.corpus_scores(ours("qwen2_moe"), plain(TEXTS[:3]), names=["self"], per_text=out, resume=True)


# ------------------------------------------------------------------ two processes

DIST_SCRIPT = r'''
import json, sys
from attnscope import corpus, distributed
from attnscope.api import load

folder, corpus_path, per_text, resumed, out = sys.argv[1:6]
group = distributed.start("cpu")
m = load(folder, device="cpu", dtype="float32")
texts = list(corpus.read_corpus(corpus_path))
doc = {}
for key, kwargs in [("fresh", dict(per_text=per_text, batch_tokens=60)), ("resumed", dict(per_text=resumed, resume=True))]:
    res = corpus.corpus_scores(m, texts, names=["self"], **kwargs)
    if group.rank == 0:
        doc[key] = {"expert_counts": res.expert_counts.tolist(), "moe_layers": res.moe_layers, "world": res.world,
                    "resumed": res.resumed, "n_tokens": res.n_tokens}
    else:
        assert res is None
if group.rank == 0:
    with open(out, "w") as f:
        json.dump(doc, f)
distributed.finish()
'''


def test_two_processes_equal_one(tmp_path: Path, folder: Callable, ours: Callable, clear_texts: Callable) -> None:
    import socket

    texts, expect = clear_texts("qwen3_moe")
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(texts) + "\n")
    one = corpus.corpus_scores(ours("qwen3_moe"), list(corpus.read_corpus(str(text_file))), names=["self"],
                               per_text=tmp_path / "one.jsonl")
    assert one is not None and torch.equal(one.expert_counts, expect)
    lines = (tmp_path / "one.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "resumed.jsonl").write_text("".join(lines[:4]))  # a one-process run stopped after 3 texts
    script = tmp_path / "run.py"
    script.write_text(DIST_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           str(script), str(folder("qwen3_moe")), str(text_file), str(tmp_path / "two.jsonl"),
           str(tmp_path / "resumed.jsonl"), str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out.json").read_text())
    for key, resumed in [("fresh", 0), ("resumed", 3)]:
        two = doc[key]
        assert two["world"] == 2 and two["resumed"] == resumed and two["n_tokens"] == one.n_tokens
        assert two["moe_layers"] == one.moe_layers and two["expert_counts"] == expect.tolist(), key
    merged = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()[1:]]
    assert [r["expert_counts"] for r in merged] == [json.loads(x)["expert_counts"] for x in lines[1:]]


# ------------------------------------------------------------------ the command


def _heads(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, ["heads", "--device", "cpu", *args], env=ENV)


def test_cli_json_and_view(tmp_path: Path, folder: Callable, ours: Callable, clear_texts: Callable) -> None:
    texts, expect = clear_texts("qwen2_moe")
    path = tmp_path / "c.txt"
    path.write_text("\n".join(texts) + "\n")
    result = _heads("--model", str(folder("qwen2_moe")), "--corpus", str(path), "--score", "self", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["expert_counts"] == {"1": expect[0].tolist()} and doc["top_k"] == 2
    assert doc["expert_load"]["1"] == (expect[0].double() / expect[0].sum()).tolist()
    view = _heads("--model", str(folder("qwen2_moe")), "--corpus", str(path), "--score", "self", "--no-color")
    assert view.exit_code == 0, view.output
    body = view.stdout[view.stdout.index("Expert load"):]
    share = expect[0].double() / expect[0].sum()
    assert "over every text" in body and "2 of 6 experts" in body
    assert f"CV {float(share.std(unbiased=False) / share.mean()):.2f}" in body
    for e, v in enumerate(share.tolist()):
        assert f"E{e} {100 * v:4.1f}%" in body
    ratio = "∞" if float(share.min()) == 0 else f"{float(share.max() / share.min()):.1f}"
    assert f"max/min {ratio}" in body


def test_single_text_heads_shows_its_load(folder: Callable, ours: Callable, reference: Callable,
                                          clear_texts: Callable) -> None:
    """`heads` on one text (no --corpus) counts that text's routes, as transformers routes it."""
    m = ours("mixtral")
    text = max(clear_texts("mixtral")[0], key=len)
    result = _heads(text, "--model", str(folder("mixtral")), "--score", "self", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    counts, clear = their_counts(reference("mixtral"), doc["text"]["ids"], n_experts(m))
    assert clear and len(counts) == 3
    assert doc["expert_counts"] == {str(layer): counts[layer].tolist() for layer in sorted(counts)}
    view = _heads(text, "--model", str(folder("mixtral")), "--score", "self", "--no-color")
    assert view.exit_code == 0 and "Expert load" in view.stdout and "over the text" in view.stdout


def test_dense_models_show_no_load(tmp_path: Path, build: Callable) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(TEXTS[:3]) + "\n")
    per = tmp_path / "per.jsonl"
    result = _heads("--model", str(build("llama")), "--corpus", str(path), "--per-text", str(per), "--json")
    assert result.exit_code == 0, result.output
    assert not any(key.startswith("expert") for key in json.loads(result.stdout))
    header, *recs = (json.loads(x) for x in per.read_text().splitlines())
    assert "routes" not in header and not any("expert_counts" in r for r in recs)
    view = _heads("--model", str(build("llama")), "--no-color")
    assert view.exit_code == 0 and "Expert load" not in view.stdout


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats(allow_nan=True)
                     | st.text(max_size=3), lambda inner: st.lists(inner, max_size=8), max_leaves=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_JSON | st.lists(st.lists(st.integers(-2, 40), min_size=5, max_size=7), min_size=0, max_size=2))
def test_any_expert_counts_value_is_a_checked_grid_or_one_line(value: Any, written: Path) -> None:
    """Whatever a record's expert_counts hold, a resume reads a (1, 6) grid of whole
    numbers ≥ 0 summing to n_tokens × 2, or refuses the line in one sentence."""
    header, raw = (json.loads(x) for x in written.read_text().splitlines()[:2])
    raw["expert_counts"] = value
    try:
        _, rec = records.parse_record(json.dumps(raw), header, None, "line 2")
    except InputError as exc:
        assert exc.message.startswith("line 2 is not a per-text record: its expert_counts")
        assert "\n" not in exc.message
        return
    assert rec.experts is not None and rec.experts.shape == (1, 6) and rec.experts.dtype == torch.long
    assert int(rec.experts.min()) >= 0 and rec.experts.sum(-1).tolist() == [2 * rec.n_tokens]
