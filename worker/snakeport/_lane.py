"""The C lane: the worker's most common request, run in C on the frame-reading thread.

The request is ``{call, Id, Session, Module, Function, Args, Kwargs, #{}}`` whose frame holds
no tagged term other than ``{'$snakeport_bytes', Binary}`` (no ref, array, set, ...) and
whose ``Kwargs`` keys are binaries or atoms: what ``Snakeport.call/4`` sends for plain
arguments, ``Snakeport.bytes/1`` ones among them, with or without ``kwargs:`` (given to the
call with ``str`` keys, as ``_requests.kwargs`` gives them; keyword arguments took a worker
~18 µs of CPU per call on the general path, ~7.5 in the lane, pinned, 2026-12-04; a
``Snakeport.bytes/1`` argument 16.5 against 7.1). The general path handles it with some
thirty Python calls (split, decode, dispatch, check out, register, place, run, marshal,
check in, encode); the lane (``snakeport._clane.Lane``, optional like the codec's
accelerator) takes the same steps on the same objects, under the same locks, in one C
function per frame, and answers a scalar result (``int``, ``float``, ``str``, ``bytes``,
``bool``, ``None``) itself (``bytes`` of a segment or more as
``_writer.segmented_reply`` gives them: its ``_Segments``, which ``FrameWriter.send``
writes), and a ``list``, ``tuple`` or ``dict`` that is plain data all through (exact scalars
and ``bytearray``, in such containers nested less deep than ``--max-depth``: what the
general path's marshalling keeps as it is; ``data_value`` in ``_clane.c``).

Frames come two ways: those the splitter's buffer holds (:meth:`Lane.run`, below), and a
large frame that the splitter assembled in a ``bytearray`` of its own (``Lane.take``, called
by the read loop with that event: the 1 MiB echo of ``Snakeport.bytes/1``). On a worker
with the lane, the splitter reads the first big binary of a large ``call`` frame straight
into its own ``bytes`` (a :class:`~snakeport._framing.Placed` event), which the decoder
gives as the value: the binary is never copied out of the frame (~18-30 µs less of the
worker's CPU per MiB, pinned, 2026-12-04: bench/PROFILE.md). A frame is
decoded with the general path's limits and, when its bytes hold the text ``$snakeport_``
(only ``$snakeport_bytes``, or a large frame, which is not scanned), with a tagged hook that
turns ``{'$snakeport_bytes', Binary}`` into its ``bytes`` as ``_tagged.TagContext`` does and
refuses any other tagged tuple: such a frame, a malformed ``$snakeport_bytes`` term among
them, is then decoded again by the general path, which answers it (``bad_request``).
It hands everything else to the general path at the point where that path takes it on, so
replies and side effects stay those of the general path:

- a frame that is not such a call, or is not valid, stays in the splitter (``run`` stops
  before it); a decoded call with options, with names that the allow-list refuses (its
  ``check_name``, whose passes the lane remembers), with a ``Kwargs`` key of another type
  (the general path's ``bad_request``), in an unknown session or on a worker shutting down
  comes back decoded, before anything was counted or checked out;
- a job the scheduler does not run inline (a call still running elsewhere) is queued with a
  :class:`PlainCall` as its code, which :meth:`~snakeport._jobs.Jobs.run` runs later;
- a job whose result is not plain data goes to :meth:`~snakeport._jobs.Jobs.end_lane`
  (awaitables), and one that failed, was cancelled or returned anything else is
  answered by :meth:`Server.finish_lane <snakeport._server.Server.finish_lane>` (marshalling,
  refs, error replies with tracebacks);
- so is a result whose reply the lane cannot encode, or whose reply frame would be larger
  than a ``{packet, 4}`` frame can be (:data:`~snakeport._limits.MAX_PACKET`, 4 GiB - 1):
  the lane drops its encoding and the general path encodes the reply again and answers
  ``not_encodable`` ("a frame of N bytes exceeds the {packet, 4} limit"), the session
  checked in as for any reply. (``--max-frame-bytes`` bounds the frames the worker reads,
  not its replies: a larger reply is the lane's own.)

Check-out and check-in: from the session's check-out on (its ``running`` count incremented),
every path checks it in exactly once: the lane itself (after a scalar reply is encoded, and
between ``Server.finish_lane``, which makes the general path's terms without checking in, and
their encoding, the order of ``Server._execute``), the event loop (an awaitable), or
:meth:`~snakeport._jobs.Jobs.run` (a queued job). When the worker itself fails after the
check-out and before that (an exception out of its own code), the lane checks
the session in and :meth:`Server.lane_failed <snakeport._server.Server.lane_failed>` answers
the request with an internal error, as ``Server._execute`` does, ends the job (out of
:data:`~snakeport._jobs.CURRENT` and the jobs table) and frees its slot: the worker serves
on. A failure once the session is checked in and the reply made (in
``Scheduler.inline_ended``) ends the frame loop, as it does on the general path.

An exception that the call left pending in its thread (``PyThreadState_SetAsyncExc`` from
C, a signal handler's) is the call's outcome, as on the general path, where it strikes
inside the call: the lane runs :func:`strike` right after the call.

What the lane does for a call is what the general path does: the session's last access and
``running`` count (check-out and check-in under the table's lock; the lane's critical
sections run C only with the GIL held, so it takes a lock only when another thread holds it:
``lock_enter`` in ``_clane.c`` says why that is the same), the job in the jobs
table (so ``cancel``, ``stats``, ``release_session`` and ``shutdown`` see it), the job named
in :data:`~snakeport._jobs.CURRENT` (``snakeport.context()``, tools, log attribution), the
scheduler's slot and inline state (so the stand-by takes the reading role over during a long
call), a cancel's pending exception cleared with the final state.

The splitter's buffer across user code: :meth:`Lane.run` reads its frames in place, in the
frame splitter's buffer (:meth:`~snakeport._framing.FrameSplitter.buffered`), and holds that
buffer and its read and write offsets while the calls it takes run. Invariant that makes it
safe: only the thread holding the reading role does anything with the splitter, and that
role moves only away from a thread inside an inline call (the scheduler's I4: the stand-by
takes it over, or ``Scheduler.suspend`` hands it over, for a tool call) and only to another
loop thread (waiting in ``Scheduler.standby``, or a new one), never back to a thread still
inside its call. So
when a call is over, either ``Scheduler.inline_ended`` says the thread still reads, and no
other thread has read, taken or moved (``get_buffer`` compacts) the splitter's bytes since
the lane took its view, or it says the thread no longer reads, and ``run`` returns
:data:`LOST` at once, without looking at the buffer again. The buffer is never resized. Each
frame is taken before its call runs, as :meth:`~snakeport._framing.FrameSplitter.consume`
takes it (the lane does it in C, on the splitter's slots), refusing a stale view
(``RuntimeError``: the frame loop fails rather than run a frame twice or read moved bytes).

What the lane does in C that Python code does on the general path, so that a change there
must change it too: the common case of :meth:`Scheduler.place
<snakeport._scheduler.Scheduler.place>` (no job holds the slot, the stand-by is not asleep)
and of :meth:`Scheduler.inline_ended <snakeport._scheduler.Scheduler.inline_ended>` (the
thread still reads, no job is queued or waits to resume, not draining), on the scheduler's
fields under its lock (their names are checked when the lane is built; every other case
calls the Python method); ``FrameSplitter.consume``; ``Job.__init__``, whose effect the
lane learns when it is built (``Lane.fast_jobs``; it calls ``Job`` when it cannot tell);
and, once it took every complete frame buffered (the read loop would send the held replies
next), :meth:`Scheduler.flush_held <snakeport._scheduler.Scheduler.flush_held>` and the
common case of :meth:`FrameWriter.send <snakeport._writer.FrameWriter.send>`: frames of
``bytes`` only, the writer's ``_write_lock`` free and its queue empty; they are written
with ``writev``, the GIL released, as ``FrameWriter._writev`` writes them (a partial write
goes on where it stopped, ``EINTR`` is retried once the signal handlers ran), a failure
goes to ``FrameWriter._failed`` and raises out of ``run`` (the frame loop ends, as when
``flush_held`` raises), and frames other threads queued meanwhile are sent after (every
other case calls ``FrameWriter.send``). The lock order holds: the scheduler's lock is let
go before the writer's is taken.

Then, asked to by the read loop (``run``'s ``read``), the lane does that loop's next turn
too when every byte buffered was consumed (no partial frame to move): the shutdown check
(shutting down: it returns), the spin policy's ``wait`` when no job holds a slot (not
called when the policy's clock is before its ``resume``, where ``wait`` returns at once:
backing off, or one CPU only), and the
read, which is :meth:`FrameSplitter.get_buffer
<snakeport._framing.FrameSplitter.get_buffer>`'s common case (every byte consumed: the
whole buffer from its start, ``_r`` and ``_w`` set to 0), ``readv`` (``read`` in C, the
GIL released, ``EINTR`` retried once the signal handlers ran) and
:meth:`~snakeport._framing.FrameSplitter.buffer_updated`, on the splitter's slots; then it
goes on with the bytes read. The end of the input or a failed read is the loop's: the lane
returns, and the loop's own read sees it again (a pipe's end stays, as does the error of a
closed or invalid fd). While it waits in ``read`` this thread runs no job, so the reading
role stays where it is (the scheduler's I4), as in the loop's own read.

The lane applies with one call thread (``--threads 1``, the default), with or without an
allow-list (``--allow``: its :class:`PlainCall` then follows the function's path with
``_jobs.lookup(..., allow, module)``, each object reached checked as on the general path),
when both C extensions are built and the codec uses its C half; ``SNAKEPORT_NO_LANE=1`` (or
``SNAKEPORT_PURE_PYTHON=1``) turns it off, as the tests do to compare the two paths.
"""

