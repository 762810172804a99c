"""The private attributes and helpers of asyncio's lock and queue classes that code in the wild
reads, writes, calls or overrides, run against aiofast and against asyncio (the oracle).

* The private names (``dir()`` of the class and of an instance, without dunders) are asyncio's,
  on the running Python.
* ``_waiters`` (Lock, Semaphore, BoundedSemaphore, Event), ``_getters`` and ``_putters`` are live
  deque-like views: what is appended (a loop future, a mock) is woken as asyncio wakes it.
* ``_wake_up_first`` (Lock), ``_wake_up_next`` (Semaphore), ``_wakeup_next`` (queues) and
  ``_get_loop`` exist with asyncio's behaviour, and a subclass's override of one is called
  exactly where asyncio calls it (the call logs are compared with asyncio's).
* asyncpg's pool queue (a LifoQueue subclass overriding ``_get``, reading ``_queue`` and calling
  ``self._wakeup_next(self._putters)``) behaves as on asyncio, alone and inside asyncpg's real
  Pool (asyncpg_pool_probe.py: a fake connection, no server).
* Hostile cases: foreign objects in the views while the primitive wakes, cancels and is
  released; a waiter removed through the view while it is being woken.

Tests named ``*_aiofast_*`` check aiofast-only behaviour, each saying why.
"""
import asyncio
import collections
import json
import os
import subprocess
import sys
from unittest import mock

import pytest

import aiofast
from helpers import HERE, LOOPS, ORACLES, PY313, all_started, oracle_fixture, spin, started

LOCKS = ("Lock", "Semaphore", "BoundedSemaphore", "Event")
QUEUES = ("Queue", "PriorityQueue", "LifoQueue")
IMPLS = ORACLES["modules"]
mod = oracle_fixture("modules", "mod",
                     "aiofast, or asyncio (the oracle): the classes under the same names in both.")


def private(obj):
    return {n for n in dir(obj)
            if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))}


def make(cls):
    return cls(2) if "Semaphore" in cls.__name__ else cls()


# ---------------------------------------------------------------- the private names


# What aiofast has beyond asyncio's private names, on an instance: shutdown() exists on every
# version (asyncio's came in 3.13), with its flag.
EXTRA_BEFORE_313 = {"Queue": {"_is_shutdown"}, "PriorityQueue": {"_is_shutdown"},
                    "LifoQueue": {"_is_shutdown"}}


@pytest.mark.parametrize("name", LOCKS + QUEUES)
def test_private_names_are_asyncios(name):
    ours, theirs = getattr(aiofast, name), getattr(asyncio, name)
    extra = set() if PY313 else EXTRA_BEFORE_313.get(name, set())
    # an instance: exactly asyncio's names (plus the documented extension)
    assert private(make(ours)) == private(make(theirs)) | extra
    # the class: asyncio's class names, and the instance attributes asyncio sets in __init__
    # (here they are descriptors on the class, so they show on it too)
    assert private(theirs) <= private(ours)
    assert private(ours) - private(theirs) <= private(make(theirs)) | extra


@pytest.mark.parametrize("name", LOCKS + QUEUES)
def test_private_attribute_types_are_asyncios(name):
    a, b = make(getattr(aiofast, name)), make(getattr(asyncio, name))
    for attr in sorted(private(b)):
        va, vb = getattr(a, attr), getattr(b, attr)
        if callable(vb):
            assert callable(va), attr
        elif attr in ("_waiters", "_getters", "_putters") and vb is not None:
            assert len(va) == len(vb) == 0 and not va and list(va) == [], attr
        elif attr == "_finished":
            assert va.is_set() and vb.is_set()
        elif attr == "_queue":
            assert type(va) is type(vb) and list(va) == list(vb), attr
        else:
            assert va == vb and type(va) is type(vb), attr


