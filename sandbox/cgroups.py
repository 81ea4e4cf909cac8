"""cgroup drivers: one container's limits, membership, OOM signal and clean-up.

Two drivers with one interface, chosen by ``detect()`` from what the machine
mounts: ``cgroupfs-v1`` (a directory per controller, as on hybrid hosts) and
``cgroupfs-v2`` (one unified tree, as on most current hosts). Every container
gets a group named after it under this engine's own parent group (``root``),
so a crashed daemon's leftovers can be found and removed by name alone.

All file access goes through ``CgroupFiles`` so tests can stand in for the
kernel (a fake tree in a temporary directory, a write that fails with EBUSY).
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import re
import signal
import time
from collections.abc import Callable

log = logging.getLogger("glassbox.cgroups")

# v1 controllers a container is placed in. Others (cpuset, devices, freezer,
# name=systemd …) are left alone: joining them buys the lessons nothing.
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_USEC = 100_000
# The leaf that a v2 parent's own processes move to, so that the parent may
# delegate controllers ("no internal processes"); docker-in-docker calls it init.
V2_DAEMON_LEAF = "glassbox-daemon"
KILL_TIMEOUT = 2.0
RMDIR_TIMEOUT = 1.0

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass
class Limits:
    memory_bytes: int | None = None  # swap is always 0, so the limit is what it says
    pids: int | None = None
    cpus: float | None = None

    def validate(self) -> None:
        if self.memory_bytes is not None and (not isinstance(self.memory_bytes, int)
                                              or self.memory_bytes <= 0):
            raise ValueError(f"memory limit must be a positive number of bytes, got {self.memory_bytes!r}")
        if self.pids is not None and (not isinstance(self.pids, int) or self.pids <= 0):
            raise ValueError(f"pids limit must be a positive whole number, got {self.pids!r}")
        if self.cpus is not None and not (isinstance(self.cpus, (int, float))
                                          and self.cpus * CPU_PERIOD_USEC >= 1000):
            # The kernel refuses CFS quotas below 1 ms with a bare EINVAL.
            raise ValueError(f"cpus must be at least 0.01, got {self.cpus!r}")

    def cpu_quota_usec(self) -> int:
        assert self.cpus is not None
        return int(self.cpus * CPU_PERIOD_USEC)


def check_name(name: str, what: str = "cgroup name") -> str:
    # Names become path components; refuse anything that could walk elsewhere
    # or shadow a cgroup interface file.
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("cgroup."):
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '.' and '-', "
                         "starting with a letter, digit or '_' (and not 'cgroup.')")
    return name


class CgroupFiles:
    """The file operations done on cgroupfs. Tests subclass it to play the kernel."""

    def read(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def write(self, path: str, value: str) -> None:
        # One write() per value: cgroupfs parses each write as a whole value,
        # and a buffered writer could split it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, f"{os.strerror(e.errno)} writing {value!r}", path) from e

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def subdirs(self, path: str) -> list[str]:
        try:
            with os.scandir(path) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.events, pids.events, cpu.stat, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_limit(text: str) -> int | None:
    """A limit file's value, None when unlimited ("max", or v1's page-rounded LONG_MAX)."""
    words = text.split()
    if not words or words[0] in ("max", "-1"):
        return None
    value = int(words[0])
    return None if value >= 2**63 - 1 - os.sysconf("SC_PAGE_SIZE") else value


def _pids_in(files: CgroupFiles, directory: str) -> set[int]:
    try:
        return {int(p) for p in files.read(os.path.join(directory, "cgroup.procs")).split()}
    except FileNotFoundError:
        return set()


def _tree_bottom_up(files: CgroupFiles, directory: str) -> list[str]:
    """A group and its descendants, deepest first, so rmdir can go in this order.

    A container with its own cgroup namespace may make child groups; those have
    to go before their parent does.
    """
    out: list[str] = []
    for sub in files.subdirs(directory):
        out.extend(_tree_bottom_up(files, os.path.join(directory, sub)))
    out.append(directory)
    return out


class Cgroup:
    """One container's cgroup: a directory per controller (v1) or one directory (v2)."""

    name: str

    def __init__(self, name: str, dirs: dict[str, str], files: CgroupFiles,
                 limits_written: dict[str, str] | None = None):
        self.name = name
        # controller -> directory; co-mounted controllers share a directory.
        self.dirs = dirs
        self.files = files
        self._limits_written = dict(limits_written or {})
        self._notifier_fds: list[int] = []

    # --- membership ---------------------------------------------------------

    def directories(self) -> list[str]:
        return list(dict.fromkeys(self.dirs.values()))

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.directories()]

    def add(self, pid: int) -> None:
        for path in self.procs_files():
            self.files.write(path, str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for top in self.directories():
            for d in _tree_bottom_up(self.files, top):
                found |= _pids_in(self.files, d)
        return found

    def kill(self) -> None:
        self._kill_loop(time.monotonic() + KILL_TIMEOUT)

    def _kill_loop(self, deadline: float) -> None:
        # Without a freezer, a process can fork between our read and our
        # signal; looping until the group reads empty catches the new ones.
        while True:
            seen = self.pids()
            if not seen:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(errno.ETIMEDOUT,
                                   f"cgroup {self.name} still has processes {sorted(seen)} "
                                   f"after SIGKILL for {KILL_TIMEOUT:.0f} s")
            _kill_members(seen, self.pids)
            time.sleep(0.005)

    def remove(self) -> None:
        """Kill what is left, then rmdir every directory; a missing one is fine.

        An OOM notifier stays open: someone may be waiting on it (v1 wakes it
        on removal). Its owner closes it with ``close_oom_notifier()``.
        """
        if self.pids():
            self.kill()
        for top in self.directories():
            for d in _tree_bottom_up(self.files, top):
                _rmdir_retrying(self.files, d)

    # --- what the kernel reports -------------------------------------------

    def oom_kills(self) -> int:
        raise NotImplementedError

    def open_oom_notifier(self) -> int:
        raise NotImplementedError

    def close_oom_notifier(self) -> None:
        while self._notifier_fds:
            os.close(self._notifier_fds.pop())

    def pids_refusals(self) -> int:
        """Forks refused by pids.max (the ``max`` line of pids.events)."""
        d = self.dirs.get("pids")
        if d is None:
            return 0
        try:
            return parse_keyed(self.files.read(os.path.join(d, "pids.events"))).get("max", 0)
        except FileNotFoundError:
            return 0

    def stats(self) -> dict:
        raise NotImplementedError

    def limits_written(self) -> dict[str, str]:
        return dict(self._limits_written)

    def _read_int(self, controller: str, filename: str) -> int | None:
        d = self.dirs.get(controller)
        if d is None:
            return None
        try:
            return int(self.files.read(os.path.join(d, filename)).split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _read_limit(self, controller: str, filename: str) -> int | None:
        d = self.dirs.get(controller)
        if d is None:
            return None
        try:
            return parse_limit(self.files.read(os.path.join(d, filename)))
        except FileNotFoundError:
            return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.directories()!r})"


