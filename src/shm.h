/*
 * shm.h: named shared-memory segments, one per shared object of the host (core layer: it knows
 * nothing of the families that put their state in a segment).
 *
 * A segment is a POSIX shared-memory object "/aiofast.<name>" (under /dev/shm on Linux), mapped
 * whole into each process that opens it. Its layout:
 *
 *     fa_shm_header | the configuration (config_size bytes) | padding | payload (64-aligned)
 *
 * Invariants:
 * - The header's magic is 0 while the creator fills the segment, FA_SHM_MAGIC once it published
 *   it (a release store, after the header, the configuration and the payload are written), and
 *   never changes afterwards. An opener reads the rest only after an acquire load of the magic
 *   saw FA_SHM_MAGIC, so it sees a whole, initialised segment.
 * - A segment belongs to the effective user that created it and has mode 0600: an opener checks
 *   the owner, the mode, the size, the magic, the layout version, the kind and the configuration
 *   bytes before it uses anything in it; any mismatch is a Python exception, never a crash.
 * - Nothing this layer puts in the segment is a pointer or a lock: every process maps it at its
 *   own address, and a process killed at any instruction leaves nothing of the layer's that
 *   another must release. A payload that needs a lock (the shared breaker's) uses a robust
 *   process-shared mutex, recovered when its owner dies.
 * - Closing unmaps, never unlinks: the segment lives until shared_unlink() or reboot.
 */
#ifndef AIOFAST_SHM_H
#define AIOFAST_SHM_H

#include "aiofast.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* What lives in a segment (the header's kind): an opener of another kind is refused. */
#define FA_SHM_KIND_BUCKET 1u
#define FA_SHM_KIND_BREAKER 2u

#define FA_SHM_NAME_MAX 48

typedef struct {
    void *base;        /* the mapping: fa_shm_header, then the configuration, then the payload */
    size_t size;       /* whole mapping */
    void *payload;     /* aligned to 64 bytes */
    int created;       /* 1 if this call created the segment (and must initialise the payload
                          before fa_shm_publish) */
    char path[64];     /* "/aiofast.<name>" */
} fa_shm;

/* Validate name (safe alphabet [A-Za-z0-9_.-], no leading '.', 1..48 chars, no "..", no NUL),
 * open or create it with mode 0600 (O_CREAT|O_EXCL first; on EEXIST open and validate: owner uid
 * == geteuid(), mode & 077 == 0, size, magic, layout version, kind, configuration bytes equal:
 * otherwise a clear exception (ValueError naming both configurations when only the
 * configuration differs; PermissionError for owner/mode; SharedSegmentError for a foreign,
 * truncated or corrupted segment, or one whose creator died before publishing it), never a
 * crash, nothing created on failure). A new segment's payload is zero-filled. Returns 0, or -1
 * with a Python exception set (NotImplementedError where the platform has no shm_open).
 * `config_repr` renders a configuration for the error message (NULL: its bytes in hex).
 * Beware: config_repr is called (on a mismatch only) while nothing is held but out's mapping. */
int fa_shm_open(PyObject *name, uint32_t kind, const void *config, size_t config_size,
                size_t payload_size, PyObject *(*config_repr)(const void *config), fa_shm *out);

/* Creator: the payload is initialised; make the segment usable (a release store of the magic).
 * Openers wait (bounded, ~1 s) for it, then fail clearly: "creator died". */
void fa_shm_publish(fa_shm *shm);

/* munmap (a no-op on a closed or never-opened fa_shm); never unlinks. */
void fa_shm_close(fa_shm *shm);

/* CLOCK_MONOTONIC in ns: one clock for the whole host (every process reads the same one). */
int64_t fa_shm_now_ns(void);

/* Create the module's SharedSegmentError (an OSError) and add the segment layer's module-level
 * functions: shared_unlink(name), and a private probe the tests drive the layer with; 0 or -1. */
int fa_shm_init(PyObject *mod, fa_state *st);

#endif
