"""The web app for real: `glassbox up` (daemon as root, gunicorn as the unprivileged
user), visitors with cookies, Socket.IO over WebSocket, the docker CLI on their hosts."""
from __future__ import annotations

import re
import socket
import time

import pytest
import requests
import socketio

from sandbox.webharness import WebApp


@pytest.fixture(scope="module")
def web():
    app = WebApp()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def visitor(web):
    made = []

    def make(**kwargs):
        v = web.visitor(**kwargs)
        made.append(v)
        return v
    yield make
    for v in made:
        v.close()


def contiguous(events: list[dict]) -> bool:
    seqs = [e["seq"] for e in events]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


# ---------------------------------------------------------------------- hosts and cookies

def test_a_first_visit_gets_its_own_docker_host_and_keeps_it(web, visitor):
    student = visitor()
    host = student.subscribe()["host"]
    status, listed = web.control("GET", "/glassbox/hosts")
    assert host in [h["Name"] for h in listed]
    assert re.fullmatch(r"v-[0-9a-f]{16}", host)
    assert next(h for h in listed if h["Name"] == host)["IdleTimeout"] == 1800

    again = visitor(cookie=student.cookie)
    assert again.subscribe()["host"] == host
    other = visitor()
    assert other.subscribe()["host"] != host


def test_the_page_is_served_with_its_own_libraries_and_a_strict_policy(web):
    page = requests.get(web.url + "/", timeout=30)
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for url in re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text):
        assert url.startswith("/"), f"{url} is not served by Glassbox itself"
        assert requests.get(web.url + url, timeout=10).status_code == 200, url
    assert requests.get(web.url + "/vendor/xterm/xterm.js", timeout=10).text.count("Terminal") > 0
    assert requests.get(web.url + "/vendor/../package.json", timeout=10).status_code == 404
    assert requests.get(web.url + "/vendor/socket.io-client/package.json", timeout=10).status_code == 404


