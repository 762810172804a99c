/*
 * method.c: FaMethod, the descriptor of every awaitable method (acquire, wait, put, get, join,
 * __aenter__, ...), and FaBound, the bound callable a special method caches on its instance.
 * See op.h for why they exist and for FaBound's ownership rules.
 *
 * Invariants:
 * - A descriptor's vectorcall matches its flags (METH_NOARGS, METH_O, METH_FASTCALL, with or
 *   without METH_KEYWORDS); the unbound call checks that the first argument is an instance of
 *   the type the descriptor was installed on before the C function sees it.
 * - proto is a Python `async def` with the method's signature, made once when the type is set
 *   up and never called: it only lends its __code__ (flagged CO_COROUTINE), __defaults__,
 *   __kwdefaults__ and __annotations__, so inspect sees a coroutine function.
 * - slot_offset != 0 only for special methods: the instance field there is NULL or an FaBound
 *   whose descr is this descriptor.
 */
#include "op.h"

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    fa_state *st;
    PyCFunction meth;
    int flags;                 /* METH_NOARGS, METH_O, METH_FASTCALL [| METH_KEYWORDS] */
    PyTypeObject *owner_type;  /* borrowed: the type holds us */
    Py_ssize_t slot_offset;    /* special methods: the instance's FaBound slot; else 0 */
    PyObject *name;            /* str */
    PyObject *qualname;        /* str, "Queue.put" */
    PyObject *doc;             /* str or None, without the text signature */
    PyObject *textsig;         /* str "($self, item, /)" or None */
    PyObject *proto;           /* the prototype async function */
    PyObject *kwparams;        /* METH_O/METH_FASTCALL whose parameters are not all positional-only
                                  (asyncio's `def put(self, item)`): their names, a tuple of str;
                                  else NULL (keywords refused) */
    Py_ssize_t posonly;        /* how many of kwparams are positional-only */
    Py_ssize_t nparams;        /* len(kwparams), or -1 without kwparams */
    PyObject *weakreflist;
} FaMethod;

typedef PyObject *(*fa_fastcall)(PyObject *, PyObject *const *, Py_ssize_t);
typedef PyObject *(*fa_fastcall_kw)(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);

static inline int
md_self_ok(FaMethod *d, PyObject *obj)
{
    return Py_IS_TYPE(obj, d->owner_type) || PyType_IsSubtype(Py_TYPE(obj), d->owner_type);
}

static int
md_type_error(FaMethod *d, PyObject *obj)
{
    PyErr_Format(PyExc_TypeError, "descriptor '%U' for '%s' objects doesn't apply to a '%s' "
                 "object", d->name, fa_type_name(d->owner_type), Py_TYPE(obj)->tp_name);
    return -1;
}

/* A method without METH_KEYWORDS called with keywords that name its parameters: bind them to
 * positions (Python's messages on a wrong call) and call it positionally. */
static FA_NOINLINE PyObject *
md_call_keywords(FaMethod *d, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    enum { MAX = 8 };  /* md_setup only sets kwparams for at most MAX parameters */
    const char *names[MAX];
    PyObject *bound[MAX];
    Py_ssize_t n = PyTuple_GET_SIZE(d->kwparams);
    for (Py_ssize_t i = 0; i < n; i++) {
        names[i] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(d->kwparams, i));
        if (names[i] == NULL) {
            return NULL;
        }
    }
    const char *qualname = PyUnicode_AsUTF8(d->qualname);
    if (qualname == NULL
        || fa_bind_slow(qualname, names, n, d->posonly, args, nargs, kwnames, bound) < 0) {
        return NULL;
    }
    if (d->flags == METH_O) {
        return d->meth(self, bound[0]);
    }
    return ((fa_fastcall)(void (*)(void))d->meth)(self, bound, n);
}

/* Call the C function with self and the rest of the arguments, checking them fully: the path
 * of every unusual call (errors, an empty kwnames tuple, ...). */
