/*
 * tokenbucket.h: what the token-bucket family's two files share: tokenbucket.c (TokenBucket,
 * AsyncLimiter's base, the @bucket wrapper) and tbshared.c (SharedTokenBucket, one bucket for
 * every process of the host). The head both objects start with (configuration, reuse slot,
 * waiters) with its traverse, clear, attributes and repr; the argument validators (one set of
 * rules and messages for both buckets); the configuration check of the constructor; the
 * decorator and the ops of its calls. First, alone, the family's part of the module state and
 * its init.
 *
 * Two parts with their own guards: aiofast.h reads the state part alone (FA_STATE_PARTS_ONLY),
 * since fa_state embeds it; the rest uses the engine (op.h), which needs the whole fa_state.
 * Whichever comes first, the state part is read before fa_state is declared, and the rest after.
 */
/* ------------------------------------------------------------------ the family's state */

#ifndef AIOFAST_TOKENBUCKET_STATE_H
#define AIOFAST_TOKENBUCKET_STATE_H

#include "state.h"

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

#endif

/* ------------------------------------------------------------------ shared by the two files */

#if !defined(FA_STATE_PARTS_ONLY) && !defined(AIOFAST_TOKENBUCKET_H)
#define AIOFAST_TOKENBUCKET_H

#include "op.h"

#include <math.h>

/* RateLimited's op: the token is consumed, the function runs (fa_tb_call_run sets it) */
#define TB_OPF_CALLING 0x800

/* What TokenBucket and SharedTokenBucket hold first, in this order, so that either can be read
 * as an fa_tb_head: the reuse slot of their ops, this process's waiters, and the configuration
 * (as checked, and as given: the properties return the objects given). */
#define FA_TB_HEAD \
    PyObject_HEAD \
    fa_state *st; \
    fa_waitq waiters; \
    FaOp *cache; \
    PyObject *weakreflist; \
    PyObject *rate_obj; \
    PyObject *per_obj; \
    PyObject *cap_obj; \
    double rate; \
    double per; \
    double capacity;

typedef struct {
    FA_TB_HEAD
} fa_tb_head;

/* A bucket's configuration as the constructor checked it. rate_obj, per_obj, cap_obj: rate, per
 * and capacity as given (or their defaults), new references. */
typedef struct {
    double rate;
    double per;
    double capacity;
    double initial;
    PyObject *rate_obj;
    PyObject *per_obj;
    PyObject *cap_obj;
} fa_tb_config;

/* Check rate, per (NULL: 1.0), capacity and initial (None: their defaults) as TokenBucket's
 * constructor does, with its messages. 0, or -1 (nothing held). */
int fa_tb_config_parse(PyObject *rate_o, PyObject *per_o, PyObject *cap_o, PyObject *init_o,
                       fa_tb_config *out);

/* Give up a parsed configuration that was not installed. */
static inline void
fa_tb_config_release(fa_tb_config *c)
{
    Py_CLEAR(c->rate_obj);
    Py_CLEAR(c->per_obj);
    Py_CLEAR(c->cap_obj);
}

/* Install c's rate, per and capacity (and its references) in the head. */
static inline void
fa_tb_head_configure(fa_tb_head *h, fa_tb_config *c)
{
    h->rate = c->rate;
    h->per = c->per;
    h->capacity = c->capacity;
    Py_XSETREF(h->rate_obj, c->rate_obj);
    Py_XSETREF(h->per_obj, c->per_obj);
    Py_XSETREF(h->cap_obj, c->cap_obj);
    c->rate_obj = c->per_obj = c->cap_obj = NULL;
}

/* For the bucket's tp_traverse / tp_clear: the type, the reuse slot, the configuration objects,
 * the waiters (clear releases them first). */
int fa_tb_head_traverse(PyObject *self, visitproc visit, void *arg);
void fa_tb_head_clear(PyObject *self);

/* The attributes both buckets have, with the same words (FA_TB_GETSET in the getset table),
 * and `waiting` (whose words differ). */
