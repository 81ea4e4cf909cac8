"""``glassbox bench lessons``: how soon a step's checks answer, alone and for a class.

A real ``glassbox up``; an instructor creates a classroom and watches the dashboard over
Socket.IO; students join with the code (as browsers do: the page, the form, Socket.IO),
open the life-cycle lesson and run its first step's command with the real docker CLI.
Each step's decisive event (``process.exited`` of the container ``hello``) carries the
moment the daemon saw it (``time``); the figures are from that moment to

- ``check``: the student's page receiving ``lesson.checks`` with the step passed;
- ``dashboard``: the instructor's dashboard receiving the student's row with the step done;
- ``relay`` (the peer): the student's page receiving that event itself — the web path any
  live view takes; ``check`` over ``relay`` says what running the checks adds.

First one student at a time, then the whole class at once (30 by default: the command
of every student started together on this machine's 2 cores). Last, the cost of
evaluating each step of every lesson once against a host (the daemon API calls included).
"""
from __future__ import annotations

import re
import threading
import time

from sandbox.bench_web import percentiles
from sandbox.webharness import WebApp


class Timed:
    """A joined student whose Socket.IO messages are stamped on arrival."""

    def __init__(self, web: WebApp, code: str, name: str):
        self.web = web
        self.visitor = web.visitor(connect=False)
        page = self.visitor.http.get(web.url + "/", timeout=30)
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)[1]
        answer = self.visitor.http.post(web.url + "/join", data={"csrf_token": token, "code": code,
                                                                 "name": name},
                                        timeout=30, allow_redirects=False)
        if answer.status_code != 302:
            raise RuntimeError(f"join failed: {answer.status_code} {answer.text[:200]}")
        self.visitor.cookie = self.visitor.http.cookies.get("session")
        self.passed_at: float | None = None
        self.seen: dict[int, float] = {}
        self.visitor.connect()
        self.visitor.sio.on("lesson.checks", self._checks)
        self.visitor.sio.on("events", self._events)
        self.visitor.subscribe()
        self.id = self.visitor.host[2:]
        self.visitor.call("classroom.mine")

    def _checks(self, message: dict) -> None:
        if message.get("passed") and self.passed_at is None:
            self.passed_at = time.time()

    def _events(self, events: list[dict]) -> None:
        now = time.time()
        for event in events:
            self.seen.setdefault(event["seq"], now)
        self.visitor._on_events(events)

    def do_step(self) -> None:
        done = self.web.docker(self.visitor.host, "run", "--name", "hello", "busybox", "echo", "hi")
        if done.returncode != 0:
            raise RuntimeError(done.stderr)

    def decisive_event(self) -> dict:
        return self.visitor.wait_for_event("process.exited", timeout=60, name="hello")


def bench_lessons(students: int = 30, alone: int = 8) -> dict:
    web = WebApp("--hosts-per-address", "1000")
    made: list[Timed] = []
    try:
        teacher = web.visitor(connect=False)
        page = teacher.http.get(web.url + "/classroom/new", timeout=30)
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)[1]
        answer = teacher.http.post(web.url + "/classroom/new", timeout=30, allow_redirects=False,
                                   data={"csrf_token": token, "name": "bench", "containers": 10,
                                         "memory_mib": 1024, "session_minutes": 180})
        ident = re.search(r"/classroom/(c[a-z0-9]+)/teach", answer.headers["Location"])[1]
        code = re.search(r'id="join-code"[^>]*>([A-Z0-9]+)<',
                         teacher.http.get(web.url + answer.headers["Location"], timeout=30).text)[1]
        teacher.cookie = teacher.http.cookies.get("session")
        teacher.connect()
        rows: dict[str, float] = {}

        def on_row(row: dict) -> None:
            if row.get("done") == [0]:
                rows.setdefault(row["id"], time.time())
        teacher.sio.on("classroom.student", on_row)
        teacher.call("classroom.watch", {"classroom": ident})

        def measure(group: list[Timed]) -> dict:
            for student in group:
                opened = student.visitor.call("lesson.open", {"id": "lifecycle"})
                if opened.get("error"):
                    raise RuntimeError(opened["error"])
            threads = [threading.Thread(target=s.do_step) for s in group]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            check, dashboard, relay = [], [], []
            deadline = time.monotonic() + 120
            for student in group:
                event = student.decisive_event()
                while (student.passed_at is None or student.id not in rows) and time.monotonic() < deadline:
                    time.sleep(0.01)
                if student.passed_at is None or student.id not in rows:
                    raise RuntimeError(f"{student.id}: the step never passed")
                check.append((student.passed_at - event["time"]) * 1000)
                dashboard.append((rows[student.id] - event["time"]) * 1000)
                relay.append((student.seen[event["seq"]] - event["time"]) * 1000)
            return {"check": percentiles(check), "dashboard": percentiles(dashboard),
                    "relay": percentiles(relay)}

        one_by_one: dict[str, list] = {"check": [], "dashboard": [], "relay": []}
        for i in range(alone):
            student = Timed(web, code, f"alone {i}")
            made.append(student)
            figures = measure([student])
            for key in one_by_one:
                one_by_one[key].append(figures[key]["p50_ms"])
        class_group = [Timed(web, code, f"student {i}") for i in range(students)]
        made += class_group
        together = measure(class_group)
        memory = memory_mb(web)
        evaluation = evaluation_cost(web, made[0].visitor.host)
        alone_figures = {key: percentiles(values) for key, values in one_by_one.items()}
        return {
            "alone": alone_figures, "class": together, "students": students,
            "evaluation": evaluation, "memory_mb": memory,
            "check_p95_ms_alone": alone_figures["check"]["p95_ms"],
            "check_p95_ms_class": together["check"]["p95_ms"],
            "dashboard_p95_ms_class": together["dashboard"]["p95_ms"],
            "check_over_relay_p50_alone": round(alone_figures["check"]["p50_ms"]
                                                / max(alone_figures["relay"]["p50_ms"], 0.01), 2),
        }
    finally:
        for student in made:
            student.visitor.close()
        web.stop()


def evaluation_cost(web: WebApp, host: str) -> dict:
    """Every step of every lesson evaluated once against one host, as the web app does
    (the daemon API calls included)."""
    from pathlib import Path

    from app import lessons
    from app.engine_client import EngineClient
    client = EngineClient(str(web.host_socket(host)), timeout=60)
    values = lessons.free_play(f"127.0.0.1:{web.port}", host)
    events = list(client.lines("/glassbox/events?since=0&follow=0"))
    samples = []
    for lesson in lessons.load(Path(__file__).resolve().parent.parent / "lessons"):
        for step in lesson.steps:
            t0 = time.perf_counter()
            lessons.evaluate(step, lessons.HostView(client.get_json, events, {"step": 0, "lesson": 0}), values)
            samples.append((time.perf_counter() - t0) * 1000)
    return percentiles(samples)


def memory_mb(web: WebApp) -> dict:
    """Resident memory of the daemon and of the web app (gunicorn's processes), with the
    class connected: what the whole class costs the machine besides its containers."""
    import os
    found = {"daemon": 0.0, "web": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                session = int(f.read().rsplit(")", 1)[1].split()[3])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            # gunicorn runs in a session of its own, named by the port it serves.
            if session != web.process.pid and not ("gunicorn" in command and f":{web.port} " in command):
                continue
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
        if "gunicorn" in command:
            found["web"] += rss / 1024
        elif "glassbox" in command:
            found["daemon"] += rss / 1024
    return {key: round(value, 1) for key, value in found.items()}
