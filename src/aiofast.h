/*
 * aiofast.h: the umbrella header of aiofast._core.
 *
 * compat.h (Python.h and every version difference), the module state (fa_state) that holds every type, imported asyncio
 * object and interned name, and the fa_<family>_init prototypes each primitive file exports.
 *
 * Invariants: no C globals; every object caches the fa_state * of the module that made it; every
 * field of fa_state is visited by module traverse and cleared by module clear (module.c).
 */
#ifndef AIOFAST_H
#define AIOFAST_H

#include "compat.h"
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define FA_LIKELY(x) __builtin_expect(!!(x), 1)
#define FA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define FA_NOINLINE __attribute__((noinline))
#define FA_INLINE static inline __attribute__((always_inline))

/* Debug build (-UNDEBUG): invariant checks after every mutation. */
#ifndef NDEBUG
#define FA_DEBUG 1
#else
#define FA_DEBUG 0
#endif

/* ---- invariant checks (debug builds: AIOFAST_DEBUG=1, and the sanitizer builds) ----
 *
 * Each type has a checker that walks its whole structure and stops the process with a clear
 * message at the first broken invariant; FA_ASSERT_CONSISTENT(self) runs it after every
 * mutation. In a release build (NDEBUG) both vanish: the checkers are not even compiled.
 *
 * The pattern every family follows (semaphore.c is the worked example):
 *
 *   #if FA_DEBUG
 *   static void
 *   queue_check(QueueObject *self)
 *   {
 *       FA_CHECK(self->maxsize >= 0, "maxsize %zd", self->maxsize);
 *       fa_waitq_check(&self->getters);          // shared structures have their own checker
 *       ...                                      // counts, heap order, list links, ...
 *   }
 *   #endif
 *   #define FA_CONSISTENT queue_check           // once per file, after the checker
 *
 *   ... self->len++;  FA_ASSERT_CONSISTENT(self);   // after every mutation, before calling out
 *
 * Rules: a checker reads only C fields (it never calls Python code, never allocates and never
 * raises); place the assert where the structure is meant to be whole again, i.e. at the end of
 * each mutating step and before any call that can re-enter (that is where another caller sees
 * it). A file with several structures defines FA_CONSISTENT as a _Generic over their pointer
 * types, or calls FA_ASSERT_CONSISTENT_WITH(checker, obj). Checks are O(n) walks: fine for the
 * debug suite, never in a release build. */
#if FA_DEBUG
#define FA_ASSERT_CONSISTENT(obj) FA_CONSISTENT(obj)
#define FA_ASSERT_CONSISTENT_WITH(checker, obj) checker(obj)
#else
#define FA_ASSERT_CONSISTENT(obj) ((void)0)
#define FA_ASSERT_CONSISTENT_WITH(checker, obj) ((void)0)
#endif

