"""One stream of events: every step the engine takes, as a small JSON object.

``{seq, time, host, kind, subject, detail}``: ``kind`` is a dotted name
(``cgroup.created``, ``ns.unshared`` …), ``subject`` names what it is about
(``{"container": id}``), ``detail`` carries the real values. Sequence numbers
let a client that reconnects ask for what it missed.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Event:
    seq: int
    time: float
    host: str
    kind: str
    subject: dict
    detail: dict

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), default=str)


Listener = Callable[[Event], None]


class EventBus:
    """Numbers events, keeps the most recent ones, and calls listeners in order."""

    def __init__(self, keep: int = 10_000):
        # Held while listeners run, so every listener sees events in seq order.
        self._lock = threading.RLock()
        self._seq = 0
        self._recent: collections.deque[Event] = collections.deque(maxlen=keep)
        self._listeners: list[Listener] = []

    def emit(self, kind: str, subject: dict, detail: dict | None = None, host: str = "",
             at: float | None = None) -> Event:
        """``at``: when it happened, if not now (a step reported by a child process)."""
        with self._lock:
            self._seq += 1
            event = Event(self._seq, at or time.time(), host, kind, subject, detail or {})
            self._recent.append(event)
            for listener in list(self._listeners):
                listener(event)
        return event

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def since(self, seq: int) -> list[Event]:
        """Events after ``seq`` that are still kept (a reconnecting client's gap)."""
        with self._lock:
            return [e for e in self._recent if e.seq > seq]
