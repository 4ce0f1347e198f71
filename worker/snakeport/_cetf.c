/* snakeport._cetf: optional C accelerator of snakeport.etf (like msgpack._cmsgpack).
 *
 * These functions replace the hot loops of the pure-Python codec, which stays the reference
 * and the fallback:
 *
 *   decode_term(data: bytes | bytearray, pos: int, max_depth: int, tagged, budget: int)
 *       -> (value, end)
 *       same contract as etf._py_decode_term (the caller checks the version byte, inflates
 *       compressed terms, rejects trailing bytes and converts stray exceptions); a
 *       bytearray (a large frame of the worker) is read in place, not copied. Memory is
 *       charged against `budget` exactly as the Python loop charges it (same amounts, same
 *       order, same offsets: the costs come from etf._COSTS), and atoms are deduplicated
 *       per call the same way (a table of the atoms seen, keyed by their encoding);
 *   decode(data, tagged, max_depth, max_size, max_expansion, max_memory) -> value
 *       etf.decode's fast path: an uncompressed term given as bytes, with the default
 *       limits and no hook, decoded whole with decode_term (the budget and the trailing
 *       bytes checked here, as etf._decode_prefix and etf.decode do); NotImplemented for
 *       any other call (or before _decode_defaults()), which etf.decode then runs in Python;
 *   encode(term, default, max_depth) -> bytes
 *       the term with its version byte, as etf._encode_into would write it. Like the
 *       Python encoder, it encodes each list and dict as it was when it reached it: before
 *       any call into Python code (which may let another thread run, or is a default hook
 *       that changes the containers), the lists and dicts still open are copied.
 *
 * decode_term and encode are also given to C callers without their Python calls: the
 * capsule _C_API (_cetf_api.h), which snakeport._clane uses on every request. The capsule
 * also has decode_placed, decode_term of a frame whose one big binary was read into its own
 * bytes (_cetf_api.h's Placed, the worker's placed frames): the decoder takes that object
 * as the binary's value. It is the lane's alone, not part of the codec's Python API, so
 * the two codecs' behaviour stays the same.
 *
 * Both are non-recursive (explicit stacks, bounded by max_depth). Containers and the frequent
 * leaves are handled here; every rare case calls back into etf.py (looked up by name once,
 * by _setup()): the leaf decoders of the other tags, _atom_at on an atom-cache miss (it
 * validates and raises), _fail/_truncated for errors (same messages and offsets as the Python
 * loop), and _encode_part for objects the encoder does not handle natively (subclasses,
 * ErlMap, ImproperList, opaque terms, large ints, inf/nan, the default hook, ...).
 *
 * Every length is checked against the remaining bytes before it is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "_cetf_api.h"

/* Tag bytes (OTP "External Term Format"; names as in snakeport._etf_tags). */
#define NEW_FLOAT_EXT 70
#define SMALL_INTEGER_EXT 97
#define INTEGER_EXT 98
#define ATOM_EXT 100
#define SMALL_TUPLE_EXT 104
#define LARGE_TUPLE_EXT 105
#define NIL_EXT 106
#define STRING_EXT 107
#define LIST_EXT 108
#define BINARY_EXT 109
#define SMALL_BIG_EXT 110
#define SMALL_ATOM_EXT 115
#define MAP_EXT 116
#define ATOM_UTF8_EXT 118
#define SMALL_ATOM_UTF8_EXT 119

/* Objects of etf.py, looked up by name by _setup() (HELPERS below) at etf's first import
 * (strong references, never released). */
static PyTypeObject *AtomType;
static PyObject *LeafDecoders;   /* tuple of 256: tag -> fn(data, pos) -> (value, end), or None */
static PyObject *AtomAt;         /* _atom_at(data, pos) -> (value, end) */
static PyObject *FinishImproper; /* _finish_improper(items, tail, data, pos) -> value */
static PyObject *ErlMapFromFlat; /* ErlMap._from_flat(flat_list) -> ErlMap */
static PyObject *HookFailure;    /* _HookFailure(exc): carries a tagged-hook exception */
static PyObject *Fail;           /* _fail(message, data, offset): raises DecodeError */
static PyObject *Truncated;      /* _truncated(data, offset): raises DecodeError */
static PyObject *BadTag;         /* _bad_tag(data, pos): raises DecodeError */
static PyObject *AtomBytes;      /* dict Atom -> encoded bytes (etf._ATOM_BYTES) */
static PyObject *EncodeAtom;     /* _encode_atom(atom) -> bytes (fills AtomBytes) */
static PyObject *EncodePart;     /* _encode_part(obj, default, max_depth, depth) -> bytes */
static PyObject *TooDeep;        /* _too_deep(obj, max_depth): raises EncodeError */
static PyObject *TaggedPrefix;   /* "$snakeport_" */
static PyObject *BytesTag;       /* "$snakeport_bytes" (etf.BYTES_TAG) */
static PyObject *OverBudget;     /* _over_budget(data, offset, budget): raises DecodeError */
static PyObject *TaggedCost;     /* _tagged_cost(value, term) -> int */
static PyObject *Changed;        /* _changed(obj): raises EncodeError */
static PyObject *CostTable;      /* _COSTS: the 10 per-value costs of the budget (see etf.py) */

/* etf.decode's default limits, handed over by _decode_defaults() at etf's import: decode()
 * takes its fast path only when it gets these very objects (known valid). NULL until then. */
static PyObject *DefaultDepth, *DefaultSize, *DefaultExpansion;
static long long DEFAULT_SIZE, DEFAULT_EXPANSION, BUDGET_FLOOR, DEFAULT_MEMORY;

/* Memory costs of decoded values (etf._COSTS; see "Memory budget" in etf.py). */
static long long COST_SLOT, COST_CONTAINER, COST_NUMBER, COST_BINARY, COST_ATOM, COST_MAP,
    COST_MAP_PAIR, COST_ERLMAP_PAIR, COST_IMPROPER, COST_OTHER;

#define READY() (AtomType != NULL)

/* ------------------------------------------------------------------------------------- */
/* Helpers                                                                                */
/* ------------------------------------------------------------------------------------- */

static inline uint32_t
be16(const unsigned char *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline double
be_double(const unsigned char *p)
{
    uint64_t bits = 0;
    double value;
    for (int i = 0; i < 8; i++) {
        bits = (bits << 8) | p[i];
    }
    memcpy(&value, &bits, 8);
    return value;
}

/* What n bytes of a binary decode to (etf._utf8_kind): 0 for bytes (not valid UTF-8), else
 * the exact kind of the str; validated a chunk at a time (bounded memory); -1 with an error
 * set on another failure. */
#define KIND_CHUNK (64 * 1024)
static int
utf8_kind(const unsigned char *p, Py_ssize_t n)
{
    int kind = 1;
    Py_ssize_t pos = 0;
    while (pos < n) {
        Py_ssize_t len = n - pos < KIND_CHUNK ? n - pos : KIND_CHUNK;
        Py_ssize_t used = 0;
        PyObject *text = PyUnicode_DecodeUTF8Stateful((const char *)p + pos, len, NULL,
                                                      pos + len == n ? NULL : &used);
        if (text == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                return -1;
            }
            PyErr_Clear();
            return 0;
        }
        if (pos + len == n) {
            used = len;
        }
        int k = (int)PyUnicode_KIND(text);
        kind = k > kind ? k : kind;
        Py_DECREF(text);
        if (used == 0) { /* (cannot happen: a chunk holds more than one sequence) */
            return 0;
        }
        pos += used;
    }
    return kind;
}

/* Call fn(*args) and discard the result; always returns NULL (fn is expected to raise). */
static PyObject *
call_raise(PyObject *fn, PyObject *const *args, size_t nargs)
{
    PyObject *r = PyObject_Vectorcall(fn, args, nargs, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_SystemError, "snakeport._cetf: an error helper returned");
    }
    return NULL;
}

/* The input of one decode_term call. The Python helpers (leaf decoders, error helpers)
 * take bytes: the input itself when it is bytes; for a bytearray, which is decoded in
 * place, a copy made the first time a helper needs one (rare tags, atom cache misses,
 * errors). */
typedef struct {
    PyObject *bytes; /* NULL until needed for a bytearray; owned when `owned` */
    int owned;
    const unsigned char *buf;
    Py_ssize_t size;
} Src;

static PyObject *
src_bytes(Src *src)
{
    if (src->bytes == NULL) {
        src->bytes = PyBytes_FromStringAndSize((const char *)src->buf, src->size);
        src->owned = 1;
    }
    return src->bytes;
}

/* Raise DecodeError("<message> at byte <offset>") through etf._fail. */
static PyObject *
fail(Src *src, Py_ssize_t offset, const char *fmt, ...)
{
    PyObject *data = src_bytes(src);
    if (data == NULL) {
        return NULL;
    }
    va_list va;
    va_start(va, fmt);
    PyObject *message = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (message == NULL) {
        return NULL;
    }
    PyObject *off = PyLong_FromSsize_t(offset);
    if (off == NULL) {
        Py_DECREF(message);
        return NULL;
    }
    PyObject *args[3] = {message, data, off};
    call_raise(Fail, args, 3);
    Py_DECREF(message);
    Py_DECREF(off);
    return NULL;
}

