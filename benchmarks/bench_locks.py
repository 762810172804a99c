"""Lock family benchmarks: aiofast against asyncio, side by side, on both loops.

Run: python -m benchmarks --only locks [--quick] [--save]   (or python benchmarks/bench_locks.py)
"""
import asyncio
import os
import random
import sys
import time

if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiofast  # noqa: E402
from benchmarks.harness import Case, async_variant, run_cases, write_json  # noqa: E402
from benchmarks.probe.build import load as load_probe  # noqa: E402

TITLE = "Lock family: Semaphore, Lock, Event"
perf = time.perf_counter


def with_sem(cls):
    async def run(n):
        s = cls(1)
        t0 = perf()
        for _ in range(n):
            async with s:
                pass
        return perf() - t0
    return run


def with_lock(cls):
    async def run(n):
        lk = cls()
        t0 = perf()
        for _ in range(n):
            async with lk:
                pass
        return perf() - t0
    return run


def acquire_release(cls):
    # literally `await sem.acquire(); sem.release()`: method calls, not pre-bound methods
    async def run(n):
        s = cls(1)
        t0 = perf()
        for _ in range(n):
            await s.acquire()
            s.release()
        return perf() - t0
    return run


def event_wait_set(cls):
    async def run(n):
        e = cls()
        e.set()
        t0 = perf()
        for _ in range(n):
            await e.wait()
        return perf() - t0
    return run