from __future__ import annotations

import os
import sys

from snakeport import _batch
from snakeport import _limits as limits
from snakeport import etf
from snakeport._jobs import AWAITING, CURRENT, DONE, FAILED, INTERRUPTED, QUEUED, RUNNING, Failure, Job
from snakeport._jobs import import_module, lookup
from snakeport._protocol import OK, REPLY
from snakeport._requests import AUTO
from snakeport._tagged import encode_default
from snakeport._writer import SEGMENT_BYTES, segmented_reply
from snakeport.errors import Cancelled
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["LOST", "PlainCall", "build", "available"]

#: Set to a non-empty value other than ``0`` to turn the lane off (read when a server starts).
NO_LANE_ENV = "SNAKEPORT_NO_LANE"

#: What :meth:`Lane.run` returns as its term when this thread lost the reading role.
LOST: Any = object()

try:
    from snakeport import _clane
except ImportError:  # not built: the general path only
    _clane = None  # type: ignore[assignment]

if _clane is not None and etf._cetf is not None:
    _clane._setup(sys.modules, import_module, lookup, Failure, Cancelled, etf._cetf._C_API, Atom)
    #: ``lookup(import_module(module), function)(*args, **kwargs)`` as an object (the code of
    #: lane jobs; ``kwargs`` a dict with ``str`` keys, or none).
    PlainCall: Any = _clane.PlainCall
