/*
 * breaker_sm.h: the CircuitBreaker's state machine as plain data (breaker.c's split file).
 *
 * One record, fa_bk_sm, holds the configuration that drives the machine, its state, generation,
 * opened-at time, the counts that decide a transition and the rate mode's window. It holds no
 * PyObject pointer and no pointer at all: the window (a ring of the last `window` outcomes, or
 * FA_BK_NBUCKETS time buckets) is an array placed right after the struct, so a record is one
 * flat block of fa_bk_sm_size() bytes that can be copied with memcpy or live in a mapping that
 * several processes share. Times are seconds as doubles on whatever scale the caller reads
 * (breaker.c: the breaker's own clock).
 *
 * The functions are pure C: they never call Python code, never allocate and never fail. What
 * the object around the record does (totals, listeners, classification, clocks) stays in
 * breaker.c. Per-process totals are kept apart (fa_bk_totals), so a record shared by several
 * processes never carries one process's statistics.
 *
 * Tickets. Admission gives each call a ticket {gen, t0, probe}; gen is the generation of the
 * state it was admitted in (every transition bumps it). An outcome moves the state machine only
 * if its ticket's generation is still the current one; otherwise it only adds to the totals.
 *
 * Invariants (fa_bk_sm_check, debug builds):
 * - state is CLOSED, OPEN or HALF_OPEN; probes counts the live probe tickets of the current
 *   generation (HALF_OPEN only, else 0), at most half_open_max.
 * - HALF_OPEN: failures == 0 and successes < success_threshold. CLOSED, default mode: a run of
 *   failures or a run of successes, never both, failures < failure_threshold. CLOSED, rate mode:
 *   failures == successes == 0 and the window does not trip.
 * - The window's totals win_n/win_f/win_s are the sums of what the ring or the buckets hold.
 */
#ifndef AIOFAST_BREAKER_SM_H
#define AIOFAST_BREAKER_SM_H

#include "aiofast.h"

#include <stdint.h>
#include <string.h>

enum { FA_BK_CLOSED = 0, FA_BK_OPEN = 1, FA_BK_HALF_OPEN = 2 };
enum { FA_BK_SUCCESS = 0, FA_BK_FAILURE = 1, FA_BK_IGNORED = 2 };

#define FA_BK_NBUCKETS 20  /* a time window is kept as 20 buckets of window_time / 20 seconds */

typedef struct {
    uint64_t gen;  /* generation of the state the call was admitted in */
    double t0;     /* admission time (read when slow calls are measured or not closed) */
    int probe;     /* holds one of the half-open probe slots */
} fa_bk_ticket;

typedef struct {
    int64_t idx;   /* floor(t / bucket_width) of the outcomes it holds */
    int64_t n, f, s;
} fa_bk_bucket;

/* What drives the machine, fixed at construction. Plain values only, no padding left
 * uninitialised (memcmp compares two of them). */
typedef struct {
    double recovery_timeout;
    double failure_rate;       /* rate mode */
    double slow_rate;          /* rate mode with slow calls */
    double slow_duration;      /* slow_mode */
    double window_time;        /* time_mode */
    double bucket_width;
    int64_t failure_threshold;
    int64_t success_threshold;
    int64_t half_open_max;
    int64_t window;            /* count window size (rate mode, not time_mode) */
    int64_t min_calls;
    uint8_t rate_mode;
    uint8_t slow_mode;
    uint8_t time_mode;
    uint8_t pad_[5];
} fa_bk_config;

/* The record. Followed in memory by its window: fa_bk_bucket[FA_BK_NBUCKETS] in time mode,
 * uint8_t[window] (bit 0 failure, bit 1 slow) in count-window rate mode, nothing otherwise. */
typedef struct {
    fa_bk_config cfg;
    int32_t state;
    int32_t pad_;
    uint64_t gen;
    double opened_at;
    int64_t failures;    /* default mode: consecutive failures; frozen while open */
    int64_t successes;
    int64_t probes;      /* half-open probes running */
    int64_t streak;      /* failures since the last success or close(), in any state */
    int64_t ring_pos;
    int64_t win_n, win_f, win_s;
} fa_bk_sm;

/* One process's totals of what it did with a record. */
typedef struct {
    unsigned long long calls, succ, fail, ign, slow, rej, changes;
} fa_bk_totals;

static inline fa_bk_bucket *
fa_bk_buckets(fa_bk_sm *sm)
{
    return (fa_bk_bucket *)(void *)(sm + 1);
}

static inline uint8_t *
fa_bk_ring(fa_bk_sm *sm)
{
    return (uint8_t *)(void *)(sm + 1);
}

