/*
 * clock.h: the one clock every family reads (static inline where hot; the cold parts in clock.c).
 *
 * - fa_monotonic(): time.monotonic() in C, the same double bit for bit.
 * - fa_mono_read(): "time.monotonic" as the time module has it now: read in C while it is the
 *   original, called (a patched one) otherwise. The default clock of the caches, the memoizer's
 *   synchronous functions and the breaker.
 * - fa_loop_read(): loop.time() of a loop, read in C when it is provably asyncio's own
 *   BaseEventLoop.time, untouched (found on the type, not shadowed by the instance, its code and
 *   the module globals it reads the originals). The proof is remembered for the last loop it was
 *   made for, and holds while nothing it rests on changed (see clock.c).
 * - fa_user_read(): a user's clock (clock=, timer=), one error message for every family.
 * - fa_running_loop_or_none(): asyncio's running loop, cached where asyncio is slow to answer,
 *   its C function called directly where it is C.
 * - fa_clock: what an object knows of the clock it reads. A reading names its clock (NULL
 *   for the monotonic clock, else the loop and the callable it came from). A reading on another
 *   clock than the last one, or below the last reading of the same clock, is a new clock: the
 *   object's time carries on from where it was (nothing is counted for the gap, which is
 *   unknowable), never runs backwards and never freezes. Families keep their times on that
 *   carried-on scale (fa_clock_advance gives it: the reading plus an offset, 0 until the first
 *   new clock). Non-finite readings (a user clock may return them) pass through as they are.
 */
#ifndef AIOFAST_CLOCK_H
#define AIOFAST_CLOCK_H

#include "aiofast.h"
#include "compat.h"

#include <float.h>

/* ---- time.monotonic() ---- */

/* time.monotonic() returns CPython's seconds-double of the monotonic clock in nanoseconds:
 * (double)(t / 10**9) when t is a whole number of seconds, else (double)t / 1e9. Below 2**53
 * (double)t is exact, and then both are (double)t / 1e9 (an exact integer quotient is returned
 * exactly by the correctly rounded division), provided double arithmetic is done in double
 * precision (FLT_EVAL_METHOD == 0, e.g. SSE2, not x87). */
static inline double
fa_monotonic(void)
{
    long long t = fa_monotonic_ns();
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    if (FA_LIKELY(t < (1LL << 53) && t > -(1LL << 53))) {
        return (double)t / 1e9;
    }
#endif
    return fa_seconds_double(t);
}

/* Is time.monotonic() < exp? Reading CLOCK_MONOTONIC costs ~20 ns on x86 Linux; its coarse
 * variant (the same clock as of the last kernel tick, never ahead of it) costs ~4 ns. When the
 * coarse time is more than FA_COARSE_MARGIN before exp, the precise time is too, as long as the
 * kernel's tick is less than FA_COARSE_MARGIN late (ticks come every 1-10 ms): only items close
 * to their expiry pay for the precise clock. */
#define FA_COARSE_MARGIN 0.02

static inline int
fa_monotonic_before(double exp)
{
#if defined(CLOCK_MONOTONIC_COARSE) && defined(__linux__)
    struct timespec ts;
    if (FA_LIKELY(clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)) {
        double coarse = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        if (FA_LIKELY(coarse + FA_COARSE_MARGIN < exp)) {
            return 1;
        }
    }
#endif
    return fa_monotonic() < exp;
}

/* ---- readings ---- */

/* A reading and the clock it is on: kloop and kfn are new references, both NULL for the
 * monotonic clock (the hot case: nothing to release). */
typedef struct {
    double now;
    PyObject *kloop;
    PyObject *kfn;
} fa_reading;

static inline void
fa_reading_release(fa_reading *r)
{
    Py_CLEAR(r->kloop);
    Py_CLEAR(r->kfn);
}

/* clock.c */
int fa_clock_init(PyObject *mod, fa_state *st);
void fa_clock_clear(fa_state *st);
int fa_user_read(PyObject *fn, PyObject *self, const char *what, double *out);
int fa_mono_read_slow(fa_state *st, fa_reading *r);
int fa_loop_read_slow(fa_state *st, PyObject *loop, fa_reading *r);
int fa_loop_read_own(fa_state *st, PyObject *loop, fa_reading *r);

/* Is time.monotonic still the original (proven and nothing changed since)? */
static inline int
fa_mono_proven(fa_state *st)
{
    return st->core.clk_mono_ok && fa_dict_tag_same(st->core.clk_time_dict, st->core.clk_mono_tag);
}

/* time.monotonic as the time module has it now. 0 or -1. Beware: a patched one is Python. */
static inline int
fa_mono_read(fa_state *st, fa_reading *r)
{
    if (FA_LIKELY(fa_mono_proven(st))) {
        r->now = fa_monotonic();
        r->kloop = r->kfn = NULL;
        return 0;
    }
    return fa_mono_read_slow(st, r);
}

