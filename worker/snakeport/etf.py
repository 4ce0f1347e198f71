"""Erlang External Term Format codec: bytes in, terms out; terms in, bytes out. No I/O.

Decoding takes a whole ``term_to_binary/1`` result (version byte 131 first, compressed terms
accepted) and returns a Python value; encoding does the reverse. The decoder is table-driven
(``_LEAF_DECODERS``: tag byte -> decoder function for every non-container tag; the most
frequent tags are also decoded inline in the main loop) and non-recursive (containers are
handled with an explicit stack), so nesting is bounded only by ``max_depth``, never by
Python's recursion limit. The encoder is non-recursive too.

When the optional C extension ``snakeport._cetf`` is built (``pip install`` compiles it when
a C compiler and the Python headers are present), ``decode``, ``decode_head`` and ``encode``
run their loops in C, like ``msgpack._cmsgpack``: containers and the frequent leaves are
handled there, rare tags, errors and unusual objects go back to this module's functions, so
values, bytes and exceptions are those of the pure-Python codec, which stays the fallback and
the reference. Setting ``SNAKEPORT_PURE_PYTHON=1`` before the import disables the C path.

Mapping
-------

=================================  ===================================  ==================================
Erlang term (tags)                 decodes to                           encoded from
=================================  ===================================  ==================================
integer (97, 98, 110, 111)         ``int``                              ``int`` (and subclasses, not bool)
float (70, old 99)                 ``float``                            ``float``; ``inf``/``-inf``/``nan``
                                                                        become the atoms ``infinity``,
                                                                        ``neg_infinity``, ``nan``
``true`` / ``false``               ``bool``                             ``bool``
``nil``                            ``None``                             ``None``
``infinity``, ``neg_infinity``,    ``float`` ``inf``, ``-inf``, ``nan`` (see float)
``nan``
other atom (100, 115, 118, 119)    :class:`~snakeport.types.Atom`       ``Atom`` (118/119; more than 255
                                   (``undefined`` too)                  characters: ``EncodeError``)
binary (109)                       ``str`` if valid UTF-8, else         ``str`` (UTF-8), ``bytes``,
                                   ``bytes``                            ``bytearray``, ``memoryview``
bitstring (77)                     ``BitBinary``                        ``BitBinary``
``[]`` (106), list (108)           ``list``                             ``list``
charlist (107)                     ``list`` of ``int``                  (a list of ints encodes as 108)
improper list (108, tail not [])   ``ImproperList(elements, tail)``     ``ImproperList``
tuple (104, 105)                   ``tuple``                            ``tuple`` and subclasses
                                                                        (``namedtuple``)
map (116)                          ``dict``; ``ErlMap`` when a key is   ``dict`` (and subclasses),
                                   unhashable or keys collide           ``ErlMap``
pid (103, 88)                      ``Pid``                              ``Pid`` (byte-identical)
port (102, 89, 120)                ``Port``                             ``Port`` (byte-identical)
reference (101, 114, 90)           ``Reference``                        ``Reference`` (byte-identical)
fun (112)                          ``Fun``                              ``Fun`` (byte-identical)
external fun (113)                 ``Export``                           ``Export`` (byte-identical)
local format (121)                 ``LocalTerm`` (all remaining bytes)  ``LocalTerm`` (byte-identical)
compressed (80)                    the decompressed term                ``encode(..., compressed=level)``
=================================  ===================================  ==================================

Subclasses of the supported types (``IntEnum``, ``namedtuple``, ``OrderedDict``, a ``str`` or
``float`` subclass, ...) encode as their base type without consulting ``default``.

``Atom`` compares equal to the ``str`` of its name (fast dict lookups; see
:mod:`snakeport.types`), so maps whose keys collide in Python (``a`` and ``<<"a">>``, ``1``
and ``1.0``, ``1`` and ``true``, ``0.0`` and ``-0.0``) or have unhashable keys (lists, maps)
decode to :class:`~snakeport.types.ErlMap`, which encodes back to the same map. Sets are not
special here: they go through ``encode``'s ``default`` hook like any other unknown object.

Errors and limits
-----------------

Decoding arbitrary bytes raises only :class:`~snakeport.errors.DecodeError` (with ``data``
and ``offset``; for a compressed term they refer to the inflated bytes): every length is
checked against the remaining bytes before anything is allocated, and stray
``IndexError``/``struct.error``/``MemoryError`` are converted at the boundary. Exceptions
raised by a ``tagged`` or ``default`` hook propagate unchanged. Encoding an unsupported
object without ``default``, a too deep (or cyclic) value, a lone surrogate or a too long atom
raises :class:`~snakeport.errors.EncodeError`. Each list and dict is encoded as it was when
the encoder reached it (a snapshot): another thread (or a ``default`` hook) changing it
meanwhile never makes its header disagree with its elements.

Limits are keyword-only and validated at construction or call (``ValueError``):

- ``max_depth``: container nesting, default :data:`DEFAULT_MAX_DEPTH`; for decoding at most
  :data:`MAX_DECODE_DEPTH` (10,000), because CPython hashes a nested tuple (a map key)
  recursively in C without a depth guard and a much deeper key overflows the C stack of the
  thread hashing it. The encoder (a loop) has no upper bound.
- ``max_size`` (decoding): input bytes, and declared and actual decompressed bytes, default
  :data:`DEFAULT_MAX_SIZE`.
- ``max_expansion`` and ``max_memory`` (decoding): the memory budget, below.

Memory budget
-------------

Size limits alone do not bound memory: one byte (``[]``) decodes to a 64-byte list, so a
31 KiB compressed frame of ``[]`` made 2.6 GiB of objects. Each decode therefore has a budget:

    budget = min(max_memory, max_expansion * input bytes + 1 MiB)

with ``input bytes`` the size of ``data`` as given (compressed, for a compressed term),
``max_expansion`` :data:`DEFAULT_MAX_EXPANSION` (32) by default and ``max_memory``
``2 * max_size + 64 MiB`` by default (576 MiB with the default ``max_size``). A frame of
under 1 MiB may thus use at most 33 MiB for its values; one at the 256 MiB default frame
limit at most 576 MiB (with the frame itself, under 4 times the frame limit).

Decoding charges every value's memory against the budget before making it, as an upper
bound of what CPython 3.10-3.13 allocate (object, GC header, allocator rounding, its slot in
the container and in the decoder's stack) and fails with ``DecodeError("decoding needs more
than the memory budget of N bytes at byte P")`` when the budget would be exceeded. The
charges (bytes; ``n`` is an element count or a byte length):

=============================================  ===============================================
compressed term                                declared size + 48 KiB (zlib), before inflating
tuple, list (n elements); ``[]``; ``#{}``      64 + 16 n; 64; 64
map (n pairs)                                  224 + 32 n + 112 per pair beyond 5; an ErlMap
                                               (colliding or unhashable keys) 64 + 72 n more
int beyond a byte (INTEGER_EXT), float         32
SMALL_BIG_EXT of n bytes                       32 + 2 n
binary of n bytes                              80 + n x (1, 2 or 4: the width of the str's
                                               widest character; 1 for bytes), checked
                                               before the str is made (exactly, when 4 per
                                               byte would not fit); the binary of
                                               ``{'$snakeport_bytes', Binary}`` (with a
                                               ``tagged`` hook) is bytes: 80 + n
charlist (STRING_EXT) of n bytes               64 + 8 n
atom                                           256 + 4 x its text bytes, the first time its
                                               encoding occurs in the term; then nothing (a
                                               repeated atom is the same object)
improper list (n elements)                     64 + 8 n
every other term (pid, port, reference,        256 + 2 x its encoded size, once decoded
fun, export, LOCAL_EXT, LARGE_BIG, FLOAT_EXT,
BIT_BINARY)
what the ``tagged`` hook returns               its ``sys.getsizeof`` (nothing for the tuple
                                               itself or one of its elements)
=============================================  ===============================================

So ``[]`` costs 80 bytes per input byte and is refused in bulk (a list of a million ``[]``
exceeds a 1 MiB frame's 33 MiB), while ordinary data stays within 32 per byte: floats cost 5
per byte, integers 8-10, strings 7-16, ``{ok, N}`` tuples 14-16, records as maps about 13,
one-key maps 25 (the most expensive ordinary shape). A term compressed better than about
30:1 (its inflated bytes count too) is refused: send it uncompressed. Both codec paths charge the same amounts in the same
order, so they refuse at the same byte with the same message (the pure-Python loop does not
compute the charges when the budget is at least 256 per input byte plus 4 KiB, which no
term without a ``tagged`` hook can exceed).
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zlib
from codecs import utf_8_decode as _utf8_decode
from collections.abc import Callable
from itertools import chain

from . import _etf_tags as T
from . import _limits
from .errors import DecodeError, EncodeError
from .types import (
    Atom,
    BitBinary,
    ErlMap,
    Export,
    Fun,
    ImproperList,
    LocalTerm,
    OpaqueTerm,
    Pid,
    Port,
    Reference,
    _atom_ext,
)

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_EXPANSION",
    "DEFAULT_MAX_SIZE",
    "MAX_DECODE_DEPTH",
    "TAGGED_PREFIX",
    "Decoder",
    "Encoder",
    "decode",
    "decode_prefix",
    "decode_head",
    "encode",
]

#: Default nesting limit: containers inside containers, the outermost counting as 1. Kept
#: well below Python's default recursion limit so that recursive walkers of decoded terms
#: (in the worker) stay safe; the codec itself never recurses. The worker's ``max_depth``.
DEFAULT_MAX_DEPTH: int = _limits.MAX_DEPTH.default
#: Largest ``max_depth`` accepted for decoding (the worker's bound on ``--max-depth``).
#: CPython hashes nested tuples recursively in C with no depth guard (a map key that is a
#: deep tuple), about 64 bytes of C stack per level: 10,000 levels take under 1 MiB, safe on
#: any thread (8 MiB stacks by default on Linux); 150,000 levels overflow the stack
#: (SIGSEGV). The recursions CPython does guard (repr, ==, pickle: under 200 bytes per level)
#: stop at the recursion limit, which the worker keeps at most 20,000. Encoding (a loop) is
#: not limited this way.
MAX_DECODE_DEPTH: int = _limits.MAX_DEPTH.high
#: Default size limit for decoding: input bytes and declared/actual decompressed bytes.
#: The worker's ``max_frame_bytes``.
DEFAULT_MAX_SIZE: int = _limits.MAX_FRAME_BYTES.default
#: Default memory budget of a decode per input byte (see "Memory budget" above).
DEFAULT_MAX_EXPANSION = 32
#: Budget every decode gets on top of ``max_expansion`` per input byte (small terms).
_BUDGET_FLOOR = 1024 * 1024
#: ``max_memory`` when not given: ``2 * max_size + _MEMORY_SLACK``.
_MEMORY_SLACK = 64 * 1024 * 1024
_DEFAULT_MAX_MEMORY = 2 * DEFAULT_MAX_SIZE + _MEMORY_SLACK
#: Tuples whose first element is an atom with this prefix are handed to ``tagged``.
TAGGED_PREFIX = "$snakeport_"
#: With a ``tagged`` hook, the binary of ``{'$snakeport_bytes', Binary}`` decodes to
#: ``bytes`` at once (never to a str first): the protocol's forced-bytes term.
BYTES_TAG = TAGGED_PREFIX + "bytes"

Buffer = bytes | bytearray | memoryview
if TYPE_CHECKING:
    TaggedHook = Callable[[tuple], Any]
    DefaultHook = Callable[[Any], Any]

_TAGGED_BYTES = TAGGED_PREFIX.encode("ascii")
#: Inputs up to this size are scanned for the tag prefix before decoding (see ``decode``).
_TAG_SCAN_MAX = 64 * 1024
_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_i32 = struct.Struct(">i").unpack_from
_f64 = struct.Struct(">d").unpack_from
_u32x2 = struct.Struct(">II").unpack_from
_u32x3 = struct.Struct(">III").unpack_from
_u64_u32 = struct.Struct(">QI").unpack_from
_u32_u8 = struct.Struct(">IB").unpack_from
_u32x2_u8 = struct.Struct(">IIB").unpack_from
_pack_tag_u32 = struct.Struct(">BI").pack
_pack_tag_i32 = struct.Struct(">Bi").pack
_pack_tag_f64 = struct.Struct(">Bd").pack
_pack_big_hdr = struct.Struct(">BIB").pack

#: The number of a FLOAT_EXT (OTP writes NEW_FLOAT_EXT): compiled by ``re`` on first use and
#: kept in its cache, not at every worker's start.
_FLOAT_TEXT = rb"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"

#: Decoded atoms, keyed by their complete encoding (tag, length and text), so that a cache
#: hit needs no bounds check: a truncated slice is never a complete valid key.
_ATOMS: dict[bytes, Any] = {}
_ATOM_CACHE_MAX = 4096
#: Atoms that decode to Python values: booleans, ``None`` and the non-finite floats (the
#: encoder writes ``inf``, ``-inf`` and ``nan`` as these atoms, so the mapping is symmetric).
_SPECIAL_ATOMS: dict[str, Any] = {
    "true": True,
    "false": False,
    "nil": None,
    "infinity": float("inf"),
    "neg_infinity": float("-inf"),
    "nan": float("nan"),
}
_MISS = object()

# Memory charged per decoded value, in bytes (see "Memory budget" in the module docstring).
# Upper bounds of what CPython 3.10-3.13 allocate (object, GC header, allocator rounding) plus
# the value's slot in its container and in the decoder's transient stack. The C accelerator
# gets these numbers from _setup(); _py_decode_term writes them as literals (speed), and
# test_etf_accel's budget tests check that both paths charge the same at the same bytes.
#: Each element of a tuple, list or map (pointer in the container + transient stack).
_COST_SLOT = 16
#: A non-empty tuple or list object, an empty list (``[]``), an empty map (``#{}``).
_COST_CONTAINER = 64
#: An int that is not a small cached one (INTEGER_EXT), a float; SMALL_BIG adds 2 per byte.
_COST_NUMBER = 32
#: A binary: str/bytes object overhead, plus ``kind`` bytes per input byte (1, 2 or 4: the
#: widest character of the str; ``bytes`` count 1).
_COST_BINARY = 80
#: The first occurrence of an atom's encoding in a term (later ones are the same object),
#: plus 4 per byte of its text; the decoder keeps a table of the atoms seen so far.
_COST_ATOM = 256
#: A map of 1 to 5 pairs (dict object and its smallest table); each pair beyond 5 adds
#: ``_COST_MAP_PAIR``. A map that becomes an ErlMap adds ``_COST_CONTAINER`` and
#: ``_COST_ERLMAP_PAIR`` per pair (pair tuples; the failed dict may still be alive).
_COST_MAP = 224
_COST_MAP_PAIR = 112
_COST_ERLMAP_PAIR = 72
#: An improper list (ImproperList object and its elements tuple): this plus 8 per element.
_COST_IMPROPER = 64
#: Every other term (decoded by the leaf decoders: pids, ports, references, funs, exports,
#: LOCAL_EXT, LARGE_BIG, FLOAT_EXT, BIT_BINARY): this plus 2 per byte of its encoding,
#: charged once it is decoded (they copy their own bytes).
_COST_OTHER = 256
#: Compressed terms: the inflated bytes plus this (zlib's state and its 32 KiB window),
#: charged before inflating.
_COST_INFLATE = 48 * 1024
#: Without a ``tagged`` hook (whose values cost their ``sys.getsizeof``), decoding N input
#: bytes is charged at most ``_SAFE_COST_PER_BYTE * N + _SAFE_COST_BASE``, so a budget at
#: least that large cannot run out and ``_py_decode_term`` skips computing the charges. The
#: costliest repeatable shape is an ErlMap of ``[] => []`` pairs beyond the 5th: 2 x (64 +
#: 16) + 112 + 72 = 344 per 2 bytes (two first ``''`` atoms as such a pair: 728 per 4 bytes).
#: Only a 1-byte LOCAL_EXT costs more than 256 per byte (274; 538 with a ``[]`` key in such a
#: map), once per term (it runs to the end): the base covers it. test_etf_budget checks the
#: bound on these shapes; raising a cost above it means raising the bound.
_SAFE_COST_PER_BYTE = 256
_SAFE_COST_BASE = 4096
_COSTS = (
    _COST_SLOT, _COST_CONTAINER, _COST_NUMBER, _COST_BINARY, _COST_ATOM, _COST_MAP, _COST_MAP_PAIR,
    _COST_ERLMAP_PAIR, _COST_IMPROPER, _COST_OTHER,
)

# Bytes from which a valid UTF-8 binary decodes to a str of 2 (lead bytes of U+0100..U+FFFF)
# or 4 (lead bytes of U+10000 and above) bytes per character: CPython's ``kind``.
_WIDE2 = re.compile(b"[\xc4-\xff]").search
_WIDE4 = re.compile(b"[\xf0-\xff]").search


def _text_kind(data: bytes, start: int, end: int) -> int:
    """The ``kind`` (1, 2 or 4 bytes per character) of ``data[start:end].decode()``.

    Exact for valid UTF-8 (what CPython's ``PyUnicode_KIND`` of the decoded str is); for
    other bytes, the kind their high bytes would suggest.
    """
    if _WIDE4(data, start, end) is not None:
        return 4
    return 2 if _WIDE2(data, start, end) is not None else 1


#: Bytes of a binary validated as UTF-8 at a time by :func:`_utf8_kind` (bounded memory).
_KIND_CHUNK = 64 * 1024


def _utf8_kind(data: Buffer, start: int, end: int) -> int:
    """What ``data[start:end]`` decodes to: 0 for bytes (not valid UTF-8), else the exact
    ``kind`` of its str (1, 2 or 4 bytes per character).

    Validates a chunk at a time (at most 256 KiB of str alive), so that the pre-check of a
    binary too large for 4 bytes per byte costs no more memory than the binary's own charge
    (both codec paths do this, only then).
    """
    kind = 1
    view = memoryview(data)
    try:
        pos = start
        while pos < end:
            stop = min(pos + _KIND_CHUNK, end)
            try:
                text, used = _utf8_decode(view[pos:stop], "strict", stop == end)
            except UnicodeDecodeError:
                return 0
            if not text.isascii():
                top = ord(max(text))
                kind = max(kind, 4 if top > 0xFFFF else 2 if top > 0xFF else 1)
            pos += used
            if not used:  # (cannot happen: a chunk holds more than one sequence)
                return 0
    finally:
        view.release()
    return kind


def _over_budget(data: bytes, pos: int, budget: int) -> NoReturn:
    _fail(f"decoding needs more than the memory budget of {budget} bytes", data, pos)


#: Classes whose instances a ``tagged`` hook only ever makes anew, each with its constant
#: ``sys.getsizeof`` (the worker's ref handles, one per ref term of a request):
#: :func:`_tagged_cost` charges that size without comparing the value with the tuple's parts.
_FRESH_SIZES: dict[type, int] = {}


def _tagged_cost(value: Any, term: tuple) -> int:
    """Memory charged for what the ``tagged`` hook returned for ``term``.

    Its own size (``sys.getsizeof``: a set or bytes it made; 0 when the hook returned the
    tuple itself or one of its elements, already charged). Both codec paths call this, so they charge the same.
    """
    size = _FRESH_SIZES.get(type(value))
    if size is not None:
        return size
    for part in term:
        if value is part:
            return 0
    return 0 if value is term else sys.getsizeof(value, 0)


class _HookFailure(Exception):
    """Carries an exception raised by a user hook through the decoder's boundary."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc


def _fail(message: str, data: bytes, offset: int) -> NoReturn:
    raise DecodeError(f"{message} at byte {offset}", data=data, offset=offset)


def _truncated(data: bytes, offset: int) -> NoReturn:
    _fail("unexpected end of data", data, offset)


def _bad_tag(data: bytes, pos: int) -> NoReturn:
    """Raise the DecodeError for a tag that has no decoder (unknown, or not a term here)."""
    tag = data[pos]
    name = T.TAG_NAMES.get(tag)
    _fail(f"{name} (tag {tag}) is not allowed here" if name else f"unknown tag {tag}", data, pos)


# ---------------------------------------------------------------------------------------
# Leaf decoders. Each takes (data, pos) with pos just after the tag byte and returns
# (value, pos after the term). They validate every length before slicing.
# ---------------------------------------------------------------------------------------


def _atom_at(data: bytes, pos: int) -> tuple[Any, int]:
    """Decode the atom whose tag is at ``pos`` (any of the four atom tags), via the cache."""
    tag = data[pos]
    if tag == T.SMALL_ATOM_UTF8_EXT or tag == T.SMALL_ATOM_EXT:
        start = pos + 2
        end = start + data[pos + 1]
    elif tag == T.ATOM_UTF8_EXT or tag == T.ATOM_EXT:
        start = pos + 3
        end = start + _u16(data, pos + 1)[0]
    else:
        _fail(f"expected an atom, found tag {tag}", data, pos)
    key = data[pos:end]
    value = _ATOMS.get(key, _MISS)
    if value is not _MISS:
        return value, end
    if end > len(data):
        _truncated(data, len(data))
    text = data[start:end]
    if tag >= T.ATOM_UTF8_EXT:
        try:
            name = text.decode("utf-8")
        except UnicodeDecodeError:
            _fail("atom text is not valid UTF-8", data, start)
    else:
        name = text.decode("latin-1")
    if len(name) > 255:
        _fail(f"atom of {len(name)} characters exceeds 255", data, pos)
    value = _SPECIAL_ATOMS.get(name, _MISS)
    if value is _MISS:
        value = Atom(name)
    if len(_ATOMS) >= _ATOM_CACHE_MAX:
        _ATOMS.clear()
    _ATOMS[key] = value
    return value, end


def _atom_name_at(data: bytes, pos: int) -> tuple[Atom, int]:
    """Decode an atom at ``pos`` as an :class:`Atom`, also the special ones (``true``, ``nan``, ...)."""
    value, end = _atom_at(data, pos)
    if value.__class__ is not Atom:
        if value is None:
            value = Atom("nil")
        elif value.__class__ is bool:
            value = Atom("true" if value else "false")
        else:  # a non-finite float
            value = Atom("nan" if value != value else ("infinity" if value > 0 else "neg_infinity"))
    return value, end


def _dec_atom(data: bytes, pos: int) -> tuple[Any, int]:
    return _atom_at(data, pos - 1)


def _big(data: bytes, n: int, pos: int) -> tuple[int, int]:
    sign = data[pos]
    start = pos + 1
    end = start + n
    if end > len(data):
        _truncated(data, len(data))
    if sign > 1:
        _fail(f"invalid bignum sign byte {sign}", data, pos)
    value = int.from_bytes(data[start:end], "little")
    return (-value if sign else value), end


def _dec_small_big(data: bytes, pos: int) -> tuple[int, int]:
    return _big(data, data[pos], pos + 1)


def _dec_large_big(data: bytes, pos: int) -> tuple[int, int]:
    return _big(data, _u32(data, pos)[0], pos + 4)


def _dec_old_float(data: bytes, pos: int) -> tuple[float, int]:
    end = pos + 31
    if end > len(data):
        _truncated(data, len(data))
    text = data[pos:end].rstrip(b"\x00")
    if not re.fullmatch(_FLOAT_TEXT, text):
        _fail("FLOAT_EXT text is not a number", data, pos)
    value = float(text)
    if value - value != 0.0:
        _fail("FLOAT_EXT is not finite", data, pos)
    return value, end


def _dec_bit_binary(data: bytes, pos: int) -> tuple[BitBinary, int]:
    size, bits = _u32_u8(data, pos)
    start = pos + 5
    end = start + size
    if end > len(data):
        _truncated(data, len(data))
    if size == 0 or not 1 <= bits <= 8:
        _fail(f"invalid BIT_BINARY_EXT ({size} bytes, {bits} bits in the last)", data, pos)
    return BitBinary(data[start:end], bits, raw=data[pos - 1 : end]), end


def _dec_pid(data: bytes, pos: int) -> tuple[Pid, int]:
    node, p = _atom_name_at(data, pos)
    pid_id, serial, creation = _u32x2_u8(data, p)
    end = p + 9
    return Pid(node, pid_id, serial, creation, raw=data[pos - 1 : end]), end


def _dec_new_pid(data: bytes, pos: int) -> tuple[Pid, int]:
    node, p = _atom_name_at(data, pos)
    pid_id, serial, creation = _u32x3(data, p)
    end = p + 12
    return Pid(node, pid_id, serial, creation, raw=data[pos - 1 : end]), end


def _dec_port(data: bytes, pos: int) -> tuple[Port, int]:
    node, p = _atom_name_at(data, pos)
    port_id, creation = _u32_u8(data, p)
    end = p + 5
    return Port(node, port_id, creation, raw=data[pos - 1 : end]), end


def _dec_new_port(data: bytes, pos: int) -> tuple[Port, int]:
    node, p = _atom_name_at(data, pos)
    port_id, creation = _u32x2(data, p)
    end = p + 8
    return Port(node, port_id, creation, raw=data[pos - 1 : end]), end


def _dec_v4_port(data: bytes, pos: int) -> tuple[Port, int]:
    node, p = _atom_name_at(data, pos)
    port_id, creation = _u64_u32(data, p)
    end = p + 12
    return Port(node, port_id, creation, raw=data[pos - 1 : end]), end


def _dec_reference(data: bytes, pos: int) -> tuple[Reference, int]:
    node, p = _atom_name_at(data, pos)
    ref_id, creation = _u32_u8(data, p)
    end = p + 5
    return Reference(node, creation, (ref_id,), raw=data[pos - 1 : end]), end


def _ref_ids(data: bytes, count: int, pos: int) -> tuple[tuple[int, ...], int]:
    end = pos + 4 * count
    if end > len(data):
        _truncated(data, len(data))
    return struct.unpack_from(f">{count}I", data, pos), end


def _dec_new_reference(data: bytes, pos: int) -> tuple[Reference, int]:
    count = _u16(data, pos)[0]
    if not 1 <= count <= 5:
        _fail(f"reference with {count} ID words (expected 1..5)", data, pos)
    node, p = _atom_name_at(data, pos + 2)
    creation = data[p]
    ids, end = _ref_ids(data, count, p + 1)
    return Reference(node, creation, ids, raw=data[pos - 1 : end]), end


def _dec_newer_reference(data: bytes, pos: int) -> tuple[Reference, int]:
    count = _u16(data, pos)[0]
    if not 1 <= count <= 5:
        _fail(f"reference with {count} ID words (expected 1..5)", data, pos)
    node, p = _atom_name_at(data, pos + 2)
    creation = _u32(data, p)[0]
    ids, end = _ref_ids(data, count, p + 4)
    return Reference(node, creation, ids, raw=data[pos - 1 : end]), end


def _dec_export(data: bytes, pos: int) -> tuple[Export, int]:
    module, p = _atom_name_at(data, pos)
    function, p = _atom_name_at(data, p)
    if data[p] != T.SMALL_INTEGER_EXT:
        _fail("EXPORT_EXT arity is not a SMALL_INTEGER_EXT", data, p)
    arity = data[p + 1]
    end = p + 2
    return Export(module, function, arity, raw=data[pos - 1 : end]), end


def _dec_new_fun(data: bytes, pos: int) -> tuple[Fun, int]:
    size = _u32(data, pos)[0]
    start = pos - 1
    end = pos + size
    # Size counts itself; the fixed part (Size, Arity, Uniq, Index, NumFree) is 29 bytes,
    # then Module, OldIndex, OldUniq and Pid take at least 2 + 2 + 2 + 15 bytes.
    if size < 29 + 21:
        _fail(f"NEW_FUN_EXT size {size} is too small", data, pos)
    if end > len(data):
        _truncated(data, len(data))
    arity = data[pos + 4]
    uniq = data[pos + 5 : pos + 21]
    index, num_free = _u32x2(data, pos + 21)
    module, p = _atom_name_at(data, pos + 29)
    for _ in range(2):  # OldIndex, OldUniq: integers
        tag = data[p]
        if tag == T.SMALL_INTEGER_EXT:
            p += 2
        elif tag == T.INTEGER_EXT:
            p += 5
        else:
            _fail("NEW_FUN_EXT OldIndex/OldUniq is not an integer", data, p)
    tag = data[p]
    if tag == T.NEW_PID_EXT:
        _, p = _dec_new_pid(data, p + 1)
    elif tag == T.PID_EXT:
        _, p = _dec_pid(data, p + 1)
    else:
        _fail("NEW_FUN_EXT Pid is not a pid", data, p)
    if p + num_free > end:
        _fail("NEW_FUN_EXT size does not fit its fields", data, pos)
    fun = Fun(data[start:end], module=module, arity=arity, index=index, uniq=uniq, num_free=num_free)
    return fun, end


def _dec_local(data: bytes, pos: int) -> tuple[LocalTerm, int]:
    # The spec leaves the bytes after the tag unspecified: the term runs to the end.
    return LocalTerm(data[pos - 1 :]), len(data)


#: Tag byte -> decoder for every leaf tag that a decode loop hands over (containers are
#: handled by the explicit stack in ``_py_decode_term`` and in the C accelerator). Both loops
#: decode SMALL_INTEGER_EXT, INTEGER_EXT, NEW_FLOAT_EXT, NIL_EXT, STRING_EXT, BINARY_EXT,
#: ATOM_EXT and SMALL_ATOM_UTF8_EXT inline (an atom-cache miss calls ``_atom_at``), so those
#: tags have no entry; SMALL_BIG_EXT has one for the C loop (more than 8 digit bytes),
#: ATOM_UTF8_EXT and SMALL_ATOM_EXT for the Python loop.
_LEAF_DECODERS: list[Callable[[bytes, int], tuple[Any, int]] | None] = [None] * 256
for _tag, _fn in (
    (T.SMALL_BIG_EXT, _dec_small_big),
    (T.LARGE_BIG_EXT, _dec_large_big),
    (T.FLOAT_EXT, _dec_old_float),
    (T.SMALL_ATOM_EXT, _dec_atom),
    (T.ATOM_UTF8_EXT, _dec_atom),
    (T.BIT_BINARY_EXT, _dec_bit_binary),
    (T.PID_EXT, _dec_pid),
    (T.NEW_PID_EXT, _dec_new_pid),
    (T.PORT_EXT, _dec_port),
    (T.NEW_PORT_EXT, _dec_new_port),
    (T.V4_PORT_EXT, _dec_v4_port),
    (T.REFERENCE_EXT, _dec_reference),
    (T.NEW_REFERENCE_EXT, _dec_new_reference),
    (T.NEWER_REFERENCE_EXT, _dec_newer_reference),
    (T.EXPORT_EXT, _dec_export),
    (T.NEW_FUN_EXT, _dec_new_fun),
    (T.LOCAL_EXT, _dec_local),
):
    _LEAF_DECODERS[_tag] = _fn
del _tag, _fn


def _charged_binary(
    data: bytes, pos: int, end: int, left: int, budget: int, tuple_head: list[Any] | None
) -> tuple[Any, int]:
    """Decode the BINARY_EXT at ``pos`` (its bytes end at ``end``, within ``data``), charged.

    Args:
        data: The buffer.
        pos: Offset of the tag byte.
        end: Offset after the binary's bytes.
        left: Memory left in the budget; checked before the value is made.
        budget: The whole budget (for the error message).
        tuple_head: With a ``tagged`` hook, when the binary is the last element of a tuple:
            the elements before it (``{'$snakeport_bytes', Binary}`` decodes to bytes).

    Returns:
        ``(value, charge)``: the str (or bytes, when not UTF-8 or forced) and its charge.

    Raises:
        DecodeError: ``left`` cannot pay for it.
    """
    start = pos + 5
    n = end - start
    cost = 80 + n  # _COST_BINARY
    if (
        tuple_head is not None
        and len(tuple_head) == 1
        and tuple_head[0].__class__ is Atom
        and tuple_head[0] == BYTES_TAG
    ):  # {'$snakeport_bytes', Binary}: bytes at once, never a str
        if cost > left:
            _over_budget(data, pos, budget)
        return data[start:end], cost
    # Checked before the str is made: up to 4 bytes per character, exactly (bytes, or the
    # str's kind) when that worst case does not fit.
    utf8 = -1  # not known yet
    if cost + 3 * n > left:
        utf8 = _utf8_kind(data, start, end)
        if cost + (max(utf8, 1) - 1) * n > left:
            _over_budget(data, pos, budget)
    raw = data[start:end]
    if utf8 == 0:
        return raw, cost  # known not to be UTF-8: no failed decode (and its copies)
    try:
        value = raw.decode()
    except UnicodeDecodeError:
        return raw, cost
    if len(value) != n:  # not ASCII: 1, 2 or 4 bytes per character
        cost += (_text_kind(data, start, end) - 1) * n
    return value, cost


def _finish_improper(items: list[Any], tail: Any, data: bytes, pos: int) -> Any:
    """Build the value of a LIST_EXT whose tail is not NIL_EXT."""
    if tail.__class__ is list:  # [a | [b, c]] is the proper list [a, b, c]
        items.extend(tail)
        return items
    if not items:
        _fail("LIST_EXT with no elements and a non-empty tail", data, pos)
    return ImproperList(items, tail)


def _py_decode_term(
    data: bytes,
    pos: int,
    max_depth: int,
    tagged: TaggedHook | None,
    budget: int,
    _leaf: list[Any] = _LEAF_DECODERS,
    _atoms: dict[bytes, Any] = _ATOMS,
    _u16: Callable[..., tuple[int]] = _u16,
    _u32: Callable[..., tuple[int]] = _u32,
    _i32: Callable[..., tuple[int]] = _i32,
    _f64: Callable[..., tuple[float]] = _f64,
    _Atom: type[Atom] = Atom,
    _MISS: object = _MISS,
) -> tuple[Any, int]:
    """Decode the one term starting at ``pos`` (the pure-Python ``_decode_term``).

    Non-recursive: each open container is a frame ``(kind, items, remaining)`` on ``stack``;
    the current frame lives in local variables. The most frequent tags are decoded inline,
    the other leaves through ``_LEAF_DECODERS``. Frame kinds are literal ints for speed:
    0 root, 1 tuple, 2 list elements, 3 list tail, 4 map.

    Memory is charged against ``budget`` as described in the module docstring ("Memory
    budget"), always after the bytes of a value were validated and before its objects are
    made (except for the rare leaves, charged once decoded): the C accelerator charges the
    same amounts in the same order, so both fail at the same byte with the same message.
    Atoms are looked up first in ``seen``, the atoms of this term by their encoding: a
    repeated atom is the same object and costs nothing more.

    When the budget covers the most that any term of ``data`` could be charged (see
    ``_SAFE_COST_PER_BYTE``) and there is no hook, no charge can fail: the loop then does
    not compute them (``checked`` is false) and ``seen`` is the global atom cache (a cached
    atom is not charged; a repeated atom is the same object unless the cache overflows
    midway). That is the common case, requests of up to about 4.5 KiB with the default
    limits; the values and the errors are the same either way.

    Args:
        data: The buffer.
        pos: Offset of the term's tag byte.
        max_depth: Maximum container nesting.
        tagged: Hook for ``$snakeport_`` tuples, or None.
        budget: Bytes of memory the decoded values may use.

    Returns:
        ``(value, offset after the term)``.

    Raises:
        DecodeError: Invalid data, or over budget (IndexError/struct.error mean truncation;
            the caller converts them).
    """
    size = len(data)
    seen: dict[bytes, Any]
    if tagged is None and budget >= _SAFE_COST_PER_BYTE * size + _SAFE_COST_BASE:
        checked = False  # no charge can fail: skip them (see above)
        seen = _atoms
    else:
        checked = True
        seen = {}
    left = budget
    stack: list[tuple[int, list[Any], int]] = []
    kind = 0
    items: list[Any] = []
    remaining = 1
    while True:
        while remaining:
            remaining -= 1
            tag = data[pos]
            if tag == 119:  # SMALL_ATOM_UTF8_EXT
                end = pos + 2 + data[pos + 1]
                value = seen.get(data[pos:end], _MISS)
                if value is _MISS:
                    key = data[pos:end]
                    value = _atoms.get(key, _MISS)
                    if value is _MISS:
                        value, end = _atom_at(data, pos)
                    left -= 256 + 4 * (end - pos - 2)  # _COST_ATOM
                    if left < 0:
                        _over_budget(data, pos, budget)
                    seen[key] = value
                items.append(value)
                pos = end
            elif tag == 97:  # SMALL_INTEGER_EXT
                items.append(data[pos + 1])
                pos += 2
            elif tag == 109:  # BINARY_EXT
                start = pos + 5
                end = start + _u32(data, pos + 1)[0]
                if end > size:
                    _truncated(data, size)
                if not checked:  # (no charge can fail: see above)
                    try:
                        items.append(data[start:end].decode())
                    except UnicodeDecodeError:
                        items.append(data[start:end])
                else:
                    head = items if tagged is not None and kind == 1 and not remaining else None
                    value, cost = _charged_binary(data, pos, end, left, budget, head)
                    left -= cost
                    items.append(value)
                pos = end
            elif tag == 104:  # SMALL_TUPLE_EXT
                count = data[pos + 1]
                pos += 2
                if count:
                    stack.append((kind, items, remaining))
                    if len(stack) > max_depth:
                        _fail(f"nesting deeper than max_depth={max_depth}", data, pos - 2)
                    if checked and (left := left - (64 + 16 * count)) < 0:  # _COST_CONTAINER, _COST_SLOT
                        _over_budget(data, pos - 2, budget)
                    kind = 1
                    items = []
                    remaining = count
                else:
                    items.append(())
            elif tag == 100:  # ATOM_EXT: how OTP 25 and older write atoms
                end = pos + 3 + (data[pos + 1] << 8 | data[pos + 2])
                value = seen.get(data[pos:end], _MISS)
                if value is _MISS:
                    key = data[pos:end]
                    value = _atoms.get(key, _MISS)
                    if value is _MISS:
                        value, end = _atom_at(data, pos)
                    left -= 256 + 4 * (end - pos - 3)
                    if left < 0:
                        _over_budget(data, pos, budget)
                    seen[key] = value
                items.append(value)
                pos = end
            elif tag == 98:  # INTEGER_EXT
                items.append(_i32(data, pos + 1)[0])
                if checked and (left := left - 32) < 0:  # _COST_NUMBER
                    _over_budget(data, pos, budget)
                pos += 5
            elif tag == 70:  # NEW_FLOAT_EXT
                value = _f64(data, pos + 1)[0]
                if value - value != 0.0:
                    _fail("NEW_FLOAT_EXT is not finite", data, pos)
                if checked and (left := left - 32) < 0:
                    _over_budget(data, pos, budget)
                items.append(value)
                pos += 9
            elif tag == 108:  # LIST_EXT
                count = _u32(data, pos + 1)[0]
                pos += 5
                if count >= size - pos:  # each element and the tail take >= 1 byte
                    _fail(f"LIST_EXT of {count} elements exceeds the data", data, pos - 5)
                stack.append((kind, items, remaining))
                if len(stack) > max_depth:
                    _fail(f"nesting deeper than max_depth={max_depth}", data, pos - 5)
                if checked and (left := left - (64 + 16 * count)) < 0:
                    _over_budget(data, pos - 5, budget)
                kind = 2
                items = []
                remaining = count
            elif tag == 106:  # NIL_EXT
                if checked and (left := left - 64) < 0:
                    _over_budget(data, pos, budget)
                items.append([])
                pos += 1
            elif tag == 116:  # MAP_EXT
                count = _u32(data, pos + 1)[0]
                pos += 5
                if count:
                    if count > (size - pos) // 2:
                        _fail(f"MAP_EXT of {count} pairs exceeds the data", data, pos - 5)
                    stack.append((kind, items, remaining))
                    if len(stack) > max_depth:
                        _fail(f"nesting deeper than max_depth={max_depth}", data, pos - 5)
                    if checked:
                        # _COST_MAP, 2 slots per pair, _COST_MAP_PAIR per pair beyond 5
                        left -= 224 + 32 * count + (112 * (count - 5) if count > 5 else 0)
                        if left < 0:
                            _over_budget(data, pos - 5, budget)
                    kind = 4
                    items = []
                    remaining = 2 * count
                else:
                    if checked and (left := left - 64) < 0:
                        _over_budget(data, pos - 5, budget)
                    items.append({})
            elif tag == 105:  # LARGE_TUPLE_EXT
                count = _u32(data, pos + 1)[0]
                pos += 5
                if count > size - pos:
                    _fail(f"LARGE_TUPLE_EXT of {count} elements exceeds the data", data, pos - 5)
                if count:
                    stack.append((kind, items, remaining))
                    if len(stack) > max_depth:
                        _fail(f"nesting deeper than max_depth={max_depth}", data, pos - 5)
                    if checked and (left := left - (64 + 16 * count)) < 0:
                        _over_budget(data, pos - 5, budget)
                    kind = 1
                    items = []
                    remaining = count
                else:
                    items.append(())
            elif tag == 107:  # STRING_EXT: how the VM writes lists of small integers
                start = pos + 3
                n = _u16(data, pos + 1)[0]
                end = start + n
                if end > size:
                    _truncated(data, size)
                if checked and (left := left - (64 + 8 * n)) < 0:
                    _over_budget(data, pos, budget)
                items.append(list(data[start:end]))
                pos = end
            elif tag == 110:  # SMALL_BIG_EXT
                start = pos + 3
                n = data[pos + 1]
                end = start + n
                if end > size:
                    _truncated(data, size)
                value = int.from_bytes(data[start:end], "little")
                sign = data[pos + 2]
                if sign:
                    if sign != 1:
                        _fail(f"invalid bignum sign byte {sign}", data, pos + 2)
                    value = -value
                if checked and (left := left - (32 + 2 * n)) < 0:
                    _over_budget(data, pos, budget)
                items.append(value)
                pos = end
            elif tag == 115 or tag == 118:  # SMALL_ATOM_EXT, ATOM_UTF8_EXT (rare)
                header = 2 if tag == 115 else 3
                end = pos + header + (data[pos + 1] if tag == 115 else data[pos + 1] << 8 | data[pos + 2])
                value = seen.get(data[pos:end], _MISS)
                if value is _MISS:
                    key = data[pos:end]
                    value = _atoms.get(key, _MISS)
                    if value is _MISS:
                        value, end = _atom_at(data, pos)
                    left -= 256 + 4 * (end - pos - header)
                    if left < 0:
                        _over_budget(data, pos, budget)
                    seen[key] = value
                items.append(value)
                pos = end
            else:
                decoder = _leaf[tag]
                if decoder is None:
                    _bad_tag(data, pos)
                value, end = decoder(data, pos + 1)
                if checked and (left := left - (256 + 2 * (end - pos))) < 0:  # _COST_OTHER
                    _over_budget(data, pos, budget)
                items.append(value)
                pos = end
        # The current frame is complete.
        if kind == 1:  # tuple
            value = tuple(items)
            if tagged is not None:
                first = items[0]
                if first.__class__ is _Atom and first.startswith("$snakeport_"):
                    term = value
                    try:
                        value = tagged(term)
                    except BaseException as exc:
                        raise _HookFailure(exc) from None
                    left -= _tagged_cost(value, term)
                    if left < 0:
                        _over_budget(data, pos, budget)
        elif kind == 2:  # list elements done: now the tail
            if data[pos] == 106:  # NIL_EXT: a proper list
                pos += 1
                value = items
            else:  # decode the tail as one more item of this frame
                kind = 3
                remaining = 1
                continue
        elif kind == 4:  # map
            try:
                if len(items) == 2:  # one pair: a literal is much cheaper than dict(zip())
                    value = {items[0]: items[1]}
                else:
                    it = iter(items)
                    value = dict(zip(it, it))
                    if 2 * len(value) != len(items):  # keys that collide in Python
                        value = None
            except TypeError:  # an unhashable key
                value = None
            if value is None:
                left -= 64 + 36 * len(items)  # _COST_CONTAINER, _COST_ERLMAP_PAIR per pair
                if left < 0:
                    _over_budget(data, pos, budget)
                value = ErlMap._from_flat(items)
        elif kind == 3:  # improper list
            tail = items.pop()
            left -= 64 + 8 * len(items)  # _COST_IMPROPER
            if left < 0:
                _over_budget(data, pos, budget)
            value = _finish_improper(items, tail, data, pos)
        else:  # root
            return items[0], pos
        kind, items, remaining = stack.pop()
        items.append(value)


# ---------------------------------------------------------------------------------------
# Decoding entry points
# ---------------------------------------------------------------------------------------


def _as_bytes(data: Buffer, max_size: int | None = None) -> bytes:
    """Return ``data`` as bytes, copying a bytearray or memoryview once.

    With ``max_size``, a larger buffer is refused before it is copied.
    """
    if data.__class__ is bytes:
        return data  # type: ignore[return-value]
    if isinstance(data, (bytes, bytearray, memoryview)):
        if max_size is not None:
            size = data.nbytes if isinstance(data, memoryview) else len(data)
            if size > max_size:
                raise DecodeError(f"input of {size} bytes exceeds max_size={max_size}", data=None, offset=0)
        return bytes(data)
    raise TypeError(f"expected bytes, bytearray or memoryview, got: {type(data).__name__}")


def _budget(size: int, max_expansion: int, max_memory: int) -> int:
    """The memory budget of decoding ``size`` input bytes (see "Memory budget")."""
    budget = max_expansion * size + _BUDGET_FLOOR
    return budget if budget < max_memory else max_memory


def _declared_size(data: bytes) -> int:
    """The uncompressed size a COMPRESSED term (``data[1] == 80``) declares."""
    if len(data) < 6:
        _truncated(data, len(data))
    declared = _u32(data, 2)[0]
    if declared == 0:
        _fail("declared uncompressed size is 0", data, 2)
    return declared


def _inflate(data: bytes, max_size: int, budget: int) -> bytes:
    """Decompress a COMPRESSED term (``data[1] == 80``) into ``Tag Data`` bytes.

    The declared size is checked against ``max_size`` and ``budget`` (it is charged with
    ``_COST_INFLATE``) before anything is inflated, and zlib is never allowed to produce more
    than the declared size (plus one byte to detect a lie).
    """
    declared = _declared_size(data)
    if declared > max_size:
        _fail(f"declared uncompressed size {declared} exceeds max_size={max_size}", data, 2)
    if declared + _COST_INFLATE > budget:
        _fail(f"declared uncompressed size {declared} exceeds the memory budget of {budget} bytes", data, 2)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(memoryview(data)[6:], declared + 1)
    except zlib.error as exc:
        _fail(f"invalid zlib data ({exc})", data, 6)
    except MemoryError:
        _fail(f"no memory to inflate {declared} bytes", data, 6)
    if len(out) != declared or not inflater.eof:
        _fail(f"compressed data does not inflate to the declared {declared} bytes", data, 6)
    if inflater.unused_data or inflater.unconsumed_tail:
        _fail("trailing bytes after the compressed data", data, len(data) - len(inflater.unused_data))
    return out


def _convert_stray(exc: BaseException, data: bytes) -> DecodeError:
    """Turn an exception raised while decoding untrusted bytes into a DecodeError."""
    if isinstance(exc, (IndexError, struct.error)):
        return DecodeError(f"unexpected end of data at byte {len(data)}", data=data, offset=len(data))
    if isinstance(exc, MemoryError):
        return DecodeError("term too large to decode in memory", data=data, offset=None)
    return DecodeError(f"invalid term ({type(exc).__name__}: {exc})", data=data, offset=None)


_STRAY = (IndexError, struct.error, MemoryError, RecursionError, ValueError, TypeError, OverflowError)


def _bad_start(data: bytes) -> NoReturn:
    """Raise the DecodeError for input shorter than 2 bytes or without the version byte."""
    if not data:
        raise DecodeError("empty input", data=data, offset=0)
    if data[0] != 131:
        raise DecodeError(f"expected version byte 131, found {data[0]}", data=data, offset=0)
    raise DecodeError("unexpected end of data at byte 1", data=data, offset=1)


#: How many bytes ``decode_head`` inflates first; it inflates 4 times more each time the
#: elements it wants are not complete yet.
_HEAD_INFLATE_STEP = 4096


def _decode_head(
    data: Buffer, count: int, max_depth: int, max_size: int, max_expansion: int, max_memory: int
) -> tuple[Any, ...]:
    if type(count) is not int or count < 0:
        raise ValueError(f"expected count to be a non-negative integer, got: {count!r}")
    data = _as_bytes(data)
    if len(data) < 2 or data[0] != 131:
        raise DecodeError("not an External Term Format frame", data=data, offset=0)
    budget = _budget(len(data), max_expansion, max_memory)
    if data[1] != 80:
        return _head_elements(data, 1, count, max_depth, budget)
    # Compressed: inflate only as far as the elements need (the rest of a frame refused for
    # its size or content is never inflated), within max_size and half the budget (the
    # other half is for the elements).
    declared = _declared_size(data)
    limit = min(declared, max_size, (budget - _COST_INFLATE) // 2)
    inflater = zlib.decompressobj()
    tail: Any = memoryview(data)[6:]
    out = b""
    step = _HEAD_INFLATE_STEP
    done = limit <= 0
    while True:
        more = min(step, limit) - len(out)
        if more > 0 and not done:
            try:
                chunk = inflater.decompress(tail, more)
            except zlib.error:
                chunk = b""
                done = True
            else:
                tail = inflater.unconsumed_tail
                done = inflater.eof or (not tail and len(chunk) < more)
            out += chunk
        try:
            return _head_elements(out, 0, count, max_depth, budget - _COST_INFLATE - len(out))
        except DecodeError:
            if done or len(out) >= limit:
                raise
        step *= 4


def _head_elements(data: bytes, pos: int, count: int, max_depth: int, budget: int) -> tuple[Any, ...]:
    """The first ``count`` elements of the tuple whose tag is at ``pos`` (each within ``budget``)."""
    try:
        tag = data[pos]
        if tag == T.SMALL_TUPLE_EXT:
            arity = data[pos + 1]
            pos += 2
        elif tag == T.LARGE_TUPLE_EXT:
            arity = _u32(data, pos + 1)[0]
            pos += 5
        else:
            _fail(f"expected a tuple, found tag {tag}", data, pos)
        if arity < count:
            _fail(f"tuple of {arity} elements has fewer than {count}", data, pos)
        elements = []
        for _ in range(count):
            value, pos = _decode_term(data, pos, max(max_depth - 1, 0), None, budget)
            elements.append(value)
    except DecodeError:
        raise
    except _STRAY as exc:
        raise _convert_stray(exc, data) from None
    return tuple(elements)


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


_SMALL_INTS = [bytes((T.SMALL_INTEGER_EXT, i)) for i in range(256)]
_SMALL_TUPLES = [bytes((T.SMALL_TUPLE_EXT, i)) for i in range(256)]
_TRUE = _atom_ext("true")
_FALSE = _atom_ext("false")
_NIL = _atom_ext("nil")
_INFINITY = _atom_ext("infinity")
_NEG_INFINITY = _atom_ext("neg_infinity")
_NAN = _atom_ext("nan")

#: Encoded atoms, keyed by Atom (only ever looked up with an Atom).
_ATOM_BYTES: dict[Atom, bytes] = {}

_ENCODABLE = (
    str, int, float, bytes, bytearray, memoryview, tuple, list, dict, ErlMap, ImproperList, OpaqueTerm, type(None)
)
_MAX_DEFAULT_CHAIN = 32


def _encode_atom(atom: Atom) -> bytes:
    encoded = _atom_ext(atom)
    if len(_ATOM_BYTES) >= _ATOM_CACHE_MAX:
        _ATOM_BYTES.clear()
    _ATOM_BYTES[atom] = encoded
    return encoded


def _encode_big(value: int) -> bytes:
    sign = 0
    if value < 0:
        sign = 1
        value = -value
    n = (value.bit_length() + 7) // 8
    digits = value.to_bytes(n, "little")
    if n < 256:
        return bytes((T.SMALL_BIG_EXT, n, sign)) + digits
    return _pack_big_hdr(T.LARGE_BIG_EXT, n, sign) + digits


def _encode_float(value: float) -> bytes:
    if value - value == 0.0:
        return _pack_tag_f64(T.NEW_FLOAT_EXT, value)
    if value != value:
        return _NAN
    return _INFINITY if value > 0 else _NEG_INFINITY


def _too_deep(obj: Any, max_depth: int) -> NoReturn:
    raise EncodeError(
        f"term nested deeper than max_depth={max_depth} (or it contains a reference cycle)", value=obj
    )


def _changed(obj: Any) -> NoReturn:
    """Raise the EncodeError of a list or dict that changed size while the C encoder read it.

    (The C encoder copies them before any Python code runs, so this is a guard that only a
    finalizer run by the garbage collector in the middle of a copy could trip.)
    """
    raise EncodeError(f"{type(obj).__name__} changed size while it was encoded", value=obj)


def _replace(obj: Any, default: DefaultHook | None) -> Any:
    """Return an encodable stand-in for an object of no directly supported type.

    Subclasses of the supported types become their base type; anything else goes through
    ``default`` (asked again while it returns something unsupported, at most 32 times).
    """
    if isinstance(obj, Atom):
        return Atom(str.__str__(obj))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, int):
        return int.__int__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, tuple):
        return tuple(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj.items())
    if isinstance(obj, ErlMap):
        return ErlMap(obj.pairs)
    if default is None:
        cls = type(obj)
        raise EncodeError(f"cannot encode an object of type {cls.__module__}.{cls.__qualname__}", value=obj)
    replacement = obj
    for _ in range(_MAX_DEFAULT_CHAIN):
        replacement = default(replacement)
        if isinstance(replacement, _ENCODABLE):
            return replacement
    raise EncodeError(
        f"default() returned no encodable value for an object of type {type(obj).__qualname__}", value=obj
    )


