/*
 * shm.c: named shared-memory segments (see shm.h for the layout and its invariants), and the
 * module functions of the layer: shared_unlink(name), and _shm_probe (the tests' handle on the
 * layer itself, with any kind and configuration).
 *
 * Opening is a small protocol between processes that may run it at the same instant:
 *   1. shm_open(O_CREAT|O_EXCL, 0600): the one that succeeds is the creator. It sets the size,
 *      maps, writes the header (magic 0), the configuration and a zero payload; the family
 *      initialises the payload, then fa_shm_publish stores the magic (release).
 *   2. Everyone else (EEXIST) opens the existing object and checks, in order: a regular file
 *      owned by this effective user with no group/other permission; a size of 0 means a
 *      creator between its open and its ftruncate, and a magic of 0 one still filling it: both
 *      are waited for (bounded, FA_SHM_WAIT_NS), then called a dead creator. Then the magic, the
 *      layout version, the kind, the sizes, the configuration bytes.
 *   If the object vanished between the two opens (unlinked meanwhile), start again.
 * A creator that fails after its shm_open unlinks what it created: a failed call leaves nothing.
 */
#include "shm.h"

#include <stdarg.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
/* (macOS has shm_open though its unistd.h says -1; there a name is limited to 31 bytes, so
 * names over 22 characters fail with ENAMETOOLONG) */
#if defined(__linux__) || defined(__APPLE__) \
    || (defined(_POSIX_SHARED_MEMORY_OBJECTS) && _POSIX_SHARED_MEMORY_OBJECTS > 0)
#define FA_HAVE_SHM 1
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#else
#define FA_HAVE_SHM 0
#endif

#define FA_SHM_MAGIC 0x3130314D48534641ULL   /* "AFSHM101" little-endian: never 0 */
#define FA_SHM_VERSION 1u
#define FA_SHM_ALIGN 64
#define FA_SHM_PREFIX "/aiofast."
#define FA_SHM_WAIT_NS 1000000000LL          /* how long an opener waits for the creator */
#define FA_SHM_CONFIG_MAX 4096

/* The start of every segment. All fields but magic are written once, before the magic is
 * published, and only read after it is seen. */
typedef struct {
    _Atomic uint64_t magic;    /* 0 while being created, then FA_SHM_MAGIC */
    uint32_t version;          /* FA_SHM_VERSION: the layout of this header */
    uint32_t kind;             /* FA_SHM_KIND_* */
    uint64_t size;             /* the whole segment */
    uint32_t config_size;
    uint32_t payload_offset;   /* a multiple of FA_SHM_ALIGN */
    uint64_t payload_size;
    uint64_t creator_pid;      /* informative only */
} fa_shm_header;

int64_t
fa_shm_now_ns(void)
{
#if FA_HAVE_SHM && defined(CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#else
    return (int64_t)fa_monotonic_ns();
#endif
}

static const char *
kind_name(uint32_t kind)
{
    switch (kind) {
    case FA_SHM_KIND_BUCKET: return "TokenBucket";
    case FA_SHM_KIND_BREAKER: return "CircuitBreaker";
    default: return "unknown";
    }
}

/* Raise aiofast.SharedSegmentError(message) (found through the module: the layer's functions
 * take no module state). Always returns -1. */
static int
raise_segment_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);  // new ref
    va_end(ap);
    if (msg == NULL) {
        return -1;
    }
    PyObject *exc_type = fa_import_attr("aiofast._core", "SharedSegmentError");  // new ref
    if (exc_type == NULL) {
        PyErr_Clear();
        exc_type = Py_NewRef(PyExc_OSError);
    }
    PyErr_SetObject(exc_type, msg);
    Py_DECREF(exc_type);
    Py_DECREF(msg);
    return -1;
}

/* name -> out->path ("/aiofast.<name>"); 0, or -1 with TypeError/ValueError. */
static int
shm_path(PyObject *name, char *path, size_t pathsize)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "shared name must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    if (n < 1 || n > FA_SHM_NAME_MAX) {
        PyErr_Format(PyExc_ValueError, "shared name must have 1 to %d characters, got %zd",
                     FA_SHM_NAME_MAX, n);
        return -1;
    }
    const char *allowed = "letters, digits, '_', '.' and '-' (not a leading '.', not '..')";
    if (!PyUnicode_IS_ASCII(name)) {
        PyErr_Format(PyExc_ValueError, "shared name may only contain %s, got %R", allowed, name);
        return -1;
    }
    const char *s = (const char *)PyUnicode_DATA(name);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                 || c == '_' || c == '-' || c == '.';
        if (!ok || (c == '.' && (i == 0 || s[i - 1] == '.'))) {
            PyErr_Format(PyExc_ValueError, "shared name may only contain %s, got %R", allowed,
                         name);
            return -1;
        }
    }
    int len = snprintf(path, pathsize, "%s%s", FA_SHM_PREFIX, s);
    assert(len > 0 && (size_t)len < pathsize);
    (void)len;
    return 0;
}

