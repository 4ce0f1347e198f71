"""Tombstones: the compact tables (I/O-free) and their memory in the real worker (issue 11, row 6)."""

from __future__ import annotations

import struct
import sys

import pytest
from sp_client import A, Worker

from snakeport._sessions import SessionTable
from snakeport._tombstones import RECORD_BYTES, RefTombstones, SessionTombstones, session_key


def test_ref_tombstones_remember_the_last_capacity_drops() -> None:
    t = RefTombstones(3)
    for ref_id in (1, 2, 3, 4):
        t.add(ref_id, 100 + ref_id, ref_id % 4)
    assert len(t) == 3
    assert t.get(1) is None  # the oldest one is forgotten
    assert [t.get(i) for i in (2, 3, 4)] == [(102, 2), (103, 3), (104, 0)]
    assert t.get(5) is None and t.get(0) is None and t.get(-1) is None and t.get(2**64) is None


def test_ref_lookup_ignores_matches_across_two_records() -> None:
    t = RefTombstones(4)
    # The 8 bytes of 2**32 (in the machine's byte order, the records') straddle the
    # records of ids a and b.
    target = 2**32
    packed = struct.pack("=Q", target)
    a = int.from_bytes(b"\x00" * 4 + packed[:4], sys.byteorder)
    b = int.from_bytes(packed[4:] + b"\x01" * 4, sys.byteorder)
    t.add(a, 1, 0)
    t.add(b, 2, 1)
    assert t.get(target) is None
    t.add(target, 3, 2)
    assert t.get(target) == (3, 2)


@pytest.mark.parametrize("capacity", [0, 1, 5, 1024, 1500, 5000])
def test_add_many_equals_add_one_by_one(capacity: int) -> None:
    # Batches of every shape: empty, within the first slots, across a doubling of the
    # buffers, wrapping around the ring, bigger than the ring.
    import random

    rnd = random.Random(capacity)
    one, many = RefTombstones(capacity), RefTombstones(capacity)
    next_id = 1
    for size in [0, 3, 1, 700, 1021, 2, capacity, capacity + 7, 2500, *rnd.choices(range(900), k=12)]:
        ids = list(range(next_id, next_id + size))
        next_id += size
        key, cause = rnd.randrange(1, 2**64), rnd.randrange(256)
        for ref_id in ids:
            one.add(ref_id, key, cause)
        many.add_many(ids, key, cause)
        assert len(many) == len(one) and many.nbytes() == one.nbytes()
        assert (many._ids, many._sessions, many._causes) == (one._ids, one._sessions, one._causes)
    assert many._ring._next == one._ring._next
    for ref_id in rnd.sample(range(1, next_id), k=min(200, next_id - 1)):
        assert many.get(ref_id) == one.get(ref_id)


def test_capacity_zero_remembers_nothing() -> None:
    t, s = RefTombstones(0), SessionTombstones(0)
    t.add(1, 1, 0)
    s.add(session_key("a"))
    assert (t.get(1), len(t), session_key("a") in s, t.nbytes() + s.nbytes()) == (None, 0, False, 0)


def test_buffers_grow_with_use_up_to_capacity() -> None:
    t, s = RefTombstones(100_000), SessionTombstones(100_000)
    assert t.nbytes() == s.nbytes() == 0  # nothing allocated before the first drop
    for i in range(1, 300_001):
        t.add(i, session_key(f"auto-{i}"), 3)
        s.add(session_key(f"auto-{i}"))
    assert t.nbytes() == RECORD_BYTES[0] * 100_000 and s.nbytes() == RECORD_BYTES[1] * 100_000
    assert t.get(200_000) is None and t.get(200_001) == (session_key("auto-200001"), 3)
    assert session_key("auto-300000") in s and session_key("auto-200000") not in s


def test_session_keys_are_never_zero_and_tell_ids_apart() -> None:
    keys = {session_key(f"s{i}") for i in range(10_000)} | {session_key(b"\xff"), session_key("")}
    assert 0 not in keys and len(keys) == 10_002


def test_the_table_keeps_causes_and_sessions() -> None:
    table = SessionTable(max_tombstones=10)
    table.open_session("a")
    table.open_session("b")
    ids = {}

    def build(ref_id_of):
        return ref_id_of(object())

    for sid in ("a", "b"):
        session = table.checkout(sid)
        ids[sid] = table.store_result(session, build).value
    table.release_session("a")
    from snakeport._sessions import RefHandle
    from snakeport.errors import RequestError

    def err(sid, ref_sid, ref_id):
        with pytest.raises(RequestError) as info:
            table.resolve(sid, [RefHandle(ref_sid, ref_id, "object", ())])
        return info.value.reason, info.value.details

    assert err("b", "b", ids["a"]) == ("session_mismatch", {"ref_id": ids["a"]})
    table.open_session("a")  # a new session under the same id: the old refs were released
    assert err("a", "a", ids["a"]) == ("ref_released", {"ref_id": ids["a"], "cause": "session_released"})


# ------------------------------------------------------------------ the real worker


def _cycles(w: Worker, start: int, n: int, batch: int = 100) -> None:
    """n cycles: open a session, make one ref in it, release it (pipelined, ``batch`` at a
    time, so that the replies of a batch fit in the pipe)."""
    for first in range(start, start + n, batch):
        last = 0
        for i in range(first, min(first + batch, start + n)):
            sid = f"auto-{i}"
            w.request("open_session", sid, {})
            w.request("call", sid, "builtins", "object", [], {}, {})
            last = w.request("release_session", sid)
        w.wait(last)
        w.replies.clear()
        w.order.clear()


def test_tombstones_cost_little_memory_in_the_real_worker() -> None:
    # 100,000 cycles fill both tables at the default capacity (100,000 dropped refs, 100,000
    # released sessions): their cost does not grow past that, so the target for 1M cycles
    # (less than +20% RSS) applies here too. Before the compact tables: +185%.
    w = Worker(sessions=())
    try:
        _cycles(w, 0, 2000)  # warm-up: imports, psutil, first allocations
        before = w.ok("stats")[A("rss_bytes")]
        _cycles(w, 2000, 100_000)
        after = w.ok("stats")[A("rss_bytes")]
        # The precision is kept: the first cycles' refs and sessions are forgotten, the
        # last ones remembered.
        w.ok("open_session", "auto-101999", {})
        err = w.error("session_info", "auto-101998")
        assert err[A("details")][A("cause")] == "session_released"
        assert A("cause") not in w.error("session_info", "auto-0")[A("details")]
    finally:
        w.kill()
    growth = (after - before) / before
    assert growth < 0.20, f"RSS {before} -> {after} bytes (+{growth:.0%})"
