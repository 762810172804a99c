/*
 * semaphore.c: Semaphore, BoundedSemaphore, Lock and Event, drop-ins for asyncio's.
 *
 * The four share one struct (FaLock). Their algorithms are asyncio's (Lib/asyncio/locks.py of
 * the Python we are built for): FIFO fairness, permits handed off at wake time
 * (Semaphore), the baton passed on by a woken-then-cancelled waiter, the 3.13 Semaphore wake-all
 * rule under FA_PY313. What differs is the waiter structure: an intrusive list of the waiting
 * operations (op.h) instead of a deque of futures, so a cancelled waiter leaves in O(1).
 *
 * Invariants:
 * - waiters holds exactly the ops suspended in acquire()/wait() on this object, in arrival order;
 *   each op removes itself when it resumes (success, cancellation or close), never anyone else.
 * - an op has FA_OPF_WOKEN iff this object called set_result on its future (done, not cancelled).
 * - value and bound are exact integers below 2**53 when value_is_int (doubles keep asyncio's
 *   float semantics for Semaphore(1.5) as well).
 * - Unless `unchecked` (the user wrote _value/_locked, bypassed the bound with
 *   Semaphore.release(bsem), over-released a BoundedSemaphore while a permit was in flight to a
 *   woken waiter (asyncio's check cannot see that), re-ran __init__ with waiters pending, or a
 *   subclass overrides acquire/release/locked, all of which asyncio allows): an integer
 *   Semaphore's value is >= 0,
 *   a BoundedSemaphore's value <= its bound, and a Lock has at most one woken waiter, and none
 *   while it is locked (the wake-up reserves the lock for that waiter).
 * All of these are checked after every mutation in debug builds (falock_check, FA_CONSISTENT).
 */
#include "op.h"
#include "semaphore.h"

enum { FA_SEM = 0, FA_BSEM, FA_LOCK, FA_EVENT };

/* methods a subclass overrides (then asyncio's dispatch through self is honoured) */
#define OVR_ACQUIRE 0x1
#define OVR_RELEASE 0x2
#define OVR_LOCKED 0x4
#define OVR_WAKE 0x8       /* Lock._wake_up_first / Semaphore._wake_up_next */
#define OVR_GET_LOOP 0x10  /* _get_loop */

#define OPF_RETNONE 0x100  /* __aenter__: return None instead of True */

typedef struct {
    PyObject_HEAD
    fa_state *st;
    fa_waitq waiters;
    PyObject *loop;        /* _loop: NULL/None until the first wait binds it */
    FaOp *cache;           /* a reusable op for the uncontended path */
    PyObject *aenter;      /* cached bound __aenter__ / __aexit__ (op.h, special methods) */
    PyObject *aexit;
    PyObject *weakreflist;
    double value;          /* Semaphore: _value; Event: 0/1 */
    double bound;          /* BoundedSemaphore: _bound_value */
    int value_is_int;
    int bound_is_int;
    int locked;            /* Lock: _locked */
    int family;            /* FA_SEM, FA_BSEM, FA_LOCK, FA_EVENT */
    int ovr;               /* OVR_* for subclasses */
    int waiters_made;      /* asyncio's _waiters is a deque, not None (Lock, Semaphore) */
    int unchecked;         /* the counting invariants above no longer apply (see the top) */
} FaLock;

/* ------------------------------------------------------------------ debug invariants */

#if FA_DEBUG
static const fa_opkind sem_acquire_kind;
static const fa_opkind lock_acquire_kind;
static const fa_opkind event_wait_kind;

static void
falock_check(FaLock *self)
{
    static const char *const names[] = {"Semaphore", "BoundedSemaphore", "Lock", "Event"};
    FA_CHECK(self->family >= FA_SEM && self->family <= FA_EVENT, "%p: family %d", (void *)self,
             self->family);
    const char *name = names[self->family];
    fa_waitq_check(&self->waiters);
    const fa_opkind *kind = self->family == FA_LOCK ? &lock_acquire_kind
                            : self->family == FA_EVENT ? &event_wait_kind : &sem_acquire_kind;
    Py_ssize_t woken = 0;
    for (FaOp *op = self->waiters.head; op != NULL; op = op->next) {
        if (fa_op_is_foreign(op)) {
            /* an object appended through the _waiters view: woken, never driven or flagged */
            FA_CHECK(op->owner == NULL && op->state == FA_OP_INIT && op->flags == 0,
                     "%s %p: appended node %p has owner %p, state %d, flags %#x", name,
                     (void *)self, (void *)op, (void *)op->owner, op->state,
                     (unsigned)op->flags);
            continue;
        }
        FA_CHECK(op->owner == (PyObject *)self, "%s %p: waiter %p belongs to %p", name,
                 (void *)self, (void *)op, (void *)op->owner);
        FA_CHECK(op->kind == kind, "%s %p: waiter %p is a %s()", name, (void *)self, (void *)op,
                 op->kind->name);
        woken += (op->flags & FA_OPF_WOKEN) != 0;
    }
    FA_CHECK(self->waiters.len == 0 || self->waiters_made,
             "%s %p: %zd waiters but _waiters is None", name, (void *)self, self->waiters.len);
    FA_CHECK(self->cache == NULL || Py_IS_TYPE(self->cache, self->st->engine.OpType),
             "%s %p: cache %p is not an op", name, (void *)self, (void *)self->cache);
    switch (self->family) {
    case FA_SEM:
    case FA_BSEM:
        FA_CHECK(isfinite(self->value), "%s %p: value %g", name, (void *)self, self->value);
        FA_CHECK(!self->value_is_int
                 || (self->value == floor(self->value) && fabs(self->value) <= 9007199254740992.0),
                 "%s %p: integer value %.17g", name, (void *)self, self->value);
        FA_CHECK(self->locked == 0, "%s %p: locked %d", name, (void *)self, self->locked);
        if (self->family == FA_BSEM) {
            FA_CHECK(isfinite(self->bound) && self->bound >= 0
                     && (!self->bound_is_int || self->bound == floor(self->bound)),
                     "%s %p: bound %.17g", name, (void *)self, self->bound);
        }
        if (!self->unchecked) {
            FA_CHECK(!self->value_is_int || self->value >= 0, "%s %p: value %.17g < 0", name,
                     (void *)self, self->value);
            FA_CHECK(self->family != FA_BSEM || self->value <= self->bound,
                     "%s %p: value %.17g above the bound %.17g", name, (void *)self,
                     self->value, self->bound);
        }
        break;
    case FA_LOCK:
        FA_CHECK(self->locked == 0 || self->locked == 1, "Lock %p: locked %d", (void *)self,
                 self->locked);
        if (!self->unchecked) {
            FA_CHECK(woken <= 1, "Lock %p: %zd woken waiters", (void *)self, woken);
            FA_CHECK(!(woken && self->locked), "Lock %p: locked with a woken waiter",
                     (void *)self);
        }
        break;
    case FA_EVENT:
        FA_CHECK(self->value == 0 || self->value == 1, "Event %p: value %g", (void *)self,
                 self->value);
        break;
    }
}
#endif
#define FA_CONSISTENT falock_check

