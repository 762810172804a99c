"""Leak check runner: ``python tests/leakcheck.py SCENARIO [asyncio|uvloop]`` runs one scenario
many times, on a virtual clock (tests/virtual_time.py) on asyncio's loop or uvloop's.

A scenario is a function in SCENARIOS that does one create / use / cancel / destroy cycle of a
type. After a warm-up, the runner measures len(gc.get_objects()), the refcount of every aiofast
type and tracemalloc's traced memory, runs many more cycles, measures again, and prints the
deltas as JSON. tests/test_leaks.py asserts they are flat.
"""
import asyncio
import os
import copy
import dataclasses
import gc
import json
import os
import pickle
import sys
import tracemalloc
import warnings

import aiofast
import aiofast._core as core
import virtual_time
from helpers import spin

LOOPS = {"asyncio": virtual_time.new_virtual_loop, "uvloop": virtual_time.new_virtual_uvloop}

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def dropped_unawaited(make, qualname):
    """An awaitable made and dropped without being awaited: it warns at once, with the text of
    an un-awaited coroutine."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    got = [(w.category, str(w.message)) for w in caught]
    assert got == [(RuntimeWarning, f"coroutine '{qualname}' was never awaited")], got


async def dropped_with_waiters(make, n=3):
    """n waits made by make() left pending, then cancelled: the object they wait on is dropped
    with waiters pending (and a bucket's timer armed)."""
    pend = [asyncio.ensure_future(make()) for _ in range(n)]
    await spin(3)
    for t in pend:
        t.cancel()
    await asyncio.gather(*pend, return_exceptions=True)


async def bucket_waiters(b):
    """Four waiters on bucket b (capacity 4, empty), the first cancelled: their outcomes."""
    waiters = [asyncio.ensure_future(b.acquire(4, timeout=10)),
               asyncio.ensure_future(b.acquire(4)),
               asyncio.ensure_future(b.acquire(2, timeout=1e-9)),
               asyncio.ensure_future(b.acquire(1))]
    await asyncio.sleep(0)
    waiters[0].cancel()
    return await asyncio.gather(*waiters, return_exceptions=True)


def bucket_refusals(b, qualname):
    """What bucket b (capacity 4) refuses or drops: more than its capacity, an acquire closed
    unawaited, one dropped unawaited."""
    try:
        b.acquire(5)  # more than the capacity: raises at the call
    except ValueError:
        pass
    op = b.acquire(0.5)
    op.close()
    dropped_unawaited(lambda: b.acquire(1), qualname)


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
        await spin(3)
        waiters[0].cancel()
        waiters[4].cancel()
    lock.release()
    ev.set()
    await spin(6)
    for w in waiters:
        if not w.done():
            w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    if lock.locked():
        lock.release()
    # an op created and dropped without being awaited, and a closed one
    dropped_unawaited(sem.acquire, "Semaphore.acquire")
    op = lock.acquire()
    op.close()
    # a primitive dropped with waiters pending (its tasks are cancelled, then collected)
    s0 = aiofast.Semaphore(0)
    await dropped_with_waiters(s0.acquire)
    # a temporary used in async with
    async with aiofast.Lock():
        pass
    # the live _waiters views: foreign futures appended, woken, removed, reordered, replaced;
    # the helpers called directly; a view kept past its lock
    loop = asyncio.get_running_loop()
    lk = aiofast.Lock()
    await lk.acquire()
    waiting = [asyncio.ensure_future(lk.acquire()) for _ in range(2)]
    await spin(3)
    lk._waiters.appendleft(loop.create_future())
    done = loop.create_future()
    done.set_result(None)
    lk._waiters.extend([loop.create_future(), done])
    lk._waiters = list(reversed(list(lk._waiters)))
    view = lk._waiters
    lk.release()
    lk._wake_up_first()
    view.remove(view[0])
    repr(view), list(view), len(view), view.count(None)
    for w in waiting:
        w.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    s1 = aiofast.Semaphore(0)
    s1._waiters = [loop.create_future()]
    s1.release()
    s1._wake_up_next()
    s1._waiters = None
    del lk, view, done


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
        await spin(3)
        putters[1].cancel()
        assert (await q.get())[1] in "ab"
        q.task_done()
        await spin(3)
        getters = [asyncio.ensure_future(q.get()) for _ in range(4)]
        joiner = asyncio.ensure_future(q.join())
        await spin(3)
        getters[0].cancel()
        await spin(6)
        for t in putters + getters:
            if not t.done():
                t.cancel()
        await asyncio.gather(*putters, *getters, return_exceptions=True)
        q._unfinished_tasks = 1
        q.task_done()
        await spin(3)
        assert joiner.done()
        # views, a foreign waiter, an op closed mid-wait, an op dropped unawaited
        q._getters.append(asyncio.get_running_loop().create_future())
        repr(q._getters), list(q._putters), q._format(), repr(q)
        q._putters = [asyncio.get_running_loop().create_future()]
        q._wakeup_next(q._putters)
        q._wakeup_next([])
        q._finished = aiofast.Event()
        q.put_nowait((5, "x"))
        it = q.get()
        it.close()
        dropped_unawaited(q.get, "Queue.get")
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
    await dropped_with_waiters(q0.get)



@scenario
async def tokenbucket_family():
    b = aiofast.TokenBucket(1e6, capacity=4, initial=0)
    lim = aiofast.AsyncLimiter(4, 1)
    await b.acquire()
    async with b:
        pass
    res = await bucket_waiters(b)
    assert isinstance(res[0], asyncio.CancelledError) and res[1] is None, res
    assert isinstance(res[2], TimeoutError) and res[3] is None, res

    @b
    async def f(x):
        return x
    assert await f(1) == 1
    await lim.acquire()
    async with lim:
        pass
    b.try_acquire(), b.has_capacity(2), b.tokens, b.waiting, repr(b), repr(lim)
    b.reset()
    bucket_refusals(b, "TokenBucket.acquire")
    # a bucket dropped with waiters pending, a timer armed
    b0 = aiofast.TokenBucket(1, per=3600, initial=0)
    await dropped_with_waiters(lambda: b0.acquire(1, timeout=60))


@scenario
async def shared_tokenbucket():
    name = f"leakcheck.{os.getpid()}"
    b = aiofast.TokenBucket(1e6, capacity=4, initial=0, shared=name)
    await b.acquire()
    async with b:
        pass
    res = await bucket_waiters(b)
    # (real time at a million tokens a second: the first may be served before its cancellation)
    assert res[0] is None or isinstance(res[0], asyncio.CancelledError), res
    assert res[1] is None and res[3] is None, res
    assert res[2] is None or isinstance(res[2], TimeoutError), res

    @b
    async def f(x):
        return x
    assert await f(1) == 1
    b.try_acquire(), b.has_capacity(2), b.tokens, b.waiting, repr(b)
    bucket_refusals(b, "SharedTokenBucket.acquire")
    # a bucket dropped with a reservation pending, its timer armed
    b0 = aiofast.TokenBucket(1, per=3600, initial=0, shared=name + ".slow")
    await dropped_with_waiters(lambda: b0.acquire(1, timeout=60))
    aiofast.shared_unlink(name)
    aiofast.shared_unlink(name + ".slow")


class _Boom(Exception):
    pass


class _Store:
    """A breaker store: CircuitBreaker(..., store=s) is s.make_breaker(...)."""

    def make_breaker(self, *args, **kwargs):
        return args, kwargs


@scenario
async def breaker_family():
    t = [0.0]
    b = aiofast.CircuitBreaker(2, 1.0, half_open_max_calls=2, clock=lambda: t[0],
                               expected_exception=lambda e: not isinstance(e, KeyError))
    b.add_listener(lambda br, old, new: None)

    @b
    async def f(kind):
        await asyncio.sleep(0)
        if kind == "fail":
            raise _Boom(kind)
        if kind == "hang":
            await asyncio.sleep(3600)
        return kind

    @b
    def s(kind):
        if kind == "fail":
            raise _Boom(kind)
        return kind

    @b
    async def agen(n):
        for i in range(n):
            yield i

    assert await f("ok") == "ok" and s("ok") == "ok"
    assert [i async for i in agen(3)] == [0, 1, 2]
    for _ in range(2):
        try:
            await f("fail")
        except _Boom:
            pass
    for call in (lambda: f("ok"), lambda: b.call(f, "ok")):
        try:
            await call()
        except aiofast.CircuitOpenError:
            pass
    try:
        s("ok")
    except aiofast.CircuitOpenError:
        pass
    t[0] += 1.0
    task = asyncio.ensure_future(f("hang"))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    b.close()
    async with b:
        pass
    with b:
        pass
    try:
        async with b:
            raise KeyError("excluded by the predicate")
    except KeyError:
        pass
    await b.call(s, "x"), await b.call(f, "y")
    aw = f("never")
    aw.close()
    dropped_unawaited(lambda: b.call(f, "dropped"), "breaker_family.<locals>.f")
    b.stats(), repr(b), b.state, b.failure_count, b.remaining

    class AsyncCallable:
        async def __call__(self, x):
            return x
    wrapped = b(AsyncCallable())
    assert await wrapped(1) == 1
    wrapped(2).close()
    rate = aiofast.CircuitBreaker(failure_rate=0.5, window=4, min_calls=2, slow_call_duration=0.5,
                                  clock=lambda: t[0], fallback=lambda *a: "fb")
    g = rate(f.__wrapped__)
    for kind in ("ok", "fail", "fail", "ok"):
        try:
            await g(kind)
        except _Boom:
            pass
    assert await g("ok") == "fb"
    timed = aiofast.CircuitBreaker(failure_rate=0.5, window_time=10, min_calls=2, clock=lambda: t[0])
    for kind in ("fail", "ok", "fail"):
        try:
            await timed.call(s, kind)
        except (_Boom, aiofast.CircuitOpenError):
            pass
    # store=: the store makes the breaker; the refusals
    assert aiofast.CircuitBreaker(3, store=_Store(), name="s") == ((3,), {"name": "s"})
    for bad in (dict(store=1), dict(store=_Store), dict(store=_Store(), shared="x")):
        try:
            aiofast.CircuitBreaker(**bad)
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError(bad)


class _Box:
    """A key hashed by identity, with room for a reference back (a cycle)."""


class _Key:
    """A key with a Python __hash__/__eq__, so the tables call out to Python code."""
    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k

    def __hash__(self):
        return hash(self.k)

    def __eq__(self, other):
        return isinstance(other, _Key) and other.k == self.k


@scenario
async def cache_family():
    lru = aiofast.LRUCache(8)
    ttl = aiofast.TTLCache(8, 0.5)
    sized = aiofast.TTLCache(20, 5, getsizeof=len)
    loop = asyncio.get_running_loop()
    for j in range(30):
        lru[_Key(j)] = [j]
        ttl[j] = object()
        ttl.set(-j, [j], ttl=1000)
        sized[(j, "k")] = "x" * (j % 5 + 1)
        lru.get(_Key(j - 3))
        ttl.get(j - 1)
    lru.update({_Key(100): 1}, extra=2)
    list(lru.items()), list(ttl.values()), list(sized.keys()), repr(lru), repr(ttl)
    box = _Box()
    ttl[box] = 0
    it = iter(ttl.items())  # a TTLCache iterator's snapshot of keys: left half-way, mutated
    next(it), next(it)
    box.it = it  # a cycle through the snapshot (key -> iterator -> key): the gc collects it
    del ttl[box]
    for k in sized:
        sized[k] = "y"
    next(iter(ttl))
    pickle.loads(pickle.dumps(sized)), copy.copy(ttl)
    await asyncio.sleep(0.6)  # a virtual clock: expire the short-lived entries
    ttl.expire(), lru.popitem(), sized.pop((29, "k"), None), lru.setdefault(_Key(7), 7)
    try:
        sized["big"] = "x" * 50  # larger than maxsize: not stored
    except ValueError:
        pass
    try:
        lru[[1]] = 1  # unhashable
    except TypeError:
        pass
    lru["self"] = lru  # a cycle through the cache: the gc must collect it
    ttl[-3] = 3
    del ttl[-3]
    assert len(lru) <= 8 and len(ttl) <= 8 and sized.currsize <= 20
    ttl.clear()
    assert loop.time() > 0


@scenario
async def memo_family():
    gate = asyncio.Event()

    @aiofast.cached(maxsize=8, ttl=0.5)
    async def f(x):
        await gate.wait()
        if x % 5 == 0:
            raise ValueError(x)
        return [x]

    @aiofast.alru_cache(maxsize=4)
    async def g(x):
        await asyncio.sleep(0)
        return [x]

    @aiofast.cached(maxsize=4)
    def h(x):
        return [x]

    tasks = [asyncio.ensure_future(f(i % 12)) for i in range(30)]
    await asyncio.sleep(0)
    for t in tasks[::3]:
        t.cancel()
    gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for i in range(12):
        await g(i % 7)
        h(i % 6)
        if i % 3:
            await f(i % 3)
    # the last caller of a computation cancelled: the computation is cancelled and forgotten
    gate.clear()
    lone = asyncio.ensure_future(f(99))
    await spin(3)
    lone.cancel()
    await asyncio.gather(lone, return_exceptions=True)
    f(98).close()
    dropped_unawaited(lambda: f(97), "memo_family.<locals>.f")
    await asyncio.sleep(1)  # virtual: the ttl passes
    f.cache_info(), f.cache_contains(1), f.cache_invalidate(1), h.cache_info()
    f.cache_clear()
    h.cache_clear()
    await g.cache_close()


_SHARED = f"leak-breaker.{os.getpid()}"


@scenario
async def shared_breaker():
    """A shared breaker's segment created (mapped), used and removed each cycle, then the object
    dropped (unmapped): calls, a failure that opens it, a rejection, a probe, the getters."""
    b = aiofast.CircuitBreaker(2, 1.0, half_open_max_calls=2, shared=_SHARED, _testing=True)
    aiofast.shared_unlink(_SHARED)  # the object keeps its mapping; nothing left behind
    b.add_listener(lambda br, old, new: None)

    @b
    async def f(kind):
        await asyncio.sleep(0)
        if kind == "fail":
            raise _Boom(kind)
        return kind

    assert await f("ok") == "ok"
    for _ in range(2):
        try:
            await f("fail")
        except _Boom:
            pass
    try:
        await f("ok")
    except aiofast.CircuitOpenError:
        pass
    b._shared_advance(1.0)
    async with b:
        pass
    b.stats(), repr(b), b.state, b.failure_count, b.remaining, b._shared_info()
    b.close()


def core_types():
    return {name: obj for name, obj in vars(core).items() if isinstance(obj, type)}


def mappings():
    """The process's memory mappings (a shared segment never unmapped would add one a cycle)."""
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def measure():
    gc.collect()
    gc.collect()
    return (len(gc.get_objects()),
            {n: sys.getrefcount(t) for n, t in core_types().items()},
            tracemalloc.get_traced_memory()[0], mappings())


def main(name, loop_name="asyncio", warmup=400, cycles=400, segments=10):
    """Warm up, then run `segments` segments of `cycles` cycles, measuring after each. The
    interpreter's own caches settle slowly (seen: 11 KB, 2.4 KB, 1.2 KB, 1.1 KB over successive
    segments under ASan) and allocator effects are steps (a dict growing once); a leak is a
    slope: it shows in every segment. So the smallest growth of the segments after the first is
    what must be flat. Ten segments: under ASan on 3.10 the settling is slow (the lock family on
    uvloop, seen: 35, 30, 20, 12, 14, 8.2 KB, then 3.5, 4.9, 3.1, 3.2, 2.9, 2.7 KB; with six
    segments the smallest was 8.2 KB in one run of several), while a leak keeps its size in every
    one of them."""
    fn = SCENARIOS[name]

    async def many(k):
        for _ in range(k):
            await fn()

    tracemalloc.start()
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(many(warmup))
        points = [measure()]
        for _ in range(segments):
            loop.run_until_complete(many(cycles))
            points.append(measure())
    finally:
        loop.close()
    objs = [b[0] - a[0] for a, b in zip(points, points[1:])]
    mem = [b[2] - a[2] for a, b in zip(points, points[1:])]
    maps = [b[3] - a[3] for a, b in zip(points, points[1:])]
    refs0, refs_end = points[0][1], points[-1][1]
    print(json.dumps({
        "objects": min(objs[1:]),
        "objects_first_segment": objs[0],
        "type_refs": {n: refs_end[n] - refs0[n] for n in refs0 if refs_end[n] != refs0[n]},
        "traced_bytes": min(mem[1:]),
        "mappings": min(maps[1:]),
        "traced_bytes_segments": mem,
        "cycles": cycles,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:3])
