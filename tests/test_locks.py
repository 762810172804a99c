"""Lock, Event, Semaphore, BoundedSemaphore: behaviour, run against aiofast and against asyncio.

Every test taking ``impl`` runs on aiofast's class and on asyncio's (the oracle); every async test
runs on asyncio's loop and on uvloop (conftest). Tests that need aiofast-only behaviour (stricter
validation) say so in their name. The private helpers and the live ``_waiters`` view are tested
in test_private_api.py.
"""
import asyncio
import gc
import random
import re
import sys
import weakref

import pytest

import aiofast
from helpers import all_started, catching_cancel, error_of, spin, started

PY313 = sys.version_info >= (3, 13)

RGX_REPR = re.compile(
    r"^<(?P<class>.*?) object at (?P<address>.*?)\[(?P<extras>"
    r"(set|unset|locked|unlocked)(, value:\d+)?(, waiters:\d+)?)\]>\Z"
)

pytestmark = pytest.mark.filterwarnings("error")


# ---------------------------------------------------------------- construction and messages


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.Semaphore(-1),
        lambda m: m.Semaphore("a"),
        lambda m: m.Semaphore(1, 2),
        lambda m: m.Semaphore(value=1, loop=None),
        lambda m: m.Semaphore(1, value=2),
        lambda m: m.BoundedSemaphore(-3),
        lambda m: m.BoundedSemaphore(1, 2),
        lambda m: m.BoundedSemaphore(loop=None),
        lambda m: m.Lock(1),
        lambda m: m.Lock(loop=None),
        lambda m: m.Lock(foo=1),
        lambda m: m.Event(1),
        lambda m: m.Event(loop=None),
    ],
)
def test_constructor_errors_match_asyncio(make):
    ours = error_of(lambda: make(aiofast))
    theirs = error_of(lambda: make(asyncio))
    assert theirs is not None
    assert ours == theirs


def test_constructor_accepts_what_asyncio_accepts():
    for v in (0, 1, 7, True, 1.5, 2**40):
        assert aiofast.Semaphore(v)._value == asyncio.Semaphore(v)._value
        assert type(aiofast.Semaphore(v)._value) is type(asyncio.Semaphore(v)._value) or v is True
    assert aiofast.BoundedSemaphore(3)._bound_value == 3
    assert aiofast.Semaphore()._value == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**60, -(2**70), float("-inf")])
def test_aiofast_rejects_values_that_break_asyncio(bad):
    # asyncio accepts NaN and inf and then misbehaves; aiofast refuses them clearly
    with pytest.raises((ValueError, OverflowError)):
        aiofast.Semaphore(bad)


def test_value_setter_validates():
    s = aiofast.Semaphore(1)
    s._value = 5
    assert s._value == 5
    with pytest.raises(TypeError):
        s._value = "x"
    with pytest.raises(OverflowError):
        s._value = 2**80
    with pytest.raises(AttributeError):
        del s._value
    assert s._value == 5


def test_not_awaitable_message_matches_asyncio(impl):
    async def main():
        await impl.Lock()

    with pytest.raises(TypeError) as ei:
        asyncio.run(main())
    ours = str(ei.value)
    assert ("object Lock can't be used in 'await' expression" in ours
            or "'Lock' object can't be awaited" in ours)


def test_release_errors(impl):
    lock = impl.Lock()
    with pytest.raises(RuntimeError, match=r"^Lock is not acquired\.$"):
        lock.release()
    b = impl.BoundedSemaphore()
    with pytest.raises(ValueError, match="^BoundedSemaphore released too many times$"):
        b.release()
    assert b._value == 1


def test_repr_forms(impl):
    lock = impl.Lock()
    assert RGX_REPR.match(repr(lock)) and repr(lock).endswith("[unlocked]>")
    ev = impl.Event()
    assert repr(ev).endswith("[unset]>")
    ev.set()
    assert repr(ev).endswith("[set]>")
    sem = impl.Semaphore(3)
    assert repr(sem).endswith("[unlocked, value:3]>")
    assert impl.Semaphore(0).__repr__().endswith("[locked]>")
    if impl.name == "aiofast":
        assert repr(lock).startswith("<aiofast.Lock object at 0x")


