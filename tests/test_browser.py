"""The student's page in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real `glassbox up`. Each test's final screen is kept as a screenshot in
test-artifacts/ (pass or fail)."""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from sandbox.webharness import WebApp

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("GLASSBOX_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def web():
    app = WebApp()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def student(request, web, browser):
    """A fresh browser context (a student with no cookie yet) on the page; its final
    screen is saved whatever happens."""
    pages = []

    def open_page(locale: str = "en-US"):
        context = browser.new_context(viewport={"width": 1280, "height": 800}, locale=locale)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(web.url + "/")
        page.wait_for_selector("#connection[data-state='connected']", timeout=30_000)
        pages.append(page)
        return page
    yield open_page
    ARTIFACTS.mkdir(exist_ok=True)
    for i, page in enumerate(pages):
        suffix = f"-{i + 1}" if len(pages) > 1 else ""
        try:
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}{suffix}.png"))
        except Exception:  # a crashed page still lets the others be saved
            pass
        page.context.close()


def host_of(web, page) -> str:
    """The student's Docker host, asked with the page's own cookie."""
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "session")
    visitor = web.visitor(cookie=cookie)
    try:
        return visitor.subscribe()["host"]
    finally:
        visitor.close()


def terminal_text(page, ident: str = "host") -> str:
    return page.inner_text(f".terminal[data-terminal-id='{ident}'] .xterm-rows")


def wait_for_prompt(page) -> None:
    page.wait_for_selector(".terminal[data-terminal-id='host'] .xterm-rows", timeout=30_000)
    page.wait_for_function("""() => /[#$] $/m.test(
        document.querySelector(".terminal[data-terminal-id='host'] .xterm-rows").innerText.trimEnd() + ' ')""",
                           timeout=30_000)


def type_in_terminal(page, text: str, ident: str = "host") -> None:
    page.click(f".terminal[data-terminal-id='{ident}'] .xterm-screen")
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def timeline_seqs(page, kind: str | None = None) -> list[int]:
    selector = "#timeline li.event" + (f"[data-kind='{kind}']" if kind else "")
    return page.eval_on_selector_all(selector, "rows => rows.map(r => +r.dataset.seq)")


def test_the_host_terminal_runs_docker_and_shows_hi(web, student):
    page = student()
    wait_for_prompt(page)
    type_in_terminal(page, "docker run --rm busybox echo hi")
    page.wait_for_function("""() => document.querySelector(".terminal[data-terminal-id='host'] .xterm-rows")
        .innerText.split('\\n').some(line => line.trim() === 'hi')""", timeout=30_000)
    # The same run, seen in the timeline: the container's PID 1 started and exited.
    page.wait_for_selector("#timeline li.event[data-kind='process.exited']", state="attached")
    assert not page.errors


def test_an_oom_kill_shows_in_the_timeline_and_the_life_cycle(web, student):
    page = student()
    host = host_of(web, page)
    made = web.docker(host, "run", "-d", "--name", "hog", "-m", "32m", "busybox", "sh", "-c",
                      "while [ ! -f /go ]; do sleep 0.1; done; tail /dev/zero")
    assert made.returncode == 0, made.stderr
    hog = made.stdout.strip()
    # The container stays for the final screenshot; the module's `glassbox up` ends it.
    page.click("[role=tab][data-tab='containers'], #tab-containers")
    page.click(f"#containers li.container[data-id='{hog}']", timeout=30_000)
    page.wait_for_selector("#lifecycle [data-state='running'].current", timeout=30_000)
    page.wait_for_selector("#processes tr[data-pid='1']", timeout=30_000)
    assert web.docker(host, "exec", "hog", "touch", "/go").returncode == 0
    page.wait_for_selector("#lifecycle [data-state='oom'].current", timeout=60_000)
    page.click("[role=tab][data-tab='timeline'], #tab-timeline")
    page.wait_for_selector("#timeline li.event[data-kind='oom.killed']", timeout=30_000)
    assert page.is_visible("#timeline li.event[data-kind='oom.killed']")
    # The final screen (kept as the artifact): the panel, landed on exited (OOM).
    page.click("[role=tab][data-tab='containers'], #tab-containers")
    page.wait_for_selector("#lifecycle [data-state='oom'].current")
    assert not page.errors


