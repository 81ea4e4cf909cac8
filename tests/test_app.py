"""The web app (app/): the status page, the engine client, Socket.IO, and serving with gunicorn.

These are the app's unit tests. The glass daemon is replaced here by ``StandInDaemon``: a
real HTTP server on a real unix socket that answers the daemon's API contract with fixed
JSON. It is a stand-in, not the daemon: end-to-end tests against the real daemon
(sandbox/api.py) live with the daemon's tests.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import pwd
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import create_app
from app.engine_client import EngineClient, EngineError, EngineRefused, EngineUnreachable
from app.socketio import socketio
from app.wsgi import engine_socket_from_environment

CHECKOUT = Path(__file__).resolve().parent.parent

# What the daemon answers, in the Docker Engine API's field names (the contract of sandbox/api.py).
ENGINE_API = {
    "/version": {
        "Version": "0.1.0", "ApiVersion": "1.44", "Os": "linux", "Arch": "amd64",
        "KernelVersion": "6.1.0-test", "Components": [{"Name": "Engine", "Version": "0.1.0"}],
    },
    "/info": {
        "ServerVersion": "0.1.0", "CgroupDriver": "cgroupfs", "CgroupVersion": "1",
        "Containers": 2, "ContainersRunning": 1, "ContainersStopped": 1, "Images": 2,
        "KernelVersion": "6.1.0-test", "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
        "NCPU": 2, "MemTotal": 24_000_000_000, "DockerRootDir": "/tmp/glassbox-test-state",
        "Name": "classroom-1",
    },
    "/images/json": [
        {"Id": "sha256:" + "ab" * 32, "RepoTags": ["busybox:latest"], "Size": 2_190_000,
         "Created": 1_700_000_000},
        {"Id": "sha256:" + "cd" * 32, "RepoTags": ["scratch:latest"], "Size": 0,
         "Created": 0},
    ],
    "/containers/json?all=1": [
        {"Id": "1f" * 32, "Names": ["/web-demo"], "Image": "busybox:latest",
         "Command": "sleep 600", "State": "running", "Status": "Up 3 minutes"},
        {"Id": "2e" * 32, "Names": ["/lesson-one"], "Image": "busybox:latest",
         "Command": "true", "State": "exited", "Status": "Exited (0) 2 minutes ago"},
    ],
}


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _StandInHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        # Who is asking: the kernel's credentials of the connecting process.
        pid, uid, gid = struct.unpack("3i", self.connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        self.server.peer_uids.append(uid)
        status, body = self.server.routes.get(
            self.path, (404, {"message": f"page not found: {self.path}"}))
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        else:
            data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass  # unix-socket clients have no address to log; keep test output quiet


class StandInDaemon:
    """STAND-IN for the glass daemon: a real HTTP/1.1 server on a real unix socket that
    answers fixed JSON (``routes``: path -> (status, body)) and records the paths asked."""

    def __init__(self, socket_path: Path, routes: dict | None = None):
        self.socket_path = socket_path
        self.server = _UnixHTTPServer(str(socket_path), _StandInHandler)
        self.server.routes = {path: (200, body) for path, body in ENGINE_API.items()}
        self.server.routes.update(routes or {})
        self.server.requests = []
        self.server.peer_uids = []
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def routes(self) -> dict:
        return self.server.routes

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    @property
    def peer_uids(self) -> list[int]:
        return self.server.peer_uids

    def __enter__(self) -> StandInDaemon:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
        self.socket_path.unlink(missing_ok=True)


@pytest.fixture
def daemon(tmp_path):
    with StandInDaemon(tmp_path / "engine.sock") as stand_in:
        yield stand_in


@pytest.fixture
def client(daemon):
    app = create_app({"TESTING": True, "ENGINE_SOCKET": str(daemon.socket_path)})
    return app.test_client()


# --- the status page ---------------------------------------------------------------

def test_status_page_shows_engine_cgroup_driver_images_and_containers(client):
    response = client.get("/status")
    page = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "0.1.0 (API 1.44)" in page
    assert "cgroupfs, cgroup v1" in page
    assert "busybox:latest" in page and "scratch:latest" in page
    assert "ababababab" in page              # image IDs shortened as docker shows them
    assert "2.19MB" in page                  # sizes in docker's units
    assert "web-demo" in page and "/web-demo" not in page
    assert "lesson-one" in page
    assert "Exited (0) 2 minutes ago" in page
    assert 'class="state-running"' in page
    assert "/tmp/glassbox-test-state" in page


def test_status_page_counts_lessons_and_open_classrooms_and_names_lessons_left_out(daemon, tmp_path):
    import shutil
    from app import CHECKOUT
    from app.progress import Classroom, Learner
    lessons = tmp_path / "lessons"
    shutil.copytree(CHECKOUT / "lessons" / "02-lifecycle", lessons / "02-lifecycle")
    shutil.copytree(CHECKOUT / "lessons" / "11-storage", lessons / "11-storage")
    (lessons / "11-storage" / "01-volume.ko.md").unlink()
    app = create_app({"TESTING": True, "ENGINE_SOCKET": str(daemon.socket_path), "LESSONS_DIR": str(lessons)})
    with app.app_context():
        from app.learn import store
        with store().session() as db:
            db.add(Classroom(id="cabc", name="x", code="ABCDEF", teacher_key_sha256="0" * 64, quota={}))
            db.add(Learner(visitor="1" * 16, classroom_id="cabc", name="ann", registry_user="ann"))
            db.add(Learner(visitor="2" * 16, classroom_id="cabc", name="teacher", registry_user="teacher"))
    page = app.test_client().get("/status").get_data(as_text=True)
    assert "1 lessons, 4 steps" in page
    assert "1, with 1 students" in page
    assert "11-storage: step 01: missing 01-volume.ko.md" in page


def test_status_page_asks_the_daemon_for_every_container_not_only_running_ones(client, daemon):
    client.get("/status")

    assert daemon.requests == ["/version", "/info", "/images/json", "/containers/json?all=1"]


def test_status_page_says_so_when_the_engine_holds_nothing(client, daemon):
    daemon.routes["/images/json"] = (200, [])
    daemon.routes["/containers/json?all=1"] = (200, [])

    page = client.get("/status").get_data(as_text=True)

    assert "No images." in page and "No containers." in page


def test_status_page_escapes_names_that_come_from_students(client, daemon):
    daemon.routes["/containers/json?all=1"] = (200, [
        {"Id": "3d" * 32, "Names": ["/<script>alert(1)</script>"], "Image": "busybox:latest",
         "Command": "true", "State": "created", "Status": "Created"}])

    page = client.get("/status").get_data(as_text=True)

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_status_page_is_503_naming_the_socket_when_the_daemon_is_down(tmp_path):
    missing_socket = tmp_path / "no-daemon-here.sock"
    client = create_app({"TESTING": True, "ENGINE_SOCKET": str(missing_socket)}).test_client()

    response = client.get("/status")
    page = response.get_data(as_text=True)

    assert response.status_code == 503
    assert "not reachable" in page
    assert str(missing_socket) in page
    assert "Traceback" not in page


def test_status_page_is_503_when_nothing_listens_on_the_socket_file(tmp_path):
    # A socket file left behind by a daemon that died: connect() is refused.
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()
    client = create_app({"TESTING": True, "ENGINE_SOCKET": str(stale)}).test_client()

    response = client.get("/status")

    assert response.status_code == 503
    assert str(stale) in response.get_data(as_text=True)


def test_status_page_is_502_with_the_daemons_message_when_it_answers_an_error(client, daemon):
    daemon.routes["/info"] = (500, {"message": "cgroup tree unreadable"})

    response = client.get("/status")
    page = response.get_data(as_text=True)

    assert response.status_code == 502
    assert "cgroup tree unreadable" in page
    assert "Traceback" not in page


def test_healthz_answers_ok_without_asking_the_daemon(client, daemon):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_data(as_text=True) == "ok"
    assert daemon.requests == []


def test_stylesheet_is_served_from_the_top_level_static_dir(client):
    response = client.get("/static/style.css")

    assert response.status_code == 200
    assert response.get_data() == (CHECKOUT / "static" / "style.css").read_bytes()


# --- the engine client --------------------------------------------------------------

def test_engine_client_reads_json_over_the_unix_socket(daemon):
    engine = EngineClient(str(daemon.socket_path))

    assert engine.get_json("/info")["CgroupDriver"] == "cgroupfs"
    assert engine.get_json("/images/json")[0]["RepoTags"] == ["busybox:latest"]


def test_engine_client_tells_an_unreachable_daemon_from_a_bad_answer(tmp_path, daemon):
    with pytest.raises(EngineUnreachable) as unreachable:
        EngineClient(str(tmp_path / "missing.sock")).get_json("/version")
    assert isinstance(unreachable.value.cause, FileNotFoundError)

    daemon.routes["/version"] = (200, "this is not json")
    with pytest.raises(EngineError, match="not JSON") as bad:
        EngineClient(str(daemon.socket_path)).get_json("/version")
    assert not isinstance(bad.value, EngineUnreachable)

    # A 4xx is the daemon saying no, with a message meant for the user.
    with pytest.raises(EngineRefused, match="^page not found: /nowhere$") as refused:
        EngineClient(str(daemon.socket_path)).get_json("/nowhere")
    assert refused.value.status == 404


# --- Socket.IO and the WSGI entry point --------------------------------------------

def test_socketio_runs_in_threading_mode_and_refuses_a_browser_without_a_cookie(daemon):
    """(Browsers with a cookie are tested against the real daemon in test_web.py.)"""
    app = create_app({"TESTING": True, "ENGINE_SOCKET": str(daemon.socket_path)})

    assert socketio.server.eio.async_mode == "threading"
    assert socketio.server.async_handlers is False  # one browser's keystrokes stay in order
    browser = socketio.test_client(app)
    assert not browser.is_connected()


def test_wsgi_takes_the_engine_socket_from_the_environment(monkeypatch):
    monkeypatch.delenv("GLASSBOX_ENGINE_SOCKET", raising=False)
    monkeypatch.delenv("GLASSBOX_STATE_DIR", raising=False)
    assert engine_socket_from_environment() == "/var/lib/glassbox/glassbox.sock"

    monkeypatch.setenv("GLASSBOX_STATE_DIR", "/srv/glassbox")
    assert engine_socket_from_environment() == "/srv/glassbox/glassbox.sock"

    monkeypatch.setenv("GLASSBOX_ENGINE_SOCKET", "/run/glassbox/api.sock")
    assert engine_socket_from_environment() == "/run/glassbox/api.sock"


# --- served for real by gunicorn, as `glassbox up` serves it --------------------------

def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def gunicorn_serving(engine_socket: Path, log: Path, *extra_args: str):
    """gunicorn with the command line `glassbox up` uses (one worker, threads), on a free port."""
    port = _free_loopback_port()
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "8",
               "-b", f"127.0.0.1:{port}", "--no-control-socket", *extra_args,
               "app.wsgi:application"]
    env = dict(os.environ, GLASSBOX_ENGINE_SOCKET=str(engine_socket))
    with open(log, "wb") as log_file:
        server = subprocess.Popen(command, cwd=CHECKOUT, env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(base_url + "/healthz") == (200, "ok"):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def shared_socket_dir():
    """A socket directory other users can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="glassbox-app-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_gunicorn_serves_the_status_page(tmp_path, daemon):
    with gunicorn_serving(daemon.socket_path, tmp_path / "gunicorn.log") as base_url:
        status, page = _get(base_url + "/status")

    assert status == 200
    assert "busybox:latest" in page and "web-demo" in page
    assert "/images/json" in daemon.requests