static PyObject *
truncated(Src *src, Py_ssize_t offset)
{
    PyObject *data = src_bytes(src);
    if (data == NULL) {
        return NULL;
    }
    PyObject *off = PyLong_FromSsize_t(offset);
    if (off == NULL) {
        return NULL;
    }
    PyObject *args[2] = {data, off};
    call_raise(Truncated, args, 2);
    Py_DECREF(off);
    return NULL;
}

/* fn(data, pos) -> (value, end): the Python leaf decoders and _atom_at. */
static PyObject *
call_leaf_on(PyObject *fn, PyObject *data, Py_ssize_t pos, Py_ssize_t *end)
{
    PyObject *p = PyLong_FromSsize_t(pos);
    if (p == NULL) {
        return NULL;
    }
    PyObject *args[2] = {data, p};
    PyObject *r = PyObject_Vectorcall(fn, args, 2, NULL);
    Py_DECREF(p);
    if (r == NULL) {
        return NULL;
    }
    if (!PyTuple_CheckExact(r) || PyTuple_GET_SIZE(r) != 2) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_SystemError, "snakeport._cetf: a leaf decoder returned no (value, end)");
        return NULL;
    }
    *end = PyLong_AsSsize_t(PyTuple_GET_ITEM(r, 1));
    if (*end == -1 && PyErr_Occurred()) {
        Py_DECREF(r);
        return NULL;
    }
    PyObject *value = PyTuple_GET_ITEM(r, 0);
    Py_INCREF(value);
    Py_DECREF(r);
    return value;
}

static PyObject *
call_leaf(PyObject *fn, Src *src, Py_ssize_t pos, Py_ssize_t *end)
{
    PyObject *data = src_bytes(src);
    if (data == NULL) {
        return NULL;
    }
    return call_leaf_on(fn, data, pos, end);
}

/* A Python int limit as a Py_ssize_t, huge values clamped (they cannot be reached anyway). */
static int
as_limit(PyObject *obj, Py_ssize_t *out)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow > 0 || v > PY_SSIZE_T_MAX) {
        v = PY_SSIZE_T_MAX;
    }
    else if (overflow < 0 || v < 0) {
        v = 0;
    }
    *out = (Py_ssize_t)v;
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* Atom cache: direct-mapped, keyed by an atom's complete encoding (tag, length, text), so  */
/* a hit needs no validation (a truncated slice is never a complete valid key).             */
/* ------------------------------------------------------------------------------------- */

#define ATOM_CACHE_SIZE 1024 /* a power of two */

typedef struct {
    PyObject *key;   /* bytes */
    PyObject *value; /* Atom, True, False or None */
} AtomEntry;

static AtomEntry atom_cache[ATOM_CACHE_SIZE];

static inline uint32_t
fnv1a(const unsigned char *p, Py_ssize_t n)
{
    uint32_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 16777619u;
    }
    return h;
}

/* ------------------------------------------------------------------------------------- */
/* Short-string cache: the str of a short ASCII binary, direct-mapped, keyed by its bytes.   */
/* ------------------------------------------------------------------------------------- */

/* Requests repeat their short binaries (the session id, module and function names of every
 * call): a hit gives the str decoded before, with its hash computed by the dict lookups it
 * went through, instead of a new str (and its hash) each time. Only ASCII strs are kept (a
 * hit is charged as a decode is: n bytes, no wider kind), and only their bytes are compared,
 * so a hit is what a decode would give, the same object. None without a GIL (a slot is not
 * replaced atomically). */
#define STR_CACHE_SIZE 64 /* a power of two */
#define STR_CACHE_MAX 32  /* longest binary kept (bytes) */

#ifndef Py_GIL_DISABLED
static PyObject *str_cache[STR_CACHE_SIZE]; /* ASCII str (strong references) or NULL */
#endif

/* The slot of n bytes: their length and three of them, mixed (cheaper than hashing them all;
 * a collision only costs a decode). */
static inline size_t
str_cache_index(const unsigned char *p, Py_ssize_t n)
{
    uint32_t h = n == 0 ? 0 : (uint32_t)n ^ ((uint32_t)p[0] << 8) ^ ((uint32_t)p[n / 2] << 16) ^ ((uint32_t)p[n - 1] << 24);
    return (size_t)((h * 2654435761u) >> 16) & (STR_CACHE_SIZE - 1);
}

/* The slot of the n bytes at p (NULL: not cached, too long or no cache) and, in *hit, the
 * str it holds when that is the one of these bytes (a new reference), else NULL. */
static PyObject **
str_cache_slot(const unsigned char *p, Py_ssize_t n, PyObject **hit)
{
    *hit = NULL;
#ifndef Py_GIL_DISABLED
    if (n > STR_CACHE_MAX) {
        return NULL;
    }
    PyObject **slot = &str_cache[str_cache_index(p, n)];
    PyObject *s = *slot;
    if (s != NULL && PyUnicode_GET_LENGTH(s) == n && memcmp(PyUnicode_1BYTE_DATA(s), p, (size_t)n) == 0) {
        *hit = Py_NewRef(s);
    }
    return slot;
#else
    return NULL;
#endif
}

/* Keep the str just decoded from a binary in its slot, when it is ASCII. */
static void
str_cache_put(PyObject **slot, PyObject *value)
{
    if (slot != NULL && PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        Py_XSETREF(*slot, Py_NewRef(value)); /* (a str goes: no Python code runs) */
    }
}

/* The atoms of one decode_term call, keyed by their encoding in the input (which does not
 * change during the call): a repeated atom is the same object and is charged once, as in
 * etf._py_decode_term's `seen` dict. Open addressing, linear probing, a power-of-two size. */
typedef struct {
    PyObject *value; /* strong reference; NULL: empty slot */
    Py_ssize_t off, len;
    uint32_t hash;
} SeenAtom;

typedef struct {
    SeenAtom *slots;
    Py_ssize_t cap, used;
    SeenAtom inline_[16];
} SeenTable;

static void
seen_init(SeenTable *t)
{
    memset(t->inline_, 0, sizeof(t->inline_));
    t->slots = t->inline_;
    t->cap = (Py_ssize_t)(sizeof(t->inline_) / sizeof(t->inline_[0]));
    t->used = 0;
}

static void
seen_free(SeenTable *t)
{
    for (Py_ssize_t i = 0; i < t->cap; i++) {
        Py_XDECREF(t->slots[i].value);
    }
    if (t->slots != t->inline_) {
        PyMem_Free(t->slots);
    }
}

static PyObject * /* borrowed */
seen_get(SeenTable *t, const unsigned char *buf, Py_ssize_t off, Py_ssize_t len, uint32_t hash)
{
    Py_ssize_t mask = t->cap - 1;
    for (Py_ssize_t i = hash & mask;; i = (i + 1) & mask) {
        SeenAtom *e = &t->slots[i];
        if (e->value == NULL) {
            return NULL;
        }
        if (e->hash == hash && e->len == len && memcmp(buf + e->off, buf + off, len) == 0) {
            return e->value;
        }
    }
}

/* Add an atom not in the table yet (takes a new reference to value). */
static int
seen_add(SeenTable *t, Py_ssize_t off, Py_ssize_t len, uint32_t hash, PyObject *value)
{
    if (2 * (t->used + 1) > t->cap) {
        Py_ssize_t cap = 2 * t->cap;
        SeenAtom *grown = PyMem_Calloc(cap, sizeof(SeenAtom));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < t->cap; i++) {
            SeenAtom *e = &t->slots[i];
            if (e->value != NULL) {
                Py_ssize_t j = e->hash & (cap - 1);
                while (grown[j].value != NULL) {
                    j = (j + 1) & (cap - 1);
                }
                grown[j] = *e;
            }
        }
        if (t->slots != t->inline_) {
            PyMem_Free(t->slots);
        }
        t->slots = grown;
        t->cap = cap;
    }
    Py_ssize_t mask = t->cap - 1;
    Py_ssize_t i = hash & mask;
    while (t->slots[i].value != NULL) {
        i = (i + 1) & mask;
    }
    Py_INCREF(value);
    t->slots[i].value = value;
    t->slots[i].off = off;
    t->slots[i].len = len;
    t->slots[i].hash = hash;
    t->used++;
    return 0;
}

/* The memory left for a decode_term call and its total (for the error message). */
typedef struct {
    long long left;
    PyObject *total; /* the budget argument (borrowed), or NULL: `limit` is the total */
    long long limit;
} Budget;

/* Raise DecodeError("decoding needs more than the memory budget ...") through etf. */
static PyObject *
over_budget(Src *src, Py_ssize_t offset, Budget *budget)
{
    PyObject *data = src_bytes(src);
    if (data == NULL) {
        return NULL;
    }
    PyObject *off = PyLong_FromSsize_t(offset);
    PyObject *total = budget->total != NULL ? Py_NewRef(budget->total) : PyLong_FromLongLong(budget->limit);
    if (off != NULL && total != NULL) {
        PyObject *args[3] = {data, off, total};
        call_raise(OverBudget, args, 3);
    }
    Py_XDECREF(off);
    Py_XDECREF(total);
    return NULL;
}


/* The atom whose tag (any of the four atom tags) is at *pos; advances *pos. The first
 * occurrence of an encoding in the call is charged and remembered in `seen`. */
