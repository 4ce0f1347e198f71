"""Python types for the Erlang terms that have no natural Python counterpart.

- :class:`Atom`: an atom other than ``true``/``false``/``nil`` (a ``str`` subclass).
- :class:`ErlMap`: a map that cannot be a ``dict`` (unhashable or colliding keys).
- :class:`ImproperList`: ``[E1, ..., En | Tail]`` with a ``Tail`` that is not a list.
- Opaque terms (:class:`Pid`, :class:`Port`, :class:`Reference`, :class:`Fun`,
  :class:`Export`, :class:`BitBinary`, :class:`LocalTerm`): immutable, hashable values that
  keep the exact bytes of their encoding, so that they encode back byte-identically. Two
  opaque values are equal when they are of the same type and denote the same term: pids,
  ports, references and exports compare their parsed fields (so an old ``PID_EXT`` equals
  the ``NEW_PID_EXT`` the VM would write for it, and a Latin-1 node atom equals its UTF-8
  form), bit binaries their data and bit count, funs and local terms their bytes.

**Atom equality.** ``Atom`` keeps ``str`` equality and hashing: ``Atom("ok") == "ok"`` and
``{"ok": 1}[Atom("ok")] == 1``. This keeps dictionary lookups at C speed and lets the worker
write ``opts.get("result")`` for a map with atom keys. The type is never lost: decoding gives
``Atom`` instances and encoding looks at the type, so ``ok`` and ``<<"ok">>`` travel as
themselves. Use ``isinstance(x, Atom)`` to tell them apart. The price is that a map holding
both ``a`` and ``<<"a">>`` as keys cannot be a ``dict``; it decodes to an :class:`ErlMap`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Hashable, ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView

from . import _etf_tags as T
from .errors import EncodeError

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = [
    "Atom",
    "ErlMap",
    "ImproperList",
    "OpaqueTerm",
    "Pid",
    "Port",
    "Reference",
    "Fun",
    "Export",
    "BitBinary",
    "LocalTerm",
    "term_key",
]

_U32 = 0xFFFFFFFF
_pack_double = struct.Struct(">d").pack


class Atom(str):
    """An Erlang atom (other than ``true``, ``false`` and ``nil``, which map to Python values).

    A ``str`` subclass that compares and hashes like the plain string of its name (see the
    module docstring for why). At most 255 characters can be encoded.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


def _atom_ext(name: str) -> bytes:
    """Encode an atom name as SMALL_ATOM_UTF8_EXT or ATOM_UTF8_EXT (tag included).

    Args:
        name: The atom's text.

    Returns:
        The encoded atom, starting with its tag byte.

    Raises:
        EncodeError: The name has more than 255 characters or cannot be encoded as UTF-8.
    """
    if len(name) > 255:
        raise EncodeError(f"atom of {len(name)} characters exceeds the limit of 255", value=name)
    try:
        text = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"atom {name!r} is not encodable as UTF-8: {exc}", value=name) from None
    n = len(text)
    if n < 256:
        return bytes((T.SMALL_ATOM_UTF8_EXT, n)) + text
    return bytes((T.ATOM_UTF8_EXT, n >> 8, n & 0xFF)) + text


def _check_uint(name: str, value: int, bits: int) -> None:
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise ValueError(f"expected {name} to be an unsigned {bits}-bit integer, got: {value!r}")


def _as_atom(name: str) -> Atom:
    return name if name.__class__ is Atom else Atom(name)  # type: ignore[return-value]


def _frozen(self: object, name: str, value: object) -> NoReturn:
    raise AttributeError(f"{type(self).__name__} is immutable")


