/*
 * state.h: the core's part of the module state, and what every part is built with.
 *
 * The module state (fa_state, aiofast.h) is one part per layer or family: the core's (this
 * header: the interned names and asyncio objects every layer uses, the clock's caches), the
 * engine's (engine.h), and one per family in the family's own header (fa_queue_state in queue.h
 * ...). Each part declares its object fields from one list, and the same list generates the
 * part's traverse and clear (FA_STATE_WALKERS), so a field cannot be declared without being
 * visited and cleared. module.c calls each part's traverse and clear.
 *
 * Also here: creating and registering a type, the state behind a type (for tp_new of
 * subclasses), the override check of subclasses, and FA_INIT_NEEDS, with which a family's init
 * states what it reads from a part another init fills.
 *
 * Core: knows nothing above compat.h and debug.h. Invariant: every object field of every part is
 * NULL or a strong reference.
 */
#ifndef AIOFAST_STATE_H
#define AIOFAST_STATE_H

#include "compat.h"
#include "debug.h"
#include <stdint.h>

typedef struct fa_state fa_state;  // aiofast.h

/* ------------------------------------------------------------------ declaring a part */

/* A part's list is a macro of three arguments: X_T(name) a type, X_O(name) an object,
 * X_ARRAY(name, n) an array of n objects. */
#define FA_DECLARE_T(name) PyTypeObject *name;
#define FA_DECLARE_O(name) PyObject *name;
#define FA_DECLARE_ARRAY(name, n) PyObject *name[n];
/* the fields of LIST, inside the part's struct */
#define FA_STATE_FIELDS(LIST) LIST(FA_DECLARE_T, FA_DECLARE_O, FA_DECLARE_ARRAY)

#define FA_VISIT_ONE_(name) Py_VISIT(part->name);
#define FA_VISIT_ARRAY_(name, n) \
    for (size_t i_ = 0; i_ < (n); i_++) { \
        Py_VISIT(part->name[i_]); \
    }
#define FA_CLEAR_ONE_(name) Py_CLEAR(part->name);
#define FA_CLEAR_ARRAY_(name, n) \
    for (size_t i_ = 0; i_ < (n); i_++) { \
        Py_CLEAR(part->name[i_]); \
    }
/* fa_<p>_traverse(part, visit, arg) and fa_<p>_clear(part) for the struct fa_<p>_state, naming
 * every field of LIST */
#define FA_STATE_WALKERS(p, LIST) \
    static inline int fa_##p##_traverse(fa_##p##_state *part, visitproc visit, void *arg) \
    { \
        LIST(FA_VISIT_ONE_, FA_VISIT_ONE_, FA_VISIT_ARRAY_) \
        return 0; \
    } \
    static inline void fa_##p##_clear(fa_##p##_state *part) \
    { \
        LIST(FA_CLEAR_ONE_, FA_CLEAR_ONE_, FA_CLEAR_ARRAY_) \
    }

/* A family's init reads a field another init fills (module.c's order): say so with
 * FA_INIT_NEEDS(st->semaphore.EventType), checked in debug builds. */
#if FA_DEBUG
#define FA_INIT_NEEDS(field) FA_CHECK((field) != NULL, "init order: %s not made yet", #field)
#else
#define FA_INIT_NEEDS(field) ((void)0)
#endif

/* ------------------------------------------------------------------ the core's part */

/* The core's objects: asyncio's, the clock's (clock.c) and the interned names of the loop,
 * future and coroutine methods several layers call. */
