/*
 * breaker.c: CircuitBreaker, the functions it guards (BreakerFunction) and the awaitable that
 * drives a guarded coroutine (a kind of FaOp, op.h), in C.
 *
 * The state machine itself (states, tickets and generations, the rate mode's window) is plain
 * data in breaker_sm.c/.h: a Breaker owns one record (b->sm) and its own totals (b->tot), and
 * drives the record through fa_bk_admit / fa_bk_commit / fa_bk_force. This file adds what
 * needs Python: the clock, classification of outcomes, listeners, the awaitable and the
 * wrappers.
 *
 * shared=name: the record lives in a shared-memory segment every process of the host opens
 * (breaker_sm.h, fa_bk_shared: a robust process-shared mutex, a published state word, two
 * copies of the record). Then b->sm is only this process's snapshot of it, refreshed under the
 * mutex for the getters (bk_view); admission and recording go to the segment (bk_sh_begin /
 * bk_sh_end around the same fa_bk_* steps), the closed path through the published word alone.
 * The listeners, classification, totals and the clock's reading stay this process's own.
 *
 * store=s: no Breaker at all; the constructor returns s.make_breaker(...) (bk_from_store), a
 * breaker of the store's own type (aiofast.redis.RedisCircuitBreaker for a RedisBreakerStore).
 *
 * Invariants:
 * - probes == number of live tickets with probe != 0 and gen == sm->gen (HALF_OPEN only, else
 *   0; a shared ticket's probe is its slot + 1).
 * - Every admitted ticket is settled exactly once: recorded (success, failure, ignored) or
 *   released (ignored) when its holder dies unfinished.
 * - Nothing is held across the guarded call: admission and recording are each one pure C
 *   section. Python code (a clock=, an expected_exception predicate, listeners, logging) runs
 *   before the section (classification, clock) or after it (listeners): commit, then call out.
 *   With the GIL, plain-def calls from several threads therefore keep exact counts.
 * - Transitions are queued as (old, new) pairs while listeners exist and delivered in order by
 *   bk_dispatch after the commit; a listener that re-enters the breaker only queues more events.
 * These, and the record's own invariants, are checked after every mutation in debug builds
 * (breaker_check, breakercall_check: FA_CONSISTENT).
 *
 * For the circuitbreaker package's drop-in (circuit, aiofast/_compat_breaker.py): `streak`
 * counts failures since the last success whatever the state (circuitbreaker's failure_count),
 * and with `peer` set the last failure is kept until a success (its last_failure).
 */
#include "op.h"
#include "breaker.h"
#include "clock.h"
#include "wrapper.h"
#include "breaker_sm.h"
#include "shm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#if FA_BK_HAVE_SHARED
#include <signal.h>
#include <sys/mman.h>
#endif

enum { BK_CLOSED = FA_BK_CLOSED, BK_OPEN = FA_BK_OPEN, BK_HALF_OPEN = FA_BK_HALF_OPEN };
enum { OUT_SUCCESS = FA_BK_SUCCESS, OUT_FAILURE = FA_BK_FAILURE, OUT_IGNORED = FA_BK_IGNORED };

typedef fa_bk_ticket bk_ticket;

typedef struct {
    PyObject_HEAD
    fa_state *st;
    /* configuration, fixed at construction */
    PyObject *expected;      /* exception type, tuple of them, or predicate */
    PyObject *exclude;       /* the same, or NULL */
    PyObject *fallback;      /* callable or NULL */
    PyObject *name;          /* str or None */
    PyObject *clock;         /* callable or NULL (time.monotonic) */
    fa_clock clk;            /* the clock last read; times are on its scale (bk_now) */
    char expected_pred;
    char exclude_pred;
    /* the state machine: a record of fa_bk_sm_size(&sm->cfg) bytes (breaker_sm.h) */
    fa_bk_sm *sm;            /* shared=: a snapshot of the shared record, for the getters */
    fa_bk_totals tot;
#if FA_BK_HAVE_SHARED
    fa_bk_shared *sh;        /* shared=: the record every process shares, else NULL */
    fa_shm shm;
    PyObject *shared;        /* shared=: its name, else NULL */
    int sh_testing;          /* a test segment: virtual time and the crash hook */
#endif
    double last_now;         /* last clock reading: the fallback when a clock= raises */
    PyObject *last_failure;  /* peer: the exception of the last failure, until a success */
    int peer;                /* circuitbreaker's drop-in: keeps last_failure */
    /* listeners and the transitions they have not been told about yet */
    PyObject *listeners;     /* list or NULL */
    unsigned char *ev;       /* (old, new) pairs */
    Py_ssize_t ev_len, ev_cap, ev_head;
    int dispatching;
    FaOp *cache;             /* reuse slot of its ops: calls, __aenter__, __aexit__ */
    FaOp *tcache;            /* reuse slot of with-block tickets */
    PyObject *aenter;        /* cached bound __aenter__ / __aexit__ (op.h, special methods) */
    PyObject *aexit;
    PyObject *weakreflist;
} Breaker;

typedef struct {
    FA_WRAPPER_HEAD          /* func: the guarded function */
    Breaker *breaker;
    int is_async;
} BreakerFunction;

/* Kind-specific flags of the breaker's ops (FaOp.flags; see "the breaker's ops" below) */
#define BOPF_ADMITTED 0x100     /* holds a ticket: must record or release it */
#define BOPF_DECORATED 0x200    /* @breaker on an async def: a failing fn(*args) is a bad call */
#define BOPF_PREADMITTED 0x400  /* admitted before it was awaited (a plain def made a coroutine) */
#define BOPF_MADE 0x800         /* arg is the coroutine made at call time, not started */

#if FA_BK_HAVE_SHARED
#define BK_SHARED(b) ((b)->sh != NULL)
#else
#define BK_SHARED(b) 0
#endif

#if FA_DEBUG
static void breaker_check(Breaker *b);
static void bk_op_check(FaOp *op);
#endif
/* FA_ASSERT_CONSISTENT(breaker or call) (debug.h); the checkers are further down */
#define FA_CONSISTENT(obj) \
    _Generic((obj), Breaker *: breaker_check, FaOp *: bk_op_check)(obj)

/* ------------------------------------------------------------------ clock */

/* The current time on the breaker's own scale (clock.h: clock= if given, else time.monotonic as
 * the time module has it; a new clock carries on from where the last one left): 0, or -1 with an
 * exception (a clock that raised or returned nonsense). Beware: a clock= callable (or a patched
 * time.monotonic) runs Python code, and so may the release of a clock read before. */
static int
bk_now(Breaker *b, double *now)
{
#if FA_BK_HAVE_SHARED
    if (BK_SHARED(b)) {
        /* the host's one clock; a test segment's own virtual time instead (_shared_advance) */
        int64_t ns = fa_shm_now_ns();
        if (b->sh_testing) {
            ns = atomic_load_explicit(&b->sh->clock_offset_ns, memory_order_relaxed);
        }
        *now = b->last_now = (double)ns / 1e9;
        return 0;
    }
#endif
    fa_reading r;
    if (FA_LIKELY(b->clock == NULL)) {
        if (fa_mono_read(b->st, &r) < 0) {
            return -1;
        }
    }
    else {
        if (fa_user_read(b->clock, NULL, "clock()", &r.now) < 0) {
            return -1;
        }
        r.kloop = NULL;
        r.kfn = Py_NewRef(b->clock);
    }
    *now = b->last_now = fa_clock_take(&b->clk, &r);
    return 0;
}

/* ------------------------------------------------------------------ reporting */

/* The breaker's cold parts written in Python (logging an error, telling what kind of function
 * is decorated, wrapping a generator function) are functions of
 * aiofast._compat_breaker. C never imports that module: the module hands itself over once, when
 * it is imported (the package's own import does it, before anyone can make a breaker), through
 * _core._breaker_cold(module); bk_cold looks a helper up on it. Beware: without the package
 * (the extension loaded on its own) there are no helpers: decorating raises RuntimeError and
 * errors to report go to sys.unraisablehook. */
static PyObject *
bk_cold(fa_state *st, const char *name)
{
    if (FA_UNLIKELY(st->breaker.cold == NULL)) {
        PyErr_Format(PyExc_RuntimeError, "aiofast._core was loaded without the aiofast package: "
                     "the CircuitBreaker's helper %s is missing", name);
        return NULL;
    }
    return PyObject_GetAttrString(st->breaker.cold, name);
}

PyDoc_STRVAR(bk_cold_set_doc,
"_breaker_cold($module, helpers, /)\n--\n\n"
"Private: the object whose functions are the CircuitBreaker's cold helpers (_report_error, "
"_fn_kind, _wrap_generator); aiofast._compat_breaker passes itself.");

static PyObject *
bk_cold_set(PyObject *mod, PyObject *helpers)
{
    fa_state *st = fa_get_state(mod);
    Py_XSETREF(st->breaker.cold, Py_NewRef(helpers));
    Py_RETURN_NONE;
}

static PyMethodDef bk_module_methods[] = {
    {"_breaker_cold", bk_cold_set, METH_O, bk_cold_set_doc},
    {NULL, NULL, 0, NULL},
};

/* Hand the current exception to the helpers' _report_error (logging). Never fails: if logging
 * itself fails, the error goes to sys.unraisablehook. Beware: Python code. */
static void
bk_report(Breaker *b, const char *what, PyObject *culprit)
{
    PyObject *exc = fa_fetch_exc();  // new ref
    if (exc == NULL) {
        return;
    }
    if (b->st->breaker.cold == NULL) {
        fa_restore_exc(exc);  /* no helpers: the error itself is the unraisable one */
        PyErr_WriteUnraisable((PyObject *)b);
        return;
    }
    PyObject *r = NULL;
    PyObject *report = bk_cold(b->st, "_report_error");  // new ref
    if (report != NULL) {
        r = PyObject_CallFunction(report, "OsOO", (PyObject *)b, what,
                                  culprit ? culprit : Py_None, exc);
        Py_DECREF(report);
    }
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)b);
    }
    Py_XDECREF(r);
    Py_DECREF(exc);
}

/* ------------------------------------------------------------------ events */

static void
bk_ev_push(Breaker *b, int from, int to)
{
    if (!b->dispatching && b->ev_head == b->ev_len) {
        b->ev_head = b->ev_len = 0;
    }
    if (b->ev_len == b->ev_cap) {
        Py_ssize_t cap = b->ev_cap ? b->ev_cap * 2 : 8;
        unsigned char *ev = PyMem_Realloc(b->ev, (size_t)cap * 2);
        if (ev == NULL) {
            return;  /* out of memory: the listeners miss this one; the state is right */
        }
        b->ev = ev;
        b->ev_cap = cap;
    }
    b->ev[2 * b->ev_len] = (unsigned char)from;
    b->ev[2 * b->ev_len + 1] = (unsigned char)to;
    b->ev_len++;
}

/* Tell the listeners about the queued transitions, in order. The caller's pending exception
 * (if any) is kept. A listener that raises is reported and the others still run. If a listener
 * changes the state, its transition is queued and delivered by this same loop, after the
 * current one; a dispatch already running (re-entrant or in another thread) delivers ours. */
static void
bk_dispatch(Breaker *b)
{
    if (FA_LIKELY(b->ev_head == b->ev_len) || b->dispatching) {
        return;
    }
    fa_state *st = b->st;
    b->dispatching = 1;
    Py_INCREF(b);
    PyObject *saved = fa_fetch_exc();  // new ref or NULL
    while (b->ev_head < b->ev_len) {
        int from = b->ev[2 * b->ev_head];
        int to = b->ev[2 * b->ev_head + 1];
        b->ev_head++;
        if (b->listeners == NULL) {
            continue;
        }
        /* a snapshot: a listener may add or remove listeners */
        PyObject *ls = PyList_GetSlice(b->listeners, 0, PY_SSIZE_T_MAX);  // new ref
        if (ls == NULL) {
            bk_report(b, "listener dispatch", NULL);
            continue;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ls); i++) {
            PyObject *fn = PyList_GET_ITEM(ls, i);  // borrowed (ls holds it)
            PyObject *args[3] = {(PyObject *)b, st->breaker.states[from], st->breaker.states[to]};
            PyObject *r = PyObject_Vectorcall(fn, args, 3, NULL);  // Beware: re-entrant code
            if (r == NULL) {
                bk_report(b, "listener", fn);
            }
            Py_XDECREF(r);
        }
        Py_DECREF(ls);
    }
    b->ev_head = b->ev_len = 0;
    b->dispatching = 0;
    FA_ASSERT_CONSISTENT(b);
    if (saved != NULL) {
        fa_restore_exc(saved);
    }
    Py_DECREF(b);
}
#if FA_DEBUG
/* The invariants at the top and the record's own (fa_bk_sm_check), checked after every
 * mutation (debug builds: FA_ASSERT_CONSISTENT). Reads C fields only. Live tickets are not
 * linked anywhere, so "probes == live probe tickets" is checked per call (breakercall_check). */
