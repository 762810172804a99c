/*
 * waitview.c: the live, deque-like view of a waiter queue (fa_waitq) that a primitive hands out
 * as asyncio's deques of waiter futures: the lock family's `_waiters`, the queues' `_getters`
 * and `_putters`.
 *
 * asyncio keeps its waiters in a collections.deque of futures, and code (CPython's own tests,
 * subclasses in the wild) reads it and writes it: appends a bare future or a mock, removes one,
 * pops the head to wake it, assigns a new deque. The view is a window on the C list, not a copy:
 * len, truth, iteration, indexing, `in`, repr, and append/appendleft/extend/pop/popleft/remove/
 * clear act on the primitive itself. A future of one of the primitive's own waiting operations
 * comes out as that op's future; an object appended through the view gets a node of its own (an
 * inert op of fa_foreign_kind that holds it as its future), which the primitive wakes as asyncio
 * would (`if not fut.done(): fut.set_result(...)`) and never drives.
 *
 * Invariants: a foreign node has no owner, stays in state INIT, holds its object in op->fut and
 * is linked in at most one queue (fa_waitq_check); the view holds its owner strongly, so the
 * queue it points into lives as long as the view. Every method that calls Python code (an
 * __eq__, an iterable, a decref to zero) either finishes its changes first or re-validates the
 * queue's version afterwards, and raises RuntimeError instead of walking a changed list.
 */
#include "op.h"

typedef struct {
    PyObject_HEAD
    fa_state *st;
    PyObject *owner;   /* the primitive, strong: q lives inside it */
    fa_waitq *q;
} FaWaitView;

static PySendResult
foreign_start(FaOp *Py_UNUSED(op), PyObject **Py_UNUSED(res))
{
    PyErr_SetString(PyExc_RuntimeError, "a foreign waiter is not an awaitable");
    return PYGEN_ERROR;
}

const fa_opkind fa_foreign_kind = {"foreign waiter", foreign_start, NULL, NULL, NULL};

PyObject *
fa_waitview_new(fa_state *st, PyObject *owner, fa_waitq *q)
{
    FaWaitView *v = PyObject_GC_New(FaWaitView, (PyTypeObject *)st->engine.WaitersViewType);
    if (v == NULL) {
        return NULL;
    }
    v->st = st;
    v->owner = Py_NewRef(owner);
    v->q = q;
    PyObject_GC_Track(v);
    return (PyObject *)v;
}

fa_waitq *
fa_waitview_queue(fa_state *st, PyObject *obj)
{
    if (!Py_IS_TYPE(obj, (PyTypeObject *)st->engine.WaitersViewType)) {
        return NULL;
    }
    FaWaitView *v = (FaWaitView *)obj;
    return v->owner != NULL ? v->q : NULL;
}

/* A new inert node holding obj, linked at the back (or the front) of q. 0 or -1. */
static int
push_foreign(fa_state *st, fa_waitq *q, PyObject *obj, int front)
{
    FaOp *node = fa_op_new(st, &fa_foreign_kind, NULL, NULL);  // new ref
    if (node == NULL) {
        return -1;
    }
    node->fut = Py_NewRef(obj);
    if (!front || q->head == NULL) {
        fa_waitq_push(q, node);
    }
    else {
        Py_INCREF(node);
        node->queue = q;
        node->prev = NULL;
        node->next = q->head;
        q->head->prev = node;
        q->head = node;
        q->len++;
        q->version++;
        FA_ASSERT_CONSISTENT_WITH(fa_waitq_check, q);
    }
    Py_DECREF(node);  /* the queue holds it */
    return 0;
}

