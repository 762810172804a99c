"""cached and alru_cache: the C memoizer.

Async tests run on asyncio's loop and on uvloop (conftest). ``alru_cache`` tests taking
``alru`` also run on async-lru's own decorator, the oracle. TTL tests run on the virtual clock.
"""
import asyncio
import functools
import gc
import warnings
import inspect
import math
import random
import sys
import threading
import time
import types
import weakref

import async_lru
import pytest
import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

import aiofast
from helpers import ORACLES, all_started, in_threads, oracle_fixture, run_virtual, spin, started
from pycompat import asyncio_iscoroutinefunction
from virtual_time import VirtualClockLoop, VirtualUVLoop

ALRU = ORACLES["alru"]
alru = oracle_fixture("alru", "alru")


def recording(deco, result=lambda x: x, gate=None):
    """A list of calls, and f(x), decorated with deco, which appends x to the calls, waits for
    the gate (an asyncio.Event) if there is one, then returns result(x)."""
    calls = []

    @deco
    async def f(x):
        calls.append(x)
        if gate is not None:
            await gate.wait()
        return result(x)

    return calls, f


def gated(deco, result=lambda x: x):
    """recording() with a gate: the gate, the calls, f."""
    gate = asyncio.Event()
    return (gate, *recording(deco, result, gate))


# ------------------------------------------------------------------ basics


@pytest.mark.asyncio
async def test_hit_is_a_finished_c_awaitable():
    @aiofast.cached
    async def f(x):
        return [x]

    first = await f(1)
    tasks = len(asyncio.all_tasks())
    aw = f(1)
    assert not isinstance(aw, types.CoroutineType) and not asyncio.isfuture(aw)
    assert asyncio.iscoroutine(aw)  # create_task() and gather() accept it
    with pytest.raises(StopIteration) as e:
        aw.send(None)  # done at the first step: nothing is yielded
    assert e.value.value is first
    assert len(asyncio.all_tasks()) == tasks
    assert await f(1) is first
    assert await asyncio.create_task(f(1)) is first
    assert f.cache_info() == functools._CacheInfo(3, 1, 128, 1)


@pytest.mark.asyncio
async def test_hit_awaitable_protocol():
    @aiofast.cached
    async def f(x):
        return (x,)  # a tuple survives StopIteration whole

    await f(1)
    assert await f(1) == (1,)
    h = f(1)
    assert "cached" in repr(h) and h.__name__ == "cached"
    with pytest.raises(StopIteration) as e:
        h.send(None)
    assert e.value.value == (1,) and e.value.args == ((1,),)
    with pytest.raises(RuntimeError, match="cannot reuse already awaited"):
        h.send(None)
    h = f(1)
    with pytest.raises(ValueError, match="boom"):
        h.throw(ValueError("boom"))
    with pytest.raises(RuntimeError):
        next(iter(h.__await__()))
    h = f(1)
    with pytest.raises(TypeError):
        h.send(3)
    h.close()
    with pytest.raises(RuntimeError):
        await h
    # a StopIteration held by the caller is not reused under it
    kept = []
    for _ in range(3):
        try:
            f(1).send(None)
        except StopIteration as exc:
            kept.append(exc)
    assert [k.value for k in kept] == [(1,)] * 3 and await f(1) == (1,)
    results = await asyncio.gather(f(1), f(1), asyncio.create_task(f(1)))
    assert results == [(1,)] * 3


def _traceback_here():
    try:
        raise KeyError("for its traceback")
    except KeyError as e:
        return e.__traceback__


THROWS = {
    "class": lambda tb: (ValueError,),
    "instance": lambda tb: (ValueError("boom"),),
    "class, value": lambda tb: (ValueError, "v"),
    "class, tuple value": lambda tb: (ValueError, ("a", 1)),
    "class, instance value": lambda tb: (ValueError, ValueError("same")),
    "class, None, tb": lambda tb: (ValueError, None, tb),
    "class, value, tb": lambda tb: (ValueError, ("a", 1), tb),
    "instance, None, tb": lambda tb: (ValueError("t"), None, tb),
    "instance, value": lambda tb: (ValueError("i"), "x"),
    "class, value, not a tb": lambda tb: (ValueError, "x", "tb"),
    "not an exception": lambda tb: (1,),
    "no arguments": lambda tb: (),
    "four arguments": lambda tb: (ValueError, None, None, None),
}


def _throw_outcome(aw, args):
    """What aw.throw(*args) raises, the warnings it gives, and what a send afterwards raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BaseException) as e:
            aw.throw(*args)
    with pytest.raises(BaseException) as after:
        aw.send(None)
    return e.value, [(w.category, str(w.message)) for w in caught], after.value


@pytest.mark.asyncio
@pytest.mark.parametrize("case", sorted(THROWS))
async def test_hit_throw_as_a_coroutine(case):
    """throw() into a hit's awaitable (finished at once, never started) behaves as throw() into
    an unstarted coroutine that would return the value: the same exception built from the same
    arguments (a tuple value is the arguments, a traceback is attached), the same TypeErrors,
    the 3-argument form's DeprecationWarning (3.12+), and closed afterwards."""
    @aiofast.cached
    async def f(x):
        return x

    async def real(x):
        return x

    await f(1)
    tb = _traceback_here()
    args = THROWS[case](tb)
    hits = f.cache_info().hits
    ours = _throw_outcome(f(1), args)
    assert f.cache_info().hits == hits + 1
    coro = real(1)
    theirs = _throw_outcome(coro, args)
    coro.close()
    (exc, warned, after), (oexc, owarned, oafter) = ours, theirs
    assert (type(exc), exc.args) == (type(oexc), oexc.args)
    assert warned == owarned
    if 1 < len(args) <= 3 and sys.version_info >= (3, 12):
        assert [c for c, _ in warned] == [DeprecationWarning]
    if args and isinstance(args[0], BaseException) and isinstance(exc, ValueError):
        assert exc is args[0] and oexc is args[0]
    if tb in args and isinstance(exc, ValueError):
        def chain(t):
            while t is not None:
                yield t
                t = t.tb_next
        assert tb in list(chain(exc.__traceback__))
    if isinstance(exc, ValueError):  # thrown in: closed, as the coroutine is
        assert type(after) is type(oafter) is RuntimeError
        assert "cannot reuse already awaited" in str(after)
    else:  # refused: the coroutine was not closed by it, it still returns its value
        assert type(after) is type(oafter) is StopIteration
        assert after.value == oafter.value == 1