static void
breaker_check(Breaker *b)
{
    /* (expected, name and the other objects may be cleared: breaker_clear, then a dying call
     * releases its ticket) */
    FA_CHECK(b->sm != NULL, "Breaker %p: no state machine", (void *)b);
    fa_bk_sm_check(b->sm, b);
    FA_CHECK(b->listeners == NULL || PyList_CheckExact(b->listeners),
             "Breaker %p: listeners %p is not a list", (void *)b, (void *)b->listeners);
    FA_CHECK(b->cache == NULL
                 || (Py_IS_TYPE(b->cache, b->st->engine.OpType) && b->cache->state == FA_OP_DONE),
             "Breaker %p: cache %p is not a finished op", (void *)b, (void *)b->cache);
    FA_CHECK(b->tcache == NULL
                 || (Py_IS_TYPE(b->tcache, b->st->engine.OpType) && b->tcache->state == FA_OP_DONE
                     && b->tcache->owner == NULL),
             "Breaker %p: ticket cache %p is not a finished ticket", (void *)b,
             (void *)b->tcache);
    FA_CHECK(BK_SHARED(b) || b->sm->gen >= b->tot.changes,
             "Breaker %p: generation %llu < %llu state changes", (void *)b,
             (unsigned long long)b->sm->gen, b->tot.changes);
    /* every settled ticket was admitted once; a slow call is a success or a failure */
    FA_CHECK(b->tot.succ + b->tot.fail + b->tot.ign <= b->tot.calls
                 && b->tot.slow <= b->tot.succ + b->tot.fail,
             "Breaker %p: %llu calls, %llu/%llu/%llu settled, %llu slow", (void *)b,
             b->tot.calls, b->tot.succ, b->tot.fail, b->tot.ign, b->tot.slow);
    /* the transitions not yet told to the listeners */
    FA_CHECK(b->ev_head >= 0 && b->ev_head <= b->ev_len && b->ev_len <= b->ev_cap
                 && (b->ev_cap == 0 || b->ev != NULL)
                 && (b->dispatching == 0 || b->dispatching == 1),
             "Breaker %p: events %zd..%zd of %zd, dispatching %d", (void *)b, b->ev_head,
             b->ev_len, b->ev_cap, b->dispatching);
    for (Py_ssize_t i = b->ev_head; i < b->ev_len; i++) {
        int from = b->ev[2 * i], to = b->ev[2 * i + 1];
        FA_CHECK(from <= BK_HALF_OPEN && to <= BK_HALF_OPEN && from != to,
                 "Breaker %p: event %zd is %d -> %d", (void *)b, i, from, to);
    }
}

/* An op's ticket against its breaker: a live ticket of the current generation is a probe iff
 * the breaker is half-open (then it holds one of the `probes` slots). */
static void
bk_op_check(FaOp *op)
{
    Breaker *b = (Breaker *)op->owner;
    FA_CHECK(!(op->flags & BOPF_ADMITTED) || b != NULL, "breaker op %p (%s): admitted without "
             "a breaker", (void *)op, op->kind->name);
    FA_CHECK(op->state != FA_OP_DONE || !(op->flags & (BOPF_ADMITTED | BOPF_MADE)),
             "breaker op %p (%s): done but holds a ticket or a coroutine (flags %#x)", (void *)op,
             op->kind->name, (unsigned)op->flags);
    /* (a shared breaker's record changes under other processes: checked under its mutex) */
    if ((op->flags & BOPF_ADMITTED) && !BK_SHARED(b) && op->u64 == b->sm->gen) {
        int probe = op->i32 != 0;
        FA_CHECK(probe == (b->sm->state == BK_HALF_OPEN),
                 "breaker op %p: probe %d in state %d of its generation", (void *)op, probe,
                 (int)b->sm->state);
        FA_CHECK(!probe || b->sm->probes >= 1, "breaker op %p: a live probe, no probe slot taken",
                 (void *)op);
    }
    if (b != NULL) {
        breaker_check(b);
    }
}
#endif
/* ------------------------------------------------------------------ driving the state machine */

/* After a step of the machine from state `from` to `to`, with `changes` transitions counted
 * before it: queue the transition it made, if any, for the listeners (a step makes at most
 * one). */
static inline void
bk_note(Breaker *b, int from, int to, unsigned long long changes)
{
    if (b->tot.changes != changes && b->listeners != NULL
        && PyList_GET_SIZE(b->listeners) > 0) {
        bk_ev_push(b, from, to);
    }
}

#if FA_BK_HAVE_SHARED
/* The shared record's mutex: the copy to change, or NULL with an OSError set. Nothing between
 * this and bk_sh_end may call Python code. */
static fa_bk_sm *
bk_sh_begin(Breaker *b)
{
    fa_bk_sm *w;
    int rc = fa_bk_sh_lock(b->sh, &w);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    return w;
}

/* Publish w, release the mutex. */
static inline void
bk_sh_end(Breaker *b, fa_bk_sm *w)
{
#if FA_DEBUG
    fa_bk_sh_check(w, b);
#endif
    fa_bk_sh_publish(b->sh, w);
}

/* A settlement that could not take the mutex (it never fails in practice: a dead owner's
 * mutex is recovered): reported, the caller's exception kept. */
static void
bk_sh_lost(Breaker *b, int err)
{
    PyObject *saved = fa_fetch_exc();  // new ref or NULL
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    PyErr_WriteUnraisable((PyObject *)b);
    if (saved != NULL) {
        fa_restore_exc(saved);
    }
}

/* Copy the shared record into b->sm (what the getters read). 0 or -1. */
static int
bk_sh_sync(Breaker *b)
{
    fa_bk_sm *w = bk_sh_begin(b);
    if (w == NULL) {
        return -1;
    }
    memcpy(b->sm, w, fa_bk_sm_size(&w->cfg));
    bk_sh_end(b, w);
    FA_ASSERT_CONSISTENT(b);
    return 0;
}
#endif

/* Settle a ticket with an outcome. Pure C. */
static inline void
bk_commit(Breaker *b, const bk_ticket *t, int out, int slow, double now)
{
    unsigned long long changes = b->tot.changes;
    int from, to;
#if FA_BK_HAVE_SHARED
    if (BK_SHARED(b)) {
        fa_bk_sm *w;
        int err = fa_bk_sh_lock(b->sh, &w);
        if (err != 0) {
            bk_sh_lost(b, err);
            return;
        }
        from = w->state;
        fa_bk_sh_commit(w, &b->tot, t, out, slow, now);
        to = w->state;
        bk_sh_end(b, w);
        bk_note(b, from, to, changes);
        FA_ASSERT_CONSISTENT(b);
        return;
    }
#endif
    from = b->sm->state;
    fa_bk_commit(b->sm, &b->tot, t, out, slow, now);
    to = b->sm->state;
    bk_note(b, from, to, changes);
    FA_ASSERT_CONSISTENT(b);
}

/* A ticket whose call will never finish (its holder died, a with-block was never exited, the
 * coroutine could not even be created): neither success nor failure. Pure C. */
static inline void
bk_release(Breaker *b, const bk_ticket *t)
{
    bk_commit(b, t, OUT_IGNORED, 0, 0.0);
}

/* Pure C part of admission. 1 admitted, 0 rejected (*remaining set), -1 error (shared: the
 * mutex could not be taken). */
static inline int
bk_admit_at(Breaker *b, bk_ticket *t, double now, double *remaining)
{
    unsigned long long changes = b->tot.changes;
    int from, to, rc;
#if FA_BK_HAVE_SHARED
    if (BK_SHARED(b)) {
        fa_bk_sm *w = bk_sh_begin(b);
        if (w == NULL) {
            return -1;
        }
        from = w->state;
        rc = fa_bk_sh_admit(w, &b->tot, t, now, remaining);
        to = w->state;
        bk_sh_end(b, w);
        bk_note(b, from, to, changes);
        FA_ASSERT_CONSISTENT(b);
        return rc;
    }
#endif
    from = b->sm->state;
    rc = fa_bk_admit(b->sm, &b->tot, t, now, remaining);
    to = b->sm->state;
    bk_note(b, from, to, changes);
    FA_ASSERT_CONSISTENT(b);
    return rc;
}

/* Is the breaker closed (a hint: it may change before the call is admitted)? */
static inline int
bk_looks_closed(Breaker *b)
{
#if FA_BK_HAVE_SHARED
    if (BK_SHARED(b)) {
        return (atomic_load_explicit(&b->sh->word, memory_order_relaxed) & 3) == BK_CLOSED;
    }
#endif
    return b->sm->state == BK_CLOSED;
}

/* Ask to run a call: 1 admitted (ticket filled), 0 rejected (*remaining set), -1 error. */
static inline int
bk_admit(Breaker *b, bk_ticket *t, double *remaining)
{
    if (FA_LIKELY(!BK_SHARED(b))) {
        if (FA_LIKELY(fa_bk_admit_closed(b->sm, &b->tot, t))) {
            FA_ASSERT_CONSISTENT(b);
            return 1;
        }
    }
#if FA_BK_HAVE_SHARED
    else {
        /* closed: the generation from the published word, no mutex */
        uint64_t w = atomic_load_explicit(&b->sh->word, memory_order_acquire);
        if (FA_LIKELY((w & 3) == BK_CLOSED && !b->sm->cfg.slow_mode)) {
            t->gen = w >> 3;
            t->probe = 0;
            t->t0 = 0.0;
            b->tot.calls++;
            return 1;
        }
    }
#endif
    double now;
    if (bk_now(b, &now) < 0) {  // Beware: a clock= runs Python code; decide after it
        return -1;
    }
    int rc = bk_admit_at(b, t, now, remaining);
    bk_dispatch(b);
    return rc;
}

/* Does exc match spec (a type or tuple: no Python code; a predicate: Python code)? */
static int
bk_match(Breaker *b, PyObject *spec, int pred, PyObject *exc, int on_error)
{
    if (!pred) {
        return PyErr_GivenExceptionMatches(exc, spec);
    }
    PyObject *r = PyObject_CallOneArg(spec, exc);  // Beware: user code
    int v = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (v < 0) {
        bk_report(b, spec == b->expected ? "expected_exception predicate" : "exclude predicate",
                  spec);
        return on_error;
    }
    return v;
}

static int
bk_classify(Breaker *b, PyObject *exc)
{
    if (!PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_Exception)) {
        /* CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit: never an outcome */
        if (PyErr_GivenExceptionMatches(exc, b->st->core.CancelledError)
            || PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt)
            || PyErr_GivenExceptionMatches(exc, PyExc_SystemExit)
            || PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)) {
            return OUT_IGNORED;
        }
    }
    if (b->exclude != NULL && bk_match(b, b->exclude, b->exclude_pred, exc, 0)) {
        return OUT_IGNORED;
    }
    return bk_match(b, b->expected, b->expected_pred, exc, 1) ? OUT_FAILURE : OUT_SUCCESS;
}

/* The closed, default-mode success: a few C instructions. 1 done, 0 take the general path. */
static inline int
bk_record_success_fast(Breaker *b, const bk_ticket *t)
{
    if (FA_LIKELY(!BK_SHARED(b))) {
        if (FA_LIKELY(b->last_failure == NULL && fa_bk_success_closed(b->sm, &b->tot, t))) {
            FA_ASSERT_CONSISTENT(b);
            return 1;
        }
        return 0;
    }
#if FA_BK_HAVE_SHARED
    /* a clean closed record of the ticket's generation: only the success count moves */
    uint64_t w = atomic_load_explicit(&b->sh->word, memory_order_acquire);
    if (FA_LIKELY(w == ((t->gen << 3) | 4 | BK_CLOSED) && b->last_failure == NULL)) {
        atomic_fetch_add_explicit(&b->sh->fast_succ, 1, memory_order_relaxed);
        b->tot.succ++;
        return 1;
    }
#endif
    return 0;
}

/* Record the outcome of an admitted call: exc is NULL for success, else the exception it
 * raised (borrowed; the caller keeps it and re-raises it). Never fails: errors of a predicate
 * or a clock= are reported. Beware: runs Python code before (classification, clock) and after
 * (listeners) the commit; no exception may be set when it is called. */
static void
bk_record(Breaker *b, const bk_ticket *t, PyObject *exc)
{
    int out = exc ? bk_classify(b, exc) : OUT_SUCCESS;
    if (out == OUT_SUCCESS && bk_record_success_fast(b, t)) {
        return;
    }
    const fa_bk_config *cfg = &b->sm->cfg;
    double now = 0.0;  /* only a closed default-mode success or ignored call has no use for it */
    if (cfg->rate_mode || cfg->slow_mode || !bk_looks_closed(b) || out == OUT_FAILURE
        || BK_SHARED(b)) {
        if (bk_now(b, &now) < 0) {
            bk_report(b, "clock", b->clock);
            now = b->last_now;
        }
    }
    int slow = cfg->slow_mode && out != OUT_IGNORED && now - t->t0 > cfg->slow_duration;
    bk_commit(b, t, out, slow, now);
    if (b->peer && out != OUT_IGNORED) {
        PyObject *old = b->last_failure;
        b->last_failure = out == OUT_FAILURE ? Py_NewRef(exc) : NULL;
        Py_XDECREF(old);  // Beware: the old exception's frames may run __del__
    }
    bk_dispatch(b);
}

/* The current time, and b->sm up to date (a shared breaker's record copied). 0 or -1. */
static int
bk_view(Breaker *b, double *now)
{
#if FA_BK_HAVE_SHARED
    if (BK_SHARED(b) && bk_sh_sync(b) < 0) {
        return -1;
    }
#endif
    return bk_now(b, now);
}

/* The state as seen now: OPEN past its recovery timeout reads as HALF_OPEN (the transition
 * itself happens at the next call). -1 on a clock error. */
