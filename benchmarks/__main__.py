"""python -m benchmarks (or python path/to/benchmarks): every benchmark family on this Python."""
import os
import sys

if __package__ in (None, ""):  # run as a directory: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.run_all import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
