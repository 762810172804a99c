/*
 * tbshared.c: SharedTokenBucket, one token bucket for every process of the host that opens the
 * same name (TokenBucket(..., shared=name) makes one). Its state lives in a shared-memory
 * segment (shm.h), kind FA_SHM_KIND_BUCKET, configuration (rate, per, capacity).
 *
 * Model: GCRA, the generic cell rate algorithm. With T = per / rate seconds per token and
 * capacity C, the whole state is one 64-bit theoretical arrival time `tat` (nanoseconds on
 * CLOCK_MONOTONIC, the one clock every process of the host reads). The tokens available at
 * `now` are C - max(0, tat - now) / T: tat <= now is a full bucket. Taking n tokens at now moves
 * tat to max(tat, now) + cost(n) (cost(n) = ceil(n * T) ns), allowed when the new tat is at
 * most tau = floor(C * T) ns ahead of now. Every change is one compare-and-swap of tat: no lock
 * is ever held, so a process killed at any instruction leaves a consistent bucket (what it had
 * reserved and not used is spent; nothing else).
 *
 * Waiting is reservation: an acquire that cannot take its tokens now moves tat anyway (so that
 * every later request, in any process, comes after it), and sleeps with one loop.call_at until
 * its reserved instant, tat - tau: first come, first served across processes, in the order of
 * the compare-and-swaps, with no cross-process wake-up. A reservation given up (cancelled, or
 * its loop failing) gives its tokens back only if it is still the last one (tat equals what it
 * set: one compare-and-swap); if anything was reserved after it, its tokens are spent. An
 * acquire with a timeout that its reservation could not meet does not reserve: it sleeps until
 * its deadline, tries once more, and raises TimeoutError (having taken nothing) unless the
 * tokens are there then.
 *
 * Invariants (process-local):
 * - waiters: this process's ops sleeping on a reservation (TBS_RESERVED) or on a deadline
 *   (TBS_DOOMED); op->arg is then (timeout or None, target instant in ns, timer handle).
 * - the segment stays mapped as long as the object lives.
 * Checked in debug builds after every mutation (sharedbucket_check).
 */
#include "tokenbucket.h"
#include "shm.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#define TBS_RESERVED 0x100  /* waits for its reserved instant; its tokens are taken */
#define TBS_DOOMED 0x200    /* a timeout its reservation could not meet: waits for the deadline */
#define TBS_LAYOUT 1u       /* the layout of tbs_config and tbs_payload */
#define TBS_TAU_MAX ((int64_t)1 << 62)

typedef struct {
    _Atomic int64_t tat;   /* the theoretical arrival time, ns on CLOCK_MONOTONIC */
    char pad[56];          /* a cache line of its own */
} tbs_payload;

typedef struct {
    uint32_t layout;       /* TBS_LAYOUT */
    uint32_t zero;
    double rate;
    double per;
    double capacity;
} tbs_config;

typedef struct {
    FA_TB_HEAD             /* st, waiters, cache, weakreflist, rate/per/capacity (tokenbucket.h) */
    _Atomic int64_t *tat;  /* in the segment */
    double ns_per_token;   /* T, in ns */
    int64_t tau;           /* floor(C * T) */
    int64_t cost1;         /* cost(1) */
    PyObject *name;
    PyObject *clock;       /* private (tests): a callable returning the time in ns, or NULL */
    PyObject *wake_cb;     /* the timers' callback: sets a future's result unless it is done */
    fa_shm shm;
} SharedBucket;

#if FA_DEBUG
static const fa_opkind tbs_acquire_kind;
static const fa_opkind tbs_call_kind;

