/*
 * memo.c: the memoizer behind aiofast.cached and aiofast.alru_cache (the decorators themselves
 * are cold Python in _compat_cache.py).
 *
 * A Memo wraps a function. Its table (ctable.h) maps a key, built as functools.lru_cache builds
 * it (or by key=), to either the result or a Flight: the computation in progress.
 *
 * - async def functions: a call that finds a fresh result returns a finished FaOp (no
 *   coroutine, no future, no task; the op is reused when nobody holds it). Any other call
 *   returns an FaOp that does nothing until it is first sent (as a coroutine would); then it
 *   looks the key up again and either joins the flight or starts one: the coroutine runs in
 *   its own Task and every caller waits on a future of its own, linked in the flight's waiter
 *   queue. When the task ends, every waiter gets its result, exception or cancellation; only a
 *   result is stored. A waiter that is cancelled leaves the queue; the last one to leave
 *   cancels the task and forgets the flight (async-lru's rule).
 * - plain def functions: the first caller computes while holding the flight's lock; callers
 *   in other threads block on it (the GIL released) and share the result or the exception; a
 *   call for the same key from the computing thread itself calls the function directly.
 * - ttl: a result expires ttl seconds after its computation ended, by the memo's clock (timer=
 *   if given; for async functions the running loop's time(), as async-lru's call_later; else
 *   time.monotonic()). Expired results are dropped when found, and from the front of the
 *   expiry order on every miss. A flight never expires (class CT_NOEXP); its entry moves to
 *   the end of the array when it completes, so results expire in completion order (with
 *   jitter: the per-entry heap).
 *
 * alru_cache (async-lru 2.x): the memo remembers the event loop it is first called in; a call
 * in another loop warns once (AlruCacheLoopResetWarning) and clears the cache (entries and
 * counts) before going on in the new loop, as async-lru does.
 *
 * Invariants (checked after every mutation by memo_check in debug builds): an entry's value is
 * a Flight exactly while that flight runs and is attached (a flight finds its entry by key
 * identity, so eviction or invalidation simply detaches it); hits + misses counts the calls that
 * went through the table; the table is changed only in sections that run no Python code, as in
 * cache.c.
 */
#include "ctable.h"
#include "op.h"
#include "memo.h"
#include "wrapper.h"
#include <pythread.h>

enum { FL_RUNNING = 0, FL_DONE };

typedef struct MemoObject MemoObject;

typedef struct {
    PyObject_HEAD
    MemoObject *memo;        /* strong */
    PyObject *key;           /* strong: the very key object of its entry */
    Py_hash_t hash;
    PyObject *loop;          /* async: the loop of the task */
    PyObject *task;          /* async: the computation, until it is done */
    PyObject *result;        /* sync: the outcome, for the waiting threads */
    PyObject *exc;
    fa_waitq waiters;        /* async: the ops waiting for the outcome */
    PyThread_type_lock lock; /* sync: held by the computing thread */
    unsigned long owner;     /* sync: that thread */
    int state;
    int is_async;
} FlightObject;

struct MemoObject {
    FA_WRAPPER_HEAD          /* func: the function whose results are cached */
    fa_state *st;
    ct_table t;
    PyObject *keyfunc;       /* key=, or NULL */
    PyObject *timer;         /* NULL: the loop's time (async) or time.monotonic (see memo_now) */
    fa_clock clk;            /* the clock last read (memo_now) */
    PyObject *rand;          /* random.random when jitter */
    PyObject *maxsize_obj;
    PyObject *ttl_obj;
    FaOp *hitcache;          /* the reuse slot of hits' ops (fa_op_ready) */
    Py_ssize_t maxsize;      /* -1: unbounded */
    double ttl, jitter;
    unsigned long long hits, misses;
    int has_ttl;
    int typed;
    int is_async;
    int closed;
    int alru;                /* made by alru_cache: its parameter dict and messages */
    int warned_loop;         /* alru: the loop-change warning was given */
    PyObject *first_loop;    /* alru: the loop of the calls, or NULL before the first */
};

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    MemoObject *memo;
    PyObject *self;          /* the instance */
    PyObject *weakreflist;   /* weakly referenceable, as bound methods are */
} MemoMethodObject;

#define IS_FLIGHT(st, v) Py_IS_TYPE((v), (st)->memo.FlightType)

/* ------------------------------------------------------------------ debug invariants */

#if FA_DEBUG
static const fa_opkind call_kind;

/* A flight's invariants: its waiter queue (fa_waitq_check) holds only this memo's call ops,
 * each holding the flight; a synchronous flight has a lock and no waiters, and a thread owns it
 * while it runs; a finished flight has no task. */
static void
flight_check(FlightObject *f)
{
    FA_CHECK(f->state == FL_RUNNING || f->state == FL_DONE, "flight %p: state %d", (void *)f,
             f->state);
    fa_waitq_check(&f->waiters);
    if (!f->is_async) {
        FA_CHECK(f->lock != NULL && f->waiters.len == 0 && f->task == NULL
                     && (f->state != FL_RUNNING || f->owner != 0),
                 "flight %p (sync): lock %p, %zd waiters, task %p, state %d, owner %lu",
                 (void *)f, (void *)f->lock, f->waiters.len, (void *)f->task, f->state,
                 f->owner);
        return;
    }
    FA_CHECK(f->lock == NULL && f->result == NULL && f->exc == NULL,
             "flight %p (async): lock %p, result %p, exc %p", (void *)f, (void *)f->lock,
             (void *)f->result, (void *)f->exc);
    FA_CHECK(f->state == FL_RUNNING || f->task == NULL,
             "flight %p: finished but still holds its task %p", (void *)f, (void *)f->task);
    if (f->waiters.len > FA_WAITQ_CHECK_MAX) {
        return;
    }
    for (FaOp *op = f->waiters.head; op != NULL; op = op->next) {
        FA_CHECK(op->kind == &call_kind && op->arg == (PyObject *)f
                     && (f->memo == NULL || op->owner == (PyObject *)f->memo),
                 "flight %p: waiter %p (%s) holds %p, owner %p", (void *)f, (void *)op,
                 op->kind->name, (void *)op->arg, (void *)op->owner);
    }
}

/* The memo's invariants (see FA_ASSERT_CONSISTENT in debug.h): the table's own (ct_check,
 * bounded for huge tables); maxsize respected (maxsize 0: nothing is ever stored); a timed table
 * exactly when there is a ttl; every flight in the table belongs to this memo, is keyed by the
 * very key object and hash of its entry, and is consistent itself (flight_check: its waiters);
 * with a ttl, exactly the flights have the never-expiring class; every entry was a miss since
 * the last cache_clear (used <= misses); hits and misses never wrapped below zero; the reused
 * awaitable and StopIteration are of their types. Reads C fields only. */
