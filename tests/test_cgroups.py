"""cgroup drivers: real v1 groups on this machine, real cgroup2 groups on its
controller-less unified mount, and the v2 driver against a fake tree that
plays the kernel (this machine can't run memory/pids/cpu under v2).

Every group a test makes lives under a root named glassbox-test-<pid>-<random>,
removed by the fixture even when the test fails; every process a test starts
is killed and reaped by the ``spawn`` fixture.
"""
from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from sandbox import cgroups
from sandbox.cgroups import (CgroupFiles, CgroupfsV1Driver, CgroupfsV2Driver, Limits,
                             detect, inotify_modify_fd, parse_mountinfo, v1_mounts)

BUSYBOX = "/bin/busybox"
UNIFIED = "/sys/fs/cgroup/unified"
MiB = 1 << 20


def _mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def _has_v1_memory() -> bool:
    return os.geteuid() == 0 and "memory" in v1_mounts(_mountinfo())


def _has_unified() -> bool:
    return os.geteuid() == 0 and any(p == UNIFIED and t == "cgroup2"
                                     for p, t, _ in parse_mountinfo(_mountinfo()))


needs_v1 = pytest.mark.skipif(not _has_v1_memory(), reason="needs root and a cgroup v1 memory mount")
needs_unified = pytest.mark.skipif(not _has_unified(), reason=f"needs root and cgroup2 at {UNIFIED}")
needs_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox-static")


