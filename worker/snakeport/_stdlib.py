"""Standard library values both ways: dates and times, ``timedelta``, ``Decimal``, ``UUID``, ``range``.

I/O-free. Each Python value has a reserved tagged term (``docs/PROTOCOL.md``, *Values*)
that the harness turns into an Elixir struct, and back:

=========================  =============================================================  ================================
Python                     term                                                           Elixir
=========================  =============================================================  ================================
``datetime.date``          ``{'$snakeport_date', Year, Month, Day}``                      ``Date``
``datetime.time`` (naive)  ``{'$snakeport_time', Hour, Minute, Second, Microsecond}``     ``Time``
``datetime.datetime``      ``{'$snakeport_datetime', Y, Mo, D, H, Mi, S, Us, Zone}``      ``NaiveDateTime`` (``Zone`` nil)
                           ``Zone = {UtcOffset, StdOffset, TimeZone, ZoneAbbr}``          or ``DateTime``
``datetime.timedelta``     ``{'$snakeport_timedelta', Microseconds}``                     ``Snakeport.Duration``
``decimal.Decimal``        ``{'$snakeport_decimal', Sign, Coef, Exp}``                    ``Snakeport.Decimal``
``uuid.UUID``              ``{'$snakeport_uuid', <<"8-4-4-4-12 hex">>}``                  ``Snakeport.UUID``
``range``                  ``{'$snakeport_range', Start, Stop, Step}`` (Python's bounds)  ``Range``
=========================  =============================================================  ================================

The datetime fields are the wall clock; ``UtcOffset`` is the zone's standard offset and
``StdOffset`` the daylight saving part, in seconds, as in Elixir's ``DateTime`` (their sum is
``utcoffset()``). Nothing is rounded: a value that has no exact form (an aware ``time``, a
UTC offset with a fraction of a second, a ``Decimal`` NaN with a diagnostic payload) raises
:class:`NotData`, and the marshalling makes it a ref (or fails with ``not_encodable`` under
``result => value``).

The modules of these types are looked up in ``sys.modules``, never imported to send a
value: an object of the type exists only once its module is loaded. Building a value from a
term imports the module (``decimal``, ``uuid``, ``zoneinfo``) on first use.
"""

from __future__ import annotations


from snakeport._protocol import (
    DATE_TAG,
    DATETIME_TAG,
    DECIMAL_INF,
    DECIMAL_NAN,
    DECIMAL_SNAN,
    DECIMAL_TAG,
    RANGE_TAG,
    TIME_TAG,
    TIMEDELTA_TAG,
    UUID_TAG,
)
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "NotData",
    "date_term",
    "time_term",
    "datetime_term",
    "timedelta_term",
    "decimal_term",
    "uuid_term",
    "range_term",
    "date_from",
    "time_from",
    "datetime_from",
    "timedelta_from",
    "decimal_from",
    "uuid_from",
    "range_from",
    "UTC_ZONE",
]

#: The time zone name of UTC in Elixir (``Calendar.UTCOnlyTimeZoneDatabase``).
UTC_ZONE = "Etc/UTC"

_US_PER_DAY = 86_400_000_000


class NotData(Exception):
    """A value that has no exact data form: it travels as a ref instead.

    Attributes:
        why: What keeps it from travelling as data ("" when its type says it all).
    """

    def __init__(self, why: str = "") -> None:
        super().__init__(why)
        self.why = why


# ------------------------------------------------------------------- Python -> term


def date_term(d: Any) -> tuple:
    """``{'$snakeport_date', Year, Month, Day}`` of a ``datetime.date``."""
    return (DATE_TAG, d.year, d.month, d.day)


def time_term(t: Any) -> tuple:
    """``{'$snakeport_time', H, Mi, S, Us}`` of a naive ``datetime.time``.

    Raises:
        NotData: The time has a ``tzinfo`` (Elixir's ``Time`` has no zone).
    """
    if t.tzinfo is not None:
        raise NotData("a datetime.time with a tzinfo has no Elixir form (Time has no zone)")
    return (TIME_TAG, t.hour, t.minute, t.second, t.microsecond)


def _whole_seconds(delta: Any, what: str) -> int:
    if delta.microseconds:
        raise NotData(f"its {what} ({delta}) is not a whole number of seconds, as Elixir needs")
    return delta.days * 86_400 + delta.seconds


