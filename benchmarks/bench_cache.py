"""Caches: LRUCache / TTLCache against cachetools and cachebox, cached against async-lru.

    python -m benchmarks --only cache [--quick] [--save]   (or python benchmarks/bench_cache.py)

Mapping cases time a loop of n operations over pre-built keys (the loop costs the same for
every variant). "scale" cases time aiofast with 1,000,000 entries against itself with 1,000
and against a dict and cachebox (a ratio below 1: that variant is faster than aiofast at 1M);
uniform random access over a table that big is bound by memory latency, for a dict as much as
for a cache. The memory table gives the bytes per entry, keys and values excluded: the growth
of the resident set (what cachebox's Rust heap needs) and what tracemalloc saw.
"""
import asyncio
import os
import random
import sys
import time

if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import async_lru  # noqa: E402
import cachebox  # noqa: E402
import cachetools  # noqa: E402

import aiofast  # noqa: E402
from benchmarks.harness import Case, async_variant, run_cases, sync_variant  # noqa: E402

TITLE = "Caches: mappings and the async memoizer"

KEYS = [f"key:{i}" for i in range(1000)]


def _lru(impl, maxsize):
    return {"aiofast": aiofast.LRUCache, "cachetools": cachetools.LRUCache,
            "cachebox": cachebox.LRUCache}[impl](maxsize)


def _ttl(impl, maxsize, ttl=3600):
    return {"aiofast": aiofast.TTLCache, "cachetools": cachetools.TTLCache,
            "cachebox": cachebox.TTLCache}[impl](maxsize, ttl)


def get_hit(make):
    def setup():
        c = make(len(KEYS))
        for k in KEYS:
            c[k] = k
        order = KEYS * 4
        random.Random(1).shuffle(order)
        return c, order

    state = {}

    def fn(n):
        if not state:
            state["c"], state["order"] = setup()
        c, order = state["c"], state["order"]
        m = len(order)
        i = 0
        while i < n:
            for k in order[: min(m, n - i)]:
                c[k]
            i += m

    return fn


def set_evict(make):
    """Insert new keys into a full cache: a miss, an insertion and an eviction each."""
    state = {"next": 0}

    def fn(n):
        if "c" not in state:
            c = make(1000)
            for i in range(1000):
                c[-1 - i] = i
            state["c"] = c
        c = state["c"]
        start = state["next"]
        state["next"] = start + n
        for i in range(start, start + n):
            c[i] = i

    return fn


def scale_variant(make, size, op):
    """get: uniform random hits (keys equal to, not the same objects as, the stored ones);
    set: random new keys into a full cache (a miss, an insertion and an eviction each)."""
    rnd = random.Random(2)
    state = {}

    def setup():
        c = make(size)
        for i in range(size):
            c[i] = i
        state["c"] = c
        state["probe"] = [rnd.randrange(size) for _ in range(100_000)]
        state["fresh"] = iter(range(10**12, 10**13, 7919))  # never seen keys, scattered

    def get(n):
        if not state:
            setup()
        c, probe = state["c"], state["probe"]
        i = 0
        while i < n:
            for k in probe[: min(len(probe), n - i)]:
                c[k]
            i += len(probe)

    def put(n):
        if not state:
            setup()
        c, fresh = state["c"], state["fresh"]
        for _ in range(n):
            k = next(fresh)
            c[k] = k

    return get if op == "get" else put


def scale_cases(n):
    """aiofast at 1,000,000 entries against itself at 1,000 and against a dict and cachebox
    at both sizes: the growth is the memory hierarchy's (a dict shows the same)."""
    out = []
    for kind in ("LRU", "TTL"):
        ours = (lambda m: aiofast.LRUCache(m)) if kind == "LRU" else (
            lambda m: aiofast.TTLCache(m, 3600))
        box = (lambda m: cachebox.LRUCache(m)) if kind == "LRU" else (
            lambda m: cachebox.TTLCache(m, 3600))
        get_variants = {
            "aiofast": sync_variant(scale_variant(ours, 1_000_000, "get")),
            "aiofast@1k": sync_variant(scale_variant(ours, 1000, "get")),
            "dict@1M": sync_variant(scale_variant(lambda m: {}, 1_000_000, "get")),
            "dict@1k": sync_variant(scale_variant(lambda m: {}, 1000, "get")),
            "cachebox@1M": sync_variant(scale_variant(box, 1_000_000, "get")),
        }
        out.append(Case(f"{kind}Cache get, 1M entries (uniform random)", get_variants, n,
                        note="scale"))
        set_variants = {
            "aiofast": sync_variant(scale_variant(ours, 1_000_000, "set")),
            "aiofast@1k": sync_variant(scale_variant(ours, 1000, "set")),
            "cachebox@1M": sync_variant(scale_variant(box, 1_000_000, "set")),
        }
        out.append(Case(f"{kind}Cache set, 1M entries (random new keys)", set_variants,
                        n // 2, note="scale"))
    return out


MEMORY_SCRIPT = """
import gc, sys, tracemalloc
import aiofast, cachebox, cachetools
impl, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
mod = {"aiofast": aiofast, "cachetools": cachetools, "cachebox": cachebox}[impl]
keys = [f"k{i}" for i in range(n)]
value = object()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
args = (n,) if kind == "LRUCache" else (n, 3600)
gc.collect()
tracemalloc.start()
r0, t0 = rss(), tracemalloc.get_traced_memory()[0]
c = getattr(mod, kind)(*args)
for k in keys:
    c[k] = value
gc.collect()
print((rss() - r0) / n, (tracemalloc.get_traced_memory()[0] - t0) / n)
"""


def memory_per_entry(n=1_000_000):
    """Bytes per entry (keys and values excluded, made before), in a fresh process each: the
    growth of the resident set, and what tracemalloc saw (it cannot see cachebox's Rust heap)."""
    import subprocess

    rows = []
    for kind in ("LRUCache", "TTLCache"):
        row = {}
        for impl in ("aiofast", "cachetools", "cachebox"):
            out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, impl, kind, str(n)],
                                 capture_output=True, text=True, check=True).stdout.split()
            row[impl] = (float(out[0]), float(out[1]))
        rows.append((kind, row))
    return rows


