/*
 * wrapper.c: the shared base of the decorated-function wrappers (BreakerFunction, RateLimited,
 * Memo): traverse, clear, dealloc, binding, the functools.update_wrapper step and a function's
 * annotations. See wrapper.h for the layout and its invariants.
 */
#include "wrapper.h"

PyMemberDef fa_wrapper_members[] = {
    {"__dictoffset__", Py_T_PYSSIZET, offsetof(fa_wrapper, dict), Py_READONLY, NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(fa_wrapper, weakreflist), Py_READONLY, NULL},
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(fa_wrapper, vectorcall), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

int
fa_wrapper_traverse(PyObject *self, visitproc visit, void *arg)
{
    fa_wrapper *w = (fa_wrapper *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(w->func);
    Py_VISIT(w->dict);
    return 0;
}

void
fa_wrapper_clear(PyObject *self)
{
    fa_wrapper *w = (fa_wrapper *)self;
    Py_CLEAR(w->func);
    Py_CLEAR(w->dict);
}

void
fa_wrapper_dealloc(PyObject *self)
{
    fa_gc_tp_dealloc(self);
}

PyObject *
fa_wrapper_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

PyObject *
fa_wrapper_qualname(PyObject *obj, PyObject *func)
{
    PyObject *name = PyObject_GetAttrString(obj, "__qualname__");  // Beware: user code
    if (name == NULL) {
        PyErr_Clear();
        name = PyObject_Repr(func);
    }
    return name;
}

PyObject *
fa_wrapper_delegate(PyObject *self, void *name)
{
    return PyObject_GetAttrString(((fa_wrapper *)self)->func, (const char *)name);
}

/* obj.attr (new ref), or NULL: with *err set on an error, without when obj has no attr */
static PyObject *
wrapper_optional_attr(PyObject *obj, const char *attr, int *err)
{
    PyObject *r = PyObject_GetAttrString(obj, attr);
    if (r == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        else {
            *err = 1;
        }
    }
    return r;
}

/* module.attr, as wrapper_optional_attr */
static PyObject *
wrapper_lookup(const char *module, const char *attr, int *err)
{
    PyObject *mod = PyImport_ImportModule(module);  // new ref
    if (mod == NULL) {
        *err = 1;
        return NULL;
    }
    PyObject *r = wrapper_optional_attr(mod, attr, err);
    Py_DECREF(mod);
    return r;
}

int
fa_wrapper_finish(PyObject *self, int mark)
{
    int err = 0;
    PyObject *update = wrapper_lookup("functools", "update_wrapper", &err);  // new ref
    if (update == NULL) {
        if (!err) {
            PyErr_SetString(PyExc_AttributeError, "functools has no update_wrapper");
        }
        return -1;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(update, self, ((fa_wrapper *)self)->func, NULL);
    Py_DECREF(update);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    if (mark == FA_WRAP_PLAIN) {
        return 0;
    }
    PyObject *inspect = PyImport_ImportModule("inspect");  // new ref
    if (inspect == NULL) {
        return -1;
    }
    int rc = -1;
    if (mark == FA_WRAP_ASYNC_UNLESS_SEEN) {
        /* an `async def` wrapped by a function-like wrapper is seen already: no marks */
        r = PyObject_CallMethod(inspect, "iscoroutinefunction", "O", self);
        int seen = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
        if (seen != 0) {
            rc = seen < 0 ? -1 : 0;
            goto done;
        }
    }
    PyObject *marker = wrapper_lookup("asyncio.coroutines", "_is_coroutine", &err);  // new ref
    if (err) {
        goto done;
    }
    if (marker != NULL) {  // asyncio.iscoroutinefunction's mark, while asyncio has it
        int set = PyObject_SetAttrString(self, "_is_coroutine", marker);
        Py_DECREF(marker);
        if (set < 0) {
            goto done;
        }
    }
    PyObject *markfn = wrapper_optional_attr(inspect, "markcoroutinefunction", &err);  // 3.12+
    if (err) {
        goto done;
    }
    if (markfn != NULL) {
        r = PyObject_CallOneArg(markfn, self);
        Py_DECREF(markfn);
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
    }
    rc = 0;
done:
    Py_DECREF(inspect);
    return rc;
}

/* ------------------------------------------------------------------ annotations (wrapper.h) */

#if FA_PY314
/* a function's own words when __annotate__(1) returns something else than a dict */
#if FA_PY315
#define ANNOTATE_NOT_DICT "__annotate__() must return a dict, not %.100s"
#else
#define ANNOTATE_NOT_DICT "__annotate__ returned non-dict of type '%.100s'"
#endif

PyObject *
fa_wrapper_get_annotations(PyObject *self, void *Py_UNUSED(closure))
{
    PyObject *dict = PyObject_GenericGetDict(self, NULL);  // new ref
    if (dict == NULL) {
        return NULL;
    }
    PyObject *ann = NULL, *annotate = NULL;
    if (PyDict_GetItemStringRef(dict, "__annotations__", &ann) != 0) {
        goto done;  // found (ann: new ref), or an error (ann: NULL)
    }
    if (PyDict_GetItemStringRef(dict, "__annotate__", &annotate) < 0) {
        goto done;
    }
    if (annotate == NULL) {
        /* update_wrapper found neither on what was wrapped (a partial, a callable object): no
         * annotations here either, as with functools.lru_cache's wrapper */
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '__annotations__'",
                     Py_TYPE(self)->tp_name);
        goto done;
    }
    if (PyCallable_Check(annotate)) {
        PyObject *format = PyLong_FromLong(1);  // annotationlib.Format.VALUE
        if (format == NULL) {
            goto done;
        }
        ann = PyObject_CallOneArg(annotate, format);  // Beware: runs Python code
        Py_DECREF(format);
        if (ann == NULL) {
            goto done;
        }
        if (!PyDict_Check(ann)) {
            PyErr_Format(PyExc_TypeError, ANNOTATE_NOT_DICT, Py_TYPE(ann)->tp_name);
            Py_CLEAR(ann);
            goto done;
        }
    }
    else if ((ann = PyDict_New()) == NULL) {
        goto done;
    }
    if (PyDict_SetItemString(dict, "__annotations__", ann) < 0) {
        Py_CLEAR(ann);
    }
done:
    Py_XDECREF(annotate);
    Py_DECREF(dict);
    return ann;
}

int
fa_wrapper_set_annotations(PyObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value != NULL && value != Py_None && !PyDict_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "__annotations__ must be set to a dict object");
        return -1;
    }
    PyObject *dict = PyObject_GenericGetDict(self, NULL);  // new ref
    if (dict == NULL) {
        return -1;
    }
    int rc = value == NULL || value == Py_None
                 ? PyDict_PopString(dict, "__annotations__", NULL)
                 : PyDict_SetItemString(dict, "__annotations__", value);
    if (rc >= 0) {
        rc = PyDict_SetItemString(dict, "__annotate__", Py_None);
    }
    Py_DECREF(dict);
    return rc < 0 ? -1 : 0;
}

PyObject *
fa_wrapper_get_annotate(PyObject *self, void *Py_UNUSED(closure))
{
    PyObject *dict = PyObject_GenericGetDict(self, NULL);  // new ref
    if (dict == NULL) {
        return NULL;
    }
    PyObject *annotate = NULL;
    if (PyDict_GetItemStringRef(dict, "__annotate__", &annotate) == 0) {
        /* never set: what was wrapped had none (see fa_wrapper_get_annotations) */
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '__annotate__'",
                     Py_TYPE(self)->tp_name);
    }
    Py_DECREF(dict);
    return annotate;
}

int
fa_wrapper_set_annotate(PyObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "__annotate__ cannot be deleted");
        return -1;
    }
    if (value != Py_None && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "__annotate__ must be callable or None");
        return -1;
    }
    PyObject *dict = PyObject_GenericGetDict(self, NULL);  // new ref
    if (dict == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(dict, "__annotate__", value);
    if (rc == 0 && value != Py_None) {
        rc = PyDict_PopString(dict, "__annotations__", NULL);
    }
    Py_DECREF(dict);
    return rc < 0 ? -1 : 0;
}
#endif
