/*
 * op.c: FaOp, the C coroutine behind every aiofast awaitable (see op.h for the protocol), and
 * the out-of-line parts of the waiter queue.
 *
 * Invariants:
 * - state INIT: owner set, nothing else; WAITING: fut and fut_iter set (and, unless delegating,
 *   the op is linked in a waiter queue); DONE: owner, arg, arg2, arg3, fut, fut_iter all NULL
 *   and the op unlinked; kind->drop (if any) has run.
 * - Every way out of WAITING (send, throw, close) ends in exactly one of kind->resume or
 *   kind->on_exc, so the primitive's bookkeeping runs exactly once per wait.
 * - A thrown exception is re-raised as the same instance (task.cancel(msg) keeps its message).
 */
#include "op.h"

/* Unlink, and drop every reference but the owner's. */
static void
op_finish_slow(FaOp *op)
{
    if (op->queue != NULL) {
        fa_waitq_unlink(op);
    }
    Py_CLEAR(op->fut_iter);
    Py_CLEAR(op->fut);
    Py_CLEAR(op->arg);
    Py_CLEAR(op->arg2);
    Py_CLEAR(op->arg3);
}

/* A finished op goes back into its reuse slot (if the slot is still empty) and lets go of the
 * slot's holder. Runs before the owner is released: the owner (or home_obj) keeps the slot
 * alive until then. */
static inline void
op_go_home(FaOp *op)
{
    FaOp **home = op->home;
    if (home != NULL) {
        op->home = NULL;
        if (*home == NULL) {
            *home = (FaOp *)Py_NewRef(op);
        }
        if (FA_UNLIKELY(op->home_obj != NULL)) {
            PyObject *h = op->home_obj;
            op->home_obj = NULL;
            Py_DECREF(h);  // Beware: may free the holder, which drops its slot; our caller holds op
        }
    }
}

static inline void
op_finish(FaOp *op)
{
    if (op->kind->drop != NULL) {
        op->kind->drop(op, 0);  // Beware: may close a coroutine (Python code)
    }
    op->state = FA_OP_DONE;
    op->flags = 0;
    if (FA_UNLIKELY(((uintptr_t)op->queue | (uintptr_t)op->fut_iter | (uintptr_t)op->fut
                     | (uintptr_t)op->arg | (uintptr_t)op->arg2 | (uintptr_t)op->arg3) != 0)) {
        op_finish_slow(op);
    }
    PyObject *owner = op->owner;
    op->owner = NULL;
    op_go_home(op);
    Py_XDECREF(owner);  // Beware: may free the owner, which drops its slot; our caller holds op
}

void
fa_op_reset(FaOp *op)
{
    op_finish(op);
}

FaOp *
fa_op_new(fa_state *st, const fa_opkind *kind, PyObject *owner, PyObject *arg)
{
    FaOp *op = PyObject_GC_New(FaOp, st->engine.OpType);  // new ref
    if (op == NULL) {
        return NULL;
    }
    op->st = st;
    op->kind = kind;
    op->owner = Py_XNewRef(owner);
    op->arg = Py_XNewRef(arg);
    op->arg2 = NULL;
    op->arg3 = NULL;
    op->fut = NULL;
    op->fut_iter = NULL;
    op->prev = op->next = NULL;
    op->queue = NULL;
    op->home = NULL;
    op->home_obj = NULL;
    op->num = 0.0;
    op->u64 = 0;
    op->i32 = 0;
    op->state = FA_OP_INIT;
    op->flags = 0;
    PyObject_GC_Track(op);
    return op;
}

PySendResult
fa_op_ready_start(FaOp *op, PyObject **res)
{
    *res = op->arg;  // the op's reference becomes the result
    op->arg = NULL;
    return PYGEN_RETURN;
}

