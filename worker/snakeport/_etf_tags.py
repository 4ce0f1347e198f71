"""Tag bytes of the Erlang External Term Format (ETF).

One constant per tag. The layouts are those of the OTP documentation chapter
"External Term Format" (``erts/doc/src/erl_ext_dist.xml``, on the web at
https://www.erlang.org/doc/apps/erts/erl_ext_dist.html); each comment names the section and
sketches the layout after the tag byte (sizes in bytes, big-endian unless stated).
"""

from __future__ import annotations

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Final


__all__ = [
    "VERSION",
    "COMPRESSED",
    "NEW_FLOAT_EXT",
    "BIT_BINARY_EXT",
    "NEW_PID_EXT",
    "NEW_PORT_EXT",
    "NEWER_REFERENCE_EXT",
    "SMALL_INTEGER_EXT",
    "INTEGER_EXT",
    "FLOAT_EXT",
    "ATOM_EXT",
    "REFERENCE_EXT",
    "PORT_EXT",
    "PID_EXT",
    "SMALL_TUPLE_EXT",
    "LARGE_TUPLE_EXT",
    "NIL_EXT",
    "STRING_EXT",
    "LIST_EXT",
    "BINARY_EXT",
    "SMALL_BIG_EXT",
    "LARGE_BIG_EXT",
    "NEW_FUN_EXT",
    "EXPORT_EXT",
    "NEW_REFERENCE_EXT",
    "SMALL_ATOM_EXT",
    "MAP_EXT",
    "ATOM_UTF8_EXT",
    "SMALL_ATOM_UTF8_EXT",
    "V4_PORT_EXT",
    "LOCAL_EXT",
    "TAG_NAMES",
]

#: "Introduction": every ``term_to_binary/1`` output starts with this version byte.
VERSION: Final = 131
#: "Introduction", compressed term format: UncompressedSize:4, then zlib data of Tag+Data.
COMPRESSED: Final = 80

#: NEW_FLOAT_EXT: 8-byte IEEE 754 double (finite only).
NEW_FLOAT_EXT: Final = 70
#: BIT_BINARY_EXT: Len:4, Bits:1 (bits used in the last byte, 1..8), Data:Len.
BIT_BINARY_EXT: Final = 77
#: NEW_PID_EXT: Node (atom), ID:4, Serial:4, Creation:4.
NEW_PID_EXT: Final = 88
#: NEW_PORT_EXT: Node (atom), ID:4, Creation:4.
NEW_PORT_EXT: Final = 89
#: NEWER_REFERENCE_EXT: Len:2 (at most 5), Node (atom), Creation:4, ID:4*Len.
NEWER_REFERENCE_EXT: Final = 90
#: SMALL_INTEGER_EXT: unsigned Int:1.
SMALL_INTEGER_EXT: Final = 97
#: INTEGER_EXT: signed Int:4.
INTEGER_EXT: Final = 98
#: FLOAT_EXT (minor version 0): 31 bytes of ``"%.20e"`` text, NUL padded.
FLOAT_EXT: Final = 99
#: ATOM_EXT (deprecated): Len:2, Latin-1 text.
ATOM_EXT: Final = 100
#: REFERENCE_EXT (deprecated): Node (atom), ID:4, Creation:1.
REFERENCE_EXT: Final = 101
#: PORT_EXT: Node (atom), ID:4, Creation:1.
PORT_EXT: Final = 102
#: PID_EXT: Node (atom), ID:4, Serial:4, Creation:1.
PID_EXT: Final = 103
#: SMALL_TUPLE_EXT: Arity:1, Elements.
SMALL_TUPLE_EXT: Final = 104
#: LARGE_TUPLE_EXT: Arity:4, Elements.
LARGE_TUPLE_EXT: Final = 105
#: NIL_EXT: the empty list ``[]``.
NIL_EXT: Final = 106
#: STRING_EXT: Length:2, bytes; a list of integers 0..255 (a "charlist").
STRING_EXT: Final = 107
#: LIST_EXT: Length:4, Elements, Tail (NIL_EXT for a proper list).
LIST_EXT: Final = 108
#: BINARY_EXT: Len:4, Data.
BINARY_EXT: Final = 109
#: SMALL_BIG_EXT: n:1, Sign:1, n little-endian digit bytes.
SMALL_BIG_EXT: Final = 110
#: LARGE_BIG_EXT: n:4, Sign:1, n little-endian digit bytes.
LARGE_BIG_EXT: Final = 111
#: NEW_FUN_EXT: Size:4 (counts itself), Arity:1, Uniq:16, Index:4, NumFree:4, Module (atom),
#: OldIndex (integer), OldUniq (integer), Pid, NumFree free-variable terms.
NEW_FUN_EXT: Final = 112
#: EXPORT_EXT: Module (atom), Function (atom), Arity (SMALL_INTEGER_EXT).
EXPORT_EXT: Final = 113
#: NEW_REFERENCE_EXT: Len:2, Node (atom), Creation:1, ID:4*Len.
NEW_REFERENCE_EXT: Final = 114
#: SMALL_ATOM_EXT (deprecated): Len:1, Latin-1 text.
SMALL_ATOM_EXT: Final = 115
#: MAP_EXT: Arity:4, then Arity key/value pairs (K1, V1, K2, V2, ...).
MAP_EXT: Final = 116
#: ATOM_UTF8_EXT: Len:2, UTF-8 text (at most 255 characters).
ATOM_UTF8_EXT: Final = 118
#: SMALL_ATOM_UTF8_EXT: Len:1, UTF-8 text.
SMALL_ATOM_UTF8_EXT: Final = 119
#: V4_PORT_EXT (OTP 24+): Node (atom), ID:8, Creation:4.
V4_PORT_EXT: Final = 120
#: LOCAL_EXT (OTP 26+): everything after the tag is an unspecified local encoding.
LOCAL_EXT: Final = 121

#: Tag byte -> section name, for error messages.
TAG_NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, int) and name not in ("VERSION",)
}
