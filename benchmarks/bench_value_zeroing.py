"""How fast is attnscope's Value Zeroing? Against inseq's `value_zeroing`, in one run.

A GPT-2-small-shaped model (width 768, 12 heads, MLP 3,072, 1,024 positions, vocabulary
50,257; --layers of them, 12 by default), random weights (std 0.02), float32, CPU. One
text of n tokens (n = 128 and 512 by default), the same for both:

  * ours:  `--measure value-zeroing` on every layer (measures.mixing): one forward pass;
           at each layer, every (query, key) pair that some head attends becomes one row
           of a batched pass of the block after its attention (norms, MLP, residual) on
           float64 copies of its weights: n²/2 rows for a causal layer, no attention
           recomputed, no other layer re-run;
  * inseq: `inseq.load_model(model, "value_zeroing").attribute(text, text + one token)`,
           its own way: for each token, one forward pass of the whole model with that
           token's values zeroed in every layer (the clean states patched in between
           layers): n full passes, float32. It attributes that one token's step,
           which holds the same n × n per-layer scores.

Reported: seconds for the whole matrix of every layer (one run each, after a warm-up on
a short text), and the ratio. inseq lives only in the benchmark's own venv (never a
project dependency):

    python3 -m venv /work/bench-venv
    echo /work/main/.venv/lib/python3.11/site-packages > /work/bench-venv/lib/python3.11/site-packages/main.pth
    /work/bench-venv/bin/pip install --no-deps inseq==0.7.1 captum jaxtyping "typeguard<=2.13.3" treescope wadler_lindig
    /work/bench-venv/bin/python benchmarks/bench_value_zeroing.py            # n = 128 and 512
    /work/bench-venv/bin/python benchmarks/bench_value_zeroing.py --n 64 --layers 2 --threads 2

Without inseq importable, ours is reported alone with the reason.

Measured (2026-12-06, 2 CPU cores shared with other jobs, torch 2.13, inseq 0.7.1 with
transformers 5.25, `--n 128 512 --layers 1 --threads 2`; both costs grow linearly with
the layers, so one layer stands for each):

     n   ours (s)  inseq (s)  inseq / ours
   128      17.23     202.69         11.77
   512     250.50     761.57          3.04
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(folder: Path, layers: int) -> tuple[Any, Any]:
    """A random GPT-2-small-shaped checkpoint in `folder`; (its transformers model, its tokenizer)."""
    import tiny_models as tm
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tm.gpt2_tokenizer()
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=layers, n_head=12,
                        initializer_range=0.02, architectures=["GPT2LMHeadModel"])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return model, tok


def ours(folder: Path, ids: list[int]) -> float:
    from attnscope import analysis
    from attnscope.api import load
    from attnscope.measures import mixing

    m = load(str(folder), device="cpu", dtype="float32")
    layers = list(range(m.n_layers))

    def once(ids: list[int]) -> float:
        probe = analysis.FullPatterns(layers, [0], len(ids))
        start = time.perf_counter()
        m.run(ids, mixing.ValueZeroingMeasure(m.model, len(ids), probe))
        seconds = time.perf_counter() - start
        assert probe.probs.shape == (len(layers), 1, len(ids), len(ids))
        return seconds

    once(ids[:16])  # warm-up
    return once(ids)


def inseq_run(model: Any, tok: Any, ids: list[int]) -> float:
    import inseq
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    # inseq 0.7.1 finds the values by the variable name in GPT2Attention.forward: transformers 5
    # calls it `value_states` (inseq's table still says `value`)
    inseq.register_model_config("GPT2LMHeadModel", {"self_attention_module": "attn", "value_vector": "value_states",
                                                     "cross_attention_module": None},
                                overwrite=True)
    attributor = inseq.load_model(model, "value_zeroing", tokenizer=fast)

    def once(ids: list[int]) -> float:
        text = fast.decode(ids)
        assert fast(text)["input_ids"] == ids, "the text must give back the same tokens"
        start = time.perf_counter()
        out = attributor.attribute(text, fast.decode(ids + ids[:1]), show_progress=False)
        seconds = time.perf_counter() - start
        assert out.sequence_attributions  # one sequence, one step
        return seconds

    once(ids[:16])  # warm-up
    return once(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import inseq  # noqa: F401

        missing = None
    except Exception as exc:  # any import failure: report ours alone, with the reason
        missing = f"{type(exc).__name__}: {exc}".splitlines()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-small-shaped"
        model, tok = build(folder, args.layers)
        word = tok.encode(" the").ids
        assert len(word) == 1
        for n in args.n:
            ids = word * n
            t_ours = ours(folder, ids)
            t_inseq = inseq_run(model, tok, ids) if missing is None else None
            rows.append((n, t_ours, t_inseq))
    print(f"Value Zeroing, every layer · GPT-2-small-shaped, {args.layers} layers, random weights · CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"{'n':>6} {'ours (s)':>10} {'inseq (s)':>10} {'inseq / ours':>13}")
    for n, a, b in rows:
        print(f"{n:>6} {a:>10.2f} {b if b is not None else float('nan'):>10.2f} "
              f"{(b / a) if b is not None else float('nan'):>13.2f}")
    if missing is not None:
        print(f"inseq not run: {missing}")


if __name__ == "__main__":
    main()
