"""What the classroom (the web app, on the control socket) may change about a Docker host
while it lives — its quota, its registry logins — and what a host's socket shows a
lesson: the files in a volume, and the weak-point analysis as an event.

One real ``glassbox daemon`` serves the module; the docker CLI drives its hosts. A tiny
HTTP server on loopback stands in for the classroom registry where a test needs to see
which credentials the daemon sent.
"""
from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from sandbox.quota import HostQuota, Quota
from tests.docker_harness import DOCKER, running_daemon, unix_request
from tests.test_quota import FakeClock

pytestmark = [
    pytest.mark.skipif(DOCKER is None, reason="no docker CLI (./test installs one)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the daemon runs containers: needs root"),
]

DEFAULT_QUOTA = {"starts_per_minute": 30, "execs_per_minute": 60, "builds_per_minute": 6,
                 "running_containers": 10, "running_memory": 1024 * 1024 * 1024}


@pytest.fixture(scope="module")
def daemon():
    with running_daemon("glassbox-test-host-control-") as daemon:
        yield daemon


def control(daemon, method: str, path: str, body=None) -> tuple[int, object]:
    """A request on the control socket (the web app's), which manages hosts."""
    raw = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    status, data = unix_request(daemon.state / "glassbox.sock", method, path, raw,
                                {"Content-Type": "application/json"})
    return status, json.loads(data) if data else None


def api(daemon, method: str, path: str, body=None, host: str = "default", headers: dict | None = None):
    status, data = daemon.request(method, path, None if body is None else json.dumps(body),
                                  {"Content-Type": "application/json", **(headers or {})}, host=host)
    return status, json.loads(data) if data else None


@pytest.fixture
def new_host(daemon):
    """new_host(name, **create body) -> the host as POST /glassbox/hosts describes it;
    every host made is removed, with its containers and volumes, after the test."""
    made = []

    def make(name: str, **body) -> dict:
        status, described = control(daemon, "POST", "/glassbox/hosts", {"Name": name, **body})
        assert status == 201, described
        made.append(name)
        return described
    yield make
    for name in made:
        status, body = control(daemon, "DELETE", f"/glassbox/hosts/{name}")
        assert status == 204, body


def described(daemon, name: str) -> dict:
    status, hosts = control(daemon, "GET", "/glassbox/hosts")
    assert status == 200
    return next(h for h in hosts if h["Name"] == name)


# ---------------------------------------------------------------------- quota

def test_a_new_quota_holds_from_the_next_start_and_stops_nothing_that_runs(daemon, new_host):
    host = new_host("quota1", Quota={"running_containers": 3})
    assert host["Quota"] == {**DEFAULT_QUOTA, "running_containers": 3}
    for name in ("one", "two"):
        daemon.ok("run", "-d", "--name", name, "busybox", "sleep", "600", host="quota1")

    status, answer = control(daemon, "PUT", "/glassbox/hosts/quota1/quota", {"running_containers": 1})
    assert status == 200 and answer["Quota"] == {**DEFAULT_QUOTA, "running_containers": 1}
    assert described(daemon, "quota1")["Quota"] == answer["Quota"]
    assert sorted(daemon.ok("ps", "--format", "{{.Names}}", host="quota1").split()) == ["one", "two"]
    refused = daemon.fails("run", "-d", "--name", "three", "busybox", "sleep", "600", host="quota1")
    assert ("quota reached: 2 containers are running on this host (the limit is 1); stop one with "
            "docker stop, then try again") in refused

    status, answer = control(daemon, "PUT", "/glassbox/hosts/quota1/quota",
                             {"running_containers": None, "starts_per_minute": 100})
    assert status == 200
    assert answer["Quota"] == {**DEFAULT_QUOTA, "running_containers": None, "starts_per_minute": 100}
    daemon.ok("start", "three", host="quota1")
    assert daemon.ok("inspect", "-f", "{{.State.Status}}", "three", host="quota1").strip() == "running"


def test_what_was_taken_in_the_last_minute_counts_against_a_new_rate():
    clock = FakeClock()
    quota = HostQuota(Quota(starts_per_minute=None, execs_per_minute=5), clock)
    for _ in range(3):
        assert quota.take("execs") is None
    clock.now += 20
    quota.replace(Quota(starts_per_minute=None, execs_per_minute=2))
    refusal = quota.take("execs")
    assert (refusal.quota, refusal.limit, refusal.retry_after) == ("execs", 2, 40)
    quota.replace(Quota(starts_per_minute=None, execs_per_minute=None))
    assert quota.take("execs") is None and quota.quota.execs_per_minute is None


