/*
 * tokenbucket.c: TokenBucket, an async rate limiter (a token bucket), and RateLimited, the
 * callable that `@bucket` wraps around an async function.
 *
 * Model. The bucket holds `level` tokens at time `stamp`, read on one clock (clock.h): the
 * running loop's time(), which for every unpatched asyncio loop is time.monotonic(). Tokens
 * flow in continuously, rate per `per` seconds, up to `capacity`: a reading now > stamp sets
 * level = min(capacity, level + (now - stamp) * rate / per) and stamp = now. A reading on a new
 * clock (another loop's or another time() callable's, or one below the last reading: a clock
 * going backwards) restarts the stamp there without adding anything (the gap is unknowable),
 * and moves the waiters' deadlines with it.
 *
 * Waiting. Strict FIFO: the head of `waiters` is the only op that can be admitted, and a newcomer
 * never takes tokens while anyone waits, so a large request at the head is never overtaken. The
 * bucket admits an op by taking its tokens, unlinking it and resolving its future (the tokens
 * are handed over at wake time, as asyncio.Semaphore hands over permits); a cancelled admitted op
 * gives them back. One loop.call_at handle (`timer`) is armed for the earlier of the head's ready
 * time and the earliest deadline of a waiter with a timeout; nothing else is scheduled, no waiter
 * is woken unless it proceeds (or times out).
 *
 * Invariants:
 * - 0 <= level <= capacity; stamp is the last reading of the clock named by clk, or up to
 *   the early-timer allowance after it (see tb_process).
 * - the waiters of a loop that has closed are dropped at the next wait or fast check (their
 *   tasks can never run again); `loop` is then re-bound.
 * - waiters: the ops not yet admitted, in arrival order (an op whose future was cancelled may
 *   stay until its task runs, or until the bucket meets it at the head and drops it).
 * - an admitted op has OPF_ADMITTED (its tokens are taken) until it resumes; a timed-out op has
 *   OPF_TIMEDOUT and took nothing; both are unlinked.
 * - timer is NULL or armed at timer_when on `loop` for min(head ready time, earliest deadline),
 *   or for an earlier deadline whose waiter left since (it then fires once, for nothing).
 * - dl is a binary min-heap of (when, seq, op) for ops that wait with a timeout; an entry is live
 *   iff its op is still linked in waiters (dl_live counts those); stale entries are dropped when
 *   they reach the top, or all at once when they outnumber the live ones.
 * - processing is set while tb_process runs: a nested call (from Python code it calls) only
 *   sets reprocess, and the outer call loops.
 * All of these are checked after every mutation in debug builds (tokenbucket_check,
 * FA_CONSISTENT).
 *
 * aiolimiter's rules (`peer`, set for AsyncLimiter, the drop-in for aiolimiter.AsyncLimiter):
 * a newcomer takes the tokens if they are there, whoever waits; waiters are served smallest
 * amount first (then in arrival order), so `waiters` is sorted by (num, arrival); has_capacity()
 * ignores the waiters; a bad amount raises when the acquire is awaited, not when it is called;
 * and using the limiter in a new loop after its loop closed warns (RuntimeWarning), as
 * aiolimiter does, and drops the waiters of the closed loop.
 */
#include "tokenbucket.h"
#include "clock.h"
#include "wrapper.h"

#include <float.h>

/* How early a loop may run a timer and still count as on time: uvloop rounds delays to whole
 * milliseconds (and its clock is in milliseconds); asyncio runs timers up to its clock
 * resolution early (loop._clock_resolution: 1 ns on Linux, 15.6 ms on old Windows), so the
 * allowance is the larger of TB_EARLY_FIRE and that, capped at TB_EARLY_FIRE_MAX. */
#define TB_EARLY_FIRE 0.001
#define TB_EARLY_FIRE_MAX 0.05

#define OPF_ADMITTED 0x100  /* tokens taken for this op, future resolved */
#define OPF_TIMEDOUT 0x200  /* deadline passed, future resolved, nothing taken */
#define OPF_TIMED 0x400     /* linked with a live deadline entry (counted in dl_live) */
#define OPF_CALLING TB_OPF_CALLING  /* RateLimited: the token is consumed, the function runs */
#define OPF_BADAMOUNT 0x1000 /* AsyncLimiter: an amount outside [0, max_rate], raised on start */

/* aiolimiter's texts, word for word */
#define TB_PEER_AMOUNT_ERROR "Amount must be a number between 0 and the maximum capacity"
#define TB_PEER_REUSE_WARNING \
    "This AsyncLimiter instance is being re-used across loops. Please create a new limiter " \
    "per event loop as re-use can lead to undefined behaviour."


typedef struct {
    double when;
    unsigned long long seq;
    FaOp *op;  /* strong */
} tb_deadline;

typedef struct {
    FA_TB_HEAD             /* st, waiters, cache, weakreflist, rate/per/capacity (tokenbucket.h) */
    PyObject *loop;        /* bound on the first wait (as _LoopBoundMixin), or NULL */
    fa_clock clk;          /* the clock stamp was read on (its keys; last: last_read) */
    PyObject *timer;       /* the one TimerHandle, or NULL */
    PyObject *wake_cb;     /* the timer's callback (a builtin bound to self), made lazily */
    PyObject *aenter;      /* cached bound __aenter__ / __aexit__ (op.h, special methods) */
    PyObject *aexit;
    double initial;
    double level;
    double stamp;
    double last_read;      /* the clock as last read (stamp may lead it, see tb_process) */
    double timer_when;
    tb_deadline *dl;
    Py_ssize_t dl_len;
    Py_ssize_t dl_alloc;
    Py_ssize_t dl_live;
    unsigned long long dl_seq;
    int stamp_valid;
    int processing;
    int reprocess;
    int peer;              /* aiolimiter's rules (AsyncLimiter, see the top) */
} TokenBucket;

typedef struct {
    FA_WRAPPER_HEAD         /* func: the rate-limited function */
    fa_state *st;
    PyObject *bucket;
    FaOp *cache;
    const fa_opkind *kind;  /* the op its calls run (TokenBucket's or SharedTokenBucket's) */
} RateLimited;

static int tb_process(TokenBucket *self, double fired_at);
static PyObject *rl_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames);

#if FA_DEBUG
static const fa_opkind tb_acquire_kind;
static const fa_opkind tb_call_kind;

/* The invariants at the top, checked after every mutation (debug builds: FA_ASSERT_CONSISTENT).
 * Reads C fields only. */
