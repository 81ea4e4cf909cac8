"""The daemon's API: the Docker Engine API, so the real docker CLI and docker-py drive it.

``api_base.py`` is the plumbing (routing, errors, bodies, streams, hijacks);
this file holds the system and container routes; ``api_images.py`` the image,
build and volume routes. One ``UnixHTTPServer`` per Docker host serves them,
each bound to its host's ``Engine``: a request on one host's socket never
reaches another host.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import socket
import struct
import threading
import time

from sandbox.api_base import API_VERSION, VERSION, ApiError, BaseHandler, UnixHTTPServer, route
from sandbox import inside
from sandbox.api_images import ImageRoutes
from sandbox.engine import NotFound
from sandbox.quota import Quota
from sandbox.runtime import ContainerConfig, Mount

log = logging.getLogger(__name__)

__all__ = ["Handler", "UnixHTTPServer", "API_VERSION", "VERSION", "serve_host"]


class SystemRoutes:
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


class HostRoutes:
    """Docker hosts: made and removed only through the control socket."""

    def control_daemon(self):
        if not self.server.control or self.server.daemon is None:
            raise ApiError(403, "hosts are managed through the control socket only")
        return self.server.daemon

    @route("GET", r"/glassbox/hosts")
    def hosts_list(self):
        self.send_json(200, self.control_daemon().describe())

    @route("POST", r"/glassbox/hosts")
    def hosts_create(self):
        daemon = self.control_daemon()
        body = self.read_json(required=True)
        name = body.get("Name")
        if not isinstance(name, str):
            raise ApiError(400, "Name (a string) is required")
        idle = body.get("IdleTimeout")
        if idle is not None and (not isinstance(idle, (int, float)) or isinstance(idle, bool) or idle <= 0):
            raise ApiError(400, "IdleTimeout must be a positive number of seconds")
        daemon.create_host(name, idle_timeout=idle, quota=quota_from(body.get("Quota")),
                           registry_credentials=registry_credentials_from(body.get("RegistryAuth", {})))
        self.send_json(201, next(h for h in daemon.describe() if h["Name"] == name))

    @route("PUT", r"/glassbox/hosts/([^/]+)/quota")
    def hosts_quota(self, name):
        """The host's quota from now on: the fields given replace Quota()'s defaults,
        null lifts a limit. Nothing running is stopped."""
        daemon = self.control_daemon()
        if name not in daemon.hosts:
            raise ApiError(404, f"no such host: {name}")
        daemon.set_quota(name, quota_from(self.read_json(required=True)))
        self.send_json(200, next(h for h in daemon.describe() if h["Name"] == name))

    @route("PUT", r"/glassbox/hosts/([^/]+)/registry-auth")
    def hosts_registry_auth(self, name):
        """The host's registry logins from now on (``{}`` forgets them); the answer
        names the registries, never the credentials."""
        daemon = self.control_daemon()
        if name not in daemon.hosts:
            raise ApiError(404, f"no such host: {name}")
        daemon.set_registry_credentials(name, registry_credentials_from(self.read_json(required=True)))
        self.send_json(200, next(h for h in daemon.describe() if h["Name"] == name))

    @route("POST", r"/glassbox/hosts/([^/]+)/touch")
    def hosts_touch(self, name):
        """Someone is looking at this host (the web app, for a connected browser): its
        idle clock starts again."""
        daemon = self.control_daemon()
        if name not in daemon.hosts:
            raise ApiError(404, f"no such host: {name}")
        daemon.touch(name)
        self.send_json(204, None)

    @route("GET", r"/glassbox/hosts/([^/]+)/terminal")
    def hosts_terminal_find(self, name):
        """The host terminal that is already running, so a second tab joins it."""
        found = self.control_daemon().running_terminal(name)
        if found is None:
            raise ApiError(404, f"host {name} has no running terminal")
        self.send_json(200, {"Id": found.id, "Name": found.name})

    @route("POST", r"/glassbox/hosts/([^/]+)/terminal")
    def hosts_terminal(self, name):
        """A new host terminal for ``name`` (created, not started: attach, then start)."""
        container, socket_path = self.control_daemon().terminal(name)
        self.send_json(201, {"Id": container.id, "Name": container.name, "Socket": socket_path})

    @route("DELETE", r"/glassbox/hosts/([^/]+)")
    def hosts_delete(self, name):
        self.control_daemon().remove_host(name)
        self.send_json(204, None)


def quota_from(value) -> "Quota | None":
    """``{"starts_per_minute": 100, "running_memory": null, …}``: the fields given replace
    the defaults (null lifts that limit); None: the defaults."""
    if value is None:
        return None
    fields = {f.name for f in dataclasses.fields(Quota)}
    if not isinstance(value, dict) or not set(value) <= fields:
        raise ApiError(400, f"Quota must be an object with some of: {', '.join(sorted(fields))}")
    for key, limit in value.items():
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ApiError(400, f"Quota.{key} must be a whole number ≥ 0, or null for no limit")
        if key.endswith("_per_minute") and limit == 0:
            raise ApiError(400, f"Quota.{key} must allow at least 1 per minute (null lifts the limit)")
    return Quota(**value)


MAX_REGISTRY_LOGINS = 8
REGISTRY_NAME = re.compile(r"[a-zA-Z0-9.-]+(:[0-9]{1,5})?|\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?")


def registry_credentials_from(value) -> dict[str, tuple[str, str]]:
    """``{"127.0.0.1:8000": {"username": "alice", "password": "…"}}`` (the registry as image
    references name it) -> ``{"127.0.0.1:8000": ("alice", "…")}``."""
    if not isinstance(value, dict):
        raise ApiError(400, 'RegistryAuth must be an object: {"HOST:PORT": {"username": …, "password": …}}')
    if len(value) > MAX_REGISTRY_LOGINS:
        raise ApiError(400, f"RegistryAuth names {len(value)} registries; at most {MAX_REGISTRY_LOGINS}")
    credentials = {}
    for registry, login in value.items():
        if not REGISTRY_NAME.fullmatch(registry) or len(registry) > 255:
            raise ApiError(400, f"RegistryAuth: {registry[:80]!r} is not a registry address "
                                "(HOST:PORT, as in 127.0.0.1:8000/NAME:TAG)")
        if not isinstance(login, dict) or set(login) != {"username", "password"}:
            raise ApiError(400, f"RegistryAuth[{registry!r}] must be an object with exactly "
                                "username and password")
        username, password = login["username"], login["password"]
        if not (isinstance(username, str) and username and isinstance(password, str) and password):
            raise ApiError(400, f"RegistryAuth[{registry!r}]: username and password must be "
                                "non-empty strings")
        if len(username) > 255 or len(password) > 1024 or ":" in username:
            raise ApiError(400, f"RegistryAuth[{registry!r}]: a username has no ':' and at most 255 "
                                "characters, a password at most 1024")
        credentials[registry] = (username, password)
    return credentials


class ContainerRoutes:
    # ------------------------------------------------------------------ life cycle

    @route("GET", r"/containers/json")
    def containers_json(self):
        show_all = self.flag("all")
        self.send_json(200, [container_summary(c) for c in self.engine.list(all=show_all, system=False)])

    @route("POST", r"/containers/create")
    def containers_create(self):
        body = self.read_json()
        config = config_from_docker(body, self.query.get("name"))
        try:
            self.engine.images.get(config.image)
        except LookupError:
            # Docker's words: docker-py pulls only on "No such image".
            raise ApiError(404, f"No such image: {config.image}") from None
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
        c = self.engine.get(ref, include_removed=True)
        condition = self.query.get("condition") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise ApiError(400, f"invalid condition {condition!r}")
        if c.state == "created" and condition == "not-running":
            return self.send_json(200, {"StatusCode": 0})
        # Headers at once: the docker CLI waits for them before it starts the container.
        self.start_stream()
        status = self.engine.wait(c, condition=condition)
        body = {"StatusCode": status.code if status else 0}
        if status and status.error:
            body["Error"] = {"Message": status.error}
        self.write_json_line(body)
        self.end_stream()

    @route("POST", r"/containers/([^/]+)/stop")
    def containers_stop(self, ref):
        timeout = self.integer("t", self.integer("timeout", 10))
        if timeout is None or timeout < 0:
            timeout = 10
        if timeout > 3600:
            raise ApiError(400, f"invalid stop timeout {timeout}: at most 3600 seconds")
        stopped = self.engine.stop(ref, timeout=float(timeout))
        self.send_json(204 if stopped else 304, None)

    @route("POST", r"/containers/([^/]+)/restart")
    def containers_restart(self, ref):
        raise ApiError(501, "restart is not supported by Glassbox: a container lives exactly as long "
                            "as its PID 1 — docker rm it and docker run a new one")

    @route("POST", r"/containers/([^/]+)/kill")
    def containers_kill(self, ref):
        self.engine.kill(ref, signal_number(self.query.get("signal") or "SIGKILL"))
        self.send_json(204, None)

    @route("GET", r"/containers/([^/]+)/json")
    def containers_inspect(self, ref):
        self.send_json(200, container_inspect(self.engine.get(ref)))

    @route("DELETE", r"/containers/([^/]+)")
    def containers_delete(self, ref):
        self.engine.remove(ref, force=self.flag("force"), volumes=self.flag("v"))
        self.send_json(204, None)

    @route("POST", r"/containers/([^/]+)/resize")
    def containers_resize(self, ref):
        c = self.engine.get(ref)
        if c.process is not None:
            c.process.resize(self.integer("h", 24), self.integer("w", 80))
        self.send_json(200, None)

    # ------------------------------------------------------------------ streams

    @route("POST", r"/containers/([^/]+)/attach")
    def containers_attach(self, ref):
        c = self.engine.get(ref)
        tty = c.config.tty
        streams = {name for name in ("stdout", "stderr") if self.flag(name)}
        sock = self.hijack("application/vnd.docker.raw-stream" if tty
                           else "application/vnd.docker.multiplexed-stream")
        out = FrameWriter(sock, tty)
        if self.flag("logs"):
            for entry in self.engine.logs(c):
                if entry["stream"] in streams:
                    out.write(entry["stream"], entry["log"].encode())
        if not self.flag("stream", True) or c.state in ("exited", "removed"):
            return sock_done(sock)

        def relay(stream: str, data: bytes) -> None:
            if stream in streams:
                out.write(stream, data)

        c.listeners.append(relay)
        try:
            if self.flag("stdin"):
                threading.Thread(target=pump_stdin, args=(sock, c), daemon=True,
                                 name=f"stdin-{c.id[:12]}").start()
            reading_stdin = self.flag("stdin")
            while not c.stopped.wait(0.5):
                if c.state == "removed" or out.broken or (not reading_stdin and self.client_gone()):
                    break
        finally:
            if relay in c.listeners:
                c.listeners.remove(relay)
            sock_done(sock)

    @route("GET", r"/containers/([^/]+)/logs")
    def containers_logs(self, ref):
        c = self.engine.get(ref)
        streams = {name for name in ("stdout", "stderr") if self.flag(name)}
        if not streams:
            raise ApiError(400, "you must choose at least one stream (stdout or stderr)")
        timestamps = self.flag("timestamps")
        tail = self.query.get("tail", "all")
        since = float(self.query.get("since") or 0)
        self.start_stream("application/vnd.docker.raw-stream" if c.config.tty
                          else "application/vnd.docker.multiplexed-stream")
        out = FrameWriter(None, c.config.tty, chunk=self.write_chunk)
        live: list[tuple[str, bytes, float]] = []
        following = self.flag("follow") and c.state == "running"
        relay = (lambda stream, data: live.append((stream, data, time.time()))) if following else None
        if relay:
            c.listeners.append(relay)
        try:
            entries = [e for e in self.engine.logs(c) if e["stream"] in streams and e["time"] >= since]
            if tail not in ("all", ""):
                try:
                    count = int(tail)
                except ValueError:
                    raise ApiError(400, f"invalid tail {tail!r}") from None
                entries = tail_lines(entries, count)
            last = 0.0
            for entry in entries:
                out.write(entry["stream"], stamp(entry["log"], entry["time"], timestamps))
                last = entry["time"]
            while following:
                while live:
                    stream, data, at = live.pop(0)
                    if stream in streams and at > last:
                        out.write(stream, stamp(data.decode("utf-8", "replace"), at, timestamps))
                if (c.stopped.wait(0.1) and not live) or out.broken or self.client_gone():
                    break
        finally:
            if relay and relay in c.listeners:
                c.listeners.remove(relay)
        self.end_stream()

    # ------------------------------------------------------------------ exec

    @route("POST", r"/containers/([^/]+)/exec")
    def containers_exec_create(self, ref):
        c = self.engine.get(ref)
        body = self.read_json(required=True)
        cmd = body.get("Cmd")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(w, str) for w in cmd):
            raise ApiError(400, "Cmd must be a non-empty list of strings")
        if c.state != "running":
            raise ApiError(409, f"container {c.name} is not running")
        ident = os.urandom(32).hex()
        forget_finished_execs(self.engine.exec_configs)
        self.engine.exec_configs[ident] = {
            "container": c, "cmd": cmd, "env": body.get("Env") or [], "tty": bool(body.get("Tty")),
            "stdin": bool(body.get("AttachStdin")), "workdir": body.get("WorkingDir") or None,
            "user": body.get("User") or None, "process": None, "size": None,
        }
        self.send_json(201, {"Id": ident})

    @route("POST", r"/exec/([^/]+)/start")
    def exec_start(self, ident):
        spec = self.exec_spec(ident)
        body = self.read_json()
        if spec["process"] is not None:
            raise ApiError(409, "this exec has already been started")
        tty = bool(body.get("Tty", spec["tty"]))
        detach = bool(body.get("Detach"))
        sock = None if detach else self.hijack("application/vnd.docker.raw-stream" if tty
                                               else "application/vnd.docker.multiplexed-stream")
        out = FrameWriter(sock, tty) if sock else None
        try:
            process = self.engine.exec(spec["container"], spec["cmd"], env=spec["env"], tty=tty,
                                       workdir=spec["workdir"], user=spec["user"], stdin=spec["stdin"],
                                       on_output=(lambda s, d: out.write(s, d)) if out else None)
        except Exception as exc:
            if sock is None:
                raise
            out.write("stderr", f"{exc}\n".encode())
            spec["error"] = str(exc)
            return sock_done(sock)
        spec["process"] = process
        if spec["size"]:
            process.resize(*spec["size"])
        if sock is None:
            return self.send_json(200, None)
        if spec["stdin"]:
            threading.Thread(target=pump_stdin, args=(sock, spec["container"], process), daemon=True).start()
        process.done.wait()
        sock_done(sock)

    @route("POST", r"/exec/([^/]+)/resize")
    def exec_resize(self, ident):
        spec = self.exec_spec(ident)
        size = (self.integer("h", 24), self.integer("w", 80))
        spec["size"] = size
        if spec["process"] is not None:
            spec["process"].resize(*size)
        self.send_json(200, None)

    @route("GET", r"/exec/([^/]+)/json")
    def exec_inspect(self, ident):
        spec = self.exec_spec(ident)
        process = spec["process"]
        status = process.status if process else None
        self.send_json(200, {
            "ID": ident, "Running": bool(process and not process.done.is_set()),
            "ExitCode": status.code if status else (126 if spec.get("error") else None),
            "Pid": process.pid if process else 0, "ContainerID": spec["container"].id,
            "OpenStdin": spec["stdin"], "ProcessConfig": {"entrypoint": spec["cmd"][0],
                                                          "arguments": spec["cmd"][1:], "tty": spec["tty"]},
        })

    def exec_spec(self, ident: str) -> dict:
        spec = self.engine.exec_configs.get(ident)
        if spec is None:
            raise NotFound(f"no such exec instance: {ident}")
        return spec

    # ------------------------------------------------------------------ readings

    @route("GET", r"/containers/([^/]+)/top")
    def containers_top(self, ref):
        c = self.engine.get(ref)
        if c.state != "running" or c.cgroup is None:
            raise ApiError(409, f"container {c.name} is not running")
        titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        rows = [process_row(pid, self.engine.runtime.uid_base) for pid in sorted(c.cgroup.pids())]
        self.send_json(200, {"Titles": titles, "Processes": [r for r in rows if r]})

    @route("GET", r"/containers/([^/]+)/stats")
    def containers_stats(self, ref):
        c = self.engine.get(ref)
        stream = self.flag("stream", True) and not self.flag("one-shot")
        previous = empty_stats()
        if not stream:
            current = read_stats(c)
            if not self.flag("one-shot"):
                time.sleep(0.5)  # as Docker: one sample apart, so the CPU % means something
                previous, current = current, read_stats(c)
            return self.send_json(200, {**current, "precpu_stats": previous["cpu_stats"]})
        self.start_stream()
        while True:
            current = read_stats(c)
            self.write_json_line({**current, "precpu_stats": previous["cpu_stats"]})
            previous = current
            if c.stopped.wait(1.0) or c.state == "removed":
                break
        self.end_stream()

    @route("GET", r"/events")
    def system_events(self):
        """Docker's events (``docker events``): the engine's, translated, as they happen."""
        until = float(self.query["until"]) if self.query.get("until") else None
        since = float(self.query["since"]) if self.query.get("since") else None
        self.stream_events(lambda e: docker_event(e), since, until)

    @route("GET", r"/glassbox/events")
    def glassbox_events(self):
        """Every step the engine takes, as JSON lines; ``since=SEQ`` replays what was missed."""
        seq = self.integer("since", None)
        if not self.flag("follow", True):  # only what is kept after ``since``, then the end
            self.start_stream()
            for event in self.engine.bus.since(seq or 0):
                self.write_json_line(json.loads(event.to_json()))
            self.end_stream()
            return
        self.stream_events(lambda e: json.loads(e.to_json()), None, None, since_seq=seq)

    @route("GET", r"/glassbox/containers/([^/]+)/inside")
    def glassbox_container_inside(self, ref):
        """The container as it sees itself and as the host sees it (namespaces, processes,
        cgroup, overlay): this host's containers only, as every container route."""
        self.send_json(200, inside.describe(self.engine, self.engine.get(ref)))

    @route("GET", r"/glassbox/tree")
    def glassbox_tree(self):
        """This host's image tree: graph, Graphviz layout, signature. With
        ``signature=S`` (the one the caller has), just ``{signature, unchanged}``
        when nothing changed."""
        known = self.query.get("signature")
        if known is not None and not TREE_SIGNATURE.fullmatch(known):
            raise ApiError(400, "signature must be one this route gave (16 hex digits)")
        self.send_json(200, self.engine.tree(known))

    @route("GET", r"/glassbox/tree/node")
    def glassbox_tree_node(self):
        """One node of this host's tree in detail (``id=layer:sha256:…``, ``image:…``, …)."""
        self.send_json(200, self.engine.tree_node(tree_node_id(self.query.get("id"))))

    @route("POST", r"/glassbox/tree/weak")
    def glassbox_tree_weak(self):
        """Weak points: ``{"layers": [...]}`` or ``{"path": "/bin/busybox"[, "digest": …]}``
        → every layer, image and container of this host built on them."""
        self.send_json(200, self.engine.tree_weak(**weak_points(self.read_json(required=True))))

    def stream_events(self, translate, since, until, since_seq=None) -> None:
        import queue
        q: queue.Queue = queue.Queue()
        unsubscribe = self.engine.bus.subscribe(q.put)
        try:
            self.start_stream()
            past = self.engine.bus.since(since_seq if since_seq is not None else 0) \
                if (since_seq is not None or since is not None) else []
            last_seq = 0
            for event in past:
                if since is None or event.time >= since:
                    self.send_event(translate(event))
                last_seq = event.seq
            while until is None or time.time() < until:
                try:
                    event = q.get(timeout=1.0)
                except queue.Empty:
                    # A removed host's engine makes no more events: end the stream, or the
                    # follower (the web app's relay) and this thread would wait for ever.
                    if self.client_gone() or self.engine.closed:
                        break
                    continue
                if event.seq <= last_seq:
                    continue
                self.send_event(translate(event))
        finally:
            unsubscribe()
        self.end_stream()

    def send_event(self, message: dict | None) -> None:
        if message is not None:
            self.write_json_line(message)


