"""aiofast.CircuitBreaker, CircuitState, CircuitOpenError and the `circuit` drop-in.

Every timing rule runs on a virtual clock (clock=), never on real sleeps. Async tests run on
both loops (conftest). The state machine is checked against a pure-Python model
(tests/breaker_model.py) with hypothesis; the peers' known bugs have regression tests.
"""
import asyncio
import concurrent.futures
import contextvars
import functools
import gc
import inspect
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import types
import weakref

import circuitbreaker
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as hs
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import aiofast
from aiofast import CircuitBreaker, CircuitOpenError, CircuitState, circuit

sys.path.insert(0, os.path.dirname(__file__))
import breaker_model  # noqa: E402
from helpers import ORACLES, Clock  # noqa: E402
from pycompat import asyncio_iscoroutinefunction  # noqa: E402
from virtual_time import SteppedVirtualUVLoop, VirtualClockLoop, settle_loop  # noqa: E402


@pytest.fixture
def clock():
    return Clock(1000.0)


class Boom(Exception):
    pass


def fail_n(breaker, n, exc=Boom):
    @breaker
    def f():
        raise exc()

    for _ in range(n):
        with pytest.raises(exc):
            f()


# ------------------------------------------------------------------ construction


def test_defaults_and_config():
    b = CircuitBreaker()
    assert b.state is CircuitState.CLOSED
    assert (b.failure_threshold, b.recovery_timeout, b.success_threshold,
            b.half_open_max_calls) == (5, 30.0, 1, 1)
    assert b.expected_exception is Exception and b.exclude == ()
    assert (b.failure_rate, b.window, b.window_time, b.min_calls, b.slow_call_duration,
            b.slow_call_rate, b.fallback, b.clock, b.name) == (None,) * 9
    assert (b.failure_count, b.success_count, b.remaining) == (0, 0, 0.0)
    assert b.listeners == ()
    assert b.stats() == dict(state=CircuitState.CLOSED, failure_count=0, success_count=0,
                             calls=0, successes=0, failures=0, ignored=0, slow_calls=0,
                             rejections=0, state_changes=0)


def test_rate_mode_defaults():
    b = CircuitBreaker(failure_rate=0.5)
    assert (b.window, b.min_calls, b.window_time) == (100, 100, None)
    b = CircuitBreaker(failure_rate=0.5, window=7)
    assert (b.window, b.min_calls) == (7, 7)
    b = CircuitBreaker(failure_rate=0.5, window_time=60)
    assert (b.window, b.min_calls, b.window_time) == (None, 10, 60.0)
    b = CircuitBreaker(failure_rate=1, slow_call_duration=2)
    assert (b.failure_rate, b.slow_call_duration, b.slow_call_rate) == (1.0, 2.0, 1.0)


def test_circuit_state_enum():
    assert [m.value for m in CircuitState] == ["closed", "open", "half_open"]
    assert CircuitState.OPEN == "open" and CircuitState("half_open") is CircuitState.HALF_OPEN
    assert CircuitState.__module__ == "aiofast" and isinstance(CircuitState.CLOSED, str)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(failure_threshold=0), ValueError, r"failure_threshold must be >= 1, got 0"),
    (dict(failure_threshold=-3), ValueError, r"failure_threshold must be >= 1"),
    (dict(failure_threshold=2.0), TypeError, r"failure_threshold must be an int, got float"),
    (dict(failure_threshold=True), TypeError, r"must be an int, got bool"),
    (dict(failure_threshold=10**40), ValueError, r"failure_threshold is too large"),
    (dict(recovery_timeout=-1), ValueError, r"recovery_timeout must be >= 0 seconds, got -1"),
    (dict(recovery_timeout=math.nan), ValueError, r"recovery_timeout must not be nan"),
    (dict(recovery_timeout="30"), TypeError, r"recovery_timeout must be a number, got str"),
    (dict(success_threshold=0), ValueError, r"success_threshold must be >= 1"),
    (dict(half_open_max_calls=0), ValueError, r"half_open_max_calls must be >= 1"),
    (dict(half_open_max_calls=None), TypeError, r"half_open_max_calls must be an int"),
    (dict(expected_exception=int), TypeError, r"expected_exception must be an exception type"),
    (dict(expected_exception="ValueError"), TypeError, r"expected_exception must be"),
    (dict(expected_exception=(ValueError, 3)), TypeError, r"must hold exception types, got 3"),
    (dict(expected_exception=()), ValueError, r"would never count a failure"),
    (dict(exclude=[KeyError]), TypeError, r"exclude must be an exception type"),
    (dict(failure_rate=0), ValueError, r"failure_rate must be in \(0, 1\], got 0"),
    (dict(failure_rate=1.5), ValueError, r"failure_rate must be in \(0, 1\], got 1.5"),
    (dict(failure_rate=math.nan), ValueError, r"failure_rate must not be nan"),
    (dict(failure_rate=-math.inf), ValueError, r"failure_rate must be in \(0, 1\]"),
    (dict(failure_rate=0.5, window=0), ValueError, r"window must be >= 1, got 0"),
    (dict(failure_rate=0.5, window_time=0), ValueError, r"window_time must be a finite"),
    (dict(failure_rate=0.5, window_time=math.inf), ValueError, r"window_time must be a finite"),
    (dict(failure_rate=0.5, window=5, window_time=5), ValueError, r"not both"),
    (dict(failure_rate=0.5, failure_threshold=3), ValueError, r"not both"),
    (dict(window=10), ValueError, r"window needs rate mode: give failure_rate too"),
    (dict(window_time=10), ValueError, r"window_time needs rate mode"),
    (dict(min_calls=3), ValueError, r"min_calls needs rate mode"),
    (dict(failure_rate=0.5, window=5, min_calls=6), ValueError, r"min_calls \(6\) must be <= "
                                                               r"window \(5\)"),
    (dict(failure_rate=0.5, min_calls=0), ValueError, r"min_calls must be >= 1"),
    (dict(slow_call_duration=0), ValueError, r"slow_call_duration must be a finite number"),
    (dict(slow_call_duration=-1.0), ValueError, r"slow_call_duration must be a finite"),
    (dict(slow_call_duration=math.inf), ValueError, r"slow_call_duration must be a finite"),
    (dict(failure_rate=0.5, slow_call_rate=0.5), ValueError, r"slow_call_rate needs "
                                                             r"slow_call_duration"),
    (dict(slow_call_duration=1, slow_call_rate=0.5), ValueError, r"slow_call_rate needs rate"),
    (dict(failure_rate=0.5, slow_call_duration=1, slow_call_rate=2), ValueError,
     r"slow_call_rate must be in \(0, 1\]"),
    (dict(fallback=3), TypeError, r"fallback must be callable, got int"),
    (dict(name=3), TypeError, r"name must be a str or None, got int"),
    (dict(clock=1.0), TypeError, r"clock must be a callable"),
    (dict(bogus=1), TypeError, r"bogus"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CircuitBreaker(**kwargs)


def test_bad_positional_arguments():
    with pytest.raises(TypeError, match="at most 2"):
        CircuitBreaker(1, 2, 3)
    with pytest.raises(TypeError):
        CircuitBreaker(1, 2, success_threshold=1, failure_threshold=3)


def test_recovery_timeout_inf_stays_open(clock):
    b = CircuitBreaker(1, math.inf, clock=clock)
    fail_n(b, 1)
    clock.advance(1e300)
    assert b.state is CircuitState.OPEN and b.remaining == math.inf


def test_subclassable_and_weakref(clock):
    import weakref

    class Sub(CircuitBreaker):
        def __init__(self, *args, **kwargs):
            self.extra = "x"

    b = Sub(1, 10, clock=clock, name="s")
    assert b.extra == "x" and b.failure_threshold == 1 and b.name == "s"
    fail_n(b, 1)
    assert b.state is CircuitState.OPEN
    b = CircuitBreaker()
    r = weakref.ref(b)
    del b
    gc.collect()
    assert r() is None


# ------------------------------------------------------------------ default (consecutive) mode


def test_consecutive_failures_open_and_reject(clock):
    b = CircuitBreaker(3, 10, clock=clock, name="db")
    events = []
    b.add_listener(lambda br, old, new: events.append((br, old, new)))

    @b
    def call(ok):
        if not ok:
            raise Boom("down")
        return "up"

    for outcome in (False, False, True, False, False):
        if outcome:
            assert call(True) == "up"
        else:
            with pytest.raises(Boom):
                call(False)
    assert b.state is CircuitState.CLOSED and b.failure_count == 2 and b.success_count == 0
    with pytest.raises(Boom):
        call(False)
    assert b.state is CircuitState.OPEN and b.failure_count == 3
    assert events == [(b, CircuitState.CLOSED, CircuitState.OPEN)]
    clock.advance(4)
    with pytest.raises(CircuitOpenError) as ei:
        call(True)
    err = ei.value
    assert err.breaker is b and err.remaining == 6.0 and err.args == (b, 6.0)
    assert str(err) == "circuit breaker 'db' is open: 6.000 s remaining"
    assert b.remaining == 6.0
    assert b.stats()["rejections"] == 1 and b.stats()["calls"] == 6


def test_success_resets_consecutive_count(clock):
    b = CircuitBreaker(2, clock=clock)

    @b
    def f(ok):
        if not ok:
            raise Boom
        return ok

    for _ in range(10):
        with pytest.raises(Boom):
            f(False)
        assert f(True) is True
    assert b.state == "closed" and b.success_count == 1 and b.failure_count == 0


def test_half_open_probe_success_closes(clock):
    b = CircuitBreaker(1, 5, clock=clock)
    fail_n(b, 1)
    clock.advance(4.999)
    assert b.state is CircuitState.OPEN
    clock.advance(0.001)
    assert b.state is CircuitState.HALF_OPEN and b.remaining == 0.0
    assert b.failure_count == 0
    with b:
        pass
    assert b.state is CircuitState.CLOSED


def test_half_open_probe_failure_reopens(clock):
    b = CircuitBreaker(2, 5, clock=clock)
    fail_n(b, 2)
    clock.advance(5)
    fail_n(b, 1)
    assert b.state is CircuitState.OPEN and b.remaining == 5.0 and b.failure_count == 1
    changes = b.stats()["state_changes"]
    assert changes == 3  # closed->open->half_open->open


def test_success_threshold(clock):
    b = CircuitBreaker(1, 1, success_threshold=3, clock=clock)
    fail_n(b, 1)
    clock.advance(1)
    for i in range(2):
        with b:
            pass
        assert b.state is CircuitState.HALF_OPEN and b.success_count == i + 1
    with b:
        pass
    assert b.state is CircuitState.CLOSED and b.success_count == 0


def test_forced_transitions(clock):
    b = CircuitBreaker(3, 10, clock=clock)
    events = []
    b.add_listener(lambda br, o, n: events.append((o.value, n.value)))
    b.open()
    assert b.state is CircuitState.OPEN and b.remaining == 10
    clock.advance(6)
    b.open()  # trips again: the timeout starts over
    assert b.remaining == 10
    b.half_open()
    assert b.state is CircuitState.HALF_OPEN
    b.half_open()
    b.close()
    fail_n(b, 2)
    assert b.failure_count == 2
    b.close()  # already closed: a reset
    assert b.failure_count == 0
    assert events == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


# ------------------------------------------------------------------ rate mode


def test_count_window_failure_rate(clock):
    b = CircuitBreaker(failure_rate=0.5, window=4, clock=clock)

    @b
    def f(ok):
        if not ok:
            raise Boom
        return ok

    def run(seq):
        for ok in seq:
            if ok:
                f(True)
            else:
                with pytest.raises(Boom):
                    f(False)

    run([False, False, False])  # 3 calls < min_calls=4: no verdict yet
    assert b.state is CircuitState.CLOSED and (b.failure_count, b.success_count) == (3, 0)
    run([True])  # 4 calls, 3 failures: 75% >= 50%
    assert b.state is CircuitState.OPEN and (b.failure_count, b.success_count) == (3, 1)
    clock.advance(30)
    run([True])  # probe succeeds; closing resets the window
    assert b.state is CircuitState.CLOSED and (b.failure_count, b.success_count) == (0, 0)
    run([True, True, False, True, False])  # window slides: T F T F -> 50%
    assert b.state is CircuitState.OPEN


def test_count_window_min_calls(clock):
    b = CircuitBreaker(failure_rate=1.0, window=10, min_calls=2, clock=clock)
    fail_n(b, 1)
    assert b.state is CircuitState.CLOSED
    fail_n(b, 1)
    assert b.state is CircuitState.OPEN


def test_time_window(clock):
    # 20 buckets of 0.5 s: an outcome leaves the window 9.5 to 10 s after it was recorded
    b = CircuitBreaker(failure_rate=0.5, window_time=10, min_calls=3, clock=clock)
    clock.now = 1000.0
    fail_n(b, 1)  # bucket [1000, 1000.5): leaves at 1010
    clock.advance(0.4)
    fail_n(b, 1)  # same bucket: leaves at 1010 too, 9.6 s after
    clock.advance(9.5)  # 1009.9
    assert (b.failure_count, b.success_count) == (2, 0)
    clock.advance(0.1)  # 1010.0
    assert b.failure_count == 0
    fail_n(b, 2)
    assert b.state is CircuitState.CLOSED  # only 2 calls in the window
    clock.advance(9.0)
    fail_n(b, 1)  # 3 failures in the window now
    assert b.state is CircuitState.OPEN and b.failure_count == 3


def test_slow_calls_open_in_rate_mode(clock):
    b = CircuitBreaker(failure_rate=1.0, window=2, slow_call_duration=1.0, slow_call_rate=0.5,
                       clock=clock)

    @b
    def work(dt):
        clock.advance(dt)
        return dt

    work(1.0)  # exactly the threshold is not slow
    assert b.stats()["slow_calls"] == 0
    work(1.5)
    assert b.stats()["slow_calls"] == 1 and b.state is CircuitState.OPEN
    clock.advance(30)
    work(2.0)  # a slow probe reopens it
    assert b.state is CircuitState.OPEN and b.stats()["slow_calls"] == 2


def test_slow_calls_counted_in_default_mode(clock):
    b = CircuitBreaker(1, slow_call_duration=0.5, clock=clock)

    @b
    def work(dt):
        clock.advance(dt)

    work(0.6)
    work(0.1)
    assert b.stats()["slow_calls"] == 1 and b.state is CircuitState.CLOSED


def test_slow_call_on_the_loop_clock():
    loop = VirtualClockLoop()
    try:
        b = CircuitBreaker(failure_rate=1.0, window=1, slow_call_duration=1.0, clock=loop.time)

        @b
        async def sleepy(dt):
            await asyncio.sleep(dt)
            return dt

        assert loop.run_until_complete(sleepy(0.5)) == 0.5
        assert b.state is CircuitState.CLOSED
        assert loop.run_until_complete(sleepy(2.0)) == 2.0
        assert b.state is CircuitState.OPEN and b.stats()["slow_calls"] == 1
    finally:
        loop.close()


# ------------------------------------------------------------------ what counts


def test_expected_exception_type_tuple_predicate():
    b = CircuitBreaker(1, expected_exception=(KeyError, OSError))
    fail_n(b, 1, exc=ValueError)  # not expected: a success (resilience4j, circuitbreaker)
    assert b.state is CircuitState.CLOSED and b.stats()["successes"] == 1
    fail_n(b, 1, exc=FileNotFoundError)
    assert b.state is CircuitState.OPEN

    b = CircuitBreaker(1, expected_exception=lambda e: getattr(e, "code", 0) >= 500)

    class HTTPError(Exception):
        def __init__(self, code):
            self.code = code

    @b
    def get(code):
        raise HTTPError(code)

    with pytest.raises(HTTPError):
        get(404)
    assert b.state is CircuitState.CLOSED
    with pytest.raises(HTTPError):
        get(503)
    assert b.state is CircuitState.OPEN


def test_exclude_is_neither(clock):
    b = CircuitBreaker(1, 1, exclude=(KeyError,), clock=clock)
    fail_n(b, 3, exc=KeyError)
    assert b.state is CircuitState.CLOSED
    assert b.stats()["ignored"] == 3 and b.stats()["successes"] == 0
    b = CircuitBreaker(1, 1, exclude=lambda e: "business" in str(e), clock=clock)

    @b
    def f(msg):
        raise Boom(msg)

    with pytest.raises(Boom):
        f("business rule")
    assert b.state is CircuitState.CLOSED
    with pytest.raises(Boom):
        f("outage")
    assert b.state is CircuitState.OPEN
    # an excluded exception on a half-open probe frees its slot, decides nothing
    clock.advance(1)
    with pytest.raises(Boom):
        f("business again")
    assert b.state is CircuitState.HALF_OPEN and "probes:0/1" in repr(b)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit,
                                 asyncio.CancelledError])
