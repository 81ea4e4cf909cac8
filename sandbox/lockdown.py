"""The last steps before a container's execve: what the process may still do.

Run in the forked, single-threaded child that is root inside the container's
user namespace, after pivot_root, right before execve. In order:

1. ``close_fds``           every fd from 3 up becomes close-on-exec, so nothing the
                           runtime had open leaks into the container;
2. ``bound_capabilities``  the bounding set shrinks to Docker's 14, so the program
                           execve starts as root gets those and no more;
3. ``set_no_new_privs``    no setuid binary or file capability can add privileges
                           later (and an unprivileged seccomp filter needs it);
4. ``apply_seccomp``       system calls that reach the whole kernel (mount, new
                           namespaces, modules, keyrings, bpf …) answer EPERM.

The seccomp program is compiled once, in the parent, by libseccomp
(``build_seccomp_filter``); the child only hands the finished bytes to the kernel.
Everything is imported here at module load: the child may already live in a
root without Python, where an import would fail.
"""
from __future__ import annotations

import ctypes
import errno
import os

import pyseccomp

from . import linux

# Index = capability number (linux/capability.h); names without "CAP_".
CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL",
    "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
    "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
    "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
CAP_NUMBERS: dict[str, int] = {name: number for number, name in enumerate(CAPABILITIES)}

# What Docker gives a container unless told otherwise (moby's oci/caps/defaults.go).
DOCKER_DEFAULT_CAPS: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
    "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
    "AUDIT_WRITE",
)


def _read_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITIES) - 1


# Read once at import: the child may no longer see the host's /proc.
LAST_CAP: int = _read_last_cap()

_MOUNT_API = ("open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
              "mount_setattr")
# Each of these reaches past the container: the host's mounts, kernel code and
# memory, keyrings, the clock, swap, or a file by handle (which skips path checks).
# ptrace and personality stay allowed, as in Docker's profile on current kernels.
DENIED_SYSCALLS: dict[str, int] = {
    **{name: errno.EPERM for name in (
        "mount", "umount2", "pivot_root", "unshare", "setns", *_MOUNT_API,
        "bpf", "perf_event_open", "userfaultfd",
        "keyctl", "add_key", "request_key",
        "kexec_load", "kexec_file_load", "init_module", "finit_module",
        "delete_module", "reboot", "swapon", "swapoff",
        "open_by_handle_at", "name_to_handle_at",
        "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
        "quotactl", "quotactl_fd", "syslog", "vhangup", "iopl", "ioperm",
        "lookup_dcookie",
        # Docker has refused io_uring since 25.0: it bypasses seccomp entirely.
        "io_uring_setup", "io_uring_enter", "io_uring_register",
        # Reaching into another process: Docker allows them only with CAP_SYS_PTRACE.
        "kcmp", "pidfd_getfd", "process_madvise",
    )},
    # clone3 passes its flags in a struct seccomp can't read; ENOSYS makes libc
    # fall back to clone, whose flags the filter below can check.
    "clone3": errno.ENOSYS,
}

# clone(2) with any of these in its flags (arg 0 on x86_64 and arm64) is refused.
CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": linux.CLONE_NEWNS, "CLONE_NEWCGROUP": linux.CLONE_NEWCGROUP,
    "CLONE_NEWUTS": linux.CLONE_NEWUTS, "CLONE_NEWIPC": linux.CLONE_NEWIPC,
    "CLONE_NEWUSER": linux.CLONE_NEWUSER, "CLONE_NEWPID": linux.CLONE_NEWPID,
    "CLONE_NEWNET": linux.CLONE_NEWNET,
}

# vsock ignores network namespaces: on a VM it reaches the hypervisor.
AF_VSOCK = 40

SECCOMP_RULES: int = len(DENIED_SYSCALLS) + len(CLONE_NAMESPACE_FLAGS) + 1
_SOCK_FILTER_SIZE = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }


