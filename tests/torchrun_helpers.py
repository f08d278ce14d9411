"""The `--pipeline` tests' launchers and comparisons: a command in one process against the
same under `torchrun --nproc-per-node 2` (two CPU ranks, gloo), and the checks that the two
agree to `BOUND`, the chunking bound of tests/test_chunks.py (float32 rounding only, 1e-5
absolute on a weight in 0..1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEXT = "the cat sat on the mat and the cat slept on the mat"
BOUND = 1e-5  # test_chunks: float32 rounding only, on weights in 0..1
TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("ATTNSCOPE_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    out.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", NO_COLOR="1", COLUMNS="80", HF_HUB_OFFLINE="1")
    return out


def one(cwd: Path, *args: Any) -> subprocess.CompletedProcess[str]:
    """The command in one process, on one thread as each torchrun rank runs."""
    return subprocess.run([sys.executable, "-m", "attnscope", *map(str, args)], env=env(), cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)


def two(cwd: Path, *args: Any, script: str | None = None, extra: dict[str, str] | None = None,
        launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """The command under `torchrun --nproc-per-node 2` (a script in its place, if given)."""
    target = [script] if script is not None else ["-m", "attnscope"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           *launcher, *target, *map(str, args)]
    return subprocess.run(cmd, env={**env(), **(extra or {})}, cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def documents(a: subprocess.CompletedProcess[str], b: subprocess.CompletedProcess[str]) -> tuple[Any, Any]:
    """Both runs (`one`'s, `two`'s) succeeded: their --json documents (rank 0 alone prints one)."""
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-3000:]
    return json.loads(a.stdout), json.loads(b.stdout)


def floats(doc: Any, path: str = "") -> dict[str, float]:
    """Every float of a JSON document by its path, timings left out."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k != "seconds" and not k.endswith("per_s"):
                out.update(floats(v, f"{path}.{k}"))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(floats(v, f"{path}[{i}]"))
    elif isinstance(doc, float):
        out[path] = doc
    return out


def same_floats(a: Any, b: Any) -> None:
    """The two documents hold floats (at least one) at the same paths, each pair within BOUND."""
    fa, fb = floats(a), floats(b)
    assert fa.keys() == fb.keys() and fa
    for key, value in fa.items():
        assert abs(fb[key] - value) <= BOUND, (key, value, fb[key])


def same_npz(a: Path, b: Path) -> None:
    """Two --save files: the same arrays, floats within BOUND, the rest equal."""
    with np.load(a) as x, np.load(b) as y:
        assert set(x.files) == set(y.files)
        for key in x.files:
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(y[key], x[key], atol=BOUND, rtol=0, err_msg=key)
            else:
                assert np.array_equal(x[key], y[key]), key
