/*
 * breaker.h: the circuit breaker's part of the module state (breaker.c: CircuitBreaker, its
 * calls, BreakerFunction; its state machine is breaker_sm.h) and its init.
 */
#ifndef AIOFAST_BREAKER_H
#define AIOFAST_BREAKER_H

#include "state.h"

#define FA_BREAKER_OBJECTS(X_T, X_O, X_ARRAY) \
    X_T(BreakerType) \
    X_T(BreakerFunctionType) \
    X_O(CircuitOpenError) \
    X_O(CircuitState) \
    X_ARRAY(states, 3) /* CircuitState.CLOSED, .OPEN, .HALF_OPEN */ \
    X_O(cold) /* aiofast._compat_breaker, handed over at its import (_breaker_cold) */ \
    X_O(blocks) /* ContextVar: each context's open with-blocks of every breaker */

typedef struct {
    FA_STATE_FIELDS(FA_BREAKER_OBJECTS)
} fa_breaker_state;

FA_STATE_WALKERS(breaker, FA_BREAKER_OBJECTS)

/* Needs: core (with shm.c's SharedSegmentError), engine. */
int fa_breaker_init(PyObject *mod, fa_state *st);

#endif
