/*
 * compat.h: every difference between the CPython versions aiofast builds on (3.10 to 3.15), in
 * one place. Python.h and structmember.h come from here.
 *
 * - FA_PY311 ... FA_PY315: "built for this CPython or newer". The families test these for the
 *   asyncio behaviour of each version (what a waiter does on wake-up, how `await` returns a
 *   value); nothing outside this header compares PY_VERSION_HEX itself.
 * - Shims: one fa_* function or macro per C API that differs between versions or is private to
 *   CPython (an underscore name). Each says what it wraps and from which version the public
 *   spelling exists, so that supporting the next Python means reading and editing this file.
 *
 * Invariants: static inline only (no state, no globals); each shim behaves identically on every
 * version (same reference semantics, same errors).
 */
#ifndef AIOFAST_COMPAT_H
#define AIOFAST_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030A0000
#error "aiofast needs CPython 3.10 or newer"
#endif

/* ------------------------------------------------------------------ versions */

#define FA_PY311 (PY_VERSION_HEX >= 0x030B0000)
#define FA_PY312 (PY_VERSION_HEX >= 0x030C0000)
#define FA_PY313 (PY_VERSION_HEX >= 0x030D0000)
#define FA_PY314 (PY_VERSION_HEX >= 0x030E0000)
#define FA_PY315 (PY_VERSION_HEX >= 0x030F0000)

/* ------------------------------------------------------------------ member definitions */

/* PyMemberDef type codes: public names from 3.12, structmember.h's before */
#ifndef Py_T_PYSSIZET
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_T_OBJECT T_OBJECT
#define Py_READONLY READONLY
#endif

/* ------------------------------------------------------------------ types */

/* The type's short name, borrowed for as long as the type lives (_PyType_Name, private on every
 * version; the public PyType_GetName of 3.11+ returns a new str object instead). For messages. */
static inline const char *
fa_type_name(PyTypeObject *tp)
{
    return _PyType_Name(tp);
}

/* The attribute `name` as found on tp's MRO, without descriptors applied nor an exception set:
 * borrowed, or NULL if absent (_PyType_Lookup, in the CPython API on every version). Used to tell
 * whether a subclass overrides a method. */
static inline PyObject *
fa_type_lookup(PyTypeObject *tp, PyObject *name)
{
    return _PyType_Lookup(tp, name);
}

/* The module object made from def that defined tp or the first heap type of its MRO that has one:
 * borrowed, or NULL with TypeError set. PyType_GetModuleByDef from 3.11; the same walk by hand on
 * 3.10. */
static inline PyObject *
fa_type_module_by_def(PyTypeObject *tp, PyModuleDef *def)
{
#if FA_PY311
    return PyType_GetModuleByDef(tp, def);
#else
    PyObject *mro = tp->tp_mro;
    if (mro != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
            PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
            if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
                continue;
            }
            PyObject *mod = ((PyHeapTypeObject *)base)->ht_module;  // borrowed
            if (mod != NULL && PyModule_GetDef(mod) == def) {
                return mod;
            }
        }
    }
    PyErr_Format(PyExc_TypeError, "PyType_GetModuleByDef: No superclass of '%s' has the given "
                 "module", tp->tp_name);
    return NULL;
#endif
}

/* ------------------------------------------------------------------ exceptions */

/* The current exception as one object (a new reference, or NULL if none); clears it.
 * PyErr_GetRaisedException from 3.12; PyErr_Fetch + normalization before. */
static inline PyObject *
fa_fetch_exc(void)
{
#if FA_PY312
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(v, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(t);
    return v;
#endif
}

/* Raise exc (steals the reference), with no context chaining. PyErr_SetRaisedException from
 * 3.12; PyErr_Restore before. */
static inline void
fa_restore_exc(PyObject *exc)
{
#if FA_PY312
    PyErr_SetRaisedException(exc);
#else
    PyObject *tb = PyException_GetTraceback(exc);  // new ref or NULL
    PyErr_Restore(Py_NewRef(Py_TYPE(exc)), exc, tb);
#endif
}

/* ------------------------------------------------------------------ ints */

/* An exact int's value if it is small (at most two 30-bit digits on 3.10/3.11; "compact", one
 * digit, from 3.12): 1 with *out set, else 0 (then compare it the general way). x must be an
 * exact int. 3.12+: the PyUnstable compact-value API; 3.10/3.11: ob_size is the signed digit
 * count (longintrepr.h, included by Python.h) and zero has no digit to read. */
static inline __attribute__((always_inline)) int
fa_long_small(PyObject *x, long long *out)
{
#if FA_PY312
    if (!PyUnstable_Long_IsCompact((PyLongObject *)x)) {
        return 0;
    }
    *out = (long long)PyUnstable_Long_CompactValue((PyLongObject *)x);
    return 1;
#else
    const digit *d = ((PyLongObject *)x)->ob_digit;
    Py_ssize_t size = Py_SIZE(x);
    if (__builtin_expect(size == 1, 1)) {
        *out = (long long)d[0];
        return 1;
    }
    if (size == 0) {
        *out = 0;
        return 1;
    }
    if (size == -1) {
        *out = -(long long)d[0];
        return 1;
    }
    if (size == 2 || size == -2) {
        long long v = (long long)d[0] | ((long long)d[1] << PyLong_SHIFT);
        *out = size < 0 ? -v : v;
        return 1;
    }
    return 0;
#endif
}

/* ------------------------------------------------------------------ tracemalloc */

#if !FA_PY312
/* 3.10 and 3.11 export tracemalloc's configuration (declared in an internal header); reading
 * its flag inline saves a call. The layout is that of those two (frozen) versions. */
struct fa_tracemalloc_config {
    int initialized;
    int tracing;
    int max_nframe;
};
PyAPI_DATA(struct fa_tracemalloc_config) _Py_tracemalloc_config;
#endif

/* Tell tracemalloc that the GC object obj (of that basicsize, no managed dict) is a new object
 * made here, as CPython's free lists do (_Py_NewReference): its memory block gets the current
 * traceback (and is traced from now on if it was made before tracing started). Nothing but a
 * flag test while tracemalloc is off: 3.13+, whether a reference tracer is installed
 * (tracemalloc installs one when started; PyRefTracer, public); 3.12, _PyTraceMalloc_IsTracing
 * (private); 3.10/3.11, the exported configuration. Then PyTraceMalloc_Track on the block, which
 * starts at the GC header two pointers before obj. */
static inline void
fa_tracemalloc_renew(PyObject *obj, size_t basicsize)
{
#if FA_PY313
    void *data = NULL;
    if (__builtin_expect(PyRefTracer_GetTracer(&data) == NULL, 1)) {
        return;
    }
#elif FA_PY312
    if (__builtin_expect(!_PyTraceMalloc_IsTracing(), 1)) {
        return;
    }
#else
    if (__builtin_expect(!_Py_tracemalloc_config.tracing, 1)) {
        return;
    }
#endif
    (void)PyTraceMalloc_Track(0, (uintptr_t)obj - 2 * sizeof(void *),
                              basicsize + 2 * sizeof(void *));
}

#endif
