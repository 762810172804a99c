"""aiofast.redis.RedisTokenBucket.try_acquire against a raw EVALSHA of the same script through
redis-py, and against the peer limits (limits.aio, its Redis storage on the same redis-py
client library), on one redis-server this benchmark starts (127.0.0.1, persistence off).

Each variant runs n sequential calls in one task (a process's throughput for one caller: each
call is one round trip), then n calls spread over 16 concurrent tasks (aiofast pipelines them
on one connection; redis-py and limits use a connection per concurrent call from the pool), on
asyncio's default loop and on uvloop, through the harness (interleaved rounds, medians). The
quota is the same for all, 100,000 per second, never exhausted, so every call admits. Then
try_acquire with lease=10 (one round trip per 10 tokens), and a RedisCircuitBreaker's closed
call (a fresh local view: no round trip) against the in-process CircuitBreaker's; in rate mode
too: a time window (successes held, sent once per max_staleness), a count window (a round trip
per outcome), the in-process breaker with the same time window.

Run: python -m benchmarks --only redis [--quick] [--save]  (or this file, from the root)
"""
import asyncio
import os
import sys
import time
import uuid

import redis.asyncio
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from aiofast import CircuitBreaker
from aiofast.redis import _SCRIPTS, RedisBreakerStore, RedisCircuitBreaker, RedisTokenBucket
from benchmarks.harness import Case, async_variant, run_cases

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from redis_server import RedisServer  # noqa: E402

TITLE = ("RedisTokenBucket.try_acquire (one round trip) against raw EVALSHA and limits; "
         "with leasing; RedisCircuitBreaker's closed call")
RATE = 100_000
LEASE = 10


