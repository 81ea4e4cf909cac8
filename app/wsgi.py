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


# GLASSBOX_<name> in the environment → the app's setting, read with this function.
FROM_ENVIRONMENT = {
    "GLASSBOX_REGISTRY_ROOT": ("REGISTRY_ROOT", str),
    "GLASSBOX_REGISTRY_USERS_FILE": ("REGISTRY_USERS_FILE", str),
    "GLASSBOX_REGISTRY_ADDRESS": ("REGISTRY_ADDRESS", str),
    "GLASSBOX_SECRET_KEY": ("SECRET_KEY", str),
    "GLASSBOX_IDLE_TIMEOUT": ("HOST_IDLE_TIMEOUT", float),
    "GLASSBOX_HOST_QUOTA": ("HOST_QUOTA", json.loads),
    "GLASSBOX_ALLOWED_ORIGINS": ("ALLOWED_ORIGINS", lambda text: text.split(",")),
    "GLASSBOX_HOSTS_PER_ADDRESS": ("HOSTS_PER_ADDRESS_PER_HOUR", int),
    "GLASSBOX_PUBLIC_URL": ("PUBLIC_URL", str),
    "GLASSBOX_LESSONS_DIR": ("LESSONS_DIR", str),
    "GLASSBOX_DATABASE_URL": ("DATABASE_URL", str),
}


def config_from_environment() -> dict:
    config = {"ENGINE_SOCKET": engine_socket_from_environment()}
    for variable, (setting, read) in FROM_ENVIRONMENT.items():
        if os.environ.get(variable):
            config[setting] = read(os.environ[variable])
    return config


application = create_app(config_from_environment())
