/*
 * debug.h: the branch hints and the debug build's invariant checks (FA_CHECK,
 * FA_ASSERT_CONSISTENT), used by every layer. Core: knows nothing above compat.h.
 */
#ifndef AIOFAST_DEBUG_H
#define AIOFAST_DEBUG_H

#include "compat.h"

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

#endif