def test_base_exceptions_are_neither(exc, clock):
    b = CircuitBreaker(1, 1, expected_exception=BaseException, clock=clock)
    fail_n(b, 2, exc=exc)
    assert b.state is CircuitState.CLOSED
    assert b.stats()["ignored"] == 2 and b.stats()["failures"] == 0


def test_raising_predicate_is_logged_and_counts_as_failure(caplog):
    def pred(e):
        raise RuntimeError("bad predicate")

    b = CircuitBreaker(1, expected_exception=pred, name="p")
    with caplog.at_level(logging.ERROR, logger="aiofast.breaker"):
        fail_n(b, 1)  # the call's own exception still comes out
    assert b.state is CircuitState.OPEN
    assert "expected_exception predicate" in caplog.text and "bad predicate" in caplog.text

    b = CircuitBreaker(1, exclude=pred)
    with caplog.at_level(logging.ERROR, logger="aiofast.breaker"):
        fail_n(b, 1)  # a broken exclude excludes nothing
    assert b.state is CircuitState.OPEN


# ------------------------------------------------------------------ the decorator


def test_decorator_looks_like_the_function():
    b = CircuitBreaker()

    async def fetch(url: str, *, timeout: float = 1.0) -> bytes:
        """Fetch url."""

    fetch.custom = 7
    g = b(fetch)
    assert g.__name__ == "fetch" and g.__qualname__ == fetch.__qualname__
    assert g.__doc__ == "Fetch url." and g.__module__ == __name__
    assert g.__wrapped__ is fetch and g.custom == 7 and g.breaker is b
    assert g.__annotations__ == fetch.__annotations__
    assert inspect.signature(g) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(g) and asyncio_iscoroutinefunction(g)
    assert g.__code__ is fetch.__code__ and g.__kwdefaults__ == {"timeout": 1.0}
    assert b.name == fetch.__qualname__  # the first decorated function names the breaker
    assert "async function" in repr(g) and "fetch" in repr(g)

    def plain(x):
        return x

    h = b(plain)
    assert not inspect.iscoroutinefunction(h) and h(3) == 3
    assert b.name == fetch.__qualname__


def test_decorator_rejects_non_callables():
    b = CircuitBreaker()
    with pytest.raises(TypeError, match="only decorate a callable"):
        b(3)
    with pytest.raises(TypeError, match="exactly one function"):
        b(print, print)


@pytest.mark.asyncio
async def test_methods_bind_self():
    b = CircuitBreaker()

    class Client:
        def __init__(self, n):
            self.n = n

        @b
        async def get(self, k, *, plus=0):
            return self.n + k + plus

        @b
        def get_sync(self, k):
            return self.n * k

        @staticmethod
        @b
        async def static(k):
            return -k

        @classmethod
        @b
        def klass(cls, k):
            return (cls, k)

    c = Client(10)
    assert await c.get(1, plus=2) == 13 and c.get_sync(3) == 30
    assert await Client.get(c, 5) == 15
    assert await c.static(4) == -4 and c.klass(1) == (Client, 1)
    assert inspect.iscoroutinefunction(c.get) and inspect.iscoroutinefunction(Client.get)
    assert c.get.__self__ is c and c.get.__func__ is Client.__dict__["get"]
    assert inspect.signature(c.get) == inspect.signature(Client(0).get.__func__.__wrapped__
                                                         .__get__(c))
    assert b.stats()["calls"] == 5


