"""Fixtures of the worker tests (the client itself is in ``sp_client.py``)."""

from __future__ import annotations

import pytest
from sp_client import Worker


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