@pytest.mark.asyncio
async def test_removed_values_are_released():
    class V:
        pass

    @aiofast.cached(maxsize=1)
    async def f(x):
        return V()

    # (each check comes after a sleep(0): until this task's step ends, the loop's handle that
    # woke it still holds the future that delivered the first result)
    first = await f(1)
    assert await f(1) is first  # a hit: the value travelled in a StopIteration (3.12+)
    r = weakref.ref(first)
    del first
    await f(2)  # evicts 1
    await asyncio.sleep(0)
    gc.collect()
    assert r() is None
    second = await f(2)
    r2 = weakref.ref(second)
    del second
    f.cache_clear()
    await asyncio.sleep(0)
    gc.collect()
    assert r2() is None


@pytest.mark.asyncio
async def test_single_flight():
    gate, calls, f = gated(aiofast.cached, lambda x: x * 10)

    tasks = await all_started(f(3) for _ in range(5))
    assert calls == [3]
    assert f.cache_contains(3) and f.cache_parameters()["tasks"] == 1
    gate.set()
    assert await asyncio.gather(*tasks) == [30] * 5
    assert f.cache_info().hits == 4 and f.cache_info().misses == 1
    assert await f(3) == 30 and calls == [3]
    assert f.cache_parameters()["tasks"] == 0


@pytest.mark.asyncio
async def test_exception_is_shared_and_not_cached():
    def bad(x):
        raise ValueError(f"bad {x}")

    gate, calls, f = gated(aiofast.cached, bad)

    tasks = await all_started(f(1) for _ in range(3))
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert results[0] is results[1] is results[2]
    assert not f.cache_contains(1) and f.cache_info().currsize == 0
    with pytest.raises(ValueError, match="bad 1"):
        await f(1)
    assert calls == [1, 1]


@pytest.mark.asyncio
async def test_sync_raise_in_function_call():
    @aiofast.cached
    async def f(x):
        return x

    with pytest.raises(TypeError):
        await f(1, 2, 3)
    assert f.cache_info().currsize == 0 and f.cache_parameters()["tasks"] == 0
    assert await f(1) == 1


@pytest.mark.asyncio
async def test_cancelling_one_waiter_keeps_the_computation():
    gate, calls, f = gated(aiofast.cached)

    first = asyncio.create_task(f(7))  # starts the computation
    await spin()
    second = await started(f(7))
    first.cancel("stop")
    await spin()
    assert first.cancelled()
    gate.set()
    assert await second == 7
    assert calls == [7] and await f(7) == 7 and calls == [7]


@pytest.mark.asyncio
async def test_cancelling_every_waiter_cancels_the_computation():
    gate = asyncio.Event()
    seen = []

    @aiofast.cached
    async def f(x):
        try:
            await gate.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return x

    tasks = await all_started(f(1) for _ in range(3))
    for t in tasks:
        t.cancel()
    await spin()
    assert all(t.cancelled() for t in tasks)
    assert seen == ["cancelled"]
    assert not f.cache_contains(1) and f.cache_parameters()["tasks"] == 0
    gate.set()
    assert await f(1) == 1


@pytest.mark.asyncio
async def test_cancellation_at_every_point_conserves_results():
    """Three callers join one computation of four steps; every subset of them is cancelled at
    every step. The survivors get the result; nothing is computed twice; nothing leaks."""
    for step in range(8):
        for mask in range(8):
            calls, done, cancelled = [], [], []

            @aiofast.cached
            async def f(x):
                calls.append(x)
                try:
                    for _ in range(4):
                        await asyncio.sleep(0)
                except asyncio.CancelledError:
                    cancelled.append(x)
                    raise
                done.append(x)
                return x + 1

            tasks = []
            for i in range(3):
                tasks.append(asyncio.create_task(f(10)))
                await asyncio.sleep(0)
            for _ in range(step):
                await asyncio.sleep(0)
            for i in range(3):
                if mask & (1 << i):
                    tasks[i].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            survivors = [r for r in results if not isinstance(r, BaseException)]
            assert all(r == 11 for r in survivors), (step, mask, results)
            for i, r in enumerate(results):
                if isinstance(r, BaseException):
                    assert mask & (1 << i) and isinstance(r, asyncio.CancelledError)
            await spin()
            assert len(done) + len(cancelled) == 1  # finished, or cancelled: never both
            if survivors:
                assert done == [10]
            if cancelled:
                assert mask == 7 and not survivors  # only when every caller left
            finished = bool(done)
            assert f.cache_contains(10) == finished, (step, mask, results, done, cancelled)
            assert f.cache_parameters()["tasks"] == 0
            assert await f(10) == 11
            assert calls == ([10] if finished else [10, 10])


@pytest.mark.asyncio
async def test_computation_cancelled_from_outside():
    gate = asyncio.Event()

    @aiofast.cached
    async def f():
        await gate.wait()

    waiters = await all_started(f() for _ in range(2))
    (computation,) = [t for t in asyncio.all_tasks() if t not in waiters
                      and t is not asyncio.current_task()]
    computation.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert f.cache_info().currsize == 0


@pytest.mark.asyncio
async def test_cached_none_and_tuple_results():
    @aiofast.cached
    async def f(x):
        return None if x == 0 else (x, x)

    assert await f(0) is None and await f(0) is None
    assert await f(1) == (1, 1) and await f(1) == (1, 1)


# ------------------------------------------------------------------ keys


CALLS = [((1,), {}), ((1,), {}), ((1.0,), {}), ((True,), {}), ((1,), {"a": 2}),
         ((1,), {"a": 2}), ((1,), {"a": 2, "b": 3}), ((1,), {"b": 3, "a": 2}), (("x",), {}),
         ((("x",),), {}), ((), {}), ((), {}), ((1, 2), {}), ((1.0, 2), {}), ((None,), {}),
         ((None,), {}), ((1,), {"a": 2.0}), (("x",), {}), ((1.0,), {})]


