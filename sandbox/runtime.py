"""The container runtime: a container start is a short list of named steps.

Each step is a function here (host side) or in ``zygote.py`` (inside the new
namespaces), and each one emits the event the browser shows:

 1. ``create_cgroup``          cgroup.created     limits written (memory, swap 0, pids, cpu)
 2. ``mount_writable_layer``   mount.tmpfs        size-capped tmpfs for upper/work
    ``mount_rootfs``           mount.overlay      the image's layers + the writable layer
 3. ``spawn_helper``           helper.spawned     placed in the cgroup before it unshares
 4.                            userns.mapped      container root = an unprivileged host uid
 5.                            ns.unshared        mnt, uts, ipc, net, pid, cgroup
 6.                            mount.proc / mount.dev / paths.masked / volume.mounted
 7.                            hostname.set, rootfs.pivoted
 8.                            lockdown.applied   fds, capabilities, no_new_privs, seccomp
 9.                            process.started    execve of PID 1
10. ``finish``                 process.exited (+ oom.killed, pids.limited), then clean-up

Steps 3–9 run in the zygote's children and report over the status pipe.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import struct
import termios
import threading
import time
from pathlib import Path
from typing import Callable

from sandbox import linux, lockdown
from sandbox.cgroups import Cgroup, CgroupDriver, Limits
from sandbox.events import EventBus
from sandbox.images import Image
from sandbox.zygote_client import ZygoteClient, ZygoteError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MEMORY = 256 * MiB
DEFAULT_PIDS = 256
DEFAULT_WRITABLE = 64 * MiB
# tmpfs pages are charged to the writer's memory cgroup. The cgroup's limit is
# the memory limit plus the writable layer's cap plus this slack for its
# inodes, so a full layer gives ENOSPC and never an OOM kill.
WRITABLE_SLACK = 4 * MiB


class ContainerError(RuntimeError):
    """A container could not be started; ``step`` names where it failed."""

    def __init__(self, message: str, step: str | None = None, exit_code: int = 125):
        super().__init__(message)
        self.step = step
        self.exit_code = exit_code


@dataclasses.dataclass
class Mount:
    source: str            # a host directory, or a volume's name
    target: str            # a path in the container
    readonly: bool = False
    volume: str | None = None   # set when ``source`` names a volume (resolved at create)
    anonymous: bool = False     # a volume made for this container (from the image's VOLUME)

    @classmethod
    def parse(cls, text: str) -> "Mount":
        """``HOSTDIR:PATH[:ro|rw]`` or ``VOLUME:PATH[:ro|rw]``, as ``docker run -v`` takes it."""
        parts = text.split(":")
        mode = "rw"
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            mode = parts.pop()
        if len(parts) != 2 or not parts[0] or not parts[1].startswith("/"):
            raise ValueError(f"invalid volume {text!r}: expected /host/dir:/container/path[:ro] "
                             "or name:/container/path[:ro]")
        if parts[0].startswith("/"):
            return cls(parts[0], parts[1], mode == "ro")
        return cls(parts[0], parts[1], mode == "ro", volume=parts[0])


@dataclasses.dataclass
class ContainerConfig:
    image: str
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = dataclasses.field(default_factory=list)
    name: str | None = None
    hostname: str | None = None
    workdir: str | None = None
    user: str | None = None
    memory: int | None = DEFAULT_MEMORY
    pids_limit: int | None = DEFAULT_PIDS
    cpus: float | None = None
    writable_size: int = DEFAULT_WRITABLE
    timeout: float | None = None
    mounts: list[Mount] = dataclasses.field(default_factory=list)
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False      # close the process's stdin when the attached client closes its own
    system: bool = False          # Glassbox's own (a host terminal): not in the host's docker ps
    auto_remove: bool = False


@dataclasses.dataclass
class ExitStatus:
    code: int                     # as a shell reports it: 128+signal when killed
    signal: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    error: str | None = None      # the runtime's own failure (step + message)

    def describe(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        if self.oom_killed:
            return f"killed by the kernel's OOM killer (exit {self.code})"
        if self.timed_out:
            return f"killed after its time limit (exit {self.code})"
        if self.signal:
            return f"killed by {signal.Signals(self.signal).name} (exit {self.code})"
        return f"exited with code {self.code}"


def decode_wait_status(status: int) -> tuple[int, int | None]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.waitstatus_to_exitcode(status), None


OutputListener = Callable[[str, bytes], None]   # (stream, data)


class Process:
    """A process the runtime started: a container's PID 1 or an exec."""

    def __init__(self, ident: str, tty: bool, argv: list[str]):
        self.id = ident
        self.tty = tty
        self.argv = argv
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.stdin_fd: int | None = None
        self.console_fd: int | None = None
        self.status: ExitStatus | None = None
        self.error: str | None = None
        self.listeners: list[OutputListener] = []
        self.started = threading.Event()   # execve succeeded, or failed (then ``error``)
        self.done = threading.Event()
        self._exit_raw: int | None = None
        self._pumped = False
        self._lock = threading.Lock()

    def signal(self, sig: int) -> None:
        if self.pidfd is not None and not self.done.is_set():
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def write_stdin(self, data: bytes) -> None:
        fd = self.console_fd if self.tty else self.stdin_fd
        if fd is None:
            raise ValueError("this process has no stdin open")
        os.write(fd, data)

    def close_stdin(self) -> None:
        if not self.tty and self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def resize(self, rows: int, cols: int) -> None:
        if self.console_fd is None:
            return
        try:
            fcntl.ioctl(self.console_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError as e:
            # A process that ends at once closes its console (the pump is closing it now)
            # before a client's first resize: there is nothing left to size.
            if e.errno not in (errno.EBADF, errno.EIO, errno.ENOTTY):
                raise


class Container:
    def __init__(self, ident: str, name: str, config: ContainerConfig, image: Image, directory: Path):
        self.id = ident
        self.name = name
        self.config = config
        self.image = image
        self.dir = directory
        self.state = "created"
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.process: Process | None = None
        self.status: ExitStatus | None = None
        self.cgroup: Cgroup | None = None
        self.hostname = config.hostname or ident[:12]
        self.argv = resolve_argv(config, image)
        self.env = merge_env(image.config.get("config", {}).get("Env", []), config.env)
        self.execs: dict[str, Process] = {}
        self.timed_out = False
        self.stopped = threading.Event()
        self.removed = threading.Event()
        self.listeners: list[OutputListener] = []   # output subscribers (attach, logs -f)
        self.release_lock = threading.Lock()
        self.pids_refusals_seen = 0
        self.oom_kills_seen = 0
        self.root_id: list[int] | None = None

    @property
    def rw_dir(self) -> Path:
        return self.dir / "rw"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def log_path(self) -> Path:
        return self.dir / "log.jsonl"

    def subject(self) -> dict:
        # "system": the host's own terminal, which the browser shows apart from the
        # student's containers.
        if self.config.system:
            return {"container": self.id, "name": self.name, "system": True}
        return {"container": self.id, "name": self.name}


def resolve_argv(config: ContainerConfig, image: Image) -> list[str]:
    image_config = image.config.get("config", {})
    entrypoint = config.entrypoint if config.entrypoint is not None else (image_config.get("Entrypoint") or [])
    cmd = config.cmd if config.cmd else (image_config.get("Cmd") or [] if config.entrypoint is None else [])
    return list(entrypoint) + list(cmd)


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in list(base) + list(extra):
        key, _, value = item.partition("=")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


class Runtime:
    """Starts, watches and cleans up containers for one engine."""

    def __init__(self, state_dir: Path, bus: EventBus, cgroups: CgroupDriver,
                 uid_base: int = 100000, uid_count: int = 65536, host: str = "",
                 log_limit: int = 16 * MiB, idmap_dir: Path | None = None):
        self.state_dir = state_dir
        self.bus = bus
        self.cgroups = cgroups
        self.host = host
        self.uid_base = uid_base
        self.log_limit = log_limit
        self.id_map = f"0 {uid_base} {uid_count}"
        self.zygote = ZygoteClient(self._on_exit)
        bpf = lockdown.build_seccomp_filter()
        self.zygote.request("configure", seccomp_bpf=bpf.hex())
        reply, fds = self.zygote.request("userns", uid_map=self.id_map, gid_map=self.id_map)
        self.userns_fd = fds[0]
        self.idmap_dir = idmap_dir or state_dir / "idmap"
        self.empty_layer = state_dir / "empty-layer"
        self.empty_layer.mkdir(exist_ok=True)
        self._idmapped: dict[Path, Path] = {}
        self._idmap_count = 0
        self._idmap_lock = threading.Lock()
        self._processes: dict[str, tuple[Container, Process]] = {}
        self._lock = threading.Lock()

    def emit(self, kind: str, container: Container, at: float | None = None, **detail) -> None:
        self.bus.emit(kind, container.subject(), detail, host=self.host, at=at)

    # ------------------------------------------------------------------ start

    def start(self, c: Container, on_output: OutputListener | None = None) -> Process:
        """The whole start, in order; on failure everything made so far is undone."""
        process = Process(c.id, c.config.tty, c.argv)
        process.listeners = c.listeners  # attached clients may have subscribed before the start
        if on_output:
            process.listeners.append(on_output)
        c.process = process
        try:
            self.create_cgroup(c)
            self.mount_writable_layer(c)
            self.mount_rootfs(c)
            self.spawn_helper(c, process)
        except Exception as exc:
            step = getattr(exc, "step", None) or "start"
            self.emit("container.failed", c, step=step, error=str(exc))
            self.release(c)
            if isinstance(exc, ContainerError):
                raise
            raise ContainerError(str(exc), step) from exc
        c.state = "running"
        c.started_at = time.time()
        if c.config.timeout:
            timer = threading.Timer(c.config.timeout, self.time_out, (c,))
            timer.daemon = True
            timer.start()
        self.await_exec(c, process)
        return process

    def await_exec(self, c: Container, process: Process) -> None:
        """Returns once the process runs its own program; raises if that failed.

        Until then PID 1 is still building the container (mounts, pivot_root):
        nothing may join it, and a failed execve must reach the caller.
        """
        if not process.started.wait(30):
            self.kill_all(c)
            raise ContainerError("the process did not start within 30 s", "process.exec")
        if process.error:
            process.done.wait(10)
            code = process.status.code if process.status else 125
            step, _, message = process.error.partition(": ")
            raise ContainerError(message, step, code)

    def create_cgroup(self, c: Container) -> None:
        memory = None
        if c.config.memory:
            memory = c.config.memory + c.config.writable_size + WRITABLE_SLACK
        limits = Limits(memory_bytes=memory, pids=c.config.pids_limit, cpus=c.config.cpus)
        c.cgroup = self.cgroups.create(c.id, limits)
        self.emit("cgroup.created", c, driver=self.cgroups.name, name=c.cgroup.name,
                  procs=c.cgroup.procs_files(), written=c.cgroup.limits_written(),
                  memory_bytes=c.config.memory, writable_layer_bytes=c.config.writable_size,
                  pids=c.config.pids_limit, cpus=c.config.cpus)

    def mount_writable_layer(self, c: Container) -> None:
        c.rw_dir.mkdir(parents=True, exist_ok=True)
        size = c.config.writable_size
        inodes = max(1024, size // 4096)
        options = f"size={size},nr_inodes={inodes},mode=0700"
        linux.mount("tmpfs", c.rw_dir, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, options)
        upper = c.rw_dir / "upper"
        upper.mkdir(mode=0o755)
        # The container's root owns its writable layer: that is what makes "/"
        # show as root inside and lets container root create files in it.
        os.chown(upper, self.uid_base, self.uid_base)
        (c.rw_dir / "work").mkdir(mode=0o700)
        self.emit("mount.tmpfs", c, target=str(c.rw_dir), options=options,
                  upper=str(upper), owner=f"{self.uid_base}:{self.uid_base}")

    def mount_rootfs(self, c: Container) -> None:
        layers = [self.idmapped_layer(p) for p in c.image.layers] or [self.empty_layer]
        lower = ":".join(str(p) for p in reversed(layers))  # overlay wants the top first
        options = (f"lowerdir={lower},upperdir={c.rw_dir / 'upper'},"
                   f"workdir={c.rw_dir / 'work'},index=off,metacopy=off")
        if len(options) > 4000:
            raise ContainerError(f"image {c.image.name} has too many layers ({len(layers)}) "
                                "for one overlay mount's options", "mount.overlay")
        c.rootfs.mkdir(exist_ok=True)
        linux.mount("overlay", c.rootfs, "overlay", 0, options)
        root = os.stat(c.rootfs)
        c.root_id = [root.st_dev, root.st_ino]  # what an exec must find as "/"
        self.emit("mount.overlay", c, target=str(c.rootfs), lowerdir=[str(p) for p in layers],
                  layers=[str(p) for p in c.image.layers], upperdir=str(c.rw_dir / "upper"),
                  workdir=str(c.rw_dir / "work"), idmapped=bool(c.image.layers))

    def idmapped_layer(self, layer: Path) -> Path:
        """The layer seen through the container's uid map, mounted once and shared.

        On disk a layer is owned by host root; inside the user namespace host root
        would show as ``nobody``. An idmapped mount shifts it without copying.
        """
        with self._idmap_lock:
            mounted = self._idmapped.get(layer)
            if mounted:
                return mounted
            self._idmap_count += 1
            target = self.idmap_dir / str(self._idmap_count)
            target.mkdir(parents=True, exist_ok=True)
            fd = linux.open_tree(layer, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_RECURSIVE)
            try:
                linux.mount_setattr(fd, linux.MOUNT_ATTR_IDMAP | linux.MOUNT_ATTR_RDONLY, self.userns_fd)
                linux.move_mount(fd, target)
            finally:
                os.close(fd)
            self._idmapped[layer] = target
            return target

    def forget_layer(self, layer: Path) -> None:
        """Unmounts a removed layer's idmapped view (nothing runs on it any more)."""
        with self._idmap_lock:
            target = self._idmapped.pop(layer, None)
        if target is not None:
            linux.umount(target, linux.MNT_DETACH)

    def prepare_volume(self, mount: Mount) -> int:
        """A detached mount of a host directory for PID 1 to attach.

        The host directory is opened here, as host root, so the container's root
        never needs to traverse host paths. It is *not* idmapped: on disk, what
        container root writes belongs to the mapped uid (as with Docker's
        userns-remap), and files of host root show as ``nobody`` inside. Idmapping
        it would make container root host root on those files — setuid bits included.
        """
        source = Path(mount.source)
        if not source.is_dir():
            raise ContainerError(f"volume source {mount.source} is not a directory on the host",
                                 "volume.mounted")
        fd = linux.open_tree(source, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_RECURSIVE)
        attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
        if mount.readonly:
            attrs |= linux.MOUNT_ATTR_RDONLY
        try:
            linux.mount_setattr(fd, attrs)
        except OSError:
            os.close(fd)
            raise
        return fd

    def spawn_helper(self, c: Container, process: Process) -> None:
        fds, keep, close_after = self.stdio_fds(process)
        mounts = []
        try:
            for i, m in enumerate(c.config.mounts):
                fd = self.prepare_volume(m)
                close_after.append(fd)
                fds[f"volume{i}"] = fd
                mounts.append({"source": m.source, "target": m.target, "readonly": m.readonly,
                               "fd": f"volume{i}"})
            image_config = c.image.config.get("config", {})
            spec = {
                "cgroup_procs": c.cgroup.procs_files(),
                "uid_map": self.id_map, "gid_map": self.id_map,
                "rootfs": str(c.rootfs),
                "hostname": c.hostname,
                "mounts": mounts,
                "argv": c.argv,
                "env": c.env,
                "cwd": c.config.workdir or image_config.get("WorkingDir") or "/",
                "user": c.config.user or image_config.get("User") or "0",
                "tty": c.config.tty,
            }
            if not c.argv:
                raise ContainerError("no command specified (the image has no CMD)", "process.exec", 125)
            self.launch(c, process, "start", spec, fds, keep)
        finally:
            for fd in close_after:
                os.close(fd)

    def stdio_fds(self, process: Process) -> tuple[dict, dict, list[int]]:
        """fds for the child, fds we keep, and child ends we close once it has them."""
        fds: dict[str, int] = {}
        keep: dict[str, int] = {}
        close_after: list[int] = []
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        fds["status"], keep["status"] = status_w, status_r
        close_after.append(status_w)
        if process.tty:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds["console"] = theirs.detach()
            keep["console_socket"] = ours.detach()
            close_after.append(fds["console"])
        else:
            for name in ("stdout", "stderr"):
                r, w = os.pipe2(os.O_CLOEXEC)
                fds[name], keep[name] = w, r
                close_after.append(w)
            r, w = os.pipe2(os.O_CLOEXEC)
            fds["stdin"] = r
            close_after.append(r)
            process.stdin_fd = w
        return fds, keep, close_after

    def launch(self, c: Container, process: Process, op: str, spec: dict,
               fds: dict, keep: dict) -> None:
        with self._lock:
            self._processes[process.id] = (c, process)
        try:
            reply, reply_fds = self.zygote.request(op, fds=fds, id=process.id, spec=spec)
        except ZygoteError as exc:
            with self._lock:
                self._processes.pop(process.id, None)
            for fd in keep.values():
                os.close(fd)
            if process.stdin_fd is not None:
                os.close(process.stdin_fd)
                process.stdin_fd = None
            raise ContainerError(str(exc), exc.step) from None
        process.pid = reply["pid"]
        process.pidfd = reply_fds[0]
        if process.tty:
            sock = socket.socket(fileno=keep.pop("console_socket"))
            try:
                sock.settimeout(10)
                _, got, _, _ = socket.recv_fds(sock, 64, 1)
            except OSError:
                got = []
            finally:
                sock.close()
            if got:
                process.console_fd = got[0]
                keep["console"] = got[0]
        if not process.tty and not (c.config.open_stdin if op == "start" else spec.get("stdin")):
            process.close_stdin()
        pump = threading.Thread(target=self.pump, args=(c, process, keep),
                                name=f"pump-{process.id[:12]}", daemon=True)
        pump.start()

    # ------------------------------------------------------------------ watching

    def pump(self, c: Container, process: Process, fds: dict[str, int]) -> None:
        """Relays the status pipe as events and stdout/stderr as logs, until EOF."""
        selector = selectors.DefaultSelector()
        for name, fd in fds.items():
            if name == "console":
                continue  # registered after the status pipe closes
            selector.register(fd, selectors.EVENT_READ, name)
        oom_fd = None
        cgroup = c.cgroup if process.id == c.id else None
        if cgroup is not None:
            try:
                oom_fd = cgroup.open_oom_notifier()
                selector.register(oom_fd, selectors.EVENT_READ, "oom")
            except OSError as exc:
                log.warning("no OOM notification for %s: %s", c.id, exc)
        buffers = {"status": b""}
        log_file = open(c.log_path, "ab") if process.id == c.id else None
        logged = 0
        open_streams = len([n for n in fds if n != "console"])
        try:
            while open_streams:
                for key, _ in selector.select():
                    name, fd = key.data, key.fd
                    if name == "oom":
                        os.read(fd, 64 * 1024)
                        # The notification comes a fraction of a millisecond
                        # before the kernel counts the kill.
                        deadline = time.monotonic() + 0.05
                        while not self.check_oom(c) and time.monotonic() < deadline:
                            time.sleep(0.002)
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        data = b""  # EIO: every holder of the PTY's other side is gone
                    if not data:
                        selector.unregister(fd)
                        os.close(fd)
                        open_streams -= 1
                        if name == "status":
                            self.on_status_closed(c, process)
                            if process.console_fd is not None and process.error is None:
                                selector.register(process.console_fd, selectors.EVENT_READ, "console")
                                open_streams += 1
                        elif name == "console":
                            process.console_fd = None
                        continue
                    if name == "status":
                        buffers["status"] += data
                        *lines, buffers["status"] = buffers["status"].split(b"\n")
                        for line in lines:
                            self.on_status_line(c, process, line)
                        continue
                    stream = "stdout" if name == "console" else name
                    if log_file and logged < self.log_limit:
                        log_file.write(json.dumps({"stream": stream, "time": time.time(),
                                                   "log": data.decode("utf-8", "replace")}).encode() + b"\n")
                        log_file.flush()
                        logged += len(data)
                        if logged >= self.log_limit:
                            # Output still streams live; the disk copy stops here.
                            self.emit("log.truncated", c, limit_bytes=self.log_limit)
                    for listener in list(process.listeners):
                        try:
                            listener(stream, data)
                        except Exception:
                            log.exception("output listener failed")
        except Exception:
            log.exception("relaying the output of %s", process.id)
        finally:
            try:
                if oom_fd is not None:
                    cgroup.close_oom_notifier()
                selector.close()
                if log_file:
                    log_file.close()
                if process.stdin_fd is not None:
                    os.close(process.stdin_fd)
                    process.stdin_fd = None
            except OSError:
                log.exception("closing the streams of %s", process.id)
            # Whatever happened above, the process must still be finished.
            self._mark(c, process, pumped=True)

    def on_status_line(self, c: Container, process: Process, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("bad status line from %s: %r", process.id, line)
            return
        if "error" in message:
            process.error = f"{message.get('step')}: {message['error']}"
            self.emit("process.failed", c, process=process.id, step=message.get("step"),
                      error=message["error"])
            return
        detail = dict(message.get("detail", {}))
        if process.id != c.id:
            detail["exec"] = process.id
        self.emit(message["kind"], c, at=message.get("time"), **detail)

    def on_status_closed(self, c: Container, process: Process) -> None:
        if process.error is None:
            self.emit("process.started", c, pid=process.pid, argv=process.argv,
                      exec=None if process.id == c.id else process.id,
                      pid_in_container=1 if process.id == c.id else None)
        process.started.set()

    def _on_exit(self, ident: str, pid: int, status: int) -> None:
        self._mark(None, None, ident=ident, raw=status)

    def _mark(self, c: Container | None, process: Process | None, pumped: bool = False,
              ident: str | None = None, raw: int | None = None) -> None:
        """Finishes a process once both its exit status and its output are in."""
        if process is None:
            with self._lock:
                entry = self._processes.get(ident)
            if entry is None:
                log.warning("exit of unknown process %s", ident)
                return
            c, process = entry
        with process._lock:
            if pumped:
                process._pumped = True
            if raw is not None:
                process._exit_raw = raw
            ready = process._pumped and process._exit_raw is not None and not process.done.is_set()
        if ready:
            with self._lock:
                self._processes.pop(process.id, None)
            self.finish(c, process)

    def check_oom(self, c: Container) -> bool:
        # Removing a v1 cgroup also fires the eventfd: trust only the counter.
        if c.cgroup is None:
            return False
        try:
            kills = c.cgroup.oom_kills()
        except OSError:
            return False
        if kills > c.oom_kills_seen:
            c.oom_kills_seen = kills
            self.emit("oom.killed", c, oom_kills=kills, memory_limit=c.config.memory,
                      source=f"{self.cgroups.name} notification")
            return True
        return bool(kills)

    def check_pids(self, c: Container) -> None:
        if c.cgroup is None:
            return
        try:
            refused = c.cgroup.pids_refusals()
        except OSError:
            return
        if refused > c.pids_refusals_seen:
            self.emit("pids.limited", c, refused=refused, new_refusals=refused - c.pids_refusals_seen,
                      pids_limit=c.config.pids_limit)
            c.pids_refusals_seen = refused

    def finish(self, c: Container, process: Process) -> None:
        code, sig = decode_wait_status(process._exit_raw)
        if process.pidfd is not None:
            os.close(process.pidfd)
            process.pidfd = None
        if process.id != c.id:
            process.status = ExitStatus(code, sig, error=process.error)
            self.emit("process.exited", c, exec=process.id, pid=process.pid, exit_code=code,
                      signal=signal.Signals(sig).name if sig else None, error=process.error)
            process.done.set()
            return
        try:
            oom = self.check_oom(c) and sig == signal.SIGKILL
            self.check_pids(c)
            status = ExitStatus(code, sig, oom_killed=oom, timed_out=c.timed_out and not oom,
                                error=process.error)
            process.status = c.status = status
            c.state = "exited"
            c.finished_at = time.time()
            self.emit("process.exited", c, pid=process.pid, exit_code=code,
                      signal=signal.Signals(sig).name if sig else None, oom_killed=status.oom_killed,
                      timed_out=status.timed_out, error=process.error, describe=status.describe(),
                      runtime_seconds=round(c.finished_at - (c.started_at or c.finished_at), 6))
        except Exception as exc:
            log.exception("finishing %s", c.id)
            process.status = c.status = ExitStatus(code, sig, error=f"internal error: {exc}")
            c.state = "exited"
        finally:
            # Waiters learn the exit first; the clean-up follows (remove() waits for it).
            process.done.set()
            c.stopped.set()
        self.release(c)

    def time_out(self, c: Container) -> None:
        if c.state != "running":
            return
        c.timed_out = True
        self.emit("container.timeout", c, seconds=c.config.timeout)
        self.kill_all(c)

    def kill_all(self, c: Container) -> None:
        """SIGKILL PID 1 (which takes its PID namespace with it) and the whole cgroup."""
        if c.process:
            c.process.signal(signal.SIGKILL)
        if c.cgroup is not None:
            try:
                c.cgroup.kill()
            except OSError as exc:
                log.warning("killing cgroup of %s: %s", c.id, exc)

    def sample(self, c: Container) -> dict | None:
        """Live cgroup readings (memory, pids, cpu) of a running container."""
        if c.cgroup is None or c.state != "running":
            return None
        try:
            stats = c.cgroup.stats()
        except OSError:
            return None
        self.emit("cgroup.sampled", c, **stats)
        self.check_pids(c)
        return stats

    # ------------------------------------------------------------------ exec

    def exec(self, c: Container, argv: list[str], env: list[str] | None = None,
             tty: bool = False, workdir: str | None = None, user: str | None = None,
             stdin: bool = False, on_output: OutputListener | None = None) -> Process:
        if (c.state != "running" or c.process is None or not c.process.started.is_set()
                or c.process.error or c.process.done.is_set()):
            raise ContainerError(f"container {c.name} is not running", "exec", 126)
        ident = f"{c.id[:12]}-exec-{os.urandom(4).hex()}"
        process = Process(ident, tty, list(argv))
        if on_output:
            process.listeners.append(on_output)
        c.execs[ident] = process
        fds, keep, close_after = self.stdio_fds(process)
        image_config = c.image.config.get("config", {})
        spec = {
            "cgroup_procs": c.cgroup.procs_files(),
            "target_pid": c.process.pid,
            "root_id": c.root_id,
            "argv": list(argv),
            "env": merge_env(c.env, env or []),
            "cwd": workdir or c.config.workdir or image_config.get("WorkingDir") or "/",
            "user": user or c.config.user or image_config.get("User") or "0",
            "tty": tty,
            "stdin": stdin,
        }
        try:
            self.launch(c, process, "exec", spec, fds, keep)
        finally:
            for fd in close_after:
                os.close(fd)
        self.await_exec(c, process)
        return process

    # ------------------------------------------------------------------ clean-up

    def release(self, c: Container) -> None:
        """Removes the cgroup and the rootfs mount (the writable layer stays until remove)."""
        with c.release_lock:
            self._release(c)

    def _release(self, c: Container) -> None:
        if c.cgroup is not None:
            try:
                c.cgroup.remove()
                self.emit("cgroup.removed", c, name=c.cgroup.name)
            except OSError as exc:
                log.error("removing cgroup %s: %s", c.cgroup.name, exc)
            c.cgroup = None
        if os.path.ismount(c.rootfs):
            linux.umount(c.rootfs, linux.MNT_DETACH)
            self.emit("mount.removed", c, target=str(c.rootfs), what="overlay")

    def remove_writable_layer(self, c: Container) -> None:
        if os.path.ismount(c.rw_dir):
            linux.umount(c.rw_dir, linux.MNT_DETACH)
            self.emit("mount.removed", c, target=str(c.rw_dir), what="writable layer (tmpfs)")
        shutil.rmtree(c.dir, ignore_errors=True)

    def close(self) -> None:
        """Stops the zygote and removes the shared idmapped layer mounts."""
        self.zygote.close()
        with self._idmap_lock:
            for target in self._idmapped.values():
                try:
                    linux.umount(target, linux.MNT_DETACH)
                except OSError as exc:
                    log.warning("unmounting %s: %s", target, exc)
            self._idmapped.clear()
        shutil.rmtree(self.idmap_dir, ignore_errors=True)
        os.close(self.userns_fd)
