"""aiofast end to end: the same small API-client service, built twice.

"before" uses what services use today: asyncio's Semaphore/Lock/Event/PriorityQueue,
aiolimiter's AsyncLimiter, the circuitbreaker package, async-lru and cachetools. "after" changes
the imports to aiofast. Both run the same workload (5,000 jobs through a priority queue, 16
workers, a rate limit, a concurrency cap, a circuit breaker around a flaky backend, a memoized
lookup and a TTL cache of results); the demo checks they produce the same answer and prints the
time each took.
"""
import asyncio
import sys
import time
from types import SimpleNamespace

import aiofast

N_JOBS = 5_000
N_WORKERS = 16


def before():
    import aiolimiter
    import async_lru
    import cachetools
    import circuitbreaker

    class Breaker:
        def __init__(self):
            self._cb = circuitbreaker.CircuitBreaker(failure_threshold=3, recovery_timeout=1e9,
                                                     expected_exception=ConnectionError)

        def __call__(self, fn):
            return self._cb(fn)

        @property
        def is_open(self):
            return self._cb.opened

    return SimpleNamespace(
        name="asyncio + aiolimiter + circuitbreaker + async-lru + cachetools",
        Semaphore=asyncio.Semaphore, Lock=asyncio.Lock, Event=asyncio.Event,
        PriorityQueue=asyncio.PriorityQueue,
        limiter=lambda: aiolimiter.AsyncLimiter(1_000_000, 1),
        breaker=Breaker,
        open_error=circuitbreaker.CircuitBreakerError,
        memo=lambda: async_lru.alru_cache(maxsize=1024),
        ttl_cache=lambda: cachetools.TTLCache(maxsize=2048, ttl=60),
    )


def after():
    class Breaker:
        def __init__(self):
            self._cb = aiofast.CircuitBreaker(failure_threshold=3, recovery_timeout=1e9,
                                              expected_exception=ConnectionError)

        def __call__(self, fn):
            return self._cb(fn)

        @property
        def is_open(self):
            return self._cb.state == aiofast.CircuitState.OPEN

    return SimpleNamespace(
        name="aiofast",
        Semaphore=aiofast.Semaphore, Lock=aiofast.Lock, Event=aiofast.Event,
        PriorityQueue=aiofast.PriorityQueue,
        limiter=lambda: aiofast.TokenBucket(1_000_000, 1.0),
        breaker=Breaker,
        open_error=aiofast.CircuitOpenError,
        memo=lambda: aiofast.cached(maxsize=1024),
        ttl_cache=lambda: aiofast.TTLCache(maxsize=2048, ttl=60),
    )


async def service(k):
    queue = k.PriorityQueue()
    sem = k.Semaphore(8)
    stats_lock = k.Lock()
    finished = k.Event()
    limiter = k.limiter()
    breaker = k.breaker()
    results = k.ttl_cache()
    stats = {"ok": 0, "rejected": 0, "failed": 0, "backend_calls": 0, "lookups": 0}

    @k.memo()
    async def lookup(user):  # memoized: 50 distinct users among 5,000 jobs
        stats["lookups"] += 1
        await asyncio.sleep(0)
        return user * 7 % 101

    @breaker
    async def backend(job_id, weight):
        stats["backend_calls"] += 1
        await asyncio.sleep(0)
        if job_id % 10 == 9 and job_id >= 4000:  # the backend goes down for the last jobs:
            raise ConnectionError(job_id)       # 3 failures in a row trip the breaker
        return job_id * weight

    async def handle(job_id):
        async with limiter:
            async with sem:
                weight = await lookup(job_id % 50)
                try:
                    value = await backend(job_id, weight)
                except k.open_error:
                    outcome = "rejected"
                except ConnectionError:
                    outcome = "failed"
                else:
                    results[job_id] = value
                    outcome = "ok"
        async with stats_lock:
            stats[outcome] += 1

    async def worker():
        while True:
            prio, job_id = await queue.get()
            try:
                await handle(job_id)
            finally:
                queue.task_done()
            if queue.empty() and stats["ok"] + stats["rejected"] + stats["failed"] == N_JOBS:
                finished.set()

    workers = [asyncio.create_task(worker()) for _ in range(N_WORKERS)]
    for job_id in range(N_JOBS):
        queue.put_nowait((job_id % 10, job_id))
    await queue.join()
    await finished.wait()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    checksum = sum(results.values())
    return stats, checksum, breaker.is_open


def run(kit):
    t0 = time.perf_counter()
    out = asyncio.run(service(kit))
    return out, time.perf_counter() - t0


def main():
    print(f"aiofast {aiofast.__version__} on Python {sys.version.split()[0]}")
    timings = {}
    outs = {}
    for make in (before, after, before, after):
        kit = make()
        out, dt = run(kit)
        outs.setdefault(kit.name, out)
        assert outs[kit.name] == out
        timings.setdefault(kit.name, []).append(dt)
    (name_b, out_b), (name_a, out_a) = outs.items()
    assert out_a == out_b, (out_a, out_b)
    stats, checksum, is_open = out_a
    print(f"jobs: {N_JOBS}; ok {stats['ok']}, failed {stats['failed']}, rejected by the open "
          f"breaker {stats['rejected']}; backend calls {stats['backend_calls']}; memoized "
          f"lookups computed {stats['lookups']}; checksum {checksum}; breaker open at the end: "
          f"{is_open}")
    print("identical results with both stacks")
    tb, ta = min(timings[name_b]), min(timings[name_a])
    print(f"before ({name_b}): {tb * 1e3:.1f} ms")
    print(f"after  (aiofast): {ta * 1e3:.1f} ms  ({tb / ta:.2f}x faster, whole service with "
          f"the event loop included)")


if __name__ == "__main__":
    main()
