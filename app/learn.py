"""Lessons in the page: the step a student is on, and its checks run live.

The page asks for the lessons, opens one, moves between its steps. Whenever the student's
host emits events (a command ran), the checks of their current step run again against the
host's real state — in a worker per host, one run at a time, the next one folded with any
events that came meanwhile — and the result goes to the student's page. A step whose checks
all hold is marked done in the database, and whoever watches (the classroom's dashboard)
is told.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from flask import current_app
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from . import CHECKOUT, lessons
from .engine_client import EngineError
from .hosts import Host, host_name, hosts, visitor_id
from .live import answer_errors, fields, own_host, read_only, relays
from .progress import Classroom, Learner, Progress, Store, now
from .socketio import socketio

log = logging.getLogger("glassbox.web")

# Samples come twice a second while a container runs: alone, they ask for a run only
# every QUIET_GAP seconds (a running container may change a file in a volume, say).
QUIET = {"cgroup.sampled"}
MIN_GAP = 0.1    # seconds between two runs of one host's checks (at most 10 a second)
QUIET_GAP = 2.0  # seconds between runs that only samples of a running container asked for


class Library:
    """The lessons, loaded once. A lesson that doesn't lint is left out (and logged): the
    site stays up for the others; the test suite's linter keeps such a lesson from landing."""

    def __init__(self, root: Path):
        self.root = root
        self.lessons, problems = lessons.read_all(root)
        self.problems = problems   # shown on /status: what an operator must fix
        for problem in problems:
            log.error("lesson left out: %s", problem)
        self.by_id = {lesson.id: lesson for lesson in self.lessons}

    def get(self, lesson_id) -> lessons.Lesson:
        lesson = self.by_id.get(lesson_id) if isinstance(lesson_id, str) else None
        if lesson is None:
            raise LessonRefused(f"no lesson {lesson_id!r}")
        return lesson


class LessonRefused(Exception):
    """The page asked for something that isn't there or isn't allowed yet."""


def library() -> Library:
    return current_app.extensions["glassbox.lessons"]


def store() -> Store:
    return current_app.extensions["glassbox.store"]


# Called with (app, visitor id) after a student's progress changed (the classroom listens).
progress_listeners: list[Callable] = []


def values_for(db: Session, learner: Learner, host: str) -> dict[str, str]:
    """The placeholders of a lesson's texts and checks, for this student."""
    classroom = db.get(Classroom, learner.classroom_id) if learner.classroom_id else None
    registry = current_app.config.get("REGISTRY_ADDRESS") or "127.0.0.1:8000"
    if classroom is not None and classroom.open and learner.registry_user:
        return lessons.placeholders(registry, f"{classroom.id}/{learner.registry_user}", classroom.id)
    return lessons.free_play(registry, host)


def step_payload(db: Session, learner: Learner, progress: Progress, host: str) -> dict:
    lesson = library().get(progress.lesson)
    # The lesson may have fewer steps than when this row was written.
    progress.step = min(progress.step, len(lesson.steps) - 1)
    progress.done = [i for i in progress.done if i < len(lesson.steps)]
    step = lesson.steps[progress.step]
    values = values_for(db, learner, host)
    goals = [lessons.fill_conditions(c.spec, values) for c in step.checks if c.source == "tree"]
    return {"lesson": lesson.summary_json(), "step": progress.step, "done": sorted(progress.done),
            "texts": {lang: lessons.render(step.text[lang], values) for lang in lessons.LANGS},
            "checks": [{"label": lessons.fill_conditions(c.label, values)} for c in step.checks],
            "goals": goals,
            "hints_shown": progress.hints, "finished": progress.finished_at is not None}


# ------------------------------------------------------------------ Socket.IO

def visitor_and_host() -> tuple[str, Host]:
    if read_only():
        raise LessonRefused("this window watches the instructor; lessons are in your own")
    host = own_host()
    return host.name[2:], host


class Bucket:
    """A student's lesson requests: ``rate`` a second, in bursts of ``burst``. Each one
    writes a row, updates the dashboard and runs the checks: a flood must not."""

    def __init__(self, rate: float = 5.0, burst: float = 10.0):
        self.rate, self.burst = rate, burst
        self.levels: dict[str, tuple[float, float]] = {}   # host -> (tokens, when)
        self.lock = threading.Lock()

    def take(self, host: str) -> bool:
        moment = time.monotonic()
        with self.lock:
            tokens, when = self.levels.get(host, (self.burst, moment))
            tokens = min(self.burst, tokens + (moment - when) * self.rate)
            if tokens < 1:
                self.levels[host] = (tokens, moment)
                return False
            self.levels[host] = (tokens - 1, moment)
            if len(self.levels) > 4096:   # full buckets hold nothing worth keeping
                self.levels = {h: v for h, v in self.levels.items()
                               if v[0] + (moment - v[1]) * self.rate < self.burst}
            return True


