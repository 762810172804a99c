"""The shared-memory segment layer under shared=name objects (src/shm.c), driven through the
private probe aiofast._core._shm_probe(name, kind, config, payload_size, publish=True), which opens
(or creates) a segment and closes it, returning whether it created it.

Every case of a segment that cannot be used is a clear exception, and leaves nothing behind."""
import itertools
import os
import stat
import subprocess
import sys
import time

import pytest

import aiofast
from aiofast import _core

SHM_DIR = "/dev/shm"
BUCKET, BREAKER = 1, 2
_counter = itertools.count()

def segments():
    return {n for n in os.listdir(SHM_DIR) if n.startswith("aiofast.")}


@pytest.fixture
def name():
    n = f"test-shm.{os.getpid()}.{next(_counter)}"
    yield n
    try:
        aiofast.shared_unlink(n)
    except FileNotFoundError:
        pass


def path_of(n):
    return os.path.join(SHM_DIR, "aiofast." + n)


def test_create_then_open(name):
    assert _core._shm_probe(name, BUCKET, b"config", 100) is True
    st = os.stat(path_of(name))
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert _core._shm_probe(name, BUCKET, b"config", 100) is False
    assert _core._shm_probe(name, BUCKET, b"config", 100) is False


def test_mode_is_0600_whatever_the_umask(name):
    old = os.umask(0)
    try:
        assert _core._shm_probe(name, BUCKET, b"c", 8) is True
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path_of(name)).st_mode) == 0o600
    aiofast.shared_unlink(name)
    old = os.umask(0o277)
    try:
        assert _core._shm_probe(name, BUCKET, b"c", 8) is True
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path_of(name)).st_mode) == 0o600
    assert _core._shm_probe(name, BUCKET, b"c", 8) is False


@pytest.mark.parametrize("bad", [
    "../x", "x" * 300, "x" * 49, "a\0b", "", ".hidden", "a..b", "..", "a/b", "/abs", "é",
    "a b", "a\nb", "tab\t", "a*", "a%s",
])
def test_hostile_names_refused_nothing_created(bad):
    before = segments()
    with pytest.raises(ValueError, match="shared name"):
        _core._shm_probe(bad, BUCKET, b"c", 8)
    with pytest.raises(ValueError, match="shared name"):
        aiofast.shared_unlink(bad)
    # (other processes may create segments meanwhile: look for this name only)
    assert not any(bad and bad in n[len("aiofast."):] for n in segments() - before)


@pytest.mark.parametrize("bad", [None, 3, b"name", ["x"], 1.5])
def test_name_of_wrong_type(bad):
    with pytest.raises(TypeError, match="shared name must be a str"):
        _core._shm_probe(bad, BUCKET, b"c", 8)
    with pytest.raises(TypeError, match="shared name must be a str"):
        aiofast.shared_unlink(bad)


def test_longest_name_and_every_allowed_character():
    n = ("aZ09_-.b" * 6)[:48]
    try:
        assert _core._shm_probe(n, BUCKET, b"c", 8) is True
        assert os.path.exists(path_of(n))
    finally:
        aiofast.shared_unlink(n)
    assert not os.path.exists(path_of(n))


def test_unlink_absent(name):
    with pytest.raises(FileNotFoundError):
        aiofast.shared_unlink(name)
    _core._shm_probe(name, BUCKET, b"c", 8)
    aiofast.shared_unlink(name)
    with pytest.raises(FileNotFoundError):
        aiofast.shared_unlink(name)
    # the next opener creates it anew
    assert _core._shm_probe(name, BUCKET, b"other", 8) is True


def test_mismatched_configuration_names_both(name):
    _core._shm_probe(name, BUCKET, b"rate=1", 64)
    with pytest.raises(ValueError) as e:
        _core._shm_probe(name, BUCKET, b"rate=2", 64)
    msg = str(e.value)
    assert "another configuration" in msg and "b'rate=1'" in msg and "b'rate=2'" in msg
    assert name in msg
    # the segment is intact: its own configuration still opens
    assert _core._shm_probe(name, BUCKET, b"rate=1", 64) is False


def test_other_kind_refused(name):
    _core._shm_probe(name, BUCKET, b"c", 64)
    with pytest.raises(aiofast.SharedSegmentError, match="holds a TokenBucket, not a CircuitBreaker"):
        _core._shm_probe(name, BREAKER, b"c", 64)


@pytest.mark.parametrize("other", [(b"c", 65), (b"cc", 64), (b"", 64)])
def test_other_layout_sizes_refused(name, other):
    _core._shm_probe(name, BUCKET, b"c", 64)
    config, payload = other
    with pytest.raises((aiofast.SharedSegmentError, ValueError)):
        _core._shm_probe(name, BUCKET, config, payload)


