/*
 * tokenbucket.h: the token-bucket family's part of the module state, its init, and what the
 * family's two files share: tokenbucket.c (TokenBucket, AsyncLimiter's base, the @bucket
 * wrapper) and tbshared.c (SharedTokenBucket, one bucket for every process of the host). The
 * argument validators (one set of rules and messages for both buckets), the configuration check
 * of the constructor, and the decorator.
 */
#ifndef AIOFAST_TOKENBUCKET_H
#define AIOFAST_TOKENBUCKET_H

#include "state.h"

#include <math.h>

typedef struct FaOp FaOp;            // op.h
typedef struct fa_opkind fa_opkind;  // op.h

/* ------------------------------------------------------------------ the family's state */

#define FA_TOKENBUCKET_OBJECTS(X_T, X_O, X_ARRAY) \
    X_T(TokenBucketType) \
    X_T(RateLimitedType) /* the wrapper of @bucket */ \
    X_T(SharedTokenBucketType) /* tbshared.c */ \
    X_O(str_shared) \
    X_O(str_is_closed) \
    X_O(str_clock_resolution) /* "_clock_resolution" */

typedef struct {
    FA_STATE_FIELDS(FA_TOKENBUCKET_OBJECTS)
} fa_tokenbucket_state;

FA_STATE_WALKERS(tokenbucket, FA_TOKENBUCKET_OBJECTS)

/* TokenBucket, AsyncLimiter's base, RateLimited, and (through fa_tbshared_init)
 * SharedTokenBucket. Needs: core, engine. */
int fa_tokenbucket_init(PyObject *mod, fa_state *st);

/* ------------------------------------------------------------------ shared by the two files */

/* RateLimited's op: the token is consumed, the function runs (fa_tb_call_run sets it) */
#define TB_OPF_CALLING 0x800

/* A bucket's configuration as the constructor checked it. cap_obj: the capacity as given (or
 * its default), a new reference. */
typedef struct {
    double rate;
    double per;
    double capacity;
    double initial;
    PyObject *cap_obj;
} fa_tb_config;

/* Check rate, per (NULL: 1.0), capacity and initial (None: their defaults) as TokenBucket's
 * constructor does, with its messages. 0, or -1 (nothing held). */
int fa_tb_config_parse(PyObject *rate_o, PyObject *per_o, PyObject *cap_o, PyObject *init_o,
                       fa_tb_config *out);

/* A number for repr: integral values without ".0", others to 9 significant digits. */
PyObject *fa_tb_num_str(double x);

/* bucket(func): the RateLimited wrapper whose calls run ops of call_kind on bucket (they start
 * by taking one token, then run fa_tb_call_run). */
PyObject *fa_tb_decorate(fa_state *st, PyObject *bucket, PyObject *args, PyObject *kwargs,
                         const fa_opkind *call_kind);

/* The token is the op's: call the wrapped function (op->arg2) and `yield from` its result. */
PySendResult fa_tb_call_run(FaOp *op, PyObject **res);

/* SharedTokenBucket (tbshared.c); fa_tokenbucket_init calls it. */
int fa_tbshared_init(PyObject *mod, fa_state *st);

/* ------------------------------------------------------------------ argument parsing */

/* A real number as a double: 0, -1 (TypeError naming the argument, or the error its
 * __float__/__index__ raised), or -2 (ValueError: too large for a float; see tb_huge_negative). */
