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

/* ---- attributes that asyncio keeps as plain instance attributes ---- */

/* The start of a getset setter whose attribute may be assigned but not deleted: 0 when v is a
 * value, -1 with AttributeError("cannot delete <name>") when it is a deletion (v == NULL). */
static inline int
fa_refuse_delete(PyObject *v, const char *name)
{
    if (FA_UNLIKELY(v == NULL)) {
        PyErr_Format(PyExc_AttributeError, "cannot delete %s", name);
        return -1;
    }
    return 0;
}

/* An int flag shown as a bool attribute that user code may assign (Lock._locked,
 * Queue._is_shutdown): the getset closure is a pointer to one of these. Reading gives the flag
 * as a bool; assigning stores the truth of the value (0 or 1: `__bool__` may raise, leaving the
 * flag as it was) and sets the object's int at `unchecked` to 1, its mark that user code wrote
 * its state, so its debug checker no longer expects the counting invariants; deleting is
 * refused. */
typedef struct {
    const char *name;   /* the attribute's name, for the deletion message */
    size_t flag;        /* offsetof(Type, the int flag) */
    size_t unchecked;   /* offsetof(Type, the int set to 1 by an assignment) */
} fa_flag_attr;

#define FA_INT_AT(op, off) ((int *)((char *)(op) + (off)))

static inline PyObject *
fa_flag_attr_get(PyObject *op, void *closure)
{
    return PyBool_FromLong(*FA_INT_AT(op, ((const fa_flag_attr *)closure)->flag));
}

static inline int
fa_flag_attr_set(PyObject *op, PyObject *v, void *closure)
{
    const fa_flag_attr *d = (const fa_flag_attr *)closure;
    if (fa_refuse_delete(v, d->name) < 0) {
        return -1;
    }
    int b = PyObject_IsTrue(v);  // Beware: __bool__ may run Python code (nothing is held yet)
    if (b < 0) {
        return -1;
    }
    *FA_INT_AT(op, d->flag) = b;
    *FA_INT_AT(op, d->unchecked) = 1;
    return 0;
}

#endif
