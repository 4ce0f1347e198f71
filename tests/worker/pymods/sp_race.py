"""A list and a dict that a background thread keeps changing (issue 13, item 6)."""

from __future__ import annotations

import threading

BIG = 2**70  # more than 64 bits: the C encoder hands it to Python code (the GIL can switch)

_state: dict = {}


def start(n: int = 200) -> bool:
    """Create the shared list and dict and the thread that changes them (until ``stop``)."""
    items = [BIG] * n
    mapping = {i: BIG for i in range(n)}
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            items.append(BIG)
            mapping[n + i % 64] = BIG
            if len(items) > n + 100:
                del items[n:]
            mapping.pop(n + (i * 7) % 64, None)
            i += 1

    thread = threading.Thread(target=churn, daemon=True)
    _state.update(items=items, mapping=mapping, stop=stop, thread=thread)
    thread.start()
    return True


def shared() -> list:
    """The list and the dict, as they are (the worker encodes the same objects)."""
    return [_state["items"], _state["mapping"]]


def stop() -> bool:
    _state["stop"].set()
    _state["thread"].join(timeout=10)
    return not _state["thread"].is_alive()