#define RET(op) (((op)->flags & OPF_RETNONE) ? Py_None : Py_True)

/* ------------------------------------------------------------------ shared */

static PyObject *
num_to_py(double v, int is_int)
{
    return is_int ? PyLong_FromDouble(v) : PyFloat_FromDouble(v);
}

/* Which of acquire/release/locked, the family's wake-up helper and _get_loop does Py_TYPE(self)
 * override relative to base? (asyncio calls each through self.) self->family must be set. */
static int
find_overrides(PyObject *self, PyTypeObject *base)
{
    fa_state *st = ((FaLock *)self)->st;
    int family = ((FaLock *)self)->family;
    /* in the order of the OVR_* bits; an Event has no wake-up helper */
    PyObject *names[] = {st->semaphore.str_acquire, st->semaphore.str_release,
                         st->semaphore.str_locked,
                         family == FA_EVENT  ? NULL
                         : family == FA_LOCK ? st->semaphore.str_wake_up_first
                                             : st->semaphore.str_wake_up_next,
                         st->core.str_get_loop};
    return fa_find_overrides(Py_TYPE(self), base, names, sizeof(names) / sizeof(names[0]));
}

static PyObject *
falock_new(PyTypeObject *tp, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    fa_state *st;
    FaLock *self = (FaLock *)fa_new_instance(tp, &st);  // zeroed
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->value = 1;
    self->bound = 1;
    self->value_is_int = self->bound_is_int = 1;
    return (PyObject *)self;
}

static int
falock_traverse(PyObject *op, visitproc visit, void *arg)
{
    FaLock *self = (FaLock *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->loop);
    Py_VISIT((PyObject *)self->cache);
    Py_VISIT(self->aenter);
    Py_VISIT(self->aexit);
    return fa_waitq_traverse(&self->waiters, visit, arg);
}

static int
falock_clear(PyObject *op)
{
    FaLock *self = (FaLock *)op;
    Py_CLEAR(self->loop);
    Py_CLEAR(self->cache);
    fa_special_clear(op, &self->aenter);
    fa_special_clear(op, &self->aexit);
    fa_waitq_release_all(&self->waiters);
    FA_ASSERT_CONSISTENT(self);
    return 0;
}

static void
falock_dealloc(PyObject *op)
{
    fa_gc_dealloc(op, falock_clear);
}

/* _waiters: None until the first wait (Lock, Semaphore: asyncio creates its deque lazily), then
 * a live deque-like view of the waiter list (waitview.c): code that appends a future (or a mock,
 * as CPython's test_repr does) to asyncio's deque reaches the primitive itself. Assigning an
 * iterable replaces the list's contents; assigning None empties it and reads back None. */
static PyObject *
falock_get_waiters(PyObject *op, void *Py_UNUSED(c))
{
    FaLock *self = (FaLock *)op;
    if (!self->waiters_made) {
        Py_RETURN_NONE;
    }
    return fa_waitview_new(self->st, op, &self->waiters);
}

static int
falock_set_waiters(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    FaLock *self = (FaLock *)op;
    if (fa_refuse_delete(v, "_waiters") < 0) {
        return -1;
    }
    int own = 0;
    for (FaOp *w = self->waiters.head; w != NULL; w = w->next) {
        own |= !fa_op_is_foreign(w);
    }
    if (fa_waitview_assign(self->st, &self->waiters, v == Py_None ? NULL : v) < 0) {
        return -1;
    }
    self->waiters_made = v != Py_None;
    if (own) {
        /* a waiter left out (asyncio orphans it) takes what it was handed out of the count */
        self->unchecked = 1;
    }
    FA_ASSERT_CONSISTENT(self);
    return 0;
}

static PyObject *
falock_private_get_loop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    return fa_get_loop(self->st, op, &self->loop);
}

/* "<aiofast.Lock object at 0x...>" -> "<aiofast.Lock object at 0x... [extra]>"; extra is a new
 * reference this takes over (NULL: an error already set) */
