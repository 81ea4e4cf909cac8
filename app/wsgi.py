"""What gunicorn serves: ``gunicorn ... app.wsgi:application``.

The daemon's socket comes from the environment: ``GLASSBOX_ENGINE_SOCKET``, else
``glassbox.sock`` in ``GLASSBOX_STATE_DIR``, else the default state dir's.
"""
from __future__ import annotations

import json
import os

from . import DEFAULT_ENGINE_SOCKET, create_app


def engine_socket_from_environment() -> str:
    if os.environ.get("GLASSBOX_ENGINE_SOCKET"):
        return os.environ["GLASSBOX_ENGINE_SOCKET"]
    if os.environ.get("GLASSBOX_STATE_DIR"):
        return os.path.join(os.environ["GLASSBOX_STATE_DIR"], "glassbox.sock")
    return DEFAULT_ENGINE_SOCKET


def config_from_environment() -> dict:
    config = {"ENGINE_SOCKET": engine_socket_from_environment()}
    if os.environ.get("GLASSBOX_REGISTRY_ROOT"):
        config["REGISTRY_ROOT"] = os.environ["GLASSBOX_REGISTRY_ROOT"]
    if os.environ.get("GLASSBOX_REGISTRY_USERS_FILE"):
        config["REGISTRY_USERS_FILE"] = os.environ["GLASSBOX_REGISTRY_USERS_FILE"]
    if os.environ.get("GLASSBOX_SECRET_KEY"):
        config["SECRET_KEY"] = os.environ["GLASSBOX_SECRET_KEY"]
    if os.environ.get("GLASSBOX_IDLE_TIMEOUT"):
        config["HOST_IDLE_TIMEOUT"] = float(os.environ["GLASSBOX_IDLE_TIMEOUT"])
    if os.environ.get("GLASSBOX_HOST_QUOTA"):
        config["HOST_QUOTA"] = json.loads(os.environ["GLASSBOX_HOST_QUOTA"])
    if os.environ.get("GLASSBOX_ALLOWED_ORIGINS"):
        config["ALLOWED_ORIGINS"] = os.environ["GLASSBOX_ALLOWED_ORIGINS"].split(",")
    if os.environ.get("GLASSBOX_HOSTS_PER_ADDRESS"):
        config["HOSTS_PER_ADDRESS_PER_HOUR"] = int(os.environ["GLASSBOX_HOSTS_PER_ADDRESS"])
    if os.environ.get("GLASSBOX_PUBLIC_URL"):
        config["PUBLIC_URL"] = os.environ["GLASSBOX_PUBLIC_URL"]
    if os.environ.get("GLASSBOX_LESSONS_DIR"):
        config["LESSONS_DIR"] = os.environ["GLASSBOX_LESSONS_DIR"]
    if os.environ.get("GLASSBOX_DATABASE_URL"):
        config["DATABASE_URL"] = os.environ["GLASSBOX_DATABASE_URL"]
    if os.environ.get("GLASSBOX_REGISTRY_ADDRESS"):
        config["REGISTRY_ADDRESS"] = os.environ["GLASSBOX_REGISTRY_ADDRESS"]
    return config


application = create_app(config_from_environment())
