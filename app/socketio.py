"""The Socket.IO server that later streams events and terminals to the browser.

Threading mode: gunicorn serves the app with one worker and many threads
(`gunicorn -w 1 --threads 100`), WebSockets through simple-websocket.
"""
from __future__ import annotations

from flask import Flask
from flask_socketio import SocketIO

socketio = SocketIO()


def init_app(app: Flask) -> None:
    socketio.init_app(app, async_mode="threading")
