"""CircuitBreaker: the closed-state call (the price of the happy path) and the open-state
rejection, against the bare function and the Python circuit breakers.

    python -m benchmarks --only breaker [--quick] [--save]   (or python benchmarks/bench_breaker.py)

Peers: circuitbreaker and pybreaker (project bench extras); aiobreaker and purgatory are used
when importable (e.g. `pip install --target /tmp/bkpeers aiobreaker purgatory` and
PYTHONPATH=/tmp/bkpeers). pybreaker's call_async needs tornado, so it appears in the
plain-def rows only. "bare" is the undecorated function: its ratio below 1 is our overhead.
"""
import asyncio
import os
import sys
import time
from datetime import timedelta

import circuitbreaker
import pybreaker

try:
    import aiobreaker
except ImportError:  # optional peer
    aiobreaker = None
try:
    import purgatory
except ImportError:  # optional peer
    purgatory = None

if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiofast  # noqa: E402  (aiofast.X at call time: compare_builds swaps the module)
from benchmarks.harness import Case, async_variant, run_cases, sync_variant
from benchmarks.probe.build import load as load_probe  # noqa: E402

TITLE = "CircuitBreaker"
BIG = 10**9  # thresholds that never trip during a closed-state run


async def _raw(x):
    return x


def _sync_raw(x):
    return x


async def _afallback(x):
    return None


async def _fail_async(x):
    raise ValueError(x)


def _fail_sync(x):
    raise ValueError(x)


def _async_loop(fn):
    async def run(n):
        t0 = time.perf_counter()
        for i in range(n):
            await fn(i)
        return time.perf_counter() - t0

    return run


def _async_reject_loop(fn, exc):
    async def run(n):
        t0 = time.perf_counter()
        for i in range(n):
            try:
                await fn(i)
            except exc:
                pass
        return time.perf_counter() - t0

    return run


def _sync_loop(fn):
    def run(n):
        for i in range(n):
            fn(i)

    return run


def _sync_reject_loop(fn, exc):
    def run(n):
        for i in range(n):
            try:
                fn(i)
            except exc:
                pass

    return run


def _trip_async(fn, times, exc=ValueError):
    """Open a peer's breaker by failing it (in a throwaway loop)."""

    async def go():
        for _ in range(times):
            try:
                await fn(0)
            except exc:
                pass

    asyncio.run(go())


def _purgatory_decorate(name, fn, threshold):
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=1e6)
    return factory(name)(fn)


def closed_async(loop, n):
    ours = aiofast.CircuitBreaker(BIG, 30)(_raw)
    variants = {
        "aiofast": async_variant(loop, _async_loop(ours)),
        "bare": async_variant(loop, _async_loop(_raw)),
        # the floor of any C wrapper that acts after the coroutine: fn(x) driven from C
        "empty C driver": async_variant(loop, _async_loop(load_probe().Guard(_raw))),
        "circuitbreaker": async_variant(loop, _async_loop(
            circuitbreaker.CircuitBreaker(failure_threshold=BIG)(_raw))),
    }
    if aiobreaker is not None:
        variants["aiobreaker"] = async_variant(loop, _async_loop(
            aiobreaker.CircuitBreaker(fail_max=BIG)(_raw)))
    if purgatory is not None:
        variants["purgatory"] = async_variant(loop, _async_loop(
            _purgatory_decorate(f"closed-{loop}", _raw, BIG)))
    return Case("closed: await decorated async def", variants, n, loop=loop)


def open_async(loop, n):
    ob = aiofast.CircuitBreaker(1, 1e6)
    ob.open()
    cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=10**6)
    cbf = cb(_fail_async)
    _trip_async(cbf, 1)
    variants = {
        "aiofast": async_variant(loop, _async_reject_loop(ob(_fail_async), aiofast.CircuitOpenError)),
        "circuitbreaker": async_variant(loop, _async_reject_loop(
            cbf, circuitbreaker.CircuitBreakerError)),
    }
    if aiobreaker is not None:
        ab = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(days=30))
        ab.open()
        variants["aiobreaker"] = async_variant(loop, _async_reject_loop(
            ab(_fail_async), aiobreaker.CircuitBreakerError))
    if purgatory is not None:
        pf = _purgatory_decorate(f"open-{loop}", _fail_async, 1)
        _trip_async(pf, 1)
        from purgatory.domain.model import OpenedState

        variants["purgatory"] = async_variant(loop, _async_reject_loop(pf, OpenedState))
    return Case("open: rejection raises", variants, n, loop=loop)


