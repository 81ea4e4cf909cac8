"""The zygote: a single-threaded process that forks every container.

The daemon is threaded, and namespace work must never happen in a threaded
process (``unshare(CLONE_NEWNS)`` refuses, and a fork there copies locks other
threads held). So the daemon starts this process once, before it needs it, and
asks it over a SOCK_SEQPACKET socket to start containers and execs. It pays
Python's start-up once; each container then costs one ``fork``.

Per container the process tree is::

    zygote (host root, host namespaces, child subreaper, reaps everything)
      └─ helper    joins the cgroup, unshares the user namespace, waits for the
         │         zygote to write its uid/gid maps, unshares the rest, forks, exits
         └─ init   PID 1 of the new PID namespace: mounts, pivot_root, lock-down, execve

The helper exits as soon as PID 1 exists, so PID 1 is re-parented to the zygote
(a subreaper), which reaps it and reports the raw wait status to the daemon.
Only the zygote reaps. Steps report to the daemon as JSON lines on a status pipe
that is close-on-exec: its end of file means ``execve`` succeeded.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import time

from sandbox import linux
from sandbox.linux import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS,
                           CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS, MS_BIND, MS_NODEV,
                           MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT)
from sandbox import lockdown

MAX_MESSAGE = 1 << 18
MAX_FDS = 64
CONTAINER_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWCGROUP
UNSHARED_NAMES = ["mnt", "uts", "ipc", "net", "pid", "cgroup"]

# Docker's masked and read-only /proc and /sys paths (moby oci/defaults.go).
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class StepError(Exception):
    """A step failed inside the helper or PID 1; ``step`` names it for the user."""

    def __init__(self, step: str, message: str, exit_code: int = 125):
        super().__init__(message)
        self.step = step
        self.exit_code = exit_code


# --------------------------------------------------------------------------- messages

class ProtocolError(ValueError):
    """A message that can't cross the zygote's socket."""


def send_message(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE or len(fds) > MAX_FDS:
        raise ProtocolError(f"request too large for the zygote ({len(data)} bytes, {len(fds)} fds; "
                            f"limits {MAX_MESSAGE} and {MAX_FDS})")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive_message(sock: socket.socket) -> tuple[dict | None, list[int]]:
    data, fds, flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        if data:
            raise ProtocolError("a truncated message arrived")
        return None, []
    return json.loads(data), fds


class StatusPipe:
    """The write end of a container's status pipe: one JSON line per step."""

    def __init__(self, fd: int):
        self.fd = fd

    def step(self, kind: str, **detail) -> None:
        line = json.dumps({"kind": kind, "time": time.time(), "detail": detail},
                          default=str).encode() + b"\n"
        try:
            os.write(self.fd, line)  # < PIPE_BUF, so atomic among several writers
        except OSError:
            pass

    def fail(self, step: str, message: str) -> None:
        line = json.dumps({"error": message, "step": step}).encode() + b"\n"
        try:
            os.write(self.fd, line)
        except OSError:
            pass


# --------------------------------------------------------------------------- the zygote

