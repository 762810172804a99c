/*
 * op.h: the awaitable operation (FaOp) every primitive returns from acquire(), wait(), get(),
 * put(), __aenter__() and __aexit__(), and the FIFO of waiting operations (fa_waitq).
 *
 * An FaOp is a C coroutine: it has __await__ (returns itself), am_send, tp_iternext, send(),
 * throw() and close(), so asyncio.iscoroutine() accepts it and asyncio.create_task() runs it.
 * Its behaviour comes from a kind (fa_opkind), a small vtable of three functions:
 *
 *   start(op, &res)          runs on the first send. The fast path returns PYGEN_RETURN with a
 *                            new reference in *res: no future, no loop lookup. The slow path
 *                            calls fa_op_wait(), which makes a future with loop.create_future(),
 *                            links the op into a waiter queue and yields the future to the Task
 *                            (PYGEN_NEXT), exactly as `await fut` does.
 *   resume(op, value, &res)  runs when the future finished with a result. Same contract; it may
 *                            wait again (queues loop while empty or full).
 *   on_exc(op, exc)          runs when an exception reaches the wait: thrown in by the Task
 *                            (cancellation), raised by the future or the awaitable it delegates
 *                            to, or GeneratorExit from close(). It does the bookkeeping (unlink,
 *                            hand the permit back, wake the next, record a breaker's failure);
 *                            the same exception instance is then re-raised.
 *
 * and optionally qualname (the op's name when it stands for a user's function) and drop (give
 * up kind-specific state when the op finishes or dies unfinished). A kind that finishes with a
 * value known at once is a ready value (fa_op_ready); one that awaits another awaitable (a
 * subclass's acquire(), a guarded call, a fallback) uses fa_op_delegate. A circuit breaker's
 * guarded calls, cache hits and every primitive's operations are all kinds of this one type.
 *
 * States: INIT -> RUNNING (inside start/resume) -> WAITING (yielded a future) -> ... -> DONE.
 * A finished op drops its owner, future and argument, so a cached op holds nothing.
 *
 * The waiter queue is an intrusive doubly linked list of ops. Invariants: an op is in at most
 * one queue (op->queue), the queue holds one strong reference to each linked op, len counts the
 * linked ops, version changes on every link or unlink (so iteration that calls Python code can
 * detect mutation). Unlinking is O(1) wherever the op stands, which is what makes mass
 * cancellation linear instead of asyncio's quadratic deque.remove.
 */
#ifndef AIOFAST_OP_H
#define AIOFAST_OP_H

#include "aiofast.h"
#include "loop.h"

typedef struct FaOp FaOp;

typedef struct fa_waitq {
    FaOp *head;
    FaOp *tail;
    Py_ssize_t len;
    size_t version;
} fa_waitq;

typedef struct fa_opkind {
    const char *name;  /* e.g. "Semaphore.acquire": the op's __qualname__ */
    PySendResult (*start)(FaOp *op, PyObject **res);
    PySendResult (*resume)(FaOp *op, PyObject *value, PyObject **res);
    int (*on_exc)(FaOp *op, PyObject *exc);
    /* optional: the op's __qualname__ when it is not the fixed name (a new reference) */
    PyObject *(*qualname)(FaOp *op);
    unsigned flags;    /* FA_OPK_* */
    /* optional: the op finishes (dying 0) or is cleared on its way out (dying 1) while it may
     * still hold kind-specific state (a breaker's ticket, a coroutine it has not started): give
     * that up. Runs before the engine drops the op's references; must not fail. */
    void (*drop)(FaOp *op, int dying);
} fa_opkind;

/* The engine's reusable StopIteration (op.c) may carry this kind's results, and
 * so keep the last one alive until the next result: for kinds whose results are held elsewhere
 * anyway and that call fa_op_forget_result when they let a value go. Without it only True and
 * False travel in the reusable one; other results get a fresh StopIteration on 3.12+. */
#define FA_OPK_KEEP_RESULT 0x1

enum { FA_OP_INIT = 0, FA_OP_RUNNING, FA_OP_WAITING, FA_OP_DONE };

