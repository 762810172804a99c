/*
 * prio.c: the part of PriorityQueue's heap that runs Python code (prio.h states the invariants):
 * comparisons the native path could not decide, and the proof that a class's __lt__ is the one
 * @dataclass(order=True) generates, with its per-type cache. Also the debug builds' heap-order
 * check.
 */
#include "prio.h"

#if FA_DEBUG
/* Is the heap in order, as far as can be told without running Python code (ints, floats and
 * tuples whose first elements differ; NaN anywhere makes the order undefined)? 1 or 0. Code
 * may edit q._queue directly, so "in order" is checked by queue.c's checker only while the list has
 * never been seen by Python code (exposed == 0), and otherwise "in order before an operation
 * => in order after" (fa_prio_push/fa_prio_pop in debug builds). Items of other types (a hostile
 * __lt__ among them) are never compared here. */
int
fa_prio_in_order(PyObject *heap)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(heap, i);
        if (PyTuple_CheckExact(a) && PyTuple_GET_SIZE(a) > 0) {
            a = PyTuple_GET_ITEM(a, 0);
        }
        if (PyFloat_CheckExact(a) && isnan(PyFloat_AS_DOUBLE(a))) {
            return 1;  /* undefined: nothing to check */
        }
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(heap, i);
        PyObject *b = PyList_GET_ITEM(heap, (i - 1) >> 1);
        int c;
        if (PyTuple_CheckExact(a) && PyTuple_CheckExact(b) && PyTuple_GET_SIZE(a) > 0
            && PyTuple_GET_SIZE(b) > 0) {
            c = fa_prio_num_cmp(PyTuple_GET_ITEM(a, 0), PyTuple_GET_ITEM(b, 0));
        }
        else {
            c = fa_prio_num_cmp(a, b);
        }
        if (c == -1) {
            return 0;  /* a child less than its parent */
        }
    }
    return 1;
}
#endif

/* v < w for sequences of items, exactly as tuple comparison does it (first item that is not
 * identical or ==, then < on it, else the lengths), with ints and floats compared natively.
 * The caller holds the containers of the items. 1, 0, -1. */
static int
prio_items_lt(PyObject *const *v, Py_ssize_t vlen, PyObject *const *w, Py_ssize_t wlen)
{
    Py_ssize_t i;
    for (i = 0; i < vlen && i < wlen; i++) {
        PyObject *x = v[i], *y = w[i];
        if (x == y) {
            continue;
        }
        int c = fa_prio_num_cmp(x, y);
        if (c == 0) {
            continue;
        }
        if (c != 2) {
            return c < 0;
        }
        int eq = PyObject_RichCompareBool(x, y, Py_EQ);  // Beware: user __eq__
        if (eq < 0) {
            return -1;
        }
        if (!eq) {
            return PyObject_RichCompareBool(x, y, Py_LT);  // Beware: user __lt__
        }
    }
    return vlen < wlen;
}

/* The code object of dataclasses' generated __lt__ for a class of k compared fields. */
static PyObject *
dc_ref_code(fa_state *st, Py_ssize_t k)
{
    PyObject *key = PyLong_FromSsize_t(k);
    if (key == NULL) {
        return NULL;
    }
    PyObject *code = PyDict_GetItemWithError(st->queue.dc_refs, key);  // borrowed
    if (code != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        return code;
    }
    PyObject *names = NULL, *mod = NULL, *cls = NULL, *lt = NULL;
    names = PyList_New(k);
    if (names == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *s = PyUnicode_FromFormat("f%zd", i);
        if (s == NULL) {
            goto done;
        }
        PyList_SET_ITEM(names, i, s);
    }
    mod = PyImport_ImportModule("dataclasses");
    if (mod == NULL) {
        goto done;
    }
    PyObject *mk = PyObject_GetAttrString(mod, "make_dataclass");  // new ref
    if (mk == NULL) {
        goto done;
    }
    PyObject *args = Py_BuildValue("(sO)", "_AiofastProbe", names);
    PyObject *kw = Py_BuildValue("{sO}", "order", Py_True);
    if (args != NULL && kw != NULL) {
        cls = PyObject_Call(mk, args, kw);
    }
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_DECREF(mk);
    if (cls == NULL) {
        goto done;
    }
    lt = PyObject_GetAttr(cls, st->queue.str_lt);
    if (lt == NULL) {
        goto done;
    }
    if (!PyFunction_Check(lt)) {
        PyErr_SetString(PyExc_TypeError, "dataclasses made a __lt__ that is not a function");
        goto done;
    }
    if (PyDict_SetItem(st->queue.dc_refs, key, PyFunction_GET_CODE(lt)) == 0) {
        code = PyFunction_GET_CODE(lt);  // borrowed, now held by the dict
    }
done:
    Py_DECREF(key);
    Py_XDECREF(names);
    Py_XDECREF(mod);
    Py_XDECREF(cls);
    Py_XDECREF(lt);
    return code;
}

static int
attr_equal(PyObject *a, PyObject *b, const char *name)
{
    PyObject *x = PyObject_GetAttrString(a, name);
    if (x == NULL) {
        return -1;
    }
    PyObject *y = PyObject_GetAttrString(b, name);
    if (y == NULL) {
        Py_DECREF(x);
        return -1;
    }
    int r = PyObject_RichCompareBool(x, y, Py_EQ);
    Py_DECREF(x);
    Py_DECREF(y);
    return r;
}

