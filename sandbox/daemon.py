"""``glassbox daemon`` and ``glassbox up``: the engine behind its API socket.

``up`` also starts the web app (gunicorn, as the unprivileged ``glassbox``
user when it exists), which reaches the engine only through the socket.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sandbox.api import serve_host
from sandbox.engine import Conflict, Engine, EngineError, NotFound, state_dir_from_env
from sandbox.quota import Quota
from sandbox.runtime import ContainerConfig, Mount

log = logging.getLogger("glassbox")
WEB_USER = "glassbox"


def socket_path(state_dir: Path) -> Path:
    """The control socket: root and the web app only. It serves the default host's API
    and the management of hosts."""
    return state_dir / "glassbox.sock"


def host_socket_path(state_dir: Path, name: str) -> Path:
    return state_dir / "hosts" / name / "docker.sock"


class Daemon:
    """The Docker hosts of one machine, each an Engine behind its own API socket."""

    UID_BASE, UID_RANGE, MAX_HOSTS = 100000, 65536, 256
    REAP_EVERY = 5.0  # seconds between looks for idle hosts

    def __init__(self, state_dir: Path, web_user: tuple[int, int] | None):
        self.state_dir = state_dir
        self.web_user = web_user
        self.hosts: dict[str, tuple[Engine, object]] = {}
        self.lock = threading.Lock()
        self.record = state_dir / "hosts.json"
        # Visitors' hosts are freed after this many idle seconds; the others never.
        self.idle_timeouts: dict[str, float] = {}
        self.last_active: dict[str, float] = {}
        self.idle_record = state_dir / "idle-hosts.json"
        self.stopping = threading.Event()
        self.reaper: threading.Thread | None = None

    def _uid_bases(self) -> dict[str, int]:
        return self._read_json(self.record)

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        known = self._uid_bases()
        known.setdefault("default", self.UID_BASE)
        idle = self._read_json(self.idle_record)
        for name in sorted(known, key=lambda n: known[n]):
            self.create_host(name, known[name], idle_timeout=idle.get(name))
        self.reaper = threading.Thread(target=self._free_idle_hosts, name="idle-hosts", daemon=True)
        self.reaper.start()

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _write_json(path: Path, value: dict) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)

    def touch(self, name: str) -> None:
        """The host is in use now (a request on its socket, or a browser looking at it)."""
        if name in self.idle_timeouts:
            self.last_active[name] = time.monotonic()

    def idle_hosts(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self.lock:
            return [name for name, timeout in self.idle_timeouts.items()
                    if now - self.last_active.get(name, now) > timeout]

    def _free_idle_hosts(self) -> None:
        while not self.stopping.wait(self.REAP_EVERY):
            for name in self.idle_hosts():
                log.info("host %s idle for %.0f s: freeing it", name, self.idle_timeouts.get(name, 0))
                try:
                    self.remove_host(name)
                except (NotFound, Conflict):
                    pass
                except Exception:
                    log.exception("freeing idle host %s", name)

    def create_host(self, name: str, uid_base: int | None = None,
                    idle_timeout: float | None = None, quota: Quota | None = None,
                    registry_credentials: dict[str, tuple[str, str]] | None = None) -> Engine:
        """``idle_timeout``: free the host after that many seconds without a request
        or a ``touch`` (a visitor's host); None keeps it until it is removed.
        ``quota``: the host's rate limits and quotas (a classroom's). None: the
        defaults of ``Quota()`` for a student's or a visitor's host, and none for
        the default host, which is the machine's own (root's and the operator's).
        ``registry_credentials``: the host's logins to registries (``"127.0.0.1:8000"``
        -> (username, password)), used when a push or pull brings none of its own."""
        if not HOST_NAME.match(name or ""):
            raise EngineError(f"invalid host name {name!r}: lower-case letters, digits, '-', '_', '.' "
                              "(up to 64), starting with a letter or digit")
        with self.lock:
            if name in self.hosts:
                raise Conflict(f"host {name} already exists")
            bases = self._uid_bases()
            if uid_base is None:
                used = set(bases.values()) | {e.runtime.uid_base for e, _ in self.hosts.values()}
                free = [self.UID_BASE + i * self.UID_RANGE for i in range(self.MAX_HOSTS)
                        if self.UID_BASE + i * self.UID_RANGE not in used]
                if not free:
                    raise EngineError(f"too many hosts (at most {self.MAX_HOSTS})")
                uid_base = free[0]
            if quota is None and name != "default":
                quota = Quota()
            engine = Engine(self.state_dir, host=name, uid_base=uid_base, quota=quota)
            engine.registry_credentials = dict(registry_credentials or {})
            path = host_socket_path(self.state_dir, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            server = serve_host(str(path), engine, self)
            # The host's own terminal container (its root is uid_base) and the web app
            # may connect; nobody else.
            os.chown(path, uid_base, self.web_user[1] if self.web_user else 0)
            os.chmod(path, 0o660)
            self.hosts[name] = (engine, server)
            bases[name] = uid_base
            self._write_json(self.record, bases)
            if idle_timeout:
                self.idle_timeouts[name] = float(idle_timeout)
                self.last_active[name] = time.monotonic()
                self._write_json(self.idle_record, self.idle_timeouts)
        log.info("host %s on %s (container root = host uid %d)", name, path, uid_base)
        return engine

    def host(self, name: str) -> Engine:
        with self.lock:
            if name not in self.hosts:
                raise NotFound(f"no such host: {name}")
            return self.hosts[name][0]

    def set_quota(self, name: str, quota: Quota | None) -> None:
        """The host's quota from now on (None: none). What runs keeps running; the next
        start is measured against the new limits."""
        self.host(name).quota.replace(quota)
        log.info("host %s: quota %s", name, quota)

    def set_registry_credentials(self, name: str, credentials: dict[str, tuple[str, str]]) -> None:
        """The host's registry logins from now on; ``{}`` forgets them all."""
        self.host(name).registry_credentials = dict(credentials)
        log.info("host %s: registry credentials for %s", name, ", ".join(sorted(credentials)) or "none")

    def remove_host(self, name: str) -> None:
        """Stops its containers and frees what it held: containers, tags, volumes, cache."""
        if name == "default":
            raise Conflict("the default host can't be removed")
        with self.lock:
            if name not in self.hosts:
                raise NotFound(f"no such host: {name}")
            engine, server = self.hosts.pop(name)
            bases = self._uid_bases()
            bases.pop(name, None)
            self._write_json(self.record, bases)
            if self.idle_timeouts.pop(name, None) is not None:
                self.last_active.pop(name, None)
                self._write_json(self.idle_record, self.idle_timeouts)
        server.shutdown()
        server.server_close()
        engine.close()
        for path in (engine.volumes.root, engine.images.oci, engine.containers_dir):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(host_socket_path(self.state_dir, name).parent, ignore_errors=True)
        self.default.gc()
        log.info("host %s removed", name)

    def terminal(self, name: str):
        """A host terminal: busybox's shell, the docker CLI (read-only) and this host's
        socket, nothing else — no network, no host files, no other socket."""
        with self.lock:
            if name not in self.hosts:
                raise NotFound(f"no such host: {name}")
            engine = self.hosts[name][0]
        tools = self.state_dir / "tools"
        docker = shutil.which("docker")
        if docker is None:
            raise EngineError("there is no docker CLI on this machine (the setup installs one)", 500)
        tools.mkdir(mode=0o755, exist_ok=True)
        target = tools / "docker"
        if not target.exists() or target.stat().st_size != os.stat(docker).st_size:
            tmp = tools / ".docker.tmp"
            shutil.copy2(os.path.realpath(docker), tmp)
            os.chmod(tmp, 0o755)
            tmp.replace(target)
        socket_dir = host_socket_path(self.state_dir, name).parent
        config = ContainerConfig(
            "busybox", ["sh", "-l"], name=f"terminal-{os.urandom(3).hex()}", hostname=f"{name}",
            env=["DOCKER_HOST=unix:///run/glassbox/docker.sock", "HOME=/root",
                 "DOCKER_CONFIG=/tmp/.docker", f"PS1={name}:\\w\\$ "],
            tty=True, open_stdin=True, stdin_once=True, memory=128 * 1024 * 1024, pids_limit=64,
            auto_remove=True, system=True,
            mounts=[Mount(str(tools), "/usr/local/bin", readonly=True),
                    Mount(str(socket_dir), "/run/glassbox", readonly=True)])
        return engine.create(config), str(host_socket_path(self.state_dir, name))

    def running_terminal(self, name: str):
        """The host's terminal container that is running now, if any."""
        with self.lock:
            if name not in self.hosts:
                raise NotFound(f"no such host: {name}")
            engine = self.hosts[name][0]
        running = [c for c in engine.list(all=False)
                   if c.config.system and (c.name or "").startswith("terminal-")]
        return max(running, key=lambda c: c.created_at, default=None)

    @property
    def default(self) -> Engine:
        return self.hosts["default"][0]

    def describe(self) -> list[dict]:
        return [{"Name": name, "Socket": str(host_socket_path(self.state_dir, name)),
                 "UidBase": engine.runtime.uid_base, "Containers": len(engine.list()),
                 "Images": len(engine.images.list()),
                 "IdleTimeout": self.idle_timeouts.get(name),
                 "Quota": quota_fields(engine.quota.quota),
                 # Which registries it may log in to; never the credentials themselves.
                 "RegistryAuth": sorted(engine.registry_credentials)}
                for name, (engine, _) in sorted(self.hosts.items())]

    def close(self) -> None:
        self.stopping.set()
        for name in list(self.hosts):
            engine, server = self.hosts.pop(name)
            server.shutdown()
            server.server_close()
            engine.close()
            host_socket_path(self.state_dir, name).unlink(missing_ok=True)