def test_weakref_and_subclass_dict():
    for cls in (aiofast.Lock, aiofast.Event, aiofast.Semaphore, aiofast.BoundedSemaphore):
        obj = cls()
        r = weakref.ref(obj)
        assert r() is obj
        del obj
        gc.collect()
        assert r() is None

        class Sub(cls):
            pass

        s = Sub()
        s.extra = 1
        assert isinstance(s, cls) and s.extra == 1


def test_private_attributes_before_use(impl):
    lock = impl.Lock()
    assert lock._waiters is None and lock._locked is False and lock._loop is None
    sem = impl.Semaphore(2)
    assert sem._waiters is None and sem._value == 2 and sem._loop is None
    ev = impl.Event()
    assert list(ev._waiters) == [] and ev._value is False


def test_bounded_is_a_semaphore(impl):
    assert issubclass(impl.BoundedSemaphore, impl.Semaphore)


# ---------------------------------------------------------------- basic behaviour


@pytest.mark.asyncio
async def test_lock_basic(impl):
    lock = impl.Lock()
    assert await lock.acquire() is True
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    async with lock as x:
        assert x is None
        assert lock.locked()
    assert not lock.locked()
    assert lock._loop is None  # fast paths never bind


@pytest.mark.asyncio
async def test_semaphore_basic(impl):
    sem = impl.Semaphore(2)
    assert await sem.acquire() is True
    assert sem._value == 1
    async with sem as x:
        assert x is None
        assert sem._value == 0 and sem.locked()
    assert sem._value == 1
    sem.release()
    sem.release()
    assert sem._value == 3  # a plain Semaphore has no bound
    assert sem._loop is None


@pytest.mark.asyncio
async def test_event_basic(impl):
    ev = impl.Event()
    order = []

    async def waiter(i):
        assert await ev.wait() is True
        order.append(i)

    tasks = await all_started(waiter(i) for i in range(3))
    assert order == [] and len(ev._waiters) == 3
    ev.set()
    ev.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert len(ev._waiters) == 0
    assert await ev.wait() is True
    ev.clear()
    assert not ev.is_set()


@pytest.mark.asyncio
async def test_event_set_clear_before_waiter_runs(impl):
    ev = impl.Event()
    t = await started(ev.wait())
    ev.set()
    ev.clear()
    ev.set()
    ev.set()
    assert await t is True
    ev.clear()
    t2 = await started(ev.wait())
    t2.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t2
    assert len(ev._waiters) == 0


@pytest.mark.asyncio
async def test_fast_paths_do_not_yield(impl):
    ev = impl.Event()
    ev.set()
    lock = impl.Lock()
    sem = impl.Semaphore(1)
    other = []
    t = asyncio.create_task(asyncio.sleep(0))
    t.add_done_callback(lambda _: other.append(1))
    # none of these may let the loop run the other task
    assert await ev.wait() is True
    async with lock:
        pass
    async with sem:
        pass
    assert await lock.acquire() is True
    lock.release()
    assert other == []
    await t


@pytest.mark.asyncio
async def test_lock_fifo(impl):
    lock = impl.Lock()
    order = []

    async def worker(i):
        async with lock:
            order.append(i)
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(i) for i in range(20)))
    assert order == list(range(20))


@pytest.mark.asyncio
async def test_semaphore_fifo_and_handoff(impl):
    sem = impl.Semaphore(1)
    await sem.acquire()
    order = []

    async def w(i):
        await sem.acquire()
        order.append(i)

    tasks = await all_started(w(i) for i in range(3))
    assert len(sem._waiters) == 3
    sem.release()
    sem.release()
    assert sem._value == 0  # handed off at wake time
    assert sem.locked()
    await spin()
    assert order == [0, 1]
    assert len(sem._waiters) == 1
    sem.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


@pytest.mark.asyncio
async def test_semaphore_locked_fifo_rule(impl):
    sem = impl.Semaphore(1)
    await sem.acquire()
    t = await started(sem.acquire())
    sem.release()  # handed to t
    sem.release()  # value 1, but t has not run yet
    assert sem._value == 1
    assert sem.locked()  # a non-cancelled waiter is queued
    # a newcomer must not barge in front of t
    newcomer = await started(sem.acquire())
    assert t.done() and newcomer.done()
    assert sem._value == 0


