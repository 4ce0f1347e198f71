"""Unit tests of the session and ref tables (no I/O, a fake clock)."""

from __future__ import annotations

import threading

import pytest

from snakeport._sessions import RefHandle, SessionTable, StoredResult
from snakeport.errors import RequestError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def handle(session, ref_id) -> RefHandle:
    return RefHandle(session, ref_id, "x.Y", ("$snakeport_ref", session, ref_id, "x.Y"))


def store(table: SessionTable, session, objs) -> StoredResult:
    """``store_result`` of a result that is the list of ``objs``, each as a ref."""
    return table.store_result(session, lambda ref_id_of: [ref_id_of(o) for o in objs])


def new_refs(table: SessionTable, sid, objs) -> list[int]:
    """Open the session (or keep it as it is) and store ``objs`` in it as new refs."""
    table.open_session(sid)
    session = table.checkout(sid)
    stored = store(table, session, objs)
    table.checkin(session)
    assert stored.new_ref_ids == stored.value
    return stored.value


def reason(exc_info) -> str:
    return exc_info.value.reason


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(clock) -> SessionTable:
    return SessionTable(default_max_refs=3, default_ttl_seconds=10, max_tombstones=4, monotonic=clock)


def test_store_resolve_and_info(table) -> None:
    a, b = object(), object()
    ids = new_refs(table, "s", [a, b])
    assert ids == [1, 2]
    hs = [handle("s", 2), handle("s", 1)]
    table.resolve("s", hs)
    assert hs[0].obj is b and hs[1].obj is a
    info = table.session_info("s")
    assert (info.session, info.refs, info.max_refs, info.ttl_seconds, info.overflow) == ("s", 2, 3, 10, "error")
    assert table.counts() == (1, 2)


def test_session_mismatch_never_serves(table) -> None:
    (rid,) = new_refs(table, "s", [object()])
    new_refs(table, "t", [])
    # The term names another session.
    with pytest.raises(RequestError) as e:
        table.resolve("t", [handle("s", rid)])
    assert reason(e) == "session_mismatch"
    # A forged term: right session name, id of another session.
    h = handle("t", rid)
    with pytest.raises(RequestError) as e:
        table.resolve("t", [h])
    assert reason(e) == "session_mismatch" and h.obj is None
    with pytest.raises(RequestError) as e:
        table.release_ref("t", h)
    assert reason(e) == "session_mismatch"
    assert table.session_info("s").refs == 1


def test_one_bad_handle_touches_nothing(table, clock) -> None:
    ids = new_refs(table, "s", [1, 2])
    clock.now += 5
    good, bad = handle("s", ids[0]), handle("s", 99)
    with pytest.raises(RequestError) as e:
        table.resolve("s", [good, bad])
    assert reason(e) == "ref_not_found" and good.obj is None
    clock.now += 6  # 11 s since store: both prune (the failed resolve refreshed nothing)
    assert table.sweep() == [("s", ids)]


def test_release_ref_is_idempotent_with_tombstones(table) -> None:
    (rid,) = new_refs(table, "s", ["obj"])
    assert table.release_ref("s", handle("s", rid)) is True
    assert table.release_ref("s", handle("s", rid)) is False
    with pytest.raises(RequestError) as e:
        table.resolve("s", [handle("s", rid)])
    assert reason(e) == "ref_released" and e.value.details["cause"] == "released"
    with pytest.raises(RequestError) as e:
        table.resolve("s", [handle("s", 12345)])
    assert reason(e) == "ref_not_found"
    with pytest.raises(RequestError) as e:
        table.release_ref("nope", handle("nope", rid))
    assert reason(e) == "session_not_found"


def test_tombstones_are_bounded(table) -> None:
    ids = []
    for _ in range(3):
        ids += new_refs(table, "s", [1, 2])
        table.release_session("s")
    # 6 dropped, 4 remembered: the oldest two are forgotten.
    table.open_session("s")
    for rid in ids[:2]:
        with pytest.raises(RequestError) as e:
            table.resolve("s", [handle("s", rid)])
        assert reason(e) == "ref_not_found"
    for rid in ids[2:]:
        with pytest.raises(RequestError) as e:
            table.resolve("s", [handle("s", rid)])
        assert reason(e) == "ref_released" and e.value.details["cause"] == "session_released"


