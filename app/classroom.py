"""Classrooms: an instructor, a join code, students with display names — no accounts.

- ``/classroom/new``: the instructor names the class and sets its limits; they get the
  dashboard, a join code to show the room, and an instructor link whose secret lets them
  (or a colleague) back onto the dashboard from another browser.
- ``/join``: a student types the code and a display name. Their Docker host gets the
  classroom's quotas and a registry login of its own: they push under
  ``CLASS/their-name/`` in the classroom registry and pull anything under ``CLASS/``.
- The dashboard (``/classroom/ID/teach``) shows each student's lesson, step and how long
  they have been on it, live; the instructor sends hints and messages, resets a student's
  host, changes the quotas, presents their own host (students watch it read-only), and
  ends the class, which frees every student's host and the classroom's registry space.

Who is who comes from the signed cookie only: the visitor id (as for hosts), and the ids
of the classrooms this browser may teach (``session["teach"]``), set by creating the class
or by opening the instructor link.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import unicodedata

from flask import (Blueprint, abort, current_app, make_response, redirect, render_template,
                   request, session, url_for)
from flask_socketio import join_room
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import learn, live
from .csrf import csrf_token
from .engine_client import EngineError, EngineRefused
from .hosts import HostUnavailable, host_name, hosts, visitor_id
from .live import answer_errors, fields, relays
from .progress import Classroom, Learner, Progress, now, sha256
from .socketio import socketio

log = logging.getLogger("glassbox.web")
bp = Blueprint("classroom", __name__)

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"   # no 0/O, 1/I: read aloud, typed from a projector
CODE_LENGTH = 6
MAX_NAME = 40
MAX_MESSAGE = 500
JOINS_PER_ADDRESS_PER_MINUTE = 20   # wrong codes
CLASSROOMS_PER_ADDRESS_PER_HOUR = 5
MAX_STUDENTS = 100   # per classroom: each student is a Docker host (the daemon makes 256 at most)
MiB = 1 << 20
# The limits an instructor may set, and their defaults (the daemon's own Quota defaults).
LIMITS = {"containers": (1, 50, 10), "memory_mib": (64, 8192, 1024), "session_minutes": (10, 24 * 60, 180)}
REGISTRY_USER = re.compile(r"[a-z0-9]+")


def teaching() -> list[str]:
    ids = session.get("teach")
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def remember_teaching(classroom_id: str, key: str) -> None:
    """This browser teaches the class (the last 8 it was given); the key is kept to show
    the instructor link on the dashboard."""
    ids = [i for i in teaching() if i != classroom_id][-7:] + [classroom_id]
    keys = session.get("teach_keys") if isinstance(session.get("teach_keys"), dict) else {}
    session["teach"] = ids
    session["teach_keys"] = {i: k for i, k in {**keys, classroom_id: key}.items() if i in ids}


def may_teach(classroom_id: str) -> bool:
    return classroom_id in teaching()


def store():
    return learn.store()


def limits_from(form) -> dict:
    """The instructor's limits from a form or a message; a clear error when out of range."""
    found = {}
    for key, (low, high, default) in LIMITS.items():
        raw = form.get(key, default)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ClassroomRefused(f"{key} must be a whole number") from None
        if not low <= value <= high:
            raise ClassroomRefused(f"{key} must be between {low} and {high}")
        found[key] = value
    return found


def daemon_quota(limits: dict) -> dict:
    return {"running_containers": limits["containers"], "running_memory": limits["memory_mib"] * MiB}


class ClassroomRefused(Exception):
    """Bad input or no right to it; the message is for the person who asked."""


# ------------------------------------------------------------------ pages

@bp.get("/classroom/new")
def new_form():
    visitor_id(create=True)
    return render_template("classroom_new.html", csrf_token=csrf_token(), limits=LIMITS,
                           lang=language(), error=None)


