"""`--dry-run`'s peak memory against the peak a real run measures (VmHWM of a fresh
process), on the packaged models: within 25%, as a user would check it.

The estimate's figures come from the same functions the run uses (`parts.chunk_rows` for
the attention chunk, the parts' declared shapes for the weights), plus the interpreter's
own resident memory measured in the dry-run process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnscope.sources import packaged

RUN = """
import sys
from attnscope.cli import main
sys.argv = ["attnscope"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        sys.stderr.write("PEAK " + line.split()[1] + "\\n")
sys.exit(code)
"""


def _peak(args: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(next(line for line in out.stderr.splitlines() if line.startswith("PEAK ")).split()[1]) * 1024


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "all-minilm-l6-v2"])
@pytest.mark.parametrize("words", [4, 300])
def test_dry_run_peak_within_a_quarter_of_the_measured_peak(name: str, words: int, tmp_path: Path) -> None:
    if packaged.find(name) is None:
        pytest.skip(f"{name} is not installed")
    text = " ".join(["fluffy", "blue", "creature", "sat"] * (words // 4))
    args = ["attend", text, "-m", name, "--truncate", "--save-topk", str(tmp_path / "t.npz"), "--force"]
    doc = json.loads(subprocess.run([sys.executable, "-m", "attnscope", *args, "--dry-run", "--json"],
                                    capture_output=True, text=True, check=True, timeout=300).stdout)
    measured = _peak(args)
    assert abs(doc["peak_memory_bytes"] - measured) <= 0.25 * measured, (doc, measured)


@pytest.mark.slow
@pytest.mark.parametrize("measure", ["norm", "rollout"])
def test_dry_run_counts_the_measure(measure: str) -> None:
    name = "smollm2-135m-instruct"
    if packaged.find(name) is None:
        pytest.skip(f"{name} is not installed")
    text = " ".join(["fluffy", "blue", "creature", "sat"] * 400)
    args = ["attend", text, "-m", name, "--truncate", "--measure", measure]
    doc = json.loads(subprocess.run([sys.executable, "-m", "attnscope", *args, "--dry-run", "--json"],
                                    capture_output=True, text=True, check=True, timeout=300).stdout)
    measured = _peak(args)
    assert abs(doc["peak_memory_bytes"] - measured) <= 0.25 * measured, (doc, measured)
