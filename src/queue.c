/*
 * queue.c: Queue, PriorityQueue and LifoQueue, drop-ins for asyncio's.
 *
 * The algorithms are asyncio's (Lib/asyncio/queues.py of the Python we run on):
 * waiters are popped when woken, a woken getter or putter re-checks in a loop (barging), a
 * woken-then-cancelled waiter passes the wake-up on, shutdown() as in 3.13 on every version. What
 * differs is where the pieces live:
 *
 * - the items stay in a real Python container, `_queue`, exactly as asyncio's: a collections.deque
 *   (Queue) or a list (PriorityQueue, LifoQueue). It is live: a subclass's _put/_get, or code that
 *   reads or clears q._queue, sees the same object. The C code drives it directly when it is the
 *   exact type (deque methods called as unbound C methods; list items moved in place).
 * - PriorityQueue's heap is heapq's algorithm in C over that list (prio.h, prio.c): every
 *   comparison first and the moves afterwards, so a comparison that raises leaves the queue
 *   exactly as it was; numbers and dataclass items compared natively, in heapq's order.
 * - getters and putters are waiting operations in intrusive FIFOs (op.h), so a cancelled waiter
 *   leaves in O(1) (asyncio's deque.remove makes mass cancellation quadratic). `_getters` and
 *   `_putters` are live deque-like views of them (futures in, futures out).
 * - `_finished` (asyncio's Event) is an aiofast Event made on first need; until then a flag.
 *
 * Invariants:
 * - getters/putters hold the ops suspended in get()/put() that nobody has woken yet (plus inert
 *   nodes for objects appended through the views); a waker pops the op before setting its
 *   future's result and marks it FA_OPF_WOKEN; an op that resumes or fails unlinks itself if
 *   still linked.
 * - native is true iff no overridable method is overridden (except _init) and `_queue` is an
 *   exact deque (Queue) or an exact list (PriorityQueue, LifoQueue); only then do the fast paths
 *   touch the storage without dispatch.
 * - version changes on every change of the storage made here (and on `_queue` assignment): a
 *   comparison that calls Python code is followed by a check of version, list identity and size.
 * - an exception out of a comparison or an allocation leaves the heap list untouched; a woken
 *   get()/put() that fails so passes its wake-up on (native path), and shutdown() wakes every
 *   waiter even when discarding an item raises: no waiter sleeps beside an item or a free slot.
 * - exposed: Python code has seen the `_queue` container (read, assigned, pickled); until then
 *   only this file edits it, so the debug checker can require heap order. unchecked: user code
 *   wrote _unfinished_tasks/_is_shutdown (asyncio allows it), so the count invariants are off.
 */
#include "op.h"
#include "queue.h"
#include "prio.h"

enum { FA_FIFO = 0, FA_PRIO, FA_LIFO };

/* the overridable methods a subclass overrides (then asyncio's dispatch through self is used) */
#define OVR_INIT 0x1
#define OVR_PUT 0x2
#define OVR_GET 0x4
#define OVR_FULL 0x8
#define OVR_EMPTY 0x10
#define OVR_QSIZE 0x20
#define OVR_PUT_NOWAIT 0x40
#define OVR_GET_NOWAIT 0x80
#define OVR_WAKEUP_NEXT 0x100
#define OVR_GET_LOOP 0x200
/* overrides the native paths honour themselves (they only touch the storage otherwise) */
#define OVR_KEEPS_NATIVE (OVR_INIT | OVR_WAKEUP_NEXT | OVR_GET_LOOP)

/* how full() reads _maxsize */
enum { MS_UNBOUNDED = 0, MS_INT, MS_FLOAT, MS_OBJECT };

typedef struct {
    PyObject_HEAD
    fa_state *st;
    PyObject *queue;       /* _queue: the items; NULL until __init__ / _init set it */
    PyObject *maxsize;     /* _maxsize, the object given */
    PyObject *finished;    /* _finished: an aiofast Event, or NULL while fin_set stands for it */
    PyObject *loop;        /* _loop: NULL/None until the first wait binds it */
    fa_waitq getters;
    fa_waitq putters;
    FaOp *cache_get;       /* reusable ops for the uncontended paths */
    FaOp *cache_put;
    fa_prio_dc dc;         /* PriorityQueue: the dataclass compare cache (prio.h) */
    PyObject *weakreflist;
    PyObject *dict;
    Py_ssize_t unfinished; /* _unfinished_tasks */
    Py_ssize_t maxsize_n;  /* MS_INT: the bound (> 0) */
    double maxsize_d;      /* MS_FLOAT: the bound (> 0 or NaN) */
    size_t version;
    int maxsize_kind;
    int kind;              /* FA_FIFO, FA_PRIO, FA_LIFO: whose _init/_put/_get are inherited */
    int ovr;               /* OVR_* */
    int native;
    int shutdown;          /* _is_shutdown */
    int fin_set;           /* _finished.is_set() while finished is NULL */
    int exposed;           /* _queue has been handed to or taken from Python code */
    int unchecked;         /* user code wrote _unfinished_tasks or _is_shutdown (asyncio allows) */
    int shutting;          /* shutdown() is draining or waking (its waiters are still linked) */
} FaQueue;

#if FA_DEBUG
static const char *const kind_names[] = {"Queue", "PriorityQueue", "LifoQueue"};

static const fa_opkind get_kind;
static const fa_opkind put_kind;

/* The waiters of one FIFO: ours (owner self, the right kind, not yet woken: a waker pops an op
 * before it sets the result) or inert nodes for futures appended through the views. */
static void
queue_check_waiters(FaQueue *self, fa_waitq *q, const fa_opkind *kind, const char *what)
{
    fa_waitq_check(q);
    Py_ssize_t i = 0;
    for (FaOp *op = q->head; op != NULL && i < FA_WAITQ_CHECK_MAX; op = op->next, i++) {
        if (fa_op_is_foreign(op)) {
            FA_CHECK(op->owner == NULL && op->state == FA_OP_INIT,
                     "%s %p: appended node %p has owner %p, state %d", what, (void *)self,
                     (void *)op, (void *)op->owner, op->state);
            continue;
        }
        FA_CHECK(op->kind == kind, "%s %p: waiter %p is a %s()", what, (void *)self, (void *)op,
                 op->kind->name);
        FA_CHECK(op->owner == (PyObject *)self, "%s %p: waiter %p belongs to %p", what,
                 (void *)self, (void *)op, (void *)op->owner);
        FA_CHECK(!(op->flags & FA_OPF_WOKEN), "%s %p: waiter %p still linked after its wake-up",
                 what, (void *)self, (void *)op);
        FA_CHECK(kind != &put_kind || op->arg != NULL, "%s %p: put() waiter %p without its item",
                 what, (void *)self, (void *)op);
    }
}

/* The queue's invariants (debug builds, FA_ASSERT_CONSISTENT after each mutation):
 * - the waiter FIFOs (above);
 * - native agrees with the storage type and the overrides; the cached _maxsize reading agrees
 *   with its kind (MS_INT: a bound > 0; MS_FLOAT: > 0 or NaN);
 * - _unfinished_tasks >= 0 and the finished flag is exactly "no unfinished task" (the Event,
 *   once made, is not read: user code may set or clear it, as asyncio's allows), except
 *   during shutdown()'s drain (asyncio's order: count down, then set);
 * - once shut down, no get()/put() of ours waits (shutdown() wakes them all and none waits
 *   again), unless user code wrote _unfinished_tasks or _is_shutdown (`unchecked`);
 * - a PriorityQueue's list is in heap order (as far as natively comparable items tell) while
 *   no Python code has seen it (`exposed`): only then can nothing but this file edit it. */