def forget_finished_execs(configs: dict, keep: int = 256) -> None:
    """Exec records are kept for ``docker exec`` to read the exit code; not forever."""
    finished = [k for k, v in configs.items() if v["process"] is not None and v["process"].done.is_set()]
    for ident in finished[:max(0, len(configs) - keep)]:
        del configs[ident]


class FrameWriter:
    """Docker's stream format: raw bytes with a TTY, else 8-byte-header frames."""
    STREAMS = {"stdin": 0, "stdout": 1, "stderr": 2}

    def __init__(self, sock, tty: bool, chunk=None):
        self.sock = sock
        self.tty = tty
        self.chunk = chunk
        self.lock = threading.Lock()
        self.broken = False

    def write(self, stream: str, data: bytes) -> None:
        if not data or self.broken:
            return
        payload = data if self.tty else struct.pack(">BxxxL", self.STREAMS[stream], len(data)) + data
        with self.lock:
            try:
                if self.chunk:
                    self.chunk(payload)
                else:
                    self.sock.sendall(payload)
            except OSError:
                self.broken = True


def pump_stdin(sock: socket.socket, c, process=None) -> None:
    """What the client types goes to the process's stdin (or its PTY)."""
    deadline = time.time() + 30
    while process is None and c.process is None and time.time() < deadline:
        time.sleep(0.02)  # attached before the start: wait for the process
    process = process or c.process
    if process is None:
        return
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            if not process.tty and (c.config.stdin_once if process is c.process else True):
                process.close_stdin()
            return
        try:
            process.write_stdin(data)
        except (OSError, ValueError):
            return


