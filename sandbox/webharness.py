"""A real ``glassbox up`` (daemon + gunicorn web app as the unprivileged user) on a
free loopback port, and visitors that talk to it as browsers do: the page for the
cookie, then Socket.IO over WebSocket. Used by the web tests and ``glassbox bench events``.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GLASSBOX = str(Path(sys.executable).parent / "glassbox")


def _end_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies, however it dies (a
    test run killed by a timeout must not leave a daemon with its cgroups behind)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebApp:
    """``glassbox up`` in a fresh state dir that the web app's user can reach."""

    def __init__(self, *extra: str):
        # pytest's tmp_path is private to root; the web app runs as another user.
        self.top = Path(tempfile.mkdtemp(prefix="glassbox-web-"))
        self.top.chmod(0o755)
        self.state = self.top / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.top / "up.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [GLASSBOX, "up", "--state-dir", str(self.state), "--port", str(self.port), *extra],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_end_with_parent)
        self._wait_until_serving()

    def _wait_until_serving(self) -> None:
        import urllib.request
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200 and (self.state / "glassbox.sock").exists():
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()   # before stop() removes it
                self.stop()
                raise RuntimeError(f"glassbox up did not come up:\n{log}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def control(self, method: str, path: str, body=None):
        """A request on the control socket (as root): (status, decoded JSON or None)."""
        import json
        from app.engine_client import UnixHTTPConnection
        conn = UnixHTTPConnection(str(self.state / "glassbox.sock"), timeout=30)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, (json.loads(data) if data else None)
        finally:
            conn.close()

    def host_socket(self, host: str) -> Path:
        return self.state / "hosts" / host / "docker.sock"

    def docker(self, host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The real docker CLI on a visitor's host."""
        home = self.top / "home"
        home.mkdir(exist_ok=True)
        env = dict(os.environ, DOCKER_HOST=f"unix://{self.host_socket(host)}", HOME=str(home),
                   DOCKER_CONFIG=str(home / ".docker"), DOCKER_BUILDKIT="0")
        return subprocess.run([shutil.which("docker") or "docker", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def visitor(self, **kwargs) -> "Visitor":
        return Visitor(self, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.top, ignore_errors=True)


class Visitor:
    """A student as the server sees one: a cookie from the page, then a Socket.IO client
    that records what it receives."""

    def __init__(self, web: WebApp, cookie: str | None = None, connect: bool = True,
                 origin: str | None = None):
        import requests
        self.web = web
        self.http = requests.Session()
        if cookie is None:
            page = self.http.get(web.url + "/", timeout=30)
            page.raise_for_status()
            cookie = self.http.cookies.get("session")
        self.cookie = cookie
        self.events: list[dict] = []
        self.output: dict[str, list[str]] = {}
        self.replays: dict[str, list[str]] = {}
        self.exits: list[dict] = []
        self.notices: list[dict] = []
        self.terminal_lists: list[list] = []
        self.messages: dict[str, list] = {}   # everything else the server sent, by name
        self.changed = threading.Condition()
        self.sio = None
        if connect:
            self.connect(origin=origin)

    @property
    def host(self) -> str:
        return self.subscription["host"]

    def connect(self, origin: str | None = None, auth: dict | None = None) -> None:
        import socketio
        # websocket-client sends this site's own Origin unless told another.
        extra = {"websocket_extra_options": {"origin": origin}} if origin else {}
        self.sio = socketio.Client(reconnection=False, **extra)
        self.sio.on("events", self._on_events)
        self.sio.on("terminal.output", self._on_output)
        self.sio.on("terminal.exit", lambda m: self._record(self.exits, m))
        self.sio.on("notice", lambda m: self._record(self.notices, m))
        self.sio.on("terminals", lambda m: self._record(self.terminal_lists, m))
        self.sio.on("*", lambda name, m=None: self._record(self.messages.setdefault(name, []), m))
        headers = {"Cookie": f"session={self.cookie}"}
        self.sio.connect(self.web.url, headers=headers, transports=["websocket"], wait_timeout=10,
                         auth=auth)

    def _record(self, where: list, item) -> None:
        with self.changed:
            where.append(item)
            self.changed.notify_all()

    def _on_events(self, events: list[dict]) -> None:
        with self.changed:
            self.events.extend(events)
            self.changed.notify_all()

    def _on_output(self, message: dict) -> None:
        with self.changed:
            if message.get("replay"):
                self.replays.setdefault(message["id"], []).append(message["data"])
            else:
                self.output.setdefault(message["id"], []).append(message["data"])
            self.changed.notify_all()

    def subscribe(self, since: int = 0) -> dict:
        self.subscription = self.sio.call("subscribe", {"since": since}, timeout=30)
        return self.subscription

    def call(self, event: str, message: dict | None = None, timeout: float = 30):
        return self.sio.call(event, message or {}, timeout=timeout)

    def text(self, terminal: str) -> str:
        """What the terminal showed: the replay it got on joining, then what came live."""
        with self.changed:
            return "".join(self.replays.get(terminal, [])[-1:] + self.output.get(terminal, []))

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "it"):
        """Waits until ``predicate()`` is true (re-checked whenever something arrives)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.changed.wait(min(left, 0.5))

    def wait_for_event(self, kind: str, timeout: float = 30.0, **subject) -> dict:
        def found():
            for event in self.events:
                if event["kind"] == kind and all(event["subject"].get(k) == v for k, v in subject.items()):
                    return event
            return None
        return self.wait_for(found, timeout, what=f"event {kind} {subject}")

    def close(self) -> None:
        if self.sio is not None and self.sio.connected:
            self.sio.disconnect()
        self.http.close()
