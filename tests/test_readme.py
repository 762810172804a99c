"""The README's first example runs as printed (and type-checks under mypy --strict): the first
screen a newcomer copies must not rot."""
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    with open(README) as f:
        text = f.read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "asyncio.run(main())" in code
    path = tmp_path_factory.mktemp("readme") / "example.py"
    path.write_text(code)
    return path


def test_readme_example_runs(example):
    proc = subprocess.run([sys.executable, "-W", "error", str(example)], capture_output=True,
                          text=True, timeout=120, cwd=example.parent)
    assert proc.returncode == 0, proc.stderr
    # 100 calls over 20 distinct URLs: 20 computed, 80 shared (single flight, then hits)
    assert proc.stdout.strip() == ("100 CacheInfo(hits=80, misses=20, maxsize=1024, "
                                   "currsize=20)")


def test_readme_example_type_checks(example):
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         os.devnull, str(example)], capture_output=True, text=True, timeout=600,
        cwd=example.parent, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
