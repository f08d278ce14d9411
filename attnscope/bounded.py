"""Running untrusted computations within a budget of time and memory.

A tokenizer's regexes and normalizers and a model's chat template are code that came
with a file: they may loop for ever, grow without end, or panic inside Rust (a
`pyo3_runtime.PanicException`, which derives from BaseException and prints its own
message on stderr). Here such work runs in a forked child, as the `resource` and `os`
docs allow on Linux: its address space is capped at what the parent had plus a
budget (`RLIMIT_AS`, so an allocation fails in the child rather than swapping the
machine), its stdout and stderr go to /dev/null, and the parent waits on the result
pipe with a deadline, killing the child when it passes. A `Child` serves many requests,
so a corpus is tokenized by one child, not one per text; `run` is one request.

Whatever goes wrong in the child comes back as one `Exceeded` (over time, over memory,
killed) or as the exception it raised, re-raised here. Where fork is unavailable (not
Linux), the work runs in-process, guarded only by the callers' static checks.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

SECONDS = 10.0  # real tokenizers and templates answer in milliseconds
MEMORY = 1 << 30  # bytes of address space the child may add to what the parent had
_HEADER = struct.Struct("<Q")
_MAX_REPLY = 1 << 30  # a reply longer than this is refused unread

CAN_FORK = sys.platform.startswith("linux") and hasattr(os, "fork")


class Exceeded(Exception):
    """The child ran past its time or memory budget, or died: `str()` says which."""


def _address_space() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return 1024


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a child busy in a runaway loop is killed when its parent ends."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """`n` bytes from `fd`, or None at end of file; TimeoutError past `deadline`."""
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, _HEADER.pack(len(data)) + data)


def _recv(fd: int, deadline: float | None) -> tuple[bool, Any]:
    """(True, object) or (False, None) at end of file."""
    head = _read_exact(fd, _HEADER.size, deadline)
    if head is None:
        return False, None
    (n,) = _HEADER.unpack(head)
    if n > _MAX_REPLY:
        raise Exceeded(f"a reply of {n} bytes")
    data = _read_exact(fd, n, deadline)
    if data is None:
        return False, None
    return True, pickle.loads(data)


def _describe(exc: BaseException) -> tuple[str, Any]:
    """What a child sends back for an exception: itself when it pickles, else its words."""
    if isinstance(exc, MemoryError):
        return "memory", None
    try:
        pickle.loads(pickle.dumps(exc))
        return "raise", exc
    except Exception:  # an exception that does not survive pickling: keep its message
        first = (str(exc).splitlines() or [""])[0][:300]
        return "error", f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Child:
    """A forked child that answers requests with `serve(request)`, each within `seconds`,
    the whole child within `memory` bytes more than its parent had. `ask` raises
    `Exceeded` when the child runs over or dies (the child is then gone: ask again and a
    new one is forked), and re-raises what `serve` raised."""

    def __init__(self, serve: Callable[[Any], Any], seconds: float | None = None, memory: int | None = None) -> None:
        self.serve = serve
        self.seconds = SECONDS if seconds is None else seconds
        self.memory = MEMORY if memory is None else memory
        self.pid = -1
        self._to = self._from = -1

    def _start(self) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        limit = _address_space() + self.memory
        # tokenizers' fork handler warns on stderr if parallelism was used: it was said here
        unset = "TOKENIZERS_PARALLELISM" not in os.environ
        if unset:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        pid = -1
        try:
            pid = os.fork()
        finally:
            if unset and pid != 0:
                del os.environ["TOKENIZERS_PARALLELISM"]
        if pid == 0:  # the child: never returns
            code = 0
            try:
                os.close(down_w)
                os.close(up_r)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)
                _die_with_parent()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                # nothing else of the parent's stays open here: a lock, an output file, a pipe
                # that a reader waits on to close
                low, high = sorted((down_r, up_w))
                for start, end in ((3, low), (low + 1, high), (high + 1, _max_fd())):
                    os.closerange(start, end)
                import resource

                if limit > self.memory:
                    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                while True:
                    ok, request = _recv(down_r, None)
                    if not ok:
                        break
                    try:
                        reply: tuple[str, Any] = ("ok", self.serve(request))
                    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                        reply = _describe(exc)
                    try:
                        _send(up_w, reply)
                    except MemoryError:
                        _send(up_w, ("memory", None))
            except BaseException:  # noqa: BLE001 - a child must never run on into the parent's code
                code = 1
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        self.pid, self._to, self._from = pid, down_w, up_r

    def ask(self, request: Any, seconds: float | None = None) -> Any:
        if self.pid < 0:
            self._start()
        deadline = time.monotonic() + (self.seconds if seconds is None else seconds)
        try:
            _send(self._to, request)
            ok, reply = _recv(self._from, deadline)
        except TimeoutError:
            self.close(kill=True)
            raise Exceeded(f"took longer than {self.seconds if seconds is None else seconds:g} seconds") from None
        except (BrokenPipeError, ConnectionResetError):
            ok, reply = False, None
        if not ok:
            status = self.close(kill=False)
            raise Exceeded(_death(status, self.memory)) from None
        kind, value = reply
        if kind == "ok":
            return value
        if kind == "raise":
            raise value
        if kind == "memory":
            self.close(kill=True)  # its heap may be fragmented near the cap: start afresh next time
            raise Exceeded(f"needed more than its {self.memory >> 20} MiB of memory")
        raise Exceeded(str(value))

    def close(self, kill: bool = True) -> int:
        """End the child (SIGKILL if `kill`, else wait for it); its wait status."""
        status = 0
        if self.pid > 0:
            for fd in (self._to, self._from):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if kill:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        self.pid = -1
        return status

    def __del__(self) -> None:
        try:
            self.close(kill=True)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _death(status: int, memory: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGKILL):
            # Rust aborts when an allocation fails: under RLIMIT_AS, most likely the budget
            return f"crashed ({signal.Signals(sig).name}), most likely out of its {memory >> 20} MiB of memory"
        return f"was killed by {signal.Signals(sig).name}"
    return f"ended without an answer (exit status {os.WEXITSTATUS(status)})"


def run(fn: Callable[..., Any], *args: Any, seconds: float | None = None, memory: int | None = None) -> Any:
    """`fn(*args)` in a forked child within `seconds` and `memory` (see `Child`); in-process
    where fork is unavailable."""
    if not CAN_FORK:
        return fn(*args)
    child = Child(lambda request: fn(*request), seconds, memory)
    try:
        return child.ask(args)
    finally:
        child.close(kill=True)


def is_panic(exc: BaseException) -> bool:
    """Whether `exc` is pyo3's PanicException: a Rust panic (in tokenizers), which derives
    from BaseException and whose module (`pyo3_runtime`) cannot be imported to name it."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


def is_failure(exc: BaseException) -> bool:
    """An Exception or a Rust panic: what untrusted work may end in. Never
    KeyboardInterrupt, SystemExit or a signal's `Terminated`, which must go on up."""
    return isinstance(exc, Exception) or is_panic(exc)


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 points at /dev/null for the block: a Rust panic prints its message
    and backtrace there before it is raised as an exception we report in one line."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr at all: nothing to hide
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