def sock_done(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def stamp(text: str, at: float, timestamps: bool) -> bytes:
    if not timestamps:
        return text.encode()
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e9):09d}Z " + text).encode()


def tail_lines(entries: list[dict], count: int) -> list[dict]:
    """The last ``count`` lines (log entries are chunks, not always whole lines)."""
    if count < 0:
        return entries
    lines = []
    for entry in entries:
        for line in entry["log"].splitlines(keepends=True):
            lines.append({**entry, "log": line})
    return lines[-count:] if count else []


def process_row(pid: int, uid_base: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) // ticks
    return [str(uid - uid_base if uid >= uid_base else uid), str(pid), fields[1], "0", "-", "?",
            f"{cpu // 3600:02d}:{cpu // 60 % 60:02d}:{cpu % 60:02d}", cmd]


def empty_stats() -> dict:
    return {"cpu_stats": {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0,
                          "online_cpus": os.cpu_count()}}


def system_cpu_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(x) for x in fields) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def read_stats(c) -> dict:
    """One reading of a container's cgroup, in Docker's stats shape."""
    stats = {}
    if c.state == "running" and c.cgroup is not None:
        try:
            stats = c.cgroup.stats()
        except OSError:
            stats = {}
    memory_limit = c.config.memory or stats.get("memory_limit_bytes") or 0
    now = time.time()
    return {
        "read": iso(now), "preread": "0001-01-01T00:00:00Z", "id": c.id, "name": "/" + c.name,
        "pids_stats": {"current": stats.get("pids", 0), "limit": stats.get("pids_limit") or 0},
        "memory_stats": {"usage": stats.get("memory_bytes", 0), "limit": memory_limit, "stats": {}},
        "cpu_stats": {"cpu_usage": {"total_usage": stats.get("cpu_usec", 0) * 1000},
                      "system_cpu_usage": system_cpu_ns(), "online_cpus": os.cpu_count()},
        "blkio_stats": {}, "networks": {},
    }