def test_a_reload_mid_stream_misses_no_event(web, student):
    page = student()
    host = host_of(web, page)
    finished = threading.Event()

    def stream():
        try:
            for i in range(8):
                web.docker(host, "run", "--rm", "--name", f"stream-{i}", "busybox", "true")
        finally:
            finished.set()
    worker = threading.Thread(target=stream)
    worker.start()
    try:
        page.wait_for_selector("#timeline li.event[data-kind='process.exited']", state="attached",
                               timeout=30_000)
        page.reload()
        page.wait_for_selector("#connection[data-state='connected']")
    finally:
        worker.join(120)
    assert finished.is_set()
    from app.engine_client import EngineClient
    expected = [e["seq"] for e in EngineClient(str(web.host_socket(host))).lines(
        "/glassbox/events?since=0&follow=0") if e["kind"] != "cgroup.sampled"]
    page.wait_for_function("(n) => window.glassbox.lastSeq() >= n", arg=expected[-1], timeout=30_000)
    shown = timeline_seqs(page)
    assert len(shown) == len(set(shown)), "an event is shown twice"
    assert set(expected) <= set(shown), f"missed: {sorted(set(expected) - set(shown))[:20]}"
    assert not page.errors


def test_two_students_never_see_each_others_events(web, student):
    alice, bob = student(), student()
    a, b = host_of(web, alice), host_of(web, bob)
    assert a != b
    assert web.docker(a, "run", "--rm", "--name", "only-alice", "busybox", "true").returncode == 0
    alice.wait_for_function("""() => [...document.querySelectorAll('#timeline li.event')]
        .some(li => li.textContent.includes('only-alice') || li.dataset.kind === 'container.removed')""")
    time.sleep(1)  # what Bob would have been sent by now
    bob_rows = bob.eval_on_selector_all("#timeline li.event", "rows => rows.map(r => r.textContent)")
    assert not [r for r in bob_rows if "only-alice" in r]
    alice_ids = alice.evaluate("() => window.glassbox.lastSeq()")
    assert alice_ids > 0


def test_the_korean_interface_and_the_language_switch(web, student):
    page = student(locale="ko-KR")
    assert page.evaluate("document.documentElement.lang") == "ko"
    assert re.search(r"[\uac00-\ud7a3]", page.inner_text("body"))
    switch = page.locator("#lang-switch")
    if switch.evaluate("el => el.tagName") == "SELECT":
        switch.select_option("en")
    else:
        page.click("#lang-switch [data-lang='en']")
    page.wait_for_function("document.documentElement.lang === 'en'")
    assert not page.errors


def test_a_reload_replays_the_terminal_instead_of_a_blank_screen(web, student):
    page = student()
    wait_for_prompt(page)
    type_in_terminal(page, "echo marker-$((6*7))")
    page.wait_for_function("""() => document.querySelector(".terminal[data-terminal-id='host'] .xterm-rows")
        .innerText.includes('marker-42')""", timeout=30_000)
    page.reload()
    page.wait_for_selector("#connection[data-state='connected']")
    page.wait_for_function("""() => {
        const rows = document.querySelector(".terminal[data-terminal-id='host'] .xterm-rows");
        return rows && rows.innerText.includes('marker-42'); }""", timeout=30_000)
    # Still the same shell: it goes on where it was.
    type_in_terminal(page, "echo again-$((6*7))")
    page.wait_for_function("""() => document.querySelector(".terminal[data-terminal-id='host'] .xterm-rows")
        .innerText.includes('again-42')""", timeout=30_000)
    assert not page.errors


def test_the_container_panel_shows_it_from_inside_and_outside(web, student):
    page = student()
    host = host_of(web, page)
    made = web.docker(host, "run", "-d", "--name", "seen", "-m", "64m", "--pids-limit", "50",
                      "busybox", "sh", "-c", "head -c 3000000 /dev/zero > /big; sleep 300 & sleep 300 & wait")
    assert made.returncode == 0, made.stderr
    ident = made.stdout.strip()
    # The container stays for the final screenshot; the module's `glassbox up` ends it.
    page.click("[role=tab][data-tab='containers'], #tab-containers")
    page.click(f"#containers li.container[data-id='{ident}']", timeout=30_000)
    page.wait_for_selector("#lifecycle [data-state='running'].current", timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#processes tr[data-pid]').length === 3",
                           timeout=30_000)
    pids = page.eval_on_selector_all(
        "#processes tr[data-pid]", "rows => rows.map(r => [+r.dataset.pid, +r.dataset.hostPid])")
    assert pids[0][0] == 1 and len({p for p, _ in pids}) == 3
    assert all(h > 3 for _, h in pids)  # the same processes, as the host numbers them
    inside = lambda ns: page.eval_on_selector(  # noqa: E731
        f"#namespaces tr[data-ns='{ns}']", "r => [...r.querySelectorAll('td')].map(c => c.textContent)")
    pid_inside, pid_host = inside("pid")[:2]
    assert pid_inside.isdigit() and pid_host.isdigit() and pid_inside != pid_host
    assert page.eval_on_selector_all("#overlay-layers li", "items => items.length") >= 1
    page.wait_for_function("() => document.querySelector('#overlay-upper-text').textContent.trim() !== ''")
    assert not page.errors
