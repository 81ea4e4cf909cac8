"""What an untrusted student could try against the web app, for real: `glassbox up`
(gunicorn as the unprivileged user), raw sockets and Socket.IO clients that misbehave on
purpose. Each test holds what a review found broken (and fixed) or checked and found held.

The web app listens on all addresses here, so that a client can come from this machine's
own non-loopback address: loopback connections are not counted per address (see
app/server.py). Its header deadline is shortened to 2 s to keep the file fast.
"""
from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from app.engine_client import EngineClient
from sandbox.webharness import WebApp
from tests.test_web import visitor  # noqa: F401 (the fixture, on this module's `web`)

CONNECTIONS_PER_ADDRESS = 32   # app/server.py's default
HEADERS_TIMEOUT = 2            # set for this file's web app (the default is 15 s)
CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def web():
    os.environ["GLASSBOX_HEADERS_TIMEOUT"] = str(HEADERS_TIMEOUT)
    try:
        app = WebApp("--host", "0.0.0.0")
    finally:
        del os.environ["GLASSBOX_HEADERS_TIMEOUT"]
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def raw_sockets():
    """Sockets a test opens by hand; all closed at the end, whatever happens."""
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


# ---------------------------------------------------------------------- helpers

def machine_address() -> str | None:
    """This machine's own non-loopback IPv4 address, if it has one."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return found.group(1) if found else None


def processes_of(web) -> list[int]:
    """The gunicorn processes (master and worker) serving this web app."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gunicorn" in cmdline and f":{web.port} " in cmdline:
            found.append(int(pid))
    return found


def worker_pid(web) -> int:
    def parent(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
    gunicorns = processes_of(web)
    return next(pid for pid in gunicorns if parent(pid) in gunicorns)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)) / 1024


def frame(text: str, length: int | None = None) -> bytes:
    """A masked client text frame (RFC 6455); ``length`` announces another size."""
    data, mask = text.encode(), b"\x01\x02\x03\x04"
    size = len(data) if length is None else length
    if size < 126:
        header = bytes([0x81, 0x80 | size])
    elif size < 65536:
        header = bytes([0x81, 0xFE]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0xFF]) + size.to_bytes(8, "big")
    return header + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data))


def websocket(web, opened: list, cookie: str | None = None, host: str = "127.0.0.1",
              small_window: bool = False) -> socket.socket:
    """A Socket.IO connection over a raw WebSocket: connected (``40`` sent) when it has a
    cookie, only upgraded without one. It reads nothing unless the test does."""
    s = socket.socket()
    opened.append(s)
    if small_window:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect((host, web.port))
    s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               + (f"Cookie: session={cookie}\r\n" if cookie else "") + "\r\n").encode())
    if cookie:
        assert s.recv(4096).startswith(b"HTTP/1.1 101")
        s.sendall(frame("40"))
        time.sleep(0.3)
    return s


def healthz_seconds(web) -> float:
    started = time.monotonic()
    assert requests.get(web.url + "/healthz", timeout=5).text == "ok"
    return time.monotonic() - started


def reset_host(web, student) -> None:
    """The reset form, as the page sends it (stops everything on the student's host)."""
    page = student.http.get(web.url + "/", timeout=30).text
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    answer = student.http.post(web.url + "/host/reset", data={"csrf_token": token},
                               allow_redirects=False, timeout=60)
    assert answer.status_code == 302


# ---------------------------------------------------------------------- gunicorn's threads

def test_one_address_cannot_hold_every_thread(web, raw_sockets):
    """Requests whose body never comes (or 200 WebSockets) held every one of gunicorn's 200
    threads, and the site answered no one. Now one address gets 32 connections; the
    rest are refused at once."""
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to come from")
    for _ in range(220):
        s = socket.create_connection((address, web.port), timeout=10)
        raw_sockets.append(s)
        s.sendall(b"POST /host/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n\r\ncsrf_token=")
    assert healthz_seconds(web) < 3
    time.sleep(0.5)
    answered, _, _ = select.select(raw_sockets, [], [], 0)  # a 503, or a reset
    assert len(raw_sockets) - len(answered) == CONNECTIONS_PER_ADDRESS


