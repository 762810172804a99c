"""aiofast end to end: a small service that fetches 2,000 "pages" with bounded concurrency.

It uses aiofast's drop-ins exactly as asyncio's would be used, runs the same workload with
asyncio's classes, checks that both give the same answer, and prints the time each took.
"""
import asyncio
import sys
import time

import aiofast


async def service(mod, n_pages=2000, concurrency=20):
    sem = mod.Semaphore(concurrency)
    stats_lock = mod.Lock()
    done = mod.Event()
    stats = {"fetched": 0, "peak": 0, "inside": 0}

    async def fetch(i):
        async with sem:
            async with stats_lock:
                stats["inside"] += 1
                stats["peak"] = max(stats["peak"], stats["inside"])
            await asyncio.sleep(0)  # the "network"
            async with stats_lock:
                stats["inside"] -= 1
                stats["fetched"] += 1
                if stats["fetched"] == n_pages:
                    done.set()
        return i * 2

    tasks = [asyncio.create_task(fetch(i)) for i in range(n_pages)]
    await done.wait()
    results = await asyncio.gather(*tasks)
    return sum(results), stats["peak"], stats["fetched"]


def run(mod):
    t0 = time.perf_counter()
    out = asyncio.run(service(mod))
    return out, time.perf_counter() - t0


def main():
    print(f"aiofast {aiofast.__version__} on Python {sys.version.split()[0]}")
    ours, t_ours = run(aiofast)
    theirs, t_theirs = run(asyncio)
    assert ours == theirs, (ours, theirs)
    total, peak, fetched = ours
    print(f"fetched {fetched} pages, peak concurrency {peak}, checksum {total}")
    print(f"aiofast: {t_ours * 1e3:.1f} ms   asyncio: {t_theirs * 1e3:.1f} ms   "
          f"(same results; whole-service time, the event loop included)")


if __name__ == "__main__":
    main()
