"""Shared fixtures: a real engine in a temporary state dir, and a check that
every test leaves the mount table and the cgroup tree as it found them."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

BUSYBOX = "/bin/busybox"


def pytest_configure(config):
    # Like the glassbox command, the test process gets its own mount namespace
    # before any thread exists: engine mounts made here never reach the host's
    # table, even if a test run is killed.
    if os.geteuid() == 0:
        from sandbox.engine import enter_private_mount_namespace
        enter_private_mount_namespace()


def glassbox_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f
                      if "glassbox" in line or " overlay " in line or "/state/" in line)


def glassbox_cgroups(state_dir: Path) -> list[str]:
    """cgroups of engines on this state dir (or its ``state`` subdir) only:
    other engines on the machine are none of this test's business."""
    from sandbox.engine import cgroup_root_name
    names = {cgroup_root_name(state_dir), cgroup_root_name(state_dir / "state")}
    found = []
    for controller in Path("/sys/fs/cgroup").iterdir():
        found += [str(controller / n) for n in names if (controller / n).exists()]
    return sorted(found)


@pytest.fixture
def host_unchanged(state_dir):
    """Fails the test if it leaves a mount or a cgroup behind."""
    mounts, groups = glassbox_mounts(), glassbox_cgroups(state_dir)
    yield
    assert glassbox_mounts() == mounts, "mounts left behind"
    assert glassbox_cgroups(state_dir) == groups, "cgroups left behind"


@pytest.fixture
def state_dir():
    # Not pytest's tmp_path: it keeps old runs around, and the container's
    # root must not need to traverse it anyway.
    path = Path(tempfile.mkdtemp(prefix="glassbox-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def engine(state_dir, host_unchanged):
    from sandbox.engine import Engine
    engine = Engine(state_dir / "state")
    yield engine
    engine.close()


class Output:
    """Collects a process's stdout and stderr as they stream."""

    def __init__(self):
        self.chunks: list[tuple[str, bytes]] = []

    def __call__(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))

    def text(self, stream: str | None = None) -> str:
        return b"".join(d for s, d in self.chunks if stream in (None, s)).decode()


@pytest.fixture
def run(engine):
    """run(cmd, **config) -> (ExitStatus, Output, Container); the container stays until the test ends."""
    from sandbox.runtime import ContainerConfig

    def run(cmd, image="busybox", **options):
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
        output = Output()
        container = engine.create(ContainerConfig(image, argv, **options))
        try:
            engine.start(container, output)
        except Exception:
            return container.status, output, container
        return engine.wait(container, timeout=60), output, container
    return run


@pytest.fixture
def events(engine):
    """Every event the engine emits during the test, in order."""
    seen = []
    unsubscribe = engine.bus.subscribe(seen.append)
    yield seen
    unsubscribe()


def pty_session(argv: list[str], env: dict | None = None, prompt: bytes | None = None,
                keys: bytes = b"", timeout: float = 60) -> tuple[int, bytes]:
    """Runs ``argv`` on a new PTY, as a person at a terminal would; types ``keys`` once
    ``prompt`` shows. Returns (exit code, everything the terminal showed)."""
    import pty
    import select
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env if env is not None else dict(os.environ))
    output, sent = b"", False
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
            if prompt is not None and not sent and prompt in output:
                os.write(fd, keys)
                sent = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output