static PyObject *
decode_atom(Src *data, const unsigned char *buf, Py_ssize_t size, Py_ssize_t *pos, SeenTable *seen,
            Budget *budget)
{
    Py_ssize_t p = *pos, keylen, header, end;
    unsigned char tag = buf[p];
    if (tag == SMALL_ATOM_UTF8_EXT || tag == SMALL_ATOM_EXT) {
        if (p + 1 >= size) {
            return truncated(data, size);
        }
        header = 2;
        keylen = 2 + (Py_ssize_t)buf[p + 1];
    }
    else {
        if (p + 2 >= size) {
            return truncated(data, size);
        }
        header = 3;
        keylen = 3 + (Py_ssize_t)be16(buf + p + 1);
    }
    AtomEntry *entry = NULL;
    uint32_t hash = 0;
    PyObject *value = NULL;
    if (p + keylen <= size) {
        hash = fnv1a(buf + p, keylen);
        value = seen_get(seen, buf, p, keylen, hash);
        if (value != NULL) { /* seen in this term: the same object, no charge */
            *pos = p + keylen;
            Py_INCREF(value);
            return value;
        }
        entry = &atom_cache[hash & (ATOM_CACHE_SIZE - 1)];
        if (entry->key != NULL && PyBytes_GET_SIZE(entry->key) == keylen &&
            memcmp(PyBytes_AS_STRING(entry->key), buf + p, keylen) == 0) {
            value = entry->value;
            Py_INCREF(value);
            end = p + keylen;
            goto first;
        }
    }
    /* Miss: etf._atom_at validates (UTF-8, length, truncation) and raises like Python. A
     * bytearray not copied yet is not copied for this: _atom_at gets the atom's own bytes,
     * and only if that fails, the whole input (for the error's offset and data). */
    if (data->bytes == NULL) {
        Py_ssize_t take = keylen < size - p ? keylen : size - p;
        PyObject *piece = PyBytes_FromStringAndSize((const char *)buf + p, take);
        if (piece == NULL) {
            return NULL;
        }
        value = call_leaf_on(AtomAt, piece, 0, &end);
        Py_DECREF(piece);
        if (value != NULL) {
            end += p;
        }
        else {
            PyErr_Clear();
        }
    }
    if (value == NULL) {
        value = call_leaf(AtomAt, data, p, &end);
    }
    if (value == NULL) {
        return NULL;
    }
    if (entry != NULL && end == p + keylen) {
        PyObject *key = PyBytes_FromStringAndSize((const char *)buf + p, keylen);
        if (key == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        PyObject *old_key = entry->key, *old_value = entry->value;
        entry->key = key;
        Py_INCREF(value);
        entry->value = value;
        Py_XDECREF(old_key);
        Py_XDECREF(old_value);
    }
first:
    budget->left -= COST_ATOM + 4 * (long long)(end - p - header);
    if (budget->left < 0) {
        Py_DECREF(value);
        return over_budget(data, p, budget);
    }
    if (end == p + keylen && seen_add(seen, p, keylen, hash, value) < 0) {
        Py_DECREF(value);
        return NULL;
    }
    *pos = end;
    return value;
}

/* ------------------------------------------------------------------------------------- */
/* Decoding                                                                               */
/* ------------------------------------------------------------------------------------- */

/* Frame kinds, as in etf._py_decode_term. */
enum { K_ROOT = 0, K_TUPLE = 1, K_LIST = 2, K_TAIL = 3, K_MAP = 4 };

typedef struct {
    int kind;
    Py_ssize_t base;      /* index in the value stack of the frame's first item */
    Py_ssize_t remaining; /* items still to decode */
} Frame;

typedef struct {
    PyObject **values; /* decoded values not yet in a container (strong references) */
    Py_ssize_t nvalues, values_cap;
    Frame *frames;
    Py_ssize_t nframes, frames_cap;
    PyObject *values_inline[64];
    Frame frames_inline[16];
} DecodeStack;

static int
push_value(DecodeStack *s, PyObject *value)
{
    if (s->nvalues == s->values_cap) {
        Py_ssize_t cap = s->values_cap * 2;
        PyObject **grown;
        if (s->values == s->values_inline) {
            grown = PyMem_New(PyObject *, cap);
            if (grown != NULL) {
                memcpy(grown, s->values, s->nvalues * sizeof(PyObject *));
            }
        }
        else {
            grown = PyMem_Resize(s->values, PyObject *, cap);
        }
        if (grown == NULL) {
            Py_DECREF(value);
            PyErr_NoMemory();
            return -1;
        }
        s->values = grown;
        s->values_cap = cap;
    }
    s->values[s->nvalues++] = value;
    return 0;
}

static Frame *
push_frame(DecodeStack *s)
{
    if (s->nframes == s->frames_cap) {
        Py_ssize_t cap = s->frames_cap * 2;
        Frame *grown;
        if (s->frames == s->frames_inline) {
            grown = PyMem_New(Frame, cap);
            if (grown != NULL) {
                memcpy(grown, s->frames, s->nframes * sizeof(Frame));
            }
        }
        else {
            grown = PyMem_Resize(s->frames, Frame, cap);
        }
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        s->frames = grown;
        s->frames_cap = cap;
    }
    return &s->frames[s->nframes++];
}

static void
free_stack(DecodeStack *s)
{
    for (Py_ssize_t i = 0; i < s->nvalues; i++) {
        Py_DECREF(s->values[i]);
    }
    if (s->values != s->values_inline) {
        PyMem_Free(s->values);
    }
    if (s->frames != s->frames_inline) {
        PyMem_Free(s->frames);
    }
}

/* A list of the values from index `base` on (moved out of the stack). */
static PyObject *
take_list(DecodeStack *s, Py_ssize_t base)
{
    Py_ssize_t n = s->nvalues - base;
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(list, i, s->values[base + i]);
    }
    s->nvalues = base;
    return list;
}

static PyObject *
take_tuple(DecodeStack *s, Py_ssize_t base)
{
    Py_ssize_t n = s->nvalues - base;
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(tuple, i, s->values[base + i]);
    }
    s->nvalues = base;
    return tuple;
}

/* The map of the 2n values from `base` on: a dict, or an ErlMap (colliding/unhashable keys),
 * which is charged before it is made (as in etf._py_decode_term). */
static PyObject *
take_map(DecodeStack *s, Py_ssize_t base, Src *data, Py_ssize_t pos, Budget *budget)
{
    Py_ssize_t n = s->nvalues - base;
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i += 2) {
        if (PyDict_SetItem(dict, s->values[base + i], s->values[base + i + 1]) < 0) {
            Py_DECREF(dict);
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                return NULL;
            }
            PyErr_Clear();
            goto erlmap;
        }
    }
    if (2 * PyDict_GET_SIZE(dict) == n) {
        for (Py_ssize_t i = base; i < s->nvalues; i++) {
            Py_DECREF(s->values[i]);
        }
        s->nvalues = base;
        return dict;
    }
    Py_DECREF(dict);
erlmap:
    budget->left -= COST_CONTAINER + COST_ERLMAP_PAIR / 2 * (long long)n;
    if (budget->left < 0) {
        return over_budget(data, pos, budget);
    }
    PyObject *flat = take_list(s, base);
    if (flat == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_CallOneArg(ErlMapFromFlat, flat);
    Py_DECREF(flat);
    return value;
}

/* Call tagged(tuple); an exception it raises is wrapped in _HookFailure (see etf.decode). */
static PyObject *
call_tagged(PyObject *tagged, PyObject *tuple)
{
    PyObject *value = PyObject_CallOneArg(tagged, tuple);
    if (value != NULL) {
        return value;
    }
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL && exc != NULL) {
        PyException_SetTraceback(exc, tb);
    }
    PyObject *failure = exc ? PyObject_CallOneArg(HookFailure, exc) : NULL;
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    if (failure != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(failure), failure);
        Py_DECREF(failure);
    }
    return NULL;
}

#define TRUNCATED() do { truncated(data, size); goto error; } while (0)

/* Charge COST bytes of memory for the value whose tag is at TAGPOS (see etf.py). */
#define CHARGE(COST, TAGPOS)                                                             \
    do {                                                                                 \
        budget.left -= (COST);                                                           \
        if (budget.left < 0) {                                                           \
            over_budget(data, (TAGPOS), &budget);                                   \
            goto error;                                                                  \
        }                                                                                \
    } while (0)

/* Open a container frame, failing as the Python loop does when nesting exceeds max_depth,
 * then when the container (COST) does not fit in the budget. */
#define OPEN(KIND, COUNT, TAGPOS, COST)                                                  \
    do {                                                                                 \
        if (s.nframes > max_depth) { /* frames include the root */                      \
            fail(data, (TAGPOS), "nesting deeper than max_depth=%S", max_depth_obj);     \
            goto error;                                                                  \
        }                                                                                \
        CHARGE(COST, TAGPOS);                                                            \
        Frame *nf = push_frame(&s);                                                      \
        if (nf == NULL) {                                                                \
            goto error;                                                                  \
        }                                                                                \
        nf->kind = (KIND);                                                               \
        nf->base = s.nvalues;                                                            \
        nf->remaining = (COUNT);                                                         \
        f = nf;                                                                          \
    } while (0)

/* A binary's value as `bytes`: the placed value itself when `own` is set (see Placed),
 * else a copy of its `n` bytes at `bin`. */
static inline PyObject *
binary_bytes(PyObject *own, const unsigned char *bin, Py_ssize_t n)
{
    return own != NULL ? Py_NewRef(own) : PyBytes_FromStringAndSize((const char *)bin, n);
}

