"""TokenBucket and AsyncLimiter.

Time-dependent behaviour runs on virtual clocks (tests/virtual_time.py), on asyncio's loop and on
uvloop: every `VT` test runs once on each. Rates, periods and start times are chosen so that the
float arithmetic is exact (powers of two), which lets the tests assert exact times and levels;
where a rate is not a power of two, the expected time is computed with the formula the bucket
documents (deficit * per / rate), so equality is still exact.
"""
import asyncio
import fractions
import decimal
import gc
import inspect
import math
import subprocess
import sys
import textwrap
import time
import warnings
from unittest import mock

import aiolimiter
import pytest
import uvloop

import aiofast
from aiofast import AsyncLimiter, TokenBucket

from helpers import (BAD_BUCKET_ARGS, BAD_TIMEOUTS, BAD_TOKEN_TYPES, BAD_TOKENS, all_started,
                     loop_hook, oracle_fixture, run_in, spin, started)
from pycompat import asyncio_iscoroutinefunction
from virtual_time import SteppedVirtualUVLoop, VirtualClockLoop, VirtualUVLoop, settle_loop

VT = pytest.mark.asyncio(loop_factories=["virtual-asyncio", "virtual-uvloop"])


def now():
    return asyncio.get_running_loop().time()


def bucket_and_now(*args, **kwargs):
    """TokenBucket(*args, **kwargs), and the running loop's time once it is made."""
    b = TokenBucket(*args, **kwargs)
    return b, now()


class Admissions:
    """Each acquire() made through it records (name, seconds since this was made) when it
    returns: the order and times of a bucket's or limiter's admissions."""

    def __init__(self, b):
        self.b = b
        self.t0 = now()
        self.order = []

    async def acquire(self, name, *args):
        await self.b.acquire(*args)
        self.order.append((name, now() - self.t0))

    @classmethod
    async def of_drained(cls, Limiter):
        """The log of a Limiter(4, 1) whose 4 tokens are taken: every acquire waits."""
        lim = Limiter(4, 1)
        await lim.acquire(4)
        return cls(lim)


class TimerSpy:
    """Wraps loop.call_at: counts the bucket's timers and the most ever pending at once."""

    def __init__(self, loop):
        self.loop = loop
        self.armed = 0
        self.fired = 0
        self.pending = []
        self.max_pending = 0
        self._orig = loop.call_at

        def call_at(when, callback, *args, context=None):
            if getattr(callback, "__name__", "") != "_wake":
                return self._orig(when, callback, *args, context=context)
            box = []

            def run(*a):
                self.fired += 1
                self.pending.remove(box[0])
                return callback(*a)

            run.__name__ = "_wake"
            h = self._orig(when, run, *args, context=context)
            box.append(h)
            self.armed += 1
            self.pending = [p for p in self.pending if not p.cancelled()]
            self.pending.append(h)
            self.max_pending = max(self.max_pending, len(self.pending))
            return h

        loop.call_at = call_at

    def live(self):
        return [p for p in self.pending if not p.cancelled()]

    def close(self):
        del self.loop.call_at

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# construction and bad input (no loop needed)


@VT
async def test_defaults():
    b = TokenBucket(10)
    assert b.rate == 10 and b.per == 1.0 and b.capacity == 10
    assert b.tokens == 10.0 and b.waiting == 0
    b = TokenBucket(5000, per=3600)
    assert (b.rate, b.per, b.capacity) == (5000, 3600, 5000)
    # a rate below one per period still holds whole tokens: capacity defaults to at least 1
    assert TokenBucket(0.5).capacity == 1
    assert TokenBucket(10, capacity=3).capacity == 3
    assert TokenBucket(10, initial=0).tokens == 0.0


@VT
async def test_fractional_capacity_and_tokens():
    b = TokenBucket(1, capacity=2.5)
    assert b.try_acquire(1.5) is True
    assert b.tokens == 1.0
    assert b.try_acquire(1.25) is False
    assert b.try_acquire(1) is True
    assert b.tokens == 0.0