def term_key(term: Any) -> Hashable:
    """Return a hashable key that identifies the Erlang term a Python value stands for.

    Two values get the same key exactly when they encode to the same Erlang term, with the
    exact (type-aware) comparison that map keys use: ``1`` and ``1.0`` differ, ``0.0`` and
    ``-0.0`` differ, ``Atom("a")`` and ``"a"`` differ, ``"a"`` and ``b"a"`` are the same
    binary, ``True`` and ``Atom("true")`` are the same atom. Lists and maps (unhashable in
    Python) get keys too; map keys ignore pair order. Used by :class:`ErlMap`.

    Args:
        term: Any value the codec can encode (others are keyed by themselves, or by identity
            when unhashable).

    Returns:
        A hashable key.
    """
    if isinstance(term, Atom):
        return ("a", str(term))
    if term is True:
        return ("a", "true")
    if term is False:
        return ("a", "false")
    if term is None:
        return ("a", "nil")
    if isinstance(term, int):
        return ("i", int(term))
    if isinstance(term, float):
        if math.isfinite(term):
            return ("f", _pack_double(term))
        return ("a", "nan" if term != term else ("infinity" if term > 0 else "neg_infinity"))
    if isinstance(term, str):
        return ("b", term.encode("utf-8", "surrogatepass"))
    if isinstance(term, (bytes, bytearray, memoryview)):
        return ("b", bytes(term))
    if isinstance(term, tuple):
        return ("t", tuple(map(term_key, term)))
    if isinstance(term, list):
        return ("l", tuple(map(term_key, term)))
    if isinstance(term, ImproperList):
        return ("il", tuple(map(term_key, term.elements)), term_key(term.tail))
    if isinstance(term, (dict, ErlMap)):
        return ("m", frozenset((term_key(k), term_key(v)) for k, v in term.items()))
    if isinstance(term, OpaqueTerm):
        return ("o", type(term).__name__, term._identity())
    try:
        hash(term)
    except TypeError:
        return ("x", id(term))
    return ("x", term)


class _PairsItems(ItemsView):  # type: ignore[type-arg]
    """``ErlMap.items()``: the pairs in order, without key lookups."""

    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._mapping.pairs)  # type: ignore[attr-defined]