@pytest.mark.asyncio
async def test_async_decorator_awaitable_protocol():
    b = CircuitBreaker()

    @b
    async def f(x):
        await asyncio.sleep(0)
        return (x,)  # a tuple comes back as is (no StopIteration unpacking)

    aw = f(1)
    assert asyncio.iscoroutine(aw) and inspect.isawaitable(aw)
    assert "created" in repr(aw) and aw.__qualname__.endswith("f")
    assert await aw == (1,)
    assert "done" in repr(aw)
    with pytest.raises(RuntimeError, match="cannot reuse already awaited"):
        await aw
    assert await asyncio.create_task(f(2)) == (2,)
    assert await asyncio.gather(f(3), f(4)) == [(3,), (4,)]
    assert await asyncio.wait_for(f(5), 10) == (5,)
    assert b.stats()["successes"] == 5


@pytest.mark.asyncio
async def test_results_come_back_intact():
    """Every kind of result, through await and by hand (3.12+ reuses one StopIteration)."""
    b = CircuitBreaker()
    big = list(range(1000))
    values = [None, True, False, 0, (1, 2), (), "s", big, StopIteration("v"), ValueError("x")]

    @b
    async def ret(v):
        return v

    for v in values:
        assert await ret(v) is v
    for v in values[1:]:
        aw = ret(v)
        with pytest.raises(StopIteration) as si:
            next(aw)
        assert si.value.value is v and si.value.args == (v,)
        kept = si.value
        assert await ret(1) == 1 and kept.value is v  # a held StopIteration is not reused


@pytest.mark.asyncio
async def test_decorated_sync_and_async_failures():
    b = CircuitBreaker(2)

    @b
    async def af():
        await asyncio.sleep(0)
        raise Boom("async")

    @b
    def sf():
        raise Boom("sync")

    with pytest.raises(Boom, match="async") as ei:
        await af()
    assert ei.value.__traceback__ is not None
    with pytest.raises(Boom, match="sync"):
        sf()
    with pytest.raises(CircuitOpenError):
        await af()
    with pytest.raises(CircuitOpenError):
        sf()
    assert b.stats()["failures"] == 2 and b.stats()["rejections"] == 2


@pytest.mark.asyncio
async def test_bad_call_arguments_are_not_outcomes():
    b = CircuitBreaker(1, fallback=lambda *a: "fb")

    @b
    async def f(x):
        return x

    with pytest.raises(TypeError):
        await f(1, 2)  # fallback set: the coroutine is made at admission
    b2 = CircuitBreaker(1)
    g = b2(f.__wrapped__)
    with pytest.raises(TypeError):
        g(1, 2)  # made at call time
    assert b.state is CircuitState.CLOSED and b2.state is CircuitState.CLOSED
    assert b.stats()["failures"] == 0 and b.stats()["ignored"] == 1


@pytest.mark.asyncio
async def test_async_callable_that_is_not_a_coroutine_function(clock):
    """A plain callable returning a coroutine is guarded until the coroutine ends."""
    b = CircuitBreaker(1, 1, clock=clock)

    class Client:
        async def __call__(self, ok):
            await asyncio.sleep(0)
            if not ok:
                raise Boom
            return "ok"

    g = b(Client())
    assert not inspect.iscoroutinefunction(g)
    assert await g(True) == "ok"
    aw = g(False)
    assert b.stats()["failures"] == 0  # not decided until the coroutine ends
    with pytest.raises(Boom):
        await aw
    assert b.state is CircuitState.OPEN
    clock.advance(1)
    aw = g(True)  # admitted as the probe when called
    assert "probes:1/1" in repr(b)
    aw.close()  # never awaited: neither success nor failure, slot freed, no warning
    assert "probes:0/1" in repr(b) and b.stats()["ignored"] == 1
    assert await g(True) == "ok" and b.state is CircuitState.CLOSED


def test_generator_functions(clock):
    b = CircuitBreaker(1, 1, clock=clock)

    @b
    def gen(n):
        yield from range(n)
        if n == 0:
            raise Boom
        return "done"

    assert list(gen(3)) == [0, 1, 2]
    assert b.stats()["successes"] == 1
    with pytest.raises(Boom):
        list(gen(0))
    with pytest.raises(CircuitOpenError):
        next(gen(2))
    assert gen.breaker is b and gen.__name__ == "gen"


@pytest.mark.asyncio
async def test_async_generator_functions():
    b = CircuitBreaker(1, fallback=None)

    @b
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i
        if n == 0:
            raise Boom

    assert [i async for i in agen(3)] == [0, 1, 2]
    with pytest.raises(Boom):
        [i async for i in agen(0)]
    with pytest.raises(CircuitOpenError):
        await agen(1).__anext__()


# ------------------------------------------------------------------ context managers and call()


@pytest.mark.asyncio
async def test_async_with_and_with():
    b = CircuitBreaker(2)
    async with b:
        pass
    with pytest.raises(Boom):
        async with b:
            raise Boom
    with pytest.raises(Boom):
        with b:
            raise Boom
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        async with b:
            pytest.fail("ran while open")
    with pytest.raises(CircuitOpenError):
        with b:
            pytest.fail("ran while open")
    assert b.stats() | {"state": None} == dict(
        state=None, failure_count=2, success_count=0, calls=3, successes=1, failures=2,
        ignored=0, slow_calls=0, rejections=2, state_changes=1)


def test_exit_without_enter():
    b = CircuitBreaker()
    with pytest.raises(RuntimeError, match="without a matching enter"):
        b.__exit__(None, None, None)
    with pytest.raises(TypeError):
        b.__exit__(None, None)


@pytest.mark.asyncio
async def test_async_with_is_per_task(clock):
    """Blocks of concurrent tasks are matched per task, so probes are not mixed up."""
    b = CircuitBreaker(1, 1, half_open_max_calls=2, clock=clock)
    b.open()
    clock.advance(1)
    gate = asyncio.Event()
    order = []

    async def probe(name, fail):
        async with b:
            order.append(name)
            await gate.wait()
            if fail:
                raise Boom

    t1 = asyncio.create_task(probe("a", fail=False))
    t2 = asyncio.create_task(probe("b", fail=True))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):
        async with b:
            pass
    gate.set()
    await t1
    assert b.state is CircuitState.CLOSED  # a's success closed it; b is now stale
    with pytest.raises(Boom):
        await t2
    assert b.state is CircuitState.CLOSED and b.failure_count == 0
    assert b.stats()["failures"] == 1


@pytest.mark.asyncio
async def test_nested_with_blocks():
    b = CircuitBreaker(5)
    with b:
        with pytest.raises(Boom):
            async with b:
                raise Boom
        assert b.failure_count == 1
    assert b.failure_count == 0 and b.stats()["calls"] == 2


@pytest.mark.asyncio
async def test_async_with_is_per_task_after_blocks_in_the_creator(clock):
    """The same, when the tasks' creator has already entered and left blocks (the tasks start
    from a copy of a context that has used the breaker), and when a task is created inside a
    block: each block is exited in the task that entered it."""
    b = CircuitBreaker(1, 1, half_open_max_calls=2, clock=clock)
    async with b:
        pass
    with b:
        pass
    b.open()
    clock.advance(1)
    gate = asyncio.Event()

    async def probe(fail):
        async with b:
            await gate.wait()
            if fail:
                raise Boom

    t1 = asyncio.create_task(probe(fail=False))
    t2 = asyncio.create_task(probe(fail=True))
    await asyncio.sleep(0)
    assert "probes:2/2" in repr(b)
    gate.set()
    await t1
    with pytest.raises(Boom):
        await t2
    assert b.state is CircuitState.CLOSED and b.stats()["failures"] == 1

    c = CircuitBreaker(5)

    async def child():
        # the creator's block is not the child's to exit
        with pytest.raises(RuntimeError, match="without a matching enter"):
            await c.__aexit__(None, None, None)
        with pytest.raises(Boom):
            async with c:
                raise Boom
        async with c:
            async with c:
                pass

    async with c:
        await asyncio.create_task(child())
        assert c.stats()["failures"] == 1
        async with c:
            pass
    stats = c.stats()
    assert (stats["calls"], stats["successes"], stats["failures"]) == (5, 4, 1)
    with pytest.raises(RuntimeError, match="without a matching enter"):
        await c.__aexit__(None, None, None)


def test_with_blocks_in_one_context_and_its_copies():
    b = CircuitBreaker(5)
    with b:
        pass
    ctx = contextvars.copy_context()  # holds this context's (empty) with-blocks
    b.__enter__()
    ctx.run(b.__enter__)  # the copy makes its own
    ctx.run(b.__exit__, None, None, None)
    with pytest.raises(RuntimeError, match="without a matching enter"):
        ctx.run(b.__exit__, None, None, None)
    b.__exit__(Boom, Boom(), None)
    with pytest.raises(RuntimeError, match="without a matching enter"):
        b.__exit__(None, None, None)
    assert b.failure_count == 1 and b.stats()["calls"] == 3
    # a block entered in a context dropped before it exits: released with the context
    ctx2 = contextvars.copy_context()
    ctx2.run(b.__enter__)
    del ctx2
    gc.collect()
    assert b.stats()["ignored"] == 1


def test_with_blocks_keep_no_breaker_alive():
    """The current context keeps no reference to a breaker whose blocks it has left."""
    b = CircuitBreaker()
    with b:
        pass
    r = weakref.ref(b)
    del b
    gc.collect()
    assert r() is None


def test_with_blocks_of_several_breakers():
    """Blocks of several breakers in one context, exited in any order: each exit pops its own
    breaker's innermost block."""
    a, b = CircuitBreaker(5), CircuitBreaker(5)
    a.__enter__()
    b.__enter__()
    a.__enter__()
    a.__exit__(Boom, Boom(), None)
    a.__exit__(None, None, None)  # a's outer block, with b's still open inside it
    with pytest.raises(RuntimeError, match="without a matching enter"):
        a.__exit__(None, None, None)
    b.__exit__(Boom, Boom(), None)
    assert (a.stats()["successes"], a.stats()["failures"]) == (1, 1)
    assert (b.stats()["successes"], b.stats()["failures"]) == (0, 1)


