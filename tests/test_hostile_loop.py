"""Hostile loops: futures whose done()/cancelled() are Python code that re-enters the primitive.

aiofast calls fut.done(), fut.cancelled() and fut.set_result() on whatever loop.create_future()
returns; with a Future subclass those calls run arbitrary code in the middle of a wake-up. These
tests re-enter from there (closing the waiting operation, cancelling, releasing, setting) and
check the invariants that matter: no crash, no waiter stranded, nothing lost, and in debug builds
the C-level invariant checks pass after every mutation.

The same hooks are not compared with asyncio's classes: aiofast skips done()/cancelled() calls
asyncio makes (a waiter it woke itself is known to be done), so the hooks fire at different
moments by design.
"""
import asyncio
import gc

import pytest

import aiofast


class FiringFuture(asyncio.Future):
    """A future whose done() and cancelled() first call self._fire(where), where is "done" or
    "cancelled"."""

    def done(self):
        self._fire("done")
        return super().done()

    def cancelled(self):
        self._fire("cancelled")
        return super().cancelled()


class HookFuture(FiringFuture):
    """A future whose done() and cancelled() first run (and drop) a one-shot hook."""

    hooks = []

    def _fire(self, where):
        if HookFuture.hooks:
            HookFuture.hooks.pop(0)()


class HookLoop(asyncio.SelectorEventLoop):
    def create_future(self):
        return HookFuture(loop=self)


@pytest.fixture
def loop():
    lp = HookLoop()
    HookFuture.hooks = []
    yield lp
    HookFuture.hooks = []
    lp.close()


def steps(loop, n=6):
    for _ in range(n):
        loop.call_soon(loop.stop)
        loop.run_forever()


def waiting(loop, *coros):
    """Tasks on loop for coros, once they have run as far as they can."""
    tasks = [loop.create_task(coro) for coro in coros]
    steps(loop)
    return tasks


def close_the_first_inside_done(loop, tasks, wake):
    """wake() (release, set), during which the next fut.done() closes the operation tasks[0]
    waits in; that task ends in RuntimeError."""
    HookFuture.hooks = [tasks[0].get_coro().close]
    wake()
    steps(loop)
    assert tasks[0].done() and isinstance(tasks[0].exception(), RuntimeError)


def reap(tasks):
    """Forget finished tasks (and so their operations: a cached one can then be reused)."""
    for t in tasks:
        assert t.done()
        t.cancelled() or t.exception()  # mark the exception retrieved
    tasks.clear()
    gc.collect()


def test_event_waiter_closed_inside_done_is_not_flagged(loop):
    # event.set() asks fut.done(); the hook closes the very operation that waits on it. The
    # closed operation must not keep the "woken" flag: that flag survived into the next
    # wait() through the per-object cache and made set() skip it forever (fixed).
    ev = aiofast.Event()
    t = waiting(loop, ev.wait())
    # its future was still completed, so the orphaned task ends instead of hanging
    close_the_first_inside_done(loop, t, ev.set)
    reap(t)
    ev.clear()
    t2 = loop.create_task(ev.wait())
    steps(loop)
    assert not t2.done()
    ev.set()
    steps(loop)
    assert t2.done() and t2.result() is True


def test_lock_head_closed_inside_done_wakes_the_next(loop):
    lock = aiofast.Lock()

    async def hold():
        await lock.acquire()

    loop.run_until_complete(hold())
    t = waiting(loop, lock.acquire(), lock.acquire())
    # release() asks the head's fut.done(): the hook closes the head's operation
    close_the_first_inside_done(loop, t, lock.release)
    # the wake-up went on to the new head: nobody is stranded on an unlocked lock
    assert t[1].done() and t[1].result() is True
    assert lock.locked()
    lock.release()
    reap(t)
    # and the cached operation comes back clean
    for _ in range(3):
        t = loop.create_task(lock.acquire())
        steps(loop)
        assert t.result() is True
        lock.release()
    assert not lock.locked() and not lock._waiters


def test_semaphore_waiter_closed_inside_done(loop):
    sem = aiofast.Semaphore(0)
    t = waiting(loop, sem.acquire(), sem.acquire())
    close_the_first_inside_done(loop, t, sem.release)
    # the permit went to the next waiter, not to the closed one
    assert t[1].done() and t[1].result() is True
    assert sem._value == 0 and not sem._waiters
    sem.release()
    reap(t)
    t3 = loop.create_task(sem.acquire())
    steps(loop)
    assert t3.result() is True and sem._value == 0