int
fa_waitview_assign(fa_state *st, fa_waitq *q, PyObject *iterable)
{
    /* Beware: the iterable's code runs here */
    PyObject *items = iterable ? PySequence_List(iterable) : PyList_New(0);  // new ref
    if (items == NULL) {
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    FaOp **nodes = NULL, **old = NULL;
    Py_ssize_t nold = 0;
    int rc = -1;
restart:
    /* Everything that can fail comes first: a node for every item (an item that is the future
     * of an op linked in q takes that op, in the new order) and room for the old references.
     * An allocation may run a collection, and so finalizers: the version is checked after. */
    nodes = PyMem_Calloc((size_t)(n ? n : 1), sizeof(FaOp *));
    old = PyMem_Calloc((size_t)(q->len ? q->len : 1), sizeof(FaOp *));
    if (nodes == NULL || old == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t version = q->version;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        FaOp *own = NULL;
        for (FaOp *op = q->head; op != NULL; op = op->next) {
            if (op->fut == item && !fa_op_is_foreign(op) && !(op->flags & FA_OPF_VIEWMARK)) {
                own = op;
                break;
            }
        }
        if (own != NULL) {
            own->flags |= FA_OPF_VIEWMARK;  /* taken: a repeated future gets a node of its own */
            nodes[i] = (FaOp *)Py_NewRef(own);
            continue;
        }
        FaOp *node = fa_op_new(st, &fa_foreign_kind, NULL, NULL);  // new ref
        if (node == NULL) {
            goto done;
        }
        node->fut = Py_NewRef(item);
        nodes[i] = node;
    }
    if (version != q->version) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (nodes[i] != NULL) {
                nodes[i]->flags &= ~FA_OPF_VIEWMARK;
                Py_CLEAR(nodes[i]);
            }
        }
        PyMem_Free(nodes);
        PyMem_Free(old);
        nodes = old = NULL;
        goto restart;
    }
    /* commit (no Python code runs until the old references are dropped): detach every op,
     * then link the new order. An own op left out is orphaned, as asyncio's waiter whose
     * future is no longer in the deque: it still wakes when its future completes. */
    for (FaOp *op = q->head; op != NULL;) {
        FaOp *next = op->next;
        op->prev = op->next = NULL;
        op->queue = NULL;
        old[nold++] = op;  /* the queue's reference */
        op = next;
    }
    q->head = q->tail = NULL;
    q->len = 0;
    q->version++;
    for (Py_ssize_t i = 0; i < n; i++) {
        nodes[i]->flags &= ~FA_OPF_VIEWMARK;
        fa_waitq_push(q, nodes[i]);
        Py_CLEAR(nodes[i]);
    }
    rc = 0;
done:
    if (nodes != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (nodes[i] != NULL) {
                nodes[i]->flags &= ~FA_OPF_VIEWMARK;
                Py_DECREF(nodes[i]);
            }
        }
        PyMem_Free(nodes);
    }
    for (Py_ssize_t i = 0; i < nold; i++) {
        Py_DECREF(old[i]);  // Beware: a foreign future's __del__ may run
    }
    PyMem_Free(old);
    Py_DECREF(items);
    return rc;
}

/* ------------------------------------------------------------------ the type */

FA_GC_REFS1(view, FaWaitView, owner)

/* the queue, or NULL with RuntimeError (a view the GC cleared) */
static fa_waitq *
view_q(PyObject *op)
{
    FaWaitView *v = (FaWaitView *)op;
    if (v->owner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "waiters view without its primitive");
        return NULL;
    }
    return v->q;
}

/* the futures, in order, as a new list */
static PyObject *
view_list(PyObject *op)
{
    fa_waitq *q = view_q(op);
    if (q == NULL) {
        return NULL;
    }
    PyObject *l = PyList_New(q->len);
    if (l == NULL) {
        return NULL;
    }
    Py_ssize_t i = 0;
    for (FaOp *o = q->head; o != NULL && i < q->len; o = o->next) {
        PyList_SET_ITEM(l, i++, Py_NewRef(o->fut));  /* no Python code runs in this loop */
    }
    return l;
}

static Py_ssize_t
view_len(PyObject *op)
{
    fa_waitq *q = view_q(op);
    return q == NULL ? -1 : q->len;
}