def test_with_block_variable_set_from_python():
    """The with-blocks' context variable, reached from Python and set to anything (another
    value, another context's blocks): blocks still pair up in their own context, and an exit
    without its enter raises."""
    b = CircuitBreaker()
    with b:
        pass
    (var,) = [v for v in contextvars.copy_context() if v.name == "aiofast.CircuitBreaker.blocks"]
    var.set("not a stack")
    with pytest.raises(RuntimeError, match="without a matching enter"):
        b.__exit__(None, None, None)
    with b:
        pass
    other = contextvars.Context()
    other.run(b.__enter__)
    var.set(other[var])  # another context's stack, with its block open
    with pytest.raises(RuntimeError, match="without a matching enter"):
        b.__exit__(None, None, None)
    with b:
        with b:
            pass
    other.run(b.__exit__, None, None, None)
    assert b.stats()["successes"] == 5
    with pytest.raises(RuntimeError, match="cannot reuse"):
        var.get().send(None)


@pytest.mark.asyncio
async def test_call_sync_async_and_awaitables():
    b = CircuitBreaker(3)

    async def add(a, b=0):
        await asyncio.sleep(0)
        return a + b

    def mul(a, b=1):
        return a * b

    def make_future(v):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(v)
        return fut

    assert await b.call(add, 1, b=2) == 3
    assert await b.call(mul, 4, b=5) == 20
    assert await b.call(make_future, "f") == "f"
    assert await b.call(asyncio.sleep, 0, "slept") == "slept"

    def boom():
        raise Boom

    with pytest.raises(Boom):
        await b.call(boom)
    assert b.stats()["successes"] == 4 and b.stats()["failures"] == 1
    with pytest.raises(TypeError, match="missing required argument"):
        b.call()
    with pytest.raises(TypeError, match="needs a callable"):
        b.call(3)


@pytest.mark.asyncio
async def test_fallback(clock):
    seen = []

    def fb(*args, **kwargs):
        seen.append((args, kwargs))
        return "fallback"

    b = CircuitBreaker(1, 10, fallback=fb, clock=clock)

    @b
    async def af(x, *, y):
        raise Boom

    @b
    def sf(x):
        return x

    with pytest.raises(Boom):
        await af(1, y=2)
    assert await af(3, y=4) == "fallback"
    assert sf(5) == "fallback"
    assert await b.call(sf, 6) == "fallback"
    assert seen == [((3,), {"y": 4}), ((5,), {}), ((6,), {})]

    async def afb(*args):
        await asyncio.sleep(0)
        return ("async fallback", args)

    b2 = CircuitBreaker(1, fallback=afb)
    b2.open()

    @b2
    async def g(x):
        return x

    assert await g(7) == ("async fallback", (7,))
    with pytest.raises(CircuitOpenError):  # no fallback for blocks
        async with b2:
            pass
    assert b.stats()["rejections"] == 3


# ------------------------------------------------------------------ cancellation, the peers' bugs


@pytest.mark.asyncio
async def test_concurrent_half_open_callers_one_probe(clock):
    """pybreaker/circuitbreaker/aiobreaker: every concurrent caller gets through in half-open."""
    b = CircuitBreaker(1, 5, clock=clock)
    b.open()
    clock.advance(5)
    running = []
    gate = asyncio.Event()

    @b
    async def call(i):
        running.append(i)
        await gate.wait()
        return i

    tasks = [asyncio.create_task(call(i)) for i in range(10)]
    await asyncio.sleep(0)
    assert running == [0]
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == 0
    assert all(isinstance(r, CircuitOpenError) and r.remaining == 0.0 for r in results[1:])
    assert "half-open with every probe slot busy" in str(results[1])
    assert b.state is CircuitState.CLOSED


@pytest.mark.asyncio
async def test_half_open_max_calls(clock):
    b = CircuitBreaker(1, 5, half_open_max_calls=3, success_threshold=3, clock=clock)
    b.open()
    clock.advance(5)
    gate = asyncio.Event()

    @b
    async def call():
        await gate.wait()

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    await asyncio.sleep(0)
    assert "probes:3/3" in repr(b)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[:3] == [None] * 3
    assert all(isinstance(r, CircuitOpenError) for r in results[3:])
    assert b.state is CircuitState.CLOSED


@pytest.mark.asyncio
async def test_cancelled_probe_frees_its_slot(clock):
    """A cancelled call is neither success nor failure, and a cancelled probe frees its slot."""
    b = CircuitBreaker(1, 5, clock=clock)
    b.open()
    clock.advance(5)
    started = asyncio.Event()

    @b
    async def hang():
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(hang())
    await started.wait()
    with pytest.raises(CircuitOpenError):
        await hang()
    task.cancel("stop")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is CircuitState.HALF_OPEN and b.stats()["ignored"] == 1
    assert b.stats()["failures"] == 0

    @b
    async def ok():
        return "probe"

    assert await ok() == "probe"
    assert b.state is CircuitState.CLOSED


@pytest.mark.asyncio
async def test_cancellation_in_closed_state_is_not_a_failure():
    b = CircuitBreaker(1)

    @b
    async def slow():
        await asyncio.sleep(3600)

    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.001)
    assert b.state is CircuitState.CLOSED and b.stats()["ignored"] == 3


@pytest.mark.asyncio
async def test_coroutine_that_swallows_cancellation_succeeds():
    b = CircuitBreaker(1)
    started = asyncio.Event()

    @b
    async def stubborn():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "cleaned up"

    task = asyncio.create_task(stubborn())
    await started.wait()
    task.cancel()
    assert await task == "cleaned up"
    assert b.stats()["successes"] == 1


@pytest.mark.asyncio
async def test_stale_closed_call_is_not_a_probe(clock):
    """A call admitted while closed that ends in half-open does not decide the probe."""
    b = CircuitBreaker(1, 5, clock=clock)
    gate = asyncio.Event()

    @b
    async def slow_ok():
        await gate.wait()
        return "late"

    task = asyncio.create_task(slow_ok())
    await asyncio.sleep(0)
    b.open()
    clock.advance(5)
    hang = asyncio.Event()

    @b
    async def probe():
        await hang.wait()

    ptask = asyncio.create_task(probe())
    await asyncio.sleep(0)
    gate.set()
    assert await task == "late"
    assert b.state is CircuitState.HALF_OPEN and "probes:1/1" in repr(b)
    ptask.cancel()
    await asyncio.gather(ptask, return_exceptions=True)
    assert b.stats()["successes"] == 1 and b.stats()["ignored"] == 1


def test_awaitable_protocol_by_hand():
    b = CircuitBreaker(1)

    @types.coroutine
    def step():
        return (yield "suspended")

    async def body():
        got = await step()
        if got == "fail":
            raise Boom
        return got

    aw = b.call(body)
    with pytest.raises(TypeError, match="non-None value"):
        aw.send(1)
    assert aw.send(None) == "suspended"
    with pytest.raises(StopIteration) as si:
        aw.send("value")
    assert si.value.value == "value"
    assert b.stats()["successes"] == 1

    aw = b.call(body)
    assert next(aw) == "suspended"
    with pytest.raises(Boom):
        aw.throw(Boom())
    assert b.state is CircuitState.OPEN

    b.close()
    aw = b.call(body)
    assert aw.send(None) == "suspended"
    aw.close()  # GeneratorExit: neither
    assert b.stats()["ignored"] == 1
    aw.close()
    with pytest.raises(RuntimeError, match="cannot reuse"):
        aw.send(None)

    aw = b.call(body)
    with pytest.raises(Boom):
        aw.throw(Boom)  # before start: never admitted
    aw = b.call(body)
    aw.close()
    assert b.stats()["calls"] == 3


def test_throw_into_an_iterator_without_throw():
    b = CircuitBreaker(1)

    class Aw:
        def __await__(self):
            return iter(["a", "b"])

    aw = b.call(Aw)
    assert aw.send(None) == "a"
    with pytest.raises(Boom):
        aw.throw(Boom("raised at the await"))
    assert b.state is CircuitState.OPEN


def test_reentrant_send_from_inside():
    b = CircuitBreaker()
    holder = []

    async def body():
        with pytest.raises(ValueError, match="already executing"):
            holder[0].send(None)
        return 1

    aw = b.call(body)
    holder.append(aw)
    with pytest.raises(StopIteration):
        aw.send(None)


def test_abandoned_calls_free_their_probe_slots(clock):
    """A with-block never exited (its context dropped) and a call driven by hand and dropped
    hold their half-open slot only until they are gone."""
    b = CircuitBreaker(1, 1, clock=clock)
    b.open()
    clock.advance(1)
    ctx = contextvars.Context()
    ctx.run(b.__enter__)
    assert "probes:1/1" in repr(b)
    del ctx
    gc.collect()
    assert "probes:0/1" in repr(b) and b.stats()["ignored"] == 1

    @types.coroutine
    def suspend():
        yield

    async def body():
        await suspend()

    aw = b.call(body)
    aw.send(None)
    assert "probes:1/1" in repr(b)
    del aw
    assert "probes:0/1" in repr(b) and b.stats()["ignored"] == 2
    with b:
        pass
    assert b.state is CircuitState.CLOSED


@pytest.mark.asyncio
async def test_dropped_pending_task_frees_its_call(clock):
    """A task whose coroutine is a breaker call, dropped while it waits, is collected (the loop
    reports it destroyed pending) and its call released: the breaker's cache of one call held
    the call in use, so the task, its frames and its half-open probe slot lived as long as the
    breaker (found by BreakerMachineOnLoop)."""
    loop = asyncio.get_running_loop()
    reports = []
    loop.set_exception_handler(lambda loop, ctx: reports.append(ctx["message"]))
    try:
        b = CircuitBreaker(1, 1, clock=clock)
        b.open()
        clock.advance(1)

        @b
        async def probe(gate):
            await gate

        task = loop.create_task(probe(loop.create_future()))
        await asyncio.sleep(0)
        assert "probes:1/1" in repr(b)
        dropped = weakref.ref(task)
        del task
        gc.collect()
        assert dropped() is None
        assert reports == ["Task was destroyed but it is pending!"]
        assert "probes:0/1" in repr(b) and b.stats()["ignored"] == 1
        assert await probe(asyncio.sleep(0)) is None  # the slot is free: a probe runs
        assert b.state is CircuitState.CLOSED
    finally:
        loop.set_exception_handler(None)


