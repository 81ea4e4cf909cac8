"""The real docker CLI and docker-py drive the glass daemon: containers, streams, hosts."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import pty_session
from tests.docker_harness import DOCKER, GLASSBOX, running_daemon

pytestmark = pytest.mark.skipif(DOCKER is None, reason="no docker CLI (./test installs one)")


@pytest.fixture(scope="module")
def daemon():
    with running_daemon("glassbox-test-docker-") as daemon:
        yield daemon


@pytest.fixture
def docker(daemon):
    yield daemon
    daemon.remove_containers()


def test_version_info_and_ping(docker):
    version = json.loads(docker.ok("version", "--format", "{{json .Server}}"))
    assert version["ApiVersion"] >= "1.44" and version["Os"] == "linux"
    info = json.loads(docker.ok("info", "--format", "{{json .}}"))
    assert info["Images"] >= 2 and info["CgroupVersion"] in ("1", "2")


def test_run_streams_output_and_exit_code(docker):
    result = docker.docker("run", "--rm", "-e", "WHO=class", "-w", "/tmp", "--hostname", "box1",
                           "busybox", "sh", "-c", "echo hi $WHO from $(pwd) on $(hostname); echo oops >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == "hi class from /tmp on box1\n" and result.stderr == "oops\n"
    assert docker.ok("ps", "-aq") == ""  # --rm removed it


def test_run_with_limits_and_entrypoint(docker):
    out = docker.ok("run", "--rm", "-m", "64m", "--pids-limit", "30", "--cpus", "0.5",
                    "--entrypoint", "cat", "busybox", "/proc/self/status")
    assert "NoNewPrivs:\t1" in out
    result = docker.docker("run", "--rm", "-m", "24m", "busybox", "tail", "/dev/zero")
    assert result.returncode == 137


def test_detached_life_cycle_logs_exec_top_stats_stop(docker):
    cid = docker.ok("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
                    "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done").strip()
    assert len(cid) == 64
    time.sleep(1)
    assert "ticker" in docker.ok("ps")
    logs = docker.ok("logs", "--tail", "2", "-t", "ticker").splitlines()
    assert len(logs) == 2 and all(line.split()[1] == "tick" and line[:4] == "2026"[:2] + line[2:4]
                                  for line in logs)
    assert docker.ok("exec", "ticker", "sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '").splitlines()[1] \
        .startswith("sh -c i=0")
    assert docker.docker("exec", "ticker", "sh", "-c", "exit 4").returncode == 4
    top = docker.ok("top", "ticker")
    assert "PID" in top and "while true" in top
    stats = json.loads(docker.ok("stats", "--no-stream", "--format", "{{json .}}", "ticker"))
    assert stats["Name"] == "ticker" and int(stats["PIDs"]) >= 1
    inspect = json.loads(docker.ok("inspect", "ticker"))[0]
    assert inspect["State"]["Running"] and inspect["Config"]["Cmd"][0] == "sh"
    docker.ok("stop", "-t", "1", "ticker")
    assert docker.ok("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "ticker").strip() == "exited 137"
    follow = docker.docker("logs", "-f", "ticker", timeout=20)  # returns: the container is gone
    assert follow.stdout.startswith("tick 0\n")
    docker.ok("rm", "ticker")
    assert docker.docker("inspect", "ticker").returncode == 1


def test_create_start_wait_attach(docker):
    docker.ok("create", "--name", "later", "busybox", "sh", "-c", "echo started; exit 7")
    assert "Created" in docker.ok("ps", "-a", "--format", "{{.Status}}")
    docker.ok("start", "later")
    assert docker.ok("wait", "later").strip() == "7"
    docker.ok("create", "--name", "attached", "busybox", "sh", "-c", "sleep 0.5; echo late output")
    docker.ok("start", "attached")
    assert docker.docker("attach", "attached").stdout == "late output\n"
    docker.ok("rm", "-f", "later", "attached")


def test_run_interactive_with_a_tty(docker):
    code, output = pty_session([DOCKER, "run", "-it", "--rm", "--hostname", "ptybox", "busybox", "sh"],
                               docker.env(), prompt=b"# ", keys=b"hostname; tty; exit 5\r")
    assert code == 5
    assert b"ptybox" in output and b"/dev/pts/0" in output


def test_exec_interactive_stdin(docker):
    docker.ok("run", "-d", "--name", "sleeper", "busybox", "sleep", "30")
    result = docker.docker("exec", "-i", "sleeper", "sh", "-c", "read line; echo got:$line", input="typed\n")
    assert result.stdout == "got:typed\n"
    docker.ok("rm", "-f", "sleeper")


def test_named_volume_survives_its_container(docker):
    docker.ok("run", "--rm", "-v", "notes:/data", "busybox", "sh", "-c", "echo kept > /data/note")
    assert docker.ok("run", "--rm", "-v", "notes:/data:ro", "busybox", "cat", "/data/note") == "kept\n"
    result = docker.docker("run", "--rm", "-v", "/etc:/host", "busybox", "true")
    assert result.returncode != 0 and "host directories" in result.stderr


def test_events_stream(docker):
    events = subprocess.Popen([DOCKER, "events", "--format", "{{.Type}} {{.Action}}"], env=docker.env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        docker.ok("run", "--rm", "busybox", "true")
        time.sleep(0.5)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=10)
    lines = out.splitlines()
    for action in ("create", "start", "die", "destroy"):
        assert f"container {action}" in lines


def test_docker_py_drives_the_daemon(docker):
    import docker as docker_py
    client = docker_py.DockerClient(base_url=docker.env()["DOCKER_HOST"], timeout=60)
    try:
        assert client.ping()
        assert client.containers.run("busybox", ["echo", "from docker-py"], remove=True) == b"from docker-py\n"
        c = client.containers.run("busybox", ["sh", "-c", "echo x; sleep 30"], detach=True, name="py1")
        c.reload()
        assert c.status == "running"
        code, out = c.exec_run(["sh", "-c", "echo exec-ok"])
        assert (code, out) == (0, b"exec-ok\n")
        c.kill()
        assert c.wait()["StatusCode"] == 137
        assert b"x\n" in c.logs()
        c.remove()
        assert [x.name for x in client.containers.list(all=True)] == []
    finally:
        client.close()


def test_hosts_are_separate(docker):
    assert subprocess.run([GLASSBOX, "host", "create", "node2", "--state-dir", str(docker.state)],
                          capture_output=True, text=True).returncode == 0
    try:
        docker.ok("run", "-d", "--name", "only-on-default", "busybox", "sleep", "30")
        assert docker.ok("ps", "-aq", host="node2") == ""
        assert docker.docker("inspect", "only-on-default", host="node2").returncode == 1
        docker.ok("run", "--rm", "-v", "n2vol:/d", "busybox", "true", host="node2")
        assert "n2vol" not in docker.ok("volume", "ls")
        listed = subprocess.run([GLASSBOX, "host", "ls", "--state-dir", str(docker.state)],
                                capture_output=True, text=True).stdout
        assert "default" in listed and "node2" in listed
        # Not on a host's own socket: hosts are managed through the control socket.
        assert docker.request("GET", "/glassbox/hosts")[0] == 403
    finally:
        subprocess.run([GLASSBOX, "host", "rm", "node2", "--state-dir", str(docker.state)], check=True)
    assert not (docker.state / "hosts" / "node2" / "docker.sock").exists()


def test_bad_input_gets_a_clear_4xx_and_the_daemon_keeps_serving(docker):
    request = docker.request

    status, body = request("POST", "/v1.44/containers/create", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and b"invalid JSON" in body
    status, body = request("POST", "/containers/create", json.dumps({"Image": 5}).encode())
    assert status == 400 and b"Image" in body
    status, body = request("POST", "/containers/create", json.dumps({"Image": "busybox", "Cmd": "x",
                                                                     "HostConfig": {"Memory": "lots"}}).encode())
    assert status == 400 and b"Memory" in body
    status, body = request("POST", "/containers/create?name=../../etc", json.dumps({"Image": "busybox"}).encode())
    assert status == 400 and b"invalid container name" in body
    status, body = request("POST", "/containers/create", b"x" * (2 << 20))
    assert status == 413
    status, body = request("GET", "/v1.44/swarm")
    assert status == 404 and b"not part of the API" in body
    status, body = request("POST", "/containers/nope/start")
    assert status == 404 and b"no such container" in body
    assert docker.ok("run", "--rm", "busybox", "echo", "still serving") == "still serving\n"


def test_the_host_terminal_has_the_docker_cli_and_only_its_hosts_socket(docker):
    _, output = pty_session([GLASSBOX, "terminal", "--state-dir", str(docker.state)], prompt=b"default:/#",
                            keys=b"docker run --rm busybox echo from-the-terminal; ls /run/glassbox; "
                                 b"ls /var/lib/glassbox /proc/1/root/var 2>&1 | head -3; exit\r")
    text = output.decode(errors="replace")
    assert "from-the-terminal" in text
    assert "docker.sock" in text.split("from-the-terminal", 1)[1]
    assert "No such file or directory" in text  # the host's files are not there
    assert docker.ok("ps", "-aq") == ""  # the terminal isn't one of the host's containers


def test_glassbox_step_events_stream_and_replay(docker):
    from tests.docker_harness import UnixHTTPConnection
    docker.ok("run", "--rm", "--name", "stepper", "busybox", "true")
    conn = UnixHTTPConnection(docker.socket, timeout=10)
    conn.request("GET", "/glassbox/events?since=0")
    response = conn.getresponse()
    assert response.status == 200
    kinds, seqs = [], []
    while "container.removed" not in kinds:
        line = response.readline()
        assert line, "the stream ended"
        if line.strip():
            event = json.loads(line)
            if event["subject"].get("name") == "stepper":
                kinds.append(event["kind"])
            seqs.append(event["seq"])
    conn.close()
    assert seqs == sorted(seqs)
    for step in ("cgroup.created", "mount.overlay", "userns.mapped", "ns.unshared", "rootfs.pivoted",
                 "lockdown.applied", "process.started", "process.exited"):
        assert step in kinds


def test_kill_exec_with_a_tty_and_streaming_stats(docker):
    docker.ok("run", "-d", "--name", "target", "busybox", "sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done")
    code, output = pty_session([DOCKER, "exec", "-it", "target", "sh"], docker.env(), prompt=b"# ",
                               keys=b"tty; echo $$; exit 3\r")
    assert code == 3 and b"/dev/pts/" in output
    stats = subprocess.Popen([DOCKER, "stats", "--format", "{{.Name}} {{.PIDs}}", "target"], env=docker.env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.time() + 20
        while len([l for l in lines if "target" in l]) < 2 and time.time() < deadline:
            lines.append(stats.stdout.readline())
    finally:
        stats.kill()  # the CLI keeps streaming until it is stopped, as with Ctrl-C
        stats.wait(10)
    assert len([l for l in lines if "target" in l]) >= 2  # it streams: more than one reading
    docker.ok("kill", "-s", "USR1", "target")
    assert docker.ok("wait", "target").strip() == "42"
