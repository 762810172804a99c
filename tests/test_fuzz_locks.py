"""Differential fuzzing of the lock family, with asyncio's own classes as the model.

A hypothesis state machine drives aiofast's Lock / Semaphore / BoundedSemaphore / Event and
asyncio's side by side, each on its own virtual-clock loop, with the same sequence of operations:
start acquirers and waiters as tasks (a bare acquire()/wait(), `async with`, acquire + release,
wait_for with a timeout), release, set and clear, cancel random tasks (with odd cancel messages),
add done-callbacks that re-enter the primitive, run the loops k steps, move virtual time. The
primitives are plain, or subclasses overriding acquire/release/locked (aiofast then dispatches
through them, as asyncio does). After every step everything observable must be the same on both
sides: locked(), is_set(), _value, _locked, the waiters' futures (done / cancelled, in order),
every task's outcome (result, exception, cancellation and its message), what each re-entrant
callback saw, and the state the repr shows. Both loops are closed at the end after cancelling
what is left, and compared once more. Nothing lost, nothing duplicated, no waiter stranded: any
of those would show as a difference from asyncio.

Code that writes asyncio's private `_waiters` deque: loop futures (pending or done) appended at
either end, then cancelled, completed or removed again; the waiters reversed by assigning a new
deque. asyncio wakes such a future as one of its own (it takes the lock's turn or a permit), and
so must aiofast; the ledger below is not kept once a foreign future took part.

Hostile objects: cancel messages whose __eq__/__hash__/__repr__ raise; done-callbacks on the
tasks and on the waiters' own futures that release, acquire, cancel other tasks, set or clear;
cancel messages and task results whose __del__ re-enters the primitive (release, cancel the
first pending task, set/clear) when the finished task is dropped (the `forget` rule).

Besides equality with asyncio, each side keeps a ledger checked whenever its loop has settled
(nothing ready to run: the `settle` rule and the end): permits are conserved (a Semaphore's
_value is its initial value + successful release()s - successful acquire()s, wherever they
happened: tasks, callbacks, __del__, the driver; a Lock is locked iff one more acquire than
release succeeded), and no waiter is stranded (no pending waiter while a permit is free, the
Lock unlocked, or the Event set).

Example counts come from the hypothesis profile (tests/conftest.py; HYPOTHESIS_PROFILE=thorough
for a long local run).
"""
import asyncio
import collections
import re

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import aiofast
from virtual_time import VirtualClockLoop

MAX_TASKS = 24
LOCKS = ("Lock", "Semaphore", "BoundedSemaphore")


class Hostile:
    """A cancel message whose comparisons, hash, str and repr all raise."""

    def __eq__(self, other):
        raise RuntimeError("hostile __eq__")

    def __hash__(self):
        raise RuntimeError("hostile __hash__")

    def __repr__(self):
        raise RuntimeError("hostile __repr__")

    __str__ = __repr__


MESSAGES = st.one_of(st.none(), st.sampled_from(["", "stop", "ß\x00"]), st.builds(Hostile))


def subclass_of(base, kind):
    """A subclass overriding what asyncio code may override: aiofast must go through it."""
    if kind == "Event":
        class Sub(base):
            def set(self):
                return base.set(self)

            def wait(self):
                return base.wait(self)
    else:
        class Sub(base):
            def acquire(self):
                return base.acquire(self)

            def release(self):
                return base.release(self)

            def locked(self):
                return base.locked(self)
    return Sub


async def hold_for(n):
    for _ in range(n):
        await asyncio.sleep(0)


async def with_block(side, hold):
    entered = False
    try:
        async with side.prim:
            entered = True
            side.acquired += 1
            await hold_for(hold)
    except (RuntimeError, ValueError):
        raise  # __aexit__'s release() failed (someone released it meanwhile): nothing released
    except BaseException:
        side.released += entered
        raise
    side.released += 1
    return "released"


async def acquire_release(side, hold):
    got = await side.prim.acquire()
    side.acquired += 1
    try:
        await hold_for(hold)
    finally:
        side.release()
    return got


