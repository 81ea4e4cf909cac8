"""``glassbox bench events``: from the kernel's event to the student's screen.

A real ``glassbox up``, Debian's Chromium (driven by Playwright) on the page, containers
run on the student's host. For each container the daemon's ``process.exited`` event
carries the moment the kernel reported the exit (``time``); the page stamps the moment
it put that event's row into the DOM (``data-shown-at``). Both are this machine's wall
clock. Measured with the browser alone, then with 30 more Socket.IO clients watching
the same host (the relay's fan-out), whose own arrival times are reported too.

The peer is the daemon's own stream (``/glassbox/events`` read straight from the host's
unix socket, no web tier): the ratio says what the web path adds.

Keystroke echo: a key pressed in the browser's xterm.js → Socket.IO → the web app → the
attach stream → the shell's PTY echo → back to the screen; against the same round trip
on a raw attach stream to the daemon.
"""
from __future__ import annotations

import json
import statistics
import threading
import time

from sandbox.webharness import WebApp

CHROMIUM = "/usr/bin/chromium"


def percentiles(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0}

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))], 2)
    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "max_ms": round(ordered[-1], 2),
            "mean_ms": round(statistics.fmean(ordered), 2), "n": len(ordered)}


def run_containers(web: WebApp, host: str, n: int, prefix: str) -> None:
    import docker
    client = docker.DockerClient(base_url=f"unix://{web.host_socket(host)}", timeout=60)
    try:
        for i in range(n):
            client.containers.run("busybox", ["true"], name=f"{prefix}-{i}", remove=True)
            time.sleep(0.05)
    finally:
        client.close()


def raw_event_latency(web: WebApp, host: str, n: int) -> list[float]:
    """The peer: process.exited read from the daemon's own stream, no web tier."""
    from app.engine_client import EngineClient
    arrived: list[float] = []
    done = threading.Event()

    def read() -> None:
        for event in EngineClient(str(web.host_socket(host))).lines("/glassbox/events"):
            if event["kind"] == "process.exited" and event["subject"].get("name", "").startswith("raw-"):
                arrived.append((time.time() - event["time"]) * 1000)
                if len(arrived) >= n:
                    done.set()
                    return
    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.3)
    run_containers(web, host, n, "raw")
    done.wait(30)
    return arrived


def dom_latency(page, web: WebApp, host: str, n: int, prefix: str) -> list[float]:
    start_seq = page.evaluate("window.glassbox.lastSeq()")
    run_containers(web, host, n, prefix)
    page.wait_for_function(
        """([prefix, n]) => [...document.querySelectorAll('#timeline li.event[data-kind="process.exited"]')]
             .filter(li => li.textContent.includes(prefix + '-')).length >= n""",
        arg=[prefix, n], timeout=60_000)
    rows = page.evaluate("""(since) => [...document.querySelectorAll('#timeline li.event[data-kind="process.exited"]')]
        .filter(li => +li.dataset.seq > since).map(li => [+li.dataset.seq, +li.dataset.shownAt])""",
                         start_seq)
    times = event_times(web, host, "process.exited", prefix)
    return [(shown / 1000 - times[seq]) * 1000 for seq, shown in rows if seq in times]


def event_times(web: WebApp, host: str, kind: str, prefix: str) -> dict[int, float]:
    from app.engine_client import EngineClient
    client = EngineClient(str(web.host_socket(host)), timeout=30)
    return {e["seq"]: e["time"] for e in client.lines("/glassbox/events?since=0&follow=0")
            if e["kind"] == kind and e["subject"].get("name", "").startswith(prefix + "-")}


class Watchers:
    """30 more Socket.IO clients on the same host, in a process of their own (so their
    threads don't slow the measuring one), each noting when events arrive."""

    def __init__(self, web: WebApp, cookie: str, count: int):
        import subprocess
        import sys
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandbox.bench_web", web.url, cookie, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the watchers did not start: {ready!r}")
        self.latencies: list[float] = []

    def close(self) -> None:
        if self.process.poll() is None:
            out, _ = self.process.communicate("stop\n", timeout=60)
            self.latencies = json.loads(out.strip().splitlines()[-1])


