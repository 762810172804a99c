/*
 * semaphore.h: the lock family's part of the module state (semaphore.c: Semaphore,
 * BoundedSemaphore, Lock, Event) and its init.
 */
#ifndef AIOFAST_SEMAPHORE_H
#define AIOFAST_SEMAPHORE_H

#include "state.h"

#define FA_SEMAPHORE_OBJECTS(X_T, X_O, X_ARRAY) \
    X_T(SemaphoreType) \
    X_T(BoundedSemaphoreType) \
    X_T(LockType) \
    X_T(EventType) \
    /* the methods asyncio calls through self (a subclass may override them) */ \
    X_O(str_acquire) \
    X_O(str_release) \
    X_O(str_locked) \
    X_O(str_wake_up_first) /* "_wake_up_first" (Lock) */ \
    X_O(str_wake_up_next) /* "_wake_up_next" (Semaphore) */

typedef struct {
    FA_STATE_FIELDS(FA_SEMAPHORE_OBJECTS)
} fa_semaphore_state;

FA_STATE_WALKERS(semaphore, FA_SEMAPHORE_OBJECTS)

/* Needs: core, engine. */
int fa_semaphore_init(PyObject *mod, fa_state *st);

#endif
