"""``glassbox run``, ``glassbox daemon`` and ``glassbox up`` as a user runs them."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import pty_session
from tests.docker_harness import unix_request

GLASSBOX = str(Path(sys.executable).parent / "glassbox")


def glassbox(*args, state_dir, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([GLASSBOX, *args[:1], "--state-dir", str(state_dir), *args[1:]],
                          capture_output=True, timeout=120, **kwargs)


@pytest.mark.parametrize("code", [0, 1, 42])
def test_run_exits_with_the_containers_code(state_dir, host_unchanged, code):
    result = glassbox("run", "--rm", "busybox", "sh", "-c", f"echo out; echo err >&2; exit {code}",
                      state_dir=state_dir)
    assert result.returncode == code
    assert result.stdout == b"out\n" and result.stderr == b"err\n"


def test_run_oom_is_137_and_says_so(state_dir, host_unchanged):
    result = glassbox("run", "--rm", "-m", "24m", "--writable-size", "4m", "busybox", "tail", "/dev/zero",
                      state_dir=state_dir)
    assert result.returncode == 137
    assert b"OOM" in result.stderr


def test_run_events_are_json_lines_on_stderr(state_dir, host_unchanged):
    result = glassbox("run", "--rm", "--events", "--name", "ev", "--hostname", "box", "-e", "A=1",
                      "--pids-limit", "20", "--cpus", "0.5", "busybox", "sh", "-c", "echo $A $(hostname)",
                      state_dir=state_dir)
    assert result.returncode == 0 and result.stdout == b"1 box\n"
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    by_kind = {e["kind"]: e for e in events}
    created = by_kind["cgroup.created"]["detail"]
    assert created["pids"] == 20 and created["cpus"] == 0.5
    written = {path.rsplit("/", 1)[1]: value for path, value in created["written"].items()}
    assert written["pids.max"] == "20"
    assert written.get("cpu.cfs_quota_us") == "50000" or written.get("cpu.max") == "50000 100000"
    assert "memory.limit_in_bytes" in written or "memory.max" in written
    assert by_kind["process.exited"]["detail"]["exit_code"] == 0
    assert all(e["subject"].get("name") == "ev" for e in events if "container" in e["subject"])


def test_run_with_a_tty(state_dir, host_unchanged):
    code, output = pty_session([GLASSBOX, "run", "--state-dir", str(state_dir), "--rm", "-t", "busybox",
                                "sh", "-c", "tty; stty size; exit 7"])
    assert code == 7, output
    assert b"/dev/pts/0" in output


def test_run_bad_input_says_what_is_wrong(state_dir, host_unchanged):
    result = glassbox("run", "--rm", "nosuchimage", state_dir=state_dir)
    assert result.returncode == 125 and b"nosuchimage" in result.stderr
    result = glassbox("run", "--rm", "-m", "lots", "busybox", state_dir=state_dir)
    assert result.returncode == 2 and b"invalid size" in result.stderr
    result = glassbox("run", "--rm", "-v", "no-target-path", "busybox", state_dir=state_dir)
    assert result.returncode == 125 and b"invalid volume" in result.stderr
    result = glassbox("run", "--rm", "--name", "bad name!", "busybox", "true", state_dir=state_dir)
    assert result.returncode == 125 and b"invalid container name" in result.stderr


# ---------------------------------------------------------------------- the daemon

def api(sock: Path, method: str, path: str, body=None) -> tuple[int, object]:
    status, data = unix_request(sock, method, path, json.dumps(body) if body is not None else None,
                                {"Content-Type": "application/json"})
    return status, json.loads(data) if data and data[:1] in b"[{" else data


def start_daemon(state: Path, *extra) -> subprocess.Popen:
    process = subprocess.Popen([GLASSBOX, *(extra or ("daemon",)), "--state-dir", str(state)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = state / "glassbox.sock"
    deadline = time.time() + 60
    while time.time() < deadline:
        if sock.exists():
            try:
                if api(sock, "GET", "/_ping")[0] == 200:
                    return process
            except OSError:
                pass
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited: {process.stderr.read().decode()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the daemon did not answer on its socket")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def container_cgroups(state: Path) -> set[str]:
    """Names of the container cgroups under this state dir's engine, in any controller."""
    from sandbox.engine import cgroup_root_name
    root = cgroup_root_name(state)
    found = set()
    for controller in Path("/sys/fs/cgroup").iterdir():
        if (controller / root).is_dir():
            found |= {p.name for p in (controller / root).iterdir() if p.is_dir()}
    return found


