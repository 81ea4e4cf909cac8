"""Live events: the daemon's step events, relayed to the browsers watching each host.

One relay per host in this process reads the host's ``/glassbox/events`` stream from the
daemon and emits each event to the Socket.IO room of that host. A browser that (re)joins
says the last sequence number it saw; under the relay's lock it gets what it missed from
the relay's copy of the daemon's recent events, then joins the room, so no event is missed
and none arrives twice.

A slow browser never holds anything up: an emit only queues the packet for that browser's
own writer. A browser whose queue keeps growing (a stalled tab) is disconnected, and
resumes by sequence number when it comes back.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time

from flask import request
from flask_socketio import disconnect, join_room

from .engine_client import EngineError, EngineRefused
from .hosts import Host, HostUnavailable, host_name, hosts, visitor_id
from .socketio import queued, socketio

log = logging.getLogger("glassbox.web")

KEEP = 10_000         # events kept per host, as many as the daemon keeps
MAX_BACKLOG = 2_000   # packets queued for one browser before it counts as stalled
# Characters queued for a browser that still sends but no longer reads: each message it
# sends may queue an answer (subscribe replays up to KEEP events, some 3.5 MB), so
# without a limit it could make this process hold any amount of memory.
MAX_UNREAD = 8 << 20
# A container's id or name, as Docker allows them: nothing that could change the path
# of the request made with it (no /, ?, #, %, spaces or control characters).
CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


# Called with (host, events) for each batch of a host's events, in the relay's thread:
# a listener only takes note (the lessons' checks run elsewhere).
event_listeners: list = []


def host_room(host: str) -> str:
    return f"host:{host}"


class Relay:
    """The events of one host, from the daemon to the room of its browsers."""

    def __init__(self, host: Host):
        self.host = host
        self.room = host_room(host.name)
        self.recent: collections.deque[dict] = collections.deque(maxlen=KEEP)
        self.last_seq = 0
        # Reentrant: dropping a stalled browser runs the disconnect handler, which leaves.
        self.lock = threading.RLock()
        self.members: set[str] = set()
        # No browser yet (the lessons' checks may make a relay first): idle from the start.
        self.idle_since: float | None = time.monotonic()
        self.stopped = threading.Event()
        for event in host.client(timeout=30).lines("/glassbox/events?since=0&follow=0"):
            self._keep(event)
        self.thread = threading.Thread(target=self._follow, name=f"relay-{host.name}", daemon=True)
        self.thread.start()

    def _keep(self, event: dict) -> None:
        self.recent.append(event)
        self.last_seq = event["seq"]

    def join(self, sid: str, since: int) -> dict:
        """Sends ``sid`` the events after ``since`` and adds it to the room, atomically
        with respect to new events."""
        with self.lock:
            missed = [e for e in self.recent if e["seq"] > since]
            oldest = self.recent[0]["seq"] if self.recent else self.last_seq + 1
            if since > self.last_seq:  # the host was made anew (seq starts again at 1)
                missed = list(self.recent)
            for start in range(0, len(missed), 500):
                socketio.emit("events", missed[start:start + 500], to=sid)
            join_room(self.room, sid=sid)
            self.members.add(sid)
            self.idle_since = None
            return {"host": self.host.name, "seq": self.last_seq,
                    "lost": max(0, oldest - since - 1) if missed else 0}

    def leave(self, sid: str) -> None:
        with self.lock:
            self.members.discard(sid)
            if not self.members:
                self.idle_since = time.monotonic()

    def _follow(self) -> None:
        """Reads the daemon's stream, reconnecting (from the last seq) if it breaks."""
        while not self.stopped.is_set():
            try:
                for batch in self.host.client().batches(f"/glassbox/events?since={self.last_seq}"):
                    with self.lock:
                        fresh = [e for e in batch if e["seq"] > self.last_seq]
                        for event in fresh:
                            self._keep(event)
                        if fresh:  # a burst (a container's start) goes out as one message
                            socketio.emit("events", fresh, to=self.room)
                            self._drop_stalled()
                            for listener in event_listeners:
                                listener(self.host, fresh)
                    if self.stopped.is_set():
                        return
            except EngineRefused as e:
                log.info("events of %s: %s", self.host.name, e)
            except EngineError as e:
                log.warning("events of %s broke off: %s", self.host.name, e)
            if self.stopped.wait(1.0):
                return
            self.stopped.set() if self._host_gone() else None

    def _host_gone(self) -> bool:
        try:
            self.host.client().get_json("/_ping")
            return False
        except EngineError:
            socketio.emit("notice", {"level": "error", "message":
                                     "your Docker host is gone (idle too long?): reload the page"},
                          to=self.room)
            return True

    def _drop_stalled(self) -> None:
        """Disconnects a browser that has stopped reading (its queue only grows): it would
        hold memory for nothing, and it resumes by seq when it comes back."""
        for sid in list(self.members):
            packets, _ = queued(sid)
            if packets > MAX_BACKLOG:
                log.info("browser %s stopped reading (%d packets queued): disconnected", sid, packets)
                self.members.discard(sid)
                socketio.server.disconnect(sid)

    def stop(self) -> None:
        self.stopped.set()