DOCKER_ACTIONS = {
    "container.created": ("container", "create"), "process.started": ("container", "start"),
    "process.exited": ("container", "die"), "container.removed": ("container", "destroy"),
    "container.kill": ("container", "kill"), "container.stop": ("container", "stop"),
    "oom.killed": ("container", "oom"), "image.committed": ("container", "commit"),
    "volume.created": ("volume", "create"), "volume.removed": ("volume", "destroy"),
    "volume.mounted": ("volume", "mount"), "image.untagged": ("image", "untag"),
    "image.deleted": ("image", "delete"), "image.pulled": ("image", "pull"),
    "image.pushed": ("image", "push"), "image.imported": ("image", "load"),
    "image.exported": ("image", "save"), "build.done": ("image", "tag"),
}


def docker_event(event) -> dict | None:
    kind = DOCKER_ACTIONS.get(event.kind)
    if kind is None or (event.kind in ("process.started", "process.exited") and event.detail.get("exec")):
        return None
    typ, action = kind
    subject = event.subject
    ident = (subject.get("container") or subject.get("volume") or subject.get("image")
             or (event.detail.get("image") if typ == "image" else None) or "")
    if isinstance(ident, list):
        ident = ",".join(ident)
    attributes = {k: str(v) for k, v in event.detail.items() if isinstance(v, (str, int, float)) and v is not None}
    if "name" in subject:
        attributes["name"] = subject["name"]
    if event.kind == "process.exited":
        attributes["exitCode"] = str(event.detail.get("exit_code"))
    message = {"Type": typ, "Action": action, "Actor": {"ID": ident, "Attributes": attributes},
               "scope": "local", "time": int(event.time), "timeNano": int(event.time * 1e9)}
    if typ == "container":
        message.update(status=action, id=ident, **({"from": attributes["image"]} if "image" in attributes else {}))
    return message