@bp.post("/classroom/new")
def create():
    visitor = visitor_id(create=True)
    name = printable(request.form.get("name", ""))[:80] or "Glassbox class"
    def refuse(error: ClassroomRefused, status: int):
        return render_template("classroom_new.html", csrf_token=csrf_token(), limits=LIMITS,
                               lang=language(), error=str(error)), status
    try:
        limits = limits_from(request.form)
    except ClassroomRefused as e:
        return refuse(e, 400)
    try:
        if request.remote_addr not in ("127.0.0.1", "::1"):   # the machine's own user: the operator
            creations.count(request.remote_addr or "?")
    except ClassroomRefused as e:
        return refuse(e, 429)
    key = secrets.token_urlsafe(24)
    with store().session() as db:
        ident = unique(db, lambda: "c" + "".join(secrets.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(6)),
                       lambda value: db.get(Classroom, value) is None)
        code = unique(db, lambda: "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH)),
                      lambda value: db.scalars(select(Classroom).where(Classroom.code == value)).first() is None)
        classroom = Classroom(id=ident, name=name, code=code, teacher_key_sha256=sha256(key),
                              teacher=visitor, quota=limits,
                              ends_at=now() + datetime.timedelta(minutes=limits["session_minutes"]))
        db.add(classroom)
        learner = store().learner(db, visitor)
        enrol(learner, classroom, "teacher", "teacher")
    remember_teaching(ident, key)
    apply_host_settings(host_name(visitor))
    return redirect(url_for("classroom.teach", classroom_id=ident))


def printable(text: str) -> str:
    """One line of visible text: control and format characters (ESC, NUL, U+202E …) out,
    runs of spaces as one."""
    kept = "".join(c for c in text if unicodedata.category(c)[0] != "C")
    return " ".join(kept.split())