class Relays:
    def __init__(self):
        self.by_host: dict[str, Relay] = {}
        self.lock = threading.Lock()

    def get(self, host: Host) -> Relay:
        with self.lock:
            relay = self.by_host.get(host.name)
            if relay is not None and not relay.stopped.is_set():
                return relay
        # Made outside the lock: a new relay reads the host's whole event log first, and
        # one slow host must not hold up every other's.
        made = Relay(host)
        with self.lock:
            relay = self.by_host.get(host.name)
            if relay is not None and not relay.stopped.is_set():
                made.stop()   # another thread made one meanwhile
                return relay
            self.by_host[host.name] = made
            return made

    def forget_idle(self, after: float = 60.0) -> None:
        now = time.monotonic()
        with self.lock:
            for name, relay in list(self.by_host.items()):
                if relay.stopped.is_set() or (relay.idle_since and now - relay.idle_since > after):
                    relay.stop()
                    del self.by_host[name]

    def drop(self, name: str) -> None:
        with self.lock:
            relay = self.by_host.pop(name, None)
        if relay:
            relay.stop()


relays = Relays()
# sid -> host name, for this process's connected browsers (rebuilt as they reconnect)
connected: dict[str, str] = {}
# sid -> the host it watches read-only: a student's window on the instructor's host
# while the instructor presents (see classroom.py). Its handlers see that host instead.
viewers: dict[str, str] = {}
# Called with the visitor's host name when a connection ends (the dashboard's "online"),
# and with the sid when a watching connection ends.
disconnect_listeners: list = []
viewer_disconnect_listeners: list = []


def own_host(create: bool = False) -> Host:
    """The visitor's own host, from the signed cookie; nothing the browser sends can
    name another."""
    visitor = visitor_id(create=False)
    if visitor is None:
        raise HostUnavailable("no visitor cookie: reload the page")
    return hosts().get(host_name(visitor), request.remote_addr or "?", create=create)


def current_host(create: bool = False) -> Host:
    """The host of the browser behind this Socket.IO event: the visitor's own, or the
    one the classroom let it watch (read-only)."""
    watched = viewers.get(request.sid)
    if watched is not None:
        return hosts().get(watched, request.remote_addr or "?", create=False)
    return own_host(create)


def read_only() -> bool:
    """This connection only watches another's host: it may look, not act."""
    return request.sid in viewers


def fields(message) -> dict:
    """A browser's message as a dict: anything else (a list, a string) has no fields."""
    return message if isinstance(message, dict) else {}


def answer_errors(handler):
    """A Socket.IO handler whose failures come back to the browser as ``{error}``, and
    that first drops a browser which sends without reading what it is sent."""
    import functools

    @functools.wraps(handler)
    def wrapped(*args):
        _, unread = queued(request.sid)
        if unread > MAX_UNREAD:
            log.info("browser %s sends but does not read (%d characters queued): disconnected",
                     request.sid, unread)
            disconnect()
            return None
        try:
            return handler(*args)
        except HostUnavailable as e:
            return {"error": str(e)}
        except EngineRefused as e:
            return {"error": str(e), "quota": e.status == 429}
        except EngineError as e:
            log.warning("%s: %s", handler.__name__, e)
            return {"error": f"the Glassbox daemon did not answer as expected: {e}"}
    return wrapped


# Decides whether a connection that asks to watch (auth {"watch": true}) may, and
# which host it then watches: set by classroom.py; None refuses.
watch_policy = None


@socketio.on("connect")
def on_connect(auth=None):
    if visitor_id(create=False) is None:
        return False  # no cookie, no host: the page sets the cookie first
    if isinstance(auth, dict) and auth.get("watch"):
        watched = watch_policy() if watch_policy else None
        if watched is None:
            return False
        viewers[request.sid] = watched
        connected[request.sid] = watched
        return True
    try:
        host = own_host(create=True)
    except (HostUnavailable, EngineError) as e:
        log.info("connect refused: %s", e)
        return False
    connected[request.sid] = host.name
    join_room(f"visitor:{host.name}")
    return True


@socketio.on("disconnect")
def on_disconnect(*_):
    name = connected.pop(request.sid, None)
    watching = viewers.pop(request.sid, None)
    if name and name in relays.by_host:
        relays.by_host[name].leave(request.sid)
    if watching:
        for listener in viewer_disconnect_listeners:
            listener(request.sid)
    elif name:
        for listener in disconnect_listeners:
            listener(name)


@socketio.on("subscribe")
@answer_errors
def subscribe(message=None):
    since = fields(message).get("since", 0)
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        return {"error": "since must be the last sequence number seen (0 at first)"}
    host = current_host()
    return relays.get(host).join(request.sid, since)


@socketio.on("containers")
@answer_errors
def containers(message=None):
    return {"containers": current_host().client().get_json("/containers/json?all=1")}


@socketio.on("inside")
@answer_errors
def inside(message=None):
    ident = fields(message).get("id")
    if not isinstance(ident, str) or not CONTAINER.fullmatch(ident):
        return {"error": "inside needs a container id"}
    return current_host().client().get_json(f"/glassbox/containers/{ident}/inside")


def keep_hosts_alive(app) -> None:
    """While a browser is connected, its host is in use: touch it (the daemon frees
    hosts nobody touched for the idle timeout) and forget relays nobody watches."""
    with app.app_context():
        registry = hosts()
    while True:
        socketio.sleep(10)
        for name in set(connected.values()):
            registry.touch(name)
        relays.forget_idle()


def init_app(app) -> None:
    started = app.extensions.setdefault("glassbox.keepalive", [])
    if not started and not app.config.get("TESTING"):
        started.append(socketio.start_background_task(keep_hosts_alive, app))