# ---------------------------------------------------------------- _waiters, live


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ("Lock", "Semaphore", "BoundedSemaphore"))
async def test_waiters_is_none_until_the_first_wait(mod, name):
    prim = getattr(mod, name)(1) if name != "Lock" else mod.Lock()
    assert prim._waiters is None
    await prim.acquire()
    assert prim._waiters is None  # the fast path makes nothing
    t = await started(prim.acquire())
    assert prim._waiters is not None and len(prim._waiters) == 1
    prim.release()
    await t
    assert prim._waiters is not None and len(prim._waiters) == 0 and not prim._waiters
    prim.release()


@pytest.mark.asyncio
async def test_event_waiters_exist_from_the_start(mod):
    ev = mod.Event()
    assert ev._waiters is not None and len(ev._waiters) == 0
    t = await started(ev.wait())
    (fut,) = list(ev._waiters)
    assert ev._waiters[0] is fut and fut in ev._waiters and ev._waiters.count(fut) == 1
    ev.set()
    assert fut.done() and len(ev._waiters) == 1  # a woken waiter leaves when it runs
    assert await t is True and len(ev._waiters) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("name", LOCKS)
async def test_cpython_test_repr_pattern(mod, name):
    # CPython's test_repr: a mock appended to _waiters shows in repr (Semaphore's first
    # assigns a deque when _waiters is None)
    prim = make(getattr(mod, name))
    if prim._waiters is None:
        prim._waiters = collections.deque()
    assert prim._waiters is not None and len(prim._waiters) == 0
    prim._waiters.append(mock.Mock())
    assert "waiters:1" in repr(prim)
    prim._waiters.append(mock.Mock())
    assert "waiters:2" in repr(prim)
    prim._waiters.popleft()
    assert "waiters:1" in repr(prim)
    prim._waiters.clear()
    assert "waiters" not in repr(prim)


def test_view_errors_are_deques(mod):
    views = {"Event": mod.Event()._waiters, "Queue": mod.Queue()._getters}
    x = object()
    for view in views.values():
        for op in (lambda w: w.remove(x), lambda w: w.popleft(), lambda w: w.pop(),
                   lambda w: w[0]):
            with pytest.raises((ValueError, IndexError)) as ours:
                op(view)
            with pytest.raises((ValueError, IndexError)) as deques:
                op(collections.deque())
            assert type(ours.value) is type(deques.value)
            assert str(ours.value) == str(deques.value)


@pytest.mark.asyncio
async def test_foreign_future_in_lock_waiters_is_woken_like_asyncio(mod):
    loop = asyncio.get_running_loop()
    lock = mod.Lock()
    await lock.acquire()
    lock._waiters = collections.deque()
    foreign = loop.create_future()
    lock._waiters.append(foreign)
    assert lock.locked() and len(lock._waiters) == 1
    lock.release()
    assert foreign.done() and foreign.result() is True and not lock.locked()
    # it stays until removed, as in asyncio's deque; a newcomer sees a live waiter and waits
    assert list(lock._waiters) == [foreign]
    t = await started(lock.acquire())
    assert not t.done() and len(lock._waiters) == 2
    lock._waiters.remove(foreign)
    lock._wake_up_first()
    assert await t is True and lock.locked() and len(lock._waiters) == 0
    lock.release()


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ("Semaphore", "BoundedSemaphore"))
async def test_foreign_future_in_semaphore_waiters_takes_a_permit(mod, name):
    loop = asyncio.get_running_loop()
    sem = getattr(mod, name)(1)
    await sem.acquire()
    sem._waiters = collections.deque()
    foreign = loop.create_future()
    sem._waiters.append(foreign)
    assert sem.locked()
    sem.release()
    assert foreign.result() is True and sem._value == 0 and sem.locked()
    sem._waiters.remove(foreign)
    assert sem._value == 0 and sem.locked() and len(sem._waiters) == 0
    sem.release()
    assert sem._value == 1 and not sem.locked()


