"""Leak check runner: ``python tests/leakcheck.py SCENARIO`` runs one scenario many times.

A scenario is a function in SCENARIOS that does one create / use / cancel / destroy cycle of a
type. After a warm-up, the runner measures len(gc.get_objects()), the refcount of every aiofast
type and tracemalloc's traced memory, runs many more cycles, measures again, and prints the
deltas as JSON. tests/test_leaks.py asserts they are flat.
"""
import asyncio
import dataclasses
import gc
import json
import sys
import tracemalloc

import aiofast
import aiofast._core as core

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


async def _spin(n=3):
    for _ in range(n):
        await asyncio.sleep(0)


@scenario
async def lock_family():
    sem = aiofast.Semaphore(1)
    lock = aiofast.Lock()
    ev = aiofast.Event()
    bsem = aiofast.BoundedSemaphore(2)
    async with sem, lock, bsem:
        pass
    await lock.acquire()
    waiters = [asyncio.ensure_future(lock.acquire()) for _ in range(3)]
    waiters += [asyncio.ensure_future(sem.acquire()) for _ in range(2)]
    async with sem:
        waiters += [asyncio.ensure_future(sem.acquire()) for _ in range(2)]
        waiters.append(asyncio.ensure_future(ev.wait()))
        await _spin()
        waiters[0].cancel()
        waiters[4].cancel()
    lock.release()
    ev.set()
    await _spin(6)
    for w in waiters:
        if not w.done():
            w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    if lock.locked():
        lock.release()
    # an op created and dropped without being awaited, and a closed one
    sem.acquire()
    op = lock.acquire()
    op.close()
    # a primitive dropped with waiters pending (its tasks are cancelled, then collected)
    s0 = aiofast.Semaphore(0)
    pend = [asyncio.ensure_future(s0.acquire()) for _ in range(3)]
    await _spin()
    for p in pend:
        p.cancel()
    await asyncio.gather(*pend, return_exceptions=True)
    # a temporary used in async with
    async with aiofast.Lock():
        pass


@dataclasses.dataclass(order=True)
class Job:
    priority: int
    name: str = dataclasses.field(compare=False, default="")


@scenario
async def queue_family():
    for cls in (aiofast.Queue, aiofast.PriorityQueue, aiofast.LifoQueue):
        q = cls(2)
        await q.put((1, "a"))
        q.put_nowait((0, "b"))
        putters = [asyncio.ensure_future(q.put((i, "p"))) for i in range(3)]
        await _spin()
        putters[1].cancel()
        assert (await q.get())[1] in "ab"
        q.task_done()
        await _spin()
        getters = [asyncio.ensure_future(q.get()) for _ in range(4)]
        joiner = asyncio.ensure_future(q.join())
        await _spin()
        getters[0].cancel()
        await _spin(6)
        for t in putters + getters:
            if not t.done():
                t.cancel()
        await asyncio.gather(*putters, *getters, return_exceptions=True)
        q._unfinished_tasks = 1
        q.task_done()
        await _spin()
        assert joiner.done()
        # views, a foreign waiter, an op closed mid-wait, an op dropped unawaited
        q._getters.append(asyncio.get_running_loop().create_future())
        repr(q._getters), list(q._putters), q._format(), repr(q)
        q.put_nowait((5, "x"))
        it = q.get()
        it.close()
        q.get()
        q.shutdown(immediate=True)
    for make in (lambda i: Job(i % 3, str(i)), lambda i: (i % 4, i), lambda i: i * 0.5):
        p = aiofast.PriorityQueue()
        for i in range(20):
            p.put_nowait(make(i))
        try:
            p.put_nowait("other type")  # a comparison raises: nothing inserted
        except TypeError:
            pass
        while not p.empty():
            p.get_nowait()
    # a queue dropped with waiters pending
    q0 = aiofast.Queue()
    pend = [asyncio.ensure_future(q0.get()) for _ in range(3)]
    await _spin()
    for t in pend:
        t.cancel()
    await asyncio.gather(*pend, return_exceptions=True)


def core_types():
    return {name: obj for name, obj in vars(core).items() if isinstance(obj, type)}


def measure():
    gc.collect()
    gc.collect()
    return (len(gc.get_objects()),
            {n: sys.getrefcount(t) for n, t in core_types().items()},
            tracemalloc.get_traced_memory()[0])


def main(name, warmup=200, cycles=700):
    """Warm up, then run `cycles` cycles three times, measuring after each segment. Allocator and
    cache effects are steps (a dict or freelist growing once; under ASan with
    PYTHONMALLOC=malloc a constant offset); a leak is a slope: it shows in every segment. So the
    smaller growth of the last two segments is what must be flat."""
    fn = SCENARIOS[name]

    async def many(k):
        for _ in range(k):
            await fn()

    tracemalloc.start()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(many(warmup))
        objs0, refs0, mem0 = measure()
        loop.run_until_complete(many(cycles))
        objs1, refs1, mem1 = measure()
        loop.run_until_complete(many(cycles))
        objs2, refs2, mem2 = measure()
        loop.run_until_complete(many(cycles))
        objs3, refs3, mem3 = measure()
    finally:
        loop.close()
    print(json.dumps({
        "objects": min(objs2 - objs1, objs3 - objs2),
        "objects_first_segment": objs1 - objs0,
        "type_refs": {n: refs3[n] - refs0[n] for n in refs0 if refs3[n] != refs0[n]},
        "traced_bytes": min(mem2 - mem1, mem3 - mem2),
        "traced_bytes_segments": [mem1 - mem0, mem2 - mem1, mem3 - mem2],
        "cycles": cycles,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