static PyObject *
repr_with(PyObject *op, PyObject *extra)
{
    if (extra == NULL) {
        return NULL;
    }
    PyObject *base = PyBaseObject_Type.tp_repr(op);  // new ref
    if (base == NULL) {
        Py_DECREF(extra);
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(base);
    PyObject *inner = PyUnicode_Substring(base, 1, n - 1);
    Py_DECREF(base);
    if (inner == NULL) {
        Py_DECREF(extra);
        return NULL;
    }
    FaLock *self = (FaLock *)op;
    PyObject *r;
    if (self->waiters.len > 0) {
        r = PyUnicode_FromFormat("<%U [%U, waiters:%zd]>", inner, extra, self->waiters.len);
    }
    else {
        r = PyUnicode_FromFormat("<%U [%U]>", inner, extra);
    }
    Py_DECREF(inner);
    Py_DECREF(extra);
    return r;
}

/* Is any waiter's future not cancelled? 1, 0, -1. */
static int
any_not_cancelled(FaLock *self)
{
    fa_state *st = self->st;
restart:;
    size_t version = self->waiters.version;
    for (FaOp *op = self->waiters.head; op != NULL; op = op->next) {
        if (op->flags & FA_OPF_WOKEN) {
            return 1;
        }
        if (op->fut == NULL) {
            continue;
        }
        PyObject *fut = Py_NewRef(op->fut);
        int c = fa_fut_cancelled(st, fut);  // Beware: a foreign future's method may re-enter
        Py_DECREF(fut);
        if (c < 0) {
            return -1;
        }
        if (!c) {
            return 1;
        }
        if (version != self->waiters.version) {
            goto restart;
        }
    }
    return 0;
}

/* Wake the first waiter whose future is not done with set_result(True); for the Semaphore the
 * permit is handed over now (value -= 1). 1 woken, 0 none, -1 error (state restored). */
static int
wake_first_pending(FaLock *self, int take_permit)
{
    fa_state *st = self->st;
    int restarted = 0;
restart:
    if (restarted && take_permit && !(self->value > 0)) {
        return 0;  // a re-entrant call meanwhile handed the permit out already
    }
    size_t version = self->waiters.version;
    for (FaOp *op = self->waiters.head; op != NULL; op = op->next) {
        if ((op->flags & FA_OPF_WOKEN) || op->fut == NULL) {
            continue;
        }
        Py_INCREF(op);
        PyObject *fut = Py_NewRef(op->fut);
        int d = fa_fut_done(st, fut);  // Beware: may re-enter
        int own = !fa_op_is_foreign(op);
        /* a foreign future that is not done gets the wake-up whatever its done() changed, as
         * asyncio's loop wakes the future it just asked; our own ops are re-validated */
        if (d < 0 || (own && (version != self->waiters.version || op->queue != &self->waiters))) {
            int rc = 0;
            if (d == 0 && op->fut != fut) {
                /* done() finished the op (closed it): its future is still completed, without
                 * a permit, so its task wakes to the op's error instead of hanging */
                rc = fa_fut_set_result(st, fut, Py_True);  // Beware: loop.call_soon runs
            }
            Py_DECREF(fut);
            Py_DECREF(op);
            if (d < 0 || rc < 0) {
                return -1;
            }
            restarted = 1;
            goto restart;
        }
        if (d) {
            Py_DECREF(fut);
            Py_DECREF(op);
            continue;
        }
        /* commit, then call out (an appended foreign future is never flagged: like asyncio's
         * deque entry, it stays and is asked done() again next time) */
        if (take_permit) {
            self->value -= 1;
        }
        if (own) {
            op->flags |= FA_OPF_WOKEN;
        }
        FA_ASSERT_CONSISTENT(self);
        int rc = fa_fut_set_result(st, fut, Py_True);  // Beware: loop.call_soon runs
        if (rc < 0) {
            op->flags &= ~(own ? FA_OPF_WOKEN : 0);
            if (take_permit) {
                self->value += 1;
            }
            FA_ASSERT_CONSISTENT(self);
        }
        Py_DECREF(fut);
        Py_DECREF(op);
        return rc < 0 ? -1 : 1;
    }
    return 0;
}

/* acquire() or wait() cannot finish now: wait in line for a wake-up (the op's future) */
static PySendResult
falock_wait(FaLock *self, FaOp *op, PyObject **res)
{
    self->waiters_made = 1;
    PySendResult r = fa_op_wait_self(op, self->ovr & OVR_GET_LOOP, &self->loop, &self->waiters,
                                     res);
    FA_ASSERT_CONSISTENT(self);
    return r;
}

/* ------------------------------------------------------------------ Semaphore */

static int
sem_locked_impl(FaLock *self)
{
    if (self->ovr & OVR_LOCKED) {
        return fa_call_bool((PyObject *)self, self->st->semaphore.str_locked);
    }
    if (self->value == 0) {
        return 1;
    }
    if (self->waiters.len == 0) {
        return 0;
    }
    return any_not_cancelled(self);
}

/* self._wake_up_next(), honouring an override: 1 woke one (3.13+: the override's answer is
 * true), 0 none, -1 error */
static int
sem_wake_up_next(FaLock *self)
{
    if (FA_UNLIKELY(self->ovr & OVR_WAKE)) {
        PyObject *args[1] = {(PyObject *)self};
        // Beware: subclass code
        PyObject *r = PyObject_VectorcallMethod(self->st->semaphore.str_wake_up_next, args,
                                                1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (r == NULL) {
            return -1;
        }
#if FA_PY313
        int b = PyObject_IsTrue(r);
#else
        int b = 0;  /* asyncio's returns None before 3.13 */
#endif
        Py_DECREF(r);
        return b;
    }
    return wake_first_pending(self, 1);
}

/* after a successful wait, and (3.13) after any exit: wake as many as the value allows */
static int
sem_wake_after(FaLock *self)
{
#if FA_PY313
    while (self->value > 0) {
        int r = sem_wake_up_next(self);
        if (r <= 0) {
            return r;
        }
    }
    return 0;
#else
    if (self->value > 0) {
        return sem_wake_up_next(self) < 0 ? -1 : 0;
    }
    return 0;
#endif
}

static FA_NOINLINE PySendResult
sem_acquire_slow(FaOp *op, PyObject **res)
{
    FaLock *self = (FaLock *)op->owner;
    int locked = sem_locked_impl(self);
    if (locked < 0) {
        return PYGEN_ERROR;
    }
    if (!locked) {
        self->value -= 1;
        FA_ASSERT_CONSISTENT(self);
        *res = Py_NewRef(RET(op));
        return PYGEN_RETURN;
    }
    return falock_wait(self, op, res);
}

/* The fast path is kept free of calls so it compiles without a stack frame. */
static PySendResult
sem_acquire_start(FaOp *op, PyObject **res)
{
    FaLock *self = (FaLock *)op->owner;
    if (FA_LIKELY(self->ovr == 0 && self->value > 0 && self->waiters.len == 0)) {
        self->value -= 1;
        FA_ASSERT_CONSISTENT(self);
        *res = Py_NewRef(RET(op));
        return PYGEN_RETURN;
    }
    return sem_acquire_slow(op, res);
}

static PySendResult
sem_acquire_resume(FaOp *op, PyObject *Py_UNUSED(value), PyObject **res)
{
    FaLock *self = (FaLock *)op->owner;
    fa_waitq_unlink(op);
    FA_ASSERT_CONSISTENT(self);
    if (sem_wake_after(self) < 0) {
        return PYGEN_ERROR;
    }
    FA_ASSERT_CONSISTENT(self);
    *res = Py_NewRef(RET(op));
    return PYGEN_RETURN;
}

static int
sem_acquire_exc(FaOp *op, PyObject *exc)
{
    FaLock *self = (FaLock *)op->owner;
    fa_state *st = self->st;
    fa_waitq_unlink(op);
    FA_ASSERT_CONSISTENT(self);
    /* A woken waiter closed (GeneratorExit: coro.close(), or its coroutine garbage-collected)
     * gives the permit it was handed back, like a cancelled one. asyncio's class only does
     * that for CancelledError and so loses the permit for good (and, before 3.13, strands the
     * next waiter): a deliberate difference, in a case where asyncio leaks. */
    int closed = PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_GeneratorExit);
    if (fa_is_cancelled_error(st, exc) || (closed && (op->flags & FA_OPF_WOKEN))) {
        int woken;  /* "fut.done() and not fut.cancelled()" (3.13) / "not fut.cancelled()" */
        if (op->flags & FA_OPF_WOKEN) {
            woken = 1;
        }
        else {
            int c = fa_fut_cancelled(st, op->fut);
            if (c < 0) {
                return -1;
            }
#if FA_PY313
            int d = c ? 1 : fa_fut_done(st, op->fut);
            if (d < 0) {
                return -1;
            }
            woken = d && !c;
#else
            woken = !c;
#endif
        }
        if (woken) {
            self->value += 1;
            FA_ASSERT_CONSISTENT(self);
#if !FA_PY313
            if (sem_wake_up_next(self) < 0) {
                return -1;
            }
#endif
        }
    }
#if FA_PY313
    if (sem_wake_after(self) < 0) {
        return -1;
    }
#endif
    FA_ASSERT_CONSISTENT(self);
    return 0;
}

static const fa_opkind sem_acquire_kind = {
    "Semaphore.acquire", sem_acquire_start, sem_acquire_resume, sem_acquire_exc, NULL,
};

static FA_NOINLINE int
sem_release_slow(FaLock *self)
{
    return sem_wake_up_next(self) < 0 ? -1 : 0;
}

static inline int
sem_release_impl(FaLock *self)
{
    self->value += 1;
    FA_ASSERT_CONSISTENT(self);
    if (FA_LIKELY((self->waiters.len | self->ovr) == 0)) {
        return 0;
    }
    return sem_release_slow(self);
}

static int
bsem_release_impl(FaLock *self)
{
    if (self->value >= self->bound) {
        PyErr_SetString(PyExc_ValueError, "BoundedSemaphore released too many times");
        return -1;
    }
#if FA_DEBUG
    /* asyncio's check (kept) cannot see an over-release while a handed-over permit is in
     * flight to a woken waiter: value + woken >= bound means nobody else holds one. Its value
     * may then exceed the bound later, as with asyncio: stop checking that. */
    Py_ssize_t woken = 0;
    for (FaOp *op = self->waiters.head; op != NULL; op = op->next) {
        woken += (op->flags & FA_OPF_WOKEN) != 0;
    }
    if (self->value + (double)woken >= self->bound) {
        self->unchecked = 1;
    }
#endif
    return sem_release_impl(self);
}

static int
sem_release_dispatch(FaLock *self)
{
    return self->family == FA_BSEM ? bsem_release_impl(self) : sem_release_impl(self);
}

/* ------------------------------------------------------------------ Lock */

static FA_NOINLINE PySendResult
lock_acquire_slow(FaOp *op, PyObject **res)
{
    FaLock *self = (FaLock *)op->owner;
    if (!self->locked) {
        int busy = self->waiters.len ? any_not_cancelled(self) : 0;
        if (busy < 0) {
            return PYGEN_ERROR;
        }
        if (!busy && !self->locked) {
            self->locked = 1;
            FA_ASSERT_CONSISTENT(self);
            *res = Py_NewRef(RET(op));
            return PYGEN_RETURN;
        }
    }
    return falock_wait(self, op, res);
}

static PySendResult
lock_acquire_start(FaOp *op, PyObject **res)
{
    FaLock *self = (FaLock *)op->owner;
    if (FA_LIKELY(!self->locked && self->waiters.len == 0)) {
        self->locked = 1;
        FA_ASSERT_CONSISTENT(self);
        *res = Py_NewRef(RET(op));
        return PYGEN_RETURN;
    }
    return lock_acquire_slow(op, res);
}

static PySendResult
lock_acquire_resume(FaOp *op, PyObject *Py_UNUSED(value), PyObject **res)
{
    FaLock *self = (FaLock *)op->owner;
    fa_waitq_unlink(op);
    self->locked = 1;  /* no re-check: the waker reserved it for us */
    FA_ASSERT_CONSISTENT(self);
    *res = Py_NewRef(RET(op));
    return PYGEN_RETURN;
}

/* _wake_up_first: only the head, and only if its future is not done. Not while the lock is
 * held, unless `force` (asyncio's method, called directly, does not look at the lock). */
static int
lock_wake_up_first(FaLock *self, int force)
{
    fa_state *st = self->st;
restart:;
    FaOp *op = self->waiters.head;
    if (op == NULL || (op->flags & FA_OPF_WOKEN) || op->fut == NULL
        || (self->locked && !force)) {
        return 0;
    }
    Py_INCREF(op);
    PyObject *fut = Py_NewRef(op->fut);
    int d = fa_fut_done(st, fut);  // Beware: may re-enter (a future whose done() is Python code)
    int rc = 0, again = 0;
    if (d < 0) {
        rc = -1;
    }
    else {
        /* Re-validate: done() may have finished the head's op (closed it), or woken it, or
         * someone may hold the lock now. Only a live head gets the flag: a finished op must
         * not carry it into its next use. */
        int head = op == self->waiters.head && op->fut == fut;
        int live = head && !fa_op_is_foreign(op);  /* a foreign future is never flagged */
        if (!d && !(head && ((op->flags & FA_OPF_WOKEN) || (self->locked && !force)))) {
            if (live) {
                op->flags |= FA_OPF_WOKEN;
                FA_ASSERT_CONSISTENT(self);
            }
            /* a future whose op is gone is still completed, as asyncio would: its task wakes
             * to the op's "cannot reuse" error instead of hanging */
            if (fa_fut_set_result(st, fut, Py_True) < 0) {
                if (live) {
                    op->flags &= ~FA_OPF_WOKEN;
                }
                rc = -1;
            }
            FA_ASSERT_CONSISTENT(self);
        }
        /* an own op that done() finished never takes the lock: the new head gets the wake-up
         * (a foreign head that left was woken, as asyncio's would be: it has the turn) */
        again = !head && !fa_op_is_foreign(op) && rc == 0;
    }
    Py_DECREF(fut);
    Py_DECREF(op);
    if (again) {
        goto restart;
    }
    return rc;
}

/* self._wake_up_first(), honouring an override. 0 or -1. */
static FA_NOINLINE int
lock_wake_dispatch(FaLock *self)
{
    if (FA_UNLIKELY(self->ovr & OVR_WAKE)) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self,
                                                self->st->semaphore.str_wake_up_first);
        Py_XDECREF(r);  // Beware: subclass code
        return r ? 0 : -1;
    }
    return self->waiters.len ? lock_wake_up_first(self, 0) : 0;
}

