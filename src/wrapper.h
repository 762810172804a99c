/*
 * wrapper.h: the shared base of the decorated-function wrappers (engine layer). What
 * `@breaker`, `@bucket` and `@cached` return (BreakerFunction, RateLimited, Memo) is a C object
 * that stands for the function it wraps; this is the part they have in common:
 *
 * - the layout: FA_WRAPPER_HEAD first in the instance struct (the vectorcall entry point, the
 *   wrapped callable, the instance __dict__ that functools.update_wrapper fills, the weakref
 *   list), so one traverse, clear, dealloc and one members table serve every wrapper type;
 * - binding: as a function, a wrapper read from an instance is a bound method (fa_wrapper_get);
 *   the type flags FA_WRAPPER_TPFLAGS let `obj.f(x)` skip making it;
 * - the metadata: fa_wrapper_finish runs functools.update_wrapper (__wrapped__, __name__,
 *   __qualname__, __doc__, __module__, annotations, the wrapped __dict__) and marks the wrapper
 *   as a coroutine function for inspect and asyncio when asked to;
 * - annotations as a function has them from 3.14 (FA_WRAPPER_GETSET, below).
 *
 * The per-family part (what a call does, repr, extra attributes, pickling) stays in the family.
 *
 * Invariants: func is set (strong) from construction until tp_clear; dict is NULL or a dict
 * owned by the instance; a family's tp_clear calls fa_wrapper_clear, its tp_traverse
 * fa_wrapper_traverse, and its tp_dealloc is fa_wrapper_dealloc (which runs the type's tp_clear).
 */
#ifndef FA_WRAPPER_H
#define FA_WRAPPER_H

#include "aiofast.h"

#define FA_WRAPPER_HEAD \
    PyObject_HEAD \
    vectorcallfunc vectorcall;  /* the call: the family's */ \
    PyObject *func;             /* the wrapped callable, strong */ \
    PyObject *dict;             /* the instance __dict__, or NULL before first use */ \
    PyObject *weakreflist;

typedef struct {
    FA_WRAPPER_HEAD
} fa_wrapper;

/* The flags of every wrapper type (a family adds its own: DISALLOW_INSTANTIATION, ...):
 * vectorcall, and METHOD_DESCRIPTOR since fa_wrapper_get makes a plain bound method. */
#define FA_WRAPPER_TPFLAGS \
    (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL \
     | Py_TPFLAGS_METHOD_DESCRIPTOR)

/* Fill the head of a wrapper that was just allocated (its GC tracking is the caller's). */
static inline void
fa_wrapper_init(PyObject *self, PyObject *func, vectorcallfunc vectorcall)
{
    fa_wrapper *w = (fa_wrapper *)self;
    w->vectorcall = vectorcall;
    w->func = Py_NewRef(func);
    w->dict = NULL;
    w->weakreflist = NULL;
}

/* For the family's tp_traverse / tp_clear: the type, func and dict. */
int fa_wrapper_traverse(PyObject *self, visitproc visit, void *arg);
void fa_wrapper_clear(PyObject *self);

/* tp_dealloc of every wrapper type: untrack, clear the weakrefs, run the type's tp_clear, free,
 * then release the type. */
void fa_wrapper_dealloc(PyObject *self);

/* tp_descr_get: the wrapper itself from the class, a bound method (types.MethodType) from an
 * instance, as a function. */
PyObject *fa_wrapper_get(PyObject *self, PyObject *obj, PyObject *type);

/* The name a repr shows: obj.__qualname__, or repr(func) when obj has none (new ref). */
PyObject *fa_wrapper_qualname(PyObject *obj, PyObject *func);

/* How fa_wrapper_finish marks the wrapper as a coroutine function (inspect's marker from 3.12,
 * asyncio's _is_coroutine while asyncio has it). */
enum {
    FA_WRAP_PLAIN = 0,        /* no marks */
    FA_WRAP_ASYNC,            /* mark it */
    FA_WRAP_ASYNC_UNLESS_SEEN /* mark it unless inspect already sees a coroutine function */
};

/* functools.update_wrapper(self, self.func), then the marks. -1 with an exception set, else 0.
 * Beware: runs Python code (the wrapped object's attributes). */
int fa_wrapper_finish(PyObject *self, int mark);

/* Offsets of the head's __dict__, __weakref__ and vectorcall, for the type's Py_tp_members. */
extern PyMemberDef fa_wrapper_members[];

/* ---- annotations as a function has them ----
 *
 * From 3.14 a function's annotations are computed lazily, on first access, by its __annotate__
 * function, and functools.update_wrapper copies __annotate__ instead of __annotations__. A
 * function has both as descriptors; a C wrapper has only its instance __dict__, where
 * update_wrapper puts __annotate__, so it would have no __annotations__ at all. The entries
 * FA_WRAPPER_GETSET adds give it a function's behaviour, with both values kept in the instance
 * __dict__: __annotations__ is __annotate__(1) on first access (a forward reference is resolved
 * then, not at decoration time), kept afterwards, or {} when __annotate__ is None; neither
 * exists when update_wrapper found neither on what was wrapped (a partial, as lru_cache's
 * wrapper); setting __annotate__ to a callable forgets the kept value; setting or deleting
 * __annotations__ sets __annotate__ to None. The same errors as a function's. Until 3.13
 * update_wrapper copies __annotations__ itself and only __dict__ is added. */
#if FA_PY314
PyObject *fa_wrapper_get_annotations(PyObject *self, void *closure);
int fa_wrapper_set_annotations(PyObject *self, PyObject *value, void *closure);
PyObject *fa_wrapper_get_annotate(PyObject *self, void *closure);
int fa_wrapper_set_annotate(PyObject *self, PyObject *value, void *closure);
#define FA_WRAPPER_ANNOTATIONS_GETSET \
    {"__annotations__", fa_wrapper_get_annotations, fa_wrapper_set_annotations, NULL, NULL}, \
    {"__annotate__", fa_wrapper_get_annotate, fa_wrapper_set_annotate, NULL, NULL},
#else
#define FA_WRAPPER_ANNOTATIONS_GETSET
#endif

/* The getset entries every wrapper type starts its table with: __dict__ and the annotations. */
#define FA_WRAPPER_GETSET \
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL}, \
    FA_WRAPPER_ANNOTATIONS_GETSET

/* Entries that make a wrapper function-like for inspect (its _signature_is_functionlike), as
 * Cython functions are: the wrapped function's __code__, __defaults__, __kwdefaults__,
 * __globals__ and __closure__, read through. Then inspect.iscoroutinefunction() reads the
 * wrapped code's CO_COROUTINE on every version. */
PyObject *fa_wrapper_delegate(PyObject *self, void *name);
#define FA_WRAPPER_FUNCLIKE_GETSET \
    {"__code__", fa_wrapper_delegate, NULL, NULL, "__code__"}, \
    {"__defaults__", fa_wrapper_delegate, NULL, NULL, "__defaults__"}, \
    {"__kwdefaults__", fa_wrapper_delegate, NULL, NULL, "__kwdefaults__"}, \
    {"__globals__", fa_wrapper_delegate, NULL, NULL, "__globals__"}, \
    {"__closure__", fa_wrapper_delegate, NULL, NULL, "__closure__"},

#endif
