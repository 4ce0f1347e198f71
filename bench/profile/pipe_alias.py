"""CPU time of one ``writev`` of a large buffer into a pipe, by where the buffer lies.

Usage: ``python bench/profile/pipe_alias.py [--head N] [--rounds R]`` (run it pinned,
``taskset -c 0``, as the bench's pinned regime). A child process drains a 1 MiB pipe; the
parent writes ``[N-byte head, ~1 MiB buffer]`` at once, the buffer placed so that it lies
``k`` bytes behind its destination in the pipe modulo 4096, for each ``k`` in the sweep,
and prints the least CPU µs per write over the rounds. The kernel's copy is several times
slower for some ``k`` (4K aliasing): see bench/PROFILE.md, *4K aliasing*, and
``snakeport._writer.realigned``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import time

from snakeport._clane import page_offset

F_SETPIPE_SZ = 1031
PAGE = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=int, default=25, help="bytes before the buffer (a reply's head: 25)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=200, help="writes per point and round")
    args = parser.parse_args()
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    if os.fork() == 0:  # the reader: drain until EOF
        os.close(w)
        sink = memoryview(bytearray(2 << 20))
        while os.readv(r, [sink]):
            pass
        os._exit(0)
    os.close(r)
    size = (1 << 20) - PAGE  # with the head, fits the empty pipe
    backing = bytearray(size + 2 * PAGE)
    head = b"h" * args.head
    behind = [0, 1, 2, 4, 8, 9, 12, 14, 16, 24, 32, 34, 36, 40, 48, 64, 128, 1024, 2048]
    best: dict[int, float] = {}
    for _ in range(args.rounds):
        for k in behind:
            start = (args.head - k - page_offset(backing)) % PAGE
            buf = memoryview(backing)[start : start + size]
            t0 = time.thread_time_ns()
            for _ in range(args.writes):
                os.writev(w, [head, buf])
            us = (time.thread_time_ns() - t0) / args.writes / 1000
            best[k] = min(us, best.get(k, us))
    os.close(w)
    os.wait()
    print(f"µs per writev of {args.head} + {size} bytes, by bytes the buffer lies behind its place (mod {PAGE}):")
    for k, us in best.items():
        print(f"  {k:5d}: {us:7.1f}")


if __name__ == "__main__":
    main()
