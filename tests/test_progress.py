"""The web app's database (app/progress.py), on real SQLite files."""
from __future__ import annotations

import sqlite3

from app.progress import Classroom, Store, now


def test_a_database_from_an_older_glassbox_gets_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE classrooms (id VARCHAR(16) PRIMARY KEY, name VARCHAR(80), code VARCHAR(12), "
                "teacher_key_sha256 VARCHAR(64), teacher VARCHAR(16), created_at DATETIME, ends_at DATETIME, "
                "ended_at DATETIME, quota JSON, presenting BOOLEAN)")
    old.execute("INSERT INTO classrooms VALUES ('c1', 'old class', 'ABCDEF', '', NULL, NULL, NULL, NULL, '{}', 0)")
    old.commit()
    old.close()
    store = Store(f"sqlite:///{path}")
    with store.session() as db:
        classroom = db.get(Classroom, "c1")
        assert classroom.name == "old class" and classroom.freed_at is None
        classroom.freed_at = now()
    with store.session() as db:
        assert db.get(Classroom, "c1").freed_at is not None


def test_threads_share_an_in_memory_database():
    import threading
    store = Store("sqlite://")
    with store.session() as db:
        db.add(Classroom(id="c2", name="x", code="QWERTY", teacher_key_sha256="0" * 64, quota={}))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_name(store, "c2")))
    thread.start()
    thread.join()
    assert seen == ["x"]


def _name(store: Store, ident: str) -> str:
    with store.session() as db:
        return db.get(Classroom, ident).name
