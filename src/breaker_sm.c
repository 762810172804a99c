/*
 * breaker_sm.c: the CircuitBreaker's state machine (see breaker_sm.h for the record, its
 * layout and its invariants).
 *
 * CLOSED lets every call through and counts outcomes: failure_threshold consecutive failures
 * (default mode), or a failure rate / slow-call rate over a sliding window of the last `window`
 * calls or of the last `window_time` seconds (rate mode), open it. OPEN rejects every call until
 * recovery_timeout has passed; the next admission then turns it HALF_OPEN, which lets at most
 * half_open_max probes run at once (the others are rejected at once): success_threshold
 * successful probes close it, a failed (or, in rate mode, slow) probe reopens it.
 *
 * Everything here is pure C on one record: no Python code, no allocation, no failure.
 */
#include "breaker_sm.h"

/* ------------------------------------------------------------------ the window (rate mode) */

static inline int64_t
bk_bucket_index(const fa_bk_sm *sm, double now)
{
    double q = floor(now / sm->cfg.bucket_width);
    if (!(q < 9.0e18)) {
        q = 9.0e18;
    }
    else if (q < -9.0e18) {
        q = -9.0e18;
    }
    return (int64_t)q;
}

static inline int
bk_bucket_slot(int64_t k)
{
    int64_t i = k % FA_BK_NBUCKETS;
    if (i < 0) {
        i += FA_BK_NBUCKETS;
    }
    return (int)i;
}

static void
bk_bucket_drop(fa_bk_sm *sm, fa_bk_bucket *bu)
{
    sm->win_n -= bu->n;
    sm->win_f -= bu->f;
    sm->win_s -= bu->s;
    bu->n = bu->f = bu->s = 0;
}

/* Drop the buckets that left the window at bucket index k. */
static void
bk_expire(fa_bk_sm *sm, int64_t k)
{
    fa_bk_bucket *b = fa_bk_buckets(sm);
    for (int i = 0; i < FA_BK_NBUCKETS; i++) {
        if (b[i].n != 0 && b[i].idx <= k - FA_BK_NBUCKETS) {
            bk_bucket_drop(sm, &b[i]);
        }
    }
}

static void
bk_window_reset(fa_bk_sm *sm)
{
    sm->win_n = sm->win_f = sm->win_s = 0;
    sm->ring_pos = 0;
    if (sm->cfg.rate_mode && sm->cfg.time_mode) {
        fa_bk_bucket *b = fa_bk_buckets(sm);
        for (int i = 0; i < FA_BK_NBUCKETS; i++) {
            b[i].idx = INT64_MIN;
            b[i].n = b[i].f = b[i].s = 0;
        }
    }
}

static void
bk_window_add(fa_bk_sm *sm, double now, int fail, int slow)
{
    if (sm->cfg.time_mode) {
        int64_t k = bk_bucket_index(sm, now);
        bk_expire(sm, k);
        fa_bk_bucket *bu = &fa_bk_buckets(sm)[bk_bucket_slot(k)];
        if (bu->idx != k) {
            bk_bucket_drop(sm, bu);
            bu->idx = k;
        }
        bu->n++;
        bu->f += fail;
        bu->s += slow;
    }
    else {
        uint8_t *ring = fa_bk_ring(sm);
        if (sm->win_n == sm->cfg.window) {
            uint8_t old = ring[sm->ring_pos];
            sm->win_n--;
            sm->win_f -= old & 1;
            sm->win_s -= (old >> 1) & 1;
        }
        ring[sm->ring_pos] = (uint8_t)(fail | (slow << 1));
        sm->ring_pos = (sm->ring_pos + 1) % sm->cfg.window;
    }
    sm->win_n++;
    sm->win_f += fail;
    sm->win_s += slow;
}

void
fa_bk_window_view(const fa_bk_sm *sm, double now, int64_t *n, int64_t *f, int64_t *s)
{
    if (!sm->cfg.time_mode) {
        *n = sm->win_n;
        *f = sm->win_f;
        *s = sm->win_s;
        return;
    }
    int64_t k = bk_bucket_index(sm, now);
    const fa_bk_bucket *b = fa_bk_buckets((fa_bk_sm *)sm);
    *n = *f = *s = 0;
    for (int i = 0; i < FA_BK_NBUCKETS; i++) {
        if (b[i].n != 0 && b[i].idx > k - FA_BK_NBUCKETS) {
            *n += b[i].n;
            *f += b[i].f;
            *s += b[i].s;
        }
    }
}

