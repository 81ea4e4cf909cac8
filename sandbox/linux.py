"""Thin, fork-safe wrappers over the Linux system calls the runtime needs.

Everything here is loaded at import time (libc through ctypes, never
``ctypes.util.find_library``, which forks ``ldconfig``), so that a helper
process that has already pivoted into a container's root never imports.
Each wrapper raises ``OSError`` with the real errno and the call's name.
"""
from __future__ import annotations

import ctypes
import os
import platform

libc = ctypes.CDLL("libc.so.6", use_errno=True)

# Clone / unshare flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "mnt": CLONE_NEWNS, "cgroup": CLONE_NEWCGROUP, "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC, "user": CLONE_NEWUSER, "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
}

# mount(2) flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# The new mount API.
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000

# prctl(2).
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

CLOSE_RANGE_CLOEXEC = 1 << 2

_MACHINE = platform.machine()
# Old system calls have per-architecture numbers; everything from 424 on is shared.
_OLD_NUMBERS = {
    "x86_64": {"pivot_root": 155, "setns": 308, "unshare": 272},
    "aarch64": {"pivot_root": 41, "setns": 268, "unshare": 97},
}
SYSCALLS = dict(_OLD_NUMBERS.get(_MACHINE, _OLD_NUMBERS["x86_64"]))
SYSCALLS.update(open_tree=428, move_mount=429, fsopen=430, fsconfig=431,
                fsmount=432, pidfd_open=434, clone3=435, close_range=436,
                mount_setattr=442)

libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                       ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong, ctypes.c_ulong]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(result: int, name: str, *what: object) -> int:
    if result < 0:
        err = ctypes.get_errno()
        detail = " ".join(str(w) for w in what if w is not None)
        raise OSError(err, f"{name}({detail}): {os.strerror(err)}")
    return result


def _b(path: str | bytes | os.PathLike | None) -> bytes | None:
    if path is None:
        return None
    return os.fsencode(path)


def mount(source: str | None, target: str | os.PathLike, fstype: str | None,
          flags: int = 0, data: str | None = None) -> None:
    _check(libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           "mount", source, target, fstype, data)


def umount(target: str | os.PathLike, flags: int = 0) -> None:
    _check(libc.umount2(_b(target), flags), "umount2", target)


def unshare(flags: int) -> None:
    _check(libc.syscall(SYSCALLS["unshare"], ctypes.c_int(flags)), "unshare", hex(flags))


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc.syscall(SYSCALLS["setns"], ctypes.c_int(fd), ctypes.c_int(nstype)),
           "setns", nstype)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc.syscall(SYSCALLS["pivot_root"], _b(new_root), _b(put_old)),
           "pivot_root", new_root, put_old)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc.sethostname(raw, len(raw)), "sethostname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(option, arg2, arg3, arg4, arg5), "prctl", option)


def open_tree(path: str | os.PathLike | None, flags: int, dirfd: int = -100) -> int:
    """Returns an fd for a (detached, with OPEN_TREE_CLONE) copy of a mount."""
    raw = _b(path) if path is not None else b""
    return _check(libc.syscall(SYSCALLS["open_tree"], ctypes.c_int(dirfd), raw,
                               ctypes.c_uint(flags)), "open_tree", path)


def move_mount(from_fd: int, to_path: str | os.PathLike, to_dirfd: int = -100) -> None:
    _check(libc.syscall(SYSCALLS["move_mount"], ctypes.c_int(from_fd), b"",
                        ctypes.c_int(to_dirfd), _b(to_path),
                        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount", to_path)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(fd: int, attr_set: int, userns_fd: int = 0, recursive: bool = True) -> None:
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(libc.syscall(SYSCALLS["mount_setattr"], ctypes.c_int(fd), b"",
                        ctypes.c_uint(flags), ctypes.byref(attr),
                        ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr", hex(attr_set))


def close_range_cloexec(first: int = 3) -> None:
    """Marks every fd from ``first`` up close-on-exec (they vanish at execve)."""
    _check(libc.syscall(SYSCALLS["close_range"], ctypes.c_uint(first),
                        ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC)),
           "close_range", first)


def namespace_inodes(pid: int | str = "self", names=("user", "mnt", "uts", "ipc", "net",
                                                     "pid", "cgroup")) -> dict:
    """The inode numbers that identify a process's namespaces (as ``lsns`` shows)."""
    out = {}
    for name in names:
        try:
            out[name] = os.stat(f"/proc/{pid}/ns/{name}").st_ino
        except OSError:
            pass
    return out


# capget(2)/capset(2), used to trim the inheritable set: the bounding set alone
# doesn't stop a root execve from keeping inheritable capabilities.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_NR_CAPGET = {"x86_64": 125, "aarch64": 90}.get(_MACHINE, 125)
_NR_CAPSET = {"x86_64": 126, "aarch64": 91}.get(_MACHINE, 126)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.syscall(_NR_CAPGET, ctypes.byref(header), ctypes.byref(data)), "capget")
    return tuple(getattr(data[0], f) | (getattr(data[1], f) << 32)
                 for f in ("effective", "permitted", "inheritable"))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(libc.syscall(_NR_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")