#if FA_DEBUG
#include <stdarg.h>
#include <stdio.h>
/* Report a broken invariant and stop (Py_FatalError also dumps the Python traceback). */
static FA_NOINLINE __attribute__((unused, cold, format(printf, 5, 6))) void
fa_check_failed(const char *file, int line, const char *func, const char *cond, const char *fmt,
                ...)
{
    char detail[256] = "";
    char msg[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof(msg), "aiofast invariant broken at %s:%d in %s(): %s (%s)", file, line,
             func, cond, detail);
    Py_FatalError(msg);
}
/* FA_CHECK(cond, printf-style detail...): stop with a message if cond is false. */
#define FA_CHECK(cond, ...) \
    (FA_LIKELY(cond) ? (void)0 : fa_check_failed(__FILE__, __LINE__, __func__, #cond, __VA_ARGS__))
#endif

/* Every field from OpType to str_append is an object pointer (module.c traverses them as an
 * array): add new object fields inside that range, and non-object fields after it. */
/* Every object field of fa_state, in one list: the struct declares them from it and module.c's
 * traverse and clear visit each by name (X_T: a type, X_O: an object, X_ARRAY: an array of
 * objects), so a field cannot be declared without being visited and cleared. Each is NULL or a
 * strong reference. */
#define FA_STATE_OBJECTS(X_T, X_O, X_ARRAY) \
    /* types: the lock family (semaphore.c), the awaitable (op.c), its methods (method.c) */ \
    X_T(OpType) \
    X_T(SpecialDescrType) \
    X_T(BoundType) \
    X_O(WaitersViewType) /* waitview.c: the live _waiters/_getters/_putters view */ \
    X_O(coro_mark) /* inspect._is_coroutine_mark (3.12+), or NULL */ \
    X_T(SemaphoreType) \
    X_T(BoundedSemaphoreType) \
    X_T(LockType) \
    X_T(EventType) \
    /* types: other families (each file fills its own) */ \
    X_T(QueueType) \
    X_T(PriorityQueueType) \
    X_T(LifoQueueType) \
    X_T(TokenBucketType) \
    X_T(BreakerType) \
    X_T(LRUCacheType) \
    X_T(TTLCacheType) \
    X_T(MemoType) \
    X_T(MemoCallType) \
    X_ARRAY(extra, 16) /* spare slots for families' own objects; see FA_EXTRA_* */ \
    /* imported from asyncio at exec time */ \
    X_O(get_running_loop) /* asyncio.events._get_running_loop */ \
    X_O(CancelledError) \
    X_O(InvalidStateError) \
    X_O(QueueEmpty) \
    X_O(QueueFull) \
    X_O(QueueShutDown) /* asyncio's on 3.13+, ours before */ \
    X_O(deque_type) /* collections.deque */ \
    X_O(TimeoutError) /* builtins.TimeoutError (asyncio.TimeoutError is it on 3.11+) */ \
    /* the engine's reusable StopIteration for results on 3.12+ (op.c, op_raise_result) */ \
    X_O(stopiter) \
    /* breaker.c */ \
    X_T(BreakerFunctionType) \
    X_O(CircuitOpenError) \
    X_O(CircuitState) \
    X_ARRAY(bk_states, 3) /* CircuitState.CLOSED, .OPEN, .HALF_OPEN */ \
    X_O(bk_cold) /* aiofast._compat_breaker, handed over at its import (_breaker_cold) */ \
    X_O(bk_blocks) /* ContextVar: each context's open with-blocks of every breaker */ \
    /* the cache family (cache.c, memo.c) */ \
    X_T(CacheIterType) \
    X_T(CacheKeysType) \
    X_T(CacheValuesType) \
    X_T(CacheItemsType) \
    X_T(CacheTimerType) \
    X_T(FlightType) \
    X_O(time_monotonic) /* the original time.monotonic (clock.c) */ \
    X_O(Mapping) /* collections.abc.Mapping */ \
    X_O(Set) /* collections.abc.Set */ \
    X_O(CacheInfo) /* functools._CacheInfo */ \
    X_O(kwd_mark) /* separates positional from keyword arguments in memo keys */ \
    X_O(AlruCacheLoopResetWarning) /* alru_cache used from a new event loop */ \
    X_O(str_popitem) \
    X_O(str_expire) \
    X_O(str_missing) /* "__missing__" */ \
    X_O(str_getsizeof) \
    X_O(str_restore) \
    X_O(str_create_task) \
    X_O(str_exception) \
    /* tokenbucket.c: the wrapper type of @bucket, and interned names */ \
    X_T(RateLimitedType) \
    X_T(SharedTokenBucketType) /* tbshared.c */ \
    X_O(str_shared) \
    X_O(str_is_closed) \
    X_O(str_clock_resolution) \
    /* shm.c: the error of an unusable shared segment */ \
    X_O(SharedSegmentError) \
    /* clock.h / clock.c: what the proof that a loop's time() is asyncio's own compares against \
     * (BaseEventLoop.time, its code and globals, the time module, its original monotonic) */ \
    X_O(clk_base_time) /* NULL: never read a loop's time natively */ \
    X_O(clk_base_code) \
    X_O(clk_base_globals) \
    X_O(clk_time_module) \
    X_O(clk_time_dict) \
    X_O(str_monotonic) \
    /* queue.c: unbound C methods it calls directly, a dataclass probe cache, interned names */ \
    X_O(q_deque_append) /* collections.deque.append (a method descriptor) */ \
    X_O(q_deque_popleft) /* collections.deque.popleft */ \
    X_O(q_event_set) /* aiofast Event.set (for Queue._finished) */ \
    X_O(q_event_clear) /* aiofast Event.clear */ \
    X_O(q_object_class) /* object.__dict__['__class__'] */ \
    X_O(q_dc_refs) /* {nfields: code of dataclasses' own generated __lt__} */ \
    X_O(q_str_init) /* "_init" */ \
    X_O(q_str_put) /* "_put" */ \
    X_O(q_str_get) /* "_get" */ \
    X_O(q_str_full) \
    X_O(q_str_empty) \
    X_O(q_str_qsize) \
    X_O(q_str_put_nowait) \
    X_O(q_str_get_nowait) \
    X_O(q_str_format) /* "_format" */ \
    X_O(q_str_popleft) \
    X_O(q_str_pop) \
    X_O(q_str_wait) \
    X_O(q_str_lt) /* "__lt__" */ \
    X_O(q_str_class) /* "__class__" */ \
    X_O(q_str_wakeup_next) /* "_wakeup_next" */ \
    /* semaphore.c: the helpers asyncio calls through self */ \
    X_O(str_wake_up_first) /* "_wake_up_first" (Lock) */ \
    X_O(str_wake_up_next) /* "_wake_up_next" (Semaphore) */ \
    /* interned method and attribute names */ \
    X_O(str_create_future) \
    X_O(str_set_result) \
    X_O(str_set_exception) \
    X_O(str_done) \
    X_O(str_cancelled) \
    X_O(str_cancel) \
    X_O(str_result) \
    X_O(str_await) /* "__await__" */ \
    X_O(str_call_at) \
    X_O(str_call_soon) \
    X_O(str_time) \
    X_O(str_add_done_callback) \
    X_O(str_acquire) \
    X_O(str_release) \
    X_O(str_locked) \
    X_O(str_throw) \
    X_O(str_close) \
    X_O(str_get_loop) /* "_get_loop" */ \
    X_O(str_append) \
    /* end */

typedef struct fa_state {
#define FA_DECLARE_T(name) PyTypeObject *name;
#define FA_DECLARE_O(name) PyObject *name;
#define FA_DECLARE_ARRAY(name, n) PyObject *name[n];
    FA_STATE_OBJECTS(FA_DECLARE_T, FA_DECLARE_O, FA_DECLARE_ARRAY)
#undef FA_DECLARE_T
#undef FA_DECLARE_O
#undef FA_DECLARE_ARRAY

    /* non-object fields (not traversed) */
    /* clock.h: <= 3.11, asyncio's _get_running_loop() calls getpid(), a system call, every
     * time; the answer is cached while the thread-state dict that holds it is unmodified (see
     * fa_running_loop_or_none). clk_rl_loop is borrowed: that dict owns it, through asyncio's
     * holder, for as long as the version matches. */
    PyObject *clk_rl_loop;
    PyCFunction clk_rl_cfunc;                /* asyncio's C _get_running_loop, or NULL ... */
    PyObject *clk_rl_self;                   /* ... and its module (both borrowed: see
                                              * fa_call_running_loop_getter) */
    unsigned long long clk_rl_dict_version;  /* PEP 509 version of that dict, 0 = none */
    unsigned long clk_fork_gen;              /* bumped in a forked child (os.register_at_fork) */
    unsigned long clk_rl_fork_gen;           /* clk_fork_gen when clk_rl_loop was cached */
    /* clock.h: the proofs, each holding while its tags match (compat.h's dict tags) */
    int clk_watcher;                         /* this state's dict watcher (3.12+), or -1 */
    int clk_mono_ok;                         /* time.monotonic is the original ... */
    uint64_t clk_mono_tag;                   /* ... while the time module's dict has this tag */
    uint64_t clk_globals_tag;                /* BaseEventLoop.time's globals, seen intact */
    int clk_nat_valid;                       /* what clk_nat_loop's time() is (fa_loop_proven) */
    PyObject *clk_nat_fn;                    /* NULL: asyncio's (native); else its class's own
                                              * method (borrowed: the class owns it) ... */
    void *clk_nat_loop;                      /* (an address only: see fa_loop_proven) */
    void *clk_nat_type;                      /* ... while its type is this one, */
    unsigned int clk_nat_ttag;               /* with this tag, */
    PyObject **clk_nat_dictptr;              /* its __dict__ slot (into the loop: alive) */
    PyObject *clk_nat_dict;                  /* holds this dict (borrowed; the tag rules out reuse) */
    uint64_t clk_nat_dtag;                   /* with this tag */
    PyObject *clk_no_dict;                   /* always NULL: the slot of a loop without __dict__ */
} fa_state;

/* Each family's file exports exactly one function; module.c calls them in order. */
int fa_op_init(PyObject *mod, fa_state *st);
int fa_semaphore_init(PyObject *mod, fa_state *st);
int fa_queue_init(PyObject *mod, fa_state *st);
int fa_tokenbucket_init(PyObject *mod, fa_state *st);
int fa_breaker_init(PyObject *mod, fa_state *st);
int fa_cache_init(PyObject *mod, fa_state *st);
int fa_memo_init(PyObject *mod, fa_state *st);

/* Shared helpers (module.c). */

/* The short tp_name trick: a heap type made from "aiofast.Lock" has tp_name "aiofast.Lock", and
 * the interpreter's messages ("object Lock can't be used in 'await' expression", "'Lock' object
 * has no attribute ...") use tp_name. asyncio's classes are Python classes whose tp_name is the
 * bare name, and CPython's own tests match those messages, so the public types get a bare
 * tp_name (a static string; __module__ and __qualname__ are untouched). */
static inline void
fa_set_short_tpname(PyTypeObject *tp, const char *name)
{
    tp->tp_name = name;
}

/* Add a heap type made from spec to the module, with the bare tp_name; NULL on error. */
PyTypeObject *fa_add_type(PyObject *mod, PyType_Spec *spec, PyObject *base, const char *short_name);

/* The tp_dealloc of a GC type, given its tp_clear: untrack, clear the weak references (when the
 * type has a weakref list and it is not empty), clear, free, then release the heap type. */
static inline void
fa_gc_dealloc(PyObject *op, inquiry clear)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (tp->tp_weaklistoffset > 0
        && *(PyObject **)((char *)op + tp->tp_weaklistoffset) != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    (void)clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* fa_gc_dealloc with the tp_clear of the object's type, as a tp_dealloc slot. For an internal
 * type that is its own clear; for an instance of a Python subclass it is the subclass's
 * (CPython's subtype_clear, which then calls the base's), as with the decorated-function
 * wrappers. */
static inline void
fa_gc_tp_dealloc(PyObject *op)
{
    fa_gc_dealloc(op, Py_TYPE(op)->tp_clear);
}

/* PREFIX_traverse and PREFIX_clear of a Type whose owned references are exactly the fields
 * listed: traverse visits the heap type and each field, clear clears each field. A type that
 * owns anything else (an array, a wait queue) writes its pair out. With fa_gc_tp_dealloc as the
 * tp_dealloc, that is the type's whole GC support. */
#define FA_GC_REFS1(PREFIX, Type, a) \
    static int PREFIX##_traverse(PyObject *op, visitproc visit, void *arg) \
    { \
        Py_VISIT(Py_TYPE(op)); \
        Py_VISIT(((Type *)op)->a); \
        return 0; \
    } \
    static int PREFIX##_clear(PyObject *op) \
    { \
        Py_CLEAR(((Type *)op)->a); \
        return 0; \
    }

#define FA_GC_REFS2(PREFIX, Type, a, b) \
    static int PREFIX##_traverse(PyObject *op, visitproc visit, void *arg) \
    { \
        Py_VISIT(Py_TYPE(op)); \
        Py_VISIT(((Type *)op)->a); \
        Py_VISIT(((Type *)op)->b); \
        return 0; \
    } \
    static int PREFIX##_clear(PyObject *op) \
    { \
        Py_CLEAR(((Type *)op)->a); \
        Py_CLEAR(((Type *)op)->b); \
        return 0; \
    }

/* New reference to the attribute `name` of the module `module` (imported if need be), or NULL
 * with the exception of the import or of the lookup. */
static inline PyObject *
fa_import_attr(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);  // new ref
    if (mod == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_GetAttrString(mod, name);  // new ref
    Py_DECREF(mod);
    return r;
}

/* The state of the module that defined tp or one of its bases (for tp_new of subclasses). */
fa_state *fa_state_from_type(PyTypeObject *tp);

/* The start of a tp_new: a zeroed instance of tp from tp_alloc, with *stp set to the state of
 * the module that defined tp (the caller stores it in the instance); NULL on error. */
static inline PyObject *
fa_new_instance(PyTypeObject *tp, fa_state **stp)
{
    fa_state *st = fa_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    *stp = st;
    return tp->tp_alloc(tp, 0);
}

static inline fa_state *
fa_get_state(PyObject *mod)
{
    return (fa_state *)PyModule_GetState(mod);
}

#include "args.h"

#endif
