"""One clock for every family: the same rules under every way people patch time.

Each family (TokenBucket, CircuitBreaker, TTLCache, the memoizer) runs the same scenario: a
period of 10 seconds starts, 5 seconds later it has not passed, 6 more and it has. The clock
is moved by the test (a patched loop.time, time.monotonic, a loop class of its own, looptime's
virtual time), never by real sleeps. A changed time() callable, or a clock going backwards, is
a new clock: the family carries on from where it was, it never freezes.

The bucket and the memoizer read the running loop's clock themselves; the breaker's clock= and
the cache's timer= are given one that reads it. The default clocks (no clock=/timer=, a
synchronous memoized function) are time.monotonic as the time module has it.
"""

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import time
from unittest import mock

import looptime
import pytest
import uvloop

import aiofast
from helpers import run_in
from aiofast import CircuitBreaker, CircuitState, TokenBucket, TTLCache


def loop_clock():
    return asyncio.get_running_loop().time()


class Boom(Exception):
    pass


class Bucket:
    name = "bucket"

    def make(self, clock=None):
        return TokenBucket(1, per=10, initial=1)

    async def start(self, b):
        assert b.try_acquire() is True

    async def done(self, b):
        return b.tokens >= 1


class Breaker:
    name = "breaker"

    def make(self, clock=loop_clock):
        return CircuitBreaker(1, 10, clock=clock)

    async def start(self, b):
        @b
        def f():
            raise Boom()

        with pytest.raises(Boom):
            f()
        assert b.state is CircuitState.OPEN

    async def done(self, b):
        return b.state is CircuitState.HALF_OPEN


class Cache:
    name = "ttlcache"

    def make(self, clock=loop_clock):
        return TTLCache(10, 10, timer=clock) if clock is not None else TTLCache(10, 10)

    async def start(self, c):
        c["k"] = 1
        assert "k" in c

    async def done(self, c):
        return "k" not in c


class Memo:
    name = "memo"
    seen = None

    def make(self, clock=None):
        calls = []

        @aiofast.cached(ttl=10)
        async def f():
            calls.append(1)
            return len(calls)

        return f, calls

    async def start(self, m):
        f, calls = m
        self.seen = await f()

    async def done(self, m):
        f, calls = m
        return await f() != self.seen


