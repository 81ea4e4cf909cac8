"""The Socket.IO server: live events (live.py) and terminals (terminals.py).

Threading mode: gunicorn serves the app with one worker and many threads
(`gunicorn -w 1 --threads 200`, its worker in server.py), WebSockets through
simple-websocket. Eventlet is not used (unmaintained). Several web nodes would add
``message_queue="redis://..."`` here.
"""
from __future__ import annotations

import collections
import threading
import time
from urllib.parse import parse_qs

from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from flask import Flask
from flask_socketio import SocketIO

socketio = SocketIO()

MAX_MESSAGE = 256 * 1024  # bytes of one message from a browser


class BoundedWebSocket(SimpleWebSocketWSGI):
    """python-engineio checks a WebSocket message's size only once all of it has arrived:
    a browser announcing a 1 GiB message would have it buffered whole. simple-websocket
    can count as the message comes, and closes the connection past the limit."""

    def __init__(self, handler, server, **kwargs):
        kwargs.setdefault("max_message_size", MAX_MESSAGE)
        super().__init__(handler, server, **kwargs)


class SessionLimit:
    """WSGI middleware: at most ``per_minute`` new Socket.IO sessions (Engine.IO handshakes,
    the requests to /socket.io/ without a ``sid``) from one client address a minute.

    A handshake needs no cookie, and each one keeps some 27 kB until the session times out
    unused (45 s): one machine asking as fast as it could (a thousand a second) held a
    gigabyte. A tab opens one session, and one more each time it reconnects. Addresses
    are counted as the gunicorn worker counts them (loopback not at all)."""

    def __init__(self, app, per_minute: int):
        self.app = app
        self.per_minute = per_minute
        self.recent: dict[str, collections.deque] = {}
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/socket.io") \
                and "sid" not in parse_qs(environ.get("QUERY_STRING", "")) \
                and not self._allowed(environ.get("REMOTE_ADDR")):
            start_response("429 Too Many Requests", [("Content-Type", "text/plain; charset=utf-8"),
                                                     ("Retry-After", "60")])
            return [b"Too many new connections from your address: wait a minute.\n"]
        return self.app(environ, start_response)

    def _allowed(self, address: str | None) -> bool:
        from .server import address_key
        key = address_key((address,))
        if key is None:
            return True
        now = time.monotonic()
        with self.lock:
            if len(self.recent) > 10_000:  # forget addresses that have been quiet a minute
                self.recent = {k: d for k, d in self.recent.items() if now - d[-1] < 60}
            stamps = self.recent.setdefault(key, collections.deque())
            while stamps and now - stamps[0] > 60:
                stamps.popleft()
            if len(stamps) >= self.per_minute:
                return False
            stamps.append(now)
            return True


def disconnect_at_once(eio):
    """Makes engineio's ``Server.disconnect`` close a session without waiting.

    It closes with ``wait=True``: it waits until the client has read everything queued for
    it. engineio calls it on a polling POST that breaks a rule (a body over
    MAX_MESSAGE, an unknown packet type), and that client may never read again: the
    request's thread would wait for ever. Some 200 such POSTs (one handshake each, no
    cookie needed) held every gunicorn thread, and the site stayed down after the
    sender left. The client is told its session is gone when it next polls."""
    def disconnect(sid=None):
        for one in ([sid] if sid is not None else list(eio.sockets)):
            socket = eio.sockets.get(one)
            if socket is not None:
                socket.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)
                eio.sockets.pop(one, None)
    eio.disconnect = disconnect


def queued(sid: str) -> tuple[int, int]:
    """What waits to be written to a browser: (packets, characters). An emit only queues;
    a browser that stopped reading lets this grow."""
    server = socketio.server
    try:
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        queue = server.eio.sockets[eio_sid].queue
    except (KeyError, AttributeError, TypeError):
        return 0, 0
    with queue.mutex:  # Queue.put takes the same lock: the deque holds still while counted
        return len(queue.queue), sum(len(p.data) for p in queue.queue
                                     if p is not None and isinstance(p.data, (str, bytes)))


def init_app(app: Flask) -> None:
    # The origin check is what stops another site's page from opening a socket with the
    # visitor's cookie: None lets in only this site's own pages.
    # async_handlers=False: one browser's messages are handled one after the other, in
    # the order sent — keystrokes must reach the terminal in the order they were typed.
    # (Browsers still run side by side: each has its own reader thread.)
    socketio.init_app(app, async_mode="threading", async_handlers=False,
                      cors_allowed_origins=app.config["ALLOWED_ORIGINS"],
                      max_http_buffer_size=MAX_MESSAGE)
    # The threading driver's WebSocket, with the size limit applied as the message comes
    # (engineio has no option for it; its drivers are a table it looks the class up in).
    eio = socketio.server.eio
    eio._async = dict(eio._async, websocket=BoundedWebSocket)
    disconnect_at_once(eio)
    app.wsgi_app = SessionLimit(app.wsgi_app, app.config["SOCKETS_PER_ADDRESS_PER_MINUTE"])