def name_key(name: str) -> str:
    """What makes two display names the same to a reader: case and width folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def unique(db, make, free):
    for _ in range(50):
        value = make()
        if free(value):
            return value
    raise ClassroomRefused("could not find a free code; try again")


@bp.get("/classroom/<classroom_id>/teach")
def teach(classroom_id: str):
    """The dashboard. With ``?key=`` (the instructor link) it lets this browser teach."""
    visitor_id(create=True)
    with store().session() as db:
        classroom = db.get(Classroom, classroom_id)
        if classroom is None:
            abort(404, "no such classroom")
        key = request.args.get("key")
        if key is not None:
            if not classroom.key_matches(key):
                abort(403, "this instructor link is not right (or is for another classroom)")
            remember_teaching(classroom_id, key)
            return redirect(url_for("classroom.teach", classroom_id=classroom_id))
        if not may_teach(classroom_id):
            abort(403, "only the classroom's instructor sees this page: open the instructor link")
        key = (session.get("teach_keys") or {}).get(classroom_id, "")
        link = url_for("classroom.teach", classroom_id=classroom_id, key=key, _external=True) if key else None
        return render_template("classroom_teach.html", classroom=classroom, link=link,
                               join_url=join_url(), join_link=join_url(classroom.code),
                               csrf_token=csrf_token(), limits=LIMITS, lang=language())


def join_url(code: str | None = None) -> str:
    """Where students join: the site's public address when the operator gave one
    (``glassbox up --public-url``; the instructor may be looking at it through 127.0.0.1),
    else the address this page was asked on."""
    public = current_app.config.get("PUBLIC_URL")
    path = url_for("classroom.join_form", code=code) if code else url_for("classroom.join_form")
    return public.rstrip("/") + path if public else url_for("classroom.join_form", code=code, _external=True)


@bp.get("/classroom/watch")
def watch_page():
    """The instructor's host, read-only, as the student's page shows it in a window while
    the instructor presents (its Socket.IO connection asks to watch; see live.on_connect)."""
    visitor_id(create=True)
    response = make_response(render_template("index.html", host="", watch=True,
                                             csrf_token=csrf_token(), lang=language()))
    # Shown in a frame of the student's own page (the only page that may frame it).
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'self'; form-action 'self'")
    return response


@bp.get("/join")
def join_form():
    visitor_id(create=True)
    return render_template("classroom_join.html", csrf_token=csrf_token(), lang=language(),
                           code=request.args.get("code", ""), name="", error=None, error_key=None)


class PerAddress:
    """At most ``limit`` in any ``window`` seconds per client address."""

    def __init__(self, limit: int, window: float, message: str):
        self.limit, self.window, self.message = limit, window, message
        self.times: dict[str, collections.deque] = {}
        self.lock = threading.Lock()

    def count(self, address: str, record: bool = True) -> None:
        """Raises ClassroomRefused when the address is at its limit; else counts one
        (``record``) or only looks."""
        moment = time.monotonic()
        with self.lock:
            for other in [a for a, d in self.times.items() if not d or moment - d[-1] > self.window]:
                del self.times[other]       # addresses gone quiet: nothing to remember
            recent = self.times.setdefault(address, collections.deque())
            while recent and moment - recent[0] > self.window:
                recent.popleft()
            if len(recent) >= self.limit:
                raise ClassroomRefused(self.message)
            if record:
                recent.append(moment)


# Codes are guessable one at a time: a limit on wrong codes per address makes guessing
# slow. Right codes don't count: a whole class behind one NAT address joins at once.
wrong_codes = PerAddress(JOINS_PER_ADDRESS_PER_MINUTE, 60, "too many tries from your address; wait a minute")
creations = PerAddress(CLASSROOMS_PER_ADDRESS_PER_HOUR, 3600,
                       "too many classrooms were created from your address in the last hour")


@bp.post("/join")
def join():
    visitor = visitor_id(create=True)
    code = request.form.get("code", "").strip().upper().replace(" ", "").replace("-", "")
    raw = request.form.get("name", "")
    name = printable(raw)

    def refuse(key: str, message: str, status: int = 400):
        """The error in English here; the page shows it in the student's language (key)."""
        return render_template("classroom_join.html", csrf_token=csrf_token(), lang=language(),
                               code=code, name=name, error=message, error_key=key), status
    try:
        wrong_codes.count(request.remote_addr or "?", record=False)
    except ClassroomRefused as e:
        return refuse("classroom.join.too_many", str(e), 429)
    visible = any(unicodedata.category(c)[0] in "LN" and not c.isspace() and c not in "\u3164\u2800"
                  for c in name)
    if not visible or len(name) > MAX_NAME or name != " ".join(raw.split()):
        return refuse("classroom.join.bad_name", f"type a display name of 1 to {MAX_NAME} characters, "
                      "with a letter or digit and no control characters")
    try:
        with store().session() as db:
            classroom = db.scalars(select(Classroom).where(Classroom.code == code)).first()
            if classroom is None or not classroom.open:
                wrong_codes.count(request.remote_addr or "?")
                return refuse("classroom.join.no_class",
                              "no open classroom has this code: check it with your instructor", 404)
            members = db.scalars(select(Learner).where(Learner.classroom_id == classroom.id,
                                                       Learner.visitor != visitor)).all()
            if any(name_key(m.name or "") == name_key(name) for m in members):
                return refuse("classroom.join.name_taken",
                              "someone in this classroom already has that name: pick another", 409)
            if len(members) > MAX_STUDENTS:   # the instructor, and MAX_STUDENTS students
                return refuse("classroom.join.full", f"this classroom is full ({MAX_STUDENTS} students)", 409)
            learner = store().learner(db, visitor)
            if learner.classroom_id != classroom.id or learner.registry_user is None:
                enrol(learner, classroom, name, registry_name(db, classroom.id, name))
            learner.name = name
            room = classroom.id
    except IntegrityError:   # another join took the same name (or registry name) just now
        return refuse("classroom.join.name_taken",
                      "someone in this classroom already has that name: pick another", 409)
    apply_host_settings(host_name(visitor))
    push_row(current_app._get_current_object(), visitor)
    socketio.emit("classroom.changed", {}, to=f"visitor:{host_name(visitor)}")
    log.info("%s joined classroom %s", host_name(visitor), room)
    return redirect(url_for("web.index"))


def enrol(learner: Learner, classroom: Classroom, name: str, registry_user: str) -> None:
    learner.classroom_id = classroom.id
    learner.name = name
    learner.registry_user = registry_user
    learner.joined_at = now()


def registry_name(db, classroom_id: str, name: str) -> str:
    """The student's namespace in the classroom registry: their name as far as it is
    lower-case ASCII letters and digits, else s1, s2, … (a repository path allows no more)."""
    base = "".join(REGISTRY_USER.findall(unicodedata.normalize("NFKD", name).lower()))[:24]
    taken = set(db.scalars(select(Learner.registry_user).where(Learner.classroom_id == classroom_id)))
    if base and base not in taken and base != "teacher":
        return base
    for n in range(1, 10_000):
        candidate = f"{base or 's'}{n}"
        if candidate not in taken:
            return candidate
    raise ClassroomRefused("the classroom is full")