/* decode_term's work (see the module doc), for it and for callers in C (decode, and
 * snakeport._clane through the capsule _C_API): the term at `pos` of `input` (bytes or a
 * bytearray) with its end in *end. `max_depth_obj` is the depth limit (an int; also for
 * the error message); `tagged` NULL without a hook; `budget_obj` the budget as given (for
 * the error message), or NULL: `budget_limit` then stands for it. `placed`: NULL, or a
 * binary's data read apart from `input` (see Placed). */
static PyObject *
decode_at(PyObject *input, Py_ssize_t pos, PyObject *max_depth_obj, PyObject *tagged, long long budget_limit,
          PyObject *budget_obj, Py_ssize_t *end_out, Placed *placed)
{
    if (!READY()) {
        PyErr_SetString(PyExc_RuntimeError, "snakeport._cetf: _setup() was not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(input) && !PyByteArray_CheckExact(input)) {
        PyErr_SetString(PyExc_TypeError, "decode_term: data must be bytes or bytearray");
        return NULL;
    }
    Py_ssize_t max_depth;
    if (as_limit(max_depth_obj, &max_depth) < 0) {
        return NULL;
    }
    Budget budget = {budget_limit, budget_obj, budget_limit};
    Py_ssize_t insize = PyBytes_CheckExact(input) ? PyBytes_GET_SIZE(input) : PyByteArray_GET_SIZE(input);
    if (pos < 0 || pos > insize) {
        PyErr_SetString(PyExc_ValueError, "decode_term: pos out of range");
        return NULL;
    }
    Src src = {NULL, 0, NULL, 0};
    Src *data = &src;
    /* A bytearray is read in place; the export keeps it from being resized meanwhile (a
     * hook that tries gets BufferError). */
    Py_buffer view;
    int have_view = 0;
    if (PyBytes_CheckExact(input)) {
        src.bytes = input;
        src.buf = (const unsigned char *)PyBytes_AS_STRING(input);
        src.size = PyBytes_GET_SIZE(input);
    }
    else {
        if (PyObject_GetBuffer(input, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        have_view = 1;
        src.buf = (const unsigned char *)view.buf;
        src.size = view.len;
    }
    const unsigned char *buf = src.buf;
    const Py_ssize_t size = src.size;
    PyObject *result = NULL;

    DecodeStack s;
    s.values = s.values_inline;
    s.nvalues = 0;
    s.values_cap = (Py_ssize_t)(sizeof(s.values_inline) / sizeof(s.values_inline[0]));
    s.frames = s.frames_inline;
    s.nframes = 0;
    s.frames_cap = (Py_ssize_t)(sizeof(s.frames_inline) / sizeof(s.frames_inline[0]));
    Frame *f = push_frame(&s); /* the root: one value, no nesting */
    f->kind = K_ROOT;
    f->base = 0;
    f->remaining = 1;
    SeenTable seen;
    seen_init(&seen);

    PyObject *value;
    for (;;) {
        while (f->remaining) {
            f->remaining--;
            if (pos >= size) {
                TRUNCATED();
            }
            unsigned char tag = buf[pos];
            uint32_t count;
            switch (tag) {
            case SMALL_ATOM_UTF8_EXT:
            case ATOM_EXT:
            case ATOM_UTF8_EXT:
            case SMALL_ATOM_EXT:
                value = decode_atom(data, buf, size, &pos, &seen, &budget);
                if (value == NULL) {
                    goto error;
                }
                break;
            case SMALL_INTEGER_EXT:
                if (pos + 2 > size) {
                    TRUNCATED();
                }
                value = PyLong_FromLong(buf[pos + 1]);
                pos += 2;
                break;
            case INTEGER_EXT:
                if (pos + 5 > size) {
                    TRUNCATED();
                }
                CHARGE(COST_NUMBER, pos);
                value = PyLong_FromLong((long)(int32_t)be32(buf + pos + 1));
                pos += 5;
                break;
            case NEW_FLOAT_EXT: {
                if (pos + 9 > size) {
                    TRUNCATED();
                }
                double d = be_double(buf + pos + 1);
                if (!isfinite(d)) {
                    fail(data, pos, "NEW_FLOAT_EXT is not finite");
                    goto error;
                }
                CHARGE(COST_NUMBER, pos);
                value = PyFloat_FromDouble(d);
                pos += 9;
                break;
            }
            case BINARY_EXT: {
                if (pos + 5 > size) {
                    TRUNCATED();
                }
                Py_ssize_t n = (Py_ssize_t)be32(buf + pos + 1);
                Py_ssize_t start = pos + 5;
                /* The binary's bytes and where the next term starts: in the input, or the
                 * placed value's when this is the placed binary (its bytes are not in it). */
                const unsigned char *bin = buf + start;
                Py_ssize_t next = start + n;
                PyObject *own = NULL; /* the placed value, when these bytes are its own */
                if (placed != NULL && start == placed->start && !placed->used &&
                    n == PyBytes_GET_SIZE(placed->value)) {
                    placed->used = 1;
                    own = placed->value;
                    bin = (const unsigned char *)PyBytes_AS_STRING(own);
                    next = start;
                }
                else if (n > size - start) {
                    TRUNCATED();
                }
                long long cost = COST_BINARY + n;
                if (tagged != NULL && f->kind == K_TUPLE && f->remaining == 0 &&
                    s.nvalues - f->base == 1 &&
                    Py_IS_TYPE(s.values[f->base], AtomType) &&
                    PyUnicode_Compare(s.values[f->base], BytesTag) == 0) {
                    /* {'$snakeport_bytes', Binary}: bytes at once, never a str. */
                    if (cost > budget.left) {
                        over_budget(data, pos, &budget);
                        goto error;
                    }
                    value = binary_bytes(own, bin, n);
                    budget.left -= cost;
                    pos = next;
                    break;
                }
                /* Checked before the str is made: up to 4 bytes per character, exactly
                 * (bytes, or the str's kind) when that worst case does not fit. */
                int utf8 = 1; /* 0: known not to be UTF-8 */
                if (cost + 3 * (long long)n > budget.left) {
                    utf8 = utf8_kind(bin, n);
                    if (utf8 < 0) {
                        goto error;
                    }
                    if (cost + (long long)((utf8 > 1 ? utf8 : 1) - 1) * n > budget.left) {
                        over_budget(data, pos, &budget);
                        goto error;
                    }
                }
                PyObject **slot = NULL;
                if (utf8 == 0) { /* no failed decode (and its copies of the input) */
                    value = binary_bytes(own, bin, n);
                }
                else if ((slot = str_cache_slot(bin, n, &value)) != NULL && value != NULL) {
                    /* (cached: ASCII, charged as decoded) */
                }
                else if ((value = PyUnicode_DecodeUTF8((const char *)bin, n, NULL)) == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                        goto error;
                    }
                    PyErr_Clear();
                    value = binary_bytes(own, bin, n);
                }
                else if (PyUnicode_GET_LENGTH(value) != n) { /* not ASCII */
                    cost += (long long)(PyUnicode_KIND(value) - 1) * n;
                }
                else {
                    str_cache_put(slot, value);
                }
                budget.left -= cost;
                pos = next;
                break;
            }
            case SMALL_TUPLE_EXT:
                if (pos + 2 > size) {
                    TRUNCATED();
                }
                count = buf[pos + 1];
                pos += 2;
                if (count) {
                    OPEN(K_TUPLE, count, pos - 2, COST_CONTAINER + COST_SLOT * (long long)count);
                    continue;
                }
                value = PyTuple_New(0);
                break;
            case LARGE_TUPLE_EXT:
                if (pos + 5 > size) {
                    TRUNCATED();
                }
                count = be32(buf + pos + 1);
                pos += 5;
                if ((Py_ssize_t)count > size - pos) {
                    fail(data, pos - 5, "LARGE_TUPLE_EXT of %lu elements exceeds the data", (unsigned long)count);
                    goto error;
                }
                if (count) {
                    OPEN(K_TUPLE, count, pos - 5, COST_CONTAINER + COST_SLOT * (long long)count);
                    continue;
                }
                value = PyTuple_New(0);
                break;
            case LIST_EXT:
                if (pos + 5 > size) {
                    TRUNCATED();
                }
                count = be32(buf + pos + 1);
                pos += 5;
                if ((Py_ssize_t)count >= size - pos) { /* each element and the tail take >= 1 byte */
                    fail(data, pos - 5, "LIST_EXT of %lu elements exceeds the data", (unsigned long)count);
                    goto error;
                }
                OPEN(K_LIST, count, pos - 5, COST_CONTAINER + COST_SLOT * (long long)count);
                continue;
            case NIL_EXT:
                CHARGE(COST_CONTAINER, pos);
                value = PyList_New(0);
                pos += 1;
                break;
            case MAP_EXT:
                if (pos + 5 > size) {
                    TRUNCATED();
                }
                count = be32(buf + pos + 1);
                pos += 5;
                if (count) {
                    if ((Py_ssize_t)count > (size - pos) / 2) {
                        fail(data, pos - 5, "MAP_EXT of %lu pairs exceeds the data", (unsigned long)count);
                        goto error;
                    }
                    OPEN(K_MAP, 2 * (Py_ssize_t)count, pos - 5,
                         COST_MAP + 2 * COST_SLOT * (long long)count +
                             (count > 5 ? COST_MAP_PAIR * ((long long)count - 5) : 0));
                    continue;
                }
                CHARGE(COST_CONTAINER, pos - 5);
                value = PyDict_New();
                break;
            case STRING_EXT: {
                if (pos + 3 > size) {
                    TRUNCATED();
                }
                Py_ssize_t n = (Py_ssize_t)be16(buf + pos + 1);
                Py_ssize_t start = pos + 3;
                if (n > size - start) {
                    TRUNCATED();
                }
                CHARGE(COST_CONTAINER + 8 * (long long)n, pos);
                value = PyList_New(n);
                if (value == NULL) {
                    goto error;
                }
                for (Py_ssize_t i = 0; i < n; i++) {
                    PyList_SET_ITEM(value, i, PyLong_FromLong(buf[start + i])); /* cached small ints */
                }
                pos = start + n;
                break;
            }
            case SMALL_BIG_EXT: {
                if (pos + 2 > size) {
                    TRUNCATED();
                }
                Py_ssize_t n = buf[pos + 1];
                Py_ssize_t start = pos + 3;
                if (start + n > size) {
                    TRUNCATED();
                }
                unsigned char sign = buf[pos + 2];
                if (sign > 1) {
                    fail(data, pos + 2, "invalid bignum sign byte %d", (int)sign);
                    goto error;
                }
                CHARGE(COST_NUMBER + 2 * (long long)n, pos);
                if (n <= 8) {
                    uint64_t magnitude = 0;
                    for (Py_ssize_t i = n; i-- > 0;) {
                        magnitude = (magnitude << 8) | buf[start + i];
                    }
                    if (sign && magnitude <= (uint64_t)INT64_MAX) {
                        value = PyLong_FromLongLong(-(long long)magnitude);
                    }
                    else if (sign) {
                        PyObject *positive = PyLong_FromUnsignedLongLong(magnitude);
                        value = positive ? PyNumber_Negative(positive) : NULL;
                        Py_XDECREF(positive);
                    }
                    else {
                        value = PyLong_FromUnsignedLongLong(magnitude);
                    }
                    pos = start + n;
                    break;
                }
                Py_ssize_t end;
                value = call_leaf(PyTuple_GET_ITEM(LeafDecoders, tag), data, pos + 1, &end);
                pos = end;
                break;
            }
            default: {
                PyObject *decoder = PyTuple_GET_ITEM(LeafDecoders, tag);
                if (decoder == Py_None) {
                    PyObject *bytes = src_bytes(data);
                    PyObject *p = bytes ? PyLong_FromSsize_t(pos) : NULL;
                    if (p != NULL) {
                        PyObject *bad_args[2] = {bytes, p};
                        call_raise(BadTag, bad_args, 2);
                        Py_DECREF(p);
                    }
                    goto error;
                }
                Py_ssize_t end;
                value = call_leaf(decoder, data, pos + 1, &end);
                if (value == NULL) {
                    goto error;
                }
                budget.left -= COST_OTHER + 2 * (long long)(end - pos);
                if (budget.left < 0) {
                    Py_DECREF(value);
                    over_budget(data, pos, &budget);
                    goto error;
                }
                pos = end;
                break;
            }
            }
            if (value == NULL || push_value(&s, value) < 0) {
                goto error;
            }
        }
        /* The current frame is complete. */
        switch (f->kind) {
        case K_TUPLE:
            value = take_tuple(&s, f->base);
            if (value == NULL) {
                goto error;
            }
            if (tagged != NULL) {
                PyObject *first = PyTuple_GET_ITEM(value, 0);
                if (Py_TYPE(first) == AtomType &&
                    PyUnicode_Tailmatch(first, TaggedPrefix, 0, PY_SSIZE_T_MAX, -1) == 1) {
                    PyObject *replaced = call_tagged(tagged, value);
                    if (replaced == NULL) {
                        Py_DECREF(value);
                        goto error;
                    }
                    PyObject *cost_args[2] = {replaced, value};
                    PyObject *cost = PyObject_Vectorcall(TaggedCost, cost_args, 2, NULL);
                    Py_DECREF(value);
                    value = replaced;
                    long long c = cost ? PyLong_AsLongLong(cost) : -1;
                    Py_XDECREF(cost);
                    if (c == -1 && PyErr_Occurred()) {
                        Py_DECREF(value);
                        goto error;
                    }
                    budget.left -= c;
                    if (budget.left < 0) {
                        Py_DECREF(value);
                        over_budget(data, pos, &budget);
                        goto error;
                    }
                }
            }
            break;
        case K_LIST:
            if (pos >= size) {
                TRUNCATED();
            }
            if (buf[pos] != NIL_EXT) { /* decode the tail as one more item of this frame */
                f->kind = K_TAIL;
                f->remaining = 1;
                continue;
            }
            pos += 1;
            value = take_list(&s, f->base);
            if (value == NULL) {
                goto error;
            }
            break;
        case K_TAIL: {
            PyObject *tail = s.values[--s.nvalues];
            budget.left -= COST_IMPROPER + 8 * (long long)(s.nvalues - f->base);
            if (budget.left < 0) {
                Py_DECREF(tail);
                over_budget(data, pos, &budget);
                goto error;
            }
            PyObject *items = take_list(&s, f->base);
            if (items == NULL) {
                Py_DECREF(tail);
                goto error;
            }
            PyObject *bytes = src_bytes(data);
            PyObject *p = bytes ? PyLong_FromSsize_t(pos) : NULL;
            if (p == NULL) {
                Py_DECREF(tail);
                Py_DECREF(items);
                goto error;
            }
            PyObject *fin_args[4] = {items, tail, bytes, p};
            value = PyObject_Vectorcall(FinishImproper, fin_args, 4, NULL);
            Py_DECREF(tail);
            Py_DECREF(items);
            Py_DECREF(p);
            if (value == NULL) {
                goto error;
            }
            break;
        }
        case K_MAP:
            value = take_map(&s, f->base, data, pos, &budget);
            if (value == NULL) {
                goto error;
            }
            break;
        default: { /* the root */
            result = s.values[0];
            s.nvalues = 0;
            free_stack(&s);
            seen_free(&seen);
            *end_out = pos;
            goto done;
        }
        }
        s.nframes--;
        f = &s.frames[s.nframes - 1];
        if (push_value(&s, value) < 0) {
            goto error;
        }
    }
error:
    free_stack(&s);
    seen_free(&seen);
done:
    if (have_view) {
        PyBuffer_Release(&view);
    }
    if (src.owned) {
        Py_XDECREF(src.bytes);
    }
    return result;
}

/* decode_term(data, pos, max_depth, tagged, budget) -> (value, end): see the module doc. */
static PyObject *
cetf_decode_term(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "decode_term(data, pos, max_depth, tagged, budget)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t budget_limit;
    if (as_limit(args[4], &budget_limit) < 0) {
        return NULL;
    }
    Py_ssize_t end;
    PyObject *value = decode_at(args[0], pos, args[2], args[3] == Py_None ? NULL : args[3], budget_limit, args[4], &end, NULL);
    if (value == NULL) {
        return NULL;
    }
    PyObject *end_obj = PyLong_FromSsize_t(end);
    PyObject *result = end_obj == NULL ? NULL : PyTuple_Pack(2, value, end_obj);
    Py_XDECREF(end_obj);
    Py_DECREF(value);
    return result;
}

#undef OPEN
#undef CHARGE
#undef TRUNCATED

static PyObject *
cetf_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "decode(data, tagged, max_depth, max_size, max_expansion, max_memory)");
        return NULL;
    }
    if (!READY()) {
        PyErr_SetString(PyExc_RuntimeError, "snakeport._cetf: _setup() was not called");
        return NULL;
    }
    PyObject *data = args[0];
    if (DefaultDepth == NULL || !PyBytes_CheckExact(data) || args[1] != Py_None || args[2] != DefaultDepth ||
        args[3] != DefaultSize || args[4] != DefaultExpansion || args[5] != Py_None) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    if (size < 2 || buf[0] != 131 || buf[1] == 80 || size > DEFAULT_SIZE) {
        Py_RETURN_NOTIMPLEMENTED; /* (an error, or a compressed term: the general path) */
    }
    /* budget = min(max_memory, max_expansion * size + floor), as etf._decode_prefix */
    long long budget = DEFAULT_EXPANSION * size + BUDGET_FLOOR; /* both < 2**40: no overflow */
    if (budget > DEFAULT_MEMORY) {
        budget = DEFAULT_MEMORY;
    }
    Py_ssize_t end;
    PyObject *value = decode_at(data, 1, DefaultDepth, NULL, budget, NULL, &end, NULL);
    if (value == NULL) {
        return NULL;
    }
    if (end != size) { /* the same DecodeError as etf.decode's */
        Py_DECREF(value);
        return fail(&(Src){data, 0, buf, size}, end, "%zd trailing bytes after the term", size - end);
    }
    return value;
}