/* Bytes of a record for cfg (the struct and its window); 0 if it does not fit a size_t. */
static inline size_t
fa_bk_sm_size(const fa_bk_config *cfg)
{
    size_t extra = 0;
    if (cfg->rate_mode && cfg->time_mode) {
        extra = FA_BK_NBUCKETS * sizeof(fa_bk_bucket);
    }
    else if (cfg->rate_mode) {
        if (cfg->window < 0 || (uint64_t)cfg->window > SIZE_MAX - sizeof(fa_bk_sm) - 8) {
            return 0;
        }
        extra = (size_t)cfg->window;
    }
    return (sizeof(fa_bk_sm) + extra + 7) & ~(size_t)7;
}

/* A new record: closed, nothing counted. sm has fa_bk_sm_size(cfg) bytes. */
void fa_bk_sm_init(fa_bk_sm *sm, const fa_bk_config *cfg);

/* Admission at `now`: 1 admitted (*t filled), 0 rejected (*remaining set: seconds until a probe
 * may pass, 0.0 when half-open and every probe slot is busy). May turn OPEN into HALF_OPEN. */
int fa_bk_admit(fa_bk_sm *sm, fa_bk_totals *tot, fa_bk_ticket *t, double now,
                double *remaining);

/* Settle ticket t with outcome out (FA_BK_*), slow or not, at `now`. */
void fa_bk_commit(fa_bk_sm *sm, fa_bk_totals *tot, const fa_bk_ticket *t, int out, int slow,
                  double now);

/* A ticket whose call will never finish: neither success nor failure. */
static inline void
fa_bk_release(fa_bk_sm *sm, fa_bk_totals *tot, const fa_bk_ticket *t)
{
    fa_bk_commit(sm, tot, t, FA_BK_IGNORED, 0, 0.0);
}

/* open() / close() / half_open(): move to `to` now (tripping an open one again restarts its
 * recovery timeout; closing a closed one resets its counts). */
void fa_bk_force(fa_bk_sm *sm, fa_bk_totals *tot, int to, double now);

/* The window's totals as seen at `now`, without changing it. */
void fa_bk_window_view(const fa_bk_sm *sm, double now, int64_t *n, int64_t *f, int64_t *s);

/* The state as seen at `now`: OPEN past its recovery timeout reads as HALF_OPEN (the transition
 * itself happens at the next admission). */
static inline int
fa_bk_effective(const fa_bk_sm *sm, double now)
{
    if (sm->state == FA_BK_OPEN && now >= sm->opened_at + sm->cfg.recovery_timeout) {
        return FA_BK_HALF_OPEN;
    }
    return sm->state;
}

/* failure_count / success_count as seen at `now` in effective state eff. */
void fa_bk_counts(const fa_bk_sm *sm, int eff, double now, int64_t *fails, int64_t *succs);

/* The closed admission without a clock: 1 admitted, 0 take the general path (fa_bk_admit). */
static inline int
fa_bk_admit_closed(fa_bk_sm *sm, fa_bk_totals *tot, fa_bk_ticket *t)
{
    if (FA_LIKELY(sm->state == FA_BK_CLOSED && !sm->cfg.slow_mode)) {
        t->gen = sm->gen;
        t->probe = 0;
        t->t0 = 0.0;
        tot->calls++;
        return 1;
    }
    return 0;
}

/* The closed, default-mode success: a few instructions. 1 done, 0 take the general path. */
static inline int
fa_bk_success_closed(fa_bk_sm *sm, fa_bk_totals *tot, const fa_bk_ticket *t)
{
    if (FA_LIKELY(sm->state == FA_BK_CLOSED && t->gen == sm->gen && !sm->cfg.rate_mode
                  && !sm->cfg.slow_mode)) {
        tot->succ++;
        sm->streak = 0;
        sm->failures = 0;
        sm->successes++;
        return 1;
    }
    return 0;
}

#if FA_DEBUG
/* Stop the process at the first broken invariant of the record (see the top); owner names the
 * object in the message. */
void fa_bk_sm_check(const fa_bk_sm *sm, const void *owner);
#endif

/* ------------------------------------------------------------------ shared by processes
 *
 * A record that every process of the host shares (CircuitBreaker(shared=...)) lives in a
 * segment's payload (shm.h) as fa_bk_shared: a robust process-shared mutex, the published
 * state word, and two copies of the record, each followed by its probe slots (the pid that
 * holds each half-open probe slot, 0 when free).
 *
 * Updates (fa_bk_sh_lock ... fa_bk_sh_publish) run under the mutex and never call Python code:
 * copy the published record into the other copy, change that one, store the state word, then
 * flip `cur` to it. A process killed at any instruction of an update leaves the published copy
 * intact (it only wrote the other one); the next locker gets EOWNERDEAD, marks the mutex
 * consistent and carries on from the published copy, with the generation moved past anything
 * the dead process may have published (so tickets of the interrupted update match nothing) and
 * the probe slots of the interrupted half-open period freed.
 *
 * The state word, (gen << 3) | clean << 2 | state, lets the closed path skip the mutex: a closed
 * admission reads its generation from it, and a success of a "clean" closed record (default
 * mode, no failure counted, no failure streak) changes nothing that decides a transition, so it
 * only adds to fast_succ (folded into the record's success count by the next update).
 * Invariants (under the mutex): word describes copy[cur]; the probe slots of copy[cur] hold
 * exactly `probes` pids (0 outside HALF_OPEN).
 */
