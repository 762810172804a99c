"""aiofast.redis.RedisCircuitBreaker with its state in a RedisBreakerStore, on a real
redis-server (tests/redis_server.py, one per session; a missing redis-server fails these tests).
It is made directly or by aiofast.CircuitBreaker(..., store=RedisBreakerStore(...)) (the
store's make_breaker): both ways are tested, with the same arguments and errors.

- On virtual time (the server's clock injected from the loop's), on asyncio's loop and uvloop:
  the same outcomes give the same states as aiofast.CircuitBreaker (the oracle), two processes'
  worth of breakers on one key (a transition made by one, seen by the other within
  max_staleness), probes bounded, a dead probe's lease expiring, round trips counted; plain
  functions through `await breaker.call(fn)` as async ones.
- On real time and real processes: failures spread over 4 processes open the breaker for all
  of them at the shared threshold; half-open probes bounded fleet-wide; a killed prober's lease
  expires; the server killed, stopped (not answering) and restarted: each policy honoured, no
  call past its timeout, recovery; an ACL user with a password.
"""
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import redis
import redis.asyncio

from aiofast import CircuitBreaker, CircuitOpenError, CircuitState
from aiofast.redis import (
    CircuitUnavailableError,
    RedisBreakerStore,
    RedisCircuitBreaker,
    RedisTokenBucket,
    RedisUnavailableError,
)
from redis_server import RedisServer, loop_clock_as_server_clock

VT = pytest.mark.asyncio(loop_factories=["virtual-asyncio", "virtual-uvloop"])
HERE = os.path.dirname(os.path.abspath(__file__))
CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def fresh():
    return "b-" + uuid.uuid4().hex


class Boom(Exception):
    pass


async def fail():
    raise Boom


async def ok():
    return "ok"


class VStore(RedisBreakerStore):
    """The server's clock read from the loop's virtual clock (tests only)."""

    __slots__ = ()
    _now = loop_clock_as_server_clock()


def vclient(url):
    # on a virtual clock, a timer of redis-py's own would fire at once: none
    return redis.asyncio.Redis.from_url(url, socket_connect_timeout=None, socket_timeout=None)


async def outcome(b, fn):
    try:
        return await b.call(fn)
    except Boom:
        return "failed"
    except CircuitOpenError as e:
        return ("rejected", round(e.remaining, 6))


# ------------------------------------------------------------------ against CircuitBreaker

def fail_plain():
    raise Boom


def ok_plain():
    return "ok"


@VT
@pytest.mark.parametrize("kind", ["async", "plain"])
@pytest.mark.parametrize("seed", range(4))
async def test_same_states_as_circuitbreaker_on_virtual_time(server, seed, kind):
    """One process, a view never stale (max_staleness=0): a random run of successes, failures
    and pauses gives, call by call, the outcome and state aiofast.CircuitBreaker gives; the
    functions called are async or plain (`await breaker.call(fn)` takes both). Odd seeds make
    the breaker with CircuitBreaker(..., store=), even ones with RedisCircuitBreaker."""
    rnd = random.Random(seed)
    loop = asyncio.get_running_loop()
    c = vclient(server.url)
    try:
        kw = dict(failure_threshold=rnd.randint(1, 4), recovery_timeout=rnd.choice([1, 2.5]),
                  success_threshold=rnd.randint(1, 3), name="svc")
        make = CircuitBreaker if seed % 2 else RedisCircuitBreaker
        ours = make(store=VStore(c, fresh(), max_staleness=0, call_timeout=None), **kw)
        assert type(ours) is RedisCircuitBreaker
        oracle = CircuitBreaker(clock=loop.time, **kw)
        fail_fn, ok_fn = (fail, ok) if kind == "async" else (fail_plain, ok_plain)
        seen_ours, seen_oracle = [], []
        ours.add_listener(lambda b, o, n: seen_ours.append((o, n)))
        oracle.add_listener(lambda b, o, n: seen_oracle.append((o, n)))
        for _ in range(60):
            step = rnd.random()
            if step < 0.15:
                await asyncio.sleep(rnd.choice([0.5, 1.0, 2.5]))
                continue
            fn = fail_fn if step < 0.6 else ok_fn
            got, want = await outcome(ours, fn), await outcome(oracle, fn)
            assert got == want
            assert ours.state == oracle.state
            assert ours.failure_count == oracle.failure_count or ours.state != CLOSED
        assert seen_ours == seen_oracle
        assert len(seen_ours) >= 2
    finally:
        await c.aclose()


RATE_CONFIGS = [
    dict(failure_rate=0.5, window=6),                        # min_calls: the window
    dict(failure_rate=0.5, window=8, min_calls=3),
    dict(failure_rate=0.4, window_time=5, min_calls=4),      # buckets of 0.25 s
    dict(failure_rate=0.5, window_time=2.5),                 # min_calls: 10
    dict(failure_rate=0.5, window=6, min_calls=4, slow_call_duration=0.25, slow_call_rate=0.5),
    dict(failure_rate=0.75, window_time=5, min_calls=3, slow_call_duration=0.25),
    dict(failure_threshold=3, slow_call_duration=0.25),      # slow calls counted, not deciding
]


def timed_job(fail, d, clock=None):
    """A call lasting d seconds: on the loop's clock (the Redis breaker's call), or, for the
    oracle, by moving its clock (clock: a one-item list) d seconds on, at once."""

    async def job():
        if clock is None:
            if d:
                await asyncio.sleep(d)
        else:
            clock[0] += d
        if fail:
            raise Boom
        return "ok"

    return job