def test_unawaited_call_admits_nothing():
    b = CircuitBreaker(1)

    @b
    async def f():
        return 1

    aw = f()
    aw.close()  # closes the inner coroutine too: no "never awaited" warning
    assert b.stats()["calls"] == 0


# ------------------------------------------------------------------ listeners


def test_listener_that_raises_is_logged(caplog, clock):
    b = CircuitBreaker(1, 1, name="svc", clock=clock)
    seen = []

    def bad(br, old, new):
        raise RuntimeError("listener broke")

    b.add_listener(bad)
    b.add_listener(lambda br, old, new: seen.append(new))

    @b
    def f():
        raise Boom("the call's own error")

    with caplog.at_level(logging.ERROR, logger="aiofast.breaker"):
        with pytest.raises(Boom, match="the call's own error"):
            f()
    assert b.state is CircuitState.OPEN and seen == [CircuitState.OPEN]
    assert "listener broke" in caplog.text and "'svc'" in caplog.text
    rec = [r for r in caplog.records if r.name == "aiofast.breaker"][0]
    assert rec.exc_info[0] is RuntimeError
    b.remove_listener(bad)
    with pytest.raises(ValueError):
        b.remove_listener(bad)
    with pytest.raises(TypeError, match="listener must be callable"):
        b.add_listener(3)


def test_reentrant_listener(clock):
    b = CircuitBreaker(1, 1, clock=clock)
    log = []

    @b
    def f(ok=True):
        if not ok:
            raise Boom
        return "ran"

    def listener(br, old, new):
        log.append((old.value, new.value, br.state.value, br.stats()["state_changes"]))
        if new is CircuitState.OPEN and len(log) == 1:
            br.close()  # re-enter: a transition queued and delivered after this one
        elif new is CircuitState.CLOSED and len(log) == 2:
            assert f() == "ran"  # call the guarded function from the listener
            br.add_listener(late)

    def late(br, old, new):
        log.append(("late", new.value))

    assert b.add_listener(listener) is listener
    with pytest.raises(Boom):
        f(False)
    assert log == [("closed", "open", "open", 1), ("open", "closed", "closed", 2)]
    assert b.state is CircuitState.CLOSED and b.listeners == (listener, late)
    b.open()
    assert log[-2:] == [("closed", "open", "open", 3), ("late", "open")]


def test_listener_removing_itself(clock):
    b = CircuitBreaker(1, clock=clock)
    calls = []

    def once(br, old, new):
        calls.append(new)
        br.remove_listener(once)

    b.add_listener(once)
    b.open()
    b.close()
    assert calls == [CircuitState.OPEN] and b.listeners == ()


# ------------------------------------------------------------------ clocks


def test_default_clock_is_monotonic():
    b = CircuitBreaker(1, 30)
    b.open()
    assert 29.0 < b.remaining <= 30.0
    assert b.clock is None


def test_clock_errors(caplog):
    ticks = [1.0]

    def clock():
        if ticks[0] is None:
            raise OSError("clock broke")
        return ticks[0]

    b = CircuitBreaker(1, 10, clock=clock)
    ticks[0] = None
    with caplog.at_level(logging.ERROR, logger="aiofast.breaker"):
        fail_n(b, 1)  # recording falls back on the last reading, and logs
    assert "clock broke" in caplog.text
    with pytest.raises(OSError, match="clock broke"):  # admission while open needs the time
        with b:
            pass
    ticks[0] = math.nan
    with pytest.raises(ValueError, match="clock\\(\\) returned nan"):
        b.state
    ticks[0] = "soon"
    with pytest.raises(TypeError):
        b.remaining
    ticks[0] = 11.0
    assert b.state is CircuitState.HALF_OPEN


# ------------------------------------------------------------------ threads


def test_threads_keep_exact_counts():
    b = CircuitBreaker(10**9, name="t")

    @b
    def work(i):
        if i % 3 == 0:
            raise KeyError(i)
        return i

    def run(n):
        for i in range(n):
            try:
                work(i)
            except KeyError:
                pass

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(run, [3000] * 8))
    s = b.stats()
    assert (s["calls"], s["successes"], s["failures"]) == (24000, 16000, 8000)


def test_threads_with_transitions():
    """Small thresholds, many threads, forced changes: invariants hold, nothing crashes."""
    b = CircuitBreaker(3, 0.0, half_open_max_calls=2, success_threshold=2)
    events = []
    b.add_listener(lambda br, o, n: events.append((o, n)))
    stop = threading.Event()

    @b
    def work(i):
        if i % 4 == 0:
            raise Boom
        return i

    def run(seed):
        attempts = rejected = 0
        for i in range(seed, seed + 2000):
            attempts += 1
            try:
                work(i)
            except Boom:
                pass
            except CircuitOpenError:
                rejected += 1
            if i % 500 == 0:
                (b.open, b.close, b.half_open)[i % 3]()
        return attempts, rejected

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        results = list(ex.map(run, range(0, 6000, 1000)))
    stop.set()
    s = b.stats()
    attempts = sum(a for a, r in results)
    assert s["calls"] + s["rejections"] == attempts
    assert s["rejections"] == sum(r for a, r in results)
    assert s["calls"] == s["successes"] + s["failures"] + s["ignored"]
    assert len(events) == s["state_changes"]
    # transitions chain: each starts where the previous ended
    assert all(events[i][1] == events[i + 1][0] for i in range(len(events) - 1))


@pytest.mark.asyncio
async def test_run_in_executor():
    b = CircuitBreaker(10**6)

    @b
    def blocking(i):
        return i * 2

    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        res = await asyncio.gather(*[loop.run_in_executor(ex, blocking, i) for i in range(200)])
    assert res == [i * 2 for i in range(200)] and b.stats()["successes"] == 200


# ------------------------------------------------------------------ circuit (drop-in)


def test_circuit_bare_and_with_arguments():
    @circuit
    def plain():
        return "ok"

    assert plain() == "ok" and isinstance(plain.breaker, CircuitBreaker)
    assert plain.breaker.failure_threshold == 5 and plain.breaker.recovery_timeout == 30
    assert plain.breaker.name == plain.__qualname__

    br = circuit(failure_threshold=2, recovery_timeout=10, name="svc",
                 expected_exception=[KeyError, OSError])
    assert isinstance(br, CircuitBreaker) and br.name == "svc"
    assert br.expected_exception == (KeyError, OSError)

    @br
    async def a():
        raise KeyError

    @br
    def s():
        raise KeyError

    assert inspect.iscoroutinefunction(a)
    assert circuit(failure_threshold=None, recovery_timeout=0).recovery_timeout == 30
    with pytest.raises(ValueError, match="cannot be a string"):
        circuit(expected_exception="KeyError")
    with pytest.raises(ValueError, match="does not look like a predicate"):
        circuit(expected_exception=3)
    assert aiofast._compat_breaker.CircuitBreakerError is CircuitOpenError


def test_circuit_predicate_signature():
    seen = []

    def is_failure(exc_type, exc):
        seen.append((exc_type, exc))
        return exc_type is KeyError

    @circuit(failure_threshold=1, expected_exception=is_failure)
    def f(e):
        raise e

    with pytest.raises(ValueError):
        f(ValueError("v"))
    assert f.breaker.state is CircuitState.CLOSED
    with pytest.raises(KeyError):
        f(KeyError("k"))
    assert f.breaker.state is CircuitState.OPEN
    assert [t for t, e in seen] == [ValueError, KeyError]


@pytest.mark.asyncio
async def test_circuit_fallback_function():
    async def fb(x):
        return ("fb", x)

    @circuit(failure_threshold=1, fallback_function=fb)
    async def f(x):
        raise OSError

    with pytest.raises(OSError):
        await f(1)
    assert await f(2) == ("fb", 2)


@pytest.mark.parametrize("impl", ["aiofast", "circuitbreaker"])
@pytest.mark.asyncio
async def test_circuit_same_as_circuitbreaker(impl):
    """The drop-in against the package it replaces, where they agree (no timing)."""
    deco = circuit if impl == "aiofast" else circuitbreaker.circuit
    err = CircuitOpenError if impl == "aiofast" else circuitbreaker.CircuitBreakerError
    outcomes = []

    @deco(failure_threshold=3, recovery_timeout=1000, expected_exception=OSError, name="x")
    async def f(kind):
        if kind == "os":
            raise OSError
        if kind == "value":
            raise ValueError  # not expected: resets the count, as a success does
        return kind

    for kind in ["os", "os", "value", "os", "os", "ok", "os", "os", "os", "ok", "os"]:
        try:
            outcomes.append(await f(kind))
        except err:
            outcomes.append("rejected")
        except Exception as e:
            outcomes.append(type(e).__name__)
    assert outcomes == ["OSError", "OSError", "ValueError", "OSError", "OSError", "ok",
                        "OSError", "OSError", "OSError", "rejected", "rejected"]


@pytest.fixture(params=sorted(ORACLES["circuit"]))
def cbpeer(request, monkeypatch):
    """circuitbreaker's API: aiofast's drop-in or circuitbreaker itself, on a clock the test
    moves (circuitbreaker reads time.monotonic through its module's `monotonic`)."""
    fake = Clock(1000.0)
    mod = ORACLES["circuit"][request.param]
    if request.param == "aiofast":

        class Breaker(mod.CircuitBreaker):
            def __new__(cls, *args, **kwargs):
                return super().__new__(cls, *args, clock=fake, **kwargs)
    else:
        monkeypatch.setattr(circuitbreaker, "monotonic", fake)
        Breaker = circuitbreaker.CircuitBreaker
    monkeypatch.setattr(mod.CircuitBreakerMonitor, "circuit_breakers", {})
    return types.SimpleNamespace(mod=mod, Breaker=Breaker, clock=fake,
                                 Error=getattr(mod, "CircuitBreakerError"))