PySendResult
fa_op_none_start(FaOp *Py_UNUSED(op), PyObject **res)
{
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

PySendResult
fa_op_none_resume(FaOp *Py_UNUSED(op), PyObject *Py_UNUSED(value), PyObject **res)
{
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

PySendResult
fa_op_wait_on(FaOp *op, PyObject *loop, fa_waitq *q, PyObject **res)
{
    fa_state *st = op->st;
    PyObject *fut = fa_create_future(st, loop);  // new ref; Beware: loop code
    if (fut == NULL) {
        return PYGEN_ERROR;
    }
    PyObject *it;  // new ref
    unaryfunc am_await = Py_TYPE(fut)->tp_as_async ? Py_TYPE(fut)->tp_as_async->am_await : NULL;
    if (am_await != NULL) {
        it = am_await(fut);
    }
    else {
        it = PyObject_CallMethodNoArgs(fut, st->core.str_await);
    }
    if (it == NULL) {
        Py_DECREF(fut);
        return PYGEN_ERROR;
    }
    PyObject *y = NULL;
    PySendResult r = PyIter_Send(it, Py_None, &y);  // yields fut with _asyncio_future_blocking set
    if (r != PYGEN_NEXT) {
        if (r == PYGEN_RETURN) {
            Py_DECREF(y);
            PyErr_SetString(PyExc_RuntimeError, "loop.create_future() returned a finished future");
        }
        Py_DECREF(it);
        Py_DECREF(fut);
        return PYGEN_ERROR;
    }
    /* commit: nothing below calls Python code */
    Py_XSETREF(op->fut, fut);
    Py_XSETREF(op->fut_iter, it);
    op->flags &= ~FA_OPF_WOKEN;  // a new wait: nobody has woken it yet
    fa_waitq_push(q, op);
    *res = y;
    return PYGEN_NEXT;
}

PySendResult
fa_op_wait(FaOp *op, PyObject **loop_slot, fa_waitq *q, PyObject **res)
{
    PyObject *loop = fa_get_loop(op->st, op->owner, loop_slot);  // new ref
    if (loop == NULL) {
        return PYGEN_ERROR;
    }
    PySendResult r = fa_op_wait_on(op, loop, q, res);
    Py_DECREF(loop);
    return r;
}

PySendResult
fa_op_wait_self(FaOp *op, int get_loop_overridden, PyObject **loop_slot, fa_waitq *q,
                PyObject **res)
{
    if (FA_LIKELY(!get_loop_overridden)) {
        return fa_op_wait(op, loop_slot, q, res);
    }
    PyObject *args[1] = {op->owner};
    // Beware: user code
    PyObject *loop = PyObject_VectorcallMethod(op->st->core.str_get_loop, args,
                                               1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (loop == NULL) {
        return PYGEN_ERROR;
    }
    PySendResult r = fa_op_wait_on(op, loop, q, res);
    Py_DECREF(loop);
    return r;
}

/* Is generator g from a @types.coroutine function (awaitable without __await__)? */
static int
is_iterable_coroutine(PyObject *g)
{
    PyObject *code = PyObject_GetAttrString(g, "gi_code");  // new ref
    PyObject *flags = code ? PyObject_GetAttrString(code, "co_flags") : NULL;
    Py_XDECREF(code);
    long f = flags ? PyLong_AsLong(flags) : 0;
    Py_XDECREF(flags);
    PyErr_Clear();
    return f != -1 && (f & CO_ITERABLE_COROUTINE);
}

int
fa_op_awaitable(PyObject *obj)
{
    return PyCoro_CheckExact(obj)
           || (Py_TYPE(obj)->tp_as_async != NULL && Py_TYPE(obj)->tp_as_async->am_await != NULL)
           || (PyGen_CheckExact(obj) && is_iterable_coroutine(obj));
}

PySendResult
fa_op_delegate(FaOp *op, PyObject *awaitable, PyObject **res)
{
    PyObject *it;  // new ref
    if (PyCoro_CheckExact(awaitable)) {
        it = Py_NewRef(awaitable);
    }
    else {
        unaryfunc am_await = Py_TYPE(awaitable)->tp_as_async
                                 ? Py_TYPE(awaitable)->tp_as_async->am_await : NULL;
        if (am_await != NULL) {
            it = am_await(awaitable);
            if (it == NULL) {
                return PYGEN_ERROR;
            }
            if (PyCoro_CheckExact(it)) {
                Py_DECREF(it);
                PyErr_SetString(PyExc_TypeError, "__await__() returned a coroutine");
                return PYGEN_ERROR;
            }
        }
        else if (PyGen_CheckExact(awaitable) && is_iterable_coroutine(awaitable)) {
            it = Py_NewRef(awaitable);  // a @types.coroutine generator drives itself
        }
        else {
            PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                         Py_TYPE(awaitable)->tp_name);
            return PYGEN_ERROR;
        }
    }
    PyObject *y = NULL;
    PySendResult r = PyIter_Send(it, Py_None, &y);
    if (r == PYGEN_NEXT) {
        Py_XSETREF(op->fut_iter, it);
        op->flags |= FA_OPF_DELEGATE;
        *res = y;
        return PYGEN_NEXT;
    }
    Py_DECREF(it);
    if (r == PYGEN_ERROR) {
        return PYGEN_ERROR;
    }
    r = op->kind->resume(op, y, res);
    Py_DECREF(y);
    return r;
}

/* An exception (new reference) reached the wait: bookkeeping, then re-raise the same one. */
static PySendResult
op_fail(FaOp *op, PyObject *exc)
{
    int rc = 0;
    if (op->kind->on_exc != NULL) {
        rc = op->kind->on_exc(op, exc);  // Beware: Python code (set_result of the next waiter)
    }
    if (rc < 0) {
        /* the bookkeeping itself failed: report that, chained to the original */
        PyObject *exc2 = fa_fetch_exc();
        if (exc2 != NULL) {
            PyException_SetContext(exc2, exc);  // steals exc
            fa_restore_exc(exc2);
        }
        else {
            fa_restore_exc(exc);
        }
        return PYGEN_ERROR;
    }
    fa_restore_exc(exc);
    return PYGEN_ERROR;
}

/* The waiter (or delegate) finished; dispatch to resume or on_exc. */
static PySendResult
op_after_wait(FaOp *op, PySendResult r2, PyObject *val, PyObject **res)
{
    Py_CLEAR(op->fut_iter);
    op->flags &= ~FA_OPF_DELEGATE;
    if (r2 == PYGEN_RETURN) {
        PySendResult r = op->kind->resume(op, val, res);
        Py_DECREF(val);
        return r;
    }
    PyObject *exc = fa_fetch_exc();  // new ref
    if (exc == NULL) {
        PyErr_SetString(PyExc_SystemError, "aiofast: wait failed without an exception");
        return PYGEN_ERROR;
    }
    return op_fail(op, exc);
}

static void
op_settle(FaOp *op, PySendResult r)
{
    if (r == PYGEN_NEXT) {
        op->state = FA_OP_WAITING;
    }
    else {
        op_finish(op);
    }
}

static FA_NOINLINE PySendResult
op_send_slow(FaOp *op, PyObject *arg, PyObject **res)
{
    PySendResult r;
    switch (op->state) {
    case FA_OP_INIT:
        op->state = FA_OP_RUNNING;
        r = op->kind->start(op, res);
        break;
    case FA_OP_WAITING: {
        PyObject *val = NULL;
        op->state = FA_OP_RUNNING;
        PySendResult r2 = PyIter_Send(op->fut_iter, arg, &val);
        if (r2 == PYGEN_NEXT) {
            op->state = FA_OP_WAITING;
            *res = val;
            return PYGEN_NEXT;
        }
        r = op_after_wait(op, r2, val, res);
        break;
    }
    case FA_OP_RUNNING:
        PyErr_Format(PyExc_ValueError, "%s() already executing", op->kind->name);
        return PYGEN_ERROR;
    default:
        PyErr_Format(PyExc_RuntimeError, "cannot reuse already awaited %s()", op->kind->name);
        return PYGEN_ERROR;
    }
    op_settle(op, r);
    return r;
}

static inline PySendResult
op_send_impl(FaOp *op, PyObject *arg, PyObject **res)
{
    if (FA_LIKELY(op->state == FA_OP_INIT)) {
        op->state = FA_OP_RUNNING;
        PySendResult r = op->kind->start(op, res);
        /* the common case: finished at once, holding nothing but the owner */
        if (FA_LIKELY(r == PYGEN_RETURN
                      && ((uintptr_t)op->queue | (uintptr_t)op->fut_iter | (uintptr_t)op->fut
                          | (uintptr_t)op->arg | (uintptr_t)op->arg2 | (uintptr_t)op->arg3)
                             == 0)) {
            op->state = FA_OP_DONE;
            op->flags = 0;
            PyObject *owner = op->owner;
            op->owner = NULL;
            op_go_home(op);
            Py_DECREF(owner);  // Beware: may free the owner; our caller holds op
            return r;
        }
        op_settle(op, r);
        return r;
    }
    return op_send_slow(op, arg, res);
}

static PySendResult
op_am_send(PyObject *self, PyObject *arg, PyObject **res)
{
    return op_send_impl((FaOp *)self, arg, res);
}

/* ---- the result's StopIteration ----
 *
 * From 3.12 `await` drives a C awaitable through tp_iternext, so every value it returns travels
 * in a StopIteration, which the interpreter reads and drops at once. The engine keeps one
 * (st->engine.stopiter) and raises it again whenever nobody else holds it, swapping the value
 * in place: no allocation per result. It keeps the last value referenced until the next result
 * or until fa_op_forget_result (for families that must not keep a removed value alive). Before
 * 3.12, `await` uses am_send and no StopIteration is made. */

#if FA_PY312
/* Can the cached StopIteration carry another value: held by nobody else, its args a 1-tuple
 * held only by it, nothing attached by a catcher? Clears what a catcher left (traceback,
 * context). */
static inline int
stop_reusable(PyObject *exc)
{
    if (exc == NULL || Py_REFCNT(exc) != 1) {
        return 0;
    }
    PyStopIterationObject *si = (PyStopIterationObject *)exc;
    if (si->dict != NULL || si->notes != NULL || !PyTuple_CheckExact(si->args)
        || PyTuple_GET_SIZE(si->args) != 1 || Py_REFCNT(si->args) != 1) {
        return 0;
    }
    Py_CLEAR(si->traceback);
    Py_CLEAR(si->context);
    Py_CLEAR(si->cause);
    si->suppress_context = 0;
    return 1;
}

/* Put value (stolen) into the free cached StopIteration. Beware: the old value's release may
 * run Python code; the caller has taken its own reference to si first, so a re-entrant result
 * finds the cache busy. */
static void
stop_swap(PyStopIterationObject *si, PyObject *value)
{
    if (si->value == value) {
        Py_DECREF(value);
        return;
    }
    PyObject *old_value = si->value, *old_arg = PyTuple_GET_ITEM(si->args, 0);
    PyTuple_SET_ITEM(si->args, 0, Py_NewRef(value));
    si->value = value;
    Py_XDECREF(old_value);
    Py_XDECREF(old_arg);
}
#endif

/* A fresh StopIteration(value) raised (value borrowed), for the Python-level send()/throw(): an
 * exception that reaches Python code gets a traceback (and so a frame), which the shared
 * instance must not keep. Built explicitly, so a tuple is not unpacked. Returns the instance
 * (borrowed: the raised one) or NULL. */
static PyObject *
op_raise_fresh(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);  // new ref
    if (exc == NULL) {
        return NULL;
    }
    fa_restore_exc(exc);
    return exc;
}

/* Return value (stolen) from tp_iternext: StopIteration(value) raised (nothing for None, the
 * interpreter's rule), the reusable instance on 3.12+ when nobody else holds it. */
static void
op_raise_result(fa_state *st, PyObject *value)
{
    if (value == Py_None) {
        Py_DECREF(value);  // StopIteration(None) without making one: the interpreter's rule
        return;
    }
#if FA_PY312
    PyObject *exc = st->engine.stopiter;
    if (FA_LIKELY(stop_reusable(exc))) {
        Py_INCREF(exc);  // ours to raise
        stop_swap((PyStopIterationObject *)exc, value);
        PyErr_SetRaisedException(exc);
        return;
    }
    PyObject *fresh = op_raise_fresh(value);
    Py_DECREF(value);
    if (fresh != NULL) {
        Py_XSETREF(st->engine.stopiter, Py_NewRef(fresh));  // a busy or altered one is let go
    }
#else
    (void)st;
    op_raise_fresh(value);
    Py_DECREF(value);
#endif
}

void
fa_op_forget_result(fa_state *st)
{
#if FA_PY312
    PyObject *exc = st->engine.stopiter;
    if (exc != NULL && ((PyStopIterationObject *)exc)->value != Py_None && stop_reusable(exc)) {
        Py_INCREF(exc);
        stop_swap((PyStopIterationObject *)exc, Py_NewRef(Py_None));  // Beware: the old value
        Py_DECREF(exc);
    }
#else
    (void)st;
#endif
}

static PyObject *
op_iternext(PyObject *self)
{
    FaOp *op = (FaOp *)self;
    PyObject *res = NULL;
    PySendResult r = op_send_impl(op, Py_None, &res);
    if (r == PYGEN_NEXT) {
        return res;
    }
    if (r == PYGEN_RETURN) {
        if (FA_LIKELY(res == Py_True || res == Py_False || res == Py_None
                      || (op->kind->flags & FA_OPK_KEEP_RESULT))) {
            op_raise_result(op->st, res);
        }
        else {
            op_raise_fresh(res);
            Py_DECREF(res);
        }
    }
    return NULL;
}

/* The Python-level send()/throw() raise a fresh StopIteration: one that reaches Python code
 * gets a traceback (and so its frame), which the shared instance must not keep. */
static PyObject *
op_result_to_py(PySendResult r, PyObject *res)
{
    if (r == PYGEN_NEXT) {
        return res;
    }
    if (r == PYGEN_RETURN) {
        op_raise_fresh(res);
        Py_DECREF(res);
    }
    return NULL;
}

static PyObject *
op_send(PyObject *self, PyObject *arg)
{
    FaOp *op = (FaOp *)self;
    if (op->state == FA_OP_INIT && arg != Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
        return NULL;
    }
    PyObject *res = NULL;
    PySendResult r = op_send_impl(op, arg, &res);
    return op_result_to_py(r, res);
}

/* Build the exception instance from throw()'s (typ[, val[, tb]]) as gen.throw does. */
PyObject *
fa_throw_exc(PyObject *typ, PyObject *val, PyObject *tb)
{
    PyObject *exc = NULL;
    if (val == Py_None) {
        val = NULL;
    }
    if (tb == Py_None) {
        tb = NULL;
    }
    if (tb != NULL && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (PyExceptionInstance_Check(typ)) {
        if (val != NULL) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        if (val != NULL && PyObject_TypeCheck(val, (PyTypeObject *)typ)) {
            exc = Py_NewRef(val);
        }
        else if (val == NULL) {
            exc = PyObject_CallNoArgs(typ);
        }
        else if (PyTuple_Check(val)) {
            exc = PyObject_Call(typ, val, NULL);
        }
        else {
            exc = PyObject_CallOneArg(typ, val);
        }
        if (exc == NULL) {
            return NULL;
        }
        if (!PyExceptionInstance_Check(exc)) {
            PyErr_Format(PyExc_TypeError,
                         "calling %R should have returned an instance of BaseException, not %s",
                         typ, Py_TYPE(exc)->tp_name);
            Py_DECREF(exc);
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from BaseException, not %s",
                     Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != NULL && PyException_SetTraceback(exc, tb) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

static PyObject *
op_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    FaOp *op = (FaOp *)self;
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, nargs < 1 ? "throw expected at least 1 argument, got %zd"
                                                : "throw expected at most 3 arguments, got %zd",
                     nargs);
        return NULL;
    }
#if FA_PY312
    if (nargs > 1 && PyErr_WarnEx(PyExc_DeprecationWarning,
                                  "the (type, exc, tb) signature of throw() is deprecated, "
                                  "use the single-arg signature instead.", 1) < 0) {
        return NULL;
    }
#endif
    PyObject *exc = fa_throw_exc(args[0], nargs > 1 ? args[1] : NULL,
                                nargs > 2 ? args[2] : NULL);  // new ref
    if (exc == NULL) {
        return NULL;
    }
    if (op->state == FA_OP_RUNNING) {
        Py_DECREF(exc);
        PyErr_Format(PyExc_ValueError, "%s() already executing", op->kind->name);
        return NULL;
    }
    if (op->state != FA_OP_WAITING) {
        /* not started or finished: the exception comes straight out, the op is closed */
        op_finish(op);
        fa_restore_exc(exc);
        return NULL;
    }
    op->state = FA_OP_RUNNING;
    PySendResult r;
    PyObject *res = NULL;
    if (op->flags & FA_OPF_DELEGATE) {
        /* yield from: the delegate sees the exception first; one without throw() cannot, and
         * the exception is raised here */
        PyObject *it = op->fut_iter;
        if (!PyCoro_CheckExact(it) && !PyGen_CheckExact(it)
            && !PyObject_HasAttr(it, op->st->core.str_throw)) {
            Py_CLEAR(op->fut_iter);
            op->flags &= ~FA_OPF_DELEGATE;
            r = op_fail(op, exc);
            op_settle(op, r);
            return op_result_to_py(r, res);
        }
        PyObject *targs[2] = {it, exc};
        PyObject *y = PyObject_VectorcallMethod(op->st->core.str_throw, targs,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(exc);
        if (y != NULL) {
            op->state = FA_OP_WAITING;
            return y;
        }
        PyObject *val = NULL;
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyObject *e = fa_fetch_exc();
            val = Py_NewRef(((PyStopIterationObject *)e)->value);
            Py_DECREF(e);
            r = op_after_wait(op, PYGEN_RETURN, val, &res);
        }
        else {
            r = op_after_wait(op, PYGEN_ERROR, NULL, &res);
        }
    }
    else {
        /* `await fut` re-raises what is thrown at it (FutureIter.throw): go to the cleanup */
        Py_CLEAR(op->fut_iter);
        r = op_fail(op, exc);
    }
    op_settle(op, r);
    return op_result_to_py(r, res);
}

static PyObject *
op_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    FaOp *op = (FaOp *)self;
    if (op->state == FA_OP_RUNNING) {
        PyErr_Format(PyExc_ValueError, "%s() already executing", op->kind->name);
        return NULL;
    }
    if (op->state != FA_OP_WAITING) {
        op_finish(op);
        Py_RETURN_NONE;
    }
    op->state = FA_OP_RUNNING;
    PyObject *exc = NULL;  // what reaches the wait: GeneratorExit, or the delegate's close() error
    if (op->flags & FA_OPF_DELEGATE) {
        PyObject *it = op->fut_iter;
        int has = PyObject_HasAttr(it, op->st->core.str_close);
        PyObject *r = has ? PyObject_CallMethodNoArgs(it, op->st->core.str_close) : NULL;
        if (has && r == NULL) {
            exc = fa_fetch_exc();  // new ref
        }
        Py_XDECREF(r);
        Py_CLEAR(op->fut_iter);
        op->flags &= ~FA_OPF_DELEGATE;
    }
    int raised = exc != NULL;
    if (exc == NULL && op->kind->on_exc != NULL) {
        exc = PyObject_CallNoArgs(PyExc_GeneratorExit);  // new ref
        if (exc == NULL) {
            op_finish(op);
            return NULL;
        }
    }
    int rc = 0;
    if (exc != NULL && op->kind->on_exc != NULL) {
        rc = op->kind->on_exc(op, exc);  // Beware: Python code
    }
    op_finish(op);
    if (raised) {
        if (rc < 0) {
            PyObject *exc2 = fa_fetch_exc();
            if (exc2 != NULL) {
                PyException_SetContext(exc2, exc);  // steals exc
                fa_restore_exc(exc2);
                return NULL;
            }
        }
        fa_restore_exc(exc);  // the delegate's own error comes out of close()
        return NULL;
    }
    Py_XDECREF(exc);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
op_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *
op_qualname(FaOp *op)
{
    if (op->kind->qualname != NULL) {
        PyObject *q = op->kind->qualname(op);
        if (q != NULL || PyErr_Occurred()) {
            return q;
        }
    }
    return PyUnicode_FromString(op->kind->name);
}

static PyObject *
op_get_name(PyObject *self, void *Py_UNUSED(closure))
{
    return op_qualname((FaOp *)self);
}

/* asyncio's coroutines record where they were made when origin tracking is on; ours do not */
static PyObject *
op_get_origin(PyObject *Py_UNUSED(self), void *Py_UNUSED(closure))
{
    Py_RETURN_NONE;
}

void
fa_warn_unawaited(PyObject *coro, PyObject *qualname)
{
    /* As CPython's own: through warnings._warn_unawaited_coroutine, which passes source=coro
     * (tracemalloc's "Object allocated at" lines); if that is missing or broken (shutdown),
     * report what went wrong and warn directly. An "error" filter turns the warning into a
     * RuntimeWarning exception: that is the warning, reported as unraisable, no fallback. */
    int warned = 0;
    PyObject *name = PyUnicode_FromString("warnings");  // new ref
    PyObject *mod = name ? PyImport_GetModule(name) : NULL;  // new ref; no import at shutdown
    Py_XDECREF(name);
    if (mod != NULL) {
        PyObject *fn = PyObject_GetAttrString(mod, "_warn_unawaited_coroutine");
        Py_DECREF(mod);
        if (fn != NULL) {
            PyObject *res = PyObject_CallOneArg(fn, coro);  // Beware: Python code
            Py_DECREF(fn);
            if (res != NULL || PyErr_ExceptionMatches(PyExc_RuntimeWarning)) {
                warned = 1;
            }
            Py_XDECREF(res);
        }
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable(coro);
    }
    if (!warned && PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "coroutine '%S' was never awaited",
                                    qualname) < 0) {
        PyErr_WriteUnraisable(coro);
    }
}

/* Dropped without ever being started (never awaited, sent to or closed): warn as an un-awaited
 * coroutine does. An idle op in a reuse slot is DONE, and an inert queue node has no owner, so
 * neither warns, nor does a quiet one (a ready value); this runs only when an op dies, never
 * on the awaited path. */
static void
op_finalize(PyObject *self)
{
    FaOp *op = (FaOp *)self;
    if (op->state != FA_OP_INIT || op->owner == NULL || (op->flags & FA_OPF_QUIET)) {
        return;
    }
    PyObject *exc = fa_fetch_exc();  // new ref or NULL
    PyObject *qualname = op_qualname(op);  // new ref
    if (qualname == NULL) {
        PyErr_WriteUnraisable(self);
    }
    else {
        fa_warn_unawaited(self, qualname);
        Py_DECREF(qualname);
    }
    if (exc != NULL) {
        fa_restore_exc(exc);  // what was in flight when the op died
    }
}

static PyObject *
op_repr(PyObject *self)
{
    FaOp *op = (FaOp *)self;
    static const char *const names[] = {"created", "running", "waiting", "done"};
    if (op->kind->qualname != NULL && op->owner != NULL) {
        /* the op stands for a call of a function: name it */
        PyObject *q = op->kind->qualname(op);  // new ref
        if (q != NULL && PyUnicode_Check(q)) {
            PyObject *r = PyUnicode_FromFormat("<aiofast %s() awaitable %U at %p [%s]>",
                                               op->kind->name, q, self, names[op->state]);
            Py_DECREF(q);
            return r;
        }
        Py_XDECREF(q);
        PyErr_Clear();
    }
    return PyUnicode_FromFormat("<aiofast %s() awaitable at %p [%s]>", op->kind->name, self,
                                names[op->state]);
}

static int
op_traverse(PyObject *self, visitproc visit, void *arg)
{
    FaOp *op = (FaOp *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(op->owner);
    Py_VISIT(op->arg);
    Py_VISIT(op->arg2);
    Py_VISIT(op->arg3);
    Py_VISIT(op->fut);
    Py_VISIT(op->fut_iter);
    Py_VISIT(op->home_obj);
    return 0;
}

static int
op_clear(PyObject *self)
{
    FaOp *op = (FaOp *)self;
    if (op->kind->drop != NULL && op->owner != NULL) {
        op->kind->drop(op, 1);
    }
    /* A linked op is reachable from its owner, so the GC clears it only when the owner is
     * garbage too: leave the queue first (the collector holds a reference to us, and the owner
     * is alive while we hold op->owner), so a linked op never lacks its owner or future. */
    op_finish_slow(op);
    op->home = NULL;  // the slot may go with its holder: never go back to it
    Py_CLEAR(op->home_obj);
    Py_CLEAR(op->owner);
    return 0;
}

static void
op_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (FA_UNLIKELY(((FaOp *)self)->state == FA_OP_INIT)
        && PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;  // resurrected by the warning (a recorder keeps it as the source)
    }
    PyObject_GC_UnTrack(self);
    assert(((FaOp *)self)->queue == NULL);
    op_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(op_send_doc, "send($self, value, /)\n--\n\nSend a value into the awaitable; "
             "return the next yielded value or raise StopIteration.");
PyDoc_STRVAR(op_throw_doc, "throw($self, typ, val=None, tb=None, /)\n--\n\nRaise an exception "
             "in the awaitable; return the next yielded value or raise StopIteration.");
PyDoc_STRVAR(op_close_doc, "close($self, /)\n--\n\nClose the awaitable: a pending wait is "
             "abandoned and its bookkeeping done.");

static PyMethodDef op_methods[] = {
    {"send", op_send, METH_O, op_send_doc},
    {"throw", (PyCFunction)(void (*)(void))op_throw, METH_FASTCALL, op_throw_doc},
    {"close", op_close, METH_NOARGS, op_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef op_getset[] = {
    {"__name__", op_get_name, NULL, NULL, NULL},
    {"__qualname__", op_get_name, NULL, NULL, NULL},
    {"cr_origin", op_get_origin, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot op_slots[] = {
    {Py_tp_dealloc, op_dealloc},
    {Py_tp_traverse, op_traverse},
    {Py_tp_clear, op_clear},
    {Py_tp_finalize, op_finalize},
    {Py_tp_repr, op_repr},
    {Py_tp_iter, PyObject_SelfIter},  /* iter(op.__await__()), as a coroutine's wrapper */
    {Py_tp_iternext, op_iternext},
    {Py_tp_methods, op_methods},
    {Py_tp_getset, op_getset},
    {Py_am_await, op_await},
    {Py_am_send, op_am_send},
    {Py_tp_doc, "An aiofast operation: a C coroutine returned by acquire(), wait(), get(), ..."},
    {0, NULL},
};

static PyType_Spec op_spec = {
    .name = "aiofast._core.Operation",
    .basicsize = sizeof(FaOp),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
#ifdef Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = op_slots,
};

void
fa_waitq_release_all(fa_waitq *q)
{
    Py_ssize_t n = q->len;
    if (n == 0) {
        return;
    }
    FaOp **ops = PyMem_Malloc(sizeof(FaOp *) * (size_t)n);
    Py_ssize_t i = 0;
    FaOp *op = q->head;
    q->head = q->tail = NULL;
    q->len = 0;
    q->version++;
    FA_ASSERT_CONSISTENT_WITH(fa_waitq_check, q);
    while (op != NULL) {
        FaOp *next = op->next;
        op->prev = op->next = NULL;
        op->queue = NULL;
        if (ops != NULL && i < n) {
            ops[i++] = op;
        }
        else {
            Py_DECREF(op);  // out of memory: drop as we go (no links left to corrupt)
        }
        op = next;
    }
    /* every link is gone: a decref that runs Python code cannot reach these through q */
    for (Py_ssize_t j = 0; j < i; j++) {
        Py_DECREF(ops[j]);
    }
    PyMem_Free(ops);
}

int
fa_op_init(PyObject *mod, fa_state *st)
{
    if (fa_method_init(mod, st) < 0 || fa_waitview_init(mod, st) < 0) {
        return -1;
    }
    if ((st->engine.OpType = fa_new_type(mod, &op_spec, NULL, NULL)) == NULL) {
        return -1;
    }
    /* collections.abc.Coroutine's subclass hook accepts the type (it has __await__, send,
     * throw, close); register explicitly too, so the check never depends on the hook. */
    return fa_register_abc("Coroutine", st->engine.OpType);
}
