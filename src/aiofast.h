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
typedef struct fa_state {
    /* types: the lock family (semaphore.c), the awaitable (op.c), its methods (method.c) */
    PyTypeObject *OpType;
    PyTypeObject *SpecialDescrType;
    PyTypeObject *BoundType;
    PyObject *WaitersViewType;    /* waitview.c: the live _waiters/_getters/_putters view */
    PyObject *coro_mark;          /* inspect._is_coroutine_mark (3.12+), or NULL */
    PyTypeObject *SemaphoreType;
    PyTypeObject *BoundedSemaphoreType;
    PyTypeObject *LockType;
    PyTypeObject *EventType;
    /* types: other families (each file fills its own) */
    PyTypeObject *QueueType;
    PyTypeObject *PriorityQueueType;
    PyTypeObject *LifoQueueType;
    PyTypeObject *TokenBucketType;
    PyTypeObject *BreakerType;
    PyTypeObject *LRUCacheType;
    PyTypeObject *TTLCacheType;
    PyTypeObject *MemoType;
    PyTypeObject *MemoCallType;
    PyObject *extra[16];          /* spare slots for families' own objects; see FA_EXTRA_* */

    /* imported from asyncio at exec time */
    PyObject *get_running_loop;   /* asyncio.events._get_running_loop */
    PyObject *CancelledError;
    PyObject *InvalidStateError;
    PyObject *QueueEmpty;
    PyObject *QueueFull;
    PyObject *QueueShutDown;      /* asyncio's on 3.13+, ours before */
    PyObject *deque_type;         /* collections.deque */
    PyObject *TimeoutError;       /* builtins.TimeoutError (asyncio.TimeoutError is it on 3.11+) */

    /* the engine's reusable StopIteration for results on 3.12+ (op.c, op_raise_result) */
    PyObject *stopiter;

    /* breaker.c */
    PyTypeObject *BreakerFunctionType;
    PyObject *CircuitOpenError;
    PyObject *CircuitState;
    PyObject *bk_states[3];       /* CircuitState.CLOSED, .OPEN, .HALF_OPEN */
    /* the cache family (cache.c, memo.c) */
    PyTypeObject *CacheIterType;
    PyTypeObject *CacheKeysType;
    PyTypeObject *CacheValuesType;
    PyTypeObject *CacheItemsType;
    PyTypeObject *CacheTimerType;
    PyTypeObject *FlightType;
    PyObject *time_monotonic;     /* the original time.monotonic (clock.c) */
    PyObject *Mapping;            /* collections.abc.Mapping */
    PyObject *Set;                /* collections.abc.Set */
    PyObject *CacheInfo;          /* functools._CacheInfo */
    PyObject *kwd_mark;           /* separates positional from keyword arguments in memo keys */
    PyObject *AlruCacheLoopResetWarning;  /* alru_cache used from a new event loop */
    PyObject *str_popitem;
    PyObject *str_expire;
    PyObject *str_missing;        /* "__missing__" */
    PyObject *str_getsizeof;
    PyObject *str_restore;
    PyObject *str_create_task;
    PyObject *str_exception;
    /* tokenbucket.c: the wrapper type of @bucket, and interned names */
    PyTypeObject *RateLimitedType;
    PyTypeObject *SharedTokenBucketType;  /* tbshared.c */
    PyObject *str_shared;
    PyObject *str_is_closed;
    PyObject *str_clock_resolution;
    /* shm.c: the error of an unusable shared segment */
    PyObject *SharedSegmentError;
    /* clock.h / clock.c: what the proof that a loop's time() is asyncio's own compares against
     * (BaseEventLoop.time, its code and globals, the time module, its original monotonic) */
    PyObject *clk_base_time;      /* NULL: never read a loop's time natively */
    PyObject *clk_base_code;
    PyObject *clk_base_globals;
    PyObject *clk_time_module;
    PyObject *clk_time_dict;
    PyObject *str_monotonic;

    /* queue.c: unbound C methods it calls directly, a dataclass probe cache, interned names */
    PyObject *q_deque_append;     /* collections.deque.append (a method descriptor) */
    PyObject *q_deque_popleft;    /* collections.deque.popleft */
    PyObject *q_event_set;        /* aiofast Event.set (for Queue._finished) */
    PyObject *q_event_clear;      /* aiofast Event.clear */
    PyObject *q_object_class;     /* object.__dict__['__class__'] */
    PyObject *q_dc_refs;          /* {nfields: code of dataclasses' own generated __lt__} */
    PyObject *q_str_init;         /* "_init" */
    PyObject *q_str_put;          /* "_put" */
    PyObject *q_str_get;          /* "_get" */
    PyObject *q_str_full;
    PyObject *q_str_empty;
    PyObject *q_str_qsize;
    PyObject *q_str_put_nowait;
    PyObject *q_str_get_nowait;
    PyObject *q_str_format;       /* "_format" */
    PyObject *q_str_popleft;
    PyObject *q_str_pop;
    PyObject *q_str_wait;
    PyObject *q_str_lt;           /* "__lt__" */
    PyObject *q_str_class;        /* "__class__" */
    PyObject *q_str_wakeup_next;  /* "_wakeup_next" */
    /* semaphore.c: the helpers asyncio calls through self */
    PyObject *str_wake_up_first;  /* "_wake_up_first" (Lock) */
    PyObject *str_wake_up_next;   /* "_wake_up_next" (Semaphore) */

    /* interned method and attribute names */
    PyObject *str_create_future;
    PyObject *str_set_result;
    PyObject *str_set_exception;
    PyObject *str_done;
    PyObject *str_cancelled;
    PyObject *str_cancel;
    PyObject *str_result;
    PyObject *str_await;          /* "__await__" */
    PyObject *str_call_at;
    PyObject *str_call_soon;
    PyObject *str_time;
    PyObject *str_add_done_callback;
    PyObject *str_acquire;
    PyObject *str_release;
    PyObject *str_locked;
    PyObject *str_throw;
    PyObject *str_close;
    PyObject *str_get_loop;       /* "_get_loop" */
    PyObject *str_append;

    /* non-object fields (not traversed) */
    /* clock.h: <= 3.11, asyncio's _get_running_loop() calls getpid(), a system call, every
     * time; the answer is cached while the thread-state dict that holds it is unmodified (see
     * fa_running_loop_or_none). clk_rl_loop is borrowed: that dict owns it, through asyncio's
     * holder, for as long as the version matches. */
    PyObject *clk_rl_loop;
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

/* The state of the module that defined tp or one of its bases (for tp_new of subclasses). */
fa_state *fa_state_from_type(PyTypeObject *tp);

static inline fa_state *
fa_get_state(PyObject *mod)
{
    return (fa_state *)PyModule_GetState(mod);
}

#include "args.h"

#endif
