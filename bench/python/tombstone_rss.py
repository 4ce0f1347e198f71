"""RSS of a real worker after many session create/use/release cycles (issue 11, row 6).

Each cycle opens a session, makes one ref in it (``object()``: a call whose result is not
data) and releases the session: one released-session tombstone and one ref tombstone. The
requests go pipelined, ``BATCH`` cycles at a time. Prints the worker's RSS (its ``stats``)
before and after, and the growth in percent.

    python bench/python/tombstone_rss.py [CYCLES] [worker flags...]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "worker"))
from sp_client import A, Worker  # noqa: E402

BATCH = int(os.environ.get("BATCH", "1000"))


def rss(w: Worker) -> int:
    return w.ok("stats")[A("rss_bytes")]


def cycles(w: Worker, n: int) -> None:
    done = 0
    while done < n:
        k = min(BATCH, n - done)
        last = 0
        for i in range(done, done + k):
            sid = f"auto-{i}"
            w.request("open_session", sid, {})
            w.request("call", sid, "builtins", "object", [], {}, {})
            last = w.request("release_session", sid)
        w.wait(last)
        w.replies.clear()
        w.order.clear()
        done += k


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    w = Worker(*sys.argv[2:], sessions=())
    try:
        cycles(w, 2 * BATCH)  # warm up (imports, psutil, first allocations)
        before = rss(w)
        started = time.monotonic()
        cycles(w, n)
        after = rss(w)
        print(
            f"{n} cycles in {time.monotonic() - started:.1f} s: RSS {before / 2**20:.1f} MiB -> "
            f"{after / 2**20:.1f} MiB (+{(after - before) * 100 / before:.1f}%)"
        )
    finally:
        w.kill()


if __name__ == "__main__":
    main()
