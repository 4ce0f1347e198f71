"""Reading ``{packet, 4}`` frames from a real pipe, for the writer's in-process tests.

Kept out of ``conftest.py`` under a unique module name (as ``sp_client.py``); the ``pipe``
fixture itself is in ``conftest.py``.
"""

from __future__ import annotations

import os
import struct

__all__ = ["read_exact", "read_frame"]


def read_exact(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from ``fd`` (blocking); fails if the pipe closes first."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        assert chunk, "the pipe closed early"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes:
    """The payload of the next ``{packet, 4}`` frame in ``fd``."""
    (n,) = struct.unpack(">I", read_exact(fd, 4))
    return read_exact(fd, n)
