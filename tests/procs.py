"""Run a command as a child and measure that one child's peak memory.

`resource.getrusage(RUSAGE_CHILDREN)` in the test process is the largest of *every*
child the session ever waited for, so a bound checked with it fails for whichever test
follows a big one. Here a small wrapper process runs the command as its only child and
reports that child's peak RSS, then exits with the child's code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

WRAP = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass
class Measured:
    returncode: int  # negative: killed by that signal
    stdout: bytes
    stderr: bytes
    seconds: float
    peak_rss: int  # bytes
    timed_out: bool = False


def run_measured(argv: list[Any], timeout: float, cwd: Any = None, env: dict[str, str] | None = None,
                 stdin: Any = subprocess.DEVNULL) -> Measured:
    """Run argv (str or bytes items) with a wall-clock bound; on time-out the whole
    process group is killed and `timed_out` is set."""
    fd, rss_file = tempfile.mkstemp(prefix="rss-")
    os.close(fd)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", WRAP, rss_file, *argv], cwd=cwd, env=env, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    try:
        with open(rss_file) as f:
            text = f.read().strip()
        rss = int(text) if text else 0
    finally:
        os.unlink(rss_file)
    code = proc.returncode if proc.returncode < 128 else -(proc.returncode - 128)
    return Measured(code, out, err, time.monotonic() - start, rss, timed_out)
