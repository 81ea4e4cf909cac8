"""A student holds a Docker host's socket and may send anything over it.

Every test is a defence that holds. Those under "real problems" began as strict
xfails from a review, each with a reproduction, and pass since the fixes.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import time
from urllib.parse import quote

import pytest

from tests.docker_harness import DOCKER, running_daemon, unix_request

pytestmark = pytest.mark.skipif(DOCKER is None, reason="no docker CLI (./test installs one)")


@pytest.fixture(scope="module")
def daemon():
    with running_daemon("glassbox-test-abuse-") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def api(daemon):
    def call(method, url, body=None, headers=None, host="default", control=False):
        path = daemon.state / "glassbox.sock" if control else daemon.host_socket(host)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        return unix_request(path, method, url, body, headers)
    return call


@pytest.fixture(scope="module")
def sleeper(api):
    status, data = api("POST", "/containers/create?name=abuse-sleeper",
                       {"Image": "busybox", "Cmd": ["sleep", "600"]})
    assert status == 201, data
    assert api("POST", "/containers/abuse-sleeper/start")[0] == 204
    yield json.loads(data)["Id"]
    api("DELETE", "/containers/abuse-sleeper?force=1")


def threads_of(daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.process.pid}/task"))


def raw_socket(daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket))
    return s


# ---------------------------------------------------------------------- defences that hold

@pytest.mark.parametrize("host_config", [
    {"Binds": ["/etc:/x"]},
    {"Binds": ["/:/host:ro"]},
    {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]},
    {"Mounts": [{"Type": "volume", "Source": "/etc", "Target": "/x"}]},
    {"Mounts": [{"Type": "volume", "Source": "..", "Target": "/x"}]},
    {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/proc"}]},
    {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/x/../../etc"}]},
    {"Memory": 1 << 40},
    {"Memory": 1},
    {"PidsLimit": 10**9},
    {"NanoCpus": 10**15},
    {"CpuQuota": 10**12, "CpuPeriod": 1000},
    {"Memory": 1.5e9},
])
def test_host_paths_and_limits_refused(api, host_config):
    status, data = api("POST", "/containers/create", {"Image": "busybox", "HostConfig": host_config})
    assert status == 400, data


@pytest.mark.parametrize("method,url,body", [
    ("POST", "/volumes/create", {"Name": "../escape"}),
    ("POST", "/volumes/create", {"Name": "x", "DriverOpts": {"device": "/etc", "o": "bind", "type": "none"}}),
    ("POST", "/volumes/create", {"Name": "x", "Driver": "other"}),
    ("GET", "/volumes/%2E%2E%2F%2E%2E", None),
    ("DELETE", "/volumes/%2E%2E%2F%2E%2E?force=1", None),
    ("POST", "/images/busybox/tag?repo=..%2F..%2Fx", None),
    ("POST", "/images/busybox/tag?repo=x&tag=..%2F..%2Fy", None),
    ("POST", "/containers/create?name=..%2Fx", {"Image": "busybox"}),
    ("POST", "/build?dockerfile=..%2F..%2Fetc%2Fpasswd", None),
    ("POST", "/build?buildargs=%7Bbad", None),
    ("POST", "/build?buildargs=%5B%5D", None),
    ("POST", "/build?memory=abc", None),
    ("POST", "/build?remote=http%3A%2F%2Fexample.com%2Fx.git", None),
    ("GET", "/images/json?filters=%7Bbad", None),
    ("GET", "/images/json?filters=%5B1%5D", None),
    ("GET", "/images/json?filters=%7B%22dangling%22%3A5%7D", None),
    ("GET", "/events?since=abc", None),
    ("GET", "/glassbox/events?since=abc", None),
    ("GET", "/containers/json?all=maybe", None),
    ("POST", "/containers/nope/stop?t=abc", None),
    ("POST", "/containers/create", "{bad"),
    ("POST", "/containers/create", "[1]"),
    ("GET", "/glassbox/hosts", None),
    ("POST", "/glassbox/hosts", {"Name": "mine"}),
])
def test_malformed_or_hostile_requests_are_4xx(api, method, url, body):
    status, data = api(method, url, body)
    assert 400 <= status < 500, (status, data)


def test_image_names_with_path_tricks_are_404(api):
    for name in ("../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd"):
        assert api("GET", f"/images/{quote(name, safe='')}/json")[0] == 404
        assert api("GET", f"/images/get?names={quote(name, safe='')}")[0] == 404


def test_oversized_json_body_is_413(api):
    status, _ = api("POST", "/containers/create", b"{" + b" " * (2 << 20) + b"}",
                    headers={"Content-Type": "application/json"})
    assert status == 413


def test_build_context_outside_dockerfile_path_refused(daemon, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY ../../etc/passwd /x\n")
    result = daemon.docker("build", "-q", str(tmp_path))
    assert result.returncode != 0 and "outside the build context" in result.stderr


def test_other_hosts_objects_are_invisible(daemon, api):
    status, data = api("POST", "/glassbox/hosts", {"Name": "abuse-other"}, control=True)
    assert status == 201, data
    try:
        status, data = api("POST", "/containers/create?name=theirs", {"Image": "busybox"}, host="abuse-other")
        assert status == 201, data
        theirs = json.loads(data)["Id"]
        assert api("POST", "/volumes/create", {"Name": "theirvol"}, host="abuse-other")[0] == 201
        for ref in ("theirs", theirs, theirs[:12]):
            assert api("GET", f"/containers/{ref}/json")[0] == 404
            assert api("POST", f"/containers/{ref}/exec", {"Cmd": ["id"]})[0] == 404
            assert api("DELETE", f"/containers/{ref}?force=1")[0] == 404
        assert api("GET", "/volumes/theirvol")[0] == 404
        names = [c["Names"][0] for c in json.loads(api("GET", "/containers/json?all=1")[1])]
        assert "/theirs" not in names
    finally:
        api("DELETE", "/glassbox/hosts/abuse-other", control=True)


# ---------------------------------------------------------------------- real problems

def test_negative_chunk_size_is_refused_at_once(daemon):
    s = raw_socket(daemon)
    try:
        s.sendall(b"POST /containers/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: application/json\r\n\r\n-1\r\n" + b"A" * 65536)
        s.settimeout(5)
        try:
            answer = s.recv(200)
        except socket.timeout:
            answer = b""  # the daemon is still swallowing the body
        assert answer.startswith(b"HTTP/1.1 400")
    finally:
        s.close()


def test_events_stream_ends_when_client_leaves(daemon):
    time.sleep(0.5)
    before = threads_of(daemon)
    for _ in range(10):
        s = raw_socket(daemon)
        s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        s.recv(1000)
        s.close()
    deadline = time.time() + 5
    while time.time() < deadline and threads_of(daemon) > before + 2:
        time.sleep(0.2)
    assert threads_of(daemon) <= before + 2


def test_idle_connections_time_out():
    from sandbox.api import Handler
    assert Handler.timeout is not None


@pytest.mark.parametrize("method,url,body,headers", [
    pytest.param("POST", "/containers/create", {"Image": "busybox", "HostConfig": {"Binds": [5]}}, None,
                 id="binds-int"),
    pytest.param("POST", "/containers/create", {"Image": "busybox", "HostConfig": {"Binds": 5}}, None,
                 id="binds-not-list"),
    pytest.param("POST", "/containers/abuse-sleeper/stop?t=100000000000000000000", None, None,
                 id="stop-huge-timeout"),
    pytest.param("POST", "/containers/abuse-sleeper/kill?signal=99999", None, None,
                 id="kill-bad-signal-number"),
    pytest.param("POST", "/images/create?fromImage=127.0.0.1:1/x", None,
                 {"X-Registry-Auth": base64.urlsafe_b64encode(b'{"auth": 5}').decode()},
                 id="registry-auth-not-string"),
])
def test_bad_values_are_4xx_not_500(api, sleeper, method, url, body, headers):
    status, data = api(method, url, body, headers)
    assert status < 500, data


def test_commit_config_is_type_checked(api, sleeper):
    status, data = api("POST", "/commit?container=abuse-sleeper&repo=abuse-badcmd", {"Cmd": 5})
    if status == 201:
        status, data = api("POST", "/containers/create", {"Image": "abuse-badcmd"})
        assert status != 500, data
    else:
        assert status == 400, data


def test_image_volume_on_proc_refused(api, sleeper):
    status, data = api("POST", "/commit?container=abuse-sleeper&repo=abuse-volproc&changes=VOLUME%20%2Fproc")
    assert status == 201, data
    status, data = api("POST", "/containers/create", {"Image": "abuse-volproc"})
    if status == 201:
        api("DELETE", f"/containers/{json.loads(data)['Id']}?force=1")
    assert status == 400, data
