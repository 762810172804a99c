/*
 * state.c: the core's part of the module state (interned names, asyncio's objects), the state
 * behind a type, and type creation and registration, for every layer (state.h).
 */
#include "aiofast.h"

/* The definition of aiofast._core (module.c's), set once by PyInit__core before any module
 * exists: the same static object for every interpreter, so no state of its own. */
static PyModuleDef *the_module_def;

void
fa_state_set_module_def(PyModuleDef *def)
{
    the_module_def = def;
}

fa_state *
fa_state_from_type(PyTypeObject *tp)
{
    PyObject *mod = fa_type_module_by_def(tp, the_module_def);  // borrowed
    return mod ? fa_get_state(mod) : NULL;
}

PyTypeObject *
fa_new_type(PyObject *mod, PyType_Spec *spec, PyObject *base, const char *short_name)
{
    PyTypeObject *tp = (PyTypeObject *)PyType_FromModuleAndSpec(mod, spec, base);  // new ref
    if (tp != NULL && short_name != NULL) {
        fa_set_short_tpname(tp, short_name);
    }
    return tp;
}

PyTypeObject *
fa_add_type(PyObject *mod, PyType_Spec *spec, PyObject *base, const char *short_name)
{
    PyTypeObject *tp = fa_new_type(mod, spec, base, short_name);  // new ref
    if (tp != NULL && PyModule_AddType(mod, tp) < 0) {
        Py_DECREF(tp);
        return NULL;
    }
    return tp;
}

int
fa_register_abc(const char *abc_name, PyTypeObject *tp)
{
    PyObject *abc = PyImport_ImportModule("collections.abc");
    if (abc == NULL) {
        return -1;
    }
    PyObject *cls = PyObject_GetAttrString(abc, abc_name);
    Py_DECREF(abc);
    if (cls == NULL) {
        return -1;
    }
    PyObject *r = PyObject_CallMethod(cls, "register", "O", tp);
    Py_DECREF(cls);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

int
fa_core_state_init(PyObject *Py_UNUSED(mod), fa_state *st)
{
    fa_core_state *core = &st->core;
#define INTERN(field, text) \
    if ((core->field = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(str_create_future, "create_future");
    INTERN(str_create_task, "create_task");
    INTERN(str_set_result, "set_result");
    INTERN(str_set_exception, "set_exception");
    INTERN(str_done, "done");
    INTERN(str_cancelled, "cancelled");
    INTERN(str_cancel, "cancel");
    INTERN(str_result, "result");
    INTERN(str_exception, "exception");
    INTERN(str_add_done_callback, "add_done_callback");
    INTERN(str_await, "__await__");
    INTERN(str_throw, "throw");
    INTERN(str_close, "close");
    INTERN(str_call_at, "call_at");
    INTERN(str_time, "time");
    INTERN(str_get_loop, "_get_loop");
#undef INTERN

#define IMPORT(field, modname, attr) \
    do { \
        if ((core->field = fa_import_attr(modname, attr)) == NULL) return -1; \
    } while (0)
    IMPORT(get_running_loop, "asyncio.events", "_get_running_loop");
    IMPORT(CancelledError, "asyncio.exceptions", "CancelledError");
    IMPORT(InvalidStateError, "asyncio.exceptions", "InvalidStateError");
    IMPORT(TimeoutError, "builtins", "TimeoutError");
#undef IMPORT
    return 0;
}