#define FA_CORE_OBJECTS(X_T, X_O, X_ARRAY) \
    /* imported at exec time (fa_core_state_init) */ \
    X_O(get_running_loop) /* asyncio.events._get_running_loop */ \
    X_O(CancelledError) \
    X_O(InvalidStateError) \
    X_O(TimeoutError) /* builtins.TimeoutError (asyncio.TimeoutError is it on 3.11+) */ \
    /* shm.c: the error of an unusable shared segment */ \
    X_O(SharedSegmentError) \
    /* clock.c: the original time.monotonic, and what the proof that a loop's time() is \
     * asyncio's own compares against (BaseEventLoop.time, its code and globals, the time \
     * module and its dict) */ \
    X_O(time_monotonic) \
    X_O(clk_base_time) /* NULL: never read a loop's time natively */ \
    X_O(clk_base_code) \
    X_O(clk_base_globals) \
    X_O(clk_time_module) \
    X_O(clk_time_dict) \
    X_O(str_monotonic) \
    /* interned names of the loop's, futures' and coroutines' methods */ \
    X_O(str_create_future) \
    X_O(str_create_task) \
    X_O(str_set_result) \
    X_O(str_set_exception) \
    X_O(str_done) \
    X_O(str_cancelled) \
    X_O(str_cancel) \
    X_O(str_result) \
    X_O(str_exception) \
    X_O(str_add_done_callback) \
    X_O(str_await) /* "__await__" */ \
    X_O(str_throw) \
    X_O(str_close) \
    X_O(str_call_at) \
    X_O(str_time) \
    X_O(str_get_loop) /* "_get_loop" */

typedef struct {
    FA_STATE_FIELDS(FA_CORE_OBJECTS)

    /* non-object fields (not traversed) */
    /* clock.h: <= 3.11, asyncio's _get_running_loop() calls getpid(), a system call, every
     * time; the answer is cached while the thread-state dict that holds it is unmodified (see
     * fa_running_loop_or_none). clk_rl_loop is borrowed: that dict owns it, through asyncio's
     * holder, for as long as the version matches. */
    PyObject *clk_rl_loop;
    PyCFunction clk_rl_cfunc;                /* asyncio's C _get_running_loop, or NULL ... */
    PyObject *clk_rl_self;                   /* ... and its module (both borrowed: see
                                              * fa_call_running_loop_getter) */
    unsigned long long clk_rl_dict_version;  /* PEP 509 version of that dict, 0 = none */
    unsigned long clk_fork_gen;              /* bumped in a forked child (os.register_at_fork) */
    unsigned long clk_rl_fork_gen;           /* clk_fork_gen when clk_rl_loop was cached */
    /* clock.h: the proofs, each holding while its tags match (compat.h's dict tags) */
    int clk_watcher;                         /* this state's dict watcher (3.12+), or -1 */
    int clk_mono_ok;                         /* time.monotonic is the original ... */
    uint64_t clk_mono_tag;                   /* ... while the time module's dict has this tag */
    uint64_t clk_globals_tag;                /* BaseEventLoop.time's globals, seen intact */
    int clk_nat_valid;                       /* what clk_nat_loop's time() is (fa_loop_proven) */
    PyObject *clk_nat_fn;                    /* NULL: asyncio's (native); else its class's own
                                              * method (borrowed: the class owns it) ... */
    void *clk_nat_loop;                      /* (an address only: see fa_loop_proven) */
    void *clk_nat_type;                      /* ... while its type is this one, */
    unsigned int clk_nat_ttag;               /* with this tag, */
    PyObject **clk_nat_dictptr;              /* its __dict__ slot (into the loop: alive) */
    PyObject *clk_nat_dict;                  /* holds this dict (borrowed; the tag: no reuse) */
    uint64_t clk_nat_dtag;                   /* with this tag */
    PyObject *clk_no_dict;                   /* always NULL: the slot of a loop without __dict__ */
} fa_core_state;

FA_STATE_WALKERS(core, FA_CORE_OBJECTS)

/* The interned names and asyncio's objects of the core's part (the clock and shm.c fill theirs
 * in fa_clock_init and fa_shm_init). 0, or -1 with an exception. */
int fa_core_state_init(PyObject *mod, fa_state *st);

/* ------------------------------------------------------------------ the state and types */

/* PyInit__core hands over the module's definition, by which a type finds its module. */
void fa_state_set_module_def(PyModuleDef *def);

static inline fa_state *
fa_get_state(PyObject *mod)
{
    return (fa_state *)PyModule_GetState(mod);
}

/* The state of the module that defined tp or one of its bases (for tp_new of subclasses), or
 * NULL with an exception. */
fa_state *fa_state_from_type(PyTypeObject *tp);

/* The short tp_name trick: a heap type made from "aiofast.Lock" has tp_name "aiofast.Lock", and
 * the interpreter's messages ("object Lock can't be used in 'await' expression", "'Lock' object
 * has no attribute ...") use tp_name. asyncio's classes are Python classes whose tp_name is the
 * bare name, and CPython's own tests match those messages, so the public types get a bare
 * tp_name (a static string; __module__ and __qualname__ are untouched). */
