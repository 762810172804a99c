/*
 * memo.h: the memoizing decorators' part of the module state (memo.c: `cached` and
 * `alru_cache`: Memo, its bound form, Flight) and its init.
 */
#ifndef AIOFAST_MEMO_H
#define AIOFAST_MEMO_H

#include "state.h"

#define FA_MEMO_OBJECTS(X_T, X_O, X_ARRAY) \
    X_T(MemoType) \
    X_T(MemoCallType) \
    X_T(FlightType) \
    X_O(CacheInfo) /* functools._CacheInfo */ \
    X_O(kwd_mark) /* separates positional from keyword arguments in memo keys */ \
    X_O(AlruCacheLoopResetWarning) /* alru_cache used from a new event loop */

typedef struct {
    FA_STATE_FIELDS(FA_MEMO_OBJECTS)
} fa_memo_state;

FA_STATE_WALKERS(memo, FA_MEMO_OBJECTS)

/* Needs: core, engine. */
int fa_memo_init(PyObject *mod, fa_state *st);

#endif