static int
lock_acquire_exc(FaOp *op, PyObject *exc)
{
    FaLock *self = (FaLock *)op->owner;
    fa_waitq_unlink(op);
    FA_ASSERT_CONSISTENT(self);
    /* Pass the baton on cancellation (asyncio), and also when a woken waiter is closed
     * (GeneratorExit: coro.close(), or its coroutine garbage-collected), where asyncio's class
     * leaves the lock free with the next waiter never woken: a deliberate difference. */
    int closed = PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_GeneratorExit);
    if ((fa_is_cancelled_error(self->st, exc) || (closed && (op->flags & FA_OPF_WOKEN)))
        && !self->locked) {
        return lock_wake_dispatch(self);
    }
    return 0;
}

static const fa_opkind lock_acquire_kind = {
    "Lock.acquire", lock_acquire_start, lock_acquire_resume, lock_acquire_exc, NULL,
};

static inline int
lock_release_impl(FaLock *self)
{
    if (FA_UNLIKELY(!self->locked)) {
        PyErr_SetString(PyExc_RuntimeError, "Lock is not acquired.");
        return -1;
    }
    self->locked = 0;
    FA_ASSERT_CONSISTENT(self);
    if (FA_LIKELY((self->waiters.len | self->ovr) == 0)) {
        return 0;
    }
    return lock_wake_dispatch(self);
}