def language() -> str:
    return request.accept_languages.best_match(["en", "ko"], default="en")


# ------------------------------------------------------------------ hosts of a classroom

def registry_password(username: str) -> str:
    """A member's registry password: derived from the site's secret key and their user
    name, so every web process (and every repeat of a host's settings, however they
    interleave) gives the same one, and none is stored. Whoever holds the secret key can
    already sign any cookie; it guards nothing less here."""
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, f"glassbox registry login {username}".encode(), hashlib.sha256).hexdigest()


def host_settings(name: str) -> dict | None:
    """For a host about to be made: a classroom member's quotas and registry login. None:
    not in an open classroom. ``Counted`` False: a student let in by the class's code, whose
    host the per-address limit doesn't count (a class behind one NAT address); an
    instructor's is."""
    visitor = name[2:] if name.startswith("v-") else ""
    with store().session() as db:
        learner = db.get(Learner, visitor)
        classroom = db.get(Classroom, learner.classroom_id) if learner and learner.classroom_id else None
        if classroom is None or not learner.registry_user or not classroom.open:
            return None
        username = f"{classroom.id}/{learner.registry_user}"
        registry = current_app.config.get("REGISTRY_ADDRESS") or "127.0.0.1:8000"
        return {"Quota": daemon_quota(classroom.quota),
                "RegistryAuth": {registry: {"username": username, "password": registry_password(username)}},
                "Counted": learner.registry_user == "teacher"}


def apply_host_settings(name: str) -> None:
    """Gives the visitor's host its classroom settings (made before they joined, or now)."""
    try:
        hosts().get(name, request.remote_addr or "?")
        settings = host_settings(name)
        if not settings:
            return
        control = hosts().control
        control.call("PUT", f"/glassbox/hosts/{name}/quota", settings["Quota"])
        control.call("PUT", f"/glassbox/hosts/{name}/registry-auth", settings["RegistryAuth"])
    except (HostUnavailable, EngineError) as e:
        log.warning("classroom settings for %s: %s", name, e)


def registry_user(name: str, password: str):
    """A classroom member's registry login, as ``app/registry.py`` asks for it: the user
    ``CLASS/NAME`` of an open classroom, with the password their host was given."""
    from .registry import User
    classroom_id, _, user = name.partition("/")
    with store().session() as db:
        classroom = db.get(Classroom, classroom_id)
        if classroom is None or not classroom.open:
            return None
        learner = db.scalars(select(Learner).where(Learner.classroom_id == classroom_id,
                                                   Learner.registry_user == user)).first()
        if learner is None or not hmac.compare_digest(password, registry_password(name)):
            return None
        role = "instructor" if user == "teacher" else "student"
        return User(user, sha256(password), role, classroom_id)


def is_classroom_namespace(component: str) -> bool:
    with store().session() as db:
        return db.get(Classroom, component) is not None


# ------------------------------------------------------------------ the dashboard, live

def student_row(db, learner: Learner) -> dict:
    progress = store().progress(db, learner.visitor, learner.lesson) if learner.lesson else None
    lesson = learn.library().by_id.get(learner.lesson) if learner.lesson else None
    finished = db.scalars(select(Progress).where(Progress.visitor == learner.visitor,
                                                 Progress.finished_at.is_not(None))).all()
    host = host_name(learner.visitor)
    stuck = None
    if progress is not None and progress.step not in progress.done:
        stuck = progress.step_started_at.replace(tzinfo=datetime.timezone.utc).timestamp()
    return {"id": learner.visitor, "name": learner.name, "registry": learner.registry_user,
            "online": host in live.connected.values(),
            "lesson": lesson.summary_json() if lesson else None,
            "step": progress.step if progress else None,
            "done": sorted(progress.done) if progress else [],
            "hints": progress.hints if progress else 0,
            "checks": (progress.checks or []) if progress else [],
            "since": stuck, "finished": sorted(p.lesson for p in finished)}