static void
queue_check(FaQueue *self)
{
    const char *name = kind_names[self->kind];
    FA_CHECK(self->kind >= FA_FIFO && self->kind <= FA_LIFO, "%p: kind %d", (void *)self,
             self->kind);
    queue_check_waiters(self, &self->getters, &get_kind, name);
    queue_check_waiters(self, &self->putters, &put_kind, name);
    FA_CHECK(self->cache_get == NULL || self->cache_get->kind == &get_kind,
             "%s %p: get cache %p", name, (void *)self, (void *)self->cache_get);
    FA_CHECK(self->cache_put == NULL || self->cache_put->kind == &put_kind,
             "%s %p: put cache %p", name, (void *)self, (void *)self->cache_put);
    PyObject *q = self->queue;
    int exact = 0;
    if (q != NULL) {
        exact = self->kind == FA_FIFO ? Py_IS_TYPE(q, (PyTypeObject *)self->st->queue.deque_type)
                                      : PyList_CheckExact(q);
    }
    FA_CHECK(self->native == (exact && (self->ovr & ~OVR_KEEPS_NATIVE) == 0),
             "%s %p: native %d, storage exact %d, overrides %#x", name, (void *)self,
             self->native, exact, self->ovr);
    FA_CHECK(self->maxsize != NULL, "%s %p: no _maxsize", name, (void *)self);
    FA_CHECK(self->maxsize_kind != MS_INT || self->maxsize_n > 0, "%s %p: int bound %zd", name,
             (void *)self, self->maxsize_n);
    FA_CHECK(self->maxsize_kind != MS_FLOAT || !(self->maxsize_d <= 0.0),
             "%s %p: float bound %g", name, (void *)self, self->maxsize_d);
    FA_CHECK(self->shutdown == 0 || self->shutdown == 1, "%s %p: shutdown %d", name,
             (void *)self, self->shutdown);
    if (!self->unchecked) {
        FA_CHECK(self->unfinished >= 0, "%s %p: %zd unfinished tasks", name, (void *)self,
                 self->unfinished);
        /* shutdown(immediate=True) counts the discarded items down and sets _finished after
         * the drain, as asyncio does; an item's __del__ in between sees the count already 0 */
        FA_CHECK(self->shutting || self->fin_set == (self->unfinished == 0),
                 "%s %p: finished flag %d with %zd unfinished tasks", name, (void *)self,
                 self->fin_set, self->unfinished);
        if (self->shutdown && self->native && !self->shutting) {
            for (int w = 0; w < 2; w++) {
                fa_waitq *wq = w ? &self->putters : &self->getters;
                Py_ssize_t i = 0;
                for (FaOp *op = wq->head; op != NULL && i < FA_WAITQ_CHECK_MAX;
                     op = op->next, i++) {
                    FA_CHECK(fa_op_is_foreign(op), "%s %p: %s() %p waits after shutdown",
                             name, (void *)self, op->kind->name, (void *)op);
                }
            }
        }
    }
    if (self->kind == FA_PRIO && q != NULL && PyList_CheckExact(q) && !self->exposed
        && PyList_GET_SIZE(q) <= 4 * FA_WAITQ_CHECK_MAX) {
        FA_CHECK(fa_prio_in_order(q), "%s %p: heap of %zd items out of order", name, (void *)self,
                 PyList_GET_SIZE(q));
    }
}
#define FA_CONSISTENT queue_check  /* FA_ASSERT_CONSISTENT(self) runs it (debug.h) */
#endif

/* ------------------------------------------------------------------ small helpers */

static int
no_queue(FaQueue *self)
{
    PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '_queue'",
                 Py_TYPE(self)->tp_name);
    return -1;
}

static void
update_native(FaQueue *self)
{
    PyObject *q = self->queue;
    int exact = 0;
    if (q != NULL) {
        exact = self->kind == FA_FIFO ? Py_IS_TYPE(q, (PyTypeObject *)self->st->queue.deque_type)
                                      : PyList_CheckExact(q);
    }
    self->native = exact && (self->ovr & ~OVR_KEEPS_NATIVE) == 0;
}