/* ------------------------------------------------------------------ async with (Lock, Semaphore) */

static int
release_dispatch(FaLock *self)
{
    if (self->ovr & OVR_RELEASE) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, self->st->semaphore.str_release);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        return 0;
    }
    return self->family == FA_LOCK ? lock_release_impl(self) : sem_release_dispatch(self);
}

static PySendResult
aexit_start(FaOp *op, PyObject **res)
{
    if (release_dispatch((FaLock *)op->owner) < 0) {
        return PYGEN_ERROR;
    }
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PySendResult
return_none_resume(FaOp *Py_UNUSED(op), PyObject *Py_UNUSED(value), PyObject **res)
{
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static const fa_opkind lock_aexit_kind = {"Lock.__aexit__", aexit_start, return_none_resume, NULL,
                                          NULL};
static const fa_opkind sem_aexit_kind = {"Semaphore.__aexit__", aexit_start, return_none_resume,
                                         NULL, NULL};

/* __aenter__ of a subclass that overrides acquire(): `await self.acquire(); return None` */
static PySendResult
aenter_delegate_start(FaOp *op, PyObject **res)
{
    PyObject *aw = PyObject_CallMethodNoArgs(op->owner, op->st->semaphore.str_acquire);  // new ref
    if (aw == NULL) {
        return PYGEN_ERROR;
    }
    PySendResult r = fa_op_delegate(op, aw, res);
    Py_DECREF(aw);
    return r;
}

static const fa_opkind aenter_delegate_kind = {"__aenter__", aenter_delegate_start,
                                               return_none_resume, NULL, NULL};

static PyObject *
falock_aenter(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    if (nargs != 0) {
        PyErr_Format(PyExc_TypeError, "__aenter__() takes no arguments (%zd given)", nargs);
        return NULL;
    }
    FaLock *self = (FaLock *)op;
    const fa_opkind *kind;
    if (FA_UNLIKELY(self->ovr & OVR_ACQUIRE)) {
        kind = &aenter_delegate_kind;
    }
    else {
        kind = self->family == FA_LOCK ? &lock_acquire_kind : &sem_acquire_kind;
    }
    FaOp *o = fa_op_cached(self->st, &self->cache, kind, op);
    if (o != NULL) {
        o->flags |= OPF_RETNONE;
    }
    return (PyObject *)o;
}

static PyObject *
falock_aexit(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    FaLock *self = (FaLock *)op;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__aexit__() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    const fa_opkind *kind = self->family == FA_LOCK ? &lock_aexit_kind : &sem_aexit_kind;
    return (PyObject *)fa_op_cached(self->st, &self->cache, kind, op);
}

static PyObject *
falock_acquire(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    const fa_opkind *kind = self->family == FA_LOCK ? &lock_acquire_kind : &sem_acquire_kind;
    return (PyObject *)fa_op_cached(self->st, &self->cache, kind, op);
}

static PyObject *
falock_release(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    int rc = self->family == FA_LOCK ? lock_release_impl(self) : sem_release_dispatch(self);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Semaphore.release as called by super().release() from a BoundedSemaphore subclass */
static PyObject *
sem_release_method(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (((FaLock *)op)->family == FA_BSEM) {
        ((FaLock *)op)->unchecked = 1;  // asyncio's Semaphore.release ignores the bound too
    }
    if (sem_release_impl((FaLock *)op) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
falock_locked(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    if (self->family == FA_LOCK) {
        return PyBool_FromLong(self->locked);
    }
    int l;
    if (self->value == 0) {
        l = 1;
    }
    else {
        l = self->waiters.len ? any_not_cancelled(self) : 0;
    }
    if (l < 0) {
        return NULL;
    }
    return PyBool_FromLong(l);
}

/* Lock._wake_up_first(), as asyncio's: wake the head waiter if its future is not done, whether
 * or not the lock is held (asyncio's callers only call it when it is free). */
static PyObject *
lock_wake_up_first_m(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    if (self->locked && self->waiters.len) {
        self->unchecked = 1;  /* a waiter woken beside the holder: both run, as with asyncio */
    }
    if (lock_wake_up_first(self, 1) < 0) {
        return NULL;
    }
    FA_ASSERT_CONSISTENT(self);
    Py_RETURN_NONE;
}

/* Semaphore._wake_up_next(), as asyncio's: hand a permit to the first waiter whose future is
 * not done (value -= 1, even below zero); True if one was woken (3.13+), None before 3.13. */
static PyObject *
sem_wake_up_next_m(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    if (!(self->value > 0) && self->waiters.len) {
        self->unchecked = 1;  /* the value may go below zero, as asyncio's does */
    }
    int r = wake_first_pending(self, 1);
    if (r < 0) {
        return NULL;
    }
    FA_ASSERT_CONSISTENT(self);
#if FA_PY313
    return PyBool_FromLong(r);
#else
    Py_RETURN_NONE;
#endif
}

/* ------------------------------------------------------------------ construction */

/* Semaphore's value: ints (exact below 2**53) and finite floats, as asyncio accepts them. */
static int
parse_sem_value(PyObject *v, double *out, int *is_int)
{
    if (PyLong_Check(v) || (!PyFloat_Check(v) && PyIndex_Check(v))) {
        PyObject *i = PyNumber_Index(v);
        if (i == NULL) {
            return -1;
        }
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(i, &overflow);
        Py_DECREF(i);
        if (x == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow < 0 || (overflow == 0 && x < 0)) {
            PyErr_SetString(PyExc_ValueError, "Semaphore initial value must be >= 0");
            return -1;
        }
        if (overflow > 0 || x > (1LL << 53)) {
            PyErr_Format(PyExc_OverflowError,
                         "Semaphore initial value must be at most 2**53, got %R", v);
            return -1;
        }
        *out = (double)x;
        *is_int = 1;
        return 0;
    }
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        if (d < 0) {
            PyErr_SetString(PyExc_ValueError, "Semaphore initial value must be >= 0");
            return -1;
        }
        if (!isfinite(d) || d > 9007199254740992.0) {
            PyErr_Format(PyExc_ValueError,
                         "Semaphore initial value must be a finite number <= 2**53, got %R", v);
            return -1;
        }
        *out = d;
        *is_int = 0;
        return 0;
    }
    /* asyncio does `if value < 0`: reproduce its TypeError for incomparable types */
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        return -1;
    }
    int lt = PyObject_RichCompareBool(v, zero, Py_LT);
    Py_DECREF(zero);
    if (lt < 0) {
        return -1;
    }
    if (lt) {
        PyErr_SetString(PyExc_ValueError, "Semaphore initial value must be >= 0");
        return -1;
    }
    PyErr_Format(PyExc_TypeError, "Semaphore value must be an int or a float, not %.100s",
                 Py_TYPE(v)->tp_name);
    return -1;
}

static int
sem_init_value(FaLock *self, PyObject *v)
{
    double d;
    int is_int;
    if (parse_sem_value(v, &d, &is_int) < 0) {
        return -1;
    }
    self->value = d;
    self->value_is_int = is_int;
    return 0;
}

/* End of every __init__: a re-run __init__ with waiters pending (asyncio orphans them, we keep
 * them) or a subclass's overrides put the counts outside what the checks can know. */
static void
init_done(FaLock *self)
{
    if (self->waiters.len > 0 || (self->ovr & ~OVR_GET_LOOP) != 0) {
        self->unchecked = 1;
    }
    FA_ASSERT_CONSISTENT(self);
}

static int
sem_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    FaLock *self = (FaLock *)op;
    static const char *const names[] = {"value"};
    PyObject *value = NULL;
    if (fa_parse_init(op, "Semaphore", args, kwargs, names, 1, &value) < 0) {
        return -1;
    }
    self->family = FA_SEM;
    self->ovr = find_overrides(op, self->st->semaphore.SemaphoreType);
    if (value != NULL && sem_init_value(self, value) < 0) {
        return -1;
    }
    init_done(self);
    return 0;
}

static int
bsem_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    FaLock *self = (FaLock *)op;
    static const char *const names[] = {"value"};
    PyObject *value = NULL;
    if (fa_parse_init(op, "BoundedSemaphore", args, kwargs, names, 1, &value) < 0) {
        return -1;
    }
    self->family = FA_BSEM;
    self->ovr = find_overrides(op, self->st->semaphore.BoundedSemaphoreType);
    if (value == NULL) {
        self->value = self->bound = 1;
        self->value_is_int = self->bound_is_int = 1;
    }
    else {
        if (sem_init_value(self, value) < 0) {
            return -1;
        }
        self->bound = self->value;
        self->bound_is_int = self->value_is_int;
    }
    init_done(self);
    return 0;
}

static int
lock_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    FaLock *self = (FaLock *)op;
    if (fa_parse_init(op, "Lock", args, kwargs, NULL, 0, NULL) < 0) {
        return -1;
    }
    self->family = FA_LOCK;
    self->ovr = find_overrides(op, self->st->semaphore.LockType);
    init_done(self);
    return 0;
}