static int
bk_window_trips(const fa_bk_sm *sm)
{
    if (sm->win_n < sm->cfg.min_calls || sm->win_n == 0) {
        return 0;
    }
    double n = (double)sm->win_n;
    if ((double)sm->win_f / n >= sm->cfg.failure_rate) {
        return 1;
    }
    return sm->cfg.slow_mode && (double)sm->win_s / n >= sm->cfg.slow_rate;
}

/* ------------------------------------------------------------------ the machine */

void
fa_bk_sm_init(fa_bk_sm *sm, const fa_bk_config *cfg)
{
    memset(sm, 0, fa_bk_sm_size(cfg));
    sm->cfg = *cfg;
    sm->state = FA_BK_CLOSED;
    bk_window_reset(sm);
}

static void
bk_transition(fa_bk_sm *sm, fa_bk_totals *tot, int to, double now)
{
    int from = sm->state;
    if (to == FA_BK_OPEN) {
        if (from == FA_BK_CLOSED && sm->cfg.rate_mode) {
            int64_t n, f, s;  /* frozen: the window as it stands now */
            fa_bk_window_view(sm, now, &n, &f, &s);
            sm->failures = f;
            sm->successes = n - f;
        }
        sm->opened_at = now;
    }
    else {
        sm->failures = sm->successes = 0;
        if (to == FA_BK_CLOSED && sm->cfg.rate_mode) {
            bk_window_reset(sm);
        }
    }
    sm->probes = 0;
    sm->state = to;
    sm->gen++;
    if (from != to) {
        tot->changes++;
    }
}

void
fa_bk_commit(fa_bk_sm *sm, fa_bk_totals *tot, const fa_bk_ticket *t, int out, int slow,
             double now)
{
    if (out == FA_BK_SUCCESS) {
        tot->succ++;
        sm->streak = 0;
    }
    else if (out == FA_BK_FAILURE) {
        tot->fail++;
        sm->streak++;
    }
    else {
        tot->ign++;
    }
    tot->slow += (unsigned)slow;
    if (t->gen != sm->gen) {
        return;  /* admitted under an earlier state: the totals only */
    }
    if (sm->state == FA_BK_HALF_OPEN) {
        if (sm->probes > 0) {
            sm->probes--;
        }
        if (out == FA_BK_IGNORED) {
            return;
        }
        if (out == FA_BK_FAILURE || (slow && sm->cfg.rate_mode)) {
            sm->failures += (out == FA_BK_FAILURE);
            bk_transition(sm, tot, FA_BK_OPEN, now);
        }
        else if (++sm->successes >= sm->cfg.success_threshold) {
            bk_transition(sm, tot, FA_BK_CLOSED, now);
        }
    }
    else if (sm->state == FA_BK_CLOSED) {
        if (out == FA_BK_IGNORED) {
            return;
        }
        if (sm->cfg.rate_mode) {
            bk_window_add(sm, now, out == FA_BK_FAILURE, slow);
            if (bk_window_trips(sm)) {
                bk_transition(sm, tot, FA_BK_OPEN, now);
            }
        }
        else if (out == FA_BK_FAILURE) {
            sm->successes = 0;
            if (++sm->failures >= sm->cfg.failure_threshold) {
                bk_transition(sm, tot, FA_BK_OPEN, now);
            }
        }
        else {
            sm->failures = 0;
            sm->successes++;
        }
    }
}

int
fa_bk_admit(fa_bk_sm *sm, fa_bk_totals *tot, fa_bk_ticket *t, double now, double *remaining)
{
    if (sm->state == FA_BK_OPEN) {
        double until = sm->opened_at + sm->cfg.recovery_timeout;
        if (now < until) {
            tot->rej++;
            *remaining = until - now;
            return 0;
        }
        bk_transition(sm, tot, FA_BK_HALF_OPEN, now);
    }
    t->probe = 0;
    if (sm->state == FA_BK_HALF_OPEN) {
        if (sm->probes >= sm->cfg.half_open_max) {
            tot->rej++;
            *remaining = 0.0;
            return 0;
        }
        sm->probes++;
        t->probe = 1;
    }
    t->gen = sm->gen;
    t->t0 = now;
    tot->calls++;
    return 1;
}