@pytest.mark.parametrize("kind", ["lock", "sem", "event"])
def test_reentrant_hooks_never_strand_a_waiter(loop, kind):
    # every done()/cancelled() call re-enters with some operation on the primitive
    if kind == "lock":
        prim = aiofast.Lock()
    elif kind == "sem":
        prim = aiofast.Semaphore(1)
    else:
        prim = aiofast.Event()
    wait = prim.wait if kind == "event" else prim.acquire
    tasks = []

    def release():
        if kind == "event":
            prim.set()
        elif kind == "lock":
            if prim.locked():
                prim.release()
        else:
            prim.release()

    def spawn():
        tasks.append(loop.create_task(wait()))

    def cancel_oldest():
        for t in tasks:
            if not t.done():
                t.cancel()
                return

    def clear():
        if kind == "event":
            prim.clear()

    actions = [release, spawn, cancel_oldest, clear, spawn, release]
    for round_ in range(30):
        HookFuture.hooks = [actions[(round_ + i) % len(actions)] for i in range(3)]
        spawn()
        steps(loop, 2)
        if round_ % 3 == 0:
            release()
        steps(loop, 2)
    HookFuture.hooks = []
    # drain: keep releasing until every task is done; a stranded waiter never finishes
    for _ in range(200):
        if all(t.done() for t in tasks):
            break
        release()
        steps(loop, 3)
    assert all(t.done() for t in tasks)
    assert not prim._waiters
    for t in tasks:
        assert t.cancelled() or t.result() is True


# ---------------------------------------------------------------- closed waiters


@pytest.mark.parametrize("kind", ["Lock", "Semaphore", "BoundedSemaphore"])
@pytest.mark.parametrize("mod", [aiofast, asyncio], ids=["aiofast", "asyncio"])
def test_closing_a_woken_waiter_passes_the_wakeup_on(kind, mod):
    # A waiter that was handed the lock/permit and is then closed (coro.close(), or its
    # coroutine garbage-collected) before it runs. asyncio's classes only pass the wake-up on
    # for CancelledError, so the next waiter is stranded forever beside a free lock (and the
    # semaphore loses the permit). aiofast passes it on: a deliberate difference, found by the
    # hostile-loop state machine. The asyncio run documents the difference.
    loop = asyncio.new_event_loop()
    try:
        prim = getattr(mod, kind)() if kind == "Lock" else getattr(mod, kind)(1)
        loop.run_until_complete(prim.acquire())
        t = [loop.create_task(prim.acquire()), loop.create_task(prim.acquire())]
        steps(loop)
        prim.release()  # hands over to t[0], which has not run yet
        t[0].get_coro().close()
        t[0]._log_destroy_pending = False
        steps(loop)
        # on both: the closed task ends with the RuntimeError of resuming a closed coroutine
        # (retrieved here, so no "Task exception was never retrieved" when it is collected)
        assert t[0].done() and isinstance(t[0].exception(), RuntimeError)
        if mod is asyncio:
            assert not t[1].done()  # stranded
            t[1].cancel()
            steps(loop)
            assert t[1].cancelled()
            return
        assert t[1].done() and t[1].result() is True
        prim.release()
        if kind == "Lock":
            assert not prim.locked()
        else:
            assert prim._value == 1  # the permit came back: nothing lost
        assert not prim._waiters
    finally:
        loop.close()


# ---------------------------------------------------------------- the same, fuzzed

import hypothesis.strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine, initialize, precondition, rule,
)

ACTIONS = ["release", "spawn", "cancel", "close", "set", "clear", "nothing"]


class FuzzFuture(FiringFuture):
    """done(), cancelled() and __del__ run the machine's hook, which may re-enter."""

    machine = None

    def _fire(self, where):
        m = FuzzFuture.machine
        if m is not None:
            m.hook(where)

    def __del__(self):
        self._fire("del")


class FuzzLoop(asyncio.SelectorEventLoop):
    def create_future(self):
        return FuzzFuture(loop=self)


