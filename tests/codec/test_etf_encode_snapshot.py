"""Lists and dicts changed while they are encoded give exact frames (issue 13, item 6).

The encoders write a list's or a map's header from its size when they reach it; before the
fix, elements added or removed meanwhile (by another thread, which the C encoder lets run
whenever it calls into Python code, or by a ``default`` hook) made the header disagree with
the elements: the VM then decoded a wrong value (an improper list taken from the trailing
bytes). Now each list and dict is encoded as it was when the encoder reached it. The module
runs on both codec paths (conftest); the VM checks each frame it is sent.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from snakeport.etf import decode, encode
from snakeport.types import Atom, ImproperList

BIG = 2**70  # encoded through Python code by the C encoder (more than 64 bits)


def churn(target: list[Any], mapping: dict[Any, Any], stop: threading.Event) -> None:
    """Append and remove elements and keys until ``stop`` is set."""
    i = 0
    while not stop.is_set():
        target.append(BIG)
        mapping[i % 64 + 1000] = BIG
        if len(target) > 300:
            del target[200:]
        mapping.pop((i * 7) % 64 + 1000, None)
        i += 1


def test_containers_changed_by_another_thread_encode_exactly() -> None:
    target: list[Any] = [BIG] * 200
    mapping: dict[Any, Any] = {i: BIG for i in range(100)}
    stop = threading.Event()
    thread = threading.Thread(target=churn, args=(target, mapping, stop))
    thread.start()
    frames = []
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline or len(frames) < 50:
            frames.append(encode([target, (Atom("m"), mapping), target]))
    finally:
        stop.set()
        thread.join()
    for frame in frames:
        value = decode(frame)  # a wrong count leaves trailing bytes or an improper list
        assert type(value) is list and len(value) == 3
        for part in (value[0], value[1][1], value[2]):
            assert not isinstance(part, ImproperList)
        assert all(x == BIG for x in value[0]) and all(x == BIG for x in value[2])
        assert 200 <= len(value[0]) <= 301 and 100 <= len(value[1][1]) <= 164


def test_frames_encoded_under_concurrent_changes_are_read_alike_by_the_vm(erl: Any) -> None:
    target: list[Any] = [BIG] * 200
    mapping: dict[Any, Any] = {i: BIG for i in range(100)}
    stop = threading.Event()
    thread = threading.Thread(target=churn, args=(target, mapping, stop))
    thread.start()
    try:
        frames = [encode([target, mapping]) for _ in range(20)]
    finally:
        stop.set()
        thread.join()
    for frame in frames:
        checked = erl.call(
            "[B] = Args, case binary_to_term(B, [used]) of"
            " {[L, M], Used} when is_list(L), is_map(M), Used =:= byte_size(B) ->"
            " integer_to_binary(length(L) + map_size(M));"
            " _ -> <<\"wrong\">> end.",
            frame,
        )
        value = decode(frame)
        assert checked == str(len(value[0]) + len(value[1])).encode()