void
fa_bk_force(fa_bk_sm *sm, fa_bk_totals *tot, int to, double now)
{
    if (sm->state == FA_BK_OPEN && to == FA_BK_OPEN) {
        sm->opened_at = now;  /* trip again: the recovery timeout starts over */
    }
    else if (sm->state == FA_BK_CLOSED && to == FA_BK_CLOSED) {
        sm->failures = sm->successes = 0;  /* a reset */
        if (sm->cfg.rate_mode) {
            bk_window_reset(sm);
        }
    }
    else if (sm->state != to) {
        bk_transition(sm, tot, to, now);
    }
    if (to == FA_BK_CLOSED) {
        sm->streak = 0;
    }
}

void
fa_bk_counts(const fa_bk_sm *sm, int eff, double now, int64_t *fails, int64_t *succs)
{
    if (eff != sm->state) {  /* OPEN that reads as HALF_OPEN: a fresh half-open period */
        *fails = *succs = 0;
    }
    else if (eff == FA_BK_CLOSED && sm->cfg.rate_mode) {
        int64_t n, f, s;
        fa_bk_window_view(sm, now, &n, &f, &s);
        *fails = f;
        *succs = n - f;
    }
    else {
        *fails = sm->failures;
        *succs = sm->successes;
    }
}

/* ------------------------------------------------------------------ the checker */