requests_of = Bucket()


def lesson_errors(handler):
    import functools

    @functools.wraps(handler)
    def wrapped(*args):
        visitor = visitor_id(create=False)
        if visitor is not None and not requests_of.take(visitor):
            return {"error": "too many lesson requests at once: slow down"}
        for attempt in (1, 2):
            try:
                return handler(*args)
            except LessonRefused as e:
                return {"error": str(e)}
            except IntegrityError:
                # Two first requests at once both made the student's row; the second,
                # tried again, finds it.
                if attempt == 2:
                    raise
            except SQLAlchemyError:
                log.exception("%s: the database", handler.__name__)
                return {"error": "your progress could not be read or saved just now; try again"}
        return None
    return answer_errors(wrapped)


@socketio.on("lessons")
@lesson_errors
def list_lessons(message=None):
    visitor, _ = visitor_and_host()
    with store().session() as db:
        learner = db.get(Learner, visitor)
        rows = {p.lesson: p for p in db.query(Progress).filter(Progress.visitor == visitor)}
        listed = []
        for lesson in library().lessons:
            row = rows.get(lesson.id)
            listed.append({**lesson.summary_json(),
                           "done": len(row.done) if row else 0,
                           "finished": bool(row and row.finished_at)})
        # A lesson that is no longer there (renamed, removed since): back to free play.
        current = learner.lesson if learner and learner.lesson in library().by_id else None
        return {"lessons": listed, "current": current}


@socketio.on("lesson.open")
@lesson_errors
def open_lesson(message=None):
    """Opens a lesson where the student left it (its first step the first time)."""
    lesson = library().get(fields(message).get("id"))
    visitor, host = visitor_and_host()
    last_seq = relays.get(host).last_seq
    with store().session() as db:
        learner = store().learner(db, visitor)
        learner.lesson = lesson.id
        learner.seen_at = now()
        progress = store().progress(db, visitor, lesson.id)
        if progress is None:
            progress = Progress(visitor=visitor, lesson=lesson.id, step=0, done=[],
                                step_seq=last_seq, lesson_seq=last_seq, step_started_at=now())
            db.add(progress)
            db.flush()
        payload = step_payload(db, learner, progress, host.name)
    checkers().schedule(host.name)
    changed(visitor)
    return payload


@socketio.on("lesson.goto")
@lesson_errors
def goto_step(message=None):
    """To another step of the current lesson: any step done, or the one after them. The
    step begins again (its checks count what happens from now on)."""
    message = fields(message)
    lesson = library().get(message.get("id"))
    index = message.get("step")
    visitor, host = visitor_and_host()
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(lesson.steps):
        raise LessonRefused(f"{lesson.id} has steps 0 to {len(lesson.steps) - 1}")
    last_seq = relays.get(host).last_seq
    with store().session() as db:
        learner = store().learner(db, visitor)
        progress = store().progress(db, visitor, lesson.id)
        if progress is None:
            raise LessonRefused("open the lesson first")
        reachable = max([-1, *progress.done]) + 1
        if index > reachable:
            raise LessonRefused(f"finish step {reachable + 1} first")
        learner.lesson = lesson.id
        progress.step = index
        progress.step_seq = last_seq
        progress.step_started_at = now()
        progress.hints = 0
        progress.checks = None
        payload = step_payload(db, learner, progress, host.name)
    checkers().schedule(host.name)
    changed(visitor)
    return payload


@socketio.on("lesson.close")
@lesson_errors
def close_lesson(message=None):
    """Free play: no lesson, no checks."""
    visitor, _ = visitor_and_host()
    with store().session() as db:
        store().learner(db, visitor).lesson = None
    changed(visitor)
    return {"current": None}


@socketio.on("lesson.hint")
@lesson_errors
def hint_shown(message=None):
    """The student opened another hint (the dashboard shows who needed how many)."""
    shown = fields(message).get("shown")
    if not isinstance(shown, int) or isinstance(shown, bool) or not 0 < shown <= 10:
        raise LessonRefused("shown must be the number of hints open")
    visitor, _ = visitor_and_host()
    with store().session() as db:
        learner = db.get(Learner, visitor)
        progress = store().progress(db, visitor, learner.lesson) if learner and learner.lesson else None
        if progress is None:
            raise LessonRefused("no lesson open")
        progress.hints = max(progress.hints, shown)
    changed(visitor)
    return {"hints": shown}


def changed(visitor: str) -> None:
    app = current_app._get_current_object()
    for listener in progress_listeners:
        try:
            listener(app, visitor)
        except Exception:
            log.exception("progress listener")