static void
sharedbucket_check(SharedBucket *self)
{
    FA_CHECK(self->shm.base == NULL || self->tat == (_Atomic int64_t *)self->shm.payload,
             "SharedTokenBucket %p: tat %p, payload %p", (void *)self, (void *)self->tat,
             self->shm.payload);
    FA_CHECK(self->tau >= 0 && self->tau < TBS_TAU_MAX && self->cost1 >= 1,
             "SharedTokenBucket %p: tau %lld, cost(1) %lld", (void *)self,
             (long long)self->tau, (long long)self->cost1);
    fa_waitq_check(&self->waiters);
    Py_ssize_t n = 0;
    for (FaOp *op = self->waiters.head; op != NULL && n < FA_WAITQ_CHECK_MAX;
         op = op->next, n++) {
        FA_CHECK(op->owner == (PyObject *)self
                     && (op->kind == &tbs_acquire_kind || op->kind == &tbs_call_kind),
                 "SharedTokenBucket %p: waiter %p (%s) of %p", (void *)self, (void *)op,
                 op->kind->name, (void *)op->owner);
        /* (an op that is linking itself, RUNNING, may not have its tuple yet) */
        FA_CHECK(((op->flags & TBS_RESERVED) != 0) != ((op->flags & TBS_DOOMED) != 0)
                     && (op->state != FA_OP_WAITING
                         || (op->arg != NULL && PyTuple_CheckExact(op->arg)
                             && PyTuple_GET_SIZE(op->arg) == 3)),
                 "SharedTokenBucket %p: waiter %p flags %#x, arg %p", (void *)self, (void *)op,
                 (unsigned)op->flags, (void *)op->arg);
    }
}
#endif
#define FA_CONSISTENT sharedbucket_check

/* ------------------------------------------------------------------ the arithmetic */

static int
tbs_now_slow(SharedBucket *self, int64_t *now)
{
    PyObject *clock = Py_NewRef(self->clock);
    PyObject *r = PyObject_CallNoArgs(clock);  // Beware: Python code
    Py_DECREF(clock);
    if (r == NULL) {
        return -1;
    }
    long long v = PyLong_Check(r) ? PyLong_AsLongLong(r) : -1;
    if (!PyLong_Check(r) || (v == -1 && PyErr_Occurred()) || v < 0 || v > TBS_TAU_MAX) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "the bucket's clock must return an int of "
                         "nanoseconds from 0 to 2**62, got %R", r);
        }
        Py_DECREF(r);
        return -1;
    }
    Py_DECREF(r);
    *now = (int64_t)v;
    return 0;
}

/* The host's clock (CLOCK_MONOTONIC), in ns; or the test clock. 0 or -1. */
static inline int
tbs_now(SharedBucket *self, int64_t *now)
{
    if (FA_LIKELY(self->clock == NULL)) {
        *now = fa_shm_now_ns();
        return 0;
    }
    return tbs_now_slow(self, now);
}

/* What n tokens cost, in ns of tat (0 < n <= capacity, checked by the caller). */
static inline int64_t
tbs_cost(SharedBucket *self, double n)
{
    if (FA_LIKELY(n == 1.0)) {
        return self->cost1;
    }
    double x = ceil(n * self->ns_per_token);
    return x < 1 ? 1 : (int64_t)x;  // n <= C, so x <= ceil(C * T) < 2**62 + 1
}

