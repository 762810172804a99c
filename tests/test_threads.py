"""Cross-thread misuse: using a primitive from a thread other than its loop's.

asyncio's primitives are not thread-safe and asyncio does not support this; aiofast must still
never corrupt memory. Each use either works (under the GIL, as asyncio's pure-Python classes
do) or raises a clean exception, exactly as asyncio's own class does where one is given (the
`impl` tests run on both). These tests also run under ASan+UBSan and the debug build's invariant
checks (scripts/asan.sh, scripts/debug.sh), which is where a memory error would show.

The foreign-thread wake-ups are made while the loop's own thread is parked (joined on the
worker), so the loop itself is never entered by two threads at once: uvloop (libuv) would race
with itself there, which is not ours to test. The free-running stress test uses asyncio's loop
for the same reason.
"""
import asyncio
import functools
import threading

import pytest

import aiofast
from helpers import fast_thread_switching, in_threads, spin_until


def in_thread(fn):
    """Run fn in a new thread and wait for it; what it returned or the exception it raised."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


async def ticking(coro):
    """Await coro while a ticker keeps the loop from blocking for long. A wake-up made from
    another thread is a plain call_soon (asyncio has no thread-safe path for it), which does not
    interrupt a loop blocked in select() with no timer due: with the tick, such a wake-up is late
    instead of lost (asyncio's own classes behave the same)."""
    async def tick():
        while True:
            await asyncio.sleep(0.001)

    ticker = asyncio.ensure_future(tick())
    try:
        return await coro
    finally:
        ticker.cancel()


@pytest.mark.asyncio
async def test_release_from_another_thread_wakes_the_waiter(impl):
    lock = impl.Lock()
    await lock.acquire()
    waiter = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    out = in_thread(lock.release)  # the loop thread is parked in join() meanwhile
    assert out == {"value": None}
    assert await spin_until(waiter.done)
    assert waiter.result() is True and lock.locked()
    lock.release()


@pytest.mark.asyncio
async def test_semaphore_and_event_from_another_thread(impl):
    sem = impl.Semaphore(0)
    ev = impl.Event()
    a = asyncio.ensure_future(sem.acquire())
    b = asyncio.ensure_future(ev.wait())
    await asyncio.sleep(0)
    assert in_thread(sem.release) == {"value": None}
    assert in_thread(ev.set) == {"value": None}
    assert await spin_until(lambda: a.done() and b.done())
    assert a.result() is True and b.result() is True
    assert sem._value == 0 and not sem._waiters


def test_release_from_another_thread_in_debug_mode_raises(impl):
    # asyncio's debug mode refuses call_soon from a foreign thread: release() reports it. The
    # waiter's future is then finished but its task never scheduled (asyncio's Future sets its
    # state before scheduling callbacks), so the waiter is stranded, with asyncio's class too.
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    try:
        lock = impl.Lock()

        async def main():
            await lock.acquire()
            waiter = asyncio.ensure_future(lock.acquire())
            await asyncio.sleep(0)
            out = in_thread(lock.release)
            waiter._log_destroy_pending = False  # stranded by design (see above)
            return out, waiter

        out, waiter = loop.run_until_complete(main())
        assert isinstance(out.get("error"), RuntimeError), out
        assert "thread" in str(out["error"])
        assert not lock.locked() and not waiter.done()
        assert len(lock._waiters) == 1 and lock._waiters[0].done()
    finally:
        loop.close()


def test_operation_made_in_one_thread_awaited_in_another(impl):
    lock = impl.Lock()
    made = in_thread(lock.acquire)["value"]  # created in a worker, not awaited there

    async def use():
        return await made

    out = in_thread(lambda: asyncio.run(use()))
    assert out == {"value": True}
    assert lock.locked()
    lock.release()


def test_bound_to_a_loop_in_another_thread_raises(impl):
    lock = impl.Lock()

    async def bind():
        await lock.acquire()
        t = asyncio.ensure_future(lock.acquire())  # waits: binds the lock to this loop
        await asyncio.sleep(0)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(bind())
        assert lock.locked()

        async def contend():
            await lock.acquire()  # locked: must wait, on the wrong loop

        out = in_thread(lambda: asyncio.run(contend()))
        assert isinstance(out.get("error"), RuntimeError)
        assert "different event loop" in str(out["error"])
        lock.release()
        assert not lock.locked() and not lock._waiters
    finally:
        loop.close()


def test_free_running_threads_hammering_shared_primitives():
    """Threads with their own loops, and the main loop, use the same objects at once with tiny
    GIL switch intervals: whatever interleaving happens, each call works or raises
    RuntimeError (a wait on a loop the object is not bound to), and every permit comes back.

    The interleaving is the scheduler's; what is asserted holds for every interleaving. So that
    cross-loop contention happens on every run, the main loop holds the lock (bound to it) until
    each thread has met it once."""
    sem = aiofast.Semaphore(1)
    lock = aiofast.Lock()
    ev = aiofast.Event()
    errors = []
    counts = {"sem": 0, "lock": 0}
    nthreads = 3
    met_the_lock = [threading.Event() for _ in range(nthreads)]
    hung = []

    async def worker(rounds, met=None):
        for i in range(rounds):
            try:
                async with sem:
                    counts["sem"] += 1
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                async with lock:
                    counts["lock"] += 1
                    await asyncio.sleep(0)
                if i % 7 == 0:
                    ev.set()
                    ev.clear()
            except RuntimeError as e:
                errors.append(str(e))
                if met is not None and "different event loop" in str(e):
                    met.set()
                await asyncio.sleep(0)

    def thread_main(k):
        asyncio.run(ticking(worker(300, met_the_lock[k])))

    async def main_loop(threads):
        # bind the lock to this loop and hold it: each thread's first `async with lock` must
        # wait, on the wrong loop
        await lock.acquire()
        t = asyncio.ensure_future(lock.acquire())
        await asyncio.sleep(0)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        for th in threads:
            th.start()
        tasks = []
        for _ in range(240_000):  # a guard against a hang, never reached (about 2 minutes)
            if lock.locked() and not tasks and all(m.is_set() for m in met_the_lock):
                lock.release()
                tasks = [asyncio.ensure_future(worker(10**9)) for _ in range(4)]
            if tasks and not any(th.is_alive() for th in threads) and counts["lock"] > 4:
                break
            await asyncio.sleep(0.0005)
        hung.extend(th for th in threads if th.is_alive())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with fast_thread_switching():
        threads = [threading.Thread(target=thread_main, args=(k,), daemon=True)
                   for k in range(nthreads)]
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main_loop(threads))
        finally:
            loop.close()
        for t in threads:
            t.join(0 if hung else None)
    assert not hung, "worker threads never finished"
    assert all("different event loop" in e for e in errors), sorted(set(errors))[:5]
    assert len(errors) >= nthreads and counts["lock"] > 4
    # nothing lost, nothing duplicated: all permits are back, nobody is left waiting
    assert sem._value == 1 and not sem._waiters
    assert not lock.locked() and not lock._waiters