else:
    PlainCall = None


def strike() -> None:
    """Nothing, in one bytecode: the lane calls it right after each call it runs.

    An exception that the call left pending in its thread (``PyThreadState_SetAsyncExc``
    from C, with no bytecode after it) strikes at the next bytecode the thread runs. On the
    general path that is inside the call, so it is the call's outcome; the lane runs C after
    the call, and without this the exception would strike in the worker's own code.
    """


def available() -> bool:
    """Whether the lane can run here: built, the codec's C half in use, not turned off."""
    return (
        PlainCall is not None
        and etf._c_encode is not None
        and os.environ.get(NO_LANE_ENV, "") in ("", "0")
    )


def build(server: Any) -> Any:
    """The lane of a :class:`~snakeport._server.Server`, or ``None`` when it does not apply.

    Args:
        server: The server (its dispatcher, session table, jobs, scheduler, limits).

    Returns:
        A ``snakeport._clane.Lane`` whose ``run(buffer, r, w, me, read=False)`` handles
        the lane's frames at the start of ``buffer[r:w]`` (the splitter's, see
        :meth:`~snakeport._framing.FrameSplitter.buffered`, held across the calls: see the
        module doc), telling the splitter each frame it takes (before it runs the call);
        sends the replies held when no complete frame is left that it did not take and,
        with ``read`` true, then reads the next bytes into the splitter's buffer and goes
        on with them, as long as the read loop would do nothing else first (the module
        doc); and returns ``(left, term)``: how many bytes are buffered after the frames it
        took, and ``None``, a decoded request for the general path, or :data:`LOST` when
        the calling thread no longer reads (the splitter is then the new reader's); and
        whose ``take(payload, me)`` handles one large frame, the splitter's ``bytearray``
        or :class:`~snakeport._framing.Placed` event (decoded with the placed binary as
        read, no copy of it made; a decode that did not take it counts as failed), as
        ``run`` handles a frame (its replies held, for the read loop to send) and
        returns ``None`` (taken), :data:`LOST`, a decoded request for the general path, or
        ``payload`` itself (not decoded: the general path's ``_handle``, which joins a
        placed frame again); or ``None``.
    """
    config = server.config
    dispatcher = server.dispatcher
    if not available() or config.threads != 1:
        return None
    table = server.table
    jobs = dispatcher.jobs
    sched = server._sched
    writer = server._writer
    spin = server._spin
    return _clane.Lane(
        dispatcher=dispatcher,
        sessions=table._sessions,
        table_acquire=table.lock.acquire,
        table_release=table.lock.release,
        table_locked=table.lock.locked,
        wall=table._wall,
        monotonic=table._monotonic,
        jobs=jobs,
        jobs_table=jobs._jobs,
        jobs_acquire=jobs.lock.acquire,
        jobs_release=jobs.lock.release,
        jobs_locked=jobs.lock.locked,
        interrupt=jobs._interrupt,
        end_lane=jobs.end_lane,
        job_type=Job,
        current=CURRENT,
        sched=sched,
        sched_acquire=sched.lock.acquire,
        sched_release=sched.lock.release,
        sched_locked=sched.lock.locked,
        place=sched.place,
        inline_ended=sched.inline_ended,
        run_inline=sched.run_inline,
        splitter=server._splitter,
        finish=server.finish_lane,
        payloads=server._job_payloads,
        internal_error=server.lane_failed,
        strike=strike,
        reply=REPLY,
        ok=OK,
        auto_mode=AUTO,
        no_refs=(),
        awaiting=AWAITING,
        queued=QUEUED,
        running=RUNNING,
        done=DONE,
        failed=FAILED,
        interrupted=INTERRUPTED,
        max_depth=server._max_depth,
        out_depth=server._max_out_depth,
        encode_default=encode_default,
        lost=LOST,
        expansion=etf.DEFAULT_MAX_EXPANSION,
        floor=etf._BUDGET_FLOOR,
        max_memory=2 * config.max_frame_bytes + etf._MEMORY_SLACK,
        segment_bytes=SEGMENT_BYTES,
        result_depth=dispatcher.max_depth,
        max_packet=limits.MAX_PACKET,
        max_frame=config.max_frame_bytes,
        writer=writer,
        write_acquire=writer._write_lock.acquire,
        write_release=writer._write_lock.release,
        send=writer.send,
        write_failed=writer._failed,
        send_queued=writer._send_queued,
        release_spliced=writer._release_spliced,
        out_fd=writer._fd,
        spin=spin.wait if spin is not None else None,
        spin_policy=spin,
        spin_clock=spin._clock if spin is not None else None,
        batch=server._batch,
        segmented_reply=segmented_reply,
        allow=dispatcher.allow,
        allowed={},
        batch_review=_batch.REVIEW_READS,
        in_fd=server._in_fd,
    )
