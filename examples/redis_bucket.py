"""One quota for every process: a RedisTokenBucket shared by 3 worker processes.

Start a local Redis first (persistence off, it is only a demo):

    redis-server --port 6379 --save "" --appendonly no &
    python examples/redis_bucket.py [redis://127.0.0.1:6379/0]

Each worker runs 8 tasks that call a (pretend) API through the same bucket, 50 calls a second
with bursts of up to 5, for 2 seconds; together they make at most 5 + 50 * 2 = 105 calls, not
3 times that, and the order of service follows the order of reservation across the processes.
"""
import asyncio
import multiprocessing
import sys
import time

import redis.asyncio

from aiofast.redis import RedisTokenBucket

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"


async def worker(name, key, t_start, t_end, out):
    client = redis.asyncio.Redis.from_url(URL)
    bucket = RedisTokenBucket(client, key, 50, capacity=5, on_error="deny")
    calls = 0

    async def call_api():
        return "ok"

    async def task():
        nonlocal calls
        while time.time() < t_end:
            try:
                # reserves only if the token comes before t_end (else TimeoutError at t_end)
                await bucket.acquire(timeout=t_end - time.time())
            except TimeoutError:
                return
            await call_api()
            calls += 1

    await asyncio.sleep(t_start - time.time())
    await asyncio.gather(*[task() for _ in range(8)])
    await client.aclose()
    out.put((name, calls))


def run(name, key, t_start, t_end, out):
    asyncio.run(worker(name, key, t_start, t_end, out))


def main():
    key = f"demo-{time.time_ns()}"
    t_start = time.time() + 1.0   # (1 s for the processes to start, then 2 s of calls)
    t_end = t_start + 2.0
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=run, args=(f"worker-{i}", key, t_start, t_end, out))
             for i in range(3)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    for name, calls in sorted(results):
        print(f"{name}: {calls} calls")
    total = sum(c for _, c in results)
    print(f"total: {total} calls (the quota allows at most 5 + 50 x 2 s = 105)")


if __name__ == "__main__":
    main()
