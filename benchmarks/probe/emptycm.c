/*
 * emptycm.c: the floor for an uncontended `async with` on a C object, for the benchmarks only.
 *
 * EmptyCM.__aenter__/__aexit__ return one pre-built awaitable that is already done (am_send
 * returns PYGEN_RETURN None, tp_iternext returns NULL without an exception). Nothing in aiofast
 * uses this; it measures what the interpreter itself charges for `async with` on a C type.
 * The floors of the awaitable methods: `await cm.acquire()` (a C method returning that done
 * awaitable), `await cm.acquire_clock()` (the same after one CLOCK_MONOTONIC read, what any rate
 * limiter's acquire must do) and `cm.release()` (a C method call that does nothing).
 * Guard(fn): the floor of a C decorator that must act when an async def has finished (as a
 * circuit breaker records the outcome): `await guard(x)` calls fn(x) and drives the coroutine
 * from C (PyIter_Send), handing its result out through one reused StopIteration on 3.12+ (the
 * way aiofast's awaitables do); nothing is allocated but the coroutine.
 */
#include <time.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

typedef struct { PyObject_HEAD } DoneObject;
typedef struct { PyObject_HEAD PyObject *done; } EmptyCMObject;

static PySendResult done_send(PyObject *self, PyObject *arg, PyObject **res)
{
    (void)self; (void)arg;
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}
static PyObject *done_next(PyObject *self) { (void)self; return NULL; }
static PyObject *done_await(PyObject *self) { return Py_NewRef(self); }

static PyAsyncMethods done_as_async = {done_await, 0, 0, done_send};
static PyTypeObject DoneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "emptycm.Done",
    .tp_basicsize = sizeof(DoneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_as_async = &done_as_async,
    .tp_iternext = done_next,
    .tp_iter = PyObject_SelfIter,
};

static PyObject *cm_aenter(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(((EmptyCMObject *)self)->done);
}
static PyObject *cm_aexit(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    (void)args; (void)n;
    return Py_NewRef(((EmptyCMObject *)self)->done);
}
static PyObject *cm_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    (void)a; (void)k;
    EmptyCMObject *self = (EmptyCMObject *)tp->tp_alloc(tp, 0);
    if (self) {
        self->done = PyObject_New(PyObject, &DoneType);
        if (!self->done) { Py_DECREF(self); return NULL; }
    }
    return (PyObject *)self;
}
static void cm_dealloc(PyObject *self)
{
    Py_XDECREF(((EmptyCMObject *)self)->done);
    Py_TYPE(self)->tp_free(self);
}
static PyObject *cm_ready(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(((EmptyCMObject *)self)->done);
}
static PyObject *cm_ready_clock(PyObject *self, PyObject *unused)
{
    (void)unused;
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0 || ts.tv_sec < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    return Py_NewRef(((EmptyCMObject *)self)->done);
}
static PyObject *cm_noop(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    Py_RETURN_NONE;
}
static PyMethodDef cm_methods[] = {
    {"acquire", cm_ready, METH_NOARGS, NULL},
    {"acquire_clock", cm_ready_clock, METH_NOARGS, NULL},
    {"release", cm_noop, METH_NOARGS, NULL},
    {"__aenter__", cm_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))cm_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};
static PyTypeObject EmptyCMType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "emptycm.EmptyCM",
    .tp_basicsize = sizeof(EmptyCMObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = cm_new,
    .tp_dealloc = cm_dealloc,
    .tp_methods = cm_methods,
};
typedef struct { PyObject_HEAD PyObject *coro; PyObject *stopiter; } DriveObject;
typedef struct { PyObject_HEAD vectorcallfunc vectorcall; PyObject *fn; DriveObject *drive; } GuardObject;