# ------------------------------------------------------------------ the checks, live

class Checkers:
    """Runs the current step's checks of a host after its events, one run at a time per
    host; events that arrive during a run ask for one more run after it."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.again: set[str] = set()
        self.last_run: dict[str, float] = {}

    def on_events(self, host: Host, batch: list[dict]) -> None:
        if any(e["kind"] not in QUIET for e in batch):
            self.schedule(host.name)
        elif time.monotonic() - self.last_run.get(host.name, 0) > QUIET_GAP:
            # Only samples: a running container may still have changed what a check reads
            # (a file in a volume) without an event of its own; look now and then.
            self.schedule(host.name)

    def schedule(self, name: str) -> None:
        with self.lock:
            if len(self.last_run) > 1024:   # hosts long gone need no spacing
                moment = time.monotonic()
                self.last_run = {h: t for h, t in self.last_run.items() if moment - t < 60}
            if name in self.running:
                self.again.add(name)
                return
            self.running.add(name)
        socketio.start_background_task(self._work, name)

    def _work(self, name: str) -> None:
        while True:
            # At most one run per host every MIN_GAP seconds: a burst of events (or of a
            # student's requests) becomes one more run, not one per event.
            wait = self.last_run.get(name, 0) + MIN_GAP - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.last_run[name] = time.monotonic()
            try:
                with self.app.app_context():
                    self.check(name)
            except Exception:
                log.exception("checks of %s", name)
            with self.lock:
                if name in self.again:
                    self.again.discard(name)
                    continue
                self.running.discard(name)
                return

    def check(self, name: str) -> None:
        """Runs the checks of the step that host's student is on and tells their page.

        Three parts, so that no database session is open while the daemon is asked
        (an inspect per container) or a relay's lock is taken: read the student's step,
        evaluate, then record a pass — only if they are still on that step."""
        visitor = name[2:] if name.startswith("v-") else None
        if visitor is None or host_name(visitor) != name:
            return
        with store().session() as db:
            learner = db.get(Learner, visitor)
            progress = store().progress(db, visitor, learner.lesson) if learner and learner.lesson else None
            lesson = library().by_id.get(progress.lesson) if progress else None
            if lesson is None or progress.step >= len(lesson.steps):
                return
            index, since = progress.step, {"step": progress.step_seq, "lesson": progress.lesson_seq}
            values = values_for(db, learner, name)
        host = hosts().get(name, "-", create=False)
        relay = relays.get(host)
        with relay.lock:
            events, last_seq = list(relay.recent), relay.last_seq
        renewed = since["step"] > last_seq   # the host was made anew: its seqs start at 1 again
        if renewed:
            since = {"step": 0, "lesson": 0}
        try:
            results = lessons.evaluate(lesson.steps[index], lessons.HostView(host.client().get_json, events, since),
                                       values)
        except EngineError as e:
            log.info("checks of %s: %s", name, e)
            return
        passed = all(r.ok for r in results)
        with store().session() as db:
            progress = store().progress(db, visitor, lesson.id)
            learner = db.get(Learner, visitor)
            if progress is None or learner is None or learner.lesson != lesson.id or progress.step != index:
                return   # they moved on meanwhile: this answer is about a step no longer shown
            if renewed:
                progress.step_seq = progress.lesson_seq = 0
            newly = passed and index not in progress.done
            if newly:
                progress.done = sorted({*progress.done, index})
                if len(progress.done) == len(lesson.steps):
                    progress.finished_at = now()
            # What the dashboard shows of a student on a step: which checks hold yet.
            seen = [{"ok": r.ok, "label": r.label} for r in results]
            changed = newly or progress.checks != seen
            if changed:   # most runs change nothing: no write for them
                progress.checks = seen
            message = {"lesson": lesson.id, "step": index, "passed": passed,
                       "done": sorted(progress.done), "finished": progress.finished_at is not None,
                       "results": [{"ok": r.ok, "label": r.label, "goal": r.goal, "nodes": r.nodes}
                                   for r in results]}
        socketio.emit("lesson.checks", message, to=f"visitor:{name}")
        if changed:
            for listener in progress_listeners:
                listener(self.app, visitor)


def checkers() -> Checkers:
    return current_app.extensions["glassbox.checkers"]


def init_app(app) -> None:
    root = Path(app.config.get("LESSONS_DIR") or CHECKOUT / "lessons")
    app.extensions["glassbox.lessons"] = Library(root)
    app.extensions["glassbox.store"] = Store(app.config["DATABASE_URL"])
    app.extensions["glassbox.checkers"] = found = Checkers(app)
    from . import live
    live.event_listeners.append(found.on_events)
