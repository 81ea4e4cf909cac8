"""The Socket.IO server: live events (live.py) and terminals (terminals.py).

Threading mode: gunicorn serves the app with one worker and many threads
(`gunicorn -w 1 --threads 200`), WebSockets through simple-websocket. Eventlet is not
used (unmaintained). Several web nodes would add ``message_queue="redis://..."`` here.
"""
from __future__ import annotations

from flask import Flask
from flask_socketio import SocketIO

socketio = SocketIO()


def init_app(app: Flask) -> None:
    # The origin check is what stops another site's page from opening a socket with the
    # visitor's cookie: None lets in only this site's own pages.
    # async_handlers=False: one browser's messages are handled one after the other, in
    # the order sent — keystrokes must reach the terminal in the order they were typed.
    # (Browsers still run side by side: each has its own reader thread.)
    socketio.init_app(app, async_mode="threading", async_handlers=False,
                      cors_allowed_origins=app.config["ALLOWED_ORIGINS"],
                      max_http_buffer_size=256 * 1024)