static void
tokenbucket_check(TokenBucket *self)
{
    /* configuration: as tb_init validates it (tb_new's defaults satisfy it too) */
    FA_CHECK(isfinite(self->rate) && self->rate > 0 && isfinite(self->per) && self->per > 0,
             "TokenBucket %p: rate %g per %g", (void *)self, self->rate, self->per);
    FA_CHECK(isfinite(self->capacity) && self->capacity >= 1, "TokenBucket %p: capacity %g",
             (void *)self, self->capacity);
    FA_CHECK(self->initial >= 0 && self->initial <= self->capacity,
             "TokenBucket %p: initial %g, capacity %g", (void *)self, self->initial,
             self->capacity);
    /* (rate_obj & co. are not checked: tb_clear drops them, and a dying op may still report) */
    /* the level: 0 <= level <= capacity (NaN fails both) */
    FA_CHECK(self->level >= 0 && self->level <= self->capacity,
             "TokenBucket %p: level %.17g outside [0, capacity %.17g]", (void *)self,
             self->level, self->capacity);
    /* the clock: a stamp is a finite reading */
    FA_CHECK(!self->stamp_valid || (isfinite(self->stamp) && isfinite(self->last_read)),
             "TokenBucket %p: stamp %g, last read %g", (void *)self, self->stamp,
             self->last_read);
    FA_CHECK((self->processing == 0 || self->processing == 1)
                 && (self->reprocess == 0 || self->reprocess == 1),
             "TokenBucket %p: processing %d, reprocess %d", (void *)self, self->processing,
             self->reprocess);
    FA_CHECK(self->cache == NULL || Py_IS_TYPE(self->cache, self->st->engine.OpType),
             "TokenBucket %p: cache %p is not an op", (void *)self, (void *)self->cache);
    /* the timer: armed on the bound loop, for a finite time, with its callback */
    FA_CHECK(self->timer == NULL
                 || (self->loop != NULL && self->wake_cb != NULL && isfinite(self->timer_when)),
             "TokenBucket %p: timer %p (at %g) with loop %p, callback %p", (void *)self,
             (void *)self->timer, self->timer_when, (void *)self->loop, (void *)self->wake_cb);
    /* waiters: a well-linked queue of this bucket's acquire/call ops, none admitted or timed
     * out (those are unlinked), each asking for 0 < tokens <= capacity */
    fa_waitq_check(&self->waiters);
    FA_CHECK(self->waiters.len == 0 || self->loop != NULL,
             "TokenBucket %p: %zd waiters but no bound loop", (void *)self, self->waiters.len);
    Py_ssize_t timed = 0, n = 0;
    for (FaOp *op = self->waiters.head; op != NULL && n < FA_WAITQ_CHECK_MAX;
         op = op->next, n++) {
        FA_CHECK(op->owner == (PyObject *)self, "TokenBucket %p: waiter %p belongs to %p",
                 (void *)self, (void *)op, (void *)op->owner);
        FA_CHECK(op->kind == &tb_acquire_kind || op->kind == &tb_call_kind,
                 "TokenBucket %p: waiter %p is a %s()", (void *)self, (void *)op,
                 op->kind->name);
        FA_CHECK(!(op->flags & (OPF_ADMITTED | OPF_TIMEDOUT | OPF_CALLING | FA_OPF_WOKEN)),
                 "TokenBucket %p: linked waiter %p has flags %#x", (void *)self, (void *)op,
                 (unsigned)op->flags);
        FA_CHECK(op->num > 0 && op->num <= self->capacity,
                 "TokenBucket %p: waiter %p asks for %g of capacity %g", (void *)self,
                 (void *)op, op->num, self->capacity);
        FA_CHECK(!self->peer || op->prev == NULL || op->prev->num <= op->num,
                 "TokenBucket %p: waiter %p (%g) after a larger one (%g)", (void *)self,
                 (void *)op, op->num, op->prev ? op->prev->num : 0.0);
        timed += (op->flags & OPF_TIMED) != 0;
    }
    /* the deadline heap: ordered by (when, seq); its live entries are exactly the TIMED
     * waiters, one each (dl_live counts them); stale ones wait to be dropped */
    FA_CHECK(self->dl_len >= 0 && self->dl_len <= self->dl_alloc
                 && (self->dl_alloc == 0 || self->dl != NULL),
             "TokenBucket %p: deadline heap len %zd, alloc %zd, at %p", (void *)self,
             self->dl_len, self->dl_alloc, (void *)self->dl);
    FA_CHECK(self->dl_live >= 0 && self->dl_live <= self->dl_len
                 && self->dl_live <= self->waiters.len,
             "TokenBucket %p: %zd live deadlines, %zd entries, %zd waiters", (void *)self,
             self->dl_live, self->dl_len, self->waiters.len);
    if (self->waiters.len <= FA_WAITQ_CHECK_MAX) {
        FA_CHECK(timed == self->dl_live, "TokenBucket %p: %zd timed waiters, dl_live %zd",
                 (void *)self, timed, self->dl_live);
    }
    if (self->dl_len <= FA_WAITQ_CHECK_MAX) {
        Py_ssize_t live = 0;
        for (Py_ssize_t i = 0; i < self->dl_len; i++) {
            tb_deadline *c = &self->dl[i];
            FA_CHECK(c->op != NULL && Py_REFCNT(c->op) >= 1 && !isnan(c->when)
                         && c->seq < self->dl_seq,
                     "TokenBucket %p: deadline entry %zd (op %p, when %g, seq %llu)",
                     (void *)self, i, (void *)c->op, c->when, c->seq);
            if (i > 0) {
                tb_deadline *p = &self->dl[(i - 1) / 2];
                FA_CHECK(p->when < c->when || (p->when == c->when && p->seq < c->seq),
                         "TokenBucket %p: deadline heap out of order at %zd", (void *)self, i);
            }
            live += c->op->queue == &self->waiters && (c->op->flags & OPF_TIMED);
        }
        FA_CHECK(live == self->dl_live, "TokenBucket %p: %zd live deadline entries, dl_live %zd",
                 (void *)self, live, self->dl_live);
    }
}
#endif
#define FA_CONSISTENT tokenbucket_check

/* ------------------------------------------------------------------ arithmetic */

/* Tokens that flow in over dt seconds (dt * rate / per, without overflowing on the way). */
static inline double
tb_inflow(TokenBucket *self, double dt)
{
    double x = dt * self->rate;
    if (self->per == 1.0) {
        return x;  // x / 1.0 == x (and dt * (rate / 1.0) == x when x overflows)
    }
    return isfinite(x) ? x / self->per : dt * (self->rate / self->per);
}

/* Seconds until `deficit` tokens have flowed in. */
static inline double
tb_seconds_for(TokenBucket *self, double deficit)
{
    double x = deficit * self->per;
    return isfinite(x) ? x / self->rate : deficit * (self->per / self->rate);
}

static inline void
tb_refill(TokenBucket *self, double now)
{
    if (now > self->stamp) {
        if (self->level < self->capacity) {
            double lv = self->level + tb_inflow(self, now - self->stamp);
            self->level = lv < self->capacity ? lv : self->capacity;
        }
        self->stamp = now;
    }
}

/* Can `need` tokens be taken now? A deficit that flows in within one tick of the clock (the
 * float resolution of stamp) counts as none: the clock cannot tell those instants apart, and a
 * timer armed for the ready time must find the tokens there despite rounding. */
static inline int
tb_enough(TokenBucket *self, double need)
{
    if (self->level >= need) {
        return 1;
    }
    double tick = nextafter(self->stamp, INFINITY) - self->stamp;
    return tb_seconds_for(self, need - self->level) <= tick;
}

static inline void
tb_take(TokenBucket *self, double need)
{
    double lv = self->level - need;
    self->level = lv > 0 ? lv : 0;  /* below 0 only by the one-tick rounding of tb_enough */
}

/* Give back tokens an admitted op did not use. Exact whatever time passed since they were
 * taken: min(cap, min(cap, x - n + r) + n) == min(cap, x + r). */
static inline void
tb_refund(TokenBucket *self, double n)
{
    double lv = self->level + n;
    self->level = lv < self->capacity ? lv : self->capacity;
}

/* ------------------------------------------------------------------ the clock */

static void tb_deadlines_shift(TokenBucket *self, double delta);

/* Bring the bucket up to now on the clock of `loop` (borrowed; NULL or None when no loop runs:
 * then the clock of the last loop, unless it is closed, else time.monotonic()).
 * Beware: calls loop.time() and loop.is_closed(), Python code. */
static int
tb_clock(TokenBucket *self, PyObject *loop)
{
    fa_state *st = self->st;
    PyObject *held = NULL;  // a strong reference to the loop across its time()
    if (loop == NULL || loop == Py_None) {
        loop = NULL;
        if (self->clk.kloop != NULL) {
            held = Py_NewRef(self->clk.kloop);
            int closed = fa_call_bool(held, st->tokenbucket.str_is_closed);
            if (closed < 0) {
                Py_DECREF(held);
                return -1;
            }
            if (closed) {
                Py_CLEAR(held);
            }
            loop = held;
        }
    }
    else {
        held = Py_NewRef(loop);
    }
    fa_reading r;
    int rc = loop != NULL ? fa_loop_read(st, loop, &r) : fa_mono_read(st, &r);
    if (rc < 0) {
        Py_XDECREF(held);
        return -1;
    }
    PyObject *old_loop = NULL, *old_fn = NULL;
    double now = r.now;
    if (!self->stamp_valid || !fa_clock_same(&self->clk, &r)) {
        /* a new clock: restart the stamp here, adding nothing for the unknowable gap; the
         * waiters' deadlines keep what they had left */
        if (self->stamp_valid) {
            tb_deadlines_shift(self, now - self->last_read);
        }
        self->stamp = now;
        self->stamp_valid = 1;
        (void)fa_clock_advance(&self->clk, &r, &old_loop, &old_fn);
        self->clk.offset = 0.0;  // the bucket keeps readings as they are (see tb_arm's call_at)
    }
    else {
        (void)fa_clock_advance(&self->clk, &r, &old_loop, &old_fn);
        tb_refill(self, now);
    }
    self->last_read = now;
    FA_ASSERT_CONSISTENT(self);
    Py_XDECREF(old_loop);  // Beware: may drop the last reference to a loop or a clock
    Py_XDECREF(old_fn);
    Py_XDECREF(held);
    return 0;
}

static int tb_peer_loop(TokenBucket *self, PyObject *loop);

/* tb_clock on the running loop. */
static inline int
tb_clock_now(TokenBucket *self)
{
    fa_state *st = self->st;
    PyObject *loop = fa_running_loop_or_none(st);  // new ref
    if (loop == NULL) {
        return -1;
    }
    if (FA_UNLIKELY(self->peer) && loop != self->loop && loop != Py_None
        && tb_peer_loop(self, loop) < 0) {
        Py_DECREF(loop);
        return -1;
    }
    /* the hot case in one piece: the loop proven native last time, still native, and the
     * bucket's stamp already on the monotonic clock */
    if (FA_LIKELY(self->stamp_valid && self->clk.kloop == NULL && self->clk.kfn == NULL
                  && fa_loop_proven(st, loop) == 1)) {
        Py_DECREF(loop);  // the running loop: alive without us
        double now = fa_monotonic();
        self->last_read = self->clk.last = now;
        tb_refill(self, now);
        FA_ASSERT_CONSISTENT(self);
        return 0;
    }
    int rc = tb_clock(self, loop);
    Py_DECREF(loop);
    return rc;
}