@pytest.mark.asyncio
async def test_lock_newcomer_bypasses_only_cancelled_waiters(impl):
    lock = impl.Lock()
    await lock.acquire()
    t = await started(lock.acquire())
    t.cancel()  # cancels its future synchronously
    lock.release()
    # free, and every queued waiter is cancelled: a newcomer takes it at once
    assert await lock.acquire() is True
    with pytest.raises(asyncio.CancelledError):
        await t
    lock.release()
    assert not lock.locked()


@pytest.mark.asyncio
async def test_woken_then_cancelled_lock_passes_baton(impl):
    lock = impl.Lock()
    await lock.acquire()
    t1 = asyncio.create_task(lock.acquire())
    t2 = await started(lock.acquire())
    lock.release()  # wakes t1
    t1.cancel()  # before it runs
    await spin()
    assert t2.done() and t2.result() is True
    assert t1.cancelled()
    assert lock.locked()
    lock.release()
    assert not lock.locked() and len(lock._waiters) == 0


@pytest.mark.asyncio
async def test_woken_then_cancelled_semaphore_returns_permit(impl):
    sem = impl.Semaphore(0)
    t1 = asyncio.create_task(sem.acquire())
    t2 = await started(sem.acquire())
    sem.release()  # handed to t1
    t1.cancel()
    await spin()
    assert t1.cancelled()
    assert t2.done() and t2.result() is True
    assert sem._value == 0
    assert len(sem._waiters) == 0


@pytest.mark.asyncio
async def test_cancel_message_and_identity_survive(impl):
    lock = impl.Lock()
    await lock.acquire()
    caught = []
    t = await started(catching_cancel(lock.acquire(), caught))
    t.cancel("my message")
    with pytest.raises(asyncio.CancelledError) as ei:
        await t
    assert caught and caught[0].args == ("my message",)
    assert len(lock._waiters) == 0


@pytest.mark.asyncio
async def test_create_task_and_iscoroutine(impl):
    sem = impl.Semaphore(0)
    aw = sem.acquire()
    assert asyncio.iscoroutine(aw)
    t = asyncio.ensure_future(aw)
    await spin()
    assert not t.done()
    sem.release()
    assert await t is True
    r = await asyncio.wait_for(impl.Lock().acquire(), 1)
    assert r is True


@pytest.mark.asyncio
async def test_nothing_happens_until_awaited(impl):
    sem = impl.Semaphore(1)
    aw = sem.acquire()
    assert sem._value == 1
    assert await aw is True
    assert sem._value == 0
    lock = impl.Lock()
    aw = lock.acquire()
    assert not lock.locked()
    aw.close()
    assert not lock.locked()


@pytest.mark.asyncio
async def test_condition_with_our_lock(impl):
    lock = impl.Lock()
    cond = asyncio.Condition(lock=lock)
    results = []

    async def waiter(i):
        async with cond:
            await cond.wait()
            results.append(i)

    tasks = await all_started(waiter(i) for i in range(3))
    async with cond:
        cond.notify(2)
    await spin(10)
    assert results == [0, 1]
    async with cond:
        cond.notify_all()
    await asyncio.gather(*tasks)
    assert results == [0, 1, 2]
    assert not lock.locked()


@pytest.mark.asyncio
async def test_bounded_semaphore_checks_after_handoff(impl):
    b = impl.BoundedSemaphore(1)
    await b.acquire()
    t = await started(b.acquire())
    b.release()  # handed to t: _value stays 0
    b.release()  # asyncio accepts this (the check reads _value after hand-off)
    with pytest.raises(ValueError):
        b.release()
    await t


# ---------------------------------------------------------------- loops


def test_bound_to_other_loop(impl):
    lock = impl.Lock()

    async def hold_and_wait():
        await lock.acquire()
        t = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0)
        lock.release()
        await t
        lock.release()

    asyncio.run(hold_and_wait())
    assert lock._loop is not None

    async def other():
        await lock.acquire()  # uncontended: fine in another loop
        t = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="is bound to a different event loop"):
            await t
        lock.release()

    asyncio.run(other())