static int
bk_effective_state(Breaker *b, double *now)
{
    if (bk_view(b, now) < 0) {
        return -1;
    }
    return fa_bk_effective(b->sm, *now);
}

/* Counts as seen now (see failure_count / success_count). */
static void
bk_counts(Breaker *b, int eff, double now, Py_ssize_t *fails, Py_ssize_t *succs)
{
    int64_t f, s;
    fa_bk_counts(b->sm, eff, now, &f, &s);
    *fails = (Py_ssize_t)f;
    *succs = (Py_ssize_t)s;
}

/* ------------------------------------------------------------------ CircuitOpenError */

static PyObject *
bk_open_error_new(Breaker *b, double remaining)
{
    fa_state *st = b->st;
    PyObject *rem = PyFloat_FromDouble(remaining);  // new ref
    if (rem == NULL) {
        return NULL;
    }
    PyObject *args = PyTuple_Pack(2, (PyObject *)b, rem);  // new ref
    Py_DECREF(rem);
    if (args == NULL) {
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)st->breaker.CircuitOpenError;
    PyObject *exc = tp->tp_new(tp, args, NULL);  /* BaseException_new stores args */
    Py_DECREF(args);
    return exc;
}

static void
bk_raise_open(Breaker *b, double remaining)
{
    PyObject *exc = bk_open_error_new(b, remaining);  // new ref
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

static PyObject *
openerr_args_item(PyObject *self, Py_ssize_t i)
{
    PyObject *args = ((PyBaseExceptionObject *)self)->args;
    if (args != NULL && PyTuple_Check(args) && PyTuple_GET_SIZE(args) > i) {
        return Py_NewRef(PyTuple_GET_ITEM(args, i));
    }
    Py_RETURN_NONE;
}

static PyObject *
openerr_get_breaker(PyObject *self, void *Py_UNUSED(c))
{
    return openerr_args_item(self, 0);
}

static PyObject *
openerr_get_remaining(PyObject *self, void *Py_UNUSED(c))
{
    return openerr_args_item(self, 1);
}

static PyObject *
openerr_str(PyObject *self)
{
    PyObject *args = ((PyBaseExceptionObject *)self)->args;
    if (args == NULL || !PyTuple_Check(args) || PyTuple_GET_SIZE(args) != 2
        || !PyFloat_Check(PyTuple_GET_ITEM(args, 1))) {
        return ((PyTypeObject *)PyExc_Exception)->tp_str(self);
    }
    PyObject *br = PyTuple_GET_ITEM(args, 0);  // borrowed
    double rem = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(args, 1));
    PyObject *name = PyObject_GetAttrString(br, "name");  // new ref
    if (name == NULL) {
        PyErr_Clear();
        name = Py_NewRef(Py_None);
    }
    char *num = PyOS_double_to_string(rem, 'f', 3, 0, NULL);
    if (num == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    PyObject *r;
    if (name == Py_None) {
        r = PyUnicode_FromFormat(rem > 0 ? "unnamed circuit breaker is open: %s s remaining"
                                         : "unnamed circuit breaker is half-open with every probe "
                                           "slot busy: %s s remaining", num);
    }
    else {
        r = PyUnicode_FromFormat(rem > 0 ? "circuit breaker %R is open: %s s remaining"
                                         : "circuit breaker %R is half-open with every probe "
                                           "slot busy: %s s remaining", name, num);
    }
    PyMem_Free(num);
    Py_DECREF(name);
    return r;
}

static int
openerr_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return ((PyTypeObject *)PyExc_Exception)->tp_traverse(self, visit, arg);
}

static int
openerr_clear(PyObject *self)
{
    return ((PyTypeObject *)PyExc_Exception)->tp_clear(self);
}

static PyGetSetDef openerr_getset[] = {
    {"breaker", openerr_get_breaker, NULL, "The CircuitBreaker that rejected the call.", NULL},
    {"remaining", openerr_get_remaining, NULL,
     "Seconds until the breaker lets a probe through (0.0 when half-open and busy).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot openerr_slots[] = {
    {Py_tp_str, openerr_str},
    {Py_tp_traverse, openerr_traverse},
    {Py_tp_clear, openerr_clear},
    {Py_tp_getset, openerr_getset},
    {Py_tp_doc, "CircuitOpenError(breaker, remaining)\n--\n\n"
                "Raised when a CircuitBreaker rejects a call: .breaker is the breaker, "
                ".remaining the seconds until it lets a probe through."},
    {0, NULL},
};

static PyType_Spec openerr_spec = {
    .name = "aiofast.CircuitOpenError",
    .basicsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = openerr_slots,
};

static int bk_enter(Breaker *b);
static int bk_exit(Breaker *b, PyObject *exc);

/* ------------------------------------------------------------------ the breaker's ops */

/* The calls it guards, __aenter__/__aexit__ and the with-block tickets are FaOps (op.h) of four
 * kinds. The engine drives them (send/throw/close, the reuse slots, the never-awaited warning,
 * the StopIteration of a result); the kinds admit, record and release:
 *
 * - a call (bk_call_kind): arg is the guarded callable, or with BOPF_MADE the coroutine made at
 *   call time (not started yet); arg2/arg3 the positional (tuple) and keyword (dict or NULL)
 *   arguments, when fn is called at admission or a fallback may be. Its first send admits it:
 *   rejected, it raises CircuitOpenError or hands over to fallback(*args, **kwargs) (awaited if
 *   awaitable); admitted, it awaits what the call returns (fa_op_delegate; a plain value is the
 *   result). The outcome is recorded in resume (success) or on_exc (the exception, classified;
 *   GeneratorExit of close(): neither success nor failure).
 * - __aenter__ / __aexit__ (bk_enter_kind, bk_exit_kind) finish at once: they push and pop a
 *   with-block ticket. __aexit__'s arg is the exception leaving the block, or NULL.
 * - a ticket (bk_ticket_kind): never awaited (quiet); in a with-block's stack, arg is the
 *   enclosing block's ticket. _acquire() hands one out too.
 * - a context's stack of with-block tickets (bk_stack_kind, see bk_enter): never awaited.
 *
 * A ticket's (gen, t0, probe) is kept in (u64, num, i32). Every admitted op holds
 * BOPF_ADMITTED until it records or releases: the drop hook releases it when the op is finished
 * or dies unfinished (neither success nor failure), and closes a coroutine made at call time
 * that was never started (so it does not warn "never awaited"; one that dies with its op does
 * warn, as the coroutine of a dropped call would). */

static inline bk_ticket
op_ticket(const FaOp *op)
{
    bk_ticket t = {op->u64, op->num, op->i32};
    return t;
}

/* The op holds ticket t from now on. */
static inline void
op_admit(FaOp *op, const bk_ticket *t)
{
    op->u64 = t->gen;
    op->num = t->t0;
    op->i32 = t->probe;
    op->flags |= BOPF_ADMITTED;
}

/* Give the op's ticket up: neither success nor failure. Pure C. */
static void
op_release(FaOp *op)
{
    if (op->flags & BOPF_ADMITTED) {
        op->flags &= ~BOPF_ADMITTED;
        bk_ticket t = op_ticket(op);
        bk_release((Breaker *)op->owner, &t);
    }
}

/* Record the outcome of the op's call, if it holds a ticket: exc NULL for success. Beware:
 * Python code (classification, clock, listeners). */
static void
op_record(FaOp *op, PyObject *exc)
{
    if (!(op->flags & BOPF_ADMITTED)) {
        return;
    }
    op->flags &= ~BOPF_ADMITTED;
    Breaker *b = (Breaker *)op->owner;
    bk_ticket t = op_ticket(op);
    if (exc == NULL && bk_record_success_fast(b, &t)) {
        return;
    }
    bk_record(b, &t, exc);
}

/* Close an unstarted coroutine made at call time, so it does not warn "never awaited". */
static void
bc_close_made(FaOp *op)
{
    if (!(op->flags & BOPF_MADE)) {
        return;
    }
    op->flags &= ~BOPF_MADE;
    PyObject *it = op->arg;
    op->arg = NULL;
    if (it == NULL) {
        return;
    }
    if (PyCoro_CheckExact(it)) {
        PyObject *r = PyObject_CallMethodNoArgs(it, op->st->core.str_close);
        if (r == NULL) {
            PyErr_Clear();  /* an unstarted coroutine closes without running anything */
        }
        Py_XDECREF(r);
    }
    Py_DECREF(it);
}

static void
bc_drop(FaOp *op, int dying)
{
    op_release(op);
    if (!dying) {
        bc_close_made(op);
    }
}

/* The call failed (the exception is set): record it, re-raise it. */
static PySendResult
bc_failed(FaOp *op)
{
    PyObject *exc = fa_fetch_exc();  // new ref
    if (exc == NULL) {
        op_release(op);
        PyErr_SetString(PyExc_SystemError, "aiofast: awaitable failed without an exception");
        return PYGEN_ERROR;
    }
    op_record(op, exc);  // Beware: Python code
    fa_restore_exc(exc);
    return PYGEN_ERROR;
}

static PySendResult
bc_call_resume(FaOp *op, PyObject *value, PyObject **res)
{
    op_record(op, NULL);  // Beware: Python code (listeners)
    *res = Py_NewRef(value);
    return PYGEN_RETURN;
}

static int
bc_call_exc(FaOp *op, PyObject *exc)
{
    if (PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)) {
        op_release(op);  /* closed: neither success nor failure */
    }
    else {
        op_record(op, exc);  // Beware: Python code
    }
    return 0;
}

/* Await aw (stolen), what the call or the fallback returned; a plain value is the result. */
static PySendResult
bc_await(FaOp *op, PyObject *aw, PyObject **res)
{
    PySendResult r;
    if (FA_UNLIKELY(!fa_op_awaitable(aw))) {
        r = bc_call_resume(op, aw, res);  /* a plain function's result */
        Py_DECREF(aw);
        return r;
    }
    r = fa_op_delegate(op, aw, res);  // Beware: the coroutine runs
    Py_DECREF(aw);
    return r == PYGEN_ERROR ? bc_failed(op) : r;
}

