"""aiofast end to end: one small API-client service, built twice, against a real upstream.

The service fetches N jobs from an HTTP upstream the way production clients do: jobs wait in a
priority queue served by workers; each request passes a rate limit (the upstream's quota), a
concurrency cap, a pool of keep-alive connections, and a circuit breaker around the flaky
upstream; each job first resolves its user through a memoized lookup; the results land in a
TTL cache. A failed or rejected job goes back to the queue at a lower priority and is retried.

The upstream is a real asyncio HTTP/1.1 server on 127.0.0.1, in this process, with latency and
failures drawn from a seed: a "bad shard" of items fails its first attempt (enough failures in
a row to open the breaker), and a few per cent of all attempts fail at random.

"pure Python" is today's stack: asyncio's Semaphore/PriorityQueue/LifoQueue, aiolimiter's
AsyncLimiter, the circuitbreaker package, async-lru and cachetools. "aiofast" changes the
imports. Both run with the same seed, on asyncio's loop and on uvloop; the results (every job's
value, the upstream calls, the lookups computed) must be identical, then a table and a chart
(PNG) compare wall time and CPU per request, with the per-primitive speed-ups measured by the
benchmark suite beside them.

    python examples/showcase.py [--jobs 20000] [--seed 7] [--chart PATH] [--rounds 2]
"""
import argparse
import asyncio
import glob
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from types import SimpleNamespace

import aiofast

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "benchmarks", "results")


# ----------------------------------------------------------------------------- the stacks


def pure_python():
    import aiolimiter
    import async_lru
    import cachetools
    import circuitbreaker

    return SimpleNamespace(
        name="pure Python",
        detail="asyncio + aiolimiter + circuitbreaker + async-lru + cachetools",
        Semaphore=asyncio.Semaphore,
        PriorityQueue=asyncio.PriorityQueue,
        LifoQueue=asyncio.LifoQueue,
        limiter=lambda rate: aiolimiter.AsyncLimiter(rate, 1),
        breaker=lambda threshold, recovery: circuitbreaker.CircuitBreaker(
            failure_threshold=threshold, recovery_timeout=recovery,
            expected_exception=UpstreamError),
        open_error=circuitbreaker.CircuitBreakerError,
        memo=lambda: async_lru.alru_cache(maxsize=4096),
        ttl_cache=lambda n: cachetools.TTLCache(maxsize=n, ttl=600),
    )


def fast():
    return SimpleNamespace(
        name="aiofast",
        detail=f"aiofast {aiofast.__version__}",
        Semaphore=aiofast.Semaphore,
        PriorityQueue=aiofast.PriorityQueue,
        LifoQueue=aiofast.LifoQueue,
        limiter=lambda rate: aiofast.AsyncLimiter(rate, 1),
        breaker=lambda threshold, recovery: aiofast.CircuitBreaker(
            failure_threshold=threshold, recovery_timeout=recovery,
            expected_exception=UpstreamError),
        open_error=aiofast.CircuitOpenError,
        memo=lambda: aiofast.alru_cache(maxsize=4096),
        ttl_cache=lambda n: aiofast.TTLCache(maxsize=n, ttl=600),
    )


STACKS = {"pure Python": pure_python, "aiofast": fast}


# ----------------------------------------------------------------------------- the upstream


class UpstreamError(Exception):
    """The upstream answered 503."""


