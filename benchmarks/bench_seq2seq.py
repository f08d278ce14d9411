"""How fast, and how big, is looking at an encoder-decoder's attention? attnscope against transformers.

Two random-weight checkpoints, float32, each saved with transformers' own save_pretrained
(safetensors) in a temp folder with a word-level tokenizer.json whose words are `w0` … `wV-1`
(one per id, no special tokens added), so a text of n seeded random words is exactly n tokens:

  * T5 with t5-small's shape: 6 + 6 layers, d_model 512, 8 heads of 64, d_ff 2048 (relu),
    vocab 32128, tied head (60,506,624 parameters); n_positions 1024 instead of t5-small's
    512 (no weight depends on it: the relative buckets have no bound, but attnscope refuses
    a text longer than n_positions, the trained length);
  * BART with bart-base's shape: 6 + 6 layers, d_model 768, 12 heads, ffn 3072, vocab 50265,
    1024 learned positions (139,420,416 parameters).

At n source tokens and an n-token decoder input (the decoder start token + n − 1 target
words, teacher forcing; BART's 1024 positions bound the decoder input, hence n − 1), with
n = 128, 512, 1024, two tasks, each a fresh process timed from its start to its exit
(imports, loading, the pass, the output):

  * topk: ours `attnscope attend SOURCE --target TARGET --view topk --layer -1` (the cross
    part, last layer, every target token's top 3 source tokens per head, the table on a pipe);
    theirs a python process: tokenizers' Tokenizer on the same tokenizer.json, then
    `T5Model` / `BartModel.from_pretrained(FOLDER, attn_implementation="eager")` called with
    `output_attentions=True`, `torch.topk` of the last layer's cross-attentions, printed
    as plain text rows;
  * save: ours `attnscope attend SOURCE --target TARGET --save FILE.npz` (all three parts,
    streamed layer by layer); theirs the same forward pass, the three attention tuples
    concatenated and written with `np.savez` beside the ids and tokens: the same six names.

The base models (no LM head) are transformers' side because attend computes no logits
either. Every process runs one thread (OMP_NUM_THREADS=MKL_NUM_THREADS=1, and
torch.set_num_threads(1) in theirs). Each case runs --runs times (default 3), ours and
theirs in turn, after one untimed warm-up round per model (so both read the checkpoint from
the page cache). Reported: median wall and CPU seconds and median peak RSS (ru_maxrss of the
exited process from wait4, as `/usr/bin/time -v` reports it; this parent imports no torch
or numpy, so its own high-water mark, folded into each child's at fork, stays a small
floor, printed), and ours / theirs of each median.

After the save runs of each case, a child loads both files member by member and the
benchmark asserts the ids are equal and every attention array agrees within 1e-5 (float32
both sides; the issue's bound), printing the largest absolute difference and each part's mean
row maximum beside 1 / n (how far from uniform the patterns are: with transformers' default
init, BART's encoder and cross patterns are close to uniform, so its check is the weaker one;
tests/test_family_bart.py checks sharper tiny models).

    python benchmarks/bench_seq2seq.py                  # both models, n = 128, 512, 1024 (bart-base: 128, 512)
    python benchmarks/bench_seq2seq.py --skip ''        # every case, bart-base at 1024 too
    python benchmarks/bench_seq2seq.py --sizes 128,512 --runs 2 --models t5

Nothing downloads. The default run takes about 12 minutes on 2 cores shared at load average 10 (every
case, --skip '': 16 minutes there); fewer on quiet cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One of each helper: the environment, the machine and the revision (bench_attend); a whole
# process timed and reaped with wait4, and the RESULT-line children (bench_generate).
from bench_attend import REPO, RESULT, child_env, load_average, machine, revision
from bench_generate import ChildFailed, Proc, attnscope_cmd, parent_vmhwm_mb, run_child, run_process

SEED = 0
T5_SMALL = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
                vocab_size=32128, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0, dropout_rate=0.0,
                n_positions=1024)  # t5-small says 512 (its trained length; attnscope holds a text to it)
BART_BASE = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=50265,
                 max_position_embeddings=1024, activation_function="gelu", pad_token_id=1, bos_token_id=0,
                 eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, dropout=0.0,
                 attention_dropout=0.0, activation_dropout=0.0)
MODELS = {"t5": ("T5", T5_SMALL, "t5-small"), "bart": ("Bart", BART_BASE, "bart-base")}
SIZES = (128, 512, 1024)
TASKS = ("topk", "save")
KEYS = ("encoder_attentions", "decoder_attentions", "cross_attentions")
ATOL = 1e-5  # attention probabilities, float32 both sides (issue 28's bound)
FIRST_ID = 4  # random words avoid the special ids (T5 0-2, BART 0-3)


# --------------------------------------------------------------------------- children
# Run inside fresh processes: this file re-invoked with `--child WHAT ...`.


def report(**fields: Any) -> None:
    print(RESULT + json.dumps(fields), flush=True)


def child_build(name: str, folder: Path) -> None:
    """The checkpoint (transformers' save_pretrained, safetensors) and a word-level
    tokenizer.json whose words are w0 … wV-1, one per id."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls, shape, _ = MODELS[name]
    torch.manual_seed(SEED)
    model = getattr(transformers, f"{cls}ForConditionalGeneration")(getattr(transformers, f"{cls}Config")(**shape))
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {f"w{i}": i for i in range(shape["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    total = model.num_parameters()
    report(params=total, bytes=sum(p.stat().st_size for p in folder.glob("*.safetensors")))


def words(n: int, vocab: int, seed: int) -> str:
    """n seeded random words w<id>, ids in FIRST_ID .. vocab-1 (no torch: the parent calls it)."""
    import random

    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(FIRST_ID, vocab)}" for _ in range(n))


def child_theirs(name: str, folder: str, source: str, target: str, task: str, out: str) -> None:
    """transformers as a user would run it: tokenizer, base model (eager), one forward pass
    with output_attentions=True, then the last layer's cross top-3 printed, or the three
    parts written with np.savez."""
    import numpy as np
    import torch
    import transformers
    from tokenizers import Tokenizer

    torch.set_num_threads(1)
    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    model = getattr(transformers, f"{MODELS[name][0]}Model").from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    src = tok.encode(source)
    tgt = tok.encode(target)
    dec_ids = [model.config.decoder_start_token_id] + tgt.ids
    with torch.inference_mode():
        res = model(input_ids=torch.tensor([src.ids]), decoder_input_ids=torch.tensor([dec_ids]),
                    output_attentions=True)
        if task == "topk":
            values, indices = torch.topk(res.cross_attentions[-1][0], 3, dim=-1)  # (H, n_tgt, 3)
            lines = [f"{i} h{h} " + " ".join(f"{src.tokens[j]}:{w:.3f}" for j, w in zip(ix, vs))
                     for h in range(values.shape[0])
                     for i, (ix, vs) in enumerate(zip(indices[h].tolist(), values[h].tolist()))]
            sys.stdout.write("\n".join(lines) + "\n")
        else:
            np.savez(out, **{key: torch.cat(getattr(res, key)).numpy() for key in KEYS},
                     source_token_ids=np.array(src.ids), decoder_token_ids=np.array(dec_ids),
                     source_tokens=np.array(src.tokens),
                     decoder_tokens=np.array([tok.id_to_token(dec_ids[0]) or ""] + tgt.tokens))
    report(n_src=len(src.ids), n_dec=len(dec_ids))


def child_compare(ours: str, theirs: str) -> None:
    """Both files member by member (one pair of arrays held at a time)."""
    import numpy as np

    diffs: dict[str, float] = {}
    with np.load(ours, allow_pickle=False) as a, np.load(theirs, allow_pickle=False) as b:
        same_ids = all(np.array_equal(a[k], b[k]) for k in ("source_token_ids", "decoder_token_ids"))
        for key in KEYS:
            x, y = a[key], b[key]
            if x.shape != y.shape:
                report(same_ids=same_ids, error=f"{key}: shape {x.shape} vs {y.shape}")
                return
            diffs[key] = float(np.abs(x - y).max())
            diffs[key + "_shape"] = list(x.shape)  # type: ignore[assignment]
            diffs[key + "_top"] = float(x.max(axis=-1).mean())  # mean row maximum: how far from uniform
            del x, y
    report(same_ids=same_ids, **diffs)


def child_main(argv: list[str]) -> None:
    what = argv[0]
    if what == "build":
        child_build(argv[1], Path(argv[2]))
    elif what == "theirs":
        child_theirs(*argv[1:7])
    elif what == "compare":
        child_compare(argv[1], argv[2])
    elif what == "threads":
        import torch

        report(threads=torch.get_num_threads())
    else:
        raise SystemExit(f"unknown child {what!r}")


# --------------------------------------------------------------------------- parent


@dataclass
class Runs:
    """The timed runs of one command in one case."""

    procs: list[Proc] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, what: str) -> float:
        return statistics.median(getattr(p, what) for p in self.procs) if self.procs else float("nan")


def run_once(cmd: list[str], env: dict[str, str], timeout: float, runs: Runs | None, label: str,
             remove: Path | None) -> None:
    """One process; kept in `runs` (None: a warm-up). `remove`: a file deleted first (untimed)."""
    if remove is not None and remove.exists():
        remove.unlink()
    p = run_process(cmd, env, timeout)
    why = p.error()
    if why is None and remove is not None and not remove.exists():
        why = f"exit 0 but no {remove.name}"
    if why is not None:
        print(f"    {label}: {why}", file=sys.stderr, flush=True)
        if runs is not None:
            runs.errors.append(why)
        return
    print(f"    {label}: {p.wall:.2f} s, {p.peak_mb:,.0f} MB", file=sys.stderr, flush=True)
    if runs is not None:
        runs.procs.append(p)


def cell(runs: Runs) -> str:
    if not runs.procs:
        return f"{runs.errors[-1][:80] if runs.errors else 'no runs'} | — | —"
    return f"{runs.median('wall'):.2f} | {runs.median('cpu'):.2f} | {runs.median('peak_mb'):,.0f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="t5,bart", help="comma-separated: t5, bart (default both)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated n (default 128,512,1024)")
    parser.add_argument("--skip", default="bart:1024",
                        help="comma-separated MODEL:N cases left out (default bart:1024, to stay near 10 minutes; "
                             "'' runs every case)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each command per case (default 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to one process (default 600)")
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    if not names or any(m not in MODELS for m in names):
        parser.error(f"--models takes {', '.join(MODELS)}")
    if not sizes or any(not 2 <= n <= 1024 for n in sizes):
        parser.error("--sizes must lie in 2..1024 (bart-base has 1024 positions)")
    if args.runs < 1:
        parser.error("--runs must be 1 or more")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    env = child_env()
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    try:
        threads = run_child(["threads"], env, script=__file__)["threads"]
    except ChildFailed as exc:
        raise SystemExit(str(exc)) from None
    print(machine(threads), flush=True)
    rev = revision()
    print(f"attnscope revision: {rev}; load average at start: {load_average()}", flush=True)

    results: dict[tuple[str, int, str], tuple[Runs, Runs]] = {}
    agree: dict[tuple[str, int], dict[str, Any]] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as tmp:
        for name in names:
            folder = Path(tmp) / name
            folder.mkdir()
            t0 = time.perf_counter()
            try:
                built = run_child(["build", name, str(folder)], env, script=__file__)
            except ChildFailed as exc:
                print(f"{name}: not built: {exc}", flush=True)
                continue
            cls, shape, like = MODELS[name]
            print(f"{cls}: {like}'s shape, {built['params']:,} parameters, {built['bytes'] / 2**20:,.0f} MiB "
                  f"float32 safetensors + word-level tokenizer.json, built in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            first = True
            for n in sizes:
                if f"{name}:{n}" in skip:
                    continue
                source = words(n, shape["vocab_size"], SEED + n)
                target = words(n - 1, shape["vocab_size"], SEED + n + 1)
                ours_npz, theirs_npz = Path(tmp) / "ours.npz", Path(tmp) / "theirs.npz"
                base = attnscope_cmd() + ["attend", source, "--target", target, "--model", str(folder),
                                          "--device", "cpu", "--dtype", "float32"]
                cmds = {
                    "topk": (base + ["--view", "topk", "--layer", "-1", "--no-color"],
                             me + ["theirs", name, str(folder), source, target, "topk", "-"], None, None),
                    "save": (base + ["--save", str(ours_npz), "--json"],
                             me + ["theirs", name, str(folder), source, target, "save", str(theirs_npz)],
                             ours_npz, theirs_npz),
                }
                print(f"  {name} n={n}:", file=sys.stderr, flush=True)
                if first:  # one untimed round per model: imports and the checkpoint in the page cache
                    ours, theirs, _, _ = cmds["topk"]
                    run_once(ours, env, args.timeout, None, "ours topk warm-up", None)
                    run_once(theirs, env, args.timeout, None, "theirs topk warm-up", None)
                    first = False
                for task in TASKS:
                    ours, theirs, ours_file, theirs_file = cmds[task]
                    sides = (Runs(), Runs())
                    for i in range(args.runs):
                        run_once(ours, env, args.timeout, sides[0], f"ours {task} run {i + 1}", ours_file)
                        run_once(theirs, env, args.timeout, sides[1], f"theirs {task} run {i + 1}", theirs_file)
                    results[name, n, task] = sides
                if ours_npz.exists() and theirs_npz.exists():
                    try:
                        agree[name, n] = run_child(["compare", str(ours_npz), str(theirs_npz)], env, script=__file__)
                    except ChildFailed as exc:
                        agree[name, n] = {"error": str(exc)}
                for path in (ours_npz, theirs_npz):
                    path.unlink(missing_ok=True)

    total = time.perf_counter() - t_start
    print(f"\nEach cell: the median of {args.runs} runs of a fresh process (start to exit). cpu: user + sys; "
          f"peak RSS: ru_maxrss (this parent's own, a floor for every child: {parent_vmhwm_mb():.0f} MB). "
          "One thread per process. ours / theirs: the ratio of the medians.\n")
    print("| model | n src + n dec | task | ours wall s | ours cpu s | ours peak MB | theirs wall s | theirs cpu s "
          "| theirs peak MB | ours / theirs wall | ours / theirs peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, n, task), (ours, theirs) in results.items():
        ratio = "— | —"
        if ours.procs and theirs.procs:
            ratio = (f"{ours.median('wall') / theirs.median('wall'):.2f}× | "
                     f"{ours.median('peak_mb') / theirs.median('peak_mb'):.2f}×")
        print(f"| {MODELS[name][2]} | {n} + {n} | {task} | {cell(ours)} | {cell(theirs)} | {ratio} |")
    for name in names:
        left = [n for n in sizes if f"{name}:{n}" in skip]
        if left:
            print(f"\n{MODELS[name][2]}: n = {', '.join(map(str, left))} left out (--skip).")

    print("\nSaved arrays, ours against theirs (largest absolute difference; ids compared exactly):\n")
    failures = []
    for (name, n), res in agree.items():
        if "error" in res:
            failures.append(f"{name} n={n}: {res['error']}")
            print(f"- {MODELS[name][2]} n={n}: {res['error']}")
            continue
        parts = ", ".join(f"{key.split('_')[0]} {res[key + '_shape']} {res[key]:.1e} (mean row max "
                          f"{res[key + '_top']:.3f}, uniform {1 / res[key + '_shape'][-1]:.3f})" for key in KEYS)
        print(f"- {MODELS[name][2]} n={n}: ids {'equal' if res['same_ids'] else 'DIFFERENT'}; {parts}")
        if not res["same_ids"] or any(res[key] > ATOL for key in KEYS):
            failures.append(f"{name} n={n}")
    print(f"\nTotal {total / 60:.1f} min. Load average at end: {load_average()} (above 1 per process "
          "running means other processes shared the cores and wall times are inflated)")
    if revision().split("sources ")[1] != rev.split("sources ")[1]:
        print(f"WARNING: attnscope's sources changed during the run ({rev} -> {revision()}): rows may mix versions")
    assert not failures, f"saved arrays disagree beyond {ATOL}: {'; '.join(failures)}"
    missing = [f"{name} n={n} {task}" for (name, n, task), sides in results.items() if not all(s.procs for s in sides)]
    missing += [f"{name} n={n} compare (a last save run failed)" for (name, n, task) in results
                if task == "save" and (name, n) not in agree]
    assert not missing, f"cases without a run: {', '.join(missing)}"


if __name__ == "__main__":
    main()
