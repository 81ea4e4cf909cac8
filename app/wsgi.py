"""What gunicorn serves: ``gunicorn ... app.wsgi:application``.

The daemon's socket comes from the environment: ``GLASSBOX_ENGINE_SOCKET``, else
``glassbox.sock`` in ``GLASSBOX_STATE_DIR``, else the default state dir's.
"""
from __future__ import annotations

import os

from . import DEFAULT_ENGINE_SOCKET, create_app


def engine_socket_from_environment() -> str:
    if os.environ.get("GLASSBOX_ENGINE_SOCKET"):
        return os.environ["GLASSBOX_ENGINE_SOCKET"]
    if os.environ.get("GLASSBOX_STATE_DIR"):
        return os.path.join(os.environ["GLASSBOX_STATE_DIR"], "glassbox.sock")
    return DEFAULT_ENGINE_SOCKET


application = create_app({"ENGINE_SOCKET": engine_socket_from_environment()})