def push_row(app, visitor: str) -> None:
    """Tells the dashboard of the student's classroom about them (a progress listener)."""
    with app.app_context():
        with store().session() as db:
            learner = db.get(Learner, visitor)
            if learner is None or learner.classroom_id is None or learner.registry_user == "teacher":
                return
            classroom = db.get(Classroom, learner.classroom_id)
            if classroom is None or not classroom.open:
                return
            row = student_row(db, learner)
            room = teach_room(classroom.id)
    socketio.emit("classroom.student", row, to=room)


def teach_room(classroom_id: str) -> str:
    return f"class:{classroom_id}:teach"


def class_room(classroom_id: str) -> str:
    return f"class:{classroom_id}"


def classroom_errors(handler):
    import functools

    @functools.wraps(handler)
    def wrapped(*args):
        try:
            return handler(*args)
        except ClassroomRefused as e:
            return {"error": str(e)}
        except SQLAlchemyError:
            log.exception("%s: the database", handler.__name__)
            return {"error": "the classroom's records could not be read or saved just now; try again"}
    return answer_errors(wrapped)


def taught(message) -> tuple[str, dict]:
    """The classroom a dashboard message is about, if this browser teaches it and it is open."""
    message = fields(message)
    ident = message.get("classroom")
    if not isinstance(ident, str) or not may_teach(ident) or live.read_only():
        raise ClassroomRefused("only the classroom's instructor may do that")
    with store().session() as db:
        classroom = db.get(Classroom, ident)
        if classroom is None or not classroom.open:
            raise ClassroomRefused("this classroom has ended")
    return ident, message


def member(db, classroom_id: str, visitor) -> Learner:
    learner = db.get(Learner, visitor) if isinstance(visitor, str) else None
    if learner is None or learner.classroom_id != classroom_id or learner.registry_user == "teacher":
        raise ClassroomRefused("no such student in this classroom")
    return learner


def describe(classroom: Classroom) -> dict:
    ends = classroom.ends_at.replace(tzinfo=datetime.timezone.utc).timestamp() if classroom.ends_at else None
    return {"id": classroom.id, "name": classroom.name, "code": classroom.code,
            "limits": classroom.quota, "ends_at": ends, "presenting": classroom.presenting,
            "open": classroom.open}


@socketio.on("classroom.watch")
@classroom_errors
def watch(message=None):
    """The dashboard: the classroom and a row per student, then each change as it comes."""
    ident, _ = taught(message)
    with store().session() as db:
        classroom = db.get(Classroom, ident)
        learners = db.scalars(select(Learner).where(Learner.classroom_id == ident,
                                                    Learner.registry_user != "teacher")).all()
        rows = [student_row(db, learner) for learner in learners]
        answer = {"classroom": describe(classroom), "students": rows,
                  "lessons": [lesson.summary_json() for lesson in learn.library().lessons]}
    join_room(teach_room(ident))
    return answer


@socketio.on("classroom.mine")
@classroom_errors
def mine(message=None):
    """A student's page: the classroom they are in (joining its room), or none."""
    if live.read_only():
        return {"classroom": None}
    visitor = visitor_id(create=False)
    with store().session() as db:
        learner = db.get(Learner, visitor) if visitor else None
        classroom = db.get(Classroom, learner.classroom_id) if learner and learner.classroom_id else None
        if classroom is None or not classroom.open:
            return {"classroom": None}
        answer = {"classroom": {"name": classroom.name, "presenting": classroom.presenting,
                                "ends_at": describe(classroom)["ends_at"]},
                  "name": learner.name, "teacher": learner.registry_user == "teacher"}
        room = class_room(classroom.id)
    join_room(room)
    push_row(current_app._get_current_object(), visitor)
    return answer


@socketio.on("classroom.message")
@classroom_errors
def message_students(message=None):
    """A hint or a message to one student (``to``: their id) or to everyone."""
    ident, message = taught(message)
    text = message.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_MESSAGE:
        raise ClassroomRefused(f"a message is 1 to {MAX_MESSAGE} characters")
    kind = "hint" if message.get("kind") == "hint" else "message"
    to = message.get("to")
    payload = {"kind": kind, "text": text.strip(), "at": time.time()}
    if to is None:
        socketio.emit("classroom.message", payload, to=class_room(ident))
        return {"sent": "all"}
    with store().session() as db:
        learner = member(db, ident, to)
    socketio.emit("classroom.message", payload, to=f"visitor:{host_name(learner.visitor)}")
    return {"sent": learner.name}