FAMILIES = [Bucket(), Breaker(), Cache(), Memo()]
LOOPS = {"asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.Loop}


@pytest.fixture(params=FAMILIES, ids=lambda f: f.name)
def fam(request):
    return request.param


@pytest.fixture(params=sorted(LOOPS))
def loop_cls(request):
    return LOOPS[request.param]


async def period(fam, obj, advance):
    """Start the period, then check it across 5 and 11 seconds (advance(dt) moves the clock)."""
    await fam.start(obj)
    await advance(5)
    assert not await fam.done(obj)
    await advance(6)
    assert await fam.done(obj)


def boxed(start):
    box = [start]

    async def advance(dt):
        box[0] += dt

    return box, advance


async def warmed(fam, **kwargs):
    """fam.make(**kwargs), having read the real clock a few times: whatever the family
    remembers of it."""
    obj = fam.make(**kwargs)
    for _ in range(3):
        await fam.done(obj)
    return obj


@contextlib.contextmanager
def swapped(obj, name, value):
    """obj.name is value meanwhile (what it was before, after)."""
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


def loop_reading(loop_cls, start):
    """A subclass of loop_cls whose time() reads a box, and boxed(start) for it."""
    box, advance = boxed(start)

    class Loop(loop_cls):
        def time(self):
            return box[0]

    return Loop, box, advance


# ---------------------------------------------------------------------------------------------
# patches of the running loop's time


def period_under(fam, Loop, patch, start):
    """On a loop of class Loop: an object of fam, warmed on the loop's own clock, then the
    period while patch(loop, read) is in effect, read() reading a box from start on."""

    async def main():
        loop = asyncio.get_running_loop()
        obj = await warmed(fam)
        box, advance = boxed(start)
        with patch(loop, lambda: box[0]):
            await period(fam, obj, advance)

    run_in(Loop(), main)


@pytest.mark.parametrize("own_time", [False, True], ids=["loop-time", "own-time"])
@pytest.mark.parametrize("start", [10.0, 1e12], ids=["below", "above"])
def test_instance_patch_of_loop_time(fam, loop_cls, start, own_time):
    """Below, own-time: the aiolimiter case (a fake clock reading less than the real one froze
    the bucket on a loop whose class has its own time()). loop-time: the loop class's time() is
    asyncio's (read natively, the proof remembered) or uvloop's."""

    class Loop(loop_cls):
        if own_time:

            def time(self):
                return super().time()

    period_under(fam, Loop, lambda loop, read: mock.patch.object(loop, "time", read), start)


def test_class_patch_of_loop_time(fam, loop_cls):
    class Loop(loop_cls):
        pass

    period_under(fam, Loop,
                 lambda loop, read: mock.patch.object(Loop, "time", lambda self: read()), 50.0)


def test_class_assignment(fam, loop_cls):
    class Loop(loop_cls):
        pass

    def patch(loop, read):
        class Patched(Loop):
            def time(self):
                return read()

        return swapped(loop, "__class__", Patched)

    period_under(fam, Loop, patch, 70.0)


def test_instance_dict_replacement(fam, loop_cls):
    class Loop(loop_cls):
        pass

    def patch(loop, read):
        return swapped(loop, "__dict__", dict(loop.__dict__, time=read))

    period_under(fam, Loop, patch, 90.0)


def test_loop_subclass_with_its_own_time(fam, loop_cls):
    Loop, box, advance = loop_reading(loop_cls, 3.0)

    async def main():
        obj = fam.make()
        await period(fam, obj, advance)

    run_in(Loop(), main)


def test_clock_going_backwards(fam, loop_cls):
    """The same time() callable, reading less than before: a new clock, not a frozen object."""
    Loop, box, advance = loop_reading(loop_cls, 1e6)

    async def main():
        obj = await warmed(fam)
        box[0] = 20.0
        await period(fam, obj, advance)
        box[0] = 1.0  # and again, in the middle of a period
        await fam.start(obj)
        await advance(5)
        assert not await fam.done(obj)
        box[0] = 0.5  # 5 of the 10 seconds went by before: 5 are left from this reading on
        assert not await fam.done(obj)
        await advance(4.9)
        assert not await fam.done(obj)
        await advance(0.2)
        assert await fam.done(obj)

    run_in(Loop(), main)


def test_looptime_loop(fam):
    """looptime's loop (its class overrides time() with a virtual clock): sleeping moves it.
    looptime works with asyncio's loop classes only (it drives their selector)."""
    loop = looptime.new_event_loop(start=0)
    assert loop.time() == 0

    async def advance(dt):
        await asyncio.sleep(dt)

    async def main():
        obj = fam.make()
        await period(fam, obj, advance)
        assert asyncio.get_running_loop().time() == 11

    run_in(loop, main)


# ---------------------------------------------------------------------------------------------
# patches of time.monotonic: asyncio's loop reads it, and so do the default clocks


def test_time_monotonic_patch_under_asyncio_loop(fam):
    class Loop(asyncio.SelectorEventLoop):
        pass

    async def main():
        obj = await warmed(fam, clock=None)  # the breaker and the cache on their default clock
        box, advance = boxed(30.0)
        with mock.patch("time.monotonic", lambda: box[0]):
            await period(fam, obj, advance)
        box2, advance2 = boxed(5.0)  # and a second patch, reading less: a new clock again
        with mock.patch("time.monotonic", lambda: box2[0]):
            await period(fam, obj, advance2)

    run_in(Loop(), main)


@pytest.mark.parametrize("family", ["breaker", "ttlcache", "memo"])
def test_time_monotonic_patch_default_clock_without_loop(family):
    box, _ = boxed(30.0)
    if family == "breaker":
        b = CircuitBreaker(1, 10)
        fail = b(lambda: (_ for _ in ()).throw(Boom()))
        with mock.patch("time.monotonic", lambda: box[0]):
            with pytest.raises(Boom):
                fail()
            box[0] += 5
            assert b.state is CircuitState.OPEN
            box[0] += 6
            assert b.state is CircuitState.HALF_OPEN
    elif family == "ttlcache":
        c = TTLCache(10, 10)
        with mock.patch("time.monotonic", lambda: box[0]):
            c["k"] = 1
            box[0] += 5
            assert "k" in c
            box[0] += 6
            assert "k" not in c
        c["j"] = 2  # back on the real clock: carried on, not expired by the jump
        assert "j" in c
    else:
        calls = []

        @aiofast.cached(ttl=10)
        def f():
            calls.append(1)
            return len(calls)

        with mock.patch("time.monotonic", lambda: box[0]):
            assert f() == 1
            box[0] += 5
            assert f() == 1
            box[0] += 6
            assert f() == 2
        assert f() == 2  # back on the real clock: carried on


def test_native_clock_is_followed_again_after_patches():
    """After every kind of patch is undone, the bucket reads time.monotonic() natively again."""

    async def main():
        loop = asyncio.get_running_loop()
        b = TokenBucket(2)
        assert b._clock()[1] is True
        with mock.patch.object(loop, "time", lambda: 1.0):
            assert b._clock() == (1.0, False)
        assert b._clock()[1] is True
        with mock.patch("time.monotonic", lambda: 2.0):
            assert b._clock() == (2.0, False)
        t1 = time.monotonic()
        t, native = b._clock()
        assert native is True and t1 <= t <= time.monotonic()

    run_in(asyncio.SelectorEventLoop(), main)


def test_more_module_states_than_dict_watchers():
    """Each module state takes one of the interpreter's few dict watchers (3.12+). Ten states
    (module objects made from the one extension) run out of them: a state without one proves
    every reading from scratch, and still follows every patch."""
    code = textwrap.dedent(
        """
        import asyncio, importlib.util
        from unittest import mock
        import aiofast._core as first

        spec = importlib.util.find_spec("aiofast._core")
        mods = []
        for _ in range(10):
            m = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(m)
            mods.append(m)

        async def main():
            for core in (first, mods[-1]):
                loop = asyncio.get_running_loop()
                b = core.TokenBucket(2)
                for _ in range(3):
                    assert b._clock()[1] is True
                with mock.patch.object(loop, "time", lambda: 5.0):
                    assert b._clock() == (5.0, False)
                assert b._clock()[1] is True
                with mock.patch("time.monotonic", lambda: 6.0):
                    assert b._clock() == (6.0, False)
                assert b._clock()[1] is True
                box = [100.0]
                c = core.TTLCache(4, 10)
                with mock.patch("time.monotonic", lambda: box[0]):
                    c["k"] = 1
                    box[0] += 11
                    assert "k" not in c

        asyncio.run(main())
        del mods, m
        print("ok")
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr
