"""SharedTokenBucket: TokenBucket(..., shared=name), one bucket for every process of the host.

In one process the bucket runs on virtual time through its private `_clock` (a callable returning
nanoseconds: here the virtual loop's time), which stands for CLOCK_MONOTONIC, the host's clock.
Across processes: the order of service on a virtual schedule (each worker on its own virtual
loop), and real time where real time is the point (accuracy under 4 workers, workers killed at
random instants). Rates and periods are chosen so that the nanosecond arithmetic is exact.
"""
import asyncio
import contextlib
import fractions
import itertools
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import aiofast
from aiofast import SharedTokenBucket, TokenBucket
from aiofast import _core

from helpers import BAD_BUCKET_ARGS, BAD_TIMEOUTS, BAD_TOKEN_TYPES, BAD_TOKENS, spin
from pycompat import asyncio_iscoroutinefunction

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "shm_worker.py")
VT = pytest.mark.asyncio(loop_factories=["virtual-asyncio", "virtual-uvloop"])
_counter = itertools.count()


def unlink_quietly(n):
    with contextlib.suppress(FileNotFoundError):
        aiofast.shared_unlink(n)


@pytest.fixture
def name():
    n = f"test-sb.{os.getpid()}.{next(_counter)}"
    yield n
    unlink_quietly(n)


def vclock():
    loop = asyncio.get_running_loop()
    return lambda: round(loop.time() * 1e9)


def vbucket(*args, **kwargs):
    """A shared bucket on the running (virtual) loop's clock."""
    return SharedTokenBucket(*args, _clock=vclock(), **kwargs)


# ---------------------------------------------------------------------------------------------
# construction, attributes, the API


def test_shared_makes_a_shared_bucket(name):
    b = TokenBucket(10, capacity=3, shared=name)
    assert type(b) is SharedTokenBucket
    assert (b.rate, b.per, b.capacity, b.shared, b.waiting) == (10, 1.0, 3, name, 0)
    assert b.tokens == 3.0
    assert os.path.exists("/dev/shm/aiofast." + name)
    r = repr(b)
    assert r.startswith("<aiofast.SharedTokenBucket object at 0x")
    assert f"[shared:'{name}', rate:10/1s, tokens:3/3, waiting:0]>" in r
    # shared=None is the in-process bucket
    assert type(TokenBucket(10, shared=None)) is TokenBucket
    assert "SharedTokenBucket" in aiofast.__all__ and "shared_unlink" in aiofast.__all__


def test_defaults_as_tokenbucket(name):
    b = TokenBucket(5000, per=3600, shared=name)
    assert (b.rate, b.per, b.capacity) == (5000, 3600, 5000)
    assert TokenBucket(0.5, shared=name + "x").capacity == 1
    unlink_quietly(name + "x")


def test_exotic_numbers(name):
    b = TokenBucket(fractions.Fraction(10), per=2, capacity=True, shared=name)
    assert b.capacity is True and b.rate == 10 and b.per == 2
    assert b.try_acquire(fractions.Fraction(1, 2)) is True


def test_signatures():
    import inspect
    sig = str(inspect.signature(SharedTokenBucket))
    assert sig == "(rate, per=1.0, *, capacity=None, initial=None, shared)"
    assert str(inspect.signature(TokenBucket)) == \
        "(rate, per=1.0, *, capacity=None, initial=None, shared=None)"
    assert str(inspect.signature(SharedTokenBucket.acquire)) == "(self, /, tokens=1, timeout=None)"
    assert str(inspect.signature(SharedTokenBucket.try_acquire)) == "(self, /, tokens=1)"
    assert asyncio_iscoroutinefunction(SharedTokenBucket.acquire)
    assert inspect.iscoroutinefunction(SharedTokenBucket.__aenter__)


def test_subclass_cannot_be_shared(name):
    class Mine(TokenBucket):
        pass
    with pytest.raises(TypeError, match="shared= makes a SharedTokenBucket"):
        Mine(10, shared=name)
    with pytest.raises(TypeError, match="cannot become shared"):
        TokenBucket(10).__init__(10, shared=name)
    with pytest.raises(TypeError):
        class Sub(SharedTokenBucket):
            pass
    assert not os.path.exists("/dev/shm/aiofast." + name)


