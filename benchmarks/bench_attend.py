"""How fast, and how big, is capturing attention? attnscope's probes against transformers.

On a GPT-2-small-shaped model (768 wide, 12 layers, 12 heads, 8192 learned positions,
vocab 50257, random weights, float32) saved as a safetensors folder in a temp dir, times
one forward pass over n random token ids and records the process's peak RSS, for:

  * attnscope: `load(folder)`, then `TopKProbe` (top-3 of every layer and head) fed chunk
    by chunk by `Inspector.run` (load time reported apart);
  * transformers eager: `GPT2Model` with `output_attentions=True`, then `torch.topk` on
    every layer's (heads, n, n) attentions; skipped where storing them would not fit;
  * transformers SDPA: `GPT2Model` forward without attentions, the floor: the same model
    with no attention pattern ever materialised.

GPT2Model (no LM head) is used for transformers because attnscope's model stops at the
residual stream too: an LM head would add an (n, 50257) logits matmul to one side only.

Every measurement runs in a fresh process (this file, re-invoked with `--child`), so
peak RSS (VmHWM: the process's own high-water mark, reset at exec, unlike ru_maxrss which
can inherit the parent's) belongs to that case alone. Each child warms up once at a small
n, then keeps the best of a few timed passes where passes are cheap (n <= 4096), which
damps the noise of a shared machine; the CPU time of that pass is reported beside it.

Also times `attnscope params --config gpt3` as a process (best of 10) against building
transformers' GPT-2 with the gpt3 config on the meta device and calling
`num_parameters()`, as a process, imports included.

    python benchmarks/bench_attend.py            # n = 256, 1024, 2048, 4096, 8192
    python benchmarks/bench_attend.py --quick    # n = 256, 1024
    python benchmarks/bench_attend.py --sizes 512,2048 --threads 4
    python benchmarks/bench_attend.py --profile 2048   # where attnscope's time goes

Nothing downloads. The default run takes about 9 minutes on 2 quiet cores (12 on a busy machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

GPT2_SMALL = {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 8192, "vocab_size": 50257}
GPT3 = {"n_embd": 12288, "n_layer": 96, "n_head": 96, "n_inner": 4 * 12288, "vocab_size": 50257,
        "n_positions": 2048, "activation_function": "gelu_new"}  # attnscope's `gpt3` preset
CASES = ("attnscope", "eager", "sdpa")
LABELS = {
    "attnscope": "attnscope TopKProbe (k=3, all heads)",
    "eager": "transformers eager + output_attentions + topk",
    "sdpa": "transformers SDPA, no attentions (floor)",
}
DEFAULT_SIZES = (256, 1024, 2048, 4096, 8192)
QUICK_SIZES = (256, 1024)
WARMUP_N = 32
SEED = 0
RESULT = "RESULT "  # prefix of the one line a child reports on; anything else it prints is noise
GB = 1e9


# --------------------------------------------------------------------------- children
# Everything below until the parent section runs inside a fresh child process.


def _status_kb(field: str) -> float | None:
    """A `kB` line of /proc/self/status (Linux), or None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set, MB. VmHWM is per address space and starts over
    at exec; ru_maxrss (the fallback) may carry the parent's high-water mark over."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kb / 1024


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return float("nan") if kb is None else kb / 1024


# The device every child runs on, set by the parent's --device (auto: cuda when present).
DEVICE = os.environ.get("ATTNSCOPE_BENCH_DEVICE", "cpu")


