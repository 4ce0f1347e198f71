"""The two process helpers that the C lane's module gives the worker instead of ``ctypes``
(``snakeport._jobs.async_raise``, ``snakeport._process._parent_death_signal``), and their
``ctypes`` fallbacks when the module is not built: the same effect either way.

Importing ``ctypes`` (with libffi) costs every worker some 0.35 MB; the worker imports it
only on these fallbacks (``test_worker_package`` checks that an idle worker has not).
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from snakeport import _jobs

try:
    from snakeport import _clane
except ImportError:  # pragma: no cover - make setup builds it
    _clane = None

needs_clane = pytest.mark.skipif(_clane is None, reason="snakeport._clane is not built (run make setup)")


class _Stop(Exception):
    pass


def _raise_in_a_spinning_thread() -> list:
    """Start a thread that spins until an exception strikes it; async_raise _Stop into it."""
    started = threading.Event()
    caught: list = []

    def spin() -> None:
        try:
            started.set()
            while True:
                pass
        except _Stop as exc:
            caught.append(exc)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    assert started.wait(10)
    _jobs.async_raise(thread.ident, _Stop)
    thread.join(10)
    assert not thread.is_alive(), "the exception never struck the thread"
    return caught


@pytest.mark.parametrize("path", ["clane", "ctypes"])
def test_async_raise_strikes_the_thread(monkeypatch, path) -> None:
    if path == "clane":
        if _clane is None:  # pragma: no cover
            pytest.skip("snakeport._clane is not built (run make setup)")
        assert _jobs._c_async_raise is _clane.async_raise
    else:
        monkeypatch.setattr(_jobs, "_c_async_raise", None)
    caught = _raise_in_a_spinning_thread()
    assert len(caught) == 1 and type(caught[0]) is _Stop


@needs_clane
def test_async_raise_with_none_clears_a_pending_exception_and_checks_its_arguments() -> None:
    # Nothing pending on this thread: no thread state to change for an unknown ident.
    assert _clane.async_raise(threading.get_ident(), None) == 1
    assert _clane.async_raise(2**40, _Stop) == 0
    with pytest.raises(TypeError):
        _clane.async_raise(1)
    with pytest.raises(OverflowError):
        _clane.async_raise(-1, None)


# Sets SIGUSR2 as the parent-death signal of a fresh interpreter (the helper changes the
# process it runs in) and reads it back with PR_GET_PDEATHSIG.
_READ_BACK = r"""
import ctypes, signal, sys
if sys.argv[1] == "ctypes":
    sys.modules["snakeport._clane"] = None  # as if it were not built
from snakeport import _process
armed = _process._parent_death_signal(int(signal.SIGUSR2))
value = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
print(armed, value.value == signal.SIGUSR2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("path", ["clane", "ctypes"])
def test_the_parent_death_signal_is_set(path) -> None:
    if path == "clane" and _clane is None:  # pragma: no cover
        pytest.skip("snakeport._clane is not built (run make setup)")
    out = subprocess.run([sys.executable, "-c", _READ_BACK, path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


@needs_clane
def test_parent_death_signal_refuses_what_is_not_a_signal() -> None:
    with pytest.raises(ValueError, match="expected signum to be a signal number, got: -1"):
        _clane.parent_death_signal(-1)
    with pytest.raises(TypeError):
        _clane.parent_death_signal("9")