static void
memo_check(MemoObject *self)
{
    const ct_table *t = &self->t;
    Py_ssize_t sum;
    int full = ct_check(t, &sum);
    fa_state *st = self->st;
    FA_CHECK(self->maxsize < 0 || t->used <= self->maxsize, "memo %p: %zd entries, maxsize %zd",
             (void *)self, t->used, self->maxsize);
    FA_CHECK(t->timed == self->has_ttl && !t->sized, "memo %p: timed %d, sized %d, ttl %d",
             (void *)self, t->timed, t->sized, self->has_ttl);
    FA_CHECK((unsigned long long)t->used <= self->misses,
             "memo %p: %zd entries but %llu misses", (void *)self, t->used, self->misses);
    FA_CHECK(self->hits < (1ULL << 62) && self->misses < (1ULL << 62),
             "memo %p: hits %llu, misses %llu (wrapped?)", (void *)self, self->hits,
             self->misses);
    FA_CHECK(self->hitcache == NULL || Py_IS_TYPE(self->hitcache, st->engine.OpType),
             "memo %p: hitcache %p", (void *)self, (void *)self->hitcache);
    Py_ssize_t n = full || t->nentries < CT_CHECK_FULL ? t->nentries : CT_CHECK_FULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const ct_entry *e = &t->entries[i];
        if (e->key == NULL) {
            continue;
        }
        int flight = IS_FLIGHT(st, e->value);
        if (self->has_ttl && t->hpos != NULL) {
            FA_CHECK(flight == (t->hpos[i] == CT_NOEXP),
                     "memo %p: entry %zd: flight %d, expiry class %d", (void *)self, i, flight,
                     t->hpos[i]);
        }
        if (flight) {
            FlightObject *f = (FlightObject *)e->value;
            FA_CHECK(f->memo == self && f->key == e->key && f->hash == e->hash
                         && f->is_async == self->is_async,
                     "memo %p: entry %zd: flight %p of memo %p, key %p (entry's %p)",
                     (void *)self, i, (void *)f, (void *)f->memo, (void *)f->key,
                     (void *)e->key);
            flight_check(f);
        }
    }
}
#endif
#define FA_CONSISTENT memo_check
#define CHECK(m) FA_ASSERT_CONSISTENT(m)

static PyObject *method_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames);

/* ------------------------------------------------------------------ keys */

/* functools._make_key: args + (kwd_mark,) + flattened kwargs + types when typed; a lone int or
 * str argument is its own key. New reference, or NULL. */
static PyObject *
make_key(MemoObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (self->keyfunc != NULL) {
        return PyObject_Vectorcall(self->keyfunc, args, (size_t)nargs, kwnames);
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nkw == 0 && !self->typed && nargs == 1
        && (PyLong_CheckExact(args[0]) || PyUnicode_CheckExact(args[0]))) {
        return Py_NewRef(args[0]);
    }
    Py_ssize_t n = nargs + (nkw ? 1 + 2 * nkw : 0) + (self->typed ? nargs + nkw : 0);
    PyObject *key = PyTuple_New(n);
    if (key == NULL) {
        return NULL;
    }
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(key, j++, Py_NewRef(args[i]));
    }
    if (nkw) {
        PyTuple_SET_ITEM(key, j++, Py_NewRef(self->st->memo.kwd_mark));
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyTuple_SET_ITEM(key, j++, Py_NewRef(PyTuple_GET_ITEM(kwnames, i)));
            PyTuple_SET_ITEM(key, j++, Py_NewRef(args[nargs + i]));
        }
    }
    if (self->typed) {
        for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
            PyTuple_SET_ITEM(key, j++, Py_NewRef((PyObject *)Py_TYPE(args[i])));
        }
    }
    return key;
}

/* (args tuple, kwargs dict or None) for calling the function later. */
static PyObject *
pack_call(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a = PyTuple_New(nargs), *kw = NULL, *r = NULL;
    if (a == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(a, i, Py_NewRef(args[i]));
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nkw) {
        kw = PyDict_New();
        for (Py_ssize_t i = 0; kw != NULL && i < nkw; i++) {
            if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_CLEAR(kw);
            }
        }
        if (kw == NULL) {
            Py_DECREF(a);
            return NULL;
        }
    }
    r = PyTuple_Pack(2, a, kw ? kw : Py_None);
    Py_DECREF(a);
    Py_XDECREF(kw);
    return r;
}

static PyObject *
call_packed(PyObject *func, PyObject *packed)
{
    PyObject *kw = PyTuple_GET_ITEM(packed, 1);
    return PyObject_Call(func, PyTuple_GET_ITEM(packed, 0), kw == Py_None ? NULL : kw);
}

/* ------------------------------------------------------------------ alru_cache's loop */

static PyObject *memo_cache_clear(PyObject *op, PyObject *Py_UNUSED(ignored));

/* alru: called in `loop` (borrowed, running), not the remembered one. The first: remember it.
 * Another: warn once (an error under -W error: then nothing changes), clear, re-bind. 0 or -1.
 * Beware: the warning machinery and the cleared entries' __del__ run Python code. */