#if FA_DEBUG
void
fa_bk_sm_check(const fa_bk_sm *sm, const void *owner)
{
    const fa_bk_config *c = &sm->cfg;
    /* configuration, as the constructor validates it */
    FA_CHECK(c->failure_threshold >= 1 && c->success_threshold >= 1 && c->half_open_max >= 1,
             "breaker %p: thresholds %lld/%lld, half-open max %lld", owner,
             (long long)c->failure_threshold, (long long)c->success_threshold,
             (long long)c->half_open_max);
    FA_CHECK(c->recovery_timeout >= 0, "breaker %p: recovery_timeout %g", owner,
             c->recovery_timeout);
    FA_CHECK(!c->time_mode || c->rate_mode, "breaker %p: time mode outside rate mode", owner);
    if (c->rate_mode) {
        FA_CHECK(c->failure_rate > 0 && c->failure_rate <= 1 && c->slow_rate > 0
                     && c->slow_rate <= 1 && c->min_calls >= 1,
                 "breaker %p: failure_rate %g, slow_rate %g, min_calls %lld", owner,
                 c->failure_rate, c->slow_rate, (long long)c->min_calls);
    }
    FA_CHECK(!c->slow_mode || (c->slow_duration > 0 && isfinite(c->slow_duration)),
             "breaker %p: slow_duration %g", owner, c->slow_duration);
    /* the state machine */
    FA_CHECK(sm->state == FA_BK_CLOSED || sm->state == FA_BK_OPEN
                 || sm->state == FA_BK_HALF_OPEN,
             "breaker %p: state %d", owner, (int)sm->state);
    FA_CHECK(sm->failures >= 0 && sm->successes >= 0, "breaker %p: failures %lld, successes %lld",
             owner, (long long)sm->failures, (long long)sm->successes);
    FA_CHECK(sm->probes >= 0 && sm->probes <= c->half_open_max
                 && (sm->state == FA_BK_HALF_OPEN || sm->probes == 0),
             "breaker %p: %lld probes (max %lld) in state %d", owner, (long long)sm->probes,
             (long long)c->half_open_max, (int)sm->state);
    if (sm->state == FA_BK_HALF_OPEN) {
        /* a failed probe reopens at once; enough successes close */
        FA_CHECK(sm->failures == 0 && sm->successes < c->success_threshold,
                 "breaker %p: half-open with failures %lld, successes %lld/%lld", owner,
                 (long long)sm->failures, (long long)sm->successes,
                 (long long)c->success_threshold);
    }
    else if (sm->state == FA_BK_CLOSED && !c->rate_mode) {
        /* a run of failures or a run of successes, never both; the threshold opens it */
        FA_CHECK(sm->failures < c->failure_threshold && (sm->failures == 0 || sm->successes == 0),
                 "breaker %p: closed with failures %lld/%lld, successes %lld", owner,
                 (long long)sm->failures, (long long)c->failure_threshold,
                 (long long)sm->successes);
    }
    else if (sm->state == FA_BK_CLOSED) {
        /* rate mode counts in the window only */
        FA_CHECK(sm->failures == 0 && sm->successes == 0,
                 "breaker %p: closed rate mode with failures %lld, successes %lld", owner,
                 (long long)sm->failures, (long long)sm->successes);
    }
    /* the window: its totals are the sums of what it holds */
    FA_CHECK(sm->win_n >= 0 && sm->win_f >= 0 && sm->win_s >= 0 && sm->win_f <= sm->win_n
                 && sm->win_s <= sm->win_n,
             "breaker %p: window %lld calls, %lld failures, %lld slow", owner,
             (long long)sm->win_n, (long long)sm->win_f, (long long)sm->win_s);
    FA_CHECK(c->rate_mode || sm->win_n == 0, "breaker %p: window of %lld outside rate mode",
             owner, (long long)sm->win_n);
    FA_CHECK(!c->slow_mode || c->rate_mode || sm->win_s == 0, "breaker %p: slow window", owner);
    if (c->rate_mode && c->time_mode) {
        FA_CHECK(c->bucket_width > 0 && isfinite(c->bucket_width), "breaker %p: width %g",
                 owner, c->bucket_width);
        const fa_bk_bucket *b = fa_bk_buckets((fa_bk_sm *)sm);
        int64_t n = 0, f = 0, s = 0;
        for (int i = 0; i < FA_BK_NBUCKETS; i++) {
            const fa_bk_bucket *bu = &b[i];
            FA_CHECK(bu->n >= 0 && bu->f >= 0 && bu->s >= 0 && bu->f <= bu->n && bu->s <= bu->n,
                     "breaker %p: bucket %d holds %lld calls, %lld failures, %lld slow", owner,
                     i, (long long)bu->n, (long long)bu->f, (long long)bu->s);
            FA_CHECK(bu->n == 0 || bu->idx == INT64_MIN || bk_bucket_slot(bu->idx) == i,
                     "breaker %p: bucket %d holds index %lld", owner, i, (long long)bu->idx);
            n += bu->n;
            f += bu->f;
            s += bu->s;
        }
        FA_CHECK(n == sm->win_n && f == sm->win_f && s == sm->win_s,
                 "breaker %p: buckets hold %lld/%lld/%lld, window says %lld/%lld/%lld", owner,
                 (long long)n, (long long)f, (long long)s, (long long)sm->win_n,
                 (long long)sm->win_f, (long long)sm->win_s);
    }
    else if (c->rate_mode) {
        FA_CHECK(c->window >= 1 && c->min_calls <= c->window && sm->win_n <= c->window
                     && sm->ring_pos >= 0 && sm->ring_pos < c->window
                     && (sm->win_n == c->window || sm->ring_pos == sm->win_n),
                 "breaker %p: ring of %lld, at %lld, holding %lld (min_calls %lld)", owner,
                 (long long)c->window, (long long)sm->ring_pos, (long long)sm->win_n,
                 (long long)c->min_calls);
        const uint8_t *ring = fa_bk_ring((fa_bk_sm *)sm);
        int64_t f = 0, s = 0;
        for (int64_t i = 1; i <= sm->win_n; i++) {
            uint8_t o = ring[(sm->ring_pos - i + c->window) % c->window];
            FA_CHECK(o <= 3 && (c->slow_mode || !(o & 2)), "breaker %p: ring entry %u", owner,
                     (unsigned)o);
            f += o & 1;
            s += (o >> 1) & 1;
        }
        FA_CHECK(f == sm->win_f && s == sm->win_s,
                 "breaker %p: ring holds %lld failures, %lld slow; window says %lld, %lld",
                 owner, (long long)f, (long long)s, (long long)sm->win_f, (long long)sm->win_s);
    }
    if (sm->state == FA_BK_CLOSED && c->rate_mode) {
        FA_CHECK(!bk_window_trips(sm), "breaker %p: closed with a window that trips (%lld of "
                 "%lld failed, %lld slow)", owner, (long long)sm->win_f, (long long)sm->win_n,
                 (long long)sm->win_s);
    }
}
#endif

