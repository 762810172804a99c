/*
 * prio.h: PriorityQueue's heap (queue.c's split file): heapq's algorithm in C over a Python list,
 * with the comparisons it asks made natively where they can be.
 *
 * The order is heapq's: the same comparisons, in the same order, with the same answers. What
 * differs is when the items move, and how a comparison is answered:
 *
 * - every comparison of a push or a pop is made first; the items move only afterwards, with no
 *   Python code running in between. A comparison that raises (or an allocation that fails)
 *   leaves the list exactly as it was.
 * - exact ints and floats, and the first elements of exact tuples, are compared natively when
 *   that gives the answer (fa_prio_num_cmp: small ints, floats, no NaN); ties and every other
 *   type go through Python's comparison (fa_prio_lt_slow, in prio.c).
 * - items of one @dataclass(order=True) class are compared by their compared fields, as the
 *   __lt__ that dataclasses generates would, without calling it: the class's __lt__ is proved
 *   to be that generated function (its code against the code dataclasses makes for as many
 *   fields) and the answer is cached per type in fa_prio_dc.
 *
 * Invariants:
 * - the list belongs to an owner (fa_prio_heap): the owner's slot holds it and the owner's
 *   version counter changes on every change made to it. Beware: a comparison that ran Python
 *   code (*py set) may have changed anything; the push or pop then checks that version, slot
 *   and size are as they were (fa_prio_changed) and raises RuntimeError otherwise, touching
 *   nothing.
 * - fa_prio_push/fa_prio_pop keep a list that was in heap order in heap order (checked in debug
 *   builds with fa_prio_in_order, which compares natively only and never runs Python code).
 * - fa_prio_dc holds strong references: type and lt are the last type examined and its __lt__
 *   then, fields the compared field names (a tuple) or None when lt is not dataclasses' own.
 *   The owner visits and clears them.
 *
 * The put/get path (fa_prio_num_cmp, fa_prio_lt, fa_prio_push, fa_prio_pop) is static inline
 * here, so it inlines into the queue without LTO; what runs Python code lives in prio.c.
 */
#ifndef AIOFAST_PRIO_H
#define AIOFAST_PRIO_H

#include "aiofast.h"

/* the dataclass compare cache (strong references, owned by the queue) */
typedef struct {
    PyObject *type;    /* the item type last examined, */
    PyObject *lt;      /* its __lt__ when examined, */
    PyObject *fields;  /* and the compared field names (a tuple), or None: not applicable */
} fa_prio_dc;

/* a heap and its owner, as a push or a pop sees them */
typedef struct {
    fa_state *st;
    fa_prio_dc *dc;
    PyObject *const *slot;  /* where the owner keeps the list (q._queue) */
    size_t *version;        /* the owner's counter, bumped on every change of the list */
    const void *owner;      /* named in the debug checks' messages */
} fa_prio_heap;

/* a < b when the native comparison could not tell (ties, other types); 1, 0, -1; sets *py */
FA_NOINLINE int fa_prio_lt_slow(fa_prio_heap *h, PyObject *a, PyObject *b, int *py);

#if FA_DEBUG
int fa_prio_in_order(PyObject *heap);
#endif

#define FA_EXACT53 9007199254740992LL

#define FA_EXACT53 9007199254740992LL

/* Three-way comparison of two exact ints/floats, natively: -1, 0, 1, or 2 when it cannot tell
 * (another type, NaN, an int too large to compare exactly here). Never runs Python code. */
FA_INLINE int
fa_prio_num_cmp(PyObject *x, PyObject *y)
{
    double a, b;
    long long p, q;
    if (PyLong_CheckExact(x)) {
        if (!fa_long_small(x, &p)) {
            return 2;
        }
        if (PyLong_CheckExact(y)) {
            if (!fa_long_small(y, &q)) {
                return 2;
            }
            return (p > q) - (p < q);
        }
        if (!PyFloat_CheckExact(y) || p > FA_EXACT53 || p < -FA_EXACT53) {
            return 2;
        }
        a = (double)p;
        b = PyFloat_AS_DOUBLE(y);
    }
    else if (PyFloat_CheckExact(x)) {
        a = PyFloat_AS_DOUBLE(x);
        if (PyFloat_CheckExact(y)) {
            b = PyFloat_AS_DOUBLE(y);
        }
        else if (PyLong_CheckExact(y) && fa_long_small(y, &q) && q <= FA_EXACT53
                 && q >= -FA_EXACT53) {
            b = (double)q;
        }
        else {
            return 2;
        }
    }
    else {
        return 2;
    }
    if (isnan(a) || isnan(b)) {
        return 2;
    }
    return (a > b) - (a < b);
}

/* Take the last item of a list (n > 0): a new reference, or NULL. Exactly list.pop(): in place
 * while the allocation stays over half used (list_resize's no-realloc case), else through
 * list.pop() itself, which gives memory back (no Python code runs for a list). */
static inline PyObject *
fa_list_take_last(fa_state *st, PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (FA_UNLIKELY(n - 1 < (((PyListObject *)list)->allocated >> 1))) {
        PyObject *args[1] = {list};
        return PyObject_VectorcallMethod(st->queue.str_pop, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                         NULL);
    }
    PyObject *item = PyList_GET_ITEM(list, n - 1);  // the list's reference becomes ours
    Py_SET_SIZE(list, n - 1);
    return item;
}

/* a < b as heapq asks it; 1, 0, -1. *py is set when Python code may have run. The native
 * cases (ints, floats, tuples whose first elements differ and are ints or floats) are decided
 * here without a call. */