def test_socketio_refuses_a_browser_without_a_cookie_or_from_another_origin(web, visitor):
    with pytest.raises(socketio.exceptions.ConnectionError):
        visitor(cookie="")
    with pytest.raises(socketio.exceptions.ConnectionError):
        visitor(cookie="forged.cookie.value")
    student = visitor(connect=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        student.connect(origin="http://evil.example")
    student.connect(origin=web.url)
    assert student.subscribe()["host"].startswith("v-")


def test_the_reset_form_needs_its_csrf_token(web, visitor):
    student = visitor()
    host = student.subscribe()["host"]
    assert web.docker(host, "volume", "create", "keep-me").returncode == 0

    forged = student.http.post(web.url + "/host/reset", data={}, allow_redirects=False, timeout=30)
    assert forged.status_code == 400
    assert "security token" in forged.text
    assert "keep-me" in web.docker(host, "volume", "ls", "-q").stdout

    page = student.http.get(web.url + "/", timeout=30).text
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    reset = student.http.post(web.url + "/host/reset", data={"csrf_token": token},
                              allow_redirects=False, timeout=60)
    assert reset.status_code == 302
    student.http.get(web.url + "/", timeout=30)  # the next visit makes a fresh host
    assert "keep-me" not in web.docker(host, "volume", "ls", "-q").stdout


def test_an_idle_visitor_host_is_freed(web):
    status, _ = web.control("POST", "/glassbox/hosts", {"Name": "v-idle", "IdleTimeout": 1})
    assert status == 201
    deadline = time.monotonic() + 20
    while "v-idle" in [h["Name"] for h in web.control("GET", "/glassbox/hosts")[1]]:
        assert time.monotonic() < deadline, "the idle host was never freed"
        time.sleep(0.5)
    assert not web.host_socket("v-idle").exists()


# ---------------------------------------------------------------------- live events

def test_events_reach_the_visitor_in_order_and_once(web, visitor):
    student = visitor()
    host = student.subscribe()["host"]
    result = web.docker(host, "run", "--name", "once", "busybox", "true")
    assert result.returncode == 0, result.stderr
    exited = student.wait_for_event("process.exited", name="once")
    assert exited["detail"]["exit_code"] == 0
    student.wait_for_event("cgroup.removed", name="once")
    assert contiguous(student.events)
    assert {e["host"] for e in student.events} == {host}
    kinds = [e["kind"] for e in student.events if e["subject"].get("name") == "once"]
    assert kinds.index("ns.unshared") < kinds.index("rootfs.pivoted") < kinds.index("process.started") \
        < kinds.index("process.exited")


def test_a_reconnecting_visitor_gets_exactly_what_it_missed(web, visitor):
    student = visitor()
    host = student.subscribe()["host"]
    assert web.docker(host, "run", "--rm", "--name", "before", "busybox", "true").returncode == 0
    student.wait_for_event("container.removed", name="before")
    seen = list(student.events)
    last = seen[-1]["seq"]
    student.sio.disconnect()

    assert web.docker(host, "run", "--rm", "--name", "while-away", "busybox", "true").returncode == 0

    back = visitor(cookie=student.cookie)
    back.subscribe(since=last)
    back.wait_for_event("container.removed", name="while-away")
    assert back.events[0]["seq"] == last + 1
    assert contiguous(seen + back.events)
    assert web.docker(host, "run", "--rm", "--name", "after", "busybox", "true").returncode == 0
    back.wait_for_event("container.removed", name="after")
    assert contiguous(seen + back.events)


def test_two_students_never_see_each_others_events(web, visitor):
    alice, bob = visitor(), visitor()
    a, b = alice.subscribe()["host"], bob.subscribe()["host"]
    assert web.docker(a, "run", "--rm", "--name", "alice-secret", "busybox", "true").returncode == 0
    assert web.docker(b, "run", "--rm", "--name", "bob-secret", "busybox", "true").returncode == 0
    alice.wait_for_event("container.removed", name="alice-secret")
    bob.wait_for_event("container.removed", name="bob-secret")
    assert not [e for e in alice.events if e["host"] != a or "bob" in str(e)]
    assert not [e for e in bob.events if e["host"] != b or "alice" in str(e)]
    # Bob names Alice's container: his host does not have it.
    alice_id = alice.wait_for_event("container.created", name="alice-secret")["subject"]["container"]
    assert "error" in bob.call("inside", {"id": alice_id})
    assert "error" in bob.call("terminal.open", {"target": alice_id, "how": "exec"})


def test_a_stalled_browser_does_not_hold_up_another(web, visitor):
    """One student's tab stops reading; the other's events still all arrive."""
    stalled = visitor(connect=False)
    raw = socket.create_connection(("127.0.0.1", web.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 f"Sec-WebSocket-Version: 13\r\nCookie: session={stalled.cookie}\r\n\r\n").encode())
    assert b"101" in raw.recv(4096).split(b"\r\n")[0]

    def frame(text: str) -> bytes:  # a masked client text frame (RFC 6455)
        data, mask = text.encode(), b"\x01\x02\x03\x04"
        masked = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
        header = bytes([0x81, 0x80 | len(data)]) if len(data) < 126 else \
            bytes([0x81, 0xFE]) + len(data).to_bytes(2, "big")
        return header + mask + masked
    raw.sendall(frame("40"))
    time.sleep(0.3)
    raw.sendall(frame('421["subscribe",{"since":0}]'))
    try:
        host = visitor(cookie=stalled.cookie).subscribe()["host"]
        watcher = visitor(cookie=stalled.cookie)
        watcher.subscribe()
        for i in range(6):
            assert web.docker(host, "run", "--rm", "--name", f"flood-{i}", "busybox",
                              "sh", "-c", "seq 1 2000 >/dev/null").returncode == 0
        watcher.wait_for_event("container.removed", name="flood-5", timeout=30)
        assert contiguous(watcher.events)
    finally:
        raw.close()


# ---------------------------------------------------------------------- terminals

def test_the_host_terminal_runs_the_real_docker_cli(web, visitor):
    student = visitor()
    student.subscribe()
    opened = student.call("terminal.open", {"target": "host", "how": "attach", "cols": 120, "rows": 40})
    assert opened["id"] == "host", opened
    student.wait_for(lambda: "$ " in student.text("host") or "# " in student.text("host"),
                     what="a prompt")
    student.sio.emit("terminal.input", {"id": "host", "data": "docker run --rm busybox echo h''i\r"})
    student.wait_for(lambda: re.search(r"\r\nhi\r\n", student.text("host")), what="hi")
    student.sio.emit("terminal.input", {"id": "host", "data": "stty size\r"})
    student.wait_for(lambda: "40 120" in student.text("host"), what="the terminal's size")
    assert student.call("terminal.resize", {"id": "host", "cols": 90, "rows": 20}) is None
    student.sio.emit("terminal.input", {"id": "host", "data": "stty size\r"})
    student.wait_for(lambda: "20 90" in student.text("host"), what="the new size")

    # A second tab of the same student joins the same terminal and sees what was there.
    tab = visitor(cookie=student.cookie)
    tab.subscribe()
    assert tab.call("terminal.open", {"target": "host", "how": "attach"})["id"] == "host"
    assert "hi" in "".join(tab.replays["host"])
    tab.sio.emit("terminal.input", {"id": "host", "data": "echo from-$((6*7))\r"})
    student.wait_for(lambda: "from-42" in student.text("host"), what="the other tab's input")
    assert tab.terminal_lists[-1] == [{"id": "host", "title": "host terminal"}]


def test_a_shell_in_a_container_and_its_exit(web, visitor):
    student = visitor()
    host = student.subscribe()["host"]
    assert web.docker(host, "run", "-d", "--name", "box", "busybox", "sleep", "300").returncode == 0
    try:
        opened = student.call("terminal.open", {"target": "box", "how": "exec", "cols": 80, "rows": 24})
        ident = opened["id"]
        assert ident.startswith("exec:") and opened["title"] == "sh in box"
        student.sio.emit("terminal.input", {"id": ident, "data": "echo $$ $(hostname)\r"})
        student.wait_for(lambda: re.search(r"\d+ [0-9a-f]{12}\r\n", student.text(ident)), what="the shell")
        # Another tab (or a reload) rejoins the same shell by its id, with a replay.
        tab = visitor(cookie=student.cookie)
        tab.subscribe()
        assert tab.call("terminal.open", {"id": ident})["id"] == ident
        assert re.search(r"\d+ [0-9a-f]{12}", "".join(tab.replays[ident]))
        student.sio.emit("terminal.input", {"id": ident, "data": "exit 3\r"})
        exit_message = student.wait_for(lambda: [m for m in student.exits if m["id"] == ident],
                                        what="the exit")[0]
        assert exit_message["code"] == 3
        assert "error" in student.call("terminal.input", {"id": ident, "data": "x"})
        assert tab.call("terminal.open", {"id": ident}).get("gone") is True
    finally:
        web.docker(host, "rm", "-f", "box")


def test_terminal_messages_are_checked(web, visitor):
    student = visitor()
    student.subscribe()
    assert "error" in student.call("terminal.open", {"target": "../../etc", "how": "exec"})
    assert "error" in student.call("terminal.open", {"target": "host", "how": "sudo"})
    assert "error" in student.call("terminal.open", {"target": "host", "cols": "wide"})
    assert "error" in student.call("terminal.open", {"target": "no-such-box", "how": "exec"})
    assert "error" in student.call("terminal.input", {"id": "host", "data": "x" * 70000})
    assert "error" in student.call("subscribe", {"since": -4})
    assert "error" in student.call("inside", {"id": "../x"})


def test_a_quota_is_a_plain_message_and_an_event(web, visitor):
    student = visitor()
    host = student.subscribe()["host"]
    started = []
    try:
        for i in range(12):  # 4 × the default 256 MiB fills the host's 1 GiB
            result = web.docker(host, "run", "-d", "--name", f"q{i}", "busybox", "sleep", "60")
            if result.returncode != 0:
                break
            started.append(f"q{i}")
        assert 0 < len(started) < 12
        assert "quota reached" in result.stderr and "docker stop" in result.stderr
        reached = student.wait_for_event("quota.reached")
        assert reached["detail"]["quota"] in ("running_memory", "running_containers")
        assert "quota reached" in reached["detail"]["message"]
    finally:
        if started:
            web.docker(host, "rm", "-f", *started)


def test_the_operator_sets_visitors_quotas_on_the_command_line():
    web = WebApp("--quota", "running_containers=1", "--quota", "running_memory=none")
    try:
        student = web.visitor()
        host = student.subscribe()["host"]
        assert web.docker(host, "run", "-d", "--name", "one", "busybox", "sleep", "60").returncode == 0
        refused = web.docker(host, "run", "-d", "--name", "two", "busybox", "sleep", "60")
        assert refused.returncode != 0
        assert "1 containers are running on this host (the limit is 1)" in refused.stderr \
            or "the limit is 1" in refused.stderr, refused.stderr
        student.close()
    finally:
        web.stop()
