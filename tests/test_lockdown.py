"""The lock-down step, checked from outside a real child process.

Each test forks; the child locks itself down and then either execs busybox's
shell (whose output is what we assert on) or, staying in Python, reports what
raw system calls answered. The child first moves into a private mount
namespace, so even a filter that failed could not mount over the host's /mnt.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os

import pytest

from sandbox import linux, lockdown

BUSYBOX = "/bin/busybox"
SIGCHLD = 17
NR_CLONE = {"x86_64": 56, "aarch64": 220}[os.uname().machine]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespace, capabilities)")


@pytest.fixture(scope="module")
def bpf() -> bytes:
    return lockdown.build_seccomp_filter()


def _in_child(body) -> tuple[int, str]:
    """Runs ``body(write_fd)`` in a forked child; returns (exit code, all it wrote)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(r)
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            body(w)
            code = 0
        except BaseException as exc:  # report, never return into pytest
            os.write(w, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def _shell(bpf: bytes | None, script: str) -> tuple[int, str, int]:
    """Execs ``sh -c script`` (after lock_down unless bpf is None).

    Before that, the child opens /dev/null as an inheritable fd; the fd number
    is returned and available to the script as $LEAK.
    """
    leak_fd = []

    def body(w: int) -> None:
        fd = os.open("/dev/null", os.O_RDONLY)
        os.set_inheritable(fd, True)
        leak_fd.append(fd)
        os.write(w, f"leak={fd}\n".encode())
        os.dup2(w, 1)
        os.dup2(w, 2)
        if bpf is not None:
            lockdown.lock_down(bpf)
        os.execve(BUSYBOX, ["sh", "-c", script], {"PATH": "/bin:/usr/bin", "LEAK": str(fd)})

    code, out = _in_child(body)
    first, _, rest = out.partition("\n")
    return code, rest, int(first.removeprefix("leak="))


def _status(out: str) -> dict[str, str]:
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":\t")
        if sep:
            fields[key] = value.strip()
    return fields


def test_seccomp_program_is_whole_bpf_instructions(bpf):
    assert isinstance(bpf, bytes)
    assert len(bpf) > 0 and len(bpf) % 8 == 0
    assert len(bpf) // 8 <= 4096  # BPF_MAXINSNS


def test_capability_table_matches_the_kernel_numbers():
    assert len(lockdown.CAPABILITIES) == 41
    assert lockdown.CAP_NUMBERS["CHOWN"] == 0
    assert lockdown.CAP_NUMBERS["SYS_ADMIN"] == 21
    assert lockdown.CAP_NUMBERS["CHECKPOINT_RESTORE"] == 40
    # Docker's default set, as `docker run busybox grep CapBnd /proc/self/status` shows it.
    assert lockdown.cap_mask(lockdown.DOCKER_DEFAULT_CAPS) == 0xA80425FB
    assert lockdown.cap_mask(["CAP_CHOWN", "kill"]) == 1 | 1 << 5
    with pytest.raises(ValueError, match="CAP_NOPE"):
        lockdown.cap_mask(["CAP_NOPE"])


def test_locked_down_shell_cannot_mount_or_make_namespaces(bpf):
    code, out, _ = _shell(bpf, """
        mount -t tmpfs none /mnt; echo "mount=$?"
        unshare -U true; echo "unshare_user=$?"
        unshare -n true; echo "unshare_net=$?"
    """)
    assert code == 0, out
    # busybox mount words EPERM as "permission denied (are you root?)".
    assert "mount: permission denied" in out and "mount=1" in out, out
    assert "unshare_user=1" in out and "unshare_net=1" in out, out
    assert out.count("Operation not permitted") == 2, out


