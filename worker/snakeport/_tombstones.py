"""Tombstones: what the worker remembers of dropped refs and released sessions (I/O-free).

A late use of a ref that was released, evicted or pruned fails with ``ref_released`` (and
its ``cause``) rather than ``ref_not_found``, and a request naming a released session fails
with ``session_not_found`` and ``cause => session_released``, for the last
``max_tombstones`` of each. These tables are written on every drop, read only on those error
paths, and must stay small however many sessions come and go: a worker may see millions.

So they hold no Python object per entry. Each is a ring of fixed-size records in
``bytearray`` buffers that grow (doubling) up to their capacity as entries come, then
overwrite the oldest entry:

- :class:`RefTombstones`: per dropped ref, its id (8 bytes), its session's key (8 bytes)
  and its cause (1 byte): 17 bytes, 1.7 MB at the default capacity of 100,000;
- :class:`SessionTombstones`: per release of a session, the session's key (8 bytes):
  0.8 MB at 100,000.

A session is identified by :func:`session_key`, a 64-bit hash of its id (CPython's keyed
SipHash of ``str``/``bytes``), never 0 (0 marks an empty slot). Two different ids sharing a
key (one chance in 2**64 per pair) would only blur an error's precision: a forged ref term
naming another session's dropped ref would answer ``ref_released`` instead of
``session_mismatch``, or a never-opened id ``cause => session_released``.

A lookup is a ``bytearray.find`` of the 8-byte record over the ring (C ``memchr``-speed,
tens of microseconds at full capacity), on error paths only. Neither class locks: the
session table calls them under its lock.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["RefTombstones", "SessionTombstones", "session_key", "RECORD_BYTES"]

#: A record of 8 bytes: an unsigned 64-bit integer in the machine's byte order (the
#: format of the ``memoryview(...).cast("Q")`` views that write them).
_Q = struct.Struct("=Q")
_MASK = 0xFFFF_FFFF_FFFF_FFFF

#: Bytes per entry: a ref tombstone, a session tombstone.
RECORD_BYTES = (17, 8)

#: Slots a ring starts with (it doubles up to its capacity).
_FIRST_SLOTS = 1024


def session_key(session_id: str | bytes) -> int:
    """The 64-bit key of a session id in the tombstone tables (never 0).

    Args:
        session_id: A session id.

    Returns:
        A non-zero integer below 2**64, stable for the life of the process.
    """
    return (hash(session_id) & _MASK) or 1


def _find(buf: bytearray, key: int, used: int) -> int:
    """Slot of the 8-byte record ``key`` among the first ``used`` slots of ``buf``, or -1."""
    needle = _Q.pack(key)
    end = used * 8
    pos = buf.find(needle, 0, end)
    while pos >= 0 and pos & 7:  # a match across two records: look further
        pos = buf.find(needle, pos + 1, end)
    return pos >> 3 if pos >= 0 else -1


class _Ring:
    """The slot arithmetic of a ring of ``capacity`` entries that grows as it fills."""

    __slots__ = ("capacity", "used", "_next", "_slots")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0  # slots holding an entry
        self._next = 0  # the slot overwritten next, once full
        self._slots = 0  # slots allocated

    def claim(self) -> tuple[int, int]:
        """The slot for a new entry, and how many slots the buffers must have (to grow).

        While ``used`` is below the slots allocated, that is the slot ``used`` and nothing
        grows (:meth:`RefTombstones.add` takes that case itself); once full, the oldest.
        """
        if self.used < self.capacity:
            slot = self.used
            self.used += 1
            if slot >= self._slots:
                self._slots = min(max(_FIRST_SLOTS, 2 * self._slots), self.capacity)
            return slot, self._slots
        slot = self._next
        self._next = (slot + 1) % self.capacity
        return slot, self._slots

    def claim_run(self, n: int) -> tuple[int, int, int]:
        """Up to ``n`` consecutive slots for new entries (``n`` > 0), as ``claim`` would give
        them one by one up to the end of the ring: ``(first slot, count, slots)``."""
        if self.used < self.capacity:
            slot = self.used
            count = min(n, self.capacity - slot)
            self.used += count
            while self.used > self._slots:
                self._slots = min(max(_FIRST_SLOTS, 2 * self._slots), self.capacity)
            return slot, count, self._slots
        slot = self._next
        count = min(n, self.capacity - slot)
        self._next = (slot + count) % self.capacity
        return slot, count, self._slots


class RefTombstones:
    """The last ``capacity`` dropped refs: id, session key and cause code of each.

    Invariant: a ref id is stored at most once (ids are unique within the worker and each
    ref is dropped once), so the first match of a lookup is the only one.

    Args:
        capacity: How many to remember (0: none).
    """

    __slots__ = ("_ring", "_ids", "_sessions", "_causes", "_id_view", "_session_view")

    def __init__(self, capacity: int) -> None:
        self._ring = _Ring(capacity)
        self._ids = bytearray()
        self._sessions = bytearray()
        self._causes = bytearray()
        # 64-bit views of the two record buffers (an item written in one C call, without
        # struct's argument parsing); released while the buffers grow (_grow).
        self._id_view = memoryview(self._ids).cast("Q")
        self._session_view = memoryview(self._sessions).cast("Q")

    def _grow(self, slots: int) -> None:
        """Make the buffers ``slots`` entries long (new slots zeroed)."""
        grow = slots - len(self._causes)
        self._id_view.release()
        self._session_view.release()
        self._ids.extend(bytes(8 * grow))
        self._sessions.extend(bytes(8 * grow))
        self._causes.extend(bytes(grow))
        self._id_view = memoryview(self._ids).cast("Q")
        self._session_view = memoryview(self._sessions).cast("Q")

    def __len__(self) -> int:
        return self._ring.used

    @property
    def capacity(self) -> int:
        """How many entries are kept."""
        return self._ring.capacity

    def add(self, ref_id: int, key: int, cause: int) -> None:
        """Remember a dropped ref (forgetting the oldest entry when full).

        Args:
            ref_id: The ref id (positive, below 2**64).
            key: Its session's :func:`session_key`.
            cause: A cause code (0..255), the caller's encoding.
        """
        ring = self._ring
        slot = ring.used
        if slot < ring._slots:  # (the common case of claim(), inline: an allocated slot)
            ring.used = slot + 1
        else:
            if not ring.capacity:
                return
            slot, slots = ring.claim()
            if len(self._causes) < slots:
                self._grow(slots)
        self._id_view[slot] = ref_id
        self._session_view[slot] = key
        self._causes[slot] = cause

    def add_many(self, ref_ids: Sequence[int], key: int, cause: int) -> None:
        """Remember refs dropped together (one session, one cause): the same entries as
        :meth:`add` of each in order, written a run of slots at a time (a session released
        with 10,000 refs costs ~0.3 ms here instead of ~5 ms one by one).

        Args:
            ref_ids: The ref ids (each positive, below 2**64), oldest first.
            key: Their session's :func:`session_key`.
            cause: A cause code (0..255), the caller's encoding.
        """
        ring = self._ring
        if not ring.capacity or not ref_ids:
            return
        record, code = _Q.pack(key), bytes((cause,))
        done = 0
        while done < len(ref_ids):
            slot, count, slots = ring.claim_run(len(ref_ids) - done)
            if len(self._causes) < slots:
                self._grow(slots)
            run = ref_ids[done : done + count]
            self._ids[8 * slot : 8 * (slot + count)] = struct.pack(f"={count}Q", *run)
            self._sessions[8 * slot : 8 * (slot + count)] = record * count
            self._causes[slot : slot + count] = code * count
            done += count

    def get(self, ref_id: int) -> tuple[int, int] | None:
        """The session key and cause code of a remembered ref.

        Args:
            ref_id: A ref id.

        Returns:
            ``(session key, cause code)``, or ``None`` when it is not remembered.
        """
        if ref_id <= 0 or ref_id > _MASK:
            return None
        slot = _find(self._ids, ref_id, self._ring.used)
        if slot < 0:
            return None
        return self._session_view[slot], self._causes[slot]

    def nbytes(self) -> int:
        """Bytes of the buffers (allocated slots)."""
        return len(self._ids) + len(self._sessions) + len(self._causes)


class SessionTombstones:
    """The session keys of the last ``capacity`` session releases.

    A session released twice has two entries; a released session opened again keeps its
    entry, which is only looked at for sessions that are not open (so it still tells that
    the id was released, which is true once it is released again).

    Args:
        capacity: How many releases to remember (0: none).
    """

    __slots__ = ("_ring", "_keys")

    def __init__(self, capacity: int) -> None:
        self._ring = _Ring(capacity)
        self._keys = bytearray()

    def __len__(self) -> int:
        return self._ring.used

    def add(self, key: int) -> None:
        """Remember a release.

        Args:
            key: The released session's :func:`session_key`.
        """
        if not self._ring.capacity:
            return
        slot, slots = self._ring.claim()
        if len(self._keys) < 8 * slots:
            self._keys.extend(bytes(8 * slots - len(self._keys)))
        _Q.pack_into(self._keys, 8 * slot, key)

    def __contains__(self, key: int) -> bool:
        return _find(self._keys, key, self._ring.used) >= 0

    def nbytes(self) -> int:
        """Bytes of the buffer (allocated slots)."""
        return len(self._keys)
