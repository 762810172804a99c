"""SharedTokenBucket (TokenBucket(..., shared=name): one bucket for every process of the host)
against the in-process TokenBucket and against the peer limits' moving window on a local Redis
(limits.aio.strategies.MovingWindowRateLimiter on limits.aio.storage.RedisStorage, the way the
peers share a quota between processes), on one redis-server this benchmark starts (127.0.0.1,
persistence off).

Cases: try_acquire() called from plain code; try_acquire() in a task (the limits variant awaits
its hit(), one round trip); `await acquire()` with tokens available. The quota is never
exhausted (1e15 per second for the buckets, 1,000,000 per second for limits), so every call
admits. Goals: shared try_acquire within 2x of the in-process one, at least 20x faster than
limits on Redis.

Run: python -m benchmarks --only shared [--quick] [--save]  (or this file, from the root)
"""
import asyncio
import os
import sys
import time
import uuid

if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiofast  # noqa: E402
from aiofast import TokenBucket  # noqa: E402
from benchmarks.harness import Case, async_variant, run_cases, sync_variant  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from redis_server import RedisServer  # noqa: E402

TITLE = "SharedTokenBucket (one bucket for the host's processes) against the in-process bucket and limits on Redis"
HUGE = 1e15
LIMITS_RATE = 1_000_000


def shared():
    """A shared bucket whose segment is unlinked at once (the mapping lives with the object)."""
    name = f"bench.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    b = TokenBucket(HUGE, shared=name)
    aiofast.shared_unlink(name)
    return b


def sync_try(make):
    def run(n):
        b = make()
        f = b.try_acquire
        for _ in range(n):
            f()
    return run


def task_try(make):
    async def run(n):
        b = make()
        t = time.perf_counter()
        for _ in range(n):
            b.try_acquire()
        return time.perf_counter() - t
    return run


def task_acquire(make):
    async def run(n):
        b = make()
        t = time.perf_counter()
        for _ in range(n):
            await b.acquire()
        return time.perf_counter() - t
    return run


def limits_hit(url):
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    async def run(n):
        storage = RedisStorage("async+" + url, implementation="redispy")
        lim = MovingWindowRateLimiter(storage)
        item = RateLimitItemPerSecond(LIMITS_RATE)
        key = uuid.uuid4().hex
        await lim.hit(item, key)
        t = time.perf_counter()
        for _ in range(n):
            await lim.hit(item, key)
        dt = time.perf_counter() - t
        await storage.reset()
        return dt
    return run


def main(quick=False):
    srv = RedisServer().start()
    try:
        n = 200_000 if not quick else 50_000
        cases = [Case("try_acquire", {"aiofast": sync_variant(sync_try(shared)),
                                      "in-process TokenBucket": sync_variant(
                                          sync_try(lambda: TokenBucket(HUGE)))},
                      n, note="shared bucket vs the in-process one, plain code")]
        for loop in ("asyncio", "uvloop"):
            cases.append(Case("try_acquire in a task", {
                "aiofast": async_variant(loop, task_try(shared)),
                "in-process TokenBucket": async_variant(loop, task_try(lambda: TokenBucket(HUGE))),
            }, n, loop=loop, note="shared bucket vs the in-process one"))
            cases.append(Case("try_acquire vs limits on Redis", {
                "aiofast": async_variant(loop, task_try(shared)),
                "limits MovingWindow (Redis)": async_variant(loop, limits_hit(srv.url)),
            }, 500 if quick else 2000, loop=loop,
                note="the same quota, shared by processes: shared memory vs a local Redis"))
            cases.append(Case("await acquire()", {
                "aiofast": async_variant(loop, task_acquire(shared)),
                "in-process TokenBucket": async_variant(loop, task_acquire(
                    lambda: TokenBucket(HUGE))),
            }, n, loop=loop, note="tokens available: no wait"))
        run_cases(cases, 3 if quick else 7, "shared", TITLE)
    finally:
        srv.close()


if __name__ == "__main__":
    from benchmarks.harness import parse_args

    main(parse_args(sys.argv[1:], __doc__)[0].quick)