def test_overflow_error_drops_the_new_objects_only(table) -> None:
    ids = new_refs(table, "s", [1, 2])
    session = table.checkout("s")
    with pytest.raises(RequestError) as e:
        store(table, session, [3, 4])
    assert reason(e) == "max_refs_exceeded" and e.value.details == {"limit": 3, "refs": 2}
    hs = [handle("s", i) for i in ids]
    table.resolve("s", hs)
    assert [h.obj for h in hs] == [1, 2]


def test_overflow_evict_lru_evicts_least_recently_used(table) -> None:
    table.open_session("s", overflow="evict_lru")
    ids = new_refs(table, "s", ["a", "b", "c"])
    table.resolve("s", [handle("s", ids[0])])  # "a" is now the most recently used
    session = table.checkout("s")
    evicted = store(table, session, ["d", "e"]).evicted
    assert evicted == [ids[1], ids[2]]
    with pytest.raises(RequestError) as e:
        table.resolve("s", [handle("s", ids[1])])
    assert reason(e) == "ref_released" and e.value.details["cause"] == "evicted"
    # More new objects than max_refs: refused, nothing evicted.
    with pytest.raises(RequestError) as e:
        store(table, session, [object() for _ in range(4)])
    assert reason(e) == "max_refs_exceeded"
    assert table.session_info("s").refs == 3


def test_lowering_max_refs_evicts_under_evict_lru(table) -> None:
    table.open_session("s", overflow="evict_lru")
    ids = new_refs(table, "s", [1, 2, 3])
    info, evicted = table.open_session("s", max_refs=1)
    assert evicted == ids[:2] and info.refs == 1 and info.max_refs == 1


def test_ttl_sweep_prunes_idle_refs_only(table, clock) -> None:
    table.open_session("s", ttl_seconds=2)
    ids = new_refs(table, "s", [1, 2, 3])
    clock.now += 1.5
    table.resolve("s", [handle("s", ids[1])])
    clock.now += 1.0
    assert table.sweep() == [("s", [ids[0], ids[2]])]
    assert table.sweep() == []
    with pytest.raises(RequestError) as e:
        table.resolve("s", [handle("s", ids[0])])
    assert e.value.details["cause"] == "ttl"
    clock.now += 5
    assert table.sweep() == [("s", [ids[1]])]


def test_release_session_and_late_store(table) -> None:
    new_refs(table, "s", [1, 2])
    session = table.checkout("s")
    assert table.release_session("s") == 2
    assert table.release_session("s") == 0
    with pytest.raises(RequestError) as e:
        table.session_info("s")
    assert reason(e) == "session_not_found"
    with pytest.raises(RequestError) as e:
        store(table, session, [1])
    assert reason(e) == "session_not_found"
    assert table.counts() == (0, 0)
    assert store(table, session, [])[:4] == ([], [], [], None)  # no ref in the result: no error


@pytest.mark.parametrize(
    "kw",
    [{"max_refs": 0}, {"max_refs": True}, {"ttl_seconds": -1}, {"ttl_seconds": float("inf")}, {"overflow": "drop"}],
)
def test_open_session_validates(table, kw) -> None:
    with pytest.raises(RequestError) as e:
        table.open_session("s", **kw)
    assert reason(e) == "bad_request"


def test_open_session_updates_and_keeps_tags(table) -> None:
    info, _ = table.open_session("s", tags={"team": "a"}, ttl_seconds=0.5)
    assert info.tags == {"team": "a"} and info.ttl_seconds == 0.5
    info, _ = table.open_session("s", max_refs=7)
    assert info.tags == {"team": "a"} and info.max_refs == 7


def test_released_objects_are_freed(table) -> None:
    import weakref

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing)
    (rid,) = new_refs(table, "s", [thing])
    del thing
    assert ref() is not None
    table.release_ref("s", handle("s", rid))
    assert ref() is None


def test_concurrent_store_and_release_keep_counts_consistent(clock) -> None:
    table = SessionTable(default_max_refs=100_000, monotonic=clock)
    errors = []

    def worker(sid: str) -> None:
        try:
            for _ in range(300):
                (rid,) = new_refs(table, sid, [object()])
                assert table.release_ref(sid, handle(sid, rid))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert table.counts() == (4, 0)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        SessionTable(default_max_refs=0)
    with pytest.raises(ValueError):
        SessionTable(default_ttl_seconds=0)
    with pytest.raises(ValueError):
        SessionTable(max_tombstones=-1)