def test_the_machines_own_host_shows_no_quota_and_a_lifted_one_shows_none(daemon, new_host):
    assert described(daemon, "default")["Quota"] is None
    new_host("quota2")
    assert described(daemon, "quota2")["Quota"] == DEFAULT_QUOTA
    everything_lifted = {key: None for key in DEFAULT_QUOTA}
    status, answer = control(daemon, "PUT", "/glassbox/hosts/quota2/quota", everything_lifted)
    assert status == 200 and answer["Quota"] is None


def test_a_quota_for_a_missing_host_or_from_a_bad_body_is_refused_and_changes_nothing(daemon, new_host):
    new_host("quota3", Quota={"builds_per_minute": 2})
    assert control(daemon, "PUT", "/glassbox/hosts/nobody/quota", {}) == (404, {"message": "no such host: nobody"})
    bad = [
        ({"running_containres": 3}, "Quota must be an object with some of: builds_per_minute, "
                                    "execs_per_minute, running_containers, running_memory, starts_per_minute"),
        ({"running_containers": -1}, "Quota.running_containers must be a whole number ≥ 0, or null for no limit"),
        ({"running_memory": "1g"}, "Quota.running_memory must be a whole number ≥ 0, or null for no limit"),
        ({"starts_per_minute": True}, "Quota.starts_per_minute must be a whole number ≥ 0, or null for no limit"),
        ({"execs_per_minute": 0}, "Quota.execs_per_minute must allow at least 1 per minute (null lifts the limit)"),
        ("[1]", "the request body must be a JSON object"),
        ("", "a JSON body is required"),
    ]
    for body, message in bad:
        assert control(daemon, "PUT", "/glassbox/hosts/quota3/quota", body) == (400, {"message": message}), body
    assert described(daemon, "quota3")["Quota"] == {**DEFAULT_QUOTA, "builds_per_minute": 2}
    # The host's own socket is a student's: it can't change its quota.
    status, answer = api(daemon, "PUT", "/glassbox/hosts/quota3/quota", {}, host="quota3")
    assert (status, answer["message"]) == (403, "hosts are managed through the control socket only")


# ---------------------------------------------------------------------- registry logins

class Registry:
    """A stand-in registry on loopback: it writes down each request's method, path and
    Authorization header, and lets in only ``accepts`` (a Basic header) at /v2/."""

    def __init__(self, accepts: str | None = None):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_any(self):
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path == "/v2/" and accepts and self.headers.get("Authorization") == accepts:
                    status, body = 200, b"{}"
                else:
                    status, body = 401, json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                                                "message": "authentication required"}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first_authorization(self) -> str | None:
        assert self.seen, "the daemon never reached the registry"
        return self.seen[0][2]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def registry():
    made = []

    def make(accepts: str | None = None) -> Registry:
        made.append(Registry(accepts))
        return made[-1]
    yield make
    for r in made:
        r.close()


def docker_with_config(daemon, host: str, config: Path, *args, input: str | None = None):
    """The docker CLI with a config directory of its own (its own docker login)."""
    env = dict(daemon.env(host), DOCKER_CONFIG=str(config))
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, input=input,
                          timeout=120)


def test_a_students_push_and_pull_use_the_hosts_login_when_they_did_not_log_in(daemon, new_host, registry):
    classroom = registry()
    host = new_host("reg1", RegistryAuth={classroom.address: {"username": "alice", "password": "s3cret"}})
    assert host["RegistryAuth"] == [classroom.address]
    status, hosts = control(daemon, "GET", "/glassbox/hosts")
    assert status == 200 and "s3cret" not in json.dumps(hosts)

    image = f"{classroom.address}/c1/alice/app:v1"
    daemon.ok("tag", "busybox", image, host="reg1")
    refused = daemon.fails("push", image, host="reg1")
    assert "401" in refused
    assert classroom.seen[0][:2] == ("GET", "/v2/")
    assert classroom.first_authorization() == basic("alice", "s3cret")

    classroom.seen.clear()
    # A pull through the API: refused, the docker CLI would wait at a login prompt.
    status, data = daemon.request("POST", f"/images/create?fromImage={image}", host="reg1")
    assert b"401" in data
    assert classroom.first_authorization() == basic("alice", "s3cret")
    # Every request, not only the first, carries it.
    assert {auth for _, _, auth in classroom.seen} == {basic("alice", "s3cret")}


