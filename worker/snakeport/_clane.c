/* snakeport._clane: the optional C lane of the worker's most common request (see _lane.py).
 *
 * The lane runs, on the frame-reading thread, the `call`s that the general path would run
 * inline with nothing to resolve: `{call, Id, Session, Module, Function, Args, Kwargs, #{}}`
 * whose frame holds no tagged term but {'$snakeport_bytes', Binary} (tag_scan, bytes_hook)
 * and whose Kwargs keys are binaries or atoms (str_keyed), in an open session, on a worker
 * with one thread (whose allow-list, if any, passes its names: allowed_name); in the
 * splitter's buffer (Lane.run) or a large frame of
 * its own (Lane.take; its first big binary read into its own bytes by the splitter when
 * the frame is a call: placeable, BytesFiller, and Placed in _cetf_api.h). It takes the same
 * steps as the general path (snakeport._dispatch, _jobs, _sessions, _scheduler), on the
 * same Python objects and under the same locks, in one C function per frame instead of
 * some thirty Python calls:
 *
 *   decode (snakeport._cetf's decode_term, called in C through its capsule _C_API, the frame
 *   read in place) -> the frame consumed
 *   (FrameSplitter.consume, lane_consume) -> check out the session (last access, `running`)
 *   -> a Job with a PlainCall as its code (made as Job.__init__ makes it: make_job),
 *   registered in the jobs table -> Scheduler.place (its common case: lane_place) -> the job
 *   RUNNING, named in CURRENT -> import (sys.modules), getattr, call -> the final state ->
 *   the reply of a scalar or plain-data result encoded here (snakeport._cetf.encode; a large
 *   bytes result in segments, segmented_reply) and the
 *   session checked in -> Scheduler.inline_ended (its common case: lane_ended); once every
 *   complete frame buffered is taken, the held replies sent (Scheduler.flush_held and
 *   FrameWriter.send, their common case: lane_flush, lane_send), then, when the read loop
 *   asks for it and would do nothing else first, its next read (lane_read), and on.
 *
 * Everything else is handed to the general path, at the point where the general path takes
 * it on: a frame that is not such a call stays in the buffer (or, once decoded, goes back as
 * the decoded term), an unknown session or a worker shutting down goes back before anything
 * was counted, and a job whose result is neither a scalar nor plain data, or that failed or
 * was cancelled, is finished by the general code (Server.finish_lane: marshalling, error
 * replies); a result that might be awaitable goes to Jobs.end_lane. A job the scheduler
 * queues runs its PlainCall on the general path later. So replies and every side effect are
 * those of the general path (tests compare the bytes).
 *
 * Once a session is checked out, every path checks it in exactly once (see lane_request),
 * also when the worker itself fails: recover() then answers with Server.lane_failed.
 *
 * Between the call's return and the job's final state no Python code runs on this thread,
 * so a cancel's asynchronous exception can only strike inside the user's code (where it is
 * the call's outcome, as in Jobs.run), and a pending one is cleared with the final state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <string.h>
#include <errno.h>
#include <limits.h>
#include <sys/uio.h> /* writev */
#include <sched.h>   /* sched_setscheduler (batch waits) */
#include <unistd.h>  /* read */

#include "_cetf_api.h" /* the codec's C entry points */
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h> /* T_OBJECT_EX, READONLY */
#define SLOT_OBJECT T_OBJECT_EX
#define SLOT_READONLY READONLY
#else
#define SLOT_OBJECT Py_T_OBJECT_EX
#define SLOT_READONLY Py_READONLY
#endif
#ifdef __linux__
#include <signal.h>
#include <sys/prctl.h>
#include <fcntl.h>     /* vmsplice (_GNU_SOURCE: pyconfig.h) */
#include <sys/ioctl.h> /* FIONREAD */
#endif

/* Objects set once by _setup() (strong references, never released). */
static PyObject *SysModules;    /* sys.modules */
static PyObject *ImportModule;  /* _jobs.import_module(name): the general import */
static PyObject *Lookup;        /* _jobs.lookup(obj, path): a dotted attribute path */
static PyObject *FailureType;   /* _jobs.Failure(reason, cause) */
static PyObject *CancelledType; /* errors.Cancelled */
static PyObject *AtomType;      /* snakeport.types.Atom (a str subclass): a Kwargs key */
static PyObject *CetfCapsule;   /* snakeport._cetf._C_API: keeps Cetf alive */
static const CetfApi *Cetf;     /* the codec's decode_term and encode, called directly */
static PyObject *One;           /* 1 */
static PyObject *BytesTag;      /* "$snakeport_bytes" */
static PyObject *BytesHook;     /* bytes_hook, as a function object (the codec's `tagged`) */
static PyObject *S_spec, *S_initializing, *S_attribute_error, *S_shutting_down, *S_requests,
    *S_last_access, *S_running, *S_active_at, *S_state, *S_thread, *S_fn, *S_failure,
    *S_cancel_sent, *S_cancel_deferred, *S_job, *S_jobs, *S_awaits, *S__r, *S__w, *S_reader,
    *S_held, *S__threads, *S__inline_seq, *S__inline_active, *S__standby_deep, *S__pending,
    *S__resuming, *S__draining, *S___dict__, *S__queue, *S__spliced, *S__buf, *S_resume, *S_engaged, *S_reads,
    *S_check_name;

#define READY() (SysModules != NULL)

/* getattr(obj, name) with a missing attribute as 0 (no exception made), 1 found, -1 error. */
#if PY_VERSION_HEX >= 0x030D0000
#define LOOKUP_ATTR PyObject_GetOptionalAttr
#else
#define LOOKUP_ATTR _PyObject_LookupAttr
#endif

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

/* ------------------------------------------------------------------------------------- */
/* PlainCall: the code of a lane job                                                      */
/* ------------------------------------------------------------------------------------- */

/* `lookup(import_module(module), function)(*args, **kwargs)`, the code of the general
 * path's common call (snakeport._dispatch), as an object: the lane runs it inline, and a job
 * that the scheduler queues runs it later through Jobs.run like any job's code. With an
 * allow-list, `lookup(import_module(module), function, allow, module)`: each object reached
 * checked by _jobs.lookup itself, as on the general path. */
typedef struct {
    PyObject_HEAD
    PyObject *module;   /* str */
    PyObject *function; /* str */
    PyObject *args;     /* list */
    PyObject *kwargs;   /* dict with str keys, or NULL: none */
    PyObject *allow;    /* the worker's AllowList, or NULL: none (every name may be called) */
} PlainCall;

static PyTypeObject PlainCallType;

/* The module named `name`: a module in sys.modules that is not being initialised, as
 * _jobs.import_module's fast path finds it; otherwise _jobs.import_module itself. */
static PyObject *
import_fast(PyObject *name)
{
    PyObject *mod = PyDict_GetItemWithError(SysModules, name); /* borrowed */
    if (mod == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (mod != NULL && PyModule_CheckExact(mod)) {
        Py_INCREF(mod);
        PyObject *spec = NULL, *init = NULL;
        int found = LOOKUP_ATTR(mod, S_spec, &spec);
        if (found > 0 && spec != Py_None) {
            found = LOOKUP_ATTR(spec, S_initializing, &init);
        }
        Py_XDECREF(spec);
        if (found < 0) {
            Py_DECREF(mod);
            return NULL;
        }
        int initializing = init == NULL ? 0 : PyObject_IsTrue(init);
        Py_XDECREF(init);
        if (initializing == 0) {
            return mod;
        }
        Py_DECREF(mod);
        if (initializing < 0) {
            return NULL;
        }
    }
    return PyObject_CallOneArg(ImportModule, name);
}

/* getattr(mod, function), an AttributeError raised as Failure("attribute_error", exc) from
 * None (as _jobs.lookup does); a dotted path through _jobs.lookup itself. */
static PyObject *
lookup_fast(PyObject *mod, PyObject *function)
{
    if (PyUnicode_FindChar(function, '.', 0, PyUnicode_GET_LENGTH(function), 1) != -1) {
        return PyObject_CallFunctionObjArgs(Lookup, mod, function, NULL);
    }
    PyObject *target = PyObject_GetAttr(mod, function);
    if (target != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return target;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyObject *failure = PyObject_CallFunctionObjArgs(FailureType, S_attribute_error, value, NULL);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (failure == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    PyException_SetCause(failure, NULL);   /* `from None` (sets __suppress_context__) */
    PyException_SetContext(failure, value); /* steals value */
    PyErr_SetObject((PyObject *)Py_TYPE(failure), failure);
    Py_DECREF(failure);
    return NULL;
}

static PyObject *
plain_call_invoke(PlainCall *self)
{
    PyObject *mod = import_fast(self->module);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *target = self->allow == NULL
                           ? lookup_fast(mod, self->function)
                           : PyObject_CallFunctionObjArgs(Lookup, mod, self->function, self->allow,
                                                          self->module, NULL);
    Py_DECREF(mod);
    if (target == NULL) {
        return NULL;
    }
    /* (The list is the request's own: nothing else can reach it while the call runs.
     * PyObject_VectorcallDict calls as `target(*args, **kwargs)` does.) */
    PyObject *result = PyObject_VectorcallDict(target, PySequence_Fast_ITEMS(self->args),
                                               PyList_GET_SIZE(self->args), self->kwargs);
    Py_DECREF(target);
    return result;
}

static PyObject *
plain_call_call(PlainCall *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "PlainCall() takes no arguments");
        return NULL;
    }
    return plain_call_invoke(self);
}

/* Kwargs whose every key is a str or an atom, with str keys (as _requests.kwargs makes
 * them: an atom key becomes its exact str, a later equal key replaces an earlier one); NULL
 * without an exception when a key is neither (the general path's bad_request). */
static PyObject *
str_keyed(PyObject *kwargs)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(kwargs, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) && Py_TYPE(key) != (PyTypeObject *)AtomType) {
            return NULL;
        }
    }
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    pos = 0;
    while (PyDict_Next(kwargs, &pos, &key, &value)) {
        PyObject *name = PyUnicode_FromObject(key); /* an exact str: the key, or a copy */
        if (name == NULL || PyDict_SetItem(out, name, value) < 0) {
            Py_XDECREF(name);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(name);
    }
    return out;
}

static PyObject *
plain_call_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *module, *function, *call_args, *call_kwargs = NULL, *allow = Py_None;
    static char *names[] = {"module", "function", "args", "kwargs", "allow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UUO!|O!O:PlainCall", names, &module,
                                     &function, &PyList_Type, &call_args, &PyDict_Type,
                                     &call_kwargs, &allow)) {
        return NULL;
    }
    if (call_kwargs != NULL) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(call_kwargs, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key)) {
                PyErr_Format(PyExc_TypeError, "PlainCall: expected kwargs keys to be str, got: %R",
                             key);
                return NULL;
            }
        }
    }
    PlainCall *self = (PlainCall *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(module);
    Py_INCREF(function);
    Py_INCREF(call_args);
    self->module = module;
    self->function = function;
    self->args = call_args;
    self->kwargs =
        call_kwargs != NULL && PyDict_GET_SIZE(call_kwargs) != 0 ? Py_NewRef(call_kwargs) : NULL;
    self->allow = allow != Py_None ? Py_NewRef(allow) : NULL;
    return (PyObject *)self;
}

/* `function` (a new reference to an exact str) interned: the attribute lookups of
 * getattr(module, name) then hit the type's attribute cache and compare the module dict's
 * key by identity, instead of hashing and comparing a new string each call. The codec gives
 * a repeated name as the same str (its short-string cache), so the last one's interned
 * equal is remembered (`memo`: {name, interned}, strong references) instead of looking it
 * up in the interned strings again. */
static PyObject *
intern_name(PyObject *function, PyObject **memo)
{
    if (function == memo[0]) {
        Py_DECREF(function);
        return Py_NewRef(memo[1]);
    }
    Py_XSETREF(memo[0], Py_NewRef(function));
    PyUnicode_InternInPlace(&function);
    Py_XSETREF(memo[1], Py_NewRef(function));
    return function;
}

/* `kwargs`: NULL (none), or a dict with str keys (a new reference: stolen); `allow`: the
 * AllowList or None. */
static PlainCall *
plain_call_make(PyObject *module, PyObject *function, PyObject *args, PyObject *kwargs,
                PyObject *allow, PyObject **memo)
{
    PlainCall *self = PyObject_GC_New(PlainCall, &PlainCallType);
    if (self == NULL) {
        Py_XDECREF(kwargs);
        return NULL;
    }
    Py_INCREF(module);
    Py_INCREF(function);
    Py_INCREF(args);
    function = intern_name(function, memo);
    self->module = module;
    self->function = function;
    self->args = args;
    self->kwargs = kwargs;
    self->allow = allow != Py_None ? Py_NewRef(allow) : NULL;
    PyObject_GC_Track(self);
    return self;
}

static int
plain_call_traverse(PlainCall *self, visitproc visit, void *arg)
{
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->allow);
    return 0;
}

static int
plain_call_clear(PlainCall *self)
{
    Py_CLEAR(self->module);
    Py_CLEAR(self->function);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->allow);
    return 0;
}