@pytest.mark.parametrize("typed", [False, True])
def test_keys_follow_functools_lru_cache(typed):
    """The same calls through functools.lru_cache and cached: the same hits and misses."""
    outputs = {}
    for name, deco in (("functools", functools.lru_cache(maxsize=None, typed=typed)),
                       ("aiofast", aiofast.cached(maxsize=None, typed=typed))):
        n = []

        @deco
        def f(*args, **kwargs):
            n.append(1)
            return len(n)

        outputs[name] = ([f(*a, **kw) for a, kw in CALLS], f.cache_info())
    assert outputs["aiofast"] == outputs["functools"]


@pytest.mark.asyncio
async def test_keys_async():
    calls = []

    @aiofast.cached(maxsize=None)
    async def f(*args, **kwargs):
        calls.append((args, kwargs))
        return len(calls)

    assert [await f(*a, **kw) for a, kw in CALLS] == _expected_async()
    with pytest.raises(TypeError, match="unhashable"):
        f([1])
    with pytest.raises(TypeError, match="unhashable"):
        f(1, a={})


def _expected_async():
    """What functools.lru_cache answers for CALLS (a counter of its misses)."""
    n = []

    @functools.lru_cache(maxsize=None)
    def f(*args, **kwargs):
        n.append(1)
        return len(n)

    return [f(*a, **kw) for a, kw in CALLS]


@pytest.mark.asyncio
async def test_custom_key():
    @aiofast.cached(key=lambda x, *, scale=1: x % 10)
    async def f(x, *, scale=1):
        return x * scale

    assert await f(3) == 3 and await f(13) == 3 and await f(13, scale=2) == 3
    assert f.cache_contains(23) and f.cache_invalidate(33) and not f.cache_contains(3)
    with pytest.raises(ValueError, match="typed is ignored"):
        aiofast.cached(typed=True, key=lambda x: x)
    with pytest.raises(TypeError):
        aiofast.cached(key=3)

    @aiofast.cached(key=lambda x: [x])
    async def unhashable(x):
        return x

    with pytest.raises(TypeError):
        unhashable(1)


@pytest.mark.asyncio
async def test_maxsize_lru_eviction():
    calls, f = recording(aiofast.cached(maxsize=2))

    for x in (1, 2, 1, 3, 2, 1):
        await f(x)
    # 1, 2 | 1 hit | 3 evicts 2 | 2 evicts 1 | 1 evicts 3
    assert calls == [1, 2, 3, 2, 1]
    assert f.cache_info() == functools._CacheInfo(1, 5, 2, 2)


@pytest.mark.asyncio
async def test_maxsize_zero_and_none():
    calls, f = recording(aiofast.cached(maxsize=0))

    assert await f(1) == await f(1) == 1 and calls == [1, 1]
    assert f.cache_info() == functools._CacheInfo(0, 2, 0, 0)

    @aiofast.cached(maxsize=None)
    async def g(x):
        return x

    for i in range(1000):
        await g(i)
    assert g.cache_info().currsize == 1000 and g.cache_info().maxsize is None


def test_argument_validation():
    with pytest.raises(TypeError):
        aiofast.cached(maxsize="3")
    with pytest.raises(ValueError):
        aiofast.cached(ttl=-1)
    with pytest.raises(ValueError):
        aiofast.cached(ttl=float("nan"))
    with pytest.raises(TypeError):
        aiofast.cached(ttl="1")
    with pytest.raises(TypeError):
        aiofast.cached()(3)


@pytest.mark.asyncio
async def test_invalidate_contains_clear():
    gate, _, f = gated(aiofast.cached)
    t = await started(f(1))
    assert f.cache_contains(1) and not f.cache_contains(2)
    assert f.cache_invalidate(1) and not f.cache_invalidate(1)
    gate.set()
    assert await t == 1  # the detached computation still answers its caller
    assert not f.cache_contains(1)  # but its result is not recorded
    await f(1)
    await f(1)
    f.cache_clear()
    assert f.cache_info() == functools._CacheInfo(0, 0, 128, 0)


# ------------------------------------------------------------------ methods and metadata


@pytest.mark.asyncio
async def test_methods():
    calls = []

    class A:
        def __init__(self, n):
            self.n = n

        @aiofast.cached
        async def m(self, x):
            calls.append((self.n, x))
            return self.n * x

        @classmethod
        @aiofast.cached
        async def c(cls, x):
            return (cls.__name__, x)

        @staticmethod
        @aiofast.cached
        async def s(x):
            return -x

    a, b = A(2), A(3)
    assert await a.m(5) == 10 and await b.m(5) == 15 and await a.m(5) == 10
    assert calls == [(2, 5), (3, 5)]
    assert A.m.cache_info() == a.m.cache_info() and a.m.cache_info().hits == 1
    assert await A.m(a, 5) == 10 and A.m.cache_info().hits == 2
    assert a.m.cache_contains(5) and not a.m.cache_contains(6)
    assert a.m.cache_invalidate(5) and not a.m.cache_contains(5) and b.m.cache_contains(5)
    assert await A.c(1) == ("A", 1) and await a.c(1) == ("A", 1)
    assert await A.s(4) == -4 and await a.s(4) == -4
    assert a.m.__self__ is a and a.m.__func__ is A.__dict__["m"]
    assert a.m.__name__ == "m" and a.m.__wrapped__ is A.__dict__["m"].__wrapped__


def test_metadata():
    async def f(x, y=1):
        """Doc of f."""
        return x

    def g(x):
        """Doc of g."""
        return x

    cf, cg = aiofast.cached(f), aiofast.cached(g)
    assert cf.__name__ == "f" and cf.__doc__ == "Doc of f." and cf.__wrapped__ is f
    assert cf.__module__ == f.__module__ and cf.__qualname__ == f.__qualname__
    assert str(inspect.signature(cf)) == "(x, y=1)"
    assert asyncio_iscoroutinefunction(cf) and not asyncio_iscoroutinefunction(cg)
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(cf)
    assert cg(4) == 4 and cg.__doc__ == "Doc of g."
    assert "cached" in repr(cf) and "hits:0" in repr(cf)
    r = weakref.ref(cf)
    del cf
    gc.collect()
    assert r() is None


