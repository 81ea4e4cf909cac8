"""``glassbox daemon`` and ``glassbox up``: the engine behind its API socket.

``up`` also starts the web app (gunicorn, as the unprivileged ``glassbox``
user when it exists), which reaches the engine only through the socket.
"""
from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
from pathlib import Path

from sandbox.api import UnixHTTPServer
from sandbox.engine import Engine, EngineError

log = logging.getLogger("glassbox")
WEB_USER = "glassbox"


def socket_path(state_dir: Path) -> Path:
    return state_dir / "glassbox.sock"


def serve(state_dir: str | None, web: tuple[str, int] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        engine = Engine(state_dir)
    except EngineError as exc:
        print(f"glassbox: {exc}", file=sys.stderr)
        return 1
    path = socket_path(engine.state_dir)
    server = UnixHTTPServer(str(path), engine)
    web_user = web_identity()
    if web_user:
        os.chown(path, 0, web_user[1])
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    log.info("engine %s (%s) on %s", engine.state_dir, engine.cgroups.name, path)
    registry = prepare_registry(engine.state_dir, web_user) if web else None
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
                web_process.kill()
        server.shutdown()
        server.server_close()
        engine.close()
        path.unlink(missing_ok=True)
    return 0


def web_identity() -> tuple[int, int] | None:
    try:
        user = pwd.getpwnam(WEB_USER)
        return user.pw_uid, user.pw_gid
    except KeyError:
        return None


def prepare_registry(state_dir: Path, identity) -> Path:
    """The classroom registry's storage: the web app's own (it runs unprivileged)."""
    root = state_dir / "registry"
    root.mkdir(mode=0o700, exist_ok=True)
    if identity:
        os.chown(root, *identity)
    return root


def start_web(socket: Path, address: tuple[str, int], identity, registry: Path | None = None) -> subprocess.Popen:
    host, port = address
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "100",
               "-b", f"{host}:{port}", "--no-control-socket", "--access-logfile", "-",
               "app.wsgi:application"]
    if identity:
        command[3:3] = ["--user", str(identity[0]), "--group", str(identity[1])]
    else:
        log.warning("no '%s' user: the web app runs as root (run the setup to create it)", WEB_USER)
    env = dict(os.environ, GLASSBOX_ENGINE_SOCKET=str(socket))
    if registry:
        env["GLASSBOX_REGISTRY_ROOT"] = str(registry)
    root = Path(__file__).resolve().parent.parent
    log.info("web app on http://%s:%s", host, port)
    return subprocess.Popen(command, env=env, cwd=root)