def _encode_into(
    term: Any,
    out: list[bytes],
    default: DefaultHook | None,
    max_depth: int,
    _small_ints: list[bytes] = _SMALL_INTS,
    _small_tuples: list[bytes] = _SMALL_TUPLES,
    _atom_bytes: dict[Atom, bytes] = _ATOM_BYTES,
    _Atom: type = Atom,
    _pack_tag_u32: Callable[..., bytes] = _pack_tag_u32,
    _pack_tag_i32: Callable[..., bytes] = _pack_tag_i32,
    _pack_tag_f64: Callable[..., bytes] = _pack_tag_f64,
    _chain: Callable[..., Any] = chain.from_iterable,
    *,
    depth: int = 0,
) -> None:
    """Append the encoding of ``term`` (without version byte) to ``out``.

    Non-recursive: the values still to encode are iterators; ``it`` is the current one and
    ``stack`` holds the suspended outer ones with the bytes that close them (``b"j"`` for a
    proper list, ``None`` for a stand-in from :func:`_replace`, which adds no nesting).
    ``depth`` is the number of containers already open around ``term`` (the C encoder hands
    sub-terms over with it, see :func:`_encode_part`). Lists and dicts are iterated through a
    copy made when they are reached, so that their header always agrees with their elements.
    """
    app = out.append
    stack: list[tuple[Any, bytes | None]] = []
    it: Any = iter((term,))
    close: bytes | None = b""
    stand_ins = -depth  # frames on the stack that are stand-ins, not containers (less depth)
    while True:
        for obj in it:
            cls = obj.__class__
            if cls is str:
                try:
                    encoded = obj.encode()
                except UnicodeEncodeError as exc:
                    raise EncodeError(f"string is not encodable as UTF-8: {exc}", value=obj) from None
                app(_pack_tag_u32(109, len(encoded)))
                app(encoded)
            elif cls is _Atom:
                encoded = _atom_bytes.get(obj)
                if encoded is None:
                    encoded = _encode_atom(obj)
                app(encoded)
            elif cls is int:
                if 0 <= obj <= 255:
                    app(_small_ints[obj])
                elif -2147483648 <= obj <= 2147483647:
                    app(_pack_tag_i32(98, obj))
                else:
                    app(_encode_big(obj))
            elif cls is tuple:
                n = len(obj)
                if n:
                    app(_small_tuples[n] if n < 256 else _pack_tag_u32(105, n))
                    stack.append((it, close))
                    if len(stack) - stand_ins > max_depth:
                        _too_deep(obj, max_depth)
                    it = iter(obj)
                    close = b""
                    break
                app(b"h\x00")
            elif cls is float:
                if obj - obj == 0.0:
                    app(_pack_tag_f64(70, obj))
                else:
                    app(_encode_float(obj))
            elif cls is list:
                if obj:
                    # A snapshot, counted once: the header and the elements agree even if
                    # another thread (or a default hook) changes the list meanwhile.
                    snapshot = obj.copy()
                    app(_pack_tag_u32(108, len(snapshot)))
                    stack.append((it, close))
                    if len(stack) - stand_ins > max_depth:
                        _too_deep(obj, max_depth)
                    it = iter(snapshot)
                    close = b"j"
                    break
                app(b"j")
            elif cls is dict:
                if obj:
                    snapshot = obj.copy()  # as for lists
                    app(_pack_tag_u32(116, len(snapshot)))
                    stack.append((it, close))
                    if len(stack) - stand_ins > max_depth:
                        _too_deep(obj, max_depth)
                    it = _chain(snapshot.items())
                    close = b""
                    break
                app(b"t\x00\x00\x00\x00")
            elif cls is bool:
                app(_TRUE if obj else _FALSE)
            elif obj is None:
                app(_NIL)
            elif cls is bytes:
                app(_pack_tag_u32(109, len(obj)))
                app(obj)
            elif isinstance(obj, OpaqueTerm):
                app(obj.raw)
            elif cls is ErlMap:
                n = len(obj)
                app(_pack_tag_u32(116, n))
                if n:
                    stack.append((it, close))
                    if len(stack) - stand_ins > max_depth:
                        _too_deep(obj, max_depth)
                    it = _chain(obj.pairs)
                    close = b""
                    break
            elif cls is ImproperList:
                elements = obj.elements
                app(_pack_tag_u32(108, len(elements)))
                stack.append((it, close))
                if len(stack) - stand_ins > max_depth:
                    _too_deep(obj, max_depth)
                it = chain(elements, (obj.tail,))
                close = b""
                break
            else:
                stack.append((it, close))
                stand_ins += 1
                it = iter((_replace(obj, default),))
                close = None
                break
        else:  # `it` is exhausted: close it and resume the outer iterator
            if close:
                app(close)
            elif close is None:
                stand_ins -= 1
            if not stack:
                return
            it, close = stack.pop()


