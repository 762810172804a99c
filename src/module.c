/*
 * module.c: aiofast._core, the top. The module definition, the order in which the layers and
 * families fill their parts of the module state (each init says which parts it reads), and the
 * call of each part's traverse and clear. Nothing else: the families' code is below.
 *
 * Invariant: every object field of every part of fa_state is either NULL or a strong reference,
 * visited by its part's traverse and released by its part's clear (generated from the part's one
 * list of fields, so none can be left out).
 */
#include "aiofast.h"
#include "clock.h"
#include "shm.h"

static int
module_exec(PyObject *mod)
{
    fa_state *st = fa_get_state(mod);
    memset(st, 0, sizeof(*st));
    /* _debug: 1 in builds with asserts and invariant checks (AIOFAST_DEBUG, the sanitizers) */
    if (PyModule_AddIntConstant(mod, "_debug", FA_DEBUG) < 0) {
        return -1;
    }
    /* core, then the engine, then the families: each after the parts its init reads */
    if (fa_core_state_init(mod, st) < 0
        || fa_clock_init(mod, st) < 0
        || fa_shm_init(mod, st) < 0
        || fa_op_init(mod, st) < 0
        || fa_semaphore_init(mod, st) < 0
        || fa_queue_init(mod, st) < 0  /* reads the lock family's Event */
        || fa_breaker_init(mod, st) < 0
        || fa_cache_init(mod, st) < 0
        || fa_memo_init(mod, st) < 0
        || fa_tokenbucket_init(mod, st) < 0) {
        return -1;
    }
    return 0;
}

static int
module_traverse(PyObject *mod, visitproc visit, void *arg)
{
    fa_state *st = fa_get_state(mod);
    if (st == NULL) {
        return 0;
    }
    int rc;
    if ((rc = fa_core_traverse(&st->core, visit, arg)) != 0
        || (rc = fa_engine_traverse(&st->engine, visit, arg)) != 0
        || (rc = fa_semaphore_traverse(&st->semaphore, visit, arg)) != 0
        || (rc = fa_queue_traverse(&st->queue, visit, arg)) != 0
        || (rc = fa_tokenbucket_traverse(&st->tokenbucket, visit, arg)) != 0
        || (rc = fa_breaker_traverse(&st->breaker, visit, arg)) != 0
        || (rc = fa_cache_traverse(&st->cache, visit, arg)) != 0
        || (rc = fa_memo_traverse(&st->memo, visit, arg)) != 0) {
        return rc;
    }
    return 0;
}

static int
module_clear(PyObject *mod)
{
    fa_state *st = fa_get_state(mod);
    if (st == NULL) {
        return 0;
    }
    fa_clock_clear(st);  // the clock's borrowed pointers and watcher, before its objects go
    fa_core_clear(&st->core);
    fa_engine_clear(&st->engine);
    fa_semaphore_clear(&st->semaphore);
    fa_queue_clear(&st->queue);
    fa_tokenbucket_clear(&st->tokenbucket);
    fa_breaker_clear(&st->breaker);
    fa_cache_clear(&st->cache);
    fa_memo_clear(&st->memo);
    return 0;
}

static void
module_free(void *mod)
{
    module_clear((PyObject *)mod);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aiofast._core",
    .m_doc = "aiofast's C core: asyncio primitives, rate limiting, circuit breaking, caching.",
    .m_size = sizeof(fa_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    fa_state_set_module_def(&module_def);
    return PyModuleDef_Init(&module_def);
}