static PySendResult drive_send(PyObject *self, PyObject *arg, PyObject **res)
{
    DriveObject *d = (DriveObject *)self;
    if (d->coro == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Guard: awaited twice");
        return PYGEN_ERROR;
    }
    PySendResult r = PyIter_Send(d->coro, arg, res);
    if (r != PYGEN_NEXT) {
        Py_CLEAR(d->coro);
    }
    return r;
}
static PyObject *drive_next(PyObject *self)
{
    PyObject *res;
    PySendResult r = drive_send(self, Py_None, &res);
    if (r != PYGEN_RETURN) {
        return r == PYGEN_NEXT ? res : NULL;
    }
#if PY_VERSION_HEX >= 0x030C0000
    DriveObject *d = (DriveObject *)self;
    if (d->stopiter != NULL && Py_REFCNT(d->stopiter) == 1) {
        Py_XSETREF(((PyStopIterationObject *)d->stopiter)->value, res);
        PyErr_SetRaisedException(Py_NewRef(d->stopiter));
        return NULL;
    }
#endif
    if (res != Py_None) {
        PyObject *t = PyTuple_Pack(1, res);
        if (t != NULL) {
            PyErr_SetObject(PyExc_StopIteration, t);
            Py_DECREF(t);
        }
    }
    Py_DECREF(res);
    return NULL;
}
static void drive_dealloc(PyObject *self)
{
    Py_XDECREF(((DriveObject *)self)->coro);
    Py_XDECREF(((DriveObject *)self)->stopiter);
    Py_TYPE(self)->tp_free(self);
}
static PyAsyncMethods drive_as_async = {done_await, 0, 0, drive_send};
static PyTypeObject DriveType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "emptycm.Drive",
    .tp_basicsize = sizeof(DriveObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = drive_dealloc,
    .tp_as_async = &drive_as_async,
    .tp_iternext = drive_next,
    .tp_iter = PyObject_SelfIter,
};

static PyObject *guard_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    GuardObject *g = (GuardObject *)self;
    PyObject *coro = PyObject_Vectorcall(g->fn, args, nargsf, kwnames);
    if (coro == NULL) {
        return NULL;
    }
    DriveObject *d = g->drive;
    if (Py_REFCNT(d) != 1 || d->coro != NULL) {  /* in use: a fresh one */
        d = PyObject_New(DriveObject, &DriveType);
        if (d == NULL) {
            Py_DECREF(coro);
            return NULL;
        }
        d->stopiter = NULL;
    }
    else {
        Py_INCREF(d);
    }
    d->coro = coro;
    return (PyObject *)d;
}
static PyObject *guard_new(PyTypeObject *tp, PyObject *a, PyObject *k)
{
    PyObject *fn;
    if (!PyArg_ParseTuple(a, "O", &fn)) return NULL;
    (void)k;
    GuardObject *g = (GuardObject *)tp->tp_alloc(tp, 0);
    if (g == NULL) return NULL;
    g->vectorcall = guard_vectorcall;
    g->fn = Py_NewRef(fn);
    g->drive = PyObject_New(DriveObject, &DriveType);
    if (g->drive == NULL) { Py_DECREF(g); return NULL; }
    g->drive->coro = NULL;
    g->drive->stopiter = PyObject_CallNoArgs(PyExc_StopIteration);
    if (g->drive->stopiter == NULL) { Py_DECREF(g); return NULL; }
    return (PyObject *)g;
}
static void guard_dealloc(PyObject *self)
{
    Py_XDECREF(((GuardObject *)self)->fn);
    Py_XDECREF((PyObject *)((GuardObject *)self)->drive);
    Py_TYPE(self)->tp_free(self);
}
static PyTypeObject GuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "emptycm.Guard",
    .tp_basicsize = sizeof(GuardObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(GuardObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = guard_new,
    .tp_dealloc = guard_dealloc,
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "emptycm", NULL, -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_emptycm(void)
{
    if (PyType_Ready(&DoneType) < 0 || PyType_Ready(&EmptyCMType) < 0
        || PyType_Ready(&DriveType) < 0 || PyType_Ready(&GuardType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m && (PyModule_AddObjectRef(m, "EmptyCM", (PyObject *)&EmptyCMType) < 0
              || PyModule_AddObjectRef(m, "Guard", (PyObject *)&GuardType) < 0)) { Py_DECREF(m); return NULL; }
    return m;
}
