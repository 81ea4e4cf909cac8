"""Classrooms, attacked (a review of the classroom feature).

Each test here failed on the code before its fix (a bug found in the review):

- test_creating_classrooms_does_not_bypass_the_host_limit      (high: anyone takes every host)
- test_a_student_who_joins_from_a_fresh_browser_can_push        (medium: broken registry login)
- test_an_instructor_who_creates_from_a_fresh_browser_can_push  (medium: same bug, instructor)
- test_a_flood_of_lesson_goto_is_throttled                      (medium: server work + dashboard flood)
- test_a_watcher_that_goes_away_is_forgotten                    (low: memory grows per watcher)
- test_a_classroom_name_has_no_control_characters               (low: names that break pages)
"""
from __future__ import annotations

import datetime
import re
import tempfile
import time

import requests

from sandbox.webharness import Visitor, WebApp
from tests.test_classroom import web  # noqa: F401 (fixture)


def token(http, url) -> str:
    page = http.get(url, timeout=30)
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text)[1]


def create_from_fresh_browser(web, name="abuse"):
    """As an instructor does it: straight to /classroom/new in a new browser (no / first)."""
    http = requests.Session()
    answer = http.post(web.url + "/classroom/new",
                       data={"csrf_token": token(http, web.url + "/classroom/new"), "name": name},
                       allow_redirects=False, timeout=30)
    return http, answer


def hosts_of(web) -> list[str]:
    return [h["Name"] for h in web.control("GET", "/glassbox/hosts")[1]]




# Was (high): POST /classroom/new makes the instructor's host through Hosts.get, whose
# settings hook says "classroom member" so the creation is never counted against
# HOSTS_PER_ADDRESS_PER_HOUR, and classroom creation has no limit of its own: one
# address takes every host the daemon can make (MAX_HOSTS = 256) in seconds.
def test_creating_classrooms_does_not_bypass_the_host_limit():
    small = WebApp("--hosts-per-address", "3")
    try:
        before = set(hosts_of(small))
        for i in range(8):
            create_from_fresh_browser(small, f"flood {i}")
        made = set(hosts_of(small)) - before
        assert len(made) <= 3, f"{len(made)} hosts made from one address whose limit is 3"
    finally:
        small.stop()


def push_works(web, host: str, repository: str):
    registry = f"127.0.0.1:{web.port}"
    assert web.docker(host, "tag", "busybox", f"{registry}/{repository}").returncode == 0
    return web.docker(host, "push", f"{registry}/{repository}")


# Was (medium): apply_host_settings() calls host_settings() (new password B, its hash
# stored), then hosts().get() — which, for a host not made yet, calls host_settings()
# again (password C, hash C stored) and makes the host with C — then PUTs B on the host.
# The host's login (B) no longer matches the stored hash (C): every push is a 401.
# That is the ordinary path: a student opening the join link in a new browser.
def test_a_student_who_joins_from_a_fresh_browser_can_push(web):
    teacher_http, answer = create_from_fresh_browser(web, "fresh join")
    ident = re.search(r"/classroom/(c[a-z0-9]+)/teach", answer.headers["Location"])[1]
    page = teacher_http.get(web.url + answer.headers["Location"], timeout=30)
    code = re.search(r'id="join-code"[^>]*>([A-Z0-9]+)<', page.text)[1]
    student = requests.Session()
    joined = student.post(web.url + "/join", data={"csrf_token": token(student, web.url + "/join"),
                                                   "code": code, "name": "ann"},
                          allow_redirects=False, timeout=30)
    assert joined.status_code == 302
    ann = Visitor(web, cookie=student.cookies.get("session"))
    try:
        ann.subscribe()
        pushed = push_works(web, ann.host, f"{ident}/ann/tool:v1")
        assert pushed.returncode == 0, pushed.stderr
    finally:
        ann.close()


def test_an_instructor_who_creates_from_a_fresh_browser_can_push(web):
    http, answer = create_from_fresh_browser(web, "fresh teacher")
    ident = re.search(r"/classroom/(c[a-z0-9]+)/teach", answer.headers["Location"])[1]
    teacher = Visitor(web, cookie=http.cookies.get("session"))
    try:
        teacher.subscribe()
        pushed = push_works(web, teacher.host, f"{ident}/demo/app:v1")
        assert pushed.returncode == 0, pushed.stderr
    finally:
        teacher.call("classroom.end", {"classroom": ident})
        teacher.close()


# Was (medium): lesson.goto (and lesson.open, lesson.hint) have no rate limit: each one
# writes the database, runs the classroom's progress listener (a dashboard row: four
# queries and an emit to the instructor) and schedules a run of the step's checks, which
# inspects every container / image of the host (N+1 daemon requests) and copies up to
# 10,000 events. Coalescing only folds calls that arrive during a run: 200 calls in 1.5 s
# gave ~175 check runs and 200 dashboard rows.
def test_a_flood_of_lesson_goto_is_throttled(web):
    http, answer = create_from_fresh_browser(web, "flood")
    ident = re.search(r"/classroom/(c[a-z0-9]+)/teach", answer.headers["Location"])[1]
    code = re.search(r'id="join-code"[^>]*>([A-Z0-9]+)<',
                     http.get(web.url + answer.headers["Location"], timeout=30).text)[1]
    teacher = Visitor(web, cookie=http.cookies.get("session"))
    student = requests.Session()
    student.get(web.url + "/", timeout=30)
    student.post(web.url + "/join", data={"csrf_token": token(student, web.url + "/join"),
                                          "code": code, "name": "flooder"}, timeout=30)
    ann = Visitor(web, cookie=student.cookies.get("session"))
    try:
        teacher.call("classroom.watch", {"classroom": ident})
        ann.subscribe()
        ann.call("lesson.open", {"id": "lifecycle"})
        time.sleep(1.5)
        rows_before = len(teacher.messages.get("classroom.student", []))
        checks_before = len(ann.messages.get("lesson.checks", []))
        for _ in range(200):
            ann.sio.emit("lesson.goto", {"id": "lifecycle", "step": 0})
        ann.call("lessons")      # handled in order: every goto has been handled by now
        time.sleep(3)
        rows = len(teacher.messages.get("classroom.student", [])) - rows_before
        checks = len(ann.messages.get("lesson.checks", [])) - checks_before
        assert checks <= 40, f"200 lesson.goto ran the step's checks {checks} times"
        assert rows <= 40, f"200 lesson.goto sent the instructor {rows} dashboard rows"
    finally:
        teacher.call("classroom.end", {"classroom": ident})
        ann.close()
        teacher.close()


