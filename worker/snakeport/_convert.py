"""Which conversion turns an object that is not plain data into a term, by its type.

I/O-free. The marshalling (:mod:`snakeport._marshal`) asks :func:`converter_for` for every
object whose type is not plain data. A converter is ``convert(obj, walk, depth)``: it
returns the object's term (using ``walk.convert(value, depth)`` for nested values) or raises
:class:`~snakeport._stdlib.NotData`, and the object becomes a ref (``result => value``:
``not_encodable``). In order:

1. an encoder registered with :func:`snakeport.register_encoder` (the type or a base);
2. the standard library: ``date``, ``time``, ``datetime``, ``timedelta``, ``Decimal``,
   ``UUID``, ``range``, :class:`~snakeport.extensions.Extension` (exact types);
3. numpy: ``ndarray`` (exactly: subclasses such as ``matrix``, masked arrays and
   ``memmap`` stay refs) and every scalar type;
4. pandas: ``DataFrame``, ``Series``, ``Index`` and their subclasses (data only under
   ``result => value``), ``Timestamp``, ``Timedelta``, ``NaT`` and ``NA``.

Modules are looked up in ``sys.modules``, never imported: an object of a numpy or pandas
type exists only once that module is loaded, so a worker whose calls never load them never
does. Lookups are cached per type.
"""

from __future__ import annotations

import sys

from snakeport import extensions
from snakeport._protocol import EXT_TAG
from snakeport._stdlib import (
    NotData,
    date_term,
    datetime_term,
    decimal_term,
    range_term,
    time_term,
    timedelta_term,
    uuid_term,
)

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

    Converter = Callable[[Any, Any, int], Any]

__all__ = ["converter_for", "NotData"]

#: type -> its converter, or None; cleared when it grows past _CACHE_MAX or an encoder is
#: registered.
_cache: dict[type, Converter | None] = {}
_CACHE_MAX = 4096
_generation = -1


def converter_for(cls: type) -> Converter | None:
    """Return the converter of objects of exactly ``cls``, or ``None`` (a ref).

    Args:
        cls: The object's type (not a plain data type).

    Returns:
        The converter, or ``None``.
    """
    global _generation
    if _generation != extensions.generation:
        _cache.clear()
        _generation = extensions.generation
    try:
        return _cache[cls]
    except KeyError:
        pass
    found = _find(cls)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[cls] = found
    return found


def _find(cls: type) -> Converter | None:
    encoder = extensions.encoder_for(cls)
    if encoder is not None:
        return _user(encoder)
    if cls is range:
        return _plain(range_term)
    if cls is extensions.Extension:
        return _extension
    get = sys.modules.get
    dt = get("datetime")
    if dt is not None:
        if cls is dt.datetime:
            return _plain(datetime_term)
        if cls is dt.date:
            return _plain(date_term)
        if cls is dt.time:
            return _plain(time_term)
        if cls is dt.timedelta:
            return _plain(timedelta_term)
    dec = get("decimal")
    if dec is not None and cls is dec.Decimal:
        return _plain(decimal_term)
    uuid = get("uuid")
    if uuid is not None and cls is uuid.UUID:
        return _plain(uuid_term)
    np = get("numpy")
    if np is not None:
        if cls is np.ndarray:
            from snakeport._arrays import array_term

            return array_term
        if issubclass(cls, np.generic):
            from snakeport._arrays import scalar_term

            return scalar_term
    pd = get("pandas")
    if pd is not None:
        found = _pandas(cls, pd)
        if found is not None:
            return found
    return None


def _pandas(cls: type, pd: Any) -> Converter | None:
    if issubclass(cls, (pd.DataFrame, pd.Series, pd.Index)):
        from snakeport._frames import frame_term

        return frame_term
    if cls is pd.Timestamp:
        return _timestamp
    if cls is pd.Timedelta:
        return _pandas_timedelta
    if cls is type(pd.NaT) or cls is type(pd.NA):
        return _missing
    return None


def _plain(term_of: Callable[[Any], Any]) -> Converter:
    def convert(obj: Any, walk: Any, depth: int) -> Any:
        return term_of(obj)

    return convert


def _user(encoder: Callable[[Any], Any]) -> Converter:
    def convert(obj: Any, walk: Any, depth: int) -> Any:
        if depth >= walk.max_depth:
            raise NotData("the result is nested too deeply")
        return walk.convert(encoder(obj), depth + 1)

    return convert


def _extension(obj: Any, walk: Any, depth: int) -> Any:
    name = obj.name
    if type(name) is not str:
        raise NotData("an Extension's name must be a str")
    return (EXT_TAG, name, walk.convert(obj.payload, depth + 1))


def _timestamp(ts: Any, walk: Any, depth: int) -> Any:
    if ts.nanosecond:
        raise NotData(f"{ts} is finer than a microsecond (Elixir's DateTime holds microseconds)")
    return datetime_term(ts.to_pydatetime())


def _pandas_timedelta(td: Any, walk: Any, depth: int) -> Any:
    if td.nanoseconds:
        raise NotData(f"{td} is finer than a microsecond")
    return timedelta_term(td.to_pytimedelta())


def _missing(obj: Any, walk: Any, depth: int) -> Any:
    return None