def _hammer(worker, nthreads=3, rounds=300):
    """Run asyncio.run(worker(k, rounds)) in nthreads threads at once, with a tiny GIL switch
    interval, and in the main thread too, all on the same objects; the exceptions that escaped.

    Each loop ticks (see `ticking`)."""
    escaped = []

    def guarded(k):
        try:
            asyncio.run(ticking(worker(k, rounds)))
        except BaseException as e:  # noqa: BLE001
            escaped.append(e)

    in_threads((functools.partial(guarded, k) for k in range(nthreads)),
               meanwhile=functools.partial(guarded, nthreads))
    return escaped


def test_free_running_threads_sharing_queues():
    """Threads, each with its own loop, put and get on the same Queue, PriorityQueue and
    LifoQueue: each call works, or (a wait on a loop the queue is not bound to) raises
    RuntimeError; no item is lost or duplicated and the task accounting adds up."""
    queues = [aiofast.Queue(), aiofast.PriorityQueue(), aiofast.LifoQueue()]
    put, got, errors = [], [], []

    async def worker(k, rounds):
        for i in range(rounds):
            for q in queues:
                item = (i % 17, k, i)
                q.put_nowait(item)
                put.append(item)
                try:
                    got.append(q.get_nowait())
                    q.task_done()
                except asyncio.QueueEmpty:
                    pass
                if i % 5 == 0:
                    try:
                        got.append(await asyncio.wait_for(q.get(), 0.01))
                        q.task_done()
                    except RuntimeError as e:
                        errors.append(str(e))
                    except asyncio.TimeoutError:  # builtin TimeoutError on 3.11+
                        pass
            await asyncio.sleep(0)

    escaped = _hammer(worker)
    assert escaped == []
    assert all("different event loop" in e for e in errors), sorted(set(errors))[:5]
    left = []
    for q in queues:
        assert q._unfinished_tasks == q.qsize()
        assert not q._getters and not q._putters
        while not q.empty():
            left.append(q.get_nowait())
            q.task_done()
        assert q._unfinished_tasks == 0
    assert sorted(got + left) == sorted(put)


