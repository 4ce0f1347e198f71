/* The C entry points of snakeport._cetf for the other C extension of the worker,
 * snakeport._clane: a capsule, `snakeport._cetf._C_API`, holding this table (the way
 * CPython's datetime module gives its C API). Calling them directly saves what the Python
 * calls of decode_term and encode cost per request: the arguments boxed and parsed, the
 * (value, end) tuple made and taken apart. */
#ifndef SNAKEPORT_CETF_API_H
#define SNAKEPORT_CETF_API_H

#include <Python.h>

#define SNAKEPORT_CETF_CAPSULE "snakeport._cetf._C_API"

typedef struct {
    /* decode_term(data, pos, max_depth, tagged, budget) without its Python call: the value
     * (a new reference) and its end in *end, or NULL with the exception set. `data` is bytes
     * or a bytearray (read in place), `max_depth` an int, `tagged` NULL without a hook. */
    PyObject *(*decode_term)(PyObject *data, Py_ssize_t pos, PyObject *max_depth, PyObject *tagged,
                             long long budget, Py_ssize_t *end);
    /* encode(term, default, max_depth): the bytes, or NULL with the exception set. */
    PyObject *(*encode)(PyObject *term, PyObject *deflt, PyObject *max_depth);
} CetfApi;

#endif