async def counted(side, wait_name):
    got = await getattr(side.prim, wait_name)()
    side.acquired += wait_name == "acquire"
    return got


async def timed(side, timeout, hold, wait_name):
    # the ledger counts inside wait_for: an acquire that wins against the timeout counts even
    # where wait_for then drops its result (asyncio < 3.12)
    got = await asyncio.wait_for(counted(side, wait_name), timeout)
    if wait_name == "acquire":
        await hold_for(hold)
        side.release()
    return got


class DelHook:
    """A cancel message or task result whose __del__ re-enters the primitive."""

    def __init__(self, side, action):
        self.side, self.action = side, action

    def __repr__(self):
        return f"DelHook({self.action})"

    def __del__(self):
        side = self.side
        try:
            side.log.append(("__del__", self.action, side.act(self.action)))
        except Exception as e:  # noqa: BLE001  (must not escape a __del__)
            side.log.append(("__del__", self.action, type(e).__name__))


async def returns_hook(side, action):
    got = await (side.prim.acquire() if side.kind in LOCKS else side.prim.wait())
    side.acquired += side.kind in LOCKS
    return DelHook(side, action)


def describe_exc(e):
    # messages by identity: a Hostile must not be compared, and the same object went to both;
    # a DelHook (one per side) by its repr
    args = tuple(a if isinstance(a, (str, int, type(None)))
                 else repr(a) if isinstance(a, DelHook) else ("obj", id(a)) for a in e.args)
    return type(e).__name__, args


def outcome(task):
    if not task.done():
        return ("pending",)
    if task.cancelled():
        try:
            task.result()
        except asyncio.CancelledError as e:
            return ("cancelled",) + describe_exc(e)[1:]
    e = task.exception()
    if e is None:
        r = task.result()
        return ("result", repr(r) if isinstance(r, DelHook) else r)  # no reference kept
    return ("error",) + describe_exc(e)


class Side:
    def __init__(self, mod, kind, value, variant):
        self.loop = VirtualClockLoop()
        cls = getattr(mod, kind)
        if variant == "subclass":
            cls = subclass_of(cls, kind)
        self.kind = kind
        self.prim = cls() if value is None else cls(value)
        self.initial = value
        self.tasks = []
        self.raw = []        # tasks whose coroutine is the bare acquire() itself
        self.forgotten = []  # outcomes of dropped tasks, by index
        self.log = []
        self.acquired = self.released = 0
        self.foreign = []    # loop futures appended to _waiters by the driver

    def release(self):
        """prim.release(), counted in the ledger when it succeeds."""
        r = self.prim.release()
        self.released += 1
        return r

    def act(self, action):
        """What a re-entrant callback or __del__ does; returns what it saw."""
        p = self.prim
        if action == "release" and self.kind in LOCKS:
            return self.call(self.release)
        if action == "set" and self.kind == "Event":
            return self.call(p.set)
        if action == "clear" and self.kind == "Event":
            return self.call(p.clear)
        if action == "cancel_next":
            later = [x for x in self.tasks if x is not None and not x.done()]
            return later[0].cancel() if later else None
        if action == "spawn" and len(self.tasks) < MAX_TASKS:
            coro = p.acquire() if self.kind in LOCKS else p.wait()
            self.spawn(coro, raw=True)
            return len(self.tasks)
        return self.call(p.locked) if self.kind in LOCKS else p.is_set()

    def spawn(self, coro, raw=False):
        t = self.loop.create_task(coro)
        self.tasks.append(t)
        self.forgotten.append(None)
        if raw and self.kind in LOCKS:
            self.raw.append(t)
        return t

    def outcomes(self):
        return [outcome(t) if t is not None else f for t, f in zip(self.tasks, self.forgotten)]

    def live_tasks(self):
        return [t for t in self.tasks if t is not None]

    def call(self, fn, *args):
        """Call fn and describe what happened: ('ok', result) or the exception."""
        try:
            return ("ok", fn(*args))
        except Exception as e:  # noqa: BLE001
            return ("raised",) + describe_exc(e)

    def steps(self, k):
        for _ in range(k):
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()

    def state(self, kind):
        p = self.prim
        waiters = p._waiters
        s = {
            "waiters": None if waiters is None else [(f.done(), f.cancelled()) for f in waiters],
            "tasks": self.outcomes(),
            "log": list(self.log),
            "repr": re.search(r"\[([^\]]*)\]>$", repr(p)).group(1),
            "time": self.loop.time(),
        }
        if kind == "Event":
            s["is_set"] = p.is_set()
            s["_value"] = p._value
        else:
            s["locked"] = p.locked()
            if kind == "Lock":
                s["_locked"] = p._locked
            else:
                s["_value"] = p._value
        return s

    # ------------------------------------------------------------------ the ledger
    def settle(self):
        """Run until nothing is ready (timers may be pending)."""
        for _ in range(200):
            self.steps(1)
            if not self.loop._ready:
                return
        raise AssertionError("the loop never settles")

    def check_ledger(self):
        """Permits conserved and no waiter stranded; call when the loop has settled."""
        if self.foreign:
            return  # a foreign future may hold a permit, or the turn, for good (as in asyncio)
        p = self.prim
        raw_acquired = sum(1 for t in self.raw if t.done() and not t.cancelled()
                           and t.exception() is None)
        held = self.acquired + raw_acquired - self.released
        waiters = list(p._waiters or ())
        pending = [f for f in waiters if not f.done()]
        # a waiter woken but not yet run (the permit is on its way to it): not stranded
        woken = [f for f in waiters if f.done() and not f.cancelled()]
        if self.kind == "Lock":
            assert held in (0, 1), f"{held} holders of a Lock"
            assert p.locked() == (held == 1), (p.locked(), held)
            free = not p.locked()
        elif self.kind == "Event":
            free = p.is_set()
        else:
            assert p._value == self.initial - held, (p._value, self.initial, held)
            free = p._value > 0
        assert not (free and pending and not woken), \
            f"{len(pending)} waiters stranded beside a free permit"

    def close(self):
        # cancel until everything is done (callbacks may start new tasks meanwhile)
        for _ in range(100):
            pending = [t for t in self.live_tasks() if not t.done()]
            if not pending:
                break
            for t in pending:
                t.cancel()
            self.steps(1)
        self.loop.close()