def build_seccomp_filter() -> bytes:
    """Compiles the container's seccomp program; returns the raw BPF instructions.

    Run in the parent, once: libseccomp is slow to load and compile, and the
    bytes can be handed to every container.
    """
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name, err in DENIED_SYSCALLS.items():
        flt.add_rule(pyseccomp.ERRNO(err), name)
    for flag in CLONE_NAMESPACE_FLAGS.values():
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone",
                     pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "socket", pyseccomp.Arg(0, pyseccomp.EQ, AF_VSOCK))
    # An anonymous memory file: no name on disk, gone when closed, and unlike a
    # pipe it can't fill up and block the export.
    fd = os.memfd_create("glassbox-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as out:
        flt.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % _SOCK_FILTER_SIZE:
        raise RuntimeError(f"libseccomp exported {len(program)} bytes, not whole BPF instructions")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def apply_seccomp(bpf: bytes) -> None:
    """Installs a compiled program on this process (no_new_privs must be set first)."""
    if not bpf or len(bpf) % _SOCK_FILTER_SIZE:
        raise ValueError(f"a seccomp program is whole 8-byte instructions, got {len(bpf)} bytes")
    code = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // _SOCK_FILTER_SIZE, ctypes.addressof(code))
    linux.prctl(linux.PR_SET_SECCOMP, linux.SECCOMP_MODE_FILTER, ctypes.addressof(prog))


def cap_name(number: int) -> str:
    return CAPABILITIES[number] if number < len(CAPABILITIES) else f"CAP_{number}"


def cap_mask(names) -> int:
    """The bit mask of capabilities given by name ("CHOWN" or "CAP_CHOWN")."""
    mask = 0
    for name in names:
        key = name.upper().removeprefix("CAP_")
        if key not in CAP_NUMBERS:
            raise ValueError(f"unknown capability {name!r}")
        mask |= 1 << CAP_NUMBERS[key]
    return mask


def bound_capabilities(keep=DOCKER_DEFAULT_CAPS) -> list[str]:
    """Leaves only ``keep`` in the bounding and inheritable sets; clears ambient.

    Returns the names dropped from the bounding set.
    """
    keep_mask = cap_mask(keep)
    dropped = []
    for number in range(LAST_CAP + 1):
        if not keep_mask >> number & 1:
            try:
                linux.prctl(linux.PR_CAPBSET_DROP, number)
            except PermissionError as exc:
                raise PermissionError(exc.errno, "dropping capabilities from the bounding set needs "
                                      "CAP_SETPCAP: lock down before switching to a non-root user "
                                      "(setresuid is still allowed afterwards)") from exc
            dropped.append(cap_name(number))
    # A root execve's new permitted set is bounding | inheritable: trim both.
    effective, permitted, inheritable = linux.capget()
    if inheritable & ~keep_mask:
        linux.capset(effective, permitted, inheritable & keep_mask)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    return dropped


def set_no_new_privs() -> None:
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)


def close_fds() -> None:
    """Marks every fd from 3 up close-on-exec: only stdin, stdout, stderr cross execve."""
    linux.close_range_cloexec(3)


def lock_down(bpf: bytes, keep_caps=DOCKER_DEFAULT_CAPS) -> dict:
    """The whole step, in order; returns the detail for the runtime's event."""
    close_fds()
    dropped = bound_capabilities(keep_caps)
    set_no_new_privs()
    apply_seccomp(bpf)
    kept = _DEFAULT_KEPT if keep_caps is DOCKER_DEFAULT_CAPS else \
        [cap_name(n) for n in range(LAST_CAP + 1) if cap_mask(keep_caps) >> n & 1]
    return {
        "caps_kept": kept,
        "caps_dropped": len(dropped),
        "no_new_privs": True,
        "seccomp": {"denied": _DENIED_SORTED, "rules": SECCOMP_RULES},
        "fds": "close-on-exec from 3",
    }


# Computed once, not in every container's PID 1 (each page a fresh child touches is copied).
_DEFAULT_KEPT = [cap_name(n) for n in range(LAST_CAP + 1) if cap_mask(DOCKER_DEFAULT_CAPS) >> n & 1]
_DENIED_SORTED = sorted(DENIED_SYSCALLS)