def test_circuitbreaker_api_through_open_and_half_open(cbpeer):
    cb = cbpeer.Breaker(failure_threshold=2, recovery_timeout=10, name="svc")
    calls = []

    @cb
    def f(exc=None):
        calls.append(exc)
        if exc is not None:
            raise exc
        return "ok"

    assert str(cb) == "svc" and cb.closed and not cb.opened and cb.failure_count == 0
    assert cb.last_failure is None and cb.open_remaining == 10
    e1, e2, e3 = OSError(1), OSError(2), OSError(3)
    with pytest.raises(OSError):
        f(e1)
    assert cb.closed and cb.failure_count == 1 and cb.last_failure is e1
    with pytest.raises(OSError):
        f(e2)
    assert cb.opened and cb.state == "open" and cb.failure_count == 2 and cb.last_failure is e2
    assert cb.open_remaining == 10
    cbpeer.clock.advance(2.5)
    assert cb.open_remaining == 8  # rounded up while open
    with pytest.raises(cbpeer.Error):
        f()
    assert cb.failure_count == 2 and len(calls) == 2
    cbpeer.clock.advance(8)
    assert cb.state == "half_open" and not cb.opened and not cb.closed
    assert cb.open_remaining == -1 and cb.failure_count == 2  # rounded down after it
    with pytest.raises(OSError):
        f(e3)  # the probe fails: open again, still counting
    assert cb.opened and cb.failure_count == 3 and cb.last_failure is e3
    assert cb.open_remaining == 10
    cbpeer.clock.advance(10)
    assert f() == "ok"
    assert cb.closed and cb.failure_count == 0 and cb.last_failure is None


def test_circuitbreaker_monitor_and_names(cbpeer):
    Monitor = cbpeer.mod.CircuitBreakerMonitor
    a = cbpeer.Breaker(failure_threshold=1, name="a")
    b = cbpeer.Breaker()
    assert str(b) == "unnamed_CircuitBreaker" and list(Monitor.get_circuits()) == []

    def boom():
        raise KeyError

    fa, fb = a(boom), b(boom)
    assert b.name == boom.__qualname__ and str(b) == boom.__qualname__
    assert Monitor.get("a") is a and Monitor.get(boom.__qualname__) is b
    assert Monitor.all_closed() and len(list(Monitor.get_closed())) == 2
    with pytest.raises(KeyError):
        fa()
    assert not Monitor.all_closed()
    assert list(Monitor.get_open()) == [a] and list(Monitor.get_closed()) == [b]
    assert isinstance(cbpeer.Breaker(name="x").open_until, __import__("datetime").datetime)


def test_circuitbreaker_subclass_options_and_calls(cbpeer):
    def is_four(exc_type, exc):
        return exc_type is KeyError and exc.args == (4,)

    class Nervous(cbpeer.Breaker):
        FAILURE_THRESHOLD = 1
        EXPECTED_EXCEPTION = is_four

    br = cbpeer.mod.circuit(cls=Nervous)
    assert isinstance(br, Nervous)
    assert br.is_failure(KeyError, KeyError(4)) and not br.is_failure(KeyError, KeyError(2))
    assert not br.is_failure(ValueError, ValueError(4))
    assert br.call(lambda x: x * 2, 21) == 42
    assert list(br.call_generator(lambda n: iter(range(n)), 3)) == [0, 1, 2]
    with pytest.raises(KeyError):
        br.call(lambda: (_ for _ in ()).throw(KeyError(2)))
    assert br.closed and br.failure_count == 0
    with pytest.raises(KeyError):
        br.call(lambda: (_ for _ in ()).throw(KeyError(4)))
    assert br.opened and br.failure_count == 1
    listed = cbpeer.mod.circuit(expected_exception=(KeyError, OSError))
    assert listed.is_failure(OSError, OSError()) and not listed.is_failure(Exception, None)

    def fb(*args, **kwargs):
        return ("fallback", args, kwargs)

    @cbpeer.mod.circuit(failure_threshold=1, fallback_function=fb)
    def g(x, y=0):
        raise OSError

    with pytest.raises(OSError):
        g(1)
    assert g(2, y=3) == ("fallback", (2,), {"y": 3})


# ------------------------------------------------------------------ repr, errors


def test_repr_and_error_messages(clock):
    b = CircuitBreaker(2, 10, clock=clock)
    assert repr(b).endswith("[closed, failures:0/2]>")
    b2 = CircuitBreaker(failure_rate=0.5, window=10, name="r")
    assert repr(b2).endswith("[closed, failures:0 of 0 calls, name='r']>")
    b.open()
    assert repr(b).endswith("[open, 10.000 s remaining]>")
    e = CircuitOpenError(b, 2.5)
    assert str(e) == "unnamed circuit breaker is open: 2.500 s remaining"
    assert e.breaker is b and e.remaining == 2.5
    assert str(CircuitOpenError("custom")) == "custom" and CircuitOpenError().breaker is None
    assert issubclass(CircuitOpenError, Exception) and CircuitOpenError.__module__ == "aiofast"
    clock.advance(10)
    assert "half_open, probes:0/1, successes:0/1" in repr(b)


def test_exports_and_signatures():
    for name in ("CircuitBreaker", "CircuitOpenError", "CircuitState", "circuit"):
        assert name in aiofast.__all__ and getattr(aiofast, name) is not None
    assert CircuitBreaker.__module__ == "aiofast"
    sig = inspect.signature(CircuitBreaker)
    assert list(sig.parameters)[:3] == ["failure_threshold", "recovery_timeout",
                                        "success_threshold"]
    assert sig.parameters["expected_exception"].default is None
    assert CircuitBreaker(expected_exception=None).expected_exception is Exception
    assert inspect.signature(CircuitBreaker.call).parameters["fn"].kind == \
        inspect.Parameter.POSITIONAL_ONLY
    # the last two: shared=, store= (keyword-only; the private _testing is not shown)
    tail = list(sig.parameters.values())[-2:]
    assert [(p.name, p.kind, p.default) for p in tail] == [
        ("shared", inspect.Parameter.KEYWORD_ONLY, None),
        ("store", inspect.Parameter.KEYWORD_ONLY, None)]
    assert CircuitBreaker.__text_signature__.endswith("shared=None, store=None)")


# ------------------------------------------------------------------ store=