struct FaOp {
    PyObject_HEAD
    fa_state *st;
    const fa_opkind *kind;
    PyObject *owner;     /* the primitive, strong, while not DONE */
    PyObject *arg;       /* kind-specific argument (a queue item, a delegate), strong or NULL */
    PyObject *arg2;      /* kind-specific second argument, strong or NULL */
    PyObject *arg3;      /* kind-specific third argument, strong or NULL */
    PyObject *fut;       /* the waiter future, from fa_op_wait until DONE */
    PyObject *fut_iter;  /* fut.__await__() while WAITING */
    FaOp *prev;          /* links, valid while queue != NULL */
    FaOp *next;
    fa_waitq *queue;     /* the waiter queue this op is linked in, or NULL */
    FaOp **home;         /* the reuse slot it goes back to when done (see fa_op_cached), or NULL */
    PyObject *home_obj;  /* strong: the object holding *home when that is not owner, or NULL */
    double num;          /* kind-specific number (tokens, deadline) */
    uint64_t u64;        /* kind-specific integers (a breaker ticket's generation, probe slot) */
    int i32;
    int state;
    int flags;           /* kind-specific flags; FA_OPF_WOKEN is shared */
};

/* Set by whoever calls set_result on op->fut: the future is done and not cancelled, so the
 * primitive can skip calling fut.cancelled() / fut.done() on it. */
#define FA_OPF_WOKEN 0x1
#define FA_OPF_DELEGATE 0x2  /* fut_iter is a delegate iterator, not a future's */
#define FA_OPF_VIEWMARK 0x4  /* waitview.c: set only inside fa_waitview_assign */
#define FA_OPF_QUIET 0x8     /* dropped unstarted, it does not warn "never awaited" */

/* ---- waiter queue ---- */

#if FA_DEBUG
/* The waiter queue's invariants (debug builds; see FA_ASSERT_CONSISTENT in debug.h): the
 * links agree both ways, head/tail are the ends, len counts the linked ops (which also bounds
 * the walk, so a cycle is caught), every linked op points back at this queue, is an FaOp still
 * being driven (WAITING, or RUNNING: the op that is linking or unlinking itself, or one a
 * re-entrant caller is driving) with its owner and the future it waits on, and never a
 * delegating op (those wait on another awaitable, not in a queue). Reads C fields only. */
#define FA_WAITQ_CHECK_MAX 256

static inline void
fa_waitq_check(const fa_waitq *q)
{
    FA_CHECK(q->len >= 0, "waitq %p: len %zd", (void *)q, q->len);
    FA_CHECK((q->head == NULL) == (q->tail == NULL) && (q->head == NULL) == (q->len == 0),
             "waitq %p: head %p, tail %p, len %zd", (void *)q, (void *)q->head,
             (void *)q->tail, q->len);
    if (q->len > FA_WAITQ_CHECK_MAX) {
        /* a full walk after every mutation would make the suite's 100,000-waiter storms
         * quadratic; check the ends and leave the walk to the many smaller queues */
        FA_CHECK(q->head->prev == NULL && q->tail->next == NULL && q->head->queue == q
                     && q->tail->queue == q,
                 "waitq %p: ends %p/%p not linked to it", (void *)q, (void *)q->head,
                 (void *)q->tail);
        return;
    }
    Py_ssize_t n = 0;
    FaOp *prev = NULL;
    for (FaOp *op = q->head; op != NULL; op = op->next) {
        FA_CHECK(n < q->len, "waitq %p: more ops linked than len %zd (a cycle?)", (void *)q,
                 q->len);
        FA_CHECK(Py_REFCNT(op) >= 1 && op->st != NULL && Py_IS_TYPE(op, op->st->engine.OpType),
                 "waitq %p: item %zd (%p) is not a live FaOp", (void *)q, n, (void *)op);
        FA_CHECK(op->queue == q, "waitq %p: op %p (%s) has queue %p", (void *)q, (void *)op,
                 op->kind->name, (void *)op->queue);
        FA_CHECK(op->prev == prev, "waitq %p: op %p has prev %p, expected %p", (void *)q,
                 (void *)op, (void *)op->prev, (void *)prev);
        /* INIT: an inert node that stands for a foreign future a user appended to a queue's
         * live _getters/_putters view (queue.c); it is never driven */
        FA_CHECK(op->state == FA_OP_WAITING || op->state == FA_OP_RUNNING
                     || op->state == FA_OP_INIT,
                 "waitq %p: op %p (%s) linked in state %d", (void *)q, (void *)op,
                 op->kind->name, op->state);
        FA_CHECK((op->owner != NULL || op->state == FA_OP_INIT) && op->fut != NULL,
                 "waitq %p: op %p (%s) linked without owner (%p) or future (%p)", (void *)q,
                 (void *)op, op->kind->name, (void *)op->owner, (void *)op->fut);
        FA_CHECK(op->state != FA_OP_WAITING || op->fut_iter != NULL,
                 "waitq %p: waiting op %p (%s) has no future iterator", (void *)q, (void *)op,
                 op->kind->name);
        FA_CHECK(!(op->flags & FA_OPF_DELEGATE), "waitq %p: delegating op %p (%s) linked",
                 (void *)q, (void *)op, op->kind->name);
        prev = op;
        n++;
    }
    FA_CHECK(q->tail == prev, "waitq %p: tail %p, last linked op %p", (void *)q,
             (void *)q->tail, (void *)prev);
    FA_CHECK(n == q->len, "waitq %p: %zd ops linked, len %zd", (void *)q, n, q->len);
}
#endif

