"""attnscope against an earlier attnscope: the same top-k capture as bench_attend.py (top-3
of every layer and head of a GPT-2-small-shaped model, float32, random weights), for two
revisions of this repository in one run, each case in a fresh process, the two
revisions alternating at every size so that a busy machine slows both alike.

    python benchmarks/bench_revisions.py 49817ea            # HEAD against 49817ea
    python benchmarks/bench_revisions.py 49817ea --sizes 1024,2048 --rounds 3

The old revision is exported with `git archive` into a temporary folder and imported
from there (PYTHONPATH); the child code is bench_attend.py's own `child_attnscope`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench_attend as ba  # noqa: E402  (the child code and the machine description)


def export(rev: str, dest: Path) -> Path:
    archive = dest / "old.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "tree", filter="data")
    return dest / "tree"


def child(tree: Path, folder: Path, n: int, reps: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    code = (f"import sys; sys.argv=['x','--child','attnscope','{threads}','{folder}','{n}','{reps}'];"
            f"sys.path.insert(0, {str(HERE)!r}); import attnscope, bench_attend as b;"
            f"assert attnscope.__file__.startswith({str(tree)!r}), attnscope.__file__; b.child_main(sys.argv[2:])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree, timeout=900)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(ba.RESULT):
            return json.loads(line[len(ba.RESULT):])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--sizes", default="1024,2048,4096,8192")
    parser.add_argument("--rounds", type=int, default=2, help="alternating old/new processes per size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    new_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="attnscope-revs-") as tmp:
        old_tree = export(args.old, Path(tmp))
        folder = Path(tmp) / "gpt2-small"
        folder.mkdir()
        built = ba.run_child(["build", str(args.threads), str(folder)], 600)
        if "error" in built:
            raise SystemExit(f"could not build the checkpoint: {built['error']}")
        print(ba.machine(args.threads) if hasattr(ba, "machine") else "")
        print(f"\nold = {args.old}, new = {new_rev} (working tree); best wall seconds over {args.rounds} "
              f"alternating processes each; top-3 of 12 layers x 12 heads\n")
        print("| n | old wall s | new wall s | new / old | old peak RSS MB | new peak RSS MB |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n in sizes:
            reps = 3 if n <= 4096 else 1
            best = {"old": None, "new": None}
            rss = {"old": 0.0, "new": 0.0}
            for _ in range(args.rounds):
                for name, tree in (("old", old_tree), ("new", REPO)):
                    r = child(tree, folder, n, reps, args.threads)
                    if "error" in r:
                        raise SystemExit(f"{name} at n={n}: {r['error']}")
                    best[name] = r["wall"] if best[name] is None else min(best[name], r["wall"])
                    rss[name] = max(rss[name], r["peak_mb"])
            print(f"| {n:,} | {best['old']:.2f} | {best['new']:.2f} | {best['new'] / best['old']:.2f}x | "
                  f"{rss['old']:,.0f} | {rss['new']:,.0f} |", flush=True)
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