class LockFamilyMachine(RuleBasedStateMachine):
    """The machine for one class (KIND; one subclass per class below, so each gets the whole
    example budget)."""

    KIND = None
    sides = ()

    @initialize(value=st.sampled_from([0, 1, 2, 3]),
                variant=st.sampled_from(["plain", "plain", "subclass"]))
    def setup(self, value, variant, kind=None):
        kind = kind or self.KIND
        self.kind = kind
        if kind == "Lock" or kind == "Event":
            value = None
        elif kind == "BoundedSemaphore":
            value = max(value, 1)
        self.a = Side(aiofast, kind, value, variant)
        self.b = Side(asyncio, kind, value, variant)
        self.sides = (self.a, self.b)

    def teardown(self):
        try:
            for side in self.sides:
                side.settle()
            for side in self.sides:
                side.check_ledger()  # before observing: outcome() may drop a DelHook message
            if len(self.sides) == 2:
                self.same_observable_state()
        finally:
            for side in self.sides:
                side.close()
        if len(self.sides) == 2:
            assert self.a.outcomes() == self.b.outcomes()

    def same(self, fn):
        """Run fn(side) on both sides; the outcomes must be equal."""
        ra, rb = (fn(side) for side in self.sides)
        assert ra == rb, (ra, rb)
        return ra

    # ------------------------------------------------------------------ operations

    def is_lock(self):
        return self.kind in LOCKS

    @precondition(lambda self: self.sides and len(self.a.tasks) < MAX_TASKS)
    @rule(how=st.sampled_from(["bare", "bare", "with", "acquire_release", "timed"]),
          hold=st.integers(0, 3), timeout=st.sampled_from([0, 0.5, 1.0, 4.0]))
    def spawn(self, how, hold, timeout):
        if self.kind == "Event" and how in ("with", "acquire_release"):
            how = "bare"
        wait_name = "acquire" if self.is_lock() else "wait"

        def start(side):
            p = side.prim
            if how == "bare":
                side.spawn(getattr(p, wait_name)(), raw=True)
                return
            if how == "with":
                coro = with_block(side, hold)
            elif how == "acquire_release":
                coro = acquire_release(side, hold)
            else:
                coro = timed(side, timeout, hold, wait_name)
            side.spawn(coro)

        for side in self.sides:
            start(side)

    @precondition(lambda self: self.sides and self.kind in LOCKS)
    @rule()
    def release(self):
        self.same(lambda side: side.call(side.release))

    @precondition(lambda self: self.sides and len(self.a.foreign) < 6)
    @rule(front=st.booleans(), done=st.booleans())
    def append_foreign(self, front, done):
        """A loop future appended to _waiters, pending or already done, at either end."""
        def go(side):
            p = side.prim
            if p._waiters is None:
                p._waiters = collections.deque()
            fut = side.loop.create_future()
            if done:
                fut.set_result("foreign")
            (p._waiters.appendleft if front else p._waiters.append)(fut)
            side.foreign.append(fut)
            return len(p._waiters)
        self.same(go)

    @precondition(lambda self: self.sides and self.a.foreign)
    @rule(i=st.integers(0, 10**6), how=st.sampled_from(["remove", "cancel", "set_result"]))
    def touch_foreign(self, i, how):
        """Remove an appended future from _waiters (wherever it stands), or finish it."""
        def go(side):
            fut = side.foreign[i % len(side.foreign)]
            if how == "remove":
                return side.call(side.prim._waiters.remove, fut)
            if how == "cancel":
                return fut.cancel()
            return side.call(fut.set_result, "foreign")
        self.same(go)

    @precondition(lambda self: self.sides and self.a.prim._waiters)
    @rule()
    def reverse_waiters(self):
        """Assign _waiters a new deque of the same futures, in reverse order."""
        def go(side):
            side.prim._waiters = collections.deque(reversed(list(side.prim._waiters)))
            return len(side.prim._waiters)
        self.same(go)

    @precondition(lambda self: self.sides and self.kind == "Event")
    @rule()
    def set(self):
        self.same(lambda side: side.call(side.prim.set))

    @precondition(lambda self: self.sides and self.kind == "Event")
    @rule()
    def clear(self):
        self.same(lambda side: side.call(side.prim.clear))

    @precondition(lambda self: self.sides and self.a.live_tasks())
    @rule(i=st.integers(0, 10**6), msg=MESSAGES)
    def cancel(self, i, msg):
        self.same(lambda side: side.live_tasks()[i % len(side.live_tasks())].cancel(msg))

    @precondition(lambda self: self.sides and self.a.live_tasks())
    @rule(i=st.integers(0, 10**6), action=st.sampled_from(["release", "cancel_next", "set",
                                                           "clear", "state"]))
    def cancel_with_del_message(self, i, action):
        """Cancel with a message (one per side) whose __del__ re-enters the primitive."""
        def go(side):
            tasks = side.live_tasks()
            return tasks[i % len(tasks)].cancel(DelHook(side, action))
        self.same(go)

    @precondition(lambda self: self.sides and len(self.a.tasks) < MAX_TASKS)
    @rule(action=st.sampled_from(["release", "cancel_next", "set", "clear", "state"]))
    def spawn_returning_del_hook(self, action):
        """A task whose result's __del__ re-enters the primitive (when the task is forgotten)."""
        for side in self.sides:
            side.spawn(returns_hook(side, action))

    @precondition(lambda self: self.sides and any(t is not None and t.done()
                                                  for t in self.a.tasks))
    @rule(i=st.integers(0, 10**6))
    def forget(self, i):
        """Drop a finished task: its result and cancel message die with it (__del__ runs)."""
        def go(side):
            done = [k for k, t in enumerate(side.tasks) if t is not None and t.done()]
            k = done[i % len(done)]
            side.forgotten[k] = outcome(side.tasks[k])
            t = side.tasks[k]
            side.tasks[k] = None
            if t in side.raw:
                # the ledger keeps what it needs: whether the bare acquire() succeeded
                side.acquired += not t.cancelled() and t.exception() is None
                side.raw.remove(t)
            del t
        for side in self.sides:
            go(side)

    @precondition(lambda self: self.sides)
    @rule()
    def settle(self):
        for side in self.sides:
            side.settle()
        for side in self.sides:
            side.check_ledger()
        self.same_observable_state()

    @precondition(lambda self: self.sides)
    @rule(k=st.integers(1, 4))
    def run(self, k):
        for side in self.sides:
            side.steps(k)

    @precondition(lambda self: self.sides)
    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, dt):
        for side in self.sides:
            side.loop.advance(dt)
            side.steps(1)

    @precondition(lambda self: self.sides and self.a.live_tasks())
    @rule(i=st.integers(0, 10**6),
          action=st.sampled_from(["release", "cancel_next", "state", "spawn", "set", "clear"]))
    def reentrant_callback(self, i, action):
        """A done-callback on a task that re-enters the primitive when the task finishes."""
        def install(side):
            tasks = side.live_tasks()
            task = tasks[i % len(tasks)]
            n = len(side.log)

            def cb(t):
                r = side.act(action)
                side.log.append((n, action, r, outcome(t)))

            task.add_done_callback(cb)

        for side in self.sides:
            install(side)

    @precondition(lambda self: self.sides and self.a.prim._waiters)
    @rule(i=st.integers(0, 10**6),
          action=st.sampled_from(["release", "cancel_next", "state", "spawn", "set", "clear"]))
    def waiter_future_callback(self, i, action):
        """A done-callback on a waiter's own future (it runs before the woken task resumes)."""
        def install(side):
            futs = list(side.prim._waiters)
            fut = futs[i % len(futs)]
            n = len(side.log)

            def cb(f):
                r = side.act(action)
                side.log.append((n, "future", action, r, f.cancelled()))

            fut.add_done_callback(cb)

        for side in self.sides:
            install(side)

    # ------------------------------------------------------------------ the model check

    @invariant()
    def same_observable_state(self):
        if not self.sides:
            return
        sa = self.a.state(self.kind)
        sb = self.b.state(self.kind)
        assert sa == sb, "\n".join(f"{k}: aiofast={sa[k]!r} asyncio={sb[k]!r}"
                                   for k in sa if sa[k] != sb.get(k))


