/*
 * cache.c: LRUCache and TTLCache, drop-ins for cachetools' classes, on the table of ctable.h.
 *
 * Behaviour follows cachetools (8.x) method by method: getsizeof/currsize/maxsize accounting,
 * "value too large", popitem of the least recently used item, __missing__, TTLCache's lazy
 * expiry (expired items stay invisible until expire() runs, which every insert, len(),
 * currsize, popitem and repr do), expire() returning the expired (key, value) pairs, and the
 * iteration order (first insertion for both: a key set again keeps its place, as in a dict;
 * a TTLCache iterates over a snapshot of its keys taken at the first next(), skipping the ones
 * gone or expired when reached, so setting or deleting items meanwhile raises nothing, as in
 * cachetools since 8.0.2 / 7.3.3). Subclasses that
 * override popitem, expire, __missing__ or getsizeof are called as cachetools calls them.
 *
 * Invariants (checked after every mutation by cache_check in debug builds):
 * - currsize == the sum of the sizes of the entries (their count when unsized) <= maxsize.
 * - the table is consistent whenever Python code can run: every operation first does what
 *   may call Python (hash, the timer, getsizeof, __eq__ during the lookup, a subclass's
 *   popitem/expire), re-validating with the table's version, then commits without calling
 *   Python, and releases removed keys and values last (ct_buf). So hostile __hash__/__eq__,
 *   values whose __del__ touches the cache, and threads sharing a cache (the GIL is released
 *   only inside such calls) never see a half-done change, and the counters are exact.
 */
#include "ctable.h"
#include "cache.h"

#define OVR_POPITEM 0x1
#define OVR_EXPIRE 0x2
#define OVR_MISSING 0x4
#define OVR_GETSIZEOF 0x8

typedef struct {
    PyObject_HEAD
    fa_state *st;
    ct_table t;
    PyObject *maxsize_obj;  /* maxsize as given */
    PyObject *getsizeof;    /* a callable, or NULL (every item has size 1) */
    PyObject *timer;        /* TTLCache: the timer as given; NULL for time.monotonic */
    fa_clock clk;           /* TTLCache: the clock last read; expiry times are on its scale */
    PyObject *ttl_obj;      /* TTLCache: ttl as given */
    PyObject *timer_wrap;   /* TTLCache: the `timer` attribute (a CacheTimer), made on first use */
    PyObject *time_origin;  /* TTLCache with time objects (see cache_seconds): the first time
                               read, from which times count in seconds; NULL until then */
    PyObject *last_time;    /* TTLCache with time objects: the time last read */
    PyObject *weakreflist;
    Py_ssize_t maxsize;
    Py_ssize_t currsize;
    double ttl;
    unsigned long long hits, misses, evictions, expirations;
    int is_ttl;
    int ovr;                /* OVR_*: methods a subclass overrides */
    int getsizeof_given;    /* getsizeof came from __init__, not from a subclass method */
    int time_objects;       /* TTLCache: ttl is not a number (a timedelta): times are objects */
} CacheObject;

/* A TTLCache's `timer` attribute, as cachetools has it: calling it reads the timer, and
 * `with cache.timer as now:` freezes the time it returns, for the cache's own reads too, until
 * the outermost `with` ends. Other attributes are the timer's. One per cache (a copy gets its
 * own, on the same timer). */
typedef struct {
    PyObject_HEAD
    PyObject *timer;   /* the timer (time.monotonic by default) */
    PyObject *frozen;  /* the time read on entering the outermost `with`, or NULL */
    Py_ssize_t nesting;
} CacheTimerObject;

/* Is the cache's time time.monotonic(), read natively (no timer given, not frozen)? */
static inline int
cache_native_time(CacheObject *self)
{
    return self->timer == NULL
           && (self->timer_wrap == NULL || ((CacheTimerObject *)self->timer_wrap)->nesting == 0);
}

typedef struct {
    PyObject_HEAD
    CacheObject *cache;  /* NULL once exhausted */
    Py_ssize_t pos;      /* LRUCache: in the entries; TTLCache: in keys[] */
    uint64_t version;
    int kind;            /* 0 keys, 1 values, 2 items */
    int started;         /* TTLCache: keys[] was taken (at the first next()) */
    PyObject **keys;     /* TTLCache: strong references to the keys in insertion order */
    Py_hash_t *hashes;
    Py_ssize_t nkeys;
} CacheIterObject;

typedef struct {
    PyObject_HEAD
    CacheObject *cache;
} CacheViewObject;

/* ------------------------------------------------------------------ debug invariants */

#if FA_DEBUG
/* The cache's invariants (see FA_ASSERT_CONSISTENT in debug.h): the table's own (ct_check,
 * bounded for huge tables), currsize == the sum of the entries' sizes (their count when
 * unsized) and 0 <= currsize <= maxsize after every completed mutation, a TTLCache's table keeps
 * expiry times and never holds a memoizer's never-expiring class, a table keeps sizes only with
 * a getsizeof. Reads C fields only. */
static void
cache_check(CacheObject *self)
{
    const ct_table *t = &self->t;
    Py_ssize_t sum;
    int full = ct_check(t, &sum);
    FA_CHECK(t->timed == self->is_ttl, "cache %p: timed table %d, TTLCache %d", (void *)self,
             t->timed, self->is_ttl);
    FA_CHECK(!t->sized || self->getsizeof != NULL || t->used == 0,
             "cache %p: a sized table of %zd entries without getsizeof", (void *)self, t->used);
    FA_CHECK(self->maxsize >= 0 && self->currsize >= 0 && self->currsize <= self->maxsize,
             "cache %p: currsize %zd, maxsize %zd", (void *)self, self->currsize, self->maxsize);
    FA_CHECK(t->sized || self->currsize == t->used, "cache %p: currsize %zd, %zd entries",
             (void *)self, self->currsize, t->used);
    FA_CHECK(!full || sum == self->currsize, "cache %p: currsize %zd, the sizes add up to %zd",
             (void *)self, self->currsize, sum);
    if (t->hpos != NULL && full) {
        for (Py_ssize_t i = 0; i < t->nentries; i++) {
            FA_CHECK(t->entries[i].key == NULL || t->hpos[i] != CT_NOEXP,
                     "cache %p: entry %zd never expires", (void *)self, i);
        }
    }
}
#endif
#define FA_CONSISTENT cache_check
#define CHECK(self) FA_ASSERT_CONSISTENT(self)

