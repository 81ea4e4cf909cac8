"""The runtime, run for real: namespaces, cgroups, overlay, limits, exec, clean-up."""
from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from sandbox.runtime import ContainerConfig, Mount

MiB = 1024 * 1024


def kinds(events, container=None):
    return [e.kind for e in events if container is None or e.subject.get("container") == container.id]


def test_start_emits_every_step_in_order(run, events, engine):
    status, out, c = run("true")
    assert status.code == 0
    engine.remove(c)  # the clean-up steps follow the exit
    steps = ["container.created", "cgroup.created", "mount.tmpfs", "mount.overlay",
             "helper.spawned", "userns.mapped", "ns.unshared", "mount.private", "mount.proc",
             "mount.dev", "paths.masked", "hostname.set", "rootfs.pivoted", "lockdown.applied",
             "process.started", "process.exited", "cgroup.removed", "container.removed"]
    seen = kinds(events, c)
    assert [k for k in seen if k in steps] == steps
    unshared = next(e for e in events if e.kind == "ns.unshared")
    assert set(unshared.detail["inodes"]) >= {"mnt", "uts", "ipc", "net", "pid", "cgroup", "user"}
    # PID 1 inside, and the host's number for the same process (the one that runs the program).
    started = next(e for e in events if e.kind == "process.started")
    assert unshared.detail["pid_in_namespace"] == 1
    assert unshared.detail["host_pid"] == started.detail["pid"] != 1
    mapped = next(e for e in events if e.kind == "userns.mapped")
    assert mapped.detail["uid_map"] == "0 100000 65536"
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_pid_1_and_only_the_containers_processes(run):
    status, out, _ = run("echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '")
    assert status.code == 0
    pid, procs = out.text("stdout").splitlines()
    assert pid == "1"
    # sh (1), ls, grep, sort, tr: nothing of the host's hundreds of processes.
    assert len(procs.split()) <= 6 and procs.split()[0] == "1"


def test_own_hostname(run):
    status, out, _ = run("hostname", hostname="classroom-7")
    assert out.text() == "classroom-7\n"


def test_only_loopback_and_it_is_up(run):
    status, out, _ = run("ls /sys/class/net; ip -o link show lo")
    lines = out.text().splitlines()
    assert lines[0] == "lo"
    assert "UP" in lines[1] and "LOOPBACK" in lines[1]


