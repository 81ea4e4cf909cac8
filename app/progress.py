"""What the web app remembers: students' progress through the lessons, and classrooms.

SQLAlchemy over SQLite by default (a file in the state dir); ``DATABASE_URL`` points a
bigger deployment at PostgreSQL instead, shared by several web nodes. Nothing else in the
app holds this state: a web process that restarts, or another node, reads it back from here.

- ``Learner``: one visitor (the id in their signed cookie), their current lesson, and —
  in a classroom — their display name and registry user.
- ``Progress``: one visitor in one lesson: the step they are on, when they began it, and
  the event sequence number it began after (checks count only newer events).
- ``Classroom``: a join code for students, a secret for the instructor, the quotas and
  session length the instructor set, and whether the instructor is presenting.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import threading
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import (JSON, DateTime, ForeignKey, Integer, String, UniqueConstraint, create_engine,
                        event, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Classroom(Base):
    __tablename__ = "classrooms"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)   # also its registry namespace
    name: Mapped[str] = mapped_column(String(80))
    code: Mapped[str] = mapped_column(String(12), unique=True, index=True)  # what students type
    teacher_key_sha256: Mapped[str] = mapped_column(String(64))
    teacher: Mapped[str | None] = mapped_column(String(16))       # the instructor's visitor id
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=now)
    ends_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    freed_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)   # its hosts and registry space
    quota: Mapped[dict] = mapped_column(JSON, default=dict)        # the daemon's Quota fields
    presenting: Mapped[bool] = mapped_column(default=False)

    def key_matches(self, key: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), self.teacher_key_sha256)

    @property
    def open(self) -> bool:
        return self.ended_at is None


class Learner(Base):
    __tablename__ = "learners"
    visitor: Mapped[str] = mapped_column(String(16), primary_key=True)
    classroom_id: Mapped[str | None] = mapped_column(ForeignKey("classrooms.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(40))          # display name in the classroom
    registry_user: Mapped[str | None] = mapped_column(String(40))  # its namespace under the classroom's
    lesson: Mapped[str | None] = mapped_column(String(48))         # None: free play
    joined_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=now)
    seen_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=now)
    __table_args__ = (UniqueConstraint("classroom_id", "name"), UniqueConstraint("classroom_id", "registry_user"))


class Progress(Base):
    __tablename__ = "progress"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    visitor: Mapped[str] = mapped_column(String(16), index=True)
    lesson: Mapped[str] = mapped_column(String(48))
    step: Mapped[int] = mapped_column(default=0)            # the step shown (0-based)
    done: Mapped[list] = mapped_column(JSON, default=list)   # the steps passed
    step_started_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=now)
    step_seq: Mapped[int] = mapped_column(default=0)         # the host's last event seq when it began
    lesson_seq: Mapped[int] = mapped_column(default=0)
    hints: Mapped[int] = mapped_column(default=0)            # hints shown on this step
    checks: Mapped[list | None] = mapped_column(JSON)        # the step's last checks: [{ok, label}]
    finished_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("visitor", "lesson"),)


class Store:
    """The database behind one web app: ``with store.session() as db: …`` commits at the end."""

    def __init__(self, url: str):
        self.one_at_a_time: threading.Lock | None = None
        options: dict = {}
        if url.startswith("sqlite"):
            # Threads of one process share the file; SQLite serialises the writes.
            options = {"connect_args": {"check_same_thread": False, "timeout": 30}}
            if url in ("sqlite://", "sqlite:///:memory:"):
                # In memory, each connection would be a database of its own: one for all,
                # used by one session at a time.
                options["poolclass"] = StaticPool
                self.one_at_a_time = threading.Lock()
        self.engine = create_engine(url, **options)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        add_new_columns(self.engine)
        self.factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        if self.one_at_a_time is None:
            with self.factory() as db, db.begin():
                yield db
            return
        with self.one_at_a_time, self.factory() as db, db.begin():
            yield db

    def learner(self, db: Session, visitor: str) -> Learner:
        found = db.get(Learner, visitor)
        if found is None:
            found = Learner(visitor=visitor)
            db.add(found)
        return found

    def progress(self, db: Session, visitor: str, lesson: str) -> Progress | None:
        return db.scalars(select(Progress).where(Progress.visitor == visitor,
                                                 Progress.lesson == lesson)).first()


def add_new_columns(engine) -> None:
    """A database made by an older Glassbox: the columns added since (all nullable or with
    a default) are added to its tables. Nothing is ever dropped or changed."""
    from sqlalchemy import inspect, text
    have = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in have.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")   # readers don't wait for the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