/* Take `cost` now if the bucket allows: 1 taken, 0 not. */
static inline int
tbs_take_now(SharedBucket *self, int64_t now, int64_t cost)
{
    int64_t old = atomic_load_explicit(self->tat, memory_order_relaxed);
    for (;;) {
        int64_t base = old > now ? old : now;
        int64_t tat = base + cost;
        if (tat - now > self->tau) {
            return 0;
        }
        if (atomic_compare_exchange_weak_explicit(self->tat, &old, tat, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            return 1;
        }
    }
}

/* Give back a reservation that set tat to `reserved`, if it is still the last one. 1 given
 * back, 0 spent (something was reserved after it). */
static int
tbs_give_back(SharedBucket *self, int64_t reserved, int64_t cost)
{
    int64_t expected = reserved;
    return atomic_compare_exchange_strong_explicit(self->tat, &expected, reserved - cost,
                                                   memory_order_acq_rel, memory_order_relaxed);
}

/* The tokens available at now (>= 0; 0 while reservations are pending). */
static double
tbs_level(SharedBucket *self, int64_t now)
{
    int64_t tat = atomic_load_explicit(self->tat, memory_order_relaxed);
    if (tat <= now) {
        return self->capacity;
    }
    double lv = self->capacity - (double)(tat - now) / self->ns_per_token;
    return lv > 0 ? lv : 0.0;
}

/* ------------------------------------------------------------------ waiting */

static PyObject *
tbs_wake(PyObject *op, PyObject *fut)
{
    SharedBucket *self = (SharedBucket *)op;
    int done = fa_fut_done(self->st, fut);  // Beware: Python code for foreign futures
    if (done < 0) {
        return NULL;
    }
    if (!done && fa_fut_set_result(self->st, fut, Py_None) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef tbs_wake_def = {"_wake", tbs_wake, METH_O, NULL};

/* Sleep until `target` (ns on the bucket's clock; now: the time read for it), on the running
 * loop: a future, and one loop.call_at at the instant the loop's clock gives for target. op's
 * flags say what it waits for; timeout (borrowed, or NULL) is kept for the message. On error,
 * nothing is linked or scheduled (the caller undoes any reservation).
 * Beware: loop code (time, create_future, call_at). */
static PySendResult
tbs_sleep(FaOp *op, int64_t now, int64_t target, PyObject *timeout, PyObject **res)
{
    SharedBucket *self = (SharedBucket *)op->owner;
    fa_state *st = self->st;
    PyObject *loop = fa_running_loop(st);  // new ref
    if (loop == NULL) {
        return PYGEN_ERROR;
    }
    PyObject *when = NULL, *tgt = NULL, *h = NULL, *arg = NULL;
    /* the loop's time for target: the same clock as the bucket's when the loop is asyncio's
     * own, but read through the loop in every case (uvloop's, a patched or virtual one) */
    double loop_now = fa_loop_time(st, loop);
    if (loop_now == -1.0 && PyErr_Occurred()) {
        goto error;
    }
    if ((when = PyFloat_FromDouble(loop_now + (double)(target - now) / 1e9)) == NULL
        || (tgt = PyLong_FromLongLong(target)) == NULL) {
        goto error;
    }
    PySendResult r = fa_op_wait_on(op, loop, &self->waiters, res);  // Beware: create_future
    if (r != PYGEN_NEXT) {
        goto error;
    }
    if (self->wake_cb == NULL
        && (self->wake_cb = PyCFunction_NewEx(&tbs_wake_def, (PyObject *)self, NULL)) == NULL) {
        goto unlink;
    }
    PyObject *args[4] = {loop, when, self->wake_cb, op->fut};
    h = PyObject_VectorcallMethod(st->core.str_call_at, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                  NULL);  // Beware
    if (h == NULL) {
        goto unlink;
    }
    arg = PyTuple_Pack(3, timeout ? timeout : Py_None, tgt, h);
    if (arg == NULL) {
        PyObject *c = PyObject_CallMethodNoArgs(h, st->core.str_cancel);
        Py_XDECREF(c);
        goto unlink;
    }
    Py_XSETREF(op->arg, arg);
    Py_DECREF(h);
    Py_DECREF(tgt);
    Py_DECREF(when);
    Py_DECREF(loop);
    FA_ASSERT_CONSISTENT(self);
    return PYGEN_NEXT;
unlink:
    if (op->queue == &self->waiters) {
        fa_waitq_unlink(op);
    }
    Py_CLEAR(*res);
error:
    Py_XDECREF(h);
    Py_XDECREF(tgt);
    Py_XDECREF(when);
    Py_DECREF(loop);
    return PYGEN_ERROR;
}

static PySendResult
tbs_timed_out(FaOp *op, PyObject *timeout)
{
    PyObject *n = PyFloat_FromDouble(op->num);
    if (n != NULL) {
        PyErr_Format(op->st->core.TimeoutError, "acquire(%R) timed out after %R s", n, timeout);
        Py_DECREF(n);
    }
    return PYGEN_ERROR;
}

/* Take op->num tokens now (PYGEN_RETURN, *res = None), or reserve them and sleep until they
 * are ours (PYGEN_NEXT); op->arg: the timeout (a float) or NULL. */
static PySendResult
tbs_take_or_wait(FaOp *op, PyObject **res)
{
    SharedBucket *self = (SharedBucket *)op->owner;
    int64_t now;
    if (tbs_now(self, &now) < 0) {
        return PYGEN_ERROR;
    }
    int64_t cost = tbs_cost(self, op->num);
    int64_t old = atomic_load_explicit(self->tat, memory_order_relaxed);
    int64_t tat, target;
    for (;;) {
        int64_t base = old > now ? old : now;
        tat = base + cost;
        if (tat - now <= self->tau) {
            if (atomic_compare_exchange_weak_explicit(self->tat, &old, tat, memory_order_acq_rel,
                                                      memory_order_relaxed)) {
                *res = Py_NewRef(Py_None);
                return PYGEN_RETURN;
            }
            continue;
        }
        /* it must wait until tat - tau */
        target = tat - self->tau;
        if (op->arg != NULL) {
            double timeout = PyFloat_AS_DOUBLE(op->arg);
            if (timeout <= 0) {
                PyErr_Format(op->st->core.TimeoutError, "acquire() timed out after %R s: the tokens "
                             "were not available at once", op->arg);
                return PYGEN_ERROR;
            }
            if ((double)(target - now) > timeout * 1e9) {
                /* its reservation could not meet the deadline: reserve nothing */
                op->flags |= TBS_DOOMED;
                target = now + (int64_t)(timeout * 1e9);
                break;
            }
        }
        if (atomic_compare_exchange_weak_explicit(self->tat, &old, tat, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            op->flags |= TBS_RESERVED;
            break;
        }
    }
    PyObject *timeout = op->arg ? Py_NewRef(op->arg) : NULL;
    PySendResult r = tbs_sleep(op, now, target, timeout, res);
    Py_XDECREF(timeout);
    if (r == PYGEN_ERROR) {
        if (op->flags & TBS_RESERVED) {
            (void)tbs_give_back(self, tat, cost);
        }
        op->flags &= ~(TBS_RESERVED | TBS_DOOMED);
    }
    return r;
}

/* Woken: the reservation's instant has come (sleep again if the loop ran the timer early on
 * the bucket's clock), or the deadline: one more try, else TimeoutError. */
static PySendResult
tbs_acquire_resume(FaOp *op, PyObject *Py_UNUSED(value), PyObject **res)
{
    SharedBucket *self = (SharedBucket *)op->owner;
    if (op->queue == &self->waiters) {
        fa_waitq_unlink(op);
    }
    PyObject *arg = op->arg;  // owned from here
    op->arg = NULL;
    FA_ASSERT_CONSISTENT(self);
    if (arg == NULL || !(op->flags & (TBS_RESERVED | TBS_DOOMED))) {
        Py_XDECREF(arg);
        PyErr_SetString(PyExc_RuntimeError, "SharedTokenBucket waiter resumed without waiting");
        return PYGEN_ERROR;
    }
    PyObject *timeout = PyTuple_GET_ITEM(arg, 0);
    int64_t target = PyLong_AsLongLong(PyTuple_GET_ITEM(arg, 1));
    int64_t now;
    PySendResult r;
    if (tbs_now(self, &now) < 0) {
        r = PYGEN_ERROR;
    }
    else if (now < target) {
        r = tbs_sleep(op, now, target, timeout == Py_None ? NULL : timeout, res);
    }
    else if (op->flags & TBS_RESERVED) {
        *res = Py_NewRef(Py_None);
        r = PYGEN_RETURN;
    }
    else if (tbs_take_now(self, now, tbs_cost(self, op->num))) {
        *res = Py_NewRef(Py_None);
        r = PYGEN_RETURN;
    }
    else {
        r = tbs_timed_out(op, timeout);
    }
    if (r == PYGEN_ERROR && (op->flags & TBS_RESERVED)) {
        /* failing after its instant came (the clock, or sleeping again): not taken */
        (void)tbs_give_back(self, target + self->tau, tbs_cost(self, op->num));
    }
    if (r != PYGEN_NEXT) {
        op->flags &= ~(TBS_RESERVED | TBS_DOOMED);
    }
    Py_DECREF(arg);
    return r;
}

/* An exception reached the wait (cancellation, close): leave, cancel the timer, and give the
 * reservation back if it is still the last one. */
static int
tbs_wait_exc(FaOp *op, PyObject *Py_UNUSED(exc))
{
    SharedBucket *self = (SharedBucket *)op->owner;
    if (op->queue == &self->waiters) {
        fa_waitq_unlink(op);
    }
    PyObject *arg = op->arg;  // owned from here
    op->arg = NULL;
    int reserved = (op->flags & TBS_RESERVED) != 0;
    op->flags &= ~(TBS_RESERVED | TBS_DOOMED);
    FA_ASSERT_CONSISTENT(self);
    if (arg == NULL || !PyTuple_CheckExact(arg) || PyTuple_GET_SIZE(arg) != 3) {
        Py_XDECREF(arg);
        return 0;
    }
    if (reserved) {
        int64_t target = PyLong_AsLongLong(PyTuple_GET_ITEM(arg, 1));
        (void)tbs_give_back(self, target + self->tau, tbs_cost(self, op->num));
    }
    /* commit done; Beware: the handle's cancel() is loop code */
    PyObject *r = PyObject_CallMethodNoArgs(PyTuple_GET_ITEM(arg, 2), self->st->core.str_cancel);
    Py_DECREF(arg);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PySendResult
tbs_acquire_start(FaOp *op, PyObject **res)
{
    return tbs_take_or_wait(op, res);
}

static const fa_opkind tbs_acquire_kind = {
    "SharedTokenBucket.acquire", tbs_acquire_start, tbs_acquire_resume, tbs_wait_exc, NULL,
};

static const fa_opkind tbs_aexit_kind = {
    "SharedTokenBucket.__aexit__", fa_op_none_start, fa_op_none_resume, NULL, NULL,
};

/* RateLimited calls on a shared bucket: one token, then the function */
static PySendResult
tbs_call_start(FaOp *op, PyObject **res)
{
    return fa_tb_call_start(op, res, tbs_take_or_wait);
}

static PySendResult
tbs_call_resume(FaOp *op, PyObject *value, PyObject **res)
{
    return fa_tb_call_resume(op, value, res, tbs_acquire_resume);
}

static int
tbs_call_exc(FaOp *op, PyObject *exc)
{
    return fa_tb_call_exc(op, exc, tbs_wait_exc);
}

static const fa_opkind tbs_call_kind = {
    "RateLimited.__call__", tbs_call_start, tbs_call_resume, tbs_call_exc, NULL,
};

/* ------------------------------------------------------------------ methods */

static PyObject *
tbs_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    SharedBucket *self = (SharedBucket *)op;
    double n = 1.0;
    PyObject *timeout = NULL;
    if (FA_UNLIKELY(nargs != 0 || kwnames != NULL)
        && fa_tb_acquire_args((fa_tb_head *)self, args, nargs, kwnames, &n, &timeout) < 0) {
        return NULL;
    }
    FaOp *o = fa_op_cached(self->st, &self->cache, &tbs_acquire_kind, op);
    if (o == NULL) {
        Py_XDECREF(timeout);
        return NULL;
    }
    o->num = n;
    Py_XSETREF(o->arg, timeout);
    return (PyObject *)o;
}

static PyObject *
tbs_aenter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    SharedBucket *self = (SharedBucket *)op;
    FaOp *o = fa_op_cached(self->st, &self->cache, &tbs_acquire_kind, op);
    if (o != NULL) {
        o->num = 1.0;
    }
    return (PyObject *)o;
}

static PyObject *
tbs_aexit(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    return fa_tb_aexit(op, nargs, &tbs_aexit_kind);
}

/* try_acquire / has_capacity: the count (default 1) and the time; 0 or -1. */
static inline int
tbs_args(SharedBucket *self, const char *fname, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames, int64_t *cost, int64_t *now)
{
    if (FA_UNLIKELY(nargs != 0 || kwnames != NULL)) {
        double n;
        if (fa_tb_tokens_args((fa_tb_head *)self, fname, args, nargs, kwnames, &n) < 0) {
            return -1;
        }
        *cost = tbs_cost(self, n);
    }
    else {
        *cost = self->cost1;
    }
    return tbs_now(self, now);
}

static PyObject *
tbs_try_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    SharedBucket *self = (SharedBucket *)op;
    int64_t cost, now;
    if (tbs_args(self, "try_acquire", args, nargs, kwnames, &cost, &now) < 0) {
        return NULL;
    }
    return PyBool_FromLong(tbs_take_now(self, now, cost));
}

static PyObject *
tbs_has_capacity(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    SharedBucket *self = (SharedBucket *)op;
    int64_t cost, now;
    if (tbs_args(self, "has_capacity", args, nargs, kwnames, &cost, &now) < 0) {
        return NULL;
    }
    int64_t tat = atomic_load_explicit(self->tat, memory_order_relaxed);
    int64_t base = tat > now ? tat : now;
    return PyBool_FromLong(base + cost - now <= self->tau);
}

static PyObject *
tbs_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    return fa_tb_decorate(((SharedBucket *)op)->st, op, args, kwargs, &tbs_call_kind);
}

/* _reserved(): the theoretical arrival time now in the segment, in ns. For tests. */
static PyObject *
tbs_private_tat(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    SharedBucket *self = (SharedBucket *)op;
    return PyLong_FromLongLong(atomic_load_explicit(self->tat, memory_order_relaxed));
}

/* ------------------------------------------------------------------ construction */

static PyObject *
tbs_config_repr(const void *config)
{
    const tbs_config *c = (const tbs_config *)config;
    if (c->layout != TBS_LAYOUT) {
        return PyUnicode_FromFormat("a configuration of layout %u", (unsigned)c->layout);
    }
    PyObject *rate = fa_tb_num_str(c->rate), *per = fa_tb_num_str(c->per),
             *cap = fa_tb_num_str(c->capacity), *r = NULL;
    if (rate && per && cap) {
        r = PyUnicode_FromFormat("(rate=%U, per=%U, capacity=%U)", rate, per, cap);
    }
    Py_XDECREF(rate);
    Py_XDECREF(per);
    Py_XDECREF(cap);
    return r;
}

static PyObject *
tbs_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    fa_state *st = fa_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    static char *kwlist[] = {"rate", "per", "capacity", "initial", "shared", "_clock", NULL};
    PyObject *rate_o, *per_o = NULL, *cap_o = Py_None, *init_o = Py_None, *name = Py_None,
             *clock = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$OOOO:SharedTokenBucket", kwlist,
                                     &rate_o, &per_o, &cap_o, &init_o, &name, &clock)) {
        return NULL;
    }
    if (name == Py_None) {
        PyErr_SetString(PyExc_TypeError, "SharedTokenBucket() needs shared=name, the name every "
                        "process opens the bucket by");
        return NULL;
    }
    if (clock != Py_None && !PyCallable_Check(clock)) {
        PyErr_SetString(PyExc_TypeError, "_clock must be a callable returning nanoseconds");
        return NULL;
    }
    fa_tb_config c;
    if (fa_tb_config_parse(rate_o, per_o, cap_o, init_o, &c) < 0) {
        return NULL;
    }
    double T = c.per * 1e9 / c.rate;
    double tau = floor(c.capacity * T);
    if (!(tau < (double)TBS_TAU_MAX) || !isfinite(T)) {
        PyErr_Format(PyExc_ValueError, "a shared bucket counts in nanoseconds up to 2**62: "
                     "capacity * per / rate must be below 146 years, got capacity %R, per %R, "
                     "rate %R", c.cap_obj, per_o ? per_o : Py_None, rate_o);
        fa_tb_config_release(&c);
        return NULL;
    }
    SharedBucket *self = (SharedBucket *)tp->tp_alloc(tp, 0);  // zeroed
    if (self == NULL) {
        fa_tb_config_release(&c);
        return NULL;
    }
    self->st = st;
    fa_tb_head_configure((fa_tb_head *)self, &c);
    self->ns_per_token = T;
    self->tau = (int64_t)tau;
    double c1 = ceil(T);
    self->cost1 = c1 < 1 ? 1 : (int64_t)c1;
    self->name = Py_NewRef(name);
    self->clock = clock == Py_None ? NULL : Py_NewRef(clock);
    tbs_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.layout = TBS_LAYOUT;
    cfg.rate = c.rate;
    cfg.per = c.per;
    cfg.capacity = c.capacity;
    if (fa_shm_open(name, FA_SHM_KIND_BUCKET, &cfg, sizeof(cfg), sizeof(tbs_payload),
                    tbs_config_repr, &self->shm) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->tat = &((tbs_payload *)self->shm.payload)->tat;
    if (self->shm.created) {
        /* the first opener: `initial` tokens now; a later opener's `initial` is ignored (the
         * bucket is what the processes using it made it) */
        int64_t now;
        if (tbs_now(self, &now) < 0) {
            now = fa_shm_now_ns();
            PyErr_Clear();  // publish anyway: a segment never published would be a dead one
        }
        double deficit = ceil((c.capacity - c.initial) * T);
        atomic_store_explicit(self->tat, now + (int64_t)deficit, memory_order_relaxed);
        fa_shm_publish(&self->shm);
    }
    FA_ASSERT_CONSISTENT(self);
    return (PyObject *)self;
}