static PyObject *
key_error(PyObject *key)
{
    PyObject *exc = PyObject_CallOneArg(PyExc_KeyError, key);  // new ref; a tuple key stays whole
    if (exc != NULL) {
        PyErr_SetObject(PyExc_KeyError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static const char *
type_name(PyObject *self)
{
    return fa_type_name(Py_TYPE(self));
}

/* ------------------------------------------------------------------ time and expiry */

static int cache_seconds(CacheObject *self, PyObject *time, double *out);

/* The current time of the cache's timer (clock.h: time.monotonic as the time module has it,
 * when no timer was given), on the cache's own scale (a new clock carries on from where the last
 * one left); within `with cache.timer:`, the time read on entering it. 0, or -1 with an
 * exception. Beware: a timer given by the user is Python code, and so may be the release of a
 * clock read before. */
static int
cache_now(CacheObject *self, double *now)
{
    fa_reading r;
    CacheTimerObject *w = (CacheTimerObject *)self->timer_wrap;
    PyObject *frozen = w != NULL && w->nesting > 0 ? w->frozen : NULL;  // borrowed
    if (self->timer == NULL) {
        if (fa_mono_read(self->st, &r) < 0) {
            return -1;
        }
        if (frozen != NULL) {
            double f = PyFloat_AsDouble(frozen);  // a reading of this same clock
            if (f == -1.0 && PyErr_Occurred()) {
                fa_reading_release(&r);
                return -1;
            }
            r.now = f;
        }
    }
    else {
        if (frozen == NULL && !self->time_objects) {
            if (fa_user_read(self->timer, NULL, "timer()", &r.now) < 0) {
                return -1;
            }
        }
        else {
            PyObject *t = frozen != NULL ? Py_NewRef(frozen) : PyObject_CallNoArgs(self->timer);
            if (t == NULL) {
                return -1;
            }
            int rc = cache_seconds(self, t, &r.now);
            Py_DECREF(t);
            if (rc < 0) {
                return -1;
            }
        }
        r.kloop = NULL;
        r.kfn = Py_NewRef(self->timer);
    }
    *now = fa_clock_take(&self->clk, &r);
    return 0;
}

/* A time (the timer's, or expire's argument) in seconds. Usually a number. With time objects
 * (ttl given as a timedelta, the timer returning datetimes, as cachetools documents), the
 * seconds since the first time read (time_origin): (time - origin).total_seconds(). 0 or -1.
 * Beware: Python code (the time's arithmetic). */
static int
cache_seconds(CacheObject *self, PyObject *time, double *out)
{
    double d;
    if (self->time_objects) {
        if (self->time_origin == NULL) {
            self->time_origin = Py_NewRef(time);
        }
        PyObject *origin = Py_NewRef(self->time_origin);
        PyObject *delta = PyNumber_Subtract(time, origin);  // new ref
        Py_DECREF(origin);
        if (delta == NULL) {
            return -1;
        }
        PyObject *secs = PyObject_CallMethod(delta, "total_seconds", NULL);
        Py_DECREF(delta);
        if (secs == NULL) {
            return -1;
        }
        d = PyFloat_AsDouble(secs);
        Py_DECREF(secs);
        Py_XSETREF(self->last_time, Py_NewRef(time));
    }
    else {
        d = PyFloat_AsDouble(time);
    }
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(d)) {
        PyErr_SetString(PyExc_ValueError, "timer returned nan");
        return -1;
    }
    *out = d;
    return 0;
}

/* May expiry be judged by fa_monotonic_before, with no Python code? An LRUCache; a TTLCache on
 * time.monotonic, still the original, on a scale that is that clock's own. */
static inline int
cache_clock_native(CacheObject *self)
{
    return !self->is_ttl || (self->clk.kfn == NULL && self->clk.offset == 0.0
                             && fa_mono_proven(self->st));
}

/* Remove every expired entry (no Python code). With out, the removed (key, value) references
 * are appended to it (stopping, leaving the rest for later, if it cannot grow). */
static void
expire_internal(CacheObject *self, double now, ct_buf *out, ct_buf *trash)
{
    Py_ssize_t ix;
    uint64_t itver = self->t.itver;  // expiry only leaves holes: iterators may go on
    while ((ix = ct_next_expired(&self->t, now)) >= 0) {
        if (out != NULL) {
            if (out->n + 2 > out->cap && ct_buf_grow(out) < 0) {
                break;
            }
            ct_entry *e = &self->t.entries[ix];
            out->items[out->n++] = Py_NewRef(e->key);
            out->items[out->n++] = Py_NewRef(e->value);
        }
        self->currsize -= ct_remove(&self->t, ix, trash);
        self->expirations++;
    }
    self->t.itver = itver;
    CHECK(self);
}

/* Expire at `now`, through a subclass's expire() if it has one. 0 or -1. */
static int
expire_dispatch(CacheObject *self, double now, ct_buf *trash)
{
    if (self->ovr & OVR_EXPIRE) {
        PyObject *t = PyFloat_FromDouble(now);
        if (t == NULL) {
            return -1;
        }
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, self->st->cache.str_expire, t);
        Py_DECREF(t);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        return 0;
    }
    expire_internal(self, now, NULL, trash);
    return 0;
}

/* For len(), currsize, repr, popitem: expire now (TTLCache only). 0 or -1. */
static int
expire_now(CacheObject *self)
{
    if (!self->is_ttl) {
        return 0;
    }
    double now;
    if (cache_now(self, &now) < 0) {
        return -1;
    }
    ct_buf trash;
    ct_buf_init(&trash);
    int r = expire_dispatch(self, now, &trash);
    ct_buf_flush(&trash);  // Beware: __del__ of expired values
    return r;
}

/* ------------------------------------------------------------------ lookup */

/* Find key, marking it used if touch (as cachetools' __getitem__ does, even when expired).
 * *fresh tells whether it has not expired. The position, CT_NOTFOUND or CT_ERROR. */
static Py_ssize_t
cache_find(CacheObject *self, PyObject *key, Py_hash_t hash, int touch, int *fresh)
{
    ct_table *t = &self->t;
    Py_ssize_t ix;
    *fresh = 1;
    if (!self->is_ttl) {
        ix = ct_lookup(t, key, hash);
        if (ix >= 0 && touch) {
            ct_touch(t, ix);
            CHECK(self);
        }
        return ix;
    }
    double now;
    if (cache_native_time(self) && cache_clock_native(self)) {
        ix = ct_lookup(t, key, hash);
        if (ix >= 0) {
            if (touch) {
                ct_touch(t, ix);
                CHECK(self);
            }
            *fresh = fa_monotonic_before(t->exp[ix]);
        }
        return ix;
    }
    else {
        for (;;) {
            ix = ct_lookup(t, key, hash);
            if (ix < 0) {
                return ix;
            }
            uint64_t version = t->version;
            if (cache_now(self, &now) < 0) {  // Beware: Python code
                return CT_ERROR;
            }
            if (version == t->version) {
                break;
            }
        }
    }
    if (ix >= 0) {
        if (touch) {
            ct_touch(t, ix);
            CHECK(self);
        }
        *fresh = now < t->exp[ix];
    }
    return ix;
}

static PyObject *
cache_missing(CacheObject *self, PyObject *key)
{
    if (self->ovr & OVR_MISSING) {
        return PyObject_CallMethodOneArg((PyObject *)self, self->st->cache.str_missing, key);
    }
    return key_error(key);
}

/* ------------------------------------------------------------------ insertion */

/* getsizeof(value) checked against maxsize; -1 with an exception. */
static Py_ssize_t
item_size(CacheObject *self, PyObject *value)
{
    if (self->getsizeof == NULL) {
        if (self->maxsize < 1) {
            PyErr_SetString(PyExc_ValueError, "value too large");
            return -1;
        }
        return 1;
    }
    PyObject *r = PyObject_CallOneArg(self->getsizeof, value);  // Beware: Python code
    if (r == NULL) {
        return -1;
    }
    if (!PyIndex_Check(r)) {
        PyErr_Format(PyExc_TypeError, "getsizeof must return an int, got %.100s",
                     Py_TYPE(r)->tp_name);
        Py_DECREF(r);
        return -1;
    }
    Py_ssize_t size = PyNumber_AsSsize_t(r, NULL);  // clamps on overflow
    Py_DECREF(r);
    if (size == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (size > self->maxsize) {
        PyErr_SetString(PyExc_ValueError, "value too large");
        return -1;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "value size must be non-negative");
        return -1;
    }
    return size;
}

/* cache[key] = value; for a TTLCache with its own ttl when own_ttl. 0 or -1. */
static int
cache_set(CacheObject *self, PyObject *key, PyObject *value, int own_ttl, double item_ttl)
{
    ct_table *t = &self->t;
    Py_hash_t hash = fa_hash(key);  // Beware: Python code
    if (hash == -1) {
        return -1;
    }
    ct_buf trash;
    ct_buf_init(&trash);
    double now = 0.0, exp = 0.0;
    int klass = 0;
    if (self->is_ttl) {
        if (cache_now(self, &now) < 0) {
            goto error;
        }
        if (self->time_objects && self->last_time != NULL) {
            /* the expiry time as cachetools computes it: time + ttl (OverflowError near
             * datetime.max, before anything changes) */
            PyObject *lt = Py_NewRef(self->last_time);
            PyObject *e = PyNumber_Add(lt, self->ttl_obj);  // Beware: Python code
            Py_DECREF(lt);
            if (e == NULL) {
                goto error;
            }
            Py_DECREF(e);
        }
        if (!own_ttl) {
            item_ttl = self->ttl;
        }
        else if (item_ttl != self->ttl) {
            if (ct_enable_heap(t) < 0) {
                goto error;
            }
            klass = 1;
        }
        exp = now + item_ttl;
        if (isnan(exp)) {
            /* an infinite time and ttl of opposite signs: expired at once (cachetools: not
             * now < nan), and first in the expiry order (nan would break the heap's order) */
            exp = -INFINITY;
        }
        if (expire_dispatch(self, now, &trash) < 0) {  // Beware: a subclass's expire()
            goto error;
        }
    }
    Py_ssize_t itemsize = item_size(self, value);  // Beware: getsizeof is Python code
    if (itemsize < 0) {
        goto error;
    }
    Py_ssize_t ix, need;
    for (;;) {
        ix = ct_lookup(t, key, hash);  // Beware: __eq__
        if (ix == CT_ERROR) {
            goto error;
        }
        need = ix < 0 ? itemsize : (t->sizes ? itemsize - t->sizes[ix] : 0);
        if (need <= self->maxsize - self->currsize) {
            break;
        }
        if (self->ovr & OVR_POPITEM) {
            PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, self->st->cache.str_popitem);
            if (r == NULL) {
                goto error;
            }
            self->evictions++;
            ct_trash(&trash, r);
            continue;  // the subclass may have done anything: look the key up again
        }
        /* no Python code from here to the commit: ix stays valid */
        while (need > self->maxsize - self->currsize) {
            Py_ssize_t victim = t->lru_head;
            if (victim < 0) {
                /* only if a callout re-initialised us with a smaller maxsize */
                PyErr_SetString(PyExc_ValueError, "value too large");
                goto error;
            }
            if (victim == ix) {
                ix = CT_NOTFOUND;  // updating a key evicted it (cachetools does the same)
                need = itemsize;
            }
            self->currsize -= ct_remove(t, victim, &trash);
            self->evictions++;
        }
        break;
    }
    /* commit */
    if (ix >= 0) {
        if (self->is_ttl && ct_reserve(t, &ix) < 0) {
            goto error;
        }
        if (klass == 1 && ct_enable_heap(t) < 0) {  // again: a callout may have re-initialised us
            goto error;
        }
        ct_entry *e = &t->entries[ix];
        ct_trash(&trash, e->value);
        e->value = Py_NewRef(value);
        if (t->sizes) {
            t->sizes[ix] = itemsize;
        }
        self->currsize += need;
        if (self->is_ttl) {
            ix = ct_move_to_end(t, ix);
            ct_set_exp(t, ix, exp, klass);
        }
        ct_touch(t, ix);
    }
    else {
        if (ct_reserve(t, NULL) < 0 || (klass == 1 && ct_enable_heap(t) < 0)) {
            goto error;
        }
        ix = ct_insert(t, Py_NewRef(key), Py_NewRef(value), hash);
        if (t->sizes) {
            t->sizes[ix] = itemsize;
        }
        self->currsize += itemsize;
        if (self->is_ttl) {
            ct_set_exp(t, ix, exp, klass);
        }
    }
    CHECK(self);
    ct_buf_flush(&trash);  // Beware: __del__ of replaced and evicted values
    return 0;
error:
    CHECK(self);
    ct_buf_flush(&trash);
    return -1;
}

/* Remove the entry at ix (found with no Python code run since): commit, then release its key
 * and value. Beware: their __del__ may run. */
static void
cache_remove_at(CacheObject *self, Py_ssize_t ix)
{
    ct_buf trash;
    ct_buf_init(&trash);
    self->currsize -= ct_remove(&self->t, ix, &trash);
    CHECK(self);
    ct_buf_flush(&trash);
}

/* del cache[key]; an expired TTLCache key is removed, then KeyError (as cachetools). */
static int
cache_del(CacheObject *self, PyObject *key)
{
    Py_hash_t hash = fa_hash(key);
    if (hash == -1) {
        return -1;
    }
    double now = 0.0;
    if (self->is_ttl && cache_now(self, &now) < 0) {
        return -1;
    }
    Py_ssize_t ix = ct_lookup(&self->t, key, hash);
    if (ix == CT_ERROR) {
        return -1;
    }
    if (ix < 0) {
        key_error(key);
        return -1;
    }
    int expired = self->is_ttl && !(now < self->t.exp[ix]);
    cache_remove_at(self, ix);
    if (expired) {
        key_error(key);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ construction */

static PyObject *
cache_new(PyTypeObject *tp, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    fa_state *st;
    CacheObject *self = (CacheObject *)fa_new_instance(tp, &st);  // zeroed
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->is_ttl = PyType_IsSubtype(tp, st->cache.TTLCacheType);
    ct_init(&self->t, self->is_ttl, 0, 0);
    self->t.ordered = self->is_ttl;  // first-insertion order beside the expiry order
    PyTypeObject *base = self->is_ttl ? st->cache.TTLCacheType : st->cache.LRUCacheType;
    PyObject *names[4] = {st->cache.str_popitem, st->cache.str_expire, st->cache.str_missing,
                          st->cache.str_getsizeof};  // in the order of the OVR_* bits
    self->ovr = fa_find_overrides(tp, base, names, 4);
    return (PyObject *)self;
}

static int
cache_traverse(PyObject *op, visitproc visit, void *arg)
{
    CacheObject *self = (CacheObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->maxsize_obj);
    Py_VISIT(self->getsizeof);
    Py_VISIT(self->timer);
    Py_VISIT(self->ttl_obj);
    Py_VISIT(self->timer_wrap);
    Py_VISIT(self->time_origin);
    Py_VISIT(self->last_time);
    if (fa_clock_traverse(&self->clk, visit, arg) < 0) {
        return -1;
    }
    return ct_traverse(&self->t, visit, arg);
}

static int
cache_tp_clear(PyObject *op)
{
    CacheObject *self = (CacheObject *)op;
    ct_buf trash;
    ct_buf_init(&trash);
    ct_clear(&self->t, &trash);
    self->currsize = 0;
    ct_trash(&trash, self->getsizeof);
    ct_trash(&trash, self->timer);
    ct_trash(&trash, self->clk.kloop);
    ct_trash(&trash, self->clk.kfn);
    self->getsizeof = self->timer = NULL;
    self->clk.kloop = self->clk.kfn = NULL;
    self->clk.valid = 0;
    CHECK(self);
    ct_buf_flush(&trash);
    Py_CLEAR(self->maxsize_obj);
    Py_CLEAR(self->ttl_obj);
    Py_CLEAR(self->timer_wrap);
    Py_CLEAR(self->time_origin);
    Py_CLEAR(self->last_time);
    return 0;
}

static void
cache_dealloc(PyObject *op)
{
    fa_gc_dealloc(op, cache_tp_clear);
}

/* maxsize: a non-negative int or float (math.inf: unbounded). */
static int
parse_maxsize(PyObject *obj, Py_ssize_t *out)
{
    if (PyLong_Check(obj)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow < 0 || (!overflow && v < 0)) {
            PyErr_Format(PyExc_ValueError, "maxsize must be non-negative, got %R", obj);
            return -1;
        }
        *out = (overflow || v > PY_SSIZE_T_MAX) ? PY_SSIZE_T_MAX : (Py_ssize_t)v;
        return 0;
    }
    if (PyFloat_Check(obj)) {
        double d = PyFloat_AS_DOUBLE(obj);
        if (isnan(d) || d < 0) {
            PyErr_Format(PyExc_ValueError, "maxsize must be non-negative, got %R", obj);
            return -1;
        }
        *out = d >= (double)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)floor(d);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "maxsize must be an int or a float, got %.100s",
                 Py_TYPE(obj)->tp_name);
    return -1;
}

static inline int
parse_ttl(PyObject *obj, double *out, const char *what)
{
    return fa_arg_real(obj, what, "an int or a float", 0, out);
}