@pytest.mark.asyncio
async def test_foreign_future_in_event_waiters_is_set(mod):
    loop = asyncio.get_running_loop()
    ev = mod.Event()
    foreign, done = loop.create_future(), loop.create_future()
    done.set_result("mine")
    ev._waiters.extend([foreign, done])
    t = await started(ev.wait())
    assert len(ev._waiters) == 3 and ev._waiters[-1] not in (foreign, done)
    ev.set()
    assert foreign.result() is True and done.result() == "mine"
    assert await t is True
    assert list(ev._waiters) == [foreign, done]


@pytest.mark.asyncio
async def test_cancelled_waiter_passes_the_lock_to_a_foreign_head(mod):
    loop = asyncio.get_running_loop()
    lock = mod.Lock()
    await lock.acquire()
    t = await started(lock.acquire())
    foreign = loop.create_future()
    lock._waiters.appendleft(foreign)
    assert lock._waiters[0] is foreign and len(lock._waiters) == 2
    lock.release()  # wakes the head: the foreign future
    assert foreign.result() is True
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert not lock.locked() and list(lock._waiters) == [foreign]


@pytest.mark.asyncio
async def test_assigning_waiters_reorders_them(mod):
    sem = mod.Semaphore(0)
    order = []

    async def take(tag):
        await sem.acquire()
        order.append(tag)

    tasks = await all_started(take(k) for k in "abc")
    futs = list(sem._waiters)
    sem._waiters = collections.deque(reversed(futs))
    assert list(sem._waiters) == futs[::-1]
    for _ in range(3):
        sem.release()
        await spin()
    await asyncio.gather(*tasks)
    assert order == ["c", "b", "a"] and len(sem._waiters) == 0


@pytest.mark.asyncio
async def test_semaphore_waiters_assigned_none_reads_none(mod):
    sem = mod.Semaphore(1)
    sem._waiters = collections.deque([mock.Mock()])
    assert len(sem._waiters) == 1 and not sem.locked()  # a mock's cancelled() is truthy
    sem._waiters = None
    assert sem._waiters is None and not sem.locked()
    assert await sem.acquire() is True


# ---------------------------------------------------------------- the helpers, called directly


@pytest.mark.asyncio
async def test_lock_wake_up_first(mod):
    lock = mod.Lock()
    assert lock._wake_up_first() is None  # no waiters: nothing
    await lock.acquire()
    t = await started(lock.acquire())
    fut = lock._waiters[0]
    lock._locked = False
    assert lock._wake_up_first() is None
    assert fut.done() and fut.result() is True
    lock._wake_up_first()  # already done: nothing more
    assert await t is True and lock.locked()
    lock.release()


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ("Semaphore", "BoundedSemaphore"))
async def test_semaphore_wake_up_next(mod, name):
    sem = getattr(mod, name)(1)
    none_woken = sem._wake_up_next()
    assert none_woken is (False if PY313 else None) and sem._value == 1
    await sem.acquire()
    tasks = await all_started(sem.acquire() for _ in range(2))
    sem._value = 1
    woken = sem._wake_up_next()
    assert woken is (True if PY313 else None) and sem._value == 0
    assert list(sem._waiters)[0].result() is True
    await tasks[0]
    sem.release()
    await tasks[1]
    assert sem._value == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("name", QUEUES)
async def test_queue_wakeup_next(mod, name):
    loop = asyncio.get_running_loop()
    q = getattr(mod, name)()
    done, pending, other = loop.create_future(), loop.create_future(), loop.create_future()
    done.cancel()
    q._getters.extend([done, pending, other])
    assert q._wakeup_next(q._getters) is None
    assert pending.result() is None and not other.done() and list(q._getters) == [other]
    # any deque-like object, as asyncio's loop over `waiters` takes
    d = collections.deque([done, other])
    q._wakeup_next(d)
    assert other.result() is None and len(d) == 0
    q._getters.clear()
    q._wakeup_next(q._putters)  # empty: nothing
    assert len(q._putters) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("name", LOCKS + QUEUES)
