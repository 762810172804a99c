"""One benchmark harness for every primitive.

A *case* compares variants of the same workload ("aiofast", "asyncio", peers such as
"aiolimiter"): each variant is a callable ``run(n) -> seconds`` that does n operations and times
only them. The harness warms every variant up, then runs them interleaved (A B C A B C ...) for
``repeat`` rounds, so a noisy, shared machine slows all of them alike, and reports the median and
the minimum time per operation and the ratio of every other variant's median to aiofast's
(``asyncio/aiofast = 6.1x`` means aiofast is 6.1 times faster).

Async variants are built with ``async_variant(loop_name, coro_fn)``: a fresh loop (asyncio's
default or uvloop) per round, ``coro_fn(n)`` awaited inside it and returning its own elapsed time.
"""
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

OURS = "aiofast"

LOOPS = {}

HERE = os.path.dirname(os.path.abspath(__file__))
SAVED = os.path.join(HERE, "results")  # the figures the README quotes (tracked)
# Where this run writes its JSON: a scratch directory unless asked (--save) to replace the
# tracked figures in benchmarks/results/.
RESULTS_DIR = os.environ.get("AIOFAST_BENCH_OUT") or os.path.join(
    tempfile.gettempdir(), "aiofast-benchmarks")


def save_to_repo(save=True):
    """Write this run's JSON over the tracked figures (benchmarks/results/)."""
    global RESULTS_DIR
    if save:
        RESULTS_DIR = SAVED


def results_path(name):
    """The JSON file for ``name`` (e.g. "queue", "locks-cancel") on this Python."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    ver = "".join(platform.python_version_tuple()[:2])
    return os.path.join(RESULTS_DIR, f"{name}-py{ver}.json")


def write_json(name, doc):
    path = results_path(name)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return path


def parse_args(argv, doc=None):
    """The options every benchmark module takes when run on its own."""
    import argparse

    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and sizes (a smoke run)")
    ap.add_argument("--save", action="store_true",
                    help="write the JSON over benchmarks/results/ (the README's figures)")
    args, rest = ap.parse_known_args(argv)
    save_to_repo(args.save)
    return args, rest


def _loops():
    if not LOOPS:
        LOOPS["asyncio"] = asyncio.new_event_loop
        import uvloop

        LOOPS["uvloop"] = uvloop.new_event_loop
    return LOOPS


def async_variant(loop_name, coro_fn):
    """A variant that runs ``await coro_fn(n)`` (which returns seconds) on a fresh loop."""

    def run(n):
        loop = _loops()[loop_name]()
        try:
            return loop.run_until_complete(coro_fn(n))
        finally:
            loop.close()

    return run


def sync_variant(fn):
    """A variant from ``fn(n)`` that does n operations; the harness times it."""

    def run(n):
        t0 = time.perf_counter()
        fn(n)
        return time.perf_counter() - t0

    return run


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        # no git here (scripts/newpython.sh's chroot runs a copy of the tree): the host's word
        return os.environ.get("AIOFAST_COMMIT", "unknown")


class Case:
    def __init__(self, name, variants, n, loop=None, note=""):
        self.name = name
        self.variants = variants  # {label: run(n) -> seconds}
        self.n = n
        self.loop = loop
        self.note = note
        self.samples = {k: [] for k in variants}

    def run(self, repeat, warmup=1):
        for _ in range(warmup):
            for run in self.variants.values():
                run(max(1, self.n // 10))
        for _ in range(repeat):
            for label, run in self.variants.items():
                self.samples[label].append(run(self.n) / self.n)
        return self

    def result(self):
        out = {"case": self.name, "loop": self.loop, "n": self.n, "note": self.note,
               "variants": {}}
        ours = statistics.median(self.samples[OURS]) if OURS in self.samples else None
        for label, s in self.samples.items():
            med = statistics.median(s)
            entry = {"median_ns": med * 1e9, "min_ns": min(s) * 1e9, "rounds": len(s)}
            if ours and label != OURS:
                entry["ratio_vs_aiofast"] = med / ours
            out["variants"][label] = entry
        return out


def header():
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown(results, title=None):
    lines = []
    if title:
        lines.append(f"### {title}")
        lines.append("")
    lines.append("| case | loop | aiofast (ns/op) | compared with | their ns/op | speed-up |")
    lines.append("|---|---|---:|---|---:|---:|")
    for r in results:
        v = r["variants"]
        ours = v.get(OURS)
        others = [k for k in v if k != OURS]
        if not others:
            lines.append(f"| {r['case']} | {r['loop'] or '-'} | {ours['median_ns']:.0f} | - | - | - |")
        for k in others:
            ratio = v[k].get("ratio_vs_aiofast")
            lines.append(
                f"| {r['case']} | {r['loop'] or '-'} | {ours['median_ns']:.0f} | {k} | "
                f"{v[k]['median_ns']:.0f} | {ratio:.2f}x |"
            )
    return "\n".join(lines)


def run_cases(cases, repeat, out_name, title):
    results = []
    for c in cases:
        print(f"  {c.name} [{c.loop or '-'}] ...", file=sys.stderr, flush=True)
        results.append(c.run(repeat).result())
    doc = {"header": header(), "title": title, "results": results}
    path = write_json(out_name, doc)
    md = markdown(results, title)
    print(md)
    print(f"\n(python {doc['header']['python']}, {doc['header']['cpu']}, commit "
          f"{doc['header']['commit']}; JSON: {path})\n")
    return doc
