"""The floor of the Snakeport benchmarks: echo {packet, 4} frames on stdin/stdout.

Reads a 4-byte big-endian length, reads that many bytes, writes both back, flushes. Nothing
is decoded, no threads, the pipes keep their default capacity (64 KiB on Linux): this is the
least a Python program behind an Erlang Port has to do per frame.
"""

import sys


def main() -> None:
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
