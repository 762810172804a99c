"""_core.pyi, the typing source of truth, matches the built module (mypy's stubtest)."""
import os
import site
import subprocess
import sys
import tempfile

import pytest

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


# ------------------------------------------------------------- mypy --strict on user code

SAMPLE_OK = '''
import asyncio
from aiofast import (AsyncLimiter, CircuitBreaker, LRUCache, TTLCache, alru_cache, cached,
                     circuit)

@cached
async def user(uid: int) -> str:
    return str(uid)

@cached(maxsize=10, ttl=5.0)
async def score(name: str, *, boost: float = 1.0) -> float:
    return len(name) * boost

@cached
def square(x: int) -> int:
    return x * x

@alru_cache
async def page(url: str) -> bytes:
    return url.encode()

@alru_cache(maxsize=32, ttl=1.0)
async def title(url: str, lang: str = "en") -> str:
    return url + lang

@circuit
async def fetch(url: str) -> bytes:
    return url.encode()

@circuit(failure_threshold=3, recovery_timeout=10)
async def fetch2(url: str, timeout: float = 1.0) -> bytes:
    return url.encode()

breaker = CircuitBreaker(5, 30.0)

@breaker
async def fetch3(url: str) -> int:
    return len(url)

async def main() -> None:
    s: str = await user(1)
    f: float = await score("a", boost=2.0)
    q: int = square(3)
    b: bytes = await page("u")
    t: str = await title("u", lang="fr")
    r: bytes = await fetch("u")
    r2: bytes = await fetch2("u", timeout=3)
    n: int = await fetch3("u")
    task = asyncio.create_task(title("x"))
    await task
    user.cache_clear()
    lru: LRUCache[str, int] = LRUCache(10)
    ttl: TTLCache[str, int] = TTLCache(10, 1.0)
    ttl["a"] = lru.get("a", 0)
    async with AsyncLimiter(10, 1):
        pass
    print(s, f, q, b, t, r, r2, n)
'''

# each line must be an error: the decorated functions kept their parameters and result types
SAMPLE_BAD = '''
from aiofast import alru_cache, cached, circuit

@cached
async def user(uid: int) -> str:
    return str(uid)

@alru_cache(maxsize=32)
async def title(url: str) -> str:
    return url

@circuit
async def fetch(url: str) -> bytes:
    return url.encode()

async def main() -> None:
    await user("not an int")
    x: int = await title("u")
    await fetch("u", timeout=3)
'''


def _mypy(tmp_path, source):
    path = tmp_path / "sample.py"
    path.write_text(source)
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
         "--python-version", "%d.%d" % sys.version_info[:2], str(path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    return proc


def test_mypy_strict_keeps_decorated_signatures(tmp_path):
    proc = _mypy(tmp_path, SAMPLE_OK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_mypy_strict_rejects_wrong_calls_of_decorated_functions(tmp_path):
    proc = _mypy(tmp_path, SAMPLE_BAD)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    lines = sorted(int(e.split(":")[1]) for e in errors)
    assert lines == [17, 18, 19], proc.stdout
    assert 'has incompatible type "str"; expected "int"' in proc.stdout
    assert 'Incompatible types in assignment (expression has type "str"' in proc.stdout
    assert 'Unexpected keyword argument "timeout"' in proc.stdout


def test_stubs_of_the_python_modules_match():
    """The decorators' stubs (.pyi beside the .py modules) against the modules themselves."""
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-m", "mypy.stubtest", "aiofast._compat_cache",
             "aiofast._compat_breaker"],
            capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_every_public_type_has_a_signature():
    import inspect

    class Plain(Exception):  # an exception class written in Python, for comparison
        pass

    try:
        plain = str(inspect.signature(Plain))
    except ValueError:
        plain = None  # 3.10-3.13: "no signature found for builtin type"
    checked = 0
    for name in aiofast.__all__:
        obj = getattr(aiofast, name)
        if not callable(obj):
            continue
        try:
            sig = str(inspect.signature(obj))
        except ValueError:
            # only an exception class with no constructor of its own, where Python's own
            # exception classes have no signature either
            assert plain is None, name
            assert isinstance(obj, type) and issubclass(obj, BaseException), name
            assert "__init__" not in vars(obj) and "__new__" not in vars(obj), name
            continue
        assert sig.startswith("("), name
        checked += 1
    assert checked >= 15
    ttl = inspect.signature(aiofast.TTLCache)
    assert list(ttl.parameters) == ["maxsize", "ttl", "timer", "getsizeof"]
    assert ttl.parameters["timer"].default is None
    assert aiofast.TTLCache(1, 1, timer=None).timer is __import__("time").monotonic
