"""The worker's lifetime against a dead parent, and releases that cancel (issue 11, rows 2, 3).

Real worker processes over real pipes; parents killed with real signals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
from sp_client import A, Worker, worker_env

from snakeport import _process


def gone(proc: psutil.Process) -> bool:
    """The process has ended (a zombie has ended too: it only waits to be reaped)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_file(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


# A parent that starts the worker with the test's pipes, prints its pid, and waits.
_PARENT = r"""
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-m", "snakeport", *sys.argv[2:]], stdin=0, stdout=int(sys.argv[1]))
print(worker.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_worker_holding_the_gil_dies_with_its_parent(tmp_path) -> None:
    # The worker runs catastrophic backtracking in `re` (C code holding the GIL): neither its
    # watchdog nor its reader can run. Its parent is killed with SIGKILL: the kernel must kill
    # the worker within a second.
    flag = str(tmp_path / "running")
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(out_w)], stdin=in_r, stdout=subprocess.PIPE, env=worker_env(), pass_fds=(out_w,)
    )
    os.close(in_r)
    worker = None
    try:
        worker = psutil.Process(int(parent.stdout.readline()))
        client = _Pipes(in_w, out_r)
        client.recv()  # the ready frame
        client.send((A("open_session"), 1, "s", {}))
        client.recv()
        client.send((A("call"), 2, "s", "sp_testmod", "regex_bomb_flagged", [flag], {}, {}))
        wait_file(flag)
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        while not gone(worker):
            assert time.monotonic() - killed < 1.0, "the worker outlived its parent by a second"
            time.sleep(0.01)
    finally:
        if worker is not None and not gone(worker):
            worker.kill()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        for fd in (in_w, out_r, out_w):
            os.close(fd)


class _Pipes:
    """Frames over raw fds (the worker's parent holds the other ends)."""

    def __init__(self, wfd: int, rfd: int) -> None:
        self.wfd, self.rfd = wfd, rfd

    def send(self, term) -> None:
        from snakeport import etf

        payload = etf.encode(term)
        os.write(self.wfd, len(payload).to_bytes(4, "big") + payload)

    def recv(self):
        from snakeport import etf

        def exact(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = os.read(self.rfd, n - len(data))
                assert chunk, "the worker closed its output"
                data += chunk
            return data

        return etf.decode(exact(int.from_bytes(exact(4), "big")))


def test_worker_exits_at_start_when_the_vm_is_not_its_ancestor() -> None:
    # --vm-pid names a live process that did not start the worker (as if the VM had died
    # and the worker had been handed to another parent before it could check).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snakeport", "--vm-pid", str(other.pid), "--log-level", "INFO"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=worker_env(),
            timeout=30,
        )
    finally:
        other.kill()
        other.wait()
    assert proc.returncode == 0 and proc.stdout == b"", proc
    assert b"is gone" in proc.stderr and b"WARNING" not in proc.stderr


def test_worker_starts_when_the_vm_is_its_ancestor() -> None:
    w = Worker("--vm-pid", str(os.getpid()))
    try:
        assert w.call("operator", "add", [1, 2]) == 3
    finally:
        w.kill()


def test_ancestry_is_read_from_proc() -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("no /proc on this system")
    assert _process.parent_of(os.getpid()) == os.getppid()
    assert _process.parent_of(2**22 + 12345) is None  # above pid_max: no such process


# ------------------------------------------------------------------ releases cancel


def test_release_session_cancels_its_running_and_queued_calls_at_once(tmp_path) -> None:
    w = Worker(sessions=("s1", "s2"))
    try:
        flag = str(tmp_path / "running")
        running = w.request("call", "s1", "sp_testmod", "spin_flagged", [flag, 60], {}, {})
        wait_file(flag)
        queued = w.request("call", "s1", "sp_testmod", "sleep", [60], {}, {})
        other = w.request("call", "s2", "operator", "add", [1, 2], {}, {})
        started = time.monotonic()
        assert w.ok("release_session", "s1") == {A("released"): 0}
        for rid in (running, queued):
            assert w.wait(rid)[3][A("reason")] == "cancelled"
        assert w.wait(other)[3] == 3
        # Released, not restarted: a minute of work ended in well under one.
        assert time.monotonic() - started < 10
        assert w.ok("stats")[A("in_flight")] == 0
    finally:
        w.kill()


# ------------------------------------------------------------- a cancel that cannot land


def test_a_call_still_running_after_its_cancel_has_its_stack_logged(tmp_path) -> None:
    # The call blocks in C (os.system of a shell reading a named pipe): Cancelled cannot
    # reach it. Within a few seconds of the cancel the worker logs (WARNING, on stderr)
    # where its thread is; the call then ends when the pipe is written, and its reply is
    # `cancelled`.
    flag, fifo = str(tmp_path / "running"), str(tmp_path / "fifo")
    os.mkfifo(fifo)
    w = Worker()
    try:
        rid = w.request("call", "s1", "sp_testmod", "read_fifo_flagged", [flag, fifo], {}, {})
        wait_file(flag)
        assert w.ok("cancel", rid) == {A("cancelled"): True}
        report = w.read_stderr_until("after it was cancelled", "read_fifo_flagged")
        assert f"request {rid} (session s1) still runs" in report
        assert "in read_fifo_flagged" in report  # the call's own frame, innermost last
        with open(fifo, "wb") as f:
            f.write(b"x")
        assert w.wait(rid)[3][A("reason")] == "cancelled"
        assert w.ok("stats")[A("in_flight")] == 0
    finally:
        w.kill()

