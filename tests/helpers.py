"""What the test files share: letting a loop run, capturing errors, fake clocks, and the oracle
registry.

* ``spin(n)``, ``spin_until(pred)``, ``started(coro)``, ``all_started(coros)``: let the running
  loop run what is ready; ``catching_cancel(aw, caught)``: the CancelledError that went through
  an await.
* ``error_of(fn)``, ``outcome(task)``: what a call raised, how a task ended, as comparable values
  (a test compares them between aiofast and its oracle).
* ``fast_thread_switching()``, ``in_threads(targets)``: threads interleaving as finely as
  the interpreter lets them.
* ``loop_hook(name, before)``: a method of the running loop that runs a test's code first, for
  re-entrancy.
* ``Clock``: a fake timer for ``timer=`` / ``clock=`` arguments; time moves only when the test
  says so. (Virtual-time event loops are in virtual_time.py.)
* ``LOOPS``: a fresh loop of each kind the suite runs on, by name.
* ``run_virtual(main)``, ``run_in(loop, main)``: run a coroutine function on a fresh loop, then
  close it.
* ``ORACLES``: for each family, the implementations a test runs on, by name: aiofast's and the
  one whose behaviour it reproduces (asyncio's classes, cachetools, async-lru, aiolimiter,
  circuitbreaker). ``oracle_fixture(family, name)`` makes the parametrized fixture a test file
  takes. Before 3.13 asyncio's queues have no ``shutdown()``: their oracle there is asyncio's
  queue with 3.13's shutdown code added (``_Shutdown313``), since aiofast offers it on every
  version.
* ``BAD_TOKENS``, ``BAD_TOKEN_TYPES``, ``BAD_TIMEOUTS``: the arguments every token bucket
  refuses, with the exception and message.
* ``run_cpython_suite(*modules)``: CPython's own asyncio tests with aiofast.install() in effect.
"""
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import types

import aiolimiter
import async_lru
import cachetools
import circuitbreaker
import pytest
import uvloop

import aiofast

HERE = os.path.dirname(os.path.abspath(__file__))
PY313 = sys.version_info >= (3, 13)
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

# ---------------------------------------------------------------- letting the loop run


async def spin(n=5):
    """Let the running loop run its ready callbacks, n rounds."""
    for _ in range(n):
        await asyncio.sleep(0)


async def spin_until(pred, n=200):
    """Spin until pred() holds, at most n rounds; pred()'s last value."""
    for _ in range(n):
        if pred():
            return True
        await asyncio.sleep(0)
    return pred()


async def started(coro, n=5):
    """coro as a task, once it has run as far as it can (typically: blocked waiting)."""
    task = asyncio.create_task(coro)
    await spin(n)
    return task


async def all_started(coros, n=5):
    """started() for each of coros: the tasks, once they have run as far as they can."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    await spin(n)
    return tasks


async def catching_cancel(aw, caught):
    """Await aw; a CancelledError raised there is appended to caught, then goes on."""
    try:
        return await aw
    except asyncio.CancelledError as e:
        caught.append(e)
        raise


def run_in(loop, main):
    """Run main() to completion on loop, then close loop."""
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def run_virtual(main):
    """Run main() on a fresh virtual-clock asyncio loop."""
    from virtual_time import VirtualClockLoop

    return run_in(VirtualClockLoop(), main)


# ---------------------------------------------------------------- threads


@contextlib.contextmanager
def fast_thread_switching(interval=1e-6):
    """The interpreter switches between threads every `interval` seconds meanwhile (as often as
    it can with the default), so that threads interleave as finely as they can."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def in_threads(targets, meanwhile=None):
    """Run each of targets in a thread of its own, all at once under fast_thread_switching();
    meanwhile(), if given, runs in this thread while they do. Returns when all have ended."""
    with fast_thread_switching():
        threads = [threading.Thread(target=target) for target in targets]
        for t in threads:
            t.start()
        if meanwhile is not None:
            meanwhile()
        for t in threads:
            t.join()


# ---------------------------------------------------------------- error capture


def error_of(fn):
    """What fn() raised, as (type, message); None if it returned."""
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return type(e), str(e)
    return None


def outcome(task):
    """How a task ended: pending, cancelled, raised (with the exception's type name) or ok."""
    if not task.done():
        return ("pending",)
    if task.cancelled():
        return ("cancelled",)
    exc = task.exception()
    if exc is not None:
        return ("raised", type(exc).__name__)
    return ("ok", task.result())


