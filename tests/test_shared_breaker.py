"""CircuitBreaker(shared=name): one breaker state for every process of the host.

The in-process breaker's own rule tests (test_breaker.py) run again here against shared
breakers: their CircuitBreaker(..., clock=Clock) becomes CircuitBreaker(..., shared=<a fresh
segment>, _testing=True), and the Clock drives the segment's virtual time (a test segment has a
time of its own, moved only by _shared_advance; a real one reads CLOCK_MONOTONIC).

Then several processes on one breaker: failures spread across them open it exactly when the
shared count reaches the threshold; half-open probes are bounded host-wide; a worker SIGKILLed
while holding a probe slot or the record's mutex costs nothing lasting. And the errors: a
mismatched configuration, hostile names, clock= with shared=, the test hooks on a real segment.
"""
import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as hs
from hypothesis.stateful import initialize

import aiofast
from aiofast import CircuitBreaker, CircuitOpenError, CircuitState

sys.path.insert(0, os.path.dirname(__file__))
import test_breaker as tb  # noqa: E402

_counter = itertools.count()
SHM_DIR = "/dev/shm"


def fresh_name():
    return f"test-sbk.{os.getpid()}.{next(_counter)}"


def unlink(name):
    try:
        aiofast.shared_unlink(name)
    except FileNotFoundError:
        pass


@pytest.fixture
def names():
    made = []

    def new():
        made.append(fresh_name())
        return made[-1]

    yield new
    for n in made:
        unlink(n)


class SharedClock:
    """The tests' Clock (helpers.Clock) for shared breakers: advancing it advances the virtual
    time of every segment made with it (each test breaker has its own segment)."""

    def __init__(self, now=1000.0):
        self._now = now
        self.breakers = []

    @property
    def now(self):
        return self._now

    @now.setter
    def now(self, v):
        self.advance(v - self._now)

    def __call__(self):
        return self._now

    def advance(self, dt):
        assert dt >= 0
        self._now += dt
        for b in self.breakers:
            b._shared_advance(dt)


@pytest.fixture
def shared_rig(monkeypatch, names):
    """test_breaker with its CircuitBreaker made shared; returns the clock to pass its tests."""
    clock = SharedClock()

    def make(*args, clock=None, **kwargs):
        b = CircuitBreaker(*args, shared=names(), _testing=True, **kwargs)
        if clock is not None:
            clock.breakers.append(b)
        return b

    monkeypatch.setattr(tb, "CircuitBreaker", make)
    return clock


# ------------------------------------------------------------------ the rule tests, shared

SYNC_RULES = [
    "test_consecutive_failures_open_and_reject",
    "test_success_resets_consecutive_count",
    "test_half_open_probe_success_closes",
    "test_half_open_probe_failure_reopens",
    "test_success_threshold",
    "test_forced_transitions",
    "test_count_window_failure_rate",
    "test_count_window_min_calls",
    "test_time_window",
    "test_slow_calls_open_in_rate_mode",
    "test_slow_calls_counted_in_default_mode",
    "test_exclude_is_neither",
    "test_abandoned_calls_free_their_probe_slots",
    "test_reentrant_listener",
    "test_listener_removing_itself",
    "test_repr_and_error_messages",
    "test_generator_functions",
]

ASYNC_RULES = [
    "test_fallback",
    "test_concurrent_half_open_callers_one_probe",
    "test_half_open_max_calls",
    "test_cancelled_probe_frees_its_slot",
    "test_stale_closed_call_is_not_a_probe",
    "test_async_with_is_per_task",
    "test_async_callable_that_is_not_a_coroutine_function",
    "test_dropped_pending_task_frees_its_call",
]


@pytest.mark.parametrize("rule", SYNC_RULES)
def test_rules_shared(rule, shared_rig):
    getattr(tb, rule)(shared_rig)


@pytest.mark.parametrize("rule", ASYNC_RULES)
@pytest.mark.asyncio
async def test_rules_shared_async(rule, shared_rig):
    await getattr(tb, rule)(shared_rig)


