"""Run every benchmark family (benchmarks/bench_*.py) in one process, on this Python.

    python -m benchmarks [--quick] [--only locks,queue] [--save]

Each family prints Markdown tables; its JSON goes to a scratch directory (printed), or with
--save over benchmarks/results/, the figures the README quotes. It measures the aiofast
installed in the running interpreter: install it first (`pip install .`).
"""
import argparse
import glob
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(HERE))

FAMILIES = sorted(os.path.basename(p)[6:-3] for p in glob.glob(os.path.join(HERE, "bench_*.py")))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[1])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and sizes (a smoke run)")
    ap.add_argument("--only", default="", help="comma-separated families: " + ",".join(FAMILIES))
    ap.add_argument("--save", action="store_true",
                    help="write the JSON over benchmarks/results/ (the README's figures)")
    args = ap.parse_args(argv)
    only = [f for f in args.only.split(",") if f] or FAMILIES
    unknown = sorted(set(only) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}; choose among {FAMILIES}")
    try:
        import aiofast._core  # noqa: F401
    except ImportError as e:
        sys.exit(f"error: {e}. The benchmarks measure an installed aiofast: run `pip install .` "
                 "from the repository (or use the venv scripts/demo.sh makes, .venv-3.11), "
                 "without PYTHONPATH pointing at the source tree.")
    from benchmarks import harness

    harness.save_to_repo(args.save)
    for name in only:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"\n## {name}\n", flush=True)
        mod.main(args.quick)
    print(f"\nJSON results: {harness.RESULTS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