class Zygote:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.seccomp_bpf = b""
        self.children: dict[int, str] = {}     # pid -> container or exec id we report on
        self.helpers: set[int] = set()          # our helpers: their exits are nobody's news
        self.early_exits: dict[int, int] = {}   # reaped before we knew whose it was
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def serve(self) -> None:
        note_changed_signals()
        # Every page a forked child writes is copied; the collector would write
        # to every object it visits. Keep it off the objects we have now.
        gc.freeze()
        send_message(self.sock, {"op": "ready", "pid": os.getpid()})
        while True:
            ready, _, _ = select.select([self.sock, self.wake_r], [], [])
            if self.wake_r in ready:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
                self.reap()
            if self.sock in ready:
                try:
                    message, fds = receive_message(self.sock)
                except (ProtocolError, ValueError) as exc:
                    print(f"glassbox zygote: dropped a request: {exc}", file=sys.stderr)
                    continue
                if message is None:
                    self.shut_down()
                    return
                self.handle(message, fds)

    def handle(self, message: dict, fds: list[int]) -> None:
        op = message.get("op")
        try:
            if op == "configure":
                self.seccomp_bpf = bytes.fromhex(message["seccomp_bpf"])
                send_message(self.sock, {"op": "configured", "id": message["id"]})
            elif op == "userns":
                fd = make_user_namespace(message["uid_map"], message["gid_map"])
                send_message(self.sock, {"op": "userns", "id": message["id"]}, [fd])
                os.close(fd)
            elif op in ("start", "exec"):
                self.start(message, fds)
            elif op == "kill_all":
                self.kill_all()
            else:
                send_message(self.sock, {"op": "failed", "id": message.get("id"),
                                         "error": f"unknown op {op!r}"})
        except Exception as exc:  # report, never die: other containers depend on us
            send_message(self.sock, {"op": "failed", "id": message.get("id"),
                                     "step": getattr(exc, "step", op), "error": str(exc)})
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def start(self, message: dict, fds: list[int]) -> None:
        spec = message["spec"]
        named = dict(zip(message["fds"], fds))
        if message["op"] == "exec" and spec["target_pid"] not in self.children:
            raise StepError("exec", "the container is not running")
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            gc.disable()  # a child lives for milliseconds: no collection, fewer copied pages
            os.close(sync_r)
            os.close(go_w)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.sock.close()
            if message["op"] == "start":
                run_helper(spec, named, sync_w, go_r, self.seccomp_bpf)
            else:
                run_exec_helper(spec, named, sync_w, self.seccomp_bpf)
            os._exit(125)  # not reached
        os.close(sync_w)
        os.close(go_r)
        self.helpers.add(pid)
        status = StatusPipe(named["status"])
        try:
            if message["op"] == "start":
                reply = read_line(sync_r)
                if reply != "unshared":
                    raise_helper_error(reply)
                write_id_maps(pid, spec["uid_map"], spec["gid_map"])
                status.step("userns.mapped", pid=pid, uid_map=spec["uid_map"],
                            gid_map=spec["gid_map"], setgroups="allow",
                            inode=os.stat(f"/proc/{pid}/ns/user").st_ino)
                os.write(go_w, b"go\n")
            reply = read_line(sync_r)
            if not reply.startswith("pid "):
                raise_helper_error(reply)
            child = int(reply.split()[1])
        finally:
            os.close(sync_r)
            os.close(go_w)
        self.children[child] = message["id"]
        pidfd = os.pidfd_open(child)
        send_message(self.sock, {"op": "started", "id": message["id"], "pid": child}, [pidfd])
        os.close(pidfd)
        if child in self.early_exits:
            self.report_exit(child, self.early_exits.pop(child))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.report_exit(pid, status)
            elif pid in self.helpers:
                self.helpers.discard(pid)
            else:
                # A helper, or a PID 1 whose helper's report we haven't read yet.
                self.early_exits[pid] = status
                if len(self.early_exits) > 10_000:
                    self.early_exits.clear()

    def report_exit(self, pid: int, status: int) -> None:
        ident = self.children.pop(pid)
        send_message(self.sock, {"op": "exited", "id": ident, "pid": pid, "status": status})

    def kill_all(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def shut_down(self) -> None:
        """The daemon is gone: its containers go with it."""
        self.kill_all()


def read_line(fd: int, timeout: float = 10.0) -> str:
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return "error timeout: the helper did not answer"
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode() or "error eof: the helper died"
        data += chunk
    return data.decode().strip()


def raise_helper_error(reply: str) -> None:
    if reply.startswith("error "):
        step, _, message = reply[6:].partition(" ")
        raise StepError(step, message)
    raise StepError("helper", reply)


def write_id_maps(pid: int, uid_map: str, gid_map: str) -> None:
    # Each map in one write(); a second write is EPERM. We are privileged in the
    # parent namespace, so "setgroups deny" isn't needed (and would break setgroups([])).
    for name, value in (("uid_map", uid_map), ("gid_map", gid_map)):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def make_user_namespace(uid_map: str, gid_map: str) -> int:
    """An fd for a user namespace with these maps (for idmapped mounts)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(w)
        try:
            linux.unshare(CLONE_NEWUSER)
            os.read(r, 1)  # block until the parent has taken its fd
        finally:
            os._exit(0)
    os.close(r)
    try:
        for _ in range(2000):  # wait for the unshare to have happened
            if os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user"):
                break
            select.select([], [], [], 0.0005)
        write_id_maps(pid, uid_map, gid_map)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(w)
        os.waitpid(pid, 0)


# --------------------------------------------------------------------------- helper

def run_helper(spec: dict, fds: dict, sync_w: int, go_r: int, bpf: bytes) -> None:
    """Joins the cgroup, unshares, forks PID 1 and exits (never returns)."""
    status = StatusPipe(fds["status"])
    try:
        join_cgroup(spec["cgroup_procs"])
        status.step("helper.spawned", pid=os.getpid(), cgroup=spec["cgroup_procs"])
        # While still host root: from here on the container's root uid can't
        # traverse the state dir's parents, so every later path is relative.
        os.chdir(spec["rootfs"])
        linux.unshare(CLONE_NEWUSER)
        os.write(sync_w, b"unshared\n")
        if read_line(go_r) != "go":
            os._exit(125)
        become_root()
        linux.prctl(linux.PR_SET_DUMPABLE, 1)
        linux.unshare(CONTAINER_NAMESPACES)
        pid = os.fork()
        if pid == 0:
            os.close(sync_w)
            run_init(spec, fds, status, bpf)
        os.write(sync_w, f"pid {pid}\n".encode())
        os._exit(0)
    except BaseException as exc:
        helper_failed(status, sync_w, exc, "helper")


def helper_failed(status: StatusPipe, sync_w: int, exc: BaseException, default_step: str) -> None:
    """Tells the daemon (status pipe) and the zygote (sync pipe) which step failed; exits."""
    step = getattr(exc, "step", default_step)
    status.fail(step, str(exc))
    os.write(sync_w, f"error {step} {exc}\n".encode())
    os._exit(125)


def join_cgroup(procs_files: list[str]) -> None:
    me = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, me)
        finally:
            os.close(fd)


def become_root() -> None:
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)


# --------------------------------------------------------------------------- PID 1

def host_pid_of_self() -> int | None:
    """This process's PID as the host numbers it. getpid() says 1 in the new PID
    namespace; /proc is still the host's here (the container's own is mounted later), and
    its "self" is named in the host's numbers."""
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return None