# Was (low): classroom.watched_host() records every watching connection in
# classroom.watching; live.on_disconnect forgets the sid in live.viewers only, so the
# entry stays until the instructor stops presenting (a student reconnecting a watching
# window in a loop grows it for as long as the presentation lasts).
def test_a_watcher_that_goes_away_is_forgotten():
    from app import classroom, create_app, live
    from app.progress import Classroom, Learner, now
    from app.socketio import socketio
    top = tempfile.mkdtemp()
    app = create_app({"TESTING": True, "ENGINE_SOCKET": f"{top}/none.sock",
                      "REGISTRY_ROOT": f"{top}/registry", "SECRET_KEY": "test"})
    with app.app_context():
        with classroom.store().session() as db:
            db.add(Classroom(id="cabcdef", name="A", code="ABCDEF", teacher_key_sha256="0" * 64,
                             teacher="a" * 16, quota={}, presenting=True,
                             ends_at=now() + datetime.timedelta(hours=1)))
            db.add(Learner(visitor="b" * 16, classroom_id="cabcdef", name="ann", registry_user="ann"))
    client = app.test_client()
    with client.session_transaction() as session:
        session["visitor"] = "b" * 16
    before = len(classroom.watching)
    for _ in range(5):
        watcher = socketio.test_client(app, flask_test_client=client, auth={"watch": True})
        assert watcher.is_connected()
        watcher.disconnect()
    assert not live.viewers
    assert len(classroom.watching) == before, "watching windows that left are still remembered"


# Was (low): a display name may hold no control character (Unicode category C), but the
# classroom's name may: ESC sequences, NUL, bidi overrides (U+202E) reach every student's
# banner and the dashboard's title as they are.
def test_a_classroom_name_has_no_control_characters(web):
    http, answer = create_from_fresh_browser(web, "A\x1b[31m\u202eevil\x00x")
    if answer.status_code == 302:
        page = http.get(web.url + answer.headers["Location"], timeout=30).text
        name = re.search(r'id="class-name">([^<]*)<', page)[1]
        assert not any(c in name for c in "\x1b\u202e\x00"), repr(name)
        ident = re.search(r"/classroom/(c[a-z0-9]+)/teach", answer.headers["Location"])[1]
        teacher = Visitor(web, cookie=http.cookies.get("session"))
        teacher.call("classroom.end", {"classroom": ident})
        teacher.close()
    else:
        assert answer.status_code == 400


def test_one_address_creates_at_most_five_classrooms_an_hour(web):
    """From 127.0.0.2 (127.0.0.1 is the machine's own operator, not counted)."""
    import http.client
    import urllib.parse

    def post_new(name: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30, source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/classroom/new")
            page = conn.getresponse()
            cookie = page.getheader("Set-Cookie").split(";")[0]
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.read().decode())[1]
            body = urllib.parse.urlencode({"csrf_token": csrf, "name": name})
            conn.request("POST", "/classroom/new", body=body, headers={
                "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
            answer = conn.getresponse()
            answer.read()
            return answer.status
        finally:
            conn.close()
    assert [post_new(f"c{i}") for i in range(5)] == [302] * 5
    assert post_new("one too many") == 429


def test_wrong_codes_are_limited_and_right_ones_are_not(web):
    """A code is guessed one try at a time: 20 wrong codes a minute from one address, then
    429 even for a right one; while a whole class behind one address joins with the right
    code as fast as it likes."""
    import http.client
    import urllib.parse

    http_new, answer = create_from_fresh_browser(web, "many")
    code = re.search(r'id="join-code"[^>]*>([A-Z0-9]+)<', http_new.get(web.url + answer.headers["Location"],
                                                                       timeout=30).text)[1]

    def join(code_typed: str, name: str, source: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30, source_address=(source, 0))
        try:
            conn.request("GET", "/join")
            page = conn.getresponse()
            cookie = page.getheader("Set-Cookie").split(";")[0]
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.read().decode())[1]
            conn.request("POST", "/join", body=urllib.parse.urlencode(
                {"csrf_token": csrf, "code": code_typed, "name": name}),
                headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
            reply = conn.getresponse()
            reply.read()
            return reply.status
        finally:
            conn.close()
    assert [join(code, f"student {i}", "127.0.0.3") for i in range(25)] == [302] * 25
    assert [join("WRONG1", "x", "127.0.0.4") for _ in range(20)] == [404] * 20
    assert join(code, "late", "127.0.0.4") == 429
