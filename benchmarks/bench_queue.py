"""Queue family benchmarks: aiofast against asyncio (and bare heapq), side by side.

Run: python -m benchmarks --only queue [--quick] [--save]   (or python benchmarks/bench_queue.py)

Cases: put_nowait + get_nowait on PriorityQueue ((i % 1024, i) tuples; @dataclass(order=True)
items), on Queue and LifoQueue; awaited put/get in one task; a bounded producer/consumer
(maxsize=64, await put, await get, task_done, join) on both loops; and the cost of cancelling
many waiting getters (asyncio's deque.remove is O(n) per waiter).
"""
import asyncio
import dataclasses
import heapq
import json
import os
import random
import sys
import time

if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiofast  # noqa: E402
from benchmarks.harness import Case, async_variant, run_cases, write_json  # noqa: E402

TITLE = "Queue family: Queue, PriorityQueue, LifoQueue"
perf = time.perf_counter


@dataclasses.dataclass(order=True)
class Task:
    """The reference TaskProcessor's item: one compared field, the rest compare=False."""

    priority: int
    task_id: int = dataclasses.field(compare=False)
    data: str = dataclasses.field(compare=False, default="")


def tuples(n):
    return [(i % 1024, i) for i in range(n)]


# ---------------------------------------------------------------- synchronous
# Each run(n) times only the queue operations (items are made before the clock starts) and
# returns seconds for n operations, as the harness expects.


