"""A session with a job in flight is in use: checkout/checkin, the sweep, expire_session."""

from __future__ import annotations

import pytest
from test_worker_dispatch import Harness
from test_worker_sessions import Clock

from snakeport._sessions import SessionTable
from snakeport.types import Atom


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(clock) -> SessionTable:
    return SessionTable(default_ttl_seconds=10, monotonic=clock)


def test_the_sweep_keeps_the_refs_of_a_session_in_use(table, clock) -> None:
    table.open_session("s")
    session = table.checkout("s")
    ids = table.store_result(session, lambda ref_id_of: [ref_id_of(object()), ref_id_of(object())]).value
    clock.now += 60  # the job runs for six TTLs
    assert table.sweep() == []
    # It ends: the ref it used counts as accessed now, the other one is idle.
    table.checkin(session, [ids[1]])
    assert table.sweep() == [("s", [ids[0]])]
    clock.now += 11
    assert table.sweep() == [("s", [ids[1]])]


def test_expire_session_never_releases_a_session_in_use(table, clock) -> None:
    table.open_session("s")
    session = table.checkout("s")
    clock.now += 100
    assert table.expire_session("s", 10) == (False, 0.0)
    table.checkin(session)
    assert table.expire_session("s", 10) == (False, 0.0)  # its TTL clock restarted
    clock.now += 4
    assert table.expire_session("s", 10) == (False, 4.0)
    clock.now += 6
    assert table.expire_session("s", 10) == (True, 0)
    assert table.expire_session("s", 10) == (True, 0)  # idempotent
    assert table.counts() == (0, 0)


def test_expire_session_releases_its_refs_with_tombstones(table, clock) -> None:
    table.open_session("s")
    session = table.checkout("s")
    table.store_result(session, lambda ref_id_of: [ref_id_of(object())])
    table.checkin(session)
    clock.now += 10
    assert table.expire_session("s", 10) == (True, 1)
    with pytest.raises(Exception) as e:
        table.checkout("s")
    assert e.value.reason == "session_not_found" and e.value.details["cause"] == "session_released"



def test_every_job_checks_its_session_in(clock) -> None:
    h = Harness(monotonic=clock)
    box = h.call("Box", [1])
    h.call_err("fail", ["x"])  # failed
    h.ok("method", "s", box, "get", [], {}, {})
    lst = h.ok("call", "s", "builtins", "list", [[1]], {}, {Atom("result"): Atom("ref")})
    # An unhashable object in a set fails after the checkout.
    assert h.err("call", "s", "sp_testmod", "identity", [(Atom("$snakeport_set"), [lst])], {}, {})["reason"] == "bad_request"
    h.ok("getattr", "s", box, "value", {})
    h.ok("eval", "s", "1", {}, {})
    job = h.outcome("call", "s", "sp_testmod", "identity", [1], {}, {})
    h.d.jobs.cancel(job.request_id)  # cancelled while queued
    assert h.d.run_job(job) == []
    assert h.table._sessions["s"].running == 0


def test_expire_session_op(clock) -> None:
    h = Harness(monotonic=clock)
    h.call("Box", [1])
    assert h.ok("expire_session", "s", 10_000) == {"expired": False, "idle_ms": 0}
    clock.now += 3.5
    assert h.ok("expire_session", "s", 10_000) == {"expired": False, "idle_ms": 3500}
    assert h.ok("expire_session", "s", 3_000) == {"expired": True, "released": 1}
    assert h.ok("expire_session", "s", 3_000) == {"expired": True, "released": 0}
    assert h.err("expire_session", "s", -1)["reason"] == "bad_request"
    assert h.err("expire_session", "s")["reason"] == "bad_request"

