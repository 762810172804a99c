"""TokenBucket / AsyncLimiter against aiolimiter.AsyncLimiter.

Three parts, all on real time:

1. speed (the harness: interleaved rounds, medians, ratios): `await acquire()` with tokens
   available, aiofast's AsyncLimiter, `async with`, a rate-limited function call, try_acquire;
   on asyncio's default loop and on uvloop;
2. accuracy: 1000 tokens/s, capacity 10, 20 greedy tasks for 2 s: how many are admitted,
   against rate * elapsed + capacity (and the same for aiolimiter);
3. queue: N waiters queued on an empty bucket that admits one per timer wake-up; the cost per
   admitted waiter as N grows (flat means O(1) per admission).

Run: PYTHONPATH=python:. python benchmarks/bench_tokenbucket.py [--quick]
"""
import asyncio
import json
import os
import platform
import statistics
import sys
import time

import aiolimiter

from aiofast import AsyncLimiter, TokenBucket
from benchmarks.harness import Case, _loops, async_variant, header, run_cases, sync_variant

TITLE = "TokenBucket: acquire with tokens available, against aiolimiter.AsyncLimiter"

HUGE = 1e15  # a rate nothing can exhaust: every acquire takes the fast path


# ---------------------------------------------------------------------------- speed


async def tb_acquire(n):
    b = TokenBucket(HUGE)
    t = time.perf_counter()
    for _ in range(n):
        await b.acquire()
    return time.perf_counter() - t


async def al_acquire(n):
    lim = aiolimiter.AsyncLimiter(HUGE, 1)
    t = time.perf_counter()
    for _ in range(n):
        await lim.acquire()
    return time.perf_counter() - t


async def compat_acquire(n):
    lim = AsyncLimiter(HUGE, 1)
    t = time.perf_counter()
    for _ in range(n):
        await lim.acquire()
    return time.perf_counter() - t


async def tb_async_with(n):
    b = TokenBucket(HUGE)
    t = time.perf_counter()
    for _ in range(n):
        async with b:
            pass
    return time.perf_counter() - t


async def al_async_with(n):
    lim = aiolimiter.AsyncLimiter(HUGE, 1)
    t = time.perf_counter()
    for _ in range(n):
        async with lim:
            pass
    return time.perf_counter() - t


async def tb_decorated(n):
    b = TokenBucket(HUGE)

    @b
    async def f(x):
        return x

    t = time.perf_counter()
    for i in range(n):
        await f(i)
    return time.perf_counter() - t


async def al_decorated(n):
    lim = aiolimiter.AsyncLimiter(HUGE, 1)

    async def g(x):
        return x

    async def f(x):  # what one writes with aiolimiter
        async with lim:
            return await g(x)

    t = time.perf_counter()
    for i in range(n):
        await f(i)
    return time.perf_counter() - t


async def plain_call(n):
    async def f(x):
        return x

    t = time.perf_counter()
    for i in range(n):
        await f(i)
    return time.perf_counter() - t


def tb_try_acquire(n):
    b = TokenBucket(HUGE)
    for _ in range(n):
        b.try_acquire()


def al_has_capacity(n):
    # aiolimiter has no try_acquire; has_capacity() is its non-waiting check (outside a loop it
    # cannot read a clock, so this runs inside one, as the async cases do)
    lim = aiolimiter.AsyncLimiter(HUGE, 1)

    async def run():
        for _ in range(n):
            lim.has_capacity()

    asyncio.run(run())


def cases(quick=False):
    n = 20_000 if quick else 200_000
    out = []
    for loop in ("asyncio", "uvloop"):
        out.append(Case("await acquire(), tokens available",
                        {"aiofast": async_variant(loop, tb_acquire),
                         "aiolimiter": async_variant(loop, al_acquire)}, n, loop=loop))
        out.append(Case("AsyncLimiter: await acquire()",
                        {"aiofast": async_variant(loop, compat_acquire),
                         "aiolimiter": async_variant(loop, al_acquire)}, n, loop=loop))
        out.append(Case("async with bucket",
                        {"aiofast": async_variant(loop, tb_async_with),
                         "aiolimiter": async_variant(loop, al_async_with)}, n, loop=loop))
        out.append(Case("rate-limited async function call",
                        {"aiofast": async_variant(loop, tb_decorated),
                         "aiolimiter": async_variant(loop, al_decorated),
                         "no limiter": async_variant(loop, plain_call)}, n, loop=loop,
                        note="aiofast: @bucket; aiolimiter: async with inside the function"))
    out.append(Case("try_acquire() (aiolimiter: has_capacity())",
                    {"aiofast": sync_variant(tb_try_acquire),
                     "aiolimiter": sync_variant(al_has_capacity)}, n))
    return out


# ---------------------------------------------------------------------------- accuracy