@VT
async def test_exotic_numbers():
    b = TokenBucket(fractions.Fraction(10), per=decimal.Decimal("2"), capacity=True)
    assert b.capacity is True and b.rate == 10 and b.per == 2
    assert b.try_acquire(fractions.Fraction(1, 2)) is True


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    BAD_BUCKET_ARGS + [
        ((10**400,), {}, ValueError, r"rate must be a finite number"),
        ((1j,), {}, TypeError, r"rate must be a real number, not complex"),
        ((10, math.inf), {}, ValueError, r"per must be .* got inf"),
        ((10,), {"capacity": 0}, ValueError, r"capacity must be a finite number >= 1, got 0"),
        ((10,), {"capacity": math.inf}, ValueError, r"capacity must be .* got inf"),
        ((10,), {"initial": 11}, ValueError, r"initial must be .* got 11"),
        ((10,), {"loop": None}, TypeError, r"'loop' is an invalid keyword|unexpected keyword"),
        ((), {}, TypeError, r"rate"),
    ],
)
def test_bad_construction(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TokenBucket(*args, **kwargs)


@pytest.mark.parametrize("method", ["acquire", "try_acquire", "has_capacity"])
@pytest.mark.parametrize(
    "tokens, exc, match",
    BAD_TOKENS + [
        # found by the state machine's hostile amounts: too large for a float and negative
        # said "<= capacity"; a __float__ raising ValueError lost its own message
        (fractions.Fraction(-(10**400)), ValueError, r"tokens must be > 0"),
        (fractions.Fraction(10**400), ValueError, r"tokens must be <= capacity"),
        (type("NegHuge", (), {"__index__": lambda s: -(10**400)})(), ValueError,
         r"tokens must be > 0"),
        (type("Bad", (), {"__float__": lambda s: float("x")})(), ValueError,
         r"could not convert string to float"),
    ] + BAD_TOKEN_TYPES,
)
def test_bad_tokens(method, tokens, exc, match):
    b = TokenBucket(10)
    with pytest.raises(exc, match=match):
        getattr(b, method)(tokens)
    assert b.tokens == 10.0


@pytest.mark.parametrize("timeout, exc, match", BAD_TIMEOUTS)
def test_bad_timeout(timeout, exc, match):
    b = TokenBucket(10)
    with pytest.raises(exc, match=match):
        b.acquire(1, timeout=timeout)


def test_timeout_error_of_its_own_comes_out():
    class Bad:
        def __float__(self):
            raise ValueError("mine")

    b = TokenBucket(10)
    with pytest.raises(ValueError, match="mine"):  # not taken for "too large: no limit"
        b.acquire(1, timeout=Bad())


@VT
async def test_reinit_to_a_smaller_capacity_before_the_await():
    # Found by the debug checker (a waiter asking for more than the capacity): acquire()
    # checks the count when called, the bucket can be re-initialized before it is awaited (or
    # by the timeout's own __float__), and such a waiter could never be admitted.
    b = TokenBucket(8)
    co = b.acquire(4)
    b.__init__(1, initial=0)
    with pytest.raises(ValueError, match=r"tokens must be <= capacity \(1\), got 4.0"):
        await co
    assert b.waiting == 0 and b.tokens == 0.0

    class Shrinks:
        def __float__(self):
            b.__init__(2, initial=0)
            return 5.0

    b.__init__(8)
    with pytest.raises(ValueError, match=r"tokens must be <= capacity \(2\), got 4.0"):
        await b.acquire(4, timeout=Shrinks())
    assert b.waiting == 0
    await b.acquire(2)  # still usable: 2 tokens flow in within 1 s
    assert b.waiting == 0 and b.tokens == 0.0


@VT
async def test_huge_negative_timeout_means_at_once():
    # Found by reading tb_timeout_arg for the state machine: a timeout too large for a float was
    # taken as "no limit" whatever its sign, so timeout=-10**400 waited for ever.
    b, t0 = bucket_and_now(4, capacity=2, initial=0)
    for t in (-(10**400), fractions.Fraction(-(10**400)),
              type("NegHuge", (), {"__index__": lambda s: -(10**400)})()):
        with pytest.raises(TimeoutError, match="not available at once"):
            await b.acquire(1, timeout=t)
    assert now() == t0 and b.waiting == 0
    await b.acquire(1, timeout=10**400)  # positive: no limit
    assert now() == t0 + 0.25


def test_bad_call_arguments():
    b = TokenBucket(10)
    with pytest.raises(TypeError, match=r"acquire\(\) takes at most 2 arguments \(3 given\)"):
        b.acquire(1, 2, 3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'amount'"):
        b.acquire(amount=1)
    with pytest.raises(TypeError, match=r"multiple values for argument 'tokens'"):
        b.acquire(1, tokens=1)
    with pytest.raises(TypeError, match=r"try_acquire\(\) takes at most 1 argument"):
        b.try_acquire(1, 2)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'timeout'"):
        b.has_capacity(timeout=1)


def test_hostile_numbers():
    # a __float__ that raises: its own exception comes out; one that returns a str: TypeError
    # (the classes are the state machine's hostile amounts, below)
    b = TokenBucket(10)
    with pytest.raises(Boom, match="__float__"):
        TokenBucket(RaisingFloat())
    with pytest.raises(Boom, match="__float__"):
        b.try_acquire(RaisingFloat())
    with pytest.raises(TypeError):
        TokenBucket(FloatReturnsStr())
    with pytest.raises(TypeError):
        b.acquire(FloatReturnsStr())
    assert b.tokens == 10.0 and b.waiting == 0


def test_read_only_attributes():
    b = TokenBucket(10)
    for name in ("rate", "per", "capacity", "tokens", "waiting"):
        with pytest.raises(AttributeError):
            setattr(b, name, 1)


@VT
async def test_reinit():
    b = TokenBucket(10)
    b.__init__(4, per=2, capacity=8, initial=3)
    assert (b.rate, b.per, b.capacity) == (4, 2, 8)
    assert b.tokens == 3.0
    with pytest.raises(ValueError):
        b.__init__(0)


def test_uninitialized_instance_is_consistent():
    b = TokenBucket.__new__(TokenBucket)
    assert b.rate == 1 and b.capacity == 1
    assert b.try_acquire() in (True, False)
    assert b.waiting == 0


@VT
async def test_repr():
    b = TokenBucket(5000, per=3600, capacity=10, initial=2.5)
    r = repr(b)
    assert r.startswith("<aiofast.TokenBucket object at 0x")
    assert "[rate:5000/3600s, tokens:2.5" in r and "/10, waiters:0]>" in r
    assert "rate:0.5/1s" in repr(TokenBucket(0.5))


def test_signatures():
    assert str(inspect.signature(TokenBucket.acquire)) == "(self, /, tokens=1, timeout=None)"
    assert str(inspect.signature(TokenBucket.try_acquire)) == "(self, /, tokens=1)"
    assert str(inspect.signature(TokenBucket.has_capacity)) == "(self, /, tokens=1)"
    assert str(inspect.signature(TokenBucket.reset)) == "(self, /)"
    assert TokenBucket.__module__ == "aiofast"
    # AsyncLimiter: aiolimiter's parameter names, on the same C methods
    assert str(inspect.signature(AsyncLimiter.acquire)) == "(self, /, amount=1)"
    assert str(inspect.signature(AsyncLimiter.has_capacity)) == "(self, /, amount=1)"
    assert str(inspect.signature(aiolimiter.AsyncLimiter.acquire)).startswith("(self, amount")


def test_exports():
    assert aiofast.TokenBucket is TokenBucket
    assert aiofast.AsyncLimiter is AsyncLimiter
    assert issubclass(AsyncLimiter, TokenBucket)
    assert {"TokenBucket", "AsyncLimiter"} <= set(aiofast.__all__)


def test_unawaited_acquire_takes_nothing():
    b = TokenBucket(10)
    aw = b.acquire(5)
    assert asyncio.iscoroutine(aw)
    with pytest.warns(RuntimeWarning, match="coroutine 'TokenBucket.acquire' was never awaited"):
        del aw
    assert b.tokens == 10.0


def test_sync_use_without_a_loop():
    b = TokenBucket(1, per=1e9, capacity=3)
    assert b.has_capacity(3) is True
    assert b.try_acquire(2) is True
    assert b.has_capacity(2) is False and b.try_acquire(2) is False
    b.reset()
    assert b.try_acquire(3) is True


# ---------------------------------------------------------------------------------------------
# the awaitable on the real loops


@pytest.mark.asyncio
async def test_fast_path_does_not_yield():
    b = TokenBucket(10)
    order = []

    async def other():
        order.append("other")

    t = asyncio.get_running_loop().create_task(other())
    assert await b.acquire() is None
    async with b as v:
        assert v is None
    order.append("us")
    await t
    assert order == ["us", "other"]
    assert b.waiting == 0


@pytest.mark.asyncio
async def test_acquire_is_a_coroutine_for_tasks():
    b = TokenBucket(10, initial=0, per=1 / 1024)
    aw = b.acquire()
    assert asyncio.iscoroutine(aw)
    await asyncio.create_task(aw)
    await asyncio.wait_for(b.acquire(2), 10)


@pytest.mark.asyncio
async def test_native_clock_is_time_monotonic():
    """Where the bucket reads the clock natively, it reads what loop.time() would return."""
    loop = asyncio.get_running_loop()
    b = TokenBucket(10)
    native_expected = type(loop).time is asyncio.BaseEventLoop.time
    for _ in range(3):
        t1 = time.monotonic()
        t, native = b._clock()
        t2 = time.monotonic()
        assert native is native_expected
        if native:
            assert t1 <= t <= t2 <= loop.time()
        else:
            assert t == loop.time()  # uvloop: libuv's cached loop time, read through time()


# ---------------------------------------------------------------------------------------------
# the clock: patched loop.time is followed (real loops)


def _fake_clock(start=1e9):
    # far ahead of any real clock: on uvloop the patched and the real readings are one clock
    # (the loop's), and the bucket never lets time run backwards
    box = [start]
    return box, (lambda: box[0])


@pytest.mark.asyncio
async def test_instance_patch_of_loop_time_is_followed():
    loop = asyncio.get_running_loop()
    b = TokenBucket(2, initial=0)
    b._clock()
    b._clock()  # warm whatever the bucket remembers about this loop
    box, fake = _fake_clock()
    with mock.patch.object(loop, "time", fake):
        assert b._clock() == (1e9, False)
        b.reset()  # starts over now, on the fake clock
        box[0] += 1.5
        assert b.tokens == 2.0  # capacity
        assert b.try_acquire(2) is True
        box[0] += 0.25
        assert b.tokens == 0.5
    t, native = b._clock()
    assert native is (type(loop).time is asyncio.BaseEventLoop.time)


@pytest.mark.asyncio
async def test_class_patch_of_loop_time_is_followed():
    loop = asyncio.get_running_loop()
    b = TokenBucket(2)
    b._clock()
    box, fake = _fake_clock(7.0)
    with mock.patch.object(type(loop), "time", lambda self: box[0]):
        assert b._clock() == (7.0, False)
    if isinstance(loop, asyncio.BaseEventLoop):
        with mock.patch.object(asyncio.BaseEventLoop, "time", lambda self: box[0]):
            assert b._clock() == (7.0, False)
        assert b._clock()[1] is True


@pytest.mark.asyncio
async def test_patched_time_module_is_followed():
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.BaseEventLoop):
        assert b"uvloop" in type(loop).__module__.encode()
        return  # uvloop's clock is libuv's: no time.monotonic involved
    b = TokenBucket(2)
    assert b._clock()[1] is True
    with mock.patch("time.monotonic", lambda: 42.0):
        assert b._clock() == (42.0, False)
    assert b._clock()[1] is True

    class FakeTime:
        @staticmethod
        def monotonic():
            return 43.0

    with mock.patch("asyncio.base_events.time", FakeTime):
        assert b._clock() == (43.0, False)
    assert b._clock()[1] is True
    code = asyncio.BaseEventLoop.time.__code__
    try:
        asyncio.BaseEventLoop.time.__code__ = (lambda self: 44.0).__code__
        assert b._clock() == (44.0, False)
    finally:
        asyncio.BaseEventLoop.time.__code__ = code
    assert b._clock()[1] is True


@pytest.mark.asyncio
async def test_class_assignment_is_followed():
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.BaseEventLoop):
        return  # uvloop.Loop is not BaseEventLoop: never native, nothing to switch
    b = TokenBucket(2)
    assert b._clock()[1] is True
    orig = type(loop)

    class Patched(orig):
        def time(self):
            return 99.0

    loop.__class__ = Patched
    try:
        assert b._clock() == (99.0, False)
    finally:
        loop.__class__ = orig
    assert b._clock()[1] is True


@pytest.mark.asyncio
async def test_instance_dict_replacement_is_followed():
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.BaseEventLoop):
        return  # uvloop.Loop instances have no __dict__ to replace
    b = TokenBucket(2)
    assert b._clock()[1] is True
    saved = loop.__dict__
    loop.__dict__ = dict(saved, time=lambda: 31.0)
    try:
        assert b._clock() == (31.0, False)
    finally:
        loop.__dict__ = saved
    assert b._clock()[1] is True