static size_t
payload_offset_for(size_t config_size)
{
    size_t off = sizeof(fa_shm_header) + config_size;
    return (off + FA_SHM_ALIGN - 1) & ~(size_t)(FA_SHM_ALIGN - 1);
}

#if FA_HAVE_SHM

static void
sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    Py_BEGIN_ALLOW_THREADS
    nanosleep(&ts, NULL);
    Py_END_ALLOW_THREADS
}

/* A creator is still filling the segment: sleep a little (without the GIL), 0; or, past the
 * deadline, call it dead: -1 with SharedSegmentError (or a signal handler's exception). */
static int
wait_for_creator(int64_t deadline, PyObject *name, const char *path, const char *what)
{
    if (fa_shm_now_ns() > deadline) {
        return raise_segment_error("shared segment %R (%s) %s: its creator died while "
                                   "creating it? Remove it with aiofast.shared_unlink(%R)",
                                   name, path, what, name);
    }
    sleep_ms(1);
    return PyErr_CheckSignals();
}

static int
raise_os_error(const char *path)
{
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path + 1);
    return -1;
}

static PyObject *
repr_config(PyObject *(*config_repr)(const void *), const void *config, size_t size)
{
    if (config_repr != NULL) {
        return config_repr(config);
    }
    return PyBytes_FromStringAndSize((const char *)config, (Py_ssize_t)size);
}

/* Create: 1 (out filled, created = 1), 0 (it exists already), -1 (error, nothing left). */
static int
shm_create(fa_shm *out, uint32_t kind, const void *config, size_t config_size,
           size_t payload_size, size_t total)
{
    int fd = shm_open(out->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST) {
            return 0;
        }
        return raise_os_error(out->path);
    }
    void *base = MAP_FAILED;
    /* the umask may have taken bits off 0600: exactly 0600, as openers require */
    if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)total) < 0) {
        goto fail;
    }
    base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        goto fail;
    }
    close(fd);
    /* ftruncate zero-filled it: magic 0 (being created), a zero payload */
    fa_shm_header *h = (fa_shm_header *)base;
    h->version = FA_SHM_VERSION;
    h->kind = kind;
    h->size = total;
    h->config_size = (uint32_t)config_size;
    h->payload_offset = (uint32_t)payload_offset_for(config_size);
    h->payload_size = payload_size;
    h->creator_pid = (uint64_t)getpid();
    if (config_size) {
        memcpy((char *)base + sizeof(fa_shm_header), config, config_size);
    }
    out->base = base;
    out->size = total;
    out->payload = (char *)base + h->payload_offset;
    out->created = 1;
    return 1;
fail:
    {
        int saved = errno;
        close(fd);
        shm_unlink(out->path);
        errno = saved;
    }
    return raise_os_error(out->path);
}