static int
cache_init_common(CacheObject *self, const char *name, PyObject *maxsize, PyObject *getsizeof)
{
    if (maxsize == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "%s.__init__() missing 1 required positional argument: 'maxsize'", name);
        return -1;
    }
    Py_ssize_t ms;
    if (parse_maxsize(maxsize, &ms) < 0) {
        return -1;
    }
    if (getsizeof == Py_None) {
        getsizeof = NULL;
    }
    if (getsizeof != NULL && !PyCallable_Check(getsizeof)) {
        PyErr_Format(PyExc_TypeError, "getsizeof must be callable, got %.100s",
                     Py_TYPE(getsizeof)->tp_name);
        return -1;
    }
    PyObject *gs = NULL;  // new ref
    if (getsizeof != NULL) {
        gs = Py_NewRef(getsizeof);
    }
    else if (self->ovr & OVR_GETSIZEOF) {
        // a subclass's method
        gs = PyObject_GetAttr((PyObject *)self, self->st->cache.str_getsizeof);
        if (gs == NULL) {
            return -1;
        }
    }
    /* commit: a second __init__ starts from an empty cache, as cachetools' does */
    ct_buf trash;
    ct_buf_init(&trash);
    ct_clear(&self->t, &trash);
    ct_init(&self->t, self->is_ttl, gs != NULL, 0);
    self->t.ordered = self->is_ttl;
    self->currsize = 0;
    self->maxsize = ms;
    ct_trash(&trash, self->maxsize_obj);
    self->maxsize_obj = Py_NewRef(maxsize);
    ct_trash(&trash, self->getsizeof);
    self->getsizeof = gs;
    self->getsizeof_given = getsizeof != NULL;
    CHECK(self);
    ct_buf_flush(&trash);  // Beware: __del__ of the old items
    return 0;
}

static int
lru_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static const char *const names[] = {"maxsize", "getsizeof"};
    PyObject *vals[2] = {NULL, NULL};
    if (fa_parse_init(op, "LRUCache", args, kwargs, names, 2, vals) < 0) {
        return -1;
    }
    return cache_init_common((CacheObject *)op, "LRUCache", vals[0], vals[1]);
}

static int
ttl_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    CacheObject *self = (CacheObject *)op;
    static const char *const names[] = {"maxsize", "ttl", "timer", "getsizeof"};
    PyObject *vals[4] = {NULL, NULL, NULL, NULL};
    if (fa_parse_init(op, "TTLCache", args, kwargs, names, 4, vals) < 0) {
        return -1;
    }
    if (vals[0] != NULL && vals[1] == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "TTLCache.__init__() missing 1 required positional argument: 'ttl'");
        return -1;
    }
    double ttl = 0.0;
    PyObject *timer = vals[2];
    if (timer == self->st->core.time_monotonic || timer == Py_None) {
        timer = NULL;  // None stands for time.monotonic: the signature can show it
    }
    /* a ttl that is a duration (a timedelta: has total_seconds()) with a timer of our own:
     * times are objects (datetimes), see cache_seconds */
    int time_objects = 0;
    if (vals[1] != NULL && timer != NULL && !PyLong_Check(vals[1]) && !PyFloat_Check(vals[1])) {
        PyObject *secs = PyObject_CallMethod(vals[1], "total_seconds", NULL);
        if (secs == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return -1;
            }
            PyErr_Clear();  // not a duration: parse_ttl says what is allowed
        }
        else {
            ttl = PyFloat_AsDouble(secs);
            Py_DECREF(secs);
            if (ttl == -1.0 && PyErr_Occurred()) {
                return -1;
            }
            time_objects = 1;
        }
    }
    if (vals[1] != NULL && !time_objects && parse_ttl(vals[1], &ttl, "ttl") < 0) {
        return -1;
    }
    if (timer != NULL && !PyCallable_Check(timer)) {
        PyErr_Format(PyExc_TypeError, "timer must be callable, got %.100s",
                     Py_TYPE(timer)->tp_name);
        return -1;
    }
    if (cache_init_common(self, "TTLCache", vals[0], vals[3]) < 0) {
        return -1;
    }
    self->ttl = ttl;
    self->time_objects = time_objects;
    Py_XSETREF(self->ttl_obj, Py_NewRef(vals[1]));
    Py_XSETREF(self->timer, Py_XNewRef(timer));
    Py_CLEAR(self->timer_wrap);
    Py_CLEAR(self->time_origin);
    Py_CLEAR(self->last_time);
    /* time.monotonic is the cache's clock from the start (cache_clock_native); a timer's is
     * known at its first reading */
    PyObject *old_loop = self->clk.kloop, *old_fn = self->clk.kfn;
    self->clk.kloop = self->clk.kfn = NULL;
    self->clk.valid = timer == NULL;
    self->clk.offset = 0.0;
    self->clk.last = timer == NULL ? fa_monotonic() : 0.0;
    Py_XDECREF(old_loop);  // Beware: __init__ called again: may run Python code
    Py_XDECREF(old_fn);
    return 0;
}

/* ------------------------------------------------------------------ mapping protocol */

static Py_ssize_t
cache_length(PyObject *op)
{
    CacheObject *self = (CacheObject *)op;
    if (expire_now(self) < 0) {
        return -1;
    }
    return self->t.used;
}

static PyObject *
cache_subscript(PyObject *op, PyObject *key)
{
    CacheObject *self = (CacheObject *)op;
    Py_hash_t hash = fa_hash(key);
    if (hash == -1) {
        return NULL;
    }
    ct_table *t = &self->t;
    Py_ssize_t ix;
    if (FA_LIKELY(cache_native_time(self) && cache_clock_native(self))) {
        /* the fast path: no Python code between the lookup and the answer */
        ix = ct_lookup(t, key, hash);
        if (FA_LIKELY(ix >= 0)) {
            ct_touch(t, ix);
            CHECK(self);
            if (FA_LIKELY(!self->is_ttl || fa_monotonic_before(t->exp[ix]))) {
                self->hits++;
                return Py_NewRef(t->entries[ix].value);
            }
        }
        if (ix == CT_ERROR) {
            return NULL;
        }
        self->misses++;
        return cache_missing(self, key);
    }
    int fresh;
    ix = cache_find(self, key, hash, 1, &fresh);
    if (ix >= 0 && fresh) {
        self->hits++;
        return Py_NewRef(t->entries[ix].value);
    }
    if (ix == CT_ERROR) {
        return NULL;
    }
    self->misses++;
    return cache_missing(self, key);
}

static int
cache_ass_subscript(PyObject *op, PyObject *key, PyObject *value)
{
    CacheObject *self = (CacheObject *)op;
    if (value == NULL) {
        return cache_del(self, key);
    }
    return cache_set(self, key, value, 0, 0.0);
}

/* Is key in the cache (not expired)? 1 with its index in *ix, 0, or -1. Marks nothing. */
static int
cache_has(CacheObject *self, PyObject *key, Py_ssize_t *ix)
{
    Py_hash_t hash = fa_hash(key);
    if (hash == -1) {
        return -1;
    }
    int fresh;
    *ix = cache_find(self, key, hash, 0, &fresh);
    if (*ix == CT_ERROR) {
        return -1;
    }
    return *ix >= 0 && fresh;
}

static int
cache_contains(PyObject *op, PyObject *key)
{
    Py_ssize_t ix;
    return cache_has((CacheObject *)op, key, &ix);
}

/* get / pop / setdefault(key[, default]): cache_has(key) after checking the argument count */
static int
cache_key_arg(CacheObject *self, const char *name, PyObject *const *args, Py_ssize_t nargs,
              Py_ssize_t *ix)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s expected 1 or 2 arguments, got %zd", name, nargs);
        return -1;
    }
    return cache_has(self, args[0], ix);
}

/* ------------------------------------------------------------------ methods */

static PyObject *
cache_get(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    CacheObject *self = (CacheObject *)op;
    /* cachetools: `self[key] if key in self else default`, so expired items are not touched */
    Py_ssize_t ix;
    int found = cache_key_arg(self, "get", args, nargs, &ix);
    if (found > 0) {
        self->hits++;
        ct_touch(&self->t, ix);
        CHECK(self);
        return Py_NewRef(self->t.entries[ix].value);
    }
    if (found < 0) {
        return NULL;
    }
    self->misses++;
    return Py_NewRef(nargs > 1 ? args[1] : Py_None);
}

static PyObject *
cache_pop(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    CacheObject *self = (CacheObject *)op;
    Py_ssize_t ix;
    int found = cache_key_arg(self, "pop", args, nargs, &ix);
    if (found < 0) {
        return NULL;
    }
    if (!found) {
        if (nargs > 1) {
            return Py_NewRef(args[1]);
        }
        return key_error(args[0]);
    }
    PyObject *value = Py_NewRef(self->t.entries[ix].value);
    cache_remove_at(self, ix);
    return value;
}