def contended(cls, tasks=500, permits=10):
    async def run(n):
        # n = number of task passes through the semaphore
        sem = cls(permits)

        async def worker(k):
            for _ in range(k):
                async with sem:
                    await asyncio.sleep(0)

        per = max(1, n // tasks)
        t0 = perf()
        await asyncio.gather(*(worker(per) for _ in range(tasks)))
        return (perf() - t0) * n / (per * tasks)
    return run


def cases(quick=False):
    emptycm = load_probe()
    k = 1 if quick else 4
    out = []
    for loop in ("asyncio", "uvloop"):
        # the floor: the same code on a C type whose methods do nothing and return an
        # already-done awaitable (benchmarks/probe/emptycm.c): what the interpreter charges
        v = lambda f_ours, f_theirs, floor=None, label="empty C async CM": {  # noqa: E731
            "aiofast": async_variant(loop, f_ours),
            "asyncio": async_variant(loop, f_theirs),
            **({label: async_variant(loop, floor)} if floor else {}),
        }
        out.append(Case("uncontended `async with sem:`",
                        v(with_sem(aiofast.Semaphore), with_sem(asyncio.Semaphore),
                          with_sem(lambda _v: emptycm.EmptyCM())), 50_000 * k, loop))
        out.append(Case("uncontended `async with lock:`",
                        v(with_lock(aiofast.Lock), with_lock(asyncio.Lock),
                          with_lock(emptycm.EmptyCM)), 50_000 * k, loop))
        out.append(Case("`await sem.acquire(); sem.release()`",
                        v(acquire_release(aiofast.Semaphore), acquire_release(asyncio.Semaphore),
                          acquire_release(lambda _v: emptycm.EmptyCM()), "empty C awaitable"),
                        50_000 * k, loop))
        out.append(Case("`await lock.acquire(); lock.release()`",
                        v(acquire_release(lambda _v: aiofast.Lock()),
                          acquire_release(lambda _v: asyncio.Lock()),
                          acquire_release(lambda _v: emptycm.EmptyCM()), "empty C awaitable"),
                        50_000 * k, loop))
        out.append(Case("`await event.wait()` (set)",
                        v(event_wait_set(aiofast.Event), event_wait_set(asyncio.Event)),
                        50_000 * k, loop))
        out.append(Case("500 tasks through Semaphore(10), sleep(0) inside",
                        v(contended(aiofast.Semaphore), contended(asyncio.Semaphore)),
                        5_000 * k, loop))
    return out


# ---------------------------------------------------------------- mass cancellation curve


async def _cancel_storm(cls, n, order):
    sem = cls(0)
    tasks = [asyncio.ensure_future(sem.acquire()) for _ in range(n)]
    await asyncio.sleep(0)
    seq = list(tasks)
    if order == "newest-first":
        seq.reverse()
    elif order == "random":
        random.Random(0).shuffle(seq)
    t0 = perf()
    for t in seq:
        t.cancel()
    # let every cancelled waiter run its cleanup: that is where asyncio's deque.remove costs
    await asyncio.gather(*tasks, return_exceptions=True)
    return perf() - t0


def cancellation_curve(quick=False, loop_name="asyncio"):
    from benchmarks.harness import _loops

    sizes_ours = [10_000, 25_000, 50_000, 100_000]
    sizes_asyncio = [5_000, 10_000, 20_000] if quick else [5_000, 10_000, 20_000, 40_000]
    # oldest-first is asyncio's best case (deque.remove finds the head at once): its curve
    # shows the loop's own cost per cancelled task at every size, beside ours
    rows = []
    for order in ("newest-first", "oldest-first", "random"):
        for label, cls, sizes in (("aiofast", aiofast.Semaphore, sizes_ours),
                                  ("asyncio", asyncio.Semaphore, sizes_asyncio)):
            if label == "asyncio" and order == "oldest-first":
                sizes = sizes_ours
            for n in sizes:
                loop = _loops()[loop_name]()
                try:
                    dt = loop.run_until_complete(_cancel_storm(cls, n, order))
                finally:
                    loop.close()
                rows.append({"impl": label, "order": order, "n": n, "seconds": dt,
                             "us_per_waiter": dt / n * 1e6})
                print(f"  cancel {label:8s} {order:12s} n={n:>7}: {dt:8.3f} s "
                      f"({dt / n * 1e6:7.2f} us/waiter)", file=sys.stderr, flush=True)
    return rows


def cancellation_markdown(rows):
    lines = ["| waiters cancelled | order | aiofast s | aiofast us/waiter | asyncio s | asyncio us/waiter |",
             "|---:|---|---:|---:|---:|---:|"]
    by = {}
    for r in rows:
        by.setdefault((r["n"], r["order"]), {})[r["impl"]] = r
    for (n, order), d in sorted(by.items()):
        a = d.get("aiofast")
        b = d.get("asyncio")
        lines.append(
            f"| {n:,} | {order} | {a['seconds']:.3f} | {a['us_per_waiter']:.2f} | "
            if a else f"| {n:,} | {order} | - | - | ")
        lines[-1] += (f"{b['seconds']:.3f} | {b['us_per_waiter']:.2f} |" if b else "- | - |")
    return "\n".join(lines)


def allocation_check(n=1_000_000):
    """Blocks allocated across n uncontended `async with` (should be 0)."""
    out = {}
    for name, make in (("Semaphore", lambda: aiofast.Semaphore(1)), ("Lock", aiofast.Lock)):
        prim = make()

        async def run(k):
            for _ in range(k):
                async with prim:
                    pass

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(run(1000))
            before = sys.getallocatedblocks()
            loop.run_until_complete(run(n))
            after = sys.getallocatedblocks()
        finally:
            loop.close()
        out[name] = after - before
    return out


def main(quick=False):
    doc = run_cases(cases(quick), 3 if quick else 7, "locks", TITLE)
    alloc = allocation_check(100_000 if quick else 1_000_000)
    print("Allocated blocks across %s uncontended `async with`: %s (loop overhead included)\n"
          % ("100,000" if quick else "1,000,000", alloc))
    rows = cancellation_curve(quick)
    print("### Mass cancellation of Semaphore(0) waiters (default loop)\n")
    print(cancellation_markdown(rows))
    write_json("locks-cancel", {"header": doc["header"], "allocations": alloc,
                                "cancellation": rows})


if __name__ == "__main__":
    from benchmarks.harness import parse_args

    main(parse_args(sys.argv[1:], __doc__)[0].quick)