static int
event_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    FaLock *self = (FaLock *)op;
    if (fa_parse_init(op, "Event", args, kwargs, NULL, 0, NULL) < 0) {
        return -1;
    }
    self->family = FA_EVENT;
    self->ovr = find_overrides(op, self->st->semaphore.EventType);
    self->waiters_made = 1;
    init_done(self);
    return 0;
}

/* tp_new per type, so an object made without __init__ is still consistent */
#define FAMILY_NEW(fname, fam) \
    static PyObject *fname(PyTypeObject *tp, PyObject *a, PyObject *k) \
    { \
        FaLock *s = (FaLock *)falock_new(tp, a, k); \
        if (s != NULL) { \
            s->family = fam; \
            if (fam == FA_EVENT) { \
                s->value = 0; \
                s->waiters_made = 1; /* asyncio's Event makes its deque at once */ \
            } \
            FA_ASSERT_CONSISTENT(s); \
        } \
        return (PyObject *)s; \
    }
FAMILY_NEW(sem_new, FA_SEM)
FAMILY_NEW(bsem_new, FA_BSEM)
FAMILY_NEW(lock_new, FA_LOCK)
FAMILY_NEW(event_new, FA_EVENT)

/* ------------------------------------------------------------------ attributes and repr */

static PyObject *
sem_get_value(PyObject *op, void *Py_UNUSED(c))
{
    FaLock *self = (FaLock *)op;
    return num_to_py(self->value, self->value_is_int);
}

