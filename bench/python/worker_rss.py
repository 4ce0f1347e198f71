"""RSS of a real worker idle and holding 10k refs, as ``make bench`` measures them (row 5),
without the BEAM: ``rss_idle`` and ``rss_refs`` of several starts, and their medians.

Each start spawns ``python -m snakeport`` over pipes (the tests' ``sp_client``) with the flags
the harness passes by default, opens a session and calls ``operator.add`` (as
``Bench.Snake.start`` does), reads ``stats``; then opens a session with ``max_refs`` 10000,
calls ``bench_helpers.make_objects(10000)`` in it and reads ``stats`` again. One start first
warms the bytecode cache (kept under ``PYTHONPYCACHEPREFIX``, default ``/tmp``).

    python bench/python/worker_rss.py [--starts N] [--tree PATH] [--plain]

``--tree`` measures another checkout's worker (its ``tests/worker/sp_client.py``; run this
with that checkout's interpreter); ``--plain`` starts the worker without flags (a checkout
older than those flags).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REFS = 10_000

#: The flags ``Snakeport.Options.worker_flags/1`` passes by default (``--vm-pid``: ours).
HARNESS_FLAGS = (
    "--default-max-refs", "10000", "--default-ttl-seconds", "3600", "--default-overflow", "error",
    "--tool-timeout", "30", "--forward-logs", "INFO",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="measured starts (default 5)")
    parser.add_argument("--tree", default=os.path.dirname(os.path.dirname(HERE)), help="checkout to measure")
    parser.add_argument("--plain", action="store_true", help="start the worker without flags")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(args.tree, "tests", "worker"))
    import sp_client

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "snakeport-rss-pycache"))
    env["PYTHONPATH"] = HERE
    sp_client.worker_env = lambda: env  # (older clients take no env argument)
    flags = () if args.plain else (*HARNESS_FLAGS, "--vm-pid", str(os.getpid()))

    def start() -> tuple[int, int]:
        w = sp_client.Worker(*flags, sessions=())
        try:
            w.ok("open_session", "auto-1", {})
            assert w.call("operator", "add", [1, 2], session="auto-1") == 3
            idle = w.ok("stats")[sp_client.A("rss_bytes")]
            w.ok("open_session", "held", {sp_client.A("max_refs"): REFS})
            assert len(w.call("bench_helpers", "make_objects", [REFS], session="held")) == REFS
            stats = w.ok("stats")
            assert stats[sp_client.A("refs")] == REFS, stats
            return idle, stats[sp_client.A("rss_bytes")]
        finally:
            w.kill()

    start()  # the bytecode cache
    runs = [start() for _ in range(args.starts)]
    idle = statistics.median(r[0] for r in runs)
    refs = statistics.median(r[1] for r in runs)
    print(f"{args.tree}: {args.starts} starts, MB = 10^6 bytes")
    print("  rss_idle " + " ".join(f"{r[0] / 1e6:.2f}" for r in runs) + f"  median {idle / 1e6:.2f}")
    print("  rss_refs " + " ".join(f"{r[1] / 1e6:.2f}" for r in runs) + f"  median {refs / 1e6:.2f}")
    print(f"  per ref  {(refs - idle) / REFS:.0f} bytes (median refs - median idle) / {REFS}")


if __name__ == "__main__":
    main()