class HostileLoopMachine(RuleBasedStateMachine):
    """Random operations on one aiofast primitive while the loop's futures re-enter it from
    done(), cancelled() and __del__ with random actions (release, spawn a waiter, cancel a
    task, close a task's operation, set, clear). No model can follow that (aiofast makes fewer
    done()/cancelled() calls than asyncio by design), so the checks are the invariants: no
    crash (and the C invariant checks in debug builds), only clean errors from the primitive,
    and in the end no waiter stranded: with the hooks off, a quiet loop never leaves a pending
    waiter beside a free permit, and every task finishes once the permits are handed out."""

    prim = None

    @initialize(kind=st.sampled_from(["Lock", "Semaphore", "BoundedSemaphore", "Event"]),
                value=st.sampled_from([0, 1, 2]))
    def setup(self, kind, value):
        self.kind = kind
        self.loop = FuzzLoop()
        if kind in ("Semaphore", "BoundedSemaphore"):
            self.prim = getattr(aiofast, kind)(max(value, kind == "BoundedSemaphore"))
        else:
            self.prim = getattr(aiofast, kind)()
        self.tasks = []
        self.closed = set()  # tasks whose operation was closed under them: orphans by design
        self.plan = []
        self.depth = 0
        FuzzFuture.machine = self

    def teardown(self):
        FuzzFuture.machine = None
        if self.prim is None:
            return
        try:
            self.settle()
            self.check_nobody_stranded()
            # hand out permits until everybody is through
            # (a task whose operation was closed under it waits on a future nobody completes
            # any more, with asyncio's classes too: only the others must finish)
            live = [t for t in self.tasks if t not in self.closed]
            for _ in range(200):
                if all(t.done() for t in live):
                    break
                self.act("set" if self.kind == "Event" else "release", quiet=True)
                self.settle()
            assert all(t.done() for t in live), "a waiter never finished"
            for t in self.tasks:
                if t.done() and not t.cancelled():
                    assert t.exception() is None or isinstance(
                        t.exception(), (RuntimeError, ValueError)), t.exception()
        finally:
            for t in self.tasks:
                t.cancel()
            self.settle()
            self.loop.close()
            gc.collect()

    # hooks: each fires the next planned action, at most one level deep
    def hook(self, where):
        if self.depth or not self.plan:
            return
        action = self.plan.pop(0)
        self.depth += 1
        try:
            self.act(action)
        finally:
            self.depth -= 1

    def act(self, action, quiet=False):
        p = self.prim
        try:
            if action == "release" and self.kind != "Event":
                if self.kind != "Lock" or p.locked():
                    p.release()
            elif action == "set" and self.kind == "Event":
                p.set()
            elif action == "clear" and self.kind == "Event":
                p.clear()
            elif action == "spawn" and len(self.tasks) < 20 and not quiet:
                self.tasks.append(self.loop.create_task(
                    p.wait() if self.kind == "Event" else p.acquire()))
            elif action in ("cancel", "close") and not quiet:
                live = [t for t in self.tasks if not t.done()]
                if live:
                    t = live[len(self.plan) % len(live)]
                    if action == "cancel":
                        t.cancel()
                    else:
                        self.closed.add(t)
                        t._log_destroy_pending = False
                        t.get_coro().close()
        except (RuntimeError, ValueError):
            pass  # Lock not acquired, BoundedSemaphore over-released, already executing

    def settle(self, n=100):
        for _ in range(n):
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()
            if not self.loop._ready:
                break

    def check_nobody_stranded(self):
        p = self.prim
        pending = [f for f in (p._waiters or ()) if not f.done()]
        if not pending:
            return
        if self.kind == "Lock":
            assert p.locked(), "an unlocked lock with a pending waiter"
        elif self.kind == "Event":
            assert not p.is_set(), "a set event with a pending waiter"
        else:
            assert p._value <= 0, f"value {p._value} with a pending waiter"

    @rule(actions=st.lists(st.sampled_from(ACTIONS), max_size=4))
    def plan_hooks(self, actions):
        self.plan = actions

    @rule(action=st.sampled_from(ACTIONS))
    def do(self, action):
        self.act(action)

    @rule(k=st.integers(1, 3))
    def run(self, k):
        for _ in range(k):
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()

    @precondition(lambda self: self.tasks)
    @rule()
    def collect(self):
        gc.collect()  # __del__ hooks of dropped futures fire here


TestHostileLoopMachine = HostileLoopMachine.TestCase
