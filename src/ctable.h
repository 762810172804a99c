/*
 * ctable.h: the hash table behind LRUCache, TTLCache (cache.c) and the memoizer (memo.c).
 *
 * Layout (CPython's compact dict, plus an intrusive LRU list and an expiry order):
 *
 *   index[size]      open addressing, size a power of two; each slot is CT_EMPTY, CT_DUMMY (a
 *                    deleted entry) or the position of an entry. Probing is CPython's
 *                    (i = 5i + perturb + 1, perturb >>= 5) over the cached hashes.
 *   entries[cap]     the entries in order of arrival: {key, value, hash, prev, next}. A removed
 *                    entry leaves a hole (key == NULL) until the next rebuild compacts the array;
 *                    trailing holes are reclaimed at once. prev/next link the live entries from
 *                    least (lru_head) to most (lru_tail) recently used.
 *   exp[cap]         (timed tables) the expiry time of each entry.
 *   hpos[cap]        (timed tables that need it) the expiry class of each entry: CT_DEFAULT (-1)
 *                    for entries whose expiry grows with their position (a constant ttl on a
 *                    monotonic clock), CT_NOEXP (-2) for entries that never expire (a memoizer's
 *                    computation in flight), or the entry's position in heap[], a binary
 *                    min-heap over (exp, position) for entries with their own ttl.
 *   sizes[cap]       (sized tables) the size of each entry, from getsizeof.
 *   seq[cap]         (ordered tables: TTLCache) each entry's first-insertion stamp, from
 *                    next_seq: the array is in expiry order, so the order a mapping iterates
 *                    in (a key set again keeps its place, as in a dict) is kept beside it;
 *                    ct_order sorts the live entries by it.
 *
 * Invariants (checked by ct_check in debug builds, through the owners' checkers):
 * - used == number of entries with key != NULL == length of the LRU list == slots in index[]
 *   holding an entry; nentries <= cap <= 3/4 of size; fill (the non-empty index slots, dummies
 *   included) <= cap, so probing always ends at an empty slot.
 * - every live entry of class CT_DEFAULT sits at a position >= exp_head: expire() finds the
 *   default entries in expiry order by walking the array from exp_head (an entry whose expiry is
 *   set again moves to the end of the array), and the heap for the others. Each is O(1)
 *   amortised or O(log n); no timer per entry.
 * - (ordered tables) every live entry's seq is in [0, next_seq), and no two are equal; a
 *   moved or rebuilt entry keeps its seq.
 * - version changes on every structural change (insert, remove, rebuild, clear), never on a
 *   value update or an LRU move. itver, which iterators check, changes with it, except that
 *   the owner may restore it after removing expired entries (holes do not disturb iteration).
 *   Code that calls Python (__eq__ of a key, a timer, getsizeof, a decref to zero)
 *   re-validates with version afterwards and restarts its lookup.
 * - nothing here calls Python code except ct_lookup (key __eq__); memory comes from PyMem (which
 *   never starts the garbage collector), so the table is consistent whenever the collector may
 *   run. Removed keys and values go to a ct_buf and are released after the caller has committed.
 */
#ifndef AIOFAST_CTABLE_H
#define AIOFAST_CTABLE_H

#include "aiofast.h"
#include "clock.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CT_EMPTY (-1)
#define CT_DUMMY (-2)
#define CT_DEFAULT (-1)
#define CT_NOEXP (-2)
#define CT_NOTFOUND (-1)
#define CT_ERROR (-2)
#define CT_MINCAP 8
#define CT_MAXCAP ((Py_ssize_t)INT32_MAX / 2)

typedef struct {
    PyObject *key;   /* strong, NULL for a hole */
    PyObject *value; /* strong */
    Py_hash_t hash;
    int32_t prev;    /* LRU links: entry positions, -1 at the ends */
    int32_t next;
} ct_entry;

typedef struct {
    int32_t *index;
    ct_entry *entries;
    double *exp;
    int32_t *hpos;
    int32_t *heap;
    Py_ssize_t *sizes;
    int64_t *seq;
    Py_ssize_t size;      /* index slots, 0 before the first insert */
    Py_ssize_t cap;       /* entry slots */
    Py_ssize_t nentries;  /* entry slots in use, holes included */
    Py_ssize_t used;      /* live entries */
    Py_ssize_t fill;      /* non-empty index slots (entries and dummies), <= cap */
    Py_ssize_t heaplen;
    Py_ssize_t exp_head;
    int32_t lru_head;
    int32_t lru_tail;
    int timed;            /* keep exp[] */
    int sized;            /* keep sizes[] */
    int classed;          /* keep hpos[] from the start (the memoizer's in-flight entries) */
    int ordered;          /* keep seq[] (set after ct_init; ct_clear keeps it) */
    int64_t next_seq;
    uint64_t version;
    uint64_t itver;       /* iterators' stamp: like version, but expiry may leave it alone */
} ct_table;

/* ------------------------------------------------------------------ object buffers */

/* A growable array of owned references: objects removed from a table wait here until the
 * caller has committed its change (a "trash"), or travel out of it (expire()'s pairs). */
typedef struct {
    PyObject **items;
    Py_ssize_t n;
    Py_ssize_t cap;
    PyObject *small[16];
} ct_buf;

static inline void
ct_buf_init(ct_buf *b)
{
    b->items = b->small;
    b->n = 0;
    b->cap = (Py_ssize_t)(sizeof(b->small) / sizeof(b->small[0]));
}

