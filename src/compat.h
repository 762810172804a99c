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
 * Invariants: static inline only (no state; one global, fa_watch_epoch, which a dict watcher's
 * callback needs: see the clock section); each shim behaves identically on every version (same
 * reference semantics, same errors).
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

/* ------------------------------------------------------------------ contexts */

/* The identity of this thread's current contextvars.Context (what contextvars.copy_context()
 * would copy), as a number, or 0 when the thread has none yet (a ContextVar lookup makes one).
 * No public call returns the current context without copying it; the thread state's `context`
 * field has held it on every version from 3.7 to 3.15. Only compared, never dereferenced. */
static inline uintptr_t
fa_context_id(void)
{
    return (uintptr_t)PyThreadState_GET()->context;
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

/* ------------------------------------------------------------------ the clock (clock.h)
 *
 * - fa_monotonic_ns(): the monotonic clock time.monotonic() reads, in nanoseconds;
 *   fa_seconds_double(): CPython's own nanoseconds-to-seconds conversion.
 * - fa_type_tag(): a type's method-cache version tag, 0 when it has none. A tag changes whenever
 *   the type or any class in its MRO is modified, and is never reused: same tag, same
 *   unmodified type.
 * - dict tags (fa_dict_tag_take / fa_dict_tag_same): "this dict has not changed since" (for an
 *   instance's __dict__ from 3.13, see FA_INLINE_VALUES). Up to 3.11, the dict's PEP 509
 *   version (changed by every modification, never reused). From 3.12, where those versions are
 *   deprecated (and gone in 3.14), the supported dict watchers: taking a tag watches the dict
 *   with the module state's watcher, whose callback bumps fa_watch_epoch on any event of any
 *   watched dict, so a tag (an epoch) stays the same only while none of them changed. Without
 *   a watcher (all of an interpreter's few are taken) no tag can be taken, and callers prove
 *   from scratch every time.
 */

#include <stdint.h>
#include <time.h>

#define FA_DICT_WATCHERS FA_PY312
/* From 3.13 an instance's attributes live in inline values that its materialized __dict__
 * shares: a store through the instance changes the dict's contents without telling its
 * watchers (seen on 3.13), so a proof about an instance attribute looks it up every time. */
#define FA_INLINE_VALUES FA_PY313

/* ---- the monotonic clock ---- */

static inline long long
fa_monotonic_ns(void)
{
#if defined(__linux__) && defined(CLOCK_MONOTONIC)
    /* what CPython reads on Linux (its fallback never happens there); the vDSO makes it cheap */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#elif FA_PY313
    PyTime_t t;
    (void)PyTime_MonotonicRaw(&t);
    return (long long)t;
#else
    return (long long)_PyTime_GetMonotonicClock();
#endif
}

static inline double
fa_seconds_double(long long ns)
{
#if FA_PY313
    return PyTime_AsSecondsDouble((PyTime_t)ns);
#else
    return _PyTime_AsSecondsDouble((_PyTime_t)ns);
#endif
}

/* ---- an instance's __dict__ slot ---- */

/* The address of obj's __dict__ slot (materializing a dict CPython keeps as inline values), or
 * NULL (no __dict__; or it could not be made: an exception is set). _PyObject_GetDictPtr,
 * private on every version. */
static inline PyObject **
fa_object_dictptr(PyObject *obj)
{
    return _PyObject_GetDictPtr(obj);
}

/* ---- type version tags ---- */

static inline unsigned int
fa_type_tag(PyTypeObject *tp)
{
#if !FA_PY313
    /* up to 3.12 a flag tells whether the tag is valid; from 3.13 the flag is no longer set, and
     * an invalidated tag is 0 */
    if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        return 0;
    }
#endif
    return tp->tp_version_tag;
}

/* ---- dict tags ---- */

typedef uint64_t fa_dict_tag;

#if FA_DICT_WATCHERS
/* Bumped by the watcher callback (clock.c). A process-wide counter: a watcher callback is given
 * no context, so it cannot tell which module state watches a dict; a bump only makes every
 * state re-prove once. */
extern uint64_t fa_watch_epoch;

/* Watch d (watcher: the state's watcher id, or -1): 1 with *tag set, 0 when no tag can be
 * taken (no watcher). Never fails with an exception. */
static inline int
fa_dict_tag_take(int watcher, PyObject *d, fa_dict_tag *tag)
{
    if (watcher < 0 || PyDict_Watch(watcher, d) < 0) {
        PyErr_Clear();
        return 0;
    }
    *tag = fa_watch_epoch;
    return 1;
}

static inline int
fa_dict_tag_same(PyObject *d, fa_dict_tag tag)
{
    (void)d;
    return tag == fa_watch_epoch;
}
#else
static inline fa_dict_tag
fa_dict_version(PyObject *d)
{
    return ((PyDictObject *)d)->ma_version_tag;
}

static inline int
fa_dict_tag_take(int watcher, PyObject *d, fa_dict_tag *tag)
{
    (void)watcher;
    *tag = fa_dict_version(d);
    return 1;
}

static inline int
fa_dict_tag_same(PyObject *d, fa_dict_tag tag)
{
    return fa_dict_version(d) == tag;
}
#endif

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
