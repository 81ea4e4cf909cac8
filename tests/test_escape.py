"""Escape attempts: what an untrusted student can try from inside a container.

Every test runs real containers on its own engine (a fresh state dir under
/tmp, closed and removed by the fixture, which also checks that no mount or
cgroup of that engine is left) and asserts on outcomes: the text a container
printed, exit codes, and files on the host left byte-for-byte as they were.

The tests under "fixed findings" began as strict xfails with a reproduction
from a security review, and pass since the fixes.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from sandbox.archive import LayerEntry
from sandbox.engine import Engine, EngineError, cgroup_root_name
from sandbox.images import DEFAULT_PATH, busybox_layer_entries
from sandbox.runtime import ContainerConfig, ContainerError, Mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups, mounts)")

MiB = 1024 * 1024
# Docker's 14 default capabilities as a mask (CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID
# SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP).
DOCKER_CAPS = "00000000a80425fb"


# --------------------------------------------------------------------------- fixtures

def _leftovers(state: Path) -> tuple[list[str], list[str]]:
    root = str(state.resolve())
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(root)]
    name = cgroup_root_name(state)
    groups = [str(c / name) for c in Path("/sys/fs/cgroup").iterdir() if (c / name).exists()]
    return mounts, groups


@pytest.fixture
def esc_engine():
    """An engine of its own; closed, checked for leftovers and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="glassbox-escape-"))
    state = base / "state"
    engine = Engine(state)
    try:
        yield engine
    finally:
        engine.close()
        mounts, groups = _leftovers(state)
        shutil.rmtree(base, ignore_errors=True)
        assert mounts == [], f"mounts left behind: {mounts}"
        assert groups == [], f"cgroups left behind: {groups}"