static inline int
ct_buf_grow(ct_buf *b)
{
    Py_ssize_t ncap = b->cap * 2;
    PyObject **items;
    if (b->items == b->small) {
        items = PyMem_Malloc(sizeof(PyObject *) * (size_t)ncap);
        if (items != NULL) {
            memcpy(items, b->small, sizeof(PyObject *) * (size_t)b->n);
        }
    }
    else {
        items = PyMem_Realloc(b->items, sizeof(PyObject *) * (size_t)ncap);
    }
    if (items == NULL) {
        return -1;
    }
    b->items = items;
    b->cap = ncap;
    return 0;
}

/* Take ownership of o (may be NULL) to release later. A reference that cannot be the last one
 * is dropped at once: that decref runs no code. If the buffer cannot grow (out of memory), the
 * object is leaked rather than freed while the caller's change is half done. */
static inline void
ct_trash(ct_buf *b, PyObject *o)
{
    if (o == NULL) {
        return;
    }
    if (Py_REFCNT(o) > 1) {
        Py_DECREF(o);
        return;
    }
    if (FA_UNLIKELY(b->n == b->cap) && ct_buf_grow(b) < 0) {
        return;  // leak: never free during a half-done change
    }
    b->items[b->n++] = o;
}

/* Append an owned reference; -1 if the buffer is full and cannot grow (o is not taken). */
static inline int
ct_buf_push(ct_buf *b, PyObject *o)
{
    if (FA_UNLIKELY(b->n == b->cap) && ct_buf_grow(b) < 0) {
        return -1;
    }
    b->items[b->n++] = o;
    return 0;
}

/* Release everything. Beware: each decref may run Python code (__del__) that re-enters the
 * table's owner: call this only after the change is committed. */
static inline void
ct_buf_flush(ct_buf *b)
{
    PyObject **items = b->items;
    Py_ssize_t n = b->n;
    b->n = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(items[i]);
    }
    if (items != b->small) {
        PyMem_Free(items);
    }
    b->items = b->small;
    b->cap = (Py_ssize_t)(sizeof(b->small) / sizeof(b->small[0]));
}

/* ------------------------------------------------------------------ basics */

static inline void
ct_init(ct_table *t, int timed, int sized, int classed)
{
    memset(t, 0, sizeof(*t));
    t->lru_head = t->lru_tail = -1;
    t->timed = timed;
    t->sized = sized;
    t->classed = classed;
}

static inline int
ct_unicode_eq(PyObject *a, PyObject *b)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b)) {
        return 0;
    }
    int kind = PyUnicode_KIND(a);
    if (kind != (int)PyUnicode_KIND(b)) {
        return 0;
    }
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)kind) == 0;
}

/* The position of key, CT_NOTFOUND, or CT_ERROR with an exception set (a raising __eq__).
 * Beware: a key's __eq__ may run Python code that changes the table (or another thread may,
 * while __eq__ has released the GIL): after each such call the version is compared and the
 * lookup restarts, as CPython's dict does. */