static void
plain_call_dealloc(PlainCall *self)
{
    PyObject_GC_UnTrack(self);
    plain_call_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
plain_call_repr(PlainCall *self)
{
    if (self->kwargs != NULL) {
        return PyUnicode_FromFormat("PlainCall(%R, %R, <%zd args>, <%zd kwargs>)", self->module,
                                    self->function, PyList_GET_SIZE(self->args),
                                    PyDict_GET_SIZE(self->kwargs));
    }
    return PyUnicode_FromFormat("PlainCall(%R, %R, <%zd args>)", self->module, self->function,
                                PyList_GET_SIZE(self->args));
}

static PyTypeObject PlainCallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "snakeport._clane.PlainCall",
    .tp_basicsize = sizeof(PlainCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "PlainCall(module, function, args, kwargs=None, allow=None)\n--\n\n"
              "lookup(import_module(module), function, allow, module)(*args, **kwargs), called "
              "with no arguments (kwargs: a dict with str keys; allow: an AllowList or None).",
    .tp_new = plain_call_new,
    .tp_call = (ternaryfunc)plain_call_call,
    .tp_traverse = (traverseproc)plain_call_traverse,
    .tp_clear = (inquiry)plain_call_clear,
    .tp_dealloc = (destructor)plain_call_dealloc,
    .tp_repr = (reprfunc)plain_call_repr,
};

/* ------------------------------------------------------------------------------------- */
/* Lane                                                                                   */
/* ------------------------------------------------------------------------------------- */

#define MAX_JOB_SLOTS 32
#define JOB_ARGS 5 /* Job(request_id, session, fn, mode, ref_ids) */
enum { JOB_ARG = 0, JOB_CONST = JOB_ARGS, JOB_NEW_LIST, JOB_UNSET };

typedef struct {
    PyObject_HEAD
    PyObject *dispatcher;      /* _dispatch.Dispatcher: shutting_down, requests */
    PyObject *sessions;        /* SessionTable._sessions: session id -> Session */
    PyObject *table_acquire, *table_release, *table_locked; /* SessionTable.lock */
    PyObject *wall, *monotonic; /* SessionTable's clocks */
    PyObject *jobs;            /* _jobs.Jobs */
    PyObject *jobs_table;      /* Jobs._jobs: request id -> Job */
    PyObject *jobs_acquire, *jobs_release, *jobs_locked; /* Jobs.lock */
    PyObject *interrupt;       /* Jobs._interrupt(thread, None): clears a pending Cancelled */
    PyObject *end_lane;        /* Jobs.end_lane(job, result, interrupted) */
    PyObject *job_type;        /* _jobs.Job */
    PyObject *current;         /* _jobs.CURRENT (threading.local) */
    PyObject *sched;           /* the Scheduler: the common cases of place and inline_ended */
    PyObject *sched_acquire, *sched_release, *sched_locked; /* Scheduler.lock */
    PyObject *place;           /* Scheduler.place(job) -> inline? */
    PyObject *inline_ended;    /* Scheduler.inline_ended(payloads, me) -> (next job, reader?) */
    PyObject *run_inline;      /* Scheduler.run_inline(job, me) -> reader? */
    PyObject *splitter;        /* the FrameSplitter: consume() in C (lane_consume) */
    PyObject *finish;          /* Server.finish_lane(job, result) -> terms (no check-in) */
    PyObject *payloads;        /* Server._job_payloads(job, terms) -> payloads or None */
    PyObject *internal_error;  /* Server.lane_failed(rid, job, exc, placed) -> payloads or None */
    PyObject *strike;          /* _lane.strike(): one bytecode, where a pending exception strikes */
    PyObject *reply, *ok;      /* the atoms of {reply, Id, ok, Value} */
    PyObject *auto_mode;       /* _requests.AUTO */
    PyObject *no_refs;         /* () */
    PyObject *awaiting;        /* _jobs.AWAITING */
    PyObject *queued, *running, *done, *failed, *interrupted; /* job states (ints) */
    PyObject *max_depth;       /* decoding depth (int) */
    PyObject *out_depth;       /* encoding depth (int) */
    PyObject *encode_default;  /* _tagged.encode_default */
    PyObject *lost;            /* returned when the reading role moved away */
    PyObject *writer;          /* the FrameWriter: its _queue (lane_send) */
    PyObject *write_acquire, *write_release; /* FrameWriter._write_lock */
    PyObject *send;            /* FrameWriter.send(payloads): the general write */
    PyObject *write_failed;    /* FrameWriter._failed(exc): a write failed */
    PyObject *send_queued;     /* FrameWriter._send_queued(): frames queued meanwhile */
    PyObject *release_spliced; /* FrameWriter._release_spliced(): when its _spliced holds any */
    Py_ssize_t out_fd;         /* FrameWriter._fd */
    PyObject *spin;            /* the spin policy's wait(), or None (the read loop's `spin`) */
    PyObject *spin_policy;     /* the SpinPolicy (its `resume`), or None */
    PyObject *spin_clock;      /* its clock, or None */
    PyObject *batch;           /* the BatchWaits (_batch.py), or None: how the read waits */
    PyObject *segmented_reply; /* _writer.segmented_reply(term): a large bytes result's payload */
    PyObject *allow;           /* Dispatcher.allow: the AllowList, or None */
    PyObject *allowed;         /* {(module, function): True} that allow.check_name passed */
    Py_ssize_t batch_review;   /* _batch.REVIEW_READS: reads between two reviews */
    long batch_reads;          /* the lane's reads not yet added to BatchWaits.reads */
    int batch_engaged;         /* BatchWaits.engaged as last read, -1: to be read again */
    Py_ssize_t in_fd;          /* the protocol input fd (the read loop's `fd`) */
    Py_ssize_t expansion, floor, max_memory; /* the decode budget: min(expansion * n + floor, max_memory) */
    Py_ssize_t segment_bytes;  /* bytes results at least this long: sent in segments */
    Py_ssize_t result_depth;   /* Dispatcher.max_depth: the deepest container marshalled as data */
    Py_ssize_t max_packet;     /* largest {packet, 4} payload; a larger reply: general path */
    Py_ssize_t max_frame;      /* --max-frame-bytes: larger frames are the splitter's */
    long n_queued, n_running, n_done, n_failed, n_interrupted;
    int native_clocks; /* wall and monotonic are built-in functions (see lock_enter) */
    PyObject *names[2]; /* the last function name and its interned equal (intern_name) */
    /* How the lane makes a Job without running Job.__init__ (see job_layout): each slot's
     * offset and what __init__ puts there. */
    int fast_jobs;
    int job_nslots;
    Py_ssize_t job_offset[MAX_JOB_SLOTS];
    int job_kind[MAX_JOB_SLOTS];         /* JOB_ARG + i (the i-th argument), JOB_CONST, ... */
    PyObject *job_const[MAX_JOB_SLOTS];  /* JOB_CONST: the value (a strong reference) */
} Lane;

/* The fields of Lane that hold objects, in order (for init, traverse and clear). */
#define LANE_OBJECTS(X)                                                                  \
    X(dispatcher) X(sessions) X(table_acquire) X(table_release) X(table_locked) X(wall)   \
    X(monotonic) X(jobs) X(jobs_table) X(jobs_acquire) X(jobs_release) X(jobs_locked)     \
    X(interrupt) X(end_lane)                                                             \
    X(job_type) X(current) X(sched) X(sched_acquire) X(sched_release) X(sched_locked) X(place) X(inline_ended) X(run_inline) X(splitter) X(finish)   \
    X(payloads) X(internal_error) X(strike) X(reply)                                     \
    X(ok) X(auto_mode) X(no_refs) X(awaiting) X(queued) X(running) X(done) X(failed)     \
    X(interrupted) X(max_depth) X(out_depth) X(encode_default) X(lost) X(writer)           \
    X(write_acquire) X(write_release) X(send) X(write_failed) X(send_queued) X(release_spliced) X(spin) \
    X(spin_policy) X(spin_clock) X(batch) X(segmented_reply) X(allow) X(allowed)

static const unsigned char CALL_ATOM_SMALL[] = {119, 4, 'c', 'a', 'l', 'l'}; /* SMALL_ATOM_UTF8_EXT */
static const unsigned char CALL_ATOM[] = {100, 0, 4, 'c', 'a', 'l', 'l'};    /* ATOM_EXT */
static const char PREFIX[] = "$snakeport_";
static const char BYTES_TEXT[] = "$snakeport_bytes"; /* the one tag the lane decodes */

/* fn(), for the functions the lane calls on every request (the locks' locked and release,
 * the session table's clocks): a built-in function without arguments (METH_NOARGS) is
 * called as the call protocol would call it, without the protocol (~50 instructions: its
 * dispatch, the recursion check that no Python code needs, the result check); anything
 * else through the protocol. */
static PyObject *
call_noargs(PyObject *fn)
{
    if (PyCFunction_CheckExact(fn) && PyCFunction_GET_FLAGS(fn) == METH_NOARGS) {
        PyObject *r = PyCFunction_GET_FUNCTION(fn)(PyCFunction_GET_SELF(fn), NULL);
        if (r == NULL && !PyErr_Occurred()) {
            PyErr_Format(PyExc_SystemError, "%R returned NULL without setting an exception", fn);
        }
        return r;
    }
    return PyObject_CallNoArgs(fn);
}

static int
call_ok(PyObject *fn)
{
    PyObject *r = call_noargs(fn);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* The lane's critical sections (check-out, check-in, a job's registration, start and end,
 * lane_place, lane_ended) run C only, with the GIL held throughout: they call no Python code
 * (nothing but built-in functions that keep the GIL: time.time, time.monotonic), allocate
 * no object that the garbage collector tracks (so no finalizer runs), and replace only
 * ints, floats, bools and their own objects. So when the lock is free (`locked()` false)
 * as the section starts, no other thread is inside a section of it (a thread inside one has
 * set the flag before its first statement) and none can enter before this one ends: it
 * needs the GIL to. The section then runs without taking the lock, which saves the two
 * calls of acquire (its argument parsing: ~500 instructions) and release. Otherwise (the
 * lock held; a free-threaded build, where there is no GIL; `locked` NULL: a section that
 * may call Python code), it takes the lock. lock_enter returns 1 (taken), 0 (free, not
 * taken), -1 on error; lock_leave ends the section. */
static int
lock_enter(PyObject *locked, PyObject *acquire)
{
#ifndef Py_GIL_DISABLED
    if (locked != NULL) {
        PyObject *held = call_noargs(locked);
        if (held == NULL) {
            return -1;
        }
        Py_DECREF(held);
        if (held == Py_False) {
            return 0;
        }
    }
#endif
    return call_ok(acquire) < 0 ? -1 : 1;
}

/* The end of a section that lock_enter began (`taken`: its result; `release`: the lock's
 * release method): the lock released when it was taken, an exception set meanwhile kept
 * (the first error wins). Returns `rc`, the section's result, or -1 when an exception is
 * set (the section's, or the release's). */
static int
lock_leave(int taken, PyObject *release, int rc)
{
    if (taken) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (call_ok(release) < 0) {
            rc = -1;
        }
        if (type != NULL) {
            PyErr_Restore(type, value, tb);
        }
    }
    return PyErr_Occurred() ? -1 : rc;
}

/* The frame `f` of `n` bytes starts like a call request: version, 8-tuple, the atom call. */
static int
call_head(const unsigned char *f, Py_ssize_t n)
{
    if (n < 3 + (Py_ssize_t)sizeof(CALL_ATOM) || f[0] != 131 || f[1] != 104 || f[2] != 8) {
        return 0;
    }
    return memcmp(f + 3, CALL_ATOM_SMALL, sizeof(CALL_ATOM_SMALL)) == 0 ||
           memcmp(f + 3, CALL_ATOM, sizeof(CALL_ATOM)) == 0;
}

/* What the frame's bytes say of its tagged terms: 0 none (no "$snakeport_" in them, so no
 * tagged tuple: decoded without a hook), 1 no other text after the prefix than "bytes" (its
 * tagged tuples, if any, may all be {'$snakeport_bytes', Binary}: decoded with bytes_hook,
 * which refuses any other), 2 another (a ref, a set, ...: the general path's, not decoded
 * here). Only the outcome 0 has to be exact; 1 and 2 only save a decode that would fail. */
static int
tag_scan(const unsigned char *f, Py_ssize_t n)
{
    const Py_ssize_t k = sizeof(PREFIX) - 1, b = sizeof(BYTES_TEXT) - 1;
    const unsigned char *p = f, *end = f + n;
    int found = 0;
    while (end - p >= k && (p = memchr(p, '$', (size_t)(end - p - k + 1))) != NULL) {
        if (memcmp(p, PREFIX, k) != 0) {
            p++;
            continue;
        }
        if (end - p < b || memcmp(p, BYTES_TEXT, b) != 0) {
            return 2;
        }
        found = 1;
        p += b;
    }
    return found;
}

/* The tagged hook of the lane's decode (tag_scan said 1, or a large frame): the tuple
 * {'$snakeport_bytes', Binary}, whose Binary the codec makes a `bytes` under a hook, is that
 * `bytes`, as _tagged.TagContext gives it; any other tagged tuple raises, and the frame is
 * then the general path's (decoded again there, with its TagContext). */
static PyObject *
bytes_hook(PyObject *self, PyObject *term)
{
    if (PyTuple_CheckExact(term) && PyTuple_GET_SIZE(term) == 2) {
        PyObject *tag = PyTuple_GET_ITEM(term, 0), *value = PyTuple_GET_ITEM(term, 1);
        if (Py_IS_TYPE(tag, (PyTypeObject *)AtomType) && PyBytes_CheckExact(value) &&
            PyUnicode_Compare(tag, BytesTag) == 0) {
            return Py_NewRef(value);
        }
    }
    if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "not a tagged term of the lane");
    }
    return NULL;
}

static PyMethodDef bytes_hook_def = {"bytes_hook", (PyCFunction)bytes_hook, METH_O, NULL};

/* A result the lane encodes itself: an exact scalar that the general path sends as it is
 * (_marshal.DATA) and encodes in one piece (not a segmented bytes). */
static int
scalar_result(Lane *L, PyObject *r)
{
    if (r == Py_None || PyBool_Check(r) || PyLong_CheckExact(r) || PyFloat_CheckExact(r) ||
        PyUnicode_CheckExact(r)) {
        return 1;
    }
    return PyBytes_CheckExact(r) && PyBytes_GET_SIZE(r) < L->segment_bytes;
}

/* Nesting below which data_result looks into containers (deeper ones: the general path). */
#define DATA_DEPTH 32

/* A value that _marshal._Walk.convert keeps as data at nesting `depth`: an exact None,
 * bool, int, float, str, bytes or bytearray (of _marshal.DATA, at any depth), or an exact
 * list, tuple or dict (keys too) of such values, nested less deep than `max_depth` (a
 * container at max_depth becomes a ref; a cyclic one reaches it). Looks at types only: runs
 * no Python code, so nothing changes the containers while it looks. */