def test_one_address_opens_few_socketio_sessions_a_minute(web):
    """Each Engine.IO handshake (no cookie needed) kept 27 kB for 45 s: a thousand a
    second from one machine held a gigabyte."""
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to come from")
    # The connections an earlier test held from this address may take the server a moment
    # to let go of (their slots are per address): wait until the address is served again.
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://{address}:{web.port}/healthz", timeout=5).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the address was never served again"
        time.sleep(0.2)
    url = f"http://{address}:{web.port}/socket.io/?EIO=4&transport=polling"
    with requests.Session() as client:
        answers = [client.get(url, timeout=10).status_code for _ in range(40)]
    assert answers == [200] * 30 + [429] * 10
    # This machine itself (loopback) is not counted.
    assert all(requests.get(web.url + "/socket.io/?EIO=4&transport=polling", timeout=10).ok
               for _ in range(40))


def test_headers_sent_a_byte_at_a_time_are_cut_off(web, raw_sockets):
    """Slowloris: a request whose headers never end held its thread for ever."""
    s = socket.create_connection(("127.0.0.1", web.port))
    raw_sockets.append(s)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < HEADERS_TIMEOUT + 6:
        try:
            s.sendall(b"X-Slow: y\r\n")
            s.settimeout(0.5)
            if s.recv(4096) == b"":
                closed = True
                break
        except socket.timeout:
            continue
        except OSError:
            closed = True
            break
    assert closed, "the server still waits for the end of the headers"
    assert time.monotonic() - started < HEADERS_TIMEOUT + 4


def test_a_polling_post_that_breaks_a_rule_is_answered_at_once(web):
    """engineio answered a polling POST that was too long, or carried an unknown packet,
    by waiting for ever for its client to poll: 200 of them (one handshake each, no
    cookie) held every thread, and the site stayed down after their sender left."""
    for body, headers in ((b"x", {"Content-Length": "300000"}), (b"6", {})):
        handshake = requests.get(web.url + "/socket.io/?EIO=4&transport=polling", timeout=10)
        sid = json.loads(handshake.text[1:])["sid"]
        with socket.create_connection(("127.0.0.1", web.port), timeout=5) as s:
            length = headers.get("Content-Length", str(len(body)))
            s.sendall((f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                       f"Host: 127.0.0.1:{web.port}\r\nContent-Type: text/plain;charset=UTF-8\r\n"
                       f"Content-Length: {length}\r\n\r\n").encode() + body)
            assert s.recv(4096).startswith(b"HTTP/1.1 400")


# ---------------------------------------------------------------------- memory

def test_a_huge_websocket_message_is_refused_as_it_arrives(web, visitor, raw_sockets):
    """A message announced as 1 GiB was buffered whole before its size was checked."""
    student = visitor(connect=False)
    worker = worker_pid(web)
    s = websocket(web, raw_sockets, cookie=student.cookie)
    before = rss_mb(worker)
    s.sendall(frame("", length=1 << 30))
    sent = 0
    with pytest.raises(OSError):
        while sent < 48 << 20:
            s.sendall(b"a" * 65536)
            sent += 65536
    assert sent < 16 << 20
    assert rss_mb(worker) - before < 16


def test_a_tab_that_stops_reading_a_busy_terminal_holds_no_memory(web, visitor, raw_sockets):
    """`yes` in a terminal whose only tab stopped reading: its output queued for that tab
    without end (300 MB in 6 s). Now the terminal waits for its tabs, as a real one does."""
    student = visitor(connect=False)
    worker = worker_pid(web)
    s = websocket(web, raw_sockets, cookie=student.cookie, small_window=True)
    s.sendall(frame('421["terminal.open",{"target":"host","how":"attach"}]'))
    time.sleep(2)
    before = rss_mb(worker)
    try:
        s.sendall(frame('42["terminal.input",{"id":"host","data":"yes ' + "glass" * 20 + '\\r"}]'))
        time.sleep(6)
        assert rss_mb(worker) - before < 64
        other = visitor()
        other.subscribe()
        assert other.call("containers", timeout=5) == {"containers": []}
    finally:
        reset_host(web, student)


