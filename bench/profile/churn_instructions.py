"""Instructions the worker executes per ref-churn request (profiling aid, needs valgrind).

Starts ``python -m snakeport`` under ``valgrind --tool=callgrind`` and drives it over its
pipes with the frames the harness sends for the churn benchmark (``bench.exs``, figure 4):
``N`` ``call bench_helpers.Box(i)`` (each returns a ref), then ``N`` ``method get`` on those
refs, then ``N`` ``release_ref``; callgrind dumps its counters between the phases
(``callgrind_control -d``), so each phase's instruction count (``Ir``, every thread) divided
by ``N`` is the cost of one request of that kind. Instruction counts do not depend on the
machine's load, unlike CPU time on a shared machine; they do not see cache misses or the
cost of system calls in the kernel.

    .venv/bin/python bench/profile/churn_instructions.py [--python PY] [-n N] [-- WORKER_ARGS]

``--python`` may be another checkout's interpreter (its worker is what runs). Prints one
line: instructions per create, per method and per release (thousands).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from snakeport import etf
from snakeport.types import Atom

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter with the worker")
    parser.add_argument("-n", type=int, default=300, help="requests of each kind")
    parser.add_argument("worker_args", nargs="*", help="after --: extra worker flags")
    args = parser.parse_args()
    n = args.n
    out = tempfile.mkdtemp(prefix="churn-cg-")
    env = dict(os.environ, PYTHONPATH=HELPERS)
    cmd = [
        "valgrind", "--tool=callgrind", "--dump-instr=no", f"--log-file={out}/log",
        f"--callgrind-out-file={out}/cg.%p", args.python, "-m", "snakeport", "--spin-us", "0",
        *args.worker_args,
    ]  # fmt: skip
    worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
    w, r = worker.stdin, worker.stdout

    def read_exactly(k: int) -> bytes:
        data = b""
        while len(data) < k:
            chunk = r.read(k - len(data))
            if not chunk:
                raise EOFError("the worker closed its output")
            data += chunk
        return data

    def receive() -> object:
        (k,) = struct.unpack(">I", read_exactly(4))
        return etf.decode(read_exactly(k))

    rid = 0

    def request(*term: object) -> object:
        nonlocal rid
        rid += 1
        payload = etf.encode((term[0], rid, *term[1:]))
        w.write(struct.pack(">I", len(payload)) + payload)
        reply = receive()
        if reply[2] != "ok":  # type: ignore[index]
            raise RuntimeError(f"unexpected reply: {reply!r}")
        return reply[3]  # type: ignore[index]

    def dump() -> None:
        subprocess.run(["callgrind_control", "-d", str(worker.pid)], check=True, capture_output=True)

    receive()  # the ready frame
    sid = b"churn"
    request(Atom("open_session"), sid, {})
    for i in range(n // 5):  # warm-up: every path taken once
        ref = request(Atom("call"), sid, b"bench_helpers", b"Box", [i], {}, {})
        request(Atom("method"), sid, ref, b"get", [], {}, {})
        request(Atom("release_ref"), sid, ref)
    dump()
    refs = [request(Atom("call"), sid, b"bench_helpers", b"Box", [i], {}, {}) for i in range(n)]
    dump()
    for ref in refs:
        request(Atom("method"), sid, ref, b"get", [], {}, {})
    dump()
    for ref in refs:
        request(Atom("release_ref"), sid, ref)
    dump()
    w.close()
    worker.wait()
    counts = []
    for path in sorted(glob.glob(f"{out}/cg.*.*"), key=lambda p: int(p.rsplit(".", 1)[1]))[1:4]:
        with open(path) as f:
            totals = [line for line in f if line.startswith(("totals:", "summary:"))]
        counts.append(int(totals[0].split()[1]) / n / 1000)
    shutil.rmtree(out, ignore_errors=True)
    create, method, release = counts
    print(
        f"{args.python}: k instructions per create {create:.1f}, method {method:.1f}, "
        f"release {release:.1f}, unit {create + method + release:.1f} (n={n})"
    )


if __name__ == "__main__":
    main()
