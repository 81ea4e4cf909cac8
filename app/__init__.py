"""Glassbox's web app: unprivileged, it talks to the glass daemon only through its API.

Built as Flask's tutorial builds an app: a factory, one blueprint per area, and
configuration that comes in through the factory so that each test builds its own app.
"""
from __future__ import annotations

from pathlib import Path

from flask import Flask

# templates/ and static/ sit at the top of the checkout, beside app/ and sandbox/.
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_ENGINE_SOCKET = "/var/lib/glassbox/glassbox.sock"
DEFAULT_REGISTRY_ROOT = "/var/lib/glassbox/registry"


def create_app(config: dict | None = None) -> Flask:
    app = Flask(
        __name__,
        template_folder=str(CHECKOUT / "templates"),
        static_folder=str(CHECKOUT / "static"),
    )
    app.config.from_mapping(
        ENGINE_SOCKET=DEFAULT_ENGINE_SOCKET,  # the daemon's API socket
        ENGINE_TIMEOUT=5.0,                   # seconds to wait for one API answer
        REGISTRY_ROOT=DEFAULT_REGISTRY_ROOT,  # the registry's blobs, repositories, uploads
        REGISTRY_MAX_UPLOAD=2 << 30,          # bytes per blob
        REGISTRY_MAX_TOTAL=20 << 30,          # bytes per classroom (the whole registry without one)
        REGISTRY_USERS=None,                  # None: no classroom, open to loopback clients only
        REGISTRY_USERS_FILE=None,             # or the users as a JSON file
    )
    if config:
        app.config.update(config)

    from . import registry, socketio, status
    app.register_blueprint(status.bp)
    registry.init_app(app)
    socketio.init_app(app)
    return app