@aiofast.cached
def module_level(x):
    return x


def test_pickled_by_name():
    import pickle

    assert pickle.loads(pickle.dumps(module_level)) is module_level


# ------------------------------------------------------------------ TTL on virtual time


def test_ttl_counts_from_completion():
    async def main():
        loop = asyncio.get_running_loop()
        calls = []

        @aiofast.cached(ttl=10)
        async def f(x):
            calls.append(loop.time())
            await asyncio.sleep(5)
            return x

        t0 = loop.time()
        assert await f(1) == 1  # done at t0 + 5: fresh until t0 + 15
        await asyncio.sleep(9.5)
        assert loop.time() == t0 + 14.5
        assert await f(1) == 1 and len(calls) == 1 and f.cache_contains(1)
        await asyncio.sleep(1)
        assert not f.cache_contains(1)
        assert await f(1) == 1 and len(calls) == 2
        assert f.cache_info().currsize == 1

    run_virtual(main)


def test_ttl_outside_the_loop_expires_nothing():
    """An async function's results expire by its loop's clock: with no loop running there is
    no clock, and cache_info() / cache_contains() report what is held."""

    @aiofast.cached(ttl=10)
    async def f(x):
        return x

    async def main():
        await f(1)
        await asyncio.sleep(20)
        assert not f.cache_contains(1)
        await f(2)

    loop = VirtualClockLoop(start=time.monotonic() + 10**5)  # far from time.monotonic()
    loop.run_until_complete(main())
    assert f.cache_info().currsize == 1 and f.cache_contains(2)
    assert loop.run_until_complete(f(2)) == 2 and f.cache_info().hits == 1
    loop.close()


def test_ttl_expired_results_are_reclaimed_on_miss():
    async def main():
        @aiofast.cached(ttl=1, maxsize=None)
        async def f(x):
            return x

        for i in range(100):
            await f(i)
        await asyncio.sleep(2)
        await f("new")
        assert f.cache_info().currsize == 1

    run_virtual(main)


def test_ttl_with_explicit_timer():
    now = [0.0]

    @aiofast.cached(ttl=5, timer=lambda: now[0])
    def f(x):
        return [x]

    a = f(1)
    now[0] = 4.9
    assert f(1) is a
    now[0] = 5.0
    assert f(1) is not a


def test_ttl_infinite_clock_and_ttl_expire_at_once():
    """An infinite clock and ttl of opposite signs give no expiry time (nan): the result is
    expired at once (the debug checker rejects nan expiry times, which break the order)."""
    now = [-math.inf]
    calls = []

    @aiofast.cached(ttl=math.inf, timer=lambda: now[0])
    def f(x):
        calls.append(x)
        return [x]

    a = f(1)
    assert f(1) is not a and calls == [1, 1]
    now[0] = 0.0
    b = f(2)
    assert f(2) is b and calls == [1, 1, 2]
    assert f.cache_info().currsize == 1


def test_alru_jitter_within_bounds():
    async def main():
        @aiofast.alru_cache(ttl=10, jitter=5, maxsize=None)
        async def f(x):
            return x

        for i in range(50):
            await f(i)
        await asyncio.sleep(9.99)
        assert f.cache_info().currsize == 50
        await asyncio.sleep(5.02)
        assert f.cache_info().currsize == 0

    run_virtual(main)


# ------------------------------------------------------------------ plain def and threads


def test_sync_function_single_flight_across_threads():
    started, release = threading.Event(), threading.Event()
    calls = []

    @aiofast.cached
    def f(x):
        calls.append(x)
        started.set()
        assert release.wait(10)
        return [x]

    results = []

    def call():
        results.append(f(1))

    first = threading.Thread(target=call)
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=call) for _ in range(3)]
    for t in others:
        t.start()
    while f.cache_info().hits < 3:  # they found the computation and wait for it
        time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join()
    assert calls == [1] and len(results) == 4
    assert all(r is results[0] for r in results)
    assert f(1) is results[0]


def test_sync_exception_shared_and_interrupt_retried():
    started, release = threading.Event(), threading.Event()
    mode = ["fail"]
    calls = []

    @aiofast.cached
    def f(x):
        m = mode[0]
        calls.append(m)
        started.set()
        assert release.wait(10)
        if m == "fail":
            raise ValueError("shared")
        if m == "interrupt":
            raise KeyboardInterrupt
        return x

    outcomes = []

    def call():
        try:
            outcomes.append(f(1))
        except BaseException as e:  # noqa: B036 - the test records what each thread got
            outcomes.append(e)

    for m in ("fail", "interrupt"):
        outcomes.clear()
        started.clear()
        release.clear()
        mode[0] = m
        h0 = f.cache_info().hits
        first = threading.Thread(target=call)
        first.start()
        assert started.wait(10)
        other = threading.Thread(target=call)
        other.start()
        while f.cache_info().hits < h0 + 1:
            time.sleep(0.001)
        if m == "interrupt":
            mode[0] = "ok"  # the waiting thread computes again, successfully
        release.set()
        first.join()
        other.join()
        if m == "fail":
            assert len(outcomes) == 2 and outcomes[0] is outcomes[1]
            assert isinstance(outcomes[0], ValueError)
        else:
            assert sorted(map(type, outcomes), key=str) == sorted([KeyboardInterrupt, int],
                                                                  key=str)
    assert calls == ["fail", "interrupt", "ok"]


def test_sync_recursion_same_key_does_not_deadlock():
    depth = []

    @aiofast.cached
    def f(x):
        depth.append(x)
        if len(depth) == 1:
            return f(x) + 1  # the same key, from the computing thread
        return 10

    assert f(1) == 11 and f(1) == 11 and depth == [1, 1]


def test_sync_hits_and_threads_counters_exact():
    @aiofast.cached(maxsize=16)
    def f(x):
        return x

    n, per = 4, 2000
    in_threads(lambda s=s: [f((s * 7 + i) % 40) for i in range(per)] for s in range(n))
    info = f.cache_info()
    assert info.hits + info.misses == n * per and info.currsize <= 16