def test_base_exceptions_are_neither_shared(shared_rig):
    for exc in (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError):
        tb.test_base_exceptions_are_neither(exc, shared_rig)


def test_listener_that_raises_is_logged_shared(shared_rig, caplog):
    tb.test_listener_that_raises_is_logged(caplog, shared_rig)


class SharedBreakerMachine(tb.BreakerMachine):
    """test_breaker's model-based machine (random calls in flight, outcomes, cancellations,
    clock moves, forced transitions, hostile predicates and listeners that re-enter) on a shared
    breaker, against the same model."""

    @initialize(cfg=tb.CONFIGS, predicate=hs.booleans())
    def setup(self, cfg, predicate):
        self.segment = fresh_name()
        clock = SharedClock(1000.0)  # a test segment's time starts at 1000 s
        saved = tb.CircuitBreaker, tb.Clock

        def make(*args, clock=None, **kwargs):
            b = CircuitBreaker(*args, shared=self.segment, _testing=True, **kwargs)
            clock.breakers.append(b)
            return b

        tb.CircuitBreaker, tb.Clock = make, lambda t: clock
        try:
            super().setup(cfg, predicate)
        finally:
            tb.CircuitBreaker, tb.Clock = saved
        assert self.b.shared == self.segment and self.clock is clock

    def teardown(self):
        super().teardown()
        if hasattr(self, "segment"):
            unlink(self.segment)


