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

Example counts come from the hypothesis profile (tests/conftest.py; HYPOTHESIS_PROFILE=thorough
for a long local run).
"""
import asyncio
import re

import hypothesis.strategies as st
import pytest
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


async def with_block(prim, hold):
    async with prim:
        await hold_for(hold)
    return "released"


async def acquire_release(prim, hold):
    got = await prim.acquire()
    try:
        await hold_for(hold)
    finally:
        prim.release()
    return got


async def timed(prim, timeout, hold, wait_name):
    got = await asyncio.wait_for(getattr(prim, wait_name)(), timeout)
    if wait_name == "acquire":
        await hold_for(hold)
        prim.release()
    return got


def describe_exc(e):
    # messages by identity: a Hostile must not be compared, and the same object went to both
    args = tuple(a if isinstance(a, (str, int, type(None))) else ("obj", id(a)) for a in e.args)
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
        return ("result", task.result())
    return ("error",) + describe_exc(e)


class Side:
    def __init__(self, mod, kind, value, variant):
        self.loop = VirtualClockLoop()
        cls = getattr(mod, kind)
        if variant == "subclass":
            cls = subclass_of(cls, kind)
        self.prim = cls() if value is None else cls(value)
        self.tasks = []
        self.log = []

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
            "tasks": [outcome(t) for t in self.tasks],
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

    def close(self):
        # cancel until everything is done (callbacks may start new tasks meanwhile)
        for _ in range(100):
            pending = [t for t in self.tasks if not t.done()]
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
        for side in self.sides:
            side.close()
        if len(self.sides) == 2:
            assert [outcome(t) for t in self.a.tasks] == [outcome(t) for t in self.b.tasks]

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
                coro = getattr(p, wait_name)()
            elif how == "with":
                coro = with_block(p, hold)
            elif how == "acquire_release":
                coro = acquire_release(p, hold)
            else:
                coro = timed(p, timeout, hold, wait_name)
            side.tasks.append(side.loop.create_task(coro))

        for side in self.sides:
            start(side)

    @precondition(lambda self: self.sides and self.kind in LOCKS)
    @rule()
    def release(self):
        self.same(lambda side: side.call(side.prim.release))

    @precondition(lambda self: self.sides and self.kind == "Event")
    @rule()
    def set(self):
        self.same(lambda side: side.call(side.prim.set))

    @precondition(lambda self: self.sides and self.kind == "Event")
    @rule()
    def clear(self):
        self.same(lambda side: side.call(side.prim.clear))

    @precondition(lambda self: self.sides and self.a.tasks)
    @rule(i=st.integers(0, 10**6), msg=MESSAGES)
    def cancel(self, i, msg):
        self.same(lambda side: side.tasks[i % len(side.tasks)].cancel(msg))

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

    @precondition(lambda self: self.sides and self.a.tasks)
    @rule(i=st.integers(0, 10**6),
          action=st.sampled_from(["release", "cancel_next", "state", "spawn", "set", "clear"]))
    def reentrant_callback(self, i, action):
        """A done-callback on a task that re-enters the primitive when the task finishes."""
        kind = self.kind

        def install(side):
            task = side.tasks[i % len(side.tasks)]
            n = len(side.log)

            def cb(t):
                p = side.prim
                if action == "release" and kind in LOCKS:
                    r = side.call(p.release)
                elif action == "set" and kind == "Event":
                    r = side.call(p.set)
                elif action == "clear" and kind == "Event":
                    r = side.call(p.clear)
                elif action == "cancel_next":
                    later = [x for x in side.tasks if not x.done()]
                    r = later[0].cancel() if later else None
                elif action == "spawn" and len(side.tasks) < MAX_TASKS:
                    coro = p.acquire() if kind in LOCKS else p.wait()
                    side.tasks.append(side.loop.create_task(coro))
                    r = len(side.tasks)
                else:
                    r = side.call(p.locked) if kind in LOCKS else p.is_set()
                side.log.append((n, action, r, outcome(t)))

            task.add_done_callback(cb)

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