def test_free_running_threads_sharing_a_token_bucket():
    """Threads, each with its own loop, take tokens from one bucket (waiting, with timeouts,
    without waiting): each call works, times out having taken nothing, or raises RuntimeError
    (a wait on a loop the bucket is not bound to); never more tokens are granted than flowed in,
    and nobody is left waiting."""
    import time

    rate, capacity = 2000.0, 5.0
    b = aiofast.TokenBucket(rate, capacity=capacity)
    granted, errors = [], []

    async def worker(k, rounds):
        for i in range(rounds):
            n = 1 + (i + k) % 3
            try:
                if i % 2:
                    await b.acquire(n, timeout=0.005)
                    granted.append(n)
                elif b.try_acquire(n):
                    granted.append(n)
            except RuntimeError as e:
                errors.append(str(e))
            except TimeoutError:
                pass
            if i % 10 == 0:
                await asyncio.sleep(0)

    t0 = time.monotonic()
    escaped = _hammer(worker, rounds=200)
    elapsed = time.monotonic() - t0
    assert escaped == []
    assert all("different event loop" in e for e in errors), sorted(set(errors))[:5]
    assert b.waiting == 0
    assert 0 <= b.tokens <= capacity
    # exact to the token: what was granted flowed in (the start-up level, then the rate)
    assert sum(granted) <= capacity + rate * elapsed + 1e-6
    assert granted


def test_binding_follows_the_loop_running_now(impl):
    """An object binds to the loop running when it first waits, never to one found earlier: loops
    that ran and closed before in this thread, or that run in another thread, are not it."""

    async def bind(sem):
        t = asyncio.ensure_future(sem.acquire())  # waits: binds sem to the running loop
        await asyncio.sleep(0)
        t.cancel()
        (err,) = await asyncio.gather(t, return_exceptions=True)
        if not isinstance(err, asyncio.CancelledError):
            raise err
        return asyncio.get_running_loop()

    def in_new_loop(sem):
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(bind(sem)) is loop
        finally:
            loop.close()
        return loop

    for _ in range(3):  # each new loop in this thread, after the last one closed
        sem = impl.Semaphore(0)
        loop = in_new_loop(sem)
        assert sem._loop is loop
        other = impl.Semaphore(0)
        out = in_thread(lambda other=other: in_new_loop(other))  # a loop of another thread
        assert sem._loop is loop and other._loop is out["value"] is not loop
        with pytest.raises(RuntimeError, match="different event loop"):
            in_new_loop(sem)  # bound to the closed loop: this one is another
        with pytest.raises(RuntimeError, match="no running event loop"):
            asyncio.get_running_loop()
