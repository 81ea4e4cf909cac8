"""The status page (``/status``): what the engine is and what it holds, read from the
daemon's API. For whoever runs the machine; students work on ``/``."""
from __future__ import annotations

import datetime

from flask import Blueprint, current_app, render_template

from .engine_client import EngineClient, EngineError, EngineUnreachable

bp = Blueprint("status", __name__)


@bp.get("/status")
def index():
    socket_path = current_app.config["ENGINE_SOCKET"]
    engine = EngineClient(socket_path, timeout=current_app.config["ENGINE_TIMEOUT"])
    try:
        version = engine.get_json("/version")
        info = engine.get_json("/info")
        images = engine.get_json("/images/json")
        containers = engine.get_json("/containers/json?all=1")
    except EngineUnreachable as e:
        current_app.logger.warning("status page: %s", e)
        return render_template("status.html", problem="unreachable",
                               socket_path=socket_path, cause=e.cause), 503
    except EngineError as e:
        current_app.logger.error("status page: %s", e)
        return render_template("status.html", problem="bad answer",
                               socket_path=socket_path, cause=e), 502
    return render_template("status.html", problem=None, socket_path=socket_path,
                           version=version, info=info, images=images, containers=containers,
                           teaching=teaching_figures())


def teaching_figures() -> dict:
    """Counts only (no names, no codes): the lessons loaded, the lessons left out because
    they don't lint, the open classrooms and their students."""
    from sqlalchemy import func, select

    from .learn import library, store
    from .progress import Classroom, Learner
    with store().session() as db:
        open_ids = select(Classroom.id).where(Classroom.ended_at.is_(None))
        classrooms = db.scalar(select(func.count()).select_from(open_ids.subquery()))
        students = db.scalar(select(func.count()).select_from(Learner).where(
            Learner.classroom_id.in_(open_ids), Learner.registry_user != "teacher"))
    return {"lessons": len(library().lessons), "steps": sum(len(l.steps) for l in library().lessons),
            "left_out": library().problems, "classrooms": classrooms, "students": students}


@bp.get("/healthz")
def healthz():
    return "ok", 200, {"Content-Type": "text/plain; charset=utf-8"}


@bp.app_template_filter()
def human_size(size: int | None) -> str:
    """Bytes as Docker prints them: 1000-based units, three significant digits."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}TB"


@bp.app_template_filter()
def short_id(object_id: str | None) -> str:
    """The 12 hex digits Docker shows, without the ``sha256:`` prefix."""
    return (object_id or "").removeprefix("sha256:")[:12]


@bp.app_template_filter()
def unix_time(seconds: int | float | None) -> str:
    if not seconds:
        return ""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
