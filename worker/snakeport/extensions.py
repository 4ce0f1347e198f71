"""Extension points for types Snakeport does not know: encoders and decoders.

Results travel as data when Snakeport knows their type (``docs/PROTOCOL.md``, *Values*);
any other object comes back to the VM as a ref. Register an **encoder** to send objects of
your own types as data instead, and a **decoder** to turn values that the VM tags for you
(``%Snakeport.Extension{name: Name, payload: Payload}`` in Elixir, usually made by a
``Snakeport.Encoder`` implementation) into your objects::

    import io
    import polars as pl
    import snakeport

    def frame_to_arrow(df):
        buf = io.BytesIO()
        df.write_ipc_stream(buf)
        return snakeport.Extension("polars.DataFrame", buf.getvalue())

    snakeport.register_encoder(pl.DataFrame, frame_to_arrow)
    snakeport.register_decoder("polars.DataFrame", lambda ipc: pl.read_ipc_stream(io.BytesIO(ipc)))

An encoder returns any value Snakeport can send (plain data, numpy arrays, dates, nested
containers of them, an :class:`Extension`...); what it returns is marshalled like any
result. It is found by the object's exact type first, then along the type's MRO, and it
runs before the built-in conversions (so it may also change how a known type travels).
Encoders run on the thread of the call whose result they convert; an exception there fails
that call with ``not_encodable``. A decoder is called with the payload, already converted
(a binary payload arrives as ``bytes`` when it is not valid UTF-8, else as ``str``; send it
as ``Snakeport.bytes/1`` to always get ``bytes``), on the thread of the call that received
it, before the call; an exception there fails the call with ``python_error``.

Register them at import time of the module that defines the types (the worker imports a
call's module before it decodes the call's extension values), or with the harness's
``preload`` option.
"""

from __future__ import annotations

import threading
from collections import namedtuple

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["Extension", "register_encoder", "register_decoder", "encoder_for", "decoder_for"]


class Extension(namedtuple("Extension", "name payload")):
    """A value of a type of your own, as the VM sees it: ``%Snakeport.Extension{}``.

    A named tuple ``(name, payload)``. Return one from an encoder (or from any call) to
    send ``{'$snakeport_ext', Name, Payload}``; the VM's extension values arrive at your
    decoder as their payload.

    Attributes:
        name (str): What the value is (a string such as ``"polars.DataFrame"``).
        payload (Any): Its data: anything Snakeport can send.
    """

    __slots__ = ()


_lock = threading.Lock()
_encoders: dict[type, Callable[[Any], Any]] = {}
_decoders: dict[str, Callable[[Any], Any]] = {}
#: Bumped by every change of the encoders, so that caches of lookups can tell they are stale.
generation = 0


def register_encoder(cls: type, encoder: Callable[[Any], Any] | None) -> None:
    """Send objects of ``cls`` (and of its subclasses) as what ``encoder`` returns.

    Args:
        cls: The type.
        encoder: ``encoder(obj)`` returns the value to send; ``None`` removes the encoder
            of ``cls``.

    Raises:
        TypeError: ``cls`` is not a type or ``encoder`` is not callable.
    """
    global generation
    if not isinstance(cls, type):
        raise TypeError(f"expected a type, got: {cls!r}")
    if encoder is not None and not callable(encoder):
        raise TypeError(f"expected the encoder to be callable or None, got: {encoder!r}")
    with _lock:
        if encoder is None:
            _encoders.pop(cls, None)
        else:
            _encoders[cls] = encoder
        generation += 1


def register_decoder(name: str, decoder: Callable[[Any], Any] | None) -> None:
    """Turn the VM's extension values named ``name`` into what ``decoder`` returns.

    Args:
        name: The extension's name (``%Snakeport.Extension{name: name}``).
        decoder: ``decoder(payload)`` returns the object; ``None`` removes the decoder.

    Raises:
        TypeError: ``name`` is not a string or ``decoder`` is not callable.
    """
    if type(name) is not str:
        raise TypeError(f"expected the extension name to be a str, got: {name!r}")
    if decoder is not None and not callable(decoder):
        raise TypeError(f"expected the decoder to be callable or None, got: {decoder!r}")
    with _lock:
        if decoder is None:
            _decoders.pop(name, None)
        else:
            _decoders[name] = decoder


def encoder_for(cls: type) -> Callable[[Any], Any] | None:
    """The encoder registered for ``cls`` or its nearest base class, or ``None``."""
    if not _encoders:
        return None
    found = _encoders.get(cls)
    if found is not None:
        return found
    for base in cls.__mro__[1:]:
        found = _encoders.get(base)
        if found is not None:
            return found
    return None


def decoder_for(name: str) -> Callable[[Any], Any] | None:
    """The decoder registered for the extension ``name``, or ``None``."""
    return _decoders.get(name)