static PyObject *
cache_popitem(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheObject *self = (CacheObject *)op;
    if (expire_now(self) < 0) {
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);  // Beware: may start the GC, which may run __del__s
    if (pair == NULL) {
        return NULL;
    }
    Py_ssize_t ix = self->t.lru_head;
    if (ix < 0) {
        Py_DECREF(pair);
        /* KeyError('... is empty') from None, as cachetools raises it: no chained context */
        PyObject *msg = PyUnicode_FromFormat("%s is empty", type_name(op));
        PyObject *exc = msg ? PyObject_CallOneArg(PyExc_KeyError, msg) : NULL;
        Py_XDECREF(msg);
        if (exc != NULL) {
            PyException_SetCause(exc, NULL);  // sets __suppress_context__
            PyErr_SetObject(PyExc_KeyError, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    ct_entry *e = &self->t.entries[ix];
    PyTuple_SET_ITEM(pair, 0, Py_NewRef(e->key));
    PyTuple_SET_ITEM(pair, 1, Py_NewRef(e->value));
    cache_remove_at(self, ix);
    return pair;
}

static PyObject *
cache_setdefault(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    CacheObject *self = (CacheObject *)op;
    Py_ssize_t ix;
    int found = cache_key_arg(self, "setdefault", args, nargs, &ix);
    if (found > 0) {
        ct_touch(&self->t, ix);
        CHECK(self);
        return Py_NewRef(self->t.entries[ix].value);
    }
    if (found < 0) {
        return NULL;
    }
    PyObject *dflt = nargs > 1 ? args[1] : Py_None;
    if (cache_set(self, args[0], dflt, 0, 0.0) < 0) {
        return NULL;
    }
    return Py_NewRef(dflt);
}

static PyObject *
cache_clear_method(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheObject *self = (CacheObject *)op;
    ct_buf trash;
    ct_buf_init(&trash);
    ct_clear(&self->t, &trash);  // detach first, then release
    self->currsize = 0;
    CHECK(self);
    ct_buf_flush(&trash);
    Py_RETURN_NONE;
}

static int
update_pair(PyObject *self, PyObject *item, Py_ssize_t i)
{
    PyObject *seq = PySequence_Fast(item, "cannot convert update sequence element to a sequence");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != 2) {
        PyErr_Format(PyExc_ValueError,
                     "update sequence element #%zd has length %zd; 2 is required", i, n);
        Py_DECREF(seq);
        return -1;
    }
    PyObject *k = Py_NewRef(PySequence_Fast_GET_ITEM(seq, 0));
    PyObject *v = Py_NewRef(PySequence_Fast_GET_ITEM(seq, 1));
    Py_DECREF(seq);
    int r = PyObject_SetItem(self, k, v);
    Py_DECREF(k);
    Py_DECREF(v);
    return r;
}

/* MutableMapping.update(other=(), /, **kwds), through self[key] = value. */
static PyObject *
cache_update(PyObject *op, PyObject *args, PyObject *kwargs)
{
    CacheObject *self = (CacheObject *)op;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "update expected at most 1 argument, got %zd", nargs);
        return NULL;
    }
    if (nargs == 1) {
        PyObject *other = PyTuple_GET_ITEM(args, 0);
        PyObject *it = NULL, *keys = NULL, *item;
        int is_map = PyDict_Check(other);
        if (!is_map) {
            is_map = PyObject_IsInstance(other, self->st->cache.Mapping);
            if (is_map < 0) {
                return NULL;
            }
        }
        if (!is_map) {
            is_map = PyObject_HasAttrString(other, "keys");
        }
        if (is_map) {
            keys = PyObject_CallMethod(other, "keys", NULL);
            if (keys == NULL) {
                return NULL;
            }
            it = PyObject_GetIter(keys);
            Py_DECREF(keys);
            if (it == NULL) {
                return NULL;
            }
            while ((item = PyIter_Next(it)) != NULL) {
                PyObject *v = PyObject_GetItem(other, item);
                int r = v ? PyObject_SetItem(op, item, v) : -1;
                Py_XDECREF(v);
                Py_DECREF(item);
                if (r < 0) {
                    Py_DECREF(it);
                    return NULL;
                }
            }
        }
        else {
            it = PyObject_GetIter(other);
            if (it == NULL) {
                return NULL;
            }
            Py_ssize_t i = 0;
            while ((item = PyIter_Next(it)) != NULL) {
                int r = update_pair(op, item, i++);
                Py_DECREF(item);
                if (r < 0) {
                    Py_DECREF(it);
                    return NULL;
                }
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) {
        PyObject *items = PyDict_Items(kwargs);  // a snapshot
        if (items == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
            PyObject *pair = PyList_GET_ITEM(items, i);
            if (PyObject_SetItem(op, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
                Py_DECREF(items);
                return NULL;
            }
        }
        Py_DECREF(items);
    }
    Py_RETURN_NONE;
}

static PyObject *
cache_missing_method(PyObject *Py_UNUSED(op), PyObject *key)
{
    return key_error(key);
}

static PyObject *
cache_expire(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    CacheObject *self = (CacheObject *)op;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "expire expected at most 1 argument, got %zd", nargs);
        return NULL;
    }
    double now;
    if (nargs == 1 && args[0] != Py_None) {
        if (self->time_objects ? cache_seconds(self, args[0], &now)
                               : parse_ttl(args[0], &now, "time")) {
            return NULL;
        }
        now = fa_clock_to_object(&self->clk, now);  // a time of the timer, on the cache's scale
    }
    else if (cache_now(self, &now) < 0) {
        return NULL;
    }
    ct_buf out, trash;
    ct_buf_init(&out);
    ct_buf_init(&trash);
    expire_internal(self, now, &out, &trash);
    ct_buf_flush(&trash);  // Beware: __del__s run; out holds what we return
    PyObject *list = PyList_New(out.n / 2);
    Py_ssize_t i = 0;
    if (list != NULL) {
        for (; i < out.n; i += 2) {
            PyObject *pair = PyTuple_New(2);
            if (pair == NULL) {
                Py_CLEAR(list);
                break;
            }
            PyTuple_SET_ITEM(pair, 0, out.items[i]);
            PyTuple_SET_ITEM(pair, 1, out.items[i + 1]);
            PyList_SET_ITEM(list, i / 2, pair);
        }
    }
    /* on error, release what was not moved into the list */
    for (; i < out.n; i++) {
        ct_trash(&trash, out.items[i]);
    }
    out.n = 0;
    ct_buf_flush(&out);
    ct_buf_flush(&trash);
    return list;
}

static PyObject *
ttl_set_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    CacheObject *self = (CacheObject *)op;
    PyObject *key = NULL, *value = NULL, *ttl = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "set() takes from 2 to 3 positional arguments but %zd "
                     "were given", nargs);
        return NULL;
    }
    PyObject **slots[3] = {&key, &value, &ttl};
    static const char *const names[3] = {"key", "value", "ttl"};
    for (Py_ssize_t i = 0; i < nargs; i++) {
        *slots[i] = args[i];
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int j;
        for (j = 0; j < 3; j++) {
            if (PyUnicode_CompareWithASCIIString(name, names[j]) == 0) {
                break;
            }
        }
        if (j == 3) {
            PyErr_Format(PyExc_TypeError, "set() got an unexpected keyword argument '%S'", name);
            return NULL;
        }
        if (j < nargs) {
            PyErr_Format(PyExc_TypeError, "set() got multiple values for argument '%s'",
                         names[j]);
            return NULL;
        }
        *slots[j] = args[nargs + k];
    }
    if (key == NULL || value == NULL) {
        PyErr_SetString(PyExc_TypeError, "set() missing required argument 'key' or 'value'");
        return NULL;
    }
    double t = 0.0;
    int own = ttl != Py_None;
    if (own && parse_ttl(ttl, &t, "ttl") < 0) {
        return NULL;
    }
    if (cache_set(self, key, value, own, t) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A snapshot of the live (unexpired) items as a new dict. */
static PyObject *
cache_snapshot(CacheObject *self)
{
    double now = 0.0;
    if (self->is_ttl && cache_now(self, &now) < 0) {
        return NULL;
    }
    ct_buf buf;
    ct_buf_init(&buf);
    ct_table *t = &self->t;
    int32_t *order;
    if (ct_order(t, &order) < 0) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < t->used; k++) {
        Py_ssize_t i = order[k];
        ct_entry *e = &t->entries[i];
        if (self->is_ttl && !(now < t->exp[i])) {
            continue;
        }
        if (buf.n + 2 > buf.cap && ct_buf_grow(&buf) < 0) {
            PyMem_Free(order);
            ct_buf_flush(&buf);
            return PyErr_NoMemory();
        }
        buf.items[buf.n++] = Py_NewRef(e->key);
        buf.items[buf.n++] = Py_NewRef(e->value);
    }
    PyMem_Free(order);
    /* Python code may run from here on (the dict compares keys): we hold our own references */
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d != NULL && i < buf.n; i += 2) {
        if (PyDict_SetItem(d, buf.items[i], buf.items[i + 1]) < 0) {
            Py_CLEAR(d);
        }
    }
    ct_buf_flush(&buf);
    return d;
}

static PyObject *
cache_repr(PyObject *op)
{
    CacheObject *self = (CacheObject *)op;
    int rc = Py_ReprEnter(op);
    if (rc != 0) {
        return rc > 0 ? PyUnicode_FromFormat("%s(...)", type_name(op)) : NULL;
    }
    PyObject *r = NULL, *d = NULL;
    if (expire_now(self) < 0) {
        goto done;
    }
    d = cache_snapshot(self);
    if (d == NULL) {
        goto done;
    }
    PyObject *ms = self->maxsize_obj ? Py_NewRef(self->maxsize_obj) : PyLong_FromLong(0);
    if (ms != NULL) {
        r = PyUnicode_FromFormat("%s(%R, maxsize=%R, currsize=%zd)", type_name(op), d, ms,
                                 self->currsize);
        Py_DECREF(ms);
    }
done:
    Py_XDECREF(d);
    Py_ReprLeave(op);
    return r;
}

static PyObject *
cache_richcompare(PyObject *op, PyObject *other, int cmp)
{
    CacheObject *self = (CacheObject *)op;
    if (cmp != Py_EQ && cmp != Py_NE) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    int is_map = PyDict_Check(other) || PyObject_TypeCheck(other, self->st->cache.LRUCacheType)
                 || PyObject_TypeCheck(other, self->st->cache.TTLCacheType);
    if (!is_map) {
        is_map = PyObject_IsInstance(other, self->st->cache.Mapping);
        if (is_map < 0) {
            return NULL;
        }
        if (!is_map) {
            Py_RETURN_NOTIMPLEMENTED;
        }
    }
    PyObject *a = cache_snapshot(self), *b = NULL, *r = NULL;
    if (a == NULL) {
        return NULL;
    }
    if (PyObject_TypeCheck(other, self->st->cache.LRUCacheType)
        || PyObject_TypeCheck(other, self->st->cache.TTLCacheType)) {
        b = cache_snapshot((CacheObject *)other);
    }
    else if (PyDict_Check(other)) {
        b = Py_NewRef(other);
    }
    else {
        PyObject *items = PyObject_CallMethod(other, "items", NULL);
        if (items != NULL) {
            b = PyObject_CallOneArg((PyObject *)&PyDict_Type, items);
            Py_DECREF(items);
        }
    }
    if (b != NULL) {
        r = PyObject_RichCompare(a, b, cmp);
        Py_DECREF(b);
    }
    Py_DECREF(a);
    return r;
}

static PyObject *new_view(CacheObject *self, PyTypeObject *tp);
static PyObject *new_iter(CacheObject *self, int kind);

static PyObject *
cache_iter(PyObject *op)
{
    return new_iter((CacheObject *)op, 0);
}

static PyObject *
cache_keys(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return new_view((CacheObject *)op, ((CacheObject *)op)->st->cache.CacheKeysType);
}

static PyObject *
cache_values(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return new_view((CacheObject *)op, ((CacheObject *)op)->st->cache.CacheValuesType);
}

static PyObject *
cache_items(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return new_view((CacheObject *)op, ((CacheObject *)op)->st->cache.CacheItemsType);
}

static PyObject *
cache_copy(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheObject *self = (CacheObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    CacheObject *n = (CacheObject *)cache_new(tp, NULL, NULL);  // Beware: allocation, GC
    if (n == NULL) {
        return NULL;
    }
    if (tp->tp_dictoffset) {
        /* a subclass instance: copy its attributes too */
        PyObject *d = PyObject_GetAttrString(op, "__dict__"), *dict = NULL;
        int r = -1;
        if (d != NULL && (dict = PyDict_Copy(d)) != NULL) {
            r = PyObject_SetAttrString((PyObject *)n, "__dict__", dict);
        }
        Py_XDECREF(d);
        Py_XDECREF(dict);
        if (r < 0) {
            Py_DECREF(n);
            return NULL;
        }
    }
    /* from here to the end: no Python code, so the snapshot is consistent */
    ct_table *t = &self->t, *c = &n->t;
    *c = *t;
    c->index = NULL;
    c->entries = NULL;
    c->exp = NULL;
    c->hpos = c->heap = NULL;
    c->sizes = NULL;
    c->seq = NULL;
    if (t->cap > 0) {
        c->index = PyMem_Malloc(sizeof(int32_t) * (size_t)t->size);
        c->entries = PyMem_Malloc(sizeof(ct_entry) * (size_t)t->cap);
        c->exp = t->exp ? PyMem_Malloc(sizeof(double) * (size_t)t->cap) : NULL;
        c->hpos = t->hpos ? PyMem_Malloc(sizeof(int32_t) * (size_t)t->cap) : NULL;
        c->heap = t->heap ? PyMem_Malloc(sizeof(int32_t) * (size_t)t->cap) : NULL;
        c->sizes = t->sizes ? PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)t->cap) : NULL;
        c->seq = t->seq ? PyMem_Malloc(sizeof(int64_t) * (size_t)t->cap) : NULL;
        if (!c->index || !c->entries || (t->exp && !c->exp) || (t->hpos && !c->hpos)
            || (t->heap && !c->heap) || (t->sizes && !c->sizes) || (t->seq && !c->seq)) {
            ct_free_arrays(c->index, c->entries, c->exp, c->hpos, c->heap, c->sizes, c->seq);
            ct_init(c, t->timed, t->sized, t->classed);
            c->ordered = t->ordered;
            Py_DECREF(n);
            return PyErr_NoMemory();
        }
        memcpy(c->index, t->index, sizeof(int32_t) * (size_t)t->size);
        memcpy(c->entries, t->entries, sizeof(ct_entry) * (size_t)t->cap);
        if (t->exp) {
            memcpy(c->exp, t->exp, sizeof(double) * (size_t)t->cap);
        }
        if (t->hpos) {
            memcpy(c->hpos, t->hpos, sizeof(int32_t) * (size_t)t->cap);
            memcpy(c->heap, t->heap, sizeof(int32_t) * (size_t)t->cap);
        }
        if (t->sizes) {
            memcpy(c->sizes, t->sizes, sizeof(Py_ssize_t) * (size_t)t->cap);
        }
        if (t->seq) {
            memcpy(c->seq, t->seq, sizeof(int64_t) * (size_t)t->cap);
        }
        for (Py_ssize_t i = 0; i < t->nentries; i++) {
            if (c->entries[i].key != NULL) {
                Py_INCREF(c->entries[i].key);
                Py_INCREF(c->entries[i].value);
            }
        }
    }
    c->version = 0;
    n->maxsize_obj = Py_XNewRef(self->maxsize_obj);
    n->getsizeof = Py_XNewRef(self->getsizeof);
    n->timer = Py_XNewRef(self->timer);
    n->clk = self->clk;  // the same clock, the same scale
    Py_XINCREF(n->clk.kloop);
    Py_XINCREF(n->clk.kfn);
    n->ttl_obj = Py_XNewRef(self->ttl_obj);
    n->time_origin = Py_XNewRef(self->time_origin);  // its expiry times count from there too
    n->time_objects = self->time_objects;
    n->getsizeof_given = self->getsizeof_given;
    n->maxsize = self->maxsize;
    n->currsize = self->currsize;
    n->ttl = self->ttl;
    CHECK(n);
    return (PyObject *)n;
}

