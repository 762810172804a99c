"""A real redis-server for the tests and benchmarks of aiofast.redis: started on 127.0.0.1 on a
free port, persistence off, stopped (or killed and restarted) on demand.

A missing redis-server is an error (the tests fail, they are never skipped): install it with
``apt-get install -y redis-server`` (Debian/Ubuntu), as .ci/run does.
"""
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process; `config` lines go to its configuration file (e.g. an ACL user:
    "user alice on >secret ~aiofast:* +@all")."""

    def __init__(self, *config):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise RuntimeError("redis-server not found: the Redis tests need a real server "
                               "(apt-get install -y redis-server)")
        self.port = None
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="aiofast-redis-")
        self.conf = os.path.join(self.dir, "redis.conf")
        with open(self.conf, "w") as f:
            f.write("".join(line + "\n" for line in config))

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        """Start (again, on the same port if it ran before). Returns once it accepts PING."""
        assert self.proc is None
        for _attempt in range(5):
            port = self.port or free_port()
            self.proc = subprocess.Popen(
                [self.exe, self.conf, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                 "--protected-mode", "yes", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self._env())
            if self._wait_ready(port):
                self.port = port
                return self
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() else ""
            self.kill()
            if self.port is not None and "Address already in use" not in err:
                raise RuntimeError(f"redis-server did not start on port {port}: {err}")
        raise RuntimeError("redis-server did not start")

    @staticmethod
    def _env():
        """Our environment without what the sanitizer and valgrind runs add for Python (a
        preloaded libasan in redis-server would only get in its way)."""
        return {k: v for k, v in os.environ.items()
                if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")}

    def _wait_ready(self, port):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    # an ACL-only server answers NOAUTH: it is up all the same
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def kill(self):
        """SIGKILL: no shutdown, the data is gone (persistence is off)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.kill()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)



def loop_clock_as_server_clock():
    """For a subclass of a Redis-backed object (``_now = loop_clock_as_server_clock()``): the
    scripts read the running loop's clock (a virtual one in tests) instead of the server's."""

    def get(self):
        return repr(asyncio.get_running_loop().time() * 1e6)

    def ignore(self, value):
        pass

    return property(get, ignore)