static PyObject *
view_item(PyObject *op, Py_ssize_t i)
{
    fa_waitq *q = view_q(op);
    if (q == NULL) {
        return NULL;
    }
    if (i < 0 || i >= q->len) {
        PyErr_SetString(PyExc_IndexError, "deque index out of range");
        return NULL;
    }
    FaOp *o;
    if (i < q->len / 2) {
        for (o = q->head; i-- > 0; o = o->next) {
        }
    }
    else {
        for (o = q->tail, i = q->len - 1 - i; i-- > 0; o = o->prev) {
        }
    }
    return Py_NewRef(o->fut);
}

/* node's future == x (identity first, as deque does with PyObject_RichCompareBool), holding
 * the node and its future across the comparison: 1, 0, -1. Beware: a foreign __eq__ may change
 * the queue; the caller checks its version afterwards (view_changed). */
static int
node_eq(FaOp *node, PyObject *x)
{
    FaOp *hold = (FaOp *)Py_NewRef(node);
    PyObject *fut = Py_NewRef(node->fut);
    int eq = PyObject_RichCompareBool(fut, x, Py_EQ);  // Beware: a foreign __eq__
    Py_DECREF(fut);
    Py_DECREF(hold);
    return eq;
}

/* Did the queue change since version was read? 1 with RuntimeError, as deque raises, or 0. */
static int
view_changed(fa_waitq *q, size_t version)
{
    if (version != q->version) {
        PyErr_SetString(PyExc_RuntimeError, "deque mutated during iteration");
        return 1;
    }
    return 0;
}