@contextlib.contextmanager
def loop_hook(name, before):
    """Within the block, the running loop's method name (call_soon, call_at, ...) first calls
    before(*args) with the positional arguments it was given, then does what it does: a hook for
    code that re-enters from inside the loop's own calls."""
    loop = asyncio.get_running_loop()
    orig = getattr(loop, name)

    def hooked(*args, **kwargs):
        before(*args)
        return orig(*args, **kwargs)

    setattr(loop, name, hooked)
    try:
        yield
    finally:
        delattr(loop, name)


# ---------------------------------------------------------------- fake clocks


class Clock:
    """A fake timer (a callable returning the time): time moves only when the test says so."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, dt):
        self.now += dt


# ---------------------------------------------------------------- bad arguments

# (args, kwargs, exception, message): constructions every token bucket (in-process and shared)
# refuses
BAD_BUCKET_ARGS = [
    ((0,), {}, ValueError, r"rate must be a finite number > 0, got 0"),
    ((-1,), {}, ValueError, r"rate must be a finite number > 0, got -1"),
    ((math.nan,), {}, ValueError, r"rate must be a finite number > 0, got nan"),
    ((math.inf,), {}, ValueError, r"rate must be a finite number > 0, got inf"),
    (("10",), {}, TypeError, r"rate must be a real number, not str"),
    ((None,), {}, TypeError, r"rate must be a real number, not NoneType"),
    ((10, 0), {}, ValueError, r"per must be a finite number of seconds > 0, got 0"),
    ((10, -2.5), {}, ValueError, r"per must be a finite number of seconds > 0, got -2.5"),
    ((10, math.nan), {}, ValueError, r"per must be .* got nan"),
    ((10, "1"), {}, TypeError, r"per must be a real number, not str"),
    ((10,), {"capacity": 0.5}, ValueError, r"capacity must be a finite number >= 1, got 0.5"),
    ((10,), {"capacity": math.nan}, ValueError, r"capacity must be .* got nan"),
    ((10,), {"capacity": []}, TypeError, r"capacity must be a real number, not list"),
    ((10,), {"initial": -1}, ValueError, r"initial must be a number from 0 to capacity \(10\)"),
    ((10,), {"initial": math.nan}, ValueError, r"initial must be .* got nan"),
    ((10, 1, 10), {}, TypeError, r"at most 2 positional arguments"),
]
# (tokens, exception, message) that every token bucket (in-process and shared, capacity 10)
# refuses in acquire(), try_acquire() and has_capacity(): BAD_TOKENS, then BAD_TOKEN_TYPES
BAD_TOKENS = [
    (0, ValueError, r"tokens must be > 0, got 0"),
    (-1, ValueError, r"tokens must be > 0, got -1"),
    (math.nan, ValueError, r"tokens must be > 0, got nan"),
    (-math.inf, ValueError, r"tokens must be > 0, got -inf"),
    (11, ValueError, r"tokens must be <= capacity \(10\), got 11: the request could never"),
    (math.inf, ValueError, r"tokens must be <= capacity"),
    (10**400, ValueError, r"tokens must be <= capacity"),
    (-(10**400), ValueError, r"tokens must be > 0"),
]
BAD_TOKEN_TYPES = [
    ("1", TypeError, r"tokens must be a real number, not str"),
    (None, TypeError, r"tokens must be a real number, not NoneType"),
]
# (timeout, exception, message) that acquire(tokens, timeout=...) refuses
BAD_TIMEOUTS = [
    (math.nan, ValueError, r"timeout must be a number or None, got nan"),
    ("1", TypeError, r"timeout must be a number or None, not str"),
    ([], TypeError, r"timeout must be a number or None, not list"),
]


# ---------------------------------------------------------------- the oracle registry

if PY313:
    QueueShutDown = asyncio.QueueShutDown
    OracleQueue, OraclePriorityQueue, OracleLifoQueue = (
        asyncio.Queue, asyncio.PriorityQueue, asyncio.LifoQueue)
else:
    QueueShutDown = aiofast.QueueShutDown

    class _Shutdown313:
        """asyncio 3.13's shutdown logic (Lib/asyncio/queues.py of 3.13.0), on an older Queue.
        3.13's put() and get() share one wait loop here (_wait_while); the code is otherwise
        3.13's."""

        def __init__(self, maxsize=0):
            super().__init__(maxsize)
            self._is_shutdown = False

        def _format(self):
            result = super()._format()
            if self._is_shutdown:
                result += ' shutdown'
            return result

        async def _wait_while(self, blocked, waiters, shut):
            # put: full, _putters, shut down; get: empty, _getters, shut down and empty (3.13
            # asks empty() again there: a subclass's empty() sees the same calls)
            while blocked():
                if shut():
                    raise QueueShutDown
                waiter = self._get_loop().create_future()
                waiters.append(waiter)
                try:
                    await waiter
                except:  # noqa: E722
                    waiter.cancel()
                    try:
                        waiters.remove(waiter)
                    except ValueError:
                        pass
                    if not blocked() and not waiter.cancelled():
                        self._wakeup_next(waiters)
                    raise

        async def put(self, item):
            await self._wait_while(self.full, self._putters, lambda: self._is_shutdown)
            return self.put_nowait(item)

        def put_nowait(self, item):
            if self._is_shutdown:
                raise QueueShutDown
            return super().put_nowait(item)

        async def get(self):
            await self._wait_while(self.empty, self._getters,
                                   lambda: self._is_shutdown and self.empty())
            return self.get_nowait()

        def get_nowait(self):
            if self.empty():
                if self._is_shutdown:
                    raise QueueShutDown
                raise asyncio.QueueEmpty
            item = self._get()
            self._wakeup_next(self._putters)
            return item

        def shutdown(self, immediate=False):
            self._is_shutdown = True
            if immediate:
                while not self.empty():
                    self._get()
                    if self._unfinished_tasks > 0:
                        self._unfinished_tasks -= 1
                if self._unfinished_tasks == 0:
                    self._finished.set()
            while self._getters:
                getter = self._getters.popleft()
                if not getter.done():
                    getter.set_result(None)
            while self._putters:
                putter = self._putters.popleft()
                if not putter.done():
                    putter.set_result(None)

    class OracleQueue(_Shutdown313, asyncio.Queue):
        pass

    class OraclePriorityQueue(_Shutdown313, asyncio.PriorityQueue):
        pass

    class OracleLifoQueue(_Shutdown313, asyncio.LifoQueue):
        pass

    for _cls, _name in ((OracleQueue, "Queue"), (OraclePriorityQueue, "PriorityQueue"),
                        (OracleLifoQueue, "LifoQueue")):
        _cls.__name__ = _name  # repr shows type(self).__name__; pickle finds __qualname__