/* ------------------------------------------------------------------------------------- */
/* Encoding                                                                               */
/* ------------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    Py_ssize_t len, cap;
    unsigned char inline_[512];
} Out;

static int
out_grow(Out *o, Py_ssize_t extra)
{
    if (extra > PY_SSIZE_T_MAX / 2 - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = o->cap;
    while (cap < o->len + extra) {
        cap *= 2;
    }
    unsigned char *grown;
    if (o->p == o->inline_) {
        grown = PyMem_Malloc(cap);
        if (grown != NULL) {
            memcpy(grown, o->p, o->len);
        }
    }
    else {
        grown = PyMem_Realloc(o->p, cap);
    }
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->p = grown;
    o->cap = cap;
    return 0;
}

static inline int
out_reserve(Out *o, Py_ssize_t extra)
{
    return (o->len + extra <= o->cap) ? 0 : out_grow(o, extra);
}

static inline void
put_u8(Out *o, unsigned v)
{
    o->p[o->len++] = (unsigned char)v;
}

static inline void
put_u32(Out *o, uint32_t v)
{
    unsigned char *p = o->p + o->len;
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    o->len += 4;
}

static int
out_write(Out *o, const void *data, Py_ssize_t n)
{
    if (out_reserve(o, n) < 0) {
        return -1;
    }
    memcpy(o->p + o->len, data, n);
    o->len += n;
    return 0;
}

static int
out_bytes_obj(Out *o, PyObject *bytes)
{
    if (!PyBytes_Check(bytes)) {
        PyErr_SetString(PyExc_SystemError, "snakeport._cetf: an encoder helper returned no bytes");
        return -1;
    }
    return out_write(o, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* Container frame of the encoder: the object (strong reference) and where we are in it.
 * E_PAIRS is a dict frame after snapshot_frames(): a list of the keys and values left. */