def datetime_term(dt: Any) -> tuple:
    """``{'$snakeport_datetime', Y, Mo, D, H, Mi, S, Us, Zone}`` of a ``datetime.datetime``.

    ``Zone`` is ``None`` for a naive datetime (and for one whose ``tzinfo`` gives no
    offset), else ``(UtcOffset, StdOffset, TimeZone, ZoneAbbr)``: ``TimeZone`` is the
    IANA key of a ``zoneinfo.ZoneInfo`` (or a pytz zone), ``"Etc/UTC"`` for UTC, else the
    zone's ``tzname``.

    Raises:
        NotData: The offset has a fraction of a second.
    """
    zone = None
    tz = dt.tzinfo
    if tz is not None:
        offset = dt.utcoffset()
        if offset is not None:
            total = _whole_seconds(offset, "UTC offset")
            dst = dt.dst()
            std = _whole_seconds(dst, "daylight saving offset") if dst is not None else 0
            abbr = dt.tzname()
            key = getattr(tz, "key", None) or getattr(tz, "zone", None)
            if type(key) is not str:
                key = None
            if total == 0 and std == 0 and (key in (None, "UTC", UTC_ZONE) and abbr in (None, "UTC")):
                key, abbr = UTC_ZONE, "UTC"
            if type(abbr) is not str:
                abbr = ""
            zone = (total - std, std, key or abbr or _offset_name(total), abbr)
    return (DATETIME_TAG, dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond, zone)


def _offset_name(total: int) -> str:
    sign = "-" if total < 0 else "+"
    hours, rest = divmod(abs(total), 3600)
    return f"UTC{sign}{hours:02d}:{rest // 60:02d}"


def timedelta_term(td: Any) -> tuple:
    """``{'$snakeport_timedelta', Microseconds}`` of a ``datetime.timedelta``."""
    return (TIMEDELTA_TAG, td.days * _US_PER_DAY + td.seconds * 1_000_000 + td.microseconds)


def decimal_term(d: Any) -> tuple:
    """``{'$snakeport_decimal', Sign, Coef, Exp}`` of a ``decimal.Decimal``.

    ``Sign`` is 1 or -1 (negative zero keeps -1), ``Coef`` the coefficient (an integer) or
    the atom ``NaN``, ``sNaN`` or ``inf``, ``Exp`` the exponent (0 for the special values):
    the value is ``Sign * Coef * 10 ** Exp``, as in the Elixir ``decimal`` package.

    Raises:
        NotData: A NaN with a diagnostic payload (``Decimal("NaN123")``).
    """
    sign, digits, exponent = d.as_tuple()
    sign = -1 if sign else 1
    if type(exponent) is int:
        return (DECIMAL_TAG, sign, int("".join(map(str, digits))) if digits else 0, exponent)
    if exponent == "F":
        return (DECIMAL_TAG, sign, DECIMAL_INF, 0)
    if digits and any(digits):
        raise NotData("a Decimal NaN with a diagnostic payload has no Elixir form")
    return (DECIMAL_TAG, sign, DECIMAL_SNAN if exponent == "N" else DECIMAL_NAN, 0)


def uuid_term(u: Any) -> tuple:
    """``{'$snakeport_uuid', Text}`` of a ``uuid.UUID`` (its canonical lowercase form)."""
    return (UUID_TAG, str(u))


def range_term(r: range) -> tuple:
    """``{'$snakeport_range', Start, Stop, Step}`` of a ``range`` (Python's bounds)."""
    return (RANGE_TAG, r.start, r.stop, r.step)


# ------------------------------------------------------------------- term -> Python


def _ints(term: tuple, first: int, count: int, what: str) -> tuple:
    """The ``count`` integers of ``term`` from ``first``; ValueError naming ``what``."""
    if len(term) != first + count or any(type(x) is not int for x in term[first:]):
        raise ValueError(f"expected {what}")
    return term[first:]


def date_from(term: tuple) -> Any:
    """The ``datetime.date`` of ``{'$snakeport_date', Y, M, D}``.

    Raises:
        ValueError: A malformed term or an invalid date (year 1 to 9999).
    """
    import datetime

    return datetime.date(*_ints(term, 1, 3, "{'$snakeport_date', Year, Month, Day} with integers"))


def time_from(term: tuple) -> Any:
    """The ``datetime.time`` of ``{'$snakeport_time', H, Mi, S, Us}``.

    Raises:
        ValueError: A malformed term or an invalid time (a leap second included).
    """
    import datetime

    return datetime.time(*_ints(term, 1, 4, "{'$snakeport_time', Hour, Minute, Second, Microsecond} with integers"))