@VT
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cfg", range(len(RATE_CONFIGS)))
async def test_rate_mode_and_slow_calls_as_circuitbreaker_on_virtual_time(server, cfg, seed):
    """Rate mode over Redis (count and time windows, min_calls, slow calls) against
    aiofast.CircuitBreaker: a random run of successes, failures, slow calls and pauses gives,
    call by call, the same outcome, state, failure_count (closed) and transitions. Each call of
    the Redis breaker lasts d seconds of the loop's clock; the oracle's clock is set to the
    instant that call began and moved d on by its own call, so both see the same times."""
    rnd = random.Random(cfg * 100 + seed)
    loop = asyncio.get_running_loop()
    c = vclient(server.url)
    try:
        kw = dict(RATE_CONFIGS[cfg], recovery_timeout=rnd.choice([1, 2.5]),
                  success_threshold=rnd.randint(1, 2), name="svc")
        make = CircuitBreaker if seed % 2 else RedisCircuitBreaker
        ours = make(store=VStore(c, fresh(), max_staleness=0, call_timeout=None), **kw)
        assert type(ours) is RedisCircuitBreaker
        now = [loop.time()]
        oracle = CircuitBreaker(clock=lambda: now[0], **kw)
        for attr in ("failure_rate", "window", "window_time", "min_calls", "slow_call_duration",
                     "slow_call_rate", "failure_threshold", "success_threshold"):
            assert getattr(ours, attr) == getattr(oracle, attr), attr
        seen_ours, seen_oracle = [], []
        ours.add_listener(lambda b, o, n: seen_ours.append((o, n)))
        oracle.add_listener(lambda b, o, n: seen_oracle.append((o, n)))
        slow = "slow_call_duration" in kw
        for i in range(120):
            step = rnd.random()
            if step < 0.12:
                await asyncio.sleep(rnd.choice([0.25, 0.5, 1.0, 2.5]))
                continue
            fail = rnd.random() < (0.85 if i // 20 % 2 else 0.2)   # bad and good spells
            d = rnd.choice([0, 0.125, 0.25, 0.5]) if slow else 0
            now[0] = loop.time()
            got = await outcome(ours, timed_job(fail, d))
            assert loop.time() == now[0] + (d if got in ("ok", "failed") else 0)
            want = await outcome(oracle, timed_job(fail, d, now))
            assert got == want
            assert ours.state == oracle.state
            if ours.state == CLOSED:
                assert ours.failure_count == oracle.failure_count
        assert seen_ours == seen_oracle
        assert ours.stats()["slow_calls"] == oracle.stats()["slow_calls"]
        assert len(seen_ours) >= 2
        if slow:
            assert oracle.stats()["slow_calls"] > 0
    finally:
        await c.aclose()


def window_calls(sync, b):
    """(calls, failures) in the time window Redis holds for breaker b, at any time."""
    h = {k.decode(): v.decode() for k, v in sync.hgetall(b.store.key).items()}
    n = f = 0
    for i in range(20):
        parts = h.get(f"b{i}", "").split()
        if parts and parts[0] == h["g"]:
            n += int(float(parts[2]))
            f += int(float(parts[3]))
    return n, f


@VT
async def test_time_window_successes_are_held_within_max_staleness_on_virtual_time(server, sync):
    """A time window's closed successes cost no round trip: held, they go with the process's
    next round trip (a failure carries them first, in order) or, idle, by a timer
    max_staleness seconds after the first. Held successes that reach min_calls open the
    breaker just as the same sequence does in CircuitBreaker."""
    loop = asyncio.get_running_loop()
    key = fresh()
    c1, c2 = vclient(server.url), vclient(server.url)
    try:
        kw = dict(failure_rate=0.5, window_time=60, min_calls=4, recovery_timeout=30)
        a = RedisCircuitBreaker(store=VStore(c1, key, max_staleness=2, call_timeout=None), **kw)
        b = RedisCircuitBreaker(store=VStore(c2, key, max_staleness=0, call_timeout=None), **kw)
        oracle = CircuitBreaker(clock=loop.time, **kw)
        heard = []
        a.add_listener(lambda br, o, n: heard.append((o, n)))

        def trips():
            return a.stats()["round_trips"]

        assert await outcome(a, ok) == "ok" and trips() == 1    # the view, fetched
        for _ in range(2):
            assert await outcome(a, ok) == "ok"
        assert trips() == 1 and window_calls(sync, a) == (0, 0)  # 3 held
        assert await outcome(a, fail) == "failed" and trips() == 2
        assert window_calls(sync, a) == (4, 1) and a.failure_count == 1
        # idle: the timer sends what is held, max_staleness after the first
        await asyncio.sleep(1)
        t0 = loop.time()
        assert await outcome(a, ok) == "ok" and trips() == 2
        await asyncio.sleep(1.9)
        assert window_calls(sync, a) == (4, 1) and trips() == 2
        await asyncio.sleep(0.2)
        while trips() < 3 or a._fetched != t0 + 2:   # (its reply, in real time)
            await asyncio.sleep(0)
        assert window_calls(sync, a) == (5, 1)
        # b's failures (sent at once) and a's held successes, in that order in Redis: the
        # first success reaches min_calls with 3 failures of 4 and opens it, as in the oracle
        await a.close()
        heard.clear()
        for br in (b, oracle):
            for _ in range(3):
                assert await outcome(br, fail) == "failed"
        assert b.state == CLOSED and b.failure_count == 3
        for _ in range(5):
            assert await outcome(a, ok) == "ok"       # held (a's view is fresh)
            want = "ok" if oracle.state == CLOSED else ("rejected", 30.0)
            assert await outcome(oracle, ok) == want
        assert oracle.state == OPEN and oracle.stats()["rejections"] == 4
        assert heard == [] and a.state == CLOSED and trips() == 4
        await a.refresh()
        assert a.state == OPEN and heard[-1] == (CLOSED, OPEN)
        await b.refresh()
        assert b.state == OPEN
    finally:
        await c1.aclose()
        await c2.aclose()


@VT
async def test_rate_mode_round_trips_on_virtual_time(server):
    """A count window: each outcome of a closed call is one round trip (the window is the
    fleet's calls in the order Redis gets them); an ignored call none. A time window with
    max_staleness 0: every outcome at once too."""
    c = vclient(server.url)
    try:
        b = RedisCircuitBreaker(failure_rate=0.5, window=10, exclude=KeyError,
                                store=VStore(c, fresh(), max_staleness=5, call_timeout=None))

        def trips():
            return b.stats()["round_trips"]

        async def missing():
            raise KeyError

        assert await outcome(b, ok) == "ok" and trips() == 2      # the view, the outcome
        for k in range(3):
            assert await outcome(b, ok) == "ok" and trips() == 3 + k
        assert await outcome(b, fail) == "failed" and trips() == 6
        with pytest.raises(KeyError):
            await b.call(missing)
        assert trips() == 6 and b.failure_count == 1
        t = RedisCircuitBreaker(failure_rate=0.5, window_time=10,
                                store=VStore(c, fresh(), max_staleness=0, call_timeout=None))
        for k in range(3):
            assert await outcome(t, ok) == "ok"
        assert t.stats()["round_trips"] == 6                      # a view, an outcome each
    finally:
        await c.aclose()


@VT
async def test_a_window_of_another_shape_starts_over_on_virtual_time(server):
    """Two breakers on one key with different windows: each outcome of one starts the other's
    window over (the last shape to record wins); neither misreads the other's."""
    key = fresh()
    c = vclient(server.url)
    try:
        a = RedisCircuitBreaker(failure_rate=0.5, window=4,
                                store=VStore(c, key, max_staleness=0, call_timeout=None))
        b = RedisCircuitBreaker(failure_rate=0.5, window_time=10, min_calls=4,
                                store=VStore(c, key, max_staleness=0, call_timeout=None))
        for _ in range(3):
            assert await outcome(a, fail) == "failed"
        assert a.failure_count == 3
        assert await outcome(b, ok) == "ok" and b.failure_count == 0
        assert await outcome(a, fail) == "failed"      # a's window began again: 1 of 1
        assert a.state == CLOSED and a.failure_count == 1
    finally:
        await c.aclose()


def ours_and_oracle(client, **kw):
    """The same breaker twice: a RedisCircuitBreaker (a fresh key, a view never stale) and
    aiofast.CircuitBreaker."""
    return (RedisCircuitBreaker(store=VStore(client, fresh(), max_staleness=0,
                                             call_timeout=None), **kw),
            CircuitBreaker(**kw))


@VT
async def test_fallback_as_circuitbreaker_on_virtual_time(server):
    """fallback(*args, **kwargs) serves a rejected call, decorated or through call(), awaited
    if it returns an awaitable; its errors are its own; an `async with` block gets
    CircuitOpenError; rejections are counted, as in CircuitBreaker."""
    c = vclient(server.url)
    try:
        seen = []

        def fb(*args, **kwargs):
            seen.append((args, kwargs))
            if args == ("bad",):
                raise KeyError("fallback")
            return "fallback"

        async def afb(*args, **kwargs):
            await asyncio.sleep(0)
            return ("async fallback", args, kwargs)

        results = []
        seconds = ours_and_oracle(c, failure_threshold=1, fallback=afb)
        for b, b2 in zip(ours_and_oracle(c, failure_threshold=1, recovery_timeout=10,
                                         fallback=fb), seconds):
            assert b.fallback is fb

            @b
            async def job(x, *, y):
                raise Boom

            run = []
            with pytest.raises(Boom):
                await job(1, y=2)
            run.append(await job(3, y=4))
            run.append(await b.call(lambda x: x, 5))
            with pytest.raises(KeyError, match="fallback") as e:
                await b.call(ok, "bad")
            assert e.value.__context__ is None
            with pytest.raises(CircuitOpenError):
                async with b:
                    pass
            run.append(b.stats()["rejections"])
            results.append(run)
            opened = b2.open()
            if opened is not None:
                await opened   # (a coroutine for the Redis breaker)
            run.append(await b2.call(ok, 7, z=8))
        assert results[0] == results[1] == [
            "fallback", "fallback", 4, ("async fallback", (7,), {"z": 8})]
        assert seen == [((3,), {"y": 4}), ((5,), {}), (("bad",), {})] * 2
    finally:
        await c.aclose()


@pytest.mark.asyncio
async def test_fallback_serves_calls_denied_while_redis_is_down():
    """on_error="deny": a call Redis could not decide is rejected, so the fallback serves it
    (on_error="raise": RedisUnavailableError, which the fallback does not hide)."""
    port = __import__("redis_server").free_port()
    async with redis.asyncio.Redis(port=port, socket_connect_timeout=0.2) as c:
        deny = RedisCircuitBreaker(store=RedisBreakerStore(c, fresh(), on_error="deny"),
                                   fallback=lambda *a: ("fallback", a))
        assert await deny.call(ok, 1) == ("fallback", (1,))
        assert deny.stats()["rejections"] == 1
        raising = RedisCircuitBreaker(store=RedisBreakerStore(c, fresh()),
                                      fallback=lambda *a: "fallback")
        with pytest.raises(RedisUnavailableError):
            await raising.call(ok)


@VT
async def test_exceptions_classified_as_circuitbreaker_on_virtual_time(server, caplog):
    """An exception expected_exception does not match is a success (the dependency answered);
    a predicate that raises is logged and the call is a failure (for exclude: not excluded);
    a cancellation is neither, even if expected_exception matches it: as CircuitBreaker."""
    c = vclient(server.url)
    try:
        def pred(exc):
            if isinstance(exc, KeyError):
                raise RuntimeError("predicate")
            return isinstance(exc, (Boom, asyncio.CancelledError))

        async def raising(exc):
            raise exc

        rows = []
        for b in ours_and_oracle(c, failure_threshold=3, expected_exception=pred):
            row = []
            for exc in (Boom(), ValueError(), Boom(), KeyError(), asyncio.CancelledError()):
                with pytest.raises(type(exc)):
                    await b.call(raising, exc)
                row.append((b.state.value, b.failure_count))
            st = b.stats()
            row.append((st["successes"], st["failures"], st["ignored"]))
            rows.append(row)
        assert rows[0] == rows[1]
        assert rows[0][-1] == (1, 3, 1) and rows[0][3:5] == [("closed", 2)] * 2
        assert caplog.text.count("expected_exception predicate") == 2
    finally:
        await c.aclose()


# ------------------------------------------------------------------ two processes' views

def probe_granted(br, changes):
    """Has br's probe been granted (its reply, which made the breaker half-open, taken)?"""
    return br._probes_here == 1 and br.stats()["state_changes"] == changes


@VT
async def test_shared_threshold_and_staleness_on_virtual_time(server):
    """Two breakers on one key (as two processes): failures of both count toward one threshold;
    the one whose failure reaches it sees OPEN at once (its listener runs), the other admits
    calls until its view is max_staleness old, then rejects them too."""
    loop = asyncio.get_running_loop()
    key = fresh()
    c1, c2 = vclient(server.url), vclient(server.url)
    try:
        a = RedisCircuitBreaker(4, 10, store=VStore(c1, key, max_staleness=1, call_timeout=None))
        b = RedisCircuitBreaker(4, 10, store=VStore(c2, key, max_staleness=1, call_timeout=None))
        heard = {"a": [], "b": []}
        a.add_listener(lambda br, o, n: heard["a"].append((o, n)))
        b.add_listener(lambda br, o, n: heard["b"].append((o, n)))
        assert await outcome(a, ok) == "ok"   # (a's first call fetches the view)
        assert await outcome(b, ok) == "ok"
        for br in (a, b, a):
            assert await outcome(br, fail) == "failed"
        assert (a.state, b.state) == (CLOSED, CLOSED)
        assert (a.failure_count, b.failure_count) == (3, 2)   # each as it last saw it
        assert await outcome(b, fail) == "failed"   # the 4th, fleet-wide
        t0 = loop.time()
        assert b.state == OPEN and heard["b"] == [(CLOSED, OPEN)]
        assert await outcome(b, ok) == ("rejected", 10.0)
        # a's view is still fresh (fetched by its last failure, less than 1 s ago): admitted
        assert a.state == CLOSED and await outcome(a, ok) == "ok"
        await asyncio.sleep(1)
        assert await outcome(a, ok) == ("rejected", 9.0)
        assert a.state == OPEN and heard["a"] == []
        # past the recovery time: one probe, fleet-wide (half_open_max_calls=1)
        await asyncio.sleep(t0 + 10 - loop.time())
        gate = asyncio.Event()

        async def slow_ok():
            await gate.wait()
            return "ok"

        probe = asyncio.create_task(a.call(slow_ok))
        while not probe_granted(a, 1):
            await asyncio.sleep(0)
        assert await outcome(b, ok) == ("rejected", 0.0)
        assert await outcome(a, ok) == ("rejected", 0.0)   # (no round trip: its own slot)
        gate.set()
        assert await probe == "ok"
        assert heard["a"] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
        assert a.state == CLOSED
        assert b.state == HALF_OPEN   # as b last saw it
        await asyncio.sleep(1)
        assert await outcome(b, ok) == "ok" and b.state == CLOSED
        assert heard["b"] == [(CLOSED, OPEN)]
    finally:
        await c1.aclose()
        await c2.aclose()


@VT
async def test_round_trips_on_virtual_time(server):
    """A closed call on a fresh view: no round trip; a failure: one; a success: one only while
    the shared failure count is not 0; a stale view: one to refresh it."""
    c = vclient(server.url)
    try:
        b = RedisCircuitBreaker(5, 10, store=VStore(c, fresh(), max_staleness=2,
                                                     call_timeout=None))

        def trips():
            return b.stats()["round_trips"]

        assert await outcome(b, ok) == "ok" and trips() == 1   # the first view
        for _ in range(10):
            assert await outcome(b, ok) == "ok"
        assert trips() == 1
        assert await outcome(b, fail) == "failed" and trips() == 2
        assert await outcome(b, ok) == "ok" and trips() == 3     # resets the shared count
        assert b.failure_count == 0
        assert await outcome(b, ok) == "ok" and trips() == 3
        await asyncio.sleep(2.5)
        assert await outcome(b, ok) == "ok" and trips() == 4     # stale: refreshed
        assert b.stats()["calls"] == 15 and b.stats()["successes"] == 14
    finally:
        await c.aclose()


@VT
async def test_a_dead_probe_lease_expires_on_virtual_time(server, sync):
    """A probe whose process never reports (it died) holds its slot for probe_lease seconds,
    then another process's probe goes."""
    loop = asyncio.get_running_loop()
    key = fresh()
    c1, c2 = vclient(server.url), vclient(server.url)
    try:
        dead = RedisCircuitBreaker(1, 5, store=VStore(c1, key, max_staleness=0, probe_lease=3,
                                                      call_timeout=None))
        live = RedisCircuitBreaker(1, 5, store=VStore(c2, key, max_staleness=0, probe_lease=3,
                                                      call_timeout=None))
        assert await outcome(dead, fail) == "failed" and dead.state == OPEN
        await asyncio.sleep(5)
        ticket = await dead._admit()          # a probe that will never report
        assert ticket[1] is not None and dead.state == HALF_OPEN
        assert sync.zcard(dead.store.key + ":probes") == 1
        t0 = loop.time()
        await asyncio.sleep(2.5)
        assert await outcome(live, ok) == ("rejected", 0.0)
        await asyncio.sleep(t0 + 3 - loop.time())
        assert await outcome(live, ok) == "ok" and live.state == CLOSED
    finally:
        await c1.aclose()
        await c2.aclose()


@VT
async def test_cancelled_probe_gives_its_slot_back_on_virtual_time(server, sync):
    c = vclient(server.url)
    try:
        b = RedisCircuitBreaker(1, 1, store=VStore(c, fresh(), max_staleness=0,
                                                   call_timeout=None))
        assert await outcome(b, fail) == "failed"
        await asyncio.sleep(1)
        task = asyncio.create_task(b.call(asyncio.sleep, 100))
        while b.stats()["state_changes"] < 2:   # until its probe's reply came (half-open)
            await asyncio.sleep(0)
        await asyncio.sleep(0)                  # (and its call started)
        assert sync.zcard(b.store.key + ":probes") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # a cancellation is neither a success nor a failure: still half-open, slot free
        assert sync.zcard(b.store.key + ":probes") == 0
        assert b.state == HALF_OPEN and b._probes_here == 0
        assert await outcome(b, ok) == "ok" and b.state == CLOSED
        assert b.stats()["ignored"] == 1
    finally:
        await c.aclose()


# ------------------------------------------------------------------ the API

@pytest.mark.asyncio
async def test_arguments_and_ways_to_call(server, sync):
    async with redis.asyncio.Redis.from_url(server.url) as c:
        with pytest.raises(ValueError, match=r"clock is not available with a Redis store: the "
                                             r"fleet's times .* are read on the Redis server's "
                                             r"TIME, .* a clock of one process cannot order the "
                                             r"fleet's events"):
            RedisCircuitBreaker(store=RedisBreakerStore(c, fresh()), clock=time.monotonic)
        with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
            RedisCircuitBreaker(store=RedisBreakerStore(c, fresh()), bogus=1)
        with pytest.raises(TypeError, match="store must be a RedisBreakerStore, got dict"):
            RedisCircuitBreaker(store={})
        # the arguments are checked as CircuitBreaker checks them
        for kw in [dict(failure_threshold=0), dict(recovery_timeout=-1),
                   dict(half_open_max_calls="2"), dict(expected_exception=())]:
            with pytest.raises((ValueError, TypeError)) as want:
                CircuitBreaker(**kw)
            with pytest.raises(type(want.value), match=re.escape(str(want.value))):
                RedisCircuitBreaker(store=RedisBreakerStore(c, fresh()), **kw)
        for bad in ["", "a b", "x" * 201, "é"]:
            with pytest.raises(ValueError, match="key must be"):
                RedisBreakerStore(c, bad)
        with pytest.raises(ValueError, match="max_staleness must be"):
            RedisBreakerStore(c, "k", max_staleness=-1)
        with pytest.raises(ValueError, match="probe_lease must be"):
            RedisBreakerStore(c, "k", probe_lease=float("inf"))
        with pytest.raises(ValueError, match="on_error must be one of"):
            RedisBreakerStore(c, "k", on_error="ignore")
        # keys: a hash tag of their own, or the one given
        assert RedisBreakerStore(c, "svc").key == "aiofast:cb:{svc}"
        assert RedisBreakerStore(c, "{tenant}:svc").key == "aiofast:cb:{tenant}:svc"
        store = RedisBreakerStore(c, fresh())
        b = RedisCircuitBreaker(2, 60, store=store, name="up", exclude=KeyError)
        with pytest.raises(ValueError, match="already serves a breaker"):
            RedisCircuitBreaker(store=store)

        @b
        async def double(x):
            if x is None:
                raise KeyError(x)
            if x < 0:
                raise Boom
            return 2 * x

        assert double.__name__ == "double" and double.breaker is b
        assert await double(21) == 42
        with pytest.raises(KeyError):
            await double(None)                      # excluded: not a failure
        assert b.failure_count == 0
        with pytest.raises(Boom):
            async with b:
                raise Boom
        assert b.failure_count == 1
        assert await b.call(lambda x: x + 1, 1) == 2   # a plain function too
        assert b.failure_count == 0
        with pytest.raises(TypeError, match="decorates an async function"):
            b(len)
        for _ in range(2):
            with pytest.raises(Boom):
                await double(-1)
        with pytest.raises(CircuitOpenError, match="circuit breaker 'up' is open") as e:
            await double(1)
        assert e.value.breaker is b and 59 < e.value.remaining <= 60
        assert sync.hget(store.key, "s") == b"1"
        await b.close()
        assert b.state == CLOSED and await double(1) == 2
        await b.open()
        assert b.state == OPEN
        await b.half_open()
        assert b.state == HALF_OPEN and await double(2) == 4 and b.state == CLOSED
        st = b.stats()
        assert st["state"] == CLOSED and st["state_changes"] == 5 and st["failures"] == 3
        assert "key:aiofast:cb:{" in repr(b)


@pytest.mark.asyncio
async def test_circuitbreaker_with_a_redis_store(server, sync):
    """CircuitBreaker(..., store=RedisBreakerStore(...)) is RedisCircuitBreaker(..., store=...):
    the arguments forwarded, the state in Redis, one breaker per store."""
    async with redis.asyncio.Redis.from_url(server.url) as c:
        key = fresh()
        store = RedisBreakerStore(c, key)
        b = CircuitBreaker(2, 60, store=store, success_threshold=2, half_open_max_calls=3,
                           name="up", expected_exception=(Boom, KeyError), exclude=KeyError)
        assert type(b) is RedisCircuitBreaker and not isinstance(b, CircuitBreaker)
        assert b.store is store
        assert (b.failure_threshold, b.recovery_timeout, b.name) == (2, 60.0, "up")
        assert (b._success_threshold, b._half_max) == (2, 3)
        d = CircuitBreaker(store=RedisBreakerStore(c, fresh()), shared=None, clock=None)
        assert (d.failure_threshold, d.recovery_timeout, d.name) == (5, 30.0, None)
        # a second breaker on the store is refused, made either way
        with pytest.raises(ValueError, match="this RedisBreakerStore already serves a breaker"):
            CircuitBreaker(store=store)
        with pytest.raises(ValueError, match="this RedisBreakerStore already serves a breaker"):
            RedisCircuitBreaker(store=store)
        with pytest.raises(ValueError, match="already serves a breaker"):
            store.make_breaker()

        async def lookup():
            raise KeyError("k")

        with pytest.raises(KeyError):
            await b.call(lookup)                   # excluded: not a failure
        assert b.failure_count == 0
        for _ in range(2):
            with pytest.raises(Boom):
                await b.call(fail)
        assert b.state == OPEN and sync.hget(store.key, "s") == b"1"
        with pytest.raises(CircuitOpenError, match="circuit breaker 'up' is open"):
            await b.call(ok)
        # another process's breaker on the same key (made the same way) sees it open
        other = CircuitBreaker(2, 60, store=RedisBreakerStore(c, key))
        assert other.state == CLOSED     # (no view yet)
        await other.refresh()
        assert other.state == OPEN
        with pytest.raises(CircuitOpenError):
            await other.call(ok)
        await other.close()
        await b.refresh()
        assert b.state == CLOSED and await b.call(ok) == "ok"


@pytest.mark.asyncio
async def test_circuitbreaker_with_a_redis_store_checks_as_redis_breaker(server):
    """Every argument error is RedisCircuitBreaker's own (clock refused; the rest checked as
    CircuitBreaker checks them); a store that made no breaker is still free."""
    async with redis.asyncio.Redis.from_url(server.url) as c:
        cases = [((5,), dict(failure_rate=0.5)), ((), dict(window=10)),
                 ((), dict(window_time=5)), ((), dict(min_calls=3)),
                 ((), dict(failure_rate=1.5)), ((), dict(failure_rate=0.5, window=0)),
                 ((), dict(failure_rate=0.5, window=5, min_calls=6)),
                 ((), dict(failure_rate=0.5, window=5, window_time=5)),
                 ((), dict(failure_rate=0.5, window_time=float("inf"))),
                 ((), dict(slow_call_duration=-1)), ((), dict(slow_call_rate=0.5)),
                 ((), dict(fallback=3)),
                 ((), dict(clock=time.monotonic)), ((0,), {}), (("3",), {}), ((5, -1), {}),
                 ((5, float("nan")), {}), ((), dict(success_threshold=0)),
                 ((), dict(half_open_max_calls="2")), ((), dict(expected_exception=())),
                 ((), dict(exclude=5)), ((), dict(name=3))]
        for args, kw in cases:
            with pytest.raises((ValueError, TypeError)) as want:
                RedisCircuitBreaker(*args, store=RedisBreakerStore(c, fresh()), **kw)
            store = RedisBreakerStore(c, fresh())
            with pytest.raises(type(want.value)) as got:
                CircuitBreaker(*args, store=store, **kw)
            assert str(got.value) == str(want.value), (args, kw)
            assert type(CircuitBreaker(store=store)) is RedisCircuitBreaker
            if "clock" not in kw:   # the in-process breaker's own error, word for word
                with pytest.raises(type(want.value), match=re.escape(str(want.value))):
                    CircuitBreaker(*args, **kw)
        # and the constructor's own: shared= with store=, a store of another kind
        with pytest.raises(ValueError, match="not both"):
            CircuitBreaker(store=RedisBreakerStore(c, fresh()), shared="svc")
        with pytest.raises(TypeError, match="store must be a breaker store .* got "
                                            "RedisTokenBucket$"):
            CircuitBreaker(store=RedisTokenBucket(c, fresh(), 10))


@pytest.mark.asyncio
async def test_plain_functions_and_no_synchronous_way_in(server):
    """`await breaker.call(plain_fn, *args, **kwargs)`: admitted (asynchronously), then run
    inline, in the caller's task; its outcome counted as an async function's. `@breaker` on a
    plain def and `with breaker:` raise TypeError: admission may need a round trip."""
    async with redis.asyncio.Redis.from_url(server.url) as c:
        b = CircuitBreaker(2, 60, store=RedisBreakerStore(c, fresh(), max_staleness=0),
                           exclude=KeyError)
        task, thread = asyncio.current_task(), threading.get_ident()
        ran = []

        def work(x, *, y):
            ran.append((asyncio.current_task() is task, threading.get_ident() == thread))
            if x is None:
                raise KeyError(x)
            if x < 0:
                raise Boom
            return x + y

        assert await b.call(work, 1, y=2) == 3
        assert ran == [(True, True)]
        with pytest.raises(KeyError):
            await b.call(work, None, y=0)          # excluded: not a failure
        assert b.failure_count == 0 and b.stats()["ignored"] == 1
        with pytest.raises(Boom):
            await b.call(work, -1, y=0)
        assert b.failure_count == 1 and b.stats()["failures"] == 1
        assert await b.call(work, 5, y=0) == 5 and b.failure_count == 0   # a success resets it
        for _ in range(2):
            with pytest.raises(Boom):
                await b.call(work, -1, y=0)
        assert b.state == OPEN
        with pytest.raises(CircuitOpenError):
            await b.call(work, 1, y=0)
        assert len(ran) == 6                       # rejected: not run
        await b.half_open()
        assert await b.call(work, 2, y=2) == 4 and b.state == CLOSED   # a plain probe

        def plain():
            return 1

        with pytest.raises(TypeError, match=r"decorates an async function, not function "
                                            r".*plain: admitting a call may need a round trip "
                                            r"to Redis, which a plain function cannot await"):
            b(plain)
        with pytest.raises(TypeError, match="not builtin_function_or_method len:"):
            b(len)
        calls = b.stats()["calls"]
        with pytest.raises(TypeError, match=r"a RedisCircuitBreaker has no `with` block: "
                                            r"admitting a call may need a round trip to Redis, "
                                            r"which a synchronous block cannot await \(use "
                                            r"`async with breaker:`\)"):
            with b:
                pytest.fail("entered")
        with pytest.raises(TypeError, match="no `with` block"):
            b.__exit__(None, None, None)
        assert b.stats()["calls"] == calls and b.state == CLOSED


@pytest.mark.asyncio
async def test_a_raising_listener_is_logged(server, caplog):
    async with redis.asyncio.Redis.from_url(server.url) as c:
        b = RedisCircuitBreaker(1, 60, store=RedisBreakerStore(c, fresh()))
        heard = []

        def bad(br, o, n):
            raise RuntimeError("listener")

        b.add_listener(bad)
        b.add_listener(lambda br, o, n: heard.append(n))
        with pytest.raises(Boom):
            await b.call(fail)
        assert heard == [OPEN]
        assert "listener" in caplog.text and b.listeners[1] is not bad
        b.remove_listener(bad)
        assert len(b.listeners) == 1


@pytest.mark.asyncio
async def test_key_holding_something_else_raises(server, sync):
    async with redis.asyncio.Redis.from_url(server.url) as c:
        store = RedisBreakerStore(c, fresh(), on_error="allow")
        sync.set(store.key, "x")
        b = RedisCircuitBreaker(store=store)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await b.call(ok)
        assert sync.get(store.key) == b"x"


# ------------------------------------------------------------------ across processes

WORKER = textwrap.dedent("""
    import asyncio, sys
    import redis.asyncio
    from aiofast import CircuitBreaker, CircuitOpenError
    from aiofast.redis import RedisBreakerStore, RedisCircuitBreaker

    url, key, make = sys.argv[1:4]
    MODES = {
        "consecutive": dict(failure_threshold=8),
        "count": dict(failure_rate=0.5, window=8),
        "time": dict(failure_rate=0.5, window_time=60, min_calls=8),
        "slow": dict(failure_rate=0.9, window=8, slow_call_duration=0.05, slow_call_rate=0.5),
    }

    async def main():
        c = redis.asyncio.Redis.from_url(url)
        store = RedisBreakerStore(c, key, max_staleness=0.2, probe_lease=float(sys.argv[4]))
        b = (CircuitBreaker if make == "store" else RedisCircuitBreaker)(
            recovery_timeout=1.0, store=store, half_open_max_calls=2, success_threshold=100,
            **MODES[sys.argv[5]])
        assert type(b) is RedisCircuitBreaker
        heard = []
        b.add_listener(lambda br, o, n: heard.append(n.value))
        gate = asyncio.Event()

        async def call(what):
            if what == "fail":
                raise ValueError
            if what == "hang":
                await gate.wait()
            if what == "slow":
                await asyncio.sleep(0.1)
            return "ok"

        def plain(what):
            raise ValueError

        async def one(what):
            try:
                return await b.call(plain if what == "fail-plain" else call, what)
            except ValueError:
                return "failed"
            except CircuitOpenError:
                return "rejected"

        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            if line in ("probes", "hold"):
                # 10 calls at once, hanging once admitted; "hold": until the process ends
                tasks = [asyncio.create_task(one("hang")) for _ in range(10)]
                await asyncio.sleep(0.3)
                print(sum(t.done() for t in tasks), b._probes_here, flush=True)
                if line == "probes":
                    gate.set()
                    await asyncio.gather(*tasks)
            else:
                print(await one(line), b.state.value, " ".join(heard), flush=True)
        await c.aclose()

    asyncio.run(main())
""")


def start_workers(url, key, n, lease=30.0, mode="consecutive"):
    """n worker processes on one key: even ones make their breaker with
    CircuitBreaker(..., store=), odd ones with RedisCircuitBreaker(..., store=); mode: the
    breaker's (WORKER's MODES)."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, key,
                               "redis" if i % 2 else "store", repr(lease), mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=HERE) for i in range(n)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    return procs


def ask(p, line):
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return p.stdout.readline().split()


def stop(procs):
    for p in procs:
        p.communicate("", timeout=30)
        assert p.returncode == 0


def assert_two_probes_fleet_wide(procs):
    """After the recovery time, each of the processes tries 10 probes at once: 2 are admitted
    fleet-wide, and every other try is rejected at once."""
    for p in procs:
        p.stdin.write("probes\n")
        p.stdin.flush()
    admitted = []
    for p in procs:
        done, held = map(int, p.stdout.readline().split())
        admitted.append(held)
        assert done == 10 - held   # the others were rejected at once
    assert sum(admitted) == 2, admitted


def test_failures_over_four_processes_open_it_for_all(server):
    """Threshold 8: two failures in each of 4 processes (two breakers made with
    CircuitBreaker(..., store=), two with RedisCircuitBreaker), in turn, each one of a plain
    function then one of an async one: the 8th opens the breaker; the process that made it hears
    the transition; the others reject calls once their view is refreshed (max_staleness 0.2 s).
    After the recovery time, probes: 2 at a time fleet-wide, although all 4 processes try 10
    each at once."""
    procs = start_workers(server.url, fresh(), 4)
    try:
        for k in range(8):
            p = procs[k % 4]
            got = ask(p, "fail-plain" if k < 4 else "fail")
            assert got[:2] == ["failed", "closed" if k < 7 else "open"], (k, got)
            assert got[2:] == ([] if k < 7 else ["open"])
        time.sleep(0.25)
        for p in procs[:3]:
            assert ask(p, "ok") == ["rejected", "open"]   # no listener there
        assert ask(procs[3], "ok") == ["rejected", "open", "open"]
        time.sleep(1.0)
        assert_two_probes_fleet_wide(procs)
    finally:
        stop(procs)


@pytest.mark.parametrize("mode", ["count", "time", "slow"])
def test_rate_over_four_processes_opens_it_for_all(server, mode):
    """Rate mode, 4 processes, in turn: a success then a failure each ("slow": a slow success
    instead of the failure), so Redis receives s, f, s, f, ...: the window (8 calls: the last 8,
    or min_calls 8 of the last 60 s, whose successes each process holds and sends with its
    failure) reaches the shared rate (4 of 8) with the 8th outcome, which opens the breaker
    for all: the process that made it hears the transition, the others reject calls once their
    view is refreshed. Then probes, 2 at a time fleet-wide."""
    bad = "slow" if mode == "slow" else "fail"
    procs = start_workers(server.url, fresh(), 4, mode=mode)
    try:
        for k in range(4):
            p = procs[k]
            assert ask(p, "ok") == ["ok", "closed"], k
            got = ask(p, bad)
            assert got == (["ok" if bad == "slow" else "failed", "closed" if k < 3 else "open"]
                           + ([] if k < 3 else ["open"])), (k, got)
        time.sleep(0.25)
        for p in procs[:3]:
            assert ask(p, "ok") == ["rejected", "open"]   # no listener there
        time.sleep(1.0)
        assert_two_probes_fleet_wide(procs)
    finally:
        stop(procs)


def test_a_killed_probers_lease_expires(server):
    """A process holding the only probe slot is killed: the others are rejected until its lease
    (1 s) expires, then one probe goes."""
    key = fresh()
    procs = start_workers(server.url, key, 2, lease=1.0)
    try:
        for _ in range(8):
            assert ask(procs[1], "fail")[0] == "failed"
        time.sleep(1.05)
        procs[0].stdin.write("hold\n")
        procs[0].stdin.flush()
        assert procs[0].stdout.readline().split()[1] == "2"   # both slots, hanging
        t0 = time.monotonic()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        assert ask(procs[1], "ok")[0] == "rejected"
        while ask(procs[1], "ok")[0] == "rejected":
            assert time.monotonic() - t0 < 1.5
            time.sleep(0.05)
        assert time.monotonic() - t0 >= 0.3   # (it was still held when the kill happened)
    finally:
        procs[1].communicate("", timeout=30)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()


# ------------------------------------------------------------------ faults

@pytest.mark.asyncio
async def test_policies_while_the_server_is_down_and_recovery(own_server):
    loop = asyncio.get_running_loop()
    async with redis.asyncio.Redis.from_url(own_server.url, socket_connect_timeout=0.2) as c:
        bs = {p: RedisCircuitBreaker(2, 60, store=RedisBreakerStore(
            c, "k-" + p, on_error=p, call_timeout=0.3, max_staleness=0, retry_interval=0.2))
            for p in ("raise", "allow", "deny")}
        for b in bs.values():
            assert await b.call(ok) == "ok"
        own_server.kill()
        t0 = loop.time()
        with pytest.raises(RedisUnavailableError) as e:
            await bs["raise"].call(ok)
        assert isinstance(e.value.__cause__, (redis.exceptions.ConnectionError, OSError))
        assert await bs["allow"].call(ok) == "ok"
        with pytest.raises(Boom):
            await bs["allow"].call(fail)       # admitted, not recorded
        with pytest.raises(CircuitUnavailableError, match="could not reach Redis"):
            await bs["deny"].call(ok)
        assert loop.time() - t0 < 1.0
        # within retry_interval the policy applies without asking
        trips = bs["deny"].stats()["round_trips"]
        with pytest.raises(CircuitOpenError):
            await bs["deny"].call(ok)
        assert bs["deny"].stats()["round_trips"] == trips
        own_server.start()
        await asyncio.sleep(0.25)
        for b in bs.values():
            assert await b.call(ok) == "ok"
            with pytest.raises(Boom):
                await b.call(fail)
        assert [b.failure_count for b in bs.values()] == [1, 1, 1]


@pytest.mark.asyncio
async def test_server_killed_and_restarted_under_load(own_server):
    """4 tasks per policy call through their breaker while the server is killed and restarted:
    every call ends within call_timeout (plus the call's own 10 ms and scheduling), as the
    policy says; after recovery every breaker admits and records again."""
    loop = asyncio.get_running_loop()
    seen = {p: set() for p in ("raise", "allow", "deny")}
    longest = 0.0
    stop = False

    async def job():
        await asyncio.sleep(0.01)
        return "ok"

    async with redis.asyncio.Redis.from_url(own_server.url, socket_connect_timeout=0.2) as c:
        bs = {p: RedisCircuitBreaker(50, 60, store=RedisBreakerStore(
            c, fresh(), on_error=p, call_timeout=0.25, max_staleness=0.05, retry_interval=0.05))
            for p in seen}

        async def caller(p):
            nonlocal longest
            while not stop:
                t0 = loop.time()
                try:
                    await bs[p].call(job)
                    seen[p].add("ok")
                except RedisUnavailableError:
                    seen[p].add("unavailable")
                except CircuitUnavailableError:
                    seen[p].add("denied")
                longest = max(longest, loop.time() - t0)
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(caller(p)) for p in seen for _ in range(4)]
        await asyncio.sleep(0.3)
        # in a thread: the test's own waiting for the server must not block the loop (that would
        # be counted in the callers' times)
        await asyncio.to_thread(own_server.kill)
        await asyncio.sleep(0.6)
        await asyncio.to_thread(own_server.start)
        await asyncio.sleep(0.6)
        recovered = {p: b.stats()["successes"] for p, b in bs.items()}
        await asyncio.sleep(0.3)
        stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert seen == {"raise": {"ok", "unavailable"}, "allow": {"ok"}, "deny": {"ok", "denied"}}
    assert longest <= 0.25 + 0.01 + 0.1
    assert all(bs[p].stats()["successes"] > recovered[p] for p in seen)
    assert all(b.state == CLOSED for b in bs.values())


@pytest.mark.asyncio
async def test_a_server_that_does_not_answer(own_server):
    """The server stopped (SIGSTOP: connected, silent): every call ends within call_timeout,
    per policy; an outcome that cannot be recorded does not hide the call's result."""
    loop = asyncio.get_running_loop()
    async with redis.asyncio.Redis.from_url(own_server.url) as c:
        raising = RedisCircuitBreaker(3, 60, store=RedisBreakerStore(
            c, fresh(), call_timeout=0.2, max_staleness=60))
        allowing = RedisCircuitBreaker(3, 60, store=RedisBreakerStore(
            c, fresh(), call_timeout=0.2, max_staleness=0, on_error="allow"))
        assert await raising.call(ok) == "ok" and await allowing.call(ok) == "ok"
        own_server.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = loop.time()
            with pytest.raises(Boom):
                await raising.call(fail)    # the failure cannot be recorded: Boom all the same
            assert raising.stats()["store_errors"] == 1
            with pytest.raises(RedisUnavailableError):
                await raising.call(ok)      # its view is stale now: asks, times out
            assert await allowing.call(ok) == "ok"
            assert loop.time() - t0 < 3 * 0.2 + 0.3
        finally:
            own_server.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.15)
        assert await raising.call(ok) == "ok"
        assert await allowing.call(ok) == "ok"


@pytest.mark.asyncio
async def test_acl_user_with_a_password():
    srv = RedisServer(
        "user default off",
        "user alice on >s3cret ~aiofast:cb:* -@all +evalsha +script|load +hmget +hset +pexpire "
        "+del +zremrangebyscore +zcard +zadd +zrem +time",
    ).start()
    try:
        url = f"redis://127.0.0.1:{srv.port}/0"
        async with redis.asyncio.Redis.from_url(url, username="alice", password="s3cret") as c:
            b = RedisCircuitBreaker(1, 0.2, store=RedisBreakerStore(c, fresh(), max_staleness=0))
            with pytest.raises(Boom):
                await b.call(fail)
            with pytest.raises(CircuitOpenError):
                await b.call(ok)
            await asyncio.sleep(0.25)
            assert await b.call(ok) == "ok" and b.state == CLOSED
            # rate mode needs no other command
            for kw in (dict(window=2), dict(window_time=10, min_calls=2)):
                r = RedisCircuitBreaker(failure_rate=0.5, **kw, store=RedisBreakerStore(
                    c, fresh(), max_staleness=0))
                assert await r.call(ok) == "ok"
                with pytest.raises(Boom):
                    await r.call(fail)
                assert r.state == OPEN
        async with redis.asyncio.Redis.from_url(url, username="alice", password="no") as c:
            b = RedisCircuitBreaker(store=RedisBreakerStore(c, fresh(), on_error="allow"))
            with pytest.raises(redis.exceptions.AuthenticationError):
                await b.call(ok)
    finally:
        srv.close()
