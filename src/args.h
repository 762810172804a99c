/*
 * args.h: argument parsing with Python's own messages, for the methods and __init__s that
 * asyncio writes in Python (so a caller may pass their arguments by keyword, and gets the same
 * TypeError text for a wrong call as from asyncio).
 */
#ifndef FA_ARGS_H
#define FA_ARGS_H

/* Parse the arguments of a Python-style __init__(self, a=..., b=...) with asyncio's messages:
 * "Sem.__init__() takes from 1 to 2 positional arguments but 3 were given",
 * "Sem.__init__() got an unexpected keyword argument 'loop'" (on 3.10, asyncio's own text for
 * loop=), "Sem.__init__() got multiple values for argument 'value'". out[] entries not given keep
 * their values. Returns 0 or -1. */
int fa_parse_init(PyObject *self, const char *defname, PyObject *args, PyObject *kwargs,
                  const char *const *names, Py_ssize_t nnames, PyObject **out);

/* Bind a call onto n required parameters named names[0..n-1], the first `posonly` of them
 * positional-only, the others positional-or-keyword (a Python `def f(self, a, b)` has
 * posonly 0): out[] receives borrowed references. On a wrong call, Python's messages:
 * "Queue.put() missing 1 required positional argument: 'item'", "... takes 2 positional
 * arguments but 3 were given", "... got an unexpected keyword argument 'x'", "... got multiple
 * values for argument 'item'" (counts include self, as Python's do). 0, or -1 with TypeError. */
int fa_bind_slow(const char *qualname, const char *const *names, Py_ssize_t n, Py_ssize_t posonly,
                 PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **out);

/* The one argument of `def name(self, arg)`: positional (the fast path) or by keyword. */
static inline int
fa_bind_one(const char *qualname, const char *name, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames, PyObject **out)
{
    if (FA_LIKELY(nargs == 1 && kwnames == NULL)) {
        *out = args[0];
        return 0;
    }
    return fa_bind_slow(qualname, &name, 1, 0, args, nargs, kwnames, out);
}

/* METH_FASTCALL | METH_KEYWORDS method `name` calling the METH_O function `impl`, for a method
 * asyncio defines as `def m(self, argname)` (so `q.put_nowait(item=x)` works as there). */
#define FA_ONE_ARG_METHOD(name, impl, qualname, argname) \
    static PyObject *name(PyObject *self, PyObject *const *args, Py_ssize_t nargs, \
                          PyObject *kwnames) \
    { \
        PyObject *arg_; \
        if (fa_bind_one(qualname, argname, args, nargs, kwnames, &arg_) < 0) { \
            return NULL; \
        } \
        return impl(self, arg_); \
    }

/* A real-number argument: an int or a float (a bool too unless no_bool), not nan, as a double.
 * 0, or -1 with TypeError "<what> must be <kind>, got <type name>" or ValueError "<what> must
 * not be nan" (an int too large for a double: OverflowError). */
int fa_arg_real(PyObject *v, const char *what, const char *kind, int no_bool, double *out);

#endif