def unique_root() -> str:
    return f"glassbox-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _force_clean(root_dirs) -> None:
    """Last resort after remove_all(): kill members of, and rmdir, only our own root groups."""
    for top in root_dirs:
        for d, subdirs, _ in sorted(os.walk(top, topdown=False), key=lambda w: -w[0].count("/")):
            deadline = time.monotonic() + 3
            while True:
                try:
                    with open(os.path.join(d, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


@pytest.fixture
def v1_driver():
    driver = CgroupfsV1Driver(unique_root())
    yield driver
    try:
        driver.remove_all()
    finally:
        _force_clean(driver.root_dirs().values())


@pytest.fixture
def unified_driver():
    files = RecordingFiles()
    driver = CgroupfsV2Driver(unique_root(), mount=UNIFIED, files=files)
    yield driver
    try:
        driver.remove_all()
    finally:
        _force_clean(driver.root_dirs().values())


@pytest.fixture
def spawn():
    """Start a command that joins a cgroup itself, as the runtime's helper does."""
    started: list[subprocess.Popen] = []

    def start(cgroup, argv: list[str], **kwargs) -> subprocess.Popen:
        procs_files = cgroup.procs_files()

        def join() -> None:
            for path in procs_files:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)

        proc = subprocess.Popen(argv, preexec_fn=join, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def cgroup_lines(pid: int) -> dict[str, str]:
    """/proc/PID/cgroup as {hierarchy controllers: path}."""
    with open(f"/proc/{pid}/cgroup") as f:
        return {line.split(":")[1]: line.split(":", 2)[2].strip() for line in f}


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class RecordingFiles(CgroupFiles):
    """The real files, with every write remembered."""

    def __init__(self):
        self.writes: list[tuple[str, str]] = []

    def write(self, path: str, value: str) -> None:
        super().write(path, value)
        self.writes.append((path, value))


# --- cgroup v1, for real ------------------------------------------------------

@needs_v1
def test_create_writes_each_limit_into_its_controller(v1_driver):
    cg = v1_driver.create("c1", Limits(memory_bytes=64 * MiB, pids=7, cpus=0.5))

    mem, pids, cpu = (v1_driver.mounts[c] + f"/{v1_driver.root}/c1" for c in ("memory", "pids", "cpu"))
    assert read(f"{mem}/memory.limit_in_bytes") == str(64 * MiB)
    assert read(f"{mem}/memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert read(f"{pids}/pids.max") == "7"
    assert read(f"{cpu}/cpu.cfs_period_us") == "100000"
    assert read(f"{cpu}/cpu.cfs_quota_us") == "50000"
    # What the runtime reports is what was written, in the order written.
    assert list(cg.limits_written().items()) == [
        (f"{mem}/memory.limit_in_bytes", str(64 * MiB)),
        (f"{mem}/memory.memsw.limit_in_bytes", str(64 * MiB)),
        (f"{pids}/pids.max", "7"),
        (f"{cpu}/cpu.cfs_period_us", "100000"),
        (f"{cpu}/cpu.cfs_quota_us", "50000"),
    ]
    # cpu and cpuacct are separate mounts here: four directories to join.
    assert sorted(cg.procs_files()) == sorted(
        f"{v1_driver.mounts[c]}/{v1_driver.root}/c1/cgroup.procs" for c in ("memory", "pids", "cpu", "cpuacct"))
    assert v1_driver.list() == ["c1"]


@needs_v1
@needs_busybox
def test_forked_child_joins_every_controller_and_is_listed(v1_driver, spawn):
    cg = v1_driver.create("joined", Limits())
    proc = spawn(cg, [BUSYBOX, "sleep", "30"])

    assert cg.pids() == {proc.pid}
    lines = cgroup_lines(proc.pid)
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        assert lines[controller] == f"/{v1_driver.root}/joined"


@needs_v1
@needs_busybox
def test_memory_limit_oom_wakes_notifier_and_counts_the_kill(v1_driver, spawn):
    cg = v1_driver.create("hungry", Limits(memory_bytes=32 * MiB))
    fd = cg.open_oom_notifier()
    try:
        # tail keeps the whole endless line in memory, touching every page.
        proc = spawn(cg, [BUSYBOX, "sh", "-c", "tail /dev/zero"])
        readable, _, _ = select.select([fd], [], [], 20)
        assert readable == [fd]
        assert proc.wait(10) == -signal.SIGKILL
        assert cg.oom_kills() >= 1
    finally:
        cg.close_oom_notifier()


@needs_v1
def test_removing_v1_group_wakes_notifier_without_an_oom(v1_driver):
    cg = v1_driver.create("quiet", Limits(memory_bytes=32 * MiB))
    fd = cg.open_oom_notifier()
    try:
        assert select.select([fd], [], [], 0)[0] == []
        cg.remove()
        # The kernel signals listeners when the group goes: not an OOM.
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert cg.oom_kills() == 0
    finally:
        cg.close_oom_notifier()


@needs_v1
@needs_busybox
def test_pids_limit_refuses_forks_and_counts_them(v1_driver, spawn):
    cg = v1_driver.create("forky", Limits(pids=5))
    proc = spawn(cg, [BUSYBOX, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait"],
                 stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=20)

    assert b"can't fork" in err
    assert cg.pids_refusals() > 0
    assert cg.stats()["pids_limit"] == 5


@needs_v1
@needs_busybox
def test_stats_report_usage_against_limits(v1_driver, spawn):
    cg = v1_driver.create("busy", Limits(memory_bytes=64 * MiB, pids=10, cpus=0.5))
    started = time.monotonic()
    spawn(cg, [BUSYBOX, "sh", "-c", "while :; do :; done"])
    time.sleep(0.6)
    stats = cg.stats()
    elapsed = time.monotonic() - started

    assert stats["pids"] == 1
    assert stats["pids_limit"] == 10
    assert stats["memory_limit_bytes"] == 64 * MiB
    assert 0 < stats["memory_bytes"] < 64 * MiB
    # A spinning shell under half a CPU: real usage, but no more than half.
    assert 50_000 < stats["cpu_usec"] <= (elapsed * 0.5 + 0.1) * 1_000_000

    unlimited = v1_driver.create("free", Limits()).stats()
    assert unlimited["memory_limit_bytes"] is None
    assert unlimited["pids_limit"] is None
    assert unlimited["pids"] == 0


@needs_v1
@needs_busybox
def test_kill_empties_the_group_even_while_it_forks(v1_driver, spawn):
    # The cap only bounds the storm if kill() were slow; it is reached long after.
    cg = v1_driver.create("breeder", Limits(pids=300))
    proc = spawn(cg, [BUSYBOX, "sh", "-c", "while :; do sleep 30 & done"],
                 stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while len(cg.pids()) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(cg.pids()) >= 10

    cg.kill()

    assert cg.pids() == set()
    assert proc.wait(5) == -signal.SIGKILL


@needs_v1
@needs_busybox
def test_remove_kills_members_deletes_every_directory_and_is_idempotent(v1_driver, spawn):
    cg = v1_driver.create("gone", Limits(memory_bytes=32 * MiB, pids=5, cpus=1))
    proc = spawn(cg, [BUSYBOX, "sleep", "30"])

    cg.remove()

    assert proc.wait(5) == -signal.SIGKILL
    for d in cg.directories():
        assert not os.path.exists(d)
    assert v1_driver.list() == []
    cg.remove()  # a second time: nothing there, nothing to do


@needs_v1
@needs_busybox
def test_remove_all_clears_groups_a_crashed_daemon_left(v1_driver, spawn):
    before_crash = CgroupfsV1Driver(v1_driver.root)
    left_running = before_crash.create("left-running", Limits(pids=5))
    before_crash.create("left-empty", Limits(memory_bytes=16 * MiB))
    proc = spawn(left_running, [BUSYBOX, "sleep", "30"])
    del before_crash, left_running  # the daemon "forgets" them

    restarted = CgroupfsV1Driver(v1_driver.root)
    assert restarted.list() == ["left-empty", "left-running"]
    assert restarted.remove_all() == ["left-empty", "left-running"]

    assert proc.wait(5) == -signal.SIGKILL
    for d in restarted.root_dirs().values():
        assert not os.path.exists(d)


@needs_v1
def test_create_failure_names_the_file_and_leaves_nothing(v1_driver):
    # 10^9 CPUs is a quota past the kernel's maximum: EINVAL from the last write.
    with pytest.raises(OSError) as info:
        v1_driver.create("greedy", Limits(memory_bytes=32 * MiB, cpus=1e9))
    assert info.value.errno == errno.EINVAL
    assert info.value.filename.endswith("/greedy/cpu.cfs_quota_us")
    assert "cpu.cfs_quota_us" in str(info.value)
    assert v1_driver.list() == []
    for d in v1_driver.root_dirs().values():
        assert not os.path.exists(os.path.join(d, "greedy"))


@needs_v1
def test_create_refuses_an_existing_name_and_keeps_the_existing_group(v1_driver):
    first = v1_driver.create("twin", Limits(pids=3))
    with pytest.raises(FileExistsError, match="already exists"):
        v1_driver.create("twin", Limits())
    assert read(first.dirs["pids"] + "/pids.max") == "3"


@needs_v1
@pytest.mark.parametrize("name", ["", "..", "a/b", "../../memory", ".hidden", "cgroup.procs"])
def test_names_that_would_leave_the_root_are_refused(v1_driver, name):
    with pytest.raises(ValueError):
        v1_driver.create(name, Limits())
    assert v1_driver.list() == []


@pytest.mark.parametrize("limits", [Limits(memory_bytes=0), Limits(pids=-1), Limits(cpus=0.001),
                                    Limits(memory_bytes=1.5)])
def test_nonsense_limits_are_refused_before_touching_anything(limits):
    with pytest.raises(ValueError):
        limits.validate()


@needs_v1
def test_detect_picks_v1_on_this_machine(monkeypatch):
    monkeypatch.delenv("GLASSBOX_CGROUP", raising=False)
    driver = detect(unique_root())
    try:
        assert (driver.name, driver.version) == ("cgroupfs-v1", 1)
        assert all(os.path.isdir(d) for d in driver.root_dirs().values())
    finally:
        driver.remove_all()
        _force_clean(driver.root_dirs().values())


def test_detect_refuses_forcing_v2_onto_a_tree_that_is_not_cgroup2(monkeypatch, tmp_path):
    monkeypatch.setenv("GLASSBOX_CGROUP", "v2")
    with pytest.raises(RuntimeError, match="not a cgroup2 mount"):
        detect(unique_root(), fs=str(tmp_path), mountinfo="")
    monkeypatch.setenv("GLASSBOX_CGROUP", "v3")
    with pytest.raises(RuntimeError, match="GLASSBOX_CGROUP"):
        detect(unique_root(), fs=str(tmp_path), mountinfo="")


# --- cgroup2, for real, on a mount without controllers ----------------------

@needs_unified
@needs_busybox
def test_real_cgroup2_group_holds_processes_and_cgroup_kill_ends_them(unified_driver, spawn):
    cg = unified_driver.create("c1", Limits())
    group = f"{UNIFIED}/{unified_driver.root}/c1"
    assert cg.procs_files() == [f"{group}/cgroup.procs"]

    # Two background sleeps and a wait: sh would exec a last plain command in place.
    proc = spawn(cg, [BUSYBOX, "sh", "-c", "sleep 30 & sleep 30 & wait"])
    deadline = time.monotonic() + 5
    while len(cg.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.pid in cg.pids() and len(cg.pids()) == 3  # sh and both sleeps
    assert cgroup_lines(proc.pid)[""] == f"/{unified_driver.root}/c1"

    cg.kill()

    assert (f"{group}/cgroup.kill", "1") in unified_driver.files.writes
    assert cg.pids() == set()
    assert proc.wait(5) == -signal.SIGKILL
    cg.remove()
    assert not os.path.exists(group)
    assert unified_driver.list() == []


@needs_unified
def test_real_cgroup2_refuses_limits_for_controllers_it_lacks(unified_driver):
    assert unified_driver.enabled == set()
    with pytest.raises(ValueError, match="memory controller, which is not enabled"):
        unified_driver.create("limited", Limits(memory_bytes=32 * MiB))
    with pytest.raises(ValueError, match="pids controller"):
        unified_driver.create("limited", Limits(pids=5))
    assert unified_driver.list() == []
    # Nothing to delegate, so the driver wrote nothing anywhere.
    assert unified_driver.files.writes == []


@needs_unified
@needs_busybox
def test_real_cgroup2_event_files_wake_inotify(unified_driver, spawn):
    # The v2 OOM notifier is inotify on memory.events; this kernel's cgroup2
    # has no memory controller, so check the same mechanism on cgroup.events.
    cg = unified_driver.create("watched", Limits())
    fd = inotify_modify_fd(f"{UNIFIED}/{unified_driver.root}/watched/cgroup.events")
    try:
        assert select.select([fd], [], [], 0)[0] == []
        spawn(cg, [BUSYBOX, "sleep", "30"])
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert "populated 1" in read(f"{UNIFIED}/{unified_driver.root}/watched/cgroup.events")
    finally:
        os.close(fd)


# --- cgroup2 against a fake tree that plays the kernel ----------------------

class FakeCgroup2(CgroupFiles):
    """A cgroup2 tree in a temporary directory, with the kernel's behaviour
    for what the driver relies on: mkdir creates the interface files of the
    controllers the parent hands down, subtree_control takes +/- tokens and
    obeys "no internal processes", cgroup.procs moves a pid, cgroup.kill
    empties a subtree, rmdir refuses a populated group."""

    def __init__(self, mount, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc",
                 procs: tuple[int, ...] = (), swap: bool = True, namespace_root: bool = False):
        self.mount = str(mount)
        self.swap = swap
        # A container's cgroup namespace root is a non-root group to the
        # kernel, so the no-internal-processes rule applies to it too.
        self.namespace_root = namespace_root
        self.writes: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        os.makedirs(self.mount, exist_ok=True)
        self._put("cgroup.controllers", controllers)
        self._put("cgroup.subtree_control", "")
        self._put("cgroup.procs", "".join(f"{p}\n" for p in procs))
        self._put("cgroup.events", "populated 1\nfrozen 0\n")

    def _put(self, path: str, text: str) -> None:
        with open(os.path.join(self.mount, path), "w") as f:
            f.write(text + ("\n" if text and not text.endswith("\n") else ""))

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        offered = read(os.path.join(os.path.dirname(path), "cgroup.subtree_control")).split()
        files = {"cgroup.controllers": " ".join(offered), "cgroup.subtree_control": "",
                 "cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": "",
                 "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"}
        if "memory" in offered:
            files.update({"memory.current": "0", "memory.max": "max",
                          "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"})
            if self.swap:
                files["memory.swap.max"] = "max"
        if "pids" in offered:
            files.update({"pids.current": "0", "pids.max": "max", "pids.events": "max 0\n"})
        if "cpu" in offered:
            files["cpu.max"] = "max 100000"
        for name, text in files.items():
            self._put(os.path.join(path, name), text)

    def write(self, path: str, value: str) -> None:
        self.writes.append((path, value))
        if path in self.fail:
            raise OSError(self.fail[path], os.strerror(self.fail[path]), path)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        group, name = os.path.split(path)
        if name == "cgroup.subtree_control":
            is_root = group == self.mount and not self.namespace_root
            if not is_root and read(os.path.join(group, "cgroup.procs")):
                raise OSError(errno.EBUSY, "Device or resource busy", path)
            enabled = set(read(path).split())
            available = read(os.path.join(group, "cgroup.controllers")).split()
            for token in value.split():
                if token[1:] not in available:
                    raise OSError(errno.ENOENT, "No such file or directory", path)
                (enabled.add if token[0] == "+" else enabled.discard)(token[1:])
            self._put(path, " ".join(c for c in available if c in enabled))
        elif name == "cgroup.procs":
            for d, _, _ in os.walk(self.mount):
                procs = read(os.path.join(d, "cgroup.procs")).split()
                self._put(os.path.join(d, "cgroup.procs"), "".join(f"{p}\n" for p in procs if p != value))
            with open(path, "a") as f:
                f.write(f"{value}\n")
        elif name == "cgroup.kill":
            for d, _, _ in os.walk(group):
                self._put(os.path.join(d, "cgroup.procs"), "")
        else:
            self._put(path, value)

    def rmdir(self, path: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if any(e.is_dir() for e in os.scandir(path)) or read(os.path.join(path, "cgroup.procs")):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        shutil.rmtree(path)


ROOT = "glassbox-fake"


def test_v2_hands_memory_pids_cpu_down_to_the_root_group(tmp_path):
    files = FakeCgroup2(tmp_path)
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)

    assert files.writes == [(f"{tmp_path}/cgroup.subtree_control", "+memory +pids +cpu"),
                            (f"{tmp_path}/{ROOT}/cgroup.subtree_control", "+memory +pids +cpu")]
    assert driver.enabled == {"memory", "pids", "cpu"}
    assert driver.daemon_leaf is None


def test_v2_writes_exactly_the_limit_files(tmp_path):
    files = FakeCgroup2(tmp_path)
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)
    files.writes.clear()

    cg = driver.create("c1", Limits(memory_bytes=64 * MiB, pids=7, cpus=1.5))

    group = f"{tmp_path}/{ROOT}/c1"
    expected = [(f"{group}/memory.max", str(64 * MiB)), (f"{group}/memory.swap.max", "0"),
                (f"{group}/pids.max", "7"), (f"{group}/cpu.max", "150000 100000")]
    assert files.writes == expected
    assert list(cg.limits_written().items()) == expected
    assert read(f"{group}/cpu.max") == "150000 100000"
    assert cg.procs_files() == [f"{group}/cgroup.procs"]
    assert driver.list() == ["c1"]


def test_v2_without_swap_accounting_writes_no_swap_file(tmp_path):
    files = FakeCgroup2(tmp_path, swap=False)
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)

    cg = driver.create("c1", Limits(memory_bytes=32 * MiB))

    assert list(cg.limits_written()) == [f"{tmp_path}/{ROOT}/c1/memory.max"]


def test_v2_enables_only_what_the_parent_offers_and_refuses_other_limits(tmp_path):
    files = FakeCgroup2(tmp_path, controllers="cpu io pids")
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)

    assert files.writes[0] == (f"{tmp_path}/cgroup.subtree_control", "+pids +cpu")
    assert driver.enabled == {"pids", "cpu"}
    with pytest.raises(ValueError, match=r"memory controller, which is not enabled in .*enabled: cpu pids"):
        driver.create("c1", Limits(memory_bytes=32 * MiB, pids=5))
    assert driver.list() == []
    cg = driver.create("c2", Limits(pids=5))
    assert cg.stats()["memory_bytes"] is None and cg.stats()["pids_limit"] == 5


def test_v2_leaves_controllers_already_enabled_alone(tmp_path):
    files = FakeCgroup2(tmp_path)
    files._put("cgroup.subtree_control", "cpu memory pids")
    CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)

    assert [w for w in files.writes if w[0] == f"{tmp_path}/cgroup.subtree_control"] == []


def test_v2_moves_the_daemon_to_a_leaf_when_its_group_has_processes(tmp_path):
    # Inside a container with a cgroup namespace: / holds the daemon (pid 1)
    # and a shell, so handing controllers down is EBUSY until they move.
    files = FakeCgroup2(tmp_path, procs=(1, 57), namespace_root=True)
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)

    leaf = f"{tmp_path}/glassbox-daemon"
    assert files.writes[:4] == [(f"{tmp_path}/cgroup.subtree_control", "+memory +pids +cpu"),
                                (f"{leaf}/cgroup.procs", "1"),
                                (f"{leaf}/cgroup.procs", "57"),
                                (f"{tmp_path}/cgroup.subtree_control", "+memory +pids +cpu")]
    assert driver.daemon_leaf == leaf
    assert read(f"{leaf}/cgroup.procs").split() == ["1", "57"]
    assert read(f"{tmp_path}/cgroup.procs") == ""
    assert driver.enabled == {"memory", "pids", "cpu"}
    assert driver.list() == []  # the daemon's leaf is not a container
    assert driver.remove_all() == [] and os.path.isdir(leaf)


def test_v2_reports_other_delegation_failures_with_the_file(tmp_path):
    files = FakeCgroup2(tmp_path)
    files.fail[f"{tmp_path}/cgroup.subtree_control"] = errno.EACCES
    with pytest.raises(PermissionError) as info:
        CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)
    assert info.value.filename == f"{tmp_path}/cgroup.subtree_control"
    assert not os.path.exists(f"{tmp_path}/glassbox-daemon")


