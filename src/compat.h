/*
 * compat.h: what differs between the CPython versions aiofast supports, in one place.
 *
 * Clock support (clock.h builds on these):
 * - fa_monotonic_ns(): the monotonic clock time.monotonic() reads, in nanoseconds;
 *   fa_seconds_double(): CPython's own nanoseconds-to-seconds conversion.
 * - fa_type_tag(): a type's method-cache version tag, 0 when it has none. A tag changes whenever
 *   the type or any class in its MRO is modified, and is never reused: same tag, same
 *   unmodified type.
 * - dict tags (fa_dict_tag_take / fa_dict_tag_same): "this dict has not changed since" (for an
 *   instance's __dict__ from 3.13, see FA_INLINE_VALUES).
 *   Up to 3.11, the dict's PEP 509 version (changed by every modification, never reused). From
 *   3.12, where those versions are deprecated (and gone in 3.14), the supported dict watchers:
 *   taking a tag watches the dict with the module state's watcher, whose callback bumps
 *   fa_watch_epoch on any event of any watched dict, so a tag (an epoch) stays the same only
 *   while none of them changed. Without a watcher (all of an interpreter's few are taken) no
 *   tag can be taken, and callers prove from scratch every time.
 */
#ifndef AIOFAST_COMPAT_H
#define AIOFAST_COMPAT_H

#include <Python.h>
#include <stdint.h>
#include <time.h>

#define FA_DICT_WATCHERS (PY_VERSION_HEX >= 0x030C0000)
/* From 3.13 an instance's attributes live in inline values that its materialized __dict__
 * shares: a store through the instance changes the dict's contents without telling its
 * watchers (seen on 3.13), so a proof about an instance attribute looks it up every time. */
#define FA_INLINE_VALUES (PY_VERSION_HEX >= 0x030D0000)

/* ---- the monotonic clock ---- */

static inline long long
fa_monotonic_ns(void)
{
#if defined(__linux__) && defined(CLOCK_MONOTONIC)
    /* what CPython reads on Linux (its fallback never happens there); the vDSO makes it cheap */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#elif PY_VERSION_HEX >= 0x030D0000
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
#if PY_VERSION_HEX >= 0x030D0000
    return PyTime_AsSecondsDouble((PyTime_t)ns);
#else
    return _PyTime_AsSecondsDouble((_PyTime_t)ns);
#endif
}

/* ---- type version tags ---- */

static inline unsigned int
fa_type_tag(PyTypeObject *tp)
{
#if PY_VERSION_HEX < 0x030D0000
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

#endif