enum { E_TUPLE = 1, E_LIST = 2, E_DICT = 3, E_PAIRS = 4 };

typedef struct {
    int kind;
    PyObject *obj;
    Py_ssize_t index;  /* next item (tuple, list, pairs) or PyDict_Next position */
    Py_ssize_t size;   /* list: elements (its header), dict: pairs (its header) */
    Py_ssize_t taken;  /* dict: pairs taken so far */
    PyObject *pending; /* dict: the value to encode after its key (strong reference) */
} EFrame;

/* Raise the EncodeError of a list or dict that changed size while it was encoded. */
static int
changed(PyObject *obj)
{
    call_raise(Changed, &obj, 1);
    return -1;
}

/* Replace each list and dict frame from `from` on by a copy of what is left of it (the
 * frames opened since the last call into Python code: nothing could change them since).
 * Called before each call into Python code, which can change them (a default hook, or
 * another thread taking the GIL): what is encoded is what they held when the encoder
 * reached them, as in the Python encoder (which copies each list and dict it enters). */
static int
snapshot_frames(EFrame *frames, Py_ssize_t from, Py_ssize_t nframes)
{
    for (Py_ssize_t i = from; i < nframes; i++) {
        EFrame *fr = &frames[i];
        if (fr->kind == E_LIST) {
            Py_ssize_t n = fr->size - fr->index;
            PyObject *copy = PyList_New(n);
            if (copy == NULL) {
                return -1;
            }
            if (PyList_GET_SIZE(fr->obj) != fr->size) { /* (only a finalizer run by the GC) */
                Py_DECREF(copy);
                return changed(fr->obj);
            }
            for (Py_ssize_t j = 0; j < n; j++) {
                PyObject *item = PyList_GET_ITEM(fr->obj, fr->index + j);
                Py_INCREF(item);
                PyList_SET_ITEM(copy, j, item);
            }
            Py_DECREF(fr->obj);
            fr->obj = copy;
            fr->index = 0;
            fr->size = n;
        }
        else if (fr->kind == E_DICT) {
            Py_ssize_t n = 2 * (fr->size - fr->taken) + (fr->pending != NULL);
            PyObject *flat = PyList_New(n);
            if (flat == NULL) {
                return -1;
            }
            Py_ssize_t j = 0;
            if (fr->pending != NULL) {
                PyList_SET_ITEM(flat, j++, fr->pending); /* the frame's reference passes on */
                fr->pending = NULL;
            }
            PyObject *key, *val;
            while (PyDict_GET_SIZE(fr->obj) == fr->size && j + 2 <= n &&
                   PyDict_Next(fr->obj, &fr->index, &key, &val)) {
                Py_INCREF(key);
                PyList_SET_ITEM(flat, j++, key);
                Py_INCREF(val);
                PyList_SET_ITEM(flat, j++, val);
            }
            if (j != n || PyDict_GET_SIZE(fr->obj) != fr->size) {
                Py_DECREF(flat); /* (unset items are NULL: list_dealloc skips them) */
                return changed(fr->obj);
            }
            Py_DECREF(fr->obj);
            fr->obj = flat;
            fr->kind = E_PAIRS;
            fr->index = 0;
        }
    }
    return 0;
}

/* Before a call into Python code: snapshot the frames opened since the last one. */
#define BEFORE_PYTHON()                                                                  \
    do {                                                                                 \
        if (nsnapped < nframes) {                                                        \
            if (snapshot_frames(frames, nsnapped, nframes) < 0) {                        \
                goto error;                                                              \
            }                                                                            \
            nsnapped = nframes;                                                          \
        }                                                                                \
    } while (0)

#define U32_MAX_LEN ((Py_ssize_t)0xFFFFFFFFLL)

static const unsigned char ATOM_TRUE[] = {SMALL_ATOM_UTF8_EXT, 4, 't', 'r', 'u', 'e'};
static const unsigned char ATOM_FALSE[] = {SMALL_ATOM_UTF8_EXT, 5, 'f', 'a', 'l', 's', 'e'};
static const unsigned char ATOM_NIL[] = {SMALL_ATOM_UTF8_EXT, 3, 'n', 'i', 'l'};

/* The encodings of the atoms encoded last, by identity: an Atom (an immutable str) always
 * encodes to the same bytes, so a hit needs no lookup in _ATOM_BYTES (a dict lookup of a
 * str subclass, ~120 instructions; a reply has two atoms). Direct-mapped; the entries hold
 * references, so an address is not reused while it is in the memo. None without a GIL. */
#define ATOM_MEMO_SIZE 16 /* a power of two */
typedef struct {
    PyObject *atom;  /* Atom (strong reference) or NULL */
    PyObject *bytes; /* its encoding (strong reference) */
} AtomBytesEntry;

#ifndef Py_GIL_DISABLED
static AtomBytesEntry atom_memo[ATOM_MEMO_SIZE];
#endif

static inline AtomBytesEntry *
atom_bytes_entry(PyObject *atom)
{
#ifndef Py_GIL_DISABLED
    return &atom_memo[((uintptr_t)atom >> 4) & (ATOM_MEMO_SIZE - 1)];
#else
    return NULL;
#endif
}

/* Keep atom -> encoded in its entry (when it is not there already). */
static inline void
atom_bytes_keep(AtomBytesEntry *e, PyObject *atom, PyObject *encoded)
{
    if (e != NULL && e->atom != atom) {
        PyObject *old_atom = e->atom, *old_bytes = e->bytes;
        e->atom = Py_NewRef(atom);
        e->bytes = Py_NewRef(encoded);
        Py_XDECREF(old_atom); /* (a str and bytes go: no Python code runs) */
        Py_XDECREF(old_bytes);
    }
}

/* Encode obj through etf._encode_part (everything not handled natively). */
static int
encode_part(Out *o, PyObject *obj, PyObject *deflt, PyObject *max_depth_obj, Py_ssize_t depth)
{
    PyObject *d = PyLong_FromSsize_t(depth);
    if (d == NULL) {
        return -1;
    }
    PyObject *args[4] = {obj, deflt, max_depth_obj, d};
    PyObject *bytes = PyObject_Vectorcall(EncodePart, args, 4, NULL);
    Py_DECREF(d);
    if (bytes == NULL) {
        return -1;
    }
    int r = out_bytes_obj(o, bytes);
    Py_DECREF(bytes);
    return r;
}