static int
sem_set_value(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    FaLock *self = (FaLock *)op;
    if (fa_refuse_delete(v, "_value") < 0) {
        return -1;
    }
    double d;
    int is_int;
    if (PyLong_Check(v)) {
        /* negative values are legal here (asyncio's acquire can drive it below 0) */
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow || x > (1LL << 53) || x < -(1LL << 53)) {
            PyErr_SetString(PyExc_OverflowError, "_value must be within +-2**53");
            return -1;
        }
        d = (double)x;
        is_int = 1;
    }
    else if (PyFloat_Check(v) && isfinite(PyFloat_AS_DOUBLE(v))) {
        d = PyFloat_AS_DOUBLE(v);
        is_int = 0;
    }
    else {
        PyErr_Format(PyExc_TypeError, "_value must be an int or a finite float, not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    self->value = d;
    self->value_is_int = is_int;
    self->unchecked = 1;
    FA_ASSERT_CONSISTENT(self);
    return 0;
}

static PyObject *
bsem_get_bound(PyObject *op, void *Py_UNUSED(c))
{
    FaLock *self = (FaLock *)op;
    return num_to_py(self->bound, self->bound_is_int);
}

/* _locked: asyncio lets code assign it; the waking invariants are then off */
static const fa_flag_attr locked_attr = {
    "_locked", offsetof(FaLock, locked), offsetof(FaLock, unchecked)};

static PyObject *
event_get_value(PyObject *op, void *Py_UNUSED(c))
{
    return PyBool_FromLong(((FaLock *)op)->value != 0);
}

static PyObject *
sem_repr(PyObject *op)
{
    FaLock *self = (FaLock *)op;
    // as asyncio: self.locked()
    PyObject *l = PyObject_CallMethodNoArgs(op, self->st->semaphore.str_locked);
    if (l == NULL) {
        return NULL;
    }
    int b = PyObject_IsTrue(l);
    Py_DECREF(l);
    if (b < 0) {
        return NULL;
    }
    PyObject *extra;
    if (b) {
        extra = PyUnicode_FromString("locked");
    }
    else {
        PyObject *v = num_to_py(self->value, self->value_is_int);
        if (v == NULL) {
            return NULL;
        }
        extra = PyUnicode_FromFormat("unlocked, value:%S", v);
        Py_DECREF(v);
    }
    return repr_with(op, extra);
}

static PyObject *
lock_repr(PyObject *op)
{
    return repr_with(op, PyUnicode_FromString(((FaLock *)op)->locked ? "locked" : "unlocked"));
}

static PyObject *
event_repr(PyObject *op)
{
    return repr_with(op, PyUnicode_FromString(((FaLock *)op)->value ? "set" : "unset"));
}

/* ------------------------------------------------------------------ Event */

static PySendResult
event_wait_start(FaOp *op, PyObject **res)
{
    FaLock *self = (FaLock *)op->owner;
    if (self->value) {
        *res = Py_NewRef(Py_True);
        return PYGEN_RETURN;
    }
    return falock_wait(self, op, res);
}

static PySendResult
event_wait_resume(FaOp *op, PyObject *Py_UNUSED(value), PyObject **res)
{
    fa_waitq_unlink(op);
    FA_ASSERT_CONSISTENT((FaLock *)op->owner);
    *res = Py_NewRef(Py_True);
    return PYGEN_RETURN;
}

static int
event_wait_exc(FaOp *op, PyObject *Py_UNUSED(exc))
{
    fa_waitq_unlink(op);
    FA_ASSERT_CONSISTENT((FaLock *)op->owner);
    return 0;
}

static const fa_opkind event_wait_kind = {
    "Event.wait", event_wait_start, event_wait_resume, event_wait_exc, NULL,
};

static PyObject *
event_wait(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    return (PyObject *)fa_op_cached(self->st, &self->cache, &event_wait_kind, op);
}

static PyObject *
event_is_set(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((FaLock *)op)->value != 0);
}

static PyObject *
event_set(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaLock *self = (FaLock *)op;
    if (self->value) {
        Py_RETURN_NONE;
    }
    self->value = 1;
    FA_ASSERT_CONSISTENT(self);
    Py_ssize_t n = self->waiters.len;
    if (n == 0) {
        Py_RETURN_NONE;
    }
    /* Detach-then-call-out: snapshot the ops (strong refs), then wake each. The waiters stay
     * in the queue, as in asyncio; each leaves when it runs. */
    FaOp **ops = PyMem_Malloc(sizeof(FaOp *) * (size_t)n);
    if (ops == NULL) {
        self->value = 0;
        FA_ASSERT_CONSISTENT(self);
        return PyErr_NoMemory();
    }
    Py_ssize_t k = 0;
    for (FaOp *w = self->waiters.head; w != NULL && k < n; w = w->next) {
        ops[k++] = (FaOp *)Py_NewRef(w);
    }
    int rc = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        FaOp *w = ops[i];
        if (rc == 0 && !(w->flags & FA_OPF_WOKEN) && w->fut != NULL) {
            PyObject *fut = Py_NewRef(w->fut);
            int d = fa_fut_done(self->st, fut);  // Beware: may re-enter
            if (d < 0) {
                rc = -1;
            }
            else if (!d) {
                /* re-checked: a re-entrant done() may have finished w, which must then not
                 * carry the flag into its next use (its future is still completed) */
                int live = w->queue == &self->waiters && w->fut == fut
                           && !(w->flags & FA_OPF_WOKEN) && !fa_op_is_foreign(w);
                if (live) {
                    w->flags |= FA_OPF_WOKEN;
                    FA_ASSERT_CONSISTENT(self);
                }
                if (fa_fut_set_result(self->st, fut, Py_True) < 0) {
                    if (live) {
                        w->flags &= ~FA_OPF_WOKEN;
                    }
                    rc = -1;
                }
            }
            Py_DECREF(fut);
        }
        Py_DECREF(w);
    }
    PyMem_Free(ops);
    FA_ASSERT_CONSISTENT(self);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