/* obj.name() or obj.name(arg) as a new reference */
static PyObject *
call_method(PyObject *obj, PyObject *name, PyObject *arg)
{
    PyObject *args[2] = {obj, arg};
    size_t n = arg ? 2 : 1;
    return PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* descr(obj) or descr(obj, arg) for an unbound C method */
static PyObject *
call_descr(PyObject *descr, PyObject *obj, PyObject *arg)
{
    PyObject *args[2] = {obj, arg};
    return PyObject_Vectorcall(descr, args, arg ? 2 : 1, NULL);
}

static int
set_maxsize(FaQueue *self, PyObject *v)
{
    int kind = MS_OBJECT;
    Py_ssize_t n = 0;
    double d = 0.0;
    if (PyLong_CheckExact(v) || PyBool_Check(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow < 0 || (overflow == 0 && x <= 0)) {
            kind = MS_UNBOUNDED;
        }
        else {
            kind = MS_INT;
            n = (overflow > 0 || x > (long long)PY_SSIZE_T_MAX) ? PY_SSIZE_T_MAX : (Py_ssize_t)x;
        }
    }
    else if (PyFloat_CheckExact(v)) {
        d = PyFloat_AS_DOUBLE(v);
        kind = d <= 0.0 ? MS_UNBOUNDED : MS_FLOAT;  /* NaN: never full, as `n >= nan` */
    }
    Py_XSETREF(self->maxsize, Py_NewRef(v));
    self->maxsize_kind = kind;
    self->maxsize_n = n;
    self->maxsize_d = d;
    return 0;
}

/* ------------------------------------------------------------------ storage (_init/_put/_get) */

/* a PriorityQueue's heap (self->queue) as prio.h's push and pop see it */
#define QUEUE_HEAP(self) \
    (&(fa_prio_heap){(self)->st, &(self)->dc, &(self)->queue, &(self)->version, (self)})

static int
kind_init(FaQueue *self, int kind)
{
    PyObject *q = kind == FA_FIFO ? PyObject_CallNoArgs(self->st->queue.deque_type) : PyList_New(0);
    if (q == NULL) {
        return -1;
    }
    PyObject *old = self->queue;
    self->queue = q;
    self->exposed = 0;  /* a fresh container nobody else has seen */
    self->version++;
    update_native(self);
    Py_XDECREF(old);  // Beware: the old storage's items may run __del__
    return 0;
}

/* The base _put of the given kind on self._queue. */
static int
kind_put(FaQueue *self, int kind, PyObject *item)
{
    PyObject *q = self->queue;
    if (q == NULL) {
        return no_queue(self);
    }
    fa_state *st = self->st;
    int rc = 0;
    Py_INCREF(q);
    if (kind == FA_PRIO) {
        if (!PyList_Check(q)) {
            PyErr_SetString(PyExc_TypeError, "heap argument must be a list");
            rc = -1;
        }
        else {
            rc = fa_prio_push(QUEUE_HEAP(self), q, item);
        }
    }
    else if (kind == FA_LIFO && PyList_CheckExact(q)) {
        rc = PyList_Append(q, item);
        self->version++;
    }
    else {
        // Beware: a foreign container
        PyObject *r = Py_IS_TYPE(q, (PyTypeObject *)st->queue.deque_type)
                          ? call_descr(st->queue.deque_append, q, item)
                          : call_method(q, st->queue.str_append, item);
        self->version++;
        rc = r ? 0 : -1;
        Py_XDECREF(r);
    }
    Py_DECREF(q);
    return rc;
}

/* The base _get of the given kind on self._queue: a new reference or NULL. */
static PyObject *
kind_get(FaQueue *self, int kind)
{
    PyObject *q = self->queue;
    if (q == NULL) {
        no_queue(self);
        return NULL;
    }
    fa_state *st = self->st;
    PyObject *r;
    Py_INCREF(q);
    if (kind == FA_PRIO) {
        if (!PyList_Check(q)) {
            PyErr_SetString(PyExc_TypeError, "heap argument must be a list");
            r = NULL;
        }
        else {
            r = fa_prio_pop(QUEUE_HEAP(self), q);
        }
    }
    else if (kind == FA_LIFO) {
        if (PyList_CheckExact(q)) {
            if (PyList_GET_SIZE(q) == 0) {
                PyErr_SetString(PyExc_IndexError, "pop from empty list");
                r = NULL;
            }
            else {
                r = fa_list_take_last(st, q);
            }
        }
        else {
            r = call_method(q, st->queue.str_pop, NULL);  // Beware: a foreign container
        }
        self->version++;
    }
    else {
        r = Py_IS_TYPE(q, (PyTypeObject *)st->queue.deque_type)
                ? call_descr(st->queue.deque_popleft, q, NULL)
                : call_method(q, st->queue.str_popleft, NULL);  // Beware: a foreign container
        self->version++;
    }
    Py_DECREF(q);
    return r;
}

/* self._put(item), honouring an override */
static int
q_put(FaQueue *self, PyObject *item)
{
    if (FA_UNLIKELY(self->ovr & OVR_PUT)) {
        PyObject *r = call_method((PyObject *)self, self->st->queue.str_put, item);  // Beware
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    return kind_put(self, self->kind, item);
}

/* self._get(), honouring an override */
static PyObject *
q_get(FaQueue *self)
{
    if (FA_UNLIKELY(self->ovr & OVR_GET)) {
        return call_method((PyObject *)self, self->st->queue.str_get, NULL);  // Beware
    }
    return kind_get(self, self->kind);
}

/* ------------------------------------------------------------------ size predicates */

/* Queue.qsize: len(self._queue); -1 on error */
static Py_ssize_t
base_qsize(FaQueue *self)
{
    if (self->queue == NULL) {
        return no_queue(self);
    }
    return PyObject_Size(self->queue);
}

/* Queue.empty: not self._queue; 1, 0, -1 */
static int
base_empty(FaQueue *self)
{
    PyObject *q = self->queue;
    if (FA_LIKELY(self->native)) {
        return Py_SIZE(q) == 0;
    }
    if (q == NULL) {
        return no_queue(self);
    }
    Py_INCREF(q);
    int r = PyObject_Not(q);  // Beware: a foreign container's __bool__/__len__
    Py_DECREF(q);
    return r;
}

static int
q_empty(FaQueue *self)
{
    if (FA_UNLIKELY(self->ovr & OVR_EMPTY)) {
        return fa_call_bool((PyObject *)self, self->st->queue.str_empty);  // Beware
    }
    return base_empty(self);
}

/* Queue.full: False if self._maxsize <= 0 else self.qsize() >= self._maxsize; 1, 0, -1 */
static int
base_full(FaQueue *self)
{
    int kind = self->maxsize_kind;
    if (kind == MS_UNBOUNDED) {
        return 0;
    }
    if (kind != MS_OBJECT && !(self->ovr & OVR_QSIZE)) {
        Py_ssize_t n = base_qsize(self);
        if (n < 0) {
            return -1;
        }
        return kind == MS_INT ? n >= self->maxsize_n : (double)n >= self->maxsize_d;
    }
    /* the Python way, for any _maxsize object or an overridden qsize() */
    PyObject *ms = Py_NewRef(self->maxsize);
    int r = -1;
    PyObject *qs = NULL;
    if (kind == MS_OBJECT) {
        PyObject *zero = PyLong_FromLong(0);
        if (zero == NULL) {
            goto done;
        }
        int le = PyObject_RichCompareBool(ms, zero, Py_LE);  // Beware: user comparison
        Py_DECREF(zero);
        if (le != 0) {
            r = le < 0 ? -1 : 0;
            goto done;
        }
    }
    if (self->ovr & OVR_QSIZE) {
        qs = call_method((PyObject *)self, self->st->queue.str_qsize, NULL);  // Beware
    }
    else {
        Py_ssize_t n = base_qsize(self);
        qs = n < 0 ? NULL : PyLong_FromSsize_t(n);
    }
    if (qs == NULL) {
        goto done;
    }
    r = PyObject_RichCompareBool(qs, ms, Py_GE);  // Beware: user comparison
done:
    Py_XDECREF(qs);
    Py_DECREF(ms);
    return r;
}

static int
q_full(FaQueue *self)
{
    if (FA_UNLIKELY(self->ovr & OVR_FULL)) {
        return fa_call_bool((PyObject *)self, self->st->queue.str_full);  // Beware
    }
    return base_full(self);
}

/* ------------------------------------------------------------------ waking, _finished */

/* Wake a popped waiter if its future is still pending: 1 woken, 0 it was done, -1 error. */
static int
wake_op(fa_state *st, FaOp *op)
{
    if ((op->flags & FA_OPF_WOKEN) || op->fut == NULL) {
        return 0;
    }
    PyObject *fut = Py_NewRef(op->fut);
    int rc = fa_fut_done(st, fut);  // Beware: a loop's future type may run Python code
    if (rc == 0 && op->fut == fut && !(op->flags & FA_OPF_WOKEN)) {
        op->flags |= FA_OPF_WOKEN;
        if (fa_fut_set_result(st, fut, Py_None) < 0) {  // Beware: loop.call_soon
            op->flags &= ~FA_OPF_WOKEN;
            rc = -1;
        }
        else {
            rc = 1;
        }
    }
    else if (rc > 0) {
        rc = 0;
    }
    Py_DECREF(fut);
    return rc;
}

/* _wakeup_next: pop waiters until one is pending, and wake it. 0 or -1. */
static int
wakeup_next(FaQueue *self, fa_waitq *q)
{
    FaOp *op;
    while ((op = fa_waitq_popleft(q)) != NULL) {  // new ref
        int r = wake_op(self->st, op);
        Py_DECREF(op);
        if (r != 0) {
            FA_ASSERT_CONSISTENT(self);
            return r < 0 ? -1 : 0;
        }
    }
    return 0;
}

/* shutdown: pop and wake every waiter */
static int
wakeup_all(FaQueue *self, fa_waitq *q)
{
    FaOp *op;
    while ((op = fa_waitq_popleft(q)) != NULL) {  // new ref
        int r = wake_op(self->st, op);
        Py_DECREF(op);
        if (r < 0) {
            return -1;
        }
    }
    return 0;
}

/* self._wakeup_next(self._getters / self._putters), honouring an override (which gets a view,
 * as asyncio's gets the deque). 0 or -1. */
static int
q_wakeup_next(FaQueue *self, fa_waitq *q)
{
    if (FA_UNLIKELY(self->ovr & OVR_WAKEUP_NEXT)) {
        PyObject *view = fa_waitview_new(self->st, (PyObject *)self, q);  // new ref
        if (view == NULL) {
            return -1;
        }
        // Beware: subclass code
        PyObject *r = call_method((PyObject *)self, self->st->queue.str_wakeup_next, view);
        Py_DECREF(view);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    return wakeup_next(self, q);
}

/* _finished, made on first need (a new reference) */
static PyObject *
get_finished(FaQueue *self)
{
    if (self->finished == NULL) {
        PyObject *ev = PyObject_CallNoArgs((PyObject *)self->st->semaphore.EventType);  // new ref
        if (ev == NULL) {
            return NULL;
        }
        if (self->fin_set) {
            PyObject *r = call_descr(self->st->queue.event_set, ev, NULL);  // no waiters yet
            if (r == NULL) {
                Py_DECREF(ev);
                return NULL;
            }
            Py_DECREF(r);
        }
        if (self->finished == NULL) {
            self->finished = ev;
        }
        else {
            Py_DECREF(ev);
        }
    }
    return Py_NewRef(self->finished);
}

/* self._finished.set() / .clear(): our Event's C method, or, for an object code assigned to
 * _finished (asyncio lets it), its own method. 0 or -1. */
static int
finished_call(FaQueue *self, PyObject *descr, const char *name)
{
    PyObject *ev = Py_NewRef(self->finished);
    PyObject *r = Py_IS_TYPE(ev, self->st->semaphore.EventType)
                      ? call_descr(descr, ev, NULL)             // Beware: set() wakes join()ers
                      : PyObject_CallMethod(ev, name, NULL);    // Beware: any object's code
    Py_DECREF(ev);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int
finished_clear(FaQueue *self)
{
    self->fin_set = 0;
    if (self->finished == NULL) {
        return 0;
    }
    return finished_call(self, self->st->queue.event_clear, "clear");
}

static int
finished_set(FaQueue *self)
{
    self->fin_set = 1;
    if (self->finished == NULL) {
        return 0;
    }
    return finished_call(self, self->st->queue.event_set, "set");
}

/* ------------------------------------------------------------------ put_nowait / get_nowait */

/* Queue.put_nowait as asyncio writes it, with the native path inlined. 0 or -1. */
static int
put_nowait_impl(FaQueue *self, PyObject *item)
{
    if (self->shutdown) {
        PyErr_SetNone(self->st->queue.QueueShutDown);
        return -1;
    }
    if (FA_LIKELY(self->native)) {
        PyObject *q = self->queue;
        int full;
        switch (self->maxsize_kind) {
        case MS_UNBOUNDED:
            full = 0;
            break;
        case MS_INT:
            full = Py_SIZE(q) >= self->maxsize_n;
            break;
        case MS_FLOAT:
            full = (double)Py_SIZE(q) >= self->maxsize_d;
            break;
        default:
            full = base_full(self);
            if (full < 0) {
                return -1;
            }
        }
        if (full) {
            PyErr_SetNone(self->st->queue.QueueFull);
            return -1;
        }
    }
    else {
        int full = q_full(self);
        if (full < 0) {
            return -1;
        }
        if (full) {
            PyErr_SetNone(self->st->queue.QueueFull);
            return -1;
        }
    }
    if (FA_LIKELY(self->native) && self->kind != FA_PRIO) {
        /* native is re-read: a _maxsize object's comparison above may have run Python code */
        PyObject *q = self->queue;
        if (self->kind == FA_LIFO) {
            if (PyList_Append(q, item) < 0) {
                return -1;
            }
        }
        else {
            PyObject *r = call_descr(self->st->queue.deque_append, q, item);
            if (r == NULL) {
                return -1;
            }
            Py_DECREF(r);
        }
        self->version++;
    }
    else if (q_put(self, item) < 0) {
        return -1;
    }
    self->unfinished++;
    if (FA_UNLIKELY(self->finished != NULL) || self->fin_set) {
        if (finished_clear(self) < 0) {
            return -1;
        }
    }
    if ((self->getters.len | (self->ovr & OVR_WAKEUP_NEXT))
        && q_wakeup_next(self, &self->getters) < 0) {
        return -1;
    }
    FA_ASSERT_CONSISTENT(self);
    return 0;
}

/* Queue.get_nowait as asyncio writes it: a new reference or NULL. */
static PyObject *
get_nowait_impl(FaQueue *self)
{
    PyObject *item;
    if (FA_LIKELY(self->native) && self->kind != FA_PRIO) {
        PyObject *q = self->queue;
        if (Py_SIZE(q) == 0) {
            goto empty;
        }
        if (self->kind == FA_LIFO) {
            item = fa_list_take_last(self->st, q);
            if (item == NULL) {
                return NULL;
            }
        }
        else {
            item = call_descr(self->st->queue.deque_popleft, q, NULL);
            if (item == NULL) {
                return NULL;
            }
        }
        self->version++;
    }
    else {
        int e = q_empty(self);
        if (e < 0) {
            return NULL;
        }
        if (e) {
            goto empty;
        }
        item = q_get(self);
        if (item == NULL) {
            return NULL;
        }
    }
    if ((self->putters.len | (self->ovr & OVR_WAKEUP_NEXT))
        && q_wakeup_next(self, &self->putters) < 0) {
        Py_DECREF(item);  /* as asyncio: the item is lost with the exception */
        return NULL;
    }
    FA_ASSERT_CONSISTENT(self);
    return item;
empty:
    PyErr_SetNone(self->shutdown ? self->st->queue.QueueShutDown : self->st->queue.QueueEmpty);
    return NULL;
}

/* self.put_nowait(item) / self.get_nowait(), honouring overrides: new references */
static PyObject *
q_put_nowait(FaQueue *self, PyObject *item)
{
    if (FA_UNLIKELY(self->ovr & OVR_PUT_NOWAIT)) {
        return call_method((PyObject *)self, self->st->queue.str_put_nowait, item);  // Beware
    }
    if (put_nowait_impl(self, item) < 0) {
        return NULL;
    }
    return Py_NewRef(Py_None);
}

static PyObject *
q_get_nowait(FaQueue *self)
{
    if (FA_UNLIKELY(self->ovr & OVR_GET_NOWAIT)) {
        return call_method((PyObject *)self, self->st->queue.str_get_nowait, NULL);  // Beware
    }
    return get_nowait_impl(self);
}

/* ------------------------------------------------------------------ get() / put() / join() */

/* One turn of asyncio's `while self.empty(): ...wait...; return self.get_nowait()`. */
static PySendResult
get_step(FaOp *op, PyObject **res)
{
    FaQueue *self = (FaQueue *)op->owner;
    int e = q_empty(self);
    if (e < 0) {
        return PYGEN_ERROR;
    }
    if (!e) {
        PyObject *item = q_get_nowait(self);
        if (item == NULL) {
            return PYGEN_ERROR;
        }
        *res = item;
        return PYGEN_RETURN;
    }
    if (self->shutdown) {
        e = q_empty(self);  /* asyncio: `if self._is_shutdown and self.empty()` */
        if (e < 0) {
            return PYGEN_ERROR;
        }
        if (e) {
            PyErr_SetNone(self->st->queue.QueueShutDown);
            return PYGEN_ERROR;
        }
    }
    PySendResult r = fa_op_wait_self(op, self->ovr & OVR_GET_LOOP, &self->loop, &self->getters,
                                     res);
    FA_ASSERT_CONSISTENT(self);
    return r;
}

static PySendResult
get_start(FaOp *op, PyObject **res)
{
    FaQueue *self = (FaQueue *)op->owner;
    if (FA_LIKELY(self->native) && Py_SIZE(self->queue) > 0) {
        PyObject *item = get_nowait_impl(self);
        if (item == NULL) {
            return PYGEN_ERROR;
        }
        *res = item;
        return PYGEN_RETURN;
    }
    return get_step(op, res);
}

/* A woken waiter's get()/put() failed for a reason of its own (an item's comparison raised,
 * leaving the heap as it was): the wake-up it took must not be lost, or a waiter behind it
 * stays asleep while items (room) are there. asyncio loses it (its heapq loses the item too,
 * see the top); we pass it on, as for a woken waiter that is cancelled. Only on the native
 * path: with overridden hooks asyncio's behaviour is kept exactly. The exception is kept. */
static void
pass_on_after_error(FaQueue *self, int putter)
{
    if (!self->native || self->shutdown || (self->ovr & OVR_WAKEUP_NEXT)) {
        return;
    }
    fa_waitq *q = putter ? &self->putters : &self->getters;
    if (q->len == 0) {
        return;
    }
    Py_ssize_t n = Py_SIZE(self->queue);
    int room;
    if (!putter) {
        room = n > 0;
    }
    else {
        switch (self->maxsize_kind) {
        case MS_UNBOUNDED:
            room = 1;
            break;
        case MS_INT:
            room = n < self->maxsize_n;
            break;
        case MS_FLOAT:
            room = !((double)n >= self->maxsize_d);
            break;
        default:
            room = 0;  /* a _maxsize object: asyncio's way (its comparison is Python code) */
        }
    }
    if (!room) {
        return;
    }
    PyObject *exc = fa_fetch_exc();
    Py_INCREF(self);
    if (wakeup_next(self, q) < 0) {
        PyErr_Clear();  /* the first error is the one to report */
    }
    Py_DECREF(self);
    fa_restore_exc(exc);
}

static PySendResult put_step(FaOp *op, PyObject **res);

/* A woken get() (putter 0) or put() (putter 1) takes one more turn of its loop. */
static PySendResult
waiter_resume(FaOp *op, PyObject **res, int putter)
{
    fa_waitq_unlink(op);  /* normally the waker popped it already */
    op->flags &= ~FA_OPF_WOKEN;
    FA_ASSERT_CONSISTENT((FaQueue *)op->owner);
    PySendResult r = putter ? put_step(op, res) : get_step(op, res);
    if (r == PYGEN_ERROR) {
        pass_on_after_error((FaQueue *)op->owner, putter);
    }
    return r;
}

static PySendResult
get_resume(FaOp *op, PyObject *Py_UNUSED(value), PyObject **res)
{
    return waiter_resume(op, res, 0);
}

/* Is the waiter's future cancelled? asyncio first calls fut.cancel() (a no-op when done), so
 * a pending one becomes cancelled: 1, 0, -1. */
static int
cancel_waiter(fa_state *st, FaOp *op)
{
    if (op->flags & FA_OPF_WOKEN) {
        return 0;  /* done with our result */
    }
    PyObject *fut = op->fut;
    if (fut == NULL) {
        return 1;
    }
    int c = fa_fut_cancelled(st, fut);
    if (c != 0) {
        return c;
    }
    PyObject *args[1] = {fut};
    PyObject *r = PyObject_VectorcallMethod(st->core.str_cancel, args,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        return -1;
    }
    c = PyObject_IsTrue(r);  /* True: it was pending and is cancelled now */
    Py_DECREF(r);
    return c;
}

/* asyncio's bare `except:` around `await getter` (putter 0) or `await putter` (putter 1) */
static int
waiter_exc(FaOp *op, int putter)
{
    FaQueue *self = (FaQueue *)op->owner;
    int cancelled = cancel_waiter(self->st, op);
    fa_waitq_unlink(op);
    FA_ASSERT_CONSISTENT(self);
    if (cancelled < 0) {
        return -1;
    }
    int blocked = putter ? q_full(self) : q_empty(self);
    if (blocked < 0) {
        return -1;
    }
    if (!blocked && !cancelled) {
        /* woken by put_nowait() (a getter) or get_nowait() (a putter), but leaving: wake the
         * next in line */
        return q_wakeup_next(self, putter ? &self->putters : &self->getters);
    }
    return 0;
}

static int
get_exc(FaOp *op, PyObject *Py_UNUSED(exc))
{
    return waiter_exc(op, 0);
}

static const fa_opkind get_kind = {"Queue.get", get_start, get_resume, get_exc, NULL};

/* One turn of asyncio's `while self.full(): ...wait...; return self.put_nowait(item)`. */
static PySendResult
put_step(FaOp *op, PyObject **res)
{
    FaQueue *self = (FaQueue *)op->owner;
    int f = q_full(self);
    if (f < 0) {
        return PYGEN_ERROR;
    }
    if (!f) {
        PyObject *r = q_put_nowait(self, op->arg);
        if (r == NULL) {
            return PYGEN_ERROR;
        }
        *res = r;
        return PYGEN_RETURN;
    }
    if (self->shutdown) {
        PyErr_SetNone(self->st->queue.QueueShutDown);
        return PYGEN_ERROR;
    }
    PySendResult r = fa_op_wait_self(op, self->ovr & OVR_GET_LOOP, &self->loop, &self->putters,
                                     res);
    FA_ASSERT_CONSISTENT(self);
    return r;
}

static PySendResult
put_start(FaOp *op, PyObject **res)
{
    FaQueue *self = (FaQueue *)op->owner;
    if (FA_LIKELY(self->native) && self->maxsize_kind == MS_UNBOUNDED) {
        if (put_nowait_impl(self, op->arg) < 0) {
            return PYGEN_ERROR;
        }
        *res = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    return put_step(op, res);
}

static PySendResult
put_resume(FaOp *op, PyObject *Py_UNUSED(value), PyObject **res)
{
    return waiter_resume(op, res, 1);
}

static int
put_exc(FaOp *op, PyObject *Py_UNUSED(exc))
{
    return waiter_exc(op, 1);
}

static const fa_opkind put_kind = {"Queue.put", put_start, put_resume, put_exc, NULL};

static PySendResult
join_start(FaOp *op, PyObject **res)
{
    FaQueue *self = (FaQueue *)op->owner;
    if (self->unfinished > 0) {
        PyObject *ev = get_finished(self);  // new ref
        if (ev == NULL) {
            return PYGEN_ERROR;
        }
        PyObject *aw = call_method(ev, self->st->queue.str_wait, NULL);  // new ref
        Py_DECREF(ev);
        if (aw == NULL) {
            return PYGEN_ERROR;
        }
        PySendResult r = fa_op_delegate(op, aw, res);  // `await self._finished.wait()`
        Py_DECREF(aw);
        return r;
    }
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PySendResult
join_resume(FaOp *Py_UNUSED(op), PyObject *Py_UNUSED(value), PyObject **res)
{
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static const fa_opkind join_kind = {"Queue.join", join_start, join_resume, NULL, NULL};

/* ------------------------------------------------------------------ methods */

static PyObject *
queue_put(PyObject *op, PyObject *item)
{
    FaQueue *self = (FaQueue *)op;
    FaOp *o = fa_op_cached(self->st, &self->cache_put, &put_kind, op);
    if (o != NULL) {
        Py_XSETREF(o->arg, Py_NewRef(item));
    }
    return (PyObject *)o;
}

static PyObject *
queue_get(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaQueue *self = (FaQueue *)op;
    return (PyObject *)fa_op_cached(self->st, &self->cache_get, &get_kind, op);
}

static PyObject *
queue_join(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaQueue *self = (FaQueue *)op;
    return (PyObject *)fa_op_new(self->st, &join_kind, op, NULL);
}

static PyObject *
queue_put_nowait(PyObject *op, PyObject *item)
{
    if (put_nowait_impl((FaQueue *)op, item) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
queue_get_nowait(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return get_nowait_impl((FaQueue *)op);
}

static PyObject *
queue_qsize(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = base_qsize((FaQueue *)op);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *
queue_empty(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    int r = base_empty((FaQueue *)op);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
queue_full(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    int r = base_full((FaQueue *)op);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
queue_task_done(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaQueue *self = (FaQueue *)op;
    if (self->unfinished <= 0) {
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    self->unfinished--;
    if (self->unfinished == 0 && finished_set(self) < 0) {
        return NULL;
    }
    FA_ASSERT_CONSISTENT(self);
    Py_RETURN_NONE;
}

static PyObject *
queue_shutdown(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    FaQueue *self = (FaQueue *)op;
    PyObject *immediate = Py_False;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError,
                     "Queue.shutdown() takes from 1 to 2 positional arguments but %zd were given",
                     nargs + 1);
        return NULL;
    }
    if (nargs == 1) {
        immediate = args[0];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(key, "immediate") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "Queue.shutdown() got an unexpected keyword argument '%S'", key);
            return NULL;
        }
        if (nargs == 1) {
            PyErr_SetString(PyExc_TypeError,
                            "Queue.shutdown() got multiple values for argument 'immediate'");
            return NULL;
        }
        immediate = args[nargs + i];
    }
    int imm = PyObject_IsTrue(immediate);
    if (imm < 0) {
        return NULL;
    }
    self->shutdown = 1;
    self->shutting++;  /* until every waiter is woken, some still wait (queue_check) */
    PyObject *res = NULL, *exc = NULL;
    if (imm) {
        for (;;) {
            int e = q_empty(self);
            if (e < 0) {
                goto drain_failed;
            }
            if (e) {
                break;
            }
            PyObject *item = q_get(self);  /* discarded through the overridable hook */
            if (item == NULL) {
                goto drain_failed;
            }
            Py_DECREF(item);  // Beware: __del__
            if (self->unfinished > 0) {
                self->unfinished--;
            }
        }
        if (self->unfinished == 0 && finished_set(self) < 0) {
            goto drain_failed;
        }
    }
    goto wake;
drain_failed:
    /* an item's comparison (or a hook) raised while discarding: the queue is shut down all
     * the same, so its waiters must still hear of it (asyncio leaves them waiting); the
     * error is raised afterwards */
    exc = fa_fetch_exc();
wake:
    /* all getters re-check queue-empty to raise QueueShutDown; all putters raise */
    if (wakeup_all(self, &self->getters) < 0 || wakeup_all(self, &self->putters) < 0) {
        if (exc == NULL) {
            goto done;
        }
        PyErr_Clear();  /* the first error is the one to report */
    }
    if (exc != NULL) {
        fa_restore_exc(exc);
        goto done;
    }
    res = Py_NewRef(Py_None);
done:
    self->shutting--;
    FA_ASSERT_CONSISTENT(self);
    return res;
}

/* _init / _put / _get of each kind: what a subclass reaches with super() */
#define KIND_METHODS(pfx, kind) \
    static PyObject *pfx##_init_m(PyObject *op, PyObject *Py_UNUSED(maxsize)) \
    { \
        if (kind_init((FaQueue *)op, kind) < 0) { \
            return NULL; \
        } \
        Py_RETURN_NONE; \
    } \
    static PyObject *pfx##_put_m(PyObject *op, PyObject *item) \
    { \
        if (kind_put((FaQueue *)op, kind, item) < 0) { \
            return NULL; \
        } \
        Py_RETURN_NONE; \
    } \
    static PyObject *pfx##_get_m(PyObject *op, PyObject *Py_UNUSED(ignored)) \
    { \
        return kind_get((FaQueue *)op, kind); \
    }
KIND_METHODS(fifo, FA_FIFO)
KIND_METHODS(prio, FA_PRIO)
KIND_METHODS(lifo, FA_LIFO)

/* Queue._wakeup_next(waiters): wake the first waiter in waiters whose future is not done,
 * dropping the ones before it, as asyncio's does for its deques. A view of this queue's own
 * FIFOs is served in C; anything else (another queue's view, a user's deque) the way asyncio's
 * code runs it: `while waiters: w = waiters.popleft(); if not w.done(): w.set_result(None)`. */
static PyObject *
queue_wakeup_next_m(PyObject *op, PyObject *waiters)
{
    FaQueue *self = (FaQueue *)op;
    fa_state *st = self->st;
    fa_waitq *q = fa_waitview_queue(st, waiters);
    if (q == &self->getters || q == &self->putters) {
        if (wakeup_next(self, q) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    int rc = 0;
    Py_INCREF(waiters);
    for (;;) {
        int more = PyObject_IsTrue(waiters);  // Beware: any object's __bool__/__len__
        if (more <= 0) {
            rc = more;
            break;
        }
        PyObject *w = call_method(waiters, st->queue.str_popleft, NULL);  // new ref
        if (w == NULL) {
            rc = -1;
            break;
        }
        int done = fa_fut_done(st, w);
        if (done == 0) {
            rc = fa_fut_set_result(st, w, Py_None);
        }
        Py_DECREF(w);
        if (done != 1) {
            rc = done < 0 ? -1 : rc;
            break;
        }
    }
    Py_DECREF(waiters);
    if (rc < 0) {
        return NULL;
    }
    FA_ASSERT_CONSISTENT(self);
    Py_RETURN_NONE;
}

static PyObject *
queue_private_get_loop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaQueue *self = (FaQueue *)op;
    return fa_get_loop(self->st, op, &self->loop);
}

/* pickle / copy, as asyncio's queues (plain Python objects) allow for an idle queue:
 * (type, (maxsize,), state); __setstate__ assigns through the attributes. Waiting futures
 * cannot be carried over (asyncio's pickling fails on them too). */
static PyObject *
queue_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaQueue *self = (FaQueue *)op;
    if (self->getters.len || self->putters.len) {
        PyErr_Format(PyExc_TypeError, "cannot pickle a %.100s with waiting getters or putters",
                     Py_TYPE(op)->tp_name);
        return NULL;
    }
    PyObject *state = self->dict ? PyDict_Copy(self->dict) : PyDict_New();  // new ref
    if (state == NULL) {
        return NULL;
    }
    PyObject *n = PyLong_FromSsize_t(self->unfinished);
    self->exposed = 1;
    if (n == NULL || (self->queue && PyDict_SetItemString(state, "_queue", self->queue) < 0)
        || PyDict_SetItemString(state, "_unfinished_tasks", n) < 0
        || PyDict_SetItemString(state, "_is_shutdown", self->shutdown ? Py_True : Py_False) < 0) {
        Py_XDECREF(n);
        Py_DECREF(state);
        return NULL;
    }
    Py_DECREF(n);
    PyObject *ms = self->maxsize ? self->maxsize : Py_None;
    return Py_BuildValue("(O(O)N)", (PyObject *)Py_TYPE(op), ms, state);
}

static PyObject *
queue_setstate(PyObject *op, PyObject *state)
{
    FaQueue *self = (FaQueue *)op;
    if (!PyDict_Check(state)) {
        PyErr_SetString(PyExc_TypeError, "state must be a dict");
        return NULL;
    }
    PyObject *items = PyDict_Items(state);  // new ref: setattr may run Python code
    if (items == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        if (PyObject_SetAttr(op, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1)) < 0) {
            Py_DECREF(items);
            return NULL;
        }
    }
    Py_DECREF(items);
    /* _finished follows the restored count, as it did when pickled (asyncio pickles the Event) */
    if ((self->unfinished > 0 ? finished_clear(self) : finished_set(self)) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Append text (a new reference, stolen) to *acc. */
static int
acc_append(PyObject **acc, PyObject *text)
{
    if (text == NULL) {
        return -1;
    }
    PyObject *r = PyUnicode_Concat(*acc, text);
    Py_DECREF(text);
    if (r == NULL) {
        return -1;
    }
    Py_SETREF(*acc, r);
    return 0;
}

static PyObject *
queue_format(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FaQueue *self = (FaQueue *)op;
    PyObject *ms = Py_NewRef(self->maxsize ? self->maxsize : Py_None);
    PyObject *acc = PyUnicode_FromFormat("maxsize=%R", ms);
    Py_DECREF(ms);
    if (acc == NULL) {
        return NULL;
    }
    PyObject *q = Py_XNewRef(self->queue);
    if (q != NULL) {
        int t = PyObject_IsTrue(q);
        if (t > 0) {
            PyObject *lst = PySequence_List(q);
            t = lst == NULL ? -1 : acc_append(&acc, PyUnicode_FromFormat(" _queue=%R", lst));
            Py_XDECREF(lst);
        }
        Py_DECREF(q);
        if (t < 0) {
            goto error;
        }
    }
    if (self->getters.len
        && acc_append(&acc, PyUnicode_FromFormat(" _getters[%zd]", self->getters.len)) < 0) {
        goto error;
    }
    if (self->putters.len
        && acc_append(&acc, PyUnicode_FromFormat(" _putters[%zd]", self->putters.len)) < 0) {
        goto error;
    }
    if (self->unfinished
        && acc_append(&acc, PyUnicode_FromFormat(" tasks=%zd", self->unfinished)) < 0) {
        goto error;
    }
    if (self->shutdown && acc_append(&acc, PyUnicode_FromString(" shutdown")) < 0) {
        goto error;
    }
    return acc;
error:
    Py_DECREF(acc);
    return NULL;
}

static PyObject *
type_name(PyObject *op)
{
    return PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
}

static PyObject *
queue_repr(PyObject *op)
{
    PyObject *name = type_name(op);
    if (name == NULL) {
        return NULL;
    }
    PyObject *fmt = call_method(op, ((FaQueue *)op)->st->queue.str_format, NULL);  // self._format()
    PyObject *id = PyLong_FromVoidPtr(op);
    PyObject *hex = id ? PyNumber_ToBase(id, 16) : NULL;
    PyObject *r = NULL;
    if (fmt != NULL && hex != NULL) {
        r = PyUnicode_FromFormat("<%U at %U %S>", name, hex, fmt);
    }
    Py_DECREF(name);
    Py_XDECREF(fmt);
    Py_XDECREF(id);
    Py_XDECREF(hex);
    return r;
}

static PyObject *
queue_str(PyObject *op)
{
    PyObject *name = type_name(op);
    if (name == NULL) {
        return NULL;
    }
    PyObject *fmt = call_method(op, ((FaQueue *)op)->st->queue.str_format, NULL);
    PyObject *r = fmt ? PyUnicode_FromFormat("<%U %S>", name, fmt) : NULL;
    Py_DECREF(name);
    Py_XDECREF(fmt);
    return r;
}

/* ------------------------------------------------------------------ construction, GC */

static int
queue_kind_of(fa_state *st, PyTypeObject *tp)
{
    PyObject *mro = tp->tp_mro;
    if (mro != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
            PyObject *b = PyTuple_GET_ITEM(mro, i);
            if (b == (PyObject *)st->queue.PriorityQueueType) {
                return FA_PRIO;
            }
            if (b == (PyObject *)st->queue.LifoQueueType) {
                return FA_LIFO;
            }
            if (b == (PyObject *)st->queue.QueueType) {
                return FA_FIFO;
            }
        }
    }
    return FA_FIFO;
}

static PyTypeObject *
kind_type(fa_state *st, int kind)
{
    return kind == FA_PRIO ? st->queue.PriorityQueueType
           : kind == FA_LIFO ? st->queue.LifoQueueType : st->queue.QueueType;
}

static int
find_overrides(FaQueue *self)
{
    PyTypeObject *base = kind_type(self->st, self->kind);
    fa_state *st = self->st;
    /* in the order of the OVR_* bits */
    PyObject *names[] = {st->queue.str_init,        st->queue.str_put,
                         st->queue.str_get,         st->queue.str_full,
                         st->queue.str_empty,       st->queue.str_qsize,
                         st->queue.str_put_nowait,  st->queue.str_get_nowait,
                         st->queue.str_wakeup_next, st->core.str_get_loop};
    return fa_find_overrides(Py_TYPE(self), base, names, sizeof(names) / sizeof(names[0]));
}

static PyObject *
queue_new(PyTypeObject *tp, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    fa_state *st;
    FaQueue *self = (FaQueue *)fa_new_instance(tp, &st);  // zeroed
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->kind = queue_kind_of(st, tp);
    self->fin_set = 1;
    self->maxsize = PyLong_FromLong(0);
    if (self->maxsize == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->ovr = find_overrides(self);
    return (PyObject *)self;
}

static int
queue_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    FaQueue *self = (FaQueue *)op;
    static const char *const names[] = {"maxsize"};
    PyObject *maxsize = NULL;
    if (fa_parse_init(op, "Queue", args, kwargs, names, 1, &maxsize) < 0) {
        return -1;
    }
    PyObject *zero = NULL;
    if (maxsize == NULL) {
        maxsize = zero = PyLong_FromLong(0);
        if (zero == NULL) {
            return -1;
        }
    }
    int rc = -1;
    if (set_maxsize(self, maxsize) < 0) {
        goto done;
    }
    /* a second __init__ starts afresh, as asyncio's makes new deques and a new Event */
    fa_waitq_release_all(&self->getters);
    fa_waitq_release_all(&self->putters);
    self->unfinished = 0;
    self->fin_set = 1;
    self->unchecked = 0;
    Py_CLEAR(self->finished);
    self->ovr = find_overrides(self);
    update_native(self);
    if (self->ovr & OVR_INIT) {
        PyObject *r = call_method(op, self->st->queue.str_init, maxsize);  // Beware: subclass code
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
    }
    else if (kind_init(self, self->kind) < 0) {
        goto done;
    }
    self->shutdown = 0;
    FA_ASSERT_CONSISTENT(self);
    rc = 0;
done:
    Py_XDECREF(zero);
    return rc;
}

static int
queue_traverse(PyObject *op, visitproc visit, void *arg)
{
    FaQueue *self = (FaQueue *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->queue);
    Py_VISIT(self->maxsize);
    Py_VISIT(self->finished);
    Py_VISIT(self->loop);
    Py_VISIT((PyObject *)self->cache_get);
    Py_VISIT((PyObject *)self->cache_put);
    Py_VISIT(self->dc.type);
    Py_VISIT(self->dc.lt);
    Py_VISIT(self->dc.fields);
    Py_VISIT(self->dict);
    int r = fa_waitq_traverse(&self->getters, visit, arg);
    if (r) {
        return r;
    }
    return fa_waitq_traverse(&self->putters, visit, arg);
}

static int
queue_clear(PyObject *op)
{
    FaQueue *self = (FaQueue *)op;
    self->native = 0;
    Py_CLEAR(self->queue);
    Py_CLEAR(self->maxsize);
    Py_CLEAR(self->finished);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->cache_get);
    Py_CLEAR(self->cache_put);
    Py_CLEAR(self->dc.type);
    Py_CLEAR(self->dc.lt);
    Py_CLEAR(self->dc.fields);
    Py_CLEAR(self->dict);
    fa_waitq_release_all(&self->getters);
    fa_waitq_release_all(&self->putters);
    return 0;
}

static void
queue_dealloc(PyObject *op)
{
    fa_gc_dealloc(op, queue_clear);
}

/* ------------------------------------------------------------------ attributes */

static PyObject *
get_maxsize(PyObject *op, void *Py_UNUSED(c))
{
    FaQueue *self = (FaQueue *)op;
    return Py_NewRef(self->maxsize ? self->maxsize : Py_None);
}

static int
set_maxsize_attr(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    if (fa_refuse_delete(v, "_maxsize") < 0) {
        return -1;
    }
    return set_maxsize((FaQueue *)op, v);
}

static PyObject *
get_queue(PyObject *op, void *Py_UNUSED(c))
{
    FaQueue *self = (FaQueue *)op;
    if (self->queue == NULL) {
        no_queue(self);
        return NULL;
    }
    self->exposed = 1;  /* Python code may edit it from now on */
    return Py_NewRef(self->queue);
}

static int
set_queue(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    FaQueue *self = (FaQueue *)op;
    if (v == NULL && self->queue == NULL) {
        return no_queue(self);
    }
    PyObject *old = self->queue;
    self->queue = Py_XNewRef(v);
    self->exposed = 1;
    self->version++;
    update_native(self);
    FA_ASSERT_CONSISTENT(self);
    Py_XDECREF(old);  // Beware: items' __del__
    return 0;
}

/* _getters / _putters: live deque-like views of the waiter FIFOs (waitview.c). asyncio's are
 * deques of futures that code reads and writes (CPython's test_get_with_putters appends a bare
 * loop future to _putters and expects get() to wake it); assigning one replaces the FIFO's
 * contents, as assigning asyncio's attribute replaces its deque. */
static PyObject *
get_getters(PyObject *op, void *Py_UNUSED(c))
{
    FaQueue *self = (FaQueue *)op;
    return fa_waitview_new(self->st, op, &self->getters);
}

static PyObject *
get_putters(PyObject *op, void *Py_UNUSED(c))
{
    FaQueue *self = (FaQueue *)op;
    return fa_waitview_new(self->st, op, &self->putters);
}

static int
set_waiters(FaQueue *self, fa_waitq *q, PyObject *v, const char *name)
{
    if (fa_refuse_delete(v, name) < 0) {
        return -1;
    }
    if (fa_waitview_assign(self->st, q, v) < 0) {
        return -1;
    }
    FA_ASSERT_CONSISTENT(self);
    return 0;
}

static int
set_getters(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    return set_waiters((FaQueue *)op, &((FaQueue *)op)->getters, v, "_getters");
}

static int
set_putters(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    return set_waiters((FaQueue *)op, &((FaQueue *)op)->putters, v, "_putters");
}

static PyObject *
get_unfinished(PyObject *op, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(((FaQueue *)op)->unfinished);
}

static int
set_unfinished(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    if (fa_refuse_delete(v, "_unfinished_tasks") < 0) {
        return -1;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "_unfinished_tasks must be an int, not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(v);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    ((FaQueue *)op)->unfinished = n;
    ((FaQueue *)op)->unchecked = 1;  /* asyncio lets code write any count */
    return 0;
}

static PyObject *
get_finished_attr(PyObject *op, void *Py_UNUSED(c))
{
    return get_finished((FaQueue *)op);
}

/* _finished = event: join() then waits on it, and the queue sets and clears it (asyncio's
 * queue uses whatever object the attribute holds) */
static int
set_finished_attr(PyObject *op, PyObject *v, void *Py_UNUSED(c))
{
    if (fa_refuse_delete(v, "_finished") < 0) {
        return -1;
    }
    Py_XSETREF(((FaQueue *)op)->finished, Py_NewRef(v));  // Beware: the old one's __del__
    return 0;
}

/* _is_shutdown: asyncio lets code assign it; the count invariants are then off */
static const fa_flag_attr is_shutdown_attr = {
    "_is_shutdown", offsetof(FaQueue, shutdown), offsetof(FaQueue, unchecked)};

/* ------------------------------------------------------------------ type specs */

PyDoc_STRVAR(put_doc, "put($self, item)\n--\n\nPut an item into the queue; wait while it is "
             "full. Raises QueueShutDown if the queue has been shut down.");
PyDoc_STRVAR(get_doc, "get($self, /)\n--\n\nRemove and return an item; wait while the queue is "
             "empty. Raises QueueShutDown once a shut-down queue is empty.");
PyDoc_STRVAR(put_nowait_doc, "put_nowait($self, item)\n--\n\nPut an item without blocking; "
             "QueueFull if there is no free slot, QueueShutDown after shutdown().");
PyDoc_STRVAR(get_nowait_doc, "get_nowait($self, /)\n--\n\nRemove and return an item if one is "
             "available, else raise QueueEmpty (QueueShutDown after shutdown()).");
PyDoc_STRVAR(qsize_doc, "qsize($self, /)\n--\n\nNumber of items in the queue.");
PyDoc_STRVAR(empty_doc, "empty($self, /)\n--\n\nTrue if the queue is empty.");
PyDoc_STRVAR(full_doc, "full($self, /)\n--\n\nTrue if there are maxsize items in the queue "
             "(never, when maxsize <= 0).");
PyDoc_STRVAR(task_done_doc, "task_done($self, /)\n--\n\nIndicate that a formerly enqueued task "
             "is complete. ValueError if called more times than items were put.");
PyDoc_STRVAR(join_doc, "join($self, /)\n--\n\nWait until every item put has been gotten and "
             "marked done with task_done().");
PyDoc_STRVAR(shutdown_doc, "shutdown($self, /, immediate=False)\n--\n\nShut the queue down: "
             "put() raises QueueShutDown, get() once empty (at once if immediate, which also "
             "discards the items and marks them done). Every blocked caller is woken.");
PyDoc_STRVAR(init_doc, "_init($self, maxsize)\n--\n\nCreate the storage (overridable).");
PyDoc_STRVAR(putp_doc, "_put($self, item)\n--\n\nStore an item (overridable).");
PyDoc_STRVAR(getp_doc, "_get($self, /)\n--\n\nTake the next item (overridable).");
PyDoc_STRVAR(format_doc, "_format($self, /)\n--\n\nThe state shown by repr() and str().");
PyDoc_STRVAR(get_loop_doc, "_get_loop($self, /)\n--\n\nThe running loop, binding to it on "
             "first use.");
PyDoc_STRVAR(wakeup_next_doc, "_wakeup_next($self, waiters)\n--\n\nWake the first waiter "
             "in waiters (_getters or _putters) whose future is not done, dropping the ones "
             "before it.");
PyDoc_STRVAR(class_getitem_doc, "See PEP 585");
PyDoc_STRVAR(reduce_doc, "__reduce__($self, /)\n--\n\nPickle and copy support (an idle queue).");
PyDoc_STRVAR(setstate_doc, "__setstate__($self, state, /)\n--\n\nRestore pickled state.");

/* the methods asyncio writes as `def m(self, arg)`: the argument may be passed by keyword */
FA_ONE_ARG_METHOD(queue_put_nowait_kw, queue_put_nowait, "Queue.put_nowait", "item")
FA_ONE_ARG_METHOD(queue_wakeup_next_kw, queue_wakeup_next_m, "Queue._wakeup_next", "waiters")
FA_ONE_ARG_METHOD(fifo_init_kw, fifo_init_m, "Queue._init", "maxsize")
FA_ONE_ARG_METHOD(fifo_put_kw, fifo_put_m, "Queue._put", "item")
FA_ONE_ARG_METHOD(prio_init_kw, prio_init_m, "PriorityQueue._init", "maxsize")
FA_ONE_ARG_METHOD(prio_put_kw, prio_put_m, "PriorityQueue._put", "item")
FA_ONE_ARG_METHOD(lifo_init_kw, lifo_init_m, "LifoQueue._init", "maxsize")
FA_ONE_ARG_METHOD(lifo_put_kw, lifo_put_m, "LifoQueue._put", "item")
#define FA_KW_METH(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL | METH_KEYWORDS

/* the awaitable methods: coroutine functions to inspect (fa_methods_add) */
static PyMethodDef queue_async_methods[] = {
    {"put", queue_put, METH_O, put_doc},
    {"get", queue_get, METH_NOARGS, get_doc},
    {"join", queue_join, METH_NOARGS, join_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef queue_methods[] = {
    {"put_nowait", FA_KW_METH(queue_put_nowait_kw), put_nowait_doc},
    {"get_nowait", queue_get_nowait, METH_NOARGS, get_nowait_doc},
    {"qsize", queue_qsize, METH_NOARGS, qsize_doc},
    {"empty", queue_empty, METH_NOARGS, empty_doc},
    {"full", queue_full, METH_NOARGS, full_doc},
    {"task_done", queue_task_done, METH_NOARGS, task_done_doc},
    {"shutdown", (PyCFunction)(void (*)(void))queue_shutdown, METH_FASTCALL | METH_KEYWORDS,
     shutdown_doc},
    {"_init", FA_KW_METH(fifo_init_kw), init_doc},
    {"_put", FA_KW_METH(fifo_put_kw), putp_doc},
    {"_get", fifo_get_m, METH_NOARGS, getp_doc},
    {"_format", queue_format, METH_NOARGS, format_doc},
    {"_get_loop", queue_private_get_loop, METH_NOARGS, get_loop_doc},
    {"_wakeup_next", FA_KW_METH(queue_wakeup_next_kw), wakeup_next_doc},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {"__reduce__", queue_reduce, METH_NOARGS, reduce_doc},
    {"__setstate__", queue_setstate, METH_O, setstate_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef prio_methods[] = {
    {"_init", FA_KW_METH(prio_init_kw), init_doc},
    {"_put", FA_KW_METH(prio_put_kw), putp_doc},
    {"_get", prio_get_m, METH_NOARGS, getp_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef lifo_methods[] = {
    {"_init", FA_KW_METH(lifo_init_kw), init_doc},
    {"_put", FA_KW_METH(lifo_put_kw), putp_doc},
    {"_get", lifo_get_m, METH_NOARGS, getp_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef queue_getset[] = {
    {"maxsize", get_maxsize, NULL, "Number of items allowed in the queue.", NULL},
    {"_maxsize", get_maxsize, set_maxsize_attr, NULL, NULL},
    {"_queue", get_queue, set_queue, "The items: a deque (Queue) or a list (PriorityQueue, "
     "LifoQueue), live.", NULL},
    {"_getters", get_getters, set_getters, "A live deque-like view of the waiting get()s' "
     "futures.", NULL},
    {"_putters", get_putters, set_putters, "A live deque-like view of the waiting put()s' "
     "futures.", NULL},
    {"_unfinished_tasks", get_unfinished, set_unfinished, NULL, NULL},
    {"_finished", get_finished_attr, set_finished_attr, "The Event join() waits on.", NULL},
    {"_is_shutdown", fa_flag_attr_get, fa_flag_attr_set, NULL, (void *)&is_shutdown_attr},
    {"_loop", fa_loop_attr_get, fa_loop_attr_set, NULL, (void *)offsetof(FaQueue, loop)},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef queue_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(FaQueue, weakreflist), Py_READONLY, NULL},
    {"__dictoffset__", Py_T_PYSSIZET, offsetof(FaQueue, dict), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

#define FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE)

static PyType_Slot queue_slots[] = {
    {Py_tp_new, queue_new},
    {Py_tp_init, queue_init},
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_repr, queue_repr},
    {Py_tp_str, queue_str},
    {Py_tp_methods, queue_methods},
    {Py_tp_getset, queue_getset},
    {Py_tp_members, queue_members},
    {Py_tp_doc, "Queue(maxsize=0)\n--\n\nA drop-in for asyncio.Queue, in C: a FIFO queue for "
                "producer and consumer coroutines."},
    {0, NULL},
};

static PyType_Spec queue_spec = {
    .name = "aiofast.Queue", .basicsize = sizeof(FaQueue), .flags = FLAGS, .slots = queue_slots,
};

static PyType_Slot prio_slots[] = {
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_methods, prio_methods},
    {Py_tp_doc, "PriorityQueue(maxsize=0)\n--\n\nA drop-in for asyncio.PriorityQueue, in C: "
                "retrieves entries in priority order (lowest first), in heapq's order."},
    {0, NULL},
};

static PyType_Spec prio_spec = {
    .name = "aiofast.PriorityQueue", .basicsize = sizeof(FaQueue), .flags = FLAGS,
    .slots = prio_slots,
};

static PyType_Slot lifo_slots[] = {
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_methods, lifo_methods},
    {Py_tp_doc, "LifoQueue(maxsize=0)\n--\n\nA drop-in for asyncio.LifoQueue, in C: retrieves "
                "the most recently added entries first."},
    {0, NULL},
};

static PyType_Spec lifo_spec = {
    .name = "aiofast.LifoQueue", .basicsize = sizeof(FaQueue), .flags = FLAGS,
    .slots = lifo_slots,
};

int
fa_queue_init(PyObject *mod, fa_state *st)
{
    FA_INIT_NEEDS(st->engine.SpecialDescrType);  // fa_methods_add
    FA_INIT_NEEDS(st->semaphore.EventType);  // Queue._finished is an aiofast Event
    PyObject *m;
#define IMPORT(field, modname, attr) \
    do { \
        m = PyImport_ImportModule(modname); \
        if (m == NULL) return -1; \
        st->queue.field = PyObject_GetAttrString(m, attr); \
        Py_DECREF(m); \
        if (st->queue.field == NULL) return -1; \
    } while (0)
    IMPORT(QueueEmpty, "asyncio.queues", "QueueEmpty");
    IMPORT(QueueFull, "asyncio.queues", "QueueFull");
    IMPORT(deque_type, "collections", "deque");
#if FA_PY313
    IMPORT(QueueShutDown, "asyncio.queues", "QueueShutDown");
#else
    st->queue.QueueShutDown = PyErr_NewExceptionWithDoc(
        "aiofast.QueueShutDown", "Raised when putting on to or getting from a shut-down Queue.",
        PyExc_Exception, NULL);
    if (st->queue.QueueShutDown == NULL) {
        return -1;
    }
#endif
#undef IMPORT
    if (PyModule_AddObjectRef(mod, "QueueShutDown", st->queue.QueueShutDown) < 0) {
        return -1;
    }
#define INTERN(field, text) \
    if ((st->queue.field = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(str_init, "_init");
    INTERN(str_put, "_put");
    INTERN(str_get, "_get");
    INTERN(str_full, "full");
    INTERN(str_empty, "empty");
    INTERN(str_qsize, "qsize");
    INTERN(str_put_nowait, "put_nowait");
    INTERN(str_get_nowait, "get_nowait");
    INTERN(str_format, "_format");
    INTERN(str_popleft, "popleft");
    INTERN(str_pop, "pop");
    INTERN(str_wait, "wait");
    INTERN(str_lt, "__lt__");
    INTERN(str_class, "__class__");
    INTERN(str_wakeup_next, "_wakeup_next");
    INTERN(str_append, "append");
#undef INTERN
    fa_queue_state *q = &st->queue;
    PyObject *event = (PyObject *)st->semaphore.EventType;
    if ((q->deque_append = PyObject_GetAttrString(q->deque_type, "append")) == NULL
        || (q->deque_popleft = PyObject_GetAttrString(q->deque_type, "popleft")) == NULL
        || (q->event_set = PyObject_GetAttrString(event, "set")) == NULL
        || (q->event_clear = PyObject_GetAttrString(event, "clear")) == NULL
        || (st->queue.dc_refs = PyDict_New()) == NULL) {
        return -1;
    }
    st->queue.object_class = Py_XNewRef(fa_type_lookup(&PyBaseObject_Type, st->queue.str_class));
    if (st->queue.object_class == NULL) {
        PyErr_SetString(PyExc_SystemError, "object.__class__ not found");
        return -1;
    }
    if ((st->queue.QueueType = fa_add_type(mod, &queue_spec, NULL, "Queue")) == NULL
        || fa_methods_add(st, st->queue.QueueType, queue_async_methods) < 0) {
        return -1;
    }
    st->queue.PriorityQueueType = fa_add_type(mod, &prio_spec, (PyObject *)st->queue.QueueType,
                                        "PriorityQueue");
    if (st->queue.PriorityQueueType == NULL) {
        return -1;
    }
    st->queue.LifoQueueType =
        fa_add_type(mod, &lifo_spec, (PyObject *)st->queue.QueueType, "LifoQueue");
    if (st->queue.LifoQueueType == NULL) {
        return -1;
    }
    return 0;
}