def test_running_loop_per_thread():
    """The bucket finds the loop running in the calling thread, whatever ran before."""
    import threading

    b = TokenBucket(2)
    out = []

    async def probe():
        out.append(b._clock())

    def in_thread(start):
        loop = VirtualClockLoop(start=start)
        try:
            loop.run_until_complete(probe())
        finally:
            loop.close()

    real = asyncio.new_event_loop()
    try:
        for start in (5.0, 6.0):
            real.run_until_complete(probe())
            th = threading.Thread(target=in_thread, args=(start,))
            th.start()
            th.join()
            real.run_until_complete(probe())
        in_thread(7.0)
        real.run_until_complete(probe())
    finally:
        real.close()
    virtual = [o for o in out if not o[1]]
    assert virtual == [(5.0, False), (6.0, False), (7.0, False)]
    assert [o[1] for o in out] == [True, False, True, True, False, True, False, True]
    with pytest.raises(RuntimeError, match="no running event loop"):
        b._clock()


def test_forked_child_sees_no_running_loop():
    code = textwrap.dedent(
        """
        import asyncio, os
        from aiofast import TokenBucket

        async def main():
            b = TokenBucket(2)
            b._clock(); b._clock()  # whatever the bucket caches about the running loop
            pid = os.fork()
            if pid == 0:  # asyncio: no loop runs in a forked child
                try:
                    b._clock()
                except RuntimeError as e:
                    os._exit(0 if "no running event loop" in str(e) else 2)
                os._exit(1)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)

        print(asyncio.run(main()))
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "0", p.stdout + p.stderr


@pytest.mark.asyncio
async def test_subclass_time_is_followed():
    class Sub(asyncio.SelectorEventLoop):
        def time(self):
            return 12.5

    b = TokenBucket(2)

    async def main():
        return b._clock()

    sub = Sub()
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, sub.run_until_complete,
                                                                  main()) == (12.5, False)
    finally:
        sub.close()


@pytest.mark.asyncio
async def test_bad_loop_time():
    loop = asyncio.get_running_loop()
    b = TokenBucket(2, initial=0)
    with mock.patch.object(loop, "time", lambda: math.nan):
        with pytest.raises(ValueError, match="loop.time\\(\\) returned nan: a clock must return a finite"):
            b.try_acquire()
    with mock.patch.object(loop, "time", lambda: "soon"):
        with pytest.raises(TypeError):
            b.try_acquire()

    def boom():
        raise ZeroDivisionError("clock")

    with mock.patch.object(loop, "time", boom):
        with pytest.raises(ZeroDivisionError, match="clock"):
            await b.acquire()
        with pytest.raises(ZeroDivisionError):
            repr(b) and b.tokens
    assert b.waiting == 0


# ---------------------------------------------------------------------------------------------
# virtual time: refill arithmetic, bursts, waiting


@VT
async def test_refill_arithmetic():
    t0 = now()
    b = TokenBucket(8, per=2, capacity=16, initial=0)  # 4 tokens per second
    assert b.tokens == 0.0
    await asyncio.sleep(0.25)
    assert b.tokens == 1.0
    await asyncio.sleep(1.75)
    assert b.tokens == 8.0
    await asyncio.sleep(100)
    assert b.tokens == 16.0  # capped
    assert now() == t0 + 102


@VT
async def test_burst_then_wait_exactly():
    b, t0 = bucket_and_now(4, capacity=3)
    for _ in range(3):
        await b.acquire()
    assert now() == t0 and b.tokens == 0.0
    await b.acquire()
    assert now() == t0 + 0.25
    await b.acquire(2)
    assert now() == t0 + 0.75
    assert b.tokens == 0.0


@VT
async def test_github_rate():
    b, t0 = bucket_and_now(5000, per=3600)
    for _ in range(5000):
        assert b.try_acquire()
    assert not b.try_acquire()
    await b.acquire()
    assert now() == t0 + 1 * 3600 / 5000
    await b.acquire(3)
    assert now() == (t0 + 3600 / 5000) + 3 * 3600 / 5000


@VT
async def test_initial_tokens_and_fractional_waits():
    b, t0 = bucket_and_now(2, capacity=4, initial=1.5)
    await b.acquire(1.5)
    assert now() == t0
    await b.acquire(0.5)
    assert now() == t0 + 0.25
    await b.acquire(4)
    assert now() == t0 + 2.25


@VT
async def test_one_timer_no_polling():
    with TimerSpy(asyncio.get_running_loop()) as spy:
        b = TokenBucket(4, capacity=8, initial=0)
        log = Admissions(b)
        await asyncio.gather(*(log.acquire(i, n) for i, n in enumerate([1, 4, 1, 2, 1])))
        assert log.order == [(0, 0.25), (1, 1.25), (2, 1.5), (3, 2.0), (4, 2.25)]
        # one timer per admission, never two at once, none left behind
        assert spy.max_pending == 1
        assert spy.fired == 5
        assert spy.live() == []


@VT
async def test_rounding_never_spins():
    """Rates that are not powers of two leave float deficits below the clock's resolution
    (when == now): a deficit that flows in within one tick of the clock counts as none, so each
    admission takes exactly one timer, and the schedule does not drift. (aiolimiter livelocks
    here on a virtual clock: its next wake-up time rounds to now, forever.)"""
    with TimerSpy(asyncio.get_running_loop()) as spy:
        for rate, per in ((1000, 1), (3, 0.7), (5000, 3600), (1e6, 1)):
            b = TokenBucket(rate, per=per, capacity=1, initial=0)
            t = now()
            fired = spy.fired
            for _ in range(50):
                await b.acquire()
                t = t + 1 * per / rate
                assert now() == t
            assert spy.fired - fired == 50


@VT
async def test_fifo_large_request_not_overtaken():
    b = TokenBucket(4, capacity=8, initial=0)
    log = Admissions(b)
    order, w = log.order, log.acquire
    big = await started(w("big", 8))
    smalls = await all_started(w(f"s{i}", 1) for i in range(3))
    assert b.waiting == 4
    await asyncio.sleep(1)  # 4 tokens in: enough for every small one, but the big one is first
    assert order == [] and b.tokens == 4.0
    assert b.has_capacity(1) is False and b.try_acquire(1) is False
    await asyncio.gather(big, *smalls)
    assert order == [("big", 2.0), ("s0", 2.25), ("s1", 2.5), ("s2", 2.75)]


@VT
async def test_newcomer_queues_behind_waiters():
    b = TokenBucket(4, capacity=4, initial=0)
    log = Admissions(b)
    order, w = log.order, log.acquire
    first = asyncio.create_task(w("first", 4))
    await asyncio.sleep(0.75)  # 3 tokens: not enough for first
    second = await started(w("second", 1))
    assert b.waiting == 2 and order == []
    await asyncio.gather(first, second)
    assert order == [("first", 1.0), ("second", 1.25)]


@VT
async def test_thousands_of_waiters():
    with TimerSpy(asyncio.get_running_loop()) as spy:
        n = 3000
        b, t0 = bucket_and_now(1024, capacity=1, initial=0)
        done = []

        async def w(i):
            await b.acquire()
            done.append((i, now()))

        tasks = [asyncio.create_task(w(i)) for i in range(n)]
        await asyncio.gather(*tasks)
        assert [i for i, _ in done] == list(range(n))
        assert [t for _, t in done] == [t0 + (i + 1) / 1024 for i in range(n)]
        assert spy.max_pending == 1 and spy.fired == n


@VT
async def test_waiters_woken_only_when_they_proceed():
    b = TokenBucket(2, capacity=10, initial=0)
    wakes = []

    async def w(i, n):
        await b.acquire(n)
        wakes.append(i)

    tasks = [asyncio.create_task(w(i, n)) for i, n in enumerate([5, 1, 3])]
    await asyncio.sleep(2.25)
    assert wakes == []  # 4.5 tokens: the head (5) cannot go, nobody is woken
    await asyncio.sleep(0.25)
    await spin()
    assert wakes == [0]
    await asyncio.gather(*tasks)
    assert wakes == [0, 1, 2] and b.tokens == 0.0


class EarlyTimers(VirtualClockLoop):
    """Runs every timer `early` seconds before its time, as uvloop's millisecond rounding can."""

    early = 0.0005

    def call_at(self, when, callback, *args, context=None):
        return super().call_at(when - self.early, callback, *args, context=context)


def admission_times(loop, n):
    """On loop (closed after): the start, and when each of n acquire()s returned, of a bucket
    at 4 tokens/s holding at most 1, starting empty."""

    async def main():
        b, t0 = bucket_and_now(4, capacity=1, initial=0)
        times = []
        for _ in range(n):
            await b.acquire()
            times.append(now())
        return t0, times

    return run_in(loop, main)


def test_timer_that_runs_early_counts_as_on_time():
    t0, times = admission_times(EarlyTimers(), 8)
    # each admitted when its (early) timer ran: no re-arm, no spin; and the schedule does
    # not drift: the k-th token still arrives at k/4 s (less the loop's earliness)
    assert times == [(t0 + (k + 1) / 4) - EarlyTimers.early for k in range(8)]


class CoarseEarlyTimers(EarlyTimers):
    """A loop whose clock resolution is 10 ms and which runs timers 5 ms early (as asyncio
    does on a platform with a coarse clock)."""

    early = 0.005

    def __init__(self):
        super().__init__()
        self._clock_resolution = 0.01


def test_early_timer_allowance_follows_the_loops_clock_resolution():
    t0, times = admission_times(CoarseEarlyTimers(), 4)
    assert times == [(t0 + (k + 1) / 4) - 0.005 for k in range(4)]


@VT
async def test_early_timers_cannot_run_the_bucket_ahead():
    """A loop that runs timers at once when they are due within its granularity (uvloop runs
    delays under half a millisecond as call_soon) must not let admissions run ahead of the
    clock by more than the allowance: 1 ms, here 16 tokens at 16384 tokens/s."""
    loop = asyncio.get_running_loop()
    orig = loop.call_at

    def call_at(when, callback, *args, context=None):
        if when - loop.time() < 0.0005:
            return loop.call_soon(callback, *args, context=context)
        return orig(when, callback, *args, context=context)

    loop.call_at = call_at
    try:
        rate = 16384
        b, t0 = bucket_and_now(rate, capacity=1, initial=0)
        n = 0
        while now() == t0:  # the clock stands still while the loop is busy
            await b.acquire()
            n += 1
            if n > 1000:
                break
        # every token it gave out before the clock moved flowed in by t0 + 1 ms, at most
        assert 1 < n <= rate * 0.001 + 1
    finally:
        del loop.call_at


# ---------------------------------------------------------------------------------------------
# timeouts


@VT
async def test_timeout_takes_nothing():
    b, t0 = bucket_and_now(4, capacity=8, initial=0)
    with pytest.raises(TimeoutError, match=r"acquire\(8\.0\) timed out after 1\.0 s"):
        await b.acquire(8, timeout=1)
    assert now() == t0 + 1
    assert b.tokens == 4.0 and b.waiting == 0
    await b.acquire(8, timeout=1)
    assert now() == t0 + 2


@VT
async def test_timeout_of_a_waiter_behind_the_head():
    with TimerSpy(asyncio.get_running_loop()) as spy:
        b, t0 = bucket_and_now(4, capacity=8, initial=0)
        head = await started(b.acquire(8))
        behind = asyncio.create_task(b.acquire(1, timeout=0.5))
        late = await started(b.acquire(1, timeout=5))
        with pytest.raises(TimeoutError):
            await behind
        assert now() == t0 + 0.5 and b.waiting == 2
        await head
        assert now() == t0 + 2
        await late
        assert now() == t0 + 2.25
        assert spy.max_pending == 1 and spy.live() == []


@VT
async def test_timeout_zero_and_negative():
    b, t0 = bucket_and_now(4, capacity=2)
    await b.acquire(2, timeout=0)  # available: no wait needed
    for t in (0, -1, -math.inf):
        with pytest.raises(TimeoutError, match="not available at once"):
            await b.acquire(1, timeout=t)
    assert now() == t0 and b.tokens == 0.0 and b.waiting == 0
    await b.acquire(1, timeout=math.inf)
    assert now() == t0 + 0.25


@VT
async def test_timeout_when_tokens_arrive_exactly_at_the_deadline():
    b, t0 = bucket_and_now(4, capacity=4, initial=0)
    await b.acquire(2, timeout=0.5)  # ready at 0.5 == deadline: tokens win
    assert now() == t0 + 0.5


@VT
async def test_timeout_with_asyncio_timeout_also_works():
    b, t0 = bucket_and_now(4, capacity=4, initial=0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(b.acquire(4), 0.5)
    assert now() == t0 + 0.5 and b.waiting == 0
    await b.acquire(4)
    assert now() == t0 + 1.0


@VT
async def test_cancel_the_waiter_with_the_earliest_deadline():
    with TimerSpy(asyncio.get_running_loop()) as spy:
        b, t0 = bucket_and_now(4, capacity=8, initial=0)
        head = asyncio.create_task(b.acquire(8))
        timed = await started(b.acquire(1, timeout=0.5))
        timed.cancel()
        await spin()
        assert b.waiting == 1
        await head
        assert now() == t0 + 2
        assert spy.max_pending == 1 and spy.live() == []
        assert spy.fired <= 2  # the head's, and at most one for the stale deadline


@VT
async def test_many_timeouts_compact():
    b = TokenBucket(1, capacity=1, initial=0)
    # many waiters with long timeouts that succeed quickly: their deadline entries go stale
    t0 = now()
    for i in range(200):
        await b.acquire(1, timeout=3600)
    assert now() == t0 + 200
    # and many that time out, behind a head that never can proceed in time
    head = asyncio.create_task(b.acquire(1))
    tasks = [asyncio.create_task(b.acquire(1, timeout=0.5 + i / 1024)) for i in range(100)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    await head
    assert now() == t0 + 201 and b.waiting == 0


# ---------------------------------------------------------------------------------------------
# cancellation


@VT
async def test_cancel_head_lets_the_next_go():
    b, t0 = bucket_and_now(4, capacity=8, initial=0)
    head = await started(b.acquire(8))
    nxt = asyncio.create_task(b.acquire(2))
    await asyncio.sleep(1)  # 4 tokens
    head.cancel()
    await spin()
    assert nxt.done() and now() == t0 + 1
    assert head.cancelled()
    assert b.tokens == 2.0 and b.waiting == 0


@VT
async def test_cancel_middle_waiter():
    b, t0 = bucket_and_now(4, capacity=8, initial=0)
    order = []

    caught = []

    async def w(name, n):
        try:
            await b.acquire(n)
        except asyncio.CancelledError as e:
            caught.append(e.args)  # the very exception the task threw in, message and all
            raise
        order.append((name, now() - t0))

    a = asyncio.create_task(w("a", 2))
    m = asyncio.create_task(w("m", 4))
    c = await started(w("c", 1))
    m.cancel("go away")
    with pytest.raises(asyncio.CancelledError):
        await m
    assert caught == [("go away",)]
    await asyncio.gather(a, c)
    assert order == [("a", 0.5), ("c", 0.75)]
    assert b.waiting == 0


@VT
async def test_cancel_after_being_admitted_gives_tokens_back():
    b, t0 = bucket_and_now(4, capacity=4, initial=0)
    first = asyncio.create_task(b.acquire(2))
    second = asyncio.create_task(b.acquire(2))
    await asyncio.sleep(0.5)  # first admitted now: its future holds a result, its task not run
    assert b.waiting == 1
    first.cancel()
    await spin()
    # first never took its 2 tokens: second (admitted at 1.0 otherwise) goes now
    assert first.cancelled()
    assert second.done() and now() == t0 + 0.5
    assert b.tokens == 0.0


@VT
async def test_cancel_at_every_point_conserves_tokens():
    """Cancel waiter k after a delay d, for a grid of (k, d): whatever is cancelled takes
    nothing, every other waiter is admitted in order, and the tokens add up exactly."""
    rate, cap = 8, 64
    for k in range(4):
        for d in (0, 0.125, 0.25, 0.375, 0.5, 1.0):
            b, t0 = bucket_and_now(rate, capacity=cap, initial=0)
            got = []

            async def w(i, n):
                await b.acquire(n)
                got.append((i, n))

            amounts = [2, 3, 1, 2]
            tasks = await all_started(w(i, n) for i, n in enumerate(amounts))
            await asyncio.sleep(d)
            tasks[k].cancel()
            res = await asyncio.gather(*tasks, return_exceptions=True)
            elapsed = now() - t0
            taken = sum(n for _, n in got)
            assert [i for i, _ in got] == sorted(i for i, _ in got)
            assert b.tokens + taken == rate * elapsed  # no clamp: cap is far away
            cancelled = isinstance(res[k], asyncio.CancelledError)
            assert cancelled == (k not in [i for i, _ in got])
            assert b.waiting == 0


@VT
async def test_throw_and_close_leave_the_line():
    b = TokenBucket(4, capacity=4, initial=0)
    aw = b.acquire(4)
    fut = aw.send(None)
    assert isinstance(fut, asyncio.Future) and b.waiting == 1
    with pytest.raises(KeyError):
        aw.throw(KeyError("x"))
    assert b.waiting == 0
    aw2 = b.acquire(4)
    aw2.send(None)
    assert b.waiting == 1
    aw2.close()
    assert b.waiting == 0
    await b.acquire(4)


@VT
async def test_mass_cancellation():
    b = TokenBucket(1, capacity=1, initial=0)
    tasks = await all_started(b.acquire() for _ in range(2000))
    assert b.waiting == 2000
    for t in tasks[:-1]:
        t.cancel()
    await spin()
    assert b.waiting == 1
    t0 = now()
    await tasks[-1]
    assert now() == t0 + 1


@VT
async def test_dead_head_does_not_block_a_newcomer():
    b = TokenBucket(4, capacity=4)
    head = asyncio.create_task(b.acquire(4))  # takes the 4 at once when it runs
    await spin()
    blocked = await started(b.acquire(4))
    blocked.cancel()  # its future is cancelled; the task has not run its cleanup yet
    await asyncio.sleep(1)
    assert b.try_acquire(4) is True
    await head
    assert blocked.cancelled()


# ---------------------------------------------------------------------------------------------
# async with, decorator, reset, repr


@VT
async def test_async_with():
    b, t0 = bucket_and_now(4, capacity=1)
    for i in range(3):
        async with b as v:
            assert v is None
    assert now() == t0 + 0.5
    with pytest.raises(KeyError):
        async with b:
            raise KeyError
    assert now() == t0 + 0.75 and b.tokens == 0.0


@VT
async def test_decorator():
    b = TokenBucket(4, capacity=1)

    @b
    async def fetch(x, *, y=0):
        """Fetch x."""
        await asyncio.sleep(0)
        return x + y

    t0 = now()
    assert await fetch(1) == 1
    assert await fetch(1, y=2) == 3
    assert now() == t0 + 0.25
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch x."
    assert fetch.__wrapped__.__name__ == "fetch" and fetch.bucket is b
    assert str(inspect.signature(fetch)) == "(x, *, y=0)"
    assert asyncio_iscoroutinefunction(fetch)
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(fetch)
    assert "rate-limited" in repr(fetch)

    @b
    async def fail():
        raise KeyError("no")

    with pytest.raises(KeyError):
        await fail()
    assert now() == t0 + 0.5  # the token is spent even though it raised
    with pytest.raises(TypeError):
        await fetch()  # called (after the token) with a missing argument
    assert now() == t0 + 0.75
    t0 += 0.25
    results = await asyncio.gather(*(fetch(i) for i in range(4)))
    assert results == [0, 1, 2, 3] and now() == t0 + 1.5


@VT
async def test_decorator_on_methods_and_cancellation():
    b = TokenBucket(4, capacity=1, initial=0)
    calls = []

    class Client:
        @b
        async def get(self, path):
            calls.append(path)
            return (self, path)

    c = Client()
    t0 = now()
    assert await c.get("/a") == (c, "/a")
    assert await Client.get(c, "/b") == (c, "/b")
    assert now() == t0 + 0.5
    t = await started(c.get("/never"))
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert calls == ["/a", "/b"] and b.waiting == 0
    # cancelled before it ever ran: nothing called, no "never awaited" warning
    t = asyncio.create_task(c.get("/never2"))
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert calls == ["/a", "/b"]


@VT
async def test_decorator_cancelled_while_running():
    b = TokenBucket(4, capacity=4)
    started = []

    @b
    async def slow():
        started.append(now())
        await asyncio.sleep(10)

    t0 = now()
    t = asyncio.create_task(slow())
    await asyncio.sleep(0.125)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert started == [t0] and b.waiting == 0
    assert b.tokens == 3.5  # the token it spent stays spent: 4 - 1 + 0.5


def test_decorator_bad_use():
    b = TokenBucket(4)
    with pytest.raises(TypeError, match="decorates an async function, not int"):
        b(3)
    with pytest.raises(TypeError, match="decorates one async function"):
        b(print, print)

    @b
    def not_async():
        return 3

    with pytest.raises(TypeError, match="can't be used in 'await' expression"):
        asyncio.run(not_async())


@VT
async def test_reset():
    b, t0 = bucket_and_now(4, capacity=4, initial=1)
    w = asyncio.create_task(b.acquire(4))
    await asyncio.sleep(0.5)  # 3 tokens
    b.reset()  # back to initial (1): the waiter stays
    await spin()
    assert not w.done() and b.tokens == 1.0
    await w
    assert now() == t0 + 1.25
    full = TokenBucket(4, capacity=4)
    await full.acquire(4)
    full.reset()
    assert full.tokens == 4.0


@VT
async def test_repr_shows_waiters():
    b = TokenBucket(4, capacity=4, initial=0)
    tasks = [asyncio.create_task(b.acquire(4)) for _ in range(3)]
    await asyncio.sleep(0.5)
    assert "[rate:4/1s, tokens:2/4, waiters:3]" in repr(b)
    await asyncio.gather(*tasks)


# ---------------------------------------------------------------------------------------------
# loops: binding, closed loops, clock switches


def test_bound_to_a_different_loop():
    b = TokenBucket(4, capacity=4, initial=0)
    a, c = VirtualClockLoop(), VirtualClockLoop()
    try:
        t = a.create_task(b.acquire(4))
        a.run_until_complete(asyncio.sleep(0))
        assert b.waiting == 1

        async def other():
            assert b.try_acquire(0.5) is False  # fast paths never check the loop
            with pytest.raises(RuntimeError, match="is bound to a different event loop"):
                await b.acquire(1)

        c.run_until_complete(other())
        a.run_until_complete(t)
    finally:
        a.close()
        c.close()


def left_on_a_closed_loop(make, n):
    """A bucket (4 tokens/s, capacity 4, empty) with n waiters on a loop of make() that was
    then closed: their tasks cancelled, as asyncio.run would, but their cleanup never run (the
    loop stops there)."""
    b = TokenBucket(4, capacity=4, initial=0)
    a = make()
    tasks = [a.create_task(b.acquire(4)) for _ in range(n)]
    a.run_until_complete(asyncio.sleep(0))
    assert b.waiting == n
    for t in tasks:
        t.cancel()
    a.close()
    return b


def run_then_collect(loop, main):
    try:
        return run_in(loop, main)
    finally:
        gc.collect()


@pytest.mark.parametrize("make", [VirtualClockLoop, VirtualUVLoop], ids=["asyncio", "uvloop"])
def test_closed_loop_rebinds_cleanly(make):
    b = left_on_a_closed_loop(make, 3)

    async def again():
        t0 = now()
        await b.acquire(4)  # the dead waiters do not stand in line any more
        return now() - t0, b.waiting

    waited, waiting = run_then_collect(make(), again)
    assert waited <= 1.0
    assert waiting == 0


@pytest.mark.parametrize("make", [VirtualClockLoop, VirtualUVLoop], ids=["asyncio", "uvloop"])
def test_closed_loop_waiters_do_not_block_try_acquire(make):
    b = left_on_a_closed_loop(make, 2)

    async def later():
        assert b.tokens == 0.0  # the bucket's stamp moves to this loop's clock
        await asyncio.sleep(1)
        return b.try_acquire(4), b.waiting

    assert run_then_collect(make(), later) == (True, 0)


def test_clock_switch_adds_nothing_for_the_gap():
    b = TokenBucket(4, capacity=8, initial=0)
    a = VirtualClockLoop(start=1_000_000.0)
    c = VirtualClockLoop(start=10.0)
    try:
        a.run_until_complete(asyncio.sleep(1))

        async def level():
            return b.tokens

        assert a.run_until_complete(level()) == 0.0  # made outside: restarts on a's clock
        a.run_until_complete(asyncio.sleep(1))
        assert a.run_until_complete(level()) == 4.0
        # c's clock is a million seconds behind: no refill for the gap, nothing lost either
        assert c.run_until_complete(level()) == 4.0
        c.run_until_complete(asyncio.sleep(0.5))
        assert c.run_until_complete(level()) == 6.0
    finally:
        a.close()
        c.close()


def test_no_running_loop_reads_the_last_loops_clock():
    b_loop = VirtualClockLoop()
    try:

        async def make():
            return TokenBucket(4, per=3600, capacity=8, initial=0)  # one token in 15 minutes

        b = b_loop.run_until_complete(make())
        b_loop.run_until_complete(asyncio.sleep(3600))
        assert b.tokens == 4.0  # no loop runs: the bucket reads b_loop's (virtual) clock
    finally:
        b_loop.close()
    assert b.try_acquire(1)  # closed: back to time.monotonic(), which restarts the stamp
    assert not b.try_acquire(3.5)  # nothing for the jump between clocks


# ---------------------------------------------------------------------------------------------
# re-entrancy


@VT
async def test_reentrant_loop_callbacks():
    """A loop whose call_soon re-enters the bucket while it wakes waiters."""
    b = TokenBucket(4, capacity=8, initial=0)
    seen = []

    def before_call_soon(*args):
        seen.append((b.try_acquire(1), b.waiting, b.tokens))
        b.reset()

    tasks = await all_started(b.acquire(n) for n in (2, 1, 3))
    with loop_hook("call_soon", before_call_soon):
        await asyncio.sleep(0.5)
        await asyncio.gather(*tasks)
    assert seen and b.waiting == 0
    assert 0 <= b.tokens <= 8


@VT
async def test_reentrant_timer_arming():
    """A loop whose call_at re-enters the bucket while it arms the timer."""
    b = TokenBucket(4, capacity=8, initial=0)
    depth = []

    def before_call_at(*args):
        depth.append(1)
        if len(depth) < 3:
            asyncio.ensure_future(b.acquire(1))  # a waiter arrives while the timer is armed
            b.has_capacity()

    with loop_hook("call_at", before_call_at):
        await b.acquire(2)
    await asyncio.sleep(2)
    assert b.waiting == 0


# ---------------------------------------------------------------------------------------------
# aiolimiter: the same scenarios on aiolimiter.AsyncLimiter and ours


Limiter = oracle_fixture("limiter", "Limiter")


@VT
async def test_limiter_burst_then_rate(Limiter):
    lim = Limiter(4, 1)
    t0 = now()
    for _ in range(4):
        async with lim as v:
            assert v is None
    assert now() == t0
    await lim.acquire()
    assert now() == t0 + 0.25
    for _ in range(8):
        await lim.acquire()
    assert now() == t0 + 2.25


@VT
async def test_limiter_attributes_and_defaults(Limiter):
    lim = Limiter(10)
    assert lim.max_rate == 10 and lim.time_period == 60
    lim = Limiter(8, 2)
    assert (lim.max_rate, lim.time_period) == (8, 2)
    assert lim.has_capacity() and lim.has_capacity(8) and not lim.has_capacity(9)
    assert lim.has_capacity(0)
    await lim.acquire(8)
    assert not lim.has_capacity()
    await asyncio.sleep(0.25)
    assert lim.has_capacity() and not lim.has_capacity(2)


@VT
async def test_limiter_amounts(Limiter):
    lim = Limiter(4, 1)
    t0 = now()
    await lim.acquire(0)
    await asyncio.create_task(lim.acquire(0))
    with pytest.raises(ValueError):
        await lim.acquire(5)
    with pytest.raises(ValueError):
        await lim.acquire(-1)
    with pytest.raises(ValueError):
        await lim.acquire(math.nan)
    await lim.acquire(4)
    await lim.acquire(amount=2)
    assert now() == t0 + 0.5


@VT
async def test_limiter_fifo_equal_amounts(Limiter):
    log = await Admissions.of_drained(Limiter)
    order, w = log.order, log.acquire
    await asyncio.gather(*(w(i) for i in range(6)))
    assert order == [(i, (i + 1) / 4) for i in range(6)]


@VT
async def test_limiter_cancellation_keeps_capacity(Limiter):
    lim = Limiter(4, 1)
    await lim.acquire(4)
    t0 = now()
    a = asyncio.create_task(lim.acquire())
    b = await started(lim.acquire())
    a.cancel()
    await b
    assert now() == t0 + 0.25
    await lim.acquire(1)
    assert now() == t0 + 0.5


@VT
async def test_limiter_long_run_rate(Limiter):
    lim = Limiter(16, 2)
    t0 = now()
    n = 0
    while now() - t0 < 10:
        await lim.acquire()
        n += 1
    assert n == 16 + 8 * 10  # the burst, then 8 per second


@VT
async def test_limiter_smaller_request_goes_first(Limiter):
    # aiolimiter's rules: a newcomer takes capacity that is there, even past a larger waiter,
    # whose wait then grows (the timer is re-armed for it)
    lim = Limiter(4, 1)
    await lim.acquire(1)  # 3 left
    t0 = now()
    big = asyncio.create_task(lim.acquire(4))  # needs 1 more: 0.25 s
    await spin()
    assert not big.done()
    await lim.acquire(1)  # 2 left: goes at once, past the waiter
    assert now() == t0
    await big  # needs 2 more now: 0.5 s
    assert now() == t0 + 0.5


@VT
async def test_limiter_has_capacity_ignores_waiters(Limiter):
    lim = Limiter(4, 1)
    await lim.acquire(2)
    big = await started(lim.acquire(4))
    assert not big.done()
    assert lim.has_capacity(2) and lim.has_capacity() and not lim.has_capacity(3)
    assert lim.has_capacity(0) and lim.has_capacity(-1) and not lim.has_capacity(5)
    assert not lim.has_capacity(math.nan)
    await big


@VT
async def test_limiter_waiters_served_smallest_amount_first(Limiter):
    log = await Admissions.of_drained(Limiter)
    order, w = log.order, log.acquire
    tasks = []
    for name, amount in [("a3", 3), ("b2", 2), ("c1", 1), ("d2", 2), ("e1", 1)]:
        tasks.append(asyncio.create_task(w(name, amount)))
        await spin()
    await asyncio.gather(*tasks)
    assert order == [("c1", 0.25), ("e1", 0.5), ("b2", 1.0), ("d2", 1.5), ("a3", 2.25)]


@VT
async def test_limiter_bad_amount_raises_when_awaited(Limiter):
    lim = Limiter(4, 1)
    for amount in (5, -1, math.nan, 10**400):
        aw = lim.acquire(amount)  # no error yet: acquire is a coroutine
        with pytest.raises(ValueError, match="Amount must be a number between 0 and the maximum"):
            await aw
    task = asyncio.create_task(lim.acquire(5))
    with pytest.raises(ValueError):
        await task
    assert lim.has_capacity(4)  # nothing taken


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_limiter_reused_across_loops_warns(Limiter, new_loop):
    lim = Limiter(8, 10000)  # nothing flows back in the few real milliseconds this takes
    reuse = ("This AsyncLimiter instance is being re-used across loops. Please create a new "
             "limiter per event loop")

    async def use(wait):
        await lim.acquire()  # the warning comes from here, in the task that awaits it
        if wait:  # leave a waiter behind when the loop closes
            task = asyncio.ensure_future(lim.acquire(8))
            await asyncio.wait([task], timeout=0)
            assert not task.done()
            task.cancel()

    def run(wait):
        loop = new_loop()
        try:
            loop.run_until_complete(use(wait))
        finally:
            loop.close()

    run(True)
    with pytest.warns(RuntimeWarning, match=reuse):
        run(False)  # the first loop closed with a waiter
    with pytest.warns(RuntimeWarning, match=reuse):
        run(False)  # the second closed without one
    loop = new_loop()
    try:
        with pytest.warns(RuntimeWarning, match=reuse):
            loop.run_until_complete(lim.acquire())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loop.run_until_complete(use(True))  # the same loop again: no warning
    finally:
        loop.close()


def test_limiter_validation():
    with pytest.raises(ValueError, match="max_rate must be a finite number >= 1, got 0.5"):
        AsyncLimiter(0.5)
    with pytest.raises(ValueError, match="time_period must be a finite number > 0, got 0"):
        AsyncLimiter(10, 0)
    with pytest.raises(TypeError, match="max_rate must be a real number, not str"):
        AsyncLimiter("10")
    lim = AsyncLimiter(10, 1)
    with pytest.raises(AttributeError):
        lim.max_rate = 5
    r = repr(lim)
    assert r.startswith("<AsyncLimiter(max_rate=10, time_period=1) at 0x")
    assert "[level: 0.000000, waiters: 0]>" in r


# ---------------------------------------------------------------------------------------------
# leaks: tests/test_leaks.py runs tokenbucket_family (tests/leakcheck.py) on both loops


# ---------------------------------------------------------------------------------------------
# A hypothesis state machine against a pure-Python model of the documented semantics


from hypothesis import given  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine, initialize, invariant, precondition, rule,
)


class BucketModel:
    """The README's TokenBucket, restated for clarity: continuous refill up to capacity, strict
    FIFO (only the head is admitted; a newcomer never takes tokens while anyone waits), tokens
    taken when a waiter is admitted, handed back if it is cancelled before it runs, deadlines
    expire after admission at the same instant. Every number the machine uses is dyadic, so the
    same IEEE arithmetic as the C code is exact and levels and times compare with ==."""

    def __init__(self, rate, per, capacity, initial, now):
        self.configure(rate, per, capacity, initial, now)
        self.queue = []          # [id, tokens, deadline or None, seq], arrival order
        self.granted = []        # ids in admission order
        self.timeouts = []       # ids in the order they timed out
        self.cancelled = []
        self.errors = []         # ValueError at the await (see reconfigure_before_the_await)
        self.pending_run = []    # admitted in the current step, their tasks not run yet
        self.pending_timeouts = []  # timed out in the current step, their tasks not run yet
        self.amount = {}
        self.seq = 0
        self.taken = 0.0         # conservation: level == supply - taken
        self.supply = self.level

    def configure(self, rate, per, capacity, initial, now):
        self.rate, self.per, self.cap = float(rate), float(per), float(capacity)
        self.initial = float(initial)
        self.level = self.initial
        self.stamp = now
        self.supply, self.taken = self.level, 0.0

    def refill(self, now):
        if now > self.stamp:
            if self.level < self.cap:
                add = min(self.cap, self.level + (now - self.stamp) * self.rate / self.per)
                self.supply += add - self.level
                self.level = add
            self.stamp = now

    def take(self, n):
        self.level -= n
        self.taken += n
        assert self.level >= 0

    def refund(self, n):
        back = min(self.cap, self.level + n)
        self.taken -= n
        self.supply -= n - (back - self.level)  # what the cap cut off is as if never supplied
        self.level = back

    def next_event(self):
        t = math.inf
        if self.queue:
            need = self.queue[0][1]
            if need > self.level:
                t = self.stamp + (need - self.level) * self.per / self.rate
            t = min([t] + [w[2] for w in self.queue if w[2] is not None])
        return t

    def process(self, now):
        """What the bucket does at `now`: admit from the head, then time out what is due,
        and again while the head changes."""
        self.refill(now)
        while True:
            while self.queue and self.queue[0][1] <= self.level:
                i, n, _, _ = self.queue.pop(0)
                self.take(n)
                self.granted.append(i)
                self.pending_run.append(i)
            due = sorted((w for w in self.queue if w[2] is not None and w[2] <= self.stamp),
                         key=lambda w: (w[2], w[3]))
            if not due:
                return
            head_left = due and self.queue[0] in due
            for w in due:
                self.queue.remove(w)
                self.timeouts.append(w[0])
                self.pending_timeouts.append(w[0])
            if not head_left:
                return

    def advance_to(self, t):
        while True:
            e = self.next_event()
            if e > t:
                self.refill(t)
                return
            self.process(e)

    def acquire(self, i, n, timeout, now):
        """'granted', 'timeout' (at once) or 'waiting'."""
        self.amount[i] = n
        self.refill(now)
        if not self.queue and n <= self.level:
            self.take(n)
            self.granted.append(i)
            return "granted"
        if timeout is not None and timeout <= 0:
            self.timeouts.append(i)
            return "timeout"
        self.queue.append([i, n, None if timeout is None else now + timeout, self.seq])
        self.seq += 1
        self.process(now)
        return "waiting"

    def try_acquire(self, n, now, take=True):
        self.refill(now)
        ok = not self.queue and n <= self.level
        if ok and take:
            self.take(n)
        return ok

    def reset(self, now):
        self.refill(now)
        self.supply += self.initial - self.level
        self.level = self.initial
        self.process(now)

    def begin_step(self):
        self.pending_run, self.pending_timeouts = [], []

    def cancel(self, i, now):
        for w in self.queue:
            if w[0] == i:
                head = w is self.queue[0]
                self.queue.remove(w)
                self.cancelled.append(i)
                if head:
                    self.process(now)
                return
        if i in self.pending_run:  # admitted, its task not run yet: it hands the tokens back
            self.pending_run.remove(i)
            self.granted.remove(i)
            self.cancelled.append(i)
            self.refund(self.amount[i])
            self.process(now)
        elif i in self.pending_timeouts:  # timed out, not run yet: cancellation wins
            self.pending_timeouts.remove(i)
            self.timeouts.remove(i)
            self.cancelled.append(i)


class Boom(Exception):
    pass


class RaisingIndex:
    def __index__(self):
        raise Boom("__index__")


class RaisingFloat:
    def __float__(self):
        raise Boom("__float__")


class FloatReturnsStr:
    def __float__(self):
        return "1"


class HugeIndex:
    def __index__(self):
        return 10**400


class FloatRaisesValueError:
    def __float__(self):
        raise ValueError("its own")


def _hostile(cap):
    return [float("nan"), float("inf"), -float("inf"), -1, 0, 0.0, -0.0, 10**400, -10**400,
            cap + 0.25, "1", b"1", None, 1j, [], decimal.Decimal("NaN"), RaisingIndex(),
            RaisingFloat(), FloatReturnsStr(), HugeIndex(), FloatRaisesValueError(),
            fractions.Fraction(-(10**400))]


DT = hs.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0, 8.0])
TIMEOUT = hs.sampled_from([None, None, None, 0.0, -1.0, 0.25, 1.0, 2.5, 6.0])