static inline void
fa_waitq_push(fa_waitq *q, FaOp *op)
{
    assert(op->queue == NULL);
    Py_INCREF(op);
    op->queue = q;
    op->next = NULL;
    op->prev = q->tail;
    if (q->tail) {
        q->tail->next = op;
    }
    else {
        q->head = op;
    }
    q->tail = op;
    q->len++;
    q->version++;
    FA_ASSERT_CONSISTENT_WITH(fa_waitq_check, q);
}

/* Unlink op from its queue, if any. Drops the queue's reference: the caller must hold its own. */
static inline void
fa_waitq_unlink(FaOp *op)
{
    fa_waitq *q = op->queue;
    if (q == NULL) {
        return;
    }
    if (op->prev) {
        op->prev->next = op->next;
    }
    else {
        q->head = op->next;
    }
    if (op->next) {
        op->next->prev = op->prev;
    }
    else {
        q->tail = op->prev;
    }
    op->prev = op->next = NULL;
    op->queue = NULL;
    q->len--;
    q->version++;
    FA_ASSERT_CONSISTENT_WITH(fa_waitq_check, q);
    assert(Py_REFCNT(op) > 1);
    Py_DECREF(op);
}

/* Pop the first op; a new reference (the queue's), or NULL when empty. */
static inline FaOp *
fa_waitq_popleft(fa_waitq *q)
{
    FaOp *op = q->head;
    if (op == NULL) {
        return NULL;
    }
    Py_INCREF(op);
    fa_waitq_unlink(op);
    return op;
}

static inline int
fa_waitq_traverse(fa_waitq *q, visitproc visit, void *arg)
{
    for (FaOp *op = q->head; op != NULL; op = op->next) {
        Py_VISIT((PyObject *)op);
    }
    return 0;
}

/* Detach every op from q and drop the queue's references safely. */
void fa_waitq_release_all(fa_waitq *q);

/* ---- the live view of a waiter queue (waitview.c) ----
 *
 * asyncio's deques of waiter futures (_waiters, _getters, _putters), as a live window on q.
 * Objects appended through it get inert nodes of fa_foreign_kind: no owner, state INIT, the
 * object in op->fut. A primitive wakes them as asyncio wakes its futures (done()? set_result)
 * and never drives them, never marks them FA_OPF_WOKEN, and never counts them as its own. */
extern const fa_opkind fa_foreign_kind;

static inline int
fa_op_is_foreign(const FaOp *op)
{
    return op->kind == &fa_foreign_kind;
}

/* A new view of q, which lives inside owner (the view holds owner). */
PyObject *fa_waitview_new(fa_state *st, PyObject *owner, fa_waitq *q);

/* The queue obj is a view of, or NULL (no error) if obj is not a view. */
fa_waitq *fa_waitview_queue(fa_state *st, PyObject *obj);

/* `_waiters = iterable`: q's contents become the iterable's items, in order. An item that is
 * the future of an op linked in q keeps that op (relinked in the new place); any other item
 * gets a foreign node; an op left out is unlinked (it still wakes on its future). iterable
 * NULL: empty. 0 or -1 (q unchanged). */
int fa_waitview_assign(fa_state *st, fa_waitq *q, PyObject *iterable);

int fa_waitview_init(PyObject *mod, fa_state *st);

/* ---- operations ---- */

/* A new op of this kind for owner (strong reference taken), in state INIT. */
FaOp *fa_op_new(fa_state *st, const fa_opkind *kind, PyObject *owner, PyObject *arg);

/* Finish an op that was never driven to the end: state DONE, every reference dropped. */
void fa_op_reset(FaOp *op);

/* A recycled op is a new object to tracemalloc: its allocation traceback becomes the current
 * one, as CPython does for objects it takes from a free list (so the "never awaited" warning
 * of a dropped op shows where that op was made). While tracemalloc is off this reads one flag. */
static inline void
fa_op_retrace(FaOp *op)
{
    fa_tracemalloc_renew((PyObject *)op, sizeof(FaOp));
}

