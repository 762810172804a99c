"""aiofast.redis.RedisTokenBucket on a real redis-server (tests/redis_server.py starts one per
test session on 127.0.0.1, persistence off; a missing redis-server fails these tests).

- The Lua scripts against a pure-Python model of GCRA, on the real server, with injected
  timestamps (the server's clock cannot be virtualized): exact, no tolerance.
- The async wrapper on virtual time (the server's clock injected from the loop's), on asyncio's
  loop and uvloop: try_acquire, tokens, FIFO by reservation, timeouts, cancellation.
- On real time: script reload after NOSCRIPT, the on_error policies with the server killed and
  restarted under load, an ACL user with a password, and across processes: accuracy (4 x 2 s at
  1,000 tokens/s) and FIFO by reservation order.
"""
import asyncio
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from aiofast.redis import _SCRIPTS, RedisTokenBucket, _bounded, RedisUnavailableError
from redis_server import RedisServer, loop_clock_as_server_clock

VT = pytest.mark.asyncio(loop_factories=["virtual-asyncio", "virtual-uvloop"])
HERE = os.path.dirname(os.path.abspath(__file__))


def fresh():
    return "t-" + uuid.uuid4().hex


class Client:
    """An asyncio client for the running loop, closed at the end."""

    def __init__(self, url, **kw):
        if not kw.pop("real", True):
            # on a virtual clock, a timer of redis-py's own would fire at once (the clock jumps
            # to the next timer while a reply travels): none
            kw.update(socket_connect_timeout=None, socket_timeout=None)
        self.url, self.kw = url, kw

    async def __aenter__(self):
        self.c = redis.asyncio.Redis.from_url(self.url, **self.kw)
        return self.c

    async def __aexit__(self, *exc):
        await self.c.aclose()


# ------------------------------------------------------------------ the scripts vs a model

U = 10_000_000  # the model's time unit, microseconds (keys live >= U/4: never expire mid-test)
T0 = 1.7e15     # an injected "now" near today's, in microseconds


class Gcra:
    """The model: the theoretical arrival time (None for a missing key: a full bucket) and the
    id of the acquire() that wrote it ("" for none)."""

    def __init__(self):
        self.tat = None
        self.id = ""

    def acquire(self, now, cost, tau, max_wait, rid):
        t = now if self.tat is None or self.tat < now else self.tat
        new = t + cost
        wait = new - tau - now
        if wait > max_wait:
            return 0, wait
        self.tat, self.id = new, rid
        return 1, max(wait, 0.0)

    def release(self, now, rid, cost):
        if self.tat is None or self.id != rid:
            return 0
        new = self.tat - cost
        self.tat, self.id = (None, "") if new <= now else (new, "")
        return 1

    def peek(self, now):
        t = now if self.tat is None or self.tat < now else self.tat
        return t - now

    def lease(self, now, iv, need, most, tau):
        t = now if self.tat is None or self.tat < now else self.tat
        wait = t + need * iv - tau - now
        if wait > 0:
            return 0.0, wait
        k = max(need, min(most, (tau - (t - now)) / iv))
        self.tat, self.id = t + k * iv, ""
        return k, 0.0


def tat_of(raw):
    return float(raw.split()[0])