static int
data_value(PyObject *v, Py_ssize_t depth, Py_ssize_t max_depth)
{
    if (v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v) ||
        PyUnicode_CheckExact(v) || PyBytes_CheckExact(v) || PyByteArray_CheckExact(v)) {
        return 1;
    }
    if (depth >= max_depth || depth >= DATA_DEPTH) {
        return 0;
    }
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
        PyObject **items = PySequence_Fast_ITEMS(v);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!data_value(items[i], depth + 1, max_depth)) {
                return 0;
            }
        }
        return 1;
    }
    if (PyDict_CheckExact(v)) {
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        while (PyDict_Next(v, &pos, &key, &item)) {
            if (!data_value(key, depth + 1, max_depth) || !data_value(item, depth + 1, max_depth)) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

/* A container result the lane encodes itself: plain data all through (data_value), which
 * the general path marshals into an equal value (no ref, no conversion) and encodes whole. */
static int
data_result(Lane *L, PyObject *r)
{
    return (PyList_CheckExact(r) || PyTuple_CheckExact(r) || PyDict_CheckExact(r)) &&
           data_value(r, 0, L->result_depth);
}

/* Exact built-in types whose values are never awaitable (_jobs._PLAIN). */
static int
plain_result(PyObject *r)
{
    return r == Py_None || PyBool_Check(r) || PyLong_CheckExact(r) || PyFloat_CheckExact(r) ||
           PyUnicode_CheckExact(r) || PyBytes_CheckExact(r) || PyByteArray_CheckExact(r) ||
           PyList_CheckExact(r) || PyTuple_CheckExact(r) || PyDict_CheckExact(r) ||
           PyAnySet_CheckExact(r);
}

/* Attributes of the worker's objects. Jobs, sessions and the frame splitter keep theirs in
 * __slots__: when `name` is such a slot of obj's type (a member descriptor of an object,
 * found as the generic getattr/setattr find it, through the type's attribute cache), the
 * lane reads and writes it in place, as the descriptor itself would; anything else takes
 * the generic path. */

/* Where slot_of found a (type, name) slot last: a direct-mapped cache that saves the
 * lookup (~50 a call, ~40 instructions each) of what does not change while the type does
 * not. An entry holds while the type's tp_version_tag is the one it was found with:
 * CPython sets the tag to 0 whenever the type or a base is modified (a class attribute
 * set, __getattribute__ or __setattr__ assigned, a slot replaced...), and a type gets a
 * tag never given before, so neither a modified type nor a new one at the same address
 * matches an entry. Names are the module's interned S_* strings, which live forever. No
 * cache without a GIL (the entries are not updated atomically). */
#define SLOT_CACHE_SIZE 256 /* a power of two */
typedef struct {
    PyTypeObject *type; /* (no reference: see above) */
    PyObject *name;
    unsigned int tag;   /* type->tp_version_tag when found; never 0 */
    Py_ssize_t offset;
} SlotEntry;

#ifndef Py_GIL_DISABLED
static SlotEntry slot_cache[SLOT_CACHE_SIZE];
#endif

static inline SlotEntry *
slot_entry(PyTypeObject *tp, PyObject *name)
{
#ifndef Py_GIL_DISABLED
    size_t h = ((uintptr_t)tp >> 4) * 31 + ((uintptr_t)name >> 4);
    return &slot_cache[h & (SLOT_CACHE_SIZE - 1)];
#else
    return NULL;
#endif
}

/* slot_of's lookup when its cache has no entry (kept out of line: the cached case is short). */
static Py_NO_INLINE PyObject **
slot_find(PyObject *obj, PyObject *name, SlotEntry *e)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp->tp_setattro != PyObject_GenericSetAttr || tp->tp_getattro != PyObject_GenericGetAttr) {
        return NULL;
    }
    PyObject *descr = _PyType_Lookup(tp, name); /* borrowed; never raises */
    if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) {
        return NULL;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != SLOT_OBJECT || (member->flags & SLOT_READONLY)) {
        return NULL;
    }
    /* (_PyType_Lookup gave the type a tag if it could: 0 means it has none, no entry.) */
    if (e != NULL && tp->tp_version_tag != 0 && PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG)) {
        e->type = tp;
        e->name = name;
        e->tag = tp->tp_version_tag;
        e->offset = member->offset;
    }
    return (PyObject **)((char *)obj + member->offset);
}

static inline PyObject **
slot_of(PyObject *obj, PyObject *name)
{
    PyTypeObject *tp = Py_TYPE(obj);
    SlotEntry *e = slot_entry(tp, name);
    if (e != NULL && e->type == tp && e->name == name && e->tag == tp->tp_version_tag && e->tag != 0) {
        return (PyObject **)((char *)obj + e->offset);
    }
    return slot_find(obj, name, e);
}

static int
set_attr(PyObject *obj, PyObject *name, PyObject *value)
{
    PyObject **slot = slot_of(obj, name);
    if (slot == NULL) {
        return PyObject_SetAttr(obj, name, value);
    }
    PyObject *old = *slot;
    Py_INCREF(value);
    *slot = value;
    Py_XDECREF(old);
    return 0;
}

/* getattr(obj, name): a new reference. */
static PyObject *
get_attr(PyObject *obj, PyObject *name)
{
    PyObject **slot = slot_of(obj, name);
    if (slot == NULL) {
        return PyObject_GetAttr(obj, name);
    }
    if (*slot == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%.200s' object has no attribute '%U'", Py_TYPE(obj)->tp_name,
                     name);
        return NULL;
    }
    return Py_NewRef(*slot);
}

/* obj.name + delta (an int attribute). */
static int
add_to(PyObject *obj, PyObject *name, long delta)
{
    PyObject **slot = slot_of(obj, name);
    if (slot != NULL && *slot != NULL && PyLong_CheckExact(*slot)) { /* (the common case) */
        int overflow;
        long x = PyLong_AsLongAndOverflow(*slot, &overflow);
        if (!overflow && x > LONG_MIN + 1 && x < LONG_MAX - 1) {
            PyObject *sum = PyLong_FromLong(x + delta);
            if (sum == NULL) {
                return -1;
            }
            Py_SETREF(*slot, sum); /* (an int goes: no Python code runs) */
            return 0;
        }
    }
    PyObject *v = get_attr(obj, name);
    if (v == NULL) {
        return -1;
    }
    PyObject *d = PyLong_FromLong(delta);
    PyObject *sum = d == NULL ? NULL : PyNumber_Add(v, d);
    Py_DECREF(v);
    Py_XDECREF(d);
    if (sum == NULL) {
        return -1;
    }
    int rc = set_attr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

static long
long_attr(PyObject *obj, PyObject *name)
{
    PyObject *v = get_attr(obj, name);
    if (v == NULL) {
        return -1;
    }
    long x = PyLong_AsLong(v);
    Py_DECREF(v);
    return x;
}

static int
true_attr(PyObject *obj, PyObject *name)
{
    PyObject *v = get_attr(obj, name);
    if (v == NULL) {
        return -1;
    }
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* Whether `v` is a value that Job.__init__ may give every job alike (the lane shares it). */
static int
shared_value(PyObject *v)
{
    return v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) ||
           (PyTuple_CheckExact(v) && PyTuple_GET_SIZE(v) == 0);
}

/* Learn what Job.__init__ does, to make jobs without running it (~1.5k instructions a job):
 * two jobs are made with distinct sentinel arguments, and every slot of the type must hold
 * one of the arguments, the same shared value (None, a bool, an int, ()) in both, a new
 * empty list in each, or nothing. Anything else (a __dict__, another __new__, a value that
 * differs between the two, a mutable one) leaves fast_jobs 0: the lane then calls the type,
 * as before. So a change to Job's slots or defaults changes nothing here, or turns this off
 * (test_worker_lane checks it is on). */
static int
job_layout(Lane *L)
{
    PyTypeObject *tp = (PyTypeObject *)L->job_type;
    L->fast_jobs = 0;
    L->job_nslots = 0;
    if (!PyType_Check(L->job_type) || tp->tp_dictoffset != 0 || tp->tp_new != PyBaseObject_Type.tp_new ||
        tp->tp_alloc != PyType_GenericAlloc || !PyType_HasFeature(tp, Py_TPFLAGS_HAVE_GC)) {
        return 0;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tp->tp_mro); k++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(tp->tp_mro, k);
        for (PyMemberDef *m = base->tp_members; m != NULL && m->name != NULL; m++) {
            if (m->type != SLOT_OBJECT || (m->flags & SLOT_READONLY)) {
                continue;
            }
            if (L->job_nslots == MAX_JOB_SLOTS) {
                return 0;
            }
            L->job_offset[L->job_nslots++] = m->offset;
        }
    }
    PyObject *sentinels[2][JOB_ARGS] = {{NULL}};
    PyObject *jobs[2] = {NULL, NULL};
    int rc = -1;
    for (int t = 0; t < 2; t++) {
        for (int i = 0; i < JOB_ARGS; i++) {
            sentinels[t][i] = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
            if (sentinels[t][i] == NULL) {
                goto done;
            }
        }
        jobs[t] = PyObject_Vectorcall(L->job_type, sentinels[t], JOB_ARGS, NULL);
        if (jobs[t] == NULL) { /* (its __init__ uses its arguments: no fast path) */
            PyErr_Clear();
            rc = 0;
            goto done;
        }
    }
    int fast = Py_TYPE(jobs[0]) == tp && Py_TYPE(jobs[1]) == tp;
    for (int k = 0; fast && k < L->job_nslots; k++) {
        PyObject *a = *(PyObject **)((char *)jobs[0] + L->job_offset[k]);
        PyObject *b = *(PyObject **)((char *)jobs[1] + L->job_offset[k]);
        L->job_kind[k] = -1;
        if (a == NULL && b == NULL) {
            L->job_kind[k] = JOB_UNSET;
        }
        for (int i = 0; i < JOB_ARGS && L->job_kind[k] < 0; i++) {
            if (a == sentinels[0][i] && b == sentinels[1][i]) {
                L->job_kind[k] = JOB_ARG + i;
            }
        }
        if (L->job_kind[k] < 0 && a != NULL && b != NULL) {
            if (a == b && shared_value(a)) {
                L->job_kind[k] = JOB_CONST;
                Py_INCREF(a);
                Py_XSETREF(L->job_const[k], a);
            }
            else if (a != b && PyList_CheckExact(a) && PyList_CheckExact(b) && PyList_GET_SIZE(a) == 0 &&
                     PyList_GET_SIZE(b) == 0) {
                L->job_kind[k] = JOB_NEW_LIST;
            }
        }
        fast = L->job_kind[k] >= 0;
    }
    L->fast_jobs = fast;
    rc = 0;
done:
    for (int t = 0; t < 2; t++) {
        Py_XDECREF(jobs[t]);
        for (int i = 0; i < JOB_ARGS; i++) {
            Py_XDECREF(sentinels[t][i]);
        }
    }
    return rc;
}

/* Job(*args) (args: JOB_ARGS objects): a new reference. */
static PyObject *
make_job(Lane *L, PyObject **args)
{
    if (!L->fast_jobs) {
        return PyObject_Vectorcall(L->job_type, args, JOB_ARGS, NULL);
    }
    PyTypeObject *tp = (PyTypeObject *)L->job_type;
    PyObject *job = tp->tp_alloc(tp, 0);
    if (job == NULL) {
        return NULL;
    }
    for (int k = 0; k < L->job_nslots; k++) {
        PyObject *v;
        int kind = L->job_kind[k];
        if (kind == JOB_UNSET) {
            continue;
        }
        if (kind == JOB_NEW_LIST) {
            v = PyList_New(0);
            if (v == NULL) {
                Py_DECREF(job);
                return NULL;
            }
        }
        else {
            v = Py_NewRef(kind == JOB_CONST ? L->job_const[k] : args[kind - JOB_ARG]);
        }
        *(PyObject **)((char *)job + L->job_offset[k]) = v;
    }
    return job;
}

/* The session of `sid`, checked out (SessionTable.checkout without refs): a new reference;
 * NULL without an error when the session is not open. */
static PyObject *
checkout(Lane *L, PyObject *sid)
{
    int taken = lock_enter(L->native_clocks ? L->table_locked : NULL, L->table_acquire);
    if (taken < 0) {
        return NULL;
    }
    PyObject *session = PyDict_GetItemWithError(L->sessions, sid);
    int rc = 0;
    if (session != NULL) {
        Py_INCREF(session);
        PyObject *now = call_noargs(L->wall);
        rc = now == NULL || set_attr(session, S_last_access, now) < 0;
        Py_XDECREF(now);
        if (!rc) {
            rc = add_to(session, S_running, 1) < 0;
        }
        if (!rc) {
            now = call_noargs(L->monotonic);
            rc = now == NULL || set_attr(session, S_active_at, now) < 0;
            Py_XDECREF(now);
        }
    }
    if (lock_leave(taken, L->table_release, rc ? -1 : 0) < 0) {
        Py_XDECREF(session);
        return NULL;
    }
    return session;
}

/* SessionTable.checkin(session) (no refs used). It may be called with an exception set
 * (the error exits after check-out): that one is kept, and -1 returned. */
static int
checkin(Lane *L, PyObject *session)
{
    PyObject *type0, *value0, *tb0;
    PyErr_Fetch(&type0, &value0, &tb0);
    int taken = lock_enter(L->native_clocks ? L->table_locked : NULL, L->table_acquire);
    int rc = taken < 0 ? -1 : 0;
    if (rc == 0) {
        rc = add_to(session, S_running, -1);
        if (rc == 0) {
            PyObject *now = call_noargs(L->monotonic);
            rc = now == NULL ? -1 : set_attr(session, S_active_at, now);
            Py_XDECREF(now);
        }
        rc = lock_leave(taken, L->table_release, rc);
    }
    if (type0 != NULL) { /* (the first error wins) */
        if (rc < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type0, value0, tb0);
        rc = -1;
    }
    return rc;
}

/* Jobs.add(job). */
static int
register_job(Lane *L, PyObject *rid, PyObject *job)
{
    int taken = lock_enter(L->jobs_locked, L->jobs_acquire);
    if (taken < 0) {
        return -1;
    }
    int rc = PyDict_SetItem(L->jobs_table, rid, job); /* (an int key: no Python code) */
    return lock_leave(taken, L->jobs_release, rc);
}