# ---------------------------------------------------------------------- the image tree

TREE_NODE = re.compile(r"scratch|(layer|image):sha256:[0-9a-f]{64}|container:[0-9a-f]{64}"
                       r"|volume:[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
TREE_LAYER = re.compile(r"(layer:)?sha256:[0-9a-f]{64}")
TREE_SIGNATURE = re.compile(r"[0-9a-f]{16}")
FILE_DIGEST = re.compile(r"(sha256:)?[0-9a-f]{64}")
MAX_WEAK_LAYERS = 1000
MAX_PATH = 4096


def tree_node_id(node) -> str:
    if not node:
        raise ApiError(400, "give the node's id: /glassbox/tree/node?id=layer:sha256:…")
    if not TREE_NODE.fullmatch(node):
        raise ApiError(400, f"malformed node id {node[:80]!r}: expected scratch, layer:sha256:<64 hex>, "
                            "image:sha256:<64 hex>, container:<64 hex> or volume:<name>")
    return node


def weak_points(body: dict) -> dict:
    """The arguments of ``Engine.tree_weak`` from a request body, or a 400 saying what is wrong."""
    unknown = sorted(set(body) - {"layers", "path", "digest"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}: give layers, or path (and optionally digest)")
    if ("layers" in body) == ("path" in body):
        raise ApiError(400, "give either layers (a list of layer ids) or path (a file such as /bin/busybox)")
    if "layers" in body:
        layers = body["layers"]
        if "digest" in body:
            raise ApiError(400, "digest goes with path, not with layers")
        if not isinstance(layers, list) or not layers:
            raise ApiError(400, "layers must be a non-empty list of layer ids (layer:sha256:…)")
        if len(layers) > MAX_WEAK_LAYERS:
            raise ApiError(400, f"too many layers ({len(layers)}); at most {MAX_WEAK_LAYERS} at once")
        for layer in layers:
            if not isinstance(layer, str) or not TREE_LAYER.fullmatch(layer):
                raise ApiError(400, f"malformed layer id {str(layer)[:80]!r}: expected layer:sha256:<64 hex>")
        return {"layers": layers}
    path, digest = body["path"], body.get("digest")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ApiError(400, "path must be an absolute path in the image, such as /bin/busybox")
    if "\0" in path or len(path) > MAX_PATH:
        raise ApiError(400, f"path must have no NUL byte and at most {MAX_PATH} characters")
    if ".." in path.split("/"):
        raise ApiError(400, "path must not contain '..': give the file's own path in the image")
    if digest is not None and (not isinstance(digest, str) or not FILE_DIGEST.fullmatch(digest)):
        raise ApiError(400, "digest must be a file's sha256 (sha256:<64 hex>)")
    return {"path": path, "digest": digest}


# ---------------------------------------------------------------------- translation

def config_from_docker(body: dict, name: str | None) -> ContainerConfig:
    """A Docker ``ContainerCreateRequest`` as a Glassbox ``ContainerConfig``."""
    if not isinstance(body.get("Image"), str) or not body["Image"]:
        raise ApiError(400, "Image is required (a string)")
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise ApiError(400, "HostConfig must be an object")
    binds = typed(host, "Binds", list) or []
    if not all(isinstance(b, str) for b in binds):
        raise ApiError(400, "HostConfig.Binds must be a list of strings (NAME:/path[:ro])")
    binds = list(binds)
    for m in host.get("Mounts") or []:
        if not isinstance(m, dict) or m.get("Type") != "volume" or not m.get("Source"):
            raise ApiError(400, "only named volumes can be mounted here (--mount type=volume,...)")
        binds.append(f"{m['Source']}:{m['Target']}" + (":ro" if m.get("ReadOnly") else ""))
    mounts = [Mount.parse(b) for b in binds]
    if any(m.volume is None for m in mounts):
        # Whoever holds this socket is a student: a host directory would hand
        # them the host's files. Named volumes are the engine's own directories.
        raise ApiError(400, "mounting host directories is not allowed here: use a named volume "
                            "(-v NAME:/path)")
    defaults = ContainerConfig(image="")
    nano_cpus = typed(host, "NanoCpus", int) or 0
    if not nano_cpus and typed(host, "CpuQuota", int):
        nano_cpus = int(host["CpuQuota"] * 1e9 / (typed(host, "CpuPeriod", int) or 100000))
    entrypoint = typed(body, "Entrypoint", (list, str))
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]
    cmd = typed(body, "Cmd", (list, str))
    if isinstance(cmd, str):
        cmd = ["/bin/sh", "-c", cmd]
    return ContainerConfig(
        image=body["Image"], cmd=cmd or None, entrypoint=entrypoint or None if entrypoint != [""] else [],
        env=typed(body, "Env", list) or [], name=name or None,
        hostname=typed(body, "Hostname", str) or None, workdir=typed(body, "WorkingDir", str) or None,
        user=typed(body, "User", str) or None,
        memory=typed(host, "Memory", int) or defaults.memory,
        pids_limit=(typed(host, "PidsLimit", int) or 0) if (typed(host, "PidsLimit", int) or 0) > 0
        else defaults.pids_limit,
        cpus=nano_cpus / 1e9 if nano_cpus else None, mounts=mounts, tty=bool(body.get("Tty")),
        open_stdin=bool(body.get("OpenStdin")), stdin_once=bool(body.get("StdinOnce")),
        auto_remove=bool(host.get("AutoRemove")))


def typed(body: dict, key: str, kind):
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ApiError(400, f"{key} must be a {names}, not {type(value).__name__}")
    return value


def container_summary(c) -> dict:
    return {"Id": c.id, "Names": ["/" + c.name], "Image": c.image.name, "ImageID": c.image.id,
            "Command": " ".join(c.argv), "Created": int(c.created_at), "State": c.state,
            "Status": status_text(c), "Ports": [], "Labels": {},
            "Mounts": [{"Type": "volume", "Name": m.volume, "Source": m.source,
                        "Destination": m.target, "Driver": "local", "RW": not m.readonly}
                       for m in c.config.mounts if m.volume]}


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
                       "AutoRemove": c.config.auto_remove,
                       "LogConfig": {"Type": "json-file", "Config": {}},
                       "NetworkMode": "none", "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}},
        "Mounts": [{"Type": "volume" if m.volume else "bind", "Name": m.volume or "",
                    "Source": m.source, "Destination": m.target, "RW": not m.readonly,
                    "Driver": "local" if m.volume else ""} for m in c.config.mounts],
        "NetworkSettings": {"Networks": {}, "Ports": {}, "IPAddress": ""},
        "Platform": "linux", "RestartCount": 0, "Driver": "overlay2",
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


def signal_number(name: str) -> int:
    import signal
    if name.isdigit():
        if not 1 <= int(name) < signal.NSIG:
            raise ValueError(f"invalid signal {name}: signals are 1 to {signal.NSIG - 1}")
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


class Handler(ContainerRoutes, ImageRoutes, HostRoutes, SystemRoutes, BaseHandler):
    """Every route of the API, on the plumbing of ``BaseHandler``."""


def serve_host(path: str, engine, daemon=None, control: bool = False) -> UnixHTTPServer:
    server = UnixHTTPServer(path, Handler, engine, daemon, control)
    threading.Thread(target=server.serve_forever, name=f"api-{os.path.basename(path)}",
                     daemon=True).start()
    return server