/* __reduce__: (type, constructor arguments, state). The state lists the items in the table's
 * order (for TTLCache: the expiry order) as (key, value, size[, expiry time, own ttl, insertion
 * stamp]), then the LRU order as positions in that list, the counters, and the instance __dict__ (subclasses). Expiry times are the timer's, as
 * cachetools pickles them. */
static PyObject *
cache_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheObject *self = (CacheObject *)op;
    fa_state *st = self->st;
    PyObject *args = NULL, *items = NULL, *lru = NULL, *dict = NULL, *r = NULL, *restore = NULL;
    PyObject *ms = self->maxsize_obj ? self->maxsize_obj : Py_None;
    PyObject *gs = self->getsizeof_given ? self->getsizeof : Py_None;
    if (ms == Py_None) {
        ms = PyLong_FromLong(0);
    }
    else {
        Py_INCREF(ms);
    }
    if (ms == NULL) {
        return NULL;
    }
    if (self->is_ttl) {
        PyObject *ttl = self->ttl_obj ? Py_NewRef(self->ttl_obj) : PyLong_FromLong(0);
        PyObject *timer = self->timer ? self->timer : st->core.time_monotonic;
        args = ttl ? PyTuple_Pack(4, ms, ttl, timer, gs) : NULL;
        Py_XDECREF(ttl);
    }
    else {
        args = PyTuple_Pack(2, ms, gs);
    }
    Py_DECREF(ms);
    if (args == NULL) {
        return NULL;
    }
    /* snapshot the table with our own references first: building tuples may run the GC */
    ct_table *t = &self->t;
    Py_ssize_t n = t->used, k = 0;
    ct_buf buf;
    ct_buf_init(&buf);
    int32_t *pos = n ? PyMem_Malloc(sizeof(int32_t) * (size_t)t->nentries) : NULL;
    double *exps = n && t->exp ? PyMem_Malloc(sizeof(double) * (size_t)n) : NULL;
    long long *seqs = n && t->seq ? PyMem_Malloc(sizeof(long long) * (size_t)n) : NULL;
    int *own = n && t->exp ? PyMem_Malloc(sizeof(int) * (size_t)n) : NULL;
    Py_ssize_t *sizes = n ? PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n) : NULL;
    int32_t *order = n ? PyMem_Malloc(sizeof(int32_t) * (size_t)n) : NULL;
    if (n && (!pos || !sizes || !order || (t->exp && (!exps || !own)) || (t->seq && !seqs))) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < t->nentries; i++) {
        ct_entry *e = &t->entries[i];
        if (e->key == NULL) {
            continue;
        }
        if (buf.n + 2 > buf.cap && ct_buf_grow(&buf) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        buf.items[buf.n++] = Py_NewRef(e->key);
        buf.items[buf.n++] = Py_NewRef(e->value);
        pos[i] = (int32_t)k;
        sizes[k] = t->sizes ? t->sizes[i] : 1;
        if (t->exp) {
            exps[k] = fa_clock_to_reading(&self->clk, t->exp[i]);  // on the timer's own scale
            own[k] = t->hpos != NULL && t->hpos[i] >= 0;
        }
        if (seqs) {
            seqs[k] = (long long)t->seq[i];
        }
        k++;
    }
    Py_ssize_t j = 0;
    for (int32_t ix = t->lru_head; ix >= 0; ix = t->entries[ix].next) {
        order[j++] = pos[ix];
    }
    assert(j == n && k == n);
    items = PyList_New(n);
    lru = PyList_New(n);
    if (items == NULL || lru == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = self->is_ttl
            ? Py_BuildValue("(OOndOL)", buf.items[2 * i], buf.items[2 * i + 1], sizes[i], exps[i],
                            own[i] ? Py_True : Py_False, seqs[i])
            : Py_BuildValue("(OOn)", buf.items[2 * i], buf.items[2 * i + 1], sizes[i]);
        PyObject *o = PyLong_FromLong(order[i]);
        if (item == NULL || o == NULL) {
            Py_XDECREF(item);
            Py_XDECREF(o);
            goto done;
        }
        PyList_SET_ITEM(items, i, item);
        PyList_SET_ITEM(lru, i, o);
    }
    if (Py_TYPE(op)->tp_dictoffset) {
        dict = PyObject_GetAttrString(op, "__dict__");
        if (dict == NULL) {
            goto done;
        }
    }
    /* rebuilt by type(self)._restore(args): the base class's __init__, never a subclass's,
     * whose signature may differ (cachetools pickles without calling __init__ at all) */
    restore = PyObject_GetAttr((PyObject *)Py_TYPE(op), st->cache.str_restore);
    if (restore == NULL) {
        goto done;
    }
    /* with time objects, the origin the expiry times count from comes last */
    r = self->time_objects && self->time_origin != NULL
        ? Py_BuildValue("(O (O) (O O (KKKK) O O))", restore, args, items, lru, self->hits,
                        self->misses, self->evictions, self->expirations,
                        dict ? dict : Py_None, self->time_origin)
        : Py_BuildValue("(O (O) (O O (KKKK) O))", restore, args, items, lru, self->hits,
                        self->misses, self->evictions, self->expirations,
                        dict ? dict : Py_None);
done:
    PyMem_Free(pos);
    PyMem_Free(exps);
    PyMem_Free(seqs);
    PyMem_Free(own);
    PyMem_Free(sizes);
    PyMem_Free(order);
    ct_buf_flush(&buf);
    Py_XDECREF(args);
    Py_XDECREF(items);
    Py_XDECREF(lru);
    Py_XDECREF(dict);
    Py_XDECREF(restore);
    return r;
}

static int lru_init(PyObject *op, PyObject *args, PyObject *kwargs);
static int ttl_init(PyObject *op, PyObject *args, PyObject *kwargs);

/* cls._restore(args): a new cls instance, initialised by LRUCache's or TTLCache's own __init__
 * with args (what __reduce__ saved), whatever cls.__init__ takes. */
static PyObject *
cache_restore(PyObject *cls, PyObject *args)
{
    if (!PyType_Check(cls) || !PyTuple_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "_restore(args): args must be a tuple");
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)cls;
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL) {
        return NULL;
    }
    PyObject *obj = tp->tp_new(tp, empty, NULL);
    Py_DECREF(empty);
    if (obj == NULL) {
        return NULL;
    }
    CacheObject *self = (CacheObject *)obj;
    int rc = self->is_ttl ? ttl_init(obj, args, NULL) : lru_init(obj, args, NULL);
    if (rc < 0) {
        Py_DECREF(obj);
        return NULL;
    }
    return obj;
}

/* __setstate__: restore what __reduce__ saved (after __init__ made an empty cache). */
static PyObject *
cache_setstate(PyObject *op, PyObject *state)
{
    CacheObject *self = (CacheObject *)op;
    PyObject *items, *lru, *dict, *origin = NULL;
    unsigned long long hits, misses, evictions, expirations;
    if (!PyTuple_Check(state)
        || !PyArg_ParseTuple(state, "O!O!(KKKK)O|O;invalid LRUCache/TTLCache state",
                             &PyList_Type, &items, &PyList_Type, &lru, &hits, &misses,
                             &evictions, &expirations, &dict, &origin)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "invalid LRUCache/TTLCache state");
        }
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (PyList_GET_SIZE(lru) != n) {
        PyErr_SetString(PyExc_ValueError,
                        "invalid cache state: the LRU order is not a permutation");
        return NULL;
    }
    items = PySequence_Tuple(items);  // our own snapshots: unpickled lists are not shared, but
    lru = PySequence_Tuple(lru);      // __eq__ and __hash__ below may run arbitrary code
    int32_t *ixs = n ? PyMem_Malloc(sizeof(int32_t) * (size_t)n) : NULL;
    PyObject **keys = n ? PyMem_Calloc((size_t)n, sizeof(PyObject *)) : NULL;
    Py_hash_t *hashes = n ? PyMem_Malloc(sizeof(Py_hash_t) * (size_t)n) : NULL;
    int64_t *stamps = n ? PyMem_Malloc(sizeof(int64_t) * 2 * (size_t)n) : NULL;
    ct_buf trash;
    ct_buf_init(&trash);
    PyObject *r = NULL;
    if (items == NULL || lru == NULL
        || (n && (ixs == NULL || keys == NULL || hashes == NULL || stamps == NULL))) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto done;
    }
    ct_clear(&self->t, &trash);
    self->currsize = 0;
    CHECK(self);
    ct_table *t = &self->t;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i), *key, *value, *own = Py_False;
        Py_ssize_t size;
        double exp = 0.0;
        long long stamp = (long long)i;  // a state without stamps: insertion = table order
        int ok = self->is_ttl
            ? PyArg_ParseTuple(item, "OOndO|L;invalid TTLCache item", &key, &value, &size, &exp,
                               &own, &stamp)
            : PyArg_ParseTuple(item, "OOn;invalid LRUCache item", &key, &value, &size);
        if (!ok) {
            goto done;
        }
        if (size < 0 || size > self->maxsize - self->currsize || (!t->sized && size != 1)) {
            PyErr_SetString(PyExc_ValueError, "invalid cache state: sizes exceed maxsize");
            goto done;
        }
        int klass = PyObject_IsTrue(own);
        if (klass < 0 || (self->is_ttl && isnan(exp))) {
            if (klass >= 0) {
                PyErr_SetString(PyExc_ValueError, "invalid cache state: nan expiry");
            }
            goto done;
        }
        Py_hash_t hash = fa_hash(key);
        if (hash == -1) {
            goto done;
        }
        Py_ssize_t ix = ct_lookup(t, key, hash);  // Beware: __eq__
        if (ix == CT_ERROR) {
            goto done;
        }
        if (ix >= 0) {
            PyErr_SetString(PyExc_ValueError, "invalid cache state: a key appears twice");
            goto done;
        }
        if (ct_reserve(t, NULL) < 0 || (klass && ct_enable_heap(t) < 0)) {
            goto done;
        }
        ix = ct_insert(t, Py_NewRef(key), Py_NewRef(value), hash);
        if (t->sizes) {
            t->sizes[ix] = size;
        }
        self->currsize += size;
        if (self->is_ttl) {
            ct_set_exp(t, ix, fa_clock_to_object(&self->clk, exp), klass);
        }
        stamps[2 * i] = stamp;
        stamps[2 * i + 1] = i;
        keys[i] = key;
        hashes[i] = hash;
        CHECK(self);  // whole again before the next key's __hash__/__eq__
    }
    /* the inserts found no key twice, but __eq__ may have changed the table meanwhile: find
     * each entry by identity (no Python code from here on), then restore the LRU order */
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t ix = ct_find_ident(t, keys[i], hashes[i]);
        if (ix < 0 || t->used != n) {
            PyErr_SetString(PyExc_RuntimeError, "cache changed during __setstate__");
            goto done;
        }
        ixs[i] = (int32_t)ix;
    }
    if (t->seq != NULL) {
        /* the insertion order: the items ranked by their stamps (ties: table order), as the
         * seqs 0..n-1 that the inserts gave out */
        qsort(stamps, (size_t)n, 2 * sizeof(int64_t), ct_seq_cmp);
        for (Py_ssize_t k = 0; k < n; k++) {
            t->seq[ixs[stamps[2 * k + 1]]] = k;
        }
    }
    int32_t prev = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t p = PyLong_AsSsize_t(PyTuple_GET_ITEM(lru, i));
        if (p < 0 || p >= n || ixs[p] < 0) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError,
                                "invalid cache state: the LRU order is not a permutation");
            }
            /* undo the half-made links: keep the insertion order */
            t->lru_head = t->lru_tail = -1;
            for (Py_ssize_t q = 0; q < t->nentries; q++) {
                if (t->entries[q].key != NULL) {
                    ct_lru_append(t, (int32_t)q);
                }
            }
            goto done;
        }
        int32_t ix = ixs[p];
        ixs[p] = -1;  // each position once
        t->entries[ix].prev = prev;
        if (prev >= 0) {
            t->entries[prev].next = ix;
        }
        else {
            t->lru_head = ix;
        }
        prev = ix;
    }
    if (prev >= 0) {
        t->entries[prev].next = -1;
    }
    t->lru_tail = prev;
    self->hits = hits;
    self->misses = misses;
    self->evictions = evictions;
    self->expirations = expirations;
    if (origin != NULL && self->time_objects) {
        Py_XSETREF(self->time_origin, Py_NewRef(origin));
    }
    CHECK(self);
    if (dict != Py_None) {
        if (!Py_TYPE(op)->tp_dictoffset || !PyDict_Check(dict)) {
            PyErr_SetString(PyExc_TypeError, "invalid cache state: unexpected __dict__");
            goto done;
        }
        PyObject *d = PyObject_GetAttrString(op, "__dict__");
        int rc = d ? PyDict_Update(d, dict) : -1;
        Py_XDECREF(d);
        if (rc < 0) {
            goto done;
        }
    }
    r = Py_NewRef(Py_None);
