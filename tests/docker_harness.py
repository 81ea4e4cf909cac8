"""A real `glassbox daemon` for tests, the docker CLI pointed at it, and raw HTTP on
unix sockets (for inputs no client would send). Shared by the Docker API test files."""
from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GLASSBOX = str(Path(sys.executable).parent / "glassbox")
DOCKER = shutil.which("docker")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str | Path, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def unix_request(path: str | Path, method: str, url: str, body: bytes | str | None = None,
                 headers: dict | None = None) -> tuple[int, bytes]:
    """One HTTP request on a unix socket: (status, body)."""
    conn = UnixHTTPConnection(path)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Daemon:
    """`glassbox daemon` on ``top/state`` as a subprocess, stopped with SIGTERM."""

    def __init__(self, top: Path):
        self.top = top
        self.state = top / "state"
        self.home = top / "home"
        self.home.mkdir(exist_ok=True)
        self.log_path = top / "daemon.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([GLASSBOX, "daemon", "--state-dir", str(self.state)],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.socket = self.host_socket("default")
        self._client = None
        deadline = time.monotonic() + 60
        while not (self.socket.exists() and self.docker("version").returncode == 0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the daemon did not come up:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def host_socket(self, host: str) -> Path:
        return self.state / "hosts" / host / "docker.sock"

    @property
    def client(self):
        """docker-py on the default host."""
        if self._client is None:
            import docker as docker_py
            self._client = docker_py.DockerClient(base_url=f"unix://{self.socket}", timeout=120)
        return self._client

    def env(self, host: str = "default") -> dict:
        return dict(os.environ, DOCKER_HOST=f"unix://{self.host_socket(host)}", HOME=str(self.home),
                    DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(self.home / ".docker"))

    def docker(self, *args, host: str = "default", input: str | None = None, timeout: float = 120,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER, *map(str, args)], env=self.env(host), capture_output=True,
                              text=True, input=input, timeout=timeout, cwd=cwd)

    def ok(self, *args, **kwargs) -> str:
        result = self.docker(*args, **kwargs)
        assert result.returncode == 0, f"docker {' '.join(map(str, args))}:\n{result.stderr}"
        return result.stdout

    def fails(self, *args, **kwargs) -> str:
        """The command's error output; it must have failed."""
        result = self.docker(*args, **kwargs)
        assert result.returncode != 0, f"docker {' '.join(map(str, args))} succeeded:\n{result.stdout}"
        return result.stderr

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict | None = None, host: str = "default") -> tuple[int, bytes]:
        return unix_request(self.host_socket(host), method, path, body, headers)

    def remove_containers(self) -> None:
        leftover = self.ok("ps", "-aq").split()
        if leftover:
            self.docker("rm", "-f", *leftover)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@contextlib.contextmanager
def running_daemon(prefix: str):
    """A `glassbox daemon` in a fresh temporary top directory, stopped and removed
    afterwards, whatever happened (a test module's fixture)."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        daemon = Daemon(top)
        try:
            yield daemon
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)
