"""TokenBucket / AsyncLimiter against aiolimiter.AsyncLimiter.

Three parts, all on real time:

1. speed (the harness: interleaved rounds, medians, ratios): `await acquire()` with tokens
   available, aiofast's AsyncLimiter, `async with`, a rate-limited function call, try_acquire;
   on asyncio's default loop and on uvloop;
2. accuracy: 1000 tokens/s, capacity 10, 20 greedy tasks for 2 s: how many are admitted,
   against rate * elapsed + capacity (and the same for aiolimiter);
3. queue: N waiters queued on an empty bucket that admits one per timer wake-up; the cost per
   admitted waiter as N grows (flat means O(1) per admission), on a virtual clock (pure work)
   and on real time (CPU per admission).

Run: python -m benchmarks --only tokenbucket [--quick] [--save]
     python benchmarks/bench_tokenbucket.py [--quick] [--save] [--repeat N]
     [--speed-only | --extras-only]
"""
import asyncio
import gc
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiolimiter  # noqa: E402

from aiofast import AsyncLimiter, TokenBucket  # noqa: E402
from benchmarks.probe.build import load as load_probe  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Case, _loops, async_variant, header, run_cases, sync_variant, write_json)

TITLE = "TokenBucket: acquire with tokens available, against aiolimiter.AsyncLimiter"

HUGE = 1e15  # a rate nothing can exhaust: every acquire takes the fast path


# ---------------------------------------------------------------------------- speed


async def tb_acquire(n):
    b = TokenBucket(HUGE)
    t = time.perf_counter()
    for _ in range(n):
        await b.acquire()
    return time.perf_counter() - t


async def floor_acquire(n):
    # the floor of any rate limiter's uncontended acquire on a C type: a C method that reads
    # CLOCK_MONOTONIC and returns an already-done awaitable (benchmarks/probe/emptycm.c)
    b = load_probe().EmptyCM()
    t = time.perf_counter()
    for _ in range(n):
        await b.acquire_clock()
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
                         "aiolimiter": async_variant(loop, al_acquire),
                         "empty C awaitable + clock": async_variant(loop, floor_acquire)},
                        n, loop=loop))
        out.append(Case("AsyncLimiter: await acquire()",
                        {"aiofast": async_variant(loop, compat_acquire),
                         "aiolimiter": async_variant(loop, al_acquire),
                         "empty C awaitable + clock": async_variant(loop, floor_acquire)},
                        n, loop=loop))
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

    last = [t0]
    max_gap = [0.0]  # the longest stretch without an admission: past capacity / rate, tokens
    # overflowed the bucket because the process did not run (a loaded machine), not the limiter

    async def worker():
        nonlocal count
        while True:
            await limiter.acquire()
            t = loop.time()
            if t > end:
                return
            count += 1
            max_gap[0] = max(max_gap[0], t - last[0])
            last[0] = t

    ws = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(duration)
    await asyncio.sleep(0.1)  # let every worker see the end
    for w in ws:
        w.cancel()
    await asyncio.gather(*ws, return_exceptions=True)
    expected = rate * duration + capacity
    return count, expected, max_gap[0]


ACCURACY_MAKERS = {
    "aiofast": lambda rate, cap: TokenBucket(rate, capacity=cap),
    # aiolimiter's burst is max_rate: 10 per 0.01 s is 1000/s with a burst of 10
    "aiolimiter": lambda rate, cap: aiolimiter.AsyncLimiter(cap, cap / rate),
}


def accuracy(loop_name="asyncio", rounds=3, duration=2.0):
    rows = []
    for _ in range(rounds):  # interleaved, so both see the same machine
        for label, make in ACCURACY_MAKERS.items():
            loop = _loops()[loop_name]()
            try:
                count, expected, gap = loop.run_until_complete(
                    _greedy(make, 1000, 10, 20, duration))
            finally:
                loop.close()
            rows.append({"impl": label, "loop": loop_name, "admitted": count,
                         "expected": expected, "error_pct": 100 * (count - expected) / expected,
                         "max_gap_ms": gap * 1e3})
    return rows


# ---------------------------------------------------------------------------- queue


def _queued(limiter):
    return limiter.waiting if isinstance(limiter, TokenBucket) else len(limiter._waiters)


def _full(lim):
    lim._level = lim.max_rate  # aiolimiter starts with full capacity: use it up
    return lim


async def _drain(make, n, timer):
    limiter = make()
    done = 0

    async def waiter():
        nonlocal done
        await limiter.acquire()
        done += 1

    tasks = [asyncio.create_task(waiter()) for _ in range(n)]
    for _ in range(3):
        await asyncio.sleep(0)  # everyone is in line
    queued = _queued(limiter)
    # The cyclic GC is off while it drains: with N tasks alive, each collection walks all of
    # them, a cost of the heap (the same for any limiter), not of the limiter's algorithm.
    gc.disable()
    try:
        t = timer()
        await asyncio.gather(*tasks)
        elapsed = timer() - t
    finally:
        gc.enable()
    assert done == n
    return elapsed / queued, queued


