/*
 * module.c: aiofast._core. Multi-phase init; the module state (fa_state) is filled here and by
 * each family's fa_<family>_init, in order. Also type creation, shared by every family
 * (argument parsing is in args.c, the StopIteration of results in op.c).
 *
 * Invariant: every object field of fa_state is either NULL or a strong reference, visited by
 * module_traverse and released by module_clear, each by name (aiofast.h's FA_STATE_OBJECTS
 * list declares them, so none can be left out).
 */
#include "aiofast.h"
#include "loop.h"
#include "clock.h"
#include "shm.h"


static struct PyModuleDef module_def;

fa_state *
fa_state_from_type(PyTypeObject *tp)
{
    PyObject *mod = fa_type_module_by_def(tp, &module_def);  // borrowed
    return mod ? fa_get_state(mod) : NULL;
}

PyTypeObject *
fa_add_type(PyObject *mod, PyType_Spec *spec, PyObject *base, const char *short_name)
{
    PyTypeObject *tp = (PyTypeObject *)PyType_FromModuleAndSpec(mod, spec, base);  // new ref
    if (tp == NULL) {
        return NULL;
    }
    if (short_name != NULL) {
        fa_set_short_tpname(tp, short_name);
    }
    if (PyModule_AddType(mod, tp) < 0) {
        Py_DECREF(tp);
        return NULL;
    }
    return tp;
}

static int
module_exec(PyObject *mod)
{
    fa_state *st = fa_get_state(mod);
    memset(st, 0, sizeof(*st));

#define INTERN(field, text) \
    if ((st->field = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(str_create_future, "create_future");
    INTERN(str_set_result, "set_result");
    INTERN(str_set_exception, "set_exception");
    INTERN(str_done, "done");
    INTERN(str_cancelled, "cancelled");
    INTERN(str_cancel, "cancel");
    INTERN(str_result, "result");
    INTERN(str_await, "__await__");
    INTERN(str_call_at, "call_at");
    INTERN(str_call_soon, "call_soon");
    INTERN(str_time, "time");
    INTERN(str_add_done_callback, "add_done_callback");
    INTERN(str_acquire, "acquire");
    INTERN(str_release, "release");
    INTERN(str_locked, "locked");
    INTERN(str_get_loop, "_get_loop");
    INTERN(str_append, "append");
    INTERN(str_throw, "throw");
    INTERN(str_close, "close");
#undef INTERN

#define IMPORT(field, modname, attr) \
    do { \
        if ((st->field = fa_import_attr(modname, attr)) == NULL) return -1; \
    } while (0)
    IMPORT(get_running_loop, "asyncio.events", "_get_running_loop");
    IMPORT(CancelledError, "asyncio.exceptions", "CancelledError");
    IMPORT(InvalidStateError, "asyncio.exceptions", "InvalidStateError");
    IMPORT(QueueEmpty, "asyncio.queues", "QueueEmpty");
    IMPORT(QueueFull, "asyncio.queues", "QueueFull");
    IMPORT(deque_type, "collections", "deque");
    IMPORT(TimeoutError, "builtins", "TimeoutError");
#if FA_PY313
    IMPORT(QueueShutDown, "asyncio.queues", "QueueShutDown");
#else
    st->QueueShutDown = PyErr_NewExceptionWithDoc(
        "aiofast.QueueShutDown", "Raised when putting on to or getting from a shut-down Queue.",
        PyExc_Exception, NULL);
    if (st->QueueShutDown == NULL) {
        return -1;
    }
#endif
#undef IMPORT
    if (PyModule_AddObjectRef(mod, "QueueShutDown", st->QueueShutDown) < 0) {
        return -1;
    }
    /* _debug: 1 in builds with asserts and invariant checks (AIOFAST_DEBUG, the sanitizers) */
    if (PyModule_AddIntConstant(mod, "_debug", FA_DEBUG) < 0) {
        return -1;
    }

    if (fa_clock_init(mod, st) < 0) return -1;
    if (fa_shm_init(mod, st) < 0) return -1;
    if (fa_op_init(mod, st) < 0) return -1;
    if (fa_semaphore_init(mod, st) < 0) return -1;
    if (fa_queue_init(mod, st) < 0) return -1;
    if (fa_breaker_init(mod, st) < 0) return -1;
    if (fa_cache_init(mod, st) < 0) return -1;
    if (fa_memo_init(mod, st) < 0) return -1;
    if (fa_tokenbucket_init(mod, st) < 0) return -1;
    return 0;
}

static int
module_traverse(PyObject *mod, visitproc visit, void *arg)
{
    fa_state *st = fa_get_state(mod);
    if (st == NULL) {
        return 0;
    }
#define VISIT_T(name) Py_VISIT(st->name);
#define VISIT_O(name) Py_VISIT(st->name);
#define VISIT_ARRAY(name, n) \
    for (size_t i_ = 0; i_ < (n); i_++) { \
        Py_VISIT(st->name[i_]); \
    }
    FA_STATE_OBJECTS(VISIT_T, VISIT_O, VISIT_ARRAY)
#undef VISIT_T
#undef VISIT_O
#undef VISIT_ARRAY
    return 0;
}

static int
module_clear(PyObject *mod)
{
    fa_state *st = fa_get_state(mod);
    if (st == NULL) {
        return 0;
    }
    fa_clock_clear(st);
#define CLEAR_T(name) Py_CLEAR(st->name);
#define CLEAR_O(name) Py_CLEAR(st->name);
#define CLEAR_ARRAY(name, n) \
    for (size_t i_ = 0; i_ < (n); i_++) { \
        Py_CLEAR(st->name[i_]); \
    }
    FA_STATE_OBJECTS(CLEAR_T, CLEAR_O, CLEAR_ARRAY)
#undef CLEAR_T
#undef CLEAR_O
#undef CLEAR_ARRAY
    return 0;
}

static void
module_free(void *mod)
{
    module_clear((PyObject *)mod);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aiofast._core",
    .m_doc = "aiofast's C core: asyncio primitives, rate limiting, circuit breaking, caching.",
    .m_size = sizeof(fa_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&module_def);
}
