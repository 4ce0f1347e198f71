"""The floor of the Snakeport benchmarks: echo {packet, 4} frames on stdin/stdout.

Reads a 4-byte big-endian length, reads that many bytes, writes both back, flushes. Nothing
is decoded, no threads, the pipes keep their default capacity (64 KiB on Linux): this is the
least a Python program behind an Erlang Port has to do per frame.

With FLOOR_PIPE_BYTES set (the bench's "bare echo with wide pipes"), it first grows both
pipes to that capacity with F_SETPIPE_SZ, as the worker grows its own to 1 MiB: the same
echo with the worker's pipes, nothing else of the worker, which bounds what the worker's
large-binary echo can reach.
"""

import os
import sys


def main() -> None:
    wide = int(os.environ.get("FLOOR_PIPE_BYTES", "0"))
    if wide:
        import fcntl

        for fd in (0, 1):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), wide)
    read = sys.stdin.buffer.read
    out = sys.stdout.buffer
    write, flush = out.write, out.flush
    while True:
        header = read(4)
        if len(header) < 4:
            return  # EOF: the port was closed
        payload = read(int.from_bytes(header, "big"))
        write(header)
        write(payload)
        flush()


if __name__ == "__main__":
    main()
