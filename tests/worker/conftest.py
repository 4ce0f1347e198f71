"""Fixtures of the worker tests (the client itself is in ``sp_client.py``)."""

from __future__ import annotations

import os

import pytest
from sp_client import Worker


@pytest.fixture
def pipe():
    """A real pipe ``(read_fd, write_fd)``, both ends closed after the test (if still open)."""
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.kill()


@pytest.fixture
def make_worker():
    made: list[Worker] = []

    def make(*flags: str) -> Worker:
        w = Worker(*flags)
        made.append(w)
        return w

    yield make
    for w in made:
        w.kill()
