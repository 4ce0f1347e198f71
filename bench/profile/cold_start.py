"""The worker's cold start, two interpreters A/B alternating (profiling aid).

Two measures, each sampled ``-n`` times per interpreter, A and B alternating (ABBA order,
so that a drift of the machine's load hits both alike), and the whole repeated ``--repeat``
times:

- ``ready``: ms from spawning ``python -m snakeport`` as the harness's Port does (stdin and
  stdout pipes, ``{packet, 4}`` frames; stderr not read) to the end of its ready frame
  ``{snakeport_ready, 1, Info}`` (docs/PROTOCOL.md, *Startup*); the worker is then sent EOF
  and reaped, outside the timing.
- ``ready_cpu``: the CPU ms (user + system, every thread) of that worker's whole life, from
  spawn to its exit on EOF (less sensitive to the machine's load than wall time).
- ``import``: ms of ``import snakeport._server`` inside a fresh ``python -c`` (measured by
  the child with ``time.perf_counter``: interpreter start-up and exit excluded);
  ``import_cpu``: the child's CPU ms of that import (``time.process_time``);
  ``import_proc``: ms from spawning that ``python -c`` to its exit.

Each interpreter runs its own installed worker (``--python`` may be another checkout's
``.venv/bin/python``). The children get the caller's environment without
``PYTHONDONTWRITEBYTECODE`` (a deployed worker has its ``.pyc`` files: a warm-up run of
each writes any that are missing) and run in an empty temporary directory (``-m`` puts the
working directory first on ``sys.path``). Extra worker flags after ``--`` go to both (the
default is none, as ``bench/elixir``'s cold start; the harness's own flags need a worker
that knows them).

Prints, per repeat and measure, the medians, quartiles and the ratio A/B (below 1: A
starts faster).

    .venv/bin/python bench/profile/cold_start.py --python A_PY --python B_PY [-n 30] [--repeat 2] [-- WORKER_FLAGS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

IMPORT_PROBE = (
    "import time, sys\n"
    "t, c = time.perf_counter(), time.process_time()\n"
    "import snakeport._server\n"
    "sys.stdout.write(f'{(time.perf_counter() - t) * 1e3!r} {(time.process_time() - c) * 1e3!r}')\n"
)
#: The measures, in the order printed.
MEASURES = ("ready", "ready_cpu", "import", "import_cpu", "import_proc")
#: A worker that has not written its ready frame within this many seconds is a failure.
READY_TIMEOUT = 30.0


def _read_exactly(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise RuntimeError("the worker closed its stdout before its ready frame")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def time_ready(python: str, flags: list[str], env: dict[str, str], cwd: str) -> dict[str, float]:
    """ms from spawning ``python -m snakeport FLAGS`` to the last byte of its ready frame,
    and the CPU ms of the worker from spawn to its exit on EOF."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-m", "snakeport", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        bufsize=0,
    )
    try:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        (size,) = struct.unpack(">I", _read_exactly(fd, 4))
        frame = _read_exactly(fd, size)
        ms = (time.perf_counter() - t0) * 1e3
        # term_to_binary's first bytes: version 131, a 3-tuple, then the atom snakeport_ready.
        if frame[:1] != b"\x83" or b"snakeport_ready" not in frame[:24]:
            raise RuntimeError(f"not a ready frame: {frame[:40]!r}")
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
    # Reaped here (not with proc.wait) for the child's rusage; EOF makes it exit.
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, rusage = os.wait4(proc.pid, 0)
            raise RuntimeError("the worker did not exit on EOF")
        time.sleep(0.002)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the worker exited with status {proc.returncode}")
    return {"ready": ms, "ready_cpu": (rusage.ru_utime + rusage.ru_stime) * 1e3}


def time_import(python: str, env: dict[str, str], cwd: str) -> dict[str, float]:
    """ms of ``import snakeport._server`` in a fresh interpreter, as the child measures it
    (wall and CPU), and ms from spawning that interpreter to its exit."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [python, "-c", IMPORT_PROBE], env=env, cwd=cwd, capture_output=True, check=True, timeout=READY_TIMEOUT
    )
    proc_ms = (time.perf_counter() - t0) * 1e3
    wall, cpu = map(float, out.stdout.split())
    return {"import": wall, "import_cpu": cpu, "import_proc": proc_ms}


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def run_once(pythons: list[str], n: int, flags: list[str], env: dict[str, str], cwd: str) -> dict:
    samples: dict[str, dict[str, list[float]]] = {m: {p: [] for p in pythons} for m in MEASURES}
    for i in range(n):
        order = pythons if i % 2 == 0 else pythons[::-1]
        runs = [(py, time_ready(py, flags, env, cwd)) for py in order]
        runs += [(py, time_import(py, env, cwd)) for py in order[::-1]]
        for py, values in runs:
            for measure, value in values.items():
                samples[measure][py].append(value)
    return samples


def report(samples: dict, pythons: list[str]) -> None:
    a, b = pythons
    for measure, by_py in samples.items():
        qa, qb = _quartiles(by_py[a]), _quartiles(by_py[b])
        print(
            f"  {measure:11}  A {qa[1]:7.2f} ms (q1 {qa[0]:.2f}, q3 {qa[2]:.2f})   "
            f"B {qb[1]:7.2f} ms (q1 {qb[0]:.2f}, q3 {qb[2]:.2f})   A/B {qa[1] / qb[1]:.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", required=True, help="interpreter A, then B")
    parser.add_argument("-n", type=int, default=30, help="starts of each interpreter per repeat")
    parser.add_argument("--repeat", type=int, default=2, help="how many times the whole run is repeated")
    parser.add_argument("flags", nargs="*", help="worker flags (after --)")
    args = parser.parse_args(argv)
    if len(args.python) != 2:
        parser.error("give --python twice: A, then B")
    pythons = [os.path.abspath(p) if os.sep in p else p for p in args.python]
    if pythons[0] == pythons[1]:
        parser.error("A and B are the same interpreter")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="snakeport-cold-") as cwd:
        for py in pythons:  # warm-up: .pyc files written, the OS's caches filled
            time_ready(py, args.flags, env, cwd)
            time_import(py, env, cwd)
        print(f"A = {pythons[0]}\nB = {pythons[1]}\nworker flags: {args.flags or 'none'}; n = {args.n} each, ABBA")
        for r in range(args.repeat):
            samples = run_once(pythons, args.n, args.flags, env, cwd)
            print(f"repeat {r + 1}:")
            report(samples, pythons)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