@socketio.on("classroom.assign")
@classroom_errors
def assign(message=None):
    """"Everyone, open chapter 3": every student's page opens that lesson (where each of
    them left it, if they were in it before)."""
    ident, message = taught(message)
    lesson = learn.library().by_id.get(message.get("lesson")) if isinstance(message.get("lesson"), str) else None
    if lesson is None:
        raise ClassroomRefused("no such lesson")
    socketio.emit("classroom.lesson", {"lesson": lesson.id, "title": lesson.title}, to=class_room(ident))
    return {"assigned": lesson.id}


@socketio.on("classroom.reset")
@classroom_errors
def reset_student(message=None):
    """Throws a student's host away; their page reloads onto a fresh one."""
    ident, message = taught(message)
    with store().session() as db:
        learner = member(db, ident, message.get("to"))
        visitor = learner.visitor
        progress = store().progress(db, visitor, learner.lesson) if learner.lesson else None
        if progress is not None:
            progress.step_seq = progress.lesson_seq = 0
            progress.step_started_at = now()
    free_host(host_name(visitor))
    socketio.emit("classroom.reset", {}, to=f"visitor:{host_name(visitor)}")
    return {"reset": learner.name}


def free_host(name: str) -> None:
    """The host and what the web app holds for it (terminals, its relay); a host already
    gone is fine, a daemon that doesn't answer raises EngineError."""
    from .terminals import terminals
    terminals.close_host(name)
    relays.drop(name)
    try:
        hosts().remove(name)
    except EngineRefused as e:
        log.info("free %s: %s", name, e)


@socketio.on("classroom.limits")
@classroom_errors
def set_limits(message=None):
    """New quotas for every student's host, now and for hosts made later; a new session
    length counts from the class's start."""
    ident, message = taught(message)
    limits = limits_from(message)
    with store().session() as db:
        classroom = db.get(Classroom, ident)
        classroom.quota = limits
        classroom.ends_at = classroom.created_at + datetime.timedelta(minutes=limits["session_minutes"])
        names = [host_name(v) for v in db.scalars(select(Learner.visitor).where(Learner.classroom_id == ident))]
        described = describe(classroom)
    control = hosts().control
    for name in names:
        try:
            control.call("PUT", f"/glassbox/hosts/{name}/quota", daemon_quota(limits))
        except EngineRefused as e:
            if e.status != 404:   # a host freed for idleness gets the limits when made again
                raise
    socketio.emit("classroom.updated", described, to=teach_room(ident))
    return described


@socketio.on("classroom.present")
@classroom_errors
def present(message=None):
    """The instructor shows their own host to every student, read-only (or stops)."""
    ident, message = taught(message)
    on = bool(message.get("on"))
    with store().session() as db:
        classroom = db.get(Classroom, ident)
        classroom.presenting = on
        classroom.teacher = visitor_id(create=False) or classroom.teacher
        described = describe(classroom)
    if not on:
        drop_watchers(ident)
    socketio.emit("classroom.present", {"on": on}, to=class_room(ident))
    socketio.emit("classroom.updated", described, to=teach_room(ident))
    return described


def watched_host() -> str | None:
    """For live.on_connect: the host a student's watching window may show — their
    classroom's instructor's, while they present."""
    visitor = visitor_id(create=False)
    with store().session() as db:
        learner = db.get(Learner, visitor) if visitor else None
        classroom = db.get(Classroom, learner.classroom_id) if learner and learner.classroom_id else None
        if classroom is None or not classroom.open or not classroom.presenting or not classroom.teacher:
            return None
        watching[request.sid] = classroom.id
        return host_name(classroom.teacher)


watching: dict[str, str] = {}   # sid of a watching window -> its classroom


def drop_watchers(classroom_id: str) -> None:
    for sid, ident in list(watching.items()):
        if ident == classroom_id:
            watching.pop(sid, None)
            socketio.server.disconnect(sid)


@socketio.on("classroom.end")
@classroom_errors
def end(message=None):
    """Ends the class: every student's host is freed, and the classroom's registry space."""
    ident, _ = taught(message)
    app = current_app._get_current_object()
    end_classroom(app, ident)
    return {"ended": ident}