def report(**fields: Any) -> None:
    if DEVICE.startswith("cuda"):
        import torch

        fields["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(RESULT + json.dumps(fields), flush=True)


def sync() -> None:
    """Wait for queued GPU work, so wall times measure it."""
    if DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def token_ids(n: int, vocab: int) -> Any:
    import torch

    gen = torch.Generator().manual_seed(SEED)
    return torch.randint(0, vocab, (n,), generator=gen).to(DEVICE)  # (n,): the same ids in every child


def child_build(folder: Path) -> None:
    """Write the random GPT-2-small checkpoint: config.json, model.safetensors and a tiny
    tokenizer.json (attnscope's loader insists on one; this benchmark feeds ids)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_SMALL))
    model.save_pretrained(folder, safe_serialization=True)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    report(params=model.num_parameters(), bytes=(folder / "model.safetensors").stat().st_size)


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, float, Any]:
    """Best wall time of `reps` passes, that pass's CPU time (all threads), the last result."""
    best: tuple[float, float] | None = None
    result = None
    for _ in range(reps):
        result = None  # drop the previous pass's output before the next allocates its own
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if best is None or wall < best[0]:
            best = (wall, cpu)
    assert best is not None  # reps >= 1
    return best[0], best[1], result


def child_attnscope(folder: Path, n: int, reps: int) -> None:
    import torch

    from attnscope import analysis
    from attnscope.api import load

    t0 = time.perf_counter()
    m = load(folder, device=DEVICE, dtype="float32")
    load_s = time.perf_counter() - t0
    layers, heads = list(range(m.n_layers)), list(range(m.n_heads))
    ids = token_ids(n, m.config.vocab_size)

    def capture() -> Any:
        probe = analysis.TopKProbe(layers, heads, n, 3)
        m.run(ids, probe)
        return probe

    with torch.inference_mode():
        m.run(ids[:WARMUP_N], analysis.TopKProbe(layers, heads, WARMUP_N, 3))
        loaded_mb = rss_mb()
        wall, cpu, probe = timed(capture, reps)
    report(wall=wall, cpu=cpu, load=load_s, loaded_mb=loaded_mb, peak_mb=peak_rss_mb(),
           check=float(probe.weights[..., 0].double().sum()))


def _hf_model(folder: Path, impl: str) -> tuple[Any, float]:
    import torch
    from transformers import GPT2Model

    t0 = time.perf_counter()
    model = GPT2Model.from_pretrained(folder, attn_implementation=impl, dtype=torch.float32).eval().to(DEVICE)
    return model, time.perf_counter() - t0


def child_eager(folder: Path, n: int, reps: int) -> None:
    import torch

    model, load_s = _hf_model(folder, "eager")
    ids = token_ids(n, model.config.vocab_size)

    def capture() -> Any:
        out = model(ids[None], output_attentions=True)
        return [torch.topk(att[0], 3, dim=-1) for att in out.attentions]  # each (H, n, 3)

    with torch.inference_mode():
        model(ids[None, :WARMUP_N], output_attentions=True)
        loaded_mb = rss_mb()
        wall, cpu, tops = timed(capture, reps)
    report(wall=wall, cpu=cpu, load=load_s, loaded_mb=loaded_mb, peak_mb=peak_rss_mb(),
           check=float(sum(t.values[..., 0].double().sum() for t in tops)))


def child_sdpa(folder: Path, n: int, reps: int) -> None:
    import torch

    model, load_s = _hf_model(folder, "sdpa")
    ids = token_ids(n, model.config.vocab_size)
    with torch.inference_mode():
        model(ids[None, :WARMUP_N])
        loaded_mb = rss_mb()
        wall, cpu, out = timed(lambda: model(ids[None]), reps)
    report(wall=wall, cpu=cpu, load=load_s, loaded_mb=loaded_mb, peak_mb=peak_rss_mb(),
           impl=model.config._attn_implementation, check=float(out.last_hidden_state.double().abs().mean()))


def child_hf_params() -> None:
    """transformers' cheapest count of GPT-3 175B; the parent times the whole process."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(**GPT3))
    report(total=model.num_parameters())


def child_profile(folder: Path, n: int, rows: int) -> None:
    """One attnscope capture under torch.profiler; the top ops by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from attnscope import analysis
    from attnscope.api import load

    m = load(folder, device="cpu", dtype="float32")
    layers, heads = list(range(m.n_layers)), list(range(m.n_heads))
    ids = token_ids(n, m.config.vocab_size)
    m.run(ids[:WARMUP_N], analysis.TopKProbe(layers, heads, WARMUP_N, 3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        m.run(ids, analysis.TopKProbe(layers, heads, n, 3))
        wall = time.perf_counter() - t0
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(f"wall {wall:.2f} s (under the profiler) at n={n}")


def child_main(argv: list[str]) -> None:
    import torch

    what, threads = argv[0], int(argv[1])
    torch.set_num_threads(threads)
    if what == "build":
        child_build(Path(argv[2]))
    elif what == "hf_params":
        child_hf_params()
    elif what == "profile":
        child_profile(Path(argv[2]), int(argv[3]), int(argv[4]))
    else:
        run = {"attnscope": child_attnscope, "eager": child_eager, "sdpa": child_sdpa}[what]
        run(Path(argv[2]), int(argv[3]), int(argv[4]))


# --------------------------------------------------------------------------- parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this file as `--child ARGS`; its RESULT line as a dict, or {'error': why}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    if proc.returncode in (-9, 137):
        return {"error": "killed (SIGKILL: out of memory?)"}
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    why = lines[-1] if lines else f"exit status {proc.returncode}, no output"
    return {"error": f"failed: {why[:160]}"}


def default_repeats(n: int) -> int:
    """Best of several passes where a pass is cheap: a busy machine's noise shrinks."""
    return 3 if n <= 1024 else 2 if n <= 4096 else 1


def eager_bytes(n: int) -> float:
    """What eager + output_attentions needs: every layer's (H, n, n) float32 pattern kept,
    plus one layer's scores, probabilities and mask in flight, plus the model (~1.5 GB)."""
    L, H = GPT2_SMALL["n_layer"], GPT2_SMALL["n_head"]
    return (L + 3) * H * n * n * 4 + 1.5 * GB


def mem_total_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    return (f"Machine: {cpu}, {cores} cores, {mem_total_bytes() / 2**30:.1f} GiB RAM; "
            f"Python {platform.python_version()}, torch {version('torch')}, transformers {version('transformers')}, "
            f"torch threads {threads}")


def revision() -> str:
    """Which attnscope is measured: git HEAD, plus a digest of the sources the children
    import, so that an edit during a long run shows (a commit touching only docs does not)."""
    digest = hashlib.sha1()
    for path in sorted((REPO / "attnscope").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        commit = head.stdout.strip() if head.returncode == 0 else "no git"
    except OSError:
        commit = "no git"
    return f"git {commit}, sources {digest.hexdigest()[:10]}"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"
    except OSError:
        return "unknown"


def attnscope_cmd() -> list[str]:
    exe = shutil.which("attnscope")
    return [exe] if exe else [sys.executable, "-m", "attnscope"]


def best_process_time(cmd: list[str], runs: int) -> tuple[float, str]:
    """Best wall time of `runs` fresh processes, and the last one's stdout."""
    best, out = float("inf"), ""
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=REPO)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"exit status {proc.returncode}")
        best, out = min(best, elapsed), proc.stdout
    return best, out


def params_rows(runs: int, threads: int) -> list[str]:
    lines = ["| what | best wall s | runs | total |", "|---|---:|---:|---:|"]
    try:
        best, out = best_process_time(attnscope_cmd() + ["params", "--config", "gpt3", "--json"], runs)
        doc = json.loads(out)
        lines.append(f"| `attnscope params --config gpt3` (process) | {best:.3f} | {runs} | "
                     f"{doc['total']:,} ({doc['convention']}); full {doc['totals']['full']:,} |")
    except (RuntimeError, ValueError, KeyError) as exc:
        lines.append(f"| `attnscope params --config gpt3` (process) | {exc} | {runs} | |")
    hf_runs = max(3, runs // 3)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "hf_params", str(threads)]
    try:
        best, out = best_process_time(cmd, hf_runs)
        total = next(json.loads(ln[len(RESULT):])["total"] for ln in out.splitlines() if ln.startswith(RESULT))
        lines.append(f"| transformers GPT2LMHeadModel(gpt3) on meta + num_parameters() (process, imports incl.) "
                     f"| {best:.3f} | {hf_runs} | {total:,} |")
    except (RuntimeError, StopIteration) as exc:
        lines.append(f"| transformers GPT2LMHeadModel(gpt3) on meta (process) | {exc} | {hf_runs} | |")
    return lines


def fmt_row(case: str, n: int, res: dict[str, Any], floor: dict[str, Any] | None) -> str:
    if "error" in res or "skipped" in res:
        return f"| {LABELS[case]} | {n} | {res.get('error') or res['skipped']} | — | — |"
    ratio = "—"
    if case == "sdpa":
        ratio = "1.00× time, 1.00× RSS"
    elif floor is not None and "wall" in floor:
        ratio = f"{res['wall'] / floor['wall']:.2f}× time, {res['peak_mb'] / floor['peak_mb']:.2f}× RSS"
    gpu = f" (GPU peak {res['gpu_peak_mb']:,.0f} MB)" if "gpu_peak_mb" in res else ""
    return f"| {LABELS[case]} | {n} | {res['wall']:.2f} | {res['peak_mb']:,.0f}{gpu} | {ratio} |"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", help="comma-separated token counts (default 256,1024,2048,4096,8192)")
    parser.add_argument("--quick", action="store_true", help="n = 256 and 1024 only")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every child (default 2)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where every case runs (auto: cuda when a GPU is present; peak GPU memory is reported too)")
    parser.add_argument("--max-gb", type=float, default=18.0,
                        help="skip eager where its estimated memory exceeds this (default 18, capped at 85%% of RAM)")
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds allowed to one case (default 420)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed passes per case, best kept (default 3 up to n=1024, 2 up to 4096, then 1)")
    parser.add_argument("--param-runs", type=int, default=10, help="process runs for the params row (default 10)")
    parser.add_argument("--no-params", action="store_true", help="skip the params comparison")
    parser.add_argument("--profile", type=int, metavar="N", help="profile one attnscope capture at N tokens, then stop")
    args = parser.parse_args()

    if args.sizes:
        try:
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    else:
        sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if not sizes or any(not WARMUP_N <= n <= GPT2_SMALL["n_positions"] for n in sizes):
        parser.error(f"--sizes must lie in {WARMUP_N}..{GPT2_SMALL['n_positions']}")
    if args.repeats < 0:
        parser.error("--repeats must be 1 or more (0: the default per n)")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ["ATTNSCOPE_BENCH_DEVICE"] = device  # the children inherit it
    limit = args.max_gb * GB
    if mem_total_bytes():
        limit = min(limit, 0.85 * mem_total_bytes())

    print(machine(args.threads), flush=True)
    if device == "cuda":
        import torch

        print(f"Device: {torch.cuda.get_device_name(0)} (peak GPU memory in the JSON results as gpu_peak_mb)")
    rev = revision()
    print(f"attnscope revision: {rev}; load average at start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as tmp:
        folder = Path(tmp) / "gpt2-small-8k"
        folder.mkdir()
        t0 = time.perf_counter()
        built = run_child(["build", str(args.threads), str(folder)], timeout=600)
        if "error" in built:
            raise SystemExit(f"could not build the checkpoint: {built['error']}")
        print(f"Checkpoint: GPT-2 small shape {GPT2_SMALL}, {built['params']:,} parameters, "
              f"{built['bytes'] / 2**20:,.0f} MiB float32 safetensors, built in {time.perf_counter() - t0:.1f} s",
              flush=True)
        if args.profile:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "profile", str(args.threads),
                   str(folder), str(args.profile), "25"]
            subprocess.run(cmd, env=child_env(), cwd=REPO, check=False)
            return

        results: dict[tuple[str, int], dict[str, Any]] = {}
        for n in sizes:
            for case in CASES:
                need = eager_bytes(n)
                if case == "eager" and need > limit:
                    res: dict[str, Any] = {"skipped": f"skipped (needs {need / GB:.0f} GB)"}
                else:
                    t0 = time.perf_counter()
                    reps = args.repeats or default_repeats(n)
                    res = run_child([case, str(args.threads), str(folder), str(n), str(reps)], timeout=args.timeout)
                    res["reps"] = reps
                    res["process_s"] = time.perf_counter() - t0
                results[case, n] = res
                shown = res.get("error") or res.get("skipped") or f"{res['wall']:.2f} s, {res['peak_mb']:,.0f} MB"
                print(f"  {case:9s} n={n:5d}: {shown}", file=sys.stderr, flush=True)

    print("\nwall s: the timed pass (best of several where cheap, see `passes` below); peak RSS: the "
          "child's VmHWM (model, warm-up and all). Ratios are to the SDPA row at the same n.")
    print("\n| case | n | wall s | peak RSS MB | ratio to SDPA floor |")
    print("|---|---:|---:|---:|---|")
    for n in sizes:
        for case in CASES:
            print(fmt_row(case, n, results[case, n], results.get(("sdpa", n))))

    print("\nPer case: CPU time of the timed pass (all threads; steadier than wall time on a busy "
          "machine), load time (not in wall s), resident size after load + warm-up, whole child process:\n")
    print("| case | n | passes | cpu s | cpu ratio to SDPA | load s | RSS after load MB | child process s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        floor = results.get(("sdpa", n), {})
        for case in CASES:
            res = results[case, n]
            if "wall" in res:
                ratio = f"{res['cpu'] / floor['cpu']:.2f}×" if "cpu" in floor else "—"
                print(f"| {case} | {n} | {res['reps']} | {res['cpu']:.2f} | {ratio} | {res['load']:.2f} | "
                      f"{res['loaded_mb']:,.0f} | {res['process_s']:.1f} |")

    print(f"\nLoad average at end: {load_average()} (above {args.threads} means other processes "
          "shared the cores and wall times are inflated)")
    if revision().split("sources ")[1] != rev.split("sources ")[1]:
        print(f"WARNING: attnscope's sources changed during the run ({rev} -> {revision()}): rows may mix versions")

    agree = []
    for n in sizes:
        a, e = results["attnscope", n], results["eager", n]
        if "check" in a and "check" in e:
            rel = abs(a["check"] - e["check"]) / max(abs(e["check"]), 1e-30)
            agree.append(f"n={n}: {rel:.1e}")
    if agree:
        print("\nSum of top-1 weights, attnscope vs eager (relative difference): " + ", ".join(agree))

    if not args.no_params:
        print("\nParameter counting, GPT-3 175B:\n")
        print("\n".join(params_rows(args.param_runs, args.threads)))


if __name__ == "__main__":
    main()
