/*
 * clock.c: the cold parts of the one clock (clock.h): its set-up and tear-down, the proofs made
 * from scratch, and the calls of clocks that are Python code.
 *
 * The proof that a loop's time() is asyncio's own (read natively as time.monotonic()) rests on:
 * - loop.time resolving, through the generic attribute lookup, to BaseEventLoop.time found on
 *   the type, with no instance attribute shadowing it;
 * - that function's code being the original, and the `time` global it reads being the time
 *   module, whose `monotonic` is the original.
 * It is remembered (one loop per module state) with what it rests on: the loop (weakly), its
 * type and that type's version tag (any change to the class or a base, or __class__
 * assignment, breaks it), the instance __dict__ slot's dict and its tag (a store, or a new
 * dict), the code object, and the tags of the two module dicts (compat.h: PEP 509 versions up
 * to 3.11, the supported dict watchers from 3.12). Where a tag cannot be taken (no watcher
 * left) nothing is remembered and every read proves again: slower, never wrong.
 */
#include "clock.h"

#if FA_DICT_WATCHERS
uint64_t fa_watch_epoch = 1;

/* Any event on any dict this module watches: every remembered proof is re-made once. */
static int
clk_dict_event(PyDict_WatchEvent event, PyObject *dict, PyObject *key, PyObject *new_value)
{
    (void)event;
    (void)dict;
    (void)key;
    (void)new_value;
    fa_watch_epoch++;
    return 0;
}
#endif

/* Call a clock that is Python code: fn(self) when self is given, else fn(). 0, or -1 with an
 * exception: whatever it raised, a TypeError for a non-number, a ValueError for nan (for an
 * infinity too when finite is set). Beware: runs Python code. */
static int
clk_call(PyObject *fn, PyObject *self, const char *what, int finite, double *out)
{
    PyObject *r = self != NULL ? PyObject_CallOneArg(fn, self) : PyObject_CallNoArgs(fn);
    if (r == NULL) {
        return -1;
    }
    double t = PyFloat_AsDouble(r);
    if (t == -1.0 && PyErr_Occurred()) {
        Py_DECREF(r);
        return -1;
    }
    if (isnan(t) || (finite && !isfinite(t))) {
        PyErr_Format(PyExc_ValueError, "%s returned %R: a clock must return a %snumber of seconds",
                     what, r, finite ? "finite " : "");
        Py_DECREF(r);
        return -1;
    }
    Py_DECREF(r);
    *out = t;
    return 0;
}

int
fa_user_read(PyObject *fn, PyObject *self, const char *what, double *out)
{
    return clk_call(fn, self, what, 0, out);
}

int
fa_mono_read_slow(fa_state *st, fa_reading *r)
{
    r->kloop = r->kfn = NULL;
    PyObject *fn = PyDict_GetItemWithError(st->core.clk_time_dict,
                                           st->core.str_monotonic);  // borrowed
    if (fn != NULL && fn == st->core.time_monotonic) {
        st->core.clk_mono_ok = fa_dict_tag_take(st->core.clk_watcher, st->core.clk_time_dict,
                                                &st->core.clk_mono_tag);
        r->now = fa_monotonic();
        return 0;
    }
    st->core.clk_mono_ok = 0;
    if (fn == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "module 'time' has no attribute 'monotonic'");
        }
        return -1;
    }
    Py_INCREF(fn);
    if (clk_call(fn, NULL, "time.monotonic()", 0, &r->now) < 0) {  // Beware: Python code
        Py_DECREF(fn);
        return -1;
    }
    r->kfn = fn;
    return 0;
}

/* Is BaseEventLoop.time still `return time.monotonic()` with the originals? 1 (and its module
 * dicts' tags taken, if they can be: *remember), 0, -1. */
