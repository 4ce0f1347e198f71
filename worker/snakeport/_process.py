"""The operating-system process: protocol fds, pipe sizes, malloc, memory use, exiting.

What the worker does to and asks of its own process, apart from serving frames: taking the
protocol fds away from stdio (:func:`claim_stdio`), growing the protocol pipes
(:func:`grow_pipe`), keeping freed memory for large frames (:func:`tune_malloc`), its
resident memory for ``stats`` (:func:`rss_bytes`), dying with its parent
(:func:`die_with_parent`) and ending the process at once (:func:`exit_now`, :func:`fatal`:
every exit goes through ``os._exit``, so no thread is joined).
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import stat
import sys

# The C half of ``signal``: ``signal`` itself builds three enums at import (~0.6 ms of every
# worker's start) for the one constant needed here.
from _signal import SIGKILL

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = [
    "claim_stdio",
    "die_with_parent",
    "parent_of",
    "grow_pipe",
    "tune_malloc",
    "rss_bytes",
    "exit_now",
    "fatal",
    "F_SETPIPE_SZ",
    "PIPE_SIZE",
]

log = logging.getLogger("snakeport")

#: ``fcntl`` command that sets a pipe's capacity (Linux).
F_SETPIPE_SZ: int = getattr(fcntl, "F_SETPIPE_SZ", 1031)

#: Capacity requested for the protocol pipes.
PIPE_SIZE = 1 << 20

_process: Any = None


def rss_bytes() -> int:
    """Return this process's resident set size in bytes (0 when it cannot be read).

    ``psutil`` is imported on the first call only (the first ``stats`` request): it costs
    ~20 ms of the worker's start otherwise.
    """
    global _process
    import psutil

    try:
        if _process is None:
            _process = psutil.Process()
        return _process.memory_info().rss
    except psutil.Error:  # pragma: no cover - /proc unreadable
        return 0


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def exit_now(status: int) -> NoReturn:
    """Flush the logs, stderr and stdout and end the process now, joining no thread.

    Args:
        status: The exit status.
    """
    logging.shutdown()
    _flush_stdio()
    os._exit(status)


def fatal(what: str) -> NoReturn:
    """Log the exception being handled and end the process with status 1.

    Args:
        what: What failed, for the log line.
    """
    log.critical("%s; exiting", what, exc_info=True)
    exit_now(1)


#: ``prctl`` option: the signal the kernel sends this process when its parent exits (Linux).
PR_SET_PDEATHSIG = 1

#: How many ancestors :func:`die_with_parent` looks through for the VM (the interpreter may
#: be started through wrappers that do not ``exec``).
_MAX_ANCESTORS = 16


def parent_of(pid: int) -> int | None:
    """Return the parent pid of process ``pid`` from ``/proc`` (Linux).

    Args:
        pid: A process id.

    Returns:
        Its parent's pid, or ``None`` when it cannot be read (no such process, no ``/proc``).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        return int(stat_line[stat_line.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _descends_from(ancestor: int, pid: int) -> bool | None:
    """Whether ``ancestor`` is ``pid`` or one of its ancestors (``None``: unknown)."""
    for _ in range(_MAX_ANCESTORS):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        parent = parent_of(pid)
        if parent is None:
            return None
        pid = parent
    return None


def _parent_death_signal(signum: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, signum)`` (Linux): whether it was set.

    Done by the C lane's module when it is built, else through ``ctypes`` (which, with
    libffi, would cost every worker some 0.35 MB of memory if imported at every start).
    """
    try:
        from snakeport._clane import parent_death_signal
    except ImportError:  # the C lane's module is not built
        pass
    else:
        return parent_death_signal(signum)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False


def die_with_parent(parent: int, vm_pid: int | None = None) -> bool:
    """Have the kernel kill this process (SIGKILL) when its parent exits; exit now if it has.

    ``PR_SET_PDEATHSIG`` (Linux): the kernel signals this process when the thread that
    started it exits, even while this process holds the GIL in C code (where the watchdog
    thread, which needs the GIL, cannot run). Under an Erlang port the parent is the VM's
    ``erl_child_setup``, which exits when the VM dies, even by ``kill -9``.

    The parent may have died before the signal was asked for (the parent-pid race): then
    this process was already handed to another parent (init or a subreaper) and will never
    get it. So, once the signal is set, the parent must still be ``parent`` (the parent
    seen before anything slow ran) and, when ``vm_pid`` is given, the VM must be the parent
    or an ancestor of it; otherwise the process exits now (status 0, logged at INFO).

    Args:
        parent: The parent pid seen at the start of the process.
        vm_pid: The OS pid of the VM that started the worker (``--vm-pid``), if known.

    Returns:
        Whether the kernel will send the signal (False outside Linux or when ``prctl``
        failed: the watchdog still ends the worker within a second when it can run).
    """
    armed = False
    if sys.platform.startswith("linux"):
        armed = _parent_death_signal(SIGKILL)
    now = os.getppid()
    gone = now != parent or parent == 1
    if not gone and vm_pid is not None:
        gone = _descends_from(vm_pid, parent) is False
    if gone:
        log.info("the process that started this worker is gone (parent %d, now %d); exiting", parent, now)
        exit_now(0)
    return armed


def claim_stdio() -> tuple[int, int]:
    """Keep private copies of fds 0 and 1 for frames; point fd 1 at stderr, fd 0 at /dev/null.

    After this, ``print()``, C code writing to fd 1 and child processes write to stderr and
    read an empty stdin, so nothing can corrupt or steal a frame. ``sys.stdout`` becomes a
    line-buffered writer on the new fd 1, ``sys.stdin`` reads ``/dev/null``.

    Returns:
        ``(in_fd, out_fd)``: the private, non-inheritable protocol fds.
    """
    _flush_stdio()
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    for fd in (in_fd, out_fd):  # the reader and the writer expect blocking I/O
        try:
            os.set_blocking(fd, True)
        except OSError:  # pragma: no cover - not settable on this kind of fd
            pass
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr: send fd 1 to /dev/null instead
        null_out = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null_out, 1)
        os.close(null_out)
    null_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_in, 0)
    os.close(null_in)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    return in_fd, out_fd


def grow_pipe(fd: int, size: int = PIPE_SIZE) -> bool:
    """Raise a pipe's capacity with ``F_SETPIPE_SZ`` when ``fd`` is a pipe and it is allowed.

    Args:
        fd: A file descriptor.
        size: The capacity wanted, in bytes.

    Returns:
        Whether the capacity was set.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:  # EPERM above /proc/sys/fs/pipe-max-size, EBUSY, not Linux, ...
        return False
    return True


#: glibc ``mallopt`` parameters (malloc.h) and the values set by :func:`tune_malloc`.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_KEEP_FREED = 256 * 1024 * 1024
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit

#: Whether :func:`tune_malloc` ran (read by the server before each large frame).
malloc_tuned = False


def tune_malloc() -> bool:
    """Tell glibc to keep freed memory instead of returning it to the kernel at once.

    Large frames (megabytes) are otherwise served from fresh ``mmap``/heap pages for every
    request, and the page faults of those pages cost more than the copies themselves. Called
    once, when the first large frame arrives (so small-only workers do not import ctypes).
    Does nothing outside glibc; failures are ignored.

    Returns:
        Whether the settings were applied.
    """
    global malloc_tuned
    if malloc_tuned:
        return False
    malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        ok = mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED) and ok
        ok = mallopt(_M_TOP_PAD, 16 * 1024 * 1024) and ok
        return bool(ok)
    except Exception:  # noqa: BLE001 - not glibc, no ctypes, ...: keep the defaults
        return False
