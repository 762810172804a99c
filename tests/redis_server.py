"""A real redis-server for the tests and benchmarks of aiofast.redis: started on 127.0.0.1 on a
free port, persistence off, stopped (or killed and restarted) on demand.

A missing redis-server is an error (the tests fail, they are never skipped): install it with
``apt-get install -y redis-server`` (Debian/Ubuntu), as .ci/run does. A TLS server
(``RedisServer(tls=True)``) also needs the ``openssl`` command, which makes its certificates.
"""
import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args, cwd):
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("openssl not found: the TLS tests make their certificates with it "
                           "(apt-get install -y openssl)")
    subprocess.run([exe, *args], cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(directory, name):
    """A certificate authority in `directory`: name.crt and name.key. Its extensions are those
    a strict verifier wants (Python 3.13's default context checks them)."""
    _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-keyout", name + ".key", "-out", name + ".crt",
             "-days", "2", "-subj", f"/CN=aiofast test CA {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=directory)
    return os.path.join(directory, name + ".crt")


def make_cert(directory, ca, name, usage):
    """A certificate for 127.0.0.1 signed by the CA `ca` (made by make_ca in the same directory):
    name.crt and name.key; `usage`: "serverAuth" or "clientAuth"."""
    ext = os.path.join(directory, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                f"extendedKeyUsage={usage}\n"
                "subjectAltName=IP:127.0.0.1\n"
                "subjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-keyout", name + ".key", "-out", name + ".csr",
             "-subj", f"/CN={name}", cwd=directory)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
             "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", ext,
             cwd=directory)
    return os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")


class RedisServer:
    """One redis-server process; `config` lines go to its configuration file (e.g. an ACL user:
    "user alice on >secret ~aiofast:* +@all").

    ``tls=True``: TLS only (no plain port), with certificates made in its directory by openssl:
    ``ca`` (the CA's certificate file, for ``ssl_ca_certs``) signed the server's, for
    127.0.0.1. ``client_certs=True`` also requires clients to show a certificate signed by that
    CA: ``client_cert`` and ``client_key`` are one."""

    def __init__(self, *config, tls=False, client_certs=False):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise RuntimeError("redis-server not found: the Redis tests need a real server "
                               "(apt-get install -y redis-server)")
        self.port = None
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="aiofast-redis-")
        self.conf = os.path.join(self.dir, "redis.conf")
        self.tls = tls or client_certs
        self.ca = self.client_cert = self.client_key = None
        if self.tls:
            self.ca = make_ca(self.dir, "ca")
            cert, key = make_cert(self.dir, "ca", "server", "serverAuth")
            config += ("tls-cert-file " + cert, "tls-key-file " + key,
                       "tls-ca-cert-file " + self.ca,
                       "tls-auth-clients " + ("yes" if client_certs else "no"))
            if client_certs:
                self.client_cert, self.client_key = make_cert(self.dir, "ca", "client",
                                                              "clientAuth")
        with open(self.conf, "w") as f:
            f.write("".join(line + "\n" for line in config))

    @property
    def url(self):
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self):
        """Start (again, on the same port if it ran before). Returns once it accepts PING."""
        assert self.proc is None
        for _attempt in range(5):
            port = self.port or free_port()
            ports = (["--port", "0", "--tls-port", str(port)] if self.tls
                     else ["--port", str(port)])
            self.proc = subprocess.Popen(
                [self.exe, self.conf, *ports, "--bind", "127.0.0.1", "--save", "",
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
                with self._connect(port) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    # an ACL-only server answers NOAUTH: it is up all the same
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _connect(self, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        if not self.tls:
            return sock
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        try:
            return ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        except BaseException:
            sock.close()
            raise

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