async def _greedy(make, rate, capacity, tasks, duration):
    loop = asyncio.get_running_loop()
    limiter = make(rate, capacity)
    t0 = loop.time()
    end = t0 + duration
    count = 0

    async def worker():
        nonlocal count
        while True:
            await limiter.acquire()
            if loop.time() > end:
                return
            count += 1

    ws = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(duration)
    await asyncio.sleep(0.1)  # let every worker see the end
    for w in ws:
        w.cancel()
    await asyncio.gather(*ws, return_exceptions=True)
    expected = rate * duration + capacity
    return count, expected


ACCURACY_MAKERS = {
    "aiofast": lambda rate, cap: TokenBucket(rate, capacity=cap),
    # aiolimiter's burst is max_rate: 10 per 0.01 s is 1000/s with a burst of 10
    "aiolimiter": lambda rate, cap: aiolimiter.AsyncLimiter(cap, cap / rate),
}


def accuracy(loop_name="asyncio", rounds=3, duration=2.0):
    rows = []
    for label, make in ACCURACY_MAKERS.items():
        for _ in range(rounds):
            loop = _loops()[loop_name]()
            try:
                count, expected = loop.run_until_complete(_greedy(make, 1000, 10, 20, duration))
            finally:
                loop.close()
            rows.append({"impl": label, "loop": loop_name, "admitted": count,
                         "expected": expected, "error_pct": 100 * (count - expected) / expected})
    return rows


# ---------------------------------------------------------------------------- queue


async def _drain(make, n):
    limiter = make()
    done = 0

    async def waiter():
        nonlocal done
        await limiter.acquire()
        done += 1

    tasks = [asyncio.create_task(waiter()) for _ in range(n)]
    for _ in range(3):
        await asyncio.sleep(0)  # everyone is in line (the first takes the only token)
    t = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t
    assert done == n
    return elapsed / (n - 1)


QUEUE_MAKERS = {
    # capacity 1, a token every microsecond: each admission needs its own timer wake-up
    "aiofast": lambda: TokenBucket(1_000_000, capacity=1),
    "aiolimiter": lambda: aiolimiter.AsyncLimiter(1, 1e-6),
}


def queue_curve(sizes=(1000, 2000, 5000, 10000), loop_name="asyncio", rounds=3):
    rows = []
    for n in sizes:
        for label, make in QUEUE_MAKERS.items():
            samples = []
            for _ in range(rounds):
                loop = _loops()[loop_name]()
                try:
                    samples.append(loop.run_until_complete(_drain(make, n)))
                finally:
                    loop.close()
            rows.append({"impl": label, "loop": loop_name, "waiters": n,
                         "us_per_admitted": statistics.median(samples) * 1e6})
    return rows


def extras_markdown(acc, curve):
    lines = ["### Accuracy (real time, 1000 tokens/s, capacity 10, 20 greedy tasks, 2 s)", "",
             "| implementation | loop | admitted | rate*elapsed+capacity | error |",
             "|---|---|---:|---:|---:|"]
    for r in acc:
        lines.append(f"| {r['impl']} | {r['loop']} | {r['admitted']} | {r['expected']:.0f} | "
                     f"{r['error_pct']:+.2f}% |")
    lines += ["", "### Queue: cost per admitted waiter as the line grows (one timer per admission)",
              "", "| waiters | " + " | ".join(f"{k} (µs/admitted)" for k in QUEUE_MAKERS) + " |",
              "|---:|" + "---:|" * len(QUEUE_MAKERS)]
    by_n = {}
    for r in curve:
        by_n.setdefault(r["waiters"], {})[r["impl"]] = r["us_per_admitted"]
    for n, v in sorted(by_n.items()):
        lines.append(f"| {n} | " + " | ".join(f"{v[k]:.1f}" for k in QUEUE_MAKERS) + " |")
    return "\n".join(lines)


def main():
    quick = "--quick" in sys.argv
    run_cases(cases(quick), 3 if quick else 7, "tokenbucket", TITLE)
    acc = accuracy(rounds=1 if quick else 3) + accuracy("uvloop", rounds=1 if quick else 3)
    curve = queue_curve(sizes=(1000, 5000) if quick else (1000, 2000, 5000, 10000),
                        rounds=1 if quick else 3)
    md = extras_markdown(acc, curve)
    print(md)
    here = os.path.dirname(os.path.abspath(__file__))
    ver = "".join(platform.python_version_tuple()[:2])
    path = os.path.join(here, "results", f"tokenbucket-extras-py{ver}.json")
    with open(path, "w") as f:
        json.dump({"header": header(), "accuracy": acc, "queue": curve}, f, indent=1)
    print(f"\n(JSON: {os.path.relpath(path)})")


if __name__ == "__main__":
    main()