static PyObject *
encode_term(PyObject *term, PyObject *deflt, PyObject *max_depth_obj)
{
    if (!READY()) {
        PyErr_SetString(PyExc_RuntimeError, "snakeport._cetf: _setup() was not called");
        return NULL;
    }
    Py_ssize_t max_depth;
    if (as_limit(max_depth_obj, &max_depth) < 0) {
        return NULL;
    }

    Out o;
    o.p = o.inline_;
    o.len = 0;
    o.cap = sizeof(o.inline_);
    put_u8(&o, 131);

    EFrame frames_inline[16];
    EFrame *frames = frames_inline;
    Py_ssize_t nframes = 0, frames_cap = 16;
    Py_ssize_t nsnapped = 0; /* frames below this one hold snapshots (or tuples) */

    PyObject *obj = term;
    Py_INCREF(obj);
    for (;;) {
        /* Encode obj (a strong reference, released below unless a frame took it). */
        PyTypeObject *cls = Py_TYPE(obj);
        int pushed = 0;
        if (out_reserve(&o, 16) < 0) {
            goto error;
        }
        if (cls == &PyUnicode_Type) {
#if PY_VERSION_HEX < 0x030C0000
            if (PyUnicode_READY(obj) < 0) {
                goto error;
            }
#endif
            if (PyUnicode_IS_ASCII(obj)) {
                Py_ssize_t n = PyUnicode_GET_LENGTH(obj);
                if (n > U32_MAX_LEN) {
                    goto slow;
                }
                put_u8(&o, BINARY_EXT);
                put_u32(&o, (uint32_t)n);
                if (out_write(&o, PyUnicode_DATA(obj), n) < 0) {
                    goto error;
                }
            }
            else {
                PyObject *utf8 = PyUnicode_AsUTF8String(obj);
                if (utf8 == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                        goto error;
                    }
                    PyErr_Clear(); /* lone surrogates: let Python raise its EncodeError */
                    goto slow;
                }
                Py_ssize_t n = PyBytes_GET_SIZE(utf8);
                if (n > U32_MAX_LEN) {
                    Py_DECREF(utf8);
                    goto slow;
                }
                put_u8(&o, BINARY_EXT);
                put_u32(&o, (uint32_t)n);
                int r = out_write(&o, PyBytes_AS_STRING(utf8), n);
                Py_DECREF(utf8);
                if (r < 0) {
                    goto error;
                }
            }
        }
        else if (cls == AtomType) {
            AtomBytesEntry *memo = atom_bytes_entry(obj);
            PyObject *encoded = memo != NULL && memo->atom == obj ? memo->bytes
                                                                  : PyDict_GetItemWithError(AtomBytes, obj); /* borrowed */
            if (encoded != NULL) {
                atom_bytes_keep(memo, obj, encoded);
                if (out_bytes_obj(&o, encoded) < 0) {
                    goto error;
                }
            }
            else {
                if (PyErr_Occurred()) {
                    goto error;
                }
                BEFORE_PYTHON();
                encoded = PyObject_CallOneArg(EncodeAtom, obj);
                if (encoded == NULL) {
                    goto error;
                }
                int r = out_bytes_obj(&o, encoded);
                Py_DECREF(encoded);
                if (r < 0) {
                    goto error;
                }
            }
        }
        else if (cls == &PyLong_Type) {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
            if (v == -1 && PyErr_Occurred()) {
                goto error;
            }
            if (overflow) {
                goto slow;
            }
            if (v >= 0 && v <= 255) {
                put_u8(&o, SMALL_INTEGER_EXT);
                put_u8(&o, (unsigned)v);
            }
            else if (v >= INT32_MIN && v <= INT32_MAX) {
                put_u8(&o, INTEGER_EXT);
                put_u32(&o, (uint32_t)(int32_t)v);
            }
            else {
                uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
                unsigned n = 0;
                unsigned char digits[8];
                while (m) {
                    digits[n++] = (unsigned char)m;
                    m >>= 8;
                }
                put_u8(&o, SMALL_BIG_EXT);
                put_u8(&o, n);
                put_u8(&o, v < 0);
                memcpy(o.p + o.len, digits, n);
                o.len += n;
            }
        }
        else if (cls == &PyTuple_Type) {
            Py_ssize_t n = PyTuple_GET_SIZE(obj);
            if (n > U32_MAX_LEN) {
                goto slow;
            }
            if (n < 256) {
                put_u8(&o, SMALL_TUPLE_EXT);
                put_u8(&o, (unsigned)n);
            }
            else {
                put_u8(&o, LARGE_TUPLE_EXT);
                put_u32(&o, (uint32_t)n);
            }
            pushed = n > 0 ? E_TUPLE : 0;
        }
        else if (cls == &PyFloat_Type) {
            double d = PyFloat_AS_DOUBLE(obj);
            if (!isfinite(d)) {
                goto slow;
            }
            uint64_t bits;
            memcpy(&bits, &d, 8);
            put_u8(&o, NEW_FLOAT_EXT);
            put_u32(&o, (uint32_t)(bits >> 32));
            put_u32(&o, (uint32_t)bits);
        }
        else if (cls == &PyList_Type) {
            Py_ssize_t n = PyList_GET_SIZE(obj);
            if (n > U32_MAX_LEN) {
                goto slow;
            }
            if (n == 0) {
                put_u8(&o, NIL_EXT);
            }
            else {
                put_u8(&o, LIST_EXT);
                put_u32(&o, (uint32_t)n);
                pushed = E_LIST;
            }
        }
        else if (cls == &PyDict_Type) {
            Py_ssize_t n = PyDict_GET_SIZE(obj);
            if (n > U32_MAX_LEN) {
                goto slow;
            }
            put_u8(&o, MAP_EXT);
            put_u32(&o, (uint32_t)n);
            pushed = n > 0 ? E_DICT : 0;
        }
        else if (obj == Py_True) {
            memcpy(o.p + o.len, ATOM_TRUE, sizeof(ATOM_TRUE));
            o.len += sizeof(ATOM_TRUE);
        }
        else if (obj == Py_False) {
            memcpy(o.p + o.len, ATOM_FALSE, sizeof(ATOM_FALSE));
            o.len += sizeof(ATOM_FALSE);
        }
        else if (obj == Py_None) {
            memcpy(o.p + o.len, ATOM_NIL, sizeof(ATOM_NIL));
            o.len += sizeof(ATOM_NIL);
        }
        else if (cls == &PyBytes_Type) {
            Py_ssize_t n = PyBytes_GET_SIZE(obj);
            if (n > U32_MAX_LEN) {
                goto slow;
            }
            put_u8(&o, BINARY_EXT);
            put_u32(&o, (uint32_t)n);
            if (out_write(&o, PyBytes_AS_STRING(obj), n) < 0) {
                goto error;
            }
        }
        else {
        slow:
            BEFORE_PYTHON();
            if (encode_part(&o, obj, deflt, max_depth_obj, nframes) < 0) {
                goto error;
            }
        }

        if (pushed) {
            if (nframes + 1 > max_depth) {
                PyObject *too_args[2] = {obj, max_depth_obj};
                call_raise(TooDeep, too_args, 2);
                goto error;
            }
            if (nframes == frames_cap) {
                Py_ssize_t cap = frames_cap * 2;
                EFrame *grown;
                if (frames == frames_inline) {
                    grown = PyMem_New(EFrame, cap);
                    if (grown != NULL) {
                        memcpy(grown, frames, nframes * sizeof(EFrame));
                    }
                }
                else {
                    grown = PyMem_Resize(frames, EFrame, cap);
                }
                if (grown == NULL) {
                    PyErr_NoMemory();
                    goto error;
                }
                frames = grown;
                frames_cap = cap;
            }
            EFrame *nf = &frames[nframes++];
            nf->kind = pushed;
            nf->obj = obj; /* the frame takes our reference */
            nf->index = 0;
            nf->size = pushed == E_DICT ? PyDict_GET_SIZE(obj) : pushed == E_LIST ? PyList_GET_SIZE(obj) : 0;
            nf->taken = 0;
            nf->pending = NULL;
        }
        else {
            Py_DECREF(obj);
        }
        obj = NULL;

        /* Find the next object (a new reference): the next item of the innermost container. */
        while (nframes > 0) {
            EFrame *fr = &frames[nframes - 1];
            if (fr->kind == E_TUPLE) {
                if (fr->index < PyTuple_GET_SIZE(fr->obj)) {
                    obj = PyTuple_GET_ITEM(fr->obj, fr->index++);
                    Py_INCREF(obj);
                    break;
                }
            }
            else if (fr->kind == E_LIST) {
                /* Exactly the `size` elements of the header (the list cannot change unless
                 * Python code ran, and then it was copied first: these checks are a guard). */
                if (fr->index < fr->size) {
                    if (fr->index >= PyList_GET_SIZE(fr->obj)) {
                        changed(fr->obj);
                        goto error;
                    }
                    obj = PyList_GET_ITEM(fr->obj, fr->index++);
                    Py_INCREF(obj);
                    break;
                }
                if (PyList_GET_SIZE(fr->obj) != fr->size) {
                    changed(fr->obj);
                    goto error;
                }
                if (out_reserve(&o, 1) < 0) {
                    goto error;
                }
                put_u8(&o, NIL_EXT);
            }
            else if (fr->kind == E_PAIRS) {
                if (fr->index < PyList_GET_SIZE(fr->obj)) {
                    obj = PyList_GET_ITEM(fr->obj, fr->index++);
                    Py_INCREF(obj);
                    break;
                }
            }
            else {
                if (fr->pending != NULL) {
                    obj = fr->pending; /* the frame's reference passes to obj */
                    fr->pending = NULL;
                    break;
                }
                if (PyDict_GET_SIZE(fr->obj) != fr->size) {
                    changed(fr->obj);
                    goto error;
                }
                PyObject *key, *val;
                if (fr->taken < fr->size && PyDict_Next(fr->obj, &fr->index, &key, &val)) {
                    fr->taken++;
                    Py_INCREF(val);
                    fr->pending = val;
                    Py_INCREF(key);
                    obj = key;
                    break;
                }
                if (fr->taken != fr->size) {
                    changed(fr->obj);
                    goto error;
                }
            }
            nframes--;
            if (nsnapped > nframes) {
                nsnapped = nframes;
            }
            Py_DECREF(fr->obj);
        }
        if (obj == NULL) {
            break; /* all done */
        }
    }

    PyObject *result = PyBytes_FromStringAndSize((const char *)o.p, o.len);
    if (o.p != o.inline_) {
        PyMem_Free(o.p);
    }
    if (frames != frames_inline) {
        PyMem_Free(frames);
    }
    return result;

error:
    Py_XDECREF(obj);
    while (nframes > 0) {
        nframes--;
        Py_XDECREF(frames[nframes].pending);
        Py_DECREF(frames[nframes].obj);
    }
    if (frames != frames_inline) {
        PyMem_Free(frames);
    }
    if (o.p != o.inline_) {
        PyMem_Free(o.p);
    }
    return NULL;
}

/* encode(term, default, max_depth) -> bytes: see the module doc. */
static PyObject *
cetf_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode(term, default, max_depth)");
        return NULL;
    }
    return encode_term(args[0], args[1], args[2]);
}

#undef BEFORE_PYTHON