def datetime_from(term: tuple) -> Any:
    """The ``datetime.datetime`` of ``{'$snakeport_datetime', Y, Mo, D, H, Mi, S, Us, Zone}``.

    A zone named ``"Etc/UTC"`` with offset 0 gives ``timezone.utc``; a zone whose name is
    an IANA key that ``zoneinfo`` knows, and whose offsets there match, gives that
    ``ZoneInfo`` (with the ``fold`` that matches); anything else a fixed-offset
    ``datetime.timezone`` named after the abbreviation.

    Raises:
        ValueError: A malformed term or an invalid date or time.
    """
    import datetime

    what = "{'$snakeport_datetime', Y, Mo, D, H, Mi, S, Us, Zone} with integers"
    if len(term) != 9:
        raise ValueError(f"expected {what}")
    fields = _ints(term[:8], 1, 7, what)
    zone = term[8]
    if zone is None:
        return datetime.datetime(*fields)
    if (
        type(zone) is not tuple
        or len(zone) != 4
        or type(zone[0]) is not int
        or type(zone[1]) is not int
        or type(zone[2]) not in (str, bytes)
        or type(zone[3]) not in (str, bytes)
    ):
        raise ValueError("expected Zone to be nil or {UtcOffset, StdOffset, TimeZone, ZoneAbbr}")
    total = zone[0] + zone[1]
    name = zone[2] if type(zone[2]) is str else zone[2].decode("latin-1")
    abbr = zone[3] if type(zone[3]) is str else zone[3].decode("latin-1")
    if name == UTC_ZONE and total == 0:
        return datetime.datetime(*fields, tzinfo=datetime.timezone.utc)
    found = _zoneinfo(name, fields, total)
    if found is not None:
        return found
    offset = datetime.timedelta(seconds=total)  # OverflowError/ValueError: not within a day
    return datetime.datetime(*fields, tzinfo=datetime.timezone(offset, abbr) if abbr else datetime.timezone(offset))


def _zoneinfo(name: str, fields: tuple, total: int) -> Any:
    """The aware datetime in ``ZoneInfo(name)`` whose offset is ``total``, or None."""
    if "/" not in name or name.startswith("/") or ".." in name or len(name) > 64:
        return None
    try:
        import datetime
        import zoneinfo

        tz = zoneinfo.ZoneInfo(name)
        for fold in (0, 1):
            dt = datetime.datetime(*fields, tzinfo=tz, fold=fold)
            if dt.utcoffset() == datetime.timedelta(seconds=total):
                return dt
    except Exception:  # noqa: BLE001 - unknown key, no tz database, odd file: fixed offset
        return None
    return None


def timedelta_from(term: tuple) -> Any:
    """The ``datetime.timedelta`` of ``{'$snakeport_timedelta', Microseconds}``.

    Raises:
        ValueError: A malformed term; OverflowError: beyond ``timedelta``'s range.
    """
    import datetime

    (us,) = _ints(term, 1, 1, "{'$snakeport_timedelta', Microseconds} with an integer")
    return datetime.timedelta(microseconds=us)


_SPECIAL_DECIMALS = {DECIMAL_NAN: "n", DECIMAL_SNAN: "N", DECIMAL_INF: "F"}


def decimal_from(term: tuple) -> Any:
    """The ``decimal.Decimal`` of ``{'$snakeport_decimal', Sign, Coef, Exp}`` (exactly).

    Raises:
        ValueError: A malformed term.
    """
    import decimal

    if len(term) != 4 or term[1] not in (1, -1) or type(term[1]) is not int or type(term[3]) is not int:
        raise ValueError("expected {'$snakeport_decimal', 1 | -1, Coef, Exp} with integers")
    sign = 0 if term[1] == 1 else 1
    coef = term[2]
    if type(coef) is int and coef >= 0:
        return decimal.Decimal((sign, tuple(map(int, str(coef))), term[3]))
    if type(coef) is Atom and coef in _SPECIAL_DECIMALS:
        return decimal.Decimal((sign, (), _SPECIAL_DECIMALS[coef]))
    raise ValueError("expected Coef to be a non-negative integer or NaN, sNaN, inf")


def uuid_from(term: tuple) -> Any:
    """The ``uuid.UUID`` of ``{'$snakeport_uuid', Text}``.

    Raises:
        ValueError: A malformed term or text that is not a UUID.
    """
    import uuid

    if len(term) != 2 or type(term[1]) not in (str, bytes):
        raise ValueError("expected {'$snakeport_uuid', Binary}")
    text = term[1] if type(term[1]) is str else term[1].decode("latin-1")
    return uuid.UUID(text)


def range_from(term: tuple) -> range:
    """The ``range`` of ``{'$snakeport_range', Start, Stop, Step}``.

    Raises:
        ValueError: A malformed term or a zero step.
    """
    return range(*_ints(term, 1, 3, "{'$snakeport_range', Start, Stop, Step} with integers"))

