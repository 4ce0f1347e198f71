"""Unit tests of result marshalling (snakeport._marshal) and request validation
(snakeport._requests): plain Python values in, terms or RequestErrors out."""

from __future__ import annotations

import pytest

from snakeport import _requests as R
from snakeport._marshal import marshal, marshal_batch
from snakeport._protocol import REF_TAG, SET_TAG
from snakeport._sessions import SessionTable
from snakeport.errors import RequestError
from snakeport.types import Atom, ErlMap, ImproperList


class Box:
    pass


@pytest.fixture
def table() -> SessionTable:
    t = SessionTable()
    t.open_session("s")
    return t


def run(table: SessionTable, result, mode=R.AUTO, max_depth=8):
    return marshal(table, table.checkout("s"), result, mode, max_depth)


def test_data_stays_data_and_stores_nothing(table) -> None:
    data = [1, 2.5, "x", b"\xff", None, True, Atom("a"), (1, [2, {"k": ["v"]}]), ErlMap([([1], 2)])]
    stored = run(table, data)
    assert stored.value == data and stored.new_ref_ids == [] and stored.evicted == []
    assert run(table, {1, 2}).value == (SET_TAG, [1, 2])
    assert run(table, ImproperList([1], 2)).value == ImproperList([1], 2)
    assert table.counts() == (1, 0)


def test_objects_become_refs_one_per_object(table) -> None:
    box = Box()
    stored = run(table, {"a": box, "b": [box, Box()]})
    ref = stored.value["a"]
    assert ref[0] == REF_TAG and ref[1] == "s" and ref[3] == f"{__name__}.Box"
    assert stored.value["b"][0] == ref and stored.value["b"][1][2] != ref[2]
    assert stored.new_ref_ids == [ref[2], stored.value["b"][1][2]]
    # Returned again later: the same ref, nothing new.
    again = run(table, [1, box])
    assert again.value == [1, ref] and again.new_ref_ids == []
    assert table.counts() == (1, 2)


def test_the_refs_of_one_result_share_their_type_name(table) -> None:
    # One name string per type and result, not one per ref (10,000 refs of one type made
    # 10,000 equal strings of 66 bytes each, alive until the reply was encoded).
    class Other:
        pass

    value = run(table, [Box(), Box(), Other(), (Box(), Other())]).value
    assert value[0][3] == f"{__name__}.Box" and value[2][3] == f"{__name__}.{Other.__qualname__}"
    assert value[0][3] is value[1][3] is value[3][0][3] and value[2][3] is value[3][1][3]
    batch = marshal_batch(table, table.checkout("s"), [Box(), Box()], None, R.REF, 8).value[0]
    assert batch[0][3] == f"{__name__}.Box" and batch[0][3] is batch[1][3]


def test_marshalling_many_refs_allocates_little_beyond_what_it_stores(table) -> None:
    # tracemalloc's peak while 10,000 objects become refs, beyond what stays allocated (the
    # table's entries) and the reply value (a ref term per object): the walk's slots and
    # the table's list of new refs. 360 bytes a ref with a name string per ref and a
    # (ref_id, obj) pair per new ref; 232 without (Python 3.11).
    import gc
    import tracemalloc

    n = 10_000
    objs = [Box() for _ in range(n)]
    session = table.checkout("s")
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        stored = marshal(table, session, objs, R.AUTO, 8)
        peak = tracemalloc.get_traced_memory()[1]
        assert len(stored.new_ref_ids) == n
        del stored
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (peak - kept) / n < 290, f"{(peak - kept) / n:.0f} bytes a ref beyond what is kept"


def test_result_modes(table) -> None:
    stored = run(table, [1, 2], mode=R.REF)
    assert stored.value[0] == REF_TAG and stored.value[3] == "builtins.list" and len(stored.new_ref_ids) == 1
    with pytest.raises(RequestError) as e:
        run(table, [1, Box()], mode=R.VALUE)
    assert e.value.reason == "not_encodable" and e.value.details == {"type": f"{__name__}.Box"}
    assert run(table, {"k": [1]}, mode=R.VALUE).value == {"k": [1]}
    assert table.counts() == (1, 1)


def test_too_deep_and_cyclic_containers_become_refs(table) -> None:
    cyclic: list = [1]
    cyclic.append(cyclic)
    value = run(table, cyclic).value
    assert value[0] == 1 and value[1][0] == REF_TAG and value[1][3] == "builtins.list"
    deep = run(table, [[[[1]]]], max_depth=2).value
    assert deep[0][0][0] == REF_TAG
    with pytest.raises(RequestError) as e:
        run(table, [[[[1]]]], mode=R.VALUE, max_depth=2)
    assert e.value.reason == "not_encodable"