static Py_ssize_t
ct_lookup_slow(ct_table *t, PyObject *key, Py_hash_t hash)
{
restart:
    if (t->size == 0) {
        return CT_NOTFOUND;
    }
    size_t mask = (size_t)t->size - 1;
    size_t perturb = (size_t)hash;
    size_t i = (size_t)hash & mask;
    for (;;) {
        int32_t ix = t->index[i];
        if (ix >= 0) {
            ct_entry *ep = &t->entries[ix];
            if (ep->key == key) {
                return ix;
            }
            if (ep->hash == hash) {
                PyObject *ek = ep->key;
                if (PyUnicode_CheckExact(ek) && PyUnicode_CheckExact(key)) {
                    if (ct_unicode_eq(ek, key)) {
                        return ix;
                    }
                }
                else {
                    uint64_t version = t->version;
                    Py_INCREF(ek);
                    int cmp = PyObject_RichCompareBool(ek, key, Py_EQ);  // Beware: Python code
                    Py_DECREF(ek);  // Beware: the last reference if __eq__ removed the entry
                    if (cmp < 0) {
                        return CT_ERROR;
                    }
                    if (version != t->version) {
                        goto restart;
                    }
                    if (cmp > 0) {
                        return ix;
                    }
                }
            }
        }
        else if (ix == CT_EMPTY) {
            return CT_NOTFOUND;
        }
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
}

/* ct_lookup's inlined fast path: the first probe finds the very key object (the common case
 * of a hit: callers pass the objects they stored, and interned strings are shared). */
static inline Py_ssize_t
ct_lookup(ct_table *t, PyObject *key, Py_hash_t hash)
{
    if (FA_LIKELY(t->size != 0)) {
        int32_t ix = t->index[(size_t)hash & ((size_t)t->size - 1)];
        if (FA_LIKELY(ix >= 0) && FA_LIKELY(t->entries[ix].key == key)) {
            return ix;
        }
    }
    return ct_lookup_slow(t, key, hash);
}

/* hash(key), reading a str's cached hash directly. */
static inline Py_hash_t
fa_hash(PyObject *key)
{
    if (FA_LIKELY(PyUnicode_CheckExact(key))) {
        Py_hash_t h = ((PyASCIIObject *)key)->hash;
        if (FA_LIKELY(h != -1)) {
            return h;
        }
    }
    return PyObject_Hash(key);
}

/* The position of the entry whose key is this very object (no __eq__, no Python code). */
static inline Py_ssize_t
ct_find_ident(ct_table *t, PyObject *key, Py_hash_t hash)
{
    if (t->size == 0) {
        return CT_NOTFOUND;
    }
    size_t mask = (size_t)t->size - 1;
    size_t perturb = (size_t)hash;
    size_t i = (size_t)hash & mask;
    for (;;) {
        int32_t ix = t->index[i];
        if (ix >= 0) {
            if (t->entries[ix].key == key) {
                return ix;
            }
        }
        else if (ix == CT_EMPTY) {
            return CT_NOTFOUND;
        }
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
}

/* The index slot that holds entry ix. */
static inline size_t
ct_slot_of(ct_table *t, Py_ssize_t ix)
{
    size_t mask = (size_t)t->size - 1;
    size_t perturb = (size_t)t->entries[ix].hash;
    size_t i = perturb & mask;
    while (t->index[i] != (int32_t)ix) {
        assert(t->index[i] != CT_EMPTY);
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
    return i;
}

static inline size_t
ct_free_slot(int32_t *index, Py_ssize_t size, Py_hash_t hash)
{
    size_t mask = (size_t)size - 1;
    size_t perturb = (size_t)hash;
    size_t i = perturb & mask;
    while (index[i] >= 0) {
        perturb >>= 5;
        i = (i * 5 + perturb + 1) & mask;
    }
    return i;
}

/* ------------------------------------------------------------------ LRU list */

static inline void
ct_lru_unlink(ct_table *t, int32_t ix)
{
    ct_entry *e = &t->entries[ix];
    if (e->prev >= 0) {
        t->entries[e->prev].next = e->next;
    }
    else {
        t->lru_head = e->next;
    }
    if (e->next >= 0) {
        t->entries[e->next].prev = e->prev;
    }
    else {
        t->lru_tail = e->prev;
    }
    e->prev = e->next = -1;
}

static inline void
ct_lru_append(ct_table *t, int32_t ix)
{
    ct_entry *e = &t->entries[ix];
    e->next = -1;
    e->prev = t->lru_tail;
    if (t->lru_tail >= 0) {
        t->entries[t->lru_tail].next = ix;
    }
    else {
        t->lru_head = ix;
    }
    t->lru_tail = ix;
}

/* Mark ix as the most recently used. */
static inline void
ct_touch(ct_table *t, Py_ssize_t ix)
{
    if (t->lru_tail != (int32_t)ix) {
        ct_lru_unlink(t, (int32_t)ix);
        ct_lru_append(t, (int32_t)ix);
    }
}

/* ------------------------------------------------------------------ expiry heap */

static inline int
ct_hless(ct_table *t, int32_t a, int32_t b)
{
    double ea = t->exp[a], eb = t->exp[b];
    return ea < eb || (ea == eb && a < b);
}

static inline void
ct_hset(ct_table *t, Py_ssize_t pos, int32_t ix)
{
    t->heap[pos] = ix;
    t->hpos[ix] = (int32_t)pos;
}

static inline void
ct_sift_up(ct_table *t, Py_ssize_t pos)
{
    int32_t ix = t->heap[pos];
    while (pos > 0) {
        Py_ssize_t parent = (pos - 1) >> 1;
        int32_t p = t->heap[parent];
        if (!ct_hless(t, ix, p)) {
            break;
        }
        ct_hset(t, pos, p);
        pos = parent;
    }
    ct_hset(t, pos, ix);
}

static inline void
ct_sift_down(ct_table *t, Py_ssize_t pos)
{
    Py_ssize_t n = t->heaplen;
    int32_t ix = t->heap[pos];
    for (;;) {
        Py_ssize_t c = 2 * pos + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && ct_hless(t, t->heap[c + 1], t->heap[c])) {
            c++;
        }
        if (!ct_hless(t, t->heap[c], ix)) {
            break;
        }
        ct_hset(t, pos, t->heap[c]);
        pos = c;
    }
    ct_hset(t, pos, ix);
}

static inline void
ct_heap_push(ct_table *t, int32_t ix)
{
    Py_ssize_t pos = t->heaplen++;
    ct_hset(t, pos, ix);
    ct_sift_up(t, pos);
}

static inline void
ct_heap_remove(ct_table *t, int32_t ix)
{
    Py_ssize_t pos = t->hpos[ix];
    assert(pos >= 0 && pos < t->heaplen && t->heap[pos] == ix);
    t->hpos[ix] = CT_DEFAULT;
    Py_ssize_t last = --t->heaplen;
    if (pos == last) {
        return;
    }
    int32_t moved = t->heap[last];
    ct_hset(t, pos, moved);
    if (pos > 0 && ct_hless(t, moved, t->heap[(pos - 1) >> 1])) {
        ct_sift_up(t, pos);
    }
    else {
        ct_sift_down(t, pos);
    }
}

/* ------------------------------------------------------------------ storage */

static inline void
ct_free_arrays(int32_t *index, ct_entry *entries, double *exp, int32_t *hpos, int32_t *heap,
               Py_ssize_t *sizes, int64_t *seq)
{
    PyMem_Free(seq);
    PyMem_Free(index);
    PyMem_Free(entries);
    PyMem_Free(exp);
    PyMem_Free(hpos);
    PyMem_Free(heap);
    PyMem_Free(sizes);
}

/* Rebuild the table with room for newcap entries: compact the holes away and re-index. No
 * Python code runs. *track (if given, an entry position) follows its entry. -1 on MemoryError
 * (the table is unchanged). */
static int
ct_rebuild(ct_table *t, Py_ssize_t newcap, Py_ssize_t *track)
{
    if (newcap < CT_MINCAP) {
        newcap = CT_MINCAP;
    }
    assert(newcap >= t->used);
    if (newcap > CT_MAXCAP) {
        PyErr_SetString(PyExc_MemoryError, "aiofast cache: too many entries");
        return -1;
    }
    Py_ssize_t newsize = 8;
    while (newsize / 4 * 3 < newcap) {
        newsize <<= 1;
    }
    int32_t *index = PyMem_Malloc(sizeof(int32_t) * (size_t)newsize);
    ct_entry *entries = PyMem_Malloc(sizeof(ct_entry) * (size_t)newcap);
    double *exp = t->timed ? PyMem_Malloc(sizeof(double) * (size_t)newcap) : NULL;
    int32_t *hpos = (t->hpos || t->classed) ? PyMem_Malloc(sizeof(int32_t) * (size_t)newcap) : NULL;
    int32_t *heap = (t->hpos || t->classed) ? PyMem_Malloc(sizeof(int32_t) * (size_t)newcap) : NULL;
    Py_ssize_t *sizes = t->sized ? PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)newcap) : NULL;
    int64_t *seq = t->ordered ? PyMem_Malloc(sizeof(int64_t) * (size_t)newcap) : NULL;
    int32_t *remap = t->nentries ? PyMem_Malloc(sizeof(int32_t) * (size_t)t->nentries) : NULL;
    if (index == NULL || entries == NULL || (t->timed && exp == NULL)
        || ((t->hpos || t->classed) && (hpos == NULL || heap == NULL))
        || (t->sized && sizes == NULL) || (t->ordered && seq == NULL)
        || (t->nentries && remap == NULL)) {
        ct_free_arrays(index, entries, exp, hpos, heap, sizes, seq);
        PyMem_Free(remap);
        PyErr_NoMemory();
        return -1;
    }
    memset(index, 0xff, sizeof(int32_t) * (size_t)newsize);  // all CT_EMPTY
    Py_ssize_t j = 0, exp_head = 0;
    for (Py_ssize_t i = 0; i < t->nentries; i++) {
        ct_entry *e = &t->entries[i];
        if (e->key == NULL) {
            remap[i] = -1;
            continue;
        }
        if (i < t->exp_head) {
            exp_head = j + 1;
        }
        remap[i] = (int32_t)j;
        entries[j] = *e;
        if (exp) {
            exp[j] = t->exp[i];
        }
        if (hpos) {
            hpos[j] = t->hpos ? t->hpos[i] : CT_DEFAULT;
        }
        if (sizes) {
            sizes[j] = t->sizes[i];
        }
        if (seq) {
            seq[j] = t->seq[i];
        }
        index[ct_free_slot(index, newsize, e->hash)] = (int32_t)j;
        j++;
    }
    for (Py_ssize_t k = 0; k < j; k++) {
        if (entries[k].prev >= 0) {
            entries[k].prev = remap[entries[k].prev];
        }
        if (entries[k].next >= 0) {
            entries[k].next = remap[entries[k].next];
        }
    }
    if (t->lru_head >= 0) {
        t->lru_head = remap[t->lru_head];
        t->lru_tail = remap[t->lru_tail];
    }
    if (heap) {
        for (Py_ssize_t k = 0; k < t->heaplen; k++) {
            heap[k] = remap[t->heap[k]];
        }
    }
    if (track != NULL && *track >= 0) {
        *track = remap[*track];
    }
    if (t->exp_head >= t->nentries) {
        exp_head = j;
    }
    PyMem_Free(remap);
    ct_free_arrays(t->index, t->entries, t->exp, t->hpos, t->heap, t->sizes, t->seq);
    t->index = index;
    t->entries = entries;
    t->exp = exp;
    t->hpos = hpos;
    t->heap = heap;
    t->sizes = sizes;
    t->seq = seq;
    t->size = newsize;
    t->cap = newcap;
    t->nentries = j;
    t->fill = j;
    t->exp_head = exp_head;
    t->version++;
    t->itver++;
    return 0;
}

