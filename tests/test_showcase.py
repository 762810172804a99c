"""The showcase (examples/showcase.py, the main command's first half) at a small size: the
service runs on both stacks and both loops against its loopback upstream, and the stacks agree
on every job's value, the upstream requests and the memoized lookups."""
import importlib.util
import os

import pytest

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                    "showcase.py")


@pytest.fixture(scope="module")
def showcase():
    spec = importlib.util.spec_from_file_location("showcase", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_showcase_stacks_agree(showcase):
    jobs = 400
    best = showcase.run_all(jobs, seed=3, rounds=1, loops=["asyncio", "uvloop"],
                            show_progress=False)
    assert set(best) == {(s, lp) for s in ("pure Python", "aiofast")
                         for lp in ("asyncio", "uvloop")}
    same = best[("aiofast", "uvloop")]["same"]
    assert all(r["same"] == same for r in best.values())  # run_all checked it too
    assert same["jobs"] == jobs
    assert same["lookups"] == 300  # one per distinct user: the memoizer shares them
    # every job succeeded once; every failure was one more request, retried
    assert same["upstream_item_calls"] == jobs + same["failed"]
    up = showcase.Upstream(3, jobs)
    assert same["failed"] >= len(up.bad)  # the bad shard fails each first attempt
    table = showcase.table(best, ["asyncio", "uvloop"])
    assert table.count("\n") == 5 and "| uvloop | aiofast |" in table


def test_showcase_results_follow_the_seed(showcase):
    a = showcase.run_once("aiofast", "asyncio", 120, seed=11)["same"]
    b = showcase.run_once("pure Python", "asyncio", 120, seed=11)["same"]
    c = showcase.run_once("aiofast", "asyncio", 120, seed=12)["same"]
    assert a == b
    assert a["checksum"] != c["checksum"]


def test_showcase_primitive_figures_come_from_the_saved_benchmarks(showcase):
    prims = showcase.primitive_speedups()
    assert [p[0] for p in prims] == [p[3] for p in showcase.PRIMITIVES]
    assert all(ratio > 1 for _, _, ratio, _ in prims)
