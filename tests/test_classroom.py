"""Classrooms, for real: a real ``glassbox up``, an instructor and students as browsers are
(cookie from the page, forms with their CSRF token, Socket.IO), the real docker CLI on
their hosts, and the classroom registry the daemon pushes to."""
from __future__ import annotations

import re
import time

import pytest

from sandbox.webharness import WebApp


@pytest.fixture(scope="module")
def web():
    app = WebApp("--hosts-per-address", "1000")   # every visitor here comes from 127.0.0.1
    try:
        yield app
    finally:
        app.stop()


def token(visitor, path="/") -> str:
    page = visitor.http.get(visitor.web.url + path, timeout=30)
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text)[1]


def new_classroom(web, name="Containers day 1", **limits):
    teacher = web.visitor(connect=False)
    form = {"csrf_token": token(teacher, "/classroom/new"), "name": name, **limits}
    answer = teacher.http.post(web.url + "/classroom/new", data=form, timeout=30, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    ident = re.search(r"/classroom/(c[a-z0-9]+)/teach", answer.headers["Location"])[1]
    page = teacher.http.get(web.url + answer.headers["Location"], timeout=30)
    code = re.search(r'id="join-code"[^>]*>([A-Z0-9]+)<', page.text)[1]
    link = re.search(r'id="teacher-link" readonly value="([^"]+)"', page.text)[1]
    teacher.cookie = teacher.http.cookies.get("session")
    teacher.connect()
    teacher.subscribe()
    return teacher, ident, code, link.replace("&amp;", "&")


def join(web, code, name):
    student = web.visitor(connect=False)
    answer = student.http.post(web.url + "/join", data={"csrf_token": token(student), "code": code, "name": name},
                               timeout=30, allow_redirects=False)
    student.answer = answer
    if answer.status_code == 302:
        student.cookie = student.http.cookies.get("session")
        student.connect()
        student.subscribe()
    return student


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def classroom(web):
    teacher, ident, code, link = new_classroom(web)
    made = [teacher]
    yield {"teacher": teacher, "id": ident, "code": code, "link": link, "made": made}
    try:
        teacher.call("classroom.end", {"classroom": ident})
    finally:
        for visitor in made:
            visitor.close()


def test_a_student_joins_with_the_code_and_the_dashboard_follows_their_progress(web, classroom):
    teacher, ident = classroom["teacher"], classroom["id"]
    snapshot = teacher.call("classroom.watch", {"classroom": ident})
    assert snapshot["classroom"]["code"] == classroom["code"] and snapshot["students"] == []
    assert len(snapshot["lessons"]) == 11

    ann = join(web, classroom["code"].lower(), "Ann Lee")   # codes are read aloud: case doesn't matter
    classroom["made"].append(ann)
    assert ann.answer.status_code == 302
    mine = ann.call("classroom.mine")
    assert mine["name"] == "Ann Lee" and mine["classroom"]["name"] == "Containers day 1"

    row = teacher.wait_for(lambda: [m for m in teacher.messages.get("classroom.student", [])
                                    if m["name"] == "Ann Lee" and m["online"]], what="Ann's row")[-1]
    assert row["lesson"] is None and row["registry"] == "annlee"

    step = ann.call("lesson.open", {"id": "lifecycle"})
    assert step["step"] == 0
    row = teacher.wait_for(lambda: [m for m in teacher.messages.get("classroom.student", [])
                                    if m["lesson"] and m["since"] and m["checks"]], what="Ann on a step")[-1]
    assert row["lesson"]["id"] == "lifecycle" and row["step"] == 0 and row["done"] == []
    assert time.time() - row["since"] < 60
    # Which of the step's checks hold yet: where she is stuck.
    assert [c["ok"] for c in row["checks"]] == [False, False]
    assert row["checks"][0]["label"]["en"] == "the main process of hello exited with code 0"

    assert web.docker(ann.host, "run", "--name", "hello", "busybox", "echo", "hi").returncode == 0
    row = teacher.wait_for(lambda: [m for m in teacher.messages.get("classroom.student", [])
                                    if m["done"] == [0]], what="Ann's step done on the dashboard")[-1]
    assert row["since"] is None and [c["ok"] for c in row["checks"]] == [True, True]

    again = teacher.call("classroom.watch", {"classroom": ident})
    assert [s["name"] for s in again["students"]] == ["Ann Lee"]


def test_hints_and_messages_reach_one_student_or_everyone(web, classroom):
    teacher, ident = classroom["teacher"], classroom["id"]
    teacher.call("classroom.watch", {"classroom": ident})
    ann, bo = join(web, classroom["code"], "ann"), join(web, classroom["code"], "bo")
    classroom["made"] += [ann, bo]
    for student in (ann, bo):
        student.call("classroom.mine")
    sent = teacher.call("classroom.message", {"classroom": ident, "to": bo.host[2:], "kind": "hint",
                                              "text": "try docker ps -a"})
    assert sent == {"sent": "bo"}
    bo.wait_for(lambda: bo.messages.get("classroom.message"), what="bo's hint")
    assert bo.messages["classroom.message"][0]["kind"] == "hint"
    teacher.call("classroom.message", {"classroom": ident, "text": "break until 11"})
    ann.wait_for(lambda: ann.messages.get("classroom.message"), what="the message to all")
    assert [m["text"] for m in ann.messages["classroom.message"]] == ["break until 11"]
    assert teacher.call("classroom.message", {"classroom": ident, "text": " "})["error"]
    assert "no such student" in teacher.call("classroom.message", {"classroom": ident, "to": "0" * 16,
                                                                   "text": "x"})["error"]
    # "Everyone, open this lesson" reaches every student's page.
    assert teacher.call("classroom.assign", {"classroom": ident, "lesson": "storage"}) == {"assigned": "storage"}
    bo.wait_for(lambda: bo.messages.get("classroom.lesson"), what="the lesson for everyone")
    assert bo.messages["classroom.lesson"][0]["lesson"] == "storage"
    assert "no such lesson" in teacher.call("classroom.assign", {"classroom": ident, "lesson": "x"})["error"]


def test_only_the_instructor_may_run_the_class(web, classroom):
    ann = join(web, classroom["code"], "ann")
    classroom["made"].append(ann)
    for action in ("classroom.watch", "classroom.end", "classroom.reset", "classroom.present",
                   "classroom.assign", "classroom.limits", "classroom.message"):
        assert "only the classroom's instructor" in ann.call(action, {"classroom": classroom["id"]})["error"]
    stranger = web.visitor(connect=False)
    assert stranger.http.get(f"{web.url}/classroom/{classroom['id']}/teach", timeout=30).status_code == 403
    wrong = stranger.http.get(f"{web.url}/classroom/{classroom['id']}/teach?key=guess", timeout=30)
    assert wrong.status_code == 403
    # The instructor link lets another browser (a colleague, a second screen) teach.
    colleague = web.visitor(connect=False)
    assert colleague.http.get(classroom["link"], timeout=30).status_code == 200
    colleague.cookie = colleague.http.cookies.get("session")
    colleague.connect()
    classroom["made"].append(colleague)
    assert colleague.call("classroom.watch", {"classroom": classroom["id"]})["classroom"]["id"] == classroom["id"]


def test_joining_says_what_is_wrong(web, classroom):
    ann = join(web, "ZZZZZZ", "ann")
    assert ann.answer.status_code == 404 and "no open classroom has this code" in ann.answer.text
    first = join(web, classroom["code"], "dana")
    classroom["made"].append(first)
    second = join(web, classroom["code"], "dana")
    assert second.answer.status_code == 409 and "already has that name" in second.answer.text
    empty = join(web, classroom["code"], "   ")
    assert empty.answer.status_code == 400 and "display name" in empty.answer.text


def test_limits_reach_every_students_host(web, classroom):
    teacher, ident = classroom["teacher"], classroom["id"]
    ann = join(web, classroom["code"], "ann")
    classroom["made"].append(ann)
    host = next(h for h in web.control("GET", "/glassbox/hosts")[1] if h["Name"] == ann.host)
    assert host["Quota"]["running_containers"] == 10
    answer = teacher.call("classroom.limits", {"classroom": ident, "containers": 2, "memory_mib": 256,
                                               "session_minutes": 90})
    assert answer["limits"] == {"containers": 2, "memory_mib": 256, "session_minutes": 90}
    host = next(h for h in web.control("GET", "/glassbox/hosts")[1] if h["Name"] == ann.host)
    assert host["Quota"]["running_containers"] == 2 and host["Quota"]["running_memory"] == 256 << 20
    for name in ("a", "b"):
        assert web.docker(ann.host, "run", "-d", "--name", name, "-m", "64m", "busybox", "sleep", "60").returncode == 0
    third = web.docker(ann.host, "run", "-d", "--name", "c", "-m", "64m", "busybox", "sleep", "60")
    assert third.returncode != 0 and "quota reached" in third.stderr
    assert "between" in teacher.call("classroom.limits", {"classroom": ident, "containers": 0,
                                                          "memory_mib": 256, "session_minutes": 90})["error"]


def test_the_classroom_registry_namespace(web, classroom):
    ann, bo = join(web, classroom["code"], "ann"), join(web, classroom["code"], "bo")
    classroom["made"] += [ann, bo]
    registry, ns = f"127.0.0.1:{web.port}", classroom["id"]
    web.docker(ann.host, "tag", "busybox", f"{registry}/{ns}/ann/tool:v1")
    pushed = web.docker(ann.host, "push", f"{registry}/{ns}/ann/tool:v1")   # no docker login: the host has it
    assert pushed.returncode == 0, pushed.stderr
    # Bo pulls Ann's image (the "share" chapter), but may not push into Ann's namespace.
    pulled = web.docker(bo.host, "pull", f"{registry}/{ns}/ann/tool:v1")
    assert pulled.returncode == 0, pulled.stderr
    web.docker(bo.host, "tag", "busybox", f"{registry}/{ns}/ann/evil:v1")
    denied = web.docker(bo.host, "push", f"{registry}/{ns}/ann/evil:v1")
    assert denied.returncode != 0 and "bo may push only under" in denied.stderr
    # Someone outside the classroom (no login, from this machine) can't reach it at all.
    outsider = web.visitor()
    classroom["made"].append(outsider)
    outsider.subscribe()
    refused = web.docker(outsider.host, "pull", f"{registry}/{ns}/ann/tool:v1")
    assert refused.returncode != 0 and "belongs to a classroom" in refused.stderr


def test_reset_gives_a_student_a_fresh_host(web, classroom):
    teacher, ident = classroom["teacher"], classroom["id"]
    ann = join(web, classroom["code"], "ann")
    classroom["made"].append(ann)
    assert web.docker(ann.host, "volume", "create", "mine").returncode == 0
    assert teacher.call("classroom.reset", {"classroom": ident, "to": ann.host[2:]}) == {"reset": "ann"}
    ann.wait_for(lambda: "classroom.reset" in ann.messages, what="the reset notice")
    assert ann.host not in [h["Name"] for h in web.control("GET", "/glassbox/hosts")[1]]
    ann.close()
    again = web.visitor(cookie=ann.cookie)
    classroom["made"].append(again)
    again.subscribe()
    assert again.host == ann.host
    volumes = web.docker(again.host, "volume", "ls", "-q").stdout.split()
    assert "mine" not in volumes
    host = next(h for h in web.control("GET", "/glassbox/hosts")[1] if h["Name"] == again.host)
    assert host["Quota"]["running_containers"] == 10 and host["RegistryAuth"]   # still the classroom's


def test_presenting_shows_the_instructors_host_read_only(web, classroom):
    teacher, ident = classroom["teacher"], classroom["id"]
    ann = join(web, classroom["code"], "ann")
    classroom["made"].append(ann)
    ann.call("classroom.mine")
    watcher = web.visitor(cookie=ann.cookie, connect=False)
    with pytest.raises(Exception):
        watcher.connect(auth={"watch": True})     # nothing to watch yet
    assert teacher.call("classroom.present", {"classroom": ident, "on": True})["presenting"] is True
    ann.wait_for(lambda: ann.messages.get("classroom.present"), what="the present notice")
    watcher = web.visitor(cookie=ann.cookie, connect=False)
    classroom["made"].append(watcher)
    watcher.connect(auth={"watch": True})
    assert watcher.subscribe()["host"] == teacher.host
    assert web.docker(teacher.host, "run", "--rm", "--name", "demo", "busybox", "true").returncode == 0
    watcher.wait_for_event("process.exited", name="demo")
    opened = watcher.call("terminal.open", {"target": "host", "cols": 80, "rows": 24})
    assert "not open" in opened.get("error", "") or opened.get("id") == "host"
    assert "watch, not type" in watcher.call("terminal.input", {"id": "host", "data": "rm -rf /\r"})["error"]
    assert "lessons are in your own" in watcher.call("lesson.open", {"id": "lifecycle"})["error"]
    assert "look, not analyse" in watcher.call("tree.weak", {"path": "/bin/sh"})["error"]
    # The student's own connection still sees their own host only.
    assert ann.subscribe()["host"] == ann.host
    teacher.call("classroom.present", {"classroom": ident, "on": False})
    watcher.wait_for(lambda: not watcher.sio.connected, what="the watcher to be let go")


def test_ending_the_class_frees_every_host_and_the_registry_space(web):
    teacher, ident, code, _ = new_classroom(web, name="short")
    ann = join(web, code, "ann")
    ann.call("classroom.mine")   # as the page does on connecting: into the class's room
    try:
        registry = f"127.0.0.1:{web.port}"
        web.docker(ann.host, "tag", "busybox", f"{registry}/{ident}/ann/tool:v1")
        assert web.docker(ann.host, "push", f"{registry}/{ident}/ann/tool:v1").returncode == 0
        catalog = ann.http.get(f"{web.url}/v2/_catalog", timeout=30).json()["repositories"]
        assert f"{ident}/ann/tool" not in catalog   # no login here: the classroom's repositories are hidden
        assert teacher.call("classroom.end", {"classroom": ident}) == {"ended": ident}
        ann.wait_for(lambda: "classroom.ended" in ann.messages, what="the end notice")
        freed = wait_until(lambda: ann.host not in [h["Name"] for h in web.control("GET", "/glassbox/hosts")[1]]
                           and not (web.state / "registry" / "repositories" / ident).exists())
        assert freed, "the class's hosts and registry space were not freed"
        teacher_host = next(h for h in web.control("GET", "/glassbox/hosts")[1] if h["Name"] == teacher.host)
        assert teacher_host["RegistryAuth"] == []                 # the instructor keeps their own host,
        assert teacher_host["Quota"]["running_containers"] == 10  # as a visitor's again
        assert "has ended" in teacher.call("classroom.message", {"classroom": ident, "text": "x"})["error"]
        late = join(web, code, "late")
        assert late.answer.status_code == 404
    finally:
        ann.close()
        teacher.close()


def test_a_restarted_web_app_gives_a_students_host_its_settings_again(web, classroom):
    """The daemon keeps hosts across a restart, not their classroom settings: the web app
    that finds a host it did not make gives them again."""
    from app import create_app
    from app.hosts import hosts
    teacher, ident = classroom["teacher"], classroom["id"]
    ann = join(web, classroom["code"], "ann")
    classroom["made"].append(ann)
    teacher.call("classroom.limits", {"classroom": ident, "containers": 3, "memory_mib": 512,
                                      "session_minutes": 60})
    web.control("PUT", f"/glassbox/hosts/{ann.host}/quota", {"running_containers": 7})
    web.control("PUT", f"/glassbox/hosts/{ann.host}/registry-auth", {})
    described = next(h for h in web.control("GET", "/glassbox/hosts")[1] if h["Name"] == ann.host)
    assert described["Quota"]["running_containers"] == 7 and not described["RegistryAuth"]

    fresh = create_app({"TESTING": True, "ENGINE_SOCKET": str(web.state / "glassbox.sock"),
                        "SECRET_KEY": (web.state / "web-secret").read_text().strip(),   # the site's own
                        "DATABASE_URL": f"sqlite:///{web.state / 'web' / 'glassbox.db'}",
                        "REGISTRY_ROOT": str(web.state / "registry"),
                        "REGISTRY_ADDRESS": f"127.0.0.1:{web.port}"})
    with fresh.app_context():
        hosts().get(ann.host, "127.0.0.1")
    described = next(h for h in web.control("GET", "/glassbox/hosts")[1] if h["Name"] == ann.host)
    assert described["Quota"]["running_containers"] == 3
    assert described["RegistryAuth"] == [f"127.0.0.1:{web.port}"]
    registry = f"127.0.0.1:{web.port}"
    web.docker(ann.host, "tag", "busybox", f"{registry}/{ident}/ann/after:v1")
    pushed = web.docker(ann.host, "push", f"{registry}/{ident}/ann/after:v1")   # the new login works
    assert pushed.returncode == 0, pushed.stderr


def test_progress_outlives_a_lesson_that_changed(web):
    """Progress rows name lessons and steps by id and number: a lesson removed, or one with
    fewer steps than when the row was written, sends the student back to what exists."""
    import sqlite3
    student = web.visitor()
    try:
        student.subscribe()
        visitor = student.host[2:]
        assert student.call("lesson.open", {"id": "lifecycle"})["step"] == 0
        database = sqlite3.connect(web.state / "web" / "glassbox.db")
        with database:
            database.execute("UPDATE progress SET step = 9, done = '[0, 1, 2, 3, 7, 8]' "
                             "WHERE visitor = ? AND lesson = 'lifecycle'", (visitor,))
        shown = student.call("lesson.open", {"id": "lifecycle"})
        assert shown["step"] == 3 and shown["done"] == [0, 1, 2, 3]
        with database:
            database.execute("UPDATE learners SET lesson = 'gone-away' WHERE visitor = ?", (visitor,))
        database.close()
        assert student.call("lessons")["current"] is None
    finally:
        student.close()


def test_a_class_ends_by_itself_when_its_session_length_runs_out(web):
    import sqlite3
    teacher, ident, code, _ = new_classroom(web, name="short session", session_minutes=10)
    ann = join(web, code, "ann")
    try:
        ann.call("classroom.mine")
        database = sqlite3.connect(web.state / "web" / "glassbox.db")
        with database:   # as if the ten minutes had gone by
            database.execute("UPDATE classrooms SET ends_at = '2000-01-01 00:00:00' WHERE id = ?", (ident,))
        database.close()
        ann.wait_for(lambda: "classroom.ended" in ann.messages, timeout=40, what="the class to end itself")
        assert wait_until(lambda: ann.host not in [h["Name"] for h in web.control("GET", "/glassbox/hosts")[1]])
        assert "has ended" in teacher.call("classroom.message", {"classroom": ident, "text": "x"})["error"]
    finally:
        ann.close()
        teacher.close()


def test_a_change_inside_a_running_container_is_checked_without_an_event_of_its_own():
    """A file that a running container writes into a volume makes no event; the samples of
    the running container still have the checks look again within seconds. (Served with
    `glassbox up --lessons DIR`: an operator's own lessons.)"""
    import shutil
    import tempfile
    from pathlib import Path
    top = Path(tempfile.mkdtemp(prefix="glassbox-test-lessons-"))   # the web app's user reads it
    top.chmod(0o755)
    lessons_dir = top / "lessons" / "01-watch"
    lessons_dir.mkdir(parents=True)
    (lessons_dir / "lesson.toml").write_text(
        'id = "watch"\nchapter = 1\ntitle = { en = "W", ko = "감시" }\nsummary = { en = "w", ko = "감시" }\n')
    (lessons_dir / "01-late.en.md").write_text("# Late\n\nWait.\n\n```run\ndocker ps\n```\n\n## Hints\n- wait\n")
    (lessons_dir / "01-late.ko.md").write_text("# 늦게\n\n기다리세요.\n\n```run\ndocker ps\n```\n\n## 힌트\n- 기다림\n")
    (lessons_dir / "01-late.check.toml").write_text(
        '[[check]]\nvolumes = { "Name" = "late", "Files" = { has = { "Path" = "note.txt" } } }\n'
        'label = { en = "late holds note.txt", ko = "late에 note.txt가 있음" }\n')
    for path in (top / "lessons", lessons_dir, *lessons_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    own = WebApp("--lessons", str(top / "lessons"))
    student = own.visitor()
    try:
        student.subscribe()
        assert [l["id"] for l in student.call("lessons")["lessons"]] == ["watch"]
        student.call("lesson.open", {"id": "watch"})
        started = own.docker(student.host, "run", "-d", "--name", "writer", "-v", "late:/data", "busybox",
                             "sh", "-c", "sleep 3; echo hi > /data/note.txt; sleep 60")
        assert started.returncode == 0, started.stderr
        student.wait_for(lambda: any(m["passed"] for m in student.messages.get("lesson.checks", [])),
                         timeout=20, what="the check to see the file")
        own.docker(student.host, "rm", "-f", "writer")
    finally:
        student.close()
        own.stop()
        shutil.rmtree(top, ignore_errors=True)


def test_two_first_opens_at_once_both_get_the_lesson(web):
    """A first-time visitor with several tabs: requests at the same moment all make the
    student's rows (one tab's messages are handled in order; several tabs' are not)."""
    import threading
    first = web.visitor()
    tabs = [first] + [web.visitor(cookie=first.cookie) for _ in range(3)]
    try:
        for tab in tabs:
            tab.subscribe()
        answers = []
        go = threading.Barrier(len(tabs))

        def open_lesson(tab):
            go.wait()
            answers.append(tab.call("lesson.open", {"id": "lifecycle"}))
        threads = [threading.Thread(target=open_lesson, args=(tab,)) for tab in tabs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a.get("step") for a in answers] == [0] * len(tabs), answers
    finally:
        for tab in tabs:
            tab.close()


def test_the_dashboard_shows_the_public_address_when_the_operator_gave_one(web):
    from app import create_app
    app = create_app({"TESTING": True, "PUBLIC_URL": "http://10.0.0.5:8000/",
                      "ENGINE_SOCKET": str(web.state / "glassbox.sock")})
    with app.test_request_context("/classroom/x/teach", base_url="http://127.0.0.1:8000"):
        from app.classroom import join_url
        assert join_url() == "http://10.0.0.5:8000/join"
        assert join_url("ABCDEF") == "http://10.0.0.5:8000/join?code=ABCDEF"