static int
memo_loop_changed(MemoObject *self, PyObject *loop)
{
    if (self->first_loop != NULL) {
        if (!self->warned_loop) {
            if (PyErr_WarnEx(self->st->memo.AlruCacheLoopResetWarning,
                             "alru_cache detected event loop change and auto-cleared stale "
                             "entries. This is safe but unusual outside of tests "
                             "(pytest-anyio, etc.).", 1) < 0) {
                return -1;
            }
            self->warned_loop = 1;
        }
        PyObject *r = memo_cache_clear((PyObject *)self, NULL);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    Py_XSETREF(self->first_loop, Py_NewRef(loop));
    return 0;
}

/* alru: check the running loop (new ref or None, borrowed here) against the remembered one. */
static inline int
memo_check_loop(MemoObject *self, PyObject *loop)
{
    if (FA_LIKELY(loop == self->first_loop) || loop == Py_None) {
        return 0;
    }
    return memo_loop_changed(self, loop);
}

/* ------------------------------------------------------------------ time and the table */

/* The memo's clock (clock.h): timer= if given; for an async function, the running loop's
 * time() (read in C when it is asyncio's own); else time.monotonic as the time module has it.
 * *now is on the memo's own scale (a new clock carries on from where the last one left). 0; 1
 * when an async function's clock is unknown (no running loop: *now is time.monotonic(), not to
 * be used to expire anything); -1 with an exception. Beware: a Python timer or loop.time() is
 * Python code, and so may be the release of a clock read before. */
static int
memo_now(MemoObject *self, double *now)
{
    fa_state *st = self->st;
    fa_reading r;
    if (self->timer != NULL) {
        if (fa_user_read(self->timer, NULL, "timer()", &r.now) < 0) {
            return -1;
        }
        r.kloop = NULL;
        r.kfn = Py_NewRef(self->timer);
    }
    else if (self->is_async) {
        PyObject *loop = fa_running_loop_or_none(st);  // new ref
        if (loop == NULL) {
            return -1;
        }
        if (loop == Py_None) {
            Py_DECREF(loop);
            *now = fa_monotonic();
            return 1;
        }
        int rc = fa_loop_read(st, loop, &r);
        Py_DECREF(loop);
        if (rc < 0) {
            return -1;
        }
    }
    else if (fa_mono_read(st, &r) < 0) {
        return -1;
    }
    *now = fa_clock_take(&self->clk, &r);
    return 0;
}

static void
memo_expire(MemoObject *self, double now, ct_buf *trash)
{
    Py_ssize_t ix;
    uint64_t itver = self->t.itver;
    while ((ix = ct_next_expired(&self->t, now)) >= 0) {
        ct_remove(&self->t, ix, trash);
    }
    self->t.itver = itver;
    CHECK(self);
}

/* After entries were removed: the engine's reusable StopIteration may still hold the value of
 * the last hit (our kinds let it: FA_OPK_KEEP_RESULT); let it go, so that a removed value is
 * not kept alive by it. Beware: may release that value (Python code); call it where the caller
 * has committed. */
static void
memo_drop_stopiter(MemoObject *self)
{
    fa_op_forget_result(self->st);
}

/* The entry of flight f, or CT_NOTFOUND if it was evicted, invalidated or cleared. */
static Py_ssize_t
flight_entry(FlightObject *f)
{
    MemoObject *m = f->memo;
    if (m == NULL) {
        return CT_NOTFOUND;
    }
    Py_ssize_t ix = ct_find_ident(&m->t, f->key, f->hash);
    if (ix >= 0 && m->t.entries[ix].value != (PyObject *)f) {
        ix = CT_NOTFOUND;
    }
    return ix;
}

/* The lookup of a call that may start a flight, once everything that may run Python code is
 * done (the clock read at now, the flight allocated): expire what is due, then find key. A
 * fresh result is a hit: counted, marked used, and returned in *hit (a new reference); an
 * expired one is removed (its key and value to trash). Otherwise *hit is NULL and the result
 * is the index of key's flight, CT_NOTFOUND, or CT_ERROR (a raising __eq__). */
static Py_ssize_t
memo_lookup(MemoObject *self, PyObject *key, Py_hash_t hash, double now, ct_buf *trash,
            PyObject **hit)
{
    ct_table *t = &self->t;
    *hit = NULL;
    if (self->has_ttl) {
        memo_expire(self, now, trash);
    }
    Py_ssize_t ix = ct_lookup(t, key, hash);  // Beware: __eq__ (it re-validates)
    if (ix < 0 || IS_FLIGHT(self->st, t->entries[ix].value)) {
        return ix;
    }
    if (!self->has_ttl || now < t->exp[ix]) {
        self->hits++;
        ct_touch(t, ix);
        CHECK(self);
        *hit = Py_NewRef(t->entries[ix].value);
        return ix;
    }
    ct_remove(t, ix, trash);  // expired (in a synchronous call: a timer that went backwards)
    return CT_NOTFOUND;
}

/* Insert key -> value (a new flight) as the most recent entry, evicting to keep maxsize. No
 * Python code runs; evicted keys and values go to trash. 0 or -1. */
static int
memo_insert(MemoObject *self, PyObject *key, Py_hash_t hash, PyObject *value, ct_buf *trash)
{
    ct_table *t = &self->t;
    if (self->maxsize >= 0) {
        while (t->used >= self->maxsize && t->lru_head >= 0) {
            ct_remove(t, t->lru_head, trash);
        }
    }
    if (ct_reserve(t, NULL) < 0) {
        return -1;
    }
    Py_ssize_t ix = ct_insert(t, Py_NewRef(key), Py_NewRef(value), hash);
    if (self->has_ttl) {
        ct_set_exp(t, ix, INFINITY, 2);  // a flight never expires
    }
    CHECK(self);
    return 0;
}

/* The flight f ended with result (NULL: failed or cancelled): store the result in its entry
 * (expiring ttl from now) or drop the entry. 0 or -1. */
static int
flight_settle_entry(FlightObject *f, PyObject *result)
{
    MemoObject *m = f->memo;
    if (m == NULL) {
        return 0;
    }
    double now = 0.0, ttl = m->ttl;
    if (result != NULL && m->has_ttl) {
        if (memo_now(m, &now) < 0) {  // Beware: a Python timer
            return -1;
        }
        if (m->rand != NULL) {
            PyObject *r = PyObject_CallNoArgs(m->rand);  // Beware: Python code
            if (r == NULL) {
                return -1;
            }
            double u = PyFloat_AsDouble(r);
            Py_DECREF(r);
            if (u == -1.0 && PyErr_Occurred()) {
                return -1;
            }
            ttl += u * m->jitter;
        }
    }
    ct_buf trash;
    ct_buf_init(&trash);
    Py_ssize_t ix = flight_entry(f);
    if (ix >= 0) {
        ct_table *t = &m->t;
        if (result == NULL) {
            ct_remove(t, ix, &trash);
        }
        else if (m->has_ttl && (ct_reserve(t, &ix) < 0 || (m->rand && ct_enable_heap(t) < 0))) {
            ct_remove(t, ix, &trash);  // out of memory: forget the result, not keep a flight
            PyErr_Clear();
        }
        else {
            ct_entry *e = &t->entries[ix];
            ct_trash(&trash, e->value);
            e->value = Py_NewRef(result);
            if (m->has_ttl) {
                double exp = now + ttl;
                ix = ct_move_to_end(t, ix);
                /* an infinite clock and ttl of opposite signs: expired at once (nan would
                 * break the expiry order) */
                ct_set_exp(t, ix, isnan(exp) ? -INFINITY : exp, m->rand != NULL);
            }
        }
        CHECK(m);
    }
    ct_buf_flush(&trash);  // Beware: __del__ of the replaced or removed value
    return 0;
}

/* ------------------------------------------------------------------ flights */

static FlightObject *
flight_new(MemoObject *m, PyObject *key, Py_hash_t hash)
{
    FlightObject *f = PyObject_GC_New(FlightObject, m->st->memo.FlightType);
    if (f == NULL) {
        return NULL;
    }
    f->memo = (MemoObject *)Py_NewRef(m);
    f->key = Py_NewRef(key);
    f->hash = hash;
    f->loop = f->task = f->result = f->exc = NULL;
    memset(&f->waiters, 0, sizeof(f->waiters));
    f->lock = NULL;
    f->owner = 0;
    f->state = FL_RUNNING;
    f->is_async = m->is_async;
    PyObject_GC_Track(f);
    return f;
}

static int
flight_traverse(PyObject *op, visitproc visit, void *arg)
{
    FlightObject *f = (FlightObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)f->memo);
    Py_VISIT(f->key);
    Py_VISIT(f->loop);
    Py_VISIT(f->task);
    Py_VISIT(f->result);
    Py_VISIT(f->exc);
    return fa_waitq_traverse(&f->waiters, visit, arg);
}

static int
flight_clear(PyObject *op)
{
    FlightObject *f = (FlightObject *)op;
    Py_CLEAR(f->memo);
    Py_CLEAR(f->key);
    Py_CLEAR(f->loop);
    Py_CLEAR(f->task);
    Py_CLEAR(f->result);
    Py_CLEAR(f->exc);
    fa_waitq_release_all(&f->waiters);
    return 0;
}