class RecordingStore:
    """A store of one's own: CircuitBreaker(..., store=s) is s.make_breaker(...)."""

    def __init__(self):
        self.calls = []

    def make_breaker(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return ("made", self)


def test_store_makes_the_breaker():
    s = RecordingStore()
    # the other arguments go to make_breaker exactly as given, unchecked here (the store's
    # breaker checks them); store, shared=None and _testing=False are left out
    assert CircuitBreaker(3, 4.5, store=s, name="x", clock=None, fallback=print) == ("made", s)
    assert CircuitBreaker(store=s, shared=None, _testing=False) == ("made", s)
    assert CircuitBreaker(-1, store=s, failure_rate="nonsense") == ("made", s)
    assert s.calls == [((3, 4.5), {"name": "x", "clock": None, "fallback": print}),
                       ((), {}),
                       ((-1,), {"failure_rate": "nonsense"})]
    # store=None: the in-process breaker, as without it
    b = CircuitBreaker(3, store=None)
    assert type(b) is CircuitBreaker and b.failure_threshold == 3 and b.shared is None


def test_store_errors():
    s = RecordingStore()
    wanted = (r"store must be a breaker store \(an object with a make_breaker\(\) method, such "
              r"as aiofast.redis.RedisBreakerStore\), got ")
    for bad in (1, "redis://x", {}, object()):
        with pytest.raises(TypeError, match=wanted + rf"{type(bad).__name__}$"):
            CircuitBreaker(store=bad)
    # the class itself, for an instance (its make_breaker is not bound to a store)
    with pytest.raises(TypeError, match=wanted + r"the class <class '.*RecordingStore'>, not an "
                       "instance of it$"):
        CircuitBreaker(5, 30, store=RecordingStore)
    with pytest.raises(ValueError, match=r"give shared= .* or store= .*, not both"):
        CircuitBreaker(store=s, shared="x")
    with pytest.raises(ValueError, match="_testing needs shared="):
        CircuitBreaker(store=s, _testing=True)
    # the parser's own errors come first: the same as without store=
    for args, kwargs in [((1, 2, 3), {}), ((), {"bogus": 1}), ((1,), {"failure_threshold": 2})]:
        with pytest.raises(TypeError) as want:
            CircuitBreaker(*args, **kwargs)
        with pytest.raises(TypeError) as got:
            CircuitBreaker(*args, store=s, **kwargs)
        assert str(got.value) == str(want.value)
    assert s.calls == []

    class Sub(CircuitBreaker):
        pass

    with pytest.raises(TypeError, match=r"store= is for aiofast.CircuitBreaker itself, not its "
                       r"subclass <class '.*Sub'>: the store makes a breaker of its own type"):
        Sub(store=s)
    with pytest.raises(TypeError, match="not its subclass"):
        circuit.__globals__["CircuitBreaker"](store=s)   # circuitbreaker's drop-in's class
    assert s.calls == []

    # what the store raises, from its lookup or its make_breaker, goes through unchanged
    class Raising:
        def make_breaker(self, *args, **kwargs):
            raise ZeroDivisionError("from the store")

    class BadAttr:
        @property
        def make_breaker(self):
            raise KeyError("lookup")

    with pytest.raises(ZeroDivisionError, match="from the store"):
        CircuitBreaker(store=Raising())
    with pytest.raises(KeyError, match="lookup"):
        CircuitBreaker(store=BadAttr())


def test_store_does_not_import_redis():
    """The constructor asks the store; it imports nothing (aiofast.redis neither)."""
    code = textwrap.dedent("""
        import sys, aiofast
        class S:
            def make_breaker(self, *a, **k):
                return a
        assert aiofast.CircuitBreaker(1, store=S()) == (1,)
        aiofast.CircuitBreaker(store=None)
        try:
            aiofast.CircuitBreaker(store=1)
        except TypeError:
            pass
        print('redis' in sys.modules, 'aiofast.redis' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(__file__))
    assert out.stdout.split() == ["False", "False"]


def test_no_c_path_imports_the_python_helpers():
    """The C breaker's cold parts (logging a listener's, a predicate's or a clock's error;
    decorating plain, async, generator and async generator functions) use the Python helpers
    handed to it when the package was imported: none imports aiofast._compat_breaker again (it
    is made unimportable here, after the package's import)."""
    code = textwrap.dedent("""
        import asyncio, inspect, logging, sys
        import aiofast
        sys.modules["aiofast._compat_breaker"] = None  # any import of it now fails
        try:
            import aiofast._compat_breaker
        except ImportError:
            pass
        else:
            raise AssertionError("still importable")
        records = []
        class H(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        logging.getLogger("aiofast.breaker").addHandler(H())
        sys.unraisablehook = lambda u: records.append("unraisable: %r" % (u.exc_value,))
        now = [0.0]
        def clock():
            if now[0] is None:
                raise OSError("clock broke")
            return now[0]
        def pred(exc):
            raise KeyError("bad predicate")
        b = aiofast.CircuitBreaker(1, 1, name="svc", expected_exception=pred, clock=clock)
        def bad(br, old, new):
            raise RuntimeError("listener broke")
        b.add_listener(bad)
        @b
        def f(x):
            raise ValueError(x)
        now[0] = None
        try:
            f(1)
        except ValueError:
            pass
        @b
        async def g():
            return 2
        @b
        def gen():
            yield 3
        @b
        async def agen():
            yield 4
        print(type(f).__name__, inspect.iscoroutinefunction(g), g.__name__,
              inspect.isgeneratorfunction(gen), inspect.isasyncgenfunction(agen))
        for r in records:
            print(r)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(__file__))
    lines = out.stdout.splitlines()
    assert lines[0] == "BreakerFunction True g True True"
    assert len(lines) == 4 and not any("unraisable" in line for line in lines), lines
    assert "'svc': expected_exception predicate" in lines[1] and "bad predicate" in lines[1]
    assert "'svc': clock" in lines[2] and "clock broke" in lines[2]
    assert "'svc': listener" in lines[3] and "listener broke" in lines[3]


def test_the_extension_alone_has_no_python_helpers():
    """Loaded without its package (nothing handed the helpers over), the extension cannot
    decorate (a clear RuntimeError) and a listener's error goes to sys.unraisablehook."""
    code = textwrap.dedent("""
        import importlib.machinery, importlib.util, sys
        import aiofast
        path = aiofast._core.__file__
        loader = importlib.machinery.ExtensionFileLoader("alone._core", path)
        spec = importlib.util.spec_from_file_location("alone._core", path, loader=loader)
        core = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(core)
        assert core.CircuitBreaker is not aiofast.CircuitBreaker
        seen = []
        sys.unraisablehook = lambda u: seen.append(u.exc_value)
        b = core.CircuitBreaker(1)
        try:
            b(lambda: None)
        except RuntimeError as e:
            print(e)
        def bad(br, old, new):
            raise ZeroDivisionError
        b.add_listener(bad)
        b.open()
        print(b.state.value, [type(e).__name__ for e in seen])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(__file__))
    assert out.stdout.splitlines() == [
        "aiofast._core was loaded without the aiofast package: the CircuitBreaker's helper "
        "_fn_kind is missing",
        "open ['ZeroDivisionError']",
    ]


# ------------------------------------------------------------------ the model


CONFIGS = hs.one_of(
    hs.fixed_dictionaries(dict(
        failure_threshold=hs.integers(1, 4),
        recovery_timeout=hs.sampled_from([0.0, 1.0, 2.5]),
        success_threshold=hs.integers(1, 3),
        half_open_max_calls=hs.integers(1, 3),
    ), optional=dict(slow_call_duration=hs.sampled_from([0.5, 1.0]))),
    hs.fixed_dictionaries(dict(
        failure_rate=hs.sampled_from([0.25, 0.5, 1.0]),
        window=hs.integers(1, 6),
        recovery_timeout=hs.sampled_from([0.0, 1.0, 2.5]),
        success_threshold=hs.integers(1, 3),
        half_open_max_calls=hs.integers(1, 3),
    ), optional=dict(slow_call_duration=hs.sampled_from([0.5, 1.0]),
                     slow_call_rate=hs.sampled_from([0.5, 1.0]))),
    hs.fixed_dictionaries(dict(
        failure_rate=hs.sampled_from([0.25, 0.5, 1.0]),
        window_time=hs.sampled_from([1.0, 4.0, 10.0]),
        min_calls=hs.integers(1, 4),
        recovery_timeout=hs.sampled_from([0.0, 1.0, 2.5]),
        half_open_max_calls=hs.integers(1, 3),
    ), optional=dict(slow_call_duration=hs.sampled_from([0.5, 1.0]))),
)

OUTCOMES = ["success", "failure", "excluded", "other", "cancel", "close", "hostile",
            "cancel_swallowed", "cancel_converted"]
KIND = {"success": "success", "failure": "failure", "excluded": "ignored", "other": "success",
        "cancel": "ignored", "close": "ignored", "hostile": "failure",
        "cancel_swallowed": "success", "cancel_converted": "failure"}
# the outcomes whose exception reaches expected_exception (a predicate then runs)
CLASSIFIED = {"failure", "other", "hostile", "cancel_converted"}


class HostileBoom(Boom):
    """A failure whose comparisons and hash raise: the breaker must never need them."""

    def __eq__(self, other):
        raise RuntimeError("HostileBoom.__eq__")

    def __hash__(self):
        raise RuntimeError("HostileBoom.__hash__")


class _RaisingMeta(type):
    def __instancecheck__(cls, obj):
        raise RuntimeError("__instancecheck__")

    def __subclasscheck__(cls, sub):
        raise RuntimeError("__subclasscheck__")


class NeverRaised(Exception, metaclass=_RaisingMeta):
    """In expected_exception's tuple: matching must not call its metaclass hooks."""


_HOSTILE_VAR = contextvars.ContextVar("hostile")


class _OnDel:
    def __init__(self, fn):
        self.fn = fn

    def __del__(self):
        self.fn()


@types.coroutine
def _suspend():
    return (yield "suspended")


async def _gated(box=None, gate=None):
    try:
        outcome = await (_suspend() if gate is None else gate)
    except asyncio.CancelledError:
        if box and box[0] == "cancel_swallowed":
            return "swallowed"  # a coroutine that swallows its cancellation returns: success
        if box and box[0] == "cancel_converted":
            raise Boom("after cancellation")
        raise
    if outcome == "failure":
        raise Boom
    if outcome == "hostile":
        raise HostileBoom
    if outcome == "excluded":
        raise KeyError("excluded")
    if outcome == "other":
        raise LookupError("not expected: counts as success")
    return outcome


FORCE = {"open": "open", "closed": "close", "half_open": "half_open"}
PRED_ACTIONS = [None, "raise", "open", "closed", "half_open", "call"]
LISTENER_MODES = [None, "raise", ("open", "closed"), ("half_open", "open"),
                  ("closed", "half_open"), ("half_open", "closed")]


class BreakerMachine(RuleBasedStateMachine):
    """Random calls (async in flight, interleaved; sync with a duration), outcomes,
    cancellations (also swallowed or turned into a failure by the coroutine), clock moves and
    forced transitions against breaker_model.Model; with hostile objects: an expected_exception
    predicate that raises or re-enters the breaker (forces it, calls a guarded function), a
    listener that raises or forces a transition, an exception whose __eq__/__hash__ raise, a
    type whose metaclass hooks raise, and an abandoned with-block whose context holds an object
    whose __del__ forces the breaker. The machine mirrors each re-entry in the model at the point
    the breaker documents it (classification before the commit, listeners after it, in order)."""

    @initialize(cfg=CONFIGS, predicate=hs.booleans())
    def setup(self, cfg, predicate):
        if "slow_call_rate" in cfg and "slow_call_duration" not in cfg:
            cfg = {k: v for k, v in cfg.items() if k != "slow_call_rate"}
        self.clock = Clock(100.0)
        self.model = breaker_model.Model(**cfg)
        self.pred_action = self.excl_action = None
        self.listener_mode = None
        self.predicate = predicate
        self.delivered = 0
        expected = self.hostile_predicate if predicate else (Boom, NeverRaised)
        exclude = self.hostile_exclude if predicate else KeyError
        self.b = CircuitBreaker(**cfg, expected_exception=expected, exclude=exclude,
                                clock=self.clock)
        self.events = []
        self.b.add_listener(lambda br, o, n: self.events.append((o.value, n.value)))
        self.b.add_listener(self.hostile_listener)
        self.guarded = self.b(_gated)
        self.inner_ok = self.b(lambda: "inner")
        self.inflight = []

    # ---- the hostile objects (C side) and their mirror (model side)
    def _act(self, act):
        if act == "raise":
            raise RuntimeError("hostile predicate")
        if act in FORCE:
            getattr(self.b, FORCE[act])()
        elif act == "call":
            self.inner_ok()  # may raise CircuitOpenError: a predicate that raises

    def hostile_predicate(self, exc):
        self._act(self.pred_action)
        return isinstance(exc, Boom)

    def hostile_exclude(self, exc):
        self._act(self.excl_action)
        return isinstance(exc, KeyError)

    def _mirror(self, act):
        """What _act does, in the model; True if the predicate raised."""
        if act == "raise":
            return True  # logged; expected_exception: a failure, exclude: not excluded
        if act in FORCE:
            self.model_force(act)
        elif act == "call":
            t = self.model_admit()
            if isinstance(t, tuple):
                return True  # CircuitOpenError out of the predicate
            self.model.record(t, "success", self.clock.now)
            self.deliver()
        return False

    def hostile_listener(self, br, old, new):
        mode = self.listener_mode
        if mode == "raise":
            raise RuntimeError("hostile listener")
        if mode and new.value == mode[0]:
            getattr(br, FORCE[mode[1]])()

    def deliver(self):
        """The listeners run after each commit, on every transition in order; the hostile one
        forces its transition, which is delivered after the current one."""
        while self.delivered < len(self.model.events):
            _, new = self.model.events[self.delivered]
            self.delivered += 1
            mode = self.listener_mode
            if mode and mode != "raise" and new == mode[0]:
                self.model.force(mode[1], self.clock.now)

    def model_admit(self):
        expect = self.model.admit(self.clock.now)
        self.deliver()
        return expect

    def model_force(self, to):
        self.model.force(to, self.clock.now)
        self.deliver()

    def model_outcome(self, outcome):
        """The outcome kind as the breaker classifies it, running the predicates' mirrors:
        exclude first (raising: not excluded), then expected_exception (raising: a failure)."""
        kind = KIND[outcome]
        if not self.predicate or outcome not in CLASSIFIED | {"excluded"}:
            return kind
        if not self._mirror(self.excl_action) and outcome == "excluded":
            return "ignored"
        if self._mirror(self.pred_action):
            return "failure"
        return "success" if outcome in ("excluded", "other") else "failure"

    def model_record(self, ticket, outcome):
        kind = self.model_outcome(outcome)
        self.model.record(ticket, kind, self.clock.now)
        self.deliver()

    # ---- rules
    @rule(pred=hs.sampled_from(PRED_ACTIONS), excl=hs.sampled_from(PRED_ACTIONS),
          listener=hs.sampled_from(LISTENER_MODES))
    def hostility(self, pred, excl, listener):
        self.pred_action, self.excl_action = pred, excl
        self.listener_mode = listener

    @rule(dt=hs.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 7.0]))
    def advance(self, dt):
        self.clock.advance(dt)

    @rule(kind=hs.sampled_from(["decorated", "call", "block"]))
    def start_call(self, kind):
        expect = self.model_admit()
        if kind == "block":  # a with-block, in a context of its own: blocks interleave
            ctx = contextvars.Context()
            if isinstance(expect, tuple):
                with pytest.raises(CircuitOpenError) as ei:
                    ctx.run(self.b.__enter__)
                assert ei.value.remaining == expect[1]
            else:
                ctx.run(self.b.__enter__)
                self.inflight.append((ctx, expect, None))
            # a listener error the breaker logs keeps its traceback, whose frame keeps this
            # frame (f_back) and its locals: an abandoned block's context must not be one
            del ctx
            return
        self.start_async(kind, expect)

    def start_async(self, kind, expect):
        """An async call, driven by hand (send/throw/close; BreakerMachineOnLoop: as a task)."""
        box = [None]
        aw = self.guarded(box) if kind == "decorated" else self.b.call(_gated, box)
        if isinstance(expect, tuple):
            with pytest.raises(CircuitOpenError) as ei:
                aw.send(None)
            assert ei.value.remaining == expect[1] and ei.value.breaker is self.b
        else:
            assert aw.send(None) == "suspended"
            self.inflight.append((aw, expect, box))

    @precondition(lambda self: self.inflight)
    @rule(data=hs.data(), outcome=hs.sampled_from(OUTCOMES),
          on_del=hs.sampled_from([None, "open", "closed", "half_open"]))
    def finish_call(self, data, outcome, on_del):
        i = data.draw(hs.integers(0, len(self.inflight) - 1))
        aw, ticket, box = self.inflight.pop(i)
        if isinstance(aw, contextvars.Context):
            if outcome in ("cancel_swallowed", "cancel_converted"):
                outcome = "cancel"  # a block cannot swallow: same as a cancellation
            if outcome == "close":  # abandoned: the context dies with the block open
                if on_del is not None:  # ... and with an object whose __del__ forces it
                    b = self.b
                    aw.run(_HOSTILE_VAR.set, _OnDel(lambda: getattr(b, FORCE[on_del])()))
                del aw
                gc.collect()
                # release and force, in whichever order the collector runs them, end the same
                self.model.record(ticket, KIND[outcome], self.clock.now)
                if on_del is not None:
                    self.model_force(on_del)
                return
            exc = {"success": None, "failure": Boom(), "excluded": KeyError(),
                   "other": LookupError(), "cancel": asyncio.CancelledError(),
                   "hostile": HostileBoom()}[outcome]
            assert aw.run(self.b.__exit__, type(exc) if exc else None, exc, None) is False
            self.model_record(ticket, outcome)
            return
        self.finish_async(aw, box, outcome)
        self.model_record(ticket, outcome)

    def finish_async(self, aw, box, outcome):
        if outcome.startswith("cancel"):
            box[0] = outcome
            if outcome == "cancel_swallowed":
                with pytest.raises(StopIteration):
                    aw.throw(asyncio.CancelledError())
            else:
                with pytest.raises(Boom if outcome == "cancel_converted"
                                   else asyncio.CancelledError):
                    aw.throw(asyncio.CancelledError())
        elif outcome == "close":
            aw.close()
        else:
            with pytest.raises((StopIteration, Boom, KeyError, LookupError)):
                aw.send(outcome)

    @rule(outcome=hs.sampled_from(["success", "failure", "excluded", "other", "hostile"]),
          duration=hs.sampled_from([0.0, 0.5, 0.75, 1.5]))
    def sync_call(self, outcome, duration):
        clock = self.clock

        @self.b
        def work():
            clock.advance(duration)
            if outcome == "failure":
                raise Boom
            if outcome == "hostile":
                raise HostileBoom
            if outcome == "excluded":
                raise KeyError
            if outcome == "other":
                raise LookupError
            return "done"

        expect = self.model_admit()
        if isinstance(expect, tuple):
            with pytest.raises(CircuitOpenError) as ei:
                work()
            assert ei.value.remaining == expect[1]
            return
        try:
            work()
        except (Boom, KeyError, LookupError):
            pass
        self.model_record(expect, outcome)

    @rule(to=hs.sampled_from(["open", "closed", "half_open"]))
    def force(self, to):
        getattr(self.b, FORCE[to])()
        self.model_force(to)

    @invariant()
    def agrees(self):
        if not hasattr(self, "b"):
            return
        now = self.clock.now
        assert self.b.stats() == self.model.stats(now)
        assert self.b.remaining == self.model.remaining(now)
        assert self.b.state == self.model.effective(now)
        assert (self.b.failure_count, self.b.success_count) == self.model.counts(now)
        assert self.events == self.model.events

    @invariant()
    def conserved(self):
        if not hasattr(self, "b"):
            return
        st = self.b.stats()
        # every admitted call is settled exactly once: the unsettled ones are those in flight
        settled = st["successes"] + st["failures"] + st["ignored"]
        assert st["calls"] - settled == len(self.inflight)
        assert st["slow_calls"] <= st["successes"] + st["failures"]

    def teardown(self):
        for aw, _, _ in getattr(self, "inflight", []):
            if not isinstance(aw, contextvars.Context):
                aw.close()


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=max(150, settings.default.max_examples),
                                     stateful_step_count=max(40,
                                                             settings.default.stateful_step_count),
                                     deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])



