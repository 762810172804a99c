"""Summarize benchmarks/results/*.json into the README's tables: one row per case and compared
variant, one column per Python version, for each loop. Prints Markdown.

    python benchmarks/summarize.py locks [queue ...]
"""
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load(family):
    docs = {}
    for path in sorted(glob.glob(os.path.join(HERE, "results", f"{family}-py3*.json"))):
        ver = os.path.basename(path)[len(family) + 3:-5]
        if not ver.isdigit():
            continue
        with open(path) as f:
            docs[f"3.{ver[1:]}"] = json.load(f)
    return docs


def table(family):
    docs = load(family)
    versions = sorted(docs, key=lambda v: int(v.split(".")[1]))
    rows = {}
    order = []
    for v in versions:
        for r in docs[v]["results"]:
            for label, entry in r["variants"].items():
                if label == "aiofast" or "ratio_vs_aiofast" not in entry:
                    continue
                key = (r["loop"] or "-", r["case"], label)
                if key not in rows:
                    rows[key] = {}
                    order.append(key)
                rows[key][v] = (entry["ratio_vs_aiofast"], r["variants"]["aiofast"]["median_ns"])
    out = ["| loop | case | vs | " + " | ".join(f"Python {v}" for v in versions) + " |",
           "|---|---|---|" + "---:|" * len(versions)]
    for key in order:
        loop, case, label = key
        cells = []
        for v in versions:
            if v in rows[key]:
                ratio, ns = rows[key][v]
                cells.append(f"{ratio:.2f}x ({ns:.0f} ns)")
            else:
                cells.append("-")
        out.append(f"| {loop} | {case} | {label} | " + " | ".join(cells) + " |")
    commits = sorted({docs[v]["header"]["commit"] for v in versions})
    cpus = sorted({docs[v]["header"]["cpu"] for v in versions})
    out.append("")
    for v in versions:
        h = docs[v]["header"]
        if h.get("loadavg") is not None and h["loadavg"] > h.get("cores", 1):
            out.append(f"**Python {v} was measured on a busy machine (load {h['loadavg']} on "
                       f"{h.get('cores')} cores): not comparable; rerun before quoting.**")
    out.append(f"Speed-up = their median time / aiofast's (aiofast's own median in brackets); "
               f"{', '.join(cpus)}; commit {', '.join(commits)}.")
    return "\n".join(out)


if __name__ == "__main__":
    for fam in sys.argv[1:]:
        print(table(fam))
        print()
