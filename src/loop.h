/*
 * loop.h: static inline integration with the running asyncio loop, whatever loop it is.
 *
 * Everything goes through the loop's and the future's public Python methods, called with
 * vectorcall and interned names: loop.create_future(), loop.time(), loop.call_at(), fut.done(),
 * fut.cancelled(), fut.set_result(). No loop-specific code, so the default loop, uvloop and a
 * test loop with a virtual clock all work the same.
 *
 * Loop binding follows asyncio.mixins._LoopBoundMixin: an object binds to the running loop the
 * first time it has to wait (never on a fast path), and raises
 * RuntimeError(f"{self!r} is bound to a different event loop") when it must wait in another one.
 */
#ifndef AIOFAST_LOOP_H
#define AIOFAST_LOOP_H

#include "aiofast.h"
#include "clock.h"

/* The `_loop` attribute of a loop-bound object, as a getset pair: the closure is the offset
 * of the object's loop slot ((void *)offsetof(Type, loop)). Reads None while unbound; any
 * object may be assigned (asyncio's is a plain attribute), deleting it is refused. */
#define FA_LOOP_SLOT(op, off) ((PyObject **)((char *)(op) + (size_t)(off)))

static inline PyObject *
fa_loop_attr_get(PyObject *op, void *off)
{
    PyObject *loop = *FA_LOOP_SLOT(op, off);
    return Py_NewRef(loop ? loop : Py_None);
}

static inline int
fa_loop_attr_set(PyObject *op, PyObject *v, void *off)
{
    if (fa_refuse_delete(v, "_loop") < 0) {
        return -1;
    }
    Py_XSETREF(*FA_LOOP_SLOT(op, off), Py_NewRef(v));
    return 0;
}

/* New reference to the running loop, or NULL with RuntimeError("no running event loop"). */
static inline PyObject *
fa_running_loop(fa_state *st)
{
    PyObject *loop = fa_running_loop_or_none(st);  // new ref
    if (loop == NULL) {
        return NULL;
    }
    if (loop == Py_None) {
        Py_DECREF(loop);
        PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        return NULL;
    }
    return loop;
}

/* _LoopBoundMixin._get_loop(): bind *slot (the object's _loop) lazily, check it otherwise.
 * Returns a new reference to the running loop, or NULL. */
static inline PyObject *
fa_get_loop(fa_state *st, PyObject *self, PyObject **slot)
{
    PyObject *loop = fa_running_loop(st);  // new ref
    if (loop == NULL) {
        return NULL;
    }
    if (*slot == NULL || *slot == Py_None) {
        Py_XSETREF(*slot, Py_NewRef(loop));
    }
    else if (*slot != loop) {
        Py_DECREF(loop);
        PyObject *r = PyObject_Repr(self);  // Beware: repr may run Python code (subclass locked())
        if (r != NULL) {
            PyErr_Format(PyExc_RuntimeError, "%U is bound to a different event loop", r);
            Py_DECREF(r);
        }
        return NULL;
    }
    return loop;
}

static inline PyObject *
fa_create_future(fa_state *st, PyObject *loop)
{
    PyObject *args[1] = {loop};
    return PyObject_VectorcallMethod(st->core.str_create_future, args,
                                     1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* Call a no-argument method that answers a bool: 1, 0, or -1 on error. */
static inline int
fa_call_bool(PyObject *obj, PyObject *name)
{
    PyObject *args[1] = {obj};
    PyObject *r = PyObject_VectorcallMethod(name, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        return -1;
    }
    int b = (r == Py_True) ? 1 : (r == Py_False) ? 0 : PyObject_IsTrue(r);
    Py_DECREF(r);
    return b;
}

static inline int
fa_fut_done(fa_state *st, PyObject *fut)
{
    return fa_call_bool(fut, st->core.str_done);
}

static inline int
fa_fut_cancelled(fa_state *st, PyObject *fut)
{
    return fa_call_bool(fut, st->core.str_cancelled);
}

/* fut.set_result(value): 0 or -1. Beware: runs Python code (call_soon of the loop). */
static inline int
fa_fut_set_result(fa_state *st, PyObject *fut, PyObject *value)
{
    PyObject *args[2] = {fut, value};
    PyObject *r = PyObject_VectorcallMethod(st->core.str_set_result, args,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* fut.cancel(): 0 or -1. */
static inline int
fa_fut_cancel(fa_state *st, PyObject *fut)
{
    PyObject *args[1] = {fut};
    PyObject *r = PyObject_VectorcallMethod(st->core.str_cancel, args,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* loop.time() as a double; -1.0 with an exception set on error (check PyErr_Occurred). */
static inline double
fa_loop_time(fa_state *st, PyObject *loop)
{
    PyObject *args[1] = {loop};
    PyObject *r = PyObject_VectorcallMethod(st->core.str_time, args,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        return -1.0;
    }
    double t = PyFloat_AsDouble(r);
    Py_DECREF(r);
    return t;
}

/* Is exc an instance of asyncio.CancelledError? */
static inline int
fa_is_cancelled_error(fa_state *st, PyObject *exc)
{
    return PyObject_TypeCheck(exc, (PyTypeObject *)st->core.CancelledError);
}

#endif
