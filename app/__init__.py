"""Glassbox's web app: unprivileged, it talks to the glass daemon only through its API.

Built as Flask's tutorial builds an app: a factory, one blueprint per area, and
configuration that comes in through the factory so that each test builds its own app.
"""
from __future__ import annotations

import secrets
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
        REGISTRY_MAX_PER_SPACE=2 << 30,       # bytes per owner (CLASS/student, play/host); None: no limit
        REGISTRY_USERS=None,                  # None: no classroom, open to loopback clients only
        REGISTRY_USERS_FILE=None,             # or the users as a JSON file
        SECRET_KEY=None,                      # signs the visitor's cookie; shared by all web nodes
        HOST_IDLE_TIMEOUT=1800.0,             # seconds before an unused visitor's host is freed
        HOSTS_PER_ADDRESS_PER_HOUR=20,        # new hosts one client address may be given
        SOCKETS_PER_ADDRESS_PER_MINUTE=30,    # new Socket.IO sessions one client address may open
        HOST_QUOTA=None,                      # visitors' hosts' quotas ({field: n|None}); None: defaults
        ALLOWED_ORIGINS=None,                 # Socket.IO origins; None: this site's own only
        DATABASE_URL="sqlite://",             # progress and classrooms (SQLAlchemy URL); `glassbox up`: a file
        LESSONS_DIR=None,                     # None: the checkout's lessons/
        REGISTRY_ADDRESS=None,                # the registry as the daemon reaches it, e.g. 127.0.0.1:8000
        PUBLIC_URL=None,                      # how students reach the site (shown on the dashboard)
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=7 * 24 * 3600,
    )
    if config:
        app.config.update(config)
    if not app.config["SECRET_KEY"]:
        # Good for one process; `glassbox up` passes a key kept in the state dir, so that
        # cookies survive a restart and several web nodes can share it.
        app.logger.warning("no SECRET_KEY: visitors' cookies last until this process ends")
        app.config["SECRET_KEY"] = secrets.token_hex(32)

    from . import classroom, csrf, graphs, hosts, learn, live, registry, socketio, status, terminals, web  # noqa: F401 (handlers)
    app.register_blueprint(status.bp)
    app.register_blueprint(web.bp)
    csrf.init_app(app)
    hosts.init_app(app)
    registry.init_app(app)
    socketio.init_app(app)
    live.init_app(app)
    learn.init_app(app)
    classroom.init_app(app)
    return app