static FA_NOINLINE PyObject *
md_call_checked(FaMethod *d, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 0) {
        kwnames = NULL;
    }
    if (d->kwparams != NULL && (kwnames != NULL || nargs != PyTuple_GET_SIZE(d->kwparams))) {
        return md_call_keywords(d, self, args, nargs, kwnames);
    }
    if (kwnames != NULL && !(d->flags & METH_KEYWORDS)) {
        PyErr_Format(PyExc_TypeError, "%U() takes no keyword arguments", d->qualname);
        return NULL;
    }
    switch (d->flags) {
    case METH_NOARGS:
        if (nargs != 0) {
            PyErr_Format(PyExc_TypeError, "%U() takes no arguments (%zd given)", d->qualname,
                         nargs);
            return NULL;
        }
        return d->meth(self, NULL);
    case METH_O:
        if (nargs != 1) {
            PyErr_Format(PyExc_TypeError, "%U() takes exactly one argument (%zd given)",
                         d->qualname, nargs);
            return NULL;
        }
        return d->meth(self, args[0]);
    case METH_FASTCALL:
        return ((fa_fastcall)(void (*)(void))d->meth)(self, args, nargs);
    default:
        return ((fa_fastcall_kw)(void (*)(void))d->meth)(self, args, nargs, kwnames);
    }
}

/* The unbound call, Queue.put(q, x), and `q.put(x)` through LOAD_METHOD / CALL. */
static FA_NOINLINE PyObject *
md_call_slow(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FaMethod *d = (FaMethod *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "unbound method %U() needs an argument", d->qualname);
        return NULL;
    }
    if (!md_self_ok(d, args[0])) {
        md_type_error(d, args[0]);
        return NULL;
    }
    return md_call_checked(d, args[0], args + 1, nargs - 1, kwnames);
}

static PyObject *
md_call_noargs(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FaMethod *d = (FaMethod *)callable;
    if (FA_LIKELY(PyVectorcall_NARGS(nargsf) == 1 && kwnames == NULL && md_self_ok(d, args[0]))) {
        return d->meth(args[0], NULL);
    }
    return md_call_slow(callable, args, nargsf, kwnames);
}

static PyObject *
md_call_o(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FaMethod *d = (FaMethod *)callable;
    if (FA_LIKELY(PyVectorcall_NARGS(nargsf) == 2 && kwnames == NULL && md_self_ok(d, args[0]))) {
        return d->meth(args[0], args[1]);
    }
    return md_call_slow(callable, args, nargsf, kwnames);
}