# ------------------------------------------------------------------ hostile keys, values, loops


@pytest.mark.asyncio
async def test_key_eq_clearing_the_cache():
    class K:
        armed = False

        def __hash__(self):
            return 1

        def __eq__(self, other):
            if K.armed:
                K.armed = False
                f.cache_clear()
            return self is other

    @aiofast.cached
    async def f(k):
        return id(k)

    k1, k2 = K(), K()
    await f(k1)
    K.armed = True
    assert await f(k2) == id(k2)
    assert f.cache_info().currsize == 1


@pytest.mark.asyncio
async def test_result_del_touching_the_memo():
    class R:
        def __del__(self):
            f.cache_clear()
            f.cache_info()

    @aiofast.cached(maxsize=1)
    async def f(x):
        return R()

    for i in range(20):
        await f(i)
    f.cache_clear()
    assert f.cache_info().currsize == 0


@pytest.mark.asyncio
async def test_hash_raising():
    class H:
        def __hash__(self):
            raise ZeroDivisionError

    @aiofast.cached
    async def f(x):
        return x

    with pytest.raises(ZeroDivisionError):
        f(H())
    with pytest.raises(ZeroDivisionError):
        f.cache_contains(H())


def test_results_survive_a_loop_change_and_stale_flights_are_replaced():
    calls = []

    @aiofast.cached
    async def f(x):
        calls.append(x)
        await asyncio.sleep(0.001 if x == "slow" else 0)
        return x

    assert asyncio.run(f(1)) == 1
    assert asyncio.run(f(1)) == 1 and calls == [1]

    loop = asyncio.new_event_loop()
    task = loop.create_task(f("slow"))
    loop.run_until_complete(asyncio.sleep(0))  # the computation is in flight on this loop
    assert asyncio.run(f("slow")) == "slow"  # another loop: its own computation
    assert calls == [1, "slow", "slow"]
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()


@pytest.mark.asyncio
async def test_not_awaited_call_does_nothing():
    calls, f = recording(aiofast.cached)

    aw = f(1)
    aw.close()
    del aw
    await spin()
    assert calls == [] and f.cache_info().currsize == 0


@pytest.mark.asyncio
async def test_close():
    gate, _, f = gated(aiofast.cached)
    t = await started(f(1))
    await f.cache_close()
    await spin()
    assert t.done()
    with pytest.raises(asyncio.CancelledError):
        t.result()
    with pytest.raises(RuntimeError, match="closed"):
        await f(2)
    assert f.cache_parameters()["closed"] is True


# ------------------------------------------------------------------ alru_cache vs async-lru


@pytest.mark.asyncio
async def test_alru_basic(alru):
    calls, f = recording(alru, lambda x: x * 2)

    @alru(maxsize=2, typed=True)
    async def g(x):
        calls.append(("g", x))
        return x

    assert [await f(1), await f(1), await f(2)] == [2, 2, 4]
    assert f.cache_info() == functools._CacheInfo(1, 2, 128, 2)
    assert f.cache_parameters() == {"maxsize": 128, "typed": False, "tasks": 0, "closed": False}
    assert f.cache_contains(1) and not f.cache_contains(3)
    assert f.cache_invalidate(1) is True and f.cache_invalidate(1) is False
    for x in (1, 1.0, 2, 3, 1):
        await g(x)
    assert g.cache_info() == functools._CacheInfo(0, 5, 2, 2)
    f.cache_clear()
    assert f.cache_info() == functools._CacheInfo(0, 0, 128, 0)
    assert asyncio_iscoroutinefunction(f) and f.__name__ == "f"


@pytest.mark.asyncio
async def test_alru_concurrent_and_failures(alru):
    def positive(x):
        if x < 0:
            raise KeyError(x)
        return x

    gate, calls, f = gated(alru, positive)

    tasks = await all_started(f(x) for x in (1, 1, -1, -1))
    gate.set()
    res = await asyncio.gather(*tasks, return_exceptions=True)
    assert res[:2] == [1, 1] and isinstance(res[2], KeyError) and res[2] is res[3]
    assert calls == [1, -1]
    assert f.cache_info().hits == 2 and f.cache_info().currsize == 1
    with pytest.raises(KeyError):
        await f(-1)
    assert calls == [1, -1, -1]


@pytest.mark.asyncio
async def test_alru_cancel_rules(alru):
    gate = asyncio.Event()
    seen = []

    @alru
    async def f(x):
        try:
            await gate.wait()
        except asyncio.CancelledError:
            seen.append(x)
            raise
        return x

    a1, a2 = asyncio.create_task(f(1)), asyncio.create_task(f(1))
    await spin()
    a1.cancel()
    await spin()
    assert seen == [] and f.cache_contains(1)
    a2.cancel()
    await spin()
    assert seen == [1] and not f.cache_contains(1)


@pytest.mark.asyncio
async def test_alru_methods(alru):
    class A:
        @alru
        async def m(self, x):
            return (id(self), x)

    a = A()
    assert await a.m(1) == (id(a), 1) and await a.m(1) == (id(a), 1)
    assert a.m.cache_info().hits == 1 and a.m.cache_contains(1)
    assert a.m.cache_invalidate(1) and not a.m.cache_contains(1)


@pytest.mark.asyncio
async def test_alru_close(alru):
    gate, _, f = gated(alru)
    t = await started(f(1))
    await f.cache_close()
    await spin()
    assert t.done() and t.cancelled()
    with pytest.raises(RuntimeError, match="alru_cache is closed"):
        await f(1)


def test_alru_ttl(alru):
    async def main():
        loop = asyncio.get_running_loop()

        @alru(ttl=3)
        async def f(x):
            await asyncio.sleep(1)
            return loop.time()

        t1 = await f(1)
        await asyncio.sleep(2.5)
        assert await f(1) == t1
        await asyncio.sleep(1)
        assert await f(1) > t1

    run_virtual(main)


def test_alru_validation(alru):
    with pytest.raises(ValueError, match="jitter requires ttl"):
        alru(jitter=1)
    with pytest.raises(ValueError, match="typed is ignored"):
        alru(typed=True, key=lambda x: x)
    with pytest.raises(RuntimeError, match="Coroutine function is required"):
        alru(lambda x: x)
    with pytest.raises(NotImplementedError):
        alru("nope")

    async def coro(a, b):
        return a + b

    part = alru(functools.partial(coro, 1))
    assert asyncio.run(part(2)) == 3


