"""Run every benchmark module (benchmarks/bench_*.py) in one process, on this Python.

    python benchmarks/run_all.py [--quick] [--only locks,queue]

Each module exposes either ``main(quick)`` or ``cases(quick)`` + ``TITLE``; tables go to stdout
as Markdown and JSON to benchmarks/results/.
"""
import glob
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# and the checkout itself: some modules import their harness as benchmarks.harness
sys.path.insert(1, os.path.dirname(HERE))

from harness import run_cases  # noqa: E402


def main(argv):
    quick = "--quick" in argv
    only = None
    if "--only" in argv:
        only = set(argv[argv.index("--only") + 1].split(","))
    names = sorted(os.path.basename(p)[6:-3] for p in glob.glob(os.path.join(HERE, "bench_*.py")))
    for name in names:
        if only and name not in only:
            continue
        mod = importlib.import_module(f"bench_{name}")
        print(f"\n## {name}\n", flush=True)
        if hasattr(mod, "main"):
            mod.main(quick)
        else:
            run_cases(mod.cases(quick), 3 if quick else 7, name, mod.TITLE)


if __name__ == "__main__":
    main(sys.argv[1:])