for _kind in LOCKS + ("Event",):
    _machine = type(f"{_kind}Machine", (LockFamilyMachine,), {"KIND": _kind})
    # cheap steps: twice the profile's steps per example (tests/conftest.py)
    _machine.TestCase.settings = settings(
        settings.default, stateful_step_count=2 * settings.default.stateful_step_count)
    globals()[f"Test{_kind}AgainstAsyncio"] = _machine.TestCase
del _kind, _machine


def test_machine_runs_on_this_python():
    m = LockFamilyMachine()
    try:
        m.setup(kind="Semaphore", value=1, variant="plain")
        m.spawn(how="bare", hold=0, timeout=0)
        m.spawn(how="with", hold=1, timeout=0)
        m.run(k=3)
        m.same_observable_state()
        assert [outcome(t)[0] for t in m.a.tasks] == ["result", "pending"]
        m.release()
        m.run(k=4)
        m.same_observable_state()
        assert [outcome(t) for t in m.a.tasks] == [("result", True), ("result", "released")]
    finally:
        m.teardown()


@pytest.mark.parametrize("kind", LOCKS + ("Event",))
def test_hostile_cancel_message(kind):
    # the message object is never compared, hashed or printed by either implementation
    m = LockFamilyMachine()
    try:
        m.setup(kind=kind, value=0, variant="plain")
        if kind in LOCKS and kind != "Semaphore":
            m.spawn(how="bare", hold=0, timeout=0)  # take the only permit
        m.spawn(how="with" if kind in LOCKS else "bare", hold=0, timeout=0)
        m.run(k=2)
        m.cancel(i=len(m.a.tasks) - 1, msg=Hostile())
        m.run(k=2)
        m.same_observable_state()
        assert m.a.tasks[-1].cancelled()
    finally:
        m.teardown()