# ------------------------------------------------------------------ leaks
# (tests/test_leaks.py: cache_family / memo_family in tests/leakcheck.py, on both loops)


# ------------------------------------------------------------------ hypothesis: single flight


class Value:
    """A distinct result object (callers must get this very object)."""

    def __init__(self, n):
        self.n = n

    def __repr__(self):
        return f"Value({self.n})"


class BadHash:
    def __hash__(self):
        raise ZeroDivisionError("hash")


class BadEq:
    """Collides with the int key h; its __eq__ raises."""

    def __init__(self, h):
        self.h = h

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        raise ArithmeticError("eq")


class MutatingEq:
    """Collides with the int key h; its __eq__ runs an action on the memo once, after `skip`
    harmless comparisons."""

    def __init__(self, h, action=None, skip=0):
        self.h = h
        self.action = action
        self.skip = skip

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        if self.skip:
            self.skip -= 1
        else:
            action, self.action = self.action, None
            if action is not None:
                action()
        return self is other


class Comp:
    """A computation the model expects: the function's n-th run."""

    def __init__(self, n, key):
        self.n, self.key = n, key
        self.state = "running"  # running, done, failed, cancelled
        self.callers = []       # callers still waiting for it
        self.attached = True    # its entry is in the table


class Caller:
    def __init__(self, n, key, task):
        self.n, self.key, self.task = n, key, task
        self.outcome = None     # None (waiting), ("value", v), ("exc", e), ("cancelled",)
        self.comp = None


class MemoModel:
    """A single-flight memoizer with cached()'s documented semantics, in plain Python: one
    computation per key at a time, shared by every caller that finds it in flight; results
    (never exceptions or cancellations) stored with an expiry ttl after the computation ended;
    a caller that is cancelled leaves the others waiting, and the last one to leave cancels the
    computation and forgets it; eviction of the least recently used entry (results and
    computations in flight alike: an evicted, invalidated or cleared computation goes on for its
    callers, unrecorded); expired results are dropped on every miss and by cache_info()."""

    def __init__(self, maxsize, ttl, jitter=None):
        self.maxsize, self.ttl = maxsize, ttl
        # alru_cache's jitter: each result's ttl grows by random.random() * jitter, drawn
        # when its computation ends; the model replays the same seeded draws
        self.jitter = jitter
        self.rand = random.Random(JITTER_SEED) if jitter else None
        self.entries = {}  # key -> ["result", value, expires] or ["flight", Comp]
        self.lru = []      # keys, least recently used first
        self.hits = self.misses = 0
        self.comps = []

    def touch(self, k):
        self.lru.remove(k)
        self.lru.append(k)

    def remove(self, k):
        e = self.entries.pop(k)
        self.lru.remove(k)
        if e[0] == "flight":
            e[1].attached = False

    def expire(self, now):
        if self.ttl is not None:
            for k in [k for k, e in self.entries.items() if e[0] == "result" and not now < e[2]]:
                self.remove(k)

    def fresh(self, k, now):
        e = self.entries.get(k)
        return e is not None and (e[0] == "flight" or self.ttl is None or now < e[2])

    def call_now(self, caller, now):
        """The call itself: a fresh result is a hit at once."""
        e = self.entries.get(caller.key)
        if e is not None and e[0] == "result" and (self.ttl is None or now < e[2]):
            self.hits += 1
            self.touch(caller.key)
            caller.outcome = ("value", e[1])
            return True
        return False

    def call_start(self, caller, now):
        """The first step of the awaitable: a result, joining the flight, or a new one."""
        k = caller.key
        self.expire(now)
        e = self.entries.get(k)
        if e is not None:
            self.hits += 1
            self.touch(k)
            if e[0] == "result":
                caller.outcome = ("value", e[1])
            else:
                caller.comp = e[1]
                e[1].callers.append(caller)
            return
        self.misses += 1
        while self.maxsize is not None and len(self.entries) >= self.maxsize:
            self.remove(self.lru[0])
        comp = Comp(len(self.comps), k)
        self.comps.append(comp)
        self.entries[k] = ["flight", comp]
        self.lru.append(k)
        caller.comp = comp
        comp.callers.append(caller)

    def finish(self, comp, outcome, now):
        comp.state = {"value": "done", "exc": "failed", "cancelled": "cancelled"}[outcome[0]]
        ttl = self.ttl or 0
        if outcome[0] == "value" and self.rand is not None:
            ttl += self.rand.random() * self.jitter  # drawn even for a detached computation
        if comp.attached:
            if outcome[0] == "value":
                self.entries[comp.key] = ["result", outcome[1], now + ttl]
                comp.attached = False  # the entry keeps its place in the LRU order
            else:
                self.remove(comp.key)
        for c in comp.callers:
            c.outcome = outcome
        comp.callers = []

    def cancel_caller(self, caller):
        caller.outcome = ("cancelled",)
        comp = caller.comp
        comp.callers.remove(caller)
        if not comp.callers and comp.state == "running":
            self.finish(comp, ("cancelled",), None)

    def clear(self):
        for k in list(self.entries):
            self.remove(k)
        self.hits = self.misses = 0


memo_keys = st.integers(0, 3)
JITTER_SEED = 20261123