static inline int
tb_real(PyObject *obj, const char *name, double *out)
{
    double d;
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    if (PyComplex_Check(obj) || PyUnicode_Check(obj) || PyBytes_Check(obj)
        || !PyNumber_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number, not %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    d = PyFloat_AsDouble(obj);
    if (d == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be a finite number, got %R", name, obj);
            return -2;
        }
        else if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a real number, not %.100s", name,
                         Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    *out = d;
    return 0;
}

/* Parse (a=..., b=...) from a vectorcall: positional or keyword, both optional. */
static inline int
tb_parse2(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
          const char *n0, const char *n1, PyObject **o0, PyObject **o1)
{
    Py_ssize_t max = n1 ? 2 : 1;
    if (nargs > max) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd argument%s (%zd given)", fname,
                     max, max == 1 ? "" : "s", nargs);
        return -1;
    }
    if (nargs > 0) {
        *o0 = args[0];
    }
    if (nargs > 1) {
        *o1 = args[1];
    }
    if (kwnames == NULL) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        PyObject *v = args[nargs + i];
        int idx = -1;
        if (PyUnicode_CompareWithASCIIString(k, n0) == 0) {
            idx = 0;
        }
        else if (n1 && PyUnicode_CompareWithASCIIString(k, n1) == 0) {
            idx = 1;
        }
        if (idx < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, k);
            return -1;
        }
        if (idx < nargs) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         idx == 0 ? n0 : n1);
            return -1;
        }
        if (idx == 0) {
            *o0 = v;
        }
        else {
            *o1 = v;
        }
    }
    return 0;
}

/* Is obj, a number too large for a float (tb_real returned -2), negative? 1, 0, -1.
 * Beware: Python code (__index__, __lt__). */
static inline int
tb_huge_negative(PyObject *obj)
{
    PyObject *v = PyIndex_Check(obj) ? PyNumber_Index(obj) : Py_NewRef(obj);  // new ref
    if (v == NULL) {
        return -1;
    }
    int neg = PyObject_RichCompareBool(v, Py_False, Py_LT);  // False == 0
    Py_DECREF(v);
    return neg;
}

/* A token count: > 0 and <= capacity (cap_obj: the capacity as given, for the message). */
static inline int
tb_count_arg(PyObject *obj, double capacity, PyObject *cap_obj, double *out)
{
    if (obj == NULL) {
        *out = 1.0;  // capacity >= 1 always
        return 0;
    }
    double n;
    if (PyLong_CheckExact(obj)) {
        n = PyLong_AsDouble(obj);
        if (n == -1.0 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return -1;
            }
            PyErr_Clear();
            int neg = PyObject_RichCompareBool(obj, Py_False, Py_LT);  // False == 0
            if (neg < 0) {
                return -1;
            }
            n = neg ? -INFINITY : INFINITY;
        }
    }
    else {
        int rc = tb_real(obj, "tokens", &n);
        if (rc == -1) {
            return -1;  // not a number, or its own error (a __float__ raising ValueError too)
        }
        if (rc == -2) {
            /* too large for a float: above any capacity, or below 0 */
            PyErr_Clear();
            int neg = tb_huge_negative(obj);
            if (neg < 0) {
                return -1;
            }
            n = neg ? -INFINITY : INFINITY;
        }
    }
    if (!(n > 0)) {
        PyErr_Format(PyExc_ValueError, "tokens must be > 0, got %R", obj);
        return -1;
    }
    if (n > capacity) {
        PyErr_Format(PyExc_ValueError, "tokens must be <= capacity (%R), got %R: the request "
                     "could never be satisfied", cap_obj, obj);
        return -1;
    }
    *out = n;
    return 0;
}

/* timeout: None (wait as long as it takes) or a number (<= 0: only if available at once). */
static inline int
tb_timeout_arg(PyObject *obj, PyObject **out)
{
    if (obj == NULL || obj == Py_None) {
        *out = NULL;
        return 0;
    }
    double t;
    int rc = tb_real(obj, "timeout", &t);
    if (rc == -2) {
        /* too large for a float: no limit, or (below 0) only if available at once */
        PyErr_Clear();
        int neg = tb_huge_negative(obj);
        if (neg < 0) {
            return -1;
        }
        t = neg ? -INFINITY : INFINITY;
    }
    else if (rc < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "timeout must be a number or None, not %.100s",
                         Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number or None, got nan");
        return -1;
    }
    if (t == INFINITY) {
        *out = NULL;
        return 0;
    }
    *out = PyFloat_FromDouble(t);
    return *out ? 0 : -1;
}


#endif
