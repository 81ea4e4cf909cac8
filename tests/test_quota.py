"""A Docker host's quotas: starts, execs and builds per minute, and how much may run at
once. The window's arithmetic with a fake clock; everything else with real containers,
through the engine and through the real docker CLI."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from sandbox.builder import BuildError, BuildOptions
from sandbox.engine import Engine, QuotaReached
from sandbox.quota import MiB, HostQuota, Quota, SlidingWindow
from sandbox.runtime import ContainerConfig
from tests.conftest import glassbox_mounts
from tests.docker_harness import DOCKER, unix_request


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- the arithmetic

def test_a_window_admits_n_in_any_minute_then_says_how_long_to_wait():
    clock = FakeClock(0)
    window = SlidingWindow(3, 60, clock)
    for t in (0, 10, 20):
        clock.now = t
        assert window.take() == 0
    clock.now = 30
    assert window.take() == 30          # the first of the three leaves the window at 60
    assert window.take() == 30          # a refusal takes nothing
    clock.now = 60
    assert window.take() == 0
    clock.now = 61
    assert window.take() == 9           # now the oldest is the one at 10
    clock.now = 200
    assert [window.take() for _ in range(4)] == [0, 0, 0, 60]


def test_a_refused_rate_says_the_limit_and_the_wait_in_whole_seconds():
    clock = FakeClock()
    quota = HostQuota(Quota(builds_per_minute=2), clock)
    assert quota.take("builds") is None
    clock.now += 47.2
    assert quota.take("builds") is None
    clock.now += 0.5
    refusal = quota.take("builds")
    assert (refusal.quota, refusal.limit, refusal.retry_after) == ("builds", 2, 13)
    assert refusal.message == "quota reached: at most 2 builds per minute on this host; try again in 13 s"
    clock.now += 12.0
    assert quota.take("builds").retry_after == 1     # 0.3 s: never "try again in 0 s"
    clock.now += 0.4
    assert quota.take("builds") is None


def test_no_quota_means_no_limits():
    quota = HostQuota(None)
    assert all(quota.take(kind) is None for kind in ("starts", "execs", "builds") for _ in range(1000))
    running = {str(i): 2048 * MiB for i in range(100)}
    assert quota.admit_start("x", 2048 * MiB, False, lambda: running) is None


def test_a_start_under_way_holds_its_place_until_it_is_over():
    quota = HostQuota(Quota(running_containers=2, starts_per_minute=None))
    running: dict[str, int] = {}
    assert quota.admit_start("a", MiB, False, lambda: running) is None
    assert quota.admit_start("b", MiB, False, lambda: running) is None
    refusal = quota.admit_start("c", MiB, False, lambda: running)
    assert refusal.quota == "running_containers" and refusal.retry_after is None
    running["a"] = MiB                  # a is running now: counted once, not twice
    quota.started("a")
    assert quota.admit_start("c", MiB, False, lambda: running).quota == "running_containers"
    quota.started("b")                  # b failed to start: its place is free
    assert quota.admit_start("c", MiB, False, lambda: running) is None


def test_two_starts_at_once_cannot_both_take_the_last_place():
    quota = HostQuota(Quota(running_containers=1, starts_per_minute=None))
    barrier = threading.Barrier(8)
    results = []

    def start(ident):
        barrier.wait()
        results.append(quota.admit_start(ident, MiB, False, dict))
    threads = [threading.Thread(target=start, args=(str(i),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is None for r in results) == 1


def test_memory_refusals_say_what_is_taken_what_is_asked_and_what_to_do():
    quota = HostQuota(Quota(running_memory=1024 * MiB))
    running = {"a": 256 * MiB, "b": 512 * MiB}
    refusal = quota.admit_start("c", 512 * MiB, False, lambda: running)
    assert (refusal.quota, refusal.limit, refusal.retry_after) == ("running_memory", 1024 * MiB, None)
    assert refusal.message == ("quota reached: the running containers on this host may have 1024 MiB "
                               "of memory in all; 768 MiB is taken and this container asks for 512 MiB "
                               "(-m); stop one with docker stop, or try a smaller -m (e.g. -m 64m)")
    alone = quota.admit_start("d", 2048 * MiB, True, dict)
    assert "no memory limit, which counts as 2048 MiB; try a smaller -m" in alone.message
    step = quota.admit_start("e", 512 * MiB, False, lambda: running, build_step=True)
    assert "this build step asks for 512 MiB; stop one with docker stop, or try a smaller docker build " \
        "--memory" in step.message
    assert quota.admit_start("f", 256 * MiB, False, lambda: running) is None


# ---------------------------------------------------------------------- real containers

@pytest.fixture
def limited(state_dir, host_unchanged):
    """An engine with small quotas: limited(**fields) -> (engine, fake clock of its windows)."""
    engines = []

    def make(**fields) -> tuple[Engine, FakeClock]:
        quota = Quota(**{"starts_per_minute": None, "execs_per_minute": None, "builds_per_minute": None,
                         "running_containers": None, "running_memory": None, **fields})
        engine = Engine(state_dir / "state", quota=quota)
        engines.append(engine)
        clock = FakeClock()
        engine.quota = HostQuota(quota, clock)   # so "a minute later" takes no minute
        return engine, clock
    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def quota_events():
    """The quota.reached events of an engine: quota_events(engine) -> the list they go to."""
    stops, seen = [], []

    def follow(engine):
        stops.append(engine.bus.subscribe(lambda e: e.kind == "quota.reached" and seen.append(e)))
        return seen
    yield follow
    for stop in stops:
        stop()


def sleeper(engine, memory: int | None = 16 * MiB, system: bool = False):
    c = engine.create(ContainerConfig("busybox", ["sleep", "600"], memory=memory, system=system))
    engine.start(c)
    return c


def test_the_fourth_start_in_a_minute_is_refused_and_leaves_the_container_created(limited, quota_events):
    engine, clock = limited(starts_per_minute=3)
    events = quota_events(engine)
    for _ in range(3):
        assert engine.run(ContainerConfig("busybox", ["true"], auto_remove=True)).code == 0
    c = engine.create(ContainerConfig("busybox", ["sh", "-c", "echo again"]))
    clock.now += 48
    mounts = glassbox_mounts()
    with pytest.raises(QuotaReached) as refused:
        engine.start(c)
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "12"}
    assert str(refused.value) == ("quota reached: at most 3 container starts per minute on this host; "
                                  "try again in 12 s")
    assert c.state == "created" and c.process is None and c.cgroup is None
    # Nothing new is mounted (the three --rm containers may still be unmounting theirs).
    after = glassbox_mounts()
    assert set(after) <= set(mounts) and not [m for m in after if c.id in m]
    assert not (c.rw_dir / "upper").exists()
    assert [(e.subject["container"], e.detail) for e in events] == [
        (c.id, {"quota": "starts", "limit": 3, "retry_after": 12, "message": str(refused.value)})]
    clock.now += 12
    output = []
    engine.start(c, lambda stream, data: output.append(data))
    assert engine.wait(c, timeout=30).code == 0 and b"".join(output) == b"again\n"


def test_a_refused_rm_container_is_removed_as_docker_does(limited):
    engine, _ = limited(starts_per_minute=1)
    assert engine.run(ContainerConfig("busybox", ["true"], auto_remove=True)).code == 0
    c = engine.create(ContainerConfig("busybox", ["true"], auto_remove=True))
    with pytest.raises(QuotaReached):
        engine.start(c)
    assert c.state == "removed" and c.removed.is_set() and not c.dir.exists()
    assert c.id not in {k.id for k in engine.list()}


def test_the_running_quota_counts_running_containers_but_not_the_hosts_terminal(limited, quota_events):
    engine, _ = limited(running_containers=2)
    events = quota_events(engine)
    terminal = sleeper(engine, system=True)
    first, second = sleeper(engine), sleeper(engine)
    exited = engine.create(ContainerConfig("busybox", ["true"]))
    third = engine.create(ContainerConfig("busybox", ["sleep", "600"], memory=16 * MiB))
    with pytest.raises(QuotaReached) as refused:
        engine.start(third)
    assert refused.value.status == 409 and refused.value.headers == {}
    assert str(refused.value) == ("quota reached: 2 containers are running on this host (the limit is 2); "
                                  "stop one with docker stop, then try again")
    assert third.state == "created" and third.cgroup is None
    assert events[-1].detail == {"quota": "running_containers", "limit": 2, "retry_after": None,
                                 "message": str(refused.value)}
    engine.stop(first, timeout=1)
    engine.start(third)
    assert [c.state for c in (terminal, first, second, third)] == ["running", "exited", "running", "running"]
    with pytest.raises(QuotaReached):   # a container that would exit at once still needs a place
        engine.start(exited)


def test_the_memory_quota_adds_up_the_running_containers_limits(limited, quota_events):
    engine, _ = limited(running_memory=256 * MiB)
    events = quota_events(engine)
    sleeper(engine, memory=128 * MiB)
    sleeper(engine, memory=128 * MiB, system=True)     # the host's terminal takes none of it
    big = engine.create(ContainerConfig("busybox", ["sleep", "600"], memory=200 * MiB))
    with pytest.raises(QuotaReached) as refused:
        engine.start(big)
    assert refused.value.status == 409
    assert "may have 256 MiB of memory in all; 128 MiB is taken and this container asks for 200 MiB (-m)" \
        in str(refused.value)
    unlimited = engine.create(ContainerConfig("busybox", ["true"], memory=None))
    with pytest.raises(QuotaReached, match="has no memory limit, which counts as 2048 MiB"):
        engine.start(unlimited)
    assert [e.detail["quota"] for e in events] == ["running_memory", "running_memory"]
    assert big.state == unlimited.state == "created"
    fits = sleeper(engine, memory=128 * MiB)
    assert fits.state == "running"


def test_execs_have_their_own_rate(limited, quota_events):
    engine, clock = limited(execs_per_minute=2, starts_per_minute=1)
    events = quota_events(engine)
    c = sleeper(engine)
    for _ in range(2):
        engine.exec(c, ["true"]).done.wait(10)
    with pytest.raises(QuotaReached, match=r"^quota reached: at most 2 execs \(docker exec\) per minute "
                                           r"on this host; try again in 60 s$"):
        engine.exec(c, ["true"])
    assert events[-1].detail["quota"] == "execs"
    clock.now += 60
    assert engine.exec(c, ["true"]).done.wait(10)


def test_builds_are_limited_and_their_run_steps_use_no_start_slots(limited, state_dir, quota_events):
    engine, clock = limited(builds_per_minute=1, starts_per_minute=1)
    events = quota_events(engine)
    context = state_dir / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n")
    image = engine.build(context, BuildOptions(tags=["two-runs"], memory=32 * MiB))
    assert image.name == "two-runs:latest"
    with pytest.raises(QuotaReached, match="at most 1 build per minute on this host; try again in 60 s"):
        engine.build_context(context, BuildOptions(tags=["again"]))
    assert [(e.subject, e.detail["quota"], e.detail["retry_after"]) for e in events] == [
        ({"host": "default"}, "builds", 60)]
    assert engine.run(ContainerConfig("two-runs", ["cat", "/one", "/two"], auto_remove=True)).code == 0
    clock.now += 60
    assert engine.build(context, BuildOptions(tags=["again"], no_cache=True)).name == "again:latest"


def test_a_build_step_needs_room_among_the_running_containers(limited, state_dir):
    engine, _ = limited(running_memory=256 * MiB)
    sleeper(engine, memory=200 * MiB)
    context = state_dir / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    with pytest.raises(BuildError, match="this build step asks for 64 MiB; stop one with docker stop"):
        engine.build(context, BuildOptions(memory=64 * MiB))
    assert [c.config.memory for c in engine.list()] == [200 * MiB]   # the step's container is gone
    assert engine.build(context, BuildOptions(memory=32 * MiB)).id


# ---------------------------------------------------------------------- through the docker CLI

class Host:
    """A Docker host of an in-process daemon, with a quota, and the docker CLI on its socket."""

    def __init__(self, top: Path, quota: Quota):
        from sandbox.daemon import Daemon, host_socket_path
        self.top = top
        self.daemon = Daemon(top / "state", None)
        try:
            self.engine = self.daemon.create_host("default", quota=quota)
        except BaseException:
            self.daemon.close()
            raise
        self.socket = host_socket_path(top / "state", "default")
        (top / "home").mkdir()

    def docker(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}", HOME=str(self.top / "home"),
                   DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(self.top / "home" / ".docker"))
        return subprocess.run([DOCKER, *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def ok(self, *args) -> str:
        result = self.docker(*args)
        assert result.returncode == 0, f"docker {' '.join(map(str, args))}:\n{result.stderr}"
        return result.stdout

    def close(self) -> None:
        self.daemon.close()


@pytest.fixture
def host(state_dir, host_unchanged):
    made = []

    def make(quota: Quota) -> Host:
        made.append(Host(state_dir, quota))
        return made[-1]
    try:
        yield make
    finally:
        for h in made:
            h.close()


@pytest.mark.skipif(DOCKER is None, reason="no docker CLI (./test installs one)")
def test_the_docker_cli_shows_the_quota_messages(host, state_dir):
    h = host(Quota(starts_per_minute=3, execs_per_minute=1, builds_per_minute=1, running_containers=2))
    seen = []
    h.engine.bus.subscribe(lambda e: e.kind == "quota.reached" and seen.append(e.detail["quota"]))
    h.ok("run", "-d", "--name", "one", "busybox", "sleep", "600")
    h.ok("run", "-d", "--name", "two", "busybox", "sleep", "600")
    full = h.docker("run", "-d", "--name", "three", "busybox", "sleep", "600")
    assert full.returncode == 125
    assert full.stderr.splitlines()[0] == ("docker: Error response from daemon: quota reached: 2 containers "
                                           "are running on this host (the limit is 2); stop one with docker "
                                           "stop, then try again")
    assert h.ok("inspect", "-f", "{{.State.Status}}", "three").strip() == "created"

    h.ok("stop", "-t", "0", "one")
    h.ok("start", "three")                       # the third start of this minute
    h.ok("stop", "-t", "0", "two")               # room to run, but no start left
    h.ok("create", "--name", "four", "busybox", "true")
    status, body = unix_request(h.socket, "POST", "/containers/four/start")
    assert status == 429 and b"at most 3 container starts per minute" in body
    headers = raw_headers(h.socket, "POST", "/containers/four/start")
    assert 1 <= int(headers["retry-after"]) <= 60
    again = h.docker("start", "four")
    assert again.returncode == 1
    assert again.stderr.startswith("Error response from daemon: quota reached: at most 3 container starts "
                                   "per minute on this host; try again in ")
    before = {c.id for c in h.engine.list()}
    removed = h.docker("run", "--rm", "busybox", "true", timeout=30)   # the CLI waits for its removal
    assert removed.returncode == 125 and "at most 3 container starts per minute" in removed.stderr
    assert {c.id for c in h.engine.list()} == before

    h.ok("exec", "three", "true")
    refused_exec = h.docker("exec", "three", "true")
    assert refused_exec.returncode != 0
    assert "quota reached: at most 1 exec (docker exec) per minute on this host" in refused_exec.stderr

    context = state_dir / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nCMD [\"true\"]\n")
    (context / "big").write_bytes(bytes(32 * MiB))  # still being sent when the answer comes
    h.ok("build", "-q", "-t", "mine", context)
    for _ in range(3):   # a refusal that closed early would show a broken pipe instead, now and then
        refused_build = h.docker("build", "-t", "mine2", context)
        assert refused_build.returncode == 1
        assert refused_build.stderr.strip().splitlines()[-1].startswith(
            "Error response from daemon: quota reached: at most 1 build per minute on this host; try again in ")
    assert seen == ["running_containers", "starts", "starts", "starts", "starts", "execs"] + ["builds"] * 3


def raw_headers(socket_path: Path, method: str, url: str) -> dict:
    from tests.docker_harness import UnixHTTPConnection
    conn = UnixHTTPConnection(socket_path)
    try:
        conn.request(method, url)
        response = conn.getresponse()
        response.read()
        return {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_a_students_host_has_the_default_quota_and_the_machines_own_none(state_dir, host_unchanged):
    from sandbox.daemon import Daemon
    daemon = Daemon(state_dir / "state", None)
    try:
        assert daemon.create_host("default").quota.quota == Quota.unlimited()
        assert daemon.create_host("node1").quota.quota == Quota()
        small = Quota(starts_per_minute=5)
        assert daemon.create_host("node2", quota=small).quota.quota is small
    finally:
        daemon.close()
    with Engine(state_dir / "state") as engine:
        assert engine.quota.quota == Quota.unlimited()
    assert Quota() == Quota(30, 60, 6, 10, 1024 * MiB)