class _PairsValues(ValuesView):  # type: ignore[type-arg]
    """``ErlMap.values()``: the values in order, without key lookups."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return (v for _, v in self._mapping.pairs)  # type: ignore[attr-defined]


class ErlMap(Mapping):  # type: ignore[type-arg]
    """An Erlang map kept as an ordered, read-only sequence of ``(key, value)`` pairs.

    The decoder returns an ``ErlMap`` instead of a ``dict`` when the map has a key Python
    cannot hash (a list, a map, a tuple holding one) or keys that collide in Python although
    they are different Erlang terms (``1`` and ``1.0``, ``1`` and ``true``, ``a`` and
    ``<<"a">>``, ``0.0`` and ``-0.0``). It encodes back to the same map, pairs in the same
    order.

    Lookups (``m[key]``, ``key in m``, ``m.get(key)``) match keys exactly by
    :func:`term_key`: ``m[1]`` and ``m[1.0]`` find different pairs, ``m["a"]`` finds the
    binary key and ``m[Atom("a")]`` the atom key. Iteration yields keys in pair order;
    ``items()``/``values()`` follow the pairs. Equality with another ``ErlMap`` or a ``dict``
    is equality of Erlang maps: pair order is ignored, keys and values are compared exactly
    by :func:`term_key` (so ``"a"`` equals ``b"a"``, ``1`` differs from ``1.0``). Hashable
    (by its keys).
    """

    __slots__ = ("_pairs", "_index")

    _pairs: tuple[tuple[Any, Any], ...]
    _index: dict[Hashable, Any] | None

    def __init__(self, pairs: Iterable[tuple[Any, Any]] = ()) -> None:
        """Create a map from ``(key, value)`` pairs.

        Args:
            pairs: The pairs, in encoding order. Keys should be distinct Erlang terms (the VM
                rejects a map with duplicate keys); lookups see the first of duplicates.

        Raises:
            ValueError: An item is not a pair.
        """
        checked = []
        for item in pairs:  # errors raised by the iterable itself propagate unchanged
            try:
                key, value = item
            except (TypeError, ValueError):
                raise ValueError(f"expected (key, value) pairs, got: {item!r}") from None
            checked.append((key, value))
        object.__setattr__(self, "_pairs", tuple(checked))
        object.__setattr__(self, "_index", None)

    @classmethod
    def _from_flat(cls, flat: list[Any]) -> ErlMap:
        """Build from ``[k1, v1, k2, v2, ...]`` without checks (used by the decoder)."""
        self = cls.__new__(cls)
        it = iter(flat)
        object.__setattr__(self, "_pairs", tuple(zip(it, it)))
        object.__setattr__(self, "_index", None)
        return self

    __setattr__ = _frozen  # type: ignore[assignment]

    @property
    def pairs(self) -> tuple[tuple[Any, Any], ...]:
        """The ``(key, value)`` pairs in order."""
        return self._pairs

    def _lookup(self) -> dict[Hashable, Any]:
        index = self._index
        if index is None:
            index = {}
            for k, v in self._pairs:
                index.setdefault(term_key(k), v)
            object.__setattr__(self, "_index", index)
        return index

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._lookup()[term_key(key)]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return term_key(key) in self._lookup()

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def items(self) -> ItemsView[Any, Any]:
        """The pairs, in order."""
        return _PairsItems(self)

    def values(self) -> ValuesView[Any]:
        """The values, in pair order."""
        return _PairsValues(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ErlMap):
            theirs = other._lookup()
        elif isinstance(other, dict):
            theirs = {term_key(k): v for k, v in other.items()}
        else:
            return NotImplemented
        mine = self._lookup()
        if len(mine) != len(theirs):
            return False
        for key, value in mine.items():
            if key not in theirs:
                return False
            other_value = theirs[key]
            if not (other_value is value or term_key(other_value) == term_key(value)):
                return False
        return True

    def __hash__(self) -> int:
        return hash(frozenset(self._lookup()))

    def __repr__(self) -> str:
        return f"ErlMap({list(self._pairs)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ErlMap, (self._pairs,))


class ImproperList:
    """An improper list ``[E1, ..., En | Tail]``.

    Attributes:
        elements: The elements before the tail (a non-empty tuple).
        tail: The final tail; never a list (that would make the list proper).
    """

    __slots__ = ("_elements", "_tail")

    _elements: tuple[Any, ...]
    _tail: Any

    def __init__(self, elements: Iterable[Any], tail: Any) -> None:
        """Create ``[*elements | tail]``.

        A tail that is itself an ``ImproperList`` is flattened into this one.

        Args:
            elements: The elements before the tail; at least one.
            tail: Any term that is not a list.

        Raises:
            ValueError: ``elements`` is empty or ``tail`` is a list.
        """
        items = tuple(elements)
        if isinstance(tail, ImproperList):
            items += tail.elements
            tail = tail.tail
        if not items:
            raise ValueError("an improper list needs at least one element before its tail")
        if isinstance(tail, list):
            raise ValueError("the tail of an improper list must not be a list; use a list")
        object.__setattr__(self, "_elements", items)
        object.__setattr__(self, "_tail", tail)

    __setattr__ = _frozen  # type: ignore[assignment]

    @property
    def elements(self) -> tuple[Any, ...]:
        """The elements before the tail."""
        return self._elements

    @property
    def tail(self) -> Any:
        """The final tail."""
        return self._tail

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImproperList):
            return NotImplemented
        return self._elements == other._elements and self._tail == other._tail

    def __hash__(self) -> int:
        return hash((ImproperList, self._elements, self._tail))

    def __repr__(self) -> str:
        return f"ImproperList({list(self._elements)!r}, {self._tail!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ImproperList, (self._elements, self._tail))


class OpaqueTerm:
    """Base of the opaque terms: immutable values that keep their exact encoding.

    Equal when of the same type with equal identities (:meth:`_identity`: the encoding
    itself unless a subclass parses fields that identify the term); hashable.
    """

    __slots__ = ("_raw",)

    _raw: bytes

    def __init__(self, raw: bytes) -> None:
        """Wrap an encoding (tag byte included, version byte excluded).

        Args:
            raw: The term's bytes, as found inside a ``term_to_binary`` result.

        Raises:
            TypeError: ``raw`` is not bytes.
        """
        if type(raw) is not bytes:
            raise TypeError(f"expected raw to be bytes, got: {type(raw).__name__}")
        object.__setattr__(self, "_raw", raw)

    __setattr__ = _frozen  # type: ignore[assignment]

    @property
    def raw(self) -> bytes:
        """The term's encoding: tag byte and data (no version byte)."""
        return self._raw

    def _identity(self) -> tuple[Any, ...]:
        """What identifies the term for ``==`` and ``hash``."""
        return (self._raw,)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OpaqueTerm):
            return NotImplemented
        return type(self) is type(other) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._identity()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(raw={self._raw!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._raw, self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "_raw"}


def _rebuild(cls: type[OpaqueTerm], raw: bytes, fields: dict[str, Any]) -> OpaqueTerm:
    """Unpickle helper: restore an opaque term without re-validating it."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_raw", raw)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


class Pid(OpaqueTerm):
    """An Erlang process identifier (PID_EXT or NEW_PID_EXT).

    Attributes:
        node: The node name.
        id: The process number.
        serial: The serial number.
        creation: The node incarnation.
    """

    __slots__ = ("node", "id", "serial", "creation")

    node: Atom
    id: int
    serial: int
    creation: int

    def __init__(self, node: str, id: int, serial: int, creation: int, *, raw: bytes | None = None) -> None:
        """Create a pid; without ``raw``, it is encoded as NEW_PID_EXT.

        Args:
            node: Node name.
            id: Process number (32 bits).
            serial: Serial (32 bits).
            creation: Creation (32 bits).
            raw: The exact encoding, when known (the decoder passes it).

        Raises:
            ValueError: A field is out of range.
            EncodeError: The node name cannot be an atom.
        """
        if raw is None:
            for name, value in (("id", id), ("serial", serial), ("creation", creation)):
                _check_uint(name, value, 32)
            raw = bytes((T.NEW_PID_EXT,)) + _atom_ext(node) + struct.pack(">III", id, serial, creation)
        super().__init__(raw)
        object.__setattr__(self, "node", _as_atom(node))
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "serial", serial)
        object.__setattr__(self, "creation", creation)

    def _identity(self) -> tuple[Any, ...]:
        return (str(self.node), self.id, self.serial, self.creation)

    def __repr__(self) -> str:
        return f"Pid({str(self.node)!r}, {self.id}, {self.serial}, {self.creation})"


class Port(OpaqueTerm):
    """An Erlang port identifier (PORT_EXT, NEW_PORT_EXT or V4_PORT_EXT).

    Attributes:
        node: The node name.
        id: The port number.
        creation: The node incarnation.
    """

    __slots__ = ("node", "id", "creation")

    node: Atom
    id: int
    creation: int

    def __init__(self, node: str, id: int, creation: int, *, raw: bytes | None = None) -> None:
        """Create a port; without ``raw``: NEW_PORT_EXT, or V4_PORT_EXT for a 64-bit id.

        Args:
            node: Node name.
            id: Port number (64 bits).
            creation: Creation (32 bits).
            raw: The exact encoding, when known.

        Raises:
            ValueError: A field is out of range.
            EncodeError: The node name cannot be an atom.
        """
        if raw is None:
            _check_uint("id", id, 64)
            _check_uint("creation", creation, 32)
            if id <= _U32:
                raw = bytes((T.NEW_PORT_EXT,)) + _atom_ext(node) + struct.pack(">II", id, creation)
            else:
                raw = bytes((T.V4_PORT_EXT,)) + _atom_ext(node) + struct.pack(">QI", id, creation)
        super().__init__(raw)
        object.__setattr__(self, "node", _as_atom(node))
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "creation", creation)

    def _identity(self) -> tuple[Any, ...]:
        return (str(self.node), self.id, self.creation)

    def __repr__(self) -> str:
        return f"Port({str(self.node)!r}, {self.id}, {self.creation})"


class Reference(OpaqueTerm):
    """An Erlang reference (REFERENCE_EXT, NEW_REFERENCE_EXT or NEWER_REFERENCE_EXT).

    Attributes:
        node: The node name.
        creation: The node incarnation.
        ids: The ID words (uninterpreted).
    """

    __slots__ = ("node", "creation", "ids")

    node: Atom
    creation: int
    ids: tuple[int, ...]

    def __init__(self, node: str, creation: int, ids: Sequence[int], *, raw: bytes | None = None) -> None:
        """Create a reference; without ``raw`` it is encoded as NEWER_REFERENCE_EXT.

        Args:
            node: Node name.
            creation: Creation (32 bits).
            ids: One to five 32-bit ID words.
            raw: The exact encoding, when known.

        Raises:
            ValueError: A field is out of range.
            EncodeError: The node name cannot be an atom.
        """
        words = tuple(ids)
        if raw is None:
            _check_uint("creation", creation, 32)
            if not 1 <= len(words) <= 5:
                raise ValueError(f"expected 1 to 5 ids, got: {len(words)}")
            for word in words:
                _check_uint("each id", word, 32)
            raw = (
                bytes((T.NEWER_REFERENCE_EXT, 0, len(words)))
                + _atom_ext(node)
                + struct.pack(f">I{len(words)}I", creation, *words)
            )
        super().__init__(raw)
        object.__setattr__(self, "node", _as_atom(node))
        object.__setattr__(self, "creation", creation)
        object.__setattr__(self, "ids", words)

    def _identity(self) -> tuple[Any, ...]:
        return (str(self.node), self.creation, self.ids)

    def __repr__(self) -> str:
        return f"Reference({str(self.node)!r}, {self.creation}, {list(self.ids)!r})"


class Fun(OpaqueTerm):
    """An Erlang local fun (NEW_FUN_EXT), built by the decoder; free variables stay encoded.

    Attributes:
        module: The module the fun belongs to.
        arity: The fun's arity.
        index: The fun's index in its module.
        uniq: The 16-byte MD5 of the module's code.
        num_free: The number of free variables.
    """

    __slots__ = ("module", "arity", "index", "uniq", "num_free")

    module: Atom
    arity: int
    index: int
    uniq: bytes
    num_free: int

    def __init__(self, raw: bytes, *, module: str, arity: int, index: int, uniq: bytes, num_free: int) -> None:
        """Wrap a NEW_FUN_EXT encoding and its parsed header fields.

        Args:
            raw: The exact encoding (tag included).
            module: Module name.
            arity: Arity.
            index: Index.
            uniq: MD5 of the module.
            num_free: Number of free variables.
        """
        super().__init__(raw)
        object.__setattr__(self, "module", _as_atom(module))
        object.__setattr__(self, "arity", arity)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "uniq", uniq)
        object.__setattr__(self, "num_free", num_free)

    def __repr__(self) -> str:
        return f"Fun(module={str(self.module)!r}, arity={self.arity}, index={self.index}, num_free={self.num_free})"


class Export(OpaqueTerm):
    """An external fun ``fun Module:Function/Arity`` (EXPORT_EXT).

    Attributes:
        module: Module name.
        function: Function name.
        arity: Arity (0..255).
    """

    __slots__ = ("module", "function", "arity")

    module: Atom
    function: Atom
    arity: int

    def __init__(self, module: str, function: str, arity: int, *, raw: bytes | None = None) -> None:
        """Create ``fun Module:Function/Arity``.

        Args:
            module: Module name.
            function: Function name.
            arity: Arity, 0..255.
            raw: The exact encoding, when known.

        Raises:
            ValueError: The arity is out of range.
            EncodeError: A name cannot be an atom.
        """
        if raw is None:
            _check_uint("arity", arity, 8)
            raw = (
                bytes((T.EXPORT_EXT,))
                + _atom_ext(module)
                + _atom_ext(function)
                + bytes((T.SMALL_INTEGER_EXT, arity))
            )
        super().__init__(raw)
        object.__setattr__(self, "module", _as_atom(module))
        object.__setattr__(self, "function", _as_atom(function))
        object.__setattr__(self, "arity", arity)

    def _identity(self) -> tuple[Any, ...]:
        return (str(self.module), str(self.function), self.arity)

    def __repr__(self) -> str:
        return f"Export({str(self.module)!r}, {str(self.function)!r}, {self.arity})"


class BitBinary(OpaqueTerm):
    """A bitstring whose length is not a multiple of 8 (BIT_BINARY_EXT).

    Attributes:
        data: The bytes; only the ``bits`` high bits of the last byte belong to the value.
        bits: Bits used in the last byte, 1..8.
    """

    __slots__ = ("data", "bits")

    data: bytes
    bits: int

    def __init__(self, data: bytes, bits: int, *, raw: bytes | None = None) -> None:
        """Create a bitstring of ``8 * (len(data) - 1) + bits`` bits.

        Args:
            data: The bytes (at least one).
            bits: Bits used in the last byte, 1..8.
            raw: The exact encoding, when known.

        Raises:
            ValueError: ``data`` is empty or ``bits`` is out of range.
        """
        data = bytes(data)
        if raw is None:
            if not data:
                raise ValueError("a bit binary needs at least one byte")
            if type(bits) is not int or not 1 <= bits <= 8:
                raise ValueError(f"expected bits to be an integer in 1..8, got: {bits!r}")
            raw = struct.pack(">BIB", T.BIT_BINARY_EXT, len(data), bits) + data
        super().__init__(raw)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "bits", bits)

    def _identity(self) -> tuple[Any, ...]:
        return (self.data, self.bits)

    def __repr__(self) -> str:
        return f"BitBinary({self.data!r}, bits={self.bits})"


class LocalTerm(OpaqueTerm):
    """A term in the local external format (LOCAL_EXT, OTP 26+), kept as its raw bytes.

    Its bytes are unspecified after the tag, so it extends to the end of its input and only
    the node that made it can decode it.
    """

    __slots__ = ()