def test_container_root_maps_to_an_unprivileged_host_uid(engine, run):
    c = engine.create(ContainerConfig("busybox", ["sleep", "30"]))
    engine.start(c)
    try:
        status_text = Path(f"/proc/{c.process.pid}/status").read_text()
        uid_line = next(line for line in status_text.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["100000"] * 4
    finally:
        engine.remove(c, force=True)
    status, out, _ = run("id -u; cat /proc/self/uid_map; ls -ln /bin/busybox /etc/passwd; ls -lnd /")
    lines = out.text().splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", "100000", "65536"]
    # Layer files show as root inside (idmapped), not as nobody.
    for line in lines[2:]:
        assert line.split()[2:4] == ["0", "0"], line


def test_write_to_a_lower_file_copies_up_and_leaves_the_layer_alone(engine, run):
    layer = engine.images.get("busybox").layers[0]
    before = hashlib.sha256((layer / "etc/passwd").read_bytes()).hexdigest()
    status, out, c = run("echo student:x:1000:1000::/home:/bin/sh >> /etc/passwd && tail -1 /etc/passwd")
    assert status.code == 0 and out.text().startswith("student:")
    upper = c.rw_dir / "upper"
    assert "student:" in (upper / "etc/passwd").read_text()
    assert hashlib.sha256((layer / "etc/passwd").read_bytes()).hexdigest() == before
    # Files written by container root belong to the mapped uid on the host.
    assert (upper / "etc/passwd").stat().st_uid == 100000
    status, out, _ = run("grep -c student /etc/passwd || true")
    assert out.text().strip() == "0"  # a second container sees the image, not the first's changes


def test_memory_limit_is_an_oom_kill_told_apart(run, events):
    status, out, c = run("tail /dev/zero", memory=32 * MiB, writable_size=8 * MiB)
    assert status.code == 137 and status.signal == signal.SIGKILL
    assert status.oom_killed
    assert "oom.killed" in kinds(events, c)
    exited = next(e for e in events if e.kind == "process.exited" and e.subject["container"] == c.id)
    assert exited.detail["oom_killed"] is True


def test_sigkill_from_outside_is_not_an_oom(engine, events):
    c = engine.create(ContainerConfig("busybox", ["sleep", "30"]))
    engine.start(c)
    engine.kill(c, signal.SIGKILL)
    status = engine.wait(c, timeout=10)
    assert (status.code, status.signal, status.oom_killed) == (137, signal.SIGKILL, False)
    assert "oom.killed" not in kinds(events, c)


def test_pids_limit_refuses_forks_and_is_reported(run, events):
    status, out, c = run("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 2 & done 2>&1; kill $(jobs -p) 2>/dev/null; true",
                         pids_limit=6)
    assert "can't fork" in out.text()
    limited = [e for e in events if e.kind == "pids.limited" and e.subject["container"] == c.id]
    assert limited and limited[-1].detail["refused"] >= 1


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_codes_propagate(run, code):
    status, _, _ = run(f"exit {code}")
    assert status.code == code and status.signal is None


def test_pid_1_ignores_sigterm_without_a_handler_and_sigkill_is_137(engine):
    # As in Docker: the kernel protects a PID namespace's init from signals it
    # has no handler for; SIGKILL from outside always works.
    c = engine.create(ContainerConfig("busybox", ["sleep", "30"]))
    engine.start(c)
    engine.kill(c, signal.SIGTERM)
    assert not c.stopped.wait(0.5)
    engine.kill(c, signal.SIGKILL)
    assert engine.wait(c, timeout=10).code == 137


def test_a_process_killed_by_a_signal_is_128_plus_signal(engine):
    c = engine.create(ContainerConfig("busybox", ["sleep", "30"]))
    engine.start(c)
    try:
        process = engine.exec(c, ["sh", "-c", "kill -TERM $$"])
        assert process.done.wait(10)
        assert (process.status.code, process.status.signal) == (143, signal.SIGTERM)
    finally:
        engine.remove(c, force=True)


def test_timeout_kills_the_whole_container(run, events):
    t0 = time.time()
    status, _, c = run("sleep 60 & sleep 60", timeout=1)
    assert time.time() - t0 < 20
    assert status.code == 137 and status.timed_out and not status.oom_killed
    assert "container.timeout" in kinds(events, c)


def test_a_full_writable_layer_gives_enospc_and_nothing_else(run, events):
    status, out, c = run("dd if=/dev/zero of=/big bs=1M count=64 2>&1; echo survived",
                         memory=32 * MiB, writable_size=8 * MiB)
    text = out.text()
    assert "No space left on device" in text
    assert "survived" in text and status.code == 0 and not status.oom_killed
    assert "oom.killed" not in kinds(events, c)


def test_appending_to_a_lower_file_when_full_is_enospc_too(run):
    status, out, _ = run("dd if=/dev/zero of=/fill bs=1M count=16 2>/dev/null; "
                         "echo more >> /bin/busybox || echo refused", writable_size=4 * MiB)
    assert "refused" in out.text()


def test_exec_runs_in_the_same_namespaces_and_cgroup(engine):
    c = engine.create(ContainerConfig("busybox", ["sleep", "30"], hostname="target"))
    engine.start(c)
    try:
        chunks = []
        process = engine.exec(c, ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$; hostname; id -u"],
                              on_output=lambda s, d: chunks.append(d))
        assert process.done.wait(10)
        lines = b"".join(chunks).decode().splitlines()
        assert lines[0].strip() == "sleep 30"
        assert int(lines[1]) > 1
        assert lines[2:] == ["target", "0"]
        assert process.status.code == 0
        for ns in ("pid", "mnt", "net", "uts", "user"):
            assert os.readlink(f"/proc/{c.process.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
        failing = engine.exec(c, ["sh", "-c", "exit 3"])
        assert failing.done.wait(10) and failing.status.code == 3
    finally:
        engine.remove(c, force=True)


def test_exec_into_a_stopped_container_is_refused(run, engine):
    from sandbox.engine import Conflict
    from sandbox.runtime import ContainerError
    status, _, c = run("true")
    with pytest.raises((ContainerError, Conflict)):
        engine.exec(c, ["true"])


def test_stdin_stdout_stderr_and_logs(engine):
    c = engine.create(ContainerConfig("busybox", ["sh", "-c", "read line; echo out:$line; echo err:$line >&2"],
                                      open_stdin=True))
    got = []
    process = engine.start(c, lambda s, d: got.append((s, d)))
    process.write_stdin(b"hello\n")
    process.close_stdin()
    assert engine.wait(c, timeout=10).code == 0
    assert (b"stdout", b"out:hello\n") in [(s.encode(), d) for s, d in got]
    logs = engine.logs(c)
    assert {(e["stream"], e["log"]) for e in logs} == {("stdout", "out:hello\n"), ("stderr", "err:hello\n")}
    assert all(abs(e["time"] - time.time()) < 60 for e in logs)


def test_tty_gives_a_pty_from_the_containers_devpts_and_resizes(engine):
    c = engine.create(ContainerConfig("busybox", ["sh", "-c", "read go; tty; stty size"], tty=True,
                                      open_stdin=True))
    got = []
    process = engine.start(c, lambda s, d: got.append(d))
    process.resize(33, 101)
    process.write_stdin(b"go\n")
    assert engine.wait(c, timeout=10).code == 0
    text = b"".join(got).decode()
    assert "/dev/pts/0" in text
    assert "33 101" in text


def test_bind_mounts_rw_and_ro_belong_to_the_mapped_ids(run, state_dir):
    # As with Docker's userns-remap: the container's root is uid 100000 on the
    # host, so a host directory it should write to belongs to that uid.
    shared = state_dir / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("hi\n")
    os.chown(shared, 100000, 100000)
    status, out, _ = run("cat /data/from-host; ls -ln /data/from-host; echo new > /data/from-container",
                         mounts=[Mount(str(shared), "/data")])
    assert status.code == 0
    lines = out.text().splitlines()
    assert lines[0] == "hi"
    assert lines[1].split()[2:4] == ["65534", "65534"]  # host root's file: nobody inside
    written = shared / "from-container"
    assert written.read_text() == "new\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (100000, 100000)
    status, out, _ = run("echo x > /data/nope || echo refused; cat /data/from-host",
                         mounts=[Mount(str(shared), "/data", readonly=True)])
    assert out.text("stdout").splitlines() == ["refused", "hi"]
    assert "Read-only file system" in out.text("stderr")
    assert not (shared / "nope").exists()


def test_a_missing_command_is_127_with_its_name(run):
    status, out, _ = run(["no-such-command"])
    assert status.code == 127
    assert "no-such-command" in status.error


def test_remove_leaves_no_mount_cgroup_or_directory(engine, host_unchanged):
    c = engine.create(ContainerConfig("busybox", ["sleep", "30"]))
    engine.start(c)
    pid = c.process.pid
    engine.remove(c, force=True)
    assert not c.dir.exists()
    assert not Path(f"/proc/{pid}").exists()
    assert engine.cgroups.list() == []


def test_sampling_reads_the_cgroup_while_running(engine, events):
    c = engine.create(ContainerConfig("busybox", ["sleep", "30"], pids_limit=50))
    engine.start(c)
    try:
        # Right after start the helper may not have been reaped yet: it counts too.
        deadline = time.time() + 5
        while (stats := engine.runtime.sample(c))["pids"] != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert stats["pids"] == 1 and stats["pids_limit"] == 50
        assert stats["memory_bytes"] > 0
        assert any(e.kind == "cgroup.sampled" for e in events)
    finally:
        engine.remove(c, force=True)