/* The start of Jobs.run under its lock: 1 when the job is now RUNNING on this thread, 0
 * when it was cancelled while queued (its reply was given), -1 on error. */
static int
start_job(Lane *L, PyObject *job, PyObject *me)
{
    int taken = lock_enter(L->jobs_locked, L->jobs_acquire);
    if (taken < 0) {
        return -1;
    }
    long state = long_attr(job, S_state);
    int rc = state == L->n_queued ? 1 : 0;
    if (state == -1 && PyErr_Occurred()) {
        rc = -1;
    }
    if (rc == 1 && (set_attr(job, S_state, L->running) < 0 || set_attr(job, S_thread, me) < 0)) {
        rc = -1;
    }
    return lock_leave(taken, L->jobs_release, rc);
}

/* The end of Jobs.run under its lock: the final state of a job that ran on this thread and
 * its removal from the table; a pending Cancelled is cleared. Returns the state, -1 on error. */
static long
end_job(Lane *L, PyObject *job, PyObject *rid, int interrupted)
{
    /* (A cancel was sent: the section calls Jobs._interrupt, Python code: the lock is taken.
     * The flag cannot change between this look and the section unless the lock is taken.) */
    int sent0 = true_attr(job, S_cancel_sent);
    if (sent0 < 0) {
        return -1;
    }
    int taken = lock_enter(sent0 ? NULL : L->jobs_locked, L->jobs_acquire);
    if (taken < 0) {
        return -1;
    }
    long state = long_attr(job, S_state);
    int err = state == -1 && PyErr_Occurred();
    if (!err && state == L->n_running) {
        int sent = true_attr(job, S_cancel_sent);
        int deferred = sent < 0 ? -1 : true_attr(job, S_cancel_deferred);
        PyObject *failure = deferred < 0 ? NULL : get_attr(job, S_failure);
        if (failure == NULL) {
            err = 1;
        }
        else {
            PyObject *final;
            if (interrupted || sent || deferred) {
                final = L->interrupted;
            }
            else if (failure != Py_None) {
                final = L->failed;
            }
            else {
                final = L->done;
            }
            Py_DECREF(failure);
            err = set_attr(job, S_state, final) < 0;
            if (!err) {
                state = PyLong_AsLong(final);
            }
        }
    }
    if (!err) {
        PyObject *found = PyDict_GetItemWithError(L->jobs_table, rid);
        if (found == job) {
            err = PyDict_DelItem(L->jobs_table, rid) < 0;
        }
        else if (found == NULL && PyErr_Occurred()) {
            err = 1;
        }
    }
    if (!err) {
        int sent = true_attr(job, S_cancel_sent);
        if (sent < 0) {
            err = 1;
        }
        else if (sent) {
            PyObject *thread = get_attr(job, S_thread);
            PyObject *r = thread == NULL ? NULL
                                         : PyObject_CallFunctionObjArgs(L->interrupt, thread, Py_None, NULL);
            Py_XDECREF(thread);
            err = r == NULL;
            Py_XDECREF(r);
        }
    }
    return lock_leave(taken, L->jobs_release, err ? -1 : 0) < 0 ? -1 : state;
}

/* The reply frame of a scalar or plain-data result, or NULL without an error when the
 * general path must encode it. */
static PyObject *
encode_reply(Lane *L, PyObject *rid, PyObject *result)
{
    PyObject *term = PyTuple_Pack(4, L->reply, rid, L->ok, result);
    if (term == NULL) {
        return NULL;
    }
    PyObject *payload = Cetf->encode(term, L->encode_default, L->out_depth);
    Py_DECREF(term);
    if (payload == NULL || PyBytes_GET_SIZE(payload) > L->max_packet) {
        Py_XDECREF(payload);
        PyErr_Clear(); /* the general path encodes it again, and answers what it must */
        return NULL;
    }
    return payload;
}

/* The payload of {reply, Id, ok, Bytes} for a bytes result of a segment or more: what the
 * general path sends, _writer.segmented_reply's _Segments (the bytes never copied into a
 * frame), which FrameWriter.send writes (lane_send hands it over). NULL, no exception set,
 * when the frame would be larger than a {packet, 4} frame can be: the general path's. */
static PyObject *
segmented_reply(Lane *L, PyObject *rid, PyObject *value)
{
    PyObject *term = PyTuple_Pack(4, L->reply, rid, L->ok, value);
    if (term == NULL) {
        return NULL;
    }
    PyObject *payload = PyObject_CallOneArg(L->segmented_reply, term);
    Py_DECREF(term);
    if (payload == NULL) {
        return NULL;
    }
    if (payload == Py_None) { /* (not bytes of a segment: the general path's) */
        Py_DECREF(payload);
        return NULL;
    }
    Py_ssize_t size = PyObject_Length(payload);
    if (size < 0 || size > L->max_packet) { /* (an error set, or too large: no exception) */
        Py_DECREF(payload);
        return NULL;
    }
    return payload;
}

/* The general path's reply of a lane job that the lane does not answer itself: its terms
 * (Server.finish_lane), the session checked in here (also when that raised: *checked_in
 * says it was done), then their frames (Server._job_payloads). The order of _execute:
 * terms, check-in, frames. Returns the payloads (or Py_None), NULL on error. */
static PyObject *
finish_job(Lane *L, PyObject *job, PyObject *value, PyObject *session, int *checked_in)
{
    PyObject *terms = PyObject_CallFunctionObjArgs(L->finish, job, value, NULL);
    *checked_in = 1;
    if (checkin(L, session) < 0) {
        Py_XDECREF(terms);
        return NULL;
    }
    PyObject *payloads = PyObject_CallFunctionObjArgs(L->payloads, job, terms, NULL);
    Py_DECREF(terms);
    return payloads;
}

/* CURRENT.name = value. `current` is this thread's dict of CURRENT (a threading.local:
 * CURRENT.__dict__, taken once per Lane.run, on the thread that runs the calls), in which
 * threading.local's own setattr puts the value (it has no data descriptor of these names);
 * NULL: its setattr. */
static int
set_current(Lane *L, PyObject *current, PyObject *name, PyObject *value)
{
    return current != NULL ? PyDict_SetItem(current, name, value) : set_attr(L->current, name, value);
}

/* Whether an asynchronous exception may be pending in this thread (then strike() runs: see
 * run_job). PyThreadState_SetAsyncExc stores it in the thread state's async_exc, which the
 * lane reads where it knows the field; elsewhere it always says yes. (Signal handlers, the
 * other source of exceptions between bytecodes, run on the main thread only, which runs no
 * job.) */
static int
async_pending(void)
{
#if PY_VERSION_HEX < 0x030D0000 && !defined(Py_LIMITED_API)
    return PyThreadState_Get()->async_exc != NULL;
#else
    return 1;
#endif
}

/* Run a placed job inline: Jobs.run, then the reply. Returns the payloads to send (a new
 * list), Py_None when there are none, NULL on a failure of the worker itself. Sets
 * *checked_in once the session's check-in was done (or handed to the event loop). */
