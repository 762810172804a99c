/*
 * emptycm.c: the floor for an uncontended `async with` on a C object, for the benchmarks only.
 *
 * EmptyCM.__aenter__/__aexit__ return one pre-built awaitable that is already done (am_send
 * returns PYGEN_RETURN None, tp_iternext returns NULL without an exception). Nothing in aiofast
 * uses this; it measures what the interpreter itself charges for `async with` on a C type.
 * The floors of the awaitable methods: `await cm.acquire()` (a C method returning that done
 * awaitable), `await cm.acquire_clock()` (the same after one CLOCK_MONOTONIC read, what any rate
 * limiter's acquire must do) and `cm.release()` (a C method call that does nothing).
 */
#include <time.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "emptycm", NULL, -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_emptycm(void)
{
    if (PyType_Ready(&DoneType) < 0 || PyType_Ready(&EmptyCMType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m && PyModule_AddObjectRef(m, "EmptyCM", (PyObject *)&EmptyCMType) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
