"""Running a lesson's reference commands against a real Docker host, as a student would.

Used by tests/test_lessons.py and ``glassbox bench lessons``: each shell command runs in
busybox's ``sh`` (the shell of the host terminal) with the real docker CLI pointed at the
host's socket; an ``api`` item is the request the page's buttons make.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from app import lessons
from app.engine_client import EngineClient


class LessonHost:
    """A fresh Docker host of a running ``glassbox up`` (webharness.WebApp), with a work
    directory standing in for the host terminal's home."""

    def __init__(self, web, name: str):
        self.web = web
        self.name = name
        status, answer = web.control("POST", "/glassbox/hosts", {"Name": name})
        if status != 201:
            raise RuntimeError(f"could not create host {name}: {status} {answer}")
        self.socket = str(web.host_socket(name))
        self.client = EngineClient(self.socket, timeout=60)
        self.home = Path(tempfile.mkdtemp(prefix=f"lesson-{name}-"))
        self.values = lessons.free_play(f"127.0.0.1:{web.port}", name)

    def get(self, path: str):
        return self.client.get_json(path)

    def events(self) -> list[dict]:
        return list(self.client.lines("/glassbox/events?since=0&follow=0"))

    def last_seq(self) -> int:
        events = self.events()
        return events[-1]["seq"] if events else 0

    def view(self, since: dict[str, int]) -> lessons.HostView:
        return lessons.HostView(self.get, self.events(), since)

    def run(self, item, timeout: float = 180) -> str:
        """One reference item; returns what it printed (for a failure's message)."""
        if isinstance(item, dict):
            method, path = item["api"].split(" ", 1)
            answer = self.client.call(method, lessons.fill(path, self.values),
                                      lessons.fill_conditions(item.get("body"), self.values))
            return json.dumps(answer)[:2000]
        docker = shutil.which("docker")
        tools = self.home / ".bin"
        tools.mkdir(exist_ok=True)
        if not (tools / "docker").exists():
            os.symlink(docker, tools / "docker")
        env = {"PATH": f"{tools}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home),
               "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.home / ".docker"),
               "DOCKER_BUILDKIT": "0", "TERM": "dumb"}
        done = subprocess.run([shutil.which("busybox") or "/bin/busybox", "sh", "-c",
                               lessons.fill(item, self.values)],
                              cwd=self.home, env=env, capture_output=True, text=True, timeout=timeout)
        return f"$ {item}\n[exit {done.returncode}]\n{done.stdout[-3000:]}{done.stderr[-3000:]}"

    def wait_for_checks(self, step: lessons.Step, since: dict[str, int],
                        timeout: float = 15.0) -> list[lessons.Result]:
        deadline = time.monotonic() + timeout
        while True:
            results = lessons.evaluate(step, self.view(since), self.values)
            if all(r.ok for r in results) or time.monotonic() > deadline:
                return results
            time.sleep(0.2)

    def close(self) -> None:
        try:
            self.web.control("DELETE", f"/glassbox/hosts/{self.name}")
        finally:
            shutil.rmtree(self.home, ignore_errors=True)