def _classes(name, source, *names, **extra):
    return types.SimpleNamespace(name=name, **{n: getattr(source, n) for n in names}, **extra)


_LOCKS = ("Semaphore", "BoundedSemaphore", "Lock", "Event")
_QUEUES = ("Queue", "PriorityQueue", "LifoQueue")
_CACHES = ("LRUCache", "TTLCache")

ORACLES = {
    # the asyncio drop-ins: Lock, Event, Semaphore, BoundedSemaphore
    "locks": {"aiofast": _classes("aiofast", aiofast, *_LOCKS),
              "asyncio": _classes("asyncio", asyncio, *_LOCKS)},
    # the queues, with their shutdown exception
    "queues": {"aiofast": _classes("aiofast", aiofast, *_QUEUES,
                                   QueueShutDown=aiofast.QueueShutDown),
               "asyncio": types.SimpleNamespace(
                   name="asyncio", Queue=OracleQueue, PriorityQueue=OraclePriorityQueue,
                   LifoQueue=OracleLifoQueue, QueueShutDown=QueueShutDown)},
    # the modules themselves, for tests that reach every class by its asyncio name
    "modules": {"aiofast": aiofast, "asyncio": asyncio},
    "caches": {"aiofast": _classes("aiofast", aiofast, *_CACHES),
               "cachetools": _classes("cachetools", cachetools, *_CACHES)},
    "alru": {"aiofast": aiofast.alru_cache, "async_lru": async_lru.alru_cache},
    "limiter": {"aiofast": aiofast.AsyncLimiter, "aiolimiter": aiolimiter.AsyncLimiter},
    # circuitbreaker's module, and aiofast's drop-in for it
    "circuit": {"aiofast": aiofast._compat_breaker, "circuitbreaker": circuitbreaker},
}


def oracle_fixture(family, name, doc=None):
    """A fixture named `name`, parametrized over ORACLES[family] (ids: the implementations'
    names), giving the implementation; assign it to that name in the test module."""
    registry = ORACLES[family]

    def fixture(request):
        return registry[request.param]

    fixture.__doc__ = doc
    return pytest.fixture(params=sorted(registry), name=name)(fixture)


# ---------------------------------------------------------------- CPython's own tests


def cpython_test_name(test_id):
    """'test.test_asyncio.test_locks.EventTests.test_repr' -> 'test_locks.EventTests.test_repr'"""
    return ".".join(test_id.split(".")[2:])


def run_cpython_suite(*modules):
    """Run the named unittest modules with aiofast.install() in effect (cpython_suite.py, in a
    subprocess); its JSON summary."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "cpython_suite.py"), *modules],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