static int
tbs_traverse(PyObject *op, visitproc visit, void *arg)
{
    SharedBucket *self = (SharedBucket *)op;
    Py_VISIT(self->name);
    Py_VISIT(self->clock);
    Py_VISIT(self->wake_cb);
    return fa_tb_head_traverse(op, visit, arg);
}

static int
tbs_clear(PyObject *op)
{
    SharedBucket *self = (SharedBucket *)op;
    fa_tb_head_clear(op);
    Py_CLEAR(self->name);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->wake_cb);
    return 0;
}

static void
tbs_dealloc(PyObject *op)
{
    SharedBucket *self = (SharedBucket *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    tbs_clear(op);
    fa_shm_close(&self->shm);  // nothing can use it any more: no op holds us
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------ attributes and repr */

static PyObject *
tbs_get_tokens(PyObject *op, void *Py_UNUSED(c))
{
    SharedBucket *self = (SharedBucket *)op;
    int64_t now;
    if (tbs_now(self, &now) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(tbs_level(self, now));
}

static PyObject *
tbs_get_shared(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef(((SharedBucket *)op)->name);
}

static PyObject *
tbs_repr(PyObject *op)
{
    SharedBucket *self = (SharedBucket *)op;
    int64_t now;
    double level = 0;
    if (tbs_now(self, &now) < 0) {
        PyErr_Clear();
    }
    else {
        level = tbs_level(self, now);
    }
    return fa_tb_repr(op, level, self->name);
}

/* ------------------------------------------------------------------ type */

PyDoc_STRVAR(tbs_doc,
"SharedTokenBucket(rate, per=1.0, *, capacity=None, initial=None, shared)\n--\n\n"
"One token bucket for every process of the host that opens the same `shared` name (what\n"
"TokenBucket(..., shared=name) returns). The first opener creates it with its configuration\n"
"and `initial` tokens; a later opener must give the same rate, per and capacity (else\n"
"ValueError naming both) and its `initial` is ignored. Waiters are served in the order they\n"
"asked, across processes. aiofast.shared_unlink(name) removes it.");
PyDoc_STRVAR(tbs_acquire_doc, "acquire($self, /, tokens=1, timeout=None)\n--\n\n"
"Take `tokens` now, or reserve them and sleep until they are ours (first come, first served\n"
"across processes). A reservation given up (cancelled) is returned to the bucket only if\n"
"nothing was reserved after it; otherwise its tokens are spent. With a timeout that the\n"
"reservation could not meet, nothing is reserved: TimeoutError at the deadline unless the\n"
"tokens are there then. Returns None.");
PyDoc_STRVAR(tbs_try_acquire_doc, "try_acquire($self, /, tokens=1)\n--\n\n"
"Take `tokens` if they are available now (nothing reserved ahead of them); never waits.\n"
"Returns a bool.");
PyDoc_STRVAR(tbs_has_capacity_doc, "has_capacity($self, /, tokens=1)\n--\n\n"
"True if acquire(tokens) would finish at once.");
PyDoc_STRVAR(tbs_aenter_doc, "__aenter__($self, /)\n--\n\nacquire(1); returns None.");
PyDoc_STRVAR(tbs_aexit_doc, "__aexit__($self, exc_type, exc, tb)\n--\n\nNothing: the token "
             "is spent.");
PyDoc_STRVAR(tbs_tat_doc, "_tat($self, /)\n--\n\nThe theoretical arrival time in the segment, "
             "in ns. For tests.");

static PyMethodDef tbs_async_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))tbs_acquire, METH_FASTCALL | METH_KEYWORDS,
     tbs_acquire_doc},
    {"__aenter__", tbs_aenter, METH_NOARGS, tbs_aenter_doc},
    {"__aexit__", (PyCFunction)(void (*)(void))tbs_aexit, METH_FASTCALL, tbs_aexit_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef tbs_methods[] = {
    {"try_acquire", (PyCFunction)(void (*)(void))tbs_try_acquire, METH_FASTCALL | METH_KEYWORDS,
     tbs_try_acquire_doc},
    {"has_capacity", (PyCFunction)(void (*)(void))tbs_has_capacity,
     METH_FASTCALL | METH_KEYWORDS, tbs_has_capacity_doc},
    {"_tat", tbs_private_tat, METH_NOARGS, tbs_tat_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tbs_getset[] = {
    {"tokens", tbs_get_tokens, NULL, "The tokens available now (a float; 0 while reservations "
     "are pending).", NULL},
    {"waiting", fa_tb_get_waiting, NULL, "The number of this process's tasks waiting in "
     "acquire().", NULL},
    FA_TB_GETSET
    {"shared", tbs_get_shared, NULL, "The name the processes share the bucket by.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef tbs_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(SharedBucket, weakreflist), Py_READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot tbs_slots[] = {
    {Py_tp_new, tbs_new},
    {Py_tp_dealloc, tbs_dealloc},
    {Py_tp_traverse, tbs_traverse},
    {Py_tp_clear, tbs_clear},
    {Py_tp_repr, tbs_repr},
    {Py_tp_call, tbs_call},
    {Py_tp_methods, tbs_methods},
    {Py_tp_getset, tbs_getset},
    {Py_tp_members, tbs_members},
    {Py_tp_doc, (void *)tbs_doc},
    {0, NULL},
};

static PyType_Spec tbs_spec = {
    .name = "aiofast.SharedTokenBucket",
    .basicsize = sizeof(SharedBucket),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = tbs_slots,
};

int
fa_tbshared_init(PyObject *mod, fa_state *st)
{
    if ((st->tokenbucket.SharedTokenBucketType =
             fa_add_type(mod, &tbs_spec, NULL, "SharedTokenBucket")) == NULL
        || fa_methods_add(st, st->tokenbucket.SharedTokenBucketType, tbs_async_methods) < 0) {
        return -1;
    }
    return 0;
}