def memory_markdown(rows, n):
    lines = [f"| bytes per entry ({n:,} entries; RSS / tracemalloc) | aiofast | cachetools | "
             "cachebox |", "|---|---:|---:|---:|"]
    for kind, row in rows:
        cells = " | ".join(f"{row[i][0]:.0f} / {row[i][1]:.0f}"
                           for i in ("aiofast", "cachetools", "cachebox"))
        lines.append(f"| {kind} | {cells} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ the memoizer


def memo_hit(loop_name):
    def aiofast_run():
        async def run(n):
            @aiofast.cached
            async def f(x):
                return x

            await f(1)
            t0 = time.perf_counter()
            for _ in range(n):
                await f(1)
            return time.perf_counter() - t0

        return async_variant(loop_name, run)

    def alru_run():
        async def run(n):
            @async_lru.alru_cache
            async def f(x):
                return x

            await f(1)
            t0 = time.perf_counter()
            for _ in range(n):
                await f(1)
            return time.perf_counter() - t0

        return async_variant(loop_name, run)

    def bare_run():
        async def f(x):
            return x

        async def run(n):
            t0 = time.perf_counter()
            for _ in range(n):
                await f(1)
            return time.perf_counter() - t0

        return async_variant(loop_name, run)

    return {"aiofast": aiofast_run(), "async_lru": alru_run(), "bare coroutine": bare_run()}


def memo_method_hit(loop_name):
    def make(deco):
        async def run(n):
            class A:
                @deco
                async def m(self, x):
                    return x

            a = A()
            await a.m("k")
            t0 = time.perf_counter()
            for _ in range(n):
                await a.m("k")
            return time.perf_counter() - t0

        return async_variant(loop_name, run)

    return {"aiofast": make(aiofast.cached), "async_lru": make(async_lru.alru_cache)}


def memo_miss(loop_name):
    """Distinct arguments on a full cache: a task per computation for both."""

    def make(deco):
        async def run(n):
            @deco(maxsize=128)
            async def f(x):
                return x

            t0 = time.perf_counter()
            for i in range(n):
                await f(i)
            return time.perf_counter() - t0

        return async_variant(loop_name, run)

    return {"aiofast": make(aiofast.cached), "async_lru": make(async_lru.alru_cache)}


def cases(quick=False):
    n = 20_000 if quick else 200_000
    out = []
    for kind, factory in (("LRUCache", _lru), ("TTLCache", _ttl)):
        out.append(Case(f"{kind} get (hit)", {
            impl: sync_variant(get_hit(lambda m, impl=impl, factory=factory: factory(impl, m)))
            for impl in ("aiofast", "cachetools", "cachebox")}, n))
        out.append(Case(f"{kind} set (miss, evicts)", {
            impl: sync_variant(set_evict(lambda m, impl=impl, factory=factory: factory(impl, m)))
            for impl in ("aiofast", "cachetools", "cachebox")}, n // 2))
    if not quick:
        out.extend(scale_cases(n))
    for loop_name in ("asyncio", "uvloop"):
        out.append(Case("cached hit (async def)", memo_hit(loop_name), n // 2, loop=loop_name))
        out.append(Case("cached hit (method)", memo_method_hit(loop_name), n // 2,
                        loop=loop_name))
        out.append(Case("cached miss (maxsize=128)", memo_miss(loop_name), n // 20,
                        loop=loop_name))
    return out


def main(quick=False):
    run_cases(cases(quick), 3 if quick else 7, "cache", TITLE)
    n_mem = 100_000 if quick else 1_000_000
    print(memory_markdown(memory_per_entry(n_mem), n_mem))


if __name__ == "__main__":
    from benchmarks.harness import parse_args

    main(parse_args(sys.argv[1:], __doc__)[0].quick)
