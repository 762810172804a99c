"""_core.pyi, the typing source of truth, matches the built module (mypy's stubtest)."""
import os
import site
import subprocess
import sys
import tempfile

import aiofast


def test_stub_matches_module():
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(aiofast.__file__)))
    env = dict(os.environ)
    installed = os.path.realpath(pkg_parent) in {os.path.realpath(p) for p in site.getsitepackages()}
    if not installed:
        # a source tree on PYTHONPATH (in-place build): mypy finds the stub through MYPYPATH,
        # and the absolute path keeps the runtime import on this tree from another directory
        env["MYPYPATH"] = pkg_parent
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    # run from an empty directory: from site-packages itself, mypy would take the modules there
    # (mypy_extensions.py) for user modules shadowing the library and refuse to check
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-m", "mypy.stubtest", "aiofast._core"],
            capture_output=True, text=True, timeout=600, cwd=cwd, env=env,
        )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout


def test_py_typed_ships():
    assert os.path.exists(os.path.join(os.path.dirname(aiofast.__file__), "py.typed"))
    assert os.path.exists(os.path.join(os.path.dirname(aiofast.__file__), "_core.pyi"))