async def test_get_loop(mod, name):
    prim = make(getattr(mod, name))
    assert prim._loop is None
    assert prim._get_loop() is asyncio.get_running_loop()
    assert prim._loop is asyncio.get_running_loop()
    prim._loop = object()
    with pytest.raises(RuntimeError, match="is bound to a different event loop"):
        prim._get_loop()


@pytest.mark.asyncio
@pytest.mark.parametrize("event", ("asyncio", "aiofast", "subclass"))
async def test_finished_can_be_replaced(mod, event):
    calls = []

    class LoggingEvent(aiofast.Event):
        def set(self):
            calls.append("set")
            super().set()

        def clear(self):
            calls.append("clear")
            super().clear()

    ev = {"asyncio": asyncio.Event, "aiofast": aiofast.Event, "subclass": LoggingEvent}[event]()
    ev.set()
    calls.clear()
    q = mod.Queue()
    q._finished = ev
    assert q._finished is ev
    q.put_nowait(1)
    assert not ev.is_set()
    j = await started(q.join())
    assert not j.done()
    q.get_nowait()
    q.task_done()
    assert ev.is_set()
    await j
    assert calls == (["clear", "set"] if event == "subclass" else [])


# ---------------------------------------------------------------- overrides are honoured


def logging_subclass(base, names, log):
    """A subclass of base whose methods `names` log their calls, then run the base's."""
    ns = {}
    for n in names:
        def make_method(n=n):
            def method(self, *args):
                log.append(n)
                return getattr(super(cls, self), n)(*args)
            return method
        ns[n] = make_method()
    cls = type("Logging" + base.__name__, (base,), ns)
    return cls


async def lock_scenario(lock):
    """A fixed dance of acquires, releases and cancellations."""
    await lock.acquire()
    lock.release()
    await lock.acquire()
    a = asyncio.create_task(lock.acquire())
    b = asyncio.create_task(lock.acquire())
    c = await started(lock.acquire())
    lock.release()           # wakes a
    b.cancel()               # b leaves before its turn
    await spin()
    assert a.done() and lock.locked()
    lock.release()           # wakes c
    await spin()
    c.cancel()               # too late: c holds it
    await spin()
    if not c.cancelled():
        lock.release()
    async with lock:
        pass
    return [t.cancelled() for t in (a, b, c)]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ("Lock", "Semaphore", "BoundedSemaphore"))
async def test_overridden_wake_helper_and_get_loop_are_called_as_asyncio_calls_them(name):
    helper = "_wake_up_first" if name == "Lock" else "_wake_up_next"
    logs, results = {}, {}
    for label, m in IMPLS.items():
        log = logs[label] = []
        cls = logging_subclass(getattr(m, name), (helper, "_get_loop"), log)
        prim = cls() if name == "Lock" else cls(1)
        results[label] = await lock_scenario(prim)
        assert not prim.locked() and not prim._waiters
    assert results["aiofast"] == results["asyncio"]
    assert logs["aiofast"] == logs["asyncio"]
    assert helper in logs["asyncio"] and "_get_loop" in logs["asyncio"]


@pytest.mark.asyncio
async def test_overridden_event_get_loop_is_called(mod):
    log = []
    ev = logging_subclass(mod.Event, ("_get_loop",), log)()
    t = await started(ev.wait())
    ev.set()
    assert await t is True and await ev.wait() is True
    assert log == ["_get_loop"]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ("Lock", "Semaphore"))
async def test_a_wake_helper_override_that_does_nothing_strands_waiters_as_in_asyncio(mod, name):
    class Lazy(getattr(mod, name)):
        def _wake_up_first(self):
            pass

        def _wake_up_next(self):
            return False

    prim = Lazy()
    await prim.acquire()
    t = await started(prim.acquire())
    prim.release()
    await spin()
    assert not t.done()  # nobody woke it: the override said so
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t


