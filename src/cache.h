/*
 * cache.h: the cache family's part of the module state (cache.c: LRUCache, TTLCache, their
 * views and timer; the table itself is ctable.h) and its init.
 */
#ifndef AIOFAST_CACHE_H
#define AIOFAST_CACHE_H

#include "state.h"

#define FA_CACHE_OBJECTS(X_T, X_O, X_ARRAY) \
    X_T(LRUCacheType) \
    X_T(TTLCacheType) \
    X_T(CacheIterType) \
    X_T(CacheKeysType) \
    X_T(CacheValuesType) \
    X_T(CacheItemsType) \
    X_T(CacheTimerType) \
    X_O(Mapping) /* collections.abc.Mapping */ \
    X_O(Set) /* collections.abc.Set */ \
    /* the methods cachetools calls through self (a subclass may override them), and others */ \
    X_O(str_popitem) \
    X_O(str_expire) \
    X_O(str_missing) /* "__missing__" */ \
    X_O(str_getsizeof) \
    X_O(str_restore) /* "_restore" */

typedef struct {
    FA_STATE_FIELDS(FA_CACHE_OBJECTS)
} fa_cache_state;

FA_STATE_WALKERS(cache, FA_CACHE_OBJECTS)

/* Needs: core. */
int fa_cache_init(PyObject *mod, fa_state *st);

#endif