# Virtual time (tests/virtual_time.py): the clock jumps to each timer, so a drain is pure work:
# one timer wake-up and one task wake-up per admitted waiter, whatever the rate. Measured in CPU
# time, like the real-time drain.
VIRTUAL_RATE = 1024  # a power of two: aiolimiter can livelock on a virtual clock otherwise (see the note)
# Real time: a token every 50 µs, slower than tasks line up; CPU time per admission (the drain
# is paced by the rate and the machine is shared).
REAL_RATE = 20_000

QUEUE_MAKERS = {
    "aiofast": lambda rate: TokenBucket(rate, capacity=1, initial=0),
    "aiolimiter": lambda rate: _full(aiolimiter.AsyncLimiter(1, 1 / rate)),
}


def _virtual_loops():
    from tests.virtual_time import VirtualClockLoop, VirtualUVLoop

    return {"asyncio": VirtualClockLoop, "uvloop": VirtualUVLoop}


def queue_curve(sizes=(100, 1000, 2000, 5000, 10000), loop_name="asyncio", rounds=3,
                virtual=True):
    rows = []
    factory = _virtual_loops()[loop_name] if virtual else _loops()[loop_name]
    rate = VIRTUAL_RATE if virtual else REAL_RATE
    timer = time.process_time  # CPU time: what the machine's other load does not inflate
    for n in sizes:
        for label, make in QUEUE_MAKERS.items():
            samples, queued = [], []
            for _ in range(rounds):
                loop = factory()
                try:
                    per, q = loop.run_until_complete(_drain(lambda: make(rate), n, timer))
                finally:
                    loop.close()
                samples.append(per)
                queued.append(q)
            rows.append({"impl": label, "loop": loop_name, "clock": "virtual" if virtual else
                         "real", "waiters": n, "queued": min(queued),
                         "us_per_admitted": statistics.median(samples) * 1e6})
    return rows


def extras_markdown(acc, curve):
    lines = ["### Accuracy (real time, 1000 tokens/s, capacity 10, 20 greedy tasks, 2 s)", "",
             "| implementation | loop | admitted | rate*elapsed+capacity | error | longest gap |",
             "|---|---|---:|---:|---:|---:|"]
    for r in acc:
        lines.append(f"| {r['impl']} | {r['loop']} | {r['admitted']} | {r['expected']:.0f} | "
                     f"{r['error_pct']:+.2f}% | {r['max_gap_ms']:.1f} ms |")
    lines.append("")
    lines.append("(a gap over 10 ms, capacity / rate, means the process did not run for that "
                 "long and tokens overflowed the full bucket)")
    for clock, title in (("virtual", "virtual clock: CPU time per admitted waiter, "
                                     f"{VIRTUAL_RATE} tokens/s"),
                         ("real", f"real time, {REAL_RATE} tokens/s: CPU time per admitted "
                                  "waiter; asyncio's selector sleeps whole milliseconds, so with "
                                  "capacity 1 both admit about one per millisecond there")):
        rows = [r for r in curve if r["clock"] == clock]
        if not rows:
            continue
        loops = sorted({r["loop"] for r in rows})
        cols = [(lp, k) for lp in loops for k in QUEUE_MAKERS]
        lines += ["", f"### Queue: N waiters in line, capacity 1, one timer per admission "
                  f"({title})", "",
                  "| waiters | " + " | ".join(f"{k}, {lp} (µs)" for lp, k in cols) + " |",
                  "|---:|" + "---:|" * len(cols)]
        by_n = {}
        for r in rows:
            by_n.setdefault(r["waiters"], {})[(r["loop"], r["impl"])] = r["us_per_admitted"]
        for n, v in sorted(by_n.items()):
            lines.append(f"| {n} | " + " | ".join(f"{v[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main(quick=False, repeat=None, part="all"):
    """part: "all", "speed" (the harness table only) or "extras" (accuracy and queue only)."""
    if part != "extras":
        run_cases(cases(quick), repeat or (3 if quick else 7), "tokenbucket", TITLE)
    if part == "speed":
        return
    acc = accuracy(rounds=1 if quick else 3) + accuracy("uvloop", rounds=1 if quick else 3)
    sizes = (1000, 5000) if quick else (100, 1000, 2000, 5000, 10000)
    rounds = 1 if quick else 3
    curve = []
    for loop_name in ("asyncio", "uvloop"):
        curve += queue_curve(sizes, loop_name, rounds)
    for loop_name in ("asyncio", "uvloop"):
        curve += queue_curve((1000, 10000) if not quick else (1000,), loop_name, 1,
                             virtual=False)
    md = extras_markdown(acc, curve)
    print(md)
    path = write_json("tokenbucket-extras", {"header": header(), "accuracy": acc, "queue": curve})
    print(f"\n(JSON: {path})")


if __name__ == "__main__":
    from benchmarks.harness import parse_args

    _args, _rest = parse_args(sys.argv[1:], __doc__)
    main(_args.quick,
         int(_rest[_rest.index("--repeat") + 1]) if "--repeat" in _rest else None,
         "speed" if "--speed-only" in _rest else "extras" if "--extras-only" in _rest else "all")