/* An op of this kind for owner (strong reference taken), in state INIT, reusing the one in the
 * reuse slot *cache when only the slot holds it (no allocation on the hot path).
 *
 * The slot holds a strong reference to an idle (DONE) op. Handing it out moves that reference
 * to the caller and leaves the slot empty; the op remembers the slot (home) and goes back into
 * it when it finishes, if the slot is still empty. So an op that is handed out and dropped
 * without ever being started really dies (and warns, as an un-awaited coroutine does), and a
 * recycled op never warns. The slot lives in holder, which the op keeps alive until it is home:
 * fa_op_cached is for slots inside owner itself (owner is held anyway); fa_op_cached_in for a
 * slot in another object. The holder visits and clears its slot. */
static inline FaOp *
fa_op_cached_in(fa_state *st, PyObject *holder, FaOp **cache, const fa_opkind *kind,
                PyObject *owner)
{
    FaOp *op = *cache;
    if (FA_LIKELY(op != NULL && Py_REFCNT(op) == 1)) {
        /* Only the slot holds it: nobody can observe the reuse. */
#if FA_DEBUG
        FA_CHECK(op->state == FA_OP_DONE && op->flags == 0 && op->queue == NULL
                     && op->owner == NULL && op->fut == NULL && op->fut_iter == NULL
                     && op->arg == NULL && op->arg2 == NULL && op->arg3 == NULL
                     && op->home == NULL
                     && op->home_obj == NULL,
                 "an idle op %p (%s) kept state: state %d, flags %#x", (void *)op,
                 op->kind->name, op->state, (unsigned)op->flags);
#endif
        *cache = NULL;  // the slot's reference is now the caller's
        fa_op_retrace(op);
        op->kind = kind;
        op->owner = Py_NewRef(owner);
        op->state = FA_OP_INIT;
    }
    else {
        op = fa_op_new(st, kind, owner, NULL);
        if (op == NULL) {
            return NULL;
        }
    }
    op->home = cache;
    if (holder != owner) {
        op->home_obj = Py_NewRef(holder);
    }
    return op;
}

static inline FaOp *
fa_op_cached(fa_state *st, FaOp **cache, const fa_opkind *kind, PyObject *owner)
{
    return fa_op_cached_in(st, owner, cache, kind, owner);
}

/* ---- ready values: kinds that finish at once with a value known when the op is made ----
 *
 * (a cache hit). The kind's start is fa_op_ready_start; fa_op_ready makes the op from the reuse
 * slot *cache of owner (as fa_op_cached) with value (borrowed) in op->arg. Its first send
 * returns the value, without a future or a loop. Such an op is quiet: dropped unawaited, it
 * does not warn, since nothing was left undone. */
PySendResult fa_op_ready_start(FaOp *op, PyObject **res);

/* start and resume of a kind that finishes at once with None (an __aexit__ with nothing to
 * undo). */
PySendResult fa_op_none_start(FaOp *op, PyObject **res);
PySendResult fa_op_none_resume(FaOp *op, PyObject *value, PyObject **res);