def open_async_fallback(loop, n):
    ob = aiofast.CircuitBreaker(1, 1e6, fallback=_afallback)
    ob.open()
    cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=10**6,
                                       fallback_function=_afallback)
    cbf = cb(_fail_async)
    _trip_async(cbf, 1)
    variants = {
        "aiofast": async_variant(loop, _async_loop(ob(_fail_async))),
        "circuitbreaker": async_variant(loop, _async_loop(cbf)),
    }
    return Case("open: rejection to an async fallback", variants, n, loop=loop,
                note="both await the same async fallback")


def closed_sync(n):
    pb = pybreaker.CircuitBreaker(fail_max=BIG, reset_timeout=30)
    variants = {
        "aiofast": sync_variant(_sync_loop(aiofast.CircuitBreaker(BIG)(_sync_raw))),
        "bare": sync_variant(_sync_loop(_sync_raw)),
        "circuitbreaker": sync_variant(_sync_loop(
            circuitbreaker.CircuitBreaker(failure_threshold=BIG)(_sync_raw))),
        "pybreaker": sync_variant(_sync_loop(pb(_sync_raw))),
    }
    if aiobreaker is not None:
        variants["aiobreaker"] = sync_variant(_sync_loop(
            aiobreaker.CircuitBreaker(fail_max=BIG)(_sync_raw)))
    return Case("closed: call decorated plain def", variants, n)


def open_sync(n):
    ob = aiofast.CircuitBreaker(1, 1e6)
    ob.open()
    cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=10**6)
    cbf = cb(_fail_sync)
    try:
        cbf(0)
    except ValueError:
        pass
    pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=10**6)
    pb.open()
    variants = {
        "aiofast": sync_variant(_sync_reject_loop(ob(_fail_sync), aiofast.CircuitOpenError)),
        "circuitbreaker": sync_variant(_sync_reject_loop(cbf, circuitbreaker.CircuitBreakerError)),
        "pybreaker": sync_variant(_sync_reject_loop(pb(_fail_sync), pybreaker.CircuitBreakerError)),
    }
    return Case("open: plain def rejection raises", variants, n)


def closed_with(loop, n):
    ours = aiofast.CircuitBreaker(BIG)
    theirs = circuitbreaker.CircuitBreaker(failure_threshold=BIG)

    async def ours_run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            async with ours:
                pass
        return time.perf_counter() - t0

    async def theirs_run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            with theirs:
                pass
        return time.perf_counter() - t0

    return Case("closed: async with breaker (theirs: with)",
                {"aiofast": async_variant(loop, ours_run),
                 "circuitbreaker": async_variant(loop, theirs_run)}, n, loop=loop)


def _shared_name(what):
    """A segment of this run only, removed when the process ends."""
    import atexit

    import aiofast

    name = f"bench-breaker.{os.getpid()}.{what}"
    atexit.register(aiofast.shared_unlink, name)
    return name


def closed_shared_sync(n):
    shared = aiofast.CircuitBreaker(BIG, shared=_shared_name("sync"))
    return Case("closed: plain def, shared= (theirs: in-process)",
                {"aiofast": sync_variant(_sync_loop(shared(_sync_raw))),
                 "in-process": sync_variant(_sync_loop(aiofast.CircuitBreaker(BIG)(_sync_raw)))}, n,
                note="the same breaker with its state in a segment every process shares")


def closed_shared_async(loop, n):
    shared = aiofast.CircuitBreaker(BIG, shared=_shared_name(f"async-{loop}"))
    return Case("closed: await async def, shared= (theirs: in-process)",
                {"aiofast": async_variant(loop, _async_loop(shared(_raw))),
                 "in-process": async_variant(loop, _async_loop(aiofast.CircuitBreaker(BIG)(_raw)))},
                n, loop=loop)


def cases(quick=False):
    n = 4000 if quick else 20000
    out = []
    for loop in ("asyncio", "uvloop"):
        out += [closed_async(loop, n), open_async(loop, n), open_async_fallback(loop, n),
                closed_with(loop, n), closed_shared_async(loop, n)]
    out += [closed_sync(n * 2), open_sync(n * 2), closed_shared_sync(n * 2)]
    return out


def main(quick=False):
    run_cases(cases(quick), 3 if quick else 7, "breaker", TITLE)


if __name__ == "__main__":
    from benchmarks.harness import parse_args

    main(parse_args(sys.argv[1:], __doc__)[0].quick)