class MemoMachine(RuleBasedStateMachine):
    """cached() on a virtual clock against MemoModel: callers for random keys, computations
    that the machine completes, fails or cancels, callers cancelled at random (the one that
    started the computation included), time steps (ttl expiry), invalidation, clearing, and
    keys whose __hash__/__eq__ raise or whose __eq__ clears or invalidates mid-lookup. After
    every step: every computation the function ran is one the model started (so nothing ran
    twice), every caller has exactly the outcome the model gives (none stranded), and the
    memo's contents and counters are the model's."""

    new_loop = VirtualClockLoop

    def __init__(self):
        super().__init__()
        self.loop = self.new_loop()
        self.ready = self.loop._ready if isinstance(self.loop, VirtualClockLoop) else \
            self.loop._vready  # the loop's queue of ready callbacks
        self.model = None
        self.closed = False
        self.callers = []
        self.runs = []   # (key, future) per run of the function, in order
        self.keys = set()

    @initialize(maxsize=st.sampled_from([None, 1, 2, 3]), ttl=st.sampled_from([None, 1, 2.5]),
                identity_key=st.booleans(), jitter=st.booleans())
    def create(self, maxsize, ttl, identity_key, jitter):
        async def compute(key):
            fut = asyncio.get_running_loop().create_future()
            self.runs.append((key, fut, asyncio.current_task()))
            return await fut

        kw = {"key": (lambda key: key)} if identity_key else {}
        if jitter and ttl is not None:
            # alru_cache with jitter: per-result expiry times, in the table's expiry heap
            random.seed(JITTER_SEED)
            self.f = aiofast.alru_cache(maxsize=maxsize, ttl=ttl, jitter=1.5, **kw)(compute)
            self.model = MemoModel(maxsize, ttl, 1.5)
        else:
            self.f = aiofast.cached(maxsize=maxsize, ttl=ttl, **kw)(compute)
            self.model = MemoModel(maxsize, ttl)
        self.identity_key = identity_key
        self.closed = False

    # ---- driving the loop

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def settle(self):
        """Run every ready callback (time does not move: nothing here sleeps)."""
        async def idle():
            for _ in range(200):
                await asyncio.sleep(0)
                if not self.ready:
                    return
            raise AssertionError("the loop never went idle")

        self.run(idle())

    def now(self):
        return self.loop.time()

    def _call(self, *keys, cancel=()):
        """Call for each key (in one go: the calls are made before any of them runs), then let
        the loop run: each awaitable's first step looks its key up again, in call order. The
        callers flagged in cancel are cancelled before their first step: their call happened
        (a hit at call time counts), their lookup never does."""
        flags = [i < len(cancel) and cancel[i] for i in range(len(keys))]
        if self.closed:
            async def refused():
                for key in keys:
                    with pytest.raises(RuntimeError, match="cached is closed|alru_cache is"):
                        self.f(key)

            self.run(refused())
            return []

        async def call():
            tasks = [asyncio.ensure_future(self.f(key)) for key in keys]
            for task, flag in zip(tasks, flags):
                if flag:
                    task.cancel()
            return tasks

        tasks = self.run(call())  # (the tasks' first steps run before this returns)
        callers = []
        for key, task, flag in zip(keys, tasks, flags):
            caller = Caller(len(self.callers), key, task)
            self.callers.append(caller)
            self.keys.add(key)
            hit = self.model.call_now(caller, self.now())
            if flag:
                caller.outcome = ("cancelled",)
            elif not hit:
                callers.append(caller)
        for caller in callers:
            self.model.call_start(caller, self.now())  # the task's first step, in settle()
        self.settle()
        return callers

    def pending_comps(self):
        return [c for c in self.model.comps if c.state == "running"]

    @precondition(lambda self: not self.closed)
    @rule(really=st.integers(0, 3))
    def close(self, really):
        """cache_close() (now and then: it ends most of the story): calls are refused from now
        on; the computations in the table are cancelled (their callers with them); detached ones
        go on for their callers."""
        if really:
            return

        async def close():
            return asyncio.ensure_future(self.f.cache_close())

        closing = self.run(close())
        self.closed = True
        for k, e in list(self.model.entries.items()):
            if e[0] == "flight":
                self.model.finish(e[1], ("cancelled",), None)
        self.settle()
        assert closing.done() and not closing.cancelled()
        assert self.f.cache_parameters()["closed"] is True

    def waiting_callers(self):
        return [c for c in self.callers if c.outcome is None]

    # ---- rules

    @rule(keys=st.lists(memo_keys, min_size=1, max_size=4),
          cancel=st.lists(st.booleans(), max_size=4))
    def call(self, keys, cancel):
        self._call(*keys, cancel=cancel)

    @precondition(lambda self: self.pending_comps())
    @rule(data=st.data(), fail=st.booleans(), cancel=st.lists(st.booleans(), max_size=4))
    def finish(self, data, fail, cancel):
        """The computation returns or raises; callers flagged in cancel are cancelled at that
        moment, before anything ran (the computation, first in the loop's queue, ends first:
        its outcome is kept, and only the cancelled callers miss it)."""
        comp = data.draw(st.sampled_from(self.pending_comps()))
        fut = self.runs[comp.n][1]
        if fail:
            outcome = ("exc", ValueError(f"computation {comp.n} failed"))
            fut.set_exception(outcome[1])
        else:
            outcome = ("value", Value(comp.n))
            fut.set_result(outcome[1])
        leaving = [c for c, flag in zip(list(comp.callers), cancel) if flag]
        for c in leaving:
            c.task.cancel()
        self.model.finish(comp, outcome, self.now())
        for c in leaving:
            c.outcome = ("cancelled",)
        self.settle()

    @precondition(lambda self: self.pending_comps())
    @rule(data=st.data())
    def cancel_computation(self, data):
        """Cancelled from outside: every caller waiting for it is cancelled."""
        comp = data.draw(st.sampled_from(self.pending_comps()))
        self.runs[comp.n][2].cancel()
        self.model.finish(comp, ("cancelled",), self.now())
        self.settle()

    @precondition(lambda self: self.waiting_callers())
    @rule(data=st.data())
    def cancel_caller(self, data):
        """Any waiting caller, the one whose call started the computation included: the others
        keep waiting; the last one to leave cancels the computation."""
        caller = data.draw(st.sampled_from(self.waiting_callers()))
        caller.task.cancel()
        self.model.cancel_caller(caller)
        self.settle()

    @rule(dt=st.sampled_from([0.5, 1, 2, 3]))
    def advance(self, dt):
        self.loop.advance(dt)

    @rule(k=memo_keys, everything=st.integers(0, 4))
    def forget(self, k, everything):
        """cache_invalidate(k) (True if an entry, even an expired one, was held), or now and
        then cache_clear(). A computation in flight goes on for its callers, unrecorded."""
        if everything == 0:
            self.f.cache_clear()
            self.model.clear()
            return
        had = k in self.model.entries
        assert self.f.cache_invalidate(k) is had
        if had:
            self.model.remove(k)

    @rule()
    def hostile_hash(self):
        async def call():
            with pytest.raises(ZeroDivisionError):
                self.f(BadHash())
            with pytest.raises(ZeroDivisionError):
                self.f.cache_contains(BadHash())

        self.run(call())

    def fresh_int_keys(self):
        return sorted(k for k in self.model.entries if type(k) is int
                      and self.model.fresh(k, self.now()))

    @precondition(lambda self: self.identity_key and not self.closed and self.fresh_int_keys())
    @rule(data=st.data())
    def hostile_eq(self, data):
        """A key colliding with a resident key whose __eq__ raises: the call, cache_contains
        and cache_invalidate raise it and change nothing."""
        k = data.draw(st.sampled_from(self.fresh_int_keys()))

        async def call():
            for op in (self.f, self.f.cache_contains, self.f.cache_invalidate):
                with pytest.raises(ArithmeticError):
                    op(BadEq(k))

        self.run(call())

    @precondition(lambda self: self.identity_key and not self.closed and self.fresh_int_keys())
    @rule(data=st.data(), action=st.sampled_from(["clear", "invalidate"]),
          op=st.sampled_from(["call", "call late", "contains", "invalidate"]))
    def mutating_eq(self, data, action, op):
        """A key colliding with a resident key whose __eq__ clears the memo or invalidates the
        resident mid-lookup (for a call: the lookup at the call, or the one at its first step):
        the lookup starts again, and finds nothing (a call is a miss for the new key)."""
        k = data.draw(st.sampled_from(self.fresh_int_keys()))
        if action == "clear":
            act = self.f.cache_clear
        else:
            def act():
                assert self.f.cache_invalidate(k)

        probe = MutatingEq(k, act, skip=1 if op == "call late" else 0)
        if action == "clear":
            self.model.clear()
        else:
            self.model.remove(k)
        if op.startswith("call"):
            (caller,) = self._call(probe)
            assert caller.outcome is None and caller.comp is not None
        else:
            async def lookup():
                if op == "contains":
                    assert self.f.cache_contains(probe) is False
                else:
                    assert self.f.cache_invalidate(probe) is False

            self.run(lookup())
        assert probe.action is None  # it ran

    # ---- invariants

    @invariant()
    def agree(self):
        if self.model is None:
            return
        m = self.model
        # every run of the function is a computation the model started: no duplicates
        assert [key for key, _, _ in self.runs] == [c.key for c in m.comps]
        # every caller has the model's outcome; the waiting ones wait (none stranded)
        for c in self.callers:
            t = c.task
            if c.outcome is None:
                assert not t.done(), (c.n, c.key)
            elif c.outcome[0] == "value":
                assert t.done() and not t.cancelled() and t.result() is c.outcome[1], c.n
            elif c.outcome[0] == "exc":
                assert t.done() and not t.cancelled() and t.exception() is c.outcome[1], c.n
            else:
                assert t.cancelled(), c.n
        for comp in m.comps:
            task = self.runs[comp.n][2]
            assert task.done() == (comp.state != "running"), comp.n
            assert task.cancelled() == (comp.state == "cancelled"), comp.n

        async def contents():
            now = self.now()
            for k in self.keys:
                assert self.f.cache_contains(k) == m.fresh(k, now), k
            assert (self.f.hits, self.f.misses) == (m.hits, m.misses)
            info = self.f.cache_info()  # expires
            m.expire(now)
            assert info.currsize == len(m.entries)
            assert info.hits == m.hits and info.misses == m.misses
            assert self.f.cache_parameters()["tasks"] == sum(
                e[0] == "flight" for e in m.entries.values())

        self.run(contents())

    def teardown(self):
        for c in self.callers:
            c.task.cancel()
        for _, _, task in self.runs:
            task.cancel()
        self.settle()
        self.loop.close()