static PyObject *
md_call_fast(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FaMethod *d = (FaMethod *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (FA_LIKELY(nargs >= 1 && kwnames == NULL && md_self_ok(d, args[0]))) {
        return ((fa_fastcall)(void (*)(void))d->meth)(args[0], args + 1, nargs - 1);
    }
    return md_call_slow(callable, args, nargsf, kwnames);
}

static PyObject *
md_call_fast_kw(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FaMethod *d = (FaMethod *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (FA_LIKELY(nargs >= 1 && md_self_ok(d, args[0]))) {
        return ((fa_fastcall_kw)(void (*)(void))d->meth)(args[0], args + 1, nargs - 1, kwnames);
    }
    return md_call_slow(callable, args, nargsf, kwnames);
}

/* ------------------------------------------------------------------ FaBound */

static inline PyObject **
special_slot(FaMethod *d, PyObject *obj)
{
    return (PyObject **)((char *)obj + d->slot_offset);
}

static PyObject *
bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FaBound *b = (FaBound *)callable;
    FaMethod *d = (FaMethod *)b->descr;
    PyObject *owner = b->owner;
    if (FA_UNLIKELY(owner == NULL)) {
        PyErr_Format(PyExc_ReferenceError, "the object %U was bound to no longer exists",
                     d->qualname);
        return NULL;
    }
    Py_INCREF(owner);
    PyObject *r;
    if (FA_LIKELY(kwnames == NULL && d->flags == METH_FASTCALL
                  && (d->nparams < 0 || PyVectorcall_NARGS(nargsf) == d->nparams))) {
        r = ((fa_fastcall)(void (*)(void))d->meth)(owner, args, PyVectorcall_NARGS(nargsf));
    }
    else {
        r = md_call_checked(d, owner, args, PyVectorcall_NARGS(nargsf), kwnames);
    }
    /* Only the caller and the instance's slot hold us: the caller drops its reference right
     * after this call, so give up ours on the instance (whatever we returned holds it). */
    if (b->owns && Py_REFCNT(b) <= 2) {
        b->owns = 0;
        Py_DECREF(owner);
    }
    Py_DECREF(owner);  // Beware: may free the instance, which clears b->owner
    return r;
}

static int
bound_traverse(PyObject *self, visitproc visit, void *arg)
{
    FaBound *b = (FaBound *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(b->descr);
    if (b->owns) {
        Py_VISIT(b->owner);
    }
    return 0;
}

static int
bound_clear(PyObject *self)
{
    FaBound *b = (FaBound *)self;
    if (b->owns) {
        b->owns = 0;
        PyObject *o = b->owner;
        b->owner = NULL;
        Py_DECREF(o);
    }
    Py_CLEAR(b->descr);
    return 0;
}

static void
bound_dealloc(PyObject *self)
{
    fa_gc_dealloc(self, bound_clear);
}

static PyObject *
bound_repr(PyObject *self)
{
    FaBound *b = (FaBound *)self;
    FaMethod *d = (FaMethod *)b->descr;
    if (b->owner == NULL) {
        return PyUnicode_FromFormat("<bound method %U of a deleted object>", d->qualname);
    }
    return PyUnicode_FromFormat("<bound method %U of %R>", d->qualname, b->owner);
}

/* Anything else (__code__, __defaults__, __text_signature__, ...) is the function's, as for a
 * bound method. */
static PyObject *
bound_getattro(PyObject *self, PyObject *name)
{
    PyObject *r = PyObject_GenericGetAttr(self, name);
    if (r == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        r = PyObject_GetAttr(((FaBound *)self)->descr, name);
    }
    return r;
}

static PyObject *
bound_get_self(PyObject *self, void *Py_UNUSED(c))
{
    FaBound *b = (FaBound *)self;
    return Py_NewRef(b->owner ? b->owner : Py_None);
}

static PyObject *
bound_get_func(PyObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef(((FaBound *)self)->descr);
}

static PyObject *
bound_forward(PyObject *self, void *name)
{
    return PyObject_GetAttrString(((FaBound *)self)->descr, (const char *)name);
}

/* (getattr, (obj, name)): what pickle calls to get the attribute back */
static PyObject *
reduce_to_getattr(PyObject *obj, PyObject *name)
{
    PyObject *builtins = PyEval_GetBuiltins();  // borrowed
    PyObject *getattr = builtins ? PyDict_GetItemString(builtins, "getattr") : NULL;
    if (getattr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "builtins.getattr is missing");
        return NULL;
    }
    return Py_BuildValue("O(OO)", getattr, obj, name);
}

/* pickled as getattr(instance, name), as bound methods are */
static PyObject *
bound_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    FaBound *b = (FaBound *)self;
    if (b->owner == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "the bound object no longer exists");
        return NULL;
    }
    return reduce_to_getattr(b->owner, ((FaMethod *)b->descr)->name);
}