/* ------------------------------------------------------------------ shared by processes */

#if FA_BK_HAVE_SHARED
#include <errno.h>
#include <signal.h>
#include <unistd.h>

int
fa_bk_sh_init(fa_bk_shared *sh, const fa_bk_config *cfg)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc != 0) {
        return rc;
    }
    if ((rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)) == 0
        && (rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) == 0) {
        rc = pthread_mutex_init(&sh->mu, &attr);
    }
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        return rc;
    }
    sh->copy_size = (uint32_t)fa_bk_sh_copy_size(cfg);
    fa_bk_sm *sm = fa_bk_sh_copy(sh, 0);
    fa_bk_sm_init(sm, cfg);
    memset(fa_bk_sh_slots(sm), 0, (size_t)cfg->half_open_max * sizeof(int32_t));
    atomic_store(&sh->cur, 0);
    atomic_store(&sh->fast_succ, 0);
    atomic_store(&sh->word, fa_bk_sh_word_of(sm));
    return 0;
}

/* A dead process held the mutex: its update may have stored the word of a record it never
 * published. Move the generation past anything it could have published and free the probe
 * slots of the half-open period (its probes' outcomes will not count). */
static void
bk_sh_recover(fa_bk_sm *w)
{
    w->gen += 2;
    if (w->state == FA_BK_HALF_OPEN) {
        w->probes = 0;
        memset(fa_bk_sh_slots(w), 0, (size_t)w->cfg.half_open_max * sizeof(int32_t));
    }
}

int
fa_bk_sh_lock(fa_bk_shared *sh, fa_bk_sm **work)
{
    int rc = pthread_mutex_lock(&sh->mu);
    int recovered = 0;
    if (rc == EOWNERDEAD) {
        rc = pthread_mutex_consistent(&sh->mu);
        if (rc != 0) {
            pthread_mutex_unlock(&sh->mu);
            return rc;
        }
        recovered = 1;
        atomic_fetch_add(&sh->recoveries, 1);
    }
    if (rc != 0) {
        return rc;
    }
    uint32_t cur = atomic_load_explicit(&sh->cur, memory_order_relaxed) & 1;
    fa_bk_sm *src = fa_bk_sh_copy(sh, cur);
    fa_bk_sm *w = fa_bk_sh_copy(sh, cur ^ 1);
    memcpy(w, src, sh->copy_size);
    if (recovered) {
        bk_sh_recover(w);
    }
    int64_t d = atomic_exchange(&sh->fast_succ, 0);
    if (d > 0 && w->state == FA_BK_CLOSED && !w->cfg.rate_mode && w->failures == 0) {
        w->successes += d;
    }
    *work = w;
    return 0;
}

void
fa_bk_sh_publish(fa_bk_shared *sh, fa_bk_sm *work)
{
    /* the word first: a process killed between the two stores leaves a word that names a
     * generation the recovery moves past (bk_sh_recover) */
    atomic_store_explicit(&sh->word, fa_bk_sh_word_of(work), memory_order_release);
    uint32_t cur = atomic_load_explicit(&sh->cur, memory_order_relaxed) & 1;
    atomic_store_explicit(&sh->cur, cur ^ 1, memory_order_release);
    pthread_mutex_unlock(&sh->mu);
}

void
fa_bk_sh_unlock(fa_bk_shared *sh)
{
    pthread_mutex_unlock(&sh->mu);
}

int
fa_bk_sh_layout_sane(fa_bk_shared *sh, const fa_bk_config *cfg)
{
    return sh->copy_size == fa_bk_sh_copy_size(cfg)
           && atomic_load_explicit(&sh->cur, memory_order_acquire) <= 1;
}