async def queue_scenario(q):
    """Producers and consumers on a bounded queue, with cancellations on both sides."""
    got = []

    async def consume(n):
        for _ in range(n):
            got.append(await q.get())

    await q.put(0)
    await q.put(1)
    p1 = asyncio.create_task(q.put(2))
    p2 = asyncio.create_task(q.put(3))
    p3 = await started(q.put(4))
    got.append(q.get_nowait())  # wakes p1
    p2.cancel()
    await spin()
    got.append(await q.get())   # wakes p3
    await spin()
    c1 = asyncio.create_task(consume(10))
    c2 = await started(consume(1))
    q.put_nowait(5)
    c2.cancel()
    await spin()
    q.put_nowait(6)
    await spin()
    c1.cancel()
    await asyncio.gather(c1, c2, p1, p2, p3, return_exceptions=True)
    return got, [t.cancelled() for t in (p1, p2, p3, c2)]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", QUEUES)
async def test_overridden_wakeup_next_and_get_loop_are_called_as_asyncio_calls_them(name):
    logs, results = {}, {}
    for label, m in IMPLS.items():
        log = logs[label] = []

        class Q(getattr(m, name)):
            def _wakeup_next(self, waiters):
                # which one: a probe appended shows in _getters or not
                n = len(self._getters)
                waiters.append("probe")
                which = "getters" if len(self._getters) == n + 1 else "putters"
                waiters.pop()
                log.append(("_wakeup_next", which, len(waiters)))
                return super()._wakeup_next(waiters)

            def _get_loop(self):
                log.append("_get_loop")
                return super()._get_loop()

        results[label] = await queue_scenario(Q(2))
    assert results["aiofast"] == results["asyncio"]
    assert logs["aiofast"] == logs["asyncio"]
    assert "_get_loop" in logs["asyncio"] and len(logs["asyncio"]) > 10


@pytest.mark.asyncio
@pytest.mark.parametrize("name", QUEUES)
async def test_an_override_of_wakeup_next_replaces_the_wake_up(mod, name):
    woken = []

    class Q(getattr(mod, name)):
        def _wakeup_next(self, waiters):
            # wake them all, newest first
            while waiters:
                w = waiters.pop()
                if not w.done():
                    woken.append(w)
                    w.set_result(None)

    q = Q()
    getters = await all_started(q.get() for _ in range(3))
    q.put_nowait("x")
    await spin()
    assert len(woken) == 3 and sum(t.done() for t in getters) == 1
    # the other two went back to waiting
    assert len(q._getters) == 2
    q.put_nowait("y")
    q.put_nowait("z")
    assert sorted(await asyncio.gather(*getters)) == ["x", "y", "z"]


# ---------------------------------------------------------------- asyncpg's pool queue


def pool_queue(base):
    # asyncpg 0.32's _PoolConnectionHolderQueue (asyncpg/pool.py), item for item
    class PoolQueue(base):
        """Prefer live connections, with LIFO ordering within each group."""

        def _get(self):
            for i in range(len(self._queue) - 1, -1, -1):
                if self._queue[i].is_connected():
                    return self._queue.pop(i)
            return super()._get()

        def get_disconnected_nowait(self):
            for i in range(len(self._queue) - 1, -1, -1):
                if not self._queue[i].is_connected():
                    holder = self._queue.pop(i)
                    self._wakeup_next(self._putters)
                    return holder
            raise asyncio.QueueEmpty

    return PoolQueue


class Holder:
    def __init__(self, name, connected):
        self.name, self.connected = name, connected

    def is_connected(self):
        return self.connected

    def __repr__(self):
        return f"Holder({self.name}, {self.connected})"


@pytest.mark.asyncio
async def test_the_issue_minimal_case(mod):
    class Q(mod.LifoQueue):
        def take_nowait(self):
            item = self._queue.pop()
            self._wakeup_next(self._putters)
            return item

    q = Q(maxsize=1)
    q.put_nowait("a")
    t = asyncio.create_task(q.put("b"))
    await asyncio.sleep(0)
    assert q.take_nowait() == "a"
    await t
    assert q.get_nowait() == "b"