def test_a_login_the_student_gave_wins_over_the_hosts(daemon, new_host, registry):
    classroom = registry(accepts=basic("bob", "builder"))
    new_host("reg2", RegistryAuth={classroom.address: {"username": "alice", "password": "s3cret"}})
    image = f"{classroom.address}/c1/bob/app:v1"
    daemon.ok("tag", "busybox", image, host="reg2")

    # Through the docker CLI: docker login, then push.
    config = daemon.top / "bob-docker-config"   # bob's own docker login
    login = docker_with_config(daemon, "reg2", config, "login", classroom.address, "-u", "bob",
                               "--password-stdin", input="builder\n")
    assert login.returncode == 0, login.stderr
    classroom.seen.clear()
    pushed = docker_with_config(daemon, "reg2", config, "push", image)
    assert pushed.returncode != 0
    assert classroom.first_authorization() == basic("bob", "builder")

    # Through the API: an explicit X-Registry-Auth.
    classroom.seen.clear()
    auth = base64.urlsafe_b64encode(json.dumps({"username": "carol", "password": "pw"}).encode()).decode()
    daemon.request("POST", f"/images/{image.rsplit(':', 1)[0]}/push?tag=v1",
                   headers={"X-Registry-Auth": auth}, host="reg2")
    assert classroom.first_authorization() == basic("carol", "pw")

    # An empty one, as the CLI sends when nobody logged in, is no login at all.
    classroom.seen.clear()
    empty = base64.urlsafe_b64encode(b'{"username":"","password":""}').decode()
    daemon.request("POST", f"/images/{image.rsplit(':', 1)[0]}/push?tag=v1",
                   headers={"X-Registry-Auth": empty}, host="reg2")
    assert classroom.first_authorization() == basic("alice", "s3cret")


def test_the_hosts_logins_can_be_replaced_and_cleared(daemon, new_host, registry):
    first, second = registry(), registry()
    new_host("reg3", RegistryAuth={first.address: {"username": "alice", "password": "one"}})
    status, answer = control(daemon, "PUT", "/glassbox/hosts/reg3/registry-auth",
                             {second.address: {"username": "alice", "password": "two"}})
    assert status == 200 and answer["RegistryAuth"] == [second.address] and "two" not in json.dumps(answer)
    for r in (first, second):
        daemon.ok("tag", "busybox", f"{r.address}/c1/alice/app:v1", host="reg3")
        daemon.fails("push", f"{r.address}/c1/alice/app:v1", host="reg3")
    assert first.first_authorization() is None          # no longer the host's
    assert second.first_authorization() == basic("alice", "two")

    status, answer = control(daemon, "PUT", "/glassbox/hosts/reg3/registry-auth", {})
    assert status == 200 and answer["RegistryAuth"] == []
    second.seen.clear()
    daemon.fails("push", f"{second.address}/c1/alice/app:v1", host="reg3")
    assert second.first_authorization() is None


def test_registry_logins_that_are_not_well_formed_are_refused(daemon, new_host):
    new_host("reg4")
    login = {"username": "alice", "password": "pw"}
    status, answer = control(daemon, "POST", "/glassbox/hosts", {"Name": "reg5", "RegistryAuth": []})
    assert (status, answer) == (400, {"message": 'RegistryAuth must be an object: '
                                                 '{"HOST:PORT": {"username": …, "password": …}}'})
    bad = [
        ({f"127.0.0.1:{8000 + i}": login for i in range(9)}, "RegistryAuth names 9 registries; at most 8"),
        ({"127.0.0.1:8000": {"username": "alice", "password": ""}},
         "RegistryAuth['127.0.0.1:8000']: username and password must be non-empty strings"),
        ({"127.0.0.1:8000": {"username": 7, "password": "pw"}},
         "RegistryAuth['127.0.0.1:8000']: username and password must be non-empty strings"),
        ({"127.0.0.1:8000": {"username": "alice"}},
         "RegistryAuth['127.0.0.1:8000'] must be an object with exactly username and password"),
        ({"127.0.0.1:8000": "alice:pw"},
         "RegistryAuth['127.0.0.1:8000'] must be an object with exactly username and password"),
        ({"http://127.0.0.1:8000/": login},
         "RegistryAuth: 'http://127.0.0.1:8000/' is not a registry address (HOST:PORT, as in "
         "127.0.0.1:8000/NAME:TAG)"),
    ]
    for body, message in bad:
        assert control(daemon, "PUT", "/glassbox/hosts/reg4/registry-auth", body) == \
            (400, {"message": message}), body
        status, answer = control(daemon, "POST", "/glassbox/hosts", {"Name": "reg5", "RegistryAuth": body})
        assert (status, answer) == (400, {"message": message}), body
    assert "reg5" not in [h["Name"] for h in control(daemon, "GET", "/glassbox/hosts")[1]]
    assert control(daemon, "PUT", "/glassbox/hosts/nobody/registry-auth", {})[0] == 404
    assert described(daemon, "reg4")["RegistryAuth"] == []
    ok = {f"127.0.0.1:{8000 + i}": login for i in range(8)}
    assert control(daemon, "PUT", "/glassbox/hosts/reg4/registry-auth", ok)[1]["RegistryAuth"] == sorted(ok)