def _encode_part(obj: Any, default: DefaultHook | None, max_depth: int, depth: int) -> bytes:
    """Encode one sub-term for the C encoder: what it does not handle natively.

    Args:
        obj: The sub-term (an ``ErlMap``, ``ImproperList``, opaque term, subclass, big int,
            non-finite float, unsupported object, ...).
        default: The ``default`` hook of the ``encode`` call, or None.
        max_depth: The ``max_depth`` of the ``encode`` call.
        depth: Containers already open around ``obj``.

    Returns:
        The encoding of ``obj`` (no version byte).

    Raises:
        EncodeError: As :func:`encode`; exceptions of ``default`` propagate unchanged.
    """
    out: list[bytes] = []
    _encode_into(obj, out, default, max_depth, depth=depth)
    return b"".join(out)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


#: Checks ``max_depth`` and ``max_size``: a positive integer (``ValueError`` otherwise).
_check_limit = _limits.positive_int


def _check_depth(value: object) -> int:
    """Validate a decoding ``max_depth`` (1..MAX_DECODE_DEPTH), with the worker's rule."""
    return _limits.MAX_DEPTH.check(value)


def _decode_limits(
    max_depth: object, max_size: object, max_expansion: object, max_memory: object
) -> tuple[int, int, int, int]:
    """Validate the decoding limits; return them with ``max_memory`` resolved.

    Raises:
        ValueError: A limit is invalid.
    """
    _check_depth(max_depth)
    _check_limit("max_size", max_size)
    _check_limit("max_expansion", max_expansion)
    if max_memory is None:
        max_memory = 2 * max_size + _MEMORY_SLACK  # type: ignore[operator]
    else:
        _check_limit("max_memory", max_memory)
    return max_depth, max_size, max_expansion, max_memory  # type: ignore[return-value]