static int
clk_base_time_intact(fa_state *st, int *remember)
{
    *remember = 0;
    if (PyFunction_GET_CODE(st->core.clk_base_time) != st->core.clk_base_code) {
        return 0;
    }
    PyObject *tm = PyDict_GetItemWithError(st->core.clk_base_globals,
                                           st->core.str_time);  // borrowed
    if (tm != st->core.clk_time_module) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!fa_mono_proven(st)) {
        PyObject *mono = PyDict_GetItemWithError(st->core.clk_time_dict, st->core.str_monotonic);
        if (mono != st->core.time_monotonic) {
            return PyErr_Occurred() ? -1 : 0;
        }
        st->core.clk_mono_ok = fa_dict_tag_take(st->core.clk_watcher, st->core.clk_time_dict,
                                                &st->core.clk_mono_tag);
    }
    *remember = st->core.clk_mono_ok
                && fa_dict_tag_take(st->core.clk_watcher, st->core.clk_base_globals,
                                    &st->core.clk_globals_tag);
    return 1;
}

/* Remember what loop's time() was just proven to be (see fa_loop_proven): asyncio's own
 * (fn NULL) or its class's own method fn. Neither the loop nor its dict is held (a cache must
 * not keep a dropped loop alive, nor delay its "unclosed event loop" warning): while a dict
 * slot holds a dict with the remembered tag, it is the same, unmodified dict; fn is owned by
 * the class, whose tag changes if it is replaced. Finding the slot may materialize the loop's
 * instance __dict__ (CPython keeps attributes inline until something asks for the dict): a
 * one-time change of storage, invisible to Python code. */
static void
clk_proof_store(fa_state *st, PyObject *loop, PyObject *fn)
{
    PyTypeObject *tp = Py_TYPE(loop);
    unsigned int ttag = fa_type_tag(tp);
    st->core.clk_nat_valid = 0;
    if (ttag == 0) {
        return;
    }
    PyObject **dp = fa_object_dictptr(loop);
    if (dp == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();  // the dict could not be made: prove it every time
            return;
        }
        dp = &st->core.clk_no_dict;
    }
    fa_dict_tag dtag = 0;
#if !FA_INLINE_VALUES
    if (*dp != NULL && !fa_dict_tag_take(st->core.clk_watcher, *dp, &dtag)) {
        return;
    }
#endif
    st->core.clk_nat_loop = loop;
    st->core.clk_nat_fn = fn;
    st->core.clk_nat_type = tp;
    st->core.clk_nat_ttag = ttag;
    st->core.clk_nat_dictptr = dp;
    st->core.clk_nat_dict = *dp;
    st->core.clk_nat_dtag = dtag;
    st->core.clk_nat_valid = 1;
}

/* The reading of a time() proven to be the loop class's own method (fa_loop_proven: 2). */
int
fa_loop_read_own(fa_state *st, PyObject *loop, fa_reading *r)
{
    PyObject *fn = Py_NewRef(st->core.clk_nat_fn);  // held across the call, which may change things
    if (clk_call(fn, loop, "loop.time()", 1, &r->now) < 0) {  // Beware: Python code
        Py_DECREF(fn);
        return -1;
    }
    r->kloop = Py_NewRef(loop);
    r->kfn = fn;
    return 0;
}

