"""How fast is `attnscope params`? Whole-process wall time, against transformers on meta.

Measures, each as best and median of several runs:
  * `attnscope params --config gpt3` as a fresh process (the console script when it is on
    PATH, else `python -m attnscope`): start-up, imports, arithmetic, rendering;
  * `attnscope params --model DIR --json` on a synthetic 30-shard checkpoint shaped like
    Meta-Llama-3-70B (bf16), whose shards are real safetensors headers followed by sparse
    holes (os.truncate), so the 141 GB of "weights" take a few kilobytes of disk;
  * the same header reading in-process (checkpoint.locate + stored_shapes + report);
  * transformers: building LlamaForCausalLM 70B on the meta device and calling
    `num_parameters()` (the cheapest way transformers has to count it), in-process with
    the import excluded, and as a whole `python -c` process with the import included.

Prints a markdown table (what, best s, median s) and checks that all the counts agree with
each other and with Meta-Llama-3-70B's published 70,553,706,496 parameters.

    python benchmarks/bench_params.py [--runs 10]

Runs in well under two minutes; nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from math import prod
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Meta-Llama-3-70B's config.json (the fields that decide shapes), as published.
LLAMA3_70B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "hidden_act": "silu",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
LLAMA3_70B_PUBLISHED = 70_553_706_496
N_SHARDS = 30


def llama_tensors(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Hugging Face tensor names and shapes of a LlamaForCausalLM, in checkpoint order."""
    d, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    dh = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * dh, cfg["num_key_value_heads"] * dh
    out = [("model.embed_tokens.weight", (v, d))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (q, d)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)),
            (p + "self_attn.o_proj.weight", (d, q)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (ff, d)),
            (p + "mlp.up_proj.weight", (ff, d)),
            (p + "mlp.down_proj.weight", (d, ff)),
        ]
    out += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
    return out


def write_sparse_checkpoint(folder: Path, cfg: dict[str, Any], n_shards: int, dtype: str = "BF16") -> int:
    """Write `n_shards` safetensors files whose headers describe the model's tensors and
    whose data is a hole; plus the index and config.json. Returns the apparent bytes."""
    width = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    tensors = llama_tensors(cfg)
    total_bytes = sum(prod(s) * width for _, s in tensors)
    target = total_bytes / n_shards
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    filled = 0
    for name, shape in tensors:  # greedy fill, as save_pretrained's max_shard_size does
        size = prod(shape) * width
        if shards[-1] and filled + size > target and len(shards) < n_shards:
            shards.append([])
            filled = 0
        shards[-1].append((name, shape))
        filled += size
    weight_map: dict[str, str] = {}
    apparent = 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in shard:
            nbytes = prod(shape) * width
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
        path = folder / fname
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
        os.truncate(path, 8 + len(blob) + offset)  # a hole where the weights would be
        apparent += 8 + len(blob) + offset
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return apparent


def attnscope_cmd() -> list[str]:
    exe = shutil.which("attnscope")
    return [exe] if exe else [sys.executable, "-m", "attnscope"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("COLUMNS", "120")
    return env


def time_runs(fn: Callable[[], Any], runs: int, warmup: int = 1) -> tuple[float, float, Any]:
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), result


def run_process(args: list[str]) -> str:
    proc = subprocess.run(attnscope_cmd() + args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"attnscope {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_process_count(folder: Path) -> int:
    from attnscope import checkpoint, config, params

    ckpt = checkpoint.locate(folder)
    cfg = config.load_config(folder / "config.json")
    stored, skipped = params.stored_shapes(ckpt, cfg)
    return params.report_from_stored(cfg, stored, "full", str(folder), skipped).total


def transformers_count(cfg: dict[str, Any]) -> Callable[[], int]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"})

    def count() -> int:
        with torch.device("meta"):
            model = LlamaForCausalLM(hf_config)
        return model.num_parameters()

    return count


TRANSFORMERS_SCRIPT = """
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = json.loads(sys.argv[1])
with torch.device("meta"):
    model = LlamaForCausalLM(LlamaConfig(**cfg))
print(model.num_parameters())
"""


def transformers_process(cfg: dict[str, Any]) -> int:
    """The same count as a whole process, import included: what `attnscope params` replaces."""
    hf = json.dumps({k: v for k, v in cfg.items() if k != "model_type"})
    proc = subprocess.run([sys.executable, "-c", TRANSFORMERS_SCRIPT, hf], capture_output=True, text=True,
                          env=subprocess_env())
    if proc.returncode != 0:
        raise ImportError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return int(proc.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per row (transformers: a third)")
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    counts: dict[str, int] = {}
    cmd = " ".join(Path(c).name for c in attnscope_cmd())

    best, median, out = time_runs(lambda: run_process(["params", "--config", "gpt3"]), args.runs)
    rows.append((f"`{cmd} params --config gpt3` (process)", best, median))
    if "175,181,291,520" not in out:
        raise SystemExit("gpt3 output lacks the video's 175,181,291,520")

    best, median, out = time_runs(lambda: run_process(["params", "--config", "gpt3", "--json"]), args.runs)
    rows.append((f"`{cmd} params --config gpt3 --json` (process)", best, median))

    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as tmp:
        folder = Path(tmp) / "Meta-Llama-3-70B"
        folder.mkdir()
        t0 = time.perf_counter()
        apparent = write_sparse_checkpoint(folder, LLAMA3_70B, N_SHARDS)
        write_s = time.perf_counter() - t0
        on_disk = sum(f.stat().st_blocks * 512 for f in folder.iterdir())
        n_files = len(list(folder.glob("*.safetensors")))

        best, median, out = time_runs(lambda: run_process(["params", "--model", str(folder), "--json"]), args.runs)
        rows.append((f"`{cmd} params --model` 70B, {n_files} shards (process)", best, median))
        counts["attnscope --model"] = json.loads(out)["total"]

        best, median, total = time_runs(lambda: in_process_count(folder), args.runs)
        rows.append((f"in-process: read {n_files} headers + count", best, median))
        counts["attnscope in-process"] = total

    try:
        t0 = time.perf_counter()
        count = transformers_count(LLAMA3_70B)
        import_s = time.perf_counter() - t0
        best, median, total = time_runs(count, max(3, args.runs // 3))
        rows.append(("transformers LlamaForCausalLM 70B on meta + num_parameters()", best, median))
        rows.append(("  (transformers + torch import, once, in-process)", import_s, import_s))
        counts["transformers (meta)"] = total
        n = max(3, args.runs // 3)
        best, median, total = time_runs(lambda: transformers_process(LLAMA3_70B), n, warmup=0)
        rows.append((f"transformers 70B on meta as a process (python -c, {n} runs)", best, median))
        counts["transformers (process)"] = total
    except ImportError as exc:
        print(f"transformers not available ({exc}); skipping its row", file=sys.stderr)

    print(f"\nSynthetic Meta-Llama-3-70B: {n_files} shards, {apparent / 1e9:.1f} GB apparent, "
          f"{on_disk / 1024:.0f} KiB on disk, written in {write_s:.2f} s.\n")
    print("| what | best (s) | median (s) |")
    print("|---|---:|---:|")
    for what, best, median in rows:
        print(f"| {what} | {best:.3f} | {median:.3f} |")
    print()
    print(f"Meta-Llama-3-70B published: {LLAMA3_70B_PUBLISHED:,}")
    for who, total in counts.items():
        mark = "ok" if total == LLAMA3_70B_PUBLISHED else "MISMATCH"
        print(f"  {who}: {total:,} ({mark})")
    if any(total != LLAMA3_70B_PUBLISHED for total in counts.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