FA_INLINE int
fa_prio_lt(fa_prio_heap *h, PyObject *a, PyObject *b, int *py)
{
    PyTypeObject *ta = Py_TYPE(a);
    if (ta == &PyTuple_Type) {
        if (Py_IS_TYPE(b, &PyTuple_Type) && PyTuple_GET_SIZE(a) > 0 && PyTuple_GET_SIZE(b) > 0) {
            PyObject *x = PyTuple_GET_ITEM(a, 0), *y = PyTuple_GET_ITEM(b, 0);
            if (x != y) {
                int c = fa_prio_num_cmp(x, y);
                if (c == -1 || c == 1) {
                    return c < 0;
                }
            }
        }
    }
    else {
        int c = fa_prio_num_cmp(a, b);
        if (c != 2) {
            return c < 0;
        }
    }
    return fa_prio_lt_slow(h, a, b, py);
}

static inline int
fa_prio_changed(fa_prio_heap *h, PyObject *heap, Py_ssize_t n, size_t version)
{
    if (*h->version != version || *h->slot != heap || PyList_GET_SIZE(heap) != n) {
        PyErr_SetString(PyExc_RuntimeError, "PriorityQueue changed during an item comparison");
        return 1;
    }
    return 0;
}

/* heapq.heappush(heap, item): every comparison first, then the moves. 0 or -1 (heap untouched). */
static inline int
fa_prio_push(fa_prio_heap *h, PyObject *heap, PyObject *item)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    size_t version = *h->version;
    Py_ssize_t pos = n;
    int rc = -1;
#if FA_DEBUG
    int in_order = fa_prio_in_order(heap);
#endif
    Py_INCREF(heap);
    Py_INCREF(item);
    while (pos > 0) {
        Py_ssize_t parentpos = (pos - 1) >> 1;
        int py = 0;
        int lt = fa_prio_lt(h, item, PyList_GET_ITEM(heap, parentpos), &py);
        if (lt < 0 || (py && fa_prio_changed(h, heap, n, version))) {
            goto done;
        }
        if (!lt) {
            break;
        }
        pos = parentpos;
    }
    /* commit: nothing below runs Python code */
    if (PyList_Append(heap, item) < 0) {
        goto done;
    }
    PyObject **arr = &PyList_GET_ITEM(heap, 0);
    Py_ssize_t p = n;
    while (p > pos) {
        Py_ssize_t parentpos = (p - 1) >> 1;
        arr[p] = arr[parentpos];
        p = parentpos;
    }
    arr[pos] = item;  // the reference the append took moves here
    (*h->version)++;
#if FA_DEBUG
    FA_CHECK(!in_order || fa_prio_in_order(heap), "PriorityQueue %p: heap of %zd items out of "
             "order after an operation", h->owner, PyList_GET_SIZE(heap));
#endif
    rc = 0;
done:
    Py_DECREF(item);
    Py_DECREF(heap);
    return rc;
}

/* heapq.heappop(heap): every comparison first, then the moves. A new reference, or NULL with
 * the heap untouched. */
static inline PyObject *
fa_prio_pop(fa_prio_heap *h, PyObject *heap)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    if (n == 0) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return NULL;
    }
    if (n == 1) {
        PyObject *item = fa_list_take_last(h->st, heap);
        *h->version += item != NULL;
        return item;
    }
    /* heapq: lastelt = pop(); returnitem = heap[0]; heap[0] = lastelt; siftup(heap, 0), where
     * siftup moves the smaller child up to a leaf, then siftdown bubbles lastelt back up. Both
     * phases compare only items still at their original places (derivation in the docs), so
     * we find the path, then lastelt's place on it, and only then move anything. */
    Py_ssize_t m = n - 1;  /* heap size after the pop */
    Py_ssize_t path[8 * sizeof(Py_ssize_t) + 1];
    int k = 0, j = 0;
    size_t version = *h->version;
    PyObject *result = NULL;
#if FA_DEBUG
    int in_order = fa_prio_in_order(heap);
#endif
    Py_INCREF(heap);
    PyObject *newitem = Py_NewRef(PyList_GET_ITEM(heap, m));
    path[0] = 0;
    Py_ssize_t pos = 0, limit = m >> 1;
    while (pos < limit) {
        Py_ssize_t child = 2 * pos + 1;
        if (child + 1 < m) {
            int py = 0;
            int lt = fa_prio_lt(h, PyList_GET_ITEM(heap, child),
                                PyList_GET_ITEM(heap, child + 1), &py);
            if (lt < 0 || (py && fa_prio_changed(h, heap, n, version))) {
                goto done;
            }
            child += lt ^ 1;
        }
        path[++k] = child;
        pos = child;
    }
    j = k;
    while (j > 0) {
        int py = 0;
        int lt = fa_prio_lt(h, newitem, PyList_GET_ITEM(heap, path[j]), &py);
        if (lt < 0 || (py && fa_prio_changed(h, heap, n, version))) {
            goto done;
        }
        if (!lt) {
            break;
        }
        j--;
    }
    /* commit: nothing below runs Python code */
    PyObject *last = fa_list_take_last(h->st, heap);  // newitem, the list's reference
    if (last == NULL) {
        goto done;
    }
    assert(last == newitem);
    PyObject **arr = &PyList_GET_ITEM(heap, 0);
    result = arr[0];             // the list's reference becomes the caller's
    for (int i = 0; i < j; i++) {
        arr[path[i]] = arr[path[i + 1]];
    }
    arr[path[j]] = last;         // and lastelt's moves here
    (*h->version)++;
#if FA_DEBUG
    FA_CHECK(!in_order || fa_prio_in_order(heap), "PriorityQueue %p: heap of %zd items out of "
             "order after an operation", h->owner, PyList_GET_SIZE(heap));
#endif
done:
    Py_DECREF(newitem);          // ours, taken above (on success the list still holds it)
    Py_DECREF(heap);
    return result;
}

#endif /* AIOFAST_PRIO_H */