/* If lt is dataclasses' generated __lt__ (its code is the very code dataclasses generates for
 * that many fields), a new reference to the tuple of compared field names; else None. The
 * generated function is `if other.__class__ is self.__class__: return (self.f1, ...) <
 * (other.f1, ...); return NotImplemented`, so for two items of the same type the comparison is
 * the tuples' (attributes read self first, then other, as the tuple displays do). */
static PyObject *
dc_examine(fa_state *st, PyTypeObject *tp, PyObject *lt)
{
    if (!PyFunction_Check(lt) || tp->tp_getattro != PyObject_GenericGetAttr
        || fa_type_lookup(tp, st->queue.str_class) != st->queue.object_class
        || PyFunction_GET_DEFAULTS(lt) != NULL || PyFunction_GET_KW_DEFAULTS(lt) != NULL
        || PyFunction_GET_CLOSURE(lt) != NULL) {
        Py_RETURN_NONE;
    }
    PyObject *code = PyFunction_GET_CODE(lt);  // borrowed
    PyObject *names = PyObject_GetAttrString(code, "co_names");  // new ref
    if (names == NULL) {
        return NULL;
    }
    PyObject *res = NULL;
    Py_ssize_t n = PyTuple_Check(names) ? PyTuple_GET_SIZE(names) : 0;
    if (n < 2 || !PyUnicode_Check(PyTuple_GET_ITEM(names, 0))
        || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(names, 0), "__class__") != 0
        || !PyUnicode_Check(PyTuple_GET_ITEM(names, n - 1))
        || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(names, n - 1), "NotImplemented")
               != 0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *ref = dc_ref_code(st, n - 2);  // borrowed
    if (ref == NULL) {
        goto done;
    }
    static const char *const same[] = {"co_code", "co_consts", "co_varnames", "co_argcount",
                                       "co_kwonlyargcount", "co_flags"};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        int eq = attr_equal(code, ref, same[i]);
        if (eq < 0) {
            goto done;
        }
        if (!eq) {
            res = Py_NewRef(Py_None);
            goto done;
        }
    }
    res = PyTuple_GetSlice(names, 1, n - 1);
done:
    Py_DECREF(names);
    return res;
}

/* The compared fields of items of type tp when their __lt__ is dataclasses' own: a borrowed
 * tuple, NULL with no error when not applicable, NULL with an error. */
static PyObject *
dc_fields(fa_prio_heap *h, PyTypeObject *tp)
{
    fa_state *st = h->st;
    fa_prio_dc *dc = h->dc;
    if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE) || tp->tp_getattro != PyObject_GenericGetAttr) {
        return NULL;
    }
    PyObject *lt = fa_type_lookup(tp, st->queue.str_lt);  // borrowed
    if (lt == NULL) {
        return NULL;
    }
    if ((PyObject *)tp != dc->type || lt != dc->lt) {
        Py_INCREF(lt);  // hold it across dc_examine, which imports and calls Python code
        PyObject *fields = dc_examine(st, tp, lt);  // new ref
        if (fields == NULL) {
            Py_DECREF(lt);
            return NULL;
        }
        Py_XSETREF(dc->type, Py_NewRef((PyObject *)tp));
        Py_XSETREF(dc->lt, lt);
        Py_XSETREF(dc->fields, fields);
        if (fa_type_lookup(tp, st->queue.str_lt) != lt) {
            return NULL;  // the class changed meanwhile: compare the slow way this time
        }
    }
    return dc->fields == Py_None ? NULL : dc->fields;
}

/* a < b for two items of a dataclass type whose compared fields are `fields`; 1, 0, -1 */
static int
dc_lt(PyObject *a, PyObject *b, PyObject *fields)
{
    Py_ssize_t k = PyTuple_GET_SIZE(fields);
    PyObject *stack[16];
    PyObject **vals = k <= 8 ? stack : PyMem_Malloc(sizeof(PyObject *) * (size_t)(2 * k + 1));
    if (vals == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t got = 0;
    int r = -1;
    for (Py_ssize_t i = 0; i < 2 * k; i++) {
        PyObject *obj = i < k ? a : b;
        vals[i] = PyObject_GetAttr(obj, PyTuple_GET_ITEM(fields, i % k));  // Beware: descriptors
        if (vals[i] == NULL) {
            goto done;
        }
        got++;
    }
    r = prio_items_lt(vals, k, vals + k, k);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        Py_DECREF(vals[i]);
    }
    if (vals != stack) {
        PyMem_Free(vals);
    }
    return r;
}

/* fa_prio_lt when the native comparison could not tell: ties, other types. */
FA_NOINLINE int
fa_prio_lt_slow(fa_prio_heap *h, PyObject *a, PyObject *b, int *py)
{
    PyTypeObject *ta = Py_TYPE(a);
    int r;
    *py = 1;
    Py_INCREF(a);
    Py_INCREF(b);
    if (ta == &PyTuple_Type && Py_IS_TYPE(b, &PyTuple_Type)) {
        r = prio_items_lt(&PyTuple_GET_ITEM(a, 0), PyTuple_GET_SIZE(a), &PyTuple_GET_ITEM(b, 0),
                     PyTuple_GET_SIZE(b));
    }
    else {
        PyObject *fields = ta == Py_TYPE(b) ? dc_fields(h, ta) : NULL;  // borrowed
        if (fields != NULL) {
            Py_INCREF(fields);
            r = dc_lt(a, b, fields);
            Py_DECREF(fields);
        }
        else if (PyErr_Occurred()) {
            r = -1;
        }
        else {
            r = PyObject_RichCompareBool(a, b, Py_LT);  // Beware: user __lt__
        }
    }
    Py_DECREF(a);
    Py_DECREF(b);
    return r;
}