def test_the_walk_converts_outside_the_table_and_only_places_refs_inside_it(table) -> None:
    # Data first, objects later and nested: the conversion (which may run an encoder: user
    # code) runs without the table's lock; inside it, only the slots get their ref terms and
    # the containers holding them are rebuilt (the others are the converted ones, as is).
    import snakeport

    locked_during_encoder = []

    class Celsius:
        pass

    def encoder(obj):
        locked_during_encoder.append(table.lock.locked())
        return 21.5

    snakeport.register_encoder(Celsius, encoder)
    try:
        box = Box()
        plain = [list(range(5)), {"k": (1, 2)}]
        result = [*plain, {"b": box, "t": (box, [Box(), Celsius()])}, {box: 1}]
        stored = run(table, result)
    finally:
        snakeport.register_encoder(Celsius, None)
    assert locked_during_encoder == [False]
    value = stored.value
    assert value[:2] == plain and value[0] is plain[0]  # data all through: not copied
    ref = value[2]["b"]
    assert ref[0] == REF_TAG and value[2]["t"][0] == ref and value[2]["t"][1][0][0] == REF_TAG
    assert value[2]["t"][1][1] == 21.5
    assert value[3] == {ref: 1}
    assert len(stored.new_ref_ids) == 2 and stored.blobs is False


def test_a_conversion_that_raises_answers_not_encodable(table) -> None:
    import snakeport

    class Odd:
        pass

    def encoder(obj):
        raise KeyboardInterrupt("no")

    snakeport.register_encoder(Odd, encoder)
    try:
        with pytest.raises(RequestError) as e:
            run(table, [1, Odd()])
        assert e.value.reason == "not_encodable" and "KeyboardInterrupt: no" in e.value.message
        assert e.value.details == {"type": f"{__name__}.{Odd.__qualname__}"}
    finally:
        snakeport.register_encoder(Odd, None)
    assert run(table, Odd()).value[0] == REF_TAG
    assert table.counts() == (1, 1)


def test_request_fields_are_checked_with_clear_messages() -> None:
    assert R.session_id("s") == "s" and R.session_id(b"\xff") == b"\xff"
    assert R.name(Atom("f"), "Function") == "f" and type(R.name(Atom("f"), "Function")) is str
    assert R.kwargs({Atom("a"): 1, "b": 2}) == {"a": 1, "b": 2}
    assert R.mode({}) == R.AUTO and R.mode({Atom("result"): Atom("value")}) == R.VALUE
    restored = R.session_options({Atom("max_refs"): 3, Atom("tags"): [1], Atom("overflow"): Atom("evict_lru")}, list)
    assert restored == {"max_refs": 3, "tags": [1], "overflow": "evict_lru"}
    for call, message in [
        (lambda: R.session_id(5), "expected the session id to be a binary, got: 5"),
        (lambda: R.name(1, "Module"), "expected Module to be a binary or an atom, got: 1"),
        (lambda: R.args("x"), "expected Args to be a list, got: 'x'"),
        (lambda: R.kwargs({1: 2}), "expected Kwargs keys to be binaries or atoms, got: 1"),
        (lambda: R.mode({Atom("result"): Atom("x")}), "expected result to be auto, ref, value or arrow, got: Atom('x')"),
        (lambda: R.session_options([], list), "expected SessionOpts to be a map, got: []"),
        (lambda: R.session_options({Atom("overflow"): Atom("drop")}, list), "expected overflow to be error or evict_lru"),
        (lambda: R.arity((Atom("ping"), 1, 2), 2), "expected ping to be a tuple of 2 elements, got 3"),
    ]:
        with pytest.raises(RequestError) as e:
            call()
        assert e.value.reason == "bad_request" and e.value.message.startswith(message), e.value.message


class Items(list):
    pass


def test_a_lone_object_is_one_ref_as_inside_a_container(table) -> None:
    box = Box()
    stored = run(table, box)
    ref = stored.value
    assert ref[0] == REF_TAG and ref[1] == "s" and ref[3] == f"{__name__}.Box"
    assert stored.new_ref_ids == [ref[2]] and stored.evicted == [] and stored.blobs is False
    # The same object again, alone or in a container: the same ref, nothing new.
    assert run(table, box).value == ref and run(table, box).new_ref_ids == []
    assert run(table, [box]).value == [ref]
    # A list subclass is not walked: one ref too (as at any depth).
    assert run(table, Items([1])).value[3] == f"{__name__}.Items"
    assert table.counts() == (1, 2)


class _BadHash(type):
    def __hash__(cls):
        raise KeyboardInterrupt("hash")

    def __eq__(cls, other):
        return cls is other


class Odd(metaclass=_BadHash):
    pass


def test_a_lone_object_whose_type_cannot_be_hashed_is_not_encodable(table) -> None:
    with pytest.raises(RequestError) as e:
        run(table, Odd())
    assert e.value.reason == "not_encodable" and e.value.details == {"type": f"{__name__}.Odd"}
    assert "KeyboardInterrupt: hash" in str(e.value)
    assert table.counts() == (1, 0)