def test_v2_create_failure_removes_the_half_made_group(tmp_path):
    files = FakeCgroup2(tmp_path)
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)
    files.fail[f"{tmp_path}/{ROOT}/c1/pids.max"] = errno.EINVAL

    with pytest.raises(OSError) as info:
        driver.create("c1", Limits(memory_bytes=32 * MiB, pids=5))

    assert info.value.filename == f"{tmp_path}/{ROOT}/c1/pids.max"
    assert not os.path.exists(f"{tmp_path}/{ROOT}/c1")


def test_v2_reads_the_kernels_counters(tmp_path):
    files = FakeCgroup2(tmp_path)
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)
    cg = driver.create("c1", Limits(memory_bytes=64 * MiB, pids=20))
    group = f"{tmp_path}/{ROOT}/c1"
    # Contents as a 6.x kernel writes them after an OOM and a few refused forks.
    files._put(f"{group}/memory.events", "low 0\nhigh 0\nmax 311\noom 3\noom_kill 2\noom_group_kill 0\n")
    files._put(f"{group}/pids.events", "max 14\n")
    files._put(f"{group}/memory.current", "48828416")
    files._put(f"{group}/pids.current", "20")
    files._put(f"{group}/cpu.stat", "usage_usec 1843021\nuser_usec 1500123\nsystem_usec 342898\n"
                                    "core_sched.force_idle_usec 0\nnr_periods 0\nnr_throttled 0\n"
                                    "throttled_usec 0\nnr_bursts 0\nburst_usec 0\n")

    assert cg.oom_kills() == 2
    assert cg.pids_refusals() == 14
    assert cg.stats() == {"memory_bytes": 48828416, "memory_limit_bytes": 64 * MiB,
                          "pids": 20, "pids_limit": 20, "cpu_usec": 1843021}