def test_loop_attribute_writable(impl):
    lock = impl.Lock()
    loop = asyncio.new_event_loop()
    try:
        lock._loop = loop
        assert lock._loop is loop

        async def main():
            await lock.acquire()
            with pytest.raises(RuntimeError, match="is bound to a different event loop"):
                await lock.acquire()

        asyncio.run(main())
    finally:
        loop.close()


# ---------------------------------------------------------------- subclasses


@pytest.mark.asyncio
async def test_subclass_overrides_are_honoured(impl):
    calls = []

    class MyLock(impl.Lock):
        async def acquire(self):
            calls.append("acquire")
            return await super().acquire()

        def release(self):
            calls.append("release")
            super().release()

    lock = MyLock()
    async with lock:
        assert lock.locked()
    assert calls == ["acquire", "release"]

    class AlwaysLocked(impl.Semaphore):
        def locked(self):
            calls.append("locked")
            return super().locked()

    s = AlwaysLocked(1)
    async with s:
        pass
    assert "locked" in calls


# ---------------------------------------------------------------- the coroutine protocol


@pytest.mark.asyncio
async def test_protocol_send_throw_close(impl):
    sem = impl.Semaphore(1)
    aw = sem.acquire()
    with pytest.raises(StopIteration) as ei:
        aw.send(None)
    assert ei.value.value is True
    assert sem._value == 0

    # throw before start: nothing happens, the exception comes out
    aw = sem.acquire()
    with pytest.raises(ZeroDivisionError):
        aw.throw(ZeroDivisionError())
    assert sem._value == 0

    # a waiting acquire that is closed leaves no waiter behind
    aw = sem.acquire()
    fut = aw.send(None)
    assert isinstance(fut, asyncio.Future)
    assert len(sem._waiters) == 1
    aw.close()
    assert len(sem._waiters) == 0
    assert sem._value == 0


@pytest.mark.asyncio
async def test_throw_cancel_while_waiting_reraises_same_instance(impl):
    lock = impl.Lock()
    await lock.acquire()
    aw = lock.acquire()
    aw.send(None)
    exc = asyncio.CancelledError("x")
    with pytest.raises(asyncio.CancelledError) as ei:
        aw.throw(exc)
    assert ei.value is exc
    assert len(lock._waiters) == 0
    lock.release()
    assert not lock.locked()


@pytest.mark.asyncio
async def test_stopiteration_values_are_not_shared_wrongly():
    # the reusable StopIteration(True) must never be seen changed by someone holding it
    sem = aiofast.Semaphore(10)
    held = []
    for _ in range(3):
        try:
            sem.acquire().send(None)
        except StopIteration as e:
            held.append(e)
    assert all(e.value is True and e.args == (True,) for e in held)
    assert await sem.acquire() is True
    try:
        next(iter([]))
    except StopIteration:
        pass
    for _ in range(5):
        assert await sem.acquire() is True
    assert all(e.value is True for e in held)


# ---------------------------------------------------------------- cancellation storms


async def _storm(impl, kind, n_tasks, seed):
    rng = random.Random(seed)
    prim = impl.Semaphore(3) if kind == "sem" else impl.Lock()
    limit = 3 if kind == "sem" else 1
    inside = 0
    max_inside = 0
    completed = 0

    async def worker():
        nonlocal inside, max_inside, completed
        async with prim:
            inside += 1
            max_inside = max(max_inside, inside)
            try:
                for _ in range(rng.randint(0, 2)):
                    await asyncio.sleep(0)
            finally:
                inside -= 1
        completed += 1

    tasks = [asyncio.create_task(worker()) for _ in range(n_tasks)]
    for _ in range(rng.randint(1, 6)):
        await asyncio.sleep(0)
        for t in rng.sample(tasks, k=min(len(tasks), rng.randint(0, 8))):
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert inside == 0
    assert max_inside <= limit
    assert completed + sum(t.cancelled() for t in tasks) == n_tasks
    assert completed > 0
    if kind == "sem":
        assert prim._value == 3
    else:
        assert not prim.locked()
    assert not prim._waiters
    # still fully usable: every permit is there
    for _ in range(limit):
        await prim.acquire()
    assert prim.locked()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["sem", "lock"])