def _draw(seed, *parts):
    """A number in [0, 1) fixed by the seed and the parts (the same on every run and stack)."""
    h = hashlib.blake2b(repr((seed,) + parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1 (keep-alive; GET /user/U and GET /item/I?attempt=K),
    a lean asyncio Protocol: it runs in the measured process, so its cost is kept small."""

    def __init__(self, seed, jobs):
        self.seed = seed
        self.bad = range(jobs // 3, jobs // 3 + max(8, jobs // 50))  # the bad shard
        self.calls = 0
        self.server = None
        self.handlers = set()

    def value(self, item):
        return int(_draw(self.seed, "value", item) * 1_000_000)

    def answer(self, path):
        """(status, body, delay) for a request path."""
        kind, _, rest = path[1:].partition("/")
        if kind == "user":
            user = int(rest)
            return 200, str(user * 7919 % 1009), 0.0
        item_s, _, query = rest.partition("?attempt=")
        item, attempt = int(item_s), int(query or 0)
        self.calls += 1
        delay = 0.002 if _draw(self.seed, "slow", item, attempt) < 0.02 else 0.0
        if (attempt == 0 and item in self.bad) or _draw(self.seed, "fail", item, attempt) < 0.03:
            return 503, "unavailable", delay
        return 200, str(self.value(item)), delay

    def respond(self, transport, request):
        path = request.split(b" ", 2)[1].decode()
        status, body, delay = self.answer(path)
        data = body.encode()
        reply = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s" % (
            status, b"OK" if status == 200 else b"Service Unavailable", len(data), data)
        if delay:
            asyncio.get_running_loop().call_later(delay, self.send, transport, reply)
        else:
            transport.write(reply)

    @staticmethod
    def send(transport, reply):
        if not transport.is_closing():
            transport.write(reply)

    async def start(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpstreamProtocol(self), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self):
        """Once the clients have hung up: every connection closed, the server shut."""
        self.server.close()
        while self.handlers:
            await asyncio.sleep(0)
        await self.server.wait_closed()


class _UpstreamProtocol(asyncio.Protocol):
    """One upstream connection: requests end with an empty line (no request bodies), replies
    go out in order (a delayed reply is written by its timer; delays only grow with the
    request order on a connection, as the client waits for each reply)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.buf = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.upstream.handlers.add(self)

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            request, self.buf = self.buf[:end], self.buf[end + 4:]
            self.upstream.respond(self.transport, request)

    def connection_lost(self, exc):
        self.upstream.handlers.discard(self)


# ----------------------------------------------------------------------------- the client


class Connection:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def get(self, path):
        self.writer.write(b"GET %s HTTP/1.1\r\nHost: upstream\r\n\r\n" % path.encode())
        status = int((await self.reader.readline()).split(b" ")[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line == b"\r\n":
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = (await self.reader.readexactly(length)).decode()
        if status != 200:
            raise UpstreamError(f"{path}: {status} {body}")
        return body


async def service(k, port, jobs, upstream, progress=None):
    """Run every job to success; returns what must be identical across stacks and the counts
    that are not (rejections depend on how requests interleave)."""
    n_workers, cap, pool_size = 48, 32, 32
    queue = k.PriorityQueue()
    cap_sem = k.Semaphore(cap)
    pool = k.LifoQueue()
    limiter = k.limiter(1_000_000)  # the upstream's quota: generous, but every request pays it
    breaker = k.breaker(5, 0.02)
    results = k.ttl_cache(jobs)
    stats = {"lookups": 0, "failed": 0, "rejected": 0, "done": 0}
    for _ in range(pool_size):
        pool.put_nowait(Connection(*await asyncio.open_connection("127.0.0.1", port)))

    async def fetch(path):
        async with limiter:
            async with cap_sem:
                conn = await pool.get()
                try:
                    return await conn.get(path)
                finally:
                    pool.put_nowait(conn)

    @k.memo()
    async def user_weight(user):  # memoized: 300 distinct users among the jobs
        stats["lookups"] += 1
        return int(await fetch(f"/user/{user}"))

    @breaker
    async def fetch_item(item, attempt):
        return int(await fetch(f"/item/{item}?attempt={attempt}"))

    attempts = [0] * jobs

    async def worker():
        while True:
            prio, job = await queue.get()
            try:
                weight = await user_weight(job % 300)
                try:
                    value = await fetch_item(job, attempts[job])
                except k.open_error:
                    stats["rejected"] += 1
                    await asyncio.sleep(0.001)  # back off while the breaker is open
                    queue.put_nowait((prio + 1, job))
                    continue
                except UpstreamError:
                    stats["failed"] += 1
                    attempts[job] += 1
                    queue.put_nowait((prio + 1, job))
                    continue
                results[job] = value * weight
                stats["done"] += 1
            finally:
                queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(n_workers)]
    for job in range(jobs):
        queue.put_nowait((job % 4, job))  # four priority classes
    ticker = None
    if progress is not None:
        async def tick():
            while True:
                progress(stats["done"])
                await asyncio.sleep(0.05)

        ticker = asyncio.create_task(tick())
    await queue.join()
    for t in workers + ([ticker] if ticker else []):
        t.cancel()
    await asyncio.gather(*workers, *([ticker] if ticker else []), return_exceptions=True)
    if progress is not None:
        progress(stats["done"])
    while not pool.empty():
        conn = pool.get_nowait()
        conn.writer.close()
        await conn.writer.wait_closed()
    checksum = hashlib.sha256(json.dumps(sorted(results.items())).encode()).hexdigest()[:16]
    same = {"jobs": len(results), "checksum": checksum, "lookups": stats["lookups"],
            "upstream_item_calls": upstream.calls, "failed": stats["failed"]}
    return same, stats["rejected"]


def new_loop(loop_name):
    if loop_name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_once(stack, loop_name, jobs, seed, progress=None):
    loop = new_loop(loop_name)
    try:
        upstream = Upstream(seed, jobs)
        port = loop.run_until_complete(upstream.start())
        k = STACKS[stack]()
        w0, c0 = time.perf_counter(), time.process_time()
        same, rejected = loop.run_until_complete(service(k, port, jobs, upstream, progress))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        loop.run_until_complete(upstream.stop())
    finally:
        loop.close()
    requests = same["upstream_item_calls"] + same["lookups"]
    return {"stack": stack, "loop": loop_name, "wall": wall, "cpu": cpu, "requests": requests,
            "same": same, "rejected": rejected}


def run_all(jobs, seed, rounds, loops, show_progress=True):
    """Every stack on every loop, `rounds` times interleaved; the best round of each kept.
    Raises AssertionError if the stacks disagree."""
    plan = [(s, lp) for _ in range(rounds) for lp in loops for s in STACKS]
    best = {}
    for stack in STACKS:  # warm-up: imports, first connections, the allocator
        run_once(stack, loops[0], max(50, jobs // 20), seed)
    bar = _progress(show_progress, len(plan) * jobs)
    try:
        for i, (stack, loop_name) in enumerate(plan):
            base = i * jobs
            label = f"{stack} on {loop_name}"
            r = run_once(stack, loop_name, jobs, seed,
                         (lambda d, base=base, label=label: bar(base + d, label)) if bar else None)
            key = (stack, loop_name)
            if key not in best or r["wall"] < best[key]["wall"]:
                best[key] = r
    finally:
        if bar:
            bar(None, None)
    reference = next(iter(best.values()))["same"]
    for r in best.values():
        assert r["same"] == reference, f"{r['stack']} on {r['loop']}: {r['same']} != {reference}"
    return best


def _progress(enabled, total):
    """A rich progress bar, refreshed from the service's own ticker (no refresh thread: the
    measurement stays single-threaded). Returns update(done, label), or None when disabled."""
    if not enabled:
        return None
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return None
    prog = Progress(TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), auto_refresh=False, transient=False)
    prog.start()
    task = prog.add_task("starting", total=total)

    def update(done, label):
        if done is None:
            prog.refresh()
            prog.stop()
            return
        prog.update(task, completed=done, description=label)
        prog.refresh()

    return update


# ----------------------------------------------------------------------------- the report


def table(best, loops):
    lines = ["| loop | stack | wall time | CPU per request | requests/s | speed-up (CPU) |",
             "|---|---|---:|---:|---:|---:|"]
    for lp in loops:
        ref = best[("pure Python", lp)]
        for stack in STACKS:
            r = best[(stack, lp)]
            gain = (ref["cpu"] / r["cpu"]) if stack != "pure Python" else 1.0
            lines.append(f"| {lp} | {stack} | {r['wall'] * 1e3:.0f} ms | "
                         f"{r['cpu'] / r['requests'] * 1e6:.1f} µs | "
                         f"{r['requests'] / r['wall']:,.0f} | {gain:.2f}x |")
    return "\n".join(lines)


# (family file, case, compared with, label): the primitives the service uses
PRIMITIVES = [
    ("locks", "uncontended `async with sem:`", "asyncio", "Semaphore (async with)"),
    ("queue", "PriorityQueue put_nowait+get_nowait, (i % 1024, i), fill 1,000 then drain",
     "asyncio", "PriorityQueue put/get"),
    ("queue", "LifoQueue put_nowait+get_nowait, fill 1,000 then drain", "asyncio",
     "LifoQueue put/get"),
    ("tokenbucket", "AsyncLimiter: await acquire()", "aiolimiter", "AsyncLimiter acquire"),
    ("breaker", "closed: await decorated async def", "circuitbreaker", "breaker-wrapped call"),
    ("cache", "cached hit (async def)", "async_lru", "alru_cache hit"),
    ("cache", "TTLCache set (miss, evicts)", "cachetools", "TTLCache set"),
]


def primitive_speedups(loop_name="asyncio"):
    """[(label, vs, ratio, python)] from the benchmark suite's saved results (this Python's if
    saved, else the newest saved)."""
    ver = "".join(platform.python_version_tuple()[:2])
    out = []
    for family, case, vs, label in PRIMITIVES:
        paths = [os.path.join(RESULTS, f"{family}-py{ver}.json")]
        paths += sorted(glob.glob(os.path.join(RESULTS, f"{family}-py3*.json")), reverse=True)
        for p in paths:
            if not os.path.exists(p) or not os.path.basename(p)[len(family) + 3:-5].isdigit():
                continue
            with open(p) as f:
                doc = json.load(f)
            hit = [r for r in doc["results"] if r["case"] == case
                   and r["loop"] in (None, loop_name) and vs in r["variants"]]
            if hit:
                out.append((label, vs, hit[0]["variants"][vs]["ratio_vs_aiofast"],
                            f'{doc["header"]["python"]}, {doc["header"]["cpu"]}'))
                break
    return out


def chart(best, loops, prims, path, caption):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=[1, 2.2])
    labels, cpu_gain, wall_gain = [], [], []
    for lp in loops:
        ref, r = best[("pure Python", lp)], best[("aiofast", lp)]
        labels.append(lp)
        cpu_gain.append(ref["cpu"] / ref["requests"] / (r["cpu"] / r["requests"]))
        wall_gain.append(ref["wall"] / r["wall"])
    x = range(len(labels))
    a.bar([i - 0.2 for i in x], wall_gain, 0.4, label="wall time", color="#4c72b0")
    a.bar([i + 0.2 for i in x], cpu_gain, 0.4, label="CPU per request", color="#55a868")
    for i in x:
        a.text(i - 0.2, wall_gain[i], f"{wall_gain[i]:.2f}x", ha="center", va="bottom", fontsize=9)
        a.text(i + 0.2, cpu_gain[i], f"{cpu_gain[i]:.2f}x", ha="center", va="bottom", fontsize=9)
    a.set_xticks(list(x), labels)
    a.axhline(1, color="grey", lw=0.8)
    a.set_ylabel("aiofast speed-up (x)")
    a.set_title("End to end: the whole service", fontsize=10)
    a.legend(fontsize=8, loc="lower right")
    names = [f"{lab}\nvs {vs}" for lab, vs, _, _ in prims]
    ratios = [ratio for _, _, ratio, _ in prims]
    b.barh(range(len(names)), ratios, color="#dd8452")
    for i, ratio in enumerate(ratios):
        b.text(ratio, i, f" {ratio:.1f}x", va="center", fontsize=8)
    b.set_yticks(range(len(names)), names, fontsize=8)
    b.invert_yaxis()
    b.axvline(1, color="grey", lw=0.8)
    b.set_xlabel("aiofast speed-up per operation (x), asyncio's loop")
    b.set_title("Per primitive (the benchmark suite)", fontsize=10)
    b.set_xlim(0, max(ratios + [1]) * 1.15)
    fig.suptitle("aiofast against the pure-Python stack", fontsize=12)
    fig.text(0.01, 0.01, caption, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each stack and loop (best kept)")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--chart", default=os.path.join(tempfile.gettempdir(), "aiofast-showcase.png"),
                    help="where to write the PNG (default: %(default)s); 'none' for no chart")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    loops = args.loops.split(",")
    print(f"aiofast {aiofast.__version__}, Python {platform.python_version()}, "
          f"{cpu_name()} ({os.cpu_count()} cores)")
    print(f"{args.jobs:,} jobs, seed {args.seed}, upstream on 127.0.0.1 in this process; "
          f"stacks: " + "; ".join(f"{s}: {STACKS[s]().detail}" for s in STACKS))
    best = run_all(args.jobs, args.seed, args.rounds, loops, not args.no_progress)
    same = next(iter(best.values()))["same"]
    print(f"\nidentical results on every stack and loop: {same['jobs']:,} jobs done, checksum "
          f"{same['checksum']}, {same['upstream_item_calls']:,} item requests "
          f"({same['failed']:,} failed and retried), {same['lookups']} user lookups computed "
          f"(memoized); rejected by the open breaker: "
          + ", ".join(f"{r['stack']}/{r['loop']} {r['rejected']}" for r in best.values()))
    print()
    print(table(best, loops))
    if args.chart != "none":
        prims = primitive_speedups()
        cmd = "bash scripts/demo.sh" if os.environ.get("AIOFAST_DEMO") else \
            "python examples/showcase.py " + " ".join(argv if argv is not None else sys.argv[1:])
        caption = (f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"{args.jobs:,} jobs, best of {args.rounds}; per primitive: benchmarks/results "
                   f"(Python {prims[0][3] if prims else '-'}). Made by: {cmd.strip()}")
        chart(best, loops, prims, args.chart, caption)
        print(f"\nchart: {os.path.abspath(args.chart)}")
    return best


if __name__ == "__main__":
    main()