/* Does the remembered proof about `loop`'s time() still hold? 1: it is asyncio's own
 * BaseEventLoop.time (read natively); 2: it is its class's own method st->core.clk_nat_fn, not
 * shadowed (uvloop's Loop.time: called without a lookup); 0: prove it again. Nothing it rests on
 * may have changed: the loop and its class (__class__ assignment changes the type; any change
 * to the class or a base changes its tag, and the method is owned by the class), the instance
 * __dict__ (the same dict, unchanged: its tag, or from 3.13 still without `time`; replacing it
 * changes the pointer), and for 1, BaseEventLoop.time's code and the module dicts it reads
 * (their tags). */
static inline int
fa_loop_proven(fa_state *st, PyObject *loop)
{
    /* The loop is remembered by address only. `loop` is alive (the caller holds it); if it is
     * at that address with that type, the slot at the remembered offset is its own. A new
     * object of the same type at a dead loop's address is judged by what judged the old one:
     * its type and its dict, and the old dict's death changed the tags (a dict watcher sees
     * it die; a new dict has a new PEP 509 version). */
    if (!st->core.clk_nat_valid || (void *)loop != st->core.clk_nat_loop) {
        return 0;
    }
    PyTypeObject *tp = Py_TYPE(loop);
    if ((void *)tp != st->core.clk_nat_type || fa_type_tag(tp) != st->core.clk_nat_ttag
        || *st->core.clk_nat_dictptr != st->core.clk_nat_dict) {
        return 0;
    }
    if (st->core.clk_nat_fn == NULL
        && (PyFunction_GET_CODE(st->core.clk_base_time) != st->core.clk_base_code
            || !fa_dict_tag_same(st->core.clk_base_globals, st->core.clk_globals_tag)
            || !fa_mono_proven(st))) {
        return 0;
    }
    int kind = st->core.clk_nat_fn == NULL ? 1 : 2;
    PyObject *d = st->core.clk_nat_dict;
    if (d == NULL) {
        return kind;
    }
#if FA_INLINE_VALUES
    /* an instance store may not have told the dict's watchers: look for `time` itself (a str
     * key in a str-keyed dict: no Python code; anything else answers "prove it again") */
    int has = PyDict_Contains(d, st->core.str_time);  // answers without a look at the error state
    if (FA_UNLIKELY(has != 0)) {
        if (has < 0) {
            PyErr_Clear();
        }
        return 0;
    }
    return kind;
#else
    return fa_dict_tag_same(d, st->core.clk_nat_dtag) ? kind : 0;
#endif
}

/* loop.time(): 0 or -1. Beware: a time() other than asyncio's own is Python code (uvloop's is
 * C, but a subclass's may not be). */
static inline int
fa_loop_read(fa_state *st, PyObject *loop, fa_reading *r)
{
    int kind = fa_loop_proven(st, loop);
    if (FA_LIKELY(kind == 1)) {
        r->now = fa_monotonic();
        r->kloop = r->kfn = NULL;
        return 0;
    }
    if (kind == 2) {
        return fa_loop_read_own(st, loop, r);
    }
    return fa_loop_read_slow(st, loop, r);
}

/* ---- the running loop ---- */

/* asyncio's _get_running_loop(), called as what it is: CPython's C _asyncio implements it as a
 * METH_NOARGS function whose own answer is cheap from 3.12 (a per-thread field, or a cache keyed
 * on the thread's id), so the cost left is the generic call around it (argument checks, the
 * recursion guard, the result check). fa_clock_init keeps its C function and its module when it
 * is that (clk_rl_cfunc, clk_rl_self, borrowed from st->core.get_running_loop, which holds both);
 * asyncio's pure-Python fallback, or anything else, is called the generic way. New ref or NULL. */
static inline PyObject *
fa_call_running_loop_getter(fa_state *st)
{
    if (FA_LIKELY(st->core.clk_rl_cfunc != NULL)) {
        return st->core.clk_rl_cfunc(st->core.clk_rl_self, NULL);
    }
    return PyObject_CallNoArgs(st->core.get_running_loop);
}

/* The running loop (new ref) or None.
 *
 * Up to 3.11, asyncio's C _get_running_loop() checks the holder's pid against getpid(), a
 * system call, on every call: that alone costs more than the rest of a fast acquire. The holder
 * lives in the thread-state dict, which _set_running_loop() modifies whenever a loop starts or
 * stops running in this thread (it stores a new holder, which owns the loop). So while that
 * dict carries the PEP 509 version tag it had when asyncio last answered (tags are globally
 * unique: same tag, same dict, unmodified since), and no fork happened since (in a child
 * asyncio's pid check answers None; os.register_at_fork bumps clk_fork_gen there), the answer
 * is the same, and the loop is alive (the dict owns the holder, the holder the loop). We never
 * read asyncio's private holder. 3.12 dropped the pid check: there we just ask asyncio. */