async def test_cancellation_storm_conserves_permits(impl, kind):
    for seed in range(25):
        await _storm(impl, kind, 30, seed)


@pytest.mark.asyncio
async def test_mass_cancellation_any_order(impl):
    for order in ("newest", "oldest", "random"):
        sem = impl.Semaphore(0)
        tasks = [asyncio.create_task(sem.acquire()) for _ in range(2000)]
        await asyncio.sleep(0)
        seq = list(tasks)
        if order == "newest":
            seq.reverse()
        elif order == "random":
            random.Random(1).shuffle(seq)
        for t in seq:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(t.cancelled() for t in tasks)
        assert not sem._waiters and sem._value == 0
        sem.release()
        assert await sem.acquire() is True


@pytest.mark.asyncio
async def test_reentrant_done_callbacks(impl):
    sem = impl.Semaphore(1)
    lock = impl.Lock()
    await sem.acquire()
    log = []

    def cb(task):
        # re-enter both primitives from a done-callback
        log.append(task.result())
        sem.release()
        if lock.locked():
            lock.release()

    tasks = []
    for _ in range(5):
        t = asyncio.create_task(sem.acquire())
        t.add_done_callback(cb)
        tasks.append(t)
    await spin()
    await lock.acquire()
    sem.release()
    await asyncio.gather(*tasks)
    await spin()
    assert log == [True] * 5
    assert sem._value == 1
    assert not lock.locked()


def test_destroyed_with_waiters_pending(impl):
    for cls in (impl.Semaphore, impl.Lock, impl.Event):
        loop = asyncio.new_event_loop()
        prim = cls(0) if cls is impl.Semaphore else cls()

        async def main():
            if cls is impl.Lock:
                await prim.acquire()
            for _ in range(10):
                asyncio.ensure_future(prim.acquire() if cls is not impl.Event else prim.wait())
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        ref = weakref.ref(prim)
        del prim
        loop.close()  # pending tasks are dropped with their waits
        gc.collect()
        assert ref() is None


# ---------------------------------------------------------------- install()


def test_install_uninstall_idempotent():
    import asyncio.locks as locks

    orig = (asyncio.Lock, asyncio.Semaphore, asyncio.BoundedSemaphore, asyncio.Event)
    try:
        aiofast.install()
        aiofast.install()
        assert asyncio.Lock is aiofast.Lock and locks.Lock is aiofast.Lock
        assert asyncio.Semaphore is aiofast.Semaphore and asyncio.Event is aiofast.Event
        assert asyncio.BoundedSemaphore is aiofast.BoundedSemaphore
        assert aiofast.installed()
    finally:
        aiofast.uninstall()
        aiofast.uninstall()
    assert (asyncio.Lock, asyncio.Semaphore, asyncio.BoundedSemaphore, asyncio.Event) == orig
    assert not aiofast.installed()


@pytest.mark.asyncio
async def test_wait_for_timeout_loses_nothing(impl):
    sem = impl.Semaphore(1)
    lock = impl.Lock()
    await sem.acquire()
    await lock.acquire()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(sem.acquire(), 0.001)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(lock.acquire(), 0.001)
    assert not sem._waiters and not lock._waiters
    sem.release()
    lock.release()
    assert sem._value == 1 and not lock.locked()
    assert await asyncio.wait_for(sem.acquire(), 1) is True
    assert await asyncio.wait_for(lock.acquire(), 1) is True


@pytest.mark.asyncio
async def test_taskgroup_and_gather_of_raw_awaitables(impl):
    sem = impl.Semaphore(0)
    ev = impl.Event()
    futs = [asyncio.ensure_future(sem.acquire()) for _ in range(3)] + [
        asyncio.ensure_future(ev.wait())]
    await asyncio.sleep(0)
    for _ in range(3):
        sem.release()
    ev.set()
    assert await asyncio.gather(*futs) == [True, True, True, True]