def test_locked_down_shell_has_docker_caps_no_new_privs_and_seccomp(bpf):
    code, out, _ = _shell(bpf, "cat /proc/self/status")
    assert code == 0, out
    status = _status(out)
    want = f"{lockdown.cap_mask(lockdown.DOCKER_DEFAULT_CAPS):016x}"
    assert status["CapBnd"] == want
    assert status["CapEff"] == want  # root's execve: effective = bounding set
    assert int(status["CapInh"], 16) & ~int(want, 16) == 0
    assert status["CapAmb"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


def test_fd_opened_before_lock_down_does_not_survive_execve(bpf):
    script = 'if [ -e /proc/self/fd/$LEAK ]; then echo "fd $LEAK open"; else echo "fd $LEAK closed"; fi'
    # Without the lock-down the inheritable fd does reach the shell: the check is real.
    code, out, fd = _shell(None, script + "; grep Seccomp: /proc/self/status")
    assert code == 0 and f"fd {fd} open" in out and "Seccomp:\t0" in out, out
    code, out, fd = _shell(bpf, script + "; ls /proc/self/fd")
    assert code == 0 and f"fd {fd} closed" in out, out


def test_python_child_gets_enosys_for_clone3_eperm_for_namespaces_and_can_fork(bpf):
    def body(w: int) -> None:
        detail = lockdown.lock_down(bpf)
        seen = {"detail": detail}
        libc = linux.libc

        ret = libc.syscall(ctypes.c_long(435), None, ctypes.c_size_t(0))
        seen["clone3"] = errno.errorcode.get(ctypes.get_errno()) if ret < 0 else ret

        # This process never exec'd, so it still holds CAP_SYS_ADMIN: only
        # seccomp stands between it and mount.
        for name, call in (("unshare", lambda: linux.unshare(linux.CLONE_NEWUSER)),
                           ("mount", lambda: linux.mount("none", "/mnt", "tmpfs"))):
            try:
                call()
                seen[name] = "allowed"
            except OSError as exc:
                seen[name] = errno.errorcode[exc.errno]

        # Raw clone(2) asking for a new mount namespace: must be refused by flags.
        ret = libc.syscall(ctypes.c_long(NR_CLONE), ctypes.c_ulong(linux.CLONE_NEWNS | SIGCHLD),
                           None, None, None, None)
        if ret == 0:
            os._exit(0)
        if ret > 0:
            os.waitpid(ret, 0)
            seen["clone_newns"] = "allowed"
        else:
            seen["clone_newns"] = errno.errorcode.get(ctypes.get_errno())

        pid = os.fork()  # plain clone, no namespace flags
        if pid == 0:
            os._exit(7)
        seen["fork_exit"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        # glibc's posix_spawn tries clone3 first and falls back to clone on ENOSYS.
        pid = os.posix_spawn(BUSYBOX, ["true"], {})
        seen["spawn_exit"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os.write(w, json.dumps(seen).encode())

    code, out = _in_child(body)
    assert code == 0, out
    seen = json.loads(out)
    assert seen["clone3"] == "ENOSYS"
    assert seen["unshare"] == "EPERM"
    assert seen["mount"] == "EPERM"
    assert seen["clone_newns"] == "EPERM"
    assert seen["fork_exit"] == 7
    assert seen["spawn_exit"] == 0
    detail = seen["detail"]
    assert sorted(detail["caps_kept"]) == sorted(lockdown.DOCKER_DEFAULT_CAPS)
    assert detail["caps_dropped"] == lockdown.LAST_CAP + 1 - 14
    assert detail["no_new_privs"] is True
    assert "mount" in detail["seccomp"]["denied"] and "ptrace" not in detail["seccomp"]["denied"]
    assert detail["seccomp"]["denied"] == sorted(detail["seccomp"]["denied"])
    assert detail["seccomp"]["rules"] == len(lockdown.DENIED_SYSCALLS) + 7 + 1  # + AF_VSOCK
    assert detail["fds"] == "close-on-exec from 3"


def test_user_switch_works_after_lock_down_but_not_before(bpf):
    def body(w: int) -> None:
        lockdown.lock_down(bpf)
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        os.write(w, f"uid={os.getuid()} gid={os.getgid()}".encode())

    code, out = _in_child(body)
    assert (code, out) == (0, "uid=65534 gid=65534")

    def too_late(w: int) -> None:
        os.setresuid(65534, 65534, 65534)  # drops every capability, CAP_SETPCAP too
        try:
            lockdown.lock_down(bpf)
        except PermissionError as exc:
            os.write(w, str(exc).encode())

    code, out = _in_child(too_late)
    assert code == 0 and "lock down before switching to a non-root user" in out, out
