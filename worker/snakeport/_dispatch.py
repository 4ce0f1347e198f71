"""The op handlers: one decoded request in, the terms to send (or a job to run) out.

:meth:`Dispatcher.receive` looks the operation up in its table and calls its handler.
Control operations (``ping``, ``stats``, ``session_info``, ``open_session``,
``release_ref``, ``release_session``, ``expire_session``, ``cancel``, ``shutdown``) are
answered at once with a list of terms to send. The Python operations (``call``, ``method``,
``getattr``, ``setattr``, ``eval``, and the stream operations ``iter_next`` and
``iter_close``) are checked, their session and refs resolved (the session counts the job as
in flight until :meth:`Dispatcher.run_job` checks it in), and they come back as a
:class:`~snakeport._jobs.Job`: the scheduler runs it (inline on the thread that read it, or
on a call thread) with :meth:`Dispatcher.run_job`, which returns the terms to send (the
reply, preceded by any ``refs_evicted`` or fill ``warning`` event). A ``call`` or ``method``
with ``batch_size`` starts a stream: its code is followed by ``iter()`` and a first batch
(:mod:`snakeport._streams`), and its reply is a batch. A job whose code returned an
awaitable is answered later, from the event loop (:meth:`Dispatcher.finish_awaited`).
``tool_reply`` (the VM's answer to a tool call of a running job, :mod:`snakeport._tools`) is
not a request: it is handed to the waiting thread and never answered.

The handlers themselves read no file descriptor, start no thread and run no user code (the
one exception: a ref that the VM put in a set or a map key is hashed when the arguments are
built, see :func:`~snakeport._tagged.substitute`; :meth:`Dispatcher.receive` answers
whatever that raises, ``BaseException`` included, with ``bad_request``): the code of a call runs in
:meth:`~snakeport._jobs.Jobs.run` (:mod:`snakeport._jobs`, the one part that is not
I/O-free, and the one that starts a thread, to retry a cancel), the reply terms are built by :mod:`snakeport._protocol`, the
fields checked by :mod:`snakeport._requests`, tagged terms handled by
:mod:`snakeport._tagged`, results marshalled by :mod:`snakeport._marshal`, sessions and
refs kept by :mod:`snakeport._sessions`. The process's resident memory for ``stats`` is
read by a function the server passes in (``rss``).
"""

from __future__ import annotations

import time
from functools import partial

from snakeport import _limits as limits
from snakeport import _protocol as P
from snakeport import _requests as R
from snakeport._jobs import (
    AWAITING,
    AttributeJob,
    CANCELLED,
    DONE,
    FAILED,
    Failure,
    Job,
    Jobs,
    failure_reply,
    import_module,
    lookup,
)
from snakeport._marshal import DATA, marshal, marshal_batch
from snakeport._protocol import A_RELEASED, OK, PONG, REPLY, cancelled_reply, error_reply, request_error_reply
from snakeport._sessions import RefHandle, Session, SessionTable
from snakeport._blobs import BlobReply
from snakeport._streams import Batch, close_iterator, first_batch, next_batch
from snakeport._tagged import TagContext, realize, substitute
from snakeport.errors import NotAllowed, RequestError
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

    from snakeport._allow import AllowList

    Term = Any

__all__ = ["Dispatcher", "Outcome"]

#: What :meth:`Dispatcher.receive` returns: terms to send now, or a job to run.
Outcome = list | Job


_AUTO, _VALUE = R.AUTO, R.VALUE

#: The types of a valid session id (``R.session_id``), for the handlers' fast paths.
_SESSION_ID_TYPES = frozenset((str, bytes))


def _no_rss() -> int:
    return 0