/* Open an existing one: 1 (out filled), 0 (it vanished: try creating again), -1 (error). */
static int
shm_attach(fa_shm *out, PyObject *name, uint32_t kind, const void *config, size_t config_size,
           size_t payload_size, size_t total, PyObject *(*config_repr)(const void *))
{
    int fd = shm_open(out->path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        if (errno == ENOENT) {
            return 0;
        }
        if (errno == EACCES || errno == EPERM) {
            PyErr_Format(PyExc_PermissionError,
                         "shared segment %R (%s) exists but this user may not open it", name,
                         out->path);
            return -1;
        }
        return raise_os_error(out->path);
    }
    void *base = MAP_FAILED;
    size_t mapped = 0;
    int64_t deadline = fa_shm_now_ns() + FA_SHM_WAIT_NS;
    struct stat sb;
    for (;;) {
        if (fstat(fd, &sb) < 0) {
            raise_os_error(out->path);
            goto error;
        }
        if (!S_ISREG(sb.st_mode)) {
            raise_segment_error("shared segment %R (%s) is not a regular shared-memory object",
                                name, out->path);
            goto error;
        }
        if (sb.st_uid != geteuid()) {
            PyErr_Format(PyExc_PermissionError,
                         "shared segment %R (%s) belongs to user id %lu, not to this process's "
                         "user (%lu): refusing to use it", name, out->path,
                         (unsigned long)sb.st_uid, (unsigned long)geteuid());
            goto error;
        }
        if (sb.st_mode & 077) {
            char mode[16];
            snprintf(mode, sizeof(mode), "%04o", (unsigned)(sb.st_mode & 07777));
            PyErr_Format(PyExc_PermissionError,
                         "shared segment %R (%s) has mode %s: other users may read or change "
                         "it, refusing to use it (segments are created 0600)", name, out->path,
                         mode);
            goto error;
        }
        if (sb.st_size != 0) {
            break;
        }
        /* its creator is between shm_open and ftruncate, or died there */
        if (wait_for_creator(deadline, name, out->path, "is empty") < 0) {
            goto error;
        }
    }
    if ((uint64_t)sb.st_size < sizeof(fa_shm_header)) {
        raise_segment_error("shared segment %R (%s) is truncated or not aiofast's: %lld bytes",
                            name, out->path, (long long)sb.st_size);
        goto error;
    }
    mapped = (size_t)sb.st_size;
    base = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        raise_os_error(out->path);
        goto error;
    }
    fa_shm_header *h = (fa_shm_header *)base;
    uint64_t magic;
    while ((magic = atomic_load_explicit(&h->magic, memory_order_acquire)) == 0) {
        if (wait_for_creator(deadline, name, out->path, "was never made ready") < 0) {
            goto error;
        }
    }
    if (magic != FA_SHM_MAGIC) {
        char hex[32];
        snprintf(hex, sizeof(hex), "%#llx", (unsigned long long)magic);
        raise_segment_error("shared segment %R (%s) is not aiofast's, or is corrupted "
                            "(magic %s)", name, out->path, hex);
        goto error;
    }
    if (h->version != FA_SHM_VERSION) {
        raise_segment_error("shared segment %R (%s) has layout version %u, this aiofast "
                            "reads version %u: was it made by another aiofast version?",
                            name, out->path, (unsigned)h->version, (unsigned)FA_SHM_VERSION);
        goto error;
    }
    if (h->kind != kind) {
        raise_segment_error("shared segment %R (%s) holds a %s, not a %s", name, out->path,
                            kind_name(h->kind), kind_name(kind));
        goto error;
    }
    /* the sizes the header claims, and the size the object really has */
    if (h->size != mapped || h->config_size != config_size
        || h->payload_offset != payload_offset_for(config_size)
        || h->payload_size != payload_size || (uint64_t)mapped != (uint64_t)total) {
#if defined(__APPLE__)
        /* macOS rounds a shared-memory object's size up to a page */
        long page = sysconf(_SC_PAGESIZE);
        int apple_ok = h->size == total && h->config_size == config_size
                       && h->payload_offset == payload_offset_for(config_size)
                       && h->payload_size == payload_size && mapped >= total
                       && mapped < total + (size_t)page;
        if (!apple_ok)
#endif
        {
            raise_segment_error("shared segment %R (%s) is truncated or corrupted: %zu bytes "
                                "(its header says %llu), expected %zu", name, out->path, mapped,
                                (unsigned long long)h->size, total);
            goto error;
        }
    }
    if (config_size && memcmp((char *)base + sizeof(fa_shm_header), config, config_size) != 0) {
        /* Beware: config_repr may run Python code; nothing of ours is shared yet */
        PyObject *theirs = repr_config(config_repr, (char *)base + sizeof(fa_shm_header),
                                       config_size);  // new ref
        PyObject *ours = theirs ? repr_config(config_repr, config, config_size) : NULL;
        if (ours != NULL) {
            PyErr_Format(PyExc_ValueError,
                         "shared segment %R exists with another configuration: it has %S, this "
                         "call asks for %S (remove it with aiofast.shared_unlink(%R) once no "
                         "process uses it, or use another name)", name, theirs, ours, name);
        }
        Py_XDECREF(theirs);
        Py_XDECREF(ours);
        goto error;
    }
    close(fd);
    out->base = base;
    out->size = mapped;
    out->payload = (char *)base + h->payload_offset;
    out->created = 0;
    return 1;
error:
    if (base != MAP_FAILED) {
        munmap(base, mapped);
    }
    close(fd);
    return -1;
}

#endif  /* FA_HAVE_SHM */