def test_shared_segment_error_is_an_oserror():
    assert issubclass(aiofast.SharedSegmentError, OSError)
    assert aiofast.SharedSegmentError is _core.SharedSegmentError


@pytest.mark.parametrize("size", [10, 47, 100, 163, 165, 4096])
def test_truncated_or_extended_segment(name, size):
    _core._shm_probe(name, BUCKET, b"abc", 100)   # 164 bytes in all
    assert os.path.getsize(path_of(name)) == 164
    os.truncate(path_of(name), size)
    with pytest.raises(aiofast.SharedSegmentError, match="truncated"):
        _core._shm_probe(name, BUCKET, b"abc", 100)


@pytest.mark.parametrize("magic", [b"XXXXXXXX", b"\xff" * 8, b"AFSHM102"])
def test_foreign_magic(name, magic):
    _core._shm_probe(name, BUCKET, b"abc", 100)
    with open(path_of(name), "r+b") as f:
        f.write(magic)
    with pytest.raises(aiofast.SharedSegmentError, match="not aiofast's, or is corrupted"):
        _core._shm_probe(name, BUCKET, b"abc", 100)


def test_another_programs_file(name):
    fd = os.open(path_of(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"some other program's data, long enough to hold a header and more" * 4)
    os.close(fd)
    with pytest.raises(aiofast.SharedSegmentError, match="not aiofast's"):
        _core._shm_probe(name, BUCKET, b"abc", 100)


def test_other_layout_version(name):
    _core._shm_probe(name, BUCKET, b"abc", 100)
    with open(path_of(name), "r+b") as f:
        f.seek(8)
        f.write((99).to_bytes(4, sys.byteorder))
    with pytest.raises(aiofast.SharedSegmentError, match="layout version 99"):
        _core._shm_probe(name, BUCKET, b"abc", 100)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_group_or_other_permission_refused(name, mode):
    _core._shm_probe(name, BUCKET, b"abc", 100)
    os.chmod(path_of(name), mode)
    with pytest.raises(PermissionError, match=f"has mode {mode:04o}: other users may read or change it"):
        _core._shm_probe(name, BUCKET, b"abc", 100)


def test_another_owner_refused(name):
    # the suite runs as root (CI's containers too): give the segment to another user
    assert os.geteuid() == 0, "this test needs root to give a segment to another user"
    _core._shm_probe(name, BUCKET, b"abc", 100)
    os.chown(path_of(name), 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to user id 65534"):
        _core._shm_probe(name, BUCKET, b"abc", 100)


def test_creator_died_before_publishing(name):
    assert _core._shm_probe(name, BUCKET, b"abc", 100, False) is True
    t0 = time.monotonic()
    with pytest.raises(aiofast.SharedSegmentError, match="never made ready: its creator died"):
        _core._shm_probe(name, BUCKET, b"abc", 100)
    waited = time.monotonic() - t0
    assert 0.9 < waited < 5   # the opener waits about a second for the creator first


def test_creator_died_before_sizing(name):
    fd = os.open(path_of(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    with pytest.raises(aiofast.SharedSegmentError, match="is empty: its creator died"):
        _core._shm_probe(name, BUCKET, b"abc", 100)


def test_opener_waits_for_a_slow_creator(name):
    """An opener arriving while the creator fills the segment waits for it, and succeeds."""
    assert _core._shm_probe(name, BUCKET, b"abc", 100, False) is True
    with open(path_of(name), "rb") as f:
        assert f.read(8) == b"\0" * 8
    # the real magic, from a published twin
    twin = name + "-twin"
    _core._shm_probe(twin, BUCKET, b"abc", 100)
    with open(path_of(twin), "rb") as f:
        magic = f.read(8)
    aiofast.shared_unlink(twin)
    code = (f"import time; time.sleep(0.3)\n"
            f"f = open({path_of(name)!r}, 'r+b'); f.write({magic!r}); f.close()\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert _core._shm_probe(name, BUCKET, b"abc", 100) is False
    finally:
        assert p.wait(timeout=30) == 0


def test_concurrent_openers_one_creator(name):
    """Processes racing to open one name: exactly one creates it, none fails."""
    start = time.time() + 0.5
    code = (f"import time, aiofast._core as c\n"
            f"time.sleep(max(0, {start!r} - time.time()))\n"
            f"print(int(c._shm_probe({name!r}, 1, b'abc', 100)))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6
    assert sorted(outs) == ["0"] * 5 + ["1"]