def test_processes_see_one_bucket(name):
    b = TokenBucket(1, per=3600, capacity=5, shared=name)
    assert b.try_acquire(3)
    code = (f"import aiofast; b = aiofast.TokenBucket(1, per=3600, capacity=5, shared={name!r},"
            f" initial=5); print(b.try_acquire(2), b.try_acquire(), round(b.tokens, 3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    # the later opener's `initial` is ignored: it sees the 2 tokens left, takes them
    assert out == ["True", "False", "0.0"]
    assert b.try_acquire() is False and b.tokens < 0.01


def test_unlink_while_open_keeps_the_mapping(name):
    b = TokenBucket(1, per=3600, capacity=2, shared=name)
    aiofast.shared_unlink(name)
    assert b.try_acquire() and b.try_acquire() and not b.try_acquire()
    # the next opener makes a new bucket (full)
    b2 = TokenBucket(1, per=3600, capacity=2, shared=name)
    assert b2.tokens == 2.0


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    BAD_BUCKET_ARGS + [
        ((10,), {"capacity": -3}, ValueError, r"capacity must be .* got -3"),
        ((10,), {"initial": "1"}, TypeError, r"initial must be a real number, not str"),
        ((1e-9, 1e9), {}, ValueError, r"capacity \* per / rate must be below 146 years"),
        ((10,), {"loop": None}, TypeError, r"invalid keyword|unexpected keyword"),
    ],
)
def test_bad_construction(name, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TokenBucket(*args, shared=name, **kwargs)
    with pytest.raises(exc, match=match):
        SharedTokenBucket(*args, shared=name, **kwargs)
    assert not os.path.exists("/dev/shm/aiofast." + name)   # nothing created


@pytest.mark.parametrize("bad, exc", [
    ("../x", ValueError), ("x" * 300, ValueError), ("a\0b", ValueError), ("", ValueError),
    (".x", ValueError), (3, TypeError), (b"x", TypeError), (math.nan, TypeError),
])
def test_bad_names(bad, exc):
    with pytest.raises(exc, match="shared name"):
        TokenBucket(10, shared=bad)


def test_shared_is_required():
    with pytest.raises(TypeError, match="needs shared=name"):
        SharedTokenBucket(10)


@pytest.mark.parametrize("method", ["acquire", "try_acquire", "has_capacity"])
@pytest.mark.parametrize(
    "tokens, exc, match", BAD_TOKENS + BAD_TOKEN_TYPES)
def test_bad_tokens(name, method, tokens, exc, match):
    b = TokenBucket(10, per=3600, shared=name)
    with pytest.raises(exc, match=match):
        getattr(b, method)(tokens)
    assert b.tokens == 10.0


@pytest.mark.parametrize("timeout, exc, match", BAD_TIMEOUTS)
def test_bad_timeout(name, timeout, exc, match):
    b = TokenBucket(10, shared=name)
    with pytest.raises(exc, match=match):
        b.acquire(1, timeout=timeout)


def test_bad_call_arguments(name):
    b = TokenBucket(10, shared=name)
    with pytest.raises(TypeError, match="takes at most 2 arguments"):
        b.acquire(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n'"):
        b.try_acquire(n=1)
    with pytest.raises(TypeError, match="multiple values for argument 'tokens'"):
        b.has_capacity(1, tokens=1)
    with pytest.raises(TypeError, match="decorates one async function"):
        b(1, 2)
    with pytest.raises(TypeError, match="__aexit__"):
        b.__aexit__()
    for attr in ("rate", "per", "capacity", "tokens", "waiting", "shared"):
        with pytest.raises(AttributeError):
            setattr(b, attr, 1)


@pytest.mark.parametrize("clock, exc, match", [
    (lambda: 1.5, ValueError, r"int of nanoseconds"),
    (lambda: -1, ValueError, r"int of nanoseconds"),
    (lambda: 2**70, ValueError, r"int of nanoseconds"),
    (lambda: "x", ValueError, r"int of nanoseconds"),
    (lambda: 1 / 0, ZeroDivisionError, r"division"),
])
def test_hostile_clock(name, clock, exc, match):
    good = [True]
    b = SharedTokenBucket(10, shared=name,
                          _clock=lambda: 10**12 if good[0] else clock())
    good[0] = False
    with pytest.raises(exc, match=match):
        b.try_acquire()
    with pytest.raises(exc, match=match):
        b.tokens
    good[0] = True
    assert b.try_acquire() is True and b.tokens == 9.0


def test_segment_faults_through_the_bucket(name):
    b = TokenBucket(10, capacity=5, shared=name)
    with pytest.raises(ValueError) as e:
        TokenBucket(10, capacity=6, shared=name)
    assert "(rate=10, per=1, capacity=5)" in str(e.value)
    assert "(rate=10, per=1, capacity=6)" in str(e.value)
    with pytest.raises(aiofast.SharedSegmentError, match="holds a TokenBucket, not a CircuitBreaker"):
        _core._shm_probe(name, 2, b"", 64)
    del b
    path = "/dev/shm/aiofast." + name
    os.chmod(path, 0o666)
    with pytest.raises(PermissionError, match="mode 0666"):
        TokenBucket(10, capacity=5, shared=name)
    os.chmod(path, 0o600)
    os.truncate(path, 100)
    with pytest.raises(aiofast.SharedSegmentError, match="truncated"):
        TokenBucket(10, capacity=5, shared=name)
    with open(path, "r+b") as f:
        f.write(b"\x01" * 8)
    with pytest.raises(aiofast.SharedSegmentError, match="not aiofast's"):
        TokenBucket(10, capacity=5, shared=name)
    aiofast.shared_unlink(name)
    # a breaker's segment under the name
    _core._shm_probe(name, 2, b"breaker", 64)
    with pytest.raises(aiofast.SharedSegmentError, match="holds a CircuitBreaker, not a TokenBucket"):
        TokenBucket(10, capacity=5, shared=name)


# ---------------------------------------------------------------------------------------------
# the rules, on virtual time


@VT
async def test_burst_then_rate(name):
    b = vbucket(4, capacity=2, shared=name)           # 0.25 s per token
    t0 = asyncio.get_running_loop().time()
    assert b.try_acquire() and b.try_acquire() and not b.try_acquire()
    assert b.tokens == 0.0 and not b.has_capacity()
    await b.acquire()
    assert asyncio.get_running_loop().time() == t0 + 0.25
    await b.acquire(2)
    assert asyncio.get_running_loop().time() == t0 + 0.75
    await asyncio.sleep(0.125)
    assert b.tokens == 0.5


@VT
async def test_uncontended_acquire_does_not_yield(name):
    b = vbucket(4, capacity=2, shared=name)
    aw = b.acquire()
    with pytest.raises(StopIteration):
        aw.send(None)


@VT
async def test_fifo_reservations_in_one_process(name):
    b = vbucket(4, capacity=2, initial=0, shared=name)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    order = []

    async def one(tag, n):
        await b.acquire(n)
        order.append((tag, loop.time() - t0))

    tasks = [asyncio.ensure_future(one(k, n)) for k, n in enumerate([2, 1, 2, 1])]
    await spin()
    assert b.waiting == 4
    # a newcomer cannot take what is reserved, even when some has flowed in
    await asyncio.sleep(0.25)
    assert b.try_acquire() is False and b.tokens == 0.0
    await asyncio.gather(*tasks)
    # each is served at its reserved instant, in the order it asked
    assert order == [(0, 0.5), (1, 0.75), (2, 1.25), (3, 1.5)]


@VT
async def test_cancel_last_reservation_gives_back(name):
    b = vbucket(4, capacity=2, initial=0, shared=name)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tat0 = b._tat()
    t = asyncio.ensure_future(b.acquire(2))
    await spin()
    assert b._tat() == tat0 + 500_000_000 and b.waiting == 1
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert b._tat() == tat0 and b.waiting == 0   # given back: as if never asked
    await b.acquire(2)
    assert loop.time() == t0 + 0.5


@VT
async def test_cancel_before_a_later_reservation_is_spent(name):
    b = vbucket(4, capacity=2, initial=0, shared=name)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    first = asyncio.ensure_future(b.acquire(2))
    await spin()
    later = asyncio.ensure_future(b.acquire(1))
    await spin()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await later
    # the later one keeps its instant: the cancelled tokens were spent
    assert loop.time() == t0 + 0.75


@VT
async def test_timeout_that_the_reservation_meets(name):
    b = vbucket(4, capacity=2, initial=0, shared=name)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.acquire(1, timeout=0.25)
    assert loop.time() == t0 + 0.25


@VT
async def test_timeout_that_it_cannot_meet_takes_nothing(name):
    b = vbucket(4, capacity=2, initial=0, shared=name)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tat0 = b._tat()
    with pytest.raises(TimeoutError, match=r"acquire\(2.0\) timed out after 0.25 s"):
        await b.acquire(2, timeout=0.25)
    assert loop.time() == t0 + 0.25 and b._tat() == tat0
    with pytest.raises(TimeoutError, match=r"timed out after 0.0 s: the tokens were not available"):
        await b.acquire(2, timeout=0)
    with pytest.raises(TimeoutError, match="not available at once"):
        await b.acquire(2, timeout=-(10**400))


@VT
async def test_timeout_met_at_the_deadline_by_a_give_back(name):
    b = vbucket(4, capacity=2, initial=0, shared=name)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    hog = asyncio.ensure_future(b.acquire(2))          # reserved until t0 + 0.5
    await spin()
    doomed = asyncio.ensure_future(b.acquire(1, timeout=0.25))   # would be t0 + 0.75
    await spin()
    hog.cancel()                                       # the last reservation: given back
    await asyncio.gather(hog, return_exceptions=True)
    await doomed                                       # at its deadline the token is there
    assert loop.time() == t0 + 0.25


@VT
async def test_early_timer_sleeps_again(name):
    loop = asyncio.get_running_loop()
    skew = [0.0]
    b = SharedTokenBucket(4, capacity=2, initial=0, shared=name,
                          _clock=lambda: round((loop.time() - skew[0]) * 1e9))
    t0 = loop.time()
    t = asyncio.ensure_future(b.acquire(1))
    await spin()
    skew[0] = 0.125      # the bucket's clock now lags the loop's: the timer comes early
    await t
    assert loop.time() == t0 + 0.375


@VT
async def test_async_with_and_decorator(name):
    b = vbucket(4, capacity=1, shared=name)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with b:
        pass
    calls = []

    @b
    async def f(x):
        calls.append(loop.time() - t0)
        return x * 2

    assert asyncio_iscoroutinefunction(f)
    assert f.bucket is b and f.__name__ == "f"
    assert await f(1) == 2 and await f(2) == 4
    assert calls == [0.25, 0.5]

    @b
    async def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        await boom()
    assert loop.time() - t0 == 0.75                   # its token is spent


@VT
async def test_cancel_at_every_point_conserves_tokens(name):
    """Cancelling a waiter at any point gives back or spends exactly what the rules say: after
    everything settles, the bucket is where the uncancelled requests alone put it."""
    loop = asyncio.get_running_loop()
    b = vbucket(4, capacity=2, initial=0, shared=name)
    for steps in range(6):
        t = asyncio.ensure_future(b.acquire(2))
        for _ in range(steps):
            await asyncio.sleep(0)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        assert b.waiting == 0
    # the lone cancelled reservations were each the last one: all given back
    t0 = loop.time()
    await b.acquire(2)
    assert loop.time() - t0 <= 0.5


@VT
async def test_close_and_throw_leave(name):
    b = vbucket(4, capacity=2, initial=0, shared=name)
    tat0 = b._tat()
    aw = b.acquire(2)
    aw.send(None)         # reserved, waiting
    assert b.waiting == 1 and b._tat() == tat0 + 500_000_000
    aw.close()
    assert b.waiting == 0 and b._tat() == tat0
    aw = b.acquire(2)
    aw.send(None)
    with pytest.raises(KeyError):
        aw.throw(KeyError("k"))
    assert b.waiting == 0 and b._tat() == tat0


# ---------------------------------------------------------------------------------------------
# the oracle: the same virtual schedule on the in-process TokenBucket, one process


def schedule(seed, n=60):
    rnd = random.Random(seed)
    t = 0.0
    events = []
    for _ in range(n):
        t += rnd.choice([0, 0.125, 0.25, 0.5, 1.0])
        events.append((t, rnd.choice(["try", "try", "acquire", "has", "tokens"]),
                       rnd.choice([1, 1, 2, 0.5, 3])))
    return events


async def run_schedule(bucket, events):
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    log = []

    async def acquire(i, n):
        await bucket.acquire(n)
        log.append((loop.time() - t0, i, "admitted"))

    tasks = []
    for i, (at, what, n) in enumerate(events):
        await asyncio.sleep(t0 + at - loop.time())
        if what == "try":
            log.append((at, i, bucket.try_acquire(n)))
        elif what == "has":
            log.append((at, i, bucket.has_capacity(n)))
        elif what == "tokens":
            # the in-process bucket's level does not count its waiters' claims, the shared one's
            # does: compare when nobody waits, and no admission is due at this very instant
            # (timers due together run in no set order)
            if all(t.done() for t in tasks) and not any(e[0] == at for e in log):
                log.append((at, i, bucket.tokens))
        else:
            tasks.append(asyncio.ensure_future(acquire(i, n)))
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return sorted(log, key=lambda e: (e[0], e[1]))


@VT
@pytest.mark.parametrize("seed", range(6))
async def test_oracle_in_process_bucket(name, seed):
    events = schedule(seed)
    ours = await run_schedule(vbucket(4, per=1, capacity=3, initial=1, shared=name), events)
    theirs = await run_schedule(TokenBucket(4, per=1, capacity=3, initial=1), events)
    assert ours == theirs
    assert any(e[2] == "admitted" for e in ours) and any(e[2] is False for e in ours)


# ---------------------------------------------------------------------------------------------
# across processes


def gcra_model(requests, now, tat, T, tau):
    """The reserved tat and the instant of service of each request, in order."""
    out = []
    for n in requests:
        tat = max(tat, now) + round(n * T)
        out.append((tat, max(now, tat - tau)))
    return out


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_fifo_by_reservation_order_across_processes(name, loop_name):
    """Three processes, each on its own virtual loop (all at 1000 s), reserve in a known order;
    each request is served at the instant its reservation says, in reservation order."""
    procs = [subprocess.Popen([sys.executable, WORKER, "fifo", name, loop_name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    plan = [(0, 1), (1, 2), (2, 1), (0, 2), (1, 1), (2, 2), (0, 1)]
    try:
        got = []
        for who, n in plan:
            p = procs[who]
            p.stdin.write(f"reserve {n}\n")
            p.stdin.flush()
            got.append(int(p.stdout.readline().split()[1]))
        done = {}
        for who, p in enumerate(procs):
            p.stdin.write("run\n")
            p.stdin.flush()
            done[who] = [int(x) for x in p.stdout.readline().split()[1:]]
    finally:
        for p in procs:
            p.stdin.close()
            p.stdout.close()
            assert p.wait(timeout=30) == 0
    T, tau, now = 250_000_000, 500_000_000, 1000 * 10**9
    model = gcra_model([n for _, n in plan], now, now, T, tau)
    assert got == [m[0] for m in model]
    served = []
    seen = {0: 0, 1: 0, 2: 0}
    for who, _ in plan:
        served.append(done[who][seen[who]])
        seen[who] += 1
    assert served == [m[1] for m in model]
    assert served == sorted(served)            # the order of service is the reservation order


def start_steady(name, loop_name, workers, seconds, tasks):
    """Start workers running acquire loops from a common instant, once all are ready; returns
    them and the window (CLOCK_MONOTONIC ns)."""
    procs = [subprocess.Popen([sys.executable, WORKER, "accuracy", name, loop_name, str(tasks)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    start = time.monotonic_ns() + 50_000_000
    end = start + int(seconds * 1e9)
    for p in procs:
        p.stdin.write(f"{start} {end}\n")
        p.stdin.flush()
    return procs, start, end


def steady_counts(procs):
    counts = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs)
    return counts


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_accuracy_four_processes(name, loop_name):
    TokenBucket(1000, capacity=10, shared=name)      # created (full) before the window
    counts = steady_counts(start_steady(name, loop_name, 4, 2.0, 40)[0])
    total = sum(counts)
    bound = 1000 * 2.0 + 10
    assert all(c > 0 for c in counts), counts
    assert bound * 0.99 <= total <= bound * 1.005, (total, counts)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_workers_killed_at_random_instants(name, loop_name, tmp_path):
    """Victims (forked, one after another) run acquire/try_acquire loops and are SIGKILLed at
    random instants while steady workers keep going: no token is created, and at most the one
    each victim had in flight is lost."""
    rnd = random.Random(1234)
    TokenBucket(1000, capacity=10, shared=name)
    tally = tmp_path / "tally"
    spawner = subprocess.Popen([sys.executable, WORKER, "spawner", name, loop_name, str(tally)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seconds = 2.0
    steady, start, end = start_steady(name, loop_name, 2, seconds, 40)
    kills = 0
    try:
        time.sleep(max(0, (start - time.monotonic_ns()) / 1e9))
        while time.monotonic_ns() < end - 100_000_000:
            spawner.stdin.write("fork\n")
            spawner.stdin.flush()
            pid = int(spawner.stdout.readline())
            time.sleep(rnd.uniform(0.005, 0.2))   # (the steady workers reserve ~80 ms ahead)
            os.kill(pid, signal.SIGKILL)
            kills += 1
    finally:
        spawner.stdin.close()
        spawner.stdout.close()
        assert spawner.wait(timeout=30) == 0
    counts = steady_counts(steady)
    assert all(c > 0 for c in counts), counts       # the others kept working
    assert kills >= 8
    victims_taken = tally.stat().st_size if tally.exists() else 0
    assert victims_taken > 0
    total = sum(counts) + victims_taken
    bound = 1000 * seconds + 10
    assert total <= bound * 1.005, (total, counts, victims_taken, kills)
    assert total >= bound * 0.99 - kills, (total, counts, victims_taken, kills)