def variants(url, loop_name, tasks=1, lease=False, clock=time.perf_counter):
    """The four variants; with tasks > 1, n calls spread over that many concurrent tasks; with
    lease, aiofast leasing LEASE tokens per round trip against aiofast without, raw EVALSHA and
    limits FixedWindow. `clock`: time.process_time measures the client's CPU per call (what
    bounds a process's throughput once the server's round trips overlap)."""

    async def spread(n, call):
        if tasks == 1:
            for _ in range(n):
                await call()
            return

        async def worker(k):
            for _ in range(k):
                await call()
        await asyncio.gather(*[worker(n // tasks) for _ in range(tasks)])

    async def ours(n):
        c = redis.asyncio.Redis.from_url(url)
        b = RedisTokenBucket(c, uuid.uuid4().hex, RATE)
        await b.try_acquire()
        t = clock()
        await spread(n, b.try_acquire)
        dt = clock() - t
        await c.aclose()
        return dt

    async def raw(n):
        c = redis.asyncio.Redis.from_url(url)
        src, sha = _SCRIPTS["acquire"]
        await c.script_load(src)
        key = "aiofast:tb:" + uuid.uuid4().hex
        interval = 1e6 / RATE
        args = (repr(interval), repr(RATE * interval), "0", "", "")
        t = clock()
        await spread(n, lambda: c.evalsha(sha, 1, key, *args))
        dt = clock() - t
        await c.aclose()
        return dt

    def peer(strategy):
        async def run(n):
            storage = RedisStorage("async+" + url, implementation="redispy")
            lim = strategy(storage)
            item = RateLimitItemPerSecond(RATE)
            key = uuid.uuid4().hex
            await lim.hit(item, key)
            t = clock()
            await spread(n, lambda: lim.hit(item, key))
            dt = clock() - t
            await storage.reset()
            return dt
        return run

    async def leased(n):
        c = redis.asyncio.Redis.from_url(url)
        b = RedisTokenBucket(c, uuid.uuid4().hex, RATE, lease=LEASE)
        await b.try_acquire()
        t = clock()
        await spread(n, b.try_acquire)
        dt = clock() - t
        await c.aclose()
        return dt

    out = {
        "aiofast": async_variant(loop_name, ours),
        "raw EVALSHA (redis-py)": async_variant(loop_name, raw),
        "limits MovingWindow": async_variant(loop_name, peer(MovingWindowRateLimiter)),
        "limits FixedWindow": async_variant(loop_name, peer(FixedWindowRateLimiter)),
    }
    if lease:
        out = {"aiofast": async_variant(loop_name, leased),
               "aiofast without lease": out["aiofast"],
               "raw EVALSHA (redis-py)": out["raw EVALSHA (redis-py)"],
               "limits FixedWindow": out["limits FixedWindow"]}
    return out


def breaker_variants(url, loop_name):
    """A closed breaker's call of a coroutine function that returns at once: with its state in
    Redis (a fresh local view: no round trip) and the in-process CircuitBreaker."""

    async def job():
        return 1

    async def with_store(n):
        c = redis.asyncio.Redis.from_url(url)
        b = RedisCircuitBreaker(5, 30, store=RedisBreakerStore(c, uuid.uuid4().hex,
                                                               max_staleness=1.0))
        call = b.call
        await call(job)
        t = time.perf_counter()
        for _ in range(n):
            await call(job)
        dt = time.perf_counter() - t
        await c.aclose()
        return dt

    async def in_process(n):
        b = CircuitBreaker(5, 30)
        call = b.call
        await call(job)
        t = time.perf_counter()
        for _ in range(n):
            await call(job)
        return time.perf_counter() - t

    return {"aiofast": async_variant(loop_name, with_store),
            "CircuitBreaker (in-process)": async_variant(loop_name, in_process)}


def rate_breaker_variants(url, loop_name):
    """A closed breaker's successful call in rate mode: a time window over Redis (successes
    held: sent with the next refresh, once per max_staleness), a count window over Redis (one
    round trip per outcome), the in-process CircuitBreaker with the same time window."""

    async def job():
        return 1

    def with_store(**kw):
        async def run(n):
            c = redis.asyncio.Redis.from_url(url)
            b = RedisCircuitBreaker(failure_rate=0.5, store=RedisBreakerStore(
                c, uuid.uuid4().hex, max_staleness=1.0), **kw)
            call = b.call
            await call(job)
            t = time.perf_counter()
            for _ in range(n):
                await call(job)
            dt = time.perf_counter() - t
            await b.refresh()
            await c.aclose()
            return dt
        return run

    async def in_process(n):
        b = CircuitBreaker(failure_rate=0.5, window_time=60)
        call = b.call
        await call(job)
        t = time.perf_counter()
        for _ in range(n):
            await call(job)
        return time.perf_counter() - t

    return {"aiofast": async_variant(loop_name, with_store(window_time=60)),
            "count window (Redis)": async_variant(loop_name, with_store(window=100)),
            "CircuitBreaker (in-process)": async_variant(loop_name, in_process)}


def main(quick=False):
    srv = RedisServer().start()
    try:
        n = 500 if quick else 2000
        cases = [Case("try_acquire", variants(srv.url, loop), n, loop=loop,
                      note="one caller: one round trip per call") for loop in ("asyncio", "uvloop")]
        cases += [Case("try_acquire x16 tasks", variants(srv.url, loop, tasks=16), n, loop=loop,
                       note="16 concurrent callers in one process")
                  for loop in ("asyncio", "uvloop")]
        cases += [Case("try_acquire, client CPU", variants(srv.url, loop,
                                                            clock=time.process_time), n,
                       loop=loop, note="one caller; CPU time of the calling process per call")
                  for loop in ("asyncio", "uvloop")]
        cases += [Case(f"try_acquire, lease={LEASE}", variants(srv.url, loop, lease=True), n,
                       loop=loop, note=f"one round trip per {LEASE} tokens; the fleet may run "
                       f"ahead of the rate by processes x {LEASE} tokens")
                  for loop in ("asyncio", "uvloop")]
        cases += [Case("breaker closed call", breaker_variants(srv.url, loop), n * 10,
                       loop=loop, note="RedisCircuitBreaker on a fresh view: no round trip")
                  for loop in ("asyncio", "uvloop")]
        cases += [Case("breaker closed call, rate mode", rate_breaker_variants(srv.url, loop), n,
                       loop=loop, note="aiofast: window_time=60, successes held (max_staleness "
                       "1 s); count window: window=100, a round trip per outcome")
                  for loop in ("asyncio", "uvloop")]
        run_cases(cases, 3 if quick else 5, "redis", TITLE)
    finally:
        srv.close()


if __name__ == "__main__":
    from benchmarks.harness import parse_args

    main(parse_args(sys.argv[1:], __doc__)[0].quick)