def run_init(spec: dict, fds: dict, status: StatusPipe, bpf: bytes) -> None:
    """PID 1 of the container: the runtime's in-namespace steps, then execve."""
    step = "init"
    try:
        # Reported from here: the new PID namespace exists once it has PID 1.
        status.step("ns.unshared", flags=["CLONE_NEW" + n.upper() for n in
                                          ("ns", "uts", "ipc", "net", "pid", "cgroup")],
                    inodes=linux.namespace_inodes("self"), pid_in_namespace=1,
                    host_pid=host_pid_of_self())
        step = "mount.private"
        make_mounts_private(status)
        step = "rootfs.bind"
        bind_rootfs_onto_itself()
        step = "mount.proc"
        mount_proc_and_sys(status)
        step = "mount.dev"
        mount_dev(status)
        step = "volume.mounted"
        mount_volumes(spec.get("mounts", []), fds, status)
        step = "paths.masked"
        mask_paths(status)
        step = "hostname.set"
        linux.sethostname(spec["hostname"])
        status.step("hostname.set", hostname=spec["hostname"])
        step = "rootfs.pivoted"
        pivot_into_rootfs(status)
        step = "net.loopback"
        bring_up_loopback(status)
        step = "process"
        run_process(spec, fds, status, bpf, pid_namespace_init=True)
    except BaseException as exc:
        status.fail(getattr(exc, "step", step), str(exc))
        os._exit(getattr(exc, "exit_code", 125))


def make_mounts_private(status: StatusPipe) -> None:
    # Nothing we mount from here on may propagate back to the host (or the daemon).
    linux.mount(None, "/", None, MS_REC | MS_PRIVATE)
    status.step("mount.private", flags="MS_REC|MS_PRIVATE", target="/")


def bind_rootfs_onto_itself() -> None:
    # Mounts inherited from a more privileged mount namespace are locked, and
    # pivot_root into a locked mount is EINVAL: bind the overlay onto itself
    # (a copy owned by this namespace), then step into the copy.
    tree = linux.open_tree(".", linux.OPEN_TREE_CLONE | linux.AT_RECURSIVE | linux.OPEN_TREE_CLOEXEC)
    linux.move_mount(tree, ".")
    os.fchdir(tree)
    os.close(tree)


def safe_dir(path: str, create: bool = True) -> str:
    """``path`` relative to the new root, as a directory with no symlink on the way.

    Nothing else runs in this root yet, so checking each component with lstat
    is enough to keep a hostile image from redirecting a mount onto, say, the
    host's /etc through a symlink.
    """
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StepError("mount", f"mount target {path!r} may not contain '..'")
    current = "."
    for part in parts:
        current = f"{current}/{part}"
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(current, 0o755)
            continue
        if not (st.st_mode & 0o170000 == 0o040000):
            raise StepError("mount", f"mount target {path!r}: {current[1:]} is not a directory "
                                     "(a symlink or file in the image)")
    return current