#if defined(__linux__) || defined(__FreeBSD__)
#define FA_BK_HAVE_SHARED 1
#include <pthread.h>
#include <stdatomic.h>

#define FA_BK_SH_PROBES_MAX 1024    /* half_open_max_calls of a shared breaker */
#define FA_BK_SH_WINDOW_MAX 100000  /* window of a shared breaker (each update copies it) */

typedef struct {
    pthread_mutex_t mu;
    _Alignas(8) _Atomic uint64_t word;
    _Atomic uint32_t cur;               /* the published copy: 0 or 1 */
    uint32_t copy_size;                 /* bytes of one copy (record and probe slots) */
    _Atomic int64_t fast_succ;          /* closed successes not yet folded into the record */
    _Atomic int64_t clock_offset_ns;    /* test segments only: virtual time (see breaker.c) */
    _Atomic uint64_t recoveries;        /* mutexes recovered from a dead owner */
    _Alignas(64) unsigned char copies[];
} fa_bk_shared;

static inline uint64_t
fa_bk_sh_word_of(const fa_bk_sm *sm)
{
    uint64_t clean = sm->state == FA_BK_CLOSED && !sm->cfg.rate_mode && !sm->cfg.slow_mode
                     && sm->failures == 0 && sm->streak == 0;
    return (sm->gen << 3) | (clean << 2) | (uint64_t)sm->state;
}

/* Bytes of one copy for cfg: the record and its probe slots, 64-aligned. */
static inline size_t
fa_bk_sh_copy_size(const fa_bk_config *cfg)
{
    return (fa_bk_sm_size(cfg) + (size_t)cfg->half_open_max * sizeof(int32_t) + 63)
           & ~(size_t)63;
}

static inline size_t
fa_bk_sh_payload_size(const fa_bk_config *cfg)
{
    return sizeof(fa_bk_shared) + 2 * fa_bk_sh_copy_size(cfg);
}

static inline fa_bk_sm *
fa_bk_sh_copy(fa_bk_shared *sh, uint32_t i)
{
    return (fa_bk_sm *)(void *)(sh->copies + (size_t)i * sh->copy_size);
}

static inline int32_t *
fa_bk_sh_slots(fa_bk_sm *sm)
{
    return (int32_t *)(void *)((char *)sm + fa_bk_sm_size(&sm->cfg));
}

/* The creator: a closed record in copy 0, the mutex, the word. 0, or an errno value. */
int fa_bk_sh_init(fa_bk_shared *sh, const fa_bk_config *cfg);

/* Take the mutex and return the copy to change (a copy of the published record). 0, or an
 * errno value (the mutex could not be taken: nothing held). */
int fa_bk_sh_lock(fa_bk_shared *sh, fa_bk_sm **work);

/* Publish *work (the copy fa_bk_sh_lock returned) and release the mutex. */
void fa_bk_sh_publish(fa_bk_shared *sh, fa_bk_sm *work);

/* Release the mutex without publishing anything. */
void fa_bk_sh_unlock(fa_bk_shared *sh);

/* An opener's checks of a segment someone else made (its configuration bytes are already
 * known equal): the layout (before taking the mutex), then the record itself (under it, the
 * copy fa_bk_sh_lock returned). 1 sane, 0 corrupted. */
int fa_bk_sh_layout_sane(fa_bk_shared *sh, const fa_bk_config *cfg);
int fa_bk_sh_record_sane(fa_bk_sm *w, const fa_bk_config *cfg);

/* Admission under the mutex (the work copy): reclaims the probe slots of dead owners when every
 * slot is taken, and gives a probe its slot (t->probe = slot + 1). As fa_bk_admit. */
int fa_bk_sh_admit(fa_bk_sm *w, fa_bk_totals *tot, fa_bk_ticket *t, double now,
                   double *remaining);

/* Settle a ticket under the mutex (frees its probe slot). As fa_bk_commit. */
void fa_bk_sh_commit(fa_bk_sm *w, fa_bk_totals *tot, const fa_bk_ticket *t, int out, int slow,
                     double now);

/* fa_bk_force under the mutex. */
void fa_bk_sh_force(fa_bk_sm *w, fa_bk_totals *tot, int to, double now);

#if FA_DEBUG
/* The record's invariants and its probe slots'. */
void fa_bk_sh_check(fa_bk_sm *w, const void *owner);
#endif
#else
#define FA_BK_HAVE_SHARED 0
#endif

#endif