def test_v2_oom_notifier_wakes_when_memory_events_changes(tmp_path):
    files = FakeCgroup2(tmp_path)
    cg = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files).create("c1", Limits(memory_bytes=MiB))
    fd = cg.open_oom_notifier()
    try:
        assert cg.open_oom_notifier() == fd  # one per group
        assert select.select([fd], [], [], 0)[0] == []
        files._put(f"{tmp_path}/{ROOT}/c1/memory.events",
                   "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n")
        assert select.select([fd], [], [], 2)[0] == [fd]
        assert cg.oom_kills() == 1
    finally:
        cg.close_oom_notifier()


def test_v2_oom_notifier_needs_the_memory_controller(tmp_path):
    files = FakeCgroup2(tmp_path, controllers="cpu pids")
    cg = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files).create("c1", Limits())
    with pytest.raises(FileNotFoundError, match="memory controller is not enabled"):
        cg.open_oom_notifier()
    assert cg.oom_kills() == 0


def test_v2_kill_uses_cgroup_kill_and_remove_all_clears_nested_groups(tmp_path):
    files = FakeCgroup2(tmp_path)
    driver = CgroupfsV2Driver(ROOT, mount=str(tmp_path), files=files)
    cg = driver.create("c1", Limits())
    driver.create("c2", Limits())
    group = f"{tmp_path}/{ROOT}/c1"
    # The container made a group of its own inside its namespace.
    files.mkdir(f"{group}/inner")
    # Pids far above pid_max: no real process can be signalled by mistake.
    files.write(f"{group}/cgroup.procs", "99999991")
    files.write(f"{group}/inner/cgroup.procs", "99999992")
    assert cg.pids() == {99999991, 99999992}

    assert driver.remove_all() == ["c1", "c2"]

    assert (f"{group}/cgroup.kill", "1") in files.writes
    assert not os.path.exists(f"{tmp_path}/{ROOT}")