# ---------------------------------------------------------------------- volume files

def volume_files(daemon, name: str, host: str):
    return api(daemon, "GET", f"/glassbox/volumes/{name}/files", host=host)


def test_a_volume_lists_the_files_a_container_left_in_it(daemon, new_host):
    new_host("vol1")
    daemon.ok("volume", "create", "notes", host="vol1")
    daemon.ok("run", "--rm", "-v", "notes:/data", "busybox", "sh", "-c",
              "echo hi > /data/note.txt && mkdir /data/sub && printf abcde > /data/sub/five.txt "
              "&& ln -s /etc /data/out && ln -s ../../etc/passwd /data/sub/pw && mkfifo /data/pipe",
              host="vol1")
    assert daemon.ok("ps", "-aq", host="vol1").strip() == ""       # the container is gone
    status, listing = volume_files(daemon, "notes", "vol1")
    assert status == 200
    assert listing == {"Volume": "notes", "Truncated": False, "Files": [
        {"Path": "note.txt", "Type": "file", "Size": 3},
        {"Path": "out", "Type": "symlink", "Size": len("/etc")},    # not followed: no out/passwd
        {"Path": "pipe", "Type": "other", "Size": 0},
        {"Path": "sub", "Type": "dir", "Size": 0},
        {"Path": "sub/five.txt", "Type": "file", "Size": 5},
        {"Path": "sub/pw", "Type": "symlink", "Size": len("../../etc/passwd")},
    ]}


def test_a_volume_with_many_files_lists_a_thousand_and_says_it_stopped(daemon, new_host):
    new_host("vol2")
    daemon.ok("run", "--rm", "-v", "many:/data", "busybox", "sh", "-c",
              "mkdir /data/d && cd /data/d && for i in $(seq 1 1005); do : > f$i; done", host="vol2")
    status, listing = volume_files(daemon, "many", "vol2")
    assert status == 200 and listing["Truncated"] is True and len(listing["Files"]) == 1000
    paths = [f["Path"] for f in listing["Files"]]
    assert paths == sorted(paths) and paths[0] == "d"
    assert all(f == {"Path": f["Path"], "Type": "file", "Size": 0} for f in listing["Files"][1:])


def test_only_this_hosts_volumes_can_be_listed(daemon, new_host):
    new_host("vol3")
    new_host("vol4")
    daemon.ok("volume", "create", "private", host="vol3")
    assert volume_files(daemon, "private", "vol3")[1]["Files"] == []
    assert volume_files(daemon, "private", "vol4") == (404, {"message": "no such volume: private"})
    assert volume_files(daemon, "nothing", "vol3") == (404, {"message": "no such volume: nothing"})
    status, answer = volume_files(daemon, "..%2F..%2Fhosts", "vol3")
    assert status == 400 and answer["message"].startswith("invalid volume name '../../hosts'")


# ---------------------------------------------------------------------- the weak-point query

def weak_events(daemon) -> list[dict]:
    status, data = daemon.request("GET", "/glassbox/events?since=0&follow=0")
    assert status == 200
    return [e for e in map(json.loads, data.decode().splitlines()) if e["kind"] == "weak.analyzed"]


def test_the_weak_point_analysis_is_an_event_that_agrees_with_the_answer(daemon):
    before = len(weak_events(daemon))
    daemon.ok("run", "--name", "weak-user", "busybox", "true")
    try:
        status, hit = api(daemon, "POST", "/glassbox/tree/weak", {"path": "/bin/busybox"})
        assert status == 200 and hit["marked"] and hit["count"]["containers"] >= 1
        status, by_layer = api(daemon, "POST", "/glassbox/tree/weak", {"layers": hit["marked"][:1]})
        assert status == 200
        status, nothing = api(daemon, "POST", "/glassbox/tree/weak", {"path": "/no/such/file"})
        assert status == 200 and nothing["marked"] == []
    finally:
        daemon.ok("rm", "weak-user")
    events = weak_events(daemon)[before:]
    chains = [m.removeprefix("layer:") for m in hit["marked"]]
    assert [(e["subject"], e["detail"]) for e in events] == [
        ({"layer": chains[0]}, {"layers": chains, "path": "/bin/busybox", "images": hit["count"]["images"],
                                "containers": hit["count"]["containers"],
                                "affected_layers": hit["count"]["layers"]}),
        ({"layer": chains[0]}, {"layers": chains[:1], "path": None, "images": by_layer["count"]["images"],
                                "containers": by_layer["count"]["containers"],
                                "affected_layers": by_layer["count"]["layers"]}),
        ({}, {"layers": [], "path": "/no/such/file", "images": 0, "containers": 0, "affected_layers": 0}),
    ]
    assert all(e["host"] == "default" for e in events)