int
fa_loop_read_slow(fa_state *st, PyObject *loop, fa_reading *r)
{
    r->kloop = r->kfn = NULL;
    PyTypeObject *tp = Py_TYPE(loop);
    PyObject *fn = NULL;  // new ref: what loop.time resolves to
    int unbound = 0;      // fn is found on the type: call it with the loop
    if (tp->tp_getattro == PyObject_GenericGetAttr) {
        PyObject *descr = fa_type_lookup(tp, st->core.str_time);  // borrowed
        Py_XINCREF(descr);
        descrgetfunc get = descr ? Py_TYPE(descr)->tp_descr_get : NULL;
        if (get != NULL && Py_TYPE(descr)->tp_descr_set != NULL) {
            fn = get(descr, loop, (PyObject *)tp);  // a data descriptor wins; Beware: Python code
            Py_DECREF(descr);
            if (fn == NULL) {
                return -1;
            }
            goto call;
        }
        PyObject **dp = fa_object_dictptr(loop);
        PyObject *d = dp != NULL ? Py_XNewRef(*dp) : NULL;
        if (d == NULL && PyErr_Occurred()) {
            PyErr_Clear();
        }
        if (d != NULL) {
            PyObject *attr = PyDict_GetItemWithError(d, st->core.str_time);  // borrowed
            Py_XINCREF(attr);
            Py_DECREF(d);
            if (attr != NULL) {
                Py_XDECREF(descr);
                fn = attr;  // an instance attribute: loop.time patched on the instance
                goto call;
            }
            if (PyErr_Occurred()) {
                Py_XDECREF(descr);
                return -1;
            }
        }
        if (descr != NULL) {
            if (descr == st->core.clk_base_time) {
                int remember;
                int ok = clk_base_time_intact(st, &remember);
                if (ok < 0) {
                    Py_DECREF(descr);
                    return -1;
                }
                if (ok) {
                    Py_DECREF(descr);
                    if (remember) {
                        clk_proof_store(st, loop, NULL);
                    }
                    r->now = fa_monotonic();
                    return 0;
                }
            }
            if (PyType_HasFeature(Py_TYPE(descr), Py_TPFLAGS_METHOD_DESCRIPTOR)) {
                fn = descr;  // a function, a C method, uvloop's Cython method: no bound method
                unbound = 1;
                if (descr != st->core.clk_base_time) {
                    clk_proof_store(st, loop, descr);  // next time, no lookup
                }
            }
            else if (get != NULL) {
                fn = get(descr, loop, (PyObject *)tp);  // Beware: Python code
                Py_DECREF(descr);
                if (fn == NULL) {
                    return -1;
                }
            }
            else {
                fn = descr;
            }
            goto call;
        }
    }
    fn = PyObject_GetAttr(loop, st->core.str_time);  // Beware: Python code
    if (fn == NULL) {
        return -1;
    }
call:
    if (clk_call(fn, unbound ? loop : NULL, "loop.time()", 1, &r->now) < 0) {  // Beware
        Py_DECREF(fn);
        return -1;
    }
    /* the clock: this loop's, through this callable (a bound method made afresh on each lookup
     * is named by its function) */
    if (PyMethod_Check(fn)) {
        Py_SETREF(fn, Py_NewRef(PyMethod_GET_FUNCTION(fn)));
    }
    r->kloop = Py_NewRef(loop);
    r->kfn = fn;
    return 0;
}

/* ------------------------------------------------------------------ set-up */

#if !FA_DICT_WATCHERS
static PyObject *
clk_after_fork_in_child(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    fa_get_state(mod)->core.clk_fork_gen++;
    Py_RETURN_NONE;
}

static PyMethodDef clk_fork_def = {"_clock_after_fork", clk_after_fork_in_child, METH_NOARGS,
                                   NULL};

/* Set up the running-loop cache of fa_running_loop_or_none, or disable it (clk_fork_gen = -1):
 * it reads the thread-state dict, where the C _asyncio keeps the running loop (not asyncio's
 * pure-Python fallback), and must forget its answer in a forked child. */
static int
clk_running_loop_cache_init(PyObject *mod, fa_state *st)
{
    if (!PyCFunction_Check(st->core.get_running_loop)) {
        st->core.clk_fork_gen = (unsigned long)-1;
        return 0;
    }
    PyObject *os = NULL, *reg = NULL, *hook = NULL, *args = NULL, *kw = NULL, *r = NULL;
    int rc = -1;
    if ((os = PyImport_ImportModule("os")) == NULL) {
        goto done;
    }
    if ((reg = PyObject_GetAttrString(os, "register_at_fork")) == NULL) {
        PyErr_Clear();  // no fork on this platform (and no getpid check in asyncio): no cache
        st->core.clk_fork_gen = (unsigned long)-1;
        rc = 0;
        goto done;
    }
    if ((hook = PyCFunction_NewEx(&clk_fork_def, mod, NULL)) == NULL
        || (args = PyTuple_New(0)) == NULL
        || (kw = Py_BuildValue("{sO}", "after_in_child", hook)) == NULL
        || (r = PyObject_Call(reg, args, kw)) == NULL) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(os);
    Py_XDECREF(reg);
    Py_XDECREF(hook);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_XDECREF(r);
    return rc;
}
#endif