def run_script(sync, name, key, *args):
    src, sha = _SCRIPTS[name]
    try:
        return sync.evalsha(sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        sync.script_load(src)
        return sync.evalsha(sha, 1, key, *args)


def f(x):
    return repr(float(x))


OPS = st.lists(st.tuples(
    st.sampled_from(["acquire", "acquire", "release", "peek"]),
    st.integers(0, 6),     # time step, quarters of U
    st.integers(1, 8),     # cost, quarters of U
    st.integers(-1, 12),   # max_wait, quarters of U (-1: only at once... never)
    st.integers(0, 20),    # which earlier reservation to release
), max_size=20)


@given(tau_q=st.integers(1, 12), ops=OPS)
def test_scripts_match_the_model(server, tau_q, ops):
    sync = redis.Redis.from_url(server.url)
    try:
        key = "aiofast:tb:" + fresh()
        model = Gcra()
        tau = tau_q * U / 4
        now = T0
        reservations = []
        wrote = now  # the (injected) time of the last write: the key's TTL counts from there
        for i, (op, step, cost_q, wait_q, pick) in enumerate(ops):
            now += step * U / 4
            cost = min(cost_q * U / 4, tau)
            if op == "acquire":
                max_wait = wait_q * U / 4
                rid = f"r{i}" if pick % 3 else ""   # try_acquire() names no reservation
                got = run_script(sync, "acquire", key, f(cost), f(tau), f(max_wait), rid,
                                 f(now))
                want = model.acquire(now, cost, tau, max_wait, rid)
                assert (got[0], float(got[1])) == want and float(got[2]) == now
                if want[0]:
                    reservations.append((rid, cost))
                    wrote = now
            elif op == "release" and reservations:
                rid, c = reservations[pick % len(reservations)]
                got = run_script(sync, "release", key, rid, f(c), f(now))
                assert got == model.release(now, rid, c)
                wrote = now if got else wrote
            else:
                assert float(run_script(sync, "peek", key, f(tau), f(now))) == model.peek(now)
            # the key holds exactly the model's tat and id, and lives until the bucket is full
            raw = sync.get(key)
            if model.tat is None:
                assert raw is None
            else:
                assert raw.decode() == " ".join(filter(None, [f"{model.tat:.17g}", model.id]))
                assert tat_of(raw) == model.tat
                assert 0 < sync.pttl(key) <= -(-(model.tat - wrote) // 1000)
    finally:
        sync.close()


@given(cap=st.integers(1, 12), ops=st.lists(st.tuples(
    st.integers(0, 8),    # time step, quarters of an interval
    st.integers(1, 12),   # need, quarters of a token
    st.integers(0, 48),   # most, quarters of a token (at least need)
), max_size=20))
def test_lease_script_matches_the_model(server, cap, ops):
    sync = redis.Redis.from_url(server.url)
    try:
        key = "aiofast:tb:" + fresh()
        model = Gcra()
        iv = U / 4
        tau = cap * iv
        now = T0
        for step, need_q, most_q in ops:
            now += step * iv / 4
            need = min(need_q / 4, cap)
            most = max(need, most_q / 4)
            got = run_script(sync, "lease", key, f(iv), f(need), f(most), f(tau), f(now))
            assert (float(got[0]), float(got[2])) == model.lease(now, iv, need, most, tau)
            assert float(got[1]) == now
            raw = sync.get(key)
            assert (raw is None) if model.tat is None else (tat_of(raw) == model.tat)
    finally:
        sync.close()


def test_script_refuses_a_foreign_value(sync):
    key = "aiofast:tb:" + fresh()
    sync.set(key, "not a number")
    with pytest.raises(redis.exceptions.ResponseError, match="does not hold a bucket"):
        run_script(sync, "acquire", key, "1", "10", "0", "", "")
    assert sync.get(key) == b"not a number"


# ------------------------------------------------------------------ the wrapper on virtual time

class VBucket(RedisTokenBucket):
    """The server's clock read from the loop's virtual clock (tests only)."""

    __slots__ = ()
    _now = loop_clock_as_server_clock()

    def _delay(self, reply):
        # the instant reserved, on the loop's clock (the server's here): exact, although the
        # virtual clock may have jumped (to a timer) while the reply travelled
        return (float(reply[2]) + float(reply[1])) / 1e6 - asyncio.get_running_loop().time()


@VT
async def test_try_acquire_and_tokens_on_virtual_time(server):
    loop = asyncio.get_running_loop()
    async with Client(server.url, real=False) as c:
        b = VBucket(c, fresh(), 4, capacity=2, call_timeout=None)
        assert await b.tokens() == 2.0
        assert await b.has_capacity(2)
        assert await b.try_acquire() and await b.try_acquire(1)
        assert not await b.try_acquire(0.25)
        assert await b.tokens() == 0.0
        assert not await b.has_capacity()
        await asyncio.sleep(0.125)
        assert await b.tokens() == 0.5
        assert not await b.try_acquire()
        assert await b.try_acquire(0.5)
        t0 = loop.time()
        await b.acquire(2)          # 2 tokens at 4/s: half a second
        assert loop.time() - t0 == 0.5
        await b.reset()
        assert await b.tokens() == 2.0


@VT
async def test_fifo_by_reservation_on_virtual_time(server, sync):
    loop = asyncio.get_running_loop()
    async with Client(server.url, real=False) as c:
        b = VBucket(c, fresh(), 4, capacity=1, call_timeout=None)
        assert await b.try_acquire()
        woke = []

        async def waiter(i, n):
            await b.acquire(n)
            woke.append((i, loop.time()))

        start = loop.time()
        tasks = []
        for i, n in enumerate([1, 0.5, 1, 0.25, 1]):
            before = sync.get(b.key)
            tasks.append(asyncio.create_task(waiter(i, n)))
            while sync.get(b.key) == before:   # until its reservation is made
                await asyncio.sleep(0)
            # a newcomer never takes tokens while anyone waits
            assert not await b.try_acquire(0.25)
        await asyncio.gather(*tasks)
        assert [i for i, _ in woke] == [0, 1, 2, 3, 4]
        # each at its reserved instant
        assert [t - start for _, t in woke] == [0.25, 0.375, 0.625, 0.6875, 0.9375]


@VT
async def test_timeout_takes_nothing_on_virtual_time(server, sync):
    loop = asyncio.get_running_loop()
    async with Client(server.url, real=False) as c:
        b = VBucket(c, fresh(), 1, per=10, capacity=1, call_timeout=None)
        await b.acquire()
        before = sync.get(b.key)
        t0 = loop.time()
        with pytest.raises(TimeoutError, match="timed out after 2 s"):
            await b.acquire(timeout=2)
        assert loop.time() - t0 == 2
        with pytest.raises(TimeoutError, match="not available at once"):
            await b.acquire(timeout=0)
        assert sync.get(b.key) == before
        await b.acquire(timeout=9)   # the token comes after 10 s, 2 of which passed
        assert loop.time() - t0 == 10


@VT
@pytest.mark.parametrize("where", ["in flight", "asleep"])
async def test_cancel_gives_back_only_if_last_on_virtual_time(server, sync, where):
    """Cancelled while its reservation's reply travels, or while it sleeps: the tokens go back
    if nobody reserved after it, else they are spent."""
    async with Client(server.url, real=False) as c:
        b = VBucket(c, fresh(), 1, capacity=1, call_timeout=None)
        await b.acquire()
        full = tat_of(sync.get(b.key))

        async def reserve():
            before = sync.get(b.key)
            t = asyncio.create_task(b.acquire())
            while sync.get(b.key) == before:
                await asyncio.sleep(0)
            if where == "asleep":
                await asyncio.sleep(0.125)   # it has its reply and sleeps (until 1 s)
            return t

        a = await reserve()
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert tat_of(sync.get(b.key)) == full       # the last reservation: given back
        a = await reserve()
        # another process reserves after a (a raw script call: no timer of ours)
        now = repr(asyncio.get_running_loop().time() * 1e6)
        assert run_script(sync, "acquire", b.key, "1e6", "1e6", "1e300", "other", now)[0] == 1
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        after = tat_of(sync.get(b.key))
        assert after == full + 2e6                   # someone reserved after: a's is spent
        assert run_script(sync, "release", b.key, "other", "1e6", now) == 1
        assert tat_of(sync.get(b.key)) == after - 1e6


# ------------------------------------------------------------------ leasing

class Counting(VBucket):
    """Counts its round trips, and keeps the (injected) server instant of the last one."""

    __slots__ = ("trips", "last_now")

    async def _script(self, name, *args, **kw):
        self.trips += 1
        r = await super()._script(name, *args, **kw)
        if name in ("lease", "acquire"):
            self.last_now = float(r[1] if name == "lease" else r[2]) / 1e6
        return r


def counting(c, key, *args, **kw):
    b = Counting(c, key, *args, call_timeout=None, **kw)
    b.trips = 0
    return b


@VT
async def test_lease_spends_locally_on_virtual_time(server, sync):
    async with Client(server.url, real=False) as c:
        # (slow: keys expire on the server's real clock; see the next test)
        b = counting(c, fresh(), 10, per=100, capacity=10, lease=4)
        assert b.lease == 4.0 and b.leased == 0
        got = [await b.try_acquire() for _ in range(10)]
        assert got == [True] * 10
        # 4 + 4 + the last 2 available (at most lease, at least what was missing)
        assert b.trips == 3 and b.leased == 0
        assert not await b.try_acquire() and b.trips == 4
        # refused, told when a token will be there (10 s): until then, refused locally
        await asyncio.sleep(5)
        assert not await b.try_acquire() and b.trips == 4
        await asyncio.sleep(20)     # 2.5 tokens flowed in: one lease takes them all
        assert await b.try_acquire(0.5) and b.leased == 2.0 and b.trips == 5
        assert await b.tokens() == 0.0 and b.trips == 6   # (what it holds is taken)
        await b.acquire(2)                # from what it holds: no round trip
        assert b.trips == 6 and b.leased == 0
        assert await b.try_acquire(11 / 4) is False   # more than lease... and than available
        with pytest.raises(ValueError, match=r"lease must be a number of tokens from 1 to "
                                             r"capacity \(10\), got 11"):
            RedisTokenBucket(c, "k", 10, lease=11)
        await b.reset()
        assert b.leased == 0 and await b.tokens() == 10.0


@VT
async def test_concurrent_callers_share_one_lease_on_virtual_time(server):
    async with Client(server.url, real=False) as c:
        b = counting(c, fresh(), 1, per=1000, capacity=20, lease=5)
        got = await asyncio.gather(*[b.try_acquire() for _ in range(12)])
        assert got == [True] * 12 and b.trips == 3 and b.leased == 3
        got = await asyncio.gather(*[b.try_acquire() for _ in range(12)])
        assert sum(got) == 8 and b.leased == 0


@VT
@pytest.mark.parametrize("lease", [None, 1, 5])
@pytest.mark.parametrize("every", [0.2, 5.0])
async def test_lease_bound_across_processes_on_virtual_time(server, lease, every):
    """4 processes (4 buckets) on one key, 1 token/s, capacity 10, each asking once every
    `every` seconds for 300 s (0.2 s: far more than the rate; 5 s: 0.8 a second, less). In every
    window of w seconds at most rate * w + capacity tokens are admitted, plus processes x lease
    with leasing (tokens leased before the window, spent in it). Asking more than the rate:
    over the run at least rate * T + capacity - processes x lease (tokens leased and never
    spent). Asking less: everything is admitted (with leasing, but a few calls: the tokens
    the other processes hold), with a round trip per `lease` tokens (a lease
    takes what has flowed in: when the demand exceeds the rate, that is about one token, and
    leasing saves nothing)."""
    loop = asyncio.get_running_loop()
    key = fresh()
    # (slow, on virtual time: a key expires on the server's real clock, so a busy machine
    # may drop one early, giving back up to rate x the real time between two calls)
    procs, rate, cap, T = 4, 1, 10, 300.0
    # one client, so one connection: the server runs the calls in the order of their injected
    # instants (over 4 connections it may not, and a clock that goes back refuses wrongly)
    client = redis.asyncio.Redis.from_url(server.url, socket_connect_timeout=None,
                                          socket_timeout=None)
    try:
        buckets = [counting(client, key, rate, capacity=cap, lease=lease) for _ in range(procs)]
        admitted = []
        asked = 0
        start = loop.time()

        async def run(b):
            nonlocal asked
            while loop.time() - start < T:
                asked += 1
                t, trips = loop.time(), b.trips
                if await b.try_acquire():
                    # the instant it was decided: the server's for a round trip (the virtual
                    # clock may jump while a reply travels), else now (no await: no jump)
                    admitted.append((b.last_now if b.trips != trips else t) - start)
                await asyncio.sleep(every)

        await asyncio.gather(*[run(b) for b in buckets])
        extra = procs * (lease or 0)
        admitted.sort()
        for w in (5, 10, 50, 100):
            most = max(sum(1 for t in admitted[i:] if t <= t0 + w)
                       for i, t0 in enumerate(admitted))
            assert most <= rate * w + cap + extra + 1e-9, (w, most)
        total = len(admitted)
        assert total <= rate * T + cap + 1
        trips = sum(b.trips for b in buckets)
        print(f"every {every}s, lease={lease}: {total} of {asked} admitted, "
              f"{trips / total:.2f} round trips per admitted token")
        if every < 1:
            assert total >= rate * T + cap - extra - 1
        elif lease is None:
            assert total == asked and trips == total
        else:
            # tokens held in the other processes' leases (at most processes x lease at any
            # instant) may be missing from the shared bucket: a few refusals
            assert asked - extra <= total <= asked
            assert trips / total <= 1 / lease + procs / total + (asked - total) / total
    finally:
        await client.aclose()


# ------------------------------------------------------------------ the API on real loops

@pytest.mark.asyncio
async def test_arguments_are_checked(server):
    async with Client(server.url) as c:
        for bad in ["", "a b", "x" * 201, "quo'te", "back\\slash", "nul\0", "é", 3]:
            with pytest.raises(ValueError, match="key must be"):
                RedisTokenBucket(c, bad, 1)
        with pytest.raises(ValueError, match="prefix must be"):
            RedisTokenBucket(c, "k", 1, prefix="a b")
        with pytest.raises(ValueError, match="rate must be a finite number > 0, got -1"):
            RedisTokenBucket(c, "k", -1)
        with pytest.raises(TypeError, match="rate must be a real number, not str"):
            RedisTokenBucket(c, "k", "1")
        with pytest.raises(ValueError, match="per must be"):
            RedisTokenBucket(c, "k", 1, per=float("nan"))
        with pytest.raises(ValueError, match="capacity must be a finite number >= 1, got 0.5"):
            RedisTokenBucket(c, "k", 1, capacity=0.5)
        with pytest.raises(ValueError, match="on_error must be one of"):
            RedisTokenBucket(c, "k", 1, on_error="ignore")
        with pytest.raises(ValueError, match="call_timeout must be > 0"):
            RedisTokenBucket(c, "k", 1, call_timeout=0)
        b = RedisTokenBucket(c, "{tenant}:api/v1", 10)
        assert b.key == "aiofast:tb:{tenant}:api/v1" and b.capacity == 10
        assert RedisTokenBucket(c, "k", 0.5).capacity == 1
        assert "key:aiofast:tb:{tenant}:api/v1, rate:10/1.0s" in repr(b)
        with pytest.raises(ValueError, match=r"tokens must be <= capacity \(10\), got 11"):
            await b.try_acquire(11)
        with pytest.raises(ValueError, match="tokens must be > 0, got 0"):
            await b.acquire(0)
        with pytest.raises(ValueError, match="timeout must be a number or None, got nan"):
            await b.acquire(1, timeout=float("nan"))
        with pytest.raises(TypeError, match="a RedisTokenBucket decorates an async function"):
            b(len)


@pytest.mark.asyncio
async def test_async_with_and_decorator(server):
    async with Client(server.url) as c:
        b = RedisTokenBucket(c, fresh(), 1, per=100, capacity=3)
        async with b:
            pass

        @b
        async def double(x):
            return 2 * x

        assert inspect.iscoroutinefunction(double) and double.__name__ == "double"
        assert await double(21) == 42
        assert await b.try_acquire()
        assert not await b.try_acquire()


@pytest.mark.asyncio
async def test_script_is_loaded_again_after_a_flush(server, sync):
    async with Client(server.url, decode_responses=True) as c:
        b = RedisTokenBucket(c, fresh(), 1, per=100, capacity=2)
        sync.script_flush()
        assert await b.try_acquire()
        sync.script_flush()
        assert await b.tokens() == pytest.approx(1, abs=1e-3)  # a token per 100 s: real time
        sync.script_flush()
        with pytest.raises(TimeoutError):
            await b.acquire(2, timeout=0.01)


def test_import_aiofast_does_not_import_redis():
    code = "import sys, aiofast; print('redis' in sys.modules, 'aiofast.redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=HERE)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------ faults

@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_policies_while_the_server_is_down_and_recovery(own_server, multiplex):
    loop = asyncio.get_running_loop()
    async with Client(own_server.url, socket_connect_timeout=0.2) as c:
        buckets = {p: RedisTokenBucket(c, "k-" + p, 1, per=100, capacity=1, on_error=p,
                                       call_timeout=0.3, retry_interval=0.05,
                                       multiplex=multiplex)
                   for p in ("raise", "allow", "deny")}
        for b in buckets.values():
            assert await b.try_acquire()
        own_server.kill()
        with pytest.raises(RedisUnavailableError) as e:
            await buckets["raise"].try_acquire()
        assert isinstance(e.value.__cause__, (redis.exceptions.ConnectionError, OSError))
        with pytest.raises(RedisUnavailableError):
            await buckets["raise"].acquire()
        with pytest.raises(RedisUnavailableError):
            await buckets["raise"].tokens()
        assert await buckets["allow"].try_acquire() is True
        await buckets["allow"].acquire()
        assert await buckets["allow"].tokens() == 1.0
        assert await buckets["deny"].try_acquire() is False
        assert await buckets["deny"].tokens() == 0.0
        assert await buckets["deny"].has_capacity() is False
        t0 = loop.time()
        with pytest.raises(TimeoutError, match="Redis did not answer"):
            await buckets["deny"].acquire(timeout=0.4)
        # not before its deadline, as the loop keeps time: a loop runs a timer that is due
        # within its clock's resolution, and uvloop counts whole milliseconds, so a call
        # that ended at its deadline can read up to 1 ms short of t0 + 0.4 in floats
        assert loop.time() >= t0 + 0.4 - 1e-3
        # back (empty: persistence is off): every policy works on real answers again
        own_server.start()
        for b in buckets.values():
            assert await b.try_acquire()
            assert not await b.try_acquire()


@pytest.mark.asyncio
async def test_server_killed_and_restarted_under_load(own_server):
    """Callers loop on acquire() with timeouts while the server is killed and restarted: each
    call ends (admitted, refused or an error, per policy) within its timeout plus call_timeout;
    after recovery the counts are sane."""
    loop = asyncio.get_running_loop()
    outcomes = {"admitted": 0, "timeout": 0, "unavailable": 0}
    longest = 0.0
    stop = False
    async with Client(own_server.url, socket_connect_timeout=0.2) as c:
        policies = ("raise", "deny")
        buckets = [RedisTokenBucket(c, "load-" + p, 200, capacity=5, on_error=p,
                                    call_timeout=0.25, retry_interval=0.05) for p in policies]

        async def caller(b):
            nonlocal longest
            while not stop:
                t0 = loop.time()
                try:
                    await b.acquire(timeout=0.5)
                    outcomes["admitted"] += 1
                except TimeoutError:
                    outcomes["timeout"] += 1
                except RedisUnavailableError:
                    outcomes["unavailable"] += 1
                    await asyncio.sleep(0.01)
                longest = max(longest, loop.time() - t0)

        tasks = [asyncio.create_task(caller(b)) for b in buckets for _ in range(4)]
        await asyncio.sleep(0.3)
        admitted_before = outcomes["admitted"]
        # in a thread: the test's own waiting for the server must not block the loop (that would
        # be counted in the callers' times)
        await asyncio.to_thread(own_server.kill)
        await asyncio.sleep(0.6)
        await asyncio.to_thread(own_server.start)
        await asyncio.sleep(0.6)
        stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
        assert admitted_before > 0
        assert outcomes["unavailable"] > 0 and outcomes["timeout"] > 0
        assert outcomes["admitted"] > admitted_before
        assert longest <= 0.5 + 0.25 + 0.1   # timeout + one call_timeout + scheduling
        # after recovery: a fresh bucket of the server, at most full
        for b in buckets:
            assert 0 <= await b.tokens() <= 5


FUZZ = 1e-9


@pytest.mark.asyncio
async def test_a_server_that_does_not_answer(own_server):
    """The server stopped (SIGSTOP: connected, silent): on the shared connection, every call
    ends at its own deadline (call_timeout, or an acquire()'s timeout when sooner), however
    many calls are pending; then the connection is dropped, and the next call after the
    server is back reconnects."""
    loop = asyncio.get_running_loop()
    async with Client(own_server.url) as c:
        # (capacity 20: the calls that timed out may still run when the server resumes, as
        # their commands were sent: a timeout never says that nothing was taken)
        quick = RedisTokenBucket(c, fresh(), 1, per=100, capacity=20, call_timeout=0.2)
        slow = RedisTokenBucket(c, fresh(), 1, per=100, capacity=20, call_timeout=5)
        assert await quick.try_acquire() and await slow.try_acquire()
        own_server.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = loop.time()
            ends = {}

            async def timed(name, coro):
                try:
                    await coro
                except (RedisUnavailableError, TimeoutError) as exc:
                    ends[name] = (type(exc).__name__, loop.time() - t0)

            await asyncio.gather(
                timed("slow acquire, timeout 0.4", slow.acquire(timeout=0.4)),
                timed("quick try", quick.try_acquire()),
                *[timed(f"quick try {i}", quick.try_acquire()) for i in range(5)])
            assert ends["quick try"][0] == "RedisUnavailableError"
            # (FUZZ: uvloop's time() counts whole milliseconds, so the difference of two of its
            # readings is a float a hair below the whole number of milliseconds it stands for)
            assert 0.2 - FUZZ <= ends["quick try"][1] < 0.35
            # (the quick ones' deadline dropped the connection: the slow one failed then too)
            assert ends["slow acquire, timeout 0.4"][1] < 0.35
            assert all(e[1] < 0.35 for e in ends.values()) and len(ends) == 7
            # alone, an acquire()'s own timeout bounds its call (call_timeout is 5 s)
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await slow.acquire(timeout=0.3)
            assert 0.3 - FUZZ <= loop.time() - t0 < 0.45
        finally:
            own_server.proc.send_signal(signal.SIGCONT)
        assert await quick.try_acquire() and await slow.try_acquire()


@pytest.fixture
def acl_server():
    srv = RedisServer(
        "user default off",
        # what the bucket needs: its scripts, and the commands they run on its keys
        "user alice on >s3cret ~aiofast:tb:* -@all +evalsha +script|load +get +set +del +time",
        "user bob on >hunter2 ~other:* -@all +evalsha +script|load +get +set +del +time",
    ).start()
    yield srv
    srv.close()


@pytest.mark.asyncio
async def test_acl_user_with_a_password(acl_server):
    url = f"redis://127.0.0.1:{acl_server.port}/0"
    async with Client(url, username="alice", password="s3cret") as c:
        b = RedisTokenBucket(c, fresh(), 1, per=100, capacity=1)
        assert await b.try_acquire()
        assert not await b.try_acquire()
        await b.reset()
        assert await b.try_acquire()
    # an ACL error is a mistake to fix: it raises whatever the policy
    async with Client(url, username="bob", password="hunter2") as c:
        b = RedisTokenBucket(c, fresh(), 1, on_error="allow")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await b.try_acquire()
    async with Client(url, username="alice", password="wrong") as c:
        b = RedisTokenBucket(c, fresh(), 1, on_error="allow")
        with pytest.raises(redis.exceptions.AuthenticationError):
            await b.try_acquire()


# A call that drops its cancellation: redis-py can (on 3.10 and 3.11 it writes through
# asyncio.wait_for, which returns the inner result and drops the cancellation when the two meet in
# one turn of the loop), then goes on retrying through its backoff. call_timeout still holds.

async def _stubborn(loop, ended):
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        pass                       # dropped
    await asyncio.sleep(5)         # a retry's backoff
    ended.set_result(loop.time())
    return "late"


@VT
async def test_call_timeout_holds_when_the_call_drops_its_cancellation():
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    t0 = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await _bounded(_stubborn(loop, ended), 0.25)
    assert loop.time() == t0 + 0.25
    # the call is left to end on its own, its outcome taken by nobody (and not logged)
    assert await ended == t0 + 5.25
    # one that ends in time gives its result, or raises its error
    assert await _bounded(asyncio.sleep(0.1, "soon"), 0.25) == "soon"
    with pytest.raises(KeyError):
        await _bounded(_raises_later(KeyError("k")), 0.25)


async def _raises_later(exc):
    await asyncio.sleep(0.1)
    raise exc


@VT
async def test_call_timeout_caller_cancelled_while_waiting():
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    caller = asyncio.ensure_future(_bounded(_stubborn(loop, ended), 1.0))
    await asyncio.sleep(0.5)
    t0 = loop.time()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert loop.time() == t0       # at once, not when the call ends
    assert await ended == t0 + 5


# ------------------------------------------------------------------ across processes

WORKER = textwrap.dedent("""
    import asyncio, sys, time
    import redis.asyncio, uvloop
    from aiofast.redis import RedisTokenBucket

    url, key, loop_name = sys.argv[1:4]

    class Recorder(RedisTokenBucket):
        # the instant (server clock, us) each admitted acquire() was reserved for
        __slots__ = ("reserved",)

        async def _script(self, name, *args, **kw):
            r = await super()._script(name, *args, **kw)
            if name == "acquire" and r[0] == 1:
                self.reserved.append(float(r[2]) + float(r[1]))
            return r

    async def main():
        c = redis.asyncio.Redis.from_url(url)
        b = Recorder(c, key, 1000, capacity=10)
        b.reserved = []
        woke = []
        end = None

        async def task():
            while True:
                await b.acquire()
                t = time.time()
                woke.append(t)
                if t > end:
                    return

        await c.ping()
        print("ready", flush=True)
        start = float(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        end = start + 2.6
        await asyncio.sleep(start - time.time())
        await asyncio.gather(*[task() for _ in range(64)])
        await c.aclose()
        print(" ".join(map(repr, b.reserved)))
        print(" ".join(map(repr, woke)))

    (uvloop.run if loop_name == "uvloop" else asyncio.run)(main())
""")


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_accuracy_four_processes(server, sync, loop_name):
    """4 processes on one key at 1,000 tokens/s, capacity 10, 64 tasks each (always asking),
    counted at the instants the server gave the tokens (no task went sooner): from the first
    admission (a full bucket) over 2.5 s, at most rate * elapsed + capacity (+0.5%); over the
    2 s after the first half second (once all 256 tasks ask: on a busy 2-core machine they take
    that long to start), within -1% / +0.5% of rate * 2 s. Counted at the instants the tasks
    woke (later, never sooner), never more than +0.5% either."""
    key = fresh()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, server.url, key, loop_name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=HERE) for _ in range(4)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    sec, usec = sync.time()   # the server's clock (the same host's as time.time())
    start = sec + usec / 1e6 + 0.1   # every process starts then, on a full bucket
    for p in procs:
        p.stdin.write(repr(start) + "\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=30)[0].splitlines() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    reserved = sorted(float(x) / 1e6 for o in outs for x in o[0].split())
    woke = [float(x) for o in outs for x in o[1].split()]
    assert all(len(o[1].split()) > 0 for o in outs)
    first = reserved[0]

    def count(times, a, b):
        return sum(a <= t <= b for t in times)

    whole = count(reserved, first, first + 2.5)
    steady = count(reserved, first + 0.5, first + 2.5)
    ran = count(woke, first, first + 2.5)
    print(f"{loop_name}: from a full bucket over 2.5 s: {whole} given, {ran} ran "
          f"(at most {1000 * 2.5 + 10}); steady 2 s: {steady} given (of 2000)")
    assert whole <= (1000 * 2.5 + 10) * 1.005
    assert ran <= (1000 * 2.5 + 10) * 1.005
    assert 2000 * 0.99 <= steady <= 2000 * 1.005


FIFO_WORKER = textwrap.dedent("""
    import asyncio, sys, time
    import redis.asyncio
    from aiofast.redis import RedisTokenBucket

    async def main():
        c = redis.asyncio.Redis.from_url(sys.argv[1])
        b = RedisTokenBucket(c, sys.argv[2], 5, capacity=1)
        pending = []
        loop = asyncio.get_running_loop()
        # one reservation per "go", in the order the parent says (stdin read off the loop)
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
            before = await c.get(b.key)
            t = asyncio.create_task(b.acquire())
            while await c.get(b.key) == before:
                await asyncio.sleep(0.001)
            print("reserved", flush=True)
            pending.append(t)
            t.add_done_callback(lambda _t, n=len(pending): print("woke", n, repr(time.time()),
                                                                flush=True))
        await asyncio.gather(*pending)
        await c.aclose()

    asyncio.run(main())
""")


def test_fifo_by_reservation_across_processes(server, sync):
    key = fresh()
    procs = [subprocess.Popen([sys.executable, "-c", FIFO_WORKER, server.url, key],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=HERE) for _ in range(3)]
    order = [0, 1, 2, 1, 0, 2, 2, 0]
    wakes = []

    def woke(i, line):
        _, n, t = line.split()
        wakes.append((float(t), i, int(n)))

    for p in order:
        procs[p].stdin.write("go\n")
        procs[p].stdin.flush()
        while (line := procs[p].stdout.readline()) != "reserved\n":
            woke(p, line)   # (the first one, admitted at once)
    for i, p in enumerate(procs):
        out, _ = p.communicate("stop\n", timeout=30)
        for line in out.splitlines():
            woke(i, line)
        assert p.returncode == 0
    wakes.sort()
    # the k-th reservation of process p wakes in the order of reservation
    seq = []
    seen = [0, 0, 0]
    for p in order:
        seen[p] += 1
        seq.append((p, seen[p]))
    assert [(i, n) for _, i, n in wakes] == seq, wakes


# ------------------------------------------------------------------ the two connection paths

@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_concurrent_callers_on_either_path(server, multiplex):
    """50 concurrent try_acquire() on a bucket of 20 (refilling once in 1000 s): exactly 20
    admitted, on the shared pipelined connection as through client.evalsha."""
    async with Client(server.url) as c:
        b = RedisTokenBucket(c, fresh(), 1, per=1000, capacity=20, multiplex=multiplex)
        got = await asyncio.gather(*[b.try_acquire() for _ in range(50)])
        assert sum(got) == 20
        assert (b._links is not None) is multiplex


@pytest.mark.asyncio
async def test_a_burst_of_first_calls_opens_one_connection(server, sync):
    """50 callers that find no connection (at start, or after an outage) share one attempt to
    connect: one connection opened, none left behind; a caller that gives up (cancelled)
    does not stop the attempt for the others."""
    before = sync.info("clients")["connected_clients"]
    async with Client(server.url) as c:
        buckets = [RedisTokenBucket(c, fresh(), 1, per=1000, capacity=1) for _ in range(50)]
        calls = [asyncio.ensure_future(b.try_acquire()) for b in buckets]
        await asyncio.sleep(0)            # every call is waiting for the connection
        calls[0].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert done[1:] == [True] * 49
        assert sync.info("clients")["connected_clients"] == before + 1
        assert len(c.connection_pool._in_use_connections) == 1   # the link's, and only it
        # the link lost: the next burst makes one new connection again
        buckets[1]._links.link.close(ConnectionError("dropped by the test"))
        assert [await b.try_acquire() for b in buckets[1:3]] == [False, False]
        assert len(c.connection_pool._in_use_connections) == 1


@pytest.mark.asyncio
async def test_client_close_closes_the_shared_connection(server, sync):
    """The client's aclose() closes the bucket's connection too (its pool disconnects the
    connections in use); a call after that takes a new one."""
    before = sync.info("clients")["connected_clients"]
    c = redis.asyncio.Redis.from_url(server.url)
    b = RedisTokenBucket(c, fresh(), 1, per=1000, capacity=2)
    assert await b.try_acquire()
    assert sync.info("clients")["connected_clients"] == before + 1
    await c.aclose()
    for _ in range(100):   # (the server sees the close a moment later)
        if sync.info("clients")["connected_clients"] == before:
            break
        await asyncio.sleep(0.01)
    assert sync.info("clients")["connected_clients"] == before
    assert await b.try_acquire()
    assert not await b.try_acquire()
    await c.aclose()


@pytest.mark.asyncio
async def test_a_cancelled_caller_leaves_the_others_alone(server):
    """Cancelling one call whose reply is still to come does not disturb the other calls on
    the shared connection (its reply is skipped when it comes)."""
    async with Client(server.url) as c:
        b = RedisTokenBucket(c, fresh(), 1, per=1000, capacity=20, on_error="raise")
        assert await b.try_acquire()
        calls = [asyncio.create_task(b.try_acquire()) for _ in range(10)]
        await asyncio.sleep(0)   # all sent
        calls[3].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[3], asyncio.CancelledError)
        assert all(x is True for i, x in enumerate(done) if i != 3)
        assert await b.try_acquire()
