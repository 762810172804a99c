/*
 * args.c: the slow paths of argument parsing (args.h): every call that is not the plain
 * positional one comes here, so the messages are written once.
 */
#include "aiofast.h"

int
fa_parse_init(PyObject *self, const char *defname, PyObject *args, PyObject *kwargs,
              const char *const *names, Py_ssize_t nnames, PyObject **out)
{
    /* all parameters are positional-or-keyword with defaults, as in asyncio's __init__s */
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > nnames) {
        if (nnames == 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s.__init__() takes 1 positional argument but %zd were given",
                         defname, nargs + 1);
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "%s.__init__() takes from 1 to %zd positional arguments but %zd were given",
                         defname, nnames + 1, nargs + 1);
        }
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        out[i] = PyTuple_GET_ITEM(args, i);
    }
    if (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0) {
        return 0;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(kwargs, &pos, &key, &value)) {
        Py_ssize_t i;
        for (i = 0; i < nnames; i++) {
            if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, names[i]) == 0) {
                break;
            }
        }
        if (i == nnames) {
#if !FA_PY311
            if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "loop") == 0) {
                PyErr_Format(PyExc_TypeError,
                             "As of 3.10, the *loop* parameter was removed from %s() since it "
                             "is no longer necessary", fa_type_name(Py_TYPE(self)));
                return -1;
            }
#else
            (void)self;
#endif
            PyErr_Format(PyExc_TypeError, "%s.__init__() got an unexpected keyword argument '%S'",
                         defname, key);
            return -1;
        }
        if (i < nargs) {
            PyErr_Format(PyExc_TypeError, "%s.__init__() got multiple values for argument '%s'",
                         defname, names[i]);
            return -1;
        }
        out[i] = value;
    }
    return 0;
}

int
fa_bind_slow(const char *qualname, const char *const *names, Py_ssize_t n, Py_ssize_t posonly,
             PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **out)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional argument%s but %zd were given",
                     qualname, n + 1, n + 1 == 1 ? "" : "s", nargs + 1);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i;
        for (i = posonly; i < n; i++) {
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0) {
                break;
            }
        }
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                         qualname, key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", qualname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    Py_ssize_t missing = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        missing += out[i] == NULL;
    }
    if (missing == 0) {
        return 0;
    }
    /* "missing 2 required positional arguments: 'a' and 'b'", as Python words it */
    PyObject *list = PyUnicode_FromString("");
    Py_ssize_t seen = 0;
    for (Py_ssize_t i = 0; i < n && list != NULL; i++) {
        if (out[i] != NULL) {
            continue;
        }
        const char *sep = seen == 0 ? "" : (seen == missing - 1 ? (missing > 2 ? ", and " : " and ")
                                                                : ", ");
        Py_SETREF(list, PyUnicode_FromFormat("%U%s'%s'", list, sep, names[i]));
        seen++;
    }
    if (list != NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing %zd required positional argument%s: %U",
                     qualname, missing, missing == 1 ? "" : "s", list);
        Py_DECREF(list);
    }
    return -1;
}

int
fa_arg_real(PyObject *v, const char *what, const char *kind, int no_bool, double *out)
{
    if ((no_bool && PyBool_Check(v)) || !(PyFloat_Check(v) || PyLong_Check(v))) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, got %.100s", what, kind,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(d)) {
        PyErr_Format(PyExc_ValueError, "%s must not be nan", what);
        return -1;
    }
    *out = d;
    return 0;
}