def _check_hook(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ValueError(f"expected {name} to be callable or None, got: {value!r}")


def _check_level(value: object) -> int:
    if type(value) is bool:
        return 6 if value else 0
    if type(value) is not int or not 0 <= value <= 9:
        raise ValueError(f"expected compressed to be a bool or an integer in 0..9, got: {value!r}")
    return value


#: ``Decoder.decode_prefix``'s ``tagged`` when not given: the decoder's own hook.
_OWN_HOOK: Any = object()


class Decoder:
    """A decoder holding validated limits and an optional ``tagged`` hook.

    Attributes:
        max_depth: Maximum container nesting (at most :data:`MAX_DECODE_DEPTH`).
        max_size: Maximum input size and decompressed size, in bytes.
        max_expansion: Memory budget per input byte (see "Memory budget").
        max_memory: Largest memory budget of one term, in bytes (resolved: never None).
        tagged: Hook for tuples whose first element is an atom starting with ``$snakeport_``.
    """

    __slots__ = ("max_depth", "max_size", "max_expansion", "max_memory", "tagged")

    def __init__(
        self,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_size: int = DEFAULT_MAX_SIZE,
        max_expansion: int = DEFAULT_MAX_EXPANSION,
        max_memory: int | None = None,
        tagged: TaggedHook | None = None,
    ) -> None:
        """Create a decoder.

        Args:
            max_depth: Maximum container nesting (an integer in 1..MAX_DECODE_DEPTH).
            max_size: Maximum input and decompressed size in bytes (positive integer).
            max_expansion: Bytes of memory the decoded values may use per input byte
                (positive integer; see "Memory budget" in the module docstring).
            max_memory: Most bytes of memory the decoded values of one term may use
                (positive integer; default ``2 * max_size + 64 MiB``).
            tagged: Called with each decoded tuple whose first element is an ``Atom``
                starting with ``$snakeport_``; its return value replaces the tuple.

        Raises:
            ValueError: A limit is out of range, or ``tagged`` is not callable.
        """
        self.max_depth, self.max_size, self.max_expansion, self.max_memory = _decode_limits(
            max_depth, max_size, max_expansion, max_memory
        )
        _check_hook("tagged", tagged)
        self.tagged = tagged

    def decode(self, data: Buffer) -> Any:
        """Decode one whole term (see :func:`decode`).

        Args:
            data: ``term_to_binary`` output: version byte 131, then the term.

        Returns:
            The Python value.

        Raises:
            DecodeError: The bytes are not exactly one valid term within the limits.
            TypeError: ``data`` is not bytes, bytearray or memoryview.
        """
        return decode(
            data,
            tagged=self.tagged,
            max_depth=self.max_depth,
            max_size=self.max_size,
            max_expansion=self.max_expansion,
            max_memory=self.max_memory,
        )

    def decode_prefix(self, data: Buffer, tagged: Any = _OWN_HOOK, *, scan: bool = True) -> tuple[Any, int]:
        """Decode the term at the start of ``data`` (see :func:`decode_prefix`).

        The common input (``bytes``, not compressed) takes the steps of
        :func:`decode_prefix` with no argument to check: the limits were checked once, by
        the constructor. The worker decodes each request frame so.

        Args:
            data: Starts with ``term_to_binary`` output (version byte 131, then the term).
            tagged: The hook of this input (the worker's is new for each frame), ``None``
                for none; default: the decoder's own.
            scan: Whether to look for the tag prefix in an input of up to 64 KiB first (to
                skip the hook's checks when it is absent); ``False`` when the caller has
                found it there already (the hook is then checked at each tuple, as for a
                larger input: the same value).

        Returns:
            ``(value, end)``: the value and the offset just after the term.

        Raises:
            DecodeError: The term is invalid, or a compressed term is followed by bytes.
                Exceptions raised by ``tagged`` propagate unchanged.
            TypeError: ``data`` is not bytes, bytearray or memoryview.
            ValueError: ``tagged`` is not callable.
        """
        if tagged is _OWN_HOOK:
            tagged = self.tagged
        elif tagged is not None and not callable(tagged):
            _check_hook("tagged", tagged)
        size = len(data)
        if data.__class__ is not bytes or size < 2 or size > self.max_size or data[0] != 131 or data[1] == 80:
            return decode_prefix(
                data,
                tagged=tagged,
                max_depth=self.max_depth,
                max_size=self.max_size,
                max_expansion=self.max_expansion,
                max_memory=self.max_memory,
            )
        # (The steps of _decode_prefix for this input.)
        budget = _budget(size, self.max_expansion, self.max_memory)
        if scan and tagged is not None and size <= _TAG_SCAN_MAX and data.find(_TAGGED_BYTES) < 0:
            tagged = None
        try:
            return _decode_term(data, 1, self.max_depth, tagged, budget)  # type: ignore[no-any-return]
        except DecodeError:
            raise
        except _HookFailure as failure:
            raise failure.exc from None
        except _STRAY as exc:
            raise _convert_stray(exc, data) from None

    def decode_head(self, data: Buffer, count: int) -> tuple[Any, ...]:
        """Decode the first ``count`` elements of a top-level tuple (see :func:`decode_head`).

        Args:
            data: A frame or a prefix of one.
            count: How many leading elements to decode.

        Returns:
            A tuple of ``count`` values.

        Raises:
            DecodeError: They cannot be decoded.
            ValueError: ``count`` is negative.
        """
        return _decode_head(data, count, self.max_depth, self.max_size, self.max_expansion, self.max_memory)


class Encoder:
    """An encoder holding a validated depth limit, a ``default`` hook and a compression level.

    Attributes:
        max_depth: Maximum container nesting.
        default: Hook returning an encodable replacement for an unsupported object.
        compressed: zlib level 1..9 for the COMPRESSED format, 0 for none.
    """

    __slots__ = ("max_depth", "default", "compressed")

    def __init__(
        self,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        default: DefaultHook | None = None,
        compressed: int | bool = 0,
    ) -> None:
        """Create an encoder.

        Args:
            max_depth: Maximum container nesting (positive integer; the encoder does not
                recurse, so it has no upper bound).
            default: Called with an object the codec cannot encode; must return an encodable
                replacement (called again, at most 32 times in a row, while it does not).
            compressed: zlib level 0..9 (``True`` means 6); the compressed form is used only
                when it is smaller, like ``term_to_binary(T, [compressed])``.

        Raises:
            ValueError: An option is invalid.
        """
        self.max_depth = _check_limit("max_depth", max_depth)
        _check_hook("default", default)
        self.default = default
        self.compressed = _check_level(compressed)

    def encode(self, term: Any) -> bytes:
        """Encode a term (see :func:`encode`).

        Args:
            term: The value.

        Returns:
            ``term_to_binary``-style bytes.

        Raises:
            EncodeError: The value (or a part of it) cannot be encoded.
        """
        if _c_encode is not None and not self.compressed:
            return _c_encode(term, self.default, self.max_depth)  # options validated once
        return encode(term, default=self.default, max_depth=self.max_depth, compressed=self.compressed)


def decode(
    data: Buffer,
    *,
    tagged: TaggedHook | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_size: int = DEFAULT_MAX_SIZE,
    max_expansion: int = DEFAULT_MAX_EXPANSION,
    max_memory: int | None = None,
) -> Any:
    """Decode one whole External Term Format term.

    Args:
        data: ``term_to_binary`` output (version byte 131, then the term, possibly
            compressed); bytes, bytearray or memoryview (a memoryview is copied once, a
            bytearray too unless the C accelerator reads it in place).
        tagged: Called with each decoded tuple whose first element is an ``Atom`` starting
            with ``$snakeport_``; its return value replaces the tuple. When an input of at
            most 64 KiB does not contain that prefix at all, the hook costs nothing (larger
            inputs are not scanned: each tuple's first element is checked).
        max_depth: Maximum container nesting (1..:data:`MAX_DECODE_DEPTH`).
        max_size: Maximum input size and decompressed size, in bytes.
        max_expansion: Bytes of memory the decoded values may use per input byte (see
            "Memory budget" in the module docstring).
        max_memory: Most bytes of memory the decoded values may use, whatever the input
            size (default ``2 * max_size + 64 MiB``).

    Returns:
        The Python value (see the mapping table in the module docstring).

    Raises:
        DecodeError: The bytes are not exactly one valid term within the limits (trailing
            bytes included; a term needing more memory than its budget is refused before
            that memory is allocated). Exceptions raised by ``tagged`` propagate unchanged.
        TypeError: ``data`` is not bytes, bytearray or memoryview.
        ValueError: A limit is invalid.
    """
    if _c_decode is not None:
        # The C fast path (an uncompressed term given as bytes, the default limits, no
        # hook: most calls) does the steps of _decode_prefix, the budget included, in C.
        try:
            value = _c_decode(data, tagged, max_depth, max_size, max_expansion, max_memory)
        except DecodeError:
            raise
        except _STRAY as exc:
            raise _convert_stray(exc, data) from None  # type: ignore[arg-type]
        if value is not NotImplemented:
            return value
    value, pos, data = _decode_prefix(data, tagged, max_depth, max_size, max_expansion, max_memory)
    if pos != len(data):
        raise DecodeError(
            f"{len(data) - pos} trailing bytes after the term at byte {pos}", data=bytes(data), offset=pos
        )
    return value


def decode_prefix(
    data: Buffer,
    *,
    tagged: TaggedHook | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_size: int = DEFAULT_MAX_SIZE,
    max_expansion: int = DEFAULT_MAX_EXPANSION,
    max_memory: int | None = None,
) -> tuple[Any, int]:
    """Decode the term at the start of ``data``; the bytes after it are not looked at.

    Like :func:`decode` (same arguments, limits and errors), for inputs that carry more
    than the term: the worker's frames may be followed by the raw bytes of blobs
    (``docs/PROTOCOL.md``, *Blobs*). A compressed term must be the whole input.

    Args:
        data: Starts with ``term_to_binary`` output (version byte 131, then the term).
        tagged: As for :func:`decode`.
        max_depth: Maximum container nesting.
        max_size: Maximum input size and decompressed size, in bytes.
        max_expansion: As for :func:`decode`.
        max_memory: As for :func:`decode`.

    Returns:
        ``(value, end)``: the value and the offset in ``data`` just after the term
        (``len(data)`` when nothing follows it).

    Raises:
        DecodeError: The term is invalid, or a compressed term is followed by bytes.
        TypeError: ``data`` is not bytes, bytearray or memoryview.
        ValueError: A limit is invalid.
    """
    value, pos, decoded = _decode_prefix(data, tagged, max_depth, max_size, max_expansion, max_memory)
    if decoded is not data and len(data) >= 2 and data[1] == 80:  # compressed: the whole input
        if pos != len(decoded):
            raise DecodeError(
                f"{len(decoded) - pos} trailing bytes after the term at byte {pos}", data=None, offset=pos
            )
        return value, len(data)
    return value, pos


def _decode_prefix(
    data: Buffer,
    tagged: TaggedHook | None,
    max_depth: int,
    max_size: int,
    max_expansion: int,
    max_memory: int | None,
) -> tuple[Any, int, Any]:
    """Decode the term at the start of ``data``: ``(value, end, buffer decoded)``.

    ``end`` is an offset in the buffer decoded, which is ``data`` itself, its copy as bytes,
    or, for a compressed term, the inflated bytes.
    """
    # (The defaults are known to be valid: the worker passes them as they are.)
    if max_depth is not DEFAULT_MAX_DEPTH:
        _check_depth(max_depth)
    if max_size is not DEFAULT_MAX_SIZE:
        _check_limit("max_size", max_size)
    if max_expansion is not DEFAULT_MAX_EXPANSION:
        _check_limit("max_expansion", max_expansion)
    if max_memory is None:
        max_memory = _DEFAULT_MAX_MEMORY if max_size is DEFAULT_MAX_SIZE else 2 * max_size + _MEMORY_SLACK
    else:
        _check_limit("max_memory", max_memory)
    if data.__class__ is not bytes:
        if data.__class__ is bytearray and _decode_term is not _py_decode_term:
            # The C decoder reads a bytearray in place (a large frame is not copied); the
            # rare paths below work on bytes, as the pure-Python codec does.
            if len(data) > max_size:
                _as_bytes(data, max_size)  # raises the max_size error
            if len(data) < 2 or data[0] != 131 or data[1] == 80:
                data = bytes(data)
        else:
            data = _as_bytes(data, max_size)
    size = len(data)
    if size > max_size:
        raise DecodeError(f"input of {size} bytes exceeds max_size={max_size}", data=data, offset=0)
    if size < 2 or data[0] != 131:
        _bad_start(data)  # type: ignore[arg-type]
    budget = max_expansion * size + _BUDGET_FLOOR
    if budget > max_memory:
        budget = max_memory
    pos = 1
    if data[1] == 80:
        data = _inflate(data, max_size, budget)  # type: ignore[arg-type]
        budget -= len(data) + _COST_INFLATE
        pos = 0
    if tagged is not None:
        if not callable(tagged):
            _check_hook("tagged", tagged)
        # (find, not `in`: `in` first tries the prefix as an integer and raises and clears
        # a TypeError, some 2,000 instructions per input.)
        if len(data) <= _TAG_SCAN_MAX and data.find(_TAGGED_BYTES) < 0:
            tagged = None  # no tagged tuple can be present: skip the per-tuple check
        # (Larger inputs are not scanned: the scan costs ~0.3 ms per MiB, far more than the
        # per-tuple check it saves.)
    try:
        value, pos = _decode_term(data, pos, max_depth, tagged, budget)  # type: ignore[arg-type]
    except DecodeError:
        raise
    except _HookFailure as failure:
        raise failure.exc from None
    except _STRAY as exc:
        raise _convert_stray(exc, bytes(data)) from None  # type: ignore[arg-type]
    return value, pos, data


def decode_head(
    data: Buffer,
    count: int,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_size: int = DEFAULT_MAX_SIZE,
    max_expansion: int = DEFAULT_MAX_EXPANSION,
    max_memory: int | None = None,
) -> tuple[Any, ...]:
    """Decode only the first ``count`` elements of a top-level tuple.

    Meant for frames that are too large, truncated or malformed further on: it reads the
    ``{Op, Id, ...}`` of a request from a prefix of the frame. What follows the decoded
    elements is not looked at: a compressed frame is inflated only as far as those elements
    need (4 KiB first, then 4 times more while they are incomplete), never beyond
    ``max_size`` or half the memory budget, whatever size it declares.

    Args:
        data: A frame or a prefix of one, starting with the version byte.
        count: How many leading elements to decode (0 or more).
        max_depth: Maximum container nesting (the tuple counts as 1).
        max_size: Most bytes inflated from a compressed frame.
        max_expansion: As for :func:`decode` (the budget of each element: ``data`` is the
            input size).
        max_memory: As for :func:`decode`.

    Returns:
        A tuple of the first ``count`` elements.

    Raises:
        DecodeError: ``data`` does not start with a tuple of at least ``count`` elements that
            can be decoded from the bytes present.
        ValueError: ``count`` is negative or a limit is invalid.
    """
    max_depth, max_size, max_expansion, max_memory = _decode_limits(max_depth, max_size, max_expansion, max_memory)
    return _decode_head(data, count, max_depth, max_size, max_expansion, max_memory)


def _encode_flat_tuple(
    term: tuple,
    _Atom: type = Atom,
    _atom_bytes: dict = _ATOM_BYTES,
    _small_ints: list = _SMALL_INTS,
    _pack_tag_i32: Callable[..., bytes] = _pack_tag_i32,
    _pack_tag_u32: Callable[..., bytes] = _pack_tag_u32,
    _pack_tag_f64: Callable[..., bytes] = _pack_tag_f64,
) -> bytes | None:
    """``encode`` of a small tuple of common scalars (replies, events), or ``None``.

    Gives the same bytes as the general encoder; anything else (a container, a cache miss,
    an unusual value) returns ``None`` and goes through :func:`_encode_into`.
    """
    n = len(term)
    if not 0 < n < 256:
        return None
    parts = [b"\x83h", _small_ints[n][1:]]
    app = parts.append
    for obj in term:
        cls = obj.__class__
        if cls is _Atom:
            encoded = _atom_bytes.get(obj)
            if encoded is None:
                return None
            app(encoded)
        elif cls is int:
            if 0 <= obj <= 255:
                app(_small_ints[obj])
            elif -2147483648 <= obj <= 2147483647:
                app(_pack_tag_i32(98, obj))
            else:
                return None
        elif cls is str:
            try:
                encoded = obj.encode()
            except UnicodeEncodeError:
                return None
            app(_pack_tag_u32(109, len(encoded)))
            app(encoded)
        elif cls is float:
            if obj - obj != 0.0:
                return None
            app(_pack_tag_f64(70, obj))
        elif cls is bytes:
            app(_pack_tag_u32(109, len(obj)))
            app(obj)
        elif obj is None:
            app(_NIL)
        elif cls is bool:
            app(_TRUE if obj else _FALSE)
        else:
            return None
    return b"".join(parts)


def encode(
    term: Any,
    *,
    default: DefaultHook | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    compressed: int | bool = 0,
) -> bytes:
    """Encode a Python value as an External Term Format term (``term_to_binary`` style).

    Args:
        term: The value (see the mapping table in the module docstring).
        default: Called with an object the codec cannot encode; must return an encodable
            replacement term (like ``json``'s ``default``). Without it such an object raises
            ``EncodeError``. Exceptions it raises propagate unchanged.
        max_depth: Maximum container nesting; deeper values (and reference cycles) raise
            ``EncodeError``.
        compressed: zlib level 0..9 (``True`` means 6), used only when it makes the term
            smaller.

    Returns:
        The bytes, starting with the version byte 131.

    Raises:
        EncodeError: The value (or a part of it) cannot be encoded; ``value`` holds the
            offending object.
        ValueError: An option is invalid.

    Each list and dict is encoded as it was when the encoder reached it: changes made
    meanwhile by another thread, or by ``default``, are not seen (the frame stays exact).
    """
    if max_depth is not DEFAULT_MAX_DEPTH:
        _check_limit("max_depth", max_depth)
    if default is not None and not callable(default):
        _check_hook("default", default)
    if _c_encode is not None:
        data = _c_encode(term, default, max_depth)
        if not compressed:
            return data
        body = data[1:]
    else:
        if term.__class__ is tuple and not compressed:
            flat = _encode_flat_tuple(term)
            if flat is not None:
                return flat
        out = [b"\x83"]
        _encode_into(term, out, default, max_depth)
        if not compressed:
            return b"".join(out)
        body = b"".join(out[1:])
    level = _check_level(compressed)
    packed = zlib.compress(body, level)
    if len(packed) + 4 < len(body):
        return b"\x83P" + len(body).to_bytes(4, "big") + packed
    return b"\x83" + body


# ---------------------------------------------------------------------------------------
# The C accelerator (snakeport._cetf), when it is built and not disabled
# ---------------------------------------------------------------------------------------

#: Set to a non-empty value other than ``0`` to use the pure-Python codec (read at import).
_PURE_PYTHON_ENV = "SNAKEPORT_PURE_PYTHON"

_cetf: Any
if os.environ.get(_PURE_PYTHON_ENV, "") not in ("", "0"):
    _cetf = None
else:
    try:
        from . import _cetf
    except ImportError:  # not built (no compiler at install time): the pure-Python codec
        _cetf = None
    else:
        # The accelerator looks its helpers up here by name: a rename fails at this import.
        _cetf._setup(sys.modules[__name__])
        # decode's C fast path: for these limits, the budget is computed in C.
        _cetf._decode_defaults(
            DEFAULT_MAX_DEPTH, DEFAULT_MAX_SIZE, DEFAULT_MAX_EXPANSION, _BUDGET_FLOOR, _DEFAULT_MAX_MEMORY
        )

#: The term decoder in use: ``_cetf.decode_term`` or ``_py_decode_term`` (same contract).
_decode_term: Callable[[bytes, int, int, TaggedHook | None, int], tuple[Any, int]] = _py_decode_term
#: ``_cetf.encode`` when the C encoder is in use, else None.
_c_encode: Callable[[Any, DefaultHook | None, int], bytes] | None = None
#: ``_cetf.decode`` (``decode``'s fast path) when the C decoder is in use, else None.
_c_decode: Callable[..., Any] | None = None


def _set_accelerated(enabled: bool) -> bool:
    """Use the C accelerator (``True``) or the pure-Python codec (``False``); for tests and
    benchmarks.

    Args:
        enabled: Which implementation ``decode``, ``decode_head`` and ``encode`` use from now.

    Returns:
        Whether the C accelerator was in use before.

    Raises:
        RuntimeError: ``enabled`` is true but ``snakeport._cetf`` is not available.
    """
    global _decode_term, _c_encode, _c_decode
    previous = _c_encode is not None
    if enabled:
        if _cetf is None:
            raise RuntimeError("snakeport._cetf is not available (not built, or disabled by SNAKEPORT_PURE_PYTHON)")
        _decode_term = _cetf.decode_term
        _c_encode = _cetf.encode
        _c_decode = _cetf.decode
    else:
        _decode_term = _py_decode_term
        _c_encode = None
        _c_decode = None
    return previous


if _cetf is not None:
    _set_accelerated(True)