class BreakerMachineOnLoop(BreakerMachine):
    """BreakerMachine with its async calls run as tasks on a loop (the other one drives them by
    hand, without any loop): the same rules, model and invariants; a call's outcome is the
    result its gate future gets, a cancellation is task.cancel(). The breaker itself never
    touches a loop (its clock is clock=), so what differs is how the calls are driven: by the
    loop's tasks, whose steps run in the loop's ready queue.

    Not expressible on a task: closing a waiting call's coroutine (outcome "close"). A task owns
    its coroutine; closed behind its back, the task would step a closed coroutine when its
    future completes. A loop's way to close a waiting call is to drop the task pending: the
    collector closes its coroutine (and the loop reports the task destroyed pending), and that is
    what "close" does here."""

    loop_factory = None  # set by the subclasses

    def _loop(self):
        if not hasattr(self, "loop"):
            self.loop = self.loop_factory()
            self.loop_reports = []
            self.loop.set_exception_handler(
                lambda loop, ctx: self.loop_reports.append(ctx["message"]))
        return self.loop

    def settle(self):
        self.loop.run_until_complete(settle_loop())

    def start_async(self, kind, expect):
        loop = self._loop()
        box = [None]
        gate = loop.create_future()
        aw = self.guarded(box, gate) if kind == "decorated" else self.b.call(_gated, box, gate)
        task = loop.create_task(aw)
        self.settle()
        if isinstance(expect, tuple):
            assert task.done()
            exc = task.exception()
            assert type(exc) is CircuitOpenError
            assert exc.remaining == expect[1] and exc.breaker is self.b
            gate.cancel()
        else:
            assert not task.done()
            self.inflight.append(([task, gate], expect, box))
        # a listener error the breaker logged while the task ran keeps its traceback, whose
        # frames keep this frame (f_back): it must not keep a task that "close" drops
        del task, gate, aw

    def finish_async(self, aw, box, outcome):
        task, gate = aw
        if outcome == "close":  # dropped pending: the collector closes the call
            aw.clear()  # the caller still holds the list
            del task, gate
            reports = len(self.loop_reports)
            gc.collect()
            assert self.loop_reports[reports:] == ["Task was destroyed but it is pending!"]
            return
        if outcome.startswith("cancel"):
            box[0] = outcome
            task.cancel()
        else:
            gate.set_result(outcome)
        self.settle()
        assert task.done()
        if outcome == "cancel":
            assert task.cancelled()
        elif outcome == "cancel_swallowed":
            assert task.result() == "swallowed"
        elif outcome == "success":
            assert task.result() == "success"
        else:
            exc = task.exception()
            assert isinstance(exc, {"cancel_converted": Boom, "failure": Boom,
                                    "hostile": HostileBoom, "excluded": KeyError,
                                    "other": LookupError}[outcome]), exc

    def teardown(self):
        if not hasattr(self, "loop"):
            return
        tasks = [aw[0] for aw, _, _ in self.inflight if isinstance(aw, list)]
        for task in tasks:
            task.cancel()
        self.settle()
        assert all(t.cancelled() for t in tasks)
        self.loop.close()


class BreakerMachineAsyncio(BreakerMachineOnLoop):
    loop_factory = VirtualClockLoop


class BreakerMachineUV(BreakerMachineOnLoop):
    loop_factory = SteppedVirtualUVLoop


TestBreakerModelAsyncio = BreakerMachineAsyncio.TestCase
TestBreakerModelUV = BreakerMachineUV.TestCase
TestBreakerModelAsyncio.settings = TestBreakerModelUV.settings = TestBreakerModel.settings


# leaks: tests/test_leaks.py runs breaker_family (tests/leakcheck.py) on both loops