int
fa_bk_sh_record_sane(fa_bk_sm *w, const fa_bk_config *cfg)
{
    if (memcmp(&w->cfg, cfg, sizeof(*cfg)) != 0
        || w->state < FA_BK_CLOSED || w->state > FA_BK_HALF_OPEN
        || w->probes < 0 || w->probes > cfg->half_open_max
        || (w->state != FA_BK_HALF_OPEN && w->probes != 0)
        || w->failures < 0 || w->successes < 0 || w->streak < 0
        || w->win_n < 0 || w->win_f < 0 || w->win_s < 0
        || w->win_f > w->win_n || w->win_s > w->win_n) {
        return 0;
    }
    if (cfg->rate_mode && !cfg->time_mode
        && (w->ring_pos < 0 || w->ring_pos >= cfg->window || w->win_n > cfg->window)) {
        return 0;
    }
    const int32_t *slots = fa_bk_sh_slots(w);
    int64_t held = 0;
    for (int64_t i = 0; i < cfg->half_open_max; i++) {
        if (slots[i] < 0) {
            return 0;
        }
        held += slots[i] != 0;
    }
    return held == w->probes;
}

/* After a step: a transition (a new generation) frees every probe slot. */
static inline void
bk_sh_after(fa_bk_sm *w, uint64_t gen)
{
    if (w->gen != gen) {
        memset(fa_bk_sh_slots(w), 0, (size_t)w->cfg.half_open_max * sizeof(int32_t));
    }
}

int
fa_bk_sh_admit(fa_bk_sm *w, fa_bk_totals *tot, fa_bk_ticket *t, double now, double *remaining)
{
    int32_t *slots = fa_bk_sh_slots(w);
    if (w->state == FA_BK_HALF_OPEN && w->probes >= w->cfg.half_open_max) {
        /* every slot taken: free those whose owner is gone (a pid reused since by another
         * process keeps its slot until that process ends or the half-open period does) */
        for (int64_t i = 0; i < w->cfg.half_open_max; i++) {
            if (slots[i] != 0 && kill((pid_t)slots[i], 0) < 0 && errno == ESRCH) {
                slots[i] = 0;
                w->probes--;
            }
        }
    }
    uint64_t gen = w->gen;
    int rc = fa_bk_admit(w, tot, t, now, remaining);
    bk_sh_after(w, gen);
    if (rc == 1 && t->probe) {
        int64_t i = 0;
        while (i < w->cfg.half_open_max - 1 && slots[i] != 0) {
            i++;
        }
        slots[i] = (int32_t)getpid();
        t->probe = (int)i + 1;
    }
    return rc;
}

void
fa_bk_sh_commit(fa_bk_sm *w, fa_bk_totals *tot, const fa_bk_ticket *t, int out, int slow,
                double now)
{
    if (t->probe > 0 && t->probe <= w->cfg.half_open_max && t->gen == w->gen
        && w->state == FA_BK_HALF_OPEN) {
        fa_bk_sh_slots(w)[t->probe - 1] = 0;
    }
    uint64_t gen = w->gen;
    fa_bk_commit(w, tot, t, out, slow, now);
    bk_sh_after(w, gen);
}

void
fa_bk_sh_force(fa_bk_sm *w, fa_bk_totals *tot, int to, double now)
{
    uint64_t gen = w->gen;
    fa_bk_force(w, tot, to, now);
    bk_sh_after(w, gen);
}

#if FA_DEBUG
void
fa_bk_sh_check(fa_bk_sm *w, const void *owner)
{
    fa_bk_sm_check(w, owner);
    const int32_t *slots = fa_bk_sh_slots(w);
    int64_t held = 0;
    for (int64_t i = 0; i < w->cfg.half_open_max; i++) {
        FA_CHECK(slots[i] >= 0, "shared breaker %p: probe slot %lld holds pid %d", owner,
                 (long long)i, (int)slots[i]);
        held += slots[i] != 0;
    }
    FA_CHECK(held == w->probes, "shared breaker %p: %lld probe slots held, %lld probes", owner,
             (long long)held, (long long)w->probes);
}
#endif
#endif