class MemoMachineUV(MemoMachine):
    new_loop = VirtualUVLoop


MemoMachine.TestCase.settings = settings(deadline=None, suppress_health_check=list(HealthCheck))
MemoMachineUV.TestCase.settings = MemoMachine.TestCase.settings
test_memo_state_machine = MemoMachine.TestCase
test_memo_state_machine_uvloop = MemoMachineUV.TestCase


# ------------------------------------------------------------------ async-lru 2.x's finer points


ALRU_WARNING = {"aiofast": aiofast.AlruCacheLoopResetWarning,
                "async_lru": async_lru.AlruCacheLoopResetWarning}


@pytest.fixture(params=sorted(ALRU))
def alru_and_warning(request):
    return ALRU[request.param], ALRU_WARNING[request.param]


@pytest.mark.asyncio
async def test_bound_method_is_weakly_referenceable(alru):
    import weakref

    class A:
        @alru
        async def m(self, x):
            return x

    method = A().m
    ref = weakref.ref(method)
    assert ref() is method and await method(3) == 3
    del method
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_new_loop_warns_once_and_clears(alru_and_warning, new_loop):
    alru, Warning = alru_and_warning
    calls, f = recording(alru(maxsize=10), lambda x: x * 2)

    async def twice_in_the_loop():
        return [await f(1), await f(1)]  # a miss, then a hit

    def run(main, warns):
        loop = new_loop()
        try:
            if warns:
                with pytest.warns(Warning, match="alru_cache detected event loop change"):
                    return loop.run_until_complete(main())
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                return loop.run_until_complete(main())
        finally:
            loop.close()

    assert run(twice_in_the_loop, warns=False) == [2, 2]
    assert f.cache_info().hits == 1 and f.cache_info().misses == 1
    assert run(twice_in_the_loop, warns=True) == [2, 2]  # cleared: computed again
    assert calls == [1, 1]
    assert f.cache_info().hits == 1 and f.cache_info().misses == 1  # counts restarted
    # a coroutine made outside any loop, run in a third one: cleared again, no second warning
    loop = new_loop()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert loop.run_until_complete(f(1)) == 2
    finally:
        loop.close()
    assert calls == [1, 1, 1] and f.cache_info().misses == 1 and f.cache_info().hits == 0