def watch(url: str, cookie: str, count: int) -> None:
    """The watchers' process: connect, say ready, note arrivals until told to stop.

    Each watcher speaks Socket.IO's wire format itself over websocket-client and decodes
    only the messages it measures: 30 full python-socketio clients in one process would
    spend the process's one interpreter lock decoding every event, and measure that."""
    import sys
    import websocket
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"

    def one() -> websocket.WebSocket:
        ws = websocket.create_connection(ws_url, cookie=f"session={cookie}", timeout=30)
        ws.recv()                      # 0{...}: the engine.io handshake
        ws.send("40")
        while not ws.recv().startswith("40"):
            pass
        ws.send('421["subscribe",{"since":0}]')
        while not ws.recv().startswith("431"):  # its answer: the backlog came before it
            pass
        return ws

    def listen(ws: websocket.WebSocket) -> None:
        ws.settimeout(1.0)
        while not stop.is_set():
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                return
            now = time.time()
            if message == "2":
                ws.send("3")       # engine.io's ping, answered
            elif "process.exited" in message and '"fan-' in message:
                events = json.loads(message[message.index("["):])[1]
                with lock:
                    latencies.extend((now - e["time"]) * 1000 for e in events
                                     if e["kind"] == "process.exited"
                                     and e["subject"].get("name", "").startswith("fan-"))

    sockets = [one() for _ in range(count)]
    threads = [threading.Thread(target=listen, args=(ws,), daemon=True) for ws in sockets]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    sys.stdin.readline()
    stop.set()
    for thread in threads:
        thread.join(5)
    for ws in sockets:
        ws.close()
    print(json.dumps(latencies), flush=True)


def keystroke_echo(page, rounds: int) -> list[float]:
    """Round trips measured in the page: keydown → the echoed character drawn."""
    page.evaluate("""() => {
        const g = window.glassbox; g.echo = {pending: null, samples: []};
        document.addEventListener('keydown', () => { g.echo.pending = performance.now(); }, true);
        g.socket.on('terminal.output', (m) => {
            if (g.echo.pending !== null && m.data.includes('q')) {
                const t0 = g.echo.pending; g.echo.pending = null;
                requestAnimationFrame(() => g.echo.samples.push(performance.now() - t0));
            }
        });
    }""")
    page.click(".terminal[data-terminal-id='host']")
    for _ in range(rounds):
        page.keyboard.press("q")
        page.wait_for_function("() => window.glassbox.echo.pending === null", timeout=10_000)
        page.wait_for_timeout(30)
    page.keyboard.press("Control+U")
    return page.evaluate("() => window.glassbox.echo.samples")


def raw_keystroke_echo(web: WebApp, host: str, rounds: int) -> list[float]:
    """The peer: the same echo through a raw attach stream on the daemon's socket."""
    from app.engine_client import EngineClient
    client = EngineClient(str(web.host_socket(host)))
    ident = client.call("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["sh"], "Tty": True, "OpenStdin": True, "AttachStdin": True})["Id"]
    sock, _ = client.hijack("POST", f"/containers/{ident}/attach?stream=1&stdin=1&stdout=1&stderr=1")
    try:
        client.call("POST", f"/containers/{ident}/start")
        sock.settimeout(5)
        time.sleep(0.3)
        sock.recv(65536)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sock.sendall(b"q")
            while b"q" not in sock.recv(65536):
                pass
            samples.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.03)
        return samples
    finally:
        sock.close()
        client.call("DELETE", f"/containers/{ident}?force=1")


def bench_events(n: int = 50) -> dict:
    from playwright.sync_api import sync_playwright
    # The benchmark starts far more containers a minute than a student may.
    web = WebApp("--quota", "starts_per_minute=none", "--quota", "execs_per_minute=none")
    watchers = None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(web.url + "/")
            page.wait_for_selector("#connection[data-state='connected']")
            page.wait_for_selector(".terminal[data-terminal-id='host'] .xterm-rows")
            cookie = next(c["value"] for c in context.cookies() if c["name"] == "session")
            host = web.visitor(cookie=cookie).subscribe()["host"]
            run_containers(web, host, 3, "warm")

            raw = raw_event_latency(web, host, n)
            alone = dom_latency(page, web, host, n, "alone")
            watchers = Watchers(web, cookie, 30)
            crowded = dom_latency(page, web, host, n, "fan")
            watchers.close()
            fan_out = watchers.latencies
            echo = keystroke_echo(page, 30)
            raw_echo = raw_keystroke_echo(web, host, 30)
            browser.close()
    finally:
        if watchers:
            watchers.close()
        web.stop()
    figures = {
        "daemon_stream": percentiles(raw),
        "browser_alone": percentiles(alone),
        "browser_with_30_clients": percentiles(crowded),
        "the_30_clients": percentiles(fan_out),
        "keystroke_echo_browser": percentiles(echo),
        "keystroke_echo_raw_attach": percentiles(raw_echo),
    }
    if raw and crowded:
        figures["p95_browser_with_30_over_daemon_stream"] = round(
            percentiles(crowded)["p95_ms"] / max(percentiles(raw)["p95_ms"], 0.01), 2)
    if echo and raw_echo:
        figures["echo_p50_ratio_browser_over_raw"] = round(
            percentiles(echo)["p50_ms"] / max(percentiles(raw_echo)["p50_ms"], 0.01), 2)
    for name, value in figures.items():
        print(f"{name}: {value}")
    return figures


if __name__ == "__main__":
    import sys
    watch(sys.argv[1], sys.argv[2], int(sys.argv[3]))