/* Make room for one more entry (compacting or growing). *track follows its entry. */
static inline int
ct_reserve(ct_table *t, Py_ssize_t *track)
{
    if (FA_LIKELY(t->nentries < t->cap && t->fill < t->cap)) {
        return 0;
    }
    Py_ssize_t used = t->used;
    return ct_rebuild(t, used + (used >> 1) + CT_MINCAP, track);
}

/* Start keeping per-entry expiry classes (the first entry with its own ttl). */
static inline int
ct_enable_heap(ct_table *t)
{
    if (t->hpos != NULL) {
        return 0;
    }
    if (t->cap == 0) {
        t->classed = 1;  // the first rebuild allocates them
        return 0;
    }
    int32_t *hpos = PyMem_Malloc(sizeof(int32_t) * (size_t)t->cap);
    int32_t *heap = PyMem_Malloc(sizeof(int32_t) * (size_t)t->cap);
    if (hpos == NULL || heap == NULL) {
        PyMem_Free(hpos);
        PyMem_Free(heap);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < t->cap; i++) {
        hpos[i] = CT_DEFAULT;
    }
    t->hpos = hpos;
    t->heap = heap;
    t->classed = 1;
    return 0;
}

/* Append a new entry (the caller made room with ct_reserve and checked the key is absent). The
 * references to key and value are stolen. The entry is the most recently used; a timed entry
 * gets class CT_DEFAULT and exp 0 (set it with ct_set_exp). */
static inline Py_ssize_t
ct_insert(ct_table *t, PyObject *key, PyObject *value, Py_hash_t hash)
{
    assert(t->nentries < t->cap && t->fill < t->cap);
    Py_ssize_t ix = t->nentries++;
    ct_entry *e = &t->entries[ix];
    e->key = key;
    e->value = value;
    e->hash = hash;
    if (t->exp) {
        t->exp[ix] = 0.0;
    }
    if (t->hpos) {
        t->hpos[ix] = CT_DEFAULT;
    }
    if (t->sizes) {
        t->sizes[ix] = 1;
    }
    if (t->seq) {
        t->seq[ix] = t->next_seq++;
    }
    size_t slot = ct_free_slot(t->index, t->size, hash);
    if (t->index[slot] == CT_EMPTY) {
        t->fill++;
    }
    t->index[slot] = (int32_t)ix;
    ct_lru_append(t, (int32_t)ix);
    t->used++;
    t->version++;
    t->itver++;
    return ix;
}