def quota_fields(quota: Quota) -> dict | None:
    """A quota as the API shows it: its fields, or None when nothing is limited."""
    return None if quota == Quota.unlimited() else dataclasses.asdict(quota)


HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def serve(state_dir: str | None, web: tuple[str, int] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    web_user = web_identity()
    daemon = Daemon(state_dir_from_env(state_dir), web_user)
    try:
        daemon.start()
    except EngineError as exc:
        print(f"glassbox: {exc}", file=sys.stderr)
        daemon.close()
        return 1
    path = socket_path(daemon.state_dir)
    control = serve_host(str(path), daemon.default, daemon, control=True)
    if web_user:
        os.chown(path, 0, web_user[1])
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("glassbox daemon on %s (%s); hosts: %s", path, daemon.default.cgroups.name,
             ", ".join(daemon.hosts))
    registry = prepare_registry(daemon.state_dir, web_user) if web else None
    web_process = start_web(path, web, web_user, registry) if web else None
    try:
        while not stop.wait(1):
            if web_process and web_process.poll() is not None:
                log.error("the web app exited with %s", web_process.returncode)
                break
    finally:
        if web_process and web_process.poll() is None:
            web_process.terminate()
            try:
                web_process.wait(10)
            except subprocess.TimeoutExpired:
                # Its whole process group: killing gunicorn's master alone left its worker
                # running as an orphan, still serving the WebSockets it had open.
                os.killpg(web_process.pid, signal.SIGKILL)
                web_process.wait()
        control.shutdown()
        control.server_close()
        daemon.close()
        path.unlink(missing_ok=True)
    return 0


def web_identity() -> tuple[int, int] | None:
    try:
        user = pwd.getpwnam(WEB_USER)
        return user.pw_uid, user.pw_gid
    except KeyError:
        return None


def prepare_registry(state_dir: Path, identity, name: str = "registry") -> Path:
    """A directory of the web app's own (it runs unprivileged): the classroom registry's
    storage (``registry``), the database of progress and classrooms (``web``)."""
    root = state_dir / name
    root.mkdir(mode=0o700, exist_ok=True)
    if identity:
        os.chown(root, *identity)
    return root


def web_secret(state_dir: Path) -> str:
    """The key that signs visitors' cookies: kept (root only) so that a restart does not
    turn every visitor into a stranger with a new host."""
    path = state_dir / "web-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        secret = os.urandom(32).hex()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        return secret


def start_web(socket: Path, address: tuple[str, int], identity, registry: Path | None = None) -> subprocess.Popen:
    host, port = address
    # One worker (Socket.IO needs every packet of a browser in one process); each open
    # WebSocket holds a thread: 200 is 40 students with a few tabs each, and then some.
    # app.server.Worker is gunicorn's threaded worker with limits, so that one client
    # can't hold all 200 (connections per address, header and I/O timeouts).
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "200",
               "-k", "app.server.Worker", "-b", f"{host}:{port}", "--no-control-socket",
               "--access-logfile", "-", "app.wsgi:application"]
    if identity:
        command[3:3] = ["--user", str(identity[0]), "--group", str(identity[1])]
    else:
        log.warning("no '%s' user: the web app runs as root (run the setup to create it)", WEB_USER)
    env = dict(os.environ, GLASSBOX_ENGINE_SOCKET=str(socket),
               GLASSBOX_SECRET_KEY=web_secret(socket.parent))
    if registry:
        env["GLASSBOX_REGISTRY_ROOT"] = str(registry)
        # The daemon pushes and pulls for students over loopback, whatever address the
        # site is open on.
        env["GLASSBOX_REGISTRY_ADDRESS"] = f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        if "GLASSBOX_DATABASE_URL" not in env:
            data = prepare_registry(registry.parent, identity, "web")
            env["GLASSBOX_DATABASE_URL"] = f"sqlite:///{data / 'glassbox.db'}"
    root = Path(__file__).resolve().parent.parent
    log.info("web app on http://%s:%s", host, port)
    # A process group of its own, so that stopping it can stop its worker too.
    return subprocess.Popen(command, env=env, cwd=root, start_new_session=True)