/* x in view: identity first, then ==, as deque's `in` (PyObject_RichCompareBool) */
static int
view_contains(PyObject *op, PyObject *x)
{
    fa_waitq *q = view_q(op);
    if (q == NULL) {
        return -1;
    }
    size_t version = q->version;
    for (FaOp *o = q->head; o != NULL; o = o->next) {
        int eq = node_eq(o, x);
        if (eq != 0) {
            return eq;
        }
        if (view_changed(q, version)) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
view_iter(PyObject *op)
{
    PyObject *l = view_list(op);
    if (l == NULL) {
        return NULL;
    }
    PyObject *it = PyObject_GetIter(l);
    Py_DECREF(l);
    return it;
}

static PyObject *
view_repr(PyObject *op)
{
    PyObject *l = view_list(op);
    if (l == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("deque(%R)", l);
    Py_DECREF(l);
    return r;
}

/* append (left 0) or appendleft (left 1) */
static PyObject *
view_push(PyObject *op, PyObject *fut, int left)
{
    fa_waitq *q = view_q(op);
    fa_state *st = q ? ((FaWaitView *)op)->st : NULL;
    if (st == NULL || push_foreign(st, q, fut, left) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
view_append(PyObject *op, PyObject *fut)
{
    return view_push(op, fut, 0);
}

static PyObject *
view_appendleft(PyObject *op, PyObject *fut)
{
    return view_push(op, fut, 1);
}

static PyObject *
view_extend(PyObject *op, PyObject *iterable)
{
    fa_waitq *q = view_q(op);
    fa_state *st = q ? ((FaWaitView *)op)->st : NULL;
    if (st == NULL) {
        return NULL;
    }
    PyObject *items = PySequence_List(iterable);  // new ref; Beware: the iterable's code
    if (items == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        if (push_foreign(st, q, PyList_GET_ITEM(items, i), 0) < 0) {
            Py_DECREF(items);
            return NULL;
        }
    }
    Py_DECREF(items);
    Py_RETURN_NONE;
}

/* unlink the node at one end and return its future (a new reference) */
static PyObject *
view_pop_end(PyObject *op, int left)
{
    fa_waitq *q = view_q(op);
    if (q == NULL) {
        return NULL;
    }
    FaOp *node = left ? q->head : q->tail;
    if (node == NULL) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty deque");
        return NULL;
    }
    Py_INCREF(node);
    fa_waitq_unlink(node);
    PyObject *fut = Py_NewRef(node->fut);
    Py_DECREF(node);  // Beware: a foreign node's last reference; its future lives on in fut
    return fut;
}

static PyObject *
view_popleft(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return view_pop_end(op, 1);
}

static PyObject *
view_pop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return view_pop_end(op, 0);
}

static PyObject *
view_remove(PyObject *op, PyObject *x)
{
    fa_waitq *q = view_q(op);
    if (q == NULL) {
        return NULL;
    }
    size_t version = q->version;
    for (FaOp *node = q->head; node != NULL; node = node->next) {
        FaOp *hold = (FaOp *)Py_NewRef(node);
        int eq = node_eq(node, x);
        if (eq < 0 || view_changed(q, version)) {
            Py_DECREF(hold);
            return NULL;
        }
        if (eq) {
            fa_waitq_unlink(hold);
            Py_DECREF(hold);  // Beware: a foreign node's future may be freed here
            Py_RETURN_NONE;
        }
        Py_DECREF(hold);
    }
#if FA_PY314
    PyErr_SetString(PyExc_ValueError, "deque.remove(x): x not in deque");  // deque's message
#else
    PyErr_Format(PyExc_ValueError, "%R is not in deque", x);
#endif
    return NULL;
}

static PyObject *
view_count(PyObject *op, PyObject *x)
{
    fa_waitq *q = view_q(op);
    if (q == NULL) {
        return NULL;
    }
    size_t version = q->version;
    Py_ssize_t n = 0;
    for (FaOp *node = q->head; node != NULL; node = node->next) {
        int eq = node_eq(node, x);
        if (eq < 0) {
            return NULL;
        }
        n += eq;
        if (view_changed(q, version)) {
            return NULL;
        }
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *
view_clear_m(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    fa_waitq *q = view_q(op);
    if (q == NULL) {
        return NULL;
    }
    fa_waitq_release_all(q);
    Py_RETURN_NONE;
}

static PyMethodDef view_methods[] = {
    {"append", view_append, METH_O, "append($self, future, /)\n--\n\nAdd a waiter at the back."},
    {"appendleft", view_appendleft, METH_O, "appendleft($self, future, /)\n--\n\nAdd a waiter "
     "at the front."},
    {"extend", view_extend, METH_O, "extend($self, iterable, /)\n--\n\nAdd waiters at the "
     "back."},
    {"pop", view_pop, METH_NOARGS, "pop($self, /)\n--\n\nRemove and return the last waiter's "
     "future."},
    {"popleft", view_popleft, METH_NOARGS, "popleft($self, /)\n--\n\nRemove and return the "
     "first waiter's future."},
    {"remove", view_remove, METH_O, "remove($self, future, /)\n--\n\nRemove the first waiter "
     "whose future == future."},
    {"count", view_count, METH_O, "count($self, future, /)\n--\n\nHow many waiters' futures "
     "== future."},
    {"clear", view_clear_m, METH_NOARGS, "clear($self, /)\n--\n\nRemove every waiter."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot view_slots[] = {
    {Py_tp_dealloc, fa_gc_tp_dealloc},
    {Py_tp_traverse, view_traverse},
    {Py_tp_clear, view_clear},
    {Py_tp_repr, view_repr},
    {Py_tp_iter, view_iter},
    {Py_sq_length, view_len},
    {Py_sq_item, view_item},
    {Py_sq_contains, view_contains},
    {Py_tp_methods, view_methods},
    {Py_tp_doc, "A live, deque-like view of a primitive's waiters (their futures)."},
    {0, NULL},
};

static PyType_Spec view_spec = {
    .name = "aiofast._core.Waiters",
    .basicsize = sizeof(FaWaitView),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
#ifdef Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = view_slots,
};

int
fa_waitview_init(PyObject *mod, fa_state *st)
{
    st->engine.WaitersViewType = (PyObject *)fa_new_type(mod, &view_spec, NULL, NULL);
    return st->engine.WaitersViewType == NULL ? -1 : 0;
}