int
fa_clock_init(PyObject *mod, fa_state *st)
{
    (void)mod;
    st->core.clk_watcher = -1;
    st->core.clk_no_dict = NULL;
    st->core.clk_rl_cfunc = NULL;
    st->core.clk_rl_self = NULL;
    if (PyCFunction_Check(st->core.get_running_loop)
        && PyCFunction_GET_FLAGS(st->core.get_running_loop) == METH_NOARGS) {
        st->core.clk_rl_cfunc = PyCFunction_GET_FUNCTION(st->core.get_running_loop);
        st->core.clk_rl_self = PyCFunction_GET_SELF(st->core.get_running_loop);
    }
    if ((st->core.str_monotonic = PyUnicode_InternFromString("monotonic")) == NULL) {
        return -1;
    }
    PyObject *tmod = PyImport_ImportModule("time");
    if (tmod == NULL) {
        return -1;
    }
    st->core.time_monotonic = PyObject_GetAttrString(tmod, "monotonic");
    st->core.clk_time_dict = Py_NewRef(PyModule_GetDict(tmod));
    Py_DECREF(tmod);
    if (st->core.time_monotonic == NULL) {
        return -1;
    }
#if FA_DICT_WATCHERS
    st->core.clk_watcher = PyDict_AddWatcher(clk_dict_event);
    if (st->core.clk_watcher < 0) {
        PyErr_Clear();  // all taken: every proof is made from scratch (slower, still right)
        st->core.clk_watcher = -1;
    }
#else
    if (clk_running_loop_cache_init(mod, st) < 0) {
        return -1;
    }
#endif
    /* what a loop's time() is proven against (see fa_loop_read_slow) */
    PyObject *cls = fa_import_attr("asyncio.base_events", "BaseEventLoop");
    if (cls == NULL) {
        return -1;
    }
    PyObject *fn = PyObject_GetAttrString(cls, "time");  // the plain function
    Py_DECREF(cls);
    if (fn == NULL) {
        return -1;
    }
    PyObject *tm = PyFunction_Check(fn)
                       ? PyDict_GetItemWithError(PyFunction_GET_GLOBALS(fn), st->core.str_time)
                       : NULL;  // borrowed
    if (tm == NULL && PyErr_Occurred()) {
        Py_DECREF(fn);
        return -1;
    }
    if (tm != NULL && PyModule_Check(tm) && PyModule_GetDict(tm) == st->core.clk_time_dict) {
        st->core.clk_base_time = fn;
        st->core.clk_base_code = Py_NewRef(PyFunction_GET_CODE(fn));
        st->core.clk_base_globals = Py_NewRef(PyFunction_GET_GLOBALS(fn));
        st->core.clk_time_module = Py_NewRef(tm);
    }
    else {
        Py_DECREF(fn);  // not the shape we know: never read a loop's time natively
    }
    return 0;
}

void
fa_clock_clear(fa_state *st)
{
    st->core.clk_nat_valid = 0;
    st->core.clk_mono_ok = 0;
    st->core.clk_rl_cfunc = NULL;  // its function goes with the state's objects
    st->core.clk_rl_self = NULL;
#if FA_DICT_WATCHERS
    if (st->core.clk_watcher >= 0) {
        if (PyDict_ClearWatcher(st->core.clk_watcher) < 0) {
            PyErr_Clear();
        }
        st->core.clk_watcher = -1;
    }
#endif
}