def _kill_members(seen: set[int], current: Callable[[], set[int]]) -> None:
    # A pid read from cgroup.procs may exit and be reused by an unrelated
    # process before we signal it. Pin each with a pidfd, then re-read the
    # group: a pinned pid still listed is the member itself, and a pidfd
    # signal can never reach a recycled pid.
    pinned: dict[int, int] = {}
    try:
        for pid in seen:
            try:
                pinned[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                pass
        still = current()
        for pid, fd in pinned.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        for fd in pinned.values():
            os.close(fd)


def _rmdir_retrying(files: CgroupFiles, path: str) -> None:
    # Right after the last member dies the kernel may still count it (it is
    # exiting, or v1 is taking the group offline): EBUSY for a moment.
    deadline = time.monotonic() + RMDIR_TIMEOUT
    while True:
        try:
            files.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise OSError(e.errno, f"cannot remove cgroup: {os.strerror(e.errno)}", path) from e
            time.sleep(0.01)


class CgroupV1(Cgroup):
    def oom_kills(self) -> int:
        try:
            return parse_keyed(self.files.read(self._memory_file("memory.oom_control"))).get("oom_kill", 0)
        except FileNotFoundError:
            return 0

    def open_oom_notifier(self) -> int:
        """An eventfd the kernel signals when this group hits an OOM.

        Removing the group also signals it (the kernel tells every listener
        the group is gone), so a reader must re-read ``oom_kills()`` before
        calling a wake-up an OOM. The signal comes as the kernel starts its
        OOM handling, a fraction of a millisecond before ``oom_kill`` counts
        the kill: read the count once the container's process is reaped
        (the count is raised before the victim's SIGKILL is sent).
        """
        if self._notifier_fds:
            return self._notifier_fds[0]
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            # The registration holds a reference to oom_control's file only
            # while this fd is open, so it lives as long as the eventfd.
            ofd = os.open(self._memory_file("memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(efd)
            raise
        self._notifier_fds = [efd, ofd]
        try:
            self.files.write(self._memory_file("cgroup.event_control"), f"{efd} {ofd}")
        except OSError:
            self.close_oom_notifier()
            raise
        return efd

    def stats(self) -> dict:
        usage_ns = self._read_int("cpuacct", "cpuacct.usage")
        return {
            "memory_bytes": self._read_int("memory", "memory.usage_in_bytes"),
            "memory_limit_bytes": self._read_limit("memory", "memory.limit_in_bytes"),
            "pids": self._read_int("pids", "pids.current"),
            "pids_limit": self._read_limit("pids", "pids.max"),
            "cpu_usec": None if usage_ns is None else usage_ns // 1000,
        }

    def _memory_file(self, filename: str) -> str:
        return os.path.join(self.dirs["memory"], filename)


class CgroupV2(Cgroup):
    def kill(self) -> None:
        directory = self.directories()[0]
        kill_file = os.path.join(directory, "cgroup.kill")
        # cgroup.kill (5.14+) kills the whole subtree at once, forks included,
        # so the loop below only waits; on older kernels it does the killing.
        if self.files.exists(kill_file):
            self.files.write(kill_file, "1")
        self._kill_loop(time.monotonic() + KILL_TIMEOUT)

    def oom_kills(self) -> int:
        try:
            return parse_keyed(self.files.read(self._file("memory.events"))).get("oom_kill", 0)
        except FileNotFoundError:
            return 0

    def open_oom_notifier(self) -> int:
        """An inotify fd that turns readable whenever memory.events changes.

        memory.events also changes on ``high`` and ``max`` events that are
        not kills, so a reader must re-read ``oom_kills()`` on each wake-up.
        """
        if self._notifier_fds:
            return self._notifier_fds[0]
        path = self._file("memory.events")
        if not self.files.exists(path):
            raise OSError(errno.ENOENT, "no memory.events: the memory controller is not enabled "
                          "for this cgroup, so there is no OOM to watch", path)
        self._notifier_fds = [inotify_modify_fd(path)]
        return self._notifier_fds[0]

    def stats(self) -> dict:
        cpu_usec = None
        try:
            cpu_usec = parse_keyed(self.files.read(self._file("cpu.stat"))).get("usage_usec")
        except FileNotFoundError:
            pass
        return {
            "memory_bytes": self._read_int("memory", "memory.current"),
            "memory_limit_bytes": self._read_limit("memory", "memory.max"),
            "pids": self._read_int("pids", "pids.current"),
            "pids_limit": self._read_limit("pids", "pids.max"),
            "cpu_usec": cpu_usec,
        }

    def _file(self, filename: str) -> str:
        return os.path.join(self.directories()[0], filename)


IN_MODIFY = 0x2
_libc: ctypes.CDLL | None = None


def inotify_modify_fd(path: str) -> int:
    """A non-blocking inotify fd watching ``path`` for IN_MODIFY.

    cgroup2 files that report events (memory.events, cgroup.events) announce
    changes as modifications, which is the kernel's documented way to wait on
    them; the os module has no inotify, hence ctypes.
    """
    global _libc
    if _libc is None:
        # Not ctypes.util.find_library: that forks ldconfig.
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = _libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"inotify_init1: {os.strerror(e)}")
    if _libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
        e = ctypes.get_errno()
        os.close(fd)
        raise OSError(e, f"inotify_add_watch: {os.strerror(e)}", path)
    return fd


class CgroupDriver:
    """Creates, finds and removes container groups under one parent group."""

    name: str
    version: int
    root: str

    def __init__(self, root: str, files: CgroupFiles | None = None):
        self.root = check_name(root, "cgroup root name")
        self.files = files or CgroupFiles()

    def root_dirs(self) -> dict[str, str]:
        """controller -> the root group's directory."""
        raise NotImplementedError

    def create(self, name: str, limits: Limits) -> Cgroup:
        raise NotImplementedError

    def get(self, name: str) -> Cgroup:
        raise NotImplementedError

    def list(self) -> list[str]:
        names: set[str] = set()
        for d in set(self.root_dirs().values()):
            names.update(self.files.subdirs(d))
        return sorted(names)

    def remove_all(self) -> list[str]:
        """Kill and remove every container group, then the root group itself.

        Used at start-up to clear what a crashed daemon left, and at shutdown.
        """
        removed = []
        for name in self.list():
            self.get(name).remove()
            removed.append(name)
        for d in dict.fromkeys(self.root_dirs().values()):
            _rmdir_retrying(self.files, d)
        return removed

    def _make_group(self, name: str, dirs: dict[str, str],
                    write_limits: Callable[[Callable[[str, str], None]], None]) -> dict[str, str]:
        """mkdir every directory and write the limits; on failure undo all of it."""
        made: list[str] = []
        written: dict[str, str] = {}

        def write(path: str, value: str) -> None:
            self.files.write(path, value)
            written[path] = value

        try:
            for d in dict.fromkeys(dirs.values()):
                try:
                    self.files.mkdir(d)
                except FileExistsError as e:
                    raise FileExistsError(errno.EEXIST, f"cgroup {name} already exists "
                                          "(a leftover? remove_all() clears them)", d) from e
                made.append(d)
            write_limits(write)
        except BaseException:
            for d in reversed(made):
                try:
                    _rmdir_retrying(self.files, d)
                except OSError:
                    log.exception("could not undo cgroup %s", d)
            raise
        return written


def parse_mountinfo(text: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) for every mount in a mountinfo text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        # The kernel escapes space, tab, newline and backslash as \ooo.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        mounts.append((point, rest[0], set(rest[2].split(","))))
    return mounts


def v1_mounts(mountinfo: str, under: str = "/") -> dict[str, str]:
    """controller -> mount point for v1 hierarchies below ``under``.

    cpu and cpuacct may be one mount ("cpu,cpuacct") or two; either way each
    controller maps to the directory that holds its files.
    """
    under = os.path.normpath(under)
    found: dict[str, str] = {}
    for point, fstype, options in parse_mountinfo(mountinfo):
        if fstype != "cgroup" or not (point == under or point.startswith(under.rstrip("/") + "/")):
            continue
        for controller in V1_CONTROLLERS:
            if controller in options:
                found.setdefault(controller, point)
    return found


class CgroupfsV1Driver(CgroupDriver):
    name = "cgroupfs-v1"
    version = 1

    def __init__(self, root: str, mounts: dict[str, str] | None = None,
                 files: CgroupFiles | None = None):
        super().__init__(root, files)
        if mounts is None:
            with open("/proc/self/mountinfo") as f:
                mounts = v1_mounts(f.read())
        if "memory" not in mounts:
            raise RuntimeError("cgroup v1: the memory controller is not mounted "
                               "(no 'cgroup' mount with the memory option in /proc/self/mountinfo)")
        self.mounts = {c: mounts[c] for c in V1_CONTROLLERS if c in mounts}
        for d in dict.fromkeys(self.root_dirs().values()):
            try:
                self.files.mkdir(d)
            except FileExistsError:
                pass
        # Without hierarchy the root group's accounting wouldn't include its
        # children. Kernels since 5.16 fix it at 1; older ones accept the
        # write only while the group has no children.
        hierarchy = os.path.join(self.root_dirs()["memory"], "memory.use_hierarchy")
        if self.files.exists(hierarchy) and self.files.read(hierarchy).strip() == "0":
            self.files.write(hierarchy, "1")

    def root_dirs(self) -> dict[str, str]:
        return {c: os.path.join(point, self.root) for c, point in self.mounts.items()}

    def _dirs(self, name: str) -> dict[str, str]:
        check_name(name)
        return {c: os.path.join(d, name) for c, d in self.root_dirs().items()}

    def create(self, name: str, limits: Limits) -> Cgroup:
        limits.validate()
        dirs = self._dirs(name)
        for controller, asked in (("pids", limits.pids), ("cpu", limits.cpus)):
            if asked is not None and controller not in dirs:
                raise ValueError(f"a {controller} limit needs the v1 {controller} controller, "
                                 "which is not mounted on this machine")

        def write_limits(write: Callable[[str, str], None]) -> None:
            mem = lambda f: os.path.join(dirs["memory"], f)  # noqa: E731
            if limits.memory_bytes is not None:
                write(mem("memory.limit_in_bytes"), str(limits.memory_bytes))
                # memsw (memory+swap) may not be below memory's limit, so it
                # goes second; equal to it means no swap at all. Absent when
                # the kernel runs without swap accounting.
                if self.files.exists(mem("memory.memsw.limit_in_bytes")):
                    write(mem("memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
            if limits.pids is not None:
                write(os.path.join(dirs["pids"], "pids.max"), str(limits.pids))
            if limits.cpus is not None:
                write(os.path.join(dirs["cpu"], "cpu.cfs_period_us"), str(CPU_PERIOD_USEC))
                write(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"), str(limits.cpu_quota_usec()))

        written = self._make_group(name, dirs, write_limits)
        return CgroupV1(name, dirs, self.files, written)

    def get(self, name: str) -> Cgroup:
        return CgroupV1(name, self._dirs(name), self.files)


class CgroupfsV2Driver(CgroupDriver):
    name = "cgroupfs-v2"
    version = 2

    def __init__(self, root: str, mount: str = "/sys/fs/cgroup",
                 files: CgroupFiles | None = None):
        super().__init__(root, files)
        if self.root == V2_DAEMON_LEAF:
            raise ValueError(f"{V2_DAEMON_LEAF!r} is the daemon's own leaf, not a root name")
        self.mount = mount
        # Where the daemon's processes went, if they had to move (see below).
        self.daemon_leaf: str | None = None
        self._delegate(mount, moving_processes=True)
        root_dir = os.path.join(mount, self.root)
        try:
            self.files.mkdir(root_dir)
        except FileExistsError:
            pass
        self._delegate(root_dir, moving_processes=False)
        # What containers may be limited by: what the root group hands down.
        self.enabled = set(self.files.read(os.path.join(root_dir, "cgroup.subtree_control")).split())

    def _delegate(self, group: str, moving_processes: bool) -> None:
        """Enable memory, pids and cpu for ``group``'s children, where available."""
        available = self.files.read(os.path.join(group, "cgroup.controllers")).split()
        enabled = self.files.read(os.path.join(group, "cgroup.subtree_control")).split()
        wanted = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
        if not wanted:
            return
        request = " ".join("+" + c for c in wanted)
        subtree_control = os.path.join(group, "cgroup.subtree_control")
        for attempt in range(5):
            try:
                self.files.write(subtree_control, request)
                return
            except OSError as e:
                # "No internal processes": a non-root group with members may
                # not hand controllers down. Inside a container with its own
                # cgroup namespace that group is ours and holds the daemon,
                # so move its processes to a leaf and try again (processes
                # started meanwhile need another round).
                if e.errno != errno.EBUSY or not moving_processes or attempt == 4:
                    raise
                self._move_processes_to_leaf(group)

    def _move_processes_to_leaf(self, group: str) -> None:
        leaf = os.path.join(group, V2_DAEMON_LEAF)
        try:
            self.files.mkdir(leaf)
        except FileExistsError:
            pass
        moved = []
        for pid in sorted(_pids_in(self.files, group)):
            try:
                self.files.write(os.path.join(leaf, "cgroup.procs"), str(pid))
                moved.append(pid)
            except ProcessLookupError:
                pass
            except OSError as e:
                if e.errno != errno.ESRCH:
                    raise
        self.daemon_leaf = leaf
        log.info("moved processes %s from %s to %s so it can delegate controllers",
                 moved, group, leaf)

    def root_dirs(self) -> dict[str, str]:
        return {"cgroup": os.path.join(self.mount, self.root)}

    def _dirs(self, name: str) -> dict[str, str]:
        check_name(name)
        d = os.path.join(self.mount, self.root, name)
        # Every controller's files live in the one directory; only those the
        # root group hands down are listed, so stats() skips the others.
        return {"cgroup": d, **{c: d for c in V2_CONTROLLERS if c in self.enabled}}

    def create(self, name: str, limits: Limits) -> Cgroup:
        limits.validate()
        for controller, asked in (("memory", limits.memory_bytes), ("pids", limits.pids),
                                  ("cpu", limits.cpus)):
            if asked is not None and controller not in self.enabled:
                raise ValueError(
                    f"a {controller} limit needs the {controller} controller, which is not enabled in "
                    f"{os.path.join(self.mount, self.root, 'cgroup.subtree_control')} "
                    f"(enabled: {' '.join(sorted(self.enabled)) or 'none'})")
        dirs = self._dirs(name)
        d = dirs["cgroup"]

        def write_limits(write: Callable[[str, str], None]) -> None:
            if limits.memory_bytes is not None:
                write(os.path.join(d, "memory.max"), str(limits.memory_bytes))
                # Absent when the kernel runs without swap accounting.
                if self.files.exists(os.path.join(d, "memory.swap.max")):
                    write(os.path.join(d, "memory.swap.max"), "0")
            if limits.pids is not None:
                write(os.path.join(d, "pids.max"), str(limits.pids))
            if limits.cpus is not None:
                write(os.path.join(d, "cpu.max"), f"{limits.cpu_quota_usec()} {CPU_PERIOD_USEC}")

        written = self._make_group(name, dirs, write_limits)
        return CgroupV2(name, dirs, self.files, written)

    def get(self, name: str) -> Cgroup:
        return CgroupV2(name, self._dirs(name), self.files)


def _is_cgroup2_mount(fs: str, mountinfo: str) -> bool:
    fs = os.path.normpath(fs)
    return any(point == fs and fstype == "cgroup2" for point, fstype, _ in parse_mountinfo(mountinfo))


def detect(root: str, fs: str = "/sys/fs/cgroup", files: CgroupFiles | None = None,
           mountinfo: str | None = None) -> CgroupDriver:
    """The driver for what this machine mounts at ``fs``.

    v2 when ``fs`` is a cgroup2 tree offering the memory controller; else v1
    when a v1 memory hierarchy is mounted under ``fs``. GLASSBOX_CGROUP=v1|v2
    forces the choice (v2 then also accepts a tree without memory, whose
    groups can hold processes but take no limits).
    """
    files = files or CgroupFiles()
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    forced = os.environ.get("GLASSBOX_CGROUP", "")
    if forced not in ("", "v1", "v2"):
        raise RuntimeError(f"GLASSBOX_CGROUP={forced!r}: use v1, v2, or leave it unset")

    controllers_file = os.path.join(fs, "cgroup.controllers")
    is_v2 = _is_cgroup2_mount(fs, mountinfo) or files.exists(controllers_file)
    v2_memory = is_v2 and "memory" in files.read(controllers_file).split()
    mounts = v1_mounts(mountinfo, under=fs)

    if forced == "v2" or (not forced and v2_memory):
        if not is_v2:
            raise RuntimeError(f"GLASSBOX_CGROUP=v2 but {fs} is not a cgroup2 mount")
        return CgroupfsV2Driver(root, mount=fs, files=files)
    if forced == "v1" or (not forced and "memory" in mounts):
        if "memory" not in mounts:
            raise RuntimeError(f"GLASSBOX_CGROUP=v1 but no cgroup v1 memory hierarchy is mounted under {fs}")
        return CgroupfsV1Driver(root, mounts=mounts, files=files)
    raise RuntimeError(
        f"no usable cgroups: {fs} is not a cgroup2 mount with the memory controller "
        f"({'controllers: ' + files.read(controllers_file).strip() if is_v2 else 'not cgroup2'}), "
        f"and no cgroup v1 memory hierarchy is mounted under it. Containers need memory limits; "
        f"mount cgroup2 at {fs} (or cgroup v1 memory at {fs}/memory), or set GLASSBOX_CGROUP.")