class Dispatcher:
    """Handles decoded requests; keeps the session table and the jobs in flight.

    Args:
        table: The worker's sessions and refs.
        jobs: The jobs in flight (default: a new :class:`~snakeport._jobs.Jobs`).
        max_depth: Deepest container nesting marshalled as data; deeper parts become refs
            (``result => auto``) or fail with ``not_encodable`` (``result => value``).
        max_frame_bytes: Stated in the ready frame.
        threads: How many calls run at once, stated in the ready frame and in ``stats``.
        rss: Returns the process's resident set size in bytes, for ``stats`` (the server
            passes one; default: always 0).
        tools: The worker's Elixir tool calls (:class:`~snakeport._tools.ToolCalls`), which
            get the ``tool_reply`` frames; ``None``: none (a ``tool_reply`` is then a
            ``protocol_error`` event).
        allow: The allow-list (``--allow``), or ``None`` (every name may be called): names
            are checked before anything is imported, and the objects reached while the
            job runs (see :mod:`snakeport._allow`).

    Raises:
        ValueError: A limit is out of range (the rules of :mod:`snakeport._limits`).
    """

    # Slots: the C lane reads ``shutting_down`` and counts ``requests`` in place (a slot
    # costs it a fraction of a generic attribute access; see slot_of in _clane.c).
    __slots__ = (
        "_handlers",
        "_rss",
        "_run",
        "_started",
        "allow",
        "fast_path",
        "jobs",
        "max_depth",
        "max_frame_bytes",
        "requests",
        "shutting_down",
        "table",
        "threads",
        "tools",
    )

    def __init__(
        self,
        table: SessionTable,
        *,
        jobs: Jobs | None = None,
        max_depth: int = limits.MAX_DEPTH.default,
        max_frame_bytes: int = limits.MAX_FRAME_BYTES.default,
        threads: int = limits.THREADS.default,
        rss: Callable[[], int] = _no_rss,
        tools: Any = None,
        allow: AllowList | None = None,
    ) -> None:
        self.table = table
        self.allow = allow
        self.jobs = jobs if jobs is not None else Jobs()
        self.max_depth = limits.MAX_DEPTH.check(max_depth)
        self.max_frame_bytes = limits.MAX_FRAME_BYTES.check(max_frame_bytes)
        self.threads = limits.THREADS.check(threads)
        self._rss = rss
        self.tools = tools
        self.jobs.tools = tools
        self._run = self.jobs.run
        #: Requests received so far (``stats``).
        self.requests = 0
        #: Set by ``shutdown``; later Python operations fail with ``shutting_down``.
        self.shutting_down = False
        #: Whether the server runs plain calls on the C lane (``stats``; set by the server).
        self.fast_path = False
        self._started = time.monotonic()
        self._handlers: dict[Atom, Callable[[tuple, int, TagContext | None], Outcome]] = {
            Atom("call"): self._op_call,
            Atom("method"): self._op_method,
            Atom("getattr"): self._op_getattr,
            Atom("setattr"): self._op_setattr,
            Atom("eval"): self._op_eval,
            Atom("iter_next"): self._op_iter_next,
            Atom("iter_close"): self._op_iter_close,
            Atom("expire_session"): self._op_expire_session,
            P.TOOL_REPLY: self._op_tool_reply,
            Atom("open_session"): self._op_open_session,
            Atom("release_ref"): self._op_release_ref,
            Atom("release_session"): self._op_release_session,
            Atom("session_info"): self._op_session_info,
            Atom("stats"): self._op_stats,
            Atom("ping"): self._op_ping,
            Atom("cancel"): self._op_cancel,
            Atom("shutdown"): self._op_shutdown,
        }

    # ------------------------------------------------------------ entry points

    def ready_term(self) -> tuple:
        """Return the ready frame's term, ``{snakeport_ready, 1, Info}``."""
        return P.ready_term(
            max_frame_bytes=self.max_frame_bytes,
            threads=self.threads,
            default_max_refs=self.table.default_max_refs,
            default_ttl_seconds=self.table.default_ttl_seconds,
        )

    def receive(self, term: Term, ctx: TagContext | None = None) -> Outcome:
        """Handle one decoded request.

        Args:
            term: The decoded frame.
            ctx: The :class:`~snakeport._tagged.TagContext` the frame was decoded with
                (``None`` when the term holds no tagged tuples, or they were left as tuples).

        Returns:
            Either a list of terms to send now, or a :class:`~snakeport._jobs.Job` to run
            with :meth:`run_job` (the caller must run every job it gets exactly once).
        """
        self.requests += 1
        if type(term) is not tuple or len(term) < 2:
            return [P.protocol_error_event("bad_request", f"expected a request tuple {{Op, Id, ...}}, got: {R.short(term)}")]
        op, request_id = term[0], term[1]
        if type(request_id) is not int or request_id < 0:
            return [P.protocol_error_event("bad_request", f"expected the request id to be a non-negative integer, got: {R.short(request_id)}")]
        handler = self._handlers.get(op) if type(op) is Atom else None
        if handler is None:
            return [error_reply(request_id, "bad_request", f"unknown operation: {R.short(op)}")]
        if ctx is not None and ctx.error is not None:
            if handler == self._op_tool_reply:  # never answered: its waiter gets the error
                return self._tool_reply_failed(request_id, ctx.error)
            return [error_reply(request_id, "bad_request", ctx.error)]
        try:
            return handler(term, request_id, ctx)
        except RequestError as err:
            return [request_error_reply(request_id, err)]
        except BaseException as exc:  # noqa: BLE001 - a resolved ref's __hash__ or __eq__ (a
            # set element or map key) may raise anything, SystemExit included, or the object
            # may be unhashable: this request fails, the reader thread lives on
            return [error_reply(request_id, "bad_request", f"invalid request: {P.safe_str(exc)}", type_=P.type_name(type(exc)))]

    def run_job(self, job: Job) -> list:
        """Run a job on the current thread and return the terms to send.

        Args:
            job: A job returned by :meth:`receive`.

        Returns:
            The terms to send (possibly a ``refs_evicted`` event and a fill ``warning``,
            then the reply), or ``[]`` when the job was cancelled while queued (its reply
            was given by the cancel).
        """
        result = None
        try:
            result = self._run(job)
            if result is AWAITING:
                return []  # the event loop answers (finish_awaited), and checks it in then
            return self._finish(job, result)
        finally:
            if result is not AWAITING:
                self.table.checkin(job.session, job.ref_ids)

    def finish_awaited(self, job: Job, result: Any) -> list:
        """The terms of a job whose awaitable is done (its final state set), on the loop
        thread; checks the job's session in.

        Args:
            job: The job.
            result: The awaited value (final state ``DONE``), else ``None``.

        Returns:
            The terms to send, as :meth:`run_job`.
        """
        return self.complete(job, result)

    def complete(self, job: Job, result: Any) -> list:
        """The terms of a job whose code ran and whose final state is set (the end of
        :meth:`run_job`; an awaited job); checks the job's session in.

        Args:
            job: The job.
            result: Its result (final state ``DONE``), else ``None``.

        Returns:
            The terms to send, as :meth:`run_job`.
        """
        try:
            return self._finish(job, result)
        finally:
            self.table.checkin(job.session, job.ref_ids)

    def finish_lane(self, job: Job, result: Any) -> list:
        """The terms of a job whose code the C lane ran (:mod:`snakeport._lane`) and whose
        final state is set, as :meth:`complete`, but the session is not checked in: the lane
        does it, on every path, right after this returns or raises.

        Args:
            job: The job.
            result: Its result (final state ``DONE``), else ``None``.

        Returns:
            The terms to send, as :meth:`run_job`.
        """
        return self._finish(job, result)

    def _finish(self, job: Job, result: Any) -> list:
        """The terms of a job that ran (see :meth:`run_job`)."""
        if job.state != DONE:
            return self._unfinished(job)
        if type(result) is Batch:  # (our own type: an identity test runs no user code)
            return self._finish_batch(job, result)
        try:
            # Looking a type up in DATA hashes it: a metaclass's __hash__ or __eq__ is user
            # code, the one that marshalling can run.
            mode = job.mode
            if (mode == _AUTO or mode == _VALUE) and type(result) in DATA:
                return [(REPLY, job.request_id, OK, result)]
            stored = marshal(self.table, job.session, result, job.mode, self.max_depth)
        except RequestError as err:
            return [request_error_reply(job.request_id, err)]
        except BaseException as exc:  # noqa: BLE001 - that user code may raise anything
            return [failure_reply(job.request_id, exc, "the result could not be read: ")]
        return self._reply(job, stored, stored.value)

    def _finish_batch(self, job: Job, batch: Batch) -> list:
        """The terms of a stream batch: its items, and the iterator's ref on a first batch
        that is not the last; an exhausted iterator's ref (``iter_next``) is released."""
        first = batch.first
        try:
            stored = marshal_batch(
                self.table, job.session, batch.items, batch.iterator, job.mode, self.max_depth
            )
        except RequestError as err:
            return [request_error_reply(job.request_id, err)]
        except BaseException as exc:  # noqa: BLE001 - converting items runs user code
            return [failure_reply(job.request_id, exc, "the result could not be read: ")]
        items, ref = stored.value
        error = None
        if batch.error is not None:
            error = failure_reply(job.request_id, batch.error)[3]
        if batch.done and not first:
            self.table.discard(job.session, job.ref_ids)
        value = P.batch_value(items, batch.done, ref=ref, error=error, first=first)
        return self._reply(job, stored, value)

    def _reply(self, job: Job, stored: Any, value: Any) -> list:
        """The reply of a marshalled result, after its ``refs_evicted``/fill events."""
        reply = (REPLY, job.request_id, OK, value)
        if stored.blobs:
            reply = BlobReply(reply)
        if not stored.new_ref_ids:
            return [reply]
        job.new_refs = stored.new_ref_ids
        sid = job.session.session_id
        out = []
        if stored.evicted:
            out.append(P.evicted_event(sid, stored.evicted))
        if stored.fill is not None:
            out.append(P.fill_warning_event(sid, *stored.fill))
        out.append(reply)
        return out

    def _unfinished(self, job: Job) -> list:
        """The terms of a job that gave no result: cancelled, interrupted or failed."""
        if job.state == CANCELLED:
            return []  # cancelled while queued: the cancel gave its reply
        if job.state == FAILED:
            failure, job.failure = job.failure, None
            reply = failure_reply(job.request_id, failure)  # type: ignore[arg-type]
            del failure  # drop the traceback's frames now
            return [reply]
        return [cancelled_reply(job.request_id)]  # INTERRUPTED

    def unsent(self, job: Job) -> int:
        """Release the new refs of a job whose reply could not be sent (e.g. not encodable).

        Args:
            job: The job.

        Returns:
            How many refs were released.
        """
        ids, job.new_refs = job.new_refs, []
        return self.table.discard(job.session, ids) if ids else 0

    def cancel_all(self) -> list:
        """Cancel every queued and running job (for ``shutdown``).

        Returns:
            The ``cancelled`` replies of the queued jobs (running ones reply when they end).
        """
        return [cancelled_reply(rid) for rid in self.jobs.cancel_all()]

    @property
    def in_flight(self) -> int:
        """Jobs queued or running."""
        return self.jobs.in_flight

    def sweep(self) -> list:
        """Prune refs idle past their session's TTL.

        Returns:
            One ``refs_pruned`` event per session that lost refs.
        """
        return [P.pruned_event(sid, ids) for sid, ids in self.table.sweep()]

    # ------------------------------------------------------------- Python ops

    def _op_call(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        if len(term) == 8:
            _, _, sid, module, function, args, kwargs, opts = term
        else:
            sid = module = function = args = kwargs = opts = None
        batch = None
        if (
            sid.__class__ in _SESSION_ID_TYPES
            and module.__class__ is str
            and function.__class__ is str
            and _plain_tail(args, kwargs, opts)
        ):
            mode = R.AUTO  # the common request, valid as is: what the checks below would give
        else:
            R.arity(term, 8)
            sid = R.session_id(term[2])
            module = R.name(term[3], "Module")
            function = R.name(term[4], "Function")
            args = R.args(term[5])
            kwargs = R.kwargs(term[6])
            mode = R.mode(term[7])
            batch = R.batch(term[7])
        allow = self.allow
        if allow is not None:
            allow.check_name(module, function)  # before anything is imported
        handles = ctx.handles if ctx is not None else ()
        session = self._checkout(sid, handles)
        if handles:
            try:
                args = substitute(args)
                kwargs = substitute(kwargs)
            except BaseException:
                self.table.checkin(session)
                raise

        if allow is None and not (ctx is not None and ctx.deferred):

            def fn() -> Any:  # the common case
                return lookup(import_module(module), function)(*args, **kwargs)

        else:
            # Arrays, frames, extension values (deferred) are built on the call's thread,
            # after the import (a module may register the decoders of its extension values).
            deferred = ctx is not None and ctx.deferred

            def fn() -> Any:
                target = lookup(import_module(module), function, allow, module)
                if deferred:
                    return target(*realize(args), **realize(kwargs))
                return target(*args, **kwargs)

        if batch is not None:
            fn = _streaming(fn, batch)
        return self.jobs.add(Job(rid, session, fn, mode, _ref_ids(handles)))

    def _op_method(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        if len(term) == 8:
            _, _, sid, target, name, args, kwargs, opts = term
        else:
            sid = target = name = args = kwargs = opts = None
        batch = None
        if (
            sid.__class__ in _SESSION_ID_TYPES
            and target.__class__ is RefHandle
            and name.__class__ is str
            and _plain_tail(args, kwargs, opts)
        ):
            mode = R.AUTO  # the common request, valid as is: what the checks below would give
        else:
            R.arity(term, 8)
            sid = R.session_id(term[2])
            target = term[3]
            if type(target) is not RefHandle:
                raise R.bad(f"expected Ref to be a ref term, got: {R.short(target)}")
            name = R.name(term[4], "Name")
            args = R.args(term[5])
            kwargs = R.kwargs(term[6])
            mode = R.mode(term[7])
            batch = R.batch(term[7])
        allow = self.allow
        if allow is not None:
            allow.check_path(name, "name")
        handles: Any = (target,) if ctx is None else ctx.handles
        session = self._checkout(sid, handles)
        obj = target.obj
        if allow is not None:
            self._check_target(session, obj)
        if len(handles) > 1:
            try:
                args = substitute(args)
                kwargs = substitute(kwargs)
            except BaseException:
                self.table.checkin(session)
                raise
            ref_ids = _ref_ids(handles)
        else:
            ref_ids = (target.ref_id,)  # (the one handle of the frame is the target)

        # The job's code: a partial, not a closure (no cells for the handler's variables).
        fn: Callable[[], Any] = partial(
            _call_method, obj, name, args, kwargs, allow, ctx is not None and ctx.deferred
        )
        if batch is not None:
            fn = _streaming(fn, batch)
        return self.jobs.add(Job(rid, session, fn, mode, ref_ids))

    def _op_iter_next(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 5)
        sid = R.session_id(term[2])
        target = term[3]
        if type(target) is not RefHandle:
            raise R.bad(f"expected Ref to be a ref term, got: {R.short(target)}")
        mode = R.mode(term[4])
        count, size = R.batch(term[4]) or (R.DEFAULT_BATCH_SIZE, R.DEFAULT_BATCH_BYTES)
        session = self._checkout(sid, [target])
        obj = target.obj

        def fn() -> Any:
            if iter(obj) is not obj:  # an iterable that is not an iterator would restart
                raise TypeError(f"'{P.type_name(type(obj))}' object is not an iterator")
            return next_batch(obj, count, size)

        return self.jobs.add(Job(rid, session, fn, mode, (target.ref_id,)))

    def _op_iter_close(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 4)
        sid = R.session_id(term[2])
        target = term[3]
        if type(target) is not RefHandle:
            raise R.bad(f"expected Ref to be a ref term, got: {R.short(target)}")
        session = self._checkout(sid, ())  # a ref that is gone is answered, not an error
        table = self.table

        def fn() -> Any:
            try:
                found, obj = table.take_ref(sid, target)
            except RequestError as err:
                failure = Failure(err.reason, err)
                failure.details = err.details
                raise failure from None
            if found:
                close_iterator(obj)
            return {A_RELEASED: found}

        return self.jobs.add(Job(rid, session, fn, R.VALUE, ()))

    def _op_getattr(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 6)
        sid = R.session_id(term[2])
        target = term[3]
        name = R.name(term[4], "Name")
        mode = R.mode(term[5])
        allow = self.allow
        if type(target) is RefHandle:
            if allow is not None:
                allow.check_path(name, "name")
            session = self._checkout(sid, (target,))
            obj = target.obj
            ref_ids: Any = (target.ref_id,)
            if allow is not None:
                self._check_target(session, obj)

            def fn() -> Any:
                return lookup(obj, name, allow)

        elif type(target) is tuple and len(target) == 2 and target[0] == P.MODULE and type(target[0]) is Atom:
            module = R.name(target[1], "ModuleName")
            if allow is not None:
                allow.check_name(module, name)  # before anything is imported
            session = self._checkout(sid, ())
            ref_ids = ()

            def fn() -> Any:
                return lookup(import_module(module), name, allow, module)

        else:
            raise R.bad(f"expected Target to be a ref term or {{module, Name}}, got: {R.short(target)}")
        return self.jobs.add(AttributeJob(rid, session, fn, mode, ref_ids))

    def _op_setattr(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 7)
        sid = R.session_id(term[2])
        target = term[3]
        if type(target) is not RefHandle:
            raise R.bad(f"expected Ref to be a ref term, got: {R.short(target)}")
        name = R.name(term[4], "Name")
        value = term[5]
        R.mode(term[6])
        allow = self.allow
        if allow is not None:
            allow.check_path(name, "name")
        handles = ctx.handles if ctx is not None else [target]
        session = self._checkout(sid, handles)
        obj = target.obj
        if allow is not None:
            self._check_target(session, obj)
        if len(handles) > 1:
            try:
                value = substitute(value)
            except BaseException:
                self.table.checkin(session)
                raise
        head, _, last = name.rpartition(".")
        deferred = ctx is not None and ctx.deferred

        def fn() -> Any:
            owner = lookup(obj, head, allow) if head else obj
            built = realize(value) if deferred else value
            try:
                setattr(owner, last, built)
            except AttributeError as exc:
                raise Failure("attribute_error", exc) from None
            return None

        return self.jobs.add(AttributeJob(rid, session, fn, R.VALUE, _ref_ids(handles)))

    def _op_eval(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 6)
        sid = R.session_id(term[2])
        code = R.code(term[3])
        bindings = R.bindings(term[4])
        mode = R.mode(term[5])
        if self.allow is not None:
            raise NotAllowed("eval is not allowed: the worker has an allow-list (--allow), and eval runs any code")
        handles = ctx.handles if ctx is not None else ()
        session = self._checkout(sid, handles)
        if handles:
            try:
                bindings = substitute(bindings)
            except BaseException:
                self.table.checkin(session)
                raise

        deferred = ctx is not None and ctx.deferred
        from snakeport._eval import evaluate  # imported by the first eval: most workers never eval

        def fn() -> Any:
            return evaluate(code, realize(bindings) if deferred else bindings)

        return self.jobs.add(Job(rid, session, fn, mode, _ref_ids(handles)))

    def _check_target(self, session: Session, obj: Any) -> None:
        """Refuse a ref's object that the allow-list does not allow, checking the session in.

        Raises:
            NotAllowed: ``obj`` is a module no entry names, a frame or a code object.
        """
        try:
            self.allow.check_object(obj)  # type: ignore[union-attr]
        except BaseException:
            self.table.checkin(session)
            raise

    def _checkout(self, sid: str | bytes, handles: Any) -> Session:
        """The open session of a Python operation, with its ref terms resolved.

        The session counts a job in flight: the caller must check it in (the job does, in
        :meth:`run_job`; a handler that fails after this checks it in itself).

        Raises:
            RequestError: ``shutting_down``, ``session_not_found`` (never opened or
                released: nothing is created), or a ref error.
        """
        if self.shutting_down:
            raise RequestError("shutting_down", "the worker is shutting down")
        return self.table.checkout(sid, handles)

    # ------------------------------------------------------------ control ops

    def _op_open_session(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 4)
        sid = R.session_id(term[2])
        kw = R.session_options(term[3], ctx.restore if ctx is not None else _as_is)
        info, evicted = self.table.open_session(sid, **kw)
        out = []
        if evicted:
            out.append(P.evicted_event(sid, evicted))
        out.append((REPLY, rid, OK, P.info_term(info)))
        return out

    def _op_release_ref(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        if len(term) == 4 and term[2].__class__ in _SESSION_ID_TYPES and term[3].__class__ is RefHandle:
            sid, handle = term[2], term[3]  # valid as is: what the checks below would give
        else:
            R.arity(term, 4)
            sid = R.session_id(term[2])
            handle = term[3]
            if type(handle) is not RefHandle:
                raise R.bad(f"expected Ref to be a ref term, got: {R.short(handle)}")
        released = self.table.release_ref(sid, handle)
        return [(REPLY, rid, OK, {A_RELEASED: released})]

    def _op_release_session(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 3)
        sid = R.session_id(term[2])
        count = self.table.release_session(sid)
        # Its queued jobs are dropped (answered `cancelled` now) and its running ones
        # cancelled (they answer when they end); the release is answered at once.
        out: list = [cancelled_reply(job_id) for job_id in self.jobs.cancel_session(sid)]
        out.append((REPLY, rid, OK, {A_RELEASED: count}))
        return out

    def _op_expire_session(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 4)
        sid = R.session_id(term[2])
        idle = R.idle_ms(term[3])
        expired, amount = self.table.expire_session(sid, idle / 1000)
        return [(REPLY, rid, OK, P.expire_reply_value(expired, amount))]

    def _op_tool_reply(self, term: tuple, call_id: int, ctx: TagContext | None) -> Outcome:
        # Never answered (the VM does not wait for an answer, and an error reply with this
        # id could reach one of the VM's own requests): the waiting thread gets the value or
        # the error, and a reply nobody waits for is dropped.
        if len(term) != 4 or type(term[2]) is not Atom or term[2] not in ("ok", "error"):
            return self._tool_reply_failed(call_id, f"expected {{tool_reply, CallId, ok | error, Value}}, got: {R.short(term)}")
        if self.tools is None:
            return [P.protocol_error_event("bad_request", "tool_reply received, but this worker makes no tool calls")]
        if ctx is None:
            self.tools.deliver(call_id, term[2] == "ok", term[3], [])
        else:
            self.tools.deliver(call_id, term[2] == "ok", term[3], ctx.handles, ctx.deferred)
        return []

    def _tool_reply_failed(self, call_id: int, message: str) -> list:
        """A ``tool_reply`` that cannot be used: its waiter gets ``bad_reply``."""
        if self.tools is not None and self.tools.fail(call_id, "bad_reply", message):
            return []
        return [P.protocol_error_event("bad_request", f"unusable tool_reply {call_id}: {message}")]

    def _op_session_info(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 3)
        info = self.table.session_info(R.session_id(term[2]))
        return [(REPLY, rid, OK, P.info_term(info))]

    def _op_stats(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 2)
        sessions, refs = self.table.counts()
        stats = P.stats_term(
            sessions=sessions,
            refs=refs,
            rss_bytes=self._rss(),
            uptime_ms=int((time.monotonic() - self._started) * 1000),
            threads=self.threads,
            in_flight=self.jobs.in_flight,
            requests=self.requests,
            fast_path=self.fast_path,
        )
        return [(REPLY, rid, OK, stats)]

    def _op_ping(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 2)
        return [(REPLY, rid, OK, PONG)]

    def _op_cancel(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 3)
        target = term[2]
        if type(target) is not int or target < 0:
            raise R.bad(f"expected TargetId to be a non-negative integer, got: {R.short(target)}")
        found, was_queued = self.jobs.cancel(target)
        out = [cancelled_reply(target)] if was_queued else []
        out.append((REPLY, rid, OK, {P.A_CANCELLED: found}))
        return out

    def _op_shutdown(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        R.arity(term, 2)
        self.shutting_down = True
        return [(REPLY, rid, OK, OK)]


def _plain_tail(args: Any, kwargs: Any, opts: Any) -> bool:
    """Whether a ``call``'s or ``method``'s Args, Kwargs and Options are those of the common
    request (a list, no keyword arguments, no options): what ``R.args``, ``R.kwargs``,
    ``R.mode`` and ``R.batch`` accept as they are, giving mode ``auto`` and no batch."""
    return (
        args.__class__ is list
        and kwargs.__class__ is dict
        and not kwargs
        and opts.__class__ is dict
        and not opts
    )


def _call_method(
    obj: Any, name: str, args: list, kwargs: dict, allow: AllowList | None, deferred: bool
) -> Any:
    """The code of a ``method`` job: ``obj.<name>(*args, **kwargs)``, the deferred
    arguments built first (see :func:`~snakeport._tagged.realize`)."""
    target = lookup(obj, name, allow)
    if deferred:
        return target(*realize(args), **realize(kwargs))
    return target(*args, **kwargs)


def _as_is(term: Any) -> Any:
    return term


def _streaming(fn: Callable[[], Any], batch: tuple[int, int]) -> Callable[[], Any]:
    """The code of a call that starts a stream: the call, then ``iter()`` and a first batch."""
    count, size = batch

    def stream() -> Any:
        return first_batch(fn(), count, size)

    return stream


def _ref_ids(handles: Any) -> Any:
    """The ref ids of a request's handles (refreshed when its job ends)."""
    return [h.ref_id for h in handles] if handles else ()