static void
flight_dealloc(PyObject *op)
{
    FlightObject *f = (FlightObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    flight_clear(op);
    if (f->lock != NULL) {
        PyThread_free_lock(f->lock);
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* Wake every waiter op of an async flight: with result, exc, or (both NULL) cancellation. */
static void
flight_wake_all(FlightObject *f, PyObject *result, PyObject *exc)
{
    fa_state *st = f->memo ? f->memo->st : NULL;
    FaOp *op;
    while ((op = fa_waitq_popleft(&f->waiters)) != NULL) {  // one at a time: callouts follow
        FA_ASSERT_CONSISTENT_WITH(flight_check, f);
        PyObject *fut = op->fut ? Py_NewRef(op->fut) : NULL;
        if (st == NULL) {
            st = op->st;
        }
        if (fut != NULL) {
            int done = fa_fut_done(st, fut);
            int rc = 0;
            if (done == 0) {
                if (result != NULL) {
                    rc = fa_fut_set_result(st, fut, result);  // Beware: loop code
                    op->flags |= FA_OPF_WOKEN;
                }
                else if (exc != NULL) {
                    PyObject *args[2] = {fut, exc};
                    PyObject *r = PyObject_VectorcallMethod(
                        st->core.str_set_exception, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                    rc = r ? 0 : -1;
                    Py_XDECREF(r);
                }
                else {
                    rc = fa_fut_cancel(st, fut);
                }
            }
            if (done < 0 || rc < 0) {
                PyErr_WriteUnraisable(fut);
            }
            Py_DECREF(fut);
        }
        Py_DECREF(op);
    }
}

/* task.add_done_callback(flight._done): the computation ended. */
static PyObject *
flight_done(PyObject *op, PyObject *task)
{
    FlightObject *f = (FlightObject *)op;
    if (f->state != FL_RUNNING || f->memo == NULL) {
        Py_RETURN_NONE;
    }
    fa_state *st = f->memo->st;
    Py_INCREF(f);
    f->state = FL_DONE;
    Py_CLEAR(f->task);  // not the last reference: the caller holds `task`
    PyObject *result = NULL, *exc = NULL;
    int cancelled = fa_fut_cancelled(st, task);
    if (cancelled < 0) {
        goto error;
    }
    if (!cancelled) {
        PyObject *args[1] = {task};
        exc = PyObject_VectorcallMethod(st->core.str_exception, args,
                                        1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (exc == NULL) {
            goto error;
        }
        if (exc == Py_None) {
            Py_CLEAR(exc);
            result = PyObject_VectorcallMethod(st->core.str_result, args,
                                               1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (result == NULL) {
                goto error;
            }
        }
    }
    if (flight_settle_entry(f, result) < 0) {
        goto error;
    }
    flight_wake_all(f, result, exc);
    Py_XDECREF(result);
    Py_XDECREF(exc);
    Py_DECREF(f);
    Py_RETURN_NONE;
error:
    /* report, forget the flight, and still give the waiters what we know (the result if we
     * have it; else the exception; else cancellation) */
    PyErr_WriteUnraisable(op);
    flight_settle_entry(f, NULL);
    PyErr_Clear();
    flight_wake_all(f, result, exc);
    Py_XDECREF(result);
    Py_XDECREF(exc);
    Py_DECREF(f);
    Py_RETURN_NONE;
}

static PyMethodDef flight_done_def = {"_done", flight_done, METH_O, NULL};

/* ------------------------------------------------------------------ the async ops */

/* A cache hit (and cache_close() with nothing to wait for): an op that is already finished,
 * from the memo's reuse slot. It carries its value in the engine's StopIteration on 3.12+. */
static const fa_opkind hit_kind = {"cached", fa_op_ready_start, NULL, NULL, NULL,
                                   FA_OPK_KEEP_RESULT};

static PyObject *
hit_new(MemoObject *m, PyObject *value)
{
    return (PyObject *)fa_op_ready(m->st, &m->hitcache, &hit_kind, (PyObject *)m, value);
}

/* Start the computation of flight f (already in the table) with the packed arguments: the
 * coroutine in a Task on loop. -1 (the flight failed, its entry and waiters handled) or 0. */
static int
flight_start(FlightObject *f, PyObject *loop, PyObject *packed)
{
    MemoObject *m = f->memo;
    fa_state *st = m->st;
    PyObject *coro = call_packed(m->func, packed);  // Beware: Python code
    PyObject *task = NULL;
    if (coro != NULL) {
        PyObject *args[2] = {loop, coro};
        task = PyObject_VectorcallMethod(st->core.str_create_task, args,
                                         2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (task == NULL) {
            PyObject *exc = fa_fetch_exc();
            PyObject *r = PyObject_CallMethod(coro, "close", NULL);  // no "never awaited"
            Py_XDECREF(r);
            PyErr_Clear();
            fa_restore_exc(exc);
        }
        Py_DECREF(coro);
    }
    if (task != NULL) {
        Py_XSETREF(f->task, Py_NewRef(task));
        PyObject *cb = PyCFunction_New(&flight_done_def, (PyObject *)f);
        PyObject *r = NULL;
        if (cb != NULL) {
            PyObject *args[2] = {task, cb};
            r = PyObject_VectorcallMethod(st->core.str_add_done_callback, args,
                                          2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(cb);
        }
        if (r != NULL) {
            Py_DECREF(r);
            Py_DECREF(task);
            return 0;
        }
        PyObject *exc = fa_fetch_exc();
        fa_fut_cancel(st, task);
        PyErr_Clear();
        fa_restore_exc(exc);
        Py_DECREF(task);
    }
    /* the call or the task failed: nobody may wait for this flight any more */
    PyObject *exc = fa_fetch_exc();
    if (exc == NULL) {
        PyErr_SetString(PyExc_SystemError, "cached: the computation could not start");
        exc = fa_fetch_exc();
    }
    f->state = FL_DONE;
    Py_CLEAR(f->task);
    flight_settle_entry(f, NULL);
    PyErr_Clear();
    flight_wake_all(f, NULL, exc);
    fa_restore_exc(exc);
    return -1;
}

/* The first send of a call that did not hit at call time: look up again, then return the
 * result, join the flight, or start one. op->arg is the key, op->arg2 the packed arguments. */
static PySendResult
call_start(FaOp *op, PyObject **res)
{
    MemoObject *self = (MemoObject *)op->owner;
    fa_state *st = self->st;
    if (self->closed) {
        PyErr_Format(PyExc_RuntimeError, "%s is closed for %R",
                     self->alru ? "alru_cache" : "cached", (PyObject *)self);
        return PYGEN_ERROR;
    }
    PyObject *key = op->arg;
    Py_hash_t hash = fa_hash(key);
    if (hash == -1) {
        return PYGEN_ERROR;
    }
    PyObject *loop = fa_running_loop(st);  // new ref
    if (loop == NULL) {
        return PYGEN_ERROR;
    }
    if (self->alru && memo_check_loop(self, loop) < 0) {
        Py_DECREF(loop);
        return PYGEN_ERROR;
    }
    ct_buf trash;
    ct_buf_init(&trash);
    PySendResult r = PYGEN_ERROR;
    double now = 0.0;
    /* everything that may run Python code comes before the lookup: the clock, and the
     * allocation of the flight we may need (an allocation may start the GC) */
    FlightObject *f = NULL;
    if (self->has_ttl && memo_now(self, &now) < 0) {
        goto done;
    }
    if ((f = flight_new(self, key, hash)) == NULL) {
        goto done;
    }
    f->loop = Py_NewRef(loop);
    ct_table *t = &self->t;
    Py_ssize_t ix = memo_lookup(self, key, hash, now, &trash, res);
    if (ix == CT_ERROR) {
        goto done;
    }
    if (*res != NULL) {
        r = PYGEN_RETURN;
        goto done;
    }
    if (ix >= 0) {
        FlightObject *other = (FlightObject *)t->entries[ix].value;
        if (other->loop == loop && other->state == FL_RUNNING) {
            self->hits++;
            ct_touch(t, ix);
            Py_SETREF(op->arg, Py_NewRef((PyObject *)other));  // the op holds its flight now
            Py_CLEAR(op->arg2);
            r = fa_op_wait_on(op, loop, &other->waiters, res);
            CHECK(self);
            goto done;
        }
        ct_remove(t, ix, &trash);  // a flight of another loop: start our own
    }
    /* a miss: start our flight */
    self->misses++;
    if (memo_insert(self, key, hash, (PyObject *)f, &trash) < 0) {
        goto done;
    }
    ct_buf_flush(&trash);  // Beware: __del__ of evicted values
    memo_drop_stopiter(self);
    PyObject *packed = Py_NewRef(op->arg2);
    Py_SETREF(op->arg, Py_NewRef((PyObject *)f));  // the op holds its flight
    Py_CLEAR(op->arg2);
    int rc = flight_start(f, loop, packed);
    Py_DECREF(packed);
    if (rc == 0) {
        r = fa_op_wait_on(op, loop, &f->waiters, res);
        if (r == PYGEN_ERROR && f->waiters.len == 0 && f->state == FL_RUNNING && f->task) {
            /* we could not even wait (no future): nobody else waits either */
            PyObject *exc = fa_fetch_exc();
            fa_fut_cancel(st, f->task);
            PyErr_Clear();
            fa_restore_exc(exc);
        }
    }
done:
    CHECK(self);
    Py_XDECREF(f);
    ct_buf_flush(&trash);
    memo_drop_stopiter(self);
    Py_DECREF(loop);
    return r;
}

static PySendResult
call_resume(FaOp *Py_UNUSED(op), PyObject *value, PyObject **res)
{
    *res = Py_NewRef(value);
    return PYGEN_RETURN;
}

/* A waiter leaves (cancelled, closed, or the flight failed): if it was the last one while the
 * computation still runs, cancel it and forget the flight. */
static int
call_on_exc(FaOp *op, PyObject *Py_UNUSED(exc))
{
    if (op->queue == NULL || op->arg == NULL || !IS_FLIGHT(op->st, op->arg)) {
        return 0;  // already woken (the outcome is known) or not waiting on a flight
    }
    FlightObject *f = (FlightObject *)Py_NewRef(op->arg);
    fa_waitq_unlink(op);
    FA_ASSERT_CONSISTENT_WITH(flight_check, f);
    int rc = 0;
    if (f->waiters.len == 0 && f->state == FL_RUNNING && f->task != NULL) {
        PyObject *task = Py_NewRef(f->task);
        int done = fa_fut_done(op->st, task);  // finished, its callback not run yet: keep it
        if (done < 0) {
            rc = -1;
        }
        else if (!done && f->waiters.len == 0 && f->state == FL_RUNNING) {
            ct_buf trash;
            ct_buf_init(&trash);
            Py_ssize_t ix = flight_entry(f);
            if (ix >= 0) {
                ct_remove(&f->memo->t, ix, &trash);
                CHECK(f->memo);
            }
            ct_buf_flush(&trash);
            rc = fa_fut_cancel(op->st, task);  // Beware: loop code
        }
        Py_DECREF(task);
    }
    Py_DECREF(f);
    return rc;
}

/* the op stands for a call of the decorated function: its qualname is the function's */
static PyObject *
call_qualname(FaOp *op)
{
    if (op->owner == NULL) {
        return NULL;  // finished: the kind's name
    }
    return PyObject_GetAttrString(((MemoObject *)op->owner)->func, "__qualname__");
}

static const fa_opkind call_kind = {"cached", call_start, call_resume, call_on_exc,
                                    call_qualname, FA_OPK_KEEP_RESULT};

/* ------------------------------------------------------------------ the sync path */

/* Block (the GIL released) until the computing thread releases the flight's lock; 0, or -1
 * if a signal handler raised. */
static int
flight_wait_sync(FlightObject *f)
{
    for (;;) {
        PyLockStatus s;
        Py_BEGIN_ALLOW_THREADS
        s = PyThread_acquire_lock_timed(f->lock, 50000, 0);
        Py_END_ALLOW_THREADS
        if (s == PY_LOCK_ACQUIRED) {
            PyThread_release_lock(f->lock);
            return 0;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

static PyObject *
memo_call_sync(MemoObject *self, PyObject *key, Py_hash_t hash, PyObject *const *args,
               Py_ssize_t nargs, PyObject *kwnames)
{
    ct_table *t = &self->t;
    ct_buf trash;
    ct_buf_init(&trash);
    PyObject *result = NULL;
    FlightObject *f = NULL, *other = NULL;
    {
        /* the fast path: a fresh result, no allocation */
        double now = 0.0;
        if (self->has_ttl && memo_now(self, &now) < 0) {
            return NULL;
        }
        Py_ssize_t ix = ct_lookup(t, key, hash);  // Beware: __eq__
        if (ix == CT_ERROR) {
            return NULL;
        }
        if (ix >= 0) {
            PyObject *v = t->entries[ix].value;
            if (!IS_FLIGHT(self->st, v) && (!self->has_ttl || now < t->exp[ix])) {
                self->hits++;
                ct_touch(t, ix);
                CHECK(self);
                return Py_NewRef(v);
            }
        }
    }
retry:
    {
        double now = 0.0;
        if (self->has_ttl && memo_now(self, &now) < 0) {
            goto done;
        }
        if (f == NULL) {
            if ((f = flight_new(self, key, hash)) == NULL) {
                goto done;
            }
            if ((f->lock = PyThread_allocate_lock()) == NULL) {
                PyErr_NoMemory();
                goto done;
            }
        }
        Py_ssize_t ix = memo_lookup(self, key, hash, now, &trash, &result);
        if (ix == CT_ERROR || result != NULL) {
            goto done;
        }
        if (ix >= 0) {
            other = (FlightObject *)Py_NewRef(t->entries[ix].value);
            if (other->owner == PyThread_get_thread_ident()) {
                /* a recursive call from the computing thread: waiting would deadlock */
                self->misses++;
                result = PyObject_Vectorcall(self->func, args, (size_t)nargs, kwnames);
                goto done;
            }
            self->hits++;
            ct_touch(t, ix);
            CHECK(self);
            ct_buf_flush(&trash);
            if (flight_wait_sync(other) < 0) {
                goto done;
            }
            if (other->result != NULL) {
                result = Py_NewRef(other->result);
                goto done;
            }
            if (other->exc != NULL
                && PyObject_TypeCheck(other->exc, (PyTypeObject *)PyExc_Exception)) {
                fa_restore_exc(Py_NewRef(other->exc));  // the computation's failure is ours
                goto done;
            }
            /* the computing thread was interrupted (KeyboardInterrupt, SystemExit...): that
             * is not our failure, try again */
            Py_CLEAR(other);
            self->hits--;
            goto retry;
        }
    }
    self->misses++;
    PyThread_acquire_lock(f->lock, WAIT_LOCK);  // a new lock: never blocks
    f->owner = PyThread_get_thread_ident();
    if (memo_insert(self, key, hash, (PyObject *)f, &trash) < 0) {
        PyThread_release_lock(f->lock);
        goto done;
    }
    ct_buf_flush(&trash);  // Beware: __del__ of evicted values
    memo_drop_stopiter(self);
    result = PyObject_Vectorcall(self->func, args, (size_t)nargs, kwnames);
    if (result == NULL) {
        f->exc = fa_fetch_exc();
    }
    else {
        f->result = Py_NewRef(result);
    }
    f->state = FL_DONE;
    if (flight_settle_entry(f, result) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    f->owner = 0;
    PyThread_release_lock(f->lock);
    if (result == NULL) {
        fa_restore_exc(Py_NewRef(f->exc));
    }
done:
    CHECK(self);
    Py_XDECREF(other);
    Py_XDECREF(f);
    ct_buf_flush(&trash);
    memo_drop_stopiter(self);
    return result;
}

/* ------------------------------------------------------------------ calling */

static PyObject *
memo_call_key(MemoObject *self, PyObject *key, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames)
{
    fa_state *st = self->st;
    Py_hash_t hash = fa_hash(key);
    if (hash == -1) {
        return NULL;
    }
    if (self->closed) {
        PyErr_Format(PyExc_RuntimeError, "%s is closed for %R",
                     self->alru ? "alru_cache" : "cached", (PyObject *)self);
        return NULL;
    }
    if (!self->is_async) {
        return memo_call_sync(self, key, hash, args, nargs, kwnames);
    }
    int defer = 0;  /* decide when awaited, in the loop that runs it */
    if (self->alru) {
        PyObject *loop = fa_running_loop_or_none(st);  // new ref (or None)
        if (loop == NULL) {
            return NULL;
        }
        defer = loop == Py_None;  /* called outside a loop: it may run in a new one */
        int rc = memo_check_loop(self, loop);
        Py_DECREF(loop);
        if (rc < 0) {
            return NULL;
        }
    }
    double now = 0.0;
    int clock = self->has_ttl ? memo_now(self, &now) : 0;
    if (clock < 0) {
        return NULL;
    }
    Py_ssize_t ix = clock || defer ? CT_NOTFOUND : ct_lookup(&self->t, key, hash);  // Beware
    if (ix == CT_ERROR) {
        return NULL;
    }
    if (FA_LIKELY(ix >= 0)) {
        PyObject *v = self->t.entries[ix].value;
        if (FA_LIKELY(!IS_FLIGHT(st, v) && (!self->has_ttl || now < self->t.exp[ix]))) {
            self->hits++;
            ct_touch(&self->t, ix);
            CHECK(self);
            v = Py_NewRef(v);  // before the allocation, which may run the GC
            PyObject *h = hit_new(self, v);
            Py_DECREF(v);
            return h;
        }
    }
    /* not a fresh result: decide when awaited */
    PyObject *packed = pack_call(args, nargs, kwnames);
    if (packed == NULL) {
        return NULL;
    }
    FaOp *op = fa_op_new(st, &call_kind, (PyObject *)self, key);
    if (op == NULL) {
        Py_DECREF(packed);
        return NULL;
    }
    op->arg2 = packed;
    return (PyObject *)op;
}

static PyObject *
memo_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    MemoObject *self = (MemoObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->maxsize == 0) {
        self->misses++;  // no caching at all (functools' maxsize=0)
        return PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    }
    PyObject *key = make_key(self, args, nargs, kwnames);  // new ref
    if (key == NULL) {
        return NULL;
    }
    PyObject *r = memo_call_key(self, key, args, nargs, kwnames);
    Py_DECREF(key);
    return r;
}

/* ------------------------------------------------------------------ cache_* methods */

typedef PyObject *(*fastcall_kw)(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);

static PyObject *
memo_cache_invalidate(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    MemoObject *self = (MemoObject *)op;
    PyObject *key = make_key(self, args, nargs, kwnames);
    if (key == NULL) {
        return NULL;
    }
    Py_hash_t hash = fa_hash(key);
    Py_ssize_t ix = hash == -1 ? CT_ERROR : ct_lookup(&self->t, key, hash);
    Py_DECREF(key);
    if (ix == CT_ERROR) {
        return NULL;
    }
    if (ix < 0) {
        Py_RETURN_FALSE;
    }
    ct_buf trash;
    ct_buf_init(&trash);
    ct_remove(&self->t, ix, &trash);  // a flight goes on, detached: its waiters still get it
    CHECK(self);
    ct_buf_flush(&trash);
    memo_drop_stopiter(self);
    Py_RETURN_TRUE;
}

static PyObject *
memo_cache_contains(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    MemoObject *self = (MemoObject *)op;
    PyObject *key = make_key(self, args, nargs, kwnames);
    if (key == NULL) {
        return NULL;
    }
    double now = 0.0;
    Py_hash_t hash = fa_hash(key);
    int clock = (hash != -1 && self->has_ttl) ? memo_now(self, &now) : 0;
    if (hash == -1 || clock < 0) {
        Py_DECREF(key);
        return NULL;
    }
    if (clock > 0) {
        now = -INFINITY;  // no loop, no clock: whatever is held counts
    }
    Py_ssize_t ix = ct_lookup(&self->t, key, hash);
    Py_DECREF(key);
    if (ix == CT_ERROR) {
        return NULL;
    }
    if (ix < 0) {
        Py_RETURN_FALSE;
    }
    PyObject *v = self->t.entries[ix].value;
    return PyBool_FromLong(IS_FLIGHT(self->st, v) || !self->has_ttl || now < self->t.exp[ix]);
}

static int
memo_expire_now(MemoObject *self)
{
    if (!self->has_ttl) {
        return 0;
    }
    double now;
    int clock = memo_now(self, &now);
    if (clock != 0) {
        return clock < 0 ? -1 : 0;  // no loop: nothing can be said to have expired
    }
    ct_buf trash;
    ct_buf_init(&trash);
    memo_expire(self, now, &trash);
    ct_buf_flush(&trash);
    memo_drop_stopiter(self);
    return 0;
}

static PyObject *
memo_cache_info(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    MemoObject *self = (MemoObject *)op;
    if (memo_expire_now(self) < 0) {
        return NULL;
    }
    return PyObject_CallFunction(self->st->memo.CacheInfo, "KKOn", self->hits, self->misses,
                                 self->maxsize_obj, self->t.used);
}

static PyObject *
memo_cache_clear(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    MemoObject *self = (MemoObject *)op;
    ct_buf trash;
    ct_buf_init(&trash);
    ct_clear(&self->t, &trash);  // flights go on, detached
    self->hits = self->misses = 0;
    CHECK(self);
    ct_buf_flush(&trash);
    memo_drop_stopiter(self);
    Py_RETURN_NONE;
}

/* The tasks of the flights still in the table, as a new list. */
static PyObject *
memo_tasks(MemoObject *self)
{
    ct_buf buf;
    ct_buf_init(&buf);
    ct_table *t = &self->t;
    for (Py_ssize_t i = 0; i < t->nentries; i++) {
        PyObject *v = t->entries[i].value;
        if (t->entries[i].key != NULL && IS_FLIGHT(self->st, v)) {
            FlightObject *f = (FlightObject *)v;
            if (f->task != NULL && f->state == FL_RUNNING) {
                if (ct_buf_push(&buf, Py_NewRef(f->task)) < 0) {
                    Py_DECREF(f->task);
                    ct_buf_flush(&buf);
                    return PyErr_NoMemory();
                }
            }
        }
    }
    PyObject *list = PyList_New(buf.n);  // Beware: may run the GC; we hold the tasks
    for (Py_ssize_t i = 0; list != NULL && i < buf.n; i++) {
        PyList_SET_ITEM(list, i, Py_NewRef(buf.items[i]));
    }
    ct_buf_flush(&buf);
    return list;
}

static PyObject *
memo_cache_parameters(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    MemoObject *self = (MemoObject *)op;
    PyObject *tasks = memo_tasks(self);
    if (tasks == NULL) {
        return NULL;
    }
    Py_ssize_t ntasks = PyList_GET_SIZE(tasks);
    Py_DECREF(tasks);
    if (self->alru) {
        return Py_BuildValue("{sOsOsnsO}", "maxsize", self->maxsize_obj, "typed",
                             self->typed ? Py_True : Py_False, "tasks", ntasks, "closed",
                             self->closed ? Py_True : Py_False);
    }
    return Py_BuildValue("{sOsOsOsnsO}", "maxsize", self->maxsize_obj, "typed",
                         self->typed ? Py_True : Py_False, "ttl", self->ttl_obj, "tasks",
                         ntasks, "closed", self->closed ? Py_True : Py_False);
}

/* cache_close(*, wait=False): refuse new calls; cancel the running computations (or let them
 * finish with wait=True). Returns an awaitable that waits for them. */
static PyObject *
memo_cache_close(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    MemoObject *self = (MemoObject *)op;
    int wait = 0;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 0) {
        PyErr_SetString(PyExc_TypeError, "cache_close() takes no positional arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "wait") != 0) {
            PyErr_Format(PyExc_TypeError, "cache_close() got an unexpected keyword argument "
                         "'%S'", name);
            return NULL;
        }
        wait = PyObject_IsTrue(args[i]);
        if (wait < 0) {
            return NULL;
        }
    }
    self->closed = 1;
    PyObject *tasks = memo_tasks(self);
    if (tasks == NULL) {
        return NULL;
    }
    if (PyList_GET_SIZE(tasks) == 0) {
        Py_DECREF(tasks);
        return hit_new(self, Py_None);
    }
    if (!wait) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tasks); i++) {
            if (fa_fut_cancel(self->st, PyList_GET_ITEM(tasks, i)) < 0) {
                Py_DECREF(tasks);
                return NULL;
            }
        }
    }
    PyObject *gather = fa_import_attr("asyncio", "gather");  // new ref
    PyObject *r = NULL;
    if (gather != NULL) {
        PyObject *targs = PyList_AsTuple(tasks);
        PyObject *kw = Py_BuildValue("{sO}", "return_exceptions", Py_True);
        if (targs != NULL && kw != NULL) {
            r = PyObject_Call(gather, targs, kw);
        }
        Py_XDECREF(targs);
        Py_XDECREF(kw);
        Py_DECREF(gather);
    }
    Py_DECREF(tasks);
    return r;
}

/* ------------------------------------------------------------------ the Memo type */

static int
memo_traverse(PyObject *op, visitproc visit, void *arg)
{
    MemoObject *self = (MemoObject *)op;
    Py_VISIT(self->keyfunc);
    Py_VISIT(self->timer);
    if (fa_clock_traverse(&self->clk, visit, arg) < 0) {
        return -1;
    }
    Py_VISIT(self->rand);
    Py_VISIT(self->maxsize_obj);
    Py_VISIT(self->ttl_obj);
    Py_VISIT((PyObject *)self->hitcache);
    Py_VISIT(self->first_loop);
    if (ct_traverse(&self->t, visit, arg) < 0) {
        return -1;
    }
    return fa_wrapper_traverse(op, visit, arg);
}

static int
memo_clear(PyObject *op)
{
    MemoObject *self = (MemoObject *)op;
    ct_buf trash;
    ct_buf_init(&trash);
    ct_clear(&self->t, &trash);
    ct_buf_flush(&trash);
    fa_wrapper_clear(op);
    Py_CLEAR(self->keyfunc);
    Py_CLEAR(self->timer);
    fa_clock_clear_refs(&self->clk);
    Py_CLEAR(self->rand);
    Py_CLEAR(self->maxsize_obj);
    Py_CLEAR(self->ttl_obj);
    Py_CLEAR(self->hitcache);
    Py_CLEAR(self->first_loop);
    return 0;
}

/* Memo(func, maxsize, ttl, typed, key, is_async, timer, jitter, alru): made by the decorators
 * in _compat_cache.py, which validate the arguments first. */
static PyObject *
memo_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    fa_state *st = fa_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    static char *kwlist[] = {"func", "maxsize", "ttl", "typed", "key", "is_async", "timer",
                             "jitter", "alru", NULL};
    PyObject *func, *maxsize = Py_None, *ttl = Py_None, *key = Py_None, *timer = Py_None,
             *jitter = Py_None;
    int typed = 0, is_async = 1, alru = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOpOpOOp:Memo", kwlist, &func, &maxsize,
                                     &ttl, &typed, &key, &is_async, &timer, &jitter, &alru)) {
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "the function must be callable");
        return NULL;
    }
    Py_ssize_t ms = -1;
    if (maxsize != Py_None) {
        ms = PyNumber_AsSsize_t(maxsize, NULL);  // clamps
        if (ms == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (ms < 0) {
            ms = 0;
        }
    }
    double t = 0.0, j = 0.0;
    if (ttl != Py_None && (t = PyFloat_AsDouble(ttl)) == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (jitter != Py_None && (j = PyFloat_AsDouble(jitter)) == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (isnan(t) || t < 0 || isnan(j) || j < 0) {
        PyErr_SetString(PyExc_ValueError, "ttl and jitter must be >= 0");
        return NULL;
    }
    PyObject *rand = NULL;
    if (jitter != Py_None && j > 0) {
        rand = fa_import_attr("random", "random");
        if (rand == NULL) {
            return NULL;
        }
    }
    MemoObject *self = (MemoObject *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        Py_XDECREF(rand);
        return NULL;
    }
    fa_wrapper_init((PyObject *)self, func, memo_vectorcall);
    self->st = st;
    self->has_ttl = ttl != Py_None;
    ct_init(&self->t, self->has_ttl, 0, self->has_ttl);
    self->keyfunc = key == Py_None ? NULL : Py_NewRef(key);
    self->timer = (timer == Py_None || timer == st->core.time_monotonic) ? NULL : Py_NewRef(timer);
    self->rand = rand;
    self->maxsize_obj = maxsize == Py_None ? Py_NewRef(Py_None) : PyLong_FromSsize_t(ms);
    self->ttl_obj = Py_NewRef(ttl);
    self->maxsize = ms;
    self->ttl = t;
    self->jitter = j;
    self->typed = typed;
    self->is_async = is_async;
    self->alru = alru;
    if (self->maxsize_obj == NULL
        || fa_wrapper_finish((PyObject *)self, is_async ? FA_WRAP_ASYNC : FA_WRAP_PLAIN) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
memo_descr_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(op);
    }
    MemoObject *self = (MemoObject *)op;
    MemoMethodObject *m = PyObject_GC_New(MemoMethodObject, self->st->memo.MemoCallType);
    if (m == NULL) {
        return NULL;
    }
    m->vectorcall = method_vectorcall;
    m->memo = (MemoObject *)Py_NewRef(op);
    m->self = Py_NewRef(obj);
    m->weakreflist = NULL;
    PyObject_GC_Track(m);
    return (PyObject *)m;
}

static PyObject *
memo_repr(PyObject *op)
{
    MemoObject *self = (MemoObject *)op;
    PyObject *name = fa_wrapper_qualname(self->func, self->func);  // new ref
    if (name == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("<%s %S at %p [hits:%llu, misses:%llu, size:%zd]>",
                                       self->alru ? "alru_cache" : "cached", name, op,
                                       self->hits, self->misses, self->t.used);
    Py_DECREF(name);
    return r;
}

/* Pickled by name, as functions and functools.lru_cache wrappers are. */
static PyObject *
memo_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyObject_GetAttrString(op, "__qualname__");
}

static PyObject *
memo_get_wrapped_func(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef(((MemoObject *)op)->func);
}

static PyObject *
memo_get_hits(PyObject *op, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(((MemoObject *)op)->hits);
}

static PyObject *
memo_get_misses(PyObject *op, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(((MemoObject *)op)->misses);
}

PyDoc_STRVAR(cache_info_doc, "cache_info($self, /)\n--\n\nCacheInfo(hits, misses, maxsize, "
             "currsize), as functools.lru_cache reports it; currsize counts computations in "
             "flight too.");
PyDoc_STRVAR(cache_clear_doc, "cache_clear($self, /)\n--\n\nForget every result and reset the "
             "counters. Computations in flight go on for their callers, unrecorded.");
PyDoc_STRVAR(cache_invalidate_doc, "cache_invalidate($self, /, *args, **kwargs)\n--\n\nForget "
             "the result for these arguments; True if there was one (or a computation).");
PyDoc_STRVAR(cache_contains_doc, "cache_contains($self, /, *args, **kwargs)\n--\n\nTrue if a "
             "result (or a computation in flight) is held for these arguments. Counts nothing.");
PyDoc_STRVAR(cache_parameters_doc, "cache_parameters($self, /)\n--\n\nThe parameters: maxsize, "
             "typed, ttl, the number of running tasks, closed.");
PyDoc_STRVAR(cache_close_doc, "cache_close($self, /, *, wait=False)\n--\n\nRefuse new calls "
             "and cancel the running computations (wait=True lets them finish); await the "
             "result to wait for them.");

static PyMethodDef memo_methods[] = {
    {"cache_info", memo_cache_info, METH_NOARGS, cache_info_doc},
    {"__reduce__", memo_reduce, METH_NOARGS, "Pickled by qualified name."},
    {"cache_clear", memo_cache_clear, METH_NOARGS, cache_clear_doc},
    {"cache_invalidate", (PyCFunction)(void (*)(void))memo_cache_invalidate,
     METH_FASTCALL | METH_KEYWORDS, cache_invalidate_doc},
    {"cache_contains", (PyCFunction)(void (*)(void))memo_cache_contains,
     METH_FASTCALL | METH_KEYWORDS, cache_contains_doc},
    {"cache_parameters", memo_cache_parameters, METH_NOARGS, cache_parameters_doc},
    {"cache_close", (PyCFunction)(void (*)(void))memo_cache_close, METH_FASTCALL | METH_KEYWORDS,
     cache_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef memo_getset[] = {
    FA_WRAPPER_GETSET
    {"_func", memo_get_wrapped_func, NULL, "The function whose results are cached.", NULL},
    {"hits", memo_get_hits, NULL, "Calls answered from the cache or by joining a computation.",
     NULL},
    {"misses", memo_get_misses, NULL, "Calls that started a computation.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot memo_slots[] = {
    {Py_tp_new, memo_new},
    {Py_tp_dealloc, fa_wrapper_dealloc},
    {Py_tp_traverse, memo_traverse},
    {Py_tp_clear, memo_clear},
    {Py_tp_repr, memo_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, memo_descr_get},
    {Py_tp_methods, memo_methods},
    {Py_tp_getset, memo_getset},
    {Py_tp_members, fa_wrapper_members},
    {Py_tp_doc, "A function with cached results: made by aiofast.cached and aiofast.alru_cache."},
    {0, NULL},
};

static PyType_Spec memo_spec = {
    .name = "aiofast._core.Memo",
    .basicsize = sizeof(MemoObject),
    .flags = FA_WRAPPER_TPFLAGS,
    .slots = memo_slots,
};

/* ------------------------------------------------------------------ bound methods */

static PyObject *
method_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    MemoMethodObject *m = (MemoMethodObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *r;
    if (nargsf & PY_VECTORCALL_ARGUMENTS_OFFSET) {
        /* the caller lets us use args[-1] (as bound methods do) */
        PyObject **newargs = (PyObject **)args - 1;
        PyObject *saved = newargs[0];
        newargs[0] = m->self;
        r = memo_vectorcall((PyObject *)m->memo, newargs, (size_t)(nargs + 1), kwnames);
        newargs[0] = saved;
        return r;
    }
    PyObject *small[8];
    PyObject **newargs = total + 1 <= 8 ? small
                         : PyMem_Malloc(sizeof(PyObject *) * (size_t)(total + 1));
    if (newargs == NULL) {
        return PyErr_NoMemory();
    }
    newargs[0] = m->self;
    memcpy(newargs + 1, args, sizeof(PyObject *) * (size_t)total);
    r = memo_vectorcall((PyObject *)m->memo, newargs, (size_t)(nargs + 1), kwnames);
    if (newargs != small) {
        PyMem_Free(newargs);
    }
    return r;
}

/* call fn(self, *args, **kwargs) with the instance prepended */
static PyObject *
method_forward(MemoMethodObject *m, fastcall_kw fn, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject **newargs = PyMem_Malloc(sizeof(PyObject *) * (size_t)(total + 1));
    if (newargs == NULL) {
        return PyErr_NoMemory();
    }
    newargs[0] = m->self;
    memcpy(newargs + 1, args, sizeof(PyObject *) * (size_t)total);
    PyObject *r = fn((PyObject *)m->memo, newargs, nargs + 1, kwnames);
    PyMem_Free(newargs);
    return r;
}

static PyObject *
method_cache_invalidate(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return method_forward((MemoMethodObject *)op, memo_cache_invalidate, args, nargs, kwnames);
}

static PyObject *
method_cache_contains(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return method_forward((MemoMethodObject *)op, memo_cache_contains, args, nargs, kwnames);
}

static PyObject *
method_getattro(PyObject *op, PyObject *name)
{
    PyObject *r = PyObject_GenericGetAttr(op, name);
    if (r != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return r;
    }
    PyErr_Clear();
    return PyObject_GetAttr((PyObject *)((MemoMethodObject *)op)->memo, name);
}

static PyObject *
method_get_doc(PyObject *op, void *Py_UNUSED(c))
{
    return PyObject_GetAttrString((PyObject *)((MemoMethodObject *)op)->memo, "__doc__");
}

static PyObject *
method_get_self(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef(((MemoMethodObject *)op)->self);
}

static PyObject *
method_get_func(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef((PyObject *)((MemoMethodObject *)op)->memo);
}

static PyObject *
method_repr(PyObject *op)
{
    MemoMethodObject *m = (MemoMethodObject *)op;
    return PyUnicode_FromFormat("<bound method %R of %R>", (PyObject *)m->memo, m->self);
}

FA_GC_REFS2(method, MemoMethodObject, memo, self)

static PyMethodDef method_methods[] = {
    {"cache_invalidate", (PyCFunction)(void (*)(void))method_cache_invalidate,
     METH_FASTCALL | METH_KEYWORDS, cache_invalidate_doc},
    {"cache_contains", (PyCFunction)(void (*)(void))method_cache_contains,
     METH_FASTCALL | METH_KEYWORDS, cache_contains_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef method_getset[] = {
    {"__doc__", method_get_doc, NULL, NULL, NULL},
    {"__self__", method_get_self, NULL, "The instance the method is bound to.", NULL},
    {"__func__", method_get_func, NULL, "The cached function.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef method_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(MemoMethodObject, vectorcall), Py_READONLY,
     NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(MemoMethodObject, weakreflist), Py_READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot method_slots[] = {
    {Py_tp_dealloc, fa_gc_tp_dealloc},
    {Py_tp_traverse, method_traverse},
    {Py_tp_clear, method_clear},
    {Py_tp_repr, method_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_getattro, method_getattro},
    {Py_tp_methods, method_methods},
    {Py_tp_getset, method_getset},
    {Py_tp_members, method_members},
    {0, NULL},
};

static PyType_Spec method_spec = {
    .name = "aiofast._core.MemoMethod",
    .basicsize = sizeof(MemoMethodObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = method_slots,
};

static PyType_Slot flight_slots[] = {
    {Py_tp_dealloc, flight_dealloc},
    {Py_tp_traverse, flight_traverse},
    {Py_tp_clear, flight_clear},
    {0, NULL},
};

static PyType_Spec flight_spec = {
    .name = "aiofast._core.Flight",
    .basicsize = sizeof(FlightObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = flight_slots,
};

int
fa_memo_init(PyObject *mod, fa_state *st)
{
    FA_INIT_NEEDS(st->engine.OpType);  // its calls are ops
    st->memo.CacheInfo = fa_import_attr("functools", "_CacheInfo");
    if (st->memo.CacheInfo == NULL) {
        return -1;
    }
    st->memo.kwd_mark = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (st->memo.kwd_mark == NULL) {
        return -1;
    }
    st->memo.AlruCacheLoopResetWarning = PyErr_NewExceptionWithDoc(
        "aiofast.AlruCacheLoopResetWarning",
        "Emitted once per alru_cache when it is called in a new event loop (and clears itself).",
        PyExc_UserWarning, NULL);
    if (st->memo.AlruCacheLoopResetWarning == NULL
        || PyModule_AddObjectRef(mod, "AlruCacheLoopResetWarning",
                                 st->memo.AlruCacheLoopResetWarning) < 0) {
        return -1;
    }
    if ((st->memo.MemoType = fa_add_type(mod, &memo_spec, NULL, NULL)) == NULL) {
        return -1;
    }
    st->memo.MemoCallType = fa_new_type(mod, &method_spec, NULL, NULL);
    if (st->memo.MemoCallType == NULL) {
        return -1;
    }
    st->memo.FlightType = fa_new_type(mod, &flight_spec, NULL, NULL);
    if (st->memo.FlightType == NULL) {
        return -1;
    }
    return 0;
}
