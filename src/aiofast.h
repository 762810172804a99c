/*
 * aiofast.h: the umbrella header of aiofast._core, and the module state.
 *
 * compat.h (Python.h and every version difference), debug.h (the invariant checks), state.h
 * (the core's part of the state, type creation), args.h (argument binding), and the module
 * state fa_state: one part per layer or family, each declared in its own header with its own
 * traverse and clear, which module.c calls.
 *
 * Invariants: no C globals (but the address of the module's definition, the same for every
 * interpreter: state.c); every object caches the fa_state * of the module that made it.
 */
#ifndef AIOFAST_H
#define AIOFAST_H

#include "compat.h"
#include "debug.h"
#include "state.h"
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Each part's header; one that also holds code of its family that needs the whole fa_state
 * (tokenbucket.h) gives only its state part while FA_STATE_PARTS_ONLY is defined. */
#define FA_STATE_PARTS_ONLY
#include "engine.h"
#include "semaphore.h"
#include "queue.h"
#include "tokenbucket.h"
#include "breaker.h"
#include "cache.h"
#include "memo.h"
#undef FA_STATE_PARTS_ONLY

struct fa_state {
    fa_core_state core;                /* state.h: names, asyncio's objects, the clock */
    fa_engine_state engine;            /* engine.h: the awaitable and its helpers */
    fa_semaphore_state semaphore;      /* semaphore.h */
    fa_queue_state queue;              /* queue.h */
    fa_tokenbucket_state tokenbucket;  /* tokenbucket.h */
    fa_breaker_state breaker;          /* breaker.h */
    fa_cache_state cache;              /* cache.h */
    fa_memo_state memo;                /* memo.h */
};

#include "args.h"

#endif