def test_daemon_api_runs_a_container_life_cycle(state_dir, host_unchanged):
    state = state_dir / "state"
    daemon = start_daemon(state)
    sock = state / "glassbox.sock"
    try:
        status, version = api(sock, "GET", "/v1.44/version")
        assert status == 200 and version["ApiVersion"] == "1.44"
        status, info = api(sock, "GET", "/info")
        assert info["CgroupVersion"] in ("1", "2") and info["Images"] == 2
        status, images = api(sock, "GET", "/images/json")
        assert sorted(t for i in images for t in i["RepoTags"]) == ["busybox:latest", "scratch:latest"]
        status, created = api(sock, "POST", "/containers/create?name=web",
                              {"Image": "busybox", "Cmd": ["sh", "-c", "exit 3"]})
        assert status == 201
        assert api(sock, "POST", f"/containers/{created['Id']}/start")[0] == 204
        status, waited = api(sock, "POST", "/containers/web/wait")
        assert waited["StatusCode"] == 3
        status, inspected = api(sock, "GET", "/containers/web/json")
        assert inspected["State"]["Status"] == "exited" and inspected["State"]["ExitCode"] == 3
        assert api(sock, "DELETE", "/containers/web")[0] == 204
        status, missing = api(sock, "GET", "/containers/web/json")
        assert status == 404 and "no such container" in missing["message"]
        status, bad = api(sock, "POST", "/containers/create", {"Image": "nope"})
        assert status == 404 and "nope" in bad["message"]
    finally:
        stop(daemon)


def test_a_daemon_killed_mid_run_leaves_nothing_after_restart(state_dir, host_unchanged):
    state = state_dir / "state"
    daemon = start_daemon(state)
    sock = state / "glassbox.sock"
    try:
        _, created = api(sock, "POST", "/containers/create",
                         {"Image": "busybox", "Cmd": ["sh", "-c", "sleep 300 & sleep 300"]})
        assert api(sock, "POST", f"/containers/{created['Id']}/start")[0] == 204
        _, inspected = api(sock, "GET", f"/containers/{created['Id']}/json")
        pid = inspected["State"]["Pid"]
        assert pid > 0 and Path(f"/proc/{pid}").exists()
        assert created["Id"] in container_cgroups(state), "its cgroup exists while it runs"
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        # The daemon's mounts were in its own mount namespace: gone with it.
        with open("/proc/self/mountinfo") as f:
            assert str(state) not in f.read()
        daemon = start_daemon(state)  # start-up reconciles what is left
        deadline = time.time() + 10
        while Path(f"/proc/{pid}").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the container's PID 1 survived"
        assert created["Id"] not in container_cgroups(state)
        assert not (state / "containers" / "default" / created["Id"]).exists()
        _, listed = api(sock, "GET", "/containers/json?all=1")
        assert listed == []
    finally:
        stop(daemon)
    assert container_cgroups(state) == set()


def test_up_serves_the_status_page_from_the_real_daemon():
    # The web app may run as the unprivileged glassbox user: its state dir
    # must be reachable by it (not pytest's private tmp dirs).
    state_dir = Path(tempfile.mkdtemp(prefix="glassbox-up-"))
    os.chmod(state_dir, 0o711)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = start_daemon(state_dir / "state", "up", "--port", str(port))
    try:
        page = None
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert page is not None, "the web app did not answer"
        assert "busybox:latest" in page and "cgroupfs" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=5) as reply:
            assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        # The registry's storage is the web app's own, inside the state dir.
        assert (state_dir / "state" / "registry").is_dir()
    finally:
        stop(daemon)
        assert container_cgroups(state_dir / "state") == set()
        import shutil
        shutil.rmtree(state_dir, ignore_errors=True)