/* ------------------------------------------------------------------------------------- */
/* Module                                                                                 */
/* ------------------------------------------------------------------------------------- */

/* The helpers _setup() looks up in snakeport.etf, by name (a dotted name is an attribute
 * of an attribute). A rename in etf.py makes the import of snakeport.etf fail with an
 * AttributeError that names the helper, instead of handing over the wrong object. */
enum { H_TYPE, H_TABLE, H_CALLABLE, H_DICT, H_STR, H_COSTS };

static const struct {
    PyObject **slot;
    const char *name;
    int kind;
} HELPERS[] = {
    {(PyObject **)&AtomType, "Atom", H_TYPE},
    {&LeafDecoders, "_LEAF_DECODERS", H_TABLE},
    {&AtomAt, "_atom_at", H_CALLABLE},
    {&FinishImproper, "_finish_improper", H_CALLABLE},
    {&ErlMapFromFlat, "ErlMap._from_flat", H_CALLABLE},
    {&HookFailure, "_HookFailure", H_CALLABLE},
    {&Fail, "_fail", H_CALLABLE},
    {&Truncated, "_truncated", H_CALLABLE},
    {&BadTag, "_bad_tag", H_CALLABLE},
    {&AtomBytes, "_ATOM_BYTES", H_DICT},
    {&EncodeAtom, "_encode_atom", H_CALLABLE},
    {&EncodePart, "_encode_part", H_CALLABLE},
    {&TooDeep, "_too_deep", H_CALLABLE},
    {&TaggedPrefix, "TAGGED_PREFIX", H_STR},
    {&BytesTag, "BYTES_TAG", H_STR},
    {&OverBudget, "_over_budget", H_CALLABLE},
    {&TaggedCost, "_tagged_cost", H_CALLABLE},
    {&Changed, "_changed", H_CALLABLE},
    {&CostTable, "_COSTS", H_COSTS},
};
#define N_HELPERS ((int)(sizeof(HELPERS) / sizeof(HELPERS[0])))

/* etf.<name> (dotted), checked to be of the expected kind; NULL with an error set. */
static PyObject *
helper(PyObject *etf, const char *name, int kind)
{
    PyObject *obj = etf;
    Py_INCREF(obj);
    const char *p = name;
    while (1) {
        const char *dot = strchr(p, '.');
        PyObject *attr_name = dot ? PyUnicode_FromStringAndSize(p, dot - p) : PyUnicode_FromString(p);
        if (attr_name == NULL) {
            Py_DECREF(obj);
            return NULL;
        }
        PyObject *next = PyObject_GetAttr(obj, attr_name);
        Py_DECREF(attr_name);
        Py_DECREF(obj);
        if (next == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_AttributeError,
                             "snakeport._cetf: snakeport.etf has no %s (renamed? _cetf.c looks its helpers "
                             "up by name in _setup)",
                             name);
            }
            return NULL;
        }
        obj = next;
        if (dot == NULL) {
            break;
        }
        p = dot + 1;
    }
    int ok;
    const char *expected;
    switch (kind) {
    case H_TYPE:
        ok = PyType_Check(obj);
        expected = "a type";
        break;
    case H_DICT:
        ok = PyDict_CheckExact(obj);
        expected = "a dict";
        break;
    case H_STR:
        ok = PyUnicode_Check(obj);
        expected = "a str";
        break;
    case H_COSTS:
        ok = PyTuple_CheckExact(obj) && PyTuple_GET_SIZE(obj) == 10;
        for (Py_ssize_t i = 0; ok && i < 10; i++) {
            PyObject *cost = PyTuple_GET_ITEM(obj, i);
            long long value = PyLong_Check(cost) ? PyLong_AsLongLong(cost) : -1;
            if (value == -1 && PyErr_Occurred()) {
                PyErr_Clear();
            }
            ok = value >= 0 && value <= (1 << 20);
        }
        expected = "a tuple of 10 costs, each an integer from 0 to 2**20";
        break;
    case H_TABLE: {
        PyObject *table = PySequence_Tuple(obj);
        Py_DECREF(obj);
        if (table == NULL) {
            return NULL;
        }
        obj = table;
        ok = PyTuple_GET_SIZE(table) == 256;
        expected = "a table of 256 entries";
        break;
    }
    default:
        ok = PyCallable_Check(obj);
        expected = "callable";
        break;
    }
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "snakeport._cetf: snakeport.etf.%s is not %s", name, expected);
        Py_DECREF(obj);
        return NULL;
    }
    return obj;
}

static PyObject *
cetf_setup(PyObject *module, PyObject *etf)
{
    PyObject *found[N_HELPERS];
    for (int i = 0; i < N_HELPERS; i++) {
        found[i] = helper(etf, HELPERS[i].name, HELPERS[i].kind);
        if (found[i] == NULL) {
            while (i-- > 0) {
                Py_DECREF(found[i]);
            }
            return NULL;
        }
    }
    int ready = READY(); /* set by an earlier import of etf.py: keep that set */
    for (int i = 0; i < N_HELPERS; i++) {
        if (ready) {
            Py_DECREF(found[i]);
        }
        else {
            *HELPERS[i].slot = found[i]; /* strong references, never released */
        }
    }
    if (!ready) {
        long long *costs[10] = {&COST_SLOT,     &COST_CONTAINER,   &COST_NUMBER,      &COST_BINARY,
                                &COST_ATOM,     &COST_MAP,         &COST_MAP_PAIR,    &COST_ERLMAP_PAIR,
                                &COST_IMPROPER, &COST_OTHER};
        for (Py_ssize_t i = 0; i < 10; i++) {
            *costs[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(CostTable, i)); /* checked above */
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
cetf_decode_defaults(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "_decode_defaults(max_depth, max_size, max_expansion, budget_floor, max_memory)");
        return NULL;
    }
    long long values[5];
    for (Py_ssize_t i = 0; i < 5; i++) {
        values[i] = PyLong_CheckExact(args[i]) ? PyLong_AsLongLong(args[i]) : -1;
        if (values[i] <= 0 || values[i] >= ((long long)1 << 40)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "_decode_defaults: expected integers from 1 to 2**40 - 1");
            return NULL;
        }
    }
    PyObject *old[3] = {DefaultDepth, DefaultSize, DefaultExpansion};
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_INCREF(args[2]);
    DefaultDepth = args[0];
    DefaultSize = args[1];
    DefaultExpansion = args[2];
    DEFAULT_SIZE = values[1];
    DEFAULT_EXPANSION = values[2];
    BUDGET_FLOOR = values[3];
    DEFAULT_MEMORY = values[4];
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(old[i]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef cetf_methods[] = {
    {"_setup", (PyCFunction)cetf_setup, METH_O,
     "_setup(etf)\n--\n\n"
     "Look up the helpers of the module snakeport.etf by name (called by etf.py at import);\n"
     "AttributeError or TypeError names a helper that is missing or of the wrong kind."},
    {"decode_term", (PyCFunction)(void (*)(void))cetf_decode_term, METH_FASTCALL,
     "decode_term(data, pos, max_depth, tagged, budget)\n--\n\n"
     "Decode the term at pos of data (bytes, or a bytearray read in place); return (value, end).\n"
     "See etf._py_decode_term."},
    {"_decode_defaults", (PyCFunction)(void (*)(void))cetf_decode_defaults, METH_FASTCALL,
     "_decode_defaults(max_depth, max_size, max_expansion, budget_floor, max_memory)\n--\n\n"
     "Hand over etf.decode's default limits (called by etf.py at import): decode() takes its\n"
     "fast path for exactly these max_depth, max_size and max_expansion objects."},
    {"decode", (PyCFunction)(void (*)(void))cetf_decode, METH_FASTCALL,
     "decode(data, tagged, max_depth, max_size, max_expansion, max_memory)\n--\n\n"
     "etf.decode's fast path (bytes, the default limits, no hook): the value, or NotImplemented\n"
     "when etf.decode must take its general path."},
    {"encode", (PyCFunction)(void (*)(void))cetf_encode, METH_FASTCALL,
     "encode(term, default, max_depth)\n--\n\n"
     "Return the External Term Format bytes of term, version byte first. See etf.encode."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cetf_module = {
    PyModuleDef_HEAD_INIT,
    "snakeport._cetf",
    "C accelerator of snakeport.etf (decode_term, encode); etf.py falls back to pure Python.",
    -1,
    cetf_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

/* The direct forms for snakeport._clane (see _cetf_api.h). */
static PyObject *
api_decode_term(PyObject *data, Py_ssize_t pos, PyObject *max_depth, PyObject *tagged, long long budget,
                Py_ssize_t *end)
{
    return decode_at(data, pos, max_depth, tagged, budget, NULL, end, NULL);
}

static PyObject *
api_decode_placed(PyObject *data, Py_ssize_t pos, PyObject *max_depth, PyObject *tagged, long long budget,
                  Py_ssize_t *end, Placed *placed)
{
    return decode_at(data, pos, max_depth, tagged, budget, NULL, end, placed);
}

static CetfApi cetf_api = {api_decode_term, encode_term, api_decode_placed};

PyMODINIT_FUNC
PyInit__cetf(void)
{
    PyObject *m = PyModule_Create(&cetf_module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *api = PyCapsule_New(&cetf_api, SNAKEPORT_CETF_CAPSULE, NULL);
    if (api == NULL || PyModule_AddObject(m, "_C_API", api) < 0) {
        Py_XDECREF(api);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