static PyObject *
run_job(Lane *L, PyObject *job, PyObject *rid, PyObject *session, PlainCall *fn, PyObject *me,
        PyObject *current,
        int *checked_in)
{
    int started = start_job(L, job, me);
    if (started < 0) {
        return NULL;
    }
    if (started == 0) { /* cancelled while queued: the general path answers (nothing) */
        return finish_job(L, job, Py_None, session, checked_in);
    }
    if (set_attr(job, S_fn, Py_None) < 0 || set_current(L, current, S_jobs, L->jobs) < 0 ||
        set_current(L, current, S_job, job) < 0) {
        return NULL;
    }
    int interrupted = 0;
    PyObject *result = plain_call_invoke(fn);
    /* An exception the call left pending in this thread (PyThreadState_SetAsyncExc, a
     * signal handler's) strikes at the next bytecode: on the general path inside the call,
     * here in the one bytecode of strike(), so it is the call's outcome there and here. */
    if (result != NULL && async_pending() && call_ok(L->strike) < 0) {
        Py_CLEAR(result);
    }
    if (result == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL) {
            PyException_SetTraceback(value, tb);
        }
        int rc = 0;
        if (PyErr_GivenExceptionMatches(type, CancelledType)) {
            interrupted = 1;
        }
        else {
            rc = set_attr(job, S_failure, value);
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (rc < 0) {
            return NULL;
        }
    }
    else if (!plain_result(result)) {
        /* Maybe awaitable: the rest of Jobs.run in Python (a Cancelled that strikes as it
         * starts is the call's outcome: tried again as interrupted). */
        PyObject *outcome = PyObject_CallFunctionObjArgs(L->end_lane, job, result, Py_False, NULL);
        if (outcome == NULL && PyErr_ExceptionMatches(CancelledType)) {
            PyErr_Clear();
            outcome = PyObject_CallFunctionObjArgs(L->end_lane, job, result, Py_True, NULL);
        }
        Py_DECREF(result);
        if (outcome == NULL) {
            return NULL;
        }
        if (outcome == L->awaiting) { /* the event loop answers, and checks the session in */
            *checked_in = 1;
            Py_DECREF(outcome);
            Py_RETURN_NONE;
        }
        PyObject *payloads = finish_job(L, job, outcome, session, checked_in);
        Py_DECREF(outcome);
        return payloads;
    }
    if (set_current(L, current, S_job, Py_None) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    long state = end_job(L, job, rid, interrupted);
    if (state < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    /* (A bytes result of a segment or more: the segments' payload, as on the general path.) */
    int segmented = result != NULL && PyBytes_CheckExact(result) && PyBytes_GET_SIZE(result) >= L->segment_bytes;
    if (state == L->n_done && (segmented || scalar_result(L, result) || data_result(L, result))) {
        PyObject *payload = segmented ? segmented_reply(L, rid, result) : encode_reply(L, rid, result);
        if (payload != NULL) {
            Py_DECREF(result);
            *checked_in = 1;
            if (checkin(L, session) < 0) {
                Py_DECREF(payload);
                return NULL;
            }
            PyObject *payloads = PyList_New(1);
            if (payloads == NULL) {
                Py_DECREF(payload);
                return NULL;
            }
            PyList_SET_ITEM(payloads, 0, payload);
            return payloads;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(result);
            return NULL;
        }
        /* Not encodable here, or larger than a {packet, 4} frame: the general path encodes
         * it again and answers what it must (not_encodable). */
    }
    /* Failed, cancelled, neither a scalar nor plain data: the general path's reply. */
    PyObject *value = state == L->n_done && result != NULL ? result : Py_None;
    PyObject *payloads = finish_job(L, job, value, session, checked_in);
    Py_XDECREF(result);
    return payloads;
}

/* Scheduler.place(job) (the reader places a job; see _scheduler.py): its common case here,
 * on the scheduler's fields under its lock: no job holds the slot (with one thread, I3: none
 * is queued either) and the stand-by is not asleep: the job takes the slot and runs inline
 * (running, _inline_seq, _inline_active as place() sets them). Any other case is place()'s
 * own. Returns 1 (run it inline now), 0 (queued), -1 on error. */
static int
lane_place(Lane *L, PyObject *job)
{
    int taken = lock_enter(L->sched_locked, L->sched_acquire);
    if (taken < 0) {
        return -1;
    }
    int fast = 0;
    long running = long_attr(L->sched, S_running);
    int rc = running == -1 && PyErr_Occurred() ? -1 : 0;
    if (rc == 0 && running == 0) {
        int deep = true_attr(L->sched, S__standby_deep); /* (place() wakes a sleeping stand-by) */
        if (deep < 0) {
            rc = -1;
        }
        else if (!deep) {
            fast = 1;
            rc = set_attr(L->sched, S_running, One) < 0 || add_to(L->sched, S__inline_seq, 1) < 0 ||
                         set_attr(L->sched, S__inline_active, Py_True) < 0
                     ? -1
                     : 0;
        }
    }
    rc = lock_leave(taken, L->sched_release, rc);
    if (rc < 0) {
        return -1;
    }
    if (fast) {
        return 1;
    }
    PyObject *placed = PyObject_CallOneArg(L->place, job);
    if (placed == NULL) {
        return -1;
    }
    int inline_now = PyObject_IsTrue(placed);
    Py_DECREF(placed);
    return inline_now;
}

/* Scheduler.inline_ended(payloads, me) (the lane's inline job ended): its common case here,
 * under the scheduler's lock: this thread still reads (so the frames are held, I5), and no
 * job waits to resume or is queued, and the worker is not draining: the slot is freed
 * (_inline_active cleared, I7; running decremented) as inline_ended() frees it. Any other
 * case is inline_ended()'s own, then run_inline() for a queued job it hands this thread.
 * Returns 1 when this thread still reads, 0 when it no longer does, -1 on error. */
static int
lane_ended(Lane *L, PyObject *payloads, PyObject *me)
{
    int taken = lock_enter(L->sched_locked, L->sched_acquire);
    if (taken < 0) {
        return -1;
    }
    int fast = 0, rc = 0;
    PyObject *reader = get_attr(L->sched, S_reader);
    int still = reader == NULL ? -1 : PyObject_RichCompareBool(reader, me, Py_EQ);
    if (still > 0 && payloads != Py_None && !PyList_CheckExact(payloads)) {
        still = 0; /* (not the lane's own frames: inline_ended() handles them) */
    }
    Py_XDECREF(reader);
    if (still < 0) {
        rc = -1;
    }
    else if (still) {
        int busy = true_attr(L->sched, S__resuming);
        if (busy == 0) {
            busy = true_attr(L->sched, S__pending);
        }
        if (busy == 0) {
            busy = true_attr(L->sched, S__draining);
        }
        if (busy < 0) {
            rc = -1;
        }
        else if (!busy) {
            fast = 1;
            if (payloads != Py_None && PyList_GET_SIZE(payloads) > 0) {
                PyObject *held = get_attr(L->sched, S_held);
                if (held == NULL || !PyList_CheckExact(held)) {
                    if (held != NULL) {
                        PyErr_SetString(PyExc_TypeError, "Scheduler.held must be a list");
                    }
                    rc = -1;
                }
                else {
                    Py_ssize_t n = PyList_GET_SIZE(held);
                    rc = PyList_SetSlice(held, n, n, payloads);
                }
                Py_XDECREF(held);
            }
            if (rc == 0 && (set_attr(L->sched, S__inline_active, Py_False) < 0 ||
                            add_to(L->sched, S_running, -1) < 0)) {
                rc = -1;
            }
        }
    }
    rc = lock_leave(taken, L->sched_release, rc);
    if (rc < 0) {
        return -1;
    }
    if (fast) {
        return 1;
    }
    PyObject *outcome = PyObject_CallFunctionObjArgs(L->inline_ended, payloads, me, NULL);
    if (outcome == NULL || !PyTuple_Check(outcome) || PyTuple_GET_SIZE(outcome) != 2) {
        if (outcome != NULL) {
            PyErr_SetString(PyExc_SystemError, "Scheduler.inline_ended: expected (job, reader)");
            Py_DECREF(outcome);
        }
        return -1;
    }
    PyObject *next_job = PyTuple_GET_ITEM(outcome, 0);
    int still_reader = PyObject_IsTrue(PyTuple_GET_ITEM(outcome, 1));
    if (still_reader >= 0 && next_job != Py_None) { /* a job queued meanwhile: the general loop */
        PyObject *r = PyObject_CallFunctionObjArgs(L->run_inline, next_job, me, NULL);
        still_reader = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
    }
    Py_DECREF(outcome);
    return still_reader;
}

/* A failure of the worker itself (the exception set) after the lane checked the session of
 * request `rid` out: the session is checked in unless it was, and Server.lane_failed answers
 * the request with an internal error and ends the job (`job` NULL when there is none yet).
 * Returns what lane_failed returns (the payloads for Scheduler.inline_ended when `placed`),
 * NULL when that failed too. */
static PyObject *
recover(Lane *L, PyObject *rid, PyObject *job, PyObject *session, int checked_in, int placed)
{
    if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_SystemError, "snakeport._clane: a failure without an exception");
    }
    if (!checked_in) {
        (void)checkin(L, session); /* (keeps the exception set) */
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyObject *args[4] = {rid, job != NULL ? job : Py_None, value, placed ? Py_True : Py_False};
    PyObject *payloads = PyObject_Vectorcall(L->internal_error, args, 4, NULL);
    Py_DECREF(value);
    return payloads;
}

/* Names that the allow-list's check_name (rules 1 and 2 of snakeport._allow: the names
 * alone, nothing imported) passes are remembered, up to this many pairs (then forgotten
 * all at once: a caller sending ever new names costs a check each, not memory). */
#define ALLOWED_NAMES 4096

/* Whether the general path's allow.check_name(module, function) passes (1; or no
 * allow-list), or not (0, no exception set: the general path checks again and answers the
 * refusal); -1 with an exception on a failure of the lane itself. */
static int
allowed_name(Lane *L, PyObject *module, PyObject *function)
{
    if (L->allow == Py_None) {
        return 1;
    }
    PyObject *key = PyTuple_Pack(2, module, function);
    if (key == NULL) {
        return -1;
    }
    int known = PyDict_Contains(L->allowed, key);
    if (known != 0) {
        Py_DECREF(key);
        return known;
    }
    PyObject *r = PyObject_CallMethodObjArgs(L->allow, S_check_name, module, function, NULL);
    if (r == NULL) {
        Py_DECREF(key);
        PyErr_Clear(); /* (NotAllowed, or whatever it raised: the general path's to answer) */
        return 0;
    }
    Py_DECREF(r);
    if (PyDict_GET_SIZE(L->allowed) >= ALLOWED_NAMES) {
        PyDict_Clear(L->allowed);
    }
    int rc = PyDict_SetItem(L->allowed, key, Py_True);
    Py_DECREF(key);
    return rc < 0 ? -1 : 1;
}

/* One decoded request: 1 when the lane took it (ran it, or the scheduler queued it), 0 when
 * it is the general path's (nothing was counted, checked out or registered), -1 on error.
 * Sets *lost when this thread no longer holds the reading role. */
static int
lane_request(Lane *L, PyObject *term, PyObject *me, PyObject *current, int *lost)
{
    if (!PyTuple_CheckExact(term) || PyTuple_GET_SIZE(term) != 8) {
        return 0;
    }
    PyObject *rid = PyTuple_GET_ITEM(term, 1), *sid = PyTuple_GET_ITEM(term, 2);
    PyObject *module = PyTuple_GET_ITEM(term, 3), *function = PyTuple_GET_ITEM(term, 4);
    PyObject *args = PyTuple_GET_ITEM(term, 5), *kwargs = PyTuple_GET_ITEM(term, 6);
    PyObject *opts = PyTuple_GET_ITEM(term, 7);
    if (!PyLong_CheckExact(rid) || _PyLong_Sign(rid) < 0 ||
        !(PyUnicode_CheckExact(sid) || PyBytes_CheckExact(sid)) || !PyUnicode_CheckExact(module) ||
        !PyUnicode_CheckExact(function) || !PyList_CheckExact(args) || !PyDict_CheckExact(kwargs) ||
        !PyDict_CheckExact(opts) || PyDict_GET_SIZE(opts) != 0) {
        return 0;
    }
    /* The allow-list's check of the names, which the general path makes here (before the
     * session's checkout: a refused name is refused in any session). */
    int allowed = allowed_name(L, module, function);
    if (allowed <= 0) {
        return allowed;
    }
    /* Kwargs as _requests.kwargs gives them (str keys), when it would accept them. */
    PyObject *kw = NULL;
    if (PyDict_GET_SIZE(kwargs) != 0) {
        kw = str_keyed(kwargs);
        if (kw == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
    }
    int shutting = true_attr(L->dispatcher, S_shutting_down);
    if (shutting != 0) {
        Py_XDECREF(kw);
        return shutting < 0 ? -1 : 0;
    }
    PyObject *session = checkout(L, sid);
    if (session == NULL) {
        Py_XDECREF(kw);
        return PyErr_Occurred() ? -1 : 0;
    }
    /* From here on the request is the lane's: counted, and its session checked out. The
     * session is checked in exactly once on every path: by run_job (here, or by the event
     * loop an awaitable is handed to), by Jobs.run for a job the scheduler queues, or, when
     * the worker itself fails before that (the exception set: `failed` below), by
     * recover(), which answers the request as the general path answers such a failure
     * (Server._execute: an internal error) and lets the worker serve on. */
    PyObject *job = NULL, *payloads = NULL;
    PlainCall *fn = NULL;
    int rc = -1, checked_in = 0, placed = 0;
    if (add_to(L->dispatcher, S_requests, 1) < 0) {
        Py_XDECREF(kw);
        goto failed;
    }
    fn = plain_call_make(module, function, args, kw, L->allow, L->names); /* (takes kw) */
    if (fn == NULL) {
        goto failed;
    }
    PyObject *job_args[JOB_ARGS] = {rid, session, (PyObject *)fn, L->auto_mode, L->no_refs};
    job = make_job(L, job_args);
    if (job == NULL || register_job(L, rid, job) < 0) {
        goto failed;
    }
    int inline_now = lane_place(L, job);
    if (inline_now < 0) {
        goto failed;
    }
    if (inline_now == 0) { /* queued: it runs its PlainCall later (Jobs.run checks it in) */
        rc = 1;
        goto done;
    }
    placed = 1;
    payloads = run_job(L, job, rid, session, fn, me, current, &checked_in);
    if (payloads == NULL) {
        goto failed;
    }
ended:
    /* (The session is checked in: a failure from here on is the loop's.) */
    int reader = lane_ended(L, payloads, me);
    if (reader < 0) {
        goto done;
    }
    *lost = !reader;
    rc = 1;
    goto done;
failed:
    payloads = recover(L, rid, job, session, checked_in, placed);
    checked_in = 1;
    if (payloads != NULL) {
        if (placed) {
            goto ended; /* the slot the job holds is freed as after any inline job */
        }
        rc = 1;
    }
done:
    Py_XDECREF(payloads);
    Py_XDECREF(job);
    Py_XDECREF((PyObject *)fn);
    Py_DECREF(session);
    return rc;
}

/* FrameSplitter.consume(start, end) (snakeport._framing), on its slots: the bytes [start,
 * end) of the buffered() view taken; a stale view refused (RuntimeError), nothing taken. */
static int
lane_consume(Lane *L, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *obj = get_attr(L->splitter, S__r);
    Py_ssize_t r = obj == NULL ? -1 : PyLong_AsSsize_t(obj);
    Py_XDECREF(obj);
    if (r == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (start != r) {
        PyErr_Format(PyExc_RuntimeError, "stale buffered() view: it starts at %zd, the splitter reads at %zd",
                     start, r);
        return -1;
    }
    obj = get_attr(L->splitter, S__w);
    Py_ssize_t w = obj == NULL ? -1 : PyLong_AsSsize_t(obj);
    Py_XDECREF(obj);
    if (w == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (!(start <= end && end <= w)) {
        PyErr_Format(PyExc_ValueError, "expected end in [%zd, %zd], got: %zd", start, w, end);
        return -1;
    }
    obj = PyLong_FromSsize_t(end);
    if (obj == NULL) {
        return -1;
    }
    int rc = set_attr(L->splitter, S__r, obj);
    Py_DECREF(obj);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* The replies' write: Scheduler.flush_held, then FrameWriter.send                        */
/* ------------------------------------------------------------------------------------- */

/* Most buffers one writev takes (_writer.IOV_MAX, Linux's IOV_MAX). */
#define WRITE_IOV_MAX 1024
/* Frames whose headers and buffers lane_send keeps on the stack (more: PyMem_Malloc). */
#define STACK_FRAMES 16

/* Every byte of iov[0..cnt) written to fd, as FrameWriter._writev writes them with
 * os.writev: at most WRITE_IOV_MAX buffers a call, the GIL released for each, a partial write
 * continued where it stopped (iov is updated), EINTR retried once the signal handlers ran,
 * unless one raised (os.writev's loop, PEP 475). Returns 0, or -1 with the exception set: the
 * OSError of errno as os.writev raises it, or the handler's. */
static int
write_all(int fd, struct iovec *iov, Py_ssize_t cnt)
{
    Py_ssize_t i = 0;
    while (i < cnt) {
        int batch = cnt - i > WRITE_IOV_MAX ? WRITE_IOV_MAX : (int)(cnt - i);
        Py_ssize_t written;
        int err;
        Py_BEGIN_ALLOW_THREADS
        written = writev(fd, iov + i, batch);
        err = errno;
        Py_END_ALLOW_THREADS
        if (written < 0) {
            if (err == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    return -1;
                }
                continue;
            }
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        while (i < cnt && (size_t)written >= iov[i].iov_len) {
            written -= (Py_ssize_t)iov[i].iov_len;
            i++;
        }
        if (written > 0) { /* the kernel stopped inside iov[i] (a signal, a full pipe) */
            iov[i].iov_base = (char *)iov[i].iov_base + written;
            iov[i].iov_len -= (size_t)written;
        }
    }
    return 0;
}

/* FrameWriter.send(payloads) for a list of bytes, its common case here (see _writer.py): the
 * writer's _write_lock taken without waiting and no frame queued by another thread: each
 * frame's header and payload written from here (write_all), FrameWriter._failed told of a
 * failure, the lock let go, then FrameWriter._send_queued when another thread queued frames
 * meanwhile, as send() does. Otherwise (the lock held by another thread, frames queued, a
 * payload too long for a header) FrameWriter.send itself. Returns 0, -1 on error. */
static int
lane_send(Lane *L, PyObject *payloads)
{
    Py_ssize_t n = PyList_GET_SIZE(payloads);
    int general = n > PY_SSIZE_T_MAX / 2 / (Py_ssize_t)sizeof(struct iovec);
    for (Py_ssize_t k = 0; k < n && !general; k++) {
        PyObject *p = PyList_GET_ITEM(payloads, k);
        general = !PyBytes_CheckExact(p) || (unsigned long long)PyBytes_GET_SIZE(p) > 0xFFFFFFFFULL;
    }
    if (!general) {
        /* acquire(False), never acquire() after a locked() that said it was free: another
         * thread blocked in acquire() takes the lock without the GIL, and the reader must
         * not wait behind its write. */
        PyObject *got = PyObject_CallOneArg(L->write_acquire, Py_False);
        if (got == NULL) {
            return -1;
        }
        Py_DECREF(got);
        general = got != Py_True;
    }
    if (!general) {
        /* (Frames queued by another thread go first: send() puts them before ours.) */
        PyObject *queue = get_attr(L->writer, S__queue);
        int queued = queue == NULL ? -1 : PyObject_IsTrue(queue);
        Py_XDECREF(queue);
        if (queued != 0) {
            int rc = lock_leave(1, L->write_release, queued < 0 ? -1 : 0);
            if (rc < 0) {
                return -1;
            }
            general = 1;
        }
    }
    if (!general) {
        /* Spliced buffers let go once the pipe is empty, as _writev does first (the writer's
         * invariant: else a large reply would stay alive while only the lane writes). */
        PyObject *spliced = get_attr(L->writer, S__spliced);
        int held = spliced == NULL ? -1 : PyObject_IsTrue(spliced);
        Py_XDECREF(spliced);
        if (held > 0) {
            PyObject *r = PyObject_CallNoArgs(L->release_spliced);
            Py_XDECREF(r);
            held = r == NULL ? -1 : 0;
        }
        if (held < 0) {
            lock_leave(1, L->write_release, -1);
            return -1;
        }
    }
    if (general) {
        PyObject *r = PyObject_CallOneArg(L->send, payloads);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    /* The write lock is this thread's: headers and buffers, then one write_all. (The list
     * is this thread's too, taken from the scheduler: nothing can change it meanwhile.) */
    unsigned char stack_headers[4 * STACK_FRAMES];
    struct iovec stack_iov[2 * STACK_FRAMES];
    unsigned char *headers = stack_headers;
    struct iovec *iov = stack_iov;
    int rc = 0;
    if (n > STACK_FRAMES) {
        headers = PyMem_Malloc((size_t)n * 4);
        iov = PyMem_Malloc((size_t)n * 2 * sizeof(struct iovec));
        if (headers == NULL || iov == NULL) {
            PyErr_NoMemory();
            rc = -1;
        }
    }
    if (rc == 0) {
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *p = PyList_GET_ITEM(payloads, k);
            size_t size = (size_t)PyBytes_GET_SIZE(p);
            unsigned char *h = headers + 4 * k;
            h[0] = (unsigned char)(size >> 24);
            h[1] = (unsigned char)(size >> 16);
            h[2] = (unsigned char)(size >> 8);
            h[3] = (unsigned char)size;
            iov[2 * k].iov_base = h;
            iov[2 * k].iov_len = 4;
            iov[2 * k + 1].iov_base = PyBytes_AS_STRING(p);
            iov[2 * k + 1].iov_len = size;
        }
        rc = write_all((int)L->out_fd, iov, 2 * n);
        if (rc < 0 && PyErr_ExceptionMatches(PyExc_OSError)) {
            /* (As _writev: the writer is told, then the error goes on; were the report
             * to raise, its exception would.) */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            PyObject *r = PyObject_CallOneArg(L->write_failed, value);
            if (r != NULL) {
                Py_DECREF(r);
                PyErr_Restore(type, value, tb);
            }
            else {
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
            }
        }
    }
    if (headers != stack_headers) {
        PyMem_Free(headers);
        PyMem_Free(iov);
    }
    rc = lock_leave(1, L->write_release, rc);
    if (rc < 0) {
        return -1;
    }
    PyObject *queue = get_attr(L->writer, S__queue);
    int queued = queue == NULL ? -1 : PyObject_IsTrue(queue);
    Py_XDECREF(queue);
    if (queued > 0) { /* frames another thread queued while this one wrote */
        PyObject *r = PyObject_CallNoArgs(L->send_queued);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    return queued;
}

/* Scheduler.flush_held() (no terms): the replies the scheduler holds, taken from it under
 * its lock (a new list in their place) and sent (lane_send). lane_run calls it when it took
 * every complete frame buffered: the read loop would send them next. Returns 0, -1 on
 * error (a failed write: as when flush_held raises, the frame loop ends). */
static int
lane_flush(Lane *L)
{
    PyObject *fresh = PyList_New(0); /* (made outside the section: it may collect garbage) */
    if (fresh == NULL) {
        return -1;
    }
    int taken = lock_enter(L->sched_locked, L->sched_acquire);
    if (taken < 0) {
        Py_DECREF(fresh);
        return -1;
    }
    PyObject *held = get_attr(L->sched, S_held);
    int rc = held == NULL ? -1 : 0;
    if (rc == 0 && !PyList_CheckExact(held)) {
        PyErr_SetString(PyExc_TypeError, "Scheduler.held must be a list");
        rc = -1;
    }
    if (rc == 0 && PyList_GET_SIZE(held) > 0) {
        rc = set_attr(L->sched, S_held, fresh); /* (this thread keeps its reference) */
    }
    else {
        Py_CLEAR(held);
    }
    rc = lock_leave(taken, L->sched_release, rc);
    Py_DECREF(fresh);
    if (rc == 0 && held != NULL) {
        rc = lane_send(L, held);
    }
    Py_XDECREF(held);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* The next read                                                                          */
/* ------------------------------------------------------------------------------------- */

/* What the read loop (Server._read_frames) does between a read whose frames are all handled
 * and its next read, when the lane took them all (and sent their replies): the shutdown
 * check, the spin policy when no job holds a slot, FrameSplitter.get_buffer (every byte
 * consumed: the whole buffer from its start), os.readv into it (the GIL released, EINTR
 * retried once the signal handlers ran, as os.readv does) and
 * FrameSplitter.buffer_updated, on the splitter's slots. `buf` is the splitter's buffer, all
 * of it consumed (*r == *w). Returns 1 when bytes came (*r, *w: the new view), 0 when the read
 * loop must take over (shutting down; the end of the input or a failed read, which the loop's
 * own read sees again: a pipe's end stays, and so does the error of a closed or invalid fd),
 * -1 on error. */
/* Whether SpinPolicy.wait() has anything to do: not when its clock is before its `resume`
 * (backing off, or one CPU only), the first thing wait() looks at, which returns at once
 * then; this look saves the call (its Python frame) on each read where it would. 1: call
 * it, 0: not, -1 on error. */
static int
spin_waits(Lane *L)
{
    if (L->spin_policy == Py_None) {
        return 1;
    }
    PyObject *resume = get_attr(L->spin_policy, S_resume);
    if (resume == NULL) {
        return -1;
    }
    int waits = 1;
    if (PyFloat_CheckExact(resume)) {
        PyObject *now = call_noargs(L->spin_clock);
        if (now == NULL) {
            Py_DECREF(resume);
            return -1;
        }
        if (PyFloat_CheckExact(now)) {
            waits = !(PyFloat_AS_DOUBLE(now) < PyFloat_AS_DOUBLE(resume));
        }
        Py_DECREF(now);
    }
    Py_DECREF(resume);
    return waits;
}

/* What the read loop does with its BatchWaits before a read (see _batch.py), without running
 * Python code: the read counted (in the lane, added to BatchWaits.reads when a review is
 * due), then whether it waits as a batch task (BatchWaits.engaged, as the lane last read
 * it: again after each review it left to the read loop, and at least every batch_review
 * reads). 1: it does, 0: not, 2: a review is due (the lane's reads added to
 * BatchWaits.reads, and the read left to the read loop, which asks BatchWaits.review),
 * -1 on error. */
static int
batch_waits(Lane *L)
{
    if (L->batch == Py_None) {
        return 0;
    }
    if (L->batch_engaged < 0) { /* not read since the last review */
        int engaged = true_attr(L->batch, S_engaged);
        if (engaged < 0) {
            return -1;
        }
        L->batch_engaged = engaged;
    }
    if (++L->batch_reads < L->batch_review) {
        return L->batch_engaged;
    }
    long reads = long_attr(L->batch, S_reads);
    if (reads == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *n = PyLong_FromLong(reads + L->batch_reads - 1); /* (the read loop counts this one) */
    int rc = n == NULL ? -1 : set_attr(L->batch, S_reads, n);
    Py_XDECREF(n);
    if (rc < 0) {
        return -1;
    }
    L->batch_reads = 0;
    L->batch_engaged = -1;
    return 2;
}

static int
lane_read(Lane *L, PyObject *buf, Py_ssize_t *r, Py_ssize_t *w)
{
    int shutting = true_attr(L->dispatcher, S_shutting_down);
    if (shutting != 0) {
        return shutting < 0 ? -1 : 0;
    }
    int waits = batch_waits(L);
    if (waits < 0 || waits == 2) {
        return waits < 0 ? -1 : 0;
    }
    if (L->spin != Py_None) { /* (a call on another thread would compete for the GIL) */
        long running = long_attr(L->sched, S_running);
        if (running == -1 && PyErr_Occurred()) {
            return -1;
        }
        int waits = running == 0 ? spin_waits(L) : 0;
        if (waits < 0 || (waits && call_ok(L->spin) < 0)) {
            return -1;
        }
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL || set_attr(L->splitter, S__r, zero) < 0 || set_attr(L->splitter, S__w, zero) < 0) {
        Py_XDECREF(zero);
        return -1;
    }
    Py_DECREF(zero);
    *r = *w = 0;
    char *p = PyByteArray_AS_STRING(buf);
    Py_ssize_t cap = PyByteArray_GET_SIZE(buf);
    Py_ssize_t n;
    int err;
    do {
        Py_BEGIN_ALLOW_THREADS
#ifdef SCHED_BATCH /* (Linux; elsewhere _batch.available() is false: waits is 0) */
        if (waits) { /* (failures ignored, as _batch.wait_as_batch does) */
            struct sched_param param = {0};
            sched_setscheduler(0, SCHED_BATCH, &param);
        }
#endif
        n = read((int)L->in_fd, p, (size_t)cap);
        err = errno;
#ifdef SCHED_BATCH
        if (waits) {
            struct sched_param param = {0};
            sched_setscheduler(0, SCHED_OTHER, &param);
        }
#endif
        Py_END_ALLOW_THREADS
    } while (n < 0 && err == EINTR && PyErr_CheckSignals() == 0);
    if (n < 0 && err == EINTR) {
        return -1; /* a signal handler raised */
    }
    if (n <= 0) {
        return 0;
    }
    PyObject *end = PyLong_FromSsize_t(n);
    int rc = end == NULL ? -1 : set_attr(L->splitter, S__w, end);
    Py_XDECREF(end);
    if (rc < 0) {
        return -1;
    }
    *w = n;
    return 1;
}

/* The request in data[start:start+n] (a frame's payload; `data` a bytes or bytearray),
 * decoded as the general path decodes it: within the same memory budget and depth, with
 * `hook` as the codec's tagged hook (NULL: none, when no tagged tuple can be in it;
 * BytesHook). NULL, no exception set, when it is invalid, not exactly the frame or holds a
 * tagged term the hook refuses: the general path decodes it again and answers as it must.
 * With `placed` (a placed frame, see _cetf_api.h), `data` holds the frame without the
 * placed binary's bytes; the budget is the whole frame's, and a decode that did not take
 * the placed binary fails too. */
static PyObject *
lane_decode_placed(Lane *L, PyObject *data, Py_ssize_t start, Py_ssize_t n, PyObject *hook, Placed *placed)
{
    Py_ssize_t whole = n + (placed != NULL ? PyBytes_GET_SIZE(placed->value) : 0);
    Py_ssize_t budget = L->expansion * whole + L->floor;
    if (budget > L->max_memory) {
        budget = L->max_memory;
    }
    Py_ssize_t end = -1;
    PyObject *value = placed == NULL
                          ? Cetf->decode_term(data, start + 1, L->max_depth, hook, budget, &end)
                          : Cetf->decode_placed(data, start + 1, L->max_depth, hook, budget, &end, placed);
    if (value == NULL || end != start + n || (placed != NULL && !placed->used)) {
        Py_XDECREF(value);
        PyErr_Clear();
        return NULL;
    }
    return value;
}

/* lane_decode_placed without a placed binary. */
static PyObject *
lane_decode(Lane *L, PyObject *data, Py_ssize_t start, Py_ssize_t n, PyObject *hook)
{
    return lane_decode_placed(L, data, start, n, hook, NULL);
}

/* This thread's CURRENT.__dict__, where set_current puts the job (see there), or NULL (no
 * exception set) when CURRENT's type has data descriptors of those names: set_attr then. */
static PyObject *
current_dict(Lane *L)
{
    PyObject *current = PyObject_GetAttr(L->current, S___dict__);
    if (current == NULL || !PyDict_CheckExact(current) ||
        _PyType_Lookup(Py_TYPE(L->current), S_job) != NULL ||
        _PyType_Lookup(Py_TYPE(L->current), S_jobs) != NULL) {
        Py_CLEAR(current);
        PyErr_Clear();
    }
    return current;
}

/* Lane.take(payload, me) -> None, LOST, a term or payload: see _lane.build. A large frame
 * (the splitter's own bytearray, read whole, or a placed frame: _framing.Placed, whose
 * binary the decoder takes as read) that is a call: decoded with BytesHook (not
 * scanned first: the decoder looks at each tuple's first element, and a frame of megabytes
 * scanned byte by byte would cost more than the decode that fails), then handled as
 * Lane.run handles a frame. */
static PyObject *
lane_take(Lane *L, PyObject *const *args, Py_ssize_t nargs)
{
    /* payload: a bytearray, or a placed frame (buffer, start, value): _framing.Placed */
    PyObject *payload = nargs == 2 ? args[0] : NULL, *me = nargs == 2 ? args[1] : NULL;
    PyObject *buffer = payload;
    Placed placed = {0, NULL, 0};
    if (payload != NULL && PyTuple_Check(payload) && PyTuple_GET_SIZE(payload) == 3) {
        buffer = PyTuple_GET_ITEM(payload, 0);
        placed.start = PyLong_AsSsize_t(PyTuple_GET_ITEM(payload, 1));
        placed.value = PyTuple_GET_ITEM(payload, 2);
        if (placed.start == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (!PyBytes_CheckExact(placed.value) || !PyByteArray_CheckExact(buffer) || placed.start < 0 ||
            placed.start > PyByteArray_GET_SIZE(buffer)) {
            PyErr_SetString(PyExc_TypeError, "take(payload, me): a placed payload is (bytearray, start, bytes)");
            return NULL;
        }
    }
    if (buffer == NULL || !PyByteArray_CheckExact(buffer)) {
        PyErr_SetString(PyExc_TypeError, "take(payload, me): payload a bytearray or a placed frame");
        return NULL;
    }
    Py_ssize_t n = PyByteArray_GET_SIZE(buffer);
    if (!call_head((const unsigned char *)PyByteArray_AS_STRING(buffer), n)) {
        return Py_NewRef(payload);
    }
    PyObject *value = lane_decode_placed(L, buffer, 0, n, BytesHook, placed.value != NULL ? &placed : NULL);
    if (value == NULL) {
        return Py_NewRef(payload);
    }
    PyObject *current = current_dict(L);
    int lost = 0;
    int taken = lane_request(L, value, me, current, &lost);
    Py_XDECREF(current);
    if (taken <= 0) { /* decoded, not the lane's: the general path goes on with it */
        if (taken < 0) {
            Py_CLEAR(value);
        }
        return value;
    }
    Py_DECREF(value);
    return Py_NewRef(lost ? L->lost : Py_None);
}

/* Lane.run(buf, r, w, me[, read]) -> (left, term): see _lane.build. */
static PyObject *
lane_run(Lane *L, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 4 && nargs != 5) || !PyByteArray_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "run(buf: bytearray, r, w, me[, read])");
        return NULL;
    }
    PyObject *buf = args[0], *me = args[3];
    int reading = nargs == 5 ? PyObject_IsTrue(args[4]) : 0;
    if (reading < 0) {
        return NULL;
    }
    if (reading) { /* (it reads into buf: the splitter's own buffer, and nothing else) */
        PyObject *own = get_attr(L->splitter, S__buf);
        Py_XDECREF(own);
        if (own != buf) {
            if (own != NULL) {
                PyErr_SetString(PyExc_ValueError, "run: buf is not the splitter's buffer");
            }
            return NULL;
        }
    }
    Py_ssize_t r = PyLong_AsSsize_t(args[1]), w = PyLong_AsSsize_t(args[2]);
    if ((r == -1 || w == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (r < 0 || w < r || w > PyByteArray_GET_SIZE(buf)) {
        PyErr_SetString(PyExc_ValueError, "run: r and w out of range");
        return NULL;
    }
    /* `buf`, `r` and `w` are held across the calls the lane runs (user code). That is safe
     * because only the thread holding the reading role does anything with the splitter, and
     * the role moves only away from a thread inside an inline call (_scheduler's I4: taken
     * over by the stand-by, or handed over by suspend()) and only to another loop thread
     * (in Scheduler.standby(), or a new one), never back to a thread still in its call. So,
     * once a call is over, either Scheduler.inline_ended says this thread still reads, and
     * no other thread has touched the splitter since it gave this view (its bytes are where
     * they were), or it says it no longer reads and run() returns LOST without looking at
     * `buf` again. The buffer is never resized either (FrameSplitter's fixed buffer). A
     * violation would show as a stale view: consume(start, end) refuses it before the
     * frame's call runs. */
    PyObject *term = Py_None;
    Py_INCREF(term);
    PyObject *current = NULL; /* CURRENT.__dict__ (this thread's), once a call comes */
    int current_tried = 0;
    int drained; /* no complete frame left that the lane does not take */
    for (;;) {
        drained = 1;
        while (w - r >= 4) {
            if (w > PyByteArray_GET_SIZE(buf)) { /* (the buffer never shrinks: see above) */
                PyErr_SetString(PyExc_RuntimeError, "run: the splitter's buffer shrank");
                goto error;
            }
            const unsigned char *p = (const unsigned char *)PyByteArray_AS_STRING(buf);
            Py_ssize_t n = ((Py_ssize_t)p[r] << 24) | (p[r + 1] << 16) | (p[r + 2] << 8) | p[r + 3];
            if (n > L->max_frame) {
                drained = 0;
                break; /* refused by the general path */
            }
            if (n > w - r - 4) {
                break; /* incomplete */
            }
            const unsigned char *f = p + r + 4;
            int tags = call_head(f, n) ? tag_scan(f, n) : 2;
            PyObject *value = tags == 2 ? NULL : lane_decode(L, buf, r + 4, n, tags ? BytesHook : NULL);
            if (value == NULL) {
                drained = 0;
                break;
            }
            /* Taken from the splitter before the call runs: a stand-by that takes the reading
             * role over during a long call reads on from the next frame. */
            if (lane_consume(L, r, r + 4 + n) < 0) {
                Py_DECREF(value);
                goto error;
            }
            r += 4 + n;
            int lost = 0;
            if (current == NULL && !current_tried) {
                current_tried = 1;
                current = current_dict(L);
            }
            int taken = lane_request(L, value, me, current, &lost);
            if (taken < 0) {
                Py_DECREF(value);
                goto error;
            }
            if (taken == 0) { /* decoded, not the lane's: the general path goes on with it */
                Py_SETREF(term, value);
                break;
            }
            Py_DECREF(value);
            if (lost) {
                Py_SETREF(term, Py_NewRef(L->lost));
                break;
            }
        }
        if (term != Py_None || !drained) {
            break; /* a request for the general path, the reading role gone, a frame left */
        }
        /* Every complete frame taken: the replies held go out now, as the read loop would
         * send them next (Scheduler.flush_held; I5 in _scheduler.py). */
        if (lane_flush(L) < 0) {
            goto error;
        }
        /* Then, when asked to and every byte was consumed (no partial frame to move), the read
         * loop's next read. */
        if (!reading || r != w) {
            break;
        }
        int got = lane_read(L, buf, &r, &w);
        if (got < 0) {
            goto error;
        }
        if (got == 0) {
            break;
        }
    }
    PyObject *left = PyLong_FromSsize_t(w - r);
    if (left == NULL) {
        goto error;
    }
    PyObject *out = PyTuple_Pack(2, left, term);
    Py_DECREF(left);
    Py_DECREF(term);
    Py_XDECREF(current);
    return out;
error:
    Py_DECREF(term);
    Py_XDECREF(current);
    return NULL;
}

static int
lane_init(Lane *self, PyObject *args, PyObject *kwargs)
{
    static const char *objects[] = {
#define NAME(f) #f,
        LANE_OBJECTS(NAME)
#undef NAME
    };
    static const char *sizes[] = {"expansion", "floor", "max_memory", "segment_bytes",
                                  "max_packet", "max_frame", "out_fd", "in_fd", "batch_review",
                                  "result_depth"};
    Py_ssize_t *size_slots[] = {&self->expansion, &self->floor, &self->max_memory,
                                &self->segment_bytes, &self->max_packet, &self->max_frame,
                                &self->out_fd, &self->in_fd, &self->batch_review,
                                &self->result_depth};
    Py_ssize_t nobjects = sizeof(objects) / sizeof(objects[0]);
    Py_ssize_t nsizes = sizeof(sizes) / sizeof(sizes[0]);
    if (PyTuple_GET_SIZE(args) != 0 || kwargs == NULL || PyDict_GET_SIZE(kwargs) != nobjects + nsizes) {
        PyErr_Format(PyExc_TypeError, "Lane() takes exactly the %zd keyword arguments of _lane.py",
                     nobjects + nsizes);
        return -1;
    }
    PyObject *values[sizeof(objects) / sizeof(objects[0])];
    for (Py_ssize_t k = 0; k < nobjects; k++) {
        values[k] = PyDict_GetItemString(kwargs, objects[k]); /* borrowed */
        if (values[k] == NULL) {
            PyErr_Format(PyExc_TypeError, "Lane() missing keyword argument %s", objects[k]);
            return -1;
        }
    }
    for (Py_ssize_t k = 0; k < nsizes; k++) {
        PyObject *v = PyDict_GetItemString(kwargs, sizes[k]);
        *size_slots[k] = v == NULL ? -1 : PyLong_AsSsize_t(v);
        if (*size_slots[k] < 0) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError, "Lane(): %s must be a non-negative int", sizes[k]);
            }
            return -1;
        }
    }
    Py_ssize_t k = 0;
#define SET(f)                                                                           \
    Py_INCREF(values[k]);                                                                \
    Py_XSETREF(self->f, values[k]);                                                      \
    k++;
    LANE_OBJECTS(SET)
#undef SET
    if (!PyDict_CheckExact(self->sessions) || !PyDict_CheckExact(self->jobs_table) ||
        !PyDict_CheckExact(self->allowed)) {
        PyErr_SetString(PyExc_TypeError, "Lane: sessions, jobs_table and allowed must be dicts");
        return -1;
    }
    long *states[5] = {&self->n_queued, &self->n_running, &self->n_done, &self->n_failed,
                       &self->n_interrupted};
    PyObject *objs[5] = {self->queued, self->running, self->done, self->failed, self->interrupted};
    for (int n = 0; n < 5; n++) {
        *states[n] = PyLong_AsLong(objs[n]);
        if (*states[n] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    self->native_clocks = PyCFunction_Check(self->wall) && PyCFunction_Check(self->monotonic);
    /* The scheduler's fields that lane_place and lane_ended use (a rename in _scheduler.py
     * must show here, not as a wrong fast path). */
    PyObject *fields[] = {S_running, S_reader, S_held, S__threads, S__inline_seq, S__inline_active,
                          S__standby_deep, S__pending, S__resuming, S__draining};
    for (size_t k = 0; k < sizeof(fields) / sizeof(fields[0]); k++) {
        PyObject *v = NULL;
        int has = LOOKUP_ATTR(self->sched, fields[k], &v);
        Py_XDECREF(v);
        if (has <= 0) {
            if (has == 0) {
                PyErr_Format(PyExc_TypeError, "Lane: the scheduler has no attribute %R", fields[k]);
            }
            return -1;
        }
    }
    if (long_attr(self->sched, S__threads) != 1) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "Lane: the scheduler must have one thread");
        }
        return -1;
    }
    return job_layout(self);
}

static int
lane_traverse(Lane *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    LANE_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int
lane_clear(Lane *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    LANE_OBJECTS(CLEAR)
#undef CLEAR
    for (int k = 0; k < MAX_JOB_SLOTS; k++) {
        Py_CLEAR(self->job_const[k]);
    }
    Py_CLEAR(self->names[0]);
    Py_CLEAR(self->names[1]);
    self->fast_jobs = 0;
    return 0;
}

static void
lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
lane_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (!READY()) {
        PyErr_SetString(PyExc_RuntimeError, "snakeport._clane: _setup() was not called");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static PyMethodDef lane_methods[] = {
    {"run", (PyCFunction)(void (*)(void))lane_run, METH_FASTCALL,
     "run(buf, r, w, me, read=False)\n--\n\n"
     "Handle the lane's frames in buf[r:w] (and read more with read); return (left, term).\n"
     "See snakeport._lane.build."},
    {"take", (PyCFunction)(void (*)(void))lane_take, METH_FASTCALL,
     "take(payload, me)\n--\n\n"
     "Handle a large frame (a bytearray) if it is the lane's: None (taken), LOST, the\n"
     "decoded term (the general path's), or payload (not decoded). See snakeport._lane.build."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
lane_get_fast_jobs(Lane *self, void *closure)
{
    return PyBool_FromLong(self->fast_jobs);
}

static PyGetSetDef lane_getset[] = {
    {"fast_jobs", (getter)lane_get_fast_jobs, NULL,
     "Whether the lane makes its jobs without running Job.__init__ (see job_layout).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "snakeport._clane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lane(**objects)\n--\n\nThe C lane of the common call (built by snakeport._lane).",
    .tp_new = lane_new,
    .tp_init = (initproc)lane_init,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_methods = lane_methods,
    .tp_getset = lane_getset,
};

/* ------------------------------------------------------------------------------------- */
/* Module                                                                                 */
/* ------------------------------------------------------------------------------------- */

static PyObject *
clane_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "_setup(modules, import_module, lookup, Failure, Cancelled, cetf_api, Atom)");
        return NULL;
    }
    if (READY()) {
        Py_RETURN_NONE;
    }
    if (!PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_setup: modules must be sys.modules");
        return NULL;
    }
    Cetf = PyCapsule_GetPointer(args[5], SNAKEPORT_CETF_CAPSULE);
    if (Cetf == NULL) {
        return NULL;
    }
    if (!PyType_Check(args[6]) || !PyType_IsSubtype((PyTypeObject *)args[6], &PyUnicode_Type)) {
        PyErr_SetString(PyExc_TypeError, "_setup: Atom must be snakeport.types.Atom");
        return NULL;
    }
    PyObject **slots[7] = {&SysModules, &ImportModule, &Lookup, &FailureType, &CancelledType, &CetfCapsule, &AtomType};
    for (int i = 6; i >= 0; i--) { /* SysModules last: it says READY */
        Py_INCREF(args[i]);
        *slots[i] = args[i];
    }
    Py_RETURN_NONE;
}

/* placeable(buffer, start, end, min_len): where the frame whose payload begins at `start`
 * (its version byte) has a binary that snakeport._framing may read into its own `bytes`
 * (a placed frame: no copy of it is made), from the payload's bytes buffer[start:end] read
 * so far: (offset in the payload of the binary's first byte, its length) for the first
 * BINARY_EXT of at least min_len bytes, when everything before it is terms of the kinds a
 * request's head and plain arguments are made of (atoms, numbers, binaries, tuples, lists,
 * maps), no tagged term but {'$snakeport_bytes', Binary} among them, and the frame is a
 * `call` (what Lane.take takes; any other frame would only have to be joined again).
 * None otherwise. The walk is linear: the External Term Format writes a container's
 * header, then its elements, so a term's bytes are skipped by its tag alone. */
static PyObject *
clane_placeable(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyByteArray_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "placeable(buffer, start, end, min_len): buffer a bytearray");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t min_len = PyLong_AsSsize_t(args[3]);
    if ((start == -1 || end == -1 || min_len == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || end < start || end > PyByteArray_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "placeable: start and end out of range");
        return NULL;
    }
    const unsigned char *f = (const unsigned char *)PyByteArray_AS_STRING(args[0]) + start;
    const Py_ssize_t n = end - start;
    const Py_ssize_t k = sizeof(PREFIX) - 1, b = sizeof(BYTES_TEXT) - 1;
    if (!call_head(f, n)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t pos = 1;
    while (pos < n) {
        Py_ssize_t head, len = 0; /* the tag's header bytes, then `len` bytes of its data */
        const unsigned char *t = f + pos;
        switch (t[0]) {
        case 97: head = 2; break;                     /* SMALL_INTEGER_EXT */
        case 98: head = 5; break;                     /* INTEGER_EXT */
        case 70: head = 9; break;                     /* NEW_FLOAT_EXT */
        case 106: head = 1; break;                    /* NIL_EXT */
        case 104: head = 2; break;                    /* SMALL_TUPLE_EXT */
        case 105: case 108: case 116: head = 5; break; /* LARGE_TUPLE, LIST, MAP */
        case 119: case 115:                           /* SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT */
        case 110:                                     /* SMALL_BIG_EXT */
            head = t[0] == 110 ? 3 : 2;
            if (n - pos < 2) {
                Py_RETURN_NONE;
            }
            len = t[1];
            break;
        case 118: case 100: case 107:                 /* ATOM_UTF8, ATOM, STRING_EXT */
            head = 3;
            if (n - pos < 3) {
                Py_RETURN_NONE;
            }
            len = (t[1] << 8) | t[2];
            break;
        case 111: case 109:                           /* LARGE_BIG_EXT, BINARY_EXT */
            head = t[0] == 111 ? 6 : 5;
            if (n - pos < 5) {
                Py_RETURN_NONE;
            }
            len = ((Py_ssize_t)t[1] << 24) | (t[2] << 16) | (t[3] << 8) | t[4];
            if (t[0] == 109 && len >= min_len) {
                return Py_BuildValue("(nn)", pos + 5, len);
            }
            break;
        default:
            Py_RETURN_NONE;
        }
        if (n - pos < head + len) {
            Py_RETURN_NONE;
        }
        if ((t[0] == 119 || t[0] == 115 || t[0] == 118 || t[0] == 100) && len >= k &&
            memcmp(t + head, PREFIX, (size_t)k) == 0 &&
            (len != b || memcmp(t + head, BYTES_TEXT, (size_t)b) != 0)) {
            Py_RETURN_NONE; /* another tagged term: the general path's */
        }
        pos += head + len;
    }
    Py_RETURN_NONE;
}

/* BytesFiller(size): a new `bytes` of size bytes whose contents reads fill, through this
 * object's writable buffer, before anything else sees it; take() gives it (once no buffer of
 * it is held). For snakeport._framing's placed frames: a binary read straight into the
 * `bytes` the decoder then gives as the value, instead of into the frame's buffer and
 * copied from there. Invariant: the `bytes` is referenced by this object alone until
 * take(), so writing into it is writing into an object nothing has seen yet (as
 * PyBytes_FromStringAndSize(NULL, n) then filled is used inside CPython). */
typedef struct {
    PyObject_HEAD
    PyObject *value; /* NULL once taken */
    Py_ssize_t exports;
} BytesFiller;

static PyObject *
filler_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "n:BytesFiller", &size)) {
        return NULL;
    }
    if (size < 1) { /* (0 would be the shared empty bytes) */
        PyErr_Format(PyExc_ValueError, "expected size to be >= 1, got: %zd", size);
        return NULL;
    }
    BytesFiller *self = (BytesFiller *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->value = PyBytes_FromStringAndSize(NULL, size);
    if (self->value == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
filler_dealloc(BytesFiller *self)
{
    Py_XDECREF(self->value);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
filler_getbuffer(BytesFiller *self, Py_buffer *view, int flags)
{
    if (self->value == NULL) {
        PyErr_SetString(PyExc_BufferError, "BytesFiller: its bytes were taken");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, PyBytes_AS_STRING(self->value),
                          PyBytes_GET_SIZE(self->value), 0, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
filler_releasebuffer(BytesFiller *self, Py_buffer *view)
{
    self->exports--;
}

static PyObject *
filler_take(BytesFiller *self, PyObject *unused)
{
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "BytesFiller.take(): a buffer of it is still held");
        return NULL;
    }
    if (self->value == NULL) {
        PyErr_SetString(PyExc_BufferError, "BytesFiller.take(): its bytes were taken");
        return NULL;
    }
    PyObject *value = self->value;
    self->value = NULL;
    return value;
}

static Py_ssize_t
filler_length(BytesFiller *self)
{
    return self->value == NULL ? 0 : PyBytes_GET_SIZE(self->value);
}

static PyBufferProcs filler_as_buffer = {(getbufferproc)filler_getbuffer, (releasebufferproc)filler_releasebuffer};

static PySequenceMethods filler_as_sequence = {.sq_length = (lenfunc)filler_length};

static PyMethodDef filler_methods[] = {
    {"take", (PyCFunction)filler_take, METH_NOARGS,
     "take()\n--\n\nThe bytes (once: BufferError after, or while a buffer of it is held)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BytesFillerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "snakeport._clane.BytesFiller",
    .tp_basicsize = sizeof(BytesFiller),
    .tp_dealloc = (destructor)filler_dealloc,
    .tp_as_sequence = &filler_as_sequence,
    .tp_as_buffer = &filler_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BytesFiller(size)\n--\n\nA new bytes of size bytes, filled through this object's "
              "writable buffer, then taken (see _clane.c).",
    .tp_methods = filler_methods,
    .tp_new = filler_new,
};

/* uninitialized(size): a bytearray of size bytes left as the allocator gives them (not
 * zeroed), for a buffer that reads fill before anything looks at it (snakeport._framing's
 * large payloads: bytearray(size) would write every byte once more). */
static PyObject *
clane_uninitialized(PyObject *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_Format(PyExc_ValueError, "expected size to be >= 0, got: %zd", size);
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, size);
}

/* page_offset(buffer): where the buffer's first byte lies in its memory page (its address
 * modulo 4096): snakeport._writer and snakeport._framing keep large copies between the pipe
 * and a buffer out of the 4K-aliasing window (_framing.aliases). */
static PyObject *
clane_page_offset(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uintptr_t address = (uintptr_t)view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromSize_t((size_t)(address & 4095));
}

/* grow(buffer, size): buffer (a bytearray) made size bytes long, the new bytes not set: in
 * place (realloc: no copy when the allocator can extend the block, as for an mmap-ed one)
 * when nothing holds a view of it, else a new uninitialized bytearray holding its bytes. */
static PyObject *
clane_grow(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyByteArray_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "grow(buffer, size) takes a bytearray and a size");
        return NULL;
    }
    PyObject *buffer = args[0];
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t old = PyByteArray_GET_SIZE(buffer);
    if (size < old) {
        PyErr_Format(PyExc_ValueError, "expected size to be >= %zd, got: %zd", old, size);
        return NULL;
    }
    if (((PyByteArrayObject *)buffer)->ob_exports == 0) {
        if (PyByteArray_Resize(buffer, size) < 0) {
            return NULL;
        }
        Py_INCREF(buffer);
        return buffer;
    }
    PyObject *grown = PyByteArray_FromStringAndSize(NULL, size);
    if (grown != NULL && old > 0) {
        memcpy(PyByteArray_AS_STRING(grown), PyByteArray_AS_STRING(buffer), (size_t)old);
    }
    return grown;
}

/* async_raise(thread_ident, exc): PyThreadState_SetAsyncExc(thread_ident, exc), exc None
 * clearing a pending one; the number of threads changed (0 or 1). What snakeport._jobs did
 * with ctypes.pythonapi, without importing ctypes (and libffi) into every worker. */
static PyObject *
clane_async_raise(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "async_raise(thread_ident, exc) takes 2 arguments");
        return NULL;
    }
    unsigned long ident = PyLong_AsUnsignedLong(args[0]);
    if (ident == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(PyThreadState_SetAsyncExc(ident, args[1] == Py_None ? NULL : args[1]));
}

/* parent_death_signal(signum): prctl(PR_SET_PDEATHSIG, signum) (Linux): whether the kernel
 * will send signum when the parent exits; False elsewhere or when prctl fails. What
 * snakeport._process did with ctypes, without importing ctypes at every start. */
static PyObject *
clane_parent_death_signal(PyObject *self, PyObject *arg)
{
    long signum = PyLong_AsLong(arg);
    if (signum == -1 && PyErr_Occurred()) {
        return NULL;
    }
#ifdef __linux__
    if (signum < 0 || signum >= NSIG) {
        PyErr_Format(PyExc_ValueError, "expected signum to be a signal number, got: %ld", signum);
        return NULL;
    }
    return PyBool_FromLong(prctl(PR_SET_PDEATHSIG, (unsigned long)signum, 0, 0, 0) == 0);
#else
    Py_RETURN_FALSE;
#endif
}

#ifdef __linux__
/* splice(fd, data, length=-1): the first length bytes of data (any C-contiguous buffer;
 * -1: all of them) into the pipe fd by reference, not copied: vmsplice(2) without flags
 * puts data's memory pages themselves in the pipe, and the reader copies from them. So
 * those bytes must not change, nor their memory be reused, until the reader has read them:
 * the caller sees to it (snakeport._writer: a bytes kept alive until unread(fd) is 0, or
 * a pipe's worth of bytes written after them by copy). Loops as write_all does: the GIL
 * released for each vmsplice, a partial one continued, EINTR retried once the signal
 * handlers ran. True once every byte is in; False, nothing written, when the first
 * vmsplice is refused (EBADF, EINVAL: fd is not a pipe's writing end, or not open; ENOSYS,
 * EPERM: not allowed here), for the caller to write data another way (a write to an fd
 * that is not open then fails as any write); OSError for any other failure. */
static PyObject *
clane_splice(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "splice(fd, data, length=-1) takes 2 or 3 arguments");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0) {
        return NULL;
    }
    Py_ssize_t length = -1;
    if (nargs == 3 && (length = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (length < -1 || length > view.len) {
        PyErr_Format(PyExc_ValueError, "expected length in [0, %zd] or -1, got: %zd", view.len, length);
        PyBuffer_Release(&view);
        return NULL;
    }
    struct iovec iov = {view.buf, (size_t)(length < 0 ? view.len : length)};
    int first = 1;
    PyObject *result = Py_True;
    while (iov.iov_len > 0) {
        Py_ssize_t moved;
        int err;
        Py_BEGIN_ALLOW_THREADS
        moved = vmsplice(fd, &iov, 1, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        if (moved < 0) {
            if (err == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    result = NULL;
                    break;
                }
                continue;
            }
            if (first && (err == EBADF || err == EINVAL || err == ENOSYS || err == EPERM)) {
                result = Py_False;
                break;
            }
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            result = NULL;
            break;
        }
        first = 0;
        iov.iov_base = (char *)iov.iov_base + moved;
        iov.iov_len -= (size_t)moved;
    }
    PyBuffer_Release(&view);
    Py_XINCREF(result);
    return result;
}

/* unread(fd): how many bytes the pipe fd holds that its reader has not read (FIONREAD;
 * either end of the pipe). Raises OSError. */
static PyObject *
clane_unread(PyObject *self, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0) {
        return NULL;
    }
    int count = 0;
    if (ioctl(fd, FIONREAD, &count) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(count);
}
#endif

static PyMethodDef clane_methods[] = {
    {"_setup", (PyCFunction)(void (*)(void))clane_setup, METH_FASTCALL,
     "_setup(modules, import_module, lookup, Failure, Cancelled, cetf_api, Atom)\n--\n\n"
     "The objects the lane uses (called once by snakeport._lane)."},
    {"placeable", (PyCFunction)(void (*)(void))clane_placeable, METH_FASTCALL,
     "placeable(buffer, start, end, min_len)\n--\n\n"
     "(offset, length) of the binary of a call frame's payload (from buffer[start], read up to\n"
     "end) that may be read into its own bytes, or None (see _clane.c)."},
    {"uninitialized", (PyCFunction)clane_uninitialized, METH_O,
     "uninitialized(size)\n--\n\n"
     "A bytearray of size bytes whose contents are not set (for reads to fill)."},
    {"page_offset", (PyCFunction)clane_page_offset, METH_O,
     "page_offset(buffer)\n--\n\n"
     "The address of the buffer's first byte modulo 4096 (a C-contiguous buffer)."},
    {"grow", (PyCFunction)(void (*)(void))clane_grow, METH_FASTCALL,
     "grow(buffer, size)\n--\n\n"
     "The bytearray buffer made size bytes long (new bytes not set): itself, resized, when\n"
     "no view of it is held, else a new bytearray holding its bytes."},
    {"async_raise", (PyCFunction)(void (*)(void))clane_async_raise, METH_FASTCALL,
     "async_raise(thread_ident, exc)\n--\n\n"
     "PyThreadState_SetAsyncExc: raise exc in that thread at its next bytecode (None clears\n"
     "a pending one); the number of threads changed."},
    {"parent_death_signal", (PyCFunction)clane_parent_death_signal, METH_O,
     "parent_death_signal(signum)\n--\n\n"
     "prctl(PR_SET_PDEATHSIG, signum) on Linux: whether it was set (False elsewhere)."},
#ifdef __linux__
    {"splice", (PyCFunction)(void (*)(void))clane_splice, METH_FASTCALL,
     "splice(fd, data, length=-1)\n--\n\n"
     "The first length bytes of data (a C-contiguous buffer; -1: all) into the pipe fd by\n"
     "reference (vmsplice): they must not change until the reader has read them (see\n"
     "unread). True; False, nothing written, when fd refuses it (not a pipe). Linux only."},
    {"unread", (PyCFunction)clane_unread, METH_O,
     "unread(fd)\n--\n\n"
     "The bytes the pipe fd holds that its reader has not read (FIONREAD). Linux only."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef clane_module = {
    PyModuleDef_HEAD_INIT,
    "snakeport._clane",
    "C lane of the worker's common call (see snakeport._lane); optional.",
    -1,
    clane_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__clane(void)
{
    const char *names[] = {"__spec__", "_initializing", "attribute_error", "shutting_down",
                           "requests", "last_access", "running", "active_at", "state",
                           "thread", "fn", "failure", "cancel_sent", "cancel_deferred",
                           "job", "jobs", "awaits", "_r", "_w", "reader", "held", "_threads",
                           "_inline_seq", "_inline_active", "_standby_deep", "_pending",
                           "_resuming", "_draining", "__dict__", "_queue", "_spliced", "_buf", "resume",
                           "engaged", "reads", "check_name"};
    PyObject **slots[] = {&S_spec, &S_initializing, &S_attribute_error, &S_shutting_down,
                          &S_requests, &S_last_access, &S_running, &S_active_at, &S_state,
                          &S_thread, &S_fn, &S_failure, &S_cancel_sent, &S_cancel_deferred,
                          &S_job, &S_jobs, &S_awaits, &S__r, &S__w, &S_reader, &S_held,
                          &S__threads, &S__inline_seq, &S__inline_active, &S__standby_deep,
                          &S__pending, &S__resuming, &S__draining, &S___dict__, &S__queue, &S__spliced, &S__buf, &S_resume,
                          &S_engaged, &S_reads, &S_check_name};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*slots[i] == NULL && intern(slots[i], names[i]) < 0) {
            return NULL;
        }
    }
    if (One == NULL && (One = PyLong_FromLong(1)) == NULL) {
        return NULL;
    }
    if (BytesTag == NULL && intern(&BytesTag, "$snakeport_bytes") < 0) {
        return NULL;
    }
    if (BytesHook == NULL && (BytesHook = PyCFunction_New(&bytes_hook_def, NULL)) == NULL) {
        return NULL;
    }
    if (PyType_Ready(&PlainCallType) < 0 || PyType_Ready(&LaneType) < 0 || PyType_Ready(&BytesFillerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&clane_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&PlainCallType);
    Py_INCREF(&LaneType);
    Py_INCREF(&BytesFillerType);
    if (PyModule_AddObject(m, "PlainCall", (PyObject *)&PlainCallType) < 0 ||
        PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddObject(m, "BytesFiller", (PyObject *)&BytesFillerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