/* Remove entry ix; its key and value go to trash. Returns the entry's size (1 if unsized). */
static inline Py_ssize_t
ct_remove(ct_table *t, Py_ssize_t ix, ct_buf *trash)
{
    ct_entry *e = &t->entries[ix];
    assert(e->key != NULL);
    t->index[ct_slot_of(t, ix)] = CT_DUMMY;
    ct_lru_unlink(t, (int32_t)ix);
    if (t->hpos != NULL && t->hpos[ix] >= 0) {
        ct_heap_remove(t, (int32_t)ix);
    }
    Py_ssize_t size = t->sizes ? t->sizes[ix] : 1;
    PyObject *key = e->key, *value = e->value;
    e->key = e->value = NULL;
    t->used--;
    t->version++;
    t->itver++;
    while (t->nentries > 0 && t->entries[t->nentries - 1].key == NULL) {
        t->nentries--;  // reclaim trailing holes
    }
    if (t->exp_head > t->nentries) {
        t->exp_head = t->nentries;
    }
    ct_trash(trash, key);
    ct_trash(trash, value);
    return size;
}

/* Move entry ix to the end of the array (its expiry is about to be set again): the old place
 * becomes a hole. The caller made room with ct_reserve(t, &ix). Returns the new position. */
static inline Py_ssize_t
ct_move_to_end(ct_table *t, Py_ssize_t ix)
{
    if (ix == t->nentries - 1) {
        if (t->hpos != NULL && t->hpos[ix] >= 0) {
            ct_heap_remove(t, (int32_t)ix);
        }
        if (t->exp_head > ix) {
            t->exp_head = ix;  // the scan passed it (it had another class); it may be default now
        }
        return ix;
    }
    assert(t->nentries < t->cap);
    size_t slot = ct_slot_of(t, ix);
    if (t->hpos != NULL && t->hpos[ix] >= 0) {
        ct_heap_remove(t, (int32_t)ix);
    }
    Py_ssize_t nx = t->nentries++;
    ct_entry *e = &t->entries[ix], *n = &t->entries[nx];
    *n = *e;
    /* relink the LRU neighbours to the new position */
    if (n->prev >= 0) {
        t->entries[n->prev].next = (int32_t)nx;
    }
    else {
        t->lru_head = (int32_t)nx;
    }
    if (n->next >= 0) {
        t->entries[n->next].prev = (int32_t)nx;
    }
    else {
        t->lru_tail = (int32_t)nx;
    }
    if (t->exp) {
        t->exp[nx] = t->exp[ix];
    }
    if (t->hpos) {
        t->hpos[nx] = CT_DEFAULT;
    }
    if (t->sizes) {
        t->sizes[nx] = t->sizes[ix];
    }
    if (t->seq) {
        t->seq[nx] = t->seq[ix];  // keeps its place in the iteration order
    }
    e->key = e->value = NULL;
    e->prev = e->next = -1;
    t->index[slot] = (int32_t)nx;
    t->version++;
    t->itver++;
    return nx;
}

/* Set the expiry of entry ix. own_class: 0 = CT_DEFAULT (only for the last entry of the array),
 * 1 = its own (the heap, which must be enabled), 2 = CT_NOEXP. */
static inline void
ct_set_exp(ct_table *t, Py_ssize_t ix, double exp, int own_class)
{
    if (t->hpos != NULL && t->hpos[ix] >= 0) {
        ct_heap_remove(t, (int32_t)ix);
    }
    t->exp[ix] = exp;
    if (own_class == 1) {
        ct_heap_push(t, (int32_t)ix);
    }
    else if (t->hpos != NULL) {
        t->hpos[ix] = own_class == 2 ? CT_NOEXP : CT_DEFAULT;
        assert(own_class == 2 || ix >= t->exp_head);
    }
}

/* The entry that expires first if it has expired at `now` (exp <= now), else CT_NOTFOUND. */
static inline Py_ssize_t
ct_next_expired(ct_table *t, double now)
{
    Py_ssize_t a = CT_NOTFOUND, b = CT_NOTFOUND;
    while (t->exp_head < t->nentries) {
        Py_ssize_t h = t->exp_head;
        if (t->entries[h].key != NULL && (t->hpos == NULL || t->hpos[h] == CT_DEFAULT)) {
            if (!(now < t->exp[h])) {
                a = h;
            }
            break;
        }
        t->exp_head++;
    }
    if (t->heaplen > 0 && !(now < t->exp[t->heap[0]])) {
        b = t->heap[0];
    }
    if (a < 0) {
        return b;
    }
    if (b < 0) {
        return a;
    }
    return ct_hless(t, (int32_t)a, (int32_t)b) ? a : b;
}

/* Empty the table; every key and value goes to trash (release it after the caller commits). */
static inline void
ct_clear(ct_table *t, ct_buf *trash)
{
    int32_t *index = t->index;
    ct_entry *entries = t->entries;
    Py_ssize_t n = t->nentries;
    double *exp = t->exp;
    int32_t *hpos = t->hpos, *heap = t->heap;
    Py_ssize_t *sizes = t->sizes;
    int64_t *seq = t->seq;
    uint64_t version = t->version, itver = t->itver;
    int timed = t->timed, sized = t->sized, classed = t->classed, ordered = t->ordered;
    ct_init(t, timed, sized, classed);
    t->ordered = ordered;
    t->version = version + 1;
    t->itver = itver + 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (entries[i].key != NULL) {
            if (trash != NULL) {
                ct_trash(trash, entries[i].key);
                ct_trash(trash, entries[i].value);
            }
            else {
                Py_DECREF(entries[i].key);
                Py_DECREF(entries[i].value);
            }
        }
    }
    ct_free_arrays(index, entries, exp, hpos, heap, sizes, seq);
}

