"""How fast is attnscope's mixture of experts? One forward pass, against transformers eager.

A Qwen3-MoE-shaped model, tiny but not trivial: width 512, 4 layers, 8 query heads of 64
on 2 key/value heads with per-head q/k norms, 32 experts of width 256 with top 4
(renormalised), vocabulary 4,096, random weights (std 0.02), float32, CPU. One text of
1,024 random token ids, the same in every run. Timed in one process, the cases in turn
after one untimed warm-up of each:

  * ours:           `Transformer(ids)` then `.logits(...)` (attnscope.model, built from
                    transformers' own state dict through the qwen3_moe family's table);
                    the routed experts run grouped by expert (parts/experts.py);
  * transformers:   `Qwen3MoeForCausalLM(ids)` with attn_implementation="eager" and eager
                    experts (`config._experts_implementation = "eager"`: a loop over the
                    experts that tokens hit, as modeling_qwen3_moe.py writes it);
  * transformers (default experts): the same model with the experts kernel transformers
                    picks by default (grouped_mm where torch has it), for context.

Reported: seconds per pass (best and median of --runs), tokens/s, and the largest logit
difference from transformers eager (a check that both computed the same thing).

    python benchmarks/bench_moe.py              # 5 runs
    python benchmarks/bench_moe.py --runs 10 --threads 2

Nothing downloads; a run takes well under a minute on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_TOKENS = 1024
SEED = 0
SHAPE = dict(
    vocab_size=4096, hidden_size=512, intermediate_size=1024, moe_intermediate_size=256, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
    num_experts=32, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
    tie_word_embeddings=False, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
)


def models() -> tuple[Any, Any, Any]:
    """transformers' model (eager experts), the same weights with default experts, and ours."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from attnscope.architectures import family_for, to_ours
    from attnscope.config import from_hf_config
    from attnscope.model import build

    torch.manual_seed(SEED)
    config = Qwen3MoeConfig(**SHAPE, initializer_range=0.02)
    config._attn_implementation = "eager"
    theirs = Qwen3MoeForCausalLM(config).float().eval()
    default = Qwen3MoeForCausalLM(config).float().eval()
    default.load_state_dict(theirs.state_dict())
    theirs.config._experts_implementation = "eager"
    raw = {**config.to_dict(), "model_type": "qwen3_moe"}
    cfg = from_hf_config(raw, name="qwen3-moe-bench")
    module = family_for(raw)
    tensors = [pair for name, t in theirs.state_dict().items() for pair in to_ours(module, name, t, cfg).items()]
    ours = build(cfg, tensors)
    return theirs, default, ours


def timed(fn: Callable[[], torch.Tensor], runs: int) -> tuple[list[float], torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    theirs, default, ours = models()
    ids = torch.randint(0, SHAPE["vocab_size"], (N_TOKENS,), generator=torch.Generator().manual_seed(SEED))

    @torch.inference_mode()
    def run_ours() -> torch.Tensor:
        return ours.logits(ours(ids))

    @torch.inference_mode()
    def run_theirs(model: Any = theirs) -> torch.Tensor:
        return model(ids[None]).logits[0]

    cases = [("attnscope (grouped experts)", run_ours),
             ("transformers eager", run_theirs),
             ("transformers, default experts", lambda: run_theirs(default))]
    results = {name: timed(fn, args.runs) for name, fn in cases}
    reference = results["transformers eager"][1]
    print(f"Qwen3-MoE-shaped: width {SHAPE['hidden_size']}, {SHAPE['num_hidden_layers']} layers, "
          f"{SHAPE['num_experts']} experts of {SHAPE['moe_intermediate_size']} (top {SHAPE['num_experts_per_tok']}), "
          f"{N_TOKENS} tokens, float32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'case':32} {'best s':>8} {'median s':>9} {'tokens/s':>9} {'max |Δ logit|':>14}")
    for name, (times, out) in results.items():
        median = statistics.median(times)
        diff = float((out.double() - reference.double()).abs().max())
        print(f"{name:32} {min(times):8.3f} {median:9.3f} {N_TOKENS / median:9.0f} {diff:14.2e}")
    ratio = statistics.median(results["attnscope (grouped experts)"][0]) / statistics.median(results["transformers eager"][0])
    print(f"ours / transformers eager (median): {ratio:.2f}")


if __name__ == "__main__":
    main()