async def pool_scenario(mod):
    """asyncpg's pool: holders in a LIFO queue of maxsize slots; acquire takes the newest live
    holder (or a disconnected one, to connect); release puts it back; the min-size maintenance
    takes disconnected holders out with get_disconnected_nowait() and puts them back connected,
    while acquirers wait for a free slot."""
    q = pool_queue(mod.LifoQueue)(maxsize=3)
    holders = [Holder(k, k == "h2") for k in ("h0", "h1", "h2")]
    for h in holders:
        q.put_nowait(h)
    log = []
    taken = [await q.get(), await q.get()]    # h2 (live) first, then the newest: h1
    log.append([h.name for h in taken])
    maint = q.get_disconnected_nowait()       # h0: the queue is now empty
    log.append(maint.name)
    waiter = await started(q.get())
    assert not waiter.done()
    maint.connected = True
    q.put_nowait(maint)                       # wakes the waiting acquirer
    log.append((await waiter).name)
    # a full queue: a releaser waits; the maintenance task's take frees a slot and wakes it
    for h in (maint, *taken):
        h.connected = h.name != "h1"
    q.put_nowait(taken[0])
    q.put_nowait(taken[1])
    q.put_nowait(maint)
    extra = Holder("h3", True)
    releaser = await started(q.put(extra))
    assert not releaser.done() and len(q._putters) == 1
    log.append(q.get_disconnected_nowait().name)  # h1, and _wakeup_next(_putters)
    await releaser
    log.append([h.name for h in q._queue])
    while not q.empty():
        log.append(q.get_nowait().name)
    return log


@pytest.mark.asyncio
async def test_asyncpg_pool_queue_pattern(mod):
    expected = await pool_scenario(asyncio)
    assert await pool_scenario(mod) == expected
    assert expected[:3] == [["h2", "h1"], "h0", "h0"] and expected[3] == "h1"


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_asyncpg_pool_queue_under_install(loop_name):
    def run():
        loop = LOOPS[loop_name]()
        try:
            return loop.run_until_complete(pool_scenario(asyncio))
        finally:
            loop.close()

    expected = run()
    aiofast.install()
    try:
        assert asyncio.LifoQueue is aiofast.LifoQueue
        assert run() == expected
    finally:
        aiofast.uninstall()


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_asyncpg_pool_without_a_server(loop_name):
    # asyncpg's real Pool (its queue subclass, its min-size maintenance) over a fake connection,
    # in a fresh interpreter: under aiofast.install() it must do what it does on asyncio
    def run(impl):
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "asyncpg_pool_probe.py"), impl, loop_name],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONWARNINGS": "error"})
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    ours, theirs = run("aiofast"), run("asyncio")
    assert ours[0] == ["init", 2, "aiofast.LifoQueue"]
    assert theirs[0] == ["init", 2, "asyncio.queues.LifoQueue"]
    assert ours[1:] == theirs[1:]
    assert ["refilled", True, 2] in theirs and theirs[-1] == ["closed", True, 0]


# ---------------------------------------------------------------- hostile


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ("Semaphore", "BoundedSemaphore", "Event"))
async def test_mocks_in_waiters_while_the_primitive_works(mod, name):
    # a Mock's done() and cancelled() answer truthy mocks: it counts as done and cancelled
    prim = getattr(mod, name)(1) if name != "Event" else mod.Event()
    if prim._waiters is None:
        prim._waiters = collections.deque()
    prim._waiters.append(mock.Mock())
    if name == "Event":
        t = await started(prim.wait())
        prim.set()
        assert await t is True
    else:
        async with prim:
            t = await started(prim.acquire())
            assert not t.done() and len(prim._waiters) == 2
        assert await t is True and prim._value == 0
        t2 = await started(prim.acquire())
        t2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t2
        prim.release()
        assert prim._value == 1 and not prim.locked()
    assert len(prim._waiters) == 1 and isinstance(prim._waiters[0], mock.Mock)


