"""The daemon's API on a unix socket: the Docker Engine API's shape and names.

This is the first slice — ping, version, info, images, and the container life
cycle as JSON (create, start, wait, kill, inspect, delete). Attach, logs
streams, exec and build come with the Docker CLI issue; the routing and error
conventions here are the ones those will use.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from sandbox.engine import VERSION, Engine, EngineError, NotFound
from sandbox.images import ImageError
from sandbox.runtime import ContainerConfig, ContainerError, Mount
from sandbox.volumes import VolumeError

log = logging.getLogger(__name__)

API_VERSION = "1.44"
ROUTES: list[tuple[str, re.Pattern, str]] = []


def route(method: str, pattern: str):
    def register(fn):
        # An optional /vX.Y prefix, as the docker CLI sends it.
        ROUTES.append((method, re.compile(r"^(?:/v[0-9.]+)?" + pattern + r"$"), fn.__name__))
        return fn
    return register


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, engine: Engine):
        if os.path.exists(path):
            os.unlink(path)
        self.engine = engine
        super().__init__(path, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"Glassbox/{VERSION}"

    # BaseHTTPRequestHandler wants a (host, port) client address.
    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args) -> None:
        log.debug("api: " + format, *args)

    @property
    def engine(self) -> Engine:
        return self.server.engine

    def do_GET(self): self.dispatch("GET")
    def do_HEAD(self): self.dispatch("HEAD")
    def do_POST(self): self.dispatch("POST")
    def do_DELETE(self): self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        lookup = "GET" if method == "HEAD" else method
        for m, pattern, name in ROUTES:
            match = pattern.match(url.path)
            if match and m == lookup:
                try:
                    getattr(self, name)(*match.groups())
                except (NotFound, ImageError) as exc:
                    self.send_json(404, {"message": str(exc)})
                except EngineError as exc:
                    self.send_json(exc.status, {"message": str(exc)})
                except ContainerError as exc:
                    self.send_json(500, {"message": f"{exc.step}: {exc}"})
                except ValueError as exc:
                    self.send_json(400, {"message": str(exc)})
                except Exception as exc:
                    log.exception("api %s %s", method, self.path)
                    self.send_json(500, {"message": f"internal error: {exc}"})
                return
        self.send_json(404, {"message": f"page not found: {method} {url.path}"})

    def read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1 << 20:
            raise ValueError("request body too large (limit 1 MiB)")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"invalid JSON in request body: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        return body

    def send_json(self, status: int, body, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Ostype", "linux")
        self.send_header("Server", f"Glassbox/{VERSION} (linux)")
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # ------------------------------------------------------------------ system

    @route("GET", r"/_ping")
    def ping(self):
        data = b"OK"
        self.send_response(200)
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Ostype", "linux")
        self.send_header("Docker-Experimental", "false")
        self.send_header("Builder-Version", "1")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    @route("GET", r"/version")
    def version(self):
        self.send_json(200, {
            "Version": VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": "1.24",
            "Os": "linux", "Arch": go_arch(), "KernelVersion": platform.release(),
            "Components": [{"Name": "Glassbox Engine", "Version": VERSION,
                            "Details": {"CgroupDriver": self.engine.cgroups.name}}],
        })

    @route("GET", r"/info")
    def info(self):
        engine = self.engine
        containers = engine.list()
        self.send_json(200, {
            "ID": engine.state_dir.name, "Name": socket.gethostname(),
            "ServerVersion": VERSION,
            "Containers": len(containers),
            "ContainersRunning": sum(c.state == "running" for c in containers),
            "ContainersPaused": 0,
            "ContainersStopped": sum(c.state == "exited" for c in containers),
            "Images": len(engine.images.list()),
            "Driver": "overlay2", "CgroupDriver": "cgroupfs",
            "CgroupVersion": str(engine.cgroups.version),
            "GlassboxCgroupDriver": engine.cgroups.name,
            "KernelVersion": platform.release(), "OperatingSystem": os_name(),
            "OSType": "linux", "Architecture": platform.machine(),
            "NCPU": os.cpu_count(), "MemTotal": mem_total(),
            "DockerRootDir": str(engine.state_dir),
            "SecurityOptions": ["name=seccomp,profile=glassbox", "name=userns"],
        })

    # ------------------------------------------------------------------ images

    @route("GET", r"/images/json")
    def images_json(self):
        out = []
        for image in self.engine.images.list():
            size = sum(dir_size(p) for p in image.layers)
            created = image.config.get("created", "")
            out.append({"Id": image.id, "RepoTags": [image.name], "RepoDigests": [],
                        "ParentId": "", "Size": size, "SharedSize": -1, "Labels": {},
                        "Containers": -1, "Created": parse_time(created)})
        self.send_json(200, out)

    # ------------------------------------------------------------------ containers

    @route("GET", r"/containers/json")
    def containers_json(self):
        show_all = self.query.get("all") in ("1", "true", "True")
        out = [container_summary(c) for c in self.engine.list(all=show_all)]
        self.send_json(200, out)

    @route("POST", r"/containers/create")
    def containers_create(self):
        body = self.read_json()
        config = config_from_docker(body, self.query.get("name"))
        container = self.engine.create(config)
        self.send_json(201, {"Id": container.id, "Warnings": []})

    @route("POST", r"/containers/([^/]+)/start")
    def containers_start(self, ref):
        c = self.engine.get(ref)
        if c.state == "running":
            return self.send_json(304, None)
        self.engine.start(c)
        self.send_json(204, None)

    @route("POST", r"/containers/([^/]+)/wait")
    def containers_wait(self, ref):
        c = self.engine.get(ref)
        status = self.engine.wait(c)
        body = {"StatusCode": status.code}
        if status.error:
            body["Error"] = {"Message": status.error}
        self.send_json(200, body)

    @route("POST", r"/containers/([^/]+)/kill")
    def containers_kill(self, ref):
        sig = self.query.get("signal", "SIGKILL")
        self.engine.kill(ref, signal_number(sig))
        self.send_json(204, None)

    @route("GET", r"/containers/([^/]+)/json")
    def containers_inspect(self, ref):
        self.send_json(200, container_inspect(self.engine.get(ref)))

    @route("DELETE", r"/containers/([^/]+)")
    def containers_delete(self, ref):
        self.engine.remove(ref, force=self.query.get("force") in ("1", "true", "True"))
        self.send_json(204, None)


    # ------------------------------------------------------------------ volumes

    @route("GET", r"/volumes")
    def volumes_list(self):
        self.send_json(200, {"Volumes": [v.to_docker() for v in self.engine.volumes.list()],
                             "Warnings": []})

    @route("POST", r"/volumes/create")
    def volumes_create(self):
        body = self.read_json()
        volume = self.engine.create_volume(body.get("Name") or None, body.get("Labels") or {})
        self.send_json(201, volume.to_docker())

    @route("GET", r"/volumes/([^/]+)")
    def volumes_inspect(self, name):
        try:
            self.send_json(200, self.engine.volumes.get(name).to_docker())
        except VolumeError as exc:
            raise NotFound(str(exc)) from None

    @route("DELETE", r"/volumes/([^/]+)")
    def volumes_delete(self, name):
        self.engine.remove_volume(name)
        self.send_json(204, None)


# ---------------------------------------------------------------------- translation

def config_from_docker(body: dict, name: str | None) -> ContainerConfig:
    """A Docker ``ContainerCreateRequest`` as a Glassbox ``ContainerConfig``."""
    if not body.get("Image"):
        raise ValueError("Image is required")
    host = body.get("HostConfig") or {}
    mounts = [Mount.parse(b) for b in host.get("Binds") or []]
    if host.get("Mounts") or any(m.volume is None for m in mounts):
        # Whoever holds this socket is a student: a host directory would hand
        # them the host's files. Named volumes are the engine's own directories.
        raise ValueError("mounting host directories is not allowed here: use a named volume "
                         "(-v NAME:/path)")
    defaults = ContainerConfig(image="")
    cpus = host.get("NanoCpus")
    return ContainerConfig(
        image=body["Image"], cmd=body.get("Cmd") or None, entrypoint=body.get("Entrypoint"),
        env=body.get("Env") or [], name=name, hostname=body.get("Hostname") or None,
        workdir=body.get("WorkingDir") or None, user=body.get("User") or None,
        memory=host.get("Memory") or defaults.memory,
        pids_limit=host.get("PidsLimit") or defaults.pids_limit,
        cpus=cpus / 1e9 if cpus else None, mounts=mounts, tty=bool(body.get("Tty")),
        open_stdin=bool(body.get("OpenStdin")), auto_remove=bool(host.get("AutoRemove")))


def container_summary(c) -> dict:
    return {"Id": c.id, "Names": ["/" + c.name], "Image": c.image.name, "ImageID": c.image.id,
            "Command": " ".join(c.argv), "Created": int(c.created_at), "State": c.state,
            "Status": status_text(c), "Ports": [], "Labels": {}}


def container_inspect(c) -> dict:
    status = c.status
    return {
        "Id": c.id, "Name": "/" + c.name, "Image": c.image.id, "Created": iso(c.created_at),
        "Path": c.argv[0] if c.argv else "", "Args": c.argv[1:],
        "State": {"Status": c.state, "Running": c.state == "running",
                  "Pid": c.process.pid if c.process and c.state == "running" else 0,
                  "ExitCode": status.code if status else 0,
                  "OOMKilled": bool(status and status.oom_killed),
                  "Error": (status.error or "") if status else "",
                  "StartedAt": iso(c.started_at), "FinishedAt": iso(c.finished_at)},
        "Config": {"Image": c.config.image, "Cmd": c.config.cmd, "Entrypoint": c.config.entrypoint,
                   "Env": c.env, "Hostname": c.hostname, "Tty": c.config.tty,
                   "OpenStdin": c.config.open_stdin, "WorkingDir": c.config.workdir or "",
                   "User": c.config.user or ""},
        "HostConfig": {"Memory": c.config.memory or 0, "PidsLimit": c.config.pids_limit,
                       "NanoCpus": int((c.config.cpus or 0) * 1e9),
                       "Binds": [f"{m.source}:{m.target}{':ro' if m.readonly else ''}"
                                 for m in c.config.mounts],
                       "AutoRemove": c.config.auto_remove},
        "GraphDriver": {"Name": "overlay2",
                        "Data": {"LowerDir": ":".join(str(p) for p in c.image.layers),
                                 "UpperDir": str(c.rw_dir / "upper"),
                                 "WorkDir": str(c.rw_dir / "work"),
                                 "MergedDir": str(c.rootfs)}},
    }


def status_text(c) -> str:
    if c.state == "running":
        return f"Up {human_duration(time.time() - (c.started_at or time.time()))}"
    if c.state == "exited" and c.status:
        return f"Exited ({c.status.code}) {human_duration(time.time() - (c.finished_at or time.time()))} ago"
    return c.state.capitalize()


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} seconds" if seconds >= 2 else "Less than a second"
    if seconds < 3600:
        return f"{int(seconds // 60)} minutes"
    return f"{int(seconds // 3600)} hours"


def iso(t: float | None) -> str:
    if not t:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def parse_time(text: str) -> int:
    try:
        return int(time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone)
    except ValueError:
        return 0


def signal_number(name: str) -> int:
    import signal
    if name.isdigit():
        return int(name)
    name = name.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"invalid signal {name!r}") from None


def go_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def dir_size(path) -> int:
    """Bytes of the files under ``path``, each hard-linked file counted once."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