def fill_drain(cls, make_items, size=None):
    """Rounds of: `size` x put_nowait, then `size` x get_nowait (size=None: one round of n).
    Time per item (one put + one get)."""

    def run(n):
        per = size or n
        rounds = max(1, n // per)
        items = make_items(per)
        q = cls()
        put, get = q.put_nowait, q.get_nowait
        t0 = perf()
        for _ in range(rounds):
            for x in items:
                put(x)
            for _ in items:
                get()
        return (perf() - t0) * n / (rounds * per)

    return run


def heapq_fill_drain(make_items, size=None):
    def run(n):
        per = size or n
        rounds = max(1, n // per)
        items = make_items(per)
        h = []
        push, pop = heapq.heappush, heapq.heappop
        t0 = perf()
        for _ in range(rounds):
            for x in items:
                push(h, x)
            for _ in items:
                pop(h)
        return (perf() - t0) * n / (rounds * per)

    return run


def steady(cls, make_items, size=1024):
    """A queue held at `size` items: put_nowait then get_nowait, n times."""

    def run(n):
        items = make_items(n + size)
        q = cls()
        put, get = q.put_nowait, q.get_nowait
        for x in items[:size]:
            put(x)
        rest = items[size:]
        t0 = perf()
        for x in rest:
            put(x)
            get()
        return perf() - t0

    return run


def heapq_steady(make_items, size=1024):
    def run(n):
        items = make_items(n + size)
        h = []
        push, pop = heapq.heappush, heapq.heappop
        for x in items[:size]:
            push(h, x)
        rest = items[size:]
        t0 = perf()
        for x in rest:
            push(h, x)
            pop(h)
        return perf() - t0

    return run


def alternate(cls):
    """put_nowait(x); get_nowait() on a queue that stays (nearly) empty."""

    def run(n):
        q = cls()
        put, get = q.put_nowait, q.get_nowait
        t0 = perf()
        for i in range(n):
            put(i)
            get()
        return perf() - t0

    return run


def tasks_items(n):
    rnd = random.Random(1)
    return [Task(rnd.randrange(4), i, "x") for i in range(n)]


# ---------------------------------------------------------------- asynchronous


def awaited_put_get(cls):
    async def run(n):
        q = cls()
        t0 = perf()
        for i in range(n):
            await q.put(i)
            await q.get()
        return perf() - t0

    return run


def producer_consumer(cls, maxsize=64, producers=1, consumers=1):
    async def run(n):
        q = cls(maxsize)
        per = n // producers

        async def producer():
            for i in range(per):
                await q.put(i)

        async def consumer():
            while True:
                await q.get()
                q.task_done()

        t0 = perf()
        workers = [asyncio.ensure_future(consumer()) for _ in range(consumers)]
        await asyncio.gather(*(producer() for _ in range(producers)))
        await q.join()
        dt = perf() - t0
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return dt * n / (per * producers)

    return run


def cases(quick=False):
    k = 1 if quick else 4
    out = []
    pq, apq = aiofast.PriorityQueue, asyncio.PriorityQueue
    out.append(Case("PriorityQueue put_nowait+get_nowait, (i % 1024, i), held at 1,024 items",
                    {"aiofast": steady(pq, tuples), "asyncio": steady(apq, tuples),
                     "heapq": heapq_steady(tuples)}, 25_000 * k))
    for size in (1_000, 10_000, 100_000):
        out.append(Case(f"PriorityQueue put_nowait+get_nowait, (i % 1024, i), fill {size:,} "
                        "then drain",
                        {"aiofast": fill_drain(pq, tuples, size),
                         "asyncio": fill_drain(apq, tuples, size),
                         "heapq": heapq_fill_drain(tuples, size)}, max(size, 25_000 * k)))
    out.append(Case("PriorityQueue put_nowait+get_nowait, @dataclass(order=True) tasks, "
                    "fill 1,000 then drain",
                    {"aiofast": fill_drain(pq, tasks_items, 1_000),
                     "asyncio": fill_drain(apq, tasks_items, 1_000),
                     "heapq": heapq_fill_drain(tasks_items, 1_000)}, 5_000 * k))
    out.append(Case("Queue put_nowait+get_nowait, fill 1,000 then drain",
                    {"aiofast": fill_drain(aiofast.Queue, list_range, 1_000),
                     "asyncio": fill_drain(asyncio.Queue, list_range, 1_000)}, 50_000 * k))
    out.append(Case("Queue put_nowait(x); get_nowait()",
                    {"aiofast": alternate(aiofast.Queue), "asyncio": alternate(asyncio.Queue)},
                    50_000 * k))
    out.append(Case("LifoQueue put_nowait+get_nowait, fill 1,000 then drain",
                    {"aiofast": fill_drain(aiofast.LifoQueue, list_range, 1_000),
                     "asyncio": fill_drain(asyncio.LifoQueue, list_range, 1_000)}, 50_000 * k))
    for loop in ("asyncio", "uvloop"):
        out.append(Case("`await q.put(i); await q.get()` (one task)",
                        {"aiofast": async_variant(loop, awaited_put_get(aiofast.Queue)),
                         "asyncio": async_variant(loop, awaited_put_get(asyncio.Queue))},
                        25_000 * k, loop))
        out.append(Case("producer/consumer, maxsize=64, await put/get, task_done, join",
                        {"aiofast": async_variant(loop, producer_consumer(aiofast.Queue)),
                         "asyncio": async_variant(loop, producer_consumer(asyncio.Queue))},
                        25_000 * k, loop))
        out.append(Case("4 producers / 4 consumers, maxsize=64",
                        {"aiofast": async_variant(loop, producer_consumer(aiofast.Queue, 64, 4, 4)),
                         "asyncio": async_variant(loop, producer_consumer(asyncio.Queue, 64, 4, 4))},
                        25_000 * k, loop))
        out.append(Case("PriorityQueue producer/consumer, maxsize=64, (i % 1024, i)",
                        {"aiofast": async_variant(loop, producer_consumer_items(
                            aiofast.PriorityQueue)),
                         "asyncio": async_variant(loop, producer_consumer_items(
                             asyncio.PriorityQueue))},
                        25_000 * k, loop))
    return out


def list_range(n):
    return list(range(n))


def producer_consumer_items(cls, maxsize=64):
    async def run(n):
        items = tuples(n)
        q = cls(maxsize)

        async def producer():
            for x in items:
                await q.put(x)

        async def consumer():
            while True:
                await q.get()
                q.task_done()

        t0 = perf()
        w = asyncio.ensure_future(consumer())
        await producer()
        await q.join()
        dt = perf() - t0
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        return dt

    return run


# ---------------------------------------------------------------- mass cancellation


async def _cancel_getters(cls, n, order):
    q = cls()
    tasks = [asyncio.ensure_future(q.get()) for _ in range(n)]
    await asyncio.sleep(0)
    seq = list(tasks)
    if order == "newest-first":
        seq.reverse()
    elif order == "random":
        random.Random(0).shuffle(seq)
    t0 = perf()
    for t in seq:
        t.cancel()
    # each cancelled getter cleans up when it runs: that is where asyncio's deque.remove costs
    await asyncio.gather(*tasks, return_exceptions=True)
    return perf() - t0


def cancellation_curve(quick=False, loop_name="asyncio"):
    from benchmarks.harness import _loops

    sizes_ours = [10_000, 100_000] if quick else [10_000, 25_000, 50_000, 100_000]
    sizes_asyncio = [5_000, 10_000, 20_000] if quick else [5_000, 10_000, 20_000, 40_000]
    rows = []
    for order in ("newest-first", "random", "oldest-first"):
        for label, cls, sizes in (("aiofast", aiofast.Queue, sizes_ours),
                                  ("asyncio", asyncio.Queue, sizes_asyncio)):
            for n in sizes:
                loop = _loops()[loop_name]()
                try:
                    dt = loop.run_until_complete(_cancel_getters(cls, n, order))
                finally:
                    loop.close()
                rows.append({"impl": label, "order": order, "n": n, "seconds": dt,
                             "us_per_waiter": dt / n * 1e6})
                print(f"  cancel {label:8s} {order:12s} n={n:>7}: {dt:8.3f} s "
                      f"({dt / n * 1e6:7.2f} us/waiter)", file=sys.stderr, flush=True)
    return rows


def cancellation_markdown(rows):
    lines = ["| getters cancelled | order | aiofast s | aiofast us/getter | asyncio s | "
             "asyncio us/getter |", "|---:|---|---:|---:|---:|---:|"]
    by = {}
    for r in rows:
        by.setdefault((r["order"], r["n"]), {})[r["impl"]] = r
    for (order, n), d in sorted(by.items()):
        a, b = d.get("aiofast"), d.get("asyncio")
        cells = [f"{n:,}", order]
        cells += [f"{a['seconds']:.3f}", f"{a['us_per_waiter']:.2f}"] if a else ["-", "-"]
        cells += [f"{b['seconds']:.3f}", f"{b['us_per_waiter']:.2f}"] if b else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(quick=False):
    doc = run_cases(cases(quick), 3 if quick else 7, "queue", TITLE)
    rows = cancellation_curve(quick)
    print("### Cancelling many waiting `Queue.get()`s (default loop)\n")
    print(cancellation_markdown(rows))
    write_json("queue-cancel", {"header": doc["header"], "cancellation": rows})


if __name__ == "__main__":
    from benchmarks.harness import parse_args

    main(parse_args(sys.argv[1:], __doc__)[0].quick)
