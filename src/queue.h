/*
 * queue.h: the queue family's part of the module state (queue.c: Queue, PriorityQueue,
 * LifoQueue) and its init.
 */
#ifndef AIOFAST_QUEUE_H
#define AIOFAST_QUEUE_H

#include "state.h"

#define FA_QUEUE_OBJECTS(X_T, X_O, X_ARRAY) \
    X_T(QueueType) \
    X_T(PriorityQueueType) \
    X_T(LifoQueueType) \
    X_O(QueueEmpty) \
    X_O(QueueFull) \
    X_O(QueueShutDown) /* asyncio's on 3.13+, ours before */ \
    /* unbound C methods it calls directly, a dataclass probe cache */ \
    X_O(deque_type) /* collections.deque */ \
    X_O(deque_append) /* collections.deque.append (a method descriptor) */ \
    X_O(deque_popleft) /* collections.deque.popleft */ \
    X_O(event_set) /* aiofast Event.set (for Queue._finished) */ \
    X_O(event_clear) /* aiofast Event.clear */ \
    X_O(object_class) /* object.__dict__['__class__'] */ \
    X_O(dc_refs) /* {nfields: code of dataclasses' own generated __lt__} */ \
    /* interned names: the methods asyncio calls through self, and others */ \
    X_O(str_init) /* "_init" */ \
    X_O(str_put) /* "_put" */ \
    X_O(str_get) /* "_get" */ \
    X_O(str_full) \
    X_O(str_empty) \
    X_O(str_qsize) \
    X_O(str_put_nowait) \
    X_O(str_get_nowait) \
    X_O(str_format) /* "_format" */ \
    X_O(str_popleft) \
    X_O(str_pop) \
    X_O(str_wait) \
    X_O(str_lt) /* "__lt__" */ \
    X_O(str_class) /* "__class__" */ \
    X_O(str_wakeup_next) /* "_wakeup_next" */ \
    X_O(str_append)

typedef struct {
    FA_STATE_FIELDS(FA_QUEUE_OBJECTS)
} fa_queue_state;

FA_STATE_WALKERS(queue, FA_QUEUE_OBJECTS)

/* Needs: core, engine, the lock family (its Event type: Queue._finished). */
int fa_queue_init(PyObject *mod, fa_state *st);

#endif