@pytest.mark.asyncio
async def test_a_mock_at_the_head_of_lock_waiters_holds_the_turn(mod):
    # asyncio's release wakes only the head, and a mock's done() is truthy: nobody is woken
    lock = mod.Lock()
    await lock.acquire()
    t = await started(lock.acquire())
    lock._waiters.appendleft(mock.Mock())
    lock.release()
    await spin()
    assert not t.done() and not lock.locked()
    t2 = asyncio.create_task(lock.acquire())  # a live waiter is queued: t2 queues too
    await spin()
    assert not t2.done() and len(lock._waiters) == 3
    lock._waiters.popleft()
    lock._wake_up_first()
    assert await t is True
    lock.release()
    assert await t2 is True
    lock.release()
    assert not lock._waiters and not lock.locked()


class SelfRemoving:
    """A future-like object whose done() removes it from the view it sits in (and others)."""

    def __init__(self, view_of, also=()):
        self.view_of, self.also = view_of, list(also)
        self.results = []

    def done(self):
        view = self.view_of()
        view.remove(self)
        for other in self.also:
            if other in view:
                view.remove(other)
        return False

    def cancelled(self):
        return False

    def set_result(self, value):
        self.results.append(value)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ("Lock", "Semaphore"))
async def test_a_waiter_removed_through_the_view_while_it_is_woken(mod, name):
    prim = getattr(mod, name)()
    await prim.acquire()
    t = await started(prim.acquire())
    ev = SelfRemoving(lambda: prim._waiters)
    prim._waiters.appendleft(ev)
    # release asks ev.done(), which takes ev out of _waiters; ev is woken all the same (it has
    # the turn, and the permit), and the task is not
    prim.release()
    assert ev.results == [True] and list(prim._waiters) == [prim._waiters[0]]
    await spin()
    assert not t.done() and len(prim._waiters) == 1
    if name == "Lock":
        prim._wake_up_first()
    else:
        assert prim._value == 0
        prim.release()
    assert await t is True
    prim.release()
    assert not prim._waiters


@pytest.mark.asyncio
async def test_aiofast_waiters_view_survives_its_primitive_and_hostile_eq():
    # aiofast-only: asyncio's deque outlives nothing and has no C list to corrupt; here the
    # view must keep the lock alive, and an __eq__ that mutates the list must be caught
    lock = aiofast.Lock()
    await lock.acquire()
    t = await started(lock.acquire())
    view = lock._waiters
    del lock
    assert len(view) == 1

    class Evil:
        def __eq__(self, other):
            view.append(mock.Mock())
            return False

    with pytest.raises(RuntimeError, match="mutated"):
        view.remove(Evil())
    with pytest.raises(RuntimeError, match="mutated"):
        Evil() in view  # noqa: B015
    with pytest.raises(RuntimeError, match="mutated"):
        view.count(Evil())
    with pytest.raises(ValueError):
        view.remove(object())
    with pytest.raises(IndexError):
        view[10]
    assert len(view) == 4 and isinstance(view[-1], mock.Mock)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert len(view) == 3 and isinstance(view.pop(), mock.Mock) and len(view) == 2
    view.clear()
    with pytest.raises(IndexError):
        view.popleft()
    with pytest.raises(IndexError):
        view.pop()


@pytest.mark.asyncio
async def test_aiofast_assigning_waiters_from_a_hostile_iterable():
    # aiofast-only: the iterable is read fully before anything changes
    sem = aiofast.Semaphore(0)
    t = await started(sem.acquire())
    (fut,) = list(sem._waiters)

    def gen():
        yield fut
        raise KeyError("boom")

    with pytest.raises(KeyError):
        sem._waiters = gen()
    assert list(sem._waiters) == [fut]

    def mutating():
        sem._waiters.append(mock.Mock())  # changes the list while it is being read
        yield fut
        yield fut  # the same future twice: the second is a foreign entry

    sem._waiters = mutating()
    assert list(sem._waiters) == [fut, fut]
    with pytest.raises(TypeError):
        sem._waiters = 42
    with pytest.raises(AttributeError):
        del sem._waiters
    sem.release()
    assert await t is True
    assert list(sem._waiters) == [fut] and sem._value == 0