event_clear(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ((FaLock *)op)->value = 0;
    FA_ASSERT_CONSISTENT((FaLock *)op);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ type specs */

PyDoc_STRVAR(acquire_doc_sem, "acquire($self, /)\n--\n\nAcquire a permit; wait (FIFO) while "
             "none is free. Awaiting it returns True.");
PyDoc_STRVAR(release_doc_sem, "release($self, /)\n--\n\nRelease a permit, waking the first "
             "waiter.");
PyDoc_STRVAR(locked_doc_sem, "locked($self, /)\n--\n\nTrue if acquire() would not return at "
             "once (no permit, or others are waiting).");
PyDoc_STRVAR(acquire_doc_lock, "acquire($self, /)\n--\n\nAcquire the lock; wait (FIFO) while it "
             "is held. Awaiting it returns True.");
PyDoc_STRVAR(release_doc_lock, "release($self, /)\n--\n\nRelease the lock, waking the first "
             "waiter. RuntimeError if it is not locked.");
PyDoc_STRVAR(locked_doc_lock, "locked($self, /)\n--\n\nTrue if the lock is held.");
static const char aenter_doc[] = "__aenter__($self, /)\n--\n\nAcquire; returns None.";
static const char aexit_doc[] = "__aexit__($self, exc_type, exc, tb)\n--\n\nRelease.";
PyDoc_STRVAR(get_loop_doc, "_get_loop($self, /)\n--\n\nThe running loop, binding to it on "
             "first use.");
PyDoc_STRVAR(wake_up_first_doc, "_wake_up_first($self, /)\n--\n\nWake the first waiter if "
             "its future is not done.");
PyDoc_STRVAR(wake_up_next_doc, "_wake_up_next($self, /)\n--\n\nHand a permit to the first "
             "waiter whose future is not done.");
PyDoc_STRVAR(wait_doc, "wait($self, /)\n--\n\nWait until the event is set; returns True.");
PyDoc_STRVAR(is_set_doc, "is_set($self, /)\n--\n\nTrue if the event is set.");
PyDoc_STRVAR(set_doc, "set($self, /)\n--\n\nSet the event and wake every waiter.");
PyDoc_STRVAR(clear_doc, "clear($self, /)\n--\n\nReset the event.");

#define COMMON_METHODS \
    {"_get_loop", falock_private_get_loop, METH_NOARGS, get_loop_doc}

/* the awaitable methods: coroutine functions to inspect (fa_methods_add) */
static PyMethodDef sem_async_methods[] = {
    {"acquire", falock_acquire, METH_NOARGS, acquire_doc_sem},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef lock_async_methods[] = {
    {"acquire", falock_acquire, METH_NOARGS, acquire_doc_lock},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef event_async_methods[] = {
    {"wait", event_wait, METH_NOARGS, wait_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef sem_methods[] = {
    {"release", sem_release_method, METH_NOARGS, release_doc_sem},
    {"locked", falock_locked, METH_NOARGS, locked_doc_sem},
    {"_wake_up_next", sem_wake_up_next_m, METH_NOARGS, wake_up_next_doc},
    COMMON_METHODS,
    {NULL, NULL, 0, NULL},
};

static PyMethodDef bsem_methods[] = {
    {"release", falock_release, METH_NOARGS, release_doc_sem},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef lock_methods[] = {
    {"release", falock_release, METH_NOARGS, release_doc_lock},
    {"locked", falock_locked, METH_NOARGS, locked_doc_lock},
    {"_wake_up_first", lock_wake_up_first_m, METH_NOARGS, wake_up_first_doc},
    COMMON_METHODS,
    {NULL, NULL, 0, NULL},
};

static PyMethodDef event_methods[] = {
    {"is_set", event_is_set, METH_NOARGS, is_set_doc},
    {"set", event_set, METH_NOARGS, set_doc},
    {"clear", event_clear, METH_NOARGS, clear_doc},
    {"_get_loop", falock_private_get_loop, METH_NOARGS, get_loop_doc},
    {NULL, NULL, 0, NULL},
};

#define COMMON_GETSET \
    {"_loop", fa_loop_attr_get, fa_loop_attr_set, NULL, (void *)offsetof(FaLock, loop)}, \
    {"_waiters", falock_get_waiters, falock_set_waiters, "A live deque-like view of the "  \
     "waiters' futures (None until the first wait, for Lock and Semaphore).", NULL}

static PyGetSetDef sem_getset[] = {
    {"_value", sem_get_value, sem_set_value, NULL, NULL},
    COMMON_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef bsem_getset[] = {
    {"_bound_value", bsem_get_bound, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef lock_getset[] = {
    {"_locked", fa_flag_attr_get, fa_flag_attr_set, NULL, (void *)&locked_attr},
    COMMON_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef event_getset[] = {
    {"_value", event_get_value, NULL, NULL, NULL},
    COMMON_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef falock_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(FaLock, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

#define FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE)

#define SPEC(var, pyname, newf, initf, reprf, meths, gets, docstr) \
    static PyType_Slot var##_slots[] = { \
        {Py_tp_new, newf}, \
        {Py_tp_init, initf}, \
        {Py_tp_dealloc, falock_dealloc}, \
        {Py_tp_traverse, falock_traverse}, \
        {Py_tp_clear, falock_clear}, \
        {Py_tp_repr, reprf}, \
        {Py_tp_methods, meths}, \
        {Py_tp_getset, gets}, \
        {Py_tp_members, falock_members}, \
        {Py_tp_doc, docstr}, \
        {0, NULL}, \
    }; \
    static PyType_Spec var##_spec = { \
        .name = pyname, .basicsize = sizeof(FaLock), .flags = FLAGS, .slots = var##_slots, \
    };

SPEC(sem, "aiofast.Semaphore", sem_new, sem_init, sem_repr, sem_methods, sem_getset,
     "Semaphore(value=1)\n--\n\nA drop-in for asyncio.Semaphore, in C.")
SPEC(bsem, "aiofast.BoundedSemaphore", bsem_new, bsem_init, sem_repr, bsem_methods, bsem_getset,
     "BoundedSemaphore(value=1)\n--\n\nA drop-in for asyncio.BoundedSemaphore, in C.")
SPEC(lock, "aiofast.Lock", lock_new, lock_init, lock_repr, lock_methods, lock_getset,
     "Lock()\n--\n\nA drop-in for asyncio.Lock, in C.")
SPEC(event, "aiofast.Event", event_new, event_init, event_repr, event_methods, event_getset,
     "Event()\n--\n\nA drop-in for asyncio.Event, in C.")

int
fa_semaphore_init(PyObject *mod, fa_state *st)
{
    FA_INIT_NEEDS(st->engine.SpecialDescrType);  // fa_methods_add, fa_special_add
    fa_semaphore_state *s = &st->semaphore;
    if ((s->str_acquire = PyUnicode_InternFromString("acquire")) == NULL
        || (s->str_release = PyUnicode_InternFromString("release")) == NULL
        || (s->str_locked = PyUnicode_InternFromString("locked")) == NULL
        || (s->str_wake_up_first = PyUnicode_InternFromString("_wake_up_first")) == NULL
        || (s->str_wake_up_next = PyUnicode_InternFromString("_wake_up_next")) == NULL) {
        return -1;
    }
    if ((st->semaphore.SemaphoreType = fa_add_type(mod, &sem_spec, NULL, "Semaphore")) == NULL) {
        return -1;
    }
    st->semaphore.BoundedSemaphoreType = fa_add_type(
        mod, &bsem_spec, (PyObject *)st->semaphore.SemaphoreType, "BoundedSemaphore");
    if (st->semaphore.BoundedSemaphoreType == NULL) {
        return -1;
    }
    if ((st->semaphore.LockType = fa_add_type(mod, &lock_spec, NULL, "Lock")) == NULL) {
        return -1;
    }
    if ((st->semaphore.EventType = fa_add_type(mod, &event_spec, NULL, "Event")) == NULL) {
        return -1;
    }
    if (fa_methods_add(st, st->semaphore.SemaphoreType, sem_async_methods) < 0
        || fa_methods_add(st, st->semaphore.LockType, lock_async_methods) < 0
        || fa_methods_add(st, st->semaphore.EventType, event_async_methods) < 0) {
        return -1;
    }
    PyTypeObject *with_types[] = {st->semaphore.SemaphoreType, st->semaphore.LockType};
    for (int i = 0; i < 2; i++) {
        if (fa_special_add(st, with_types[i], "__aenter__", falock_aenter,
                           offsetof(FaLock, aenter), aenter_doc) < 0
            || fa_special_add(st, with_types[i], "__aexit__", falock_aexit,
                              offsetof(FaLock, aexit), aexit_doc) < 0) {
            return -1;
        }
    }
    return 0;
}