PyObject *fa_tb_get_rate(PyObject *self, void *closure);
PyObject *fa_tb_get_per(PyObject *self, void *closure);
PyObject *fa_tb_get_capacity(PyObject *self, void *closure);
PyObject *fa_tb_get_waiting(PyObject *self, void *closure);
#define FA_TB_GETSET \
    {"rate", fa_tb_get_rate, NULL, "Tokens added every `per` seconds.", NULL}, \
    {"per", fa_tb_get_per, NULL, "The period, in seconds, over which `rate` tokens flow in.", \
     NULL}, \
    {"capacity", fa_tb_get_capacity, NULL, \
     "The most tokens the bucket holds (the largest burst).", NULL},

/* The repr of a bucket holding `level` tokens: <aiofast.TokenBucket object at 0x.. [rate:...,
 * tokens:..., waiters:n]>, or with shared (its name, not NULL) first and `waiting:n`. */
PyObject *fa_tb_repr(PyObject *self, double level, PyObject *shared);

/* A number for repr: integral values without ".0", others to 9 significant digits. */
PyObject *fa_tb_num_str(double x);

/* __aexit__(exc_type, exc, tb): an op of kind (which finishes at once with None) from the
 * reuse slot; TypeError for another number of arguments. */
PyObject *fa_tb_aexit(PyObject *self, Py_ssize_t nargs, const fa_opkind *kind);

/* bucket(func): the RateLimited wrapper whose calls run ops of call_kind on bucket (they start
 * by taking one token, then run fa_tb_call_run). */
PyObject *fa_tb_decorate(fa_state *st, PyObject *bucket, PyObject *args, PyObject *kwargs,
                         const fa_opkind *call_kind);

/* The token is the op's: call the wrapped function (op->arg2) and `yield from` its result. */
PySendResult fa_tb_call_run(FaOp *op, PyObject **res);

/* A RateLimited call's op on a bucket whose acquire op starts with take (taking or waiting for
 * the op's tokens), resumes with resume and cleans up a wait with wait_exc: take one token
 * that way, then run the function (fa_tb_call_run). Each bucket's call kind is these three
 * with its own functions. */
static inline PySendResult
fa_tb_call_start(FaOp *op, PyObject **res, PySendResult (*take)(FaOp *, PyObject **))
{
    PySendResult r = take(op, res);
    if (r != PYGEN_RETURN) {
        return r;
    }
    Py_CLEAR(*res);
    return fa_tb_call_run(op, res);
}

static inline PySendResult
fa_tb_call_resume(FaOp *op, PyObject *value, PyObject **res,
                  PySendResult (*resume)(FaOp *, PyObject *, PyObject **))
{
    if (op->flags & TB_OPF_CALLING) {
        *res = Py_NewRef(value);  // the function's result
        return PYGEN_RETURN;
    }
    PySendResult r = resume(op, value, res);
    if (r != PYGEN_RETURN) {
        return r;
    }
    Py_CLEAR(*res);
    return fa_tb_call_run(op, res);
}

static inline int
fa_tb_call_exc(FaOp *op, PyObject *exc, int (*wait_exc)(FaOp *, PyObject *))
{
    if (op->flags & TB_OPF_CALLING) {
        return 0;  // the function raised: its token is spent
    }
    return wait_exc(op, exc);
}

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

/* acquire(tokens=1, timeout=None)'s arguments, in a call that has some: 0, or -1. *timeout: a
 * new reference, or NULL (no limit). */
static inline int
fa_tb_acquire_args(fa_tb_head *h, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   double *n, PyObject **timeout)
{
    PyObject *tok = NULL, *to = NULL;
    if (tb_parse2("acquire", args, nargs, kwnames, "tokens", "timeout", &tok, &to) < 0
        || tb_count_arg(tok, h->capacity, h->cap_obj, n) < 0) {
        return -1;
    }
    return tb_timeout_arg(to, timeout);
}

/* fname(tokens=1)'s argument (try_acquire, has_capacity): 0, or -1. */
static inline int
fa_tb_tokens_args(fa_tb_head *h, const char *fname, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames, double *n)
{
    PyObject *tok = NULL;
    if (tb_parse2(fname, args, nargs, kwnames, "tokens", NULL, &tok, NULL) < 0) {
        return -1;
    }
    return tb_count_arg(tok, h->capacity, h->cap_obj, n);
}

#endif