done:
    if (r == NULL) {
        CHECK(self);
    }
    PyMem_Free(ixs);
    PyMem_Free(keys);
    PyMem_Free(hashes);
    PyMem_Free(stamps);
    Py_XDECREF(items);
    Py_XDECREF(lru);
    ct_buf_flush(&trash);
    return r;
}

static PyObject *
cache_sizeof(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheObject *self = (CacheObject *)op;
    size_t n = (size_t)Py_TYPE(op)->tp_basicsize + ct_sizeof(&self->t);
    return PyLong_FromSize_t(n);
}

static PyObject *
cache_stats(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheObject *self = (CacheObject *)op;
    if (expire_now(self) < 0) {
        return NULL;
    }
    PyObject *ms = self->maxsize_obj ? self->maxsize_obj : Py_None;
    if (self->is_ttl) {
        return Py_BuildValue("{sKsKsKsKsnsO}", "hits", self->hits, "misses", self->misses,
                             "evictions", self->evictions, "expirations", self->expirations,
                             "currsize", self->currsize, "maxsize", ms);
    }
    return Py_BuildValue("{sKsKsKsnsO}", "hits", self->hits, "misses", self->misses,
                         "evictions", self->evictions, "currsize", self->currsize,
                         "maxsize", ms);
}

static PyObject *
cache_reset_stats(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheObject *self = (CacheObject *)op;
    self->hits = self->misses = self->evictions = self->expirations = 0;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ attributes */

/* maxsize and ttl: the number given to __init__, as given (0 before __init__) */
#define GIVEN_GETTER(name, field) \
    static PyObject *cache_get_##name(PyObject *op, void *Py_UNUSED(c)) \
    { \
        CacheObject *self = (CacheObject *)op; \
        return self->field ? Py_NewRef(self->field) : PyLong_FromLong(0); \
    }
GIVEN_GETTER(maxsize, maxsize_obj)
GIVEN_GETTER(ttl, ttl_obj)

static PyObject *
cache_get_currsize(PyObject *op, void *Py_UNUSED(c))
{
    CacheObject *self = (CacheObject *)op;
    if (expire_now(self) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(self->currsize);
}

#define COUNTER_GETTER(field) \
    static PyObject *cache_get_##field(PyObject *op, void *Py_UNUSED(c)) \
    { \
        return PyLong_FromUnsignedLongLong(((CacheObject *)op)->field); \
    }
COUNTER_GETTER(hits)
COUNTER_GETTER(misses)
COUNTER_GETTER(evictions)
COUNTER_GETTER(expirations)

static PyObject *
cache_get_timer(PyObject *op, void *Py_UNUSED(c))
{
    CacheObject *self = (CacheObject *)op;
    if (self->timer_wrap == NULL) {
        CacheTimerObject *w = PyObject_GC_New(CacheTimerObject, self->st->cache.CacheTimerType);
        if (w == NULL) {
            return NULL;
        }
        w->timer = Py_NewRef(self->timer ? self->timer : self->st->core.time_monotonic);
        w->frozen = NULL;
        w->nesting = 0;
        PyObject_GC_Track(w);
        if (self->timer_wrap != NULL) {  // made meanwhile (the GC ran a __del__ that asked)
            Py_DECREF(w);
        }
        else {
            self->timer_wrap = (PyObject *)w;
        }
    }
    return Py_NewRef(self->timer_wrap);
}

/* ------------------------------------------------------------------ the timer attribute */

static PyObject *
ctimer_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    CacheTimerObject *w = (CacheTimerObject *)op;
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "timer() takes no arguments");
        return NULL;
    }
    if (w->nesting > 0 && w->frozen != NULL) {
        return Py_NewRef(w->frozen);
    }
    return PyObject_CallNoArgs(w->timer);
}

static PyObject *
ctimer_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheTimerObject *w = (CacheTimerObject *)op;
    if (w->nesting == 0) {
        PyObject *t = PyObject_CallNoArgs(w->timer);  // Beware: Python code
        if (t == NULL) {
            return NULL;
        }
        if (w->nesting == 0) {
            Py_XSETREF(w->frozen, t);
        }
        else {
            Py_DECREF(t);  // entered meanwhile: that time stands
        }
    }
    w->nesting++;
    return Py_NewRef(w->frozen);
}

static PyObject *
ctimer_exit(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    CacheTimerObject *w = (CacheTimerObject *)op;
    if (w->nesting > 0 && --w->nesting == 0) {
        Py_CLEAR(w->frozen);
    }
    Py_RETURN_NONE;
}

/* a new one on the same timer, not frozen (cachetools' __copy__ and __reduce__) */
static PyObject *
ctimer_copy(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheTimerObject *w = (CacheTimerObject *)op;
    CacheTimerObject *n = PyObject_GC_New(CacheTimerObject, Py_TYPE(op));
    if (n == NULL) {
        return NULL;
    }
    n->timer = Py_NewRef(w->timer);
    n->frozen = NULL;
    n->nesting = 0;
    PyObject_GC_Track(n);
    return (PyObject *)n;
}

/* Other attributes are the timer's (cachetools' __getattr__). */
static PyObject *
ctimer_getattro(PyObject *op, PyObject *name)
{
    PyObject *r = PyObject_GenericGetAttr(op, name);
    if (r != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return r;
    }
    PyErr_Clear();
    return PyObject_GetAttr(((CacheTimerObject *)op)->timer, name);
}

static PyObject *
ctimer_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<TTLCache timer %R%s>", ((CacheTimerObject *)op)->timer,
                                ((CacheTimerObject *)op)->nesting ? " (frozen)" : "");
}

FA_GC_REFS2(ctimer, CacheTimerObject, timer, frozen)

