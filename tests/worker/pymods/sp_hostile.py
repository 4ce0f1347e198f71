"""Hostile user code for the worker tests (issue 13, item 5): objects whose reading raises.

Each function returns or raises something that makes the worker run user code while it
builds the reply (a message, a type name, a hash, a traceback), and that code raises a
``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``):
the worker must answer with an error and keep serving.
"""

from __future__ import annotations

import ctypes
import functools
import threading


class Exits(str):
    """A ``str`` whose truth value exits (what ``text or default`` asks)."""

    def __bool__(self):
        raise SystemExit(3)

    def __len__(self):
        raise SystemExit(3)


class StrExits(Exception):
    """An exception whose message is an :class:`Exits`."""

    def __str__(self):
        return Exits("boom")


class EmptyStrExits(Exception):
    def __str__(self):
        return Exits("")


class StrRaisesExit(Exception):
    def __str__(self):
        raise SystemExit(4)


class ModuleExits(type):
    """A metaclass whose ``__module__`` exits (read for a type's qualified name)."""

    @property
    def __module__(cls):
        raise SystemExit(5)


class Opaque(metaclass=ModuleExits):
    """An object (travels as a ref) whose type's ``__module__`` exits."""


class ModuleExitsError(Exception, metaclass=ModuleExits):
    """An exception whose type's ``__module__`` exits."""


class Weird:
    """Formatting it exits."""

    def __format__(self, spec):
        raise SystemExit(6)

    def __str__(self):
        raise SystemExit(6)


class WeirdModule:
    """A class whose ``__module__`` is not a string (and formatting it exits)."""

    __module__ = Weird()  # type: ignore[assignment]


class HashExits(type):
    """A metaclass whose ``__hash__`` exits: looking the type up in a set exits."""

    def __hash__(cls):
        raise KeyboardInterrupt


class TypeHashExits(metaclass=HashExits):
    """An object whose type cannot be hashed without an exit."""


class Unhashable:
    """An object whose ``__hash__`` exits (a set element or a map key of a later request)."""

    def __hash__(self):
        raise SystemExit(7)


class TracebackExits(Exception):
    """An exception whose ``__traceback__`` exits."""

    @property
    def __traceback__(self):
        raise SystemExit(8)


class NotesExit(Exception):
    """An exception whose note (a ``str`` subclass) exits when formatted."""

    def __init__(self):
        super().__init__("with a note")
        self.__notes__ = [Exits("note")]


def raise_str_exits():
    raise StrExits()


def raise_empty_str_exits():
    raise EmptyStrExits()


def raise_str_raises_exit():
    raise StrRaisesExit()


def raise_module_exits():
    raise ModuleExitsError("x")


def raise_traceback_exits():
    raise TracebackExits("y")


def raise_notes_exit():
    raise NotesExit()


def opaque():
    return Opaque()


def opaque_list():
    return [1, Opaque()]


def weird_module():
    return WeirdModule()


def type_hash_exits():
    return TypeHashExits()


def type_hash_exits_list():
    return [1, TypeHashExits()]


def unhashable():
    return Unhashable()


def exit_now():
    raise SystemExit(9)


def missing_attribute_exits():
    """An AttributeError whose message exits (through the worker's lookup)."""

    class Missing:
        def __getattr__(self, name):
            raise AttributeErrorExits(name)

    return Missing()


class AttributeErrorExits(AttributeError):
    def __str__(self):
        return Exits("no such attribute")


# An asynchronous exception that strikes after the call returned (in the worker's own code).

_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class Late(BaseException):
    """Raised in the calling thread at its next bytecode by :data:`late`."""


#: Set by :func:`arm_late`: a C callable (no bytecode) that makes :class:`Late` pending in
#: the thread that calls it (``iter(get_ident, None)`` asks which, when called: the call
#: may run on another of the worker's threads than the one that armed it) and returns
#: ``[1]``. Called from Python (the general path), the
#: exception strikes at the end of the calling instruction, inside the call; called by the
#: C lane, at the first bytecode the worker runs after the call.
late = None

#: The same, returning the scalar ``1`` (a result the lane would answer itself).
late_scalar = None


def arm_late() -> bool:
    """Arm :data:`late` and :data:`late_scalar` (one use each)."""
    global late, late_scalar
    late = functools.partial(list, map(_set_async_exc, iter(threading.get_ident, None), [Late]))
    late_scalar = functools.partial(sum, map(_set_async_exc, iter(threading.get_ident, None), [Late]))
    return True
