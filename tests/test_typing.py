"""_core.pyi, the typing source of truth, matches the built module (mypy's stubtest)."""
import os
import subprocess
import sys

import aiofast


def test_stub_matches_module():
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(aiofast.__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "aiofast._core"],
        capture_output=True, text=True, timeout=600, cwd=pkg_parent,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout


def test_py_typed_ships():
    assert os.path.exists(os.path.join(os.path.dirname(aiofast.__file__), "py.typed"))
    assert os.path.exists(os.path.join(os.path.dirname(aiofast.__file__), "_core.pyi"))