static inline PyObject *
fa_running_loop_or_none(fa_state *st)
{
#if !FA_DICT_WATCHERS
    PyObject *d = PyThreadState_GetDict();  // borrowed
    if (FA_LIKELY(d != NULL && st->core.clk_fork_gen != (unsigned long)-1)) {
        uint64_t ver = fa_dict_version(d);
        if (FA_LIKELY(ver == st->core.clk_rl_dict_version
                      && st->core.clk_rl_fork_gen == st->core.clk_fork_gen
                      && st->core.clk_rl_loop != NULL)) {
            return Py_NewRef(st->core.clk_rl_loop);
        }
        PyObject *loop = fa_call_running_loop_getter(st);  // new ref; C, no Python code
        if (loop == NULL) {
            return NULL;
        }
        st->core.clk_rl_loop = loop;  // borrowed from here on (see above)
        st->core.clk_rl_fork_gen = st->core.clk_fork_gen;
        st->core.clk_rl_dict_version = fa_dict_version(d);  // unchanged by that call
        return loop;
    }
#endif
    return fa_call_running_loop_getter(st);
}

/* ---- an object's clock ---- */

typedef struct {
    PyObject *kloop;  /* the clock of the last reading (strong refs; both NULL: monotonic) */
    PyObject *kfn;
    double last;      /* the last finite reading */
    double offset;    /* the object's time = reading + offset */
    int valid;        /* a reading was taken */
} fa_clock;

/* Is r on c's clock, not below its last reading? */
static inline int
fa_clock_same(const fa_clock *c, const fa_reading *r)
{
    return c->valid && r->kloop == c->kloop && r->kfn == c->kfn && r->now >= c->last;
}

/* Take reading r (its references are taken over) into c and return the object's time for it.
 * A new clock (see above) continues from the object's last time; its old references go to
 * *old_loop / *old_fn for the caller to release once its own state is whole (releasing them
 * may run Python code). */
static inline double
fa_clock_advance(fa_clock *c, fa_reading *r, PyObject **old_loop, PyObject **old_fn)
{
    *old_loop = *old_fn = NULL;
    if (FA_LIKELY(fa_clock_same(c, r))) {
        c->last = r->now;
        /* the same objects as c holds: these releases never free anything */
        Py_XDECREF(r->kloop);
        Py_XDECREF(r->kfn);
        return r->now + c->offset;
    }
    if (!isfinite(r->now)) {
        fa_reading_release(r);  /* c holds nothing of it: may free; nothing is half-done here */
        return r->now;
    }
    double at;  /* the object's time when the old clock was left */
    if (!c->valid) {
        at = r->now;
    }
    else if (c->kloop == NULL && c->kfn == NULL) {
        at = fa_monotonic() + c->offset;  /* the old clock still runs: read it */
    }
    else {
        at = c->last + c->offset;
    }
    c->offset = at - r->now;
    c->last = r->now;
    *old_loop = c->kloop;
    *old_fn = c->kfn;
    c->kloop = r->kloop;
    c->kfn = r->kfn;
    r->kloop = r->kfn = NULL;
    c->valid = 1;
    return at;
}

/* fa_clock_advance for an object whose state is whole once its time is read (a clock read on
 * its own, as the breaker and the caches do): the old clock's references are released at once.
 * Beware: their release may run Python code. */
static inline double
fa_clock_take(fa_clock *c, fa_reading *r)
{
    PyObject *old_loop, *old_fn;
    double t = fa_clock_advance(c, r, &old_loop, &old_fn);
    Py_XDECREF(old_loop);
    Py_XDECREF(old_fn);
    return t;
}

/* The object's time for a reading of time t on c's current clock (e.g. a time given by the user
 * on its own timer's scale). */
static inline double
fa_clock_to_object(const fa_clock *c, double t)
{
    return c->valid && isfinite(t) ? t + c->offset : t;
}

/* ... and back: a time on the object's scale as a reading of the current clock. */
static inline double
fa_clock_to_reading(const fa_clock *c, double t)
{
    return c->valid && isfinite(t) ? t - c->offset : t;
}

static inline int
fa_clock_traverse(fa_clock *c, visitproc visit, void *arg)
{
    Py_VISIT(c->kloop);
    Py_VISIT(c->kfn);
    return 0;
}

static inline void
fa_clock_clear_refs(fa_clock *c)
{
    c->valid = 0;
    c->offset = 0.0;
    Py_CLEAR(c->kloop);
    Py_CLEAR(c->kfn);
}

#endif