def test_a_browser_that_sends_without_reading_is_dropped(web, visitor, raw_sockets):
    """Every subscribe replays the host's events (up to 10,000): sent over and over by a
    client that reads nothing, the replays piled up in memory (100 MB here)."""
    student = visitor()
    host = student.subscribe()["host"]
    docker = EngineClient(str(web.host_socket(host)))
    for i in range(600):  # 1,200 events
        docker.call("POST", "/volumes/create", {"Name": f"v{i}"})
        docker.call("DELETE", f"/volumes/v{i}")
    worker = worker_pid(web)
    s = websocket(web, raw_sockets, cookie=student.cookie, small_window=True)
    before = rss_mb(worker)
    try:
        for _ in range(400):
            s.sendall(frame('42["subscribe",{"since":0}]'))
    except OSError:
        pass  # dropped already
    time.sleep(3)
    assert rss_mb(worker) - before < 48


# ---------------------------------------------------------------------- what a browser sends

def test_messages_of_the_wrong_shape_get_an_error(web, visitor):
    """A list for a message, a control character or a query string in an id: the handler
    used to raise (no answer at all, a traceback in the log) or send another request to
    the daemon than the one meant."""
    student = visitor()
    student.subscribe()
    for event, message in [
            ("inside", {"id": "a\r\nX-Injected: 1"}), ("inside", {"id": "x?all=1"}),
            ("inside", {"id": "json#"}), ("inside", ["id"]), ("inside", "id"),
            ("terminal.open", {"target": "a b", "how": "exec"}),
            ("terminal.open", {"target": "box\n", "how": "attach"}),
            ("terminal.open", {"target": "json?", "how": "attach"}),
            ("terminal.open", {"target": "%2e%2e", "how": "exec"}),
            ("terminal.open", {"target": ["host"]}), ("terminal.input", ["host", "x"]),
            ("terminal.resize", "host"), ("subscribe", {"since": "0"})]:
        answer = student.call(event, message, timeout=5)
        assert isinstance(answer, dict) and "error" in answer, (event, message, answer)


def test_another_visitors_terminals_and_containers_are_out_of_reach(web, visitor):
    alice, bob = visitor(), visitor()
    host = alice.subscribe()["host"]
    bob.subscribe()
    assert web.docker(host, "run", "-d", "--name", "box", "busybox", "sleep", "300").returncode == 0
    try:
        shell = alice.call("terminal.open", {"target": "box", "how": "exec"})["id"]
        attached = alice.call("terminal.open", {"target": "box", "how": "attach"})["id"]
        alice.call("terminal.open", {"target": "host"})
        box = alice.call("containers")["containers"][0]["Id"]
        assert attached == f"attach:{box}"
        for ident in (shell, attached, f"../{host}/host", f"{shell}?x", box):
            assert bob.call("terminal.open", {"id": ident}).get("gone") is True, ident
            assert "error" in bob.call("terminal.input", {"id": ident, "data": "echo bob-was-here\r"})
            assert "error" in bob.call("terminal.resize", {"id": ident, "cols": 20, "rows": 5})
            assert bob.call("terminal.leave", {"id": ident}) is None
        for target in (box, "box", box[:12]):
            assert "error" in bob.call("terminal.open", {"target": target, "how": "exec"})
            assert "error" in bob.call("terminal.open", {"target": target, "how": "attach"})
            assert "error" in bob.call("inside", {"id": target})
        # "host" is always the caller's own host terminal.
        assert bob.call("terminal.open", {"id": "host"})["id"] == "host"
        bob.sio.emit("terminal.input", {"id": "host", "data": "echo bob-$((6*7))\r"})
        bob.wait_for(lambda: "bob-42" in bob.text("host"), what="bob's own terminal")
        alice.sio.emit("terminal.input", {"id": shell, "data": "echo alice-$((6*7))\r"})
        alice.wait_for(lambda: "alice-42" in alice.text(shell), what="alice's own shell")
        assert "bob" not in alice.text(shell) + alice.text(attached) + alice.text("host")
        assert set(bob.output) | set(bob.replays) == {"host"} and "alice" not in bob.text("host")
        assert not [e for e in bob.events if e["host"] == host]
    finally:
        web.docker(host, "rm", "-f", "box")


def test_socketio_from_another_origin_is_refused_by_polling_too(web, visitor):
    student = visitor(connect=False)
    url = web.url + "/socket.io/?EIO=4&transport=polling"
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{web.port}.evil.example"):
        answer = requests.get(url, headers={"Origin": origin}, cookies={"session": student.cookie},
                              timeout=10)
        assert answer.status_code == 400, origin
    assert requests.get(url, headers={"Origin": web.url}, timeout=10).status_code == 200


