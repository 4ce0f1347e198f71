"""Instructions the worker executes per C-lane call, batched and sequential, against the
floor (profiling aid, needs valgrind; strace for ``--syscalls``).

Starts ``python -m snakeport --spin-us 0`` under ``valgrind --tool=callgrind`` and drives
it over its pipes with the frame the harness sends for ``Snakeport.call("operator", "add",
[1, 2])`` in an auto-session (``{call, Id, <<"auto-...">>, <<"operator">>, <<"add">>, [1,
2], #{}, #{}}`` as OTP's ``term_to_binary`` writes it: ``ATOM_EXT``, the list as
``STRING_EXT``, the request id as ``INTEGER_EXT``), after the ``open_session`` the harness
sends first. Two phases, callgrind dumping its counters between them
(``callgrind_control -d``): ``N`` windows of 64 frames each written at once, all 64 replies
read before the next window (the 64-callers figure: several frames arrive per read); then
``S`` frames one at a time (the sequential figure). ``bench/floor_echo.py`` is driven the
same way. Instruction counts (``Ir``, every thread) do not depend on the machine's load,
unlike CPU time on a shared machine; they do not see cache misses or the kernel's side of
system calls.

With ``--syscalls``, each process is run again without valgrind, and ``strace -c -f``
attached (all threads) for each phase only, which gives the system calls per call.

    .venv/bin/python bench/profile/lane_instructions.py [--python PY] [-n N] [-s S] [--syscalls] [-- WORKER_ARGS]

``--python`` may be another checkout's interpreter (its worker is what runs).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from typing import Callable

FLOOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "floor_echo.py")
SESSION = b"auto-1234"
WINDOW = 64


def _binary(data: bytes) -> bytes:
    return b"m" + struct.pack(">I", len(data)) + data


#: term_to_binary({open_session, 0, <<"auto-1234">>, #{}}) (OTP 25).
OPEN_SESSION = b"\x83h\x04d\x00\x0copen_sessiona\x00" + _binary(SESSION) + b"t\x00\x00\x00\x00"
_CALL_HEAD = b"\x83h\x08d\x00\x04call"
_CALL_TAIL = _binary(SESSION) + _binary(b"operator") + _binary(b"add") + b"k\x00\x02\x01\x02" + b"t\x00\x00\x00\x00" * 2


def call_frame(rid: int) -> bytes:
    """The {packet, 4} frame of term_to_binary({call, rid, <<"auto-1234">>, <<"operator">>,
    <<"add">>, [1, 2], #{}, #{}}) (OTP 25), rid >= 256 (INTEGER_EXT)."""
    payload = _CALL_HEAD + b"b" + struct.pack(">i", rid) + _CALL_TAIL
    return struct.pack(">I", len(payload)) + payload


class Peer:
    """The driving end of a process's {packet, 4} pipes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.w = proc.stdin
        self.r = proc.stdout
        self.rid = 1000
        #: How every reply ends: the worker's {reply, Id, ok, 3} (SMALL_INTEGER_EXT 3), or
        #: the floor's echo of the frame.
        self.expect = _CALL_TAIL[-10:]

    def read_exactly(self, k: int) -> bytes:
        data = b""
        while len(data) < k:
            chunk = self.r.read(k - len(data))
            if not chunk:
                raise EOFError("the process closed its output")
            data += chunk
        return data

    def receive(self) -> bytes:
        (k,) = struct.unpack(">I", self.read_exactly(4))
        return self.read_exactly(k)

    def window(self, size: int) -> None:
        frames = b"".join(call_frame(self.rid + i) for i in range(size))
        self.rid += size
        self.w.write(frames)
        for _ in range(size):
            reply = self.receive()
            if reply[-len(self.expect) :] != self.expect:
                raise RuntimeError(f"unexpected reply: {reply!r}")

    def windows(self, n: int) -> None:
        for _ in range(n):
            self.window(WINDOW)

    def sequential(self, n: int) -> None:
        for _ in range(n):
            self.window(1)

    def close(self) -> None:
        self.w.close()
        self.proc.wait()


def start(cmd: list[str], worker: bool) -> Peer:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    peer = Peer(proc)
    if worker:
        peer.expect = b"ok" + b"a\x03"
        peer.receive()  # the ready frame
        peer.w.write(struct.pack(">I", len(OPEN_SESSION)) + OPEN_SESSION)
        reply = peer.receive()
        if b"ok" not in reply:
            raise RuntimeError(f"open_session: {reply!r}")
    return peer


def instructions(cmd: list[str], worker: bool, n: int, s: int, keep: bool = False) -> tuple[float, float]:
    """Instructions per call (thousands): windows of 64, sequential."""
    out = tempfile.mkdtemp(prefix="lane-cg-")
    vg = ["valgrind", "--tool=callgrind", "--dump-instr=no", f"--log-file={out}/log", f"--callgrind-out-file={out}/cg.%p"]
    peer = start(vg + cmd, worker)

    def dump() -> None:
        subprocess.run(["callgrind_control", "-d", str(peer.proc.pid)], check=True, capture_output=True)

    peer.windows(max(n // 10, 2))  # warm-up
    peer.sequential(max(s // 10, 2))
    dump()
    peer.windows(n)
    dump()
    peer.sequential(s)
    dump()
    peer.close()
    counts = []
    paths = sorted(glob.glob(f"{out}/cg.*.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    for path, calls in zip(paths[1:3], (n * WINDOW, s)):
        with open(path) as f:
            totals = [line for line in f if line.startswith(("totals:", "summary:"))]
        counts.append(int(totals[0].split()[1]) / calls / 1000)
    if keep:
        print(f"callgrind files of {cmd[1:]}: {paths[1]} (64-window), {paths[2]} (sequential)")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return counts[0], counts[1]


def syscalls(cmd: list[str], worker: bool, phase: Callable[[Peer], int]) -> dict[str, float]:
    """System calls per call of one phase (strace -c attached to every thread)."""
    peer = start(cmd, worker)
    phase(peer)  # warm-up (not traced)
    out = tempfile.mkdtemp(prefix="lane-st-")
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-o", f"{out}/st", "-p", str(peer.proc.pid)],
        stderr=subprocess.PIPE,
        text=True,
    )
    line = tracer.stderr.readline()  # "Process N attached with M threads"
    if "attached" not in line:
        raise RuntimeError(f"strace did not attach: {line!r}")
    calls = phase(peer)
    tracer.send_signal(2)
    tracer.wait()
    peer.close()
    counts: dict[str, float] = {}
    with open(f"{out}/st") as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
            if m and m.group(2) != "total":
                counts[m.group(2)] = int(m.group(1)) / calls
    shutil.rmtree(out, ignore_errors=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter with the worker")
    parser.add_argument("-n", type=int, default=40, help="windows of 64 calls")
    parser.add_argument("-s", type=int, default=500, help="sequential calls")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind files (callgrind_annotate)")
    parser.add_argument("--syscalls", action="store_true", help="also count system calls (strace)")
    parser.add_argument("worker_args", nargs="*", help="after --: extra worker flags")
    args = parser.parse_args()
    worker = [args.python, "-m", "snakeport", "--spin-us", "0", *args.worker_args]
    floor = [args.python, FLOOR]
    wf, sf = instructions(floor, False, args.n, args.s, args.keep)
    ww, sw = instructions(worker, True, args.n, args.s, args.keep)
    print(f"{args.python}: k instructions per call (n={args.n} windows of {WINDOW}, s={args.s} sequential)")
    print(f"  64-window:  worker {ww:6.2f}  floor {wf:6.2f}  ratio {ww / wf:5.2f}x")
    print(f"  sequential: worker {sw:6.2f}  floor {sf:6.2f}  ratio {sw / sf:5.2f}x")
    if args.syscalls:
        for name, cmd, is_worker in (("worker", worker, True), ("floor", floor, False)):
            for label, phase in (
                ("64-window", lambda p: (p.windows(args.n), args.n * WINDOW)[1]),
                ("sequential", lambda p: (p.sequential(args.s), args.s)[1]),
            ):
                counts = syscalls(cmd, is_worker, phase)
                rw = {k: v for k, v in counts.items() if k in ("read", "readv", "write", "writev")}
                other = sum(v for k, v in counts.items() if k not in rw)
                shown = "  ".join(f"{k} {v:.3f}" for k, v in sorted(rw.items()))
                extra = "  ".join(f"{k} {v:.3f}" for k, v in sorted(counts.items()) if k not in rw and v >= 0.01)
                print(f"  syscalls per call, {name} {label}: {shown}  (others {other:.3f}: {extra})")


if __name__ == "__main__":
    main()