class TokenBucketMachine(RuleBasedStateMachine):
    """Tasks acquiring random amounts (with and without timeouts), try_acquire/has_capacity,
    cancellation of waiting and of just-woken tasks, reset, re-configuration, hostile amounts
    and re-entrant ones, on a virtual clock against BucketModel. Runs on asyncio's virtual loop
    and (TokenBucketMachineUV) on uvloop's; the loop is driven only through the step helpers the
    two share (ready_idle, live_timers, run_due_once: tests/virtual_time.py)."""

    loop_factory = VirtualClockLoop

    @initialize(rate=hs.sampled_from([0.5, 1, 2, 4]), per=hs.sampled_from([0.5, 1, 2.0]),
                capacity=hs.sampled_from([1, 2, 3, 4, 8]), fill=hs.sampled_from([0, 0.5, 1]))
    def setup(self, rate, per, capacity, fill):
        self.loop = self.loop_factory(start=1000.0)
        self.tasks = {}
        self.c_granted, self.c_timeouts, self.c_errors = [], [], []
        self.next_id = 0

        async def make():
            return TokenBucket(rate, per, capacity=capacity, initial=capacity * fill)

        self.b = self.loop.run_until_complete(make())
        self.model = BucketModel(rate, per, capacity, capacity * fill, self.now())

    def teardown(self):
        if not hasattr(self, "loop"):
            return
        for t in self.tasks.values():
            t.cancel()
        self.settle()
        self.loop.close()

    # ---- driving the loop
    def now(self):
        return self.loop.time()

    def settle(self):
        """Run everything ready, at the current virtual time."""
        self.loop.run_until_complete(settle_loop())

    def live_timers(self):
        return self.loop.live_timers()

    def amounts(self, data):
        return data.draw(hs.integers(1, int(self.model.cap * 4)).map(lambda k: k / 4))

    async def worker(self, i, n, timeout, how="acquire"):
        if how == "async with":
            async with self.b:
                self.c_granted.append(i)
            return
        if how == "decorated":  # RateLimited: the call's own op kind
            @self.b
            async def limited():
                self.c_granted.append(i)

            await limited()
            return
        try:
            if timeout is None:
                await self.b.acquire(n)
            else:
                await self.b.acquire(n, timeout=timeout)
        except TimeoutError:
            self.c_timeouts.append(i)
            return
        self.c_granted.append(i)

    # ---- rules
    @rule(data=hs.data(), timeout=TIMEOUT,
          how=hs.sampled_from(["acquire", "acquire", "async with", "decorated"]))
    def acquire(self, data, timeout, how):
        n = self.amounts(data)
        if how != "acquire":
            n, timeout = 1.0, None
        i = self.next_id
        self.next_id += 1
        self.model.begin_step()
        self.model.acquire(i, n, timeout, self.now())
        self.tasks[i] = self.loop.create_task(self.worker(i, n, timeout, how))
        self.settle()
        self.model.begin_step()

    @precondition(lambda self: self.next_id < 50)  # one big burst per run is enough
    @rule(data=hs.data(), k=hs.integers(10, 40))
    def burst(self, data, k):
        """Many timed waiters at once: the deadline heap grows, goes stale and compacts."""
        self.model.begin_step()
        for _ in range(k):
            n = self.amounts(data)
            timeout = data.draw(hs.sampled_from([0.25, 0.5, 1.0, 2.5, None]))
            i = self.next_id
            self.next_id += 1
            self.model.acquire(i, n, timeout, self.now())
            self.tasks[i] = self.loop.create_task(self.worker(i, n, timeout))
        self.settle()
        self.model.begin_step()

    @rule(data=hs.data(), take=hs.booleans())
    def try_acquire(self, data, take):
        n = self.amounts(data)
        got = self.b.try_acquire(n) if take else self.b.has_capacity(n)
        assert got == self.model.try_acquire(n, self.now(), take)

    @rule(dt=DT)
    def advance(self, dt):
        target = self.now() + dt
        self.loop.run_until_complete(asyncio.sleep(dt))
        assert self.now() == target
        self.settle()
        self.model.advance_to(target)
        self.model.begin_step()

    @precondition(lambda self: self.model.queue)
    @rule(data=hs.data())
    def wake_then_cancel(self, data):
        """Jump to the bucket's timer, run that one loop iteration (the waiters it admits are
        woken, their tasks not run yet), then cancel any unfinished task."""
        timers = self.live_timers()
        assert timers, "waiters but no timer: stranded"
        when = min(h.when() for h in timers)
        assert when <= self.model.next_event()
        self.loop.advance(when - self.now())
        self.loop.run_due_once()
        self.model.begin_step()
        self.model.advance_to(when)
        unfinished = sorted(i for i, t in self.tasks.items() if not t.done())
        assert unfinished == sorted([w[0] for w in self.model.queue] + self.model.pending_run
                                    + self.model.pending_timeouts)
        if unfinished:
            i = data.draw(hs.sampled_from(unfinished))
            self.tasks[i].cancel()
            self.model.cancel(i, self.now())
        self.settle()
        self.model.begin_step()

    @precondition(lambda self: self.model.queue)
    @rule(data=hs.data())
    def cancel_waiter(self, data):
        i = data.draw(hs.sampled_from([w[0] for w in self.model.queue]))
        self.tasks[i].cancel()
        self.model.begin_step()
        self.model.cancel(i, self.now())
        self.settle()
        self.model.begin_step()

    @rule(data=hs.data(), cancel_woken=hs.booleans())
    def reset(self, data, cancel_woken):
        self.model.begin_step()
        self.b.reset()
        self.model.reset(self.now())
        if cancel_woken and self.model.pending_run:  # handed their tokens, not run yet
            i = data.draw(hs.sampled_from(self.model.pending_run))
            assert not self.tasks[i].done()
            self.tasks[i].cancel()
            self.model.cancel(i, self.now())
        self.settle()
        self.model.begin_step()

    @rule(rate=hs.sampled_from([0.5, 1, 2, 4]), per=hs.sampled_from([0.5, 1, 2.0]),
          capacity=hs.sampled_from([1, 2, 4, 8]), fill=hs.sampled_from([0, 0.5, 1]))
    def reconfigure(self, rate, per, capacity, fill):
        if self.model.queue:
            with pytest.raises(RuntimeError, match="while tasks wait"):
                self.b.__init__(rate, per, capacity=capacity, initial=capacity * fill)
            return
        self.b.__init__(rate, per, capacity=capacity, initial=capacity * fill)
        self.model.configure(rate, per, capacity, capacity * fill, self.now())
        assert (self.b.rate, self.b.per, self.b.capacity) == (rate, per, capacity)

    @precondition(lambda self: not self.model.queue)
    @rule(data=hs.data(), capacity=hs.sampled_from([1, 2, 4, 8]))
    def reconfigure_before_the_await(self, data, capacity):
        """acquire(n) is checked when called; re-initialized to a smaller capacity before it is
        awaited, it must fail rather than wait for ever."""
        n = self.amounts(data)
        co = self.b.acquire(n)
        self.b.__init__(self.model.rate, self.model.per, capacity=capacity, initial=capacity)
        self.model.configure(self.model.rate, self.model.per, capacity, capacity, self.now())
        i = self.next_id
        self.next_id += 1
        self.model.begin_step()

        async def stale():
            try:
                await co
            except ValueError:
                self.c_errors.append(i)
                return
            self.c_granted.append(i)

        if n > capacity:
            self.model.errors.append(i)
        else:
            self.model.acquire(i, n, None, self.now())
        self.tasks[i] = self.loop.create_task(stale())
        self.settle()
        self.model.begin_step()

    @rule(data=hs.data(), how=hs.sampled_from(["acquire", "timeout", "try_acquire",
                                               "has_capacity", "init"]))
    def hostile_argument(self, data, how):
        bad = data.draw(hs.sampled_from(_hostile(self.model.cap)))
        before = (self.b.tokens, self.b.waiting, len(self.live_timers()))
        number = isinstance(bad, (int, float, fractions.Fraction, HugeIndex)) and not (
            isinstance(bad, float) and math.isnan(bad))
        if how == "timeout" and (bad is None or number):
            return  # valid timeouts: None, numbers (<= 0: at once; too large: no limit)
        if how == "init" and isinstance(bad, (int, float)) and 0 < bad < math.inf:
            return  # a valid rate
        with pytest.raises((ValueError, TypeError, Boom)):
            if how == "acquire":
                self.b.acquire(bad)
            elif how == "timeout":
                self.b.acquire(1, timeout=bad)
            elif how == "try_acquire":
                self.b.try_acquire(bad)
            elif how == "has_capacity":
                self.b.has_capacity(bad)
            else:
                self.b.__init__(bad, capacity=8)
        self.model.refill(self.now())
        assert (self.b.tokens, self.b.waiting, len(self.live_timers())) == before
        assert (self.b.rate, self.b.per, self.b.capacity) == (
            self.model.rate, self.model.per, self.model.cap)

    @rule(data=hs.data(), inner=hs.sampled_from(["try_acquire", "reset"]),
          where=hs.sampled_from(["float", "del"]))
    def reentrant_amount(self, data, inner, where):
        """An amount whose __float__ (or __del__) calls back into the bucket."""
        n, m = self.amounts(data), self.amounts(data)
        b, model, now = self.b, self.model, self.now()
        log = []

        def hook():
            log.append(b.try_acquire(m) if inner == "try_acquire" else b.reset())

        class Amount:
            def __float__(self):
                if where == "float":
                    hook()
                return n

            def __del__(self):
                if where == "del":
                    hook()

        def model_hook():
            r = model.try_acquire(m, now) if inner == "try_acquire" else model.reset(now)
            assert log == [r]

        self.model.begin_step()
        amount = Amount()
        got = self.b.try_acquire(amount)
        if where == "float":
            model_hook()
        assert got == self.model.try_acquire(n, now)
        del amount
        if where == "del":
            model_hook()
        self.settle()
        self.model.begin_step()

    # ---- invariants
    @invariant()
    def agrees_with_the_model(self):
        if not hasattr(self, "b"):
            return
        m = self.model
        m.refill(self.now())
        assert self.b.tokens == m.level
        assert self.b.waiting == len(m.queue)
        assert self.c_granted == m.granted
        assert self.c_timeouts == m.timeouts
        assert self.c_errors == m.errors
        cancelled = sorted(i for i, t in self.tasks.items() if t.cancelled())
        assert cancelled == sorted(m.cancelled)
        assert sorted(i for i, t in self.tasks.items() if not t.done()) == sorted(
            w[0] for w in m.queue)
        # conservation: what is there is what flowed in minus what was handed out
        assert m.level == m.supply - m.taken and 0 <= m.level <= m.cap

    @invariant()
    def no_waiter_stranded(self):
        if not hasattr(self, "b") or not self.model.queue:
            return
        m = self.model
        assert m.queue[0][1] > m.level  # else the model would have admitted it
        timers = self.live_timers()
        assert len(timers) == 1  # one timer, at or before the next thing due
        assert timers[0].when() <= m.next_event()


