"""A container seen from inside and outside (sandbox/inside.py, GET /glassbox/containers/{id}/inside),
read from real containers: their /proc, their cgroup, their overlay."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import engine as engine_module
from sandbox.images import chain_ids
from sandbox.inside import describe, walk_upper
from sandbox.runtime import ContainerConfig
from tests.docker_harness import DOCKER, GLASSBOX, running_daemon

MiB = 1024 * 1024
UNSHARED = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")   # zygote's CONTAINER_NAMESPACES + user


def started(engine, argv, **options):
    c = engine.create(ContainerConfig("busybox", list(argv), **options))
    engine.start(c)
    return c


def settled(engine, c, ready, timeout: float = 10.0) -> dict:
    """describe(), again until ``ready(record)`` (a shell's children take a moment to appear)."""
    deadline = time.monotonic() + timeout
    while True:
        record = describe(engine, c)
        if ready(record) or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


def by_type(record: dict) -> dict:
    return {row["type"]: row for row in record["namespaces"]}


def nspid(host_pid: int) -> list[int]:
    with open(f"/proc/{host_pid}/status") as f:
        line = next(line for line in f if line.startswith("NSpid:"))
    return [int(x) for x in line.split()[1:]]


def exec_in(engine, c, argv) -> int:
    process = engine.exec(c, list(argv))
    assert process.done.wait(30), f"{argv} did not finish"
    return process.status.code


# ---------------------------------------------------------------- processes

def test_running_container_shows_its_processes_by_container_and_host_pid(engine):
    c = started(engine, ["sh", "-c", "sleep 100 & sleep 100 & wait"])
    # Until each child has exec'd, it is a copy of the shell.
    record = settled(engine, c, lambda r: [row["command"] for row in r["processes"][1:]] == ["sleep 100"] * 2)
    rows = record["processes"]
    assert [row["pid"] for row in rows] == [1, 2, 3]
    assert record["state"] == "running" and record["host_pid"] == c.process.pid == rows[0]["host_pid"]
    host_pids = [row["host_pid"] for row in rows]
    assert len(set(host_pids)) == 3 and not set(host_pids) & {1, 2, 3}
    for row in rows:
        assert nspid(row["host_pid"]) == [row["host_pid"], row["pid"]]   # host first, container last
        assert row["user"] == "0"   # container root, though a mapped uid on the host
        assert os.stat(f"/proc/{row['host_pid']}").st_uid == engine.runtime.uid_base
    assert [row["ppid"] for row in rows] == [0, 1, 1]   # PID 1's parent (the zygote) is outside
    assert rows[0]["command"] == "sh -c sleep 100 & sleep 100 & wait"
    assert rows[1]["command"] == rows[2]["command"] == "sleep 100"


def test_a_users_uid_inside_is_the_host_uid_minus_the_base(engine):
    c = started(engine, ["sh", "-c", "su -s /bin/sh nobody -c 'sleep 100' & wait"])
    record = settled(engine, c, lambda r: any(row["user"] != "0" for row in r["processes"]))
    sleeper = next(row for row in record["processes"] if row["user"] != "0")
    assert sleeper["user"] == "65534"   # nobody, in the image's /etc/passwd
    assert os.stat(f"/proc/{sleeper['host_pid']}").st_uid == engine.runtime.uid_base + 65534


def test_a_long_command_line_is_cut_short(engine):
    c = started(engine, ["sh", "-c", "sleep 100; true"] + ["x" * 50] * 10)   # arguments for $0, $1, …
    record = settled(engine, c, lambda r: r["processes"])
    command = record["processes"][0]["command"]
    assert command.startswith("sh -c sleep 100; true xxxx") and 190 <= len(command) <= 200


def test_processes_that_come_and_go_while_read_are_never_an_error(engine):
    c = started(engine, ["sh", "-c", "while :; do /bin/true; /bin/true; done"])
    for _ in range(100):
        rows = describe(engine, c)["processes"]
        assert rows[0]["pid"] == 1 and rows == sorted(rows, key=lambda row: row["pid"])
        assert all(row["ppid"] in (0, 1) for row in rows)


# ---------------------------------------------------------------- namespaces

def test_every_namespace_but_time_is_the_containers_own(engine, events):
    c = started(engine, ["sleep", "100"])
    ns = by_type(describe(engine, c))
    assert sorted(ns) == ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"]
    for kind in UNSHARED:
        assert ns[kind]["container"] and ns[kind]["host"], kind
        assert ns[kind]["container"] != ns[kind]["host"] and ns[kind]["shared"] is False, kind
    # The runtime doesn't unshare time: a container's clocks are the host's.
    assert ns["time"]["container"] == ns["time"]["host"] and ns["time"]["shared"] is True
    # Inside: what PID 1 itself reported as it started.
    unshared = next(e for e in events if e.kind == "ns.unshared" and e.subject["container"] == c.id)
    assert {k: ns[k]["container"] for k in UNSHARED} == unshared.detail["inodes"]


def test_the_host_is_where_the_daemon_started_not_its_private_mount_namespace(engine):
    c = started(engine, ["sleep", "100"])
    ns = by_type(describe(engine, c))
    # This process (like the daemon) left its mount namespace for a private one.
    assert ns["mnt"]["host"] == engine_module.host_mount_namespace
    assert ns["mnt"]["host"] != os.stat("/proc/self/ns/mnt").st_ino
    for kind in ("net", "pid", "user", "uts", "ipc", "cgroup", "time"):
        assert ns[kind]["host"] == os.stat(f"/proc/self/ns/{kind}").st_ino, kind


# ---------------------------------------------------------------- cgroup

def test_cgroup_reports_the_limits_given_and_what_is_used(engine):
    c = started(engine, ["sh", "-c", "sleep 100 & wait"], memory=48 * MiB, pids_limit=30, cpus=0.5)
    record = settled(engine, c, lambda r: r["cgroup"]["usage"]["pids"] == 2)
    group = record["cgroup"]
    assert group["driver"] == f"v{engine.cgroups.version}"
    assert group["limits"] == {"memory": 48 * MiB, "pids": 30, "cpus": 0.5}
    assert Path(group["path"]).is_dir() and group["path"].endswith(c.id)
    assert group["usage"]["pids"] == 2
    assert 0 < group["usage"]["memory"] < 48 * MiB
    assert group["usage"]["cpu_seconds"] >= 0


# ---------------------------------------------------------------- overlay

def test_writing_three_megabytes_raises_the_upper_layer_by_as_much(engine):
    c = started(engine, ["sleep", "100"], writable_size=16 * MiB)
    before = describe(engine, c)["overlay"]["upper"]
    assert exec_in(engine, c, ["dd", "if=/dev/zero", "of=/big", "bs=1M", "count=3"]) == 0
    after = describe(engine, c)["overlay"]["upper"]
    assert after["bytes"] - before["bytes"] >= 3 * MiB
    assert after["files"] >= before["files"] + 1
    assert after["limit"] == 16 * MiB and after["truncated"] is False


def test_a_big_upper_directory_is_walked_only_so_far(tmp_path):
    for i in range(30):
        (tmp_path / f"f{i}").write_bytes(b"x" * 10)
    assert walk_upper(tmp_path) == (300, 30, False)
    size, files, truncated = walk_upper(tmp_path, limit=10)
    assert truncated and files == 10 and size == 100


def test_the_lower_layers_are_the_images_top_first_with_their_steps(engine):
    base = engine.images.get("busybox")
    c = started(engine, ["sh", "-c", "echo layered > /marker"])
    engine.wait(c, timeout=30)
    image = engine.commit(c, "inside-test:two")
    c2 = engine.create(ContainerConfig("inside-test:two", ["sleep", "100"]))
    lower = describe(engine, c2)["overlay"]["lower"]
    assert len(lower) == len(image.layers) == len(base.layers) + 1
    assert [row["chain_id"] for row in lower] == list(reversed(chain_ids(image.diff_ids)))
    assert [row["diff_id"] for row in lower] == list(reversed(image.diff_ids))
    assert lower[0]["created_by"] == "sh -c echo layered > /marker"   # the commit's step, on top
    assert lower[0]["size"] == len("layered\n")
    made = [h.get("created_by") for h in base.config.get("history", []) if not h.get("empty_layer")]
    assert [row["created_by"] for row in lower[1:]] == list(reversed(made))
    assert all(row["size"] > 0 for row in lower[1:])


# ---------------------------------------------------------------- after the end

def test_an_exited_container_has_its_code_and_nothing_running(run, engine):
    status, _, c = run("exit 7")
    record = describe(engine, c)
    assert (record["state"], record["exit_code"], record["oom_killed"]) == ("exited", 7, False)
    assert record["host_pid"] is None and record["processes"] == []
    assert all(row["container"] is None and row["shared"] is False for row in record["namespaces"])
    assert record["cgroup"]["usage"] == {"memory": None, "pids": None, "cpu_seconds": None}


def test_an_oom_killed_container_says_so(run, engine):
    status, _, c = run("tail /dev/zero", memory=32 * MiB, writable_size=8 * MiB)
    record = describe(engine, c)
    assert record["oom_killed"] is True and record["exit_code"] == 137 and record["state"] == "exited"


def test_a_created_container_has_no_process_yet(engine):
    c = engine.create(ContainerConfig("busybox", ["true"]))
    record = describe(engine, c)
    assert (record["state"], record["exit_code"], record["host_pid"]) == ("created", None, None)
    assert record["overlay"]["upper"]["bytes"] == 0 and record["overlay"]["lower"]


# ---------------------------------------------------------------- the API

@pytest.fixture(scope="module")
def daemon():
    if DOCKER is None:
        pytest.skip("no docker CLI (./test installs one)")
    with running_daemon("glassbox-test-inside-") as daemon:
        yield daemon


@pytest.fixture
def docker(daemon):
    yield daemon
    daemon.remove_containers()


def inside_of(docker, ref: str, host: str = "default") -> tuple[int, dict]:
    status, body = docker.request("GET", f"/glassbox/containers/{ref}/inside", host=host)
    return status, json.loads(body)


def test_the_api_shows_a_running_container_of_this_host(docker):
    cid = docker.ok("run", "-d", "-m", "64m", "--pids-limit", "20", "busybox", "sleep", "100").strip()
    status, record = inside_of(docker, cid)
    assert status == 200 and record["id"] == cid and record["state"] == "running"
    assert record["processes"][0]["pid"] == 1 and record["processes"][0]["command"] == "sleep 100"
    assert record["cgroup"]["limits"]["memory"] == 64 * MiB and record["cgroup"]["limits"]["pids"] == 20
    # The daemon started in this test process's mount namespace, then left it for its own.
    ns = by_type(record)
    assert ns["mnt"]["host"] == os.stat("/proc/self/ns/mnt").st_ino and not ns["mnt"]["shared"]
    name = json.loads(docker.ok("inspect", cid))[0]["Name"].lstrip("/")
    assert inside_of(docker, name)[1]["id"] == cid


def test_another_hosts_socket_and_unknown_ids_get_404(docker):
    cid = docker.ok("run", "-d", "busybox", "sleep", "100").strip()
    created = subprocess.run([GLASSBOX, "host", "create", "inside2", "--state-dir", str(docker.state)],
                             capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    try:
        status, body = inside_of(docker, cid, host="inside2")
        assert status == 404 and "no such container" in body["message"]
    finally:
        subprocess.run([GLASSBOX, "host", "rm", "inside2", "--state-dir", str(docker.state)], check=True)
    status, body = inside_of(docker, "0123456789ab-no-such")
    assert status == 404 and "no such container" in body["message"]
    docker.ok("rm", "-f", cid)
    assert inside_of(docker, cid)[0] == 404   # removed