TestSharedBreakerModel = SharedBreakerMachine.TestCase
TestSharedBreakerModel.settings = settings(max_examples=max(100, settings.default.max_examples),
                                           stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ the closed path


def test_closed_calls_allocate_nothing(names):
    """A closed call on a shared breaker reads the published word and takes no mutex: nothing is
    allocated, not even transiently (the same as the in-process breaker's plain-def call)."""
    b = CircuitBreaker(10**9, shared=names())

    @b
    def f(x):
        return x

    def run(n):
        for _ in range(n):
            f(None)

    run(200)
    grown = []
    for _ in range(3):  # the smallest of three: another thread may allocate during one
        before = sys.getallocatedblocks()
        run(20_000)
        grown.append(sys.getallocatedblocks() - before)
    assert min(grown, key=abs) in range(-2, 3)
    tracemalloc.start()
    try:
        run(100)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run(5_000)
        assert tracemalloc.get_traced_memory()[1] - base < 512
    finally:
        tracemalloc.stop()
    assert b.stats()["calls"] == 200 + 60_000 + 5_100 and b.success_count == 65_300


# ------------------------------------------------------------------ one process, two objects


@pytest.mark.asyncio
async def test_two_objects_share_one_state(names):
    n = names()
    a = CircuitBreaker(3, 10, shared=n, _testing=True, name="a")
    b = CircuitBreaker(3, 10, shared=n, _testing=True, name="b")
    assert a.shared == b.shared == n and CircuitBreaker(3).shared is None
    seen_a, seen_b = [], []
    a.add_listener(lambda br, o, s: seen_a.append((o.value, s.value)))
    b.add_listener(lambda br, o, s: seen_b.append((o.value, s.value)))

    @a
    async def fa():
        raise tb.Boom

    @b
    async def fb(ok):
        if not ok:
            raise tb.Boom
        return ok

    with pytest.raises(tb.Boom):
        await fa()
    assert await fb(True) is True  # a success resets the shared consecutive count
    assert (a.failure_count, a.success_count) == (0, 1)
    for f in (fa, lambda: fb(False), fa):
        with pytest.raises(tb.Boom):
            await f()
    # the third failure, made through `a`, opened it for both; only `a` made a transition
    assert a.state is b.state is CircuitState.OPEN and b.failure_count == 3
    assert seen_a == [("closed", "open")] and seen_b == []
    with pytest.raises(CircuitOpenError):
        await fb(True)
    a._shared_advance(10)
    assert await fb(True) is True  # the probe, through `b`, closes it
    assert a.state is CircuitState.CLOSED
    assert seen_b == [("open", "half_open"), ("half_open", "closed")]
    # totals are each object's own
    assert a.stats()["calls"] == 3 and b.stats()["calls"] == 3 and b.stats()["rejections"] == 1


# ------------------------------------------------------------------ several processes

WORKER = textwrap.dedent(r"""
    import os, sys, json
    import aiofast
    from aiofast import CircuitBreaker, CircuitOpenError

    b = CircuitBreaker(**json.loads(sys.argv[1]))

    @b
    def call(ok):
        if not ok:
            raise ValueError("down")
        return ok

    tickets = []
    print("ready", os.getpid(), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] in ("ok", "fail"):
            try:
                call(cmd[0] == "ok")
                out = "ok"
            except ValueError:
                out = "failed"
            except CircuitOpenError:
                out = "rejected"
        elif cmd[0] == "acquire":
            try:
                tickets.append(b._acquire())
                out = "admitted"
            except CircuitOpenError:
                out = "rejected"
        elif cmd[0] == "state":
            out = b.state.value
        elif cmd[0] == "spin":
            # hammer the record (a failure and a success each round: both take its mutex)
            print("spinning", flush=True)
            while True:
                for ok in (False, True):
                    try:
                        call(ok)
                    except (ValueError, CircuitOpenError):
                        pass
        elif cmd[0] == "crash":
            b._shared_crash()
        print(out, flush=True)
""")


class Worker:
    def __init__(self, **config):
        import json

        self.p = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(config)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.p.stdout.readline().split()
        assert first[0] == "ready", first
        self.pid = int(first[1])

    def send(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def recv(self):
        line = self.p.stdout.readline()
        assert line, "worker died"
        return line.strip()

    def ask(self, cmd):
        self.send(cmd)
        return self.recv()

    def kill(self):
        self.p.kill()
        self.p.wait()
        self.p.stdin.close()
        self.p.stdout.close()

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=30)
            self.p.stdout.close()
        else:
            self.p.stdin.close()
            self.p.stdout.close()


@pytest.fixture
def workers():
    made = []

    def start(n, **config):
        ws = [Worker(**config) for _ in range(n)]
        made.extend(ws)
        return ws

    yield start
    for w in made:
        if w.p.poll() is None:
            w.kill()
        else:
            w.close()


def test_failures_spread_across_processes_open_at_the_threshold(names, workers):
    n = names()
    cfg = dict(failure_threshold=8, recovery_timeout=10, shared=n, _testing=True)
    ws = workers(4, **cfg)
    here = CircuitBreaker(**cfg)
    for i in range(8):
        w = ws[i % 4]
        assert w.ask("fail") == "failed"
        other = ws[(i + 1) % 4]
        expect = "open" if i == 7 else "closed"
        assert other.ask("state") == expect and here.state.value == expect
        assert here.failure_count == i + 1
    for w in ws:
        assert w.ask("ok") == "rejected"
    # a success anywhere resets the consecutive count everywhere
    here.close()
    for w in ws[:3]:
        assert w.ask("fail") == "failed"
    assert ws[3].ask("ok") == "ok" and here.failure_count == 0
    for i in range(7):
        assert ws[i % 4].ask("fail") == "failed"
    assert here.state is CircuitState.CLOSED and here.failure_count == 7


@pytest.mark.parametrize("max_calls", [1, 3])
def test_half_open_probes_bounded_host_wide(names, workers, max_calls):
    n = names()
    cfg = dict(failure_threshold=1, recovery_timeout=5, half_open_max_calls=max_calls,
               shared=n, _testing=True)
    ws = workers(6, **cfg)
    here = CircuitBreaker(**cfg)
    for rnd in range(3):
        here.open()
        here._shared_advance(5)
        assert here.state is CircuitState.HALF_OPEN
        for w in ws:  # every process races for the slots at once
            w.send("acquire")
        answers = [w.recv() for w in ws]
        assert answers.count("admitted") == max_calls, answers
        info = here._shared_info()
        admitted = {w.pid for w, a in zip(ws, answers) if a == "admitted"}
        assert sorted(p for p in info["probe_pids"] if p) == sorted(admitted)
        assert info["probes"] == max_calls
        with pytest.raises(CircuitOpenError) as ei:
            here._acquire()
        assert ei.value.remaining == 0.0


def test_killed_probe_holder_does_not_keep_its_slot(names, workers):
    n = names()
    cfg = dict(failure_threshold=1, recovery_timeout=5, shared=n, _testing=True)
    here = CircuitBreaker(**cfg)
    (w,) = workers(1, **cfg)
    here.open()
    here._shared_advance(5)
    assert w.ask("acquire") == "admitted"
    assert here._shared_info()["probe_pids"] == [w.pid]
    with pytest.raises(CircuitOpenError):
        here._acquire()  # the owner is alive: its slot stays taken
    w.kill()
    t = here._acquire()  # the owner is gone: the next admission reclaims its slot
    assert here._shared_info()["probe_pids"] == [os.getpid()]
    here._release(t, None)
    assert here.state is CircuitState.CLOSED and here._shared_info()["probe_pids"] == [0]


def test_killed_halfway_through_an_update(names, workers):
    """A process killed holding the mutex, with the copy it was writing scribbled over and a new
    word stored: the others recover the mutex and carry on from the published record."""
    n = names()
    cfg = dict(failure_threshold=3, recovery_timeout=5, shared=n, _testing=True)
    here = CircuitBreaker(**cfg)
    (w,) = workers(1, **cfg)
    for _ in range(2):
        assert w.ask("fail") == "failed"
    before = here._shared_info()
    w.send("crash")
    w.p.wait(timeout=30)
    assert w.p.returncode == -signal.SIGKILL
    w.close()
    info = here._shared_info()
    assert info["recoveries"] == 1
    assert (info["state"], info["failures"]) == (0, 2)  # the published record, intact
    assert info["gen"] >= before["gen"] + 2  # past anything the dead process published
    assert here.state is CircuitState.CLOSED and here.failure_count == 2
    tb.fail_n(here, 1)
    assert here.state is CircuitState.OPEN and here.failure_count == 3
    here._shared_advance(5)
    with here:
        pass
    assert here.state is CircuitState.CLOSED


def test_killed_at_random_instants(names, workers):
    """Workers hammering the record are SIGKILLed at random instants, many times: each time the
    breaker stays usable and consistent (the debug build checks every invariant at each update).
    The window is large so that an update (which copies it) is most of a worker's time: most
    kills land inside the mutex, and the owner-death recovery runs."""
    n = names()
    cfg = dict(failure_rate=0.5, window=100_000, recovery_timeout=0.5, half_open_max_calls=2,
               shared=n, _testing=True)
    here = CircuitBreaker(**cfg)
    rng = random.Random(1234)
    for _ in range(12):
        ws = workers(2, **cfg)
        for w in ws:
            assert w.ask("spin") == "spinning"
        time.sleep(rng.uniform(0.001, 0.02))
        for w in ws:
            w.kill()
        info = here._shared_info()
        assert info["state"] in (0, 1, 2)
        held = sum(1 for p in info["probe_pids"] if p)
        assert held == info["probes"] <= 2
        # usable: force a known state and go through a whole cycle
        here.open()
        assert here.state is CircuitState.OPEN
        here._shared_advance(0.5)
        with here:
            pass
        assert here.state is CircuitState.CLOSED and here.failure_count == 0
    assert here._shared_info()["recoveries"] >= 1


# ------------------------------------------------------------------ errors


def test_mismatched_configuration(names):
    n = names()
    CircuitBreaker(5, 30, shared=n)
    with pytest.raises(ValueError) as ei:
        CircuitBreaker(6, 30, shared=n)
    msg = str(ei.value)
    assert "failure_threshold=5" in msg and "failure_threshold=6" in msg
    with pytest.raises(ValueError, match="window=10.*window=20|window=20.*window=10"):
        m = names()
        CircuitBreaker(failure_rate=0.5, window=10, shared=m)
        CircuitBreaker(failure_rate=0.5, window=20, shared=m)
    with pytest.raises(ValueError, match="_testing=True"):
        CircuitBreaker(5, 30, shared=n, _testing=True)  # a test segment never mixes with a real one
    # what is each process's own may differ: classification, fallback, name
    b = CircuitBreaker(5, 30, shared=n, expected_exception=KeyError, name="other",
                       fallback=lambda: None)
    assert b.name == "other" and b.shared == n


@pytest.mark.parametrize("what", ["state", "layout"])
def test_corrupted_record_is_refused(names, what):
    """A segment whose record was scribbled over (a stray write of a process of the same user):
    the next opener gets a clear error, never a crash."""
    n = names()
    b = CircuitBreaker(2, 5, shared=n, _testing=True)
    b._shared_corrupt(what)
    del b  # (the scribbler itself is not to be used any more)
    with pytest.raises(aiofast.SharedSegmentError, match="corrupted CircuitBreaker record"):
        CircuitBreaker(2, 5, shared=n, _testing=True)
    aiofast.shared_unlink(n)
    assert CircuitBreaker(2, 5, shared=n, _testing=True).state is CircuitState.CLOSED


def segments():
    return {x for x in os.listdir(SHM_DIR) if x.startswith("aiofast.")}


@pytest.mark.parametrize("bad, exc", [
    ("../x", ValueError), ("a/b", ValueError), ("x" * 300, ValueError), ("a\0b", ValueError),
    ("", ValueError), (".hidden", ValueError), (b"bytes", TypeError), (7, TypeError),
])
def test_hostile_names(bad, exc):
    before = segments()
    with pytest.raises(exc):
        CircuitBreaker(shared=bad)
    # nothing created (other tests may make their own segments meanwhile: look for ours)
    stem = bad.replace("/", "").replace("\0", "")[:20] if isinstance(bad, str) else ""
    assert not any(x.startswith("aiofast." + stem) and stem for x in segments() - before)


def test_shared_refuses_what_it_cannot_share(names):
    with pytest.raises(ValueError, match="clock= cannot be given with shared="):
        CircuitBreaker(shared=names(), clock=lambda: 1.0)
    with pytest.raises(ValueError, match="half_open_max_calls of a shared breaker"):
        CircuitBreaker(half_open_max_calls=5000, shared=names())
    with pytest.raises(ValueError, match="window of a shared breaker"):
        CircuitBreaker(failure_rate=0.5, window=10**6, shared=names())
    with pytest.raises(ValueError, match="_testing needs shared="):
        CircuitBreaker(_testing=True)
    with pytest.raises(TypeError, match="circuit"):
        CircuitBreaker(shared=names())._peer_mode()


def test_test_hooks_refuse_real_segments(names):
    b = CircuitBreaker(1, 5, shared=names())
    with pytest.raises(RuntimeError, match="test hook"):
        b._shared_advance(5)
    with pytest.raises(RuntimeError, match="test hook"):
        b._shared_crash()
    with pytest.raises(RuntimeError, match="test hook"):
        b._shared_corrupt("state")
    with pytest.raises(RuntimeError, match="not a shared breaker"):
        CircuitBreaker()._shared_info()
    assert b.state is CircuitState.CLOSED


def test_real_segment_runs_on_the_monotonic_clock(names):
    b = CircuitBreaker(1, 5, shared=names())
    t0 = time.monotonic()
    b.open()
    rem = b.remaining
    assert 5 - (time.monotonic() - t0) - 1e-6 <= rem <= 5.0


def test_unlinked_segment_starts_again(names):
    n = names()
    a = CircuitBreaker(1, 5, shared=n, _testing=True)
    a.open()
    aiofast.shared_unlink(n)
    b = CircuitBreaker(1, 5, shared=n, _testing=True)
    assert b.state is CircuitState.CLOSED and a.state is CircuitState.OPEN