def safe_file(path: str) -> str:
    parent, _, name = path.strip("/").rpartition("/")
    where = f"{safe_dir(parent, create=False)}/{name}"
    st = os.lstat(where)
    if st.st_mode & 0o170000 == 0o120000:
        raise StepError("mount", f"{path} is a symlink")
    return where


def mount_proc_and_sys(status: StatusPipe) -> None:
    # Before pivot_root: afterwards a fresh proc is EPERM (the kernel only lets a
    # user namespace mount proc where a full proc is already visible).
    proc = safe_dir("/proc")
    linux.mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    status.step("mount.proc", target="/proc", fstype="proc", flags="nosuid,nodev,noexec")
    sys_dir = safe_dir("/sys")
    linux.mount("sysfs", sys_dir, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    status.step("mount.sys", target="/sys", fstype="sysfs", flags="ro,nosuid,nodev,noexec")


def mount_dev(status: StatusPipe) -> None:
    dev = safe_dir("/dev")
    linux.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name in DEVICES:
        # mknod is EPERM in a user namespace: bind the host's device nodes instead.
        node = f"{dev}/{name}"
        os.close(os.open(node, os.O_CREAT | os.O_WRONLY, 0o666))
        linux.mount(f"/dev/{name}", node, None, MS_BIND)
    os.mkdir(f"{dev}/pts", 0o755)
    linux.mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm", 0o1777)
    linux.mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "mode=1777,size=65536k")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    status.step("mount.dev", target="/dev", devices=list(DEVICES), devpts="newinstance",
                shm="/dev/shm")


def mount_volumes(mounts: list[dict], fds: dict, status: StatusPipe) -> None:
    for m in mounts:
        target = safe_dir(m["target"])
        linux.move_mount(fds[m["fd"]], target)
        status.step("volume.mounted", source=m["source"], target=m["target"],
                    readonly=m["readonly"])