static inline void
fa_set_short_tpname(PyTypeObject *tp, const char *name)
{
    tp->tp_name = name;
}

/* A heap type made from spec for the module (short_name: its bare tp_name, or NULL to keep the
 * spec's), not added to the module: a new reference, or NULL. */
PyTypeObject *fa_new_type(PyObject *mod, PyType_Spec *spec, PyObject *base, const char *short_name);

/* The same, also added to the module under its name: a new reference (the state's), or NULL. */
PyTypeObject *fa_add_type(PyObject *mod, PyType_Spec *spec, PyObject *base, const char *short_name);

/* The tp_dealloc of a GC type, given its tp_clear: untrack, clear the weak references (when the
 * type has a weakref list and it is not empty), clear, free, then release the heap type. */
static inline void
fa_gc_dealloc(PyObject *op, inquiry clear)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (tp->tp_weaklistoffset > 0
        && *(PyObject **)((char *)op + tp->tp_weaklistoffset) != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    (void)clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* fa_gc_dealloc with the tp_clear of the object's type, as a tp_dealloc slot. For an internal
 * type that is its own clear; for an instance of a Python subclass it is the subclass's
 * (CPython's subtype_clear, which then calls the base's), as with the decorated-function
 * wrappers. */
static inline void
fa_gc_tp_dealloc(PyObject *op)
{
    fa_gc_dealloc(op, Py_TYPE(op)->tp_clear);
}

/* PREFIX_traverse and PREFIX_clear of a Type whose owned references are exactly the fields
 * listed: traverse visits the heap type and each field, clear clears each field. A type that
 * owns anything else (an array, a wait queue) writes its pair out. With fa_gc_tp_dealloc as the
 * tp_dealloc, that is the type's whole GC support. */
#define FA_GC_REFS1(PREFIX, Type, a) \
    static int PREFIX##_traverse(PyObject *op, visitproc visit, void *arg) \
    { \
        Py_VISIT(Py_TYPE(op)); \
        Py_VISIT(((Type *)op)->a); \
        return 0; \
    } \
    static int PREFIX##_clear(PyObject *op) \
    { \
        Py_CLEAR(((Type *)op)->a); \
        return 0; \
    }

#define FA_GC_REFS2(PREFIX, Type, a, b) \
    static int PREFIX##_traverse(PyObject *op, visitproc visit, void *arg) \
    { \
        Py_VISIT(Py_TYPE(op)); \
        Py_VISIT(((Type *)op)->a); \
        Py_VISIT(((Type *)op)->b); \
        return 0; \
    } \
    static int PREFIX##_clear(PyObject *op) \
    { \
        Py_CLEAR(((Type *)op)->a); \
        Py_CLEAR(((Type *)op)->b); \
        return 0; \
    }

/* New reference to the attribute `name` of the module `module` (imported if need be), or NULL
 * with the exception of the import or of the lookup. */
static inline PyObject *
fa_import_attr(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);  // new ref
    if (mod == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_GetAttrString(mod, name);  // new ref
    Py_DECREF(mod);
    return r;
}

/* The start of a tp_new: a zeroed instance of tp from tp_alloc, with *stp set to the state of
 * the module that defined tp (the caller stores it in the instance); NULL on error. */
static inline PyObject *
fa_new_instance(PyTypeObject *tp, fa_state **stp)
{
    fa_state *st = fa_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    *stp = st;
    return tp->tp_alloc(tp, 0);
}

/* collections.abc.<abc_name>.register(tp). 0, or -1 with an exception. */
int fa_register_abc(const char *abc_name, PyTypeObject *tp);

/* Which of names[0..n) does tp override relative to base, as found on their MROs: bit i set for
 * names[i] (a NULL name is never overridden). 0 when tp is base. n <= 31. */
static inline int
fa_find_overrides(PyTypeObject *tp, PyTypeObject *base, PyObject *const *names, size_t n)
{
    int ovr = 0;
    if (tp == base) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (names[i] != NULL && fa_type_lookup(tp, names[i]) != fa_type_lookup(base, names[i])) {
            ovr |= 1 << i;
        }
    }
    return ovr;
}

#endif