@pytest.fixture
def host_marker():
    """A file on the host's /tmp with a random name and content: (path, secret)."""
    secret = "host-secret-" + secrets.token_hex(8)
    path = Path("/tmp") / f"glassbox-escape-marker-{secrets.token_hex(6)}"
    path.write_text(secret + "\n")
    os.chmod(path, 0o644)
    try:
        yield path, secret
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def host_dir():
    """An empty host directory (for volumes and hostile symlink targets)."""
    path = Path(tempfile.mkdtemp(prefix="glassbox-escape-dir-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(engine: Engine, cmd, image: str = "busybox", **options):
    """Runs a container to its end: (ExitStatus, everything it printed)."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    options.setdefault("timeout", 60)
    chunks: list[bytes] = []
    status = engine.run(ContainerConfig(image, argv, **options),
                        on_output=lambda _stream, data: chunks.append(data))
    return status, b"".join(chunks).decode(errors="replace")


def start(engine: Engine, argv=("sleep", "60"), **options):
    options.setdefault("timeout", 60)
    c = engine.create(ContainerConfig("busybox", list(argv), **options))
    engine.start(c)
    return c


def exec_in(engine: Engine, c, argv, **options):
    chunks: list[bytes] = []
    process = engine.exec(c, list(argv), on_output=lambda _s, data: chunks.append(data), **options)
    assert process.done.wait(30)
    return process.status, b"".join(chunks).decode(errors="replace")


def status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in text.splitlines()) if v}


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every entry under root: type, mode, owner, size, and content hash or link target."""
    st = os.lstat(root)
    out = {".": (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = None
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                                st.st_mtime_ns, content)
    return out


def make_image(engine: Engine, name: str, replace: dict[str, LayerEntry]) -> None:
    """A busybox-like image where the given paths are replaced (e.g. by symlinks).

    Uses the image store's internal writers: there is no import API yet, and a
    student-built image (Dockerfile, docker load) can contain exactly this.
    """
    entries = [e for e in busybox_layer_entries() if e.path not in replace] + list(replace.values())
    store = engine.images
    with store._lock():
        layer = store._put_layer(entries, mtime=0)
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Env": [DEFAULT_PATH], "Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}, "history": []}
        store._add_refs({name: store._put_image(config, [layer])})


# --------------------------------------------------------------------------- the image's layers

def test_a_container_cannot_modify_the_shared_lower_layer(esc_engine):
    layer = esc_engine.images.get("busybox").layers[0]
    before = tree_digest(layer)
    status, out = run(esc_engine, textwrap.dedent("""\
        echo hacked > /etc/passwd
        echo hacked > /bin/busybox
        echo hacked > /linuxrc
        echo hacked >> /proc/1/exe
        echo hacked > /proc/1/root/bin/ls
        chmod 6777 /bin/sh; chown 1:1 /etc/group; touch /etc /bin
        rm -rf /usr /sbin/init
        echo done
        """))
    assert status.code == 0 and "done" in out
    assert tree_digest(layer) == before, "the layer directory on the host changed"
    # Another container of the same image sees the original files.
    status, out = run(esc_engine, "head -c 4 /bin/busybox | od -An -c | tr -d ' '; head -1 /etc/passwd; "
                                  "ls -d /usr/bin; ls -l /bin/sh | cut -c1-10; busybox true && echo works")
    assert status.code == 0
    assert out.splitlines() == ["177ELF", "root:x:0:0:root:/root:/bin/sh", "/usr/bin",
                                "-rwxr-xr-x", "works"]


# --------------------------------------------------------------------------- processes and fds

def test_no_host_process_is_visible(esc_engine):
    status, out = run(esc_engine, "for p in /proc/[0-9]*; do echo ${p#/proc/}; done; echo $$")
    assert status.code == 0
    assert out.split() == ["1", "1"]  # the shell itself (PID 1), nothing else


def test_containers_cannot_see_or_signal_each_other(esc_engine):
    a = start(esc_engine, hostname="alpha")
    other_pid = a.process.pid  # A's PID 1 as the host numbers it
    status, out = run(esc_engine, f"kill -9 {other_pid}; echo rc=$?; n=0; "
                                  f"for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n; hostname",
                      hostname="beta")
    assert out.splitlines()[-3:] == ["rc=1", "procs=1", "beta"], out
    assert a.state == "running"
    status, out = exec_in(esc_engine, a, ["hostname"])
    assert out == "alpha\n"
    esc_engine.remove(a, force=True)


def test_only_stdin_stdout_stderr_cross_into_the_container(esc_engine):
    # PID 1 is not a shell here (a shell opens fds of its own for pipes and redirections).
    c = start(esc_engine, ["sleep", "60"])
    status, out = exec_in(esc_engine, c, ["ls", "-l", "/proc/1/fd"])
    fds = {line.split()[-3]: line.split()[-1] for line in out.splitlines() if "->" in line}
    assert sorted(fds) == ["0", "1", "2"], out
    assert all(target.startswith("pipe:") for target in fds.values()), out
    # An exec'd process: its stdio, plus the directory ls itself is reading (3).
    status, out = exec_in(esc_engine, c, ["ls", "/proc/self/fd"])
    assert out.split() == ["0", "1", "2", "3"]
    status, out = run(esc_engine, ["ls", "/proc/self/fd"])
    assert out.split() == ["0", "1", "2", "3"]


def test_dev_holds_only_the_minimal_device_set(esc_engine):
    status, out = run(esc_engine, "ls /dev")
    assert sorted(out.split()) == sorted(["fd", "full", "null", "ptmx", "pts", "random", "shm",
                                          "stderr", "stdin", "stdout", "tty", "urandom", "zero"])


# --------------------------------------------------------------------------- privileges

def test_capabilities_are_dockers_default_and_seccomp_is_on(esc_engine):
    status, out = run(esc_engine, "cat /proc/self/status")
    fields = status_fields(out)
    assert fields["CapBnd"] == DOCKER_CAPS
    assert fields["CapEff"] == DOCKER_CAPS and fields["CapPrm"] == DOCKER_CAPS
    assert fields["CapInh"] == "0000000000000000" and fields["CapAmb"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"


def test_exec_gets_the_same_lock_down(esc_engine):
    c = start(esc_engine)
    status, out = exec_in(esc_engine, c, ["cat", "/proc/self/status"])
    fields = status_fields(out)
    assert (fields["CapBnd"], fields["CapEff"], fields["NoNewPrivs"], fields["Seccomp"]) == \
        (DOCKER_CAPS, DOCKER_CAPS, "1", "2")
    assert fields["Uid"].split()[0] == "0"
    status, out = exec_in(esc_engine, c, ["cat", "/proc/self/uid_map"])
    assert out.split() == ["0", "100000", "65536"]  # root inside, never host root


def test_a_non_root_user_has_no_capabilities(esc_engine):
    status, out = run(esc_engine, ["cat", "/proc/self/status"], user="1000")
    fields = status_fields(out)
    assert fields["Uid"].split()[0] == "1000"
    assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000"
    assert fields["CapBnd"] == DOCKER_CAPS


@pytest.mark.parametrize("attempt", [
    "mount -t tmpfs none /mnt",
    "unshare -r true",
    "unshare -n true",
    "unshare -m true",
    "nsenter -t 1 -m true",
    "echo 3 > /proc/sys/vm/drop_caches",
    # Same-value write-backs: harmless even if one got through.
    "cat /proc/sys/kernel/panic_on_oops > /proc/sys/kernel/panic_on_oops",
    "touch /sys/escape",
    "hostname evil",
    "mknod /tmp/sda b 8 0",
    "dmesg",
])
def test_privileged_operations_fail(esc_engine, attempt):
    status, out = run(esc_engine, f"{attempt}; echo rc=$?; grep -c ' /mnt ' /proc/mounts; hostname",
                      hostname="student")
    lines = out.splitlines()
    assert lines[-3] != "rc=0", f"{attempt!r} succeeded: {out}"
    assert lines[-2:] == ["0", "student"]  # nothing mounted on /mnt, hostname unchanged


@pytest.mark.skipif(not os.path.exists("/proc/sysrq-trigger"),
                    reason="the host kernel has no /proc/sysrq-trigger (CONFIG_MAGIC_SYSRQ off)")
def test_sysrq_trigger_is_not_writable(esc_engine):
    # Only ever 'h' (print help to the kernel log): harmless if the write got through.
    status, out = run(esc_engine, "echo h > /proc/sysrq-trigger; echo rc=$?")
    assert "rc=0" not in out


def test_the_host_is_not_reachable_through_proc_root(esc_engine, host_marker):
    path, secret = host_marker
    status, out = run(esc_engine, f"cat /proc/1/root{path}; echo rc=$?; "
                                  f"ls /proc/*/root{path}; echo rc=$?; "
                                  f"cat /proc/self/root{path} /proc/self/cwd{path} {path}; echo rc=$?")
    assert secret not in out
    assert [l for l in out.splitlines() if l.startswith("rc=")] == ["rc=1"] * 3


def test_exec_right_after_start_never_sees_the_host(esc_engine, host_marker, host_dir):
    """Regression (found in review, fixed in 3708ef1): an exec that joined PID 1's
    mount namespace before pivot_root ran in the host's filesystem. A slow start
    (1% of a CPU, many volumes) made the window wide; start must now return only
    after execve, and an exec only then join."""
    path, secret = host_marker
    seen = []
    unsubscribe = esc_engine.bus.subscribe(seen.append)
    try:
        c = start(esc_engine, cpus=0.1, mounts=[Mount(str(host_dir), f"/v{i}") for i in range(20)])
        status, out = exec_in(esc_engine, c, ["/bin/busybox", "cat", str(path)])
    finally:
        unsubscribe()
    assert secret not in out and status.code == 1
    order = [(e.kind, e.detail.get("exec")) for e in seen]
    pid_1_started = order.index(("process.started", None))
    exec_entered = next(i for i, (kind, _) in enumerate(order) if kind == "ns.entered")
    assert pid_1_started < exec_entered, order
    esc_engine.remove(c, force=True)


# --------------------------------------------------------------------------- mount targets

def test_a_volume_target_with_dotdot_is_refused(esc_engine, host_dir):
    with pytest.raises(EngineError, match=r"'\.\.'"):
        esc_engine.create(ContainerConfig("busybox", ["true"], mounts=[Mount(str(host_dir), "/proc/../etc")]))


def test_a_volume_target_through_a_file_is_refused(esc_engine, host_dir):
    status, out = run(esc_engine, ["true"], mounts=[Mount(str(host_dir), "/bin/sh/x")])
    assert status.code == 125
    assert "/bin/sh" in status.error and "not a directory" in status.error
    assert os.listdir(host_dir) == []


def test_a_volume_target_through_an_image_symlink_is_refused(esc_engine, host_dir):
    # /data -> an absolute host path: followed as host root it would land on the host.
    victim = host_dir / "victim"
    victim.mkdir()
    source = host_dir / "source"
    source.mkdir()
    make_image(esc_engine, "evil-data:latest", {"data": LayerEntry.symlink("data", str(victim))})
    status, out = run(esc_engine, ["true"], image="evil-data", mounts=[Mount(str(source), "/data/x")])
    assert status.code == 125
    assert "/data" in status.error and "symlink" in status.error
    assert os.listdir(victim) == [] and os.listdir(source) == []


@pytest.mark.parametrize("where", ["proc", "dev", "sys"])
def test_an_image_with_a_symlinked_proc_dev_or_sys_is_refused(esc_engine, host_dir, where):
    make_image(esc_engine, f"evil-{where}:latest", {where: LayerEntry.symlink(where, str(host_dir))})
    status, out = run(esc_engine, ["true"], image=f"evil-{where}")
    assert status.code == 125
    assert f"/{where}" in status.error and "symlink" in status.error
    assert os.listdir(host_dir) == []


def test_a_volume_on_the_root_is_refused(esc_engine, host_dir):
    try:
        status, out = run(esc_engine, ["true"], mounts=[Mount(str(host_dir), "/")])
    except EngineError:
        return
    assert status.error is not None


# --------------------------------------------------------------------------- bad input

def test_a_missing_command_is_127_and_named(esc_engine):
    status, out = run(esc_engine, ["no-such-command-x"])
    assert status.code == 127 and "no-such-command-x" in status.error
    c = start(esc_engine)
    with pytest.raises(ContainerError, match="no-such-command-y") as info:
        esc_engine.exec(c, ["no-such-command-y"])
    assert info.value.exit_code == 127


def test_a_missing_user_or_group_is_a_clear_error(esc_engine):
    status, out = run(esc_engine, ["true"], user="nosuchuser")
    assert status.code == 126 and "unable to find user nosuchuser" in status.error
    status, out = run(esc_engine, ["true"], user="root:nosuchgroup")
    assert status.code == 126 and "unable to find group nosuchgroup" in status.error
    c = start(esc_engine)
    with pytest.raises(ContainerError, match="unable to find user nosuchuser"):
        esc_engine.exec(c, ["true"], user="nosuchuser")


def test_an_image_without_a_command_is_a_clear_error(esc_engine):
    status, out = run(esc_engine, None, image="scratch")
    assert status.code == 125 and "no command" in status.error


def test_an_invalid_hostname_is_refused(esc_engine):
    for bad in ("a;b", "-x", "a" * 64, "a b", "a\x00b"):
        with pytest.raises(EngineError, match="hostname"):
            esc_engine.create(ContainerConfig("busybox", ["true"], hostname=bad))


def test_an_unreadable_passwd_in_the_image_stays_inside_the_container(esc_engine):
    # /etc/passwd -> /dev/zero: the user lookup reads forever, inside the container's
    # memory cgroup, so only this container pays (see finding L3).
    make_image(esc_engine, "evil-passwd:latest",
               {"etc/passwd": LayerEntry.symlink("etc/passwd", "/dev/zero")})
    # Only a regular file is read (at most 1 MiB): root by number still works,
    # a user by name is simply not found.
    status, out = run(esc_engine, ["true"], image="evil-passwd", memory=16 * MiB, timeout=30)
    assert status.code == 0 and not status.oom_killed
    status, out = run(esc_engine, ["true"], image="evil-passwd", user="nobody", timeout=30)
    assert status.code == 126 and "unable to find user nobody" in status.error
    status, out = run(esc_engine, ["echo", "still fine"])
    assert out == "still fine\n"


@pytest.mark.parametrize("config", [
    dict(cmd=[""]), dict(cmd=["echo", "a\x00b"]), dict(cmd=["true"], user="99999999"),
    dict(cmd=["true"], env=["=x"]),
], ids=["empty-argv0", "nul-byte", "uid-out-of-range", "bad-env-name"])
def test_bad_process_input_is_refused_with_a_clear_error(esc_engine, config):
    try:
        status, out = run(esc_engine, config.pop("cmd"), **config)
    except EngineError:
        return
    assert status.error and not status.error.startswith("net.loopback")


# --------------------------------------------------------------------------- fixed findings

def test_a_volume_does_not_make_container_root_host_root(esc_engine, host_dir):
    (host_dir / "rootfile").write_text("original\n")
    os.chmod(host_dir / "rootfile", 0o644)
    status, out = run(esc_engine, "echo pwned > /v/rootfile; cp /bin/busybox /v/suid; "
                                  "chmod 4755 /v/suid; echo done", mounts=[Mount(str(host_dir), "/v")])
    assert (host_dir / "rootfile").read_text() == "original\n"
    suid = host_dir / "suid"
    assert not (suid.exists() and suid.stat().st_uid == 0 and suid.stat().st_mode & stat.S_ISUID)


def test_an_oversized_command_does_not_take_the_engine_down(esc_engine):
    status, out = run(esc_engine, ["echo", "x" * 70_000])
    status, out = run(esc_engine, ["echo", "next"])
    assert out == "next\n"


def test_container_output_cannot_fill_the_host_disk(esc_engine):
    c = esc_engine.create(ContainerConfig("busybox", ["sh", "-c", "head -c 80000000 /dev/zero | tr '\\0' a"],
                                          timeout=60))
    esc_engine.start(c)
    esc_engine.wait(c, 60)
    assert c.log_path.stat().st_size < 64 * MiB


def test_signal_dispositions_are_reset_for_the_container(esc_engine):
    status, out = run(esc_engine, ["cat", "/proc/self/status"])
    assert status_fields(out)["SigIgn"] == "0000000000000000"


# --------------------------------------------------------------------------- raw system calls

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "vsock") == 0) {
        /* Only creates the socket: nothing is connected to. */
        int s = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
        printf("vsock=%s\n", s < 0 ? strerror(errno) : "created");
        return 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
        long ret;
        /* The 32-bit ABI's unshare(CLONE_NEWUSER): number 310 under int 0x80. */
        __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(310), "b"(0x10000000) : "memory");
        printf("i386 unshare returned %ld\n", ret);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    printf(WIFSIGNALED(st) ? "i386 killed by %d\n" : "i386 exit %d\n",
           WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_dir():
    """A static probe binary (compiled here) for a read-only volume."""
    if os.uname().machine != "x86_64" or not shutil.which("gcc"):
        pytest.skip("needs gcc on x86_64 to build the syscall probe")
    path = Path(tempfile.mkdtemp(prefix="glassbox-escape-probe-"))
    os.chmod(path, 0o755)
    (path / "probe.c").write_text(PROBE_C)
    built = subprocess.run(["gcc", "-static", "-O1", "-o", str(path / "probe"), str(path / "probe.c")],
                           capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        pytest.skip(f"could not build a static probe: {built.stderr[-300:]}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_32bit_system_calls_are_killed_by_seccomp(esc_engine, probe_dir):
    status, out = run(esc_engine, ["/probe/probe"], mounts=[Mount(str(probe_dir), "/probe", readonly=True)])
    assert status.code == 0
    assert out.strip() == "i386 killed by 31", out  # SIGSYS: the filter's bad-arch action


def test_vsock_sockets_are_refused(esc_engine, probe_dir):
    status, out = run(esc_engine, ["/probe/probe", "vsock"],
                      mounts=[Mount(str(probe_dir), "/probe", readonly=True)])
    assert out.strip() != "vsock=created"