static inline int
ct_traverse(ct_table *t, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < t->nentries; i++) {
        ct_entry *e = &t->entries[i];
        if (e->key != NULL) {
            Py_VISIT(e->key);
            Py_VISIT(e->value);
        }
    }
    return 0;
}

static inline size_t
ct_sizeof(ct_table *t)
{
    size_t n = sizeof(int32_t) * (size_t)t->size + sizeof(ct_entry) * (size_t)t->cap;
    if (t->exp) {
        n += sizeof(double) * (size_t)t->cap;
    }
    if (t->hpos) {
        n += 2 * sizeof(int32_t) * (size_t)t->cap;
    }
    if (t->sizes) {
        n += sizeof(Py_ssize_t) * (size_t)t->cap;
    }
    if (t->seq) {
        n += sizeof(int64_t) * (size_t)t->cap;
    }
    return n;
}

static int
ct_seq_cmp(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;  // (seq, position) pairs, lexicographic
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

/* The positions of the live entries in iteration order: first insertion (seq) for an ordered
 * table, else array order. A new PyMem array of t->used positions (*out, NULL when empty);
 * -1 on MemoryError. No Python code runs. */
static inline int
ct_order(ct_table *t, int32_t **out)
{
    Py_ssize_t n = t->used, k = 0;
    *out = NULL;
    if (n == 0) {
        return 0;
    }
    int32_t *pos = PyMem_Malloc(sizeof(int32_t) * (size_t)n);
    if (pos == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int sorted = 1;
    for (Py_ssize_t i = 0; i < t->nentries; i++) {
        if (t->entries[i].key != NULL) {
            if (k > 0 && t->seq != NULL && t->seq[i] < t->seq[pos[k - 1]]) {
                sorted = 0;
            }
            pos[k++] = (int32_t)i;
        }
    }
    assert(k == n);
    if (!sorted) {
        /* (seq, position) pairs, sorted by seq (distinct: no ties) */
        int64_t *pairs = PyMem_Malloc(sizeof(int64_t) * 2 * (size_t)n);
        if (pairs == NULL) {
            PyMem_Free(pos);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            pairs[2 * i] = t->seq[pos[i]];
            pairs[2 * i + 1] = pos[i];
        }
        qsort(pairs, (size_t)n, 2 * sizeof(int64_t), ct_seq_cmp);
        for (Py_ssize_t i = 0; i < n; i++) {
            pos[i] = (int32_t)pairs[2 * i + 1];
        }
        PyMem_Free(pairs);
    }
    *out = pos;
    return 0;
}

#if FA_DEBUG
/* The table's invariants (debug builds; see FA_ASSERT_CONSISTENT in debug.h), checked by
 * the owners' checkers (cache_check in cache.c, memo_check in memo.c) after every mutation.
 * Reads C fields only: no Python code, no allocation, no exception (the stored hash of an exact
 * str or int key is compared with the hash the key itself gives, which for those types is C).
 *
 * A table of up to CT_CHECK_FULL entry slots is walked whole: every live entry is findable
 * from its stored hash (the probe sequence reaches its slot before an empty one), its LRU
 * links agree both ways, its expiry class agrees with the heap; the index holds exactly `used`
 * entry positions and `fill` non-empty slots; the LRU list, walked from head to tail, has
 * `used` entries; the heap is in order. A larger table (the suite's 100,000-entry churns) gets
 * the O(1) checks, the ends of the LRU list and of the array, the top of the heap and a
 * rotating sample of entries (a full walk only at every CT_CHECK_EVERY-th check), so the debug
 * suite stays fast.
 *
 * An ordered table's seqs are each in range, and (up to CT_CHECK_SEQ entry slots) distinct.
 *
 * What is NOT checked: that the CT_DEFAULT entries from exp_head on are in expiry order. That
 * holds only for a clock that never goes back (a user's timer may; a memoizer's results
 * survive a change of event loop, whose clocks differ); breaking it makes expiry late, never
 * the table inconsistent.
 *
 * Returns 1 after a full walk, with *sizesum the sum of the live entries' sizes (their count
 * if the table is unsized), 0 after a partial one (*sizesum is then -1). */
#define CT_CHECK_FULL 1024
#define CT_CHECK_SAMPLE 64
#define CT_CHECK_EVERY 64  /* a larger table is still walked whole at every 64th check */
#define CT_CHECK_SEQ 128   /* seqs compared pairwise up to this many entry slots */

static inline void
ct_check_entry(const ct_table *t, Py_ssize_t i)
{
    const ct_entry *e = &t->entries[i];
    if (e->key == NULL) {
        FA_CHECK(e->value == NULL, "table %p: hole %zd holds a value", (void *)t, i);
        return;
    }
    FA_CHECK(e->value != NULL && Py_REFCNT(e->key) >= 1 && Py_REFCNT(e->value) >= 1,
             "table %p: entry %zd: key %p value %p", (void *)t, i, (void *)e->key,
             (void *)e->value);
    if (PyUnicode_CheckExact(e->key) && ((PyASCIIObject *)e->key)->hash != -1) {
        FA_CHECK(((PyASCIIObject *)e->key)->hash == e->hash,
                 "table %p: entry %zd: stored hash %zd, the str's %zd", (void *)t, i,
                 (Py_ssize_t)e->hash, (Py_ssize_t)((PyASCIIObject *)e->key)->hash);
    }
    else if (PyLong_CheckExact(e->key)) {
        FA_CHECK(PyObject_Hash(e->key) == e->hash,
                 "table %p: entry %zd: stored hash %zd is not its int's", (void *)t, i,
                 (Py_ssize_t)e->hash);
    }
    /* findable from its stored hash: the probe sequence meets its slot before an empty one */
    size_t mask = (size_t)t->size - 1;
    size_t perturb = (size_t)e->hash;
    size_t j = perturb & mask;
    Py_ssize_t probes = 0;
    while (t->index[j] != (int32_t)i) {
        FA_CHECK(t->index[j] != CT_EMPTY && probes < t->size,
                 "table %p: entry %zd (hash %zd) not findable: an empty slot after %zd probes",
                 (void *)t, i, (Py_ssize_t)e->hash, probes);
        perturb >>= 5;
        j = (j * 5 + perturb + 1) & mask;
        probes++;
    }
    /* LRU links, both ways */
    FA_CHECK(e->prev >= -1 && e->prev < t->nentries && e->next >= -1 && e->next < t->nentries
                 && e->prev != i && e->next != i,
             "table %p: entry %zd: links %d/%d out of range", (void *)t, i, e->prev, e->next);
    if (e->prev >= 0) {
        FA_CHECK(t->entries[e->prev].key != NULL && t->entries[e->prev].next == i,
                 "table %p: entry %zd: prev %d does not link back", (void *)t, i, e->prev);
    }
    else {
        FA_CHECK(t->lru_head == i, "table %p: entry %zd has no prev but the head is %d",
                 (void *)t, i, t->lru_head);
    }
    if (e->next >= 0) {
        FA_CHECK(t->entries[e->next].key != NULL && t->entries[e->next].prev == i,
                 "table %p: entry %zd: next %d does not link back", (void *)t, i, e->next);
    }
    else {
        FA_CHECK(t->lru_tail == i, "table %p: entry %zd has no next but the tail is %d",
                 (void *)t, i, t->lru_tail);
    }
    /* expiry class */
    if (t->hpos != NULL) {
        int32_t h = t->hpos[i];
        FA_CHECK(h == CT_DEFAULT || h == CT_NOEXP || (h >= 0 && h < t->heaplen && t->heap[h] == i),
                 "table %p: entry %zd: heap position %d (heap length %zd)", (void *)t, i, h,
                 t->heaplen);
        FA_CHECK(h != CT_DEFAULT || !t->timed || i >= t->exp_head,
                 "table %p: default-class entry %zd before exp_head %zd", (void *)t, i,
                 t->exp_head);
        FA_CHECK(!t->timed || h == CT_NOEXP || !isnan(t->exp[i]),
                 "table %p: entry %zd expires at nan", (void *)t, i);
    }
    else if (t->timed) {
        FA_CHECK(i >= t->exp_head, "table %p: entry %zd before exp_head %zd", (void *)t, i,
                 t->exp_head);
        FA_CHECK(!isnan(t->exp[i]), "table %p: entry %zd expires at nan", (void *)t, i);
    }
    if (t->sizes != NULL) {
        FA_CHECK(t->sizes[i] >= 0, "table %p: entry %zd: size %zd", (void *)t, i, t->sizes[i]);
    }
    if (t->seq != NULL) {
        FA_CHECK(t->seq[i] >= 0 && t->seq[i] < t->next_seq,
                 "table %p: entry %zd: seq %lld, next_seq %lld", (void *)t, i,
                 (long long)t->seq[i], (long long)t->next_seq);
    }
}

static inline void
ct_check_heap_item(const ct_table *t, Py_ssize_t k)
{
    int32_t ix = t->heap[k];
    FA_CHECK(ix >= 0 && ix < t->nentries && t->entries[ix].key != NULL && t->hpos[ix] == k,
             "table %p: heap[%zd] = %d is not a live entry pointing back", (void *)t, k, ix);
    if (k > 0) {
        FA_CHECK(!ct_hless((ct_table *)t, ix, t->heap[(k - 1) >> 1]),
                 "table %p: heap[%zd] expires before its parent", (void *)t, k);
    }
}

static inline int
ct_check(const ct_table *t, Py_ssize_t *sizesum)
{
    *sizesum = -1;
    FA_CHECK(t->used >= 0 && t->used <= t->nentries && t->nentries <= t->cap
                 && t->fill <= t->cap && t->used <= t->fill,
             "table %p: used %zd, nentries %zd, fill %zd, cap %zd", (void *)t, t->used,
             t->nentries, t->fill, t->cap);
    FA_CHECK(t->size == 0 ? (t->cap == 0 && t->index == NULL && t->entries == NULL)
                          : ((t->size & (t->size - 1)) == 0 && t->cap <= t->size / 4 * 3
                             && t->cap <= CT_MAXCAP && t->index != NULL && t->entries != NULL),
             "table %p: size %zd, cap %zd", (void *)t, t->size, t->cap);
    FA_CHECK(t->exp_head >= 0 && t->exp_head <= t->nentries, "table %p: exp_head %zd of %zd",
             (void *)t, t->exp_head, t->nentries);
    FA_CHECK((t->exp != NULL) == (t->timed && t->cap > 0), "table %p: timed %d, exp %p",
             (void *)t, t->timed, (void *)t->exp);
    FA_CHECK((t->sizes != NULL) == (t->sized && t->cap > 0), "table %p: sized %d, sizes %p",
             (void *)t, t->sized, (void *)t->sizes);
    FA_CHECK((t->seq != NULL) == (t->ordered && t->cap > 0), "table %p: ordered %d, seq %p",
             (void *)t, t->ordered, (void *)t->seq);
    FA_CHECK((t->hpos == NULL) == (t->heap == NULL) && (t->hpos == NULL || t->classed),
             "table %p: hpos %p, heap %p, classed %d", (void *)t, (void *)t->hpos,
             (void *)t->heap, t->classed);
    FA_CHECK(t->heaplen >= 0 && t->heaplen <= t->used && (t->heaplen == 0 || t->hpos != NULL),
             "table %p: heap length %zd, used %zd", (void *)t, t->heaplen, t->used);
    FA_CHECK((t->lru_head < 0) == (t->used == 0) && (t->lru_tail < 0) == (t->used == 0)
                 && t->lru_head < t->nentries && t->lru_tail < t->nentries,
             "table %p: LRU head %d, tail %d, used %zd", (void *)t, t->lru_head, t->lru_tail,
             t->used);
    FA_CHECK(t->nentries == 0 || t->entries[t->nentries - 1].key != NULL,
             "table %p: trailing hole at %zd not reclaimed", (void *)t, t->nentries - 1);
    if (t->used > 0) {
        FA_CHECK(t->entries[t->lru_head].prev == -1 && t->entries[t->lru_tail].next == -1,
                 "table %p: LRU ends %d/%d are linked further", (void *)t, t->lru_head,
                 t->lru_tail);
    }
    static size_t rotor = 0, nchecks = 0;
    if (t->nentries > CT_CHECK_FULL && ++nchecks % CT_CHECK_EVERY != 0) {
        /* partial: the ends of the array and of the LRU list, the top of the heap, and a
         * sample that moves on at every check */
        Py_ssize_t n = t->nentries;
        for (Py_ssize_t i = 0; i < CT_CHECK_SAMPLE; i++) {
            ct_check_entry(t, i);
            ct_check_entry(t, n - 1 - i);
            ct_check_entry(t, (Py_ssize_t)((rotor + (size_t)i * 7919) % (size_t)n));
        }
        rotor += 104729;
        int32_t ix = t->lru_head;
        for (Py_ssize_t i = 0; i < CT_CHECK_SAMPLE && ix >= 0; i++) {
            ct_check_entry(t, ix);
            ix = t->entries[ix].next;
        }
        ix = t->lru_tail;
        for (Py_ssize_t i = 0; i < CT_CHECK_SAMPLE && ix >= 0; i++) {
            ct_check_entry(t, ix);
            ix = t->entries[ix].prev;
        }
        for (Py_ssize_t k = 0; k < t->heaplen && k < CT_CHECK_SAMPLE; k++) {
            ct_check_heap_item(t, k);
        }
        return 0;
    }
    Py_ssize_t live = 0, sum = 0;
    for (Py_ssize_t i = 0; i < t->nentries; i++) {
        ct_check_entry(t, i);
        if (t->entries[i].key != NULL) {
            live++;
            sum += t->sizes ? t->sizes[i] : 1;
        }
    }
    FA_CHECK(live == t->used, "table %p: %zd live entries, used %zd", (void *)t, live, t->used);
    Py_ssize_t nonempty = 0, pointing = 0;
    for (Py_ssize_t j = 0; j < t->size; j++) {
        int32_t ix = t->index[j];
        FA_CHECK(ix == CT_EMPTY || ix == CT_DUMMY || (ix >= 0 && ix < t->nentries
                                                       && t->entries[ix].key != NULL),
                 "table %p: index slot %zd holds %d (nentries %zd)", (void *)t, j, ix,
                 t->nentries);
        nonempty += ix != CT_EMPTY;
        pointing += ix >= 0;
    }
    /* every live entry has a slot (above), and there are exactly used such slots: a bijection */
    FA_CHECK(nonempty == t->fill && pointing == t->used,
             "table %p: %zd non-empty slots (fill %zd), %zd entry slots (used %zd)", (void *)t,
             nonempty, t->fill, pointing, t->used);
    Py_ssize_t n = 0;
    int32_t prev = -1;
    for (int32_t ix = t->lru_head; ix >= 0; ix = t->entries[ix].next) {
        FA_CHECK(n < t->used, "table %p: the LRU list is longer than used %zd (a cycle?)",
                 (void *)t, t->used);
        FA_CHECK(t->entries[ix].key != NULL && t->entries[ix].prev == prev,
                 "table %p: LRU entry %d: key %p, prev %d (expected %d)", (void *)t, ix,
                 (void *)t->entries[ix].key, t->entries[ix].prev, prev);
        prev = ix;
        n++;
    }
    FA_CHECK(prev == t->lru_tail && n == t->used, "table %p: LRU list of %zd ends at %d, tail %d",
             (void *)t, n, prev, t->lru_tail);
    for (Py_ssize_t k = 0; k < t->heaplen; k++) {
        ct_check_heap_item(t, k);
    }
    if (t->seq != NULL && t->nentries <= CT_CHECK_SEQ) {
        /* no two live entries share a seq (pairwise: small tables only) */
        for (Py_ssize_t i = 0; i < t->nentries; i++) {
            for (Py_ssize_t j = i + 1; t->entries[i].key != NULL && j < t->nentries; j++) {
                FA_CHECK(t->entries[j].key == NULL || t->seq[i] != t->seq[j],
                         "table %p: entries %zd and %zd share seq %lld", (void *)t, i, j,
                         (long long)t->seq[i]);
            }
        }
    }
    *sizesum = sum;
    return 1;
}
#endif

#endif