static PyMethodDef ctimer_methods[] = {
    {"__enter__", ctimer_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nFreeze the time (outermost `with`) and return it."},
    {"__exit__", (PyCFunction)(void (*)(void))ctimer_exit, METH_FASTCALL,
     "__exit__($self, /, *exc)\n--\n\nUnfreeze after the outermost `with`."},
    {"__copy__", ctimer_copy, METH_NOARGS,
     "__copy__($self, /)\n--\n\nA new one on the same timer."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ctimer_slots[] = {
    {Py_tp_call, ctimer_call},
    {Py_tp_getattro, ctimer_getattro},
    {Py_tp_repr, ctimer_repr},
    {Py_tp_methods, ctimer_methods},
    {Py_tp_traverse, ctimer_traverse},
    {Py_tp_clear, ctimer_clear},
    {Py_tp_dealloc, fa_gc_tp_dealloc},
    {0, NULL},
};

static PyType_Spec ctimer_spec = {
    .name = "aiofast._core.cache_timer",
    .basicsize = sizeof(CacheTimerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ctimer_slots,
};

/* ------------------------------------------------------------------ iteration */

static PyObject *
new_iter(CacheObject *self, int kind)
{
    CacheIterObject *it = PyObject_GC_New(CacheIterObject, self->st->cache.CacheIterType);
    if (it == NULL) {
        return NULL;
    }
    it->cache = (CacheObject *)Py_NewRef(self);
    it->pos = 0;
    it->version = self->t.itver;
    it->kind = kind;
    it->started = 0;
    it->keys = NULL;
    it->hashes = NULL;
    it->nkeys = 0;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

/* What the iterator yields for one item: the key, the value or a (key, value) pair. */
static PyObject *
iter_result(int kind, PyObject *key, PyObject *value)
{
    if (kind == 0) {
        return Py_NewRef(key);
    }
    if (kind == 1) {
        return Py_NewRef(value);
    }
    PyObject *k = Py_NewRef(key), *v = Py_NewRef(value);  // ours: the allocation may run the GC
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(k);
        Py_DECREF(v);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, k);
    PyTuple_SET_ITEM(pair, 1, v);
    return pair;
}

/* Drop a TTLCache iterator's snapshot. Detached first: a key's decref may run Python code. */
static void
iter_drop_keys(CacheIterObject *it)
{
    PyObject **keys = it->keys;
    Py_ssize_t n = it->nkeys;
    PyMem_Free(it->hashes);
    it->keys = NULL;
    it->hashes = NULL;
    it->nkeys = 0;
    it->pos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(keys[i]);
    }
    PyMem_Free(keys);
}

/* The end of the iteration: the iterator lets go of its cache and its snapshot. */
static PyObject *
iter_exhausted(CacheIterObject *it)
{
    CacheObject *c = it->cache;
    it->cache = NULL;
    iter_drop_keys(it);
    Py_XDECREF(c);
    return NULL;
}

/* TTLCache: the keys in insertion order, taken at the first next() as cachetools takes its
 * list of keys; no Python code runs while it is taken. */
static int
iter_take_keys(CacheIterObject *it, CacheObject *c)
{
    ct_table *t = &c->t;
    int32_t *order;
    if (ct_order(t, &order) < 0) {
        return -1;
    }
    Py_ssize_t n = t->used;
    if (n == 0) {
        return 0;
    }
    PyObject **keys = PyMem_Malloc(sizeof(PyObject *) * (size_t)n);
    Py_hash_t *hashes = PyMem_Malloc(sizeof(Py_hash_t) * (size_t)n);
    if (keys == NULL || hashes == NULL) {
        PyMem_Free(order);
        PyMem_Free(keys);
        PyMem_Free(hashes);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        ct_entry *e = &t->entries[order[k]];
        keys[k] = Py_NewRef(e->key);
        hashes[k] = e->hash;
    }
    PyMem_Free(order);
    it->keys = keys;
    it->hashes = hashes;
    it->nkeys = n;
    it->pos = 0;
    return 0;
}

/* TTLCache: each key of the snapshot that is still present and fresh when reached. Setting or
 * deleting items meanwhile raises nothing (items may expire meanwhile anyway). */
static PyObject *
ttl_iter_next(CacheIterObject *it, CacheObject *c)
{
    if (!it->started) {
        it->started = 1;
        if (iter_take_keys(it, c) < 0) {
            return NULL;
        }
    }
    while (it->pos < it->nkeys) {
        Py_ssize_t i = it->pos++;
        PyObject *key = Py_NewRef(it->keys[i]);
        Py_hash_t hash = it->hashes[i];
        Py_INCREF(c);
        int fresh;
        Py_ssize_t ix = cache_find(c, key, hash, 0, &fresh);  // Beware: __eq__, the timer
        PyObject *r = NULL;
        if (ix >= 0 && fresh) {
            r = iter_result(it->kind, key, c->t.entries[ix].value);
        }
        Py_DECREF(key);
        Py_DECREF(c);
        if (r != NULL || ix == CT_ERROR || (ix >= 0 && fresh)) {
            return r;  // an item, or an error
        }
    }
    return iter_exhausted(it);
}

static PyObject *
iter_next(PyObject *op)
{
    CacheIterObject *it = (CacheIterObject *)op;
    CacheObject *c = it->cache;
    if (c == NULL) {
        return NULL;
    }
    if (c->is_ttl) {
        return ttl_iter_next(it, c);
    }
    if (c->t.itver != it->version) {
        PyErr_Format(PyExc_RuntimeError, "%s changed size during iteration",
                     type_name((PyObject *)c));
        return NULL;
    }
    ct_table *t = &c->t;
    while (it->pos < t->nentries) {
        Py_ssize_t i = it->pos++;
        ct_entry *e = &t->entries[i];
        if (e->key == NULL) {
            continue;
        }
        return iter_result(it->kind, e->key, e->value);
    }
    return iter_exhausted(it);
}

static int
iter_traverse(PyObject *op, visitproc visit, void *arg)
{
    CacheIterObject *it = (CacheIterObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)it->cache);
    for (Py_ssize_t i = 0; i < it->nkeys; i++) {
        Py_VISIT(it->keys[i]);
    }
    return 0;
}

static int
iter_clear(PyObject *op)
{
    CacheIterObject *it = (CacheIterObject *)op;
    Py_CLEAR(it->cache);
    iter_drop_keys(it);
    return 0;
}

static PyObject *
iter_length_hint(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CacheIterObject *it = (CacheIterObject *)op;
    Py_ssize_t n = 0;
    if (it->cache != NULL && it->cache->is_ttl) {
        n = it->started ? it->nkeys - it->pos : it->cache->t.used;
    }
    else if (it->cache != NULL && it->cache->t.itver == it->version) {
        n = it->cache->t.used;
    }
    return PyLong_FromSsize_t(n);
}

/* ------------------------------------------------------------------ views */

static PyObject *
new_view(CacheObject *self, PyTypeObject *tp)
{
    CacheViewObject *v = PyObject_GC_New(CacheViewObject, tp);
    if (v == NULL) {
        return NULL;
    }
    v->cache = (CacheObject *)Py_NewRef(self);
    PyObject_GC_Track(v);
    return (PyObject *)v;
}

static int
view_kind(PyObject *op)
{
    CacheViewObject *v = (CacheViewObject *)op;
    fa_state *st = v->cache->st;
    PyTypeObject *tp = Py_TYPE(op);
    return tp == st->cache.CacheKeysType ? 0 : tp == st->cache.CacheValuesType ? 1 : 2;
}

static PyObject *
view_iter(PyObject *op)
{
    return new_iter(((CacheViewObject *)op)->cache, view_kind(op));
}

static Py_ssize_t
view_len(PyObject *op)
{
    return cache_length((PyObject *)((CacheViewObject *)op)->cache);
}

static int
view_contains(PyObject *op, PyObject *obj)
{
    CacheViewObject *v = (CacheViewObject *)op;
    int kind = view_kind(op);
    if (kind == 0) {
        return cache_contains((PyObject *)v->cache, obj);
    }
    if (kind == 2) {
        if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
            return 0;
        }
        PyObject *key = PyTuple_GET_ITEM(obj, 0);
        Py_hash_t hash = fa_hash(key);
        if (hash == -1) {
            return -1;
        }
        int fresh;
        Py_ssize_t ix = cache_find(v->cache, key, hash, 0, &fresh);
        if (ix == CT_ERROR) {
            return -1;
        }
        if (ix < 0 || !fresh) {
            return 0;
        }
        PyObject *val = Py_NewRef(v->cache->t.entries[ix].value);
        int r = PyObject_RichCompareBool(val, PyTuple_GET_ITEM(obj, 1), Py_EQ);
        Py_DECREF(val);
        return r;
    }
    PyObject *it = new_iter(v->cache, 1);
    if (it == NULL) {
        return -1;
    }
    PyObject *x;
    int r = 0;
    while (r == 0 && (x = PyIter_Next(it)) != NULL) {
        r = PyObject_RichCompareBool(x, obj, Py_EQ);
        Py_DECREF(x);
    }
    Py_DECREF(it);
    if (r == 0 && PyErr_Occurred()) {
        return -1;
    }
    return r;
}

static PyObject *
view_repr(PyObject *op)
{
    int rc = Py_ReprEnter(op);
    if (rc != 0) {
        return rc > 0 ? PyUnicode_FromString("...") : NULL;
    }
    PyObject *r = NULL;
    PyObject *list = PySequence_List(op);
    if (list != NULL) {
        r = PyUnicode_FromFormat("%s(%R)", type_name(op), list);
        Py_DECREF(list);
    }
    Py_ReprLeave(op);
    return r;
}

/* Set operations of keys and items views, as collections.abc.Set gives KeysView. */
static PyObject *
view_as_set(PyObject *obj, PyObject *view)
{
    if (obj == view || PyAnySet_Check(obj)) {
        return PySet_New(obj);
    }
    PyObject *it = PyObject_GetIter(obj);
    if (it == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            return Py_NewRef(Py_NotImplemented);
        }
        return NULL;
    }
    PyObject *s = PySet_New(it);
    Py_DECREF(it);
    return s;
}

static PyObject *
view_binop(PyObject *a, PyObject *b, PyObject *(*op)(PyObject *, PyObject *))
{
    PyObject *view = Py_TYPE(a)->tp_iter == view_iter ? a : b;
    PyObject *sa = view_as_set(a, view);
    if (sa == NULL || sa == Py_NotImplemented) {
        return sa;
    }
    PyObject *sb = view_as_set(b, view);
    if (sb == NULL || sb == Py_NotImplemented) {
        Py_DECREF(sa);
        return sb;
    }
    PyObject *r = op(sa, sb);
    Py_DECREF(sa);
    Py_DECREF(sb);
    return r;
}

static PyObject *view_and(PyObject *a, PyObject *b) { return view_binop(a, b, PyNumber_And); }
static PyObject *view_or(PyObject *a, PyObject *b) { return view_binop(a, b, PyNumber_Or); }
static PyObject *view_xor(PyObject *a, PyObject *b) { return view_binop(a, b, PyNumber_Xor); }
static PyObject *view_sub(PyObject *a, PyObject *b) { return view_binop(a, b, PyNumber_Subtract); }

static PyObject *
view_richcompare(PyObject *op, PyObject *other, int cmp)
{
    CacheViewObject *v = (CacheViewObject *)op;
    int is_set = PyAnySet_Check(other) || Py_TYPE(other)->tp_iter == view_iter;
    if (!is_set) {
        is_set = PyObject_IsInstance(other, v->cache->st->cache.Set);
        if (is_set < 0) {
            return NULL;
        }
    }
    if (!is_set) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *a = PySet_New(op);
    if (a == NULL) {
        return NULL;
    }
    PyObject *b = PyAnySet_Check(other) ? Py_NewRef(other) : PySet_New(other);
    if (b == NULL) {
        Py_DECREF(a);
        return NULL;
    }
    PyObject *r = PyObject_RichCompare(a, b, cmp);
    Py_DECREF(a);
    Py_DECREF(b);
    return r;
}

static PyObject *
view_isdisjoint(PyObject *op, PyObject *other)
{
    PyObject *a = PySet_New(op);
    if (a == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_CallMethod(a, "isdisjoint", "O", other);
    Py_DECREF(a);
    return r;
}

static PyObject *
view_get_mapping(PyObject *op, void *Py_UNUSED(c))
{
    return Py_NewRef((PyObject *)((CacheViewObject *)op)->cache);
}

FA_GC_REFS1(view, CacheViewObject, cache)

/* ------------------------------------------------------------------ type specs */

PyDoc_STRVAR(get_doc, "get($self, key, default=None, /)\n--\n\nThe value for key if it is in "
             "the cache (marking it used, counting a hit), else default (counting a miss).");
PyDoc_STRVAR(pop_doc, "pop($self, key, default=<unrepresentable>, /)\n--\n\nRemove key and "
             "return its value; default (or KeyError) if it is not in the cache.");
PyDoc_STRVAR(popitem_doc, "popitem($self, /)\n--\n\nRemove and return the (key, value) pair "
             "least recently used (in a TTLCache, after removing expired items).");
PyDoc_STRVAR(setdefault_doc, "setdefault($self, key, default=None, /)\n--\n\nThe value for key; "
             "if it is not in the cache, insert default and return it.");
PyDoc_STRVAR(clear_doc, "clear($self, /)\n--\n\nRemove every item.");
PyDoc_STRVAR(update_doc, "update($self, other=(), /, **kwargs)\n--\n\nSet every item of other "
             "(a mapping or an iterable of pairs) and of kwargs.");
PyDoc_STRVAR(keys_doc, "keys($self, /)\n--\n\nA view of the keys (iterating it marks nothing "
             "used).");
PyDoc_STRVAR(values_doc, "values($self, /)\n--\n\nA view of the values.");
PyDoc_STRVAR(items_doc, "items($self, /)\n--\n\nA view of the (key, value) pairs.");
PyDoc_STRVAR(missing_doc, "__missing__($self, key, /)\n--\n\nCalled by cache[key] for a missing "
             "key; raises KeyError. Subclasses override it to compute values.");
PyDoc_STRVAR(copy_doc, "__copy__($self, /)\n--\n\nA shallow copy, with the same order and "
             "expiry times.");
PyDoc_STRVAR(reduce_doc, "__reduce__($self, /)\n--\n\nPickle support: the items with their "
             "order, sizes and expiry times, and the counters.");
PyDoc_STRVAR(setstate_doc, "__setstate__($self, state, /)\n--\n\nRestore a pickled state.");
PyDoc_STRVAR(sizeof_doc, "__sizeof__($self, /)\n--\n\nSize in memory, in bytes (the table; "
             "keys and values not included).");
PyDoc_STRVAR(stats_doc, "stats($self, /)\n--\n\nA dict of the counters (hits, misses, "
             "evictions, and expirations for a TTLCache) with currsize and maxsize.");
PyDoc_STRVAR(reset_stats_doc, "reset_stats($self, /)\n--\n\nSet the counters to zero.");
PyDoc_STRVAR(expire_doc, "expire($self, time=None, /)\n--\n\nRemove the items expired at time "
             "(default: now) and return them as a list of (key, value) pairs.");
PyDoc_STRVAR(set_doc, "set($self, key, value, ttl=None)\n--\n\ncache[key] = value, with its own "
             "time to live when ttl is given.");
PyDoc_STRVAR(restore_doc, "_restore($cls, args, /)\n--\n\nFor pickling: a new instance made "
             "by the base class's __init__(*args), not the subclass's.");
PyDoc_STRVAR(length_hint_doc, "Private method returning an estimate of len(list(it)).");

#define CACHE_METHODS \
    {"get", (PyCFunction)(void (*)(void))cache_get, METH_FASTCALL, get_doc}, \
    {"pop", (PyCFunction)(void (*)(void))cache_pop, METH_FASTCALL, pop_doc}, \
    {"popitem", cache_popitem, METH_NOARGS, popitem_doc}, \
    {"setdefault", (PyCFunction)(void (*)(void))cache_setdefault, METH_FASTCALL, setdefault_doc}, \
    {"clear", cache_clear_method, METH_NOARGS, clear_doc}, \
    {"update", (PyCFunction)(void (*)(void))cache_update, METH_VARARGS | METH_KEYWORDS, \
     update_doc}, \
    {"keys", cache_keys, METH_NOARGS, keys_doc}, \
    {"values", cache_values, METH_NOARGS, values_doc}, \
    {"items", cache_items, METH_NOARGS, items_doc}, \
    {"__missing__", cache_missing_method, METH_O, missing_doc}, \
    {"__copy__", cache_copy, METH_NOARGS, copy_doc}, \
    {"__reduce__", cache_reduce, METH_NOARGS, reduce_doc}, \
    {"_restore", cache_restore, METH_O | METH_CLASS, restore_doc}, \
    {"__setstate__", cache_setstate, METH_O, setstate_doc}, \
    {"__sizeof__", cache_sizeof, METH_NOARGS, sizeof_doc}, \
    {"stats", cache_stats, METH_NOARGS, stats_doc}, \
    {"reset_stats", cache_reset_stats, METH_NOARGS, reset_stats_doc}, \
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, \
     "See PEP 585."}

