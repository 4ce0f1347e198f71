"""CPU time of the kernel's copy of ~1 MiB between a pipe and a buffer, by where it lies.

Usage: ``python bench/profile/pipe_alias.py [--head N] [--read] [--rounds R]`` (run it
pinned, ``taskset -c 0``, as the bench's pinned regime). Writing (the default): a child
process drains a 1 MiB pipe; the parent writes ``[N-byte head, ~1 MiB buffer]`` at once,
the buffer placed so that it lies ``k`` bytes behind its destination in the pipe modulo
4096, for each ``k`` in the sweep. Reading (``--read``): a child keeps the pipe full, page
by page; the parent reads ~1 MiB into a buffer placed ``k`` bytes *ahead* of the bytes'
place in the pipe (the source ``k`` bytes behind its destination again). Prints the least
CPU µs per copy over the rounds. The copy is several times slower for some ``k`` (4K
aliasing): see bench/PROFILE.md, *4K aliasing*, ``snakeport._framing.aliases`` and
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
    parser.add_argument("--read", action="store_true", help="the pipe to a buffer instead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=200, help="copies per point and round")
    args = parser.parse_args()
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    size = (1 << 20) - PAGE  # with the head, fits the empty pipe; a whole number of pages
    if os.fork() == 0:
        if args.read:  # the writer: whole pages, so each copy below starts a page
            os.close(r)
            data = os.urandom(size)
            try:
                while True:
                    os.write(w, data)
            except BrokenPipeError:
                os._exit(0)
        os.close(w)  # the reader: drain until EOF
        sink = memoryview(bytearray(2 << 20))
        while os.readv(r, [sink]):
            pass
        os._exit(0)
    os.close(w if args.read else r)
    backing = bytearray(size + 2 * PAGE)
    head = b"h" * args.head
    behind = [0, 1, 2, 4, 8, 9, 12, 14, 16, 24, 32, 34, 36, 40, 48, 64, 128, 1024, 2048]
    best: dict[int, float] = {}
    for _ in range(args.rounds):
        for k in behind:
            place = k if args.read else args.head - k  # where the buffer starts in its page
            start = (place - page_offset(backing)) % PAGE
            buf = memoryview(backing)[start : start + size]
            t0 = time.thread_time_ns()
            for _ in range(args.writes):
                if args.read:
                    got = 0
                    while got < size:
                        got += os.readv(r, [buf[got:]])
                else:
                    os.writev(w, [head, buf])
            us = (time.thread_time_ns() - t0) / args.writes / 1000
            best[k] = min(us, best.get(k, us))
    os.close(r if args.read else w)
    os.wait()
    what = f"readv of {size} bytes" if args.read else f"writev of {args.head} + {size} bytes"
    print(f"µs per {what}, by bytes the source lies behind its destination (mod {PAGE}):")
    for k, us in best.items():
        print(f"  {k:5d}: {us:7.1f}")


if __name__ == "__main__":
    main()