def _glassbox_user_can_read_checkout() -> bool:
    probe = subprocess.run(["setpriv", "--reuid=glassbox", "--regid=glassbox", "--clear-groups",
                            "test", "-r", str(CHECKOUT / "app" / "__init__.py")])
    return probe.returncode == 0


def test_gunicorn_serves_the_status_page_as_the_unprivileged_glassbox_user(
        tmp_path, shared_socket_dir):
    try:
        glassbox = pwd.getpwnam("glassbox")
    except KeyError:
        pytest.skip("no 'glassbox' user on this machine (scripts/setup.sh creates it)")
    if os.geteuid() != 0:
        pytest.skip("switching gunicorn's workers to another user needs root")
    if not _glassbox_user_can_read_checkout():
        pytest.skip(f"user 'glassbox' cannot read the checkout {CHECKOUT}")

    with StandInDaemon(shared_socket_dir / "engine.sock") as stand_in:
        stand_in.socket_path.chmod(0o666)
        with gunicorn_serving(stand_in.socket_path, tmp_path / "gunicorn.log",
                              "--user", "glassbox", "--group", "glassbox") as base_url:
            status, page = _get(base_url + "/status")

    assert status == 200
    assert "busybox:latest" in page
    # The daemon saw the web app connect as the unprivileged user, never as root.
    assert stand_in.peer_uids and set(stand_in.peer_uids) == {glassbox.pw_uid}