TestTokenBucketModel = TokenBucketMachine.TestCase


class TokenBucketMachineUV(TokenBucketMachine):
    """The same machine, model and invariants on uvloop (its virtual loop, stepped)."""

    loop_factory = SteppedVirtualUVLoop


TestTokenBucketModelUV = TokenBucketMachineUV.TestCase


# AsyncLimiter against aiolimiter itself, where the semantics are the same: one task at a time
# (aiolimiter serves waiters smallest amount first and lets newcomers in while others wait; with
# a single acquirer both are the leaky bucket of size max_rate draining at max_rate/time_period).


async def _limiter_run(limiter, steps):
    loop = asyncio.get_running_loop()
    seen = []
    for dt, amount, probe in steps:
        await asyncio.sleep(dt)
        seen.append(("capacity", limiter.has_capacity(probe)))
        await limiter.acquire(amount)
        seen.append(("acquired", loop.time()))
    return seen


@given(max_rate=hs.sampled_from([1, 2, 4, 8]), period=hs.sampled_from([0.5, 1, 2, 8]),
       steps=hs.lists(hs.tuples(DT, hs.integers(0, 32), hs.integers(0, 32)), max_size=12))
def test_limiter_sequential_same_as_aiolimiter(max_rate, period, steps):
    steps = [(dt, min(a / 4, max_rate), min(p / 4, max_rate)) for dt, a, p in steps]
    results = []
    for cls in (AsyncLimiter, aiolimiter.AsyncLimiter):
        loop = VirtualClockLoop(start=1000.0)
        try:
            async def main():
                return await _limiter_run(cls(max_rate, period), steps)

            results.append(loop.run_until_complete(main()))
        finally:
            loop.close()
    assert results[0] == results[1]