def test_dropping_cookies_gets_one_address_at_most_20_hosts(web):
    """From 127.0.0.2, so that the other tests' address keeps its own count."""
    import http.client

    def visit(**headers) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30,
                                          source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/", headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()
    assert [visit() for _ in range(20)] == [200] * 20
    assert visit() == 429
    assert visit(**{"X-Forwarded-For": "198.51.100.7", "X-Real-IP": "198.51.100.7"}) == 429


# ---------------------------------------------------------------------- the page

def test_the_pages_scripts_never_write_received_text_as_html():
    """No innerHTML and kin in the page's modules: names, commands and event details from
    the daemon can only become text (and the CSP would stop an inline script anyway)."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc")
    for path in sorted((CHECKOUT / "static" / "js").glob("*.js")):
        assert not sinks.search(path.read_text()), path.name


def test_static_and_vendor_serve_nothing_else(web):
    for path in ("/static/../app/__init__.py", "/static/%2e%2e/app/web.py", "/static/..%2fapp%2fweb.py",
                 "/static/js/../../pyproject.toml", "/vendor/../package.json", "/vendor/xterm/../../package.json",
                 "/vendor/%2e%2e/package-lock.json", "/static//etc/passwd", "/vendor//etc/passwd"):
        answer = requests.get(web.url + path, timeout=10)  # a redirect ("//") is followed
        assert answer.status_code == 404, path
        assert "[project]" not in answer.text and "root:" not in answer.text


def test_html_in_a_command_line_shows_as_text(web):
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(web.url + "/")
            page.wait_for_selector("#connection[data-state='connected']", timeout=30_000)
            cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "session")
            student = web.visitor(cookie=cookie)
            host = student.subscribe()["host"]
            student.close()
            payload = '<img src=x onerror="document.title=1337"><script>document.title=1337</script>'
            assert web.docker(host, "run", "--rm", "--name", "xss", "busybox", "echo", payload).returncode == 0
            page.wait_for_selector("#timeline li:has-text('<img src=x')", timeout=30_000)
            assert page.evaluate("document.querySelectorAll('img[src=x], #timeline script').length") == 0
            assert page.title() != "1337" and not errors
        finally:
            browser.close()


# ---------------------------------------------------------------------- hosts going away

def test_a_host_removed_under_an_open_tab_tells_the_tab(web, visitor):
    """The idle reaper (or the operator) removes a host: its event stream used to stay open
    for ever, so the tab was never told and the relay's thread (and the daemon's) leaked."""
    student = visitor()
    host = student.subscribe()["host"]
    assert student.call("terminal.open", {"target": "host"})["id"] == "host"
    status, _ = web.control("DELETE", f"/glassbox/hosts/{host}")
    assert status == 204
    student.wait_for(lambda: student.notices, timeout=10, what="the notice")
    assert "gone" in student.notices[0]["message"]
    student.wait_for(lambda: student.exits, timeout=10, what="the terminal's end")
    assert "error" in student.call("terminal.input", {"id": "host", "data": "x"})


def test_reset_ends_the_terminals_of_every_tab(web, visitor):
    student = visitor()
    student.subscribe()
    tab = visitor(cookie=student.cookie)
    tab.subscribe()
    assert tab.call("terminal.open", {"target": "host"})["id"] == "host"
    reset_host(web, student)
    tab.wait_for(lambda: tab.exits, timeout=10, what="the terminal's end")
    assert "error" in tab.call("terminal.input", {"id": "host", "data": "x"})
    student.http.get(web.url + "/", timeout=30)  # the next visit makes a fresh host
    assert student.call("subscribe", {"since": 0})["seq"] == 0


def test_stopping_leaves_no_web_worker_behind(web, visitor):
    """Last: it stops the module's web app. The daemon killed gunicorn's master only, after
    10 s; the worker, with a WebSocket still open, lived on as an orphan."""
    student = visitor()
    student.subscribe()
    assert len(processes_of(web)) == 2
    web.stop()
    deadline = time.monotonic() + 5
    while processes_of(web) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_of(web)
    for pid in left:  # not to leave it running whatever the outcome
        os.kill(pid, 9)
    assert not left