def test_fill_warning_rearms_below_the_threshold(table) -> None:
    table.open_session("s", max_refs=5)
    session = table.checkout("s")
    first = store(table, session, [1, 2, 3])
    assert first.fill is None  # 3 of 5
    assert store(table, session, [4]).fill == (4, 5)  # 4 of 5 = 80%
    assert store(table, session, [5]).fill is None  # warned already
    for rid in first.new_ref_ids:
        table.release_ref("s", handle("s", rid))
    assert store(table, session, [6]).fill is None  # 3 of 5: re-armed
    assert store(table, session, [7]).fill == (4, 5)


def test_store_result_pins_the_refs_it_returns(table) -> None:
    # max_refs 2 under evict_lru, refs a and b held, a result [a, new, new]: evicting b and
    # then a (the least recently used once the new ones are in) would return a dead ref.
    table.open_session("s", max_refs=2, overflow="evict_lru")
    a, b = object(), object()
    ids = new_refs(table, "s", [a, b])
    session = table.checkout("s")
    with pytest.raises(RequestError) as e:
        store(table, session, [a, object(), object()])
    assert reason(e) == "max_refs_exceeded" and e.value.details == {"limit": 2, "refs": 2}
    hs = [handle("s", i) for i in ids]
    table.resolve("s", hs)  # nothing was evicted
    assert [h.obj for h in hs] == [a, b]
    # b is now the least recently used; [b, new] fits by evicting a, never b.
    stored = store(table, session, [b, "new"])
    assert stored.value == [ids[1], stored.new_ref_ids[0]] and stored.evicted == [ids[0]]
    table.resolve("s", [handle("s", ids[1])])


def test_store_result_is_one_step_of_the_table(table) -> None:
    # The lookups of existing refs, the build of the value and the store happen under the
    # table's one lock: no release and no sweep can drop a returned ref in between.
    a = object()
    (rid,) = new_refs(table, "s", [a])
    session = table.checkout("s")
    seen = []

    def build(ref_id_of):
        seen.append(table.lock.locked())
        value = [ref_id_of(a), ref_id_of("new")]
        seen.append(table.lock.locked())
        return value

    stored = table.store_result(session, build)
    assert seen == [True, True] and not table.lock.locked()
    assert stored.value[0] == rid and stored.new_ref_ids == stored.value[1:]
    assert table.session_info("s").refs == 2


def test_sessions_are_only_created_by_open_session(table) -> None:
    for fn in (table.checkout, table.session_info):
        with pytest.raises(RequestError) as e:
            fn("s")
        assert reason(e) == "session_not_found" and e.value.details == {"session": "s"}
    with pytest.raises(RequestError) as e:
        table.checkout("s", [handle("s", 1)])
    assert reason(e) == "session_not_found"
    assert table.counts() == (0, 0)
    table.open_session("s")
    assert table.checkout("s").session_id == "s"
    assert table.counts() == (1, 0)


def test_released_session_is_remembered_not_recreated(table) -> None:
    ids = new_refs(table, "s", [1])
    table.release_session("s")
    with pytest.raises(RequestError) as e:
        table.checkout("s", [handle("s", ids[0])])
    assert reason(e) == "session_not_found"
    assert e.value.details == {"session": "s", "cause": "session_released"}
    with pytest.raises(RequestError) as e:
        table.release_ref("s", handle("s", ids[0]))
    assert e.value.details["cause"] == "session_released"
    assert table.counts() == (0, 0)
    # Opening it again gives a new, empty session; its old refs stay released.
    table.open_session("s")
    with pytest.raises(RequestError) as e:
        table.checkout("s", [handle("s", ids[0])])
    assert reason(e) == "ref_released" and e.value.details["cause"] == "session_released"
    with pytest.raises(RequestError) as e:
        table.checkout("t")
    assert e.value.details == {"session": "t"}


def test_checkout_resolves_refs(table) -> None:
    ids = new_refs(table, "s", ["a"])
    h = handle("s", ids[0])
    session = table.checkout("s", [h])
    assert h.obj == "a" and session.session_id == "s"