/* fn(*arg2, **arg3) */
static PyObject *
bc_call_stored(FaOp *op, PyObject *fn)
{
    if (op->arg2 != NULL) {
        return PyObject_Call(fn, op->arg2, op->arg3);
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *r = empty ? PyObject_Call(fn, empty, op->arg3) : NULL;
    Py_XDECREF(empty);
    return r;
}

static PySendResult
bc_call_start(FaOp *op, PyObject **res)
{
    Breaker *b = (Breaker *)op->owner;
    if (!(op->flags & BOPF_PREADMITTED)) {
        bk_ticket t;
        double remaining = 0.0;
        int a = bk_admit(b, &t, &remaining);  // Beware: a clock= and listeners may run
        if (FA_UNLIKELY(a <= 0)) {
            bc_close_made(op);
            if (a < 0) {
                return PYGEN_ERROR;
            }
            if (b->fallback == NULL) {
                bk_raise_open(b, remaining);
                return PYGEN_ERROR;
            }
            PyObject *r = bc_call_stored(op, b->fallback);  // Beware: user code
            if (r == NULL) {
                return PYGEN_ERROR;
            }
            return bc_await(op, r, res);  /* an awaitable fallback result is awaited */
        }
        op_admit(op, &t);
    }
    FA_ASSERT_CONSISTENT(op);
    PyObject *aw;  // new ref
    if (op->flags & BOPF_MADE) {
        op->flags &= ~BOPF_MADE;  /* it stays in arg, which names the op */
        aw = Py_NewRef(op->arg);
    }
    else {
        aw = bc_call_stored(op, op->arg);  // Beware: user code (a plain function runs here)
        Py_CLEAR(op->arg2);
        Py_CLEAR(op->arg3);
        if (aw == NULL) {
            if (op->flags & BOPF_DECORATED) {
                /* making the coroutine failed (bad arguments): not an outcome of the call */
                op_release(op);
                return PYGEN_ERROR;
            }
            return bc_failed(op);
        }
    }
    return bc_await(op, aw, res);
}

/* the op stands for a call of the guarded function: its qualname is the function's (or that
 * of the coroutine made at call time, or of what is awaited) */
static PyObject *
bc_call_qualname(FaOp *op)
{
    PyObject *named = op->arg != NULL ? op->arg : op->fut_iter;
    if (named == NULL) {
        return NULL;  // the kind's name
    }
    PyObject *n = PyObject_GetAttrString(named, "__qualname__");
    if (n != NULL && PyUnicode_Check(n)) {
        return n;
    }
    Py_XDECREF(n);
    PyErr_Clear();
    return NULL;
}

static const fa_opkind bk_call_kind = {"CircuitBreaker call", bc_call_start, bc_call_resume,
                                       bc_call_exc, bc_call_qualname, FA_OPK_KEEP_RESULT,
                                       bc_drop};

static PySendResult
bc_enter_start(FaOp *op, PyObject **res)
{
    if (bk_enter((Breaker *)op->owner) < 0) {
        return PYGEN_ERROR;
    }
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PySendResult
bc_exit_start(FaOp *op, PyObject **res)
{
    PyObject *exc = op->arg;  // ours now
    op->arg = NULL;
    int rc = bk_exit((Breaker *)op->owner, exc);
    Py_XDECREF(exc);
    if (rc < 0) {
        return PYGEN_ERROR;
    }
    *res = Py_NewRef(Py_None);  /* falsy: never suppresses */
    return PYGEN_RETURN;
}

static PySendResult
bc_ticket_start(FaOp *Py_UNUSED(op), PyObject **Py_UNUSED(res))
{
    PyErr_SetString(PyExc_TypeError, "a CircuitBreaker ticket is not awaitable");
    return PYGEN_ERROR;
}

static const fa_opkind bk_enter_kind = {"CircuitBreaker.__aenter__", bc_enter_start, NULL, NULL,
                                        NULL, 0, NULL};
static const fa_opkind bk_exit_kind = {"CircuitBreaker.__aexit__", bc_exit_start, NULL, NULL,
                                       NULL, 0, NULL};
static const fa_opkind bk_ticket_kind = {"CircuitBreaker ticket", bc_ticket_start, NULL, NULL,
                                         NULL, 0, bc_drop};

/* A new op of kind for b, from the breaker's reuse slot (calls, __aenter__, __aexit__) or its
 * ticket slot: no allocation on the sequential path. An op in use is out of its slot (a call in
 * use may be a task's coroutine, and a task dropped pending must stay collectable) and goes
 * back when it finishes; one dropped unfinished releases its ticket when it dies. */
static inline FaOp *
bc_new(Breaker *b, const fa_opkind *kind)
{
    return fa_op_cached(b->st, kind == &bk_ticket_kind ? &b->tcache : &b->cache, kind,
                        (PyObject *)b);
}

/* A ticket op holding t (released if the op cannot be made). New ref or NULL. */
static FaOp *
bk_ticket_new(Breaker *b, const bk_ticket *t)
{
    FaOp *tok = bc_new(b, &bk_ticket_kind);  // new ref
    if (tok == NULL) {
        bk_release(b, t);
        return NULL;
    }
    tok->flags |= FA_OPF_QUIET;
    op_admit(tok, t);  /* from here on, the ticket's death releases it */
    FA_ASSERT_CONSISTENT(tok);
    return tok;
}

/* Admit one call and return a ticket op holding its ticket (new ref), or NULL (rejected:
 * CircuitOpenError; or another error, with nothing admitted). */
static FaOp *
bk_admit_ticket(Breaker *b)
{
    bk_ticket t;
    double remaining = 0.0;
    int a = bk_admit(b, &t, &remaining);
    if (a <= 0) {
        if (a == 0) {
            bk_raise_open(b, remaining);
        }
        return NULL;
    }
    return bk_ticket_new(b, &t);
}

static inline int
bk_is_ticket(Breaker *b, PyObject *obj)
{
    return Py_IS_TYPE(obj, b->st->engine.OpType) && ((FaOp *)obj)->kind == &bk_ticket_kind
           && ((FaOp *)obj)->owner == (PyObject *)b;
}

/* ------------------------------------------------------------------ with-block tickets */

/* The open with-blocks of a context, of every breaker, are one stack: in each context that
 * entered a block, the module's ContextVar (st->breaker.blocks) holds a stack op (bk_stack_kind)
 * whose arg is the innermost open block's ticket (each ticket's arg is the enclosing one, of
 * any breaker, or NULL) and whose u64 is the context that made it (fa_context_id). An exit
 * pops its breaker's innermost ticket: the top one when blocks nest, as they do.
 *
 * A context's first block sets the variable to a new stack; after that its blocks push and
 * pop in place, so a block costs two lookups and no new context mapping, and the emptied stack
 * stays for the context's next block (one small object per context, holding nothing when no
 * block is open). A copy of the context (a task created by it, copy_context()) holds the same
 * stack object, so only the context that made a stack pushes on it or pops it; a context that
 * finds another's stack makes its own, and a block is exited in the context that entered it
 * (tasks and threads never see each other's tickets). A context dropped with blocks open drops
 * its stack, which releases their tickets.
 * Beware: the stack of a context is shared with its copies. A block a context leaves open when
 * it is dropped (a pending task destroyed inside `async with`) keeps its ticket until the
 * copies made before it entered are gone too (or have entered blocks of their own). And the
 * maker is recognised by address: after it dies, a context at the same address that holds its
 * stack (a copy of a copy) takes the stack for its own; the accounting of its own blocks stays
 * right. */

/* (made finished: never driven, nothing to send into) */
static const fa_opkind bk_stack_kind = {"CircuitBreaker with-blocks", bc_ticket_start, NULL,
                                        NULL, NULL, 0, NULL};

/* This context's stack (new ref), or NULL if it has none (or the variable was set to
 * something else from Python); -1 on an error. */
static inline int
bk_stack_get(fa_state *st, FaOp **stack)
{
    PyObject *v = NULL;
    *stack = NULL;
    if (PyContextVar_Get(st->breaker.blocks, NULL, &v) < 0) {
        return -1;
    }
    if (v != NULL) {
        if (FA_LIKELY(Py_IS_TYPE(v, st->engine.OpType) && ((FaOp *)v)->kind == &bk_stack_kind)) {
            *stack = (FaOp *)v;
        }
        else {
            Py_DECREF(v);
        }
    }
    return 0;
}

/* Admit a with-block and push its ticket on this context's stack. 0, or -1 (rejected:
 * CircuitOpenError; or another error, with nothing admitted). */
static int
bk_enter(Breaker *b)
{
    FaOp *tok = bk_admit_ticket(b);  // new ref; Beware: a clock= and listeners may run
    if (tok == NULL) {
        return -1;
    }
    int rc = -1;
    FaOp *stack;
    if (bk_stack_get(b->st, &stack) < 0) {
        goto done;
    }
    uintptr_t ctx = fa_context_id();  /* after the lookup, which gives the thread a context */
    if (FA_LIKELY(stack != NULL && stack->u64 == ctx)) {
        /* this context's stack: push in place */
        tok->arg = stack->arg;  /* the stack's reference moves to tok */
        stack->arg = (PyObject *)tok;
        tok = NULL;  /* the stack holds it now */
        Py_DECREF(stack);
        rc = 0;
        goto done;
    }
    Py_XDECREF(stack);
    /* none here yet, or another context's: this context gets its own */
    stack = fa_op_new(b->st, &bk_stack_kind, NULL, NULL);  // new ref
    if (stack == NULL) {
        goto done;
    }
    stack->state = FA_OP_DONE;  /* never driven; holds no breaker */
    stack->arg = (PyObject *)tok;
    stack->u64 = ctx;
    tok = NULL;
    PyObject *token = PyContextVar_Set(b->st->breaker.blocks, (PyObject *)stack);  // new ref
    Py_DECREF(stack);  /* on an error it dies here, and its ticket is released */
    if (token != NULL) {
        Py_DECREF(token);
        rc = 0;
    }
done:
    Py_XDECREF(tok);  /* on an error it dies here, and its ticket is released */
    return rc;
}

/* Pop b's innermost ticket off this context's stack and record exc (NULL: success) with it.
 * 0 or -1. */
static int
bk_exit(Breaker *b, PyObject *exc)
{
    FaOp *stack;
    if (bk_stack_get(b->st, &stack) < 0) {
        return -1;
    }
    PyObject **link = NULL;
    if (stack != NULL && stack->u64 == fa_context_id()) {
        link = &stack->arg;
        while (*link != NULL && ((FaOp *)*link)->owner != (PyObject *)b) {
            link = &((FaOp *)*link)->arg;  /* a block of another breaker, left open inside */
        }
    }
    if (link == NULL || *link == NULL) {
        Py_XDECREF(stack);
        PyErr_SetString(PyExc_RuntimeError,
                        "CircuitBreaker exited without a matching enter in this context "
                        "(task or thread)");
        return -1;
    }
    FaOp *tok = (FaOp *)*link;  /* the stack's reference is ours now */
    *link = tok->arg;  /* and tok's to the enclosing ticket is the stack's */
    tok->arg = NULL;
    Py_DECREF(stack);
    bk_ticket t = op_ticket(tok);
    int admitted = tok->flags & BOPF_ADMITTED;
    tok->flags &= ~BOPF_ADMITTED;
    fa_op_reset(tok);  /* done: it holds nothing now, and goes back to the ticket slot */
    Py_DECREF(tok);
    if (admitted) {
        bk_record(b, &t, exc);  // Beware: Python code
    }
    return 0;
}

/* ------------------------------------------------------------------ BreakerFunction */

/* Drop a call we made and could not hand out (an error while making it). */
static void
bc_discard(FaOp *c)
{
    c->flags |= FA_OPF_QUIET;  /* nobody saw it: no "never awaited" */
    Py_DECREF(c);
}

/* args (a vectorcall array) into a tuple and kwnames into a dict */
static int
bc_store_args(FaOp *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    c->arg2 = PyTuple_New(nargs);
    if (c->arg2 == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(c->arg2, i, Py_NewRef(args[i]));
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        c->arg3 = PyDict_New();
        if (c->arg3 == NULL) {
            return -1;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyDict_SetItem(c->arg3, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

static PyObject *
bf_call_async(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    BreakerFunction *f = (BreakerFunction *)self;
    Breaker *b = f->breaker;
    FaOp *c = bc_new(b, &bk_call_kind);  // new ref
    if (c == NULL) {
        return NULL;
    }
    c->flags |= BOPF_DECORATED;
    if (FA_LIKELY(bk_looks_closed(b) && b->fallback == NULL)) {
        /* the likely case: make the coroutine now, forwarding the arguments as they are; it
         * warns by itself if it is dropped unawaited */
        c->arg = PyObject_Vectorcall(f->func, args, nargsf, kwnames);  // Beware: user code
        if (c->arg == NULL) {
            bc_discard(c);
            return NULL;
        }
        c->flags |= BOPF_MADE | FA_OPF_QUIET;
    }
    else {
        /* called at admission (the breaker may not let it run), with these arguments */
        c->arg = Py_NewRef(f->func);
        if (bc_store_args(c, args, PyVectorcall_NARGS(nargsf), kwnames) < 0) {
            bc_discard(c);
            return NULL;
        }
    }
    return (PyObject *)c;
}

static PyObject *
bf_call_sync(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    BreakerFunction *f = (BreakerFunction *)self;
    Breaker *b = f->breaker;
    bk_ticket t;
    double remaining = 0.0;
    int a = bk_admit(b, &t, &remaining);
    if (FA_UNLIKELY(a <= 0)) {
        if (a == 0) {
            if (b->fallback != NULL) {
                return PyObject_Vectorcall(b->fallback, args, nargsf, kwnames);
            }
            bk_raise_open(b, remaining);
        }
        return NULL;
    }
    Py_INCREF(b);
    PyObject *res = PyObject_Vectorcall(f->func, args, nargsf, kwnames);  // nothing held
    if (FA_UNLIKELY(res != NULL && PyCoro_CheckExact(res))) {
        /* an async callable that is not a coroutine function: the call ends when its
         * coroutine does, so hand it back inside an awaitable that holds the ticket */
        FaOp *c = bc_new(b, &bk_call_kind);
        if (c == NULL) {
            bk_release(b, &t);
            Py_DECREF(res);
            Py_DECREF(b);
            return NULL;
        }
        op_admit(c, &t);
        c->flags |= BOPF_PREADMITTED | BOPF_MADE | FA_OPF_QUIET;
        c->arg = res;
        FA_ASSERT_CONSISTENT(c);
        Py_DECREF(b);
        return (PyObject *)c;
    }
    if (res != NULL) {
        if (!bk_record_success_fast(b, &t)) {
            bk_record(b, &t, NULL);
        }
    }
    else {
        PyObject *exc = fa_fetch_exc();  // new ref
        bk_record(b, &t, exc);
        fa_restore_exc(exc);
    }
    Py_DECREF(b);
    return res;
}

static PyObject *
bf_get_breaker(PyObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef((PyObject *)((BreakerFunction *)self)->breaker);
}

static PyObject *
bf_repr(PyObject *self)
{
    BreakerFunction *f = (BreakerFunction *)self;
    PyObject *name = fa_wrapper_qualname(self, f->func);  // new ref
    if (name == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("<%sfunction %S guarded by a CircuitBreaker at %p>",
                                       f->is_async ? "async " : "", name, self);
    Py_DECREF(name);
    return r;
}

static int
bf_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)((BreakerFunction *)self)->breaker);
    return fa_wrapper_traverse(self, visit, arg);
}

static int
bf_clear(PyObject *self)
{
    Py_CLEAR(((BreakerFunction *)self)->breaker);
    fa_wrapper_clear(self);
    return 0;
}

static PyGetSetDef bf_getset[] = {
    FA_WRAPPER_GETSET
    FA_WRAPPER_FUNCLIKE_GETSET
    {"breaker", bf_get_breaker, NULL, "The CircuitBreaker guarding this function.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot bf_slots[] = {
    {Py_tp_dealloc, fa_wrapper_dealloc},
    {Py_tp_traverse, bf_traverse},
    {Py_tp_clear, bf_clear},
    {Py_tp_repr, bf_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, fa_wrapper_get},
    {Py_tp_getset, bf_getset},
    {Py_tp_members, fa_wrapper_members},
    {Py_tp_doc, "A function guarded by a CircuitBreaker (what @breaker returns)."},
    {0, NULL},
};

static PyType_Spec bf_spec = {
    .name = "aiofast._core.BreakerFunction",
    .basicsize = sizeof(BreakerFunction),
    .flags = FA_WRAPPER_TPFLAGS | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = bf_slots,
};

/* ------------------------------------------------------------------ CircuitBreaker: decorate */

/* breaker(fn): the guarded function. */
static PyObject *
breaker_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    Breaker *b = (Breaker *)self;
    fa_state *st = b->st;
    PyObject *fn;
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) || PyTuple_GET_SIZE(args) != 1) {
        PyErr_SetString(PyExc_TypeError,
                        "CircuitBreaker used as a decorator takes exactly one function");
        return NULL;
    }
    fn = PyTuple_GET_ITEM(args, 0);
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "CircuitBreaker can only decorate a callable, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    PyObject *kind_fn = bk_cold(st, "_fn_kind");  // new ref
    if (kind_fn == NULL) {
        return NULL;
    }
    PyObject *kind_obj = PyObject_CallOneArg(kind_fn, fn);  // Beware: inspect runs
    Py_DECREF(kind_fn);
    if (kind_obj == NULL) {
        return NULL;
    }
    long kind = PyLong_AsLong(kind_obj);
    Py_DECREF(kind_obj);
    if (kind == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (b->name == Py_None) {
        PyObject *n = PyObject_GetAttrString(fn, "__qualname__");
        if (n == NULL || !PyUnicode_Check(n)) {
            Py_XDECREF(n);
            PyErr_Clear();
            n = PyObject_GetAttrString(fn, "__name__");
        }
        if (n != NULL && PyUnicode_Check(n)) {
            Py_SETREF(b->name, n);
        }
        else {
            Py_XDECREF(n);
            PyErr_Clear();
        }
    }
    if (kind >= 2) {
        /* generator functions: a Python wrapper around _acquire() / _release() */
        PyObject *wrap = bk_cold(st, "_wrap_generator");
        if (wrap == NULL) {
            return NULL;
        }
        PyObject *r = PyObject_CallFunction(wrap, "OOl", self, fn, kind);
        Py_DECREF(wrap);
        return r;
    }
    BreakerFunction *f = PyObject_GC_New(BreakerFunction, st->breaker.BreakerFunctionType);
    if (f == NULL) {
        return NULL;
    }
    f->is_async = (kind == 1);
    fa_wrapper_init((PyObject *)f, fn, f->is_async ? bf_call_async : bf_call_sync);
    f->breaker = (Breaker *)Py_NewRef(self);
    PyObject_GC_Track(f);
    if (fa_wrapper_finish((PyObject *)f,
                          f->is_async ? FA_WRAP_ASYNC_UNLESS_SEEN : FA_WRAP_PLAIN) < 0) {
        Py_DECREF(f);
        return NULL;
    }
    return (PyObject *)f;
}

/* ------------------------------------------------------------------ CircuitBreaker: methods */

PyDoc_STRVAR(breaker_call_method_doc,
"call($self, fn, /, *args, **kwargs)\n--\n\n"
"Await fn(*args, **kwargs) under the breaker: fn may be an async or a plain function (an "
"awaitable result is awaited). Rejected calls raise CircuitOpenError or return "
"fallback(*args, **kwargs).");

static PyObject *
breaker_call_method(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Breaker *b = (Breaker *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call() missing required argument: 'fn'");
        return NULL;
    }
    if (!PyCallable_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "call() needs a callable, not %.100s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    FaOp *c = bc_new(b, &bk_call_kind);  // new ref
    if (c == NULL) {
        return NULL;
    }
    c->arg = Py_NewRef(args[0]);
    if (bc_store_args(c, args + 1, nargs - 1, kwnames) < 0) {
        bc_discard(c);
        return NULL;
    }
    return (PyObject *)c;
}

static PyObject *
breaker_aenter(PyObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    if (nargs != 0) {
        PyErr_Format(PyExc_TypeError, "__aenter__() takes no arguments (%zd given)", nargs);
        return NULL;
    }
    return (PyObject *)bc_new((Breaker *)self, &bk_enter_kind);
}

static PyObject *
breaker_aexit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__aexit__() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    FaOp *c = bc_new((Breaker *)self, &bk_exit_kind);
    if (c == NULL) {
        return NULL;
    }
    if (args[0] != Py_None) {
        c->arg = Py_NewRef(args[1] != Py_None ? args[1] : args[0]);
    }
    return (PyObject *)c;
}

static PyObject *
breaker_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (bk_enter((Breaker *)self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
breaker_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__exit__() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *exc = args[0] == Py_None ? NULL : (args[1] != Py_None ? args[1] : args[0]);
    if (bk_exit((Breaker *)self, exc) < 0) {
        return NULL;
    }
    Py_RETURN_FALSE;
}

static PyObject *
breaker_acquire(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return (PyObject *)bk_admit_ticket((Breaker *)self);
}

static PyObject *
breaker_release(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Breaker *b = (Breaker *)self;
    if (nargs != 2 || !bk_is_ticket(b, args[0])) {
        PyErr_SetString(PyExc_TypeError, "_release(ticket, exc) takes a ticket from this "
                        "breaker's _acquire() and an exception or None");
        return NULL;
    }
    FaOp *tok = (FaOp *)args[0];
    if (!(tok->flags & BOPF_ADMITTED)) {
        PyErr_SetString(PyExc_RuntimeError, "CircuitBreaker ticket released twice");
        return NULL;
    }
    tok->flags &= ~BOPF_ADMITTED;
    bk_ticket t = op_ticket(tok);
    bk_record(b, &t, args[1] == Py_None ? NULL : args[1]);
    Py_RETURN_NONE;
}

static int
bk_force(Breaker *b, int to)
{
    double now;
    if (bk_now(b, &now) < 0) {
        return -1;
    }
    unsigned long long changes = b->tot.changes;
    int from, now_state;
#if FA_BK_HAVE_SHARED
    if (BK_SHARED(b)) {
        fa_bk_sm *w = bk_sh_begin(b);
        if (w == NULL) {
            return -1;
        }
        from = w->state;
        fa_bk_sh_force(w, &b->tot, to, now);
        now_state = w->state;
        bk_sh_end(b, w);
    }
    else
#endif
    {
        from = b->sm->state;
        fa_bk_force(b->sm, &b->tot, to, now);
        now_state = b->sm->state;
    }
    bk_note(b, from, now_state, changes);
    PyObject *old = NULL;
    if (to == BK_CLOSED) {
        old = b->last_failure;
        b->last_failure = NULL;
    }
    FA_ASSERT_CONSISTENT(b);
    Py_XDECREF(old);  // Beware: __del__
    bk_dispatch(b);
    return 0;
}

static PyObject *
breaker_open(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return bk_force((Breaker *)self, BK_OPEN) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
breaker_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return bk_force((Breaker *)self, BK_CLOSED) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
breaker_half_open(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return bk_force((Breaker *)self, BK_HALF_OPEN) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
breaker_add_listener(PyObject *self, PyObject *fn)
{
    Breaker *b = (Breaker *)self;
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "listener must be callable as fn(breaker, old_state, "
                     "new_state), not %.100s", Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (b->listeners == NULL && (b->listeners = PyList_New(0)) == NULL) {
        return NULL;
    }
    if (PyList_Append(b->listeners, fn) < 0) {
        return NULL;
    }
    return Py_NewRef(fn);
}

static PyObject *
breaker_remove_listener(PyObject *self, PyObject *fn)
{
    Breaker *b = (Breaker *)self;
    if (b->listeners != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(b->listeners); i++) {
            PyObject *item = Py_NewRef(PyList_GET_ITEM(b->listeners, i));
            int eq = PyObject_RichCompareBool(item, fn, Py_EQ);  // Beware: user __eq__
            Py_DECREF(item);
            if (eq < 0) {
                return NULL;
            }
            if (eq && i < PyList_GET_SIZE(b->listeners)) {
                if (PySequence_DelItem(b->listeners, i) < 0) {
                    return NULL;
                }
                Py_RETURN_NONE;
            }
        }
    }
    PyErr_SetString(PyExc_ValueError, "remove_listener(fn): fn is not a listener");
    return NULL;
}

/* _peer_mode(): circuitbreaker's drop-in keeps the last failure, and counts the time to its
 * first recovery from now (its breakers start "opened" at construction). */
static PyObject *
breaker_peer_mode(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Breaker *b = (Breaker *)self;
    double now;
    if (BK_SHARED(b)) {
        PyErr_SetString(PyExc_TypeError, "circuit() does not take a shared CircuitBreaker");
        return NULL;
    }
    if (bk_now(b, &now) < 0) {
        return NULL;
    }
    b->peer = 1;
    if (b->sm->state == BK_CLOSED && b->tot.changes == 0) {
        b->sm->opened_at = now;
    }
    Py_RETURN_NONE;
}

static PyObject *
breaker_get_shared(PyObject *self, void *Py_UNUSED(c))
{
#if FA_BK_HAVE_SHARED
    Breaker *b = (Breaker *)self;
    if (b->shared != NULL) {
        return Py_NewRef(b->shared);
    }
#else
    (void)self;
#endif
    Py_RETURN_NONE;
}

#if FA_BK_HAVE_SHARED
/* The private test hooks of a shared breaker: only on a segment made with _testing=True (its
 * configuration says so, so no other breaker shares it), never on a real one. */
static int
bk_sh_testing(Breaker *b, const char *what)
{
    if (b->sh == NULL || !b->sh_testing) {
        PyErr_Format(PyExc_RuntimeError, "%s is a test hook: only for a breaker made with "
                     "shared=..., _testing=True", what);
        return 0;
    }
    return 1;
}

/* _shared_advance(seconds): move a test segment's virtual time on, for every process. */
static PyObject *
breaker_shared_advance(PyObject *self, PyObject *arg)
{
    Breaker *b = (Breaker *)self;
    if (!bk_sh_testing(b, "_shared_advance()")) {
        return NULL;
    }
    double dt = PyFloat_AsDouble(arg);
    if (dt == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(dt >= 0 && dt < 1e9)) {
        PyErr_Format(PyExc_ValueError, "_shared_advance() needs 0 <= seconds < 1e9, got %R", arg);
        return NULL;
    }
    atomic_fetch_add(&b->sh->clock_offset_ns, (int64_t)llround(dt * 1e9));
    Py_RETURN_NONE;
}

/* _shared_info(): what the tests look at in the shared record (a consistent copy). */
static PyObject *
breaker_shared_info(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Breaker *b = (Breaker *)self;
    if (b->sh == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "not a shared breaker");
        return NULL;
    }
    fa_bk_sm *w = bk_sh_begin(b);
    if (w == NULL) {
        return NULL;
    }
    int64_t n = w->cfg.half_open_max;
    int32_t pids[FA_BK_SH_PROBES_MAX];
    memcpy(pids, fa_bk_sh_slots(w), (size_t)n * sizeof(int32_t));
    int state = w->state;
    unsigned long long gen = w->gen;
    long long probes = w->probes, failures = w->failures, successes = w->successes;
    long long streak = w->streak;
    bk_sh_end(b, w);
    unsigned long long rec = atomic_load(&b->sh->recoveries);
    PyObject *slots = PyList_New(0);
    if (slots == NULL) {
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLong(pids[i]);
        if (v == NULL || PyList_Append(slots, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(slots);
            return NULL;
        }
        Py_DECREF(v);
    }
    return Py_BuildValue("{sisKsLsLsLsLsKsN}", "state", state, "gen", gen, "probes", probes,
                         "failures", failures, "successes", successes, "streak", streak,
                         "recoveries", rec, "probe_pids", slots);
}

/* _shared_corrupt(what): scribble over the segment as a stray write would ("state": the state
 * of both copies; "layout": the copy size), for the tests of an opener's checks. */
static PyObject *
breaker_shared_corrupt(PyObject *self, PyObject *what)
{
    Breaker *b = (Breaker *)self;
    if (!bk_sh_testing(b, "_shared_corrupt()")) {
        return NULL;
    }
    if (PyUnicode_Check(what) && PyUnicode_CompareWithASCIIString(what, "layout") == 0) {
        b->sh->copy_size ^= 0x5A5A0000u;
    }
    else if (PyUnicode_Check(what) && PyUnicode_CompareWithASCIIString(what, "state") == 0) {
        fa_bk_sm *w = bk_sh_begin(b);
        if (w == NULL) {
            return NULL;
        }
        fa_bk_sh_copy(b->sh, 0)->state = 7;
        fa_bk_sh_copy(b->sh, 1)->state = 7;
        fa_bk_sh_unlock(b->sh);
    }
    else {
        PyErr_Format(PyExc_ValueError, "_shared_corrupt() takes 'state' or 'layout', got %R",
                     what);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _shared_crash(): take the mutex, scribble over the copy being written, and die by SIGKILL:
 * what a process killed in the middle of an update leaves (test segments only). */
static PyObject *
breaker_shared_crash(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Breaker *b = (Breaker *)self;
    if (!bk_sh_testing(b, "_shared_crash()")) {
        return NULL;
    }
    fa_bk_sm *w = bk_sh_begin(b);
    if (w == NULL) {
        return NULL;
    }
    /* half an update: a new word published, the copy garbage, never flipped */
    atomic_store(&b->sh->word, ((w->gen + 1) << 3) | 4 | BK_CLOSED);
    memset(w, 0xA5, b->sh->copy_size);
    kill(getpid(), SIGKILL);
    for (;;) {
        pause();
    }
}
#endif

static PyObject *
breaker_get_streak(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(((Breaker *)self)->sm->streak);
}

static PyObject *
breaker_get_last_failure(PyObject *self, void *Py_UNUSED(c))
{
    Breaker *b = (Breaker *)self;
    return Py_NewRef(b->last_failure ? b->last_failure : Py_None);
}

/* opened_at + recovery_timeout - now, unclamped: negative once an open circuit may recover */
static PyObject *
breaker_get_open_remaining(PyObject *self, void *Py_UNUSED(c))
{
    Breaker *b = (Breaker *)self;
    double now;
    if (bk_view(b, &now) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(b->sm->opened_at + b->sm->cfg.recovery_timeout - now);
}

static PyObject *
breaker_stats(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Breaker *b = (Breaker *)self;
    double now;
    int eff = bk_effective_state(b, &now);
    if (eff < 0) {
        return NULL;
    }
    Py_ssize_t fails, succs;
    bk_counts(b, eff, now, &fails, &succs);
    return Py_BuildValue("{sOsnsnsKsKsKsKsKsKsK}",
                         "state", b->st->breaker.states[eff],
                         "failure_count", fails,
                         "success_count", succs,
                         "calls", b->tot.calls,
                         "successes", b->tot.succ,
                         "failures", b->tot.fail,
                         "ignored", b->tot.ign,
                         "slow_calls", b->tot.slow,
                         "rejections", b->tot.rej,
                         "state_changes", b->tot.changes);
}

/* ------------------------------------------------------------------ CircuitBreaker: getters */

static PyObject *
breaker_get_state(PyObject *self, void *Py_UNUSED(c))
{
    Breaker *b = (Breaker *)self;
    double now;
    int eff = bk_effective_state(b, &now);
    return eff < 0 ? NULL : Py_NewRef(b->st->breaker.states[eff]);
}

static PyObject *
breaker_get_count(PyObject *self, void *which)
{
    Breaker *b = (Breaker *)self;
    double now;
    int eff = bk_effective_state(b, &now);
    if (eff < 0) {
        return NULL;
    }
    Py_ssize_t fails, succs;
    bk_counts(b, eff, now, &fails, &succs);
    return PyLong_FromSsize_t(which ? succs : fails);
}

static PyObject *
breaker_get_remaining(PyObject *self, void *Py_UNUSED(c))
{
    Breaker *b = (Breaker *)self;
    double now;
    if (bk_view(b, &now) < 0) {
        return NULL;
    }
    double rem = 0.0;
    if (b->sm->state == BK_OPEN && now < b->sm->opened_at + b->sm->cfg.recovery_timeout) {
        rem = b->sm->opened_at + b->sm->cfg.recovery_timeout - now;
    }
    return PyFloat_FromDouble(rem);
}

static PyObject *
breaker_get_name(PyObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef(((Breaker *)self)->name);
}

static PyObject *
breaker_get_listeners(PyObject *self, void *Py_UNUSED(c))
{
    Breaker *b = (Breaker *)self;
    return b->listeners ? PyList_AsTuple(b->listeners) : PyTuple_New(0);
}

static PyObject *
opt_double(double v, int present)
{
    return present ? PyFloat_FromDouble(v) : Py_NewRef(Py_None);
}

static PyObject *
breaker_get_config(PyObject *self, void *which)
{
    Breaker *b = (Breaker *)self;
    switch ((int)(intptr_t)which) {
    case 0: return PyLong_FromLongLong(b->sm->cfg.failure_threshold);
    case 1: return PyFloat_FromDouble(b->sm->cfg.recovery_timeout);
    case 2: return PyLong_FromLongLong(b->sm->cfg.success_threshold);
    case 3: return PyLong_FromLongLong(b->sm->cfg.half_open_max);
    case 4: return Py_NewRef(b->expected);
    case 5: return b->exclude ? Py_NewRef(b->exclude) : PyTuple_New(0);
    case 6: return opt_double(b->sm->cfg.failure_rate, b->sm->cfg.rate_mode);
    case 7: return b->sm->cfg.rate_mode && !b->sm->cfg.time_mode
                   ? PyLong_FromLongLong(b->sm->cfg.window) : Py_NewRef(Py_None);
    case 8: return opt_double(b->sm->cfg.window_time, b->sm->cfg.time_mode);
    case 9: return b->sm->cfg.rate_mode ? PyLong_FromLongLong(b->sm->cfg.min_calls)
                                        : Py_NewRef(Py_None);
    case 10: return opt_double(b->sm->cfg.slow_duration, b->sm->cfg.slow_mode);
    case 11: return opt_double(b->sm->cfg.slow_rate,
                               b->sm->cfg.slow_mode && b->sm->cfg.rate_mode);
    case 12: return Py_NewRef(b->fallback ? b->fallback : Py_None);
    default: return Py_NewRef(b->clock ? b->clock : Py_None);
    }
}

static PyObject *
breaker_repr(PyObject *self)
{
    Breaker *b = (Breaker *)self;
    double now;
    int eff = bk_effective_state(b, &now);
    if (eff < 0) {
        return NULL;
    }
    Py_ssize_t fails, succs;
    bk_counts(b, eff, now, &fails, &succs);
    PyObject *base = PyBaseObject_Type.tp_repr(self);  // new ref
    if (base == NULL) {
        return NULL;
    }
    PyObject *inner = PyUnicode_Substring(base, 1, PyUnicode_GET_LENGTH(base) - 1);
    Py_DECREF(base);
    if (inner == NULL) {
        return NULL;
    }
    PyObject *detail;
    if (eff == BK_OPEN) {
        char *num = PyOS_double_to_string(b->sm->opened_at + b->sm->cfg.recovery_timeout - now,
                                          'f', 3, 0, NULL);
        detail = num ? PyUnicode_FromFormat("open, %s s remaining", num) : NULL;
        PyMem_Free(num);
    }
    else if (eff == BK_HALF_OPEN) {
        detail = PyUnicode_FromFormat("half_open, probes:%zd/%zd, successes:%zd/%zd",
                                      (Py_ssize_t)(eff == b->sm->state ? b->sm->probes : 0),
                                      (Py_ssize_t)b->sm->cfg.half_open_max, succs,
                                      (Py_ssize_t)b->sm->cfg.success_threshold);
    }
    else if (b->sm->cfg.rate_mode) {
        detail = PyUnicode_FromFormat("closed, failures:%zd of %zd calls", fails, fails + succs);
    }
    else {
        detail = PyUnicode_FromFormat("closed, failures:%zd/%zd", fails,
                                      (Py_ssize_t)b->sm->cfg.failure_threshold);
    }
    PyObject *r = NULL;
    if (detail != NULL) {
        r = b->name == Py_None ? PyUnicode_FromFormat("<%U [%U]>", inner, detail)
                               : PyUnicode_FromFormat("<%U [%U, name=%R]>", inner, detail,
                                                      b->name);
        Py_DECREF(detail);
    }
    Py_DECREF(inner);
    return r;
}

/* ------------------------------------------------------------------ CircuitBreaker: construction */

/* An int >= lo (bool refused). 0 or -1. */
static int
parse_count(PyObject *v, const char *what, Py_ssize_t lo, int64_t *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %.100s", what, Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && x < lo)) {
        PyErr_Format(PyExc_ValueError, "%s must be >= %zd, got %R", what, lo, v);
        return -1;
    }
    if (overflow > 0 || x > (long long)(PY_SSIZE_T_MAX / 4)) {
        PyErr_Format(PyExc_ValueError, "%s is too large, got %R", what, v);
        return -1;
    }
    *out = (int64_t)x;
    return 0;
}

/* A real number (int or float; bool refused). 0 or -1. */
static inline int
parse_number(PyObject *v, const char *what, double *out)
{
    return fa_arg_real(v, what, "a number", 1, out);
}

/* A finite number in (0, hi]; range says so in the message. 0 or -1. */
static int
parse_positive(PyObject *v, const char *what, double hi, const char *range, double *out)
{
    if (parse_number(v, what, out) < 0) {
        return -1;
    }
    if (!(*out > 0.0 && *out <= hi) || isinf(*out)) {
        PyErr_Format(PyExc_ValueError, "%s must be %s, got %R", what, range, v);
        return -1;
    }
    return 0;
}

#define parse_rate(v, what, out) parse_positive(v, what, 1.0, "in (0, 1]", out)
#define parse_duration(v, what, out) \
    parse_positive(v, what, INFINITY, "a finite number of seconds > 0", out)

static int
is_exc_class(PyObject *v)
{
    return PyType_Check(v) && PyType_IsSubtype((PyTypeObject *)v,
                                               (PyTypeObject *)PyExc_BaseException);
}

/* An exception class, a tuple of them, or a predicate (a callable that is not a class).
 * *out gets a new reference (a tuple stays a tuple). 0 or -1. */
static int
parse_exc_spec(PyObject *v, const char *what, PyObject **out, char *pred)
{
    *pred = 0;
    if (is_exc_class(v)) {
        *out = Py_NewRef(v);
        return 0;
    }
    if (PyTuple_Check(v)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v); i++) {
            PyObject *item = PyTuple_GET_ITEM(v, i);
            if (!is_exc_class(item)) {
                PyErr_Format(PyExc_TypeError, "%s must hold exception types, got %R in %R",
                             what, item, v);
                return -1;
            }
        }
        *out = Py_NewRef(v);
        return 0;
    }
    if (PyCallable_Check(v) && !PyType_Check(v)) {
        *pred = 1;
        *out = Py_NewRef(v);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s must be an exception type, a tuple of exception types or "
                 "a predicate fn(exc) -> bool, got %R", what, v);
    return -1;
}

/* ------------------------------------------------------------------ CircuitBreaker: shared= */

/* What a shared breaker's segment holds as its configuration: the machine's, and whether it is
 * a test segment (virtual time, the crash hook): a test segment and a real one never mix. */
typedef struct {
    fa_bk_config cfg;
    uint8_t testing;
    uint8_t pad_[7];
} bk_sh_config;

#if FA_BK_HAVE_SHARED
static int
bk_repr_add(PyObject *parts, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *p = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (p == NULL) {
        return -1;
    }
    int rc = PyList_Append(parts, p);
    Py_DECREF(p);
    return rc;
}

static int
bk_repr_add_double(PyObject *parts, const char *name, double v)
{
    PyObject *f = PyFloat_FromDouble(v);
    if (f == NULL) {
        return -1;
    }
    int rc = bk_repr_add(parts, "%s=%R", name, f);
    Py_DECREF(f);
    return rc;
}

/* The configuration as the constructor's keywords (for the mismatch error). */
static PyObject *
bk_sh_config_repr(const void *config)
{
    const bk_sh_config *sc = config;
    const fa_bk_config *c = &sc->cfg;
    PyObject *parts = PyList_New(0);
    if (parts == NULL) {
        return NULL;
    }
    PyObject *r = NULL;
    if ((c->rate_mode ? bk_repr_add_double(parts, "failure_rate", c->failure_rate)
                      : bk_repr_add(parts, "failure_threshold=%lld",
                                    (long long)c->failure_threshold)) < 0
        || bk_repr_add_double(parts, "recovery_timeout", c->recovery_timeout) < 0
        || bk_repr_add(parts, "success_threshold=%lld", (long long)c->success_threshold) < 0
        || bk_repr_add(parts, "half_open_max_calls=%lld", (long long)c->half_open_max) < 0
        || (c->rate_mode && c->time_mode
            && bk_repr_add_double(parts, "window_time", c->window_time) < 0)
        || (c->rate_mode && !c->time_mode
            && bk_repr_add(parts, "window=%lld", (long long)c->window) < 0)
        || (c->rate_mode && bk_repr_add(parts, "min_calls=%lld", (long long)c->min_calls) < 0)
        || (c->slow_mode && bk_repr_add_double(parts, "slow_call_duration", c->slow_duration) < 0)
        || (c->slow_mode && c->rate_mode
            && bk_repr_add_double(parts, "slow_call_rate", c->slow_rate) < 0)
        || (sc->testing && bk_repr_add(parts, "_testing=True") < 0)) {
        goto done;
    }
    PyObject *sep = PyUnicode_FromString(", ");
    if (sep != NULL) {
        PyObject *body = PyUnicode_Join(sep, parts);
        Py_DECREF(sep);
        if (body != NULL) {
            r = PyUnicode_FromFormat("CircuitBreaker(%U)", body);
            Py_DECREF(body);
        }
    }
done:
    Py_DECREF(parts);
    return r;
}
#endif

/* Open (or create) the shared record named `name` for b, whose b->sm holds the configuration.
 * 0, or -1 with an exception (nothing kept open). */
static int
bk_sh_open(Breaker *b, PyObject *name, int testing, PyObject *clock)
{
#if FA_BK_HAVE_SHARED
    if (clock != NULL && clock != Py_None) {
        PyErr_SetString(PyExc_ValueError, "clock= cannot be given with shared=: a shared "
                        "breaker runs on the host's monotonic clock (CLOCK_MONOTONIC), the one "
                        "clock every process reads");
        return -1;
    }
    const fa_bk_config *cfg = &b->sm->cfg;
    if (cfg->half_open_max > FA_BK_SH_PROBES_MAX) {
        PyErr_Format(PyExc_ValueError, "half_open_max_calls of a shared breaker must be <= %d, "
                     "got %lld", FA_BK_SH_PROBES_MAX, (long long)cfg->half_open_max);
        return -1;
    }
    if (cfg->rate_mode && !cfg->time_mode && cfg->window > FA_BK_SH_WINDOW_MAX) {
        PyErr_Format(PyExc_ValueError, "window of a shared breaker must be <= %d calls, got %lld",
                     FA_BK_SH_WINDOW_MAX, (long long)cfg->window);
        return -1;
    }
    bk_sh_config sc;
    memset(&sc, 0, sizeof(sc));
    sc.cfg = *cfg;
    sc.testing = (uint8_t)(testing != 0);
    if (fa_shm_open(name, FA_SHM_KIND_BREAKER, &sc, sizeof(sc), fa_bk_sh_payload_size(cfg),
                    bk_sh_config_repr, &b->shm) < 0) {
        return -1;
    }
    fa_bk_shared *sh = b->shm.payload;
    if (!b->shm.created) {
        /* someone else's: the layer checked its header and configuration; check the record */
        fa_bk_sm *w = NULL;
        int rc = fa_bk_sh_layout_sane(sh, cfg) ? fa_bk_sh_lock(sh, &w) : -1;
        int sane = rc == 0 && fa_bk_sh_record_sane(w, cfg);
        if (rc == 0) {
            if (sane) {
                fa_bk_sh_publish(sh, w);  /* (a recovery of a dead owner's mutex included) */
            }
            else {
                fa_bk_sh_unlock(sh);
            }
        }
        if (!sane) {
            fa_shm_close(&b->shm);
            if (rc > 0) {
                errno = rc;
                PyErr_SetFromErrno(PyExc_OSError);
            }
            else {
                PyErr_Format(b->st->core.SharedSegmentError, "shared segment %R holds a corrupted "
                             "CircuitBreaker record (remove it with aiofast.shared_unlink(%R) "
                             "once no process uses it)", name, name);
            }
            return -1;
        }
    }
    else {
        int rc = fa_bk_sh_init(sh, cfg);
        if (rc != 0) {
            shm_unlink(b->shm.path);  /* never published: nobody else uses it */
            fa_shm_close(&b->shm);
            errno = rc;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (sc.testing) {
            /* a test segment's virtual time starts at 1000 s */
            atomic_store(&sh->clock_offset_ns, 1000000000000LL);
        }
        fa_shm_publish(&b->shm);
    }
    b->sh = sh;
    b->sh_testing = sc.testing;
    b->shared = Py_NewRef(name);
    if (bk_sh_sync(b) < 0) {
        return -1;
    }
    return 0;
#else
    (void)b; (void)name; (void)testing; (void)clock;
    PyErr_SetString(PyExc_NotImplementedError, "shared= needs process-shared robust mutexes "
                    "and POSIX shared memory (Linux, FreeBSD)");
    return -1;
#endif
}

/* ------------------------------------------------------------------ CircuitBreaker: store= */

/* Remove `key` from the dict d if it is there. 0, or -1 with an exception. */
static int
bk_dict_discard(PyObject *d, const char *key)
{
    if (PyDict_DelItemString(d, key) == 0) {
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
        return -1;
    }
    PyErr_Clear();
    return 0;
}

/* CircuitBreaker(..., store=s): the breaker is s.make_breaker(...), called with the other
 * arguments as they were given (store, and shared=None / _testing=False, left out). A store
 * keeping the state outside this process (aiofast.redis.RedisBreakerStore) makes a breaker
 * type of its own; its module was imported by whoever made the store, never from here. The
 * arguments are the store's breaker's to check (the same rules as ours, or its own errors). */
static PyObject *
bk_from_store(PyTypeObject *tp, fa_state *st, PyObject *args, PyObject *kwargs,
              PyObject *store, PyObject *shared, int testing)
{
    if (tp != st->breaker.BreakerType) {
        PyErr_Format(PyExc_TypeError, "store= is for aiofast.CircuitBreaker itself, not its "
                     "subclass %R: the store makes a breaker of its own type", (PyObject *)tp);
        return NULL;
    }
    if (shared != NULL && shared != Py_None) {
        PyErr_SetString(PyExc_ValueError, "give shared= (the processes of one host, in shared "
                        "memory) or store= (state kept by the store), not both");
        return NULL;
    }
    if (testing) {
        PyErr_SetString(PyExc_ValueError, "_testing needs shared=");
        return NULL;
    }
#define BK_STORE_WANTED "store must be a breaker store (an object with a make_breaker() " \
    "method, such as aiofast.redis.RedisBreakerStore), got "
    if (PyType_Check(store)) {
        /* (its make_breaker would be an unbound function, called without its self) */
        PyErr_Format(PyExc_TypeError, BK_STORE_WANTED "the class %R, not an instance of it",
                     store);
        return NULL;
    }
    /* Beware: the store's attribute lookup and its make_breaker() run Python code; we hold
     * the store (its only other holder is the caller's keyword dict) and a copy of our own */
    PyObject *make = NULL, *kw = NULL, *r = NULL;
    Py_INCREF(store);
    make = PyObject_GetAttrString(store, "make_breaker");  // new ref
    if (make == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, BK_STORE_WANTED "%.100s", Py_TYPE(store)->tp_name);
        }
        goto done;
    }
    kw = PyDict_Copy(kwargs);  // new ref (store= is a keyword: kwargs is a dict)
    if (kw != NULL && bk_dict_discard(kw, "store") == 0 && bk_dict_discard(kw, "shared") == 0
        && bk_dict_discard(kw, "_testing") == 0) {
        r = PyObject_Call(make, args, kw);  // new ref
    }
done:
    Py_XDECREF(kw);
    Py_XDECREF(make);
    Py_DECREF(store);
#undef BK_STORE_WANTED
    return r;
}

static PyObject *
breaker_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"failure_threshold", "recovery_timeout", "success_threshold",
                             "half_open_max_calls", "expected_exception", "exclude",
                             "failure_rate", "window", "window_time", "min_calls",
                             "slow_call_duration", "slow_call_rate", "fallback", "name", "clock",
                             "shared", "store", "_testing", NULL};
    PyObject *o_ft = NULL, *o_rt = NULL, *o_st = NULL, *o_hm = NULL, *o_ee = NULL, *o_ex = NULL;
    PyObject *o_fr = NULL, *o_w = NULL, *o_wt = NULL, *o_mc = NULL, *o_sd = NULL, *o_sr = NULL;
    PyObject *o_fb = NULL, *o_name = NULL, *o_clock = NULL, *o_shared = NULL, *o_store = NULL;
    int testing = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO$OOOOOOOOOOOOOOOp:CircuitBreaker",
                                     kwlist, &o_ft, &o_rt, &o_st, &o_hm, &o_ee, &o_ex, &o_fr,
                                     &o_w, &o_wt, &o_mc, &o_sd, &o_sr, &o_fb, &o_name, &o_clock,
                                     &o_shared, &o_store, &testing)) {
        return NULL;
    }
#define NONE(o) ((o) == NULL || (o) == Py_None)
    fa_state *st = fa_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    if (!NONE(o_store)) {
        return bk_from_store(tp, st, args, kwargs, o_store, o_shared, testing);
    }
    Breaker *b = (Breaker *)tp->tp_alloc(tp, 0);  // zeroed
    if (b == NULL) {
        return NULL;
    }
    b->st = st;
    fa_bk_config cfg;
    memset(&cfg, 0, sizeof(cfg));  /* padding too: records are compared as bytes */
    cfg.failure_threshold = 5;
    cfg.recovery_timeout = 30.0;
    cfg.success_threshold = 1;
    cfg.half_open_max = 1;
    b->name = Py_NewRef(Py_None);
    cfg.slow_rate = 1.0;
    if (o_ft != NULL && parse_count(o_ft, "failure_threshold", 1, &cfg.failure_threshold) < 0) {
        goto error;
    }
    if (o_rt != NULL) {
        if (parse_number(o_rt, "recovery_timeout", &cfg.recovery_timeout) < 0) {
            goto error;
        }
        if (cfg.recovery_timeout < 0) {
            PyErr_Format(PyExc_ValueError, "recovery_timeout must be >= 0 seconds, got %R", o_rt);
            goto error;
        }
    }
    if (o_st != NULL && parse_count(o_st, "success_threshold", 1, &cfg.success_threshold) < 0) {
        goto error;
    }
    if (o_hm != NULL && parse_count(o_hm, "half_open_max_calls", 1, &cfg.half_open_max) < 0) {
        goto error;
    }
    if (parse_exc_spec(NONE(o_ee) ? PyExc_Exception : o_ee, "expected_exception", &b->expected,
                       &b->expected_pred) < 0) {
        goto error;
    }
    if (PyTuple_Check(b->expected) && PyTuple_GET_SIZE(b->expected) == 0) {
        PyErr_SetString(PyExc_ValueError, "expected_exception=() would never count a failure");
        goto error;
    }
    if (!NONE(o_ex)) {
        if (parse_exc_spec(o_ex, "exclude", &b->exclude, &b->exclude_pred) < 0) {
            goto error;
        }
        if (PyTuple_Check(b->exclude) && PyTuple_GET_SIZE(b->exclude) == 0) {
            Py_CLEAR(b->exclude);
        }
    }
    if (!NONE(o_fr)) {
        if (parse_rate(o_fr, "failure_rate", &cfg.failure_rate) < 0) {
            goto error;
        }
        cfg.rate_mode = 1;
        if (o_ft != NULL) {
            PyErr_SetString(PyExc_ValueError, "give failure_threshold (consecutive failures) or "
                            "failure_rate (rate over a window), not both");
            goto error;
        }
    }
    if (!NONE(o_w) && !NONE(o_wt)) {
        PyErr_SetString(PyExc_ValueError, "give window (calls) or window_time (seconds), "
                        "not both");
        goto error;
    }
    if (!cfg.rate_mode && (!NONE(o_w) || !NONE(o_wt) || !NONE(o_mc) || !NONE(o_sr))) {
        PyErr_Format(PyExc_ValueError, "%s needs rate mode: give failure_rate too",
                     !NONE(o_w) ? "window" : !NONE(o_wt) ? "window_time"
                     : !NONE(o_mc) ? "min_calls" : "slow_call_rate");
        goto error;
    }
    if (!NONE(o_wt)) {
        if (parse_duration(o_wt, "window_time", &cfg.window_time) < 0) {
            goto error;
        }
        cfg.time_mode = 1;
        cfg.bucket_width = cfg.window_time / FA_BK_NBUCKETS;
        cfg.min_calls = 10;
    }
    else if (cfg.rate_mode) {
        cfg.window = 100;
        if (!NONE(o_w) && parse_count(o_w, "window", 1, &cfg.window) < 0) {
            goto error;
        }
        cfg.min_calls = cfg.window;
    }
    if (!NONE(o_mc)) {
        if (parse_count(o_mc, "min_calls", 1, &cfg.min_calls) < 0) {
            goto error;
        }
        if (!cfg.time_mode && cfg.min_calls > cfg.window) {
            PyErr_Format(PyExc_ValueError, "min_calls (%lld) must be <= window (%lld)",
                         (long long)cfg.min_calls, (long long)cfg.window);
            goto error;
        }
    }
    if (!NONE(o_sd)) {
        if (parse_duration(o_sd, "slow_call_duration", &cfg.slow_duration) < 0) {
            goto error;
        }
        cfg.slow_mode = 1;
    }
    if (!NONE(o_sr)) {
        if (!cfg.slow_mode) {
            PyErr_SetString(PyExc_ValueError, "slow_call_rate needs slow_call_duration");
            goto error;
        }
        if (parse_rate(o_sr, "slow_call_rate", &cfg.slow_rate) < 0) {
            goto error;
        }
    }
    if (!NONE(o_fb)) {
        if (!PyCallable_Check(o_fb)) {
            PyErr_Format(PyExc_TypeError, "fallback must be callable, got %.100s",
                         Py_TYPE(o_fb)->tp_name);
            goto error;
        }
        b->fallback = Py_NewRef(o_fb);
    }
    if (!NONE(o_name)) {
        if (!PyUnicode_Check(o_name)) {
            PyErr_Format(PyExc_TypeError, "name must be a str or None, got %.100s",
                         Py_TYPE(o_name)->tp_name);
            goto error;
        }
        Py_SETREF(b->name, Py_NewRef(o_name));
    }
    if (!NONE(o_clock)) {
        if (!PyCallable_Check(o_clock)) {
            PyErr_Format(PyExc_TypeError, "clock must be a callable returning seconds, got "
                         "%.100s", Py_TYPE(o_clock)->tp_name);
            goto error;
        }
        b->clock = Py_NewRef(o_clock);
    }
    size_t size = fa_bk_sm_size(&cfg);
    b->sm = size ? PyMem_Malloc(size) : NULL;
    if (b->sm == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    fa_bk_sm_init(b->sm, &cfg);
    if (!NONE(o_shared)) {
        if (bk_sh_open(b, o_shared, testing, o_clock) < 0) {
            goto error;
        }
    }
    else if (testing) {
        PyErr_SetString(PyExc_ValueError, "_testing needs shared=");
        goto error;
    }
#undef NONE
    return (PyObject *)b;
error:
    Py_DECREF(b);
    return NULL;
}

static int
breaker_traverse(PyObject *self, visitproc visit, void *arg)
{
    Breaker *b = (Breaker *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(b->expected);
    Py_VISIT(b->exclude);
    Py_VISIT(b->fallback);
    Py_VISIT(b->name);
    Py_VISIT(b->clock);
    if (fa_clock_traverse(&b->clk, visit, arg) < 0) {
        return -1;
    }
    Py_VISIT(b->listeners);
    Py_VISIT((PyObject *)b->cache);
    Py_VISIT((PyObject *)b->tcache);
    Py_VISIT(b->aenter);
    Py_VISIT(b->aexit);
    Py_VISIT(b->last_failure);
#if FA_BK_HAVE_SHARED
    Py_VISIT(b->shared);
#endif
    return 0;
}

static int
breaker_clear(PyObject *self)
{
    Breaker *b = (Breaker *)self;
    Py_CLEAR(b->expected);
    Py_CLEAR(b->exclude);
    Py_CLEAR(b->fallback);
    Py_CLEAR(b->name);
    Py_CLEAR(b->clock);
    fa_clock_clear_refs(&b->clk);
    Py_CLEAR(b->listeners);
    Py_CLEAR(b->cache);
    Py_CLEAR(b->tcache);
    fa_special_clear(self, &b->aenter);
    fa_special_clear(self, &b->aexit);
    Py_CLEAR(b->last_failure);
#if FA_BK_HAVE_SHARED
    Py_CLEAR(b->shared);
#endif
    return 0;
}

static void
breaker_dealloc(PyObject *self)
{
    Breaker *b = (Breaker *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (b->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    breaker_clear(self);
#if FA_BK_HAVE_SHARED
    fa_shm_close(&b->shm);
    b->sh = NULL;
    Py_CLEAR(b->shared);
#endif
    PyMem_Free(b->sm);
    PyMem_Free(b->ev);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static const char aenter_doc[] = "__aenter__($self, /)\n--\n\nAdmit the block (or raise "
                                 "CircuitOpenError).";
static const char aexit_doc[] = "__aexit__($self, exc_type, exc, tb, /)\n--\n\nRecord the "
                                "block's outcome.";
PyDoc_STRVAR(enter_doc, "__enter__($self, /)\n--\n\nAdmit the block (or raise "
             "CircuitOpenError).");
PyDoc_STRVAR(exit_doc, "__exit__($self, exc_type, exc, tb, /)\n--\n\nRecord the block's "
             "outcome.");
PyDoc_STRVAR(acquire_doc, "_acquire($self, /)\n--\n\nAdmit one call and return its ticket, or "
             "raise CircuitOpenError. Settle it with _release(ticket, exc).");
PyDoc_STRVAR(release_doc, "_release($self, ticket, exc, /)\n--\n\nRecord the outcome of the "
             "call a ticket admitted: exc is None for success.");
PyDoc_STRVAR(open_doc, "open($self, /)\n--\n\nTrip the breaker now: it rejects calls until "
             "recovery_timeout has passed (again, if it was open).");
PyDoc_STRVAR(close_doc, "close($self, /)\n--\n\nClose the breaker and clear its counts (a reset, "
             "if it is closed already).");
PyDoc_STRVAR(half_open_doc, "half_open($self, /)\n--\n\nLet probes through now.");
PyDoc_STRVAR(add_listener_doc, "add_listener($self, fn, /)\n--\n\nCall fn(breaker, old_state, "
             "new_state) on every state change; returns fn. A listener that raises is logged "
             "(logger 'aiofast.breaker').");
PyDoc_STRVAR(remove_listener_doc, "remove_listener($self, fn, /)\n--\n\nStop calling fn.");
PyDoc_STRVAR(stats_doc, "stats($self, /)\n--\n\nA dict: state, failure_count, success_count, "
             "and the totals calls, successes, failures, ignored, slow_calls, rejections, "
             "state_changes.");

/* the awaitable methods: coroutine functions to inspect (fa_methods_add) */
static PyMethodDef breaker_async_methods[] = {
    {"call", (PyCFunction)(void (*)(void))breaker_call_method, METH_FASTCALL | METH_KEYWORDS,
     breaker_call_method_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef breaker_methods[] = {
    {"__enter__", breaker_enter, METH_NOARGS, enter_doc},
    {"__exit__", (PyCFunction)(void (*)(void))breaker_exit, METH_FASTCALL, exit_doc},
    {"_acquire", breaker_acquire, METH_NOARGS, acquire_doc},
    {"_release", (PyCFunction)(void (*)(void))breaker_release, METH_FASTCALL, release_doc},
    {"open", breaker_open, METH_NOARGS, open_doc},
    {"close", breaker_close, METH_NOARGS, close_doc},
    {"half_open", breaker_half_open, METH_NOARGS, half_open_doc},
    {"add_listener", breaker_add_listener, METH_O, add_listener_doc},
    {"remove_listener", breaker_remove_listener, METH_O, remove_listener_doc},
    {"stats", breaker_stats, METH_NOARGS, stats_doc},
#if FA_BK_HAVE_SHARED
    {"_shared_advance", breaker_shared_advance, METH_O, "_shared_advance($self, seconds, /)"
     "\n--\n\nTest hook (shared=..., _testing=True only): move the segment's virtual time on."},
    {"_shared_info", breaker_shared_info, METH_NOARGS, "_shared_info($self, /)\n--\n\n"
     "Test hook: the shared record's state, generation, counts, probe slot owners and how "
     "many times a dead owner's mutex was recovered."},
    {"_shared_corrupt", breaker_shared_corrupt, METH_O, "_shared_corrupt($self, what, /)\n--"
     "\n\nTest hook (shared=..., _testing=True only): scribble over the segment ('state' or "
     "'layout')."},
    {"_shared_crash", breaker_shared_crash, METH_NOARGS, "_shared_crash($self, /)\n--\n\n"
     "Test hook (shared=..., _testing=True only): die by SIGKILL halfway through an update."},
#endif
    {"_peer_mode", breaker_peer_mode, METH_NOARGS, "_peer_mode($self, /)\n--\n\nFor the "
     "circuit drop-in: keep the last failure (_last_failure); the recovery time counts from "
     "now."},
    {NULL, NULL, 0, NULL},
};

#define CONFIG(name, i, doc) {name, breaker_get_config, NULL, doc, (void *)(intptr_t)(i)}

static PyGetSetDef breaker_getset[] = {
    {"state", breaker_get_state, NULL, "The CircuitState now (OPEN past its recovery timeout "
     "reads HALF_OPEN).", NULL},
    {"failure_count", breaker_get_count, NULL, "Failures counted now: consecutive ones (closed), "
     "those in the window (rate mode), those that tripped it (open).", NULL},
    {"success_count", breaker_get_count, NULL, "Successes counted now: since the last failure "
     "(closed), in the window (rate mode), successful probes (half-open).", (void *)1},
    {"remaining", breaker_get_remaining, NULL, "Seconds until an open breaker lets a probe "
     "through; 0.0 otherwise.", NULL},
    {"name", breaker_get_name, NULL, "The breaker's name (defaults to the first decorated "
     "function's __qualname__).", NULL},
    {"listeners", breaker_get_listeners, NULL, "The listeners, as a tuple.", NULL},
    {"shared", breaker_get_shared, NULL, "The name of the shared segment holding the state "
     "(shared=), or None for a breaker of this process only.", NULL},
    {"_failure_streak", breaker_get_streak, NULL, "Failures since the last success or close(), "
     "in any state (circuitbreaker's failure_count).", NULL},
    {"_last_failure", breaker_get_last_failure, NULL, "With _peer_mode(): the exception of the "
     "last failure, until a success; else None.", NULL},
    {"_open_remaining", breaker_get_open_remaining, NULL, "Seconds from now to the end of the "
     "last open period (negative after it).", NULL},
    CONFIG("failure_threshold", 0, NULL),
    CONFIG("recovery_timeout", 1, NULL),
    CONFIG("success_threshold", 2, NULL),
    CONFIG("half_open_max_calls", 3, NULL),
    CONFIG("expected_exception", 4, NULL),
    CONFIG("exclude", 5, NULL),
    CONFIG("failure_rate", 6, NULL),
    CONFIG("window", 7, NULL),
    CONFIG("window_time", 8, NULL),
    CONFIG("min_calls", 9, NULL),
    CONFIG("slow_call_duration", 10, NULL),
    CONFIG("slow_call_rate", 11, NULL),
    CONFIG("fallback", 12, NULL),
    CONFIG("clock", 13, NULL),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef breaker_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(Breaker, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(breaker_doc,
"CircuitBreaker(failure_threshold=5, recovery_timeout=30.0, *, success_threshold=1, "
"half_open_max_calls=1, expected_exception=None, exclude=(), failure_rate=None, "
"window=None, window_time=None, min_calls=None, slow_call_duration=None, slow_call_rate=None, "
"fallback=None, name=None, clock=None, shared=None, store=None)\n--\n\n"
"A circuit breaker, in C. Use it as a decorator (async def or plain def), as `async with` / "
"`with`, or with `await breaker.call(fn, *args, **kwargs)`. expected_exception=None means "
"Exception. store=s returns s.make_breaker(...) called with the other arguments: a breaker of "
"the store's own type whose state the store keeps (aiofast.redis.RedisBreakerStore: Redis).");

static PyType_Slot breaker_slots[] = {
    {Py_tp_new, breaker_new},
    {Py_tp_dealloc, breaker_dealloc},
    {Py_tp_traverse, breaker_traverse},
    {Py_tp_clear, breaker_clear},
    {Py_tp_repr, breaker_repr},
    {Py_tp_call, breaker_call},
    {Py_tp_methods, breaker_methods},
    {Py_tp_getset, breaker_getset},
    {Py_tp_members, breaker_members},
    {Py_tp_doc, (void *)breaker_doc},
    {0, NULL},
};

static PyType_Spec breaker_spec = {
    .name = "aiofast.CircuitBreaker",
    .basicsize = sizeof(Breaker),
    /* subclassable: circuitbreaker's drop-in (and its users' cls=) subclass it */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = breaker_slots,
};

/* ------------------------------------------------------------------ init */

static int
make_circuit_state(PyObject *mod, fa_state *st)
{
    PyObject *enum_mod = PyImport_ImportModule("enum");
    if (enum_mod == NULL) {
        return -1;
    }
    PyObject *Enum = PyObject_GetAttrString(enum_mod, "Enum");
    Py_DECREF(enum_mod);
    if (Enum == NULL) {
        return -1;
    }
    PyObject *names = Py_BuildValue("((ss)(ss)(ss))", "CLOSED", "closed", "OPEN", "open",
                                    "HALF_OPEN", "half_open");
    PyObject *kw = Py_BuildValue("{sssssO}", "module", "aiofast", "qualname", "CircuitState",
                                 "type", (PyObject *)&PyUnicode_Type);
    PyObject *cls = NULL;
    if (names != NULL && kw != NULL) {
        PyObject *a = Py_BuildValue("(sO)", "CircuitState", names);
        if (a != NULL) {
            cls = PyObject_Call(Enum, a, kw);
            Py_DECREF(a);
        }
    }
    Py_XDECREF(names);
    Py_XDECREF(kw);
    Py_DECREF(Enum);
    if (cls == NULL) {
        return -1;
    }
    st->breaker.CircuitState = cls;
    PyObject *doc = PyUnicode_FromString(
        "The state of a CircuitBreaker: CLOSED ('closed'), OPEN ('open'), HALF_OPEN "
        "('half_open'). Members are str, so they compare equal to their values.");
    if (doc == NULL || PyObject_SetAttrString(cls, "__doc__", doc) < 0) {
        Py_XDECREF(doc);
        return -1;
    }
    Py_DECREF(doc);
    static const char *const members[3] = {"CLOSED", "OPEN", "HALF_OPEN"};
    for (int i = 0; i < 3; i++) {
        if ((st->breaker.states[i] = PyObject_GetAttrString(cls, members[i])) == NULL) {
            return -1;
        }
    }
    return PyModule_AddObjectRef(mod, "CircuitState", cls);
}

int
fa_breaker_init(PyObject *mod, fa_state *st)
{
    FA_INIT_NEEDS(st->engine.SpecialDescrType);  // fa_methods_add, fa_special_add
    FA_INIT_NEEDS(st->core.SharedSegmentError);  // shm.c's, raised for a shared breaker
    if ((st->breaker.BreakerType = fa_add_type(mod, &breaker_spec, NULL, "CircuitBreaker")) == NULL
        || fa_methods_add(st, st->breaker.BreakerType, breaker_async_methods) < 0
        || fa_special_add(st, st->breaker.BreakerType, "__aenter__", breaker_aenter,
                          offsetof(Breaker, aenter), aenter_doc) < 0
        || fa_special_add(st, st->breaker.BreakerType, "__aexit__", breaker_aexit,
                          offsetof(Breaker, aexit), aexit_doc) < 0) {
        return -1;
    }
    if ((st->breaker.BreakerFunctionType = fa_add_type(mod, &bf_spec, NULL, NULL)) == NULL) {
        return -1;
    }
    st->breaker.CircuitOpenError =
        (PyObject *)fa_add_type(mod, &openerr_spec, PyExc_Exception, "CircuitOpenError");
    if (st->breaker.CircuitOpenError == NULL) {
        return -1;
    }
    st->breaker.blocks = PyContextVar_New("aiofast.CircuitBreaker.blocks", NULL);
    if (st->breaker.blocks == NULL || make_circuit_state(mod, st) < 0
        || PyModule_AddFunctions(mod, bk_module_methods) < 0) {
        return -1;
    }
    return 0;
}
