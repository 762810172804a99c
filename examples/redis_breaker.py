"""One circuit breaker for every process: CircuitBreaker(..., store=RedisBreakerStore(...))
(a RedisCircuitBreaker) shared by 3 worker processes.

Start a local Redis first (persistence off, it is only a demo):

    redis-server --port 6379 --save "" --appendonly no &
    python examples/redis_breaker.py [redis://127.0.0.1:6379/0]

The (pretend) upstream fails every call for its first second, then recovers. The breaker opens
after 6 consecutive failures counted across the 3 workers (2 each, not 6 each), rejects every
worker's calls for 0.5 s, lets one probe through for the whole fleet, and closes when it
succeeds. Each worker prints what it saw; the listener runs in the worker whose call made the
transition.
"""
import asyncio
import multiprocessing
import sys
import time

import redis.asyncio

from aiofast import CircuitBreaker, CircuitOpenError
from aiofast.redis import RedisBreakerStore

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"


async def worker(name, key, t_start, out):
    client = redis.asyncio.Redis.from_url(URL)
    store = RedisBreakerStore(client, key, max_staleness=0.1, on_error="deny")
    breaker = CircuitBreaker(6, 0.5, store=store, name="upstream")
    seen = {"ok": 0, "failed": 0, "rejected": 0}
    breaker.add_listener(lambda b, old, new: print(f"{name}: {old.value} -> {new.value}",
                                                   flush=True))

    @breaker
    async def call_upstream():
        await asyncio.sleep(0.01)
        if time.time() < t_start + 1.0:
            raise ConnectionError("upstream down")
        return "ok"

    await asyncio.sleep(t_start - time.time())
    while time.time() < t_start + 2.0:
        try:
            await call_upstream()
            seen["ok"] += 1
        except ConnectionError:
            seen["failed"] += 1
        except CircuitOpenError:
            seen["rejected"] += 1
            await asyncio.sleep(0.05)
    await client.aclose()
    out.put((name, seen))


def run(name, key, t_start, out):
    asyncio.run(worker(name, key, t_start, out))


def main():
    key = f"demo-{time.time_ns()}"
    t_start = time.time() + 1.0   # (1 s for the processes to start)
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=run, args=(f"worker-{i}", key, t_start, out))
             for i in range(3)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    for name, seen in sorted(results):
        print(f"{name}: {seen}")
    failed = sum(s["failed"] for _, s in results)
    print(f"failed calls that reached the upstream: {failed} (6 open the breaker for all; a "
          "worker may admit a few more until its view is 0.1 s old)")


if __name__ == "__main__":
    main()