static PyMethodDef bound_methods[] = {
    {"__reduce__", bound_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bound_getset[] = {
    {"__self__", bound_get_self, NULL, NULL, NULL},
    {"__func__", bound_get_func, NULL, NULL, NULL},
    {"__name__", bound_forward, NULL, NULL, "__name__"},
    {"__qualname__", bound_forward, NULL, NULL, "__qualname__"},
    {"__doc__", bound_forward, NULL, NULL, "__doc__"},
    {"__module__", bound_forward, NULL, NULL, "__module__"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef bound_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(FaBound, vectorcall), Py_READONLY, NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(FaBound, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot bound_slots[] = {
    {Py_tp_dealloc, bound_dealloc},
    {Py_tp_traverse, bound_traverse},
    {Py_tp_clear, bound_clear},
    {Py_tp_repr, bound_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_getattro, bound_getattro},
    {Py_tp_methods, bound_methods},
    {Py_tp_getset, bound_getset},
    {Py_tp_members, bound_members},
    {0, NULL},
};

static PyType_Spec bound_spec = {
    .name = "aiofast._core.BoundSpecial",
    .basicsize = sizeof(FaBound),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = bound_slots,
};

/* ------------------------------------------------------------------ FaMethod */

/* The FaBound cached on obj, made on first use. */
static PyObject *
special_get(FaMethod *d, PyObject *obj)
{
    PyObject **slot = special_slot(d, obj);
    FaBound *b = (FaBound *)*slot;
    if (FA_LIKELY(b != NULL)) {
        if (!b->owns) {
            b->owns = 1;
            Py_INCREF(obj);
        }
        return Py_NewRef(b);
    }
    b = PyObject_GC_New(FaBound, d->st->engine.BoundType);
    if (b == NULL) {
        return NULL;
    }
    b->vectorcall = bound_vectorcall;
    b->owner = Py_NewRef(obj);
    b->owns = 1;
    b->descr = Py_NewRef((PyObject *)d);
    b->weakreflist = NULL;
    PyObject_GC_Track(b);
    *slot = Py_NewRef(b);
    return (PyObject *)b;
}

static PyObject *
md_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    FaMethod *d = (FaMethod *)self;
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);  // Queue.put: the function itself
    }
    if (!md_self_ok(d, obj)) {
        md_type_error(d, obj);
        return NULL;
    }
    if (d->slot_offset != 0) {
        return special_get(d, obj);
    }
    return PyMethod_New(self, obj);  // q.put: a bound method, as for an `async def`
}

static PyObject *
md_repr(PyObject *self)
{
    FaMethod *d = (FaMethod *)self;
    return PyUnicode_FromFormat("<method '%U' of '%s' objects>", d->name,
                                fa_type_name(d->owner_type));
}

static PyObject *
md_get_field(PyObject *self, void *closure)
{
    return Py_NewRef(*(PyObject **)((char *)self + (Py_ssize_t)closure));
}

static PyObject *
md_get_objclass(PyObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef((PyObject *)((FaMethod *)self)->owner_type);
}

static PyObject *
md_get_module(PyObject *self, void *Py_UNUSED(c))
{
    return PyObject_GetAttrString((PyObject *)((FaMethod *)self)->owner_type, "__module__");
}

static PyObject *
md_from_proto(PyObject *self, void *name)
{
    return PyObject_GetAttrString(((FaMethod *)self)->proto, (const char *)name);
}

#if FA_PY312
static PyObject *
md_get_mark(PyObject *self, void *Py_UNUSED(c))
{
    PyObject *mark = ((FaMethod *)self)->st->engine.coro_mark;
    if (mark == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_is_coroutine_marker");
        return NULL;
    }
    return Py_NewRef(mark);
}
#endif

/* pickled by reference, as getattr(type, name) (functions pickle by qualified name) */
static PyObject *
md_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    FaMethod *d = (FaMethod *)self;
    return reduce_to_getattr((PyObject *)d->owner_type, d->name);
}

#define MD_FIELD(f) ((void *)offsetof(FaMethod, f))

static PyGetSetDef md_getset[] = {
    {"__name__", md_get_field, NULL, NULL, MD_FIELD(name)},
    {"__qualname__", md_get_field, NULL, NULL, MD_FIELD(qualname)},
    {"__doc__", md_get_field, NULL, NULL, MD_FIELD(doc)},
    {"__text_signature__", md_get_field, NULL, NULL, MD_FIELD(textsig)},
    {"__objclass__", md_get_objclass, NULL, NULL, NULL},
    {"__module__", md_get_module, NULL, NULL, NULL},
    /* function-like for inspect (_signature_is_functionlike): iscoroutinefunction() reads
     * __code__.co_flags on every version */
    {"__code__", md_from_proto, NULL, NULL, "__code__"},
    {"__defaults__", md_from_proto, NULL, NULL, "__defaults__"},
    {"__kwdefaults__", md_from_proto, NULL, NULL, "__kwdefaults__"},
    {"__annotations__", md_from_proto, NULL, NULL, "__annotations__"},
    {"__globals__", md_from_proto, NULL, NULL, "__globals__"},
#if FA_PY312
    {"_is_coroutine_marker", md_get_mark, NULL, NULL, NULL},
#endif
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef md_methods[] = {
    {"__reduce__", md_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef md_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(FaMethod, vectorcall), Py_READONLY, NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(FaMethod, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static int
md_traverse(PyObject *self, visitproc visit, void *arg)
{
    FaMethod *d = (FaMethod *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(d->proto);
    return 0;
}

static int
md_clear(PyObject *self)
{
    Py_CLEAR(((FaMethod *)self)->proto);
    return 0;
}

static void
md_dealloc(PyObject *self)
{
    FaMethod *d = (FaMethod *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (d->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    md_clear(self);
    Py_CLEAR(d->kwparams);
    Py_CLEAR(d->name);
    Py_CLEAR(d->qualname);
    Py_CLEAR(d->doc);
    Py_CLEAR(d->textsig);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot md_slots[] = {
    {Py_tp_dealloc, md_dealloc},
    {Py_tp_traverse, md_traverse},
    {Py_tp_clear, md_clear},
    {Py_tp_repr, md_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, md_get},
    {Py_tp_getset, md_getset},
    {Py_tp_methods, md_methods},
    {Py_tp_members, md_members},
    {0, NULL},
};

static PyType_Spec md_spec = {
    .name = "aiofast._core.AsyncMethod",
    .basicsize = sizeof(FaMethod),
    /* immutable: CPython's specializer only caches descriptors of immutable types
     * (LOAD_ATTR_METHOD_*: `obj.put(x)` then skips the method lookup) */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = md_slots,
};

/* Split "put($self, item, /)\n--\n\nDoc." into the text signature "($self, item, /)" and the
 * doc, and make the prototype `async def put(self, item, /): pass` (qualname, module and doc
 * set), whose code is flagged CO_COROUTINE. */
/* kwparams and posonly from the prototype's code: set when the method takes a fixed number of
 * required parameters (no defaults, no *args) that are not all positional-only. */
static int
md_keyword_params(FaMethod *d)
{
    PyObject *code = PyObject_GetAttrString(d->proto, "__code__");
    PyObject *names = code ? PyObject_GetAttrString(code, "co_varnames") : NULL;
    PyObject *argc = code ? PyObject_GetAttrString(code, "co_argcount") : NULL;
    PyObject *posc = code ? PyObject_GetAttrString(code, "co_posonlyargcount") : NULL;
    PyObject *flags = code ? PyObject_GetAttrString(code, "co_flags") : NULL;
    PyObject *defaults = PyObject_GetAttrString(d->proto, "__defaults__");
    int rc = -1;
    if (names == NULL || argc == NULL || posc == NULL || flags == NULL || defaults == NULL) {
        goto done;
    }
    Py_ssize_t n = PyLong_AsSsize_t(argc) - 1, posonly = PyLong_AsSsize_t(posc) - 1;
    long f = PyLong_AsLong(flags);
    if (PyErr_Occurred()) {
        goto done;
    }
    rc = 0;
    if (n >= 1 && n <= 8 && posonly < n && defaults == Py_None
        && !(f & (CO_VARARGS | CO_VARKEYWORDS)) && (d->flags != METH_O || n == 1)) {
        d->kwparams = PyTuple_GetSlice(names, 1, n + 1);
        d->posonly = posonly < 0 ? 0 : posonly;
        d->nparams = n;
        rc = d->kwparams ? 0 : -1;
    }
done:
    Py_XDECREF(code);
    Py_XDECREF(names);
    Py_XDECREF(argc);
    Py_XDECREF(posc);
    Py_XDECREF(flags);
    Py_XDECREF(defaults);
    return rc;
}

static int
md_setup(FaMethod *d, const char *doc)
{
    const char *sig = NULL, *sig_end = NULL, *body = doc;
    size_t nlen = strlen(PyUnicode_AsUTF8(d->name));
    if (doc != NULL && strncmp(doc, PyUnicode_AsUTF8(d->name), nlen) == 0 && doc[nlen] == '(') {
        const char *end = strstr(doc, ")\n--\n\n");
        if (end != NULL) {
            sig = doc + nlen;
            sig_end = end + 1;
            body = end + 6;
        }
    }
    d->doc = body ? PyUnicode_FromString(body) : Py_NewRef(Py_None);
    d->textsig = sig ? PyUnicode_FromStringAndSize(sig, sig_end - sig) : Py_NewRef(Py_None);
    if (d->doc == NULL || d->textsig == NULL) {
        return -1;
    }
    PyObject *params = NULL, *src = NULL, *code = NULL, *globals = NULL, *r = NULL, *mod = NULL;
    int rc = -1;
    if (sig != NULL) {
        PyObject *dollar = PyUnicode_FromString("$");
        PyObject *empty = PyUnicode_FromString("");
        params = dollar && empty ? PyUnicode_Replace(d->textsig, dollar, empty, -1) : NULL;
        Py_XDECREF(dollar);
        Py_XDECREF(empty);
    }
    else {
        params = PyUnicode_FromString("(self, /, *args, **kwargs)");
    }
    if (params == NULL) {
        goto done;
    }
    src = PyUnicode_FromFormat("async def %U%U:\n    pass\n", d->name, params);
    if (src == NULL) {
        goto done;
    }
    code = Py_CompileString(PyUnicode_AsUTF8(src), "<aiofast>", Py_file_input);
    globals = PyDict_New();
    if (code == NULL || globals == NULL
        || PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) < 0) {
        goto done;
    }
    r = PyEval_EvalCode(code, globals, globals);
    if (r == NULL) {
        goto done;
    }
    d->proto = Py_XNewRef(PyDict_GetItemWithError(globals, d->name));
    if (d->proto == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_SystemError, "aiofast: prototype function missing");
        }
        goto done;
    }
    if ((d->flags == METH_O || d->flags == METH_FASTCALL) && md_keyword_params(d) < 0) {
        goto done;
    }
    mod = PyObject_GetAttrString((PyObject *)d->owner_type, "__module__");
    if (mod == NULL || PyObject_SetAttrString(d->proto, "__qualname__", d->qualname) < 0
        || PyObject_SetAttrString(d->proto, "__module__", mod) < 0
        || PyObject_SetAttrString(d->proto, "__doc__", d->doc) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(params);
    Py_XDECREF(src);
    Py_XDECREF(code);
    Py_XDECREF(globals);
    Py_XDECREF(r);
    Py_XDECREF(mod);
    return rc;
}

static int
md_add(fa_state *st, PyTypeObject *tp, const char *name, PyCFunction meth, int flags,
       Py_ssize_t slot_offset, const char *doc)
{
    vectorcallfunc vc;
    switch (flags) {
    case METH_NOARGS:
        vc = md_call_noargs;
        break;
    case METH_O:
        vc = md_call_o;
        break;
    case METH_FASTCALL:
        vc = md_call_fast;
        break;
    case METH_FASTCALL | METH_KEYWORDS:
        vc = md_call_fast_kw;
        break;
    default:
        PyErr_Format(PyExc_SystemError, "aiofast: awaitable method %s has flags %#x", name,
                     (unsigned)flags);
        return -1;
    }
    FaMethod *d = PyObject_GC_New(FaMethod, st->engine.SpecialDescrType);
    if (d == NULL) {
        return -1;
    }
    d->vectorcall = vc;
    d->st = st;
    d->meth = meth;
    d->flags = flags;
    d->owner_type = tp;
    d->slot_offset = slot_offset;
    d->name = PyUnicode_InternFromString(name);
    d->qualname = PyUnicode_FromFormat("%s.%s", fa_type_name(tp), name);
    d->doc = d->textsig = d->proto = d->kwparams = NULL;
    d->posonly = 0;
    d->nparams = -1;
    d->weakreflist = NULL;
    PyObject_GC_Track(d);
    int rc = -1;
    if (d->name != NULL && d->qualname != NULL && md_setup(d, doc) == 0) {
        rc = PyObject_SetAttr((PyObject *)tp, d->name, (PyObject *)d);
    }
    Py_DECREF(d);
    return rc;
}

int
fa_methods_add(fa_state *st, PyTypeObject *tp, PyMethodDef *defs)
{
    for (PyMethodDef *m = defs; m->ml_name != NULL; m++) {
        if (md_add(st, tp, m->ml_name, m->ml_meth, m->ml_flags, 0, m->ml_doc) < 0) {
            return -1;
        }
    }
    return 0;
}

int
fa_special_add(fa_state *st, PyTypeObject *tp, const char *name, fa_special_impl impl,
               Py_ssize_t slot_offset, const char *doc)
{
    assert(slot_offset > 0);
    return md_add(st, tp, name, (PyCFunction)(void (*)(void))impl, METH_FASTCALL, slot_offset,
                  doc);
}

void
fa_special_clear(PyObject *self, PyObject **slot)
{
    FaBound *b = (FaBound *)*slot;
    if (b == NULL) {
        return;
    }
    *slot = NULL;
    if (b->owner == self) {
        if (b->owns) {
            /* only from a GC clear: the collector holds self for the duration */
            b->owns = 0;
            b->owner = NULL;
            Py_DECREF(self);
        }
        else {
            b->owner = NULL;
        }
    }
    Py_DECREF(b);
}

int
fa_method_init(PyObject *mod, fa_state *st)
{
    st->engine.SpecialDescrType = fa_new_type(mod, &md_spec, NULL, NULL);
    if (st->engine.SpecialDescrType == NULL) {
        return -1;
    }
    st->engine.BoundType = fa_new_type(mod, &bound_spec, NULL, NULL);
    if (st->engine.BoundType == NULL) {
        return -1;
    }
#if FA_PY312
    /* inspect.markcoroutinefunction's marker: ours too (asyncio imports inspect anyway). The
     * marker object's name in inspect changed between versions: take it from a marked function */
    PyObject *globals = PyDict_New();
    PyObject *r = globals ? PyRun_String("import inspect\n"
                                         "def f(): pass\n"
                                         "mark = inspect.markcoroutinefunction(f)"
                                         "._is_coroutine_marker\n",
                                         Py_file_input, globals, globals)
                          : NULL;
    Py_XDECREF(r);
    st->engine.coro_mark = r ? PyDict_GetItemString(globals, "mark") : NULL;
    Py_XINCREF(st->engine.coro_mark);
    Py_XDECREF(globals);
    if (st->engine.coro_mark == NULL) {
        PyErr_Clear();  // gone in some future Python: __code__ still says it all
    }
#endif
    return 0;
}
