"""Property tests: every kind of term round-trips through the real VM."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snakeport.etf import decode, encode
from snakeport.types import Atom, ErlMap, ImproperList, term_key

# The nested strategies below have long reprs; Hypothesis warns when it builds them.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

VM_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)

integers = st.one_of(
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=-(2**2100), max_value=2**2100),
)
# OTP 25 treats 0.0 and -0.0 as the same map key, so keys never hold -0.0 (values may).
floats = st.floats(allow_nan=False, allow_infinity=False)
key_floats = floats.map(lambda f: 0.0 if f == 0.0 else f)
atoms = st.one_of(
    st.sampled_from(["ok", "error", "undefined", "$snakeport_x", "a", ""]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=255),
).map(Atom)
binaries = st.one_of(TEXT, st.binary(max_size=40))


def leaves(float_strategy: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.one_of(integers, float_strategy, atoms, binaries, st.booleans(), st.none())


def containers(children: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.builds(
            ImproperList,
            st.lists(children, min_size=1, max_size=4),
            leaves(floats),
        ),
        st.dictionaries(
            st.one_of(integers, atoms, TEXT, st.tuples(atoms, integers)), children, max_size=5
        ),
        # Maps that cannot be dicts: unhashable keys and keys that collide in Python.
        st.lists(st.tuples(keys, children), max_size=5, unique_by=lambda kv: term_key(kv[0])).map(ErlMap),
    )


map_keys = st.recursive(
    st.one_of(leaves(key_floats), st.sampled_from([1, 1.0, True, Atom("a"), "a", Atom("true")])),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.lists(st.tuples(children, children), max_size=3, unique_by=lambda kv: term_key(kv[0])).map(ErlMap),
    ),
    max_leaves=6,
)
terms = st.recursive(leaves(floats), lambda children: containers(children, map_keys), max_leaves=25)


def same(a: Any, b: Any) -> bool:
    """Equal as Erlang terms (exact: types matter, map order does not)."""
    return term_key(a) == term_key(b)


def check_through_vm(erl: Any, term: Any) -> None:
    data = encode(term)
    assert same(decode(data), term)
    vm_data = erl.roundtrip(data)  # the VM decodes our bytes and encodes them its own way
    assert same(decode(vm_data), term)
    assert same(decode(encode(decode(vm_data))), term)


@VM_SETTINGS
@given(term=terms)
def test_any_term_round_trips_through_the_vm(erl: Any, term: Any) -> None:
    check_through_vm(erl, term)


@settings(VM_SETTINGS, max_examples=60)
@given(value=st.one_of(integers, floats, atoms, binaries))
def test_scalars_round_trip_through_the_vm(erl: Any, value: Any) -> None:
    check_through_vm(erl, value)
    if isinstance(value, float):
        back = decode(erl.roundtrip(encode(value)))
        assert math.copysign(1.0, back) == math.copysign(1.0, value)


@settings(VM_SETTINGS, max_examples=40)
@given(pairs=st.lists(st.tuples(map_keys, terms), max_size=6, unique_by=lambda kv: term_key(kv[0])))
def test_maps_with_any_keys_round_trip_through_the_vm(erl: Any, pairs: list[tuple[Any, Any]]) -> None:
    erl_map = ErlMap(pairs)
    check_through_vm(erl, erl_map)
    # What the VM sends back decodes to a dict or an ErlMap that is == the original.
    assert decode(erl.roundtrip(encode(erl_map))) == erl_map


@settings(max_examples=200, deadline=None)
@given(term=terms)
def test_decode_inverts_encode_byte_for_byte(term: Any) -> None:
    data = encode(term)
    assert encode(decode(data)) == data