def test_detect_picks_v2_for_a_cgroup2_tree_with_memory(tmp_path, monkeypatch):
    monkeypatch.delenv("GLASSBOX_CGROUP", raising=False)
    files = FakeCgroup2(tmp_path)
    mountinfo = f"41 31 0:38 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n"

    driver = detect(ROOT, fs=str(tmp_path), files=files, mountinfo=mountinfo)

    assert (driver.name, driver.version, driver.root) == ("cgroupfs-v2", 2, ROOT)


def test_detect_refuses_a_cgroup2_tree_without_memory_and_no_v1(tmp_path, monkeypatch):
    monkeypatch.delenv("GLASSBOX_CGROUP", raising=False)
    files = FakeCgroup2(tmp_path, controllers="cpu pids")
    with pytest.raises(RuntimeError, match="memory"):
        detect(ROOT, fs=str(tmp_path), files=files, mountinfo="")
    assert os.listdir(tmp_path) and not os.path.exists(tmp_path / ROOT)


# --- v1 mount discovery and a co-mounted cpu,cpuacct ------------------------

COMOUNTED = """\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
35 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
38 31 0:35 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,net_cls,net_prio
40 31 0:36 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:19 - cgroup2 cgroup2 rw
50 30 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,memory
"""


def test_v1_mounts_map_comounted_cpu_and_cpuacct_to_one_directory():
    mounts = v1_mounts(COMOUNTED, under="/sys/fs/cgroup")
    assert mounts == {"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids",
                      "cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct"}
    assert v1_mounts(COMOUNTED, under="/mnt") == {"memory": "/mnt/with space"}


