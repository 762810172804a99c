"""Side by side: the aiofast installed here against aiofast built from another git revision, in
the same process, interleaved by the harness (A B A B ...), on both loops.

Run (with the venv that has this tree's build installed; JSON only with --save, as for every
benchmark):
    python -m benchmarks.compare_builds main locks queue     # REV, then which bench files
    python -m benchmarks.compare_builds main tokenbucket --peers --case acquire
    python -m benchmarks.compare_builds DIR locks   # DIR: a source tree instead of a revision

--peers keeps each case's other variants (asyncio, the peer, the floors) in the same rounds, so
the ratios against them of both builds come from one run; --case SUBSTR keeps only the cases
whose name contains SUBSTR (repeatable).

The other revision is exported with `git archive`, built with this interpreter into a temporary
directory, and imported under the package name ``aiofast_old`` (its extension keeps its own
module state, so the two builds do not share anything). Every case of benchmarks/bench_<name>.py
runs with its "aiofast" variant taken from each build; "REV/new" above 1.00x means the new build
is faster.
"""
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.harness import Case, run_cases, save_to_repo  # noqa: E402


def build_old(rev, where):
    """Build aiofast at git revision rev (or from the source tree at path rev) into
    where/aiofast_old; return that directory."""
    src = os.path.join(where, "src")
    if os.path.isdir(rev):  # a source tree (e.g. `git archive main` unpacked where git is not)
        shutil.copytree(rev, src)
    else:
        root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, check=True,
                              capture_output=True, text=True).stdout.strip()
        os.makedirs(src)
        archive = subprocess.run(["git", "archive", rev], cwd=root, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    lib = os.path.join(where, "lib")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", lib,
                    "--build-temp", os.path.join(where, "tmp")], cwd=src, check=True,
                   stdout=subprocess.DEVNULL)
    pkg = os.path.join(where, "aiofast_old")
    shutil.copytree(os.path.join(src, "python", "aiofast"), pkg)
    for name in os.listdir(os.path.join(lib, "aiofast")):
        if name.startswith("_core"):
            shutil.copy(os.path.join(lib, "aiofast", name), pkg)
    return where


def paired_cases(bench, old, peers=False, only=()):
    """bench.cases() built once with each build, paired case by case (with the case's other
    variants too if peers; only the cases whose name contains one of only, if given)."""
    import aiofast

    new_cases = bench.cases()
    bench.aiofast = old
    try:
        old_cases = bench.cases()
    finally:
        bench.aiofast = aiofast
    out = []
    for n, o in zip(new_cases, old_cases):
        assert n.name == o.name and n.loop == o.loop
        if only and not any(k in n.name for k in only):
            continue
        variants = {"aiofast": n.variants["aiofast"], "old build": o.variants["aiofast"]}
        if peers:
            variants.update((k, v) for k, v in n.variants.items() if k != "aiofast")
        out.append(Case(n.name, variants, n.n, n.loop))
    return out


def main(rev, names, save=False, peers=False, only=()):
    save_to_repo(save)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, build_old(rev, tmp))
        old = importlib.import_module("aiofast_old")
        for name in names:
            bench = importlib.import_module(f"benchmarks.bench_{name}")
            run_cases(paired_cases(bench, old, peers, only), 7, f"compare-{name}",
                      f"{bench.TITLE}: this build against {rev}")


if __name__ == "__main__":
    argv, args, only = sys.argv[1:], [], []
    while argv:
        a = argv.pop(0)
        if a == "--case":
            only.append(argv.pop(0))
        elif a not in ("--save", "--peers"):
            args.append(a)
    main(args[0], args[1:] or ["locks", "queue"], save="--save" in sys.argv,
         peers="--peers" in sys.argv, only=tuple(only))