/* ------------------------------------------------------------------ the deadline heap */

static inline int
dl_less(const tb_deadline *a, const tb_deadline *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void
dl_sift_up(tb_deadline *h, Py_ssize_t i)
{
    tb_deadline x = h[i];
    while (i > 0) {
        Py_ssize_t p = (i - 1) / 2;
        if (!dl_less(&x, &h[p])) {
            break;
        }
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static void
dl_sift_down(tb_deadline *h, Py_ssize_t n, Py_ssize_t i)
{
    tb_deadline x = h[i];
    for (;;) {
        Py_ssize_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && dl_less(&h[c + 1], &h[c])) {
            c++;
        }
        if (!dl_less(&h[c], &x)) {
            break;
        }
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

/* Room for one more entry: 0, or -1 with MemoryError. */
static int
dl_reserve(TokenBucket *self)
{
    if (self->dl_len < self->dl_alloc) {
        return 0;
    }
    Py_ssize_t n = self->dl_alloc ? self->dl_alloc * 2 : 8;
    tb_deadline *h = PyMem_Realloc(self->dl, (size_t)n * sizeof(tb_deadline));
    if (h == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->dl = h;
    self->dl_alloc = n;
    return 0;
}

static inline int
dl_is_live(TokenBucket *self, const tb_deadline *e)
{
    return e->op->queue == &self->waiters && (e->op->flags & OPF_TIMED);
}

/* Drop every stale entry (detach first, then decref). */
static void
dl_compact(TokenBucket *self)
{
    Py_ssize_t n = self->dl_len, k = 0, s = 0;
    FaOp **stale = PyMem_Malloc(sizeof(FaOp *) * (size_t)(n ? n : 1));
    if (stale == NULL) {
        return;  // keep them; compaction is an optimisation
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (dl_is_live(self, &self->dl[i])) {
            self->dl[k++] = self->dl[i];
        }
        else {
            stale[s++] = self->dl[i].op;
        }
    }
    self->dl_len = k;
    for (Py_ssize_t i = k / 2 - 1; i >= 0; i--) {
        dl_sift_down(self->dl, k, i);
    }
    for (Py_ssize_t i = 0; i < s; i++) {
        Py_DECREF(stale[i]);
    }
    PyMem_Free(stale);
}

/* Pop the top entry; returns its op (the heap's strong reference) and its time. */
static FaOp *
dl_pop(TokenBucket *self, double *when)
{
    tb_deadline top = self->dl[0];
    self->dl_len--;
    if (self->dl_len > 0) {
        self->dl[0] = self->dl[self->dl_len];
        dl_sift_down(self->dl, self->dl_len, 0);
    }
    *when = top.when;
    return top.op;
}

/* Drop stale entries from the top; returns the earliest live deadline or +inf. */
static double
dl_earliest(TokenBucket *self)
{
    while (self->dl_len > 0 && !dl_is_live(self, &self->dl[0])) {
        double w;
        FaOp *op = dl_pop(self, &w);
        Py_DECREF(op);  // detached already
    }
    return self->dl_len > 0 ? self->dl[0].when : INFINITY;
}

static void
dl_release_all(TokenBucket *self)
{
    tb_deadline *h = self->dl;
    Py_ssize_t n = self->dl_len;
    self->dl = NULL;
    self->dl_len = self->dl_alloc = self->dl_live = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(h[i].op);
    }
    PyMem_Free(h);
}

/* ------------------------------------------------------------------ the waiter queue */

/* Unlink a waiting op (the caller holds a reference). */
static void
tb_unlink(TokenBucket *self, FaOp *op)
{
    if (op->flags & OPF_TIMED) {
        op->flags &= ~OPF_TIMED;
        self->dl_live--;
    }
    fa_waitq_unlink(op);
    if (self->dl_len > 32 && self->dl_len > 2 * self->dl_live) {
        dl_compact(self);
    }
    FA_ASSERT_CONSISTENT(self);
}

/* Drop every waiter and the timer: the loop they belong to is closed, nothing can wake them. */
static void
tb_abandon(TokenBucket *self)
{
    for (FaOp *op = self->waiters.head; op != NULL; op = op->next) {
        op->flags &= ~OPF_TIMED;
    }
    fa_waitq_release_all(&self->waiters);
    dl_release_all(self);
    Py_CLEAR(self->timer);  // closing the loop cancelled it
    FA_ASSERT_CONSISTENT(self);
}

/* aiolimiter's rules: the limiter is used in `loop` (borrowed, running), not the one it knows.
 * The first loop is remembered; after it closed, the next one takes its place, its waiters are
 * dropped and a RuntimeWarning says so (aiolimiter's). While it is open, nothing changes here
 * (taking tokens at once works in any loop; waiting in another is tb_bind's RuntimeError).
 * Beware: loop.is_closed() and the warning (an error under -W error) run Python code. */
static int
tb_peer_loop(TokenBucket *self, PyObject *loop)
{
    if (self->loop != NULL) {
        PyObject *old = Py_NewRef(self->loop);
        int closed = fa_call_bool(old, self->st->tokenbucket.str_is_closed);
        Py_DECREF(old);
        if (closed <= 0) {
            return closed;
        }
        if (self->loop == loop) {
            return 0;  // re-entered and re-bound meanwhile
        }
        tb_abandon(self);
    }
    int warn = self->loop != NULL;
    Py_XSETREF(self->loop, Py_NewRef(loop));  // Beware: may drop the last ref to the old loop
    FA_ASSERT_CONSISTENT(self);
    if (warn) {
        return PyErr_WarnEx(PyExc_RuntimeWarning, TB_PEER_REUSE_WARNING, 1);
    }
    return 0;
}

/* The running loop (new ref), binding the bucket to it on the first wait. A bucket bound to a
 * loop that has since closed re-binds cleanly: its waiters there are dropped (their tasks can
 * never run again). Waiting in another loop while the bound one is open is a RuntimeError. */
static PyObject *
tb_bind(TokenBucket *self)
{
    fa_state *st = self->st;
    PyObject *loop = fa_running_loop(st);  // new ref
    if (loop == NULL) {
        return NULL;
    }
    if (self->loop == loop) {
        return loop;
    }
    if (self->loop != NULL) {
        PyObject *old = Py_NewRef(self->loop);
        int closed = fa_call_bool(old, st->tokenbucket.str_is_closed);  // Beware: Python code
        Py_DECREF(old);
        if (closed < 0) {
            Py_DECREF(loop);
            return NULL;
        }
        if (!closed) {
            Py_DECREF(loop);
            PyObject *r = PyObject_Repr((PyObject *)self);
            if (r != NULL) {
                PyErr_Format(PyExc_RuntimeError, "%U is bound to a different event loop", r);
                Py_DECREF(r);
            }
            return NULL;
        }
        tb_abandon(self);
    }
    Py_XSETREF(self->loop, Py_NewRef(loop));
    FA_ASSERT_CONSISTENT(self);
    return loop;
}

/* ------------------------------------------------------------------ wake-ups and the timer */

static PyObject *tb_wake(PyObject *op, PyObject *Py_UNUSED(ignored));

static PyMethodDef tb_wake_def = {"_wake", tb_wake, METH_NOARGS, NULL};

/* Resolve a waiter's future (the op is committed already). 1 done, 0 the future was done
 * already (cancelled: the op is dead), -1 error. Beware: loop.call_soon runs. */
static int
tb_resolve(fa_state *st, FaOp *op)
{
    PyObject *fut = Py_NewRef(op->fut);
    int rc = fa_fut_set_result(st, fut, Py_None);
    Py_DECREF(fut);
    if (rc == 0) {
        return 1;
    }
    if (PyErr_ExceptionMatches(st->core.InvalidStateError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* Admit from the head while the tokens allow. 0, or -1 (state consistent). */
static int
tb_admit(TokenBucket *self)
{
    fa_state *st = self->st;
    FaOp *op;
    while ((op = self->waiters.head) != NULL) {
        if (!tb_enough(self, op->num)) {
            /* the head waits; unless its task was cancelled and it just has not left yet */
            Py_INCREF(op);
            PyObject *fut = Py_NewRef(op->fut);
            int d = fa_fut_done(st, fut);  // Beware: Python code for foreign futures
            Py_DECREF(fut);
            if (d < 0) {
                Py_DECREF(op);
                return -1;
            }
            if (d && op->queue == &self->waiters) {
                tb_unlink(self, op);  // dead: it will see it is unlinked when its task runs
                Py_DECREF(op);
                continue;
            }
            int head = self->waiters.head == op;
            Py_DECREF(op);
            if (head) {
                break;
            }
            continue;  // the queue changed under us: look again
        }
        /* commit, then call out */
        Py_INCREF(op);
        tb_take(self, op->num);
        tb_unlink(self, op);
        op->flags |= OPF_ADMITTED | FA_OPF_WOKEN;
        FA_ASSERT_CONSISTENT(self);
        int r = tb_resolve(st, op);  // Beware
        if (r <= 0) {
            /* dead (cancelled) or failing: it takes nothing */
            op->flags &= ~(OPF_ADMITTED | FA_OPF_WOKEN);
            tb_refund(self, op->num);
        }
        Py_DECREF(op);
        if (r < 0) {
            return -1;
        }
    }
    return 0;
}

/* Time out every waiter whose deadline is <= stamp. Sets reprocess if the head left. */
static int
tb_expire(TokenBucket *self)
{
    fa_state *st = self->st;
    while (self->dl_len > 0 && self->dl[0].when <= self->stamp) {
        double when;
        FaOp *op = dl_pop(self, &when);  // our reference now
        if (op->queue != &self->waiters || !(op->flags & OPF_TIMED)) {
            Py_DECREF(op);
            continue;
        }
        if (self->waiters.head == op) {
            self->reprocess = 1;
        }
        tb_unlink(self, op);
        op->flags |= OPF_TIMEDOUT | FA_OPF_WOKEN;
        FA_ASSERT_CONSISTENT(self);
        int r = tb_resolve(st, op);  // Beware
        if (r == 0) {
            op->flags &= ~FA_OPF_WOKEN;  // cancelled meanwhile: its cancellation wins
        }
        Py_DECREF(op);
        if (r < 0) {
            return -1;
        }
    }
    return 0;
}

static int
tb_disarm(TokenBucket *self)
{
    PyObject *h = self->timer;
    if (h == NULL) {
        return 0;
    }
    self->timer = NULL;  // detach, then call out
    FA_ASSERT_CONSISTENT(self);
    PyObject *args[1] = {h};
    PyObject *r = PyObject_VectorcallMethod(self->st->core.str_cancel, args,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(h);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* A new clock: every deadline keeps the time it had left (delta: new reading - last reading).
 * The heap order is unchanged. */
static void
tb_deadlines_shift(TokenBucket *self, double delta)
{
    if (!isfinite(delta)) {
        return;
    }
    for (Py_ssize_t i = 0; i < self->dl_len; i++) {
        self->dl[i].when += delta;
    }
}

/* Arm the one timer for min(head ready time, earliest deadline), or disarm it. */
static int
tb_arm(TokenBucket *self, PyObject *loop)
{
    double when = INFINITY;
    FaOp *head = self->waiters.head;
    if (head != NULL && head->num > self->level) {
        when = self->stamp + tb_seconds_for(self, head->num - self->level);
    }
    double d = dl_earliest(self);
    if (d < when) {
        when = d;
    }
    if (!isfinite(when)) {
        return tb_disarm(self);  // nothing to wait for (or forever: only cancellation ends it)
    }
    if (self->timer != NULL && self->timer_when == when) {
        return 0;
    }
    if (tb_disarm(self) < 0) {
        return -1;
    }
    if (self->wake_cb == NULL) {
        self->wake_cb = PyCFunction_NewEx(&tb_wake_def, (PyObject *)self, NULL);
        if (self->wake_cb == NULL) {
            return -1;
        }
    }
    PyObject *w = PyFloat_FromDouble(when);
    if (w == NULL) {
        return -1;
    }
    PyObject *args[3] = {loop, w, self->wake_cb};
    PyObject *h = PyObject_VectorcallMethod(self->st->core.str_call_at, args,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);  // Beware
    Py_DECREF(w);
    if (h == NULL) {
        return -1;
    }
    if (self->timer != NULL) {
        /* re-entered and armed meanwhile: keep one, go round again */
        self->reprocess = 1;
        PyObject *r = PyObject_CallMethodNoArgs(h, self->st->core.str_cancel);
        Py_DECREF(h);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    self->timer = h;
    self->timer_when = when;
    FA_ASSERT_CONSISTENT(self);
    return 0;
}

/* See TB_EARLY_FIRE. */
static double
tb_early_fire(fa_state *st, PyObject *loop)
{
    double early = TB_EARLY_FIRE;
    // Beware: Python code
    PyObject *r = PyObject_GetAttr(loop, st->tokenbucket.str_clock_resolution);
    if (r == NULL) {
        PyErr_Clear();  // not an asyncio loop (uvloop has none): the default
        return early;
    }
    double d = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return early;
    }
    if (d > early) {  // NaN and negatives fail this
        early = d < TB_EARLY_FIRE_MAX ? d : TB_EARLY_FIRE_MAX;
    }
    return early;
}

/* Bring the bucket up to date on its loop's clock, admit what can be admitted, time out what
 * is due, and arm the timer for what remains. fired_at: the time the timer was armed for (the
 * loop ran it, so that time has come, whatever rounding its clock does), or NAN.
 * Returns 0, or -1 with the state consistent. Beware: calls Python code throughout. */
static int
tb_process(TokenBucket *self, double fired_at)
{
    if (self->processing) {
        self->reprocess = 1;
        return 0;
    }
    fa_state *st = self->st;
    int rc = 0;
    self->processing = 1;
    Py_INCREF(self);
    do {
        self->reprocess = 0;
        if (self->loop == NULL) {
            break;
        }
        PyObject *loop = Py_NewRef(self->loop);
        int closed = fa_call_bool(loop, st->tokenbucket.str_is_closed);
        if (closed != 0) {
            Py_DECREF(loop);
            rc = closed < 0 ? -1 : 0;
            break;  // closed: nothing can run there; the next wait re-binds
        }
        rc = tb_clock(self, loop);
        if (rc == 0 && !isnan(fired_at)) {
            /* The loop ran the timer, so its time has come, even if the clock reads a hair
             * before it (see TB_EARLY_FIRE). Trusting that spares a re-arm for a rounding
             * deficit; the stamp then leads the clock by what the loop ran early (never more
             * than TB_EARLY_FIRE), refills resume once the clock passes it, and the long-run
             * rate stays exact. */
            double latest = self->last_read + tb_early_fire(st, loop);
            tb_refill(self, fired_at < latest ? fired_at : latest);
            fired_at = NAN;
        }
        if (rc == 0) {
            rc = tb_admit(self);
        }
        if (rc == 0) {
            rc = tb_expire(self);
        }
        if (rc == 0 && !self->reprocess) {
            rc = tb_arm(self, loop);
        }
        Py_DECREF(loop);
        FA_ASSERT_CONSISTENT(self);
    } while (rc == 0 && self->reprocess);
    self->processing = 0;
    Py_DECREF(self);
    return rc;
}

static PyObject *
tb_wake(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TokenBucket *self = (TokenBucket *)op;
    double when = self->timer_when;
    Py_CLEAR(self->timer);  // it ran
    FA_ASSERT_CONSISTENT(self);
    if (tb_process(self, when) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Drop done (cancelled) ops at the head, so a newcomer is not queued behind the dead; and all
 * of them if their loop is closed (their tasks can never run again). */
static int
tb_purge_dead(TokenBucket *self)
{
    fa_state *st = self->st;
    FaOp *op;
    if (self->loop != NULL && self->waiters.len != 0) {
        PyObject *loop = Py_NewRef(self->loop);
        int closed = fa_call_bool(loop, st->tokenbucket.str_is_closed);  // Beware: Python code
        Py_DECREF(loop);
        if (closed < 0) {
            return -1;
        }
        if (closed) {
            tb_abandon(self);
            return 0;
        }
    }
    while ((op = self->waiters.head) != NULL) {
        Py_INCREF(op);
        PyObject *fut = Py_NewRef(op->fut);
        int d = fa_fut_done(st, fut);  // Beware
        Py_DECREF(fut);
        if (d <= 0) {
            Py_DECREF(op);
            return d;
        }
        if (op->queue == &self->waiters) {
            tb_unlink(self, op);
        }
        Py_DECREF(op);
    }
    return 0;
}

/* ------------------------------------------------------------------ acquire */

/* aiolimiter's order: move op (just linked at the tail) back past every waiter asking for more,
 * so the queue stays sorted by (amount, arrival). Usually no move at all (equal amounts). */
static void
tb_peer_place(TokenBucket *self, FaOp *op)
{
    fa_waitq *q = &self->waiters;
    FaOp *before = op;  // op goes right before this one
    while (before->prev != NULL && before->prev->num > op->num) {
        before = before->prev;
    }
    if (before == op) {
        return;
    }
    /* unlink op (the tail) by hand, keeping the queue's reference */
    q->tail = op->prev;
    q->tail->next = NULL;
    /* and link it before `before` */
    op->next = before;
    op->prev = before->prev;
    if (before->prev != NULL) {
        before->prev->next = op;
    }
    else {
        q->head = op;
    }
    before->prev = op;
    q->version++;
    FA_ASSERT_CONSISTENT(self);
}

/* The ValueError of a request above the capacity (see tb_count_arg). */
static PySendResult
tb_over_capacity(TokenBucket *self, FaOp *op)
{
    PyObject *n = PyFloat_FromDouble(op->num);
    if (n != NULL) {
        PyErr_Format(PyExc_ValueError, "tokens must be <= capacity (%R), got %R: the request "
                     "could never be satisfied", self->cap_obj, n);
        Py_DECREF(n);
    }
    return PYGEN_ERROR;
}

/* The op's timeout (op->arg, a float) or NULL. */
static PySendResult
tb_enqueue(FaOp *op, PyObject **res)
{
    TokenBucket *self = (TokenBucket *)op->owner;
    fa_state *st = self->st;
    double timeout = INFINITY;
    if (FA_UNLIKELY(op->num > self->capacity)) {
        /* re-initialized to a smaller capacity since acquire() checked the count (between the
         * call and the await): it could never be satisfied */
        return tb_over_capacity(self, op);
    }
    if (op->arg != NULL) {
        timeout = PyFloat_AS_DOUBLE(op->arg);
        if (timeout <= 0) {
            PyErr_Format(st->core.TimeoutError, "acquire() timed out after %R s: the tokens were "
                         "not available at once", op->arg);
            return PYGEN_ERROR;
        }
    }
    int timed = isfinite(timeout);
    if (timed && dl_reserve(self) < 0) {
        return PYGEN_ERROR;
    }
    PyObject *loop = tb_bind(self);  // new ref
    if (loop == NULL) {
        return PYGEN_ERROR;
    }
    double deadline = 0;
    if (timed) {
        if (tb_clock(self, loop) < 0) {
            Py_DECREF(loop);
            return PYGEN_ERROR;
        }
        deadline = self->stamp + timeout;
    }
    PySendResult r = fa_op_wait_on(op, loop, &self->waiters, res);  // Beware: create_future
    Py_DECREF(loop);
    if (r != PYGEN_NEXT) {
        return r;
    }
    if (self->peer) {
        tb_peer_place(self, op);
    }
    if (FA_UNLIKELY(op->num > self->capacity)) {
        /* the same, by Python code run since (loop.time(), create_future) */
        tb_unlink(self, op);
        Py_CLEAR(*res);
        return tb_over_capacity(self, op);
    }
    if (timed && dl_reserve(self) == 0) {  // reserved above, unless Python code used it up
        tb_deadline *e = &self->dl[self->dl_len];
        e->when = deadline;
        e->seq = self->dl_seq++;
        e->op = (FaOp *)Py_NewRef(op);
        self->dl_len++;
        dl_sift_up(self->dl, self->dl_len - 1);
        op->flags |= OPF_TIMED;
        self->dl_live++;
    }
    else if (timed) {
        PyErr_Clear();  /* out of memory: wait without the deadline rather than fail */
    }
    FA_ASSERT_CONSISTENT(self);
    if (tb_process(self, NAN) < 0) {
        /* undo: nothing taken unless it was admitted meanwhile */
        if (op->flags & OPF_ADMITTED) {
            tb_refund(self, op->num);
        }
        if (op->queue == &self->waiters) {
            tb_unlink(self, op);
        }
        Py_CLEAR(*res);
        return PYGEN_ERROR;
    }
    return PYGEN_NEXT;
}

/* aiolimiter's rules (see the top): the tokens go to whoever asks while they are there. */
static PySendResult
tb_peer_take_or_wait(FaOp *op, PyObject **res)
{
    TokenBucket *self = (TokenBucket *)op->owner;
    if (op->flags & OPF_BADAMOUNT) {
        op->flags &= ~OPF_BADAMOUNT;
        PyErr_SetString(PyExc_ValueError, TB_PEER_AMOUNT_ERROR);
        return PYGEN_ERROR;
    }
    if (tb_clock_now(self) < 0) {
        return PYGEN_ERROR;
    }
    if (op->num == 0) {
        *res = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    if (tb_enough(self, op->num)) {
        tb_take(self, op->num);
        FA_ASSERT_CONSISTENT(self);
        /* the head's ready time moved: re-arm */
        if (FA_UNLIKELY(self->waiters.len != 0) && tb_process(self, NAN) < 0) {
            return PYGEN_ERROR;  // the tokens are taken, as aiolimiter's would be
        }
        *res = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    return tb_enqueue(op, res);
}

/* Take op->num tokens now (PYGEN_RETURN, *res = None) or queue up (PYGEN_NEXT). */
static inline PySendResult
tb_take_or_wait(FaOp *op, PyObject **res)
{
    TokenBucket *self = (TokenBucket *)op->owner;
    if (FA_UNLIKELY(self->peer)) {
        return tb_peer_take_or_wait(op, res);
    }
    if (FA_UNLIKELY(self->waiters.len != 0) && tb_purge_dead(self) < 0) {
        return PYGEN_ERROR;
    }
    if (FA_LIKELY(self->waiters.len == 0)) {
        if (tb_clock_now(self) < 0) {
            return PYGEN_ERROR;
        }
        if (FA_LIKELY(self->waiters.len == 0 && tb_enough(self, op->num))) {
            tb_take(self, op->num);
            FA_ASSERT_CONSISTENT(self);
            *res = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
    }
    return tb_enqueue(op, res);
}

static PySendResult
tb_acquire_start(FaOp *op, PyObject **res)
{
    return tb_take_or_wait(op, res);
}

static PySendResult
tb_acquire_resume(FaOp *op, PyObject *Py_UNUSED(value), PyObject **res)
{
    if (op->flags & OPF_ADMITTED) {
        op->flags &= ~OPF_ADMITTED;
        *res = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    if (op->flags & OPF_TIMEDOUT) {
        PyObject *n = PyFloat_FromDouble(op->num);
        if (n != NULL) {
            PyErr_Format(op->st->core.TimeoutError, "acquire(%R) timed out after %R s", n, op->arg);
            Py_DECREF(n);
        }
        return PYGEN_ERROR;
    }
    PyErr_SetString(PyExc_RuntimeError, "TokenBucket waiter resumed without being admitted");
    return PYGEN_ERROR;
}

/* An exception reached a wait (cancellation, close): leave the line, give back what was taken,
 * and let the next proceed if it now can. */
static int
tb_wait_exc(FaOp *op, PyObject *Py_UNUSED(exc))
{
    TokenBucket *self = (TokenBucket *)op->owner;
    int changed = 0;
    if (op->queue == &self->waiters) {
        changed = self->waiters.head == op;
        tb_unlink(self, op);
    }
    if (op->flags & OPF_ADMITTED) {
        op->flags &= ~OPF_ADMITTED;
        tb_refund(self, op->num);
        changed = 1;
    }
    FA_ASSERT_CONSISTENT(self);
    if (changed) {
        return tb_process(self, NAN);
    }
    return 0;
}

static const fa_opkind tb_acquire_kind = {
    "TokenBucket.acquire", tb_acquire_start, tb_acquire_resume, tb_wait_exc, NULL,
};

static const fa_opkind tb_aexit_kind = {"TokenBucket.__aexit__", fa_op_none_start,
                                        fa_op_none_resume, NULL, NULL};

/* ------------------------------------------------------------------ RateLimited calls */

/* The token is ours: call the function (op->arg2 = (func, kwnames or None, *args,
 * *kwvalues)) and `yield from` what it returns. */
PySendResult
fa_tb_call_run(FaOp *op, PyObject **res)
{
    op->flags |= OPF_CALLING;
    PyObject *t = op->arg2;  // owned from here
    op->arg2 = NULL;
    PyObject **items = ((PyTupleObject *)t)->ob_item;
    PyObject *kwnames = items[1] == Py_None ? NULL : items[1];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t nargs = PyTuple_GET_SIZE(t) - 2 - nkw;
    PyObject *aw = PyObject_Vectorcall(items[0], items + 2, (size_t)nargs, kwnames);  // new ref
    Py_DECREF(t);
    if (aw == NULL) {
        return PYGEN_ERROR;
    }
    PySendResult r = fa_op_delegate(op, aw, res);
    Py_DECREF(aw);
    return r;
}

static PySendResult
tb_call_start(FaOp *op, PyObject **res)
{
    return fa_tb_call_start(op, res, tb_take_or_wait);
}

static PySendResult
tb_call_resume(FaOp *op, PyObject *value, PyObject **res)
{
    return fa_tb_call_resume(op, value, res, tb_acquire_resume);
}

static int
tb_call_exc(FaOp *op, PyObject *exc)
{
    return fa_tb_call_exc(op, exc, tb_wait_exc);
}

static const fa_opkind tb_call_kind = {
    "RateLimited.__call__", tb_call_start, tb_call_resume, tb_call_exc, NULL,
};

/* argument parsing: tokenbucket.h (shared with the shared bucket) */

/* ------------------------------------------------------------------ methods */

/* aiolimiter's acquire(amount=1): a real number (else TypeError now); one outside
 * [0, max_rate] raises ValueError when awaited, as an `async def` would. *flags gets
 * OPF_BADAMOUNT then. 0 or -1. */
static int
tb_peer_amount(TokenBucket *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               double *out, int *flags)
{
    PyObject *amount = NULL;
    if (tb_parse2("acquire", args, nargs, kwnames, "amount", NULL, &amount, NULL) < 0) {
        return -1;
    }
    double n = 1.0;
    if (amount != NULL) {
        int rc = tb_real(amount, "amount", &n);
        if (rc == -1) {
            return -1;
        }
        if (rc == -2) {
            PyErr_Clear();
            n = INFINITY;  // too large for a float: out of range either way
        }
    }
    if (!(n >= 0 && n <= self->capacity)) {  // NaN fails both
        *flags |= OPF_BADAMOUNT;
        n = 1.0;
    }
    *out = n;
    return 0;
}

static PyObject *
tb_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    TokenBucket *self = (TokenBucket *)op;
    double n = 1.0;
    PyObject *timeout = NULL;
    int flags = 0;
    if (FA_UNLIKELY(self->peer) && (nargs != 0 || kwnames != NULL)) {
        if (tb_peer_amount(self, args, nargs, kwnames, &n, &flags) < 0) {
            return NULL;
        }
    }
    else if (FA_UNLIKELY(nargs != 0 || kwnames != NULL)) {
        if (fa_tb_acquire_args((fa_tb_head *)self, args, nargs, kwnames, &n, &timeout) < 0) {
            return NULL;
        }
    }
    FaOp *o = fa_op_cached(self->st, &self->cache, &tb_acquire_kind, op);
    if (o == NULL) {
        Py_XDECREF(timeout);
        return NULL;
    }
    o->num = n;
    o->flags = (o->flags & ~OPF_BADAMOUNT) | flags;
    Py_XSETREF(o->arg, timeout);
    return (PyObject *)o;
}

static PyObject *
tb_aenter(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    if (nargs != 0) {
        PyErr_Format(PyExc_TypeError, "__aenter__() takes no arguments (%zd given)", nargs);
        return NULL;
    }
    TokenBucket *self = (TokenBucket *)op;
    FaOp *o = fa_op_cached(self->st, &self->cache, &tb_acquire_kind, op);
    if (o != NULL) {
        o->num = 1.0;
        o->flags &= ~OPF_BADAMOUNT;
    }
    return (PyObject *)o;
}

static PyObject *
tb_aexit(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    return fa_tb_aexit(op, nargs, &tb_aexit_kind);
}

PyObject *
fa_tb_aexit(PyObject *op, Py_ssize_t nargs, const fa_opkind *kind)
{
    fa_tb_head *h = (fa_tb_head *)op;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__aexit__() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    return (PyObject *)fa_op_cached(h->st, &h->cache, kind, op);
}

/* Would acquire(n) finish at once? Refills; drops dead heads. 1, 0, -1. */
static int
tb_available(TokenBucket *self, double n)
{
    if (self->waiters.len != 0 && tb_purge_dead(self) < 0) {
        return -1;
    }
    if (self->waiters.len != 0) {
        return 0;
    }
    if (tb_clock_now(self) < 0) {
        return -1;
    }
    return self->waiters.len == 0 && tb_enough(self, n);
}

static PyObject *
tb_try_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    TokenBucket *self = (TokenBucket *)op;
    double n;
    if (fa_tb_tokens_args((fa_tb_head *)self, "try_acquire", args, nargs, kwnames, &n) < 0) {
        return NULL;
    }
    int ok = tb_available(self, n);
    if (ok < 0) {
        return NULL;
    }
    if (ok) {
        tb_take(self, n);
        FA_ASSERT_CONSISTENT(self);
    }
    return PyBool_FromLong(ok);
}

/* aiolimiter's has_capacity(amount=1): would `amount` fit now, whoever waits. Any real number
 * (the level plus it within max_rate). */
static PyObject *
tb_peer_has_capacity(TokenBucket *self, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
{
    PyObject *amount = NULL;
    double n = 1.0;
    if (tb_parse2("has_capacity", args, nargs, kwnames, "amount", NULL, &amount, NULL) < 0) {
        return NULL;
    }
    if (amount != NULL) {
        int rc = tb_real(amount, "amount", &n);
        if (rc == -1) {
            return NULL;
        }
        if (rc == -2) {
            PyErr_Clear();
            int neg = tb_huge_negative(amount);
            if (neg < 0) {
                return NULL;
            }
            n = neg ? -INFINITY : INFINITY;
        }
    }
    if (tb_clock_now(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(tb_enough(self, n));
}

static PyObject *
tb_has_capacity(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    TokenBucket *self = (TokenBucket *)op;
    double n;
    if (FA_UNLIKELY(self->peer)) {
        return tb_peer_has_capacity(self, args, nargs, kwnames);
    }
    if (fa_tb_tokens_args((fa_tb_head *)self, "has_capacity", args, nargs, kwnames, &n) < 0) {
        return NULL;
    }
    int ok = tb_available(self, n);
    return ok < 0 ? NULL : PyBool_FromLong(ok);
}

static PyObject *
tb_reset(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TokenBucket *self = (TokenBucket *)op;
    if (tb_clock_now(self) < 0) {
        return NULL;
    }
    self->level = self->initial;
    FA_ASSERT_CONSISTENT(self);
    if (self->waiters.len != 0 && tb_process(self, NAN) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _clock(): (now, native) as the bucket reads the running loop's clock. For tests. */
static PyObject *
tb_private_clock(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TokenBucket *self = (TokenBucket *)op;
    PyObject *loop = fa_running_loop(self->st);  // new ref: the bucket's own way to find it
    if (loop == NULL) {
        return NULL;
    }
    fa_reading r;
    int rc = fa_loop_read(self->st, loop, &r);
    Py_DECREF(loop);
    if (rc < 0) {
        return NULL;
    }
    int native = r.kloop == NULL && r.kfn == NULL;
    fa_reading_release(&r);
    return Py_BuildValue("(dO)", r.now, native ? Py_True : Py_False);
}

/* bucket(func): the decorator. */
static PyObject *
tb_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    return fa_tb_decorate(((TokenBucket *)op)->st, op, args, kwargs, &tb_call_kind);
}

PyObject *
fa_tb_decorate(fa_state *st, PyObject *op, PyObject *args, PyObject *kwargs,
               const fa_opkind *call_kind)
{
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) || PyTuple_GET_SIZE(args) != 1) {
        PyErr_SetString(PyExc_TypeError, "a TokenBucket decorates one async function: "
                        "@bucket, then async def f(...)");
        return NULL;
    }
    PyObject *func = PyTuple_GET_ITEM(args, 0);
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "a TokenBucket decorates an async function, not %.100s",
                     Py_TYPE(func)->tp_name);
        return NULL;
    }
    RateLimited *w = PyObject_GC_New(RateLimited, st->tokenbucket.RateLimitedType);
    if (w == NULL) {
        return NULL;
    }
    fa_wrapper_init((PyObject *)w, func, rl_vectorcall);
    w->st = st;
    w->bucket = Py_NewRef(op);
    w->cache = NULL;
    w->kind = call_kind;
    PyObject_GC_Track(w);
    if (fa_wrapper_finish((PyObject *)w, FA_WRAP_ASYNC) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

/* ------------------------------------------------------------------ construction */

static PyObject *
tb_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    fa_state *st = fa_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    PyObject *shared = kwargs ? PyDict_GetItemWithError(kwargs, st->tokenbucket.str_shared) : NULL;
    if (shared != NULL && shared != Py_None) {
        /* TokenBucket(..., shared=name): one bucket for every process of the host */
        if (tp != st->tokenbucket.TokenBucketType) {
            PyErr_Format(PyExc_TypeError, "shared= makes a SharedTokenBucket, which %.100s "
                         "cannot be", tp->tp_name);
            return NULL;
        }
        return PyObject_Call((PyObject *)st->tokenbucket.SharedTokenBucketType, args, kwargs);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    TokenBucket *self = (TokenBucket *)tp->tp_alloc(tp, 0);  // zeroed
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    /* a consistent bucket even if __init__ never runs: 1 token per second, full */
    self->rate = self->per = self->capacity = self->initial = self->level = 1.0;
    self->rate_obj = PyLong_FromLong(1);
    if (self->rate_obj == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->per_obj = Py_NewRef(self->rate_obj);
    self->cap_obj = Py_NewRef(self->rate_obj);
    return (PyObject *)self;
}

/* AsyncLimiter's base: a TokenBucket on aiolimiter's rules (see the top). */
static PyObject *
tb_peer_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    PyObject *self = tb_new(tp, args, kwargs);
    if (self != NULL) {
        ((TokenBucket *)self)->peer = 1;
    }
    return self;
}

int
fa_tb_config_parse(PyObject *rate_o, PyObject *per_o, PyObject *cap_o, PyObject *init_o,
                   fa_tb_config *out)
{
    double rate, per = 1.0, cap, initial;
    if (tb_real(rate_o, "rate", &rate) < 0) {
        return -1;
    }
    if (!(rate > 0) || !isfinite(rate)) {
        PyErr_Format(PyExc_ValueError, "rate must be a finite number > 0, got %R", rate_o);
        return -1;
    }
    if (per_o != NULL) {
        if (tb_real(per_o, "per", &per) < 0) {
            return -1;
        }
        if (!(per > 0) || !isfinite(per)) {
            PyErr_Format(PyExc_ValueError, "per must be a finite number of seconds > 0, got %R",
                         per_o);
            return -1;
        }
    }
    PyObject *cap_obj;  // new ref
    if (cap_o == Py_None) {
        cap = rate >= 1 ? rate : 1.0;
        cap_obj = rate >= 1 ? Py_NewRef(rate_o) : PyLong_FromLong(1);
        if (cap_obj == NULL) {
            return -1;
        }
    }
    else {
        if (tb_real(cap_o, "capacity", &cap) < 0) {
            return -1;
        }
        if (!(cap >= 1) || !isfinite(cap)) {
            PyErr_Format(PyExc_ValueError, "capacity must be a finite number >= 1, got %R",
                         cap_o);
            return -1;
        }
        cap_obj = Py_NewRef(cap_o);
    }
    if (init_o == Py_None) {
        initial = cap;
    }
    else {
        if (tb_real(init_o, "initial", &initial) < 0) {
            Py_DECREF(cap_obj);
            return -1;
        }
        if (!(initial >= 0 && initial <= cap)) {
            PyErr_Format(PyExc_ValueError, "initial must be a number from 0 to capacity (%R), "
                         "got %R", cap_obj, init_o);
            Py_DECREF(cap_obj);
            return -1;
        }
    }
    PyObject *per_obj = per_o != NULL ? Py_NewRef(per_o) : PyFloat_FromDouble(1.0);
    if (per_obj == NULL) {
        Py_DECREF(cap_obj);
        return -1;
    }
    out->rate = rate;
    out->per = per;
    out->capacity = cap;
    out->initial = initial;
    out->rate_obj = Py_NewRef(rate_o);
    out->per_obj = per_obj;
    out->cap_obj = cap_obj;
    return 0;
}

static int
tb_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    TokenBucket *self = (TokenBucket *)op;
    static char *kwlist[] = {"rate", "per", "capacity", "initial", "shared", NULL};
    PyObject *rate_o, *per_o = NULL, *cap_o = Py_None, *init_o = Py_None, *shared = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$OOO:TokenBucket", kwlist, &rate_o,
                                     &per_o, &cap_o, &init_o, &shared)) {
        return -1;
    }
    if (shared != Py_None) {
        /* TokenBucket(..., shared=name) makes a SharedTokenBucket (tb_new); only a direct
         * __init__ call on an existing bucket gets here */
        PyErr_SetString(PyExc_TypeError, "an existing TokenBucket cannot become shared: "
                        "create one with TokenBucket(..., shared=name)");
        return -1;
    }
    fa_tb_config c;
    if (fa_tb_config_parse(rate_o, per_o, cap_o, init_o, &c) < 0) {
        return -1;
    }
    if (self->waiters.len != 0) {
        fa_tb_config_release(&c);
        PyErr_SetString(PyExc_RuntimeError, "cannot re-initialize a TokenBucket while tasks "
                        "wait on it");
        return -1;
    }
    fa_tb_head_configure((fa_tb_head *)self, &c);
    self->initial = c.initial;
    self->level = c.initial;
    /* the clock starts now: the running loop's, else time.monotonic() */
    self->stamp_valid = 0;
    FA_ASSERT_CONSISTENT(self);
    return tb_clock_now(self);
}

int
fa_tb_head_traverse(PyObject *op, visitproc visit, void *arg)
{
    fa_tb_head *h = (fa_tb_head *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)h->cache);
    Py_VISIT(h->rate_obj);
    Py_VISIT(h->per_obj);
    Py_VISIT(h->cap_obj);
    return fa_waitq_traverse(&h->waiters, visit, arg);
}

void
fa_tb_head_clear(PyObject *op)
{
    fa_tb_head *h = (fa_tb_head *)op;
    fa_waitq_release_all(&h->waiters);
    Py_CLEAR(h->cache);
    Py_CLEAR(h->rate_obj);
    Py_CLEAR(h->per_obj);
    Py_CLEAR(h->cap_obj);
}

static int
tb_traverse(PyObject *op, visitproc visit, void *arg)
{
    TokenBucket *self = (TokenBucket *)op;
    Py_VISIT(self->loop);
    if (fa_clock_traverse(&self->clk, visit, arg) < 0) {
        return -1;
    }
    Py_VISIT(self->timer);
    Py_VISIT(self->wake_cb);
    Py_VISIT(self->aenter);
    Py_VISIT(self->aexit);
    for (Py_ssize_t i = 0; i < self->dl_len; i++) {
        Py_VISIT((PyObject *)self->dl[i].op);
    }
    return fa_tb_head_traverse(op, visit, arg);
}

static int
tb_clear(PyObject *op)
{
    TokenBucket *self = (TokenBucket *)op;
    for (FaOp *w = self->waiters.head; w != NULL; w = w->next) {
        w->flags &= ~OPF_TIMED;
    }
    fa_tb_head_clear(op);
    dl_release_all(self);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->wake_cb);
    Py_CLEAR(self->loop);
    fa_clock_clear_refs(&self->clk);
    fa_special_clear(op, &self->aenter);
    fa_special_clear(op, &self->aexit);
    return 0;
}

static void
tb_dealloc(PyObject *op)
{
    fa_gc_dealloc(op, tb_clear);
}

/* ------------------------------------------------------------------ attributes and repr */

static PyObject *
tb_get_tokens(PyObject *op, void *Py_UNUSED(c))
{
    TokenBucket *self = (TokenBucket *)op;
    if (tb_clock_now(self) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(self->level);
}

PyObject *
fa_tb_get_waiting(PyObject *op, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(((fa_tb_head *)op)->waiters.len);
}

PyObject *
fa_tb_get_rate(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef(((fa_tb_head *)op)->rate_obj);
}

PyObject *
fa_tb_get_per(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef(((fa_tb_head *)op)->per_obj);
}

PyObject *
fa_tb_get_capacity(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef(((fa_tb_head *)op)->cap_obj);
}

/* A number for repr: integral values without ".0", others as repr(float) to 9 digits. */
PyObject *
fa_tb_num_str(double x)
{
    if (x == floor(x) && fabs(x) < 1e15) {
        return PyUnicode_FromFormat("%lld", (long long)x);
    }
    char *s = PyOS_double_to_string(x, 'g', 9, 0, NULL);
    if (s == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromString(s);
    PyMem_Free(s);
    return r;
}

static PyObject *
tb_repr(PyObject *op)
{
    TokenBucket *self = (TokenBucket *)op;
    if (tb_clock_now(self) < 0) {
        PyErr_Clear();  // show the last known level
    }
    return fa_tb_repr(op, self->level, NULL);
}

PyObject *
fa_tb_repr(PyObject *op, double level, PyObject *shared)
{
    fa_tb_head *h = (fa_tb_head *)op;
    PyObject *base = NULL, *rate = NULL, *per = NULL, *lv = NULL, *cap = NULL, *r = NULL;
    base = PyBaseObject_Type.tp_repr(op);
    rate = fa_tb_num_str(h->rate);
    per = fa_tb_num_str(h->per);
    lv = fa_tb_num_str(level);
    cap = fa_tb_num_str(h->capacity);
    if (base && rate && per && lv && cap) {
        PyObject *inner = PyUnicode_Substring(base, 1, PyUnicode_GET_LENGTH(base) - 1);
        if (inner != NULL && shared != NULL) {
            r = PyUnicode_FromFormat("<%U [shared:%R, rate:%U/%Us, tokens:%U/%U, waiting:%zd]>",
                                     inner, shared, rate, per, lv, cap, h->waiters.len);
        }
        else if (inner != NULL) {
            r = PyUnicode_FromFormat("<%U [rate:%U/%Us, tokens:%U/%U, waiters:%zd]>", inner, rate,
                                     per, lv, cap, h->waiters.len);
        }
        Py_XDECREF(inner);
    }
    Py_XDECREF(base);
    Py_XDECREF(rate);
    Py_XDECREF(per);
    Py_XDECREF(lv);
    Py_XDECREF(cap);
    return r;
}

/* ------------------------------------------------------------------ RateLimited */

static PyObject *
rl_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RateLimited *w = (RateLimited *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *t = PyTuple_New(2 + nargs + nkw);
    if (t == NULL) {
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, Py_NewRef(w->func));
    PyTuple_SET_ITEM(t, 1, Py_NewRef(kwnames ? kwnames : Py_None));
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        PyTuple_SET_ITEM(t, 2 + i, Py_NewRef(args[i]));
    }
    FaOp *o = fa_op_cached_in(w->st, callable, &w->cache, w->kind, w->bucket);
    if (o == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    o->num = 1.0;
    Py_CLEAR(o->arg);  // no timeout
    Py_XSETREF(o->arg2, t);
    return (PyObject *)o;
}

static PyObject *
rl_repr(PyObject *op)
{
    RateLimited *w = (RateLimited *)op;
    return PyUnicode_FromFormat("<rate-limited %R>", w->func);
}

static PyObject *
rl_get_bucket(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef(((RateLimited *)op)->bucket);
}

static int
rl_traverse(PyObject *op, visitproc visit, void *arg)
{
    RateLimited *w = (RateLimited *)op;
    Py_VISIT(w->bucket);
    Py_VISIT((PyObject *)w->cache);
    return fa_wrapper_traverse(op, visit, arg);
}

static int
rl_clear(PyObject *op)
{
    RateLimited *w = (RateLimited *)op;
    Py_CLEAR(w->bucket);
    Py_CLEAR(w->cache);
    fa_wrapper_clear(op);
    return 0;
}

/* ------------------------------------------------------------------ type specs */

PyDoc_STRVAR(tb_doc,
"TokenBucket(rate, per=1.0, *, capacity=None, initial=None, shared=None)\n--\n\n"
"An async rate limiter: `rate` tokens flow in every `per` seconds, continuously, up to\n"
"`capacity` (default: rate, at least 1). It starts with `initial` tokens (default: full).\n"
"Waiters are served strictly first come, first served, on the running loop's clock.\n"
"With shared=name, a SharedTokenBucket: one bucket for every process of the host.");
PyDoc_STRVAR(tb_acquire_doc, "acquire($self, /, tokens=1, timeout=None)\n--\n\n"
"Wait until `tokens` are available and take them (first come, first served). With a timeout,\n"
"raise TimeoutError after that many seconds without taking anything. Returns None.");
PyDoc_STRVAR(tb_try_acquire_doc, "try_acquire($self, /, tokens=1)\n--\n\n"
"Take `tokens` if they are available now and nobody waits; never waits. Returns a bool.");
PyDoc_STRVAR(tb_has_capacity_doc, "has_capacity($self, /, tokens=1)\n--\n\n"
"True if acquire(tokens) would finish at once (they are available and nobody waits).");
PyDoc_STRVAR(tb_reset_doc, "reset($self, /)\n--\n\n"
"Start over as constructed: `initial` tokens now. Waiters stay in line and proceed if they can.");
static const char tb_aenter_doc[] = "__aenter__($self, /)\n--\n\nacquire(1); returns None.";
static const char tb_aexit_doc[] = "__aexit__($self, exc_type, exc, tb)\n--\n\nNothing: the "
                                   "token is spent.";
PyDoc_STRVAR(tb_clock_doc, "_clock($self, /)\n--\n\n(now, native): the running loop's time as "
             "the bucket reads it, and whether it was read natively. For tests.");

/* the awaitable methods: coroutine functions to inspect (fa_methods_add) */
static PyMethodDef tb_async_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))tb_acquire, METH_FASTCALL | METH_KEYWORDS,
     tb_acquire_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef tb_methods[] = {
    {"try_acquire", (PyCFunction)(void (*)(void))tb_try_acquire, METH_FASTCALL | METH_KEYWORDS,
     tb_try_acquire_doc},
    {"has_capacity", (PyCFunction)(void (*)(void))tb_has_capacity, METH_FASTCALL | METH_KEYWORDS,
     tb_has_capacity_doc},
    {"reset", tb_reset, METH_NOARGS, tb_reset_doc},
    {"_clock", tb_private_clock, METH_NOARGS, tb_clock_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tb_getset[] = {
    {"tokens", tb_get_tokens, NULL, "The tokens available now (a float).", NULL},
    {"waiting", fa_tb_get_waiting, NULL, "The number of tasks waiting in acquire().", NULL},
    FA_TB_GETSET
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef tb_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(TokenBucket, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot tb_slots[] = {
    {Py_tp_new, tb_new},
    {Py_tp_init, tb_init},
    {Py_tp_dealloc, tb_dealloc},
    {Py_tp_traverse, tb_traverse},
    {Py_tp_clear, tb_clear},
    {Py_tp_repr, tb_repr},
    {Py_tp_call, tb_call},
    {Py_tp_methods, tb_methods},
    {Py_tp_getset, tb_getset},
    {Py_tp_members, tb_members},
    {Py_tp_doc, (void *)tb_doc},
    {0, NULL},
};

static PyType_Spec tb_spec = {
    .name = "aiofast.TokenBucket",
    .basicsize = sizeof(TokenBucket),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = tb_slots,
};

PyDoc_STRVAR(tb_peer_acquire_doc, "acquire($self, /, amount=1)\n--\n\n"
"Wait until `amount` capacity is available, then take it (aiolimiter's rules: capacity that is\n"
"there goes to whoever asks; waiters are served smallest amount first). An amount outside\n"
"[0, max_rate] raises ValueError when awaited; acquire(0) returns at once.");
PyDoc_STRVAR(tb_peer_has_capacity_doc, "has_capacity($self, /, amount=1)\n--\n\n"
"True if `amount` fits in the capacity available now, whoever waits.");

/* the same C methods as TokenBucket's, with aiolimiter's parameter name in their signatures
 * (acquire a coroutine function to inspect, as TokenBucket's: fa_methods_add) */
static PyMethodDef tb_peer_async_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))tb_acquire, METH_FASTCALL | METH_KEYWORDS,
     tb_peer_acquire_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef tb_peer_methods[] = {
    {"has_capacity", (PyCFunction)(void (*)(void))tb_has_capacity, METH_FASTCALL | METH_KEYWORDS,
     tb_peer_has_capacity_doc},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot tb_peer_slots[] = {
    {Py_tp_new, tb_peer_new},
    {Py_tp_methods, tb_peer_methods},
    {Py_tp_traverse, tb_traverse},
    {Py_tp_clear, tb_clear},
    {Py_tp_dealloc, tb_dealloc},
    {Py_tp_doc, "A TokenBucket on aiolimiter's rules, the base of aiofast.AsyncLimiter: a newcomer\n"
                "takes the tokens if they are there, waiters are served smallest amount first,\n"
                "has_capacity() ignores them, and reuse in a new loop after the first closed\n"
                "warns."},
    {0, NULL},
};

static PyType_Spec tb_peer_spec = {
    .name = "aiofast._core.LeakyBucket",
    .basicsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = tb_peer_slots,
};

static PyGetSetDef rl_getset[] = {
    FA_WRAPPER_GETSET
    {"bucket", rl_get_bucket, NULL, "The TokenBucket each call takes a token from.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rl_slots[] = {
    {Py_tp_dealloc, fa_wrapper_dealloc},
    {Py_tp_traverse, rl_traverse},
    {Py_tp_clear, rl_clear},
    {Py_tp_repr, rl_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, fa_wrapper_get},
    {Py_tp_getset, rl_getset},
    {Py_tp_members, fa_wrapper_members},
    {Py_tp_doc, "An async function rate-limited by a TokenBucket: each call takes one token "
                "before it runs."},
    {0, NULL},
};

static PyType_Spec rl_spec = {
    .name = "aiofast._core.RateLimited",
    .basicsize = sizeof(RateLimited),
    .flags = FA_WRAPPER_TPFLAGS | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = rl_slots,
};

int
fa_tokenbucket_init(PyObject *mod, fa_state *st)
{
    FA_INIT_NEEDS(st->engine.SpecialDescrType);  // fa_methods_add, fa_special_add
    fa_tokenbucket_state *tb = &st->tokenbucket;
    if ((tb->str_is_closed = PyUnicode_InternFromString("is_closed")) == NULL
        || (tb->str_shared = PyUnicode_InternFromString("shared")) == NULL
        || (tb->str_clock_resolution = PyUnicode_InternFromString("_clock_resolution")) == NULL) {
        return -1;
    }
    if ((st->tokenbucket.TokenBucketType = fa_add_type(mod, &tb_spec, NULL, "TokenBucket")) == NULL
        || fa_methods_add(st, st->tokenbucket.TokenBucketType, tb_async_methods) < 0
        || fa_special_add(st, st->tokenbucket.TokenBucketType, "__aenter__", tb_aenter,
                          offsetof(TokenBucket, aenter), tb_aenter_doc) < 0
        || fa_special_add(st, st->tokenbucket.TokenBucketType, "__aexit__", tb_aexit,
                          offsetof(TokenBucket, aexit), tb_aexit_doc) < 0) {
        return -1;
    }
    PyTypeObject *leaky =
        fa_add_type(mod, &tb_peer_spec, (PyObject *)st->tokenbucket.TokenBucketType, "LeakyBucket");
    if (leaky == NULL) {
        return -1;
    }
    if (fa_methods_add(st, leaky, tb_peer_async_methods) < 0) {
        Py_DECREF(leaky);
        return -1;
    }
    Py_DECREF(leaky);  // the module holds it
    st->tokenbucket.RateLimitedType = fa_new_type(mod, &rl_spec, NULL, NULL);
    if (st->tokenbucket.RateLimitedType == NULL) {
        return -1;
    }
    return fa_tbshared_init(mod, st);
}