class FakeCgroup1(CgroupFiles):
    """v1 hierarchies in a temporary directory: mkdir makes each controller's
    files, and memory refuses a memsw limit below the memory limit (EINVAL),
    as the kernel does."""

    FILES = {"memory": {"memory.limit_in_bytes": "9223372036854771712",
                        "memory.memsw.limit_in_bytes": "9223372036854771712",
                        "memory.usage_in_bytes": "0", "memory.use_hierarchy": "1",
                        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0",
                        "cgroup.event_control": ""},
             "pids": {"pids.max": "max", "pids.current": "0", "pids.events": "max 0"},
             "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1"},
             "cpuacct": {"cpuacct.usage": "0"}}

    def __init__(self, mounts: dict[str, str]):
        self.mounts = mounts
        self.writes: list[tuple[str, str]] = []
        for point in mounts.values():
            os.makedirs(point, exist_ok=True)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        for controller, point in self.mounts.items():
            if path.startswith(point + "/"):
                for name, text in {"cgroup.procs": "", **self.FILES[controller]}.items():
                    with open(os.path.join(path, name), "w") as f:
                        f.write(text)

    def write(self, path: str, value: str) -> None:
        self.writes.append((path, value))
        group, name = os.path.split(path)
        if name == "memory.memsw.limit_in_bytes" and int(value) < int(read(f"{group}/memory.limit_in_bytes")):
            raise OSError(errno.EINVAL, "Invalid argument", path)
        if name == "memory.limit_in_bytes" and int(value) > int(read(f"{group}/memory.memsw.limit_in_bytes")):
            raise OSError(errno.EINVAL, "Invalid argument", path)
        with open(path, "w") as f:
            f.write(value)

    def rmdir(self, path: str) -> None:
        shutil.rmtree(path) if os.path.isdir(path) else os.rmdir(path)


