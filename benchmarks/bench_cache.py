"""Caches: LRUCache / TTLCache against cachetools and cachebox, cached against async-lru.

    PYTHONPATH=python:. python benchmarks/bench_cache.py [--quick]

Mapping cases time a loop of n operations over pre-built keys (the loop costs the same for
every variant). "scale" cases compare aiofast with itself: the same operation on a cache of
1,000,000 entries and on one of 1,000 (ratio below 1: the big cache is slower). The memory
table (tracemalloc) gives the bytes each cache allocates per entry, keys and values excluded.
"""
import asyncio
import random
import sys
import time

import async_lru
import cachebox
import cachetools

import aiofast
from benchmarks.harness import Case, async_variant, run_cases, sync_variant

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


def scale_variants(kind):
    """aiofast at 1,000,000 entries and at 1,000: get-hit and set-with-eviction."""

    def make(size, op):
        rnd = random.Random(2)
        c = aiofast.LRUCache(size) if kind == "LRU" else aiofast.TTLCache(size, 3600)
        for i in range(size):
            c[i] = i
        probe = [rnd.randrange(size) for _ in range(100_000)]
        state = {"next": size}

        def get(n):
            i = 0
            while i < n:
                for k in probe[: min(len(probe), n - i)]:
                    c[k]
                i += len(probe)

        def put(n):
            start = state["next"]
            state["next"] = start + n
            for i in range(start, start + n):
                c[i] = i

        return get if op == "get" else put

    return make


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
        for kind in ("LRU", "TTL"):
            big, small = scale_variants(kind)(1_000_000, "get"), scale_variants(kind)(1000, "get")
            out.append(Case(f"{kind}Cache get, 1M entries", {
                "aiofast": sync_variant(big), "aiofast@1k": sync_variant(small)}, n,
                note="scale"))
            big, small = scale_variants(kind)(1_000_000, "set"), scale_variants(kind)(1000, "set")
            out.append(Case(f"{kind}Cache set, 1M entries", {
                "aiofast": sync_variant(big), "aiofast@1k": sync_variant(small)}, n // 2,
                note="scale"))
    for loop_name in ("asyncio", "uvloop"):
        out.append(Case("cached hit (async def)", memo_hit(loop_name), n // 2, loop=loop_name))
        out.append(Case("cached hit (method)", memo_method_hit(loop_name), n // 2,
                        loop=loop_name))
        out.append(Case("cached miss (maxsize=128)", memo_miss(loop_name), n // 20,
                        loop=loop_name))
    return out


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    run_cases(cases(quick), 3 if quick else 7, "cache", TITLE)
    n_mem = 100_000 if quick else 1_000_000
    print(memory_markdown(memory_per_entry(n_mem), n_mem))
