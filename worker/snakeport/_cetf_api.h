/* The C entry points of snakeport._cetf for the other C extension of the worker,
 * snakeport._clane: a capsule, `snakeport._cetf._C_API`, holding this table (the way
 * CPython's datetime module gives its C API). Calling them directly saves what the Python
 * calls of decode_term and encode cost per request: the arguments boxed and parsed, the
 * (value, end) tuple made and taken apart. */
#ifndef SNAKEPORT_CETF_API_H
#define SNAKEPORT_CETF_API_H

#include <Python.h>

#define SNAKEPORT_CETF_CAPSULE "snakeport._cetf._C_API"

/* A binary of a frame whose bytes were read into their own `bytes` object instead of the
 * frame's buffer (snakeport._framing's placed frames: no copy of them is made). The buffer
 * holds the frame without them: the binary's BINARY_EXT header ends at `start`, where the
 * term after the binary begins. The decoder takes `value` itself, and sets `used`, for the
 * BINARY_EXT whose bytes would start at `start` and whose length is len(value); the caller
 * must treat a decode that did not use it as a failure (the buffer's bytes from `start` on
 * were then read as the binary's). */
typedef struct {
    Py_ssize_t start;
    PyObject *value; /* bytes (borrowed) */
    int used;
} Placed;

typedef struct {
    /* decode_term(data, pos, max_depth, tagged, budget) without its Python call: the value
     * (a new reference) and its end in *end, or NULL with the exception set. `data` is bytes
     * or a bytearray (read in place), `max_depth` an int, `tagged` NULL without a hook. */
    PyObject *(*decode_term)(PyObject *data, Py_ssize_t pos, PyObject *max_depth, PyObject *tagged,
                             long long budget, Py_ssize_t *end);
    /* encode(term, default, max_depth): the bytes, or NULL with the exception set. */
    PyObject *(*encode)(PyObject *term, PyObject *deflt, PyObject *max_depth);
    /* decode_term of a frame with a placed binary (see Placed). */
    PyObject *(*decode_placed)(PyObject *data, Py_ssize_t pos, PyObject *max_depth, PyObject *tagged,
                               long long budget, Py_ssize_t *end, Placed *placed);
} CetfApi;

#endif
