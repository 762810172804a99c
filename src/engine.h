/*
 * engine.h: the engine's part of the module state: the types of the awaitable (op.c), of the
 * awaitable-method descriptors and cached bound methods (method.c) and of the waiter views
 * (waitview.c), and the engine's reusable StopIteration. The engine's code is declared in op.h.
 */
#ifndef AIOFAST_ENGINE_H
#define AIOFAST_ENGINE_H

#include "state.h"

#define FA_ENGINE_OBJECTS(X_T, X_O, X_ARRAY) \
    X_T(OpType) \
    X_T(SpecialDescrType) \
    X_T(BoundType) \
    X_O(WaitersViewType) /* waitview.c: the live _waiters/_getters/_putters view */ \
    X_O(coro_mark) /* inspect._is_coroutine_mark (3.12+), or NULL */ \
    X_O(stopiter) /* the reusable StopIteration for results on 3.12+ (op.c, op_raise_result) */

typedef struct {
    FA_STATE_FIELDS(FA_ENGINE_OBJECTS)
} fa_engine_state;

FA_STATE_WALKERS(engine, FA_ENGINE_OBJECTS)

/* The engine's types (and method.c's, waitview.c's). Needs: core. */
int fa_op_init(PyObject *mod, fa_state *st);

#endif