def mask_paths(status: StatusPipe) -> None:
    masked, readonly = [], []
    for path in MASKED_PATHS:
        try:
            where = safe_file(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # not on this kernel
        if os.path.isdir(where):
            linux.mount("tmpfs", where, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                        "size=0")
        else:
            linux.mount("/dev/null", where, None, MS_BIND)
        masked.append(path)
    for path in READONLY_PATHS:
        try:
            where = safe_file(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        linux.mount(where, where, None, MS_BIND | MS_REC)
        linux.mount(None, where, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
                    | MS_NODEV | MS_NOEXEC)
        readonly.append(path)
    status.step("paths.masked", masked=masked, readonly=readonly)


def pivot_into_rootfs(status: StatusPipe) -> None:
    # pivot_root(".", ".") stacks the old root on top of the new one; unmounting
    # "." then detaches the old root, leaving only the container's files.
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")
    status.step("rootfs.pivoted", new_root="/", old_root="detached (MNT_DETACH)",
                method="pivot_root")


def bring_up_loopback(status: StatusPipe) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    status.step("net.loopback", interfaces=["lo"], state="up")


# --------------------------------------------------------------------------- the process

def run_process(spec: dict, fds: dict, status: StatusPipe, bpf: bytes,
                pid_namespace_init: bool) -> None:
    """Shared by PID 1 and exec: stdio, user, lock-down, execve."""
    setup_stdio(spec, fds)
    cwd = spec.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        if not pid_namespace_init:
            raise StepError("chdir", f"working directory {cwd} does not exist", 126)
        os.makedirs(cwd, 0o755, exist_ok=True)
        os.chdir(cwd)
    uid, gid, groups = resolve_user(spec.get("user") or "0")
    # Lock down while still root: dropping from the bounding set needs
    # CAP_SETPCAP, which a switch to another uid takes away.
    detail = lockdown.lock_down(bpf)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    detail.update(uid=uid, gid=gid)
    status.step("lockdown.applied", **detail)
    argv = spec["argv"]
    env = dict(item.split("=", 1) for item in spec.get("env", []) if "=" in item)
    reset_signals()
    try:
        if "/" in argv[0]:
            os.execve(argv[0], argv, env)
        else:
            os.execvpe(argv[0], argv, env)
    except OSError as exc:
        code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        raise StepError("process.exec", f"exec {argv[0]}: {exc.strerror}", code) from None


def reset_signals() -> None:
    """The program starts with default dispositions and nothing blocked.

    Python ignores SIGPIPE and SIGXFSZ; inherited, that would make
    ``yes | head`` spin forever on EPIPE instead of dying as it should.
    """
    for sig in CHANGED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


# Filled in once by the zygote: every signal whose disposition isn't the default
# there (Python's SIGPIPE, SIGXFSZ, SIGINT; whatever the daemon inherited).
CHANGED_SIGNALS: list[int] = [signal.SIGPIPE, signal.SIGXFSZ]


def note_changed_signals() -> None:
    found = {signal.SIGPIPE, signal.SIGXFSZ}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) not in (signal.SIG_DFL, None):
                found.add(sig)
        except (OSError, ValueError):
            pass
    CHANGED_SIGNALS[:] = sorted(found)


def setup_stdio(spec: dict, fds: dict) -> None:
    if spec.get("tty"):
        console = open_console(fds["console"])
        os.setsid()
        fcntl.ioctl(console, termios.TIOCSCTTY, 0)
        for target in (0, 1, 2):
            os.dup2(console, target)
        os.close(console)
        return
    if spec.get("new_session", True):
        os.setsid()
    for target, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        os.dup2(fds[name], target)


def open_console(console_socket: int) -> int:
    """A PTY from the container's own devpts; its master goes back to the daemon."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, struct.pack("I", 0)))[0]
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    sock = socket.socket(fileno=console_socket)
    socket.send_fds(sock, [b"console"], [master])
    sock.detach()
    os.close(master)
    return slave


def resolve_user(user: str) -> tuple[int, int, list[int]]:
    """``user[:group]`` by name or number, read from the container's own files."""
    name, _, group = str(user).partition(":")
    uid = gid = None
    groups: list[int] = []
    passwd = read_db("/etc/passwd")
    if name.isdigit():
        uid = int(name)
        for fields in passwd:
            if fields[2] == name:
                gid = int(fields[3])
                break
    else:
        for fields in passwd:
            if fields[0] == name:
                uid, gid = int(fields[2]), int(fields[3])
                break
        if uid is None:
            raise StepError("user", f"unable to find user {name}: no matching entries in passwd file", 126)
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [int(f[2]) for f in read_db("/etc/group") if f[0] == group]
            if not found:
                raise StepError("user", f"unable to find group {group}: no matching entries in group file", 126)
            gid = found[0]
    gid = gid if gid is not None else 0
    for what, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value < 65536:
            raise StepError("user", f"{what} {value} is outside the container's range 0-65535", 126)
    return uid, gid, groups


def read_db(path: str, limit: int = 1 << 20) -> list[list[str]]:
    """The image's passwd or group file, if it is a regular file (not a FIFO,
    not /dev/zero), read up to ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not (os.fstat(fd).st_mode & 0o170000 == 0o100000):
            return []
        data = os.read(fd, limit)
    finally:
        os.close(fd)
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line.count(":") >= 3]


# --------------------------------------------------------------------------- exec

def run_exec_helper(spec: dict, fds: dict, sync_w: int, bpf: bytes) -> None:
    """Enters a running container's cgroup and namespaces, forks, exits."""
    status = StatusPipe(fds["status"])
    try:
        # The cgroup first: after entering the mount namespace the host's
        # cgroup files are out of sight, and the process would escape its limits.
        join_cgroup(spec["cgroup_procs"])
        target = spec["target_pid"]
        ns_fds = {name: os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                  for name in ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup")}
        # Never skip the user namespace: that would leave a real host root inside.
        linux.setns(ns_fds.pop("user"), CLONE_NEWUSER)
        become_root()
        linux.prctl(linux.PR_SET_DUMPABLE, 1)
        for name in ("mnt", "pid", "uts", "ipc", "net", "cgroup"):
            linux.setns(ns_fds.pop(name), linux.NAMESPACE_FLAGS[name])
        # Defence in depth: "/" must now be the container's root, never the host's.
        root = os.stat("/")
        if [root.st_dev, root.st_ino] != spec["root_id"]:
            raise StepError("exec", "the container's root filesystem is not in place")
        status.step("ns.entered", target_pid=target, inodes=linux.namespace_inodes("self"))
        pid = os.fork()  # setns to a PID namespace applies to children only
        if pid == 0:
            os.close(sync_w)
            try:
                run_process(spec, fds, status, bpf, pid_namespace_init=False)
            except BaseException as exc:
                status.fail(getattr(exc, "step", "exec"), str(exc))
                os._exit(getattr(exc, "exit_code", 126))
        os.write(sync_w, f"pid {pid}\n".encode())
        os._exit(0)
    except BaseException as exc:
        helper_failed(status, sync_w, exc, "exec")


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    # No PDEATHSIG: when the daemon dies its end of the socket closes, and we
    # take its containers down with us (see shut_down) instead of vanishing.
    Zygote(sock).serve()


if __name__ == "__main__":
    main()