def test_v1_driver_joins_a_comounted_cpu_cpuacct_once(tmp_path):
    mounts = {c: str(tmp_path / p) for c, p in
              [("memory", "memory"), ("pids", "pids"), ("cpu", "cpu,cpuacct"), ("cpuacct", "cpu,cpuacct")]}
    files = FakeCgroup1(mounts)
    driver = CgroupfsV1Driver(ROOT, mounts=mounts, files=files)

    cg = driver.create("c1", Limits(memory_bytes=32 * MiB, cpus=2))

    assert cg.procs_files() == [f"{tmp_path}/memory/{ROOT}/c1/cgroup.procs",
                                f"{tmp_path}/pids/{ROOT}/c1/cgroup.procs",
                                f"{tmp_path}/cpu,cpuacct/{ROOT}/c1/cgroup.procs"]
    # memory first, then memsw: the other order is EINVAL from the kernel.
    assert list(cg.limits_written().items()) == [
        (f"{tmp_path}/memory/{ROOT}/c1/memory.limit_in_bytes", str(32 * MiB)),
        (f"{tmp_path}/memory/{ROOT}/c1/memory.memsw.limit_in_bytes", str(32 * MiB)),
        (f"{tmp_path}/cpu,cpuacct/{ROOT}/c1/cpu.cfs_period_us", "100000"),
        (f"{tmp_path}/cpu,cpuacct/{ROOT}/c1/cpu.cfs_quota_us", "200000")]
    assert cg.stats() == {"memory_bytes": 0, "memory_limit_bytes": 32 * MiB, "pids": 0,
                          "pids_limit": None, "cpu_usec": 0}
    assert driver.remove_all() == ["c1"]
    assert not any(os.path.exists(f"{p}/{ROOT}") for p in mounts.values())


def test_v1_driver_needs_a_memory_hierarchy():
    with pytest.raises(RuntimeError, match="memory controller is not mounted"):
        CgroupfsV1Driver(ROOT, mounts={"pids": "/nonexistent"})


def test_limit_parsing_treats_kernel_unlimited_values_as_none():
    assert cgroups.parse_limit("max\n") is None
    assert cgroups.parse_limit("9223372036854771712\n") is None
    assert cgroups.parse_limit("-1\n") is None
    assert cgroups.parse_limit("33554432\n") == 32 * MiB
