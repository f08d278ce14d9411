"""What does `--pipeline` cost and save on the CPU? Two processes against one.

A GPT-2-small-shaped random checkpoint (12 layers, width 768, 12 heads, 50,257 tokens,
tied embeddings, --tokens positions: 124M parameters, 498 MB in float32) is written to a
temporary folder; a text of --tokens tokens runs through

  * one process, all threads (--threads, default: every core);
  * one process, one thread (as each pipeline rank runs);
  * `torchrun --nproc-per-node 2 … --pipeline`, one thread each (gloo),

for two commands: `attend --view topk --layer -1` (only the last layer's pattern chunks
reach rank 0) and `heads --json` (every layer's patterns do: rank 1 relays six layers of
(12, T, T) float32 chunks to rank 0 over gloo). Each case is one fresh command line;
the table shows its wall time (start, load and pass) and, per process, the peak
resident memory (ru_maxrss) and its growth over the interpreter with torch and
attnscope imported (what the weights, the pass and the messages added). The results of
the two-process runs are checked equal to the one-process ones (|difference| printed).

    python benchmarks/bench_pipeline.py                 # 2,048 tokens
    python benchmarks/bench_pipeline.py --tokens 512    # quicker

A pipeline is for memory, not speed, on the CPU: the ranks run one after the other
(batch 1 has nothing to overlap), and the relayed patterns cost a copy each.
Nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import os, resource, sys
import torch, torch.distributed  # noqa: F401
import attnscope.api, attnscope.cli, attnscope.pipeline  # noqa: F401


def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


base = rss()
out = sys.argv[1]


def record():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(f"{out}.{os.environ.get('RANK', 'one')}", "w") as fh:
        fh.write(f"{base} {peak}")


import atexit

atexit.register(record)
sys.argv = ["attnscope", *sys.argv[2:]]
from attnscope.cli import main

main()
"""


def build(folder: Path, positions: int) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import gpt2_tokenizer

    config = GPT2Config(vocab_size=50257, n_positions=positions, n_embd=768, n_layer=12, n_head=12,
                        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    gpt2_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case(work: Path, label: str, args: list[str], threads: int, pipelined: bool) -> dict:
    script = work / "measure.py"
    script.write_text(MEASURE)
    rss = work / f"rss-{label}"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads), NO_COLOR="1")
    if pipelined:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), str(script), str(rss), *args, "--pipeline"]
    else:
        cmd = [sys.executable, str(script), str(rss), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work, timeout=3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
    procs = {}
    for name in (["0", "1"] if pipelined else ["one"]):
        base, peak = map(int, Path(f"{rss}.{name}").read_text().split())
        procs[name] = (peak, peak - base)
    return {"label": label, "seconds": seconds, "procs": procs, "stdout": proc.stdout}


def max_diff(a: object, b: object) -> float:
    if isinstance(a, dict) and isinstance(b, dict):
        return max([max_diff(a[k], b[k]) for k in a if k in b and k not in ("seconds",)] or [0.0])
    if isinstance(a, list) and isinstance(b, list):
        return max([max_diff(x, y) for x, y in zip(a, b)] or [0.0])
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        folder = build(work / "gpt2-small-random", opts.tokens)  # --truncate cuts the text to exactly this
        text = " ".join(["the cat sat on the mat and looked at the dog"] * (opts.tokens // 4))
        commands = {
            "attend": ["attend", text, "--model", str(folder), "--view", "topk", "--layer", "-1", "--json",
                       "--truncate"],
            "heads": ["heads", text, "--model", str(folder), "--json", "--truncate", "--top", "0"],
        }
        n = None
        print(f"GPT-2-small-shaped random checkpoint, 124M parameters, float32; {os.cpu_count()} cores")
        print(f"{'command':<8}{'case':<40}{'wall s':>8}  {'peak RSS / growth per process (MiB)':<40}{'max |diff|':>11}")
        for name, args in commands.items():
            runs = [case(work, f"{name}-1x{opts.threads}", args, opts.threads, False),
                    case(work, f"{name}-1x1", args, 1, False),
                    case(work, f"{name}-2x1", args, 1, True)]
            one = json.loads(runs[1]["stdout"])
            n = n or one.get("n_tokens")
            for r in runs:
                doc = json.loads(r["stdout"])
                mem = ", ".join(f"{'rank ' + k if k != 'one' else 'process'} {p / 2**20:,.0f} / {g / 2**20:,.0f}"
                                for k, (p, g) in r["procs"].items())
                kind = {"1": "one process", "2": "pipeline, 2 processes"}[r["label"].split("-")[1][0]]
                threads = r["label"].split("x")[-1]
                print(f"{name:<8}{kind + ', ' + threads + ' thread(s) each':<40}{r['seconds']:>8.1f}  {mem:<40}"
                      f"{max_diff(one, doc):>11.2e}")
        print(f"tokens: {n}")


if __name__ == "__main__":
    main()