static inline FaOp *
fa_op_ready(fa_state *st, FaOp **cache, const fa_opkind *kind, PyObject *owner, PyObject *value)
{
    assert(kind->start == fa_op_ready_start);
    value = Py_NewRef(value);  // before the allocation, which may run the GC
    FaOp *op = fa_op_cached(st, cache, kind, owner);
    if (op == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    op->arg = value;
    op->flags |= FA_OPF_QUIET;
    return op;
}

/* Emit the warning of an un-awaited coroutine for coro, as CPython does when one is dropped
 * unstarted: RuntimeWarning "coroutine '<qualname>' was never awaited", through the warnings
 * module's own helper (so the tracemalloc origin of coro is shown when tracing), else directly.
 * Never raises: a failure (or an "error" filter) is reported as unraisable. The caller saves
 * and restores any exception in flight. */
void fa_warn_unawaited(PyObject *coro, PyObject *qualname);

/* Slow path of start/resume: create a future on the running loop (binding *loop_slot lazily as
 * _LoopBoundMixin does), link op at the back of q, and yield the future. Returns PYGEN_NEXT with
 * *res set, or PYGEN_ERROR. */
PySendResult fa_op_wait(FaOp *op, PyObject **loop_slot, fa_waitq *q, PyObject **res);

/* The same as asyncio's `self._get_loop().create_future()`: with get_loop_overridden (a
 * subclass defines its own _get_loop), owner._get_loop() is called for the loop. */
PySendResult fa_op_wait_self(FaOp *op, int get_loop_overridden, PyObject **loop_slot,
                             fa_waitq *q, PyObject **res);

/* The same with a loop the caller already has (a new reference is taken). */
PySendResult fa_op_wait_on(FaOp *op, PyObject *loop, fa_waitq *q, PyObject **res);

/* For kinds that delegate to another awaitable (a subclass's own acquire(), a guarded call, a
 * fallback): `await` it. send/throw/close are forwarded to it (throw into an iterator without
 * throw() raises in the op, as `yield from` does); when it returns, kind->resume runs with its
 * value; an exception out of it once it has been suspended goes through kind->on_exc like any
 * other (also one its close() raises). On the first step nothing but the returned PySendResult
 * tells: an error then (not awaitable, or raised at once) is the kind's to handle. */
PySendResult fa_op_delegate(FaOp *op, PyObject *awaitable, PyObject **res);

/* Can obj be awaited: a coroutine, an object with __await__, or a generator made by a
 * @types.coroutine function? (Never raises.) */
int fa_op_awaitable(PyObject *obj);

/* Let the reusable StopIteration drop the last value it carried (if nobody holds it), for a
 * family that has just removed a value and must not keep it alive. Beware: may release that
 * value (Python code). */
void fa_op_forget_result(fa_state *st);

/* The exception throw(typ[, val[, tb]]) raises, built as gen.throw builds it: a new reference,
 * or NULL with TypeError for bad arguments. */
PyObject *fa_throw_exc(PyObject *typ, PyObject *val, PyObject *tb);

/* ---- awaitable methods: coroutine functions to inspect, free to call (method.c) ----
 *
 * Every method that returns an awaitable (acquire, wait, put, get, join, __aenter__, ...) is an
 * FaMethod descriptor rather than a plain C method, for two reasons:
 *
 * - Libraries decide whether to await a callable's result with inspect.iscoroutinefunction /
 *   asyncio.iscoroutinefunction. The descriptor is function-like as inspect understands it: a
 *   __code__ flagged CO_COROUTINE (from a prototype `async def` with the method's signature),
 *   __name__, __qualname__, __defaults__, __kwdefaults__, __annotations__, __text_signature__,
 *   and on 3.12+ inspect.markcoroutinefunction's marker. `obj.put` is a real bound method
 *   (types.MethodType) over it, exactly as for a Python `async def`.
 * - Calls cost nothing extra: the type has Py_TPFLAGS_METHOD_DESCRIPTOR, so `obj.put(x)` is
 *   an unbound vectorcall with obj as the first argument and no bound object is made; only a
 *   plain attribute read (`f = obj.put`) makes one, as for Python functions.
 *
 * Special methods (__aenter__/__aexit__ of the lock family): `async with x:` looks them up with
 * _PyObject_LookupSpecial before 3.14, which calls __get__ and would allocate a bound method
 * twice per `async with`, more than the whole uncontended acquire/release. Their descriptor
 * instead hands out one bound callable cached on the instance (FaBound), function-like too.
 *
 * FaBound ownership: the instance's slot holds the FaBound strongly. The FaBound always points
 * at the instance (borrowed; the instance clears the pointer when it goes), and holds a strong
 * reference to it only while handed out (`owns`), which is what keeps `async with Lock():` on a
 * temporary alive, as a bound method would. It gives that reference up at the end of a call
 * when only the caller and the slot hold it (the interpreter drops its reference right after
 * the call), so no reference cycle outlives an `async with`; in any other case the cycle is an
 * ordinary one that the GC collects (both types traverse). */
typedef PyObject *(*fa_special_impl)(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *owner;   /* borrowed unless owns */
    PyObject *descr;   /* the FaMethod, strong */
    PyObject *weakreflist;
    int owns;
} FaBound;

/* Install each PyMethodDef of defs (METH_NOARGS, METH_O, METH_FASTCALL, optionally with
 * METH_KEYWORDS; ml_doc must start with a text signature "name($self, ...)\n--\n\n") on tp as
 * an awaitable method. Call after the type is made, before it is used. */
int fa_methods_add(fa_state *st, PyTypeObject *tp, PyMethodDef *defs);

/* Install special method `name` on type tp: calling it runs impl(self, args, nargs); slot_offset
 * is the offset of a PyObject * field in the instance struct that caches the FaBound. doc as
 * for fa_methods_add. */
int fa_special_add(fa_state *st, PyTypeObject *tp, const char *name, fa_special_impl impl,
                   Py_ssize_t slot_offset, const char *doc);

/* For the instance's traverse / clear / dealloc. */
static inline int
fa_special_traverse(PyObject *slot, visitproc visit, void *arg)
{
    Py_VISIT(slot);
    return 0;
}

void fa_special_clear(PyObject *self, PyObject **slot);

/* Make the method types (called by fa_op_init). */
int fa_method_init(PyObject *mod, fa_state *st);

#endif