static PyMethodDef lru_methods[] = {
    CACHE_METHODS,
    {NULL, NULL, 0, NULL},
};

static PyMethodDef ttl_methods[] = {
    CACHE_METHODS,
    {"expire", (PyCFunction)(void (*)(void))cache_expire, METH_FASTCALL, expire_doc},
    {"set", (PyCFunction)(void (*)(void))ttl_set_method, METH_FASTCALL | METH_KEYWORDS, set_doc},
    {NULL, NULL, 0, NULL},
};

#define CACHE_GETSET \
    {"maxsize", cache_get_maxsize, NULL, "The maximum size of the cache.", NULL}, \
    {"currsize", cache_get_currsize, NULL, "The current size of the cache.", NULL}, \
    {"hits", cache_get_hits, NULL, "Lookups (cache[key], get) that found their key.", NULL}, \
    {"misses", cache_get_misses, NULL, "Lookups (cache[key], get) that did not.", NULL}, \
    {"evictions", cache_get_evictions, NULL, "Items removed to make room.", NULL}

static PyGetSetDef lru_getset[] = {
    CACHE_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef ttl_getset[] = {
    CACHE_GETSET,
    {"expirations", cache_get_expirations, NULL, "Expired items removed.", NULL},
    {"ttl", cache_get_ttl, NULL, "The time to live of the cache's items.", NULL},
    {"timer", cache_get_timer, NULL, "The timer function used by the cache.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef cache_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(CacheObject, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

#define CACHE_FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE \
                     | Py_TPFLAGS_MAPPING)

#define CACHE_SPEC(var, pyname, initf, meths, gets, docstr) \
    static PyType_Slot var##_slots[] = { \
        {Py_tp_new, cache_new}, \
        {Py_tp_init, initf}, \
        {Py_tp_dealloc, cache_dealloc}, \
        {Py_tp_traverse, cache_traverse}, \
        {Py_tp_clear, cache_tp_clear}, \
        {Py_tp_repr, cache_repr}, \
        {Py_tp_hash, PyObject_HashNotImplemented}, \
        {Py_tp_richcompare, cache_richcompare}, \
        {Py_tp_iter, cache_iter}, \
        {Py_tp_methods, meths}, \
        {Py_tp_getset, gets}, \
        {Py_tp_members, cache_members}, \
        {Py_mp_length, cache_length}, \
        {Py_mp_subscript, cache_subscript}, \
        {Py_mp_ass_subscript, cache_ass_subscript}, \
        {Py_sq_contains, cache_contains}, \
        {Py_tp_doc, docstr}, \
        {0, NULL}, \
    }; \
    static PyType_Spec var##_spec = { \
        .name = pyname, .basicsize = sizeof(CacheObject), .flags = CACHE_FLAGS, \
        .slots = var##_slots, \
    };

CACHE_SPEC(lru, "aiofast.LRUCache", lru_init, lru_methods, lru_getset,
           "LRUCache(maxsize, getsizeof=None)\n--\n\n"
           "A least-recently-used cache: a drop-in for cachetools.LRUCache, in C.")
CACHE_SPEC(ttl, "aiofast.TTLCache", ttl_init, ttl_methods, ttl_getset,
           "TTLCache(maxsize, ttl, timer=None, getsizeof=None)\n--\n\n"
           "A least-recently-used cache whose items expire ttl seconds after they are set: a "
           "drop-in for cachetools.TTLCache, in C, with set(key, value, ttl) for a per-item "
           "time to live. timer: a callable returning seconds; None (the default) stands for "
           "time.monotonic.")

static PyMethodDef iter_methods[] = {
    {"__length_hint__", iter_length_hint, METH_NOARGS, length_hint_doc},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot iter_slots[] = {
    {Py_tp_dealloc, fa_gc_tp_dealloc},
    {Py_tp_traverse, iter_traverse},
    {Py_tp_clear, iter_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, iter_next},
    {Py_tp_methods, iter_methods},
    {0, NULL},
};

#define INTERNAL_FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC \
                        | Py_TPFLAGS_DISALLOW_INSTANTIATION)

static PyType_Spec iter_spec = {
    .name = "aiofast._core.cache_iterator",
    .basicsize = sizeof(CacheIterObject),
    .flags = INTERNAL_FLAGS,
    .slots = iter_slots,
};

static PyMethodDef setview_methods[] = {
    {"isdisjoint", view_isdisjoint, METH_O,
     "True if the view and other have no element in common."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef view_getset[] = {
    {"mapping", view_get_mapping, NULL, "The cache this view reflects.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define VIEW_COMMON_SLOTS \
    {Py_tp_dealloc, fa_gc_tp_dealloc}, \
    {Py_tp_traverse, view_traverse}, \
    {Py_tp_clear, view_clear}, \
    {Py_tp_iter, view_iter}, \
    {Py_tp_repr, view_repr}, \
    {Py_tp_getset, view_getset}, \
    {Py_sq_length, view_len}, \
    {Py_sq_contains, view_contains}

#define SETVIEW_SLOTS \
    {Py_tp_richcompare, view_richcompare}, \
    {Py_nb_and, view_and}, \
    {Py_nb_or, view_or}, \
    {Py_nb_xor, view_xor}, \
    {Py_nb_subtract, view_sub}, \
    {Py_tp_methods, setview_methods}

static PyType_Slot keys_slots[] = {VIEW_COMMON_SLOTS, SETVIEW_SLOTS, {0, NULL}};
static PyType_Slot values_slots[] = {VIEW_COMMON_SLOTS, {0, NULL}};
static PyType_Slot items_slots[] = {VIEW_COMMON_SLOTS, SETVIEW_SLOTS, {0, NULL}};

#define VIEW_SPEC(var, pyname) \
    static PyType_Spec var##_spec = { \
        .name = pyname, .basicsize = sizeof(CacheViewObject), .flags = INTERNAL_FLAGS, \
        .slots = var##_slots, \
    };

VIEW_SPEC(keys, "aiofast._core.cache_keys")
VIEW_SPEC(values, "aiofast._core.cache_values")
VIEW_SPEC(items, "aiofast._core.cache_items")

/* ------------------------------------------------------------------ the getsizeof attribute */

/* `cache.getsizeof` as cachetools has it: the getsizeof callable given to __init__, else
 * Cache.getsizeof, a plain function of one argument returning 1 (also on the class). A
 * subclass's own getsizeof method shadows it. */
typedef struct {
    PyObject_HEAD
    fa_state *st;
    PyObject *one;  /* the plain function: getsizeof(value) -> 1 */
} GetsizeofDescr;

static PyObject *
getsizeof_one(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(value))
{
    return PyLong_FromLong(1);
}

static PyMethodDef getsizeof_one_def = {
    "getsizeof", getsizeof_one, METH_O,
    "getsizeof(value, /)\n--\n\nThe size of an item when no getsizeof was given: 1."};

static PyObject *
gsd_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    GetsizeofDescr *d = (GetsizeofDescr *)op;
    if (obj != NULL && obj != Py_None
        && (PyObject_TypeCheck(obj, d->st->cache.LRUCacheType)
            || PyObject_TypeCheck(obj, d->st->cache.TTLCacheType))) {
        CacheObject *c = (CacheObject *)obj;
        if (c->getsizeof_given && c->getsizeof != NULL) {
            return Py_NewRef(c->getsizeof);
        }
    }
    return Py_NewRef(d->one);
}

FA_GC_REFS1(gsd, GetsizeofDescr, one)

static PyType_Slot gsd_slots[] = {
    {Py_tp_descr_get, gsd_get},
    {Py_tp_traverse, gsd_traverse},
    {Py_tp_clear, gsd_clear},
    {Py_tp_dealloc, fa_gc_tp_dealloc},
    {0, NULL},
};

static PyType_Spec gsd_spec = {
    .name = "aiofast._core.getsizeof_attribute",
    .basicsize = sizeof(GetsizeofDescr),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = gsd_slots,
};

/* Put the getsizeof attribute in both classes (in place of the method). 0 or -1. */
static int
getsizeof_attribute_init(PyObject *mod, fa_state *st)
{
    PyTypeObject *tp = fa_new_type(mod, &gsd_spec, NULL, "getsizeof_attribute");  // new ref
    if (tp == NULL) {
        return -1;
    }
    GetsizeofDescr *d = PyObject_GC_New(GetsizeofDescr, tp);
    Py_DECREF(tp);  // the instance holds it
    if (d == NULL) {
        return -1;
    }
    d->st = st;
    d->one = PyCFunction_NewEx(&getsizeof_one_def, NULL, NULL);
    PyObject_GC_Track(d);
    int rc = -1;
    if (d->one != NULL
        && PyDict_SetItem(st->cache.LRUCacheType->tp_dict, st->cache.str_getsizeof,
                          (PyObject *)d) == 0
        && PyDict_SetItem(st->cache.TTLCacheType->tp_dict, st->cache.str_getsizeof,
                          (PyObject *)d) == 0) {
        PyType_Modified(st->cache.LRUCacheType);
        PyType_Modified(st->cache.TTLCacheType);
        rc = 0;
    }
    Py_DECREF(d);
    return rc;
}

int
fa_cache_init(PyObject *mod, fa_state *st)
{
    FA_INIT_NEEDS(st->core.time_monotonic);  // the clock of a TTLCache without timer
#define INTERN(field, text) \
    if ((st->cache.field = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(str_popitem, "popitem");
    INTERN(str_expire, "expire");
    INTERN(str_missing, "__missing__");
    INTERN(str_getsizeof, "getsizeof");
    INTERN(str_restore, "_restore");
#undef INTERN
    PyObject *abc = PyImport_ImportModule("collections.abc");
    if (abc == NULL) {
        return -1;
    }
    int rc = -1;
    if ((st->cache.Mapping = PyObject_GetAttrString(abc, "Mapping")) == NULL
        || (st->cache.Set = PyObject_GetAttrString(abc, "Set")) == NULL) {
        goto done;
    }
    if ((st->cache.LRUCacheType = fa_add_type(mod, &lru_spec, NULL, "LRUCache")) == NULL
        || (st->cache.TTLCacheType = fa_add_type(mod, &ttl_spec, NULL, "TTLCache")) == NULL
        || (st->cache.CacheIterType = fa_new_type(mod, &iter_spec, NULL, "cache_iterator")) == NULL
        || (st->cache.CacheKeysType = fa_new_type(mod, &keys_spec, NULL, "cache_keys")) == NULL
        || (st->cache.CacheValuesType = fa_new_type(mod, &values_spec, NULL, "cache_values"))
               == NULL
        || (st->cache.CacheItemsType = fa_new_type(mod, &items_spec, NULL, "cache_items")) == NULL
        || (st->cache.CacheTimerType = fa_new_type(mod, &ctimer_spec, NULL, "cache_timer")) == NULL
        || getsizeof_attribute_init(mod, st) < 0) {
        goto done;
    }
    if (fa_register_abc("MutableMapping", st->cache.LRUCacheType) < 0
        || fa_register_abc("MutableMapping", st->cache.TTLCacheType) < 0
        || fa_register_abc("KeysView", st->cache.CacheKeysType) < 0
        || fa_register_abc("ValuesView", st->cache.CacheValuesType) < 0
        || fa_register_abc("ItemsView", st->cache.CacheItemsType) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_DECREF(abc);
    return rc;
}