def end_classroom(app, ident: str) -> None:
    """Closes the class (nobody joins it, its logins stop working, its students' pages are
    told), then frees what it held in the background."""
    with app.app_context():
        with store().session() as db:
            classroom = db.get(Classroom, ident)
            if classroom is None or not classroom.open:
                return
            classroom.ended_at = now()
            classroom.presenting = False
        drop_watchers(ident)
        socketio.emit("classroom.ended", {}, to=class_room(ident))
        socketio.emit("classroom.updated", {"id": ident, "open": False}, to=teach_room(ident))
    socketio.start_background_task(free_classroom, app, ident)


def free_classroom(app, ident: str) -> None:
    """Every student's host, the class's registry space, and the class's settings on the
    instructors' own hosts (which they keep). Marked done only when all of it went: what
    failed (a daemon that did not answer in time) is tried again by ``end_overdue``."""
    with app.app_context():
        with store().session() as db:
            classroom = db.get(Classroom, ident)
            if classroom is None or classroom.freed_at is not None:
                return
            members = db.scalars(select(Learner).where(Learner.classroom_id == ident)).all()
            teachers = {classroom.teacher} | {m.visitor for m in members if m.registry_user == "teacher"}
            students = [host_name(m.visitor) for m in members if m.visitor not in teachers]
        complete = True
        for name in students:
            try:
                free_host(name)
            except EngineError as e:
                log.warning("classroom %s: freeing %s: %s", ident, name, e)
                complete = False
        for visitor in teachers - {None}:
            name = host_name(visitor)
            try:   # back to a visitor's host: no class login, the site's quotas
                hosts().control.call("PUT", f"/glassbox/hosts/{name}/registry-auth", {})
                hosts().control.call("PUT", f"/glassbox/hosts/{name}/quota", hosts().quota or {})
            except EngineRefused as e:
                if e.status != 404:
                    log.warning("classroom %s: instructor host %s: %s", ident, name, e)
            except EngineError as e:
                log.warning("classroom %s: instructor host %s: %s", ident, name, e)
                complete = False
        try:
            from .registry import get_store
            removed = get_store().remove_namespace(ident)
        except OSError as e:
            log.warning("classroom %s: its registry space: %s", ident, e)
            complete, removed = False, 0
        if complete:
            with store().session() as db:
                db.get(Classroom, ident).freed_at = now()
        log.info("classroom %s ended: %d hosts and %d repositories freed%s", ident, len(students), removed,
                 "" if complete else " (not all: tried again later)")


def end_overdue(app) -> None:
    """Ends the classes whose session length has run out, and finishes freeing the ones
    that ended without everything freed (a background loop)."""
    while True:
        socketio.sleep(15)
        try:
            with app.app_context():
                with store().session() as db:
                    overdue = db.scalars(select(Classroom.id).where(Classroom.ended_at.is_(None),
                                                                    Classroom.ends_at < now())).all()
                    unfreed = db.scalars(select(Classroom.id).where(Classroom.ended_at.is_not(None),
                                                                    Classroom.freed_at.is_(None))).all()
            for ident in overdue:
                end_classroom(app, ident)
            for ident in unfreed:
                free_classroom(app, ident)
        except Exception:
            log.exception("ending overdue classrooms")


def on_disconnect(name: str) -> None:
    if name.startswith("v-") and name not in live.connected.values():
        app = current_app._get_current_object()
        push_row(app, name[2:])


def init_app(app) -> None:
    app.register_blueprint(bp)
    hosts_registry = app.extensions["glassbox.hosts"]
    hosts_registry.settings = lambda name: _in_app(app, host_settings, name)
    learn.progress_listeners.append(push_row)
    live.disconnect_listeners.append(on_disconnect)
    live.watch_policy = watched_host
    live.viewer_disconnect_listeners.append(lambda sid: watching.pop(sid, None))
    app.extensions["registry"].classroom_user = lambda name, password: _in_app(app, registry_user, name, password)
    app.extensions["registry"].classroom_namespace = lambda part: _in_app(app, is_classroom_namespace, part)
    if not app.config.get("TESTING"):
        socketio.start_background_task(end_overdue, app)


def _in_app(app, function, *args):
    with app.app_context():
        return function(*args)