int
fa_shm_open(PyObject *name, uint32_t kind, const void *config, size_t config_size,
            size_t payload_size, PyObject *(*config_repr)(const void *config), fa_shm *out)
{
    memset(out, 0, sizeof(*out));
    if (shm_path(name, out->path, sizeof(out->path)) < 0) {
        return -1;
    }
#if FA_HAVE_SHM
    if (config_size > FA_SHM_CONFIG_MAX || payload_size > ((size_t)1 << 30)) {
        PyErr_SetString(PyExc_ValueError, "shared segment: configuration or payload too large");
        return -1;
    }
    size_t total = payload_offset_for(config_size) + payload_size;
    for (int attempt = 0; attempt < 100; attempt++) {
        int rc = shm_create(out, kind, config, config_size, payload_size, total);
        if (rc != 0) {
            return rc < 0 ? -1 : 0;
        }
        rc = shm_attach(out, name, kind, config, config_size, payload_size, total, config_repr);
        if (rc != 0) {
            return rc < 0 ? -1 : 0;
        }
        /* it was unlinked between our two opens: create it again */
    }
    raise_segment_error("shared segment %R (%s) keeps being removed while it is opened", name,
                        out->path);
    return -1;
#else
    (void)kind; (void)config; (void)config_size; (void)payload_size; (void)config_repr;
    PyErr_SetString(PyExc_NotImplementedError,
                    "shared= needs POSIX shared memory (shm_open), which this platform lacks");
    return -1;
#endif
}

void
fa_shm_publish(fa_shm *shm)
{
    fa_shm_header *h = (fa_shm_header *)shm->base;
    atomic_store_explicit(&h->magic, FA_SHM_MAGIC, memory_order_release);
}

void
fa_shm_close(fa_shm *shm)
{
#if FA_HAVE_SHM
    if (shm->base != NULL) {
        munmap(shm->base, shm->size);
    }
#endif
    shm->base = NULL;
    shm->payload = NULL;
    shm->size = 0;
}

/* ------------------------------------------------------------------ module functions */

PyDoc_STRVAR(shared_unlink_doc,
"shared_unlink($module, name, /)\n--\n\n"
"Remove the shared segment `name` (of a TokenBucket or CircuitBreaker made with shared=name).\n"
"Processes that have it open keep using their mapping; the next opener creates a new one.\n"
"Raises FileNotFoundError if there is none.");

static PyObject *
shared_unlink(PyObject *Py_UNUSED(mod), PyObject *name)
{
    char path[64];
    if (shm_path(name, path, sizeof(path)) < 0) {
        return NULL;
    }
#if FA_HAVE_SHM
    if (shm_unlink(path) < 0) {
        raise_os_error(path);
        return NULL;
    }
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_NotImplementedError,
                    "shared segments need POSIX shared memory (shm_open), which this platform "
                    "lacks");
    return NULL;
#endif
}

/* _shm_probe(name, kind, config: bytes, payload_size, publish=True) -> bool (created):
 * open (or create) and close a segment, for the tests of the layer itself. */
static PyObject *
shm_probe(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError,
                        "_shm_probe(name, kind, config, payload_size, publish=True)");
        return NULL;
    }
    unsigned long kind = PyLong_AsUnsignedLong(args[1]);
    if (kind == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "_shm_probe: config must be bytes");
        return NULL;
    }
    Py_ssize_t payload = PyLong_AsSsize_t(args[3]);
    if (payload < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "_shm_probe: payload_size must be >= 0");
        }
        return NULL;
    }
    int publish = 1;
    if (nargs == 5 && (publish = PyObject_IsTrue(args[4])) < 0) {
        return NULL;
    }
    fa_shm shm;
    if (fa_shm_open(args[0], (uint32_t)kind, PyBytes_AS_STRING(args[2]),
                    (size_t)PyBytes_GET_SIZE(args[2]), (size_t)payload, NULL, &shm) < 0) {
        return NULL;
    }
    int created = shm.created;
    if (created && publish) {
        fa_shm_publish(&shm);
    }
    fa_shm_close(&shm);
    return PyBool_FromLong(created);
}

static PyMethodDef shm_functions[] = {
    {"shared_unlink", (PyCFunction)shared_unlink, METH_O, shared_unlink_doc},
    {"_shm_probe", (PyCFunction)(void (*)(void))shm_probe, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

int
fa_shm_init(PyObject *mod, fa_state *st)
{
    st->core.SharedSegmentError = PyErr_NewExceptionWithDoc(
        "aiofast.SharedSegmentError",
        "A shared segment (shared=name) is not a usable aiofast segment: another program's, "
        "truncated, corrupted, of another layout version or kind, or never finished by a "
        "creator that died.", PyExc_OSError, NULL);
    if (st->core.SharedSegmentError == NULL
        || PyModule_AddObjectRef(mod, "SharedSegmentError", st->core.SharedSegmentError) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(mod, shm_functions);
}
